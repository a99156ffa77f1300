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
//! One file per idea, importing each other only downwards: the state directory's names,
//! lock and pid (`state_dir`), the stop signals' pipe (`signals`), the wire format
//! (`protocol`), the `logs` stream (`logs`), one connection's request and reply (`server`),
//! `up` itself (`up`) and every other command (`client`). This file only re-exports the two
//! entry points.

mod client;
mod logs;
mod protocol;
mod server;
mod signals;
mod state_dir;
mod up;

pub use client::client;
pub use up::up;
