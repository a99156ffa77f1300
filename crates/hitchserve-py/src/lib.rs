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
//! Invariant: never call into Python while holding one of our locks (a lock held by a thread
//! waiting for the GIL, wanted by the thread holding it, is a deadlock).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use hitchserve::services::{Postgres, Redis, Smtp};
use hitchserve::{Bundle, Error, Interrupter};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

mod callbacks;
mod definition;
mod errors;
mod logs;
mod subcommand;
mod values;
mod wait;

use callbacks::HookCtx;
use definition::ServiceDef;
use errors::{py_err, raised_error, OrRaise, Raised};
use logs::{console_width, Logs, Tail};
use subcommand::Subcommand;
use values::{secs, signal};
use wait::{interruptible, lock, SLICE};

// ---------------------------------------------------------------------------------------
// The bundle

/// A bundle of services (the engine's `Bundle`).
#[pyclass(module = "hitchserve._native", frozen)]
struct NativeBundle {
    /// `None` while `startup` runs (on its own thread).
    bundle: Mutex<Option<Bundle>>,
    interrupter: Interrupter,
    raised: Arc<Raised>,
}

impl NativeBundle {
    /// Run `f` on the bundle with the GIL released.
    fn with<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&Bundle) -> R + Send) -> PyResult<R> {
        py.detach(|| {
            let guard = lock(&self.bundle);
            guard.as_ref().map(f)
        })
        .ok_or_else(starting)
    }

    /// Run `f` on the bundle, for calls that never wait (the GIL stays held).
    fn quick<R>(&self, f: impl FnOnce(&Bundle) -> R) -> PyResult<R> {
        lock(&self.bundle).as_ref().map(f).ok_or_else(starting)
    }

    /// Run `f`, and in interactive mode (the console muted) also return the bundle's own
    /// lines it logged, in the console format, for Python to print: what the user asked for
    /// at the prompt (a time travel, a log message) is shown; only service lines stay muted.
    fn said<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Bundle) -> R + Send,
    ) -> PyResult<(R, Vec<String>)> {
        self.with(py, |b| {
            if !b.is_interactive() {
                return (f(b), Vec::new());
            }
            let tail = b.logs().tail();
            let result = f(b);
            let width = console_width(&b.service_names());
            let said = tail
                .grep(|_| true)
                .iter()
                .filter(|l| l.is_bundle_message())
                .map(|l| format!("{l:width$}"))
                .collect();
            (result, said)
        })
    }

    fn handle(&self, name: &str) -> PyResult<hitchserve::ServiceHandle> {
        self.quick(|b| b.service(name))?.or_raise()
    }

    /// The startup error, or the Python exception behind it (see `raised_error`).
    fn startup_error(&self, py: Python<'_>, e: Error) -> PyErr {
        raised_error(
            py,
            &self.raised,
            e,
            "startup stopped every service it had started",
        )
    }
}

