//! `NativeBundle`: the engine's `Bundle` as a Python class, from adding definitions through
//! `startup` (on the runner's thread, Ctrl-C interrupting it) to `shutdown` (there too, Ctrl-C
//! cutting the grace short) or the shutdown when it is dropped;
//! and what a started bundle hands out: service handles, log views, the ready-made services'
//! handles, time travel, the kernel of a service.
//!
//! The engine's bundle is `None` while `startup` runs, and a call meanwhile raises "the
//! bundle is starting up" (during `shutdown` it stays in place, locked: a call waits); a
//! call that waits releases the GIL (`with`), one that never waits keeps it (`quick`).
//! Invariant: the bundle is never dropped, nor stopped, with the GIL held.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use hitchserve::services::{Postgres, Redis, Smtp};
use hitchserve::{Bundle, Error, Interrupter, LogLine, Stream};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::definition::ServiceDef;
use crate::errors::{py_err, raised_error, OrRaise, Raised};
use crate::handle::ServiceHandle;
use crate::logs::{console_width, Logs};
use crate::services::{PostgresHandle, RedisHandle, SmtpHandle};
use crate::values::secs;
use crate::wait::{lock, SLICE};

/// A bundle of services (the engine's `Bundle`).
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct NativeBundle {
    /// `None` while `startup` runs (on its own thread).
    bundle: Arc<Mutex<Option<Bundle>>>,
    /// A look at it meanwhile: a setup or poststart hook (Python code the startup runs)
    /// reads its service's logs, the run directory, ports, through it.
    observer: hitchserve::Observer,
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

    /// Run `f` on the bundle, for calls that never wait (the GIL stays held) — but for the
    /// wait for the bundle itself while a `shutdown` holds it: that is done without the GIL
    /// (held, it would stall the main thread's Ctrl-C and any Python code the stop runs).
    fn quick<R>(&self, f: impl FnOnce(&Bundle) -> R) -> PyResult<R> {
        let guard = loop {
            match self.bundle.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                // Wait (without the GIL) until it is free, then take it with the GIL.
                Err(std::sync::TryLockError::WouldBlock) => {
                    Python::attach(|py| py.detach(|| drop(lock(&self.bundle))))
                }
            }
        };
        guard.as_ref().map(f).ok_or_else(starting)
    }

    /// Run `f`, and in interactive mode (the console muted) also return the bundle's own
    /// lines it logged, in the console format, for Python to print: what the user asked for
    /// at the prompt (a time travel, a log message) is shown; only service lines stay muted.
    /// Only the bundle's own lines that `mine` says are what `f` logged: other threads log
    /// meanwhile (their lines stay muted, or — warnings — the console printed them).
    fn said<R: Send>(
        &self,
        py: Python<'_>,
        mine: impl Fn(&LogLine) -> bool + Send + Sync,
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
                .filter(|l| l.is_bundle_message() && mine(l))
                .map(|l| format!("{l:width$}"))
                .collect();
            (result, said)
        })
    }

    /// A time travel: its line, printed (in interactive mode) before its error if it has one
    /// (the jump is made either way).
    fn travel(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Bundle) -> Result<(), Error> + Send,
    ) -> PyResult<Vec<String>> {
        let mine = |l: &LogLine| l.text().starts_with("Time traveling to ");
        let (result, said) = self.said(py, mine, f)?;
        if result.is_err() {
            let print = py.import("builtins")?.getattr("print")?;
            for line in &said {
                print.call1((line,))?;
            }
        }
        result.or_raise()?;
        Ok(said)
    }

    fn handle(&self, name: &str) -> PyResult<hitchserve::ServiceHandle> {
        match self.quick(|b| b.service(name)) {
            Ok(found) => found.or_raise(),
            // Starting up (a hook asks): through the look at it.
            Err(starting) => match self.observer.service(name) {
                Err(Error::NotRunning) => Err(starting),
                found => found.or_raise(),
            },
        }
    }

    /// The services' names, also while starting up.
    fn names(&self) -> Vec<String> {
        self.quick(Bundle::service_names)
            .unwrap_or_else(|_| self.observer.service_names())
    }

    /// The startup error, or the Python exception behind it (see `raised_error`).
    fn startup_error(&self, py: Python<'_>, e: Error) -> PyErr {
        // A service that was ready and exited while others still started: the startup
        // failed (a `StartupError`, as `startup()` promises) because a service exited.
        if matches!(e, Error::ServiceExited { .. }) {
            return crate::errors::py_err_as(e, "ExitedDuringStartup");
        }
        raised_error(
            py,
            &self.raised,
            e,
            "startup stopped every service it had started",
        )
    }

    /// Run `job` on the runner's thread (see `runner`), taking Python's signals meanwhile:
    /// each (Ctrl-C) interrupts the bundle (see `Interrupter::interrupt`: a startup ends, a
    /// stop under way is cut short), and the first is returned for raising once `job` is
    /// done. `what` names it in errors. (Signals reach only the main thread: elsewhere the
    /// wait just waits.)
    fn on_runner<R: Send + 'static>(
        &self,
        py: Python<'_>,
        what: &str,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> PyResult<(R, Option<PyErr>)> {
        let (tx, rx) = mpsc::channel();
        let spawned = crate::runner::run_startup(
            py,
            Box::new(move || {
                let answer = job();
                let deliver: crate::runner::Deliver = Box::new(move || {
                    let _ = tx.send(answer);
                });
                deliver
            }),
        );
        if let Err(e) = spawned {
            return Err(PyRuntimeError::new_err(format!(
                "could not start the {what} thread: {e}"
            )));
        }
        let rx = Mutex::new(rx);
        let mut interrupted: Option<PyErr> = None;
        loop {
            match py.detach(|| lock(&rx).recv_timeout(SLICE)) {
                Ok(answer) => return Ok((answer, interrupted)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(signal) = py.check_signals() {
                        self.interrupter.interrupt();
                        interrupted.get_or_insert(signal);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err(format!(
                        "the {what} thread ended without an answer"
                    )))
                }
            }
        }
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
            observer: bundle.observer(),
            bundle: Arc::new(Mutex::new(Some(bundle))),
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
        // On another thread, so this one can take Python's signals while the startup waits;
        // the bundle is out of its place meanwhile (a call then is told it is starting up).
        let mut bundle = py
            .detach(|| lock(&self.bundle).take())
            .ok_or_else(starting)?;
        let ((bundle, result), interrupted) = self.on_runner(py, "startup", move || {
            let result = bundle.startup();
            (bundle, result)
        })?;
        py.detach(|| *lock(&self.bundle) = Some(bundle));
        match interrupted {
            Some(signal) => Err(signal),
            None => result.map_err(|e| self.startup_error(py, e)),
        }
    }

    /// On the runner's thread, as `startup`, the bundle locked in its place (another call
    /// waits for the stop, as it would on this thread): Ctrl-C cuts the services' grace
    /// short — what is left gets SIGKILL at once — and is raised once everything stopped.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let cell = Arc::clone(&self.bundle);
        let (result, interrupted) = self.on_runner(py, "shutdown", move || {
            lock(&cell).as_ref().map(Bundle::shutdown)
        })?;
        let result = result.ok_or_else(starting)?;
        match interrupted {
            Some(signal) => Err(signal),
            None => result.or_raise(),
        }
    }

    fn check(&self) -> PyResult<()> {
        self.quick(Bundle::check)?.or_raise()
    }

    /// Move the clocks by `micros` microseconds (negative: back), as one relative jump so
    /// the log says it exactly ("3 days ago").
    /// In interactive mode, the lines it logged (see `said`).
    fn time_travel_by(&self, py: Python<'_>, micros: i64) -> PyResult<Vec<String>> {
        let by = hitchserve::jiff::SignedDuration::from_micros(micros);
        self.travel(py, |b| b.time_travel_by(by))
    }

    /// Make the clocks say this moment (microseconds since the Unix epoch). In interactive
    /// mode, the lines it logged (see `said`).
    fn time_travel_to(&self, py: Python<'_>, micros: i64) -> PyResult<Vec<String>> {
        // Beyond what a timestamp holds is beyond what a clock offset can reach.
        let moment = hitchserve::jiff::Timestamp::from_microsecond(micros)
            .map_err(|_| crate::errors::py_err(hitchserve::Error::TimeOutOfRange))?;
        self.travel(py, |b| b.time_travel_to(moment))
    }

    /// What time the services think it is, in microseconds since the Unix epoch.
    fn now(&self) -> PyResult<i64> {
        Ok(self.quick(Bundle::now)?.as_microsecond())
    }

    /// Log `message`; in interactive mode, its lines to print (see `said`).
    fn log(&self, py: Python<'_>, message: &str) -> PyResult<Vec<String>> {
        let mine = |l: &LogLine| {
            l.stream() == Stream::Stdout && message.split('\n').any(|m| l.text() == m)
        };
        Ok(self.said(py, mine, |b| b.log(message))?.1)
    }

    /// Log `message` as a warning; in interactive mode, its lines to print (see `said`).
    fn warn(&self, py: Python<'_>, message: &str) -> PyResult<Vec<String>> {
        let mine = |l: &LogLine| {
            l.stream() == Stream::Stderr && message.split('\n').any(|m| l.text() == m)
        };
        Ok(self.said(py, mine, |b| b.warn(message))?.1)
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
        // Held by a shutdown: it is there (waited for, as `quick` does, without the GIL).
        self.quick(|_| ()).is_err()
    }

    fn logs(&self) -> PyResult<Logs> {
        Ok(Logs {
            logs: self
                .quick(Bundle::logs)
                .unwrap_or_else(|_| self.observer.logs()),
            width: console_width(&self.names()),
        })
    }

    fn service(&self, name: &str) -> PyResult<ServiceHandle> {
        Ok(ServiceHandle {
            handle: self.handle(name)?,
            width: console_width(&self.names()),
            raised: Arc::clone(&self.raised),
        })
    }

    /// Wait until service `name` is ready (after a start, a restart or a restart by its
    /// policy), within the startup timeout; Ctrl-C answered.
    fn wait_until_ready(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.service(name)?.wait_until_ready(py)
    }

    fn service_names(&self) -> PyResult<Vec<String>> {
        Ok(self.names())
    }

    fn project_dir(&self) -> PyResult<PathBuf> {
        self.quick(|b| b.project_dir().to_path_buf())
    }

    fn run_dir(&self) -> PyResult<Option<PathBuf>> {
        Ok(self
            .quick(|b| b.run_dir().map(PathBuf::from))
            .unwrap_or_else(|_| self.observer.run_dir()))
    }

    fn port(&self, service: &str, name: &str) -> PyResult<u16> {
        match self.quick(|b| b.port(service, name)) {
            Ok(port) => port.or_raise(),
            Err(_) => self.observer.port(service, name).or_raise(),
        }
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
                    what,
                    last_lines,
                    log,
                    ..
                }) => {
                    py.check_signals()?;
                    if Instant::now() >= deadline {
                        return Err(py_err(Error::WaitTimeout {
                            what,
                            timeout: full,
                            last_lines,
                            log,
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
