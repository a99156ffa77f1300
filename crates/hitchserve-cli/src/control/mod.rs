//! `up` and the control socket, and the client side of every other command.
//!
//! The socket (`.hitchserve/control/control.sock`, 0600 in a 0700 directory of its own:
//! `.hitchserve/` itself is 0711, as the library makes it, so that services run as another
//! user reach their run directories; `up.log` and `up.lock` there are 0600) speaks JSON lines: one
//! request object, then one reply object — or, for `logs`, a stream of line objects ended
//! by an `end` object. A lock file held by the running `up` refuses a second `up`. Requests
//! on one service (`stop`, `start`, ...) are answered in `one_service`; `down` is answered
//! once every service has stopped, with the error of a crash not reported before.
//!
//! The socket is bound before any service starts (as `control.sock.starting`, renamed once
//! all are ready), and reached through `/proc/self/fd` when the project is too deep for
//! `sun_path`: it never lives outside the project's private `.hitchserve/`. Requests are
//! checked as untrusted input: a bad one gets an error reply, never a panicked handler.
//!
//! A shared bundle (`up --shared`) is such an `up` that also keeps leases: it stops once no
//! lease has been held for its idle time, and holders die without leaking it.
//!
//! One file per idea, importing each other only downwards: the state directory's names,
//! lock and pid (`state_dir`), the stop signals' pipe (`signals`), the wire format
//! (`protocol`), a shared bundle's leases and definition (`leases`), the `logs` stream
//! (`logs`), one connection's request and reply (`server`), `up` itself (`up`), `exec`'s
//! command (`exec`) and the terminal it relays for another user's (`relay`), every other
//! command (`client`) and the holders' side of a shared bundle (`shared`). This file only
//! re-exports the entry points.

mod client;
mod exec;
mod leases;
mod logs;
mod protocol;
mod relay;
mod server;
mod shared;
mod signals;
mod state_dir;
mod up;

pub use client::client;
pub use shared::{attach, idle_time, release, up_shared};
pub use state_dir::check_state_dir;
pub use up::up;