fn starting() -> PyErr {
    Python::attach(|py| {
        let build = || -> PyResult<PyErr> {
            let exc = py.import("hitchserve.errors")?.getattr("ServiceError")?.call1((
                "the bundle is starting up (startup() is running): wait for it to return; inside a setup or poststart hook use the service's own log() and subcommand()",
            ))?;
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    })
}

#[pymethods]
impl NativeBundle {
    #[new]
    #[pyo3(signature = (project_directory, startup_timeout=15.0, shutdown_timeout=5.0, time_travel=true, log_memory_limit=None))]
    fn new(
        project_directory: PathBuf,
        startup_timeout: f64,
        shutdown_timeout: f64,
        time_travel: bool,
        log_memory_limit: Option<usize>,
    ) -> PyResult<NativeBundle> {
        let mut bundle = Bundle::new(project_directory)
            .startup_timeout(secs(startup_timeout)?)
            .shutdown_timeout(secs(shutdown_timeout)?);
        if !time_travel {
            bundle = bundle.without_time_travel();
        }
        if let Some(bytes) = log_memory_limit {
            bundle = bundle.log_memory_limit(bytes);
        }
        Ok(NativeBundle {
            interrupter: bundle.interrupter(),
            bundle: Mutex::new(Some(bundle)),
            raised: Arc::default(),
        })
    }

    /// Add a service under `name`.
    fn add(&self, py: Python<'_>, name: String, def: &ServiceDef) -> PyResult<()> {
        let svc = def.take(&name, &self.raised)?;
        py.detach(|| lock(&self.bundle).as_mut().map(|b| b.add(name, svc)))
            .ok_or_else(starting)?
            .or_raise()
    }

    /// Start every service and wait until all are ready; Ctrl-C interrupts it (everything
    /// started is stopped, then `KeyboardInterrupt` is raised).
    fn startup(&self, py: Python<'_>) -> PyResult<()> {
        let mut bundle = py
            .detach(|| lock(&self.bundle).take())
            .ok_or_else(starting)?;
        let (tx, rx) = mpsc::channel();
        // Its own thread, so this one can take Python's signals while the startup waits; the
        // engine spawns services from its supervisor threads, so this thread may end.
        let spawned = std::thread::Builder::new()
            .name("hitchserve-startup".into())
            .spawn(move || {
                let result = bundle.startup();
                let _ = tx.send((bundle, result));
            });
        if let Err(e) = spawned {
            return Err(PyRuntimeError::new_err(format!(
                "could not start the startup thread: {e}"
            )));
        }
        let rx = Mutex::new(rx);
        let mut interrupted: Option<PyErr> = None;
        loop {
            match py.detach(|| lock(&rx).recv_timeout(SLICE)) {
                Ok((bundle, result)) => {
                    py.detach(|| *lock(&self.bundle) = Some(bundle));
                    if let Some(signal) = interrupted {
                        return Err(signal);
                    }
                    return result.map_err(|e| self.startup_error(py, e));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupted.is_none() {
                        if let Err(signal) = py.check_signals() {
                            self.interrupter.interrupt();
                            interrupted = Some(signal);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err(
                        "the startup thread ended without an answer",
                    ))
                }
            }
        }
    }

    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, Bundle::shutdown)?.or_raise()
    }

    fn check(&self) -> PyResult<()> {
        self.quick(Bundle::check)?.or_raise()
    }

    /// Move the clocks by `micros` microseconds (negative: back), as one relative jump so
    /// the log says it exactly ("3 days ago").
    /// In interactive mode, the lines it logged (see `said`).
    fn time_travel_by(&self, py: Python<'_>, micros: i64) -> PyResult<Vec<String>> {
        let by = hitchserve::jiff::SignedDuration::from_micros(micros);
        let (result, said) = self.said(py, |b| b.time_travel_by(by))?;
        result.or_raise()?;
        Ok(said)
    }

    /// Make the clocks say this moment (microseconds since the Unix epoch). In interactive
    /// mode, the lines it logged (see `said`).
    fn time_travel_to(&self, py: Python<'_>, micros: i64) -> PyResult<Vec<String>> {
        let moment = hitchserve::jiff::Timestamp::from_microsecond(micros)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let (result, said) = self.said(py, |b| b.time_travel_to(moment))?;
        result.or_raise()?;
        Ok(said)
    }

    /// What time the services think it is, in microseconds since the Unix epoch.
    fn now(&self) -> PyResult<i64> {
        Ok(self.quick(Bundle::now)?.as_microsecond())
    }

    /// Log `message`; in interactive mode, its lines to print (see `said`).
    fn log(&self, py: Python<'_>, message: &str) -> PyResult<Vec<String>> {
        Ok(self.said(py, |b| b.log(message))?.1)
    }

    /// Log `message` as a warning; in interactive mode, its lines to print (see `said`).
    fn warn(&self, py: Python<'_>, message: &str) -> PyResult<Vec<String>> {
        Ok(self.said(py, |b| b.warn(message))?.1)
    }

    fn start_interactive_mode(&self) -> PyResult<()> {
        self.quick(Bundle::start_interactive_mode)
    }

    fn stop_interactive_mode(&self) -> PyResult<()> {
        self.quick(Bundle::stop_interactive_mode)
    }

    fn is_interactive(&self) -> PyResult<bool> {
        self.quick(Bundle::is_interactive)
    }

    fn is_starting(&self) -> bool {
        lock(&self.bundle).is_none()
    }

    fn logs(&self) -> PyResult<Logs> {
        self.quick(|b| Logs {
            logs: b.logs(),
            width: console_width(&b.service_names()),
        })
    }

    fn service(&self, name: &str) -> PyResult<ServiceHandle> {
        Ok(ServiceHandle {
            handle: self.handle(name)?,
            width: self.quick(|b| console_width(&b.service_names()))?,
            raised: Arc::clone(&self.raised),
        })
    }

    /// Wait until service `name` is ready (after a start, a restart or a restart by its
    /// policy), within the startup timeout; Ctrl-C answered.
    fn wait_until_ready(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.service(name)?.wait_until_ready(py)
    }

    fn service_names(&self) -> PyResult<Vec<String>> {
        self.quick(Bundle::service_names)
    }

    fn project_dir(&self) -> PyResult<PathBuf> {
        self.quick(|b| b.project_dir().to_path_buf())
    }

    fn run_dir(&self) -> PyResult<Option<PathBuf>> {
        self.quick(|b| b.run_dir().map(PathBuf::from))
    }

    fn port(&self, service: &str, name: &str) -> PyResult<u16> {
        self.quick(|b| b.port(service, name))?.or_raise()
    }

    fn pstree(&self) -> PyResult<String> {
        Ok(self.quick(Bundle::pstree)?.or_raise()?.to_string())
    }

    fn timeline(&self) -> PyResult<String> {
        Ok(self.quick(Bundle::timeline)?.or_raise()?.to_string())
    }

    /// `(lines, bytes_in_memory, memory_limit)`.
    fn log_stats(&self) -> PyResult<(u64, usize, usize)> {
        let s = self.quick(Bundle::log_stats)?;
        Ok((s.lines, s.bytes_in_memory, s.memory_limit))
    }

    /// Wait for the service to embed an IPython kernel; its connection file.
    fn wait_for_kernel(&self, py: Python<'_>, name: &str, timeout: f64) -> PyResult<PathBuf> {
        let full = secs(timeout)?;
        let deadline = Instant::now() + full;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(SLICE);
            match self.with(py, |b| b.wait_for_kernel(name, slice))? {
                Ok(path) => return Ok(path),
                Err(Error::WaitTimeout {
                    what, last_lines, ..
                }) => {
                    py.check_signals()?;
                    if Instant::now() >= deadline {
                        return Err(py_err(Error::WaitTimeout {
                            what,
                            timeout: full,
                            last_lines,
                        }));
                    }
                }
                Err(e) => return Err(py_err(e)),
            }
        }
    }

    /// Hand the terminal to `jupyter console` on the service's kernel.
    fn connect_to_kernel(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.with(py, |b| b.connect_to_kernel(name))?.or_raise()
    }

    /// The ready-made PostgreSQL's port.
    fn postgres(&self, name: &str) -> PyResult<PostgresHandle> {
        Ok(PostgresHandle {
            handle: self.quick(|b| Postgres::handle(b, name))?.or_raise()?,
        })
    }

    /// The ready-made Redis of a started bundle.
    fn redis(&self, name: &str) -> PyResult<RedisHandle> {
        Ok(RedisHandle {
            handle: self.quick(|b| Redis::handle(b, name))?.or_raise()?,
        })
    }

    /// The ready-made mock SMTP server of a started bundle.
    fn smtp(&self, name: &str) -> PyResult<SmtpHandle> {
        Ok(SmtpHandle {
            handle: self.quick(|b| Smtp::handle(b, name))?.or_raise()?,
        })
    }
}

