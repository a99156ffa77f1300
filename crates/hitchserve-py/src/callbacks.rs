//! Python callables the engine calls from its own threads: a readiness predicate over log
//! lines, and `setup`/`poststart` hooks with `HookCtx`, the engine's `HookContext` as a
//! Python class that is usable only while its hook runs.
//!
//! Each call takes the GIL for itself. A Python exception is kept in `Raised` for the caller
//! to raise as itself, and the engine is told only its one-line description (a hook's error,
//! a readiness check's panic). Invariant: a `HookCtx` never outlives the `HookContext` it
//! points to: its address is cleared, under its lock, before the hook call returns.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hitchserve::HookContext;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::errors::{describe, OrRaise, Raised};
use crate::subcommand::Subcommand;
use crate::wait::lock;

/// What a Python `setup`/`poststart` hook can do while it runs (the engine's `HookContext`).
/// Usable only during the hook: afterwards every method raises.
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct HookCtx {
    /// The address of the `HookContext` the running hook was given; 0 once it returned.
    ctx: Mutex<usize>,
}

impl HookCtx {
    fn with<R>(&self, f: impl FnOnce(&HookContext<'_>) -> R) -> PyResult<R> {
        let addr = lock(&self.ctx);
        if *addr == 0 {
            return Err(PyRuntimeError::new_err(
                "this hook context belongs to a hook that has returned",
            ));
        }
        // SAFETY: the address is set by `run_hook` from a `&HookContext` that outlives the
        // hook call, and cleared (under this lock) before that call returns; holding the lock
        // here keeps it from being cleared while we use it. `HookContext` is `Sync`.
        let ctx = unsafe { &*(*addr as *const HookContext<'static>) };
        Ok(f(ctx))
    }
}

#[pymethods]
impl HookCtx {
    /// The service's name.
    fn service(&self) -> PyResult<String> {
        self.with(|c| c.service().to_owned())
    }

    /// The service's working directory.
    fn directory(&self) -> PyResult<PathBuf> {
        self.with(|c| c.directory().to_path_buf())
    }

    /// The port reserved for the service as `name`, or None if it declared none so named.
    fn port(&self, name: &str) -> PyResult<Option<u16>> {
        self.with(|c| c.port(name))
    }

    /// The pid of the service's main process (in a poststart hook), or None.
    fn pid(&self) -> PyResult<Option<u32>> {
        self.with(|c| c.pid())
    }

    /// The run directory.
    fn run_dir(&self) -> PyResult<PathBuf> {
        self.with(|c| c.run_dir().to_path_buf())
    }

    /// Print and store a line under the hook's label.
    fn log(&self, message: &str) -> PyResult<()> {
        self.with(|c| c.log(message))
    }

    /// Create a directory owned by the service's user.
    fn make_dir(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.with(|c| c.make_dir(&path)))?.or_raise()
    }

    /// Run a command in the service's environment, its output labelled as the hook's.
    fn run(&self, py: Python<'_>, command: Vec<OsString>) -> PyResult<()> {
        py.detach(|| self.with(|c| c.run(command)))?.or_raise()
    }

    /// Run a sub-command (with its extra arguments, environment and stdin), labelled.
    fn run_command(&self, py: Python<'_>, sub: &Subcommand) -> PyResult<()> {
        let sub = sub.sub.clone();
        py.detach(|| self.with(|c| c.run_command(sub)))?.or_raise()
    }

    /// A command in the service's environment, to run yourself.
    fn subcommand(&self, command: Vec<OsString>) -> PyResult<Subcommand> {
        self.with(|c| Subcommand {
            sub: c.subcommand(command),
        })
    }
}

/// Call a Python hook with a context valid for the call only.
pub(crate) fn run_hook(
    hook: &Py<PyAny>,
    ctx: &HookContext<'_>,
    raised: &Raised,
) -> hitchserve::HookResult {
    Python::attach(|py| {
        let handle = Py::new(
            py,
            HookCtx {
                ctx: Mutex::new(ctx as *const HookContext<'_> as usize),
            },
        )
        .map_err(|e| describe(py, &e))?;
        let result = hook.call1(py, (handle.clone_ref(py),));
        // Waits for any use of the context still under way (on another Python thread).
        py.detach(|| *lock(&handle.get().ctx) = 0);
        match result {
            Ok(_) => Ok(()),
            Err(err) => {
                let message = describe(py, &err);
                raised.keep(ctx.service(), err);
                Err(message.into())
            }
        }
    })
}

/// A readiness check calling the Python predicate `pred` on each line of `service`. An
/// exception it raises is kept in `raised` and ends the check as a panic carrying its
/// description, which the engine reports as `ReadinessPanicked`.
pub(crate) fn ready_check(
    pred: Py<PyAny>,
    raised: Arc<Raised>,
    service: String,
) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |line| {
        Python::attach(
            |py| match pred.call1(py, (line,)).and_then(|r| r.is_truthy(py)) {
                Ok(ready) => ready,
                Err(err) => {
                    let message = describe(py, &err);
                    raised.keep(&service, err);
                    // Without the panic hook: the engine reports it, we raise it.
                    std::panic::resume_unwind(Box::new(message))
                }
            },
        )
    }
}
