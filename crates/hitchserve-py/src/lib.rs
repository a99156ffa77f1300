//! `hitchserve._native`: the Python extension module, a thin layer over the `hitchserve` crate.
//!
//! Owns the conversions between Python and the engine (callables as readiness checks, hooks
//! and predicates; JSON values; engine errors as the exceptions of `hitchserve.errors`) and
//! the discipline that keeps Python responsive: the GIL is released whenever Rust waits, and
//! every wait runs in short slices with `check_signals` between, so Ctrl-C is answered within
//! a fraction of a second (an engine call that waits without a timeout of its own, such as a
//! service's `start` or `stop`, runs on a thread of its own while this one takes the signals).
//! It owns no engine behaviour: readiness, logs, time travel, hooks, restarts and shutdown are
//! the crate's. The Pythonic surface (`ServiceBundle`, `Service`, `Logs`, psutil)
//! is the pure-Python package around it.
//!
//! Its files, each importing only from those listed before it: `wait` (the slice, the lock,
//! `interruptible`), `values` (seconds, signal names, JSON), `errors` (engine errors as
//! Python's, and what callbacks raised), `subcommand`, `logs` (`Logs`, `Tail`), `callbacks`
//! (readiness checks, hooks and their `HookCtx`), `definition` (`ServiceDef`), `services` (the
//! ready-made services' handles), `handle` (`ServiceHandle`), `bundle` (`NativeBundle`),
//! `shared` (`NativeShared`, a lease on a shared bundle, and `cli_main`, the `hitchserve`
//! command). This file only registers the classes and `smtp_main`.
//!
//! Invariant: never call into Python while holding one of our locks (a lock held by a thread
//! waiting for the GIL, wanted by the thread holding it, is a deadlock).

use pyo3::prelude::*;

mod bundle;
mod callbacks;
mod definition;
mod errors;
mod handle;
mod logs;
mod runner;
mod services;
mod shared;
mod subcommand;
mod values;
mod wait;

use bundle::NativeBundle;
use callbacks::HookCtx;
use definition::ServiceDef;
use handle::ServiceHandle;
use logs::{Logs, Tail};
use services::{PostgresHandle, RedisHandle, SmtpHandle};
use shared::NativeShared;
use subcommand::Subcommand;

/// Run the mock SMTP server (the `hitchsmtp` crate) in this process with the command line
/// `args`, until the process is killed; returns the exit code of a failure to start. The
/// GIL is released: the server never calls into Python.
#[pyfunction]
fn smtp_main(py: Python<'_>, args: Vec<String>) -> i32 {
    py.detach(move || hitchsmtp::run(args))
}

/// The native half of the `hitchserve` package.
/// The C name of a signal the engine can send (`"SIGINT"` from `"int"`, `"SIGINT"` or `"2"`),
/// or `ValueError`: Python checks a signal with this when it is given, as the engine will.
#[pyfunction]
fn signal_name(name: &str) -> PyResult<&'static str> {
    values::signal(name).map(hitchserve::Signal::name)
}

/// Seconds of a shared bundle's idle time written as the command line's `--idle` takes it
/// (`0`, `10`, `1h30m`, `"5 minutes"`), or `ValueError` saying what is wrong.
#[pyfunction]
fn idle_seconds(text: &str) -> PyResult<f64> {
    hitchserve_cli::idle_time(text)
        .map(|d| d.as_secs_f64())
        .map_err(pyo3::exceptions::PyValueError::new_err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(smtp_main, m)?)?;
    m.add_function(wrap_pyfunction!(idle_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(signal_name, m)?)?;
    m.add_function(wrap_pyfunction!(shared::cli_main, m)?)?;
    m.add_class::<NativeShared>()?;
    m.add_class::<NativeBundle>()?;
    m.add_class::<ServiceDef>()?;
    m.add_class::<HookCtx>()?;
    m.add_class::<ServiceHandle>()?;
    m.add_class::<Logs>()?;
    m.add_class::<Tail>()?;
    m.add_class::<Subcommand>()?;
    m.add_class::<PostgresHandle>()?;
    m.add_class::<RedisHandle>()?;
    m.add_class::<SmtpHandle>()?;
    Ok(())
}
