//! `Subcommand`: a command run like its service (its environment, directory and user), the
//! engine's `Subcommand` as a Python class; built by a service handle, a hook's context and
//! the ready-made services (`psql`, `redis-cli`).
//!
//! Its builders return a new `Subcommand` and leave this one as it was (the engine's are by
//! value). Running it releases the GIL (the command never calls into Python) and answers
//! Ctrl-C (see `wait::interruptible`).

use std::ffi::OsString;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::OrRaise;
use crate::wait::interruptible;

/// A command run like its service (the engine's `Subcommand`).
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct Subcommand {
    pub(crate) sub: hitchserve::Subcommand,
}

#[pymethods]
impl Subcommand {
    fn args(&self, args: Vec<OsString>) -> Subcommand {
        Subcommand {
            sub: self.sub.clone().args(args),
        }
    }

    fn env(&self, key: OsString, value: OsString) -> Subcommand {
        Subcommand {
            sub: self.sub.clone().env(key, value),
        }
    }

    fn stdin(&self, data: Vec<u8>) -> Subcommand {
        Subcommand {
            sub: self.sub.clone().stdin(data),
        }
    }

    fn argv(&self) -> Vec<OsString> {
        self.sub.argv().map(OsString::from).collect()
    }

    /// Run it with its output going where the test's goes; raises on failure. Ctrl-C raises
    /// `KeyboardInterrupt` at once (the terminal's Ctrl-C reaches the command too: it runs in
    /// the test's process group; one that runs on is swept with the services at shutdown).
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        let sub = self.sub.clone();
        interruptible(py, "sub-command", move || sub.run())?.or_raise()
    }

    /// Run it, capturing output: `(description, returncode, stdout, stderr)`.
    #[pyo3(signature = (check=false))]
    fn output<'py>(&self, py: Python<'py>, check: bool) -> PyResult<Captured<'py>> {
        let sub = self.sub.clone();
        let out = interruptible(py, "sub-command", move || {
            if check {
                sub.checked_output()
            } else {
                sub.output()
            }
        })?
        .or_raise()?;
        Ok((
            out.status.to_string(),
            returncode(out.status),
            PyBytes::new(py, &out.stdout),
            PyBytes::new(py, &out.stderr),
        ))
    }
}

/// As `subprocess` gives it: the exit code, or minus the number of the signal that ended it.
pub(crate) fn returncode(status: hitchserve::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => -signal,
        (None, None) => -1,
    }
}

/// A finished sub-command: how it ended, its returncode, its stdout and stderr.
type Captured<'py> = (String, i32, Bound<'py, PyBytes>, Bound<'py, PyBytes>);
