//! `ServiceHandle`: one service of a started bundle as a Python class — its state, logs,
//! environment and sub-commands, signals, pause and resume, and the waits: stop, start,
//! restart, until ready, until it exits.
//!
//! A wait answers Ctrl-C: one with a timeout of its own (`wait_exit`) runs in slices; a stop,
//! start, restart or wait until ready runs on a thread of its own (`interruptible`).
//! Invariant: a start reports only what its own readiness check or hook raised (what earlier
//! starts raised is forgotten first), and that exception itself, not the engine's
//! description of it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;

use crate::errors::{raised_error, OrRaise, Raised};
use crate::logs::Logs;
use crate::subcommand::Subcommand;
use crate::values::{secs, signal};
use crate::wait::{interruptible, SLICE};

/// One service of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct ServiceHandle {
    pub(crate) handle: hitchserve::ServiceHandle,
    /// The console's label width (see `console_width`).
    pub(crate) width: usize,
    /// The bundle's: what a readiness check or hook raised while the service started again.
    pub(crate) raised: Arc<Raised>,
}

impl ServiceHandle {
    /// Run `call` on the engine's handle (see `interruptible`); a readiness check or hook
    /// that raised is raised as itself.
    fn waiting(
        &self,
        py: Python<'_>,
        what: &str,
        call: impl FnOnce(&hitchserve::ServiceHandle) -> hitchserve::Result<()> + Send + 'static,
    ) -> PyResult<()> {
        let handle = self.handle.clone();
        interruptible(py, what, move || call(&handle))?.map_err(|e| {
            raised_error(
                py,
                &self.raised,
                e,
                "the service did not become ready again",
            )
        })
    }
}

#[pymethods]
impl ServiceHandle {
    fn name(&self) -> String {
        self.handle.name().to_owned()
    }

    fn pid(&self) -> Option<u32> {
        self.handle.pid()
    }

    fn logs(&self) -> Logs {
        Logs {
            logs: self.handle.logs(),
            width: self.width,
        }
    }

    fn subcommand(&self, command: Vec<OsString>) -> Subcommand {
        Subcommand {
            sub: self.handle.subcommand(command),
        }
    }

    fn environment(&self) -> Vec<(OsString, OsString)> {
        self.handle.environment()
    }

    fn directory(&self) -> PathBuf {
        self.handle.directory().to_path_buf()
    }

    fn is_ready(&self) -> bool {
        self.handle.is_ready()
    }

    fn is_stopping(&self) -> bool {
        self.handle.is_stopping()
    }

    fn is_running(&self) -> bool {
        self.handle.is_running()
    }

    /// `(description, exit code or None)` once it has exited.
    fn exit_status(&self) -> Option<(String, Option<i32>)> {
        self.handle.exit_status().map(|s| (s.to_string(), s.code()))
    }

    /// Wait for the main process to exit (Ctrl-C answered); as `exit_status`.
    fn wait_exit(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<(String, Option<i32>)>> {
        let deadline = Instant::now() + secs(timeout)?;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(SLICE);
            let handle = self.handle.clone();
            if let Some(s) = py.detach(move || handle.wait_exit(slice)) {
                return Ok(Some((s.to_string(), s.code())));
            }
            py.check_signals()?;
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn check(&self) -> PyResult<()> {
        self.handle.check().or_raise()
    }

    fn signal(&self, name: &str) -> PyResult<()> {
        self.handle.signal(signal(name)?).or_raise()
    }

    /// Stop it (stop signal, grace, SIGKILL); its exit is expected. Ctrl-C answered.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.waiting(py, "stop", hitchserve::ServiceHandle::stop)
    }

    /// Start it again if it stopped (its setup hook too if `setup`) and wait until it is
    /// ready, within the startup timeout. Ctrl-C answered.
    #[pyo3(signature = (setup=false))]
    fn start(&self, py: Python<'_>, setup: bool) -> PyResult<()> {
        self.raised.forget(self.handle.name());
        self.waiting(py, "start", move |h| {
            if setup {
                h.start_with_setup()
            } else {
                h.start()
            }
        })
    }

    /// `stop`, then `start`. Ctrl-C answered.
    #[pyo3(signature = (setup=false))]
    fn restart(&self, py: Python<'_>, setup: bool) -> PyResult<()> {
        self.raised.forget(self.handle.name());
        self.waiting(py, "restart", move |h| {
            if setup {
                h.restart_with_setup()
            } else {
                h.restart()
            }
        })
    }

    /// SIGSTOP to its process group.
    fn pause(&self) -> PyResult<()> {
        self.handle.pause().or_raise()
    }

    /// SIGCONT to its process group.
    fn resume(&self) -> PyResult<()> {
        self.handle.resume().or_raise()
    }

    fn is_paused(&self) -> bool {
        self.handle.is_paused()
    }

    /// A signal to its process group, its exit not expected (a crash is reported). After
    /// SIGKILL, waits until it has exited (Ctrl-C answered).
    fn kill(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let sig = signal(name)?;
        if sig != hitchserve::Signal::SIGKILL {
            return self.handle.kill(sig).or_raise();
        }
        self.waiting(py, "kill", move |h| h.kill(sig))
    }

    /// Wait until it is ready, within the startup timeout. Ctrl-C answered.
    pub(crate) fn wait_until_ready(&self, py: Python<'_>) -> PyResult<()> {
        self.waiting(
            py,
            "wait_until_ready",
            hitchserve::ServiceHandle::wait_until_ready,
        )
    }

    /// How many times its process has been started.
    fn incarnation(&self) -> u32 {
        self.handle.incarnation()
    }
}
