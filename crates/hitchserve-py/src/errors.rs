//! The engine's errors as the exceptions of `hitchserve.errors`, and the Python exceptions
//! raised by callbacks the engine called (readiness checks, hooks), kept until the engine's
//! error comes back so that the caller gets the Python exception itself.
//!
//! The message is the engine's (its advice put in Python terms by
//! `hitchserve.errors._pythonic`); the class, `service`, `last_lines`, `kind` and, for an
//! exit, `returncode` and `status` are attributes. The only wording of its own is the note it
//! adds to a kept exception, saying where the exception was raised and what became of the
//! services.

use std::sync::Mutex;

use hitchserve::Error;
use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;

use crate::wait::lock;

/// The `hitchserve.errors` class for an engine error.
pub(crate) fn class_of(e: &Error) -> &'static str {
    match e {
        Error::InvalidName { .. }
        | Error::InvalidSetting { .. }
        | Error::DuplicateService { .. }
        | Error::EmptyCommand { .. }
        | Error::CommandNotFound { .. }
        | Error::NotInstalled { .. }
        | Error::DirectoryMissing { .. }
        | Error::UnknownNeed { .. }
        | Error::NeedsCycle { .. }
        | Error::ProjectDir { .. }
        | Error::LibfaketimeMissing { .. }
        | Error::NoSuchUser { .. }
        | Error::ReadinessNeverPasses { .. }
        | Error::UnknownPort { .. }
        | Error::InvalidPattern { .. }
        | Error::Unpreloadable { .. }
        | Error::UnsafePath { .. }
        | Error::UnreachableForUser { .. }
        | Error::AlreadyStarted => "DefinitionError",
        Error::ExitedBeforeReady { .. }
        | Error::OneShotFailed { .. }
        | Error::HookFailed { .. }
        | Error::ReadinessPanicked { .. }
        | Error::Spawn { .. }
        | Error::Interrupted => "StartupError",
        Error::StartupTimeout { .. } => "StartupTimeout",
        Error::ServiceExited { .. } => "ServiceExited",
        Error::WaitTimeout { .. } => "LogTimeout",
        Error::EndedWhileWaiting { .. } => "LogEnded",
        Error::SubcommandFailed { .. } => "SubcommandFailed",
        Error::NotRunning | Error::ServiceNotRunning { .. } | Error::ShutDown => "NotRunning",
        Error::NoSuchService { .. } => "NoSuchService",
        Error::TimeTravelDisabled | Error::TimeOutOfRange => "TimeTravelError",
        Error::NoSuchProcess { .. } => "NoSuchProcess",
        Error::Shared { .. } => "SharedBundleError",
        _ => "ServiceError",
    }
}

/// The service an error is about, and the last lines it carries.
pub(crate) fn context_of(e: &Error) -> (Option<String>, Vec<String>) {
    match e {
        Error::ExitedBeforeReady {
            service,
            last_lines,
            ..
        }
        | Error::ServiceExited {
            service,
            last_lines,
            ..
        }
        | Error::HookFailed {
            service,
            last_lines,
            ..
        }
        | Error::OneShotFailed {
            service,
            last_lines,
            ..
        }
        | Error::ReadinessPanicked {
            service,
            last_lines,
            ..
        } => (Some(service.clone()), last_lines.clone()),
        Error::StartupTimeout { not_ready, .. } => (
            not_ready.first().map(|n| n.service.clone()),
            not_ready
                .iter()
                .flat_map(|n| n.last_lines.iter().cloned())
                .collect(),
        ),
        Error::WaitTimeout { last_lines, .. } | Error::EndedWhileWaiting { last_lines, .. } => {
            (None, last_lines.clone())
        }
        Error::InvalidName { name: service, .. }
        | Error::DuplicateService { service }
        | Error::EmptyCommand { service }
        | Error::CommandNotFound { service, .. }
        | Error::NotInstalled { service, .. }
        | Error::DirectoryMissing { service, .. }
        | Error::UnknownNeed { service, .. }
        | Error::Spawn { service, .. }
        | Error::NoSuchService { service, .. }
        | Error::NoSuchUser { service, .. }
        | Error::ReadinessNeverPasses { service, .. }
        | Error::UnknownPort { service, .. }
        | Error::UnreachableForUser { service, .. }
        | Error::ServiceNotRunning { service, .. }
        | Error::SubcommandFailed { service, .. } => (Some(service.clone()), Vec::new()),
        _ => (None, Vec::new()),
    }
}