impl Drop for NativeBundle {
    fn drop(&mut self) {
        // Stopping waits for the services: not with the GIL held.
        let bundle = lock(&self.bundle).take();
        if let Some(bundle) = bundle {
            Python::attach(|py| py.detach(move || drop(bundle)));
        }
    }
}

/// The ready-made PostgreSQL of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
struct PostgresHandle {
    handle: hitchserve::services::PostgresHandle,
}

#[pymethods]
impl PostgresHandle {
    fn port(&self) -> u16 {
        self.handle.port()
    }

    fn connection_url(&self, database: &str) -> String {
        self.handle.connection_url(database)
    }

    fn psql(&self, database: &str, sql: &str) -> Subcommand {
        Subcommand {
            sub: self.handle.psql(database, sql),
        }
    }

    fn psql_file(&self, database: &str, file: PathBuf) -> Subcommand {
        Subcommand {
            sub: self.handle.psql_file(database, file),
        }
    }
}

/// The ready-made Redis of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
struct RedisHandle {
    handle: hitchserve::services::RedisHandle,
}

#[pymethods]
impl RedisHandle {
    fn port(&self) -> u16 {
        self.handle.port()
    }

    fn url(&self) -> String {
        self.handle.url()
    }

    fn cli(&self, args: Vec<OsString>) -> Subcommand {
        Subcommand {
            sub: self.handle.cli(args),
        }
    }
}

/// The ready-made mock SMTP server of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
struct SmtpHandle {
    handle: hitchserve::services::SmtpHandle,
}

#[pymethods]
impl SmtpHandle {
    fn port(&self) -> u16 {
        self.handle.port()
    }
}

// ---------------------------------------------------------------------------------------
// Services, logs, sub-commands

/// One service of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
struct ServiceHandle {
    handle: hitchserve::ServiceHandle,
    /// The console's label width (see `console_width`).
    width: usize,
    /// The bundle's: what a readiness check or hook raised while the service started again.
    raised: Arc<Raised>,
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

    /// A signal to its process group, its exit not expected (a crash is reported).
    fn kill(&self, name: &str) -> PyResult<()> {
        self.handle.kill(signal(name)?).or_raise()
    }

    /// Wait until it is ready, within the startup timeout. Ctrl-C answered.
    fn wait_until_ready(&self, py: Python<'_>) -> PyResult<()> {
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

/// Run the mock SMTP server (the `hitchsmtp` crate) in this process with the command line
/// `args`, until the process is killed; returns the exit code of a failure to start. The
/// GIL is released: the server never calls into Python.
#[pyfunction]
fn smtp_main(py: Python<'_>, args: Vec<String>) -> i32 {
    py.detach(move || hitchsmtp::run(args))
}

/// The native half of the `hitchserve` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(smtp_main, m)?)?;
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
