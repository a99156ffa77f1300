//! hitchserve starts, watches, time-travels and stops the real services an integration test
//! needs — databases, caches, mail catchers, the application under test — and then gets out
//! of the way.
//!
//! A [`Bundle`] holds named [`Service`]s. [`Bundle::startup`] starts each once everything it
//! [`needs`](Service::needs) is ready (see [`Ready`] for readiness checks and
//! [`Condition`] for other dependency conditions), in parallel where it can, and blocks until
//! all are ready or returns an [`Error`] that names the service and shows its last log lines.
//! Every line every service writes is printed live as `[   Name] line` / `[Err Name] line`,
//! kept (queryable through [`Logs`] and [`Tail`]: `until`, `until_json`, `follow`, JSON) and
//! written to `<project>/.hitchserve/runs/<run>/logs/all.log`. [`Bundle::time_travel`] moves
//! the services' clocks through a small preloaded shim; [`ServiceHandle::process`] inspects a service's
//! processes; [`ServiceHandle::subcommand`] runs commands in its environment;
//! [`Service::setup`] and [`Service::poststart`] run code around its start; [`services`] has
//! PostgreSQL, Redis, a mock SMTP server and a fake-time cron ready-made. Every process a
//! service starts dies with the bundle — also when the test process itself is killed.
//! [`SharedBundle`] shares one bundle among every process of a test run (nextest's, pytest-xdist's
//! workers), started once and stopped when the last holder is gone.
//!
//! ```no_run
//! use std::time::Duration;
//! use hitchserve::{Bundle, Service};
//!
//! # fn main() -> hitchserve::Result<()> {
//! let mut bundle = Bundle::new("tests/project").startup_timeout(Duration::from_secs(30));
//! bundle.add("Cache", Service::new(["redis-server", "--port", "6390"])
//!     .ready_when(|line| line.contains("Ready to accept connections")))?;
//! bundle.add("App", Service::new(["python3", "-u", "app.py"])
//!     .ready_when(|line| line == "READY")
//!     .env("REDIS_URL", "redis://127.0.0.1:6390")
//!     .needs(["Cache"]))?;
//! bundle.startup()?;
//! let app = bundle.service("App")?;
//! assert!(app.logs().err().is_empty());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

// Layers, each importing only from those below it (kept so by `tests/layers.rs`):
// 1. leaves: error, signal, safepath, perprocess, cgroup, process, pidwindow, rundir, ports,
//    timetravel, exec, guardian;
// 2. logs (store, splitter, sink, console, log files), subcommand;
// 3. what the user declares: service, readiness (the `Ready` vocabulary), hooks;
// 4. plan: definitions checked and resolved;
// 5. runtime: the running bundle, its state machine and its threads;
// 6. inspect: read-only views (process tree, timeline);
// 7. the public façade: bundle, handle, interrupt, observer, and (feature `tokio`) asynch;
// 8. built on the façade: kernel, services; and shared (a bundle run by the `hitchserve`
//    command for many processes, through its control socket).
#[cfg(feature = "tokio")]
mod asynch;
mod bundle;
mod cgroup;
mod error;
mod exec;
mod guardian;
mod handle;
mod hooks;
mod inspect;
mod interrupt;
mod kernel;
mod logs;
mod observer;
mod perprocess;
mod pidwindow;
mod plan;
mod ports;
mod process;
mod readiness;
mod rundir;
mod runtime;
mod safepath;
mod service;
pub mod services;
mod shared;
mod signal;
mod subcommand;
mod timetravel;

#[cfg(feature = "tokio")]
pub use asynch::FollowAsync;
pub use bundle::Bundle;
pub use error::{Error, NotReady, Result};
pub use handle::ServiceHandle;
pub use hooks::{HookContext, HookResult};
pub use inspect::timeline::{ServiceTimeline, Timeline};
pub use inspect::{ProcessTree, TreeProcess, TreeService};
pub use interrupt::Interrupter;
pub use logs::{Follow, LogLine, LogStats, Logs, Part, Stream, Tail};
pub use observer::Observer;
pub use process::{
    Connection, ConnectionKind, CpuTimes, CtxSwitches, Ids, IoCounters, MemoryInfo, OpenFile,
    Process, Resource, Rlimit, Status, ThreadInfo,
};
pub use readiness::Ready;
pub use rundir::state_dir;
pub use service::{Condition, Restart, Service};
pub use shared::{SharedBuilder, SharedBundle, SharedLine, SharedService, SharedTail};
pub use signal::{ExitStatus, ParseSignalError, Signal};
pub use subcommand::{Output, Subcommand};

/// The time crate whose `Timestamp` [`Bundle::now`] and [`Bundle::time_travel_to`] use.
pub use jiff;

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