/// The engine's error as the matching `hitchserve.errors` exception: the message is the
/// engine's, word for word but for the advice naming its Rust API (see
/// `hitchserve.errors._pythonic`); `service`, `last_lines` and `kind` are attributes.
pub(crate) fn py_err(e: Error) -> PyErr {
    let class = class_of(&e);
    py_err_as(e, class)
}

/// `py_err` raising `class` (a `hitchserve.errors` class that fits the error better where
/// it is raised).
pub(crate) fn py_err_as(e: Error, class: &str) -> PyErr {
    Python::attach(|py| {
        let (service, last_lines) = context_of(&e);
        let kind = e.kind().to_owned();
        let message = e.to_string();
        let build = || -> PyResult<PyErr> {
            let module = py.import("hitchserve.errors")?;
            // The advice in Python terms ("Service(directory=...)", not "Service::directory").
            let text = module.getattr("_pythonic")?.call1((message.as_str(),))?;
            let exc = module.getattr(class)?.call1((text,))?;
            exc.setattr("service", service.clone())?;
            exc.setattr("last_lines", last_lines.clone())?;
            exc.setattr("kind", kind.clone())?;
            if let Error::SubcommandFailed { status, .. }
            | Error::ExitedBeforeReady { status, .. }
            | Error::OneShotFailed { status, .. }
            | Error::ServiceExited { status, .. } = &e
            {
                exc.setattr("returncode", status.code())?;
                exc.setattr("status", status.to_string())?;
            }
            Ok(PyErr::from_value(exc))
        };
        match build() {
            Ok(err) => err,
            // A Ctrl-C that came while the exception was being made (the `KeyboardInterrupt`
            // Python raised in `_pythonic`): the interrupt is what the caller gets.
            Err(interrupt) if !interrupt.is_instance_of::<PyException>(py) => interrupt,
            Err(import_failed) => {
                let err = PyRuntimeError::new_err(message);
                err.set_cause(py, Some(import_failed));
                err
            }
        }
    })
}

/// An engine result as a Python one: its error raised as `py_err` makes it.
pub(crate) trait OrRaise<T> {
    fn or_raise(self) -> PyResult<T>;
}

impl<T> OrRaise<T> for hitchserve::Result<T> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

/// Python exceptions raised by callbacks the engine called (readiness checks, hooks), kept
/// until the engine's error comes back so the caller gets the Python exception itself.
#[derive(Default)]
pub(crate) struct Raised(Mutex<Vec<(String, PyErr)>>);

impl Raised {
    pub(crate) fn keep(&self, service: &str, err: PyErr) {
        lock(&self.0).push((service.to_owned(), err));
    }

    pub(crate) fn take(&self, service: &str) -> Option<PyErr> {
        let mut all = lock(&self.0);
        let at = all.iter().position(|(s, _)| s == service)?;
        Some(all.remove(at).1)
    }

    /// Drop what `service`'s earlier starts raised (a restart by its policy, a start whose
    /// caller pressed Ctrl-C): a new start reports only its own.
    pub(crate) fn forget(&self, service: &str) {
        lock(&self.0).retain(|(s, _)| s != service);
    }
}

/// Describe a Python exception in one line, for the engine's messages.
pub(crate) fn describe(py: Python<'_>, err: &PyErr) -> String {
    let name = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    format!("{name}: {}", err.value(py))
}

/// The engine's error, or the Python exception behind it (a hook or readiness check that
/// raised), with the engine's message as a note; `then` says what became of the services.
pub(crate) fn raised_error(py: Python<'_>, raised: &Raised, e: Error, then: &str) -> PyErr {
    let service = match &e {
        Error::HookFailed { service, .. } | Error::ReadinessPanicked { service, .. } => {
            Some(service.clone())
        }
        _ => None,
    };
    match service.and_then(|s| raised.take(&s)) {
        Some(original) => {
            let note = match &e {
                Error::ReadinessPanicked {
                    service,
                    last_lines,
                    log,
                    ..
                } => {
                    let shown: String = last_lines.iter().map(|l| format!("\n    {l}")).collect();
                    format!(
                        "hitchserve: raised by the readiness check (log_line_ready_checker) of service `{service}`; {then}{}{}",
                        match shown.is_empty() {
                            true => String::new(),
                            false => format!(". Its last lines:{shown}"),
                        },
                        match log {
                            Some(log) => format!("\nevery line of the run: {}", log.display()),
                            None => String::new(),
                        }
                    )
                }
                other => format!("hitchserve: {other}"),
            };
            let _ = original.add_note(py, note);
            original
        }
        None => py_err(e),
    }
}
