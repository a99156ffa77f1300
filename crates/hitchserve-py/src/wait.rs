//! Waiting without deafening Python: the slice a wait lasts before Python's signal handlers
//! get a turn, the poison-tolerant lock every class uses, and `interruptible`, which runs an
//! engine call that has no timeout of its own to slice on a thread of its own.
//!
//! It knows nothing of the engine's errors: what it raises is `KeyboardInterrupt` (from
//! `check_signals`) or its own failure to wait. Invariant: the GIL is released while
//! Rust waits, and no lock of ours is held while calling into Python.

use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How long one slice of a wait lasts before Python's signal handlers get a turn.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Lock `m`, a poisoned lock taken as it is (one panic must not make every later call panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `call` (an engine call that waits with no timeout of its own to slice, such as a
/// service's `start` or `stop`) on a thread of its own, and wait for its answer with the GIL
/// released, Python's signal handlers running between slices: Ctrl-C raises
/// `KeyboardInterrupt` at once. The call then goes on to its end in the background (the engine
/// bounds it by the bundle's startup or shutdown timeout, and a shutdown ends it at once).
pub(crate) fn interruptible<R: Send + 'static>(
    py: Python<'_>,
    what: &str,
    call: impl FnOnce() -> R + Send + 'static,
) -> PyResult<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("hitchserve-{what}"))
        .spawn(move || {
            let _ = tx.send(call());
        })
        .map_err(|e| {
            PyRuntimeError::new_err(format!("could not start a thread for {what}: {e}"))
        })?;
    let rx = Mutex::new(rx);
    loop {
        match py.detach(|| lock(&rx).recv_timeout(SLICE)) {
            // A Ctrl-C that came meanwhile wins over the answer (a sub-command it killed
            // too answers "failed (SIGINT)"): Python raises it first.
            Ok(answer) => {
                py.check_signals()?;
                return Ok(answer);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(format!(
                    "the thread of {what} ended without an answer"
                )))
            }
        }
    }
}
