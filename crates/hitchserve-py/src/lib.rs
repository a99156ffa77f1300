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

use hitchserve::services::{Cron, Postgres, Redis, Smtp};
use hitchserve::{Bundle, Error, HookContext, Interrupter, Restart, Service};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

mod errors;
mod logs;
mod subcommand;
mod values;
mod wait;

use errors::{describe, py_err, raised_error, OrRaise, Raised};
use logs::{console_width, Logs, Tail};
use subcommand::Subcommand;
use values::{secs, signal};
use wait::{interruptible, lock, SLICE};

// ---------------------------------------------------------------------------------------
// Service definitions

/// A service definition being built; added to a bundle with `Bundle.add`.
#[pyclass(module = "hitchserve._native", frozen)]
struct ServiceDef {
    service: Mutex<Option<Service>>,
    ready: Mutex<Option<Py<PyAny>>>,
    setup: Mutex<Option<Py<PyAny>>>,
    poststart: Mutex<Option<Py<PyAny>>>,
}

impl ServiceDef {
    fn of(service: Service) -> ServiceDef {
        ServiceDef {
            service: Mutex::new(Some(service)),
            ready: Mutex::new(None),
            setup: Mutex::new(None),
            poststart: Mutex::new(None),
        }
    }

    fn update(&self, f: impl FnOnce(Service) -> Service) -> PyResult<()> {
        let mut slot = lock(&self.service);
        let svc = slot
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this definition was already added"))?;
        *slot = Some(f(svc));
        Ok(())
    }
}

#[pymethods]
impl ServiceDef {
    /// A service running `command` (an argv list).
    #[new]
    fn new(command: Vec<OsString>) -> ServiceDef {
        ServiceDef::of(Service::new(command))
    }

    /// The ready-made PostgreSQL.
    #[staticmethod]
    #[pyo3(signature = (users=Vec::new(), databases=Vec::new(), bin_dir=None, fresh_initdb=false, os_user=None))]
    fn postgres(
        users: Vec<(String, String)>,
        databases: Vec<(String, String, Option<PathBuf>)>,
        bin_dir: Option<PathBuf>,
        fresh_initdb: bool,
        os_user: Option<String>,
    ) -> PyResult<ServiceDef> {
        let mut pg = Postgres::new();
        for (name, password) in &users {
            pg = pg.user(name, password);
        }
        for (name, owner, dump) in databases {
            pg = match dump {
                Some(dump) => pg.database_from_dump(&name, &owner, dump),
                None => pg.database(&name, &owner),
            };
        }
        if let Some(dir) = bin_dir {
            pg = pg.bin_dir(dir);
        }
        if fresh_initdb {
            pg = pg.fresh_initdb();
        }
        if let Some(user) = os_user {
            pg = pg.os_user(&user);
        }
        Ok(ServiceDef::of(pg.service().or_raise()?))
    }

    /// The ready-made Redis, with `--key value` configuration directives.
    #[staticmethod]
    #[pyo3(signature = (config=Vec::new()))]
    fn redis(config: Vec<(String, String)>) -> ServiceDef {
        let mut redis = Redis::new();
        for (k, v) in &config {
            redis = redis.config(k, v);
        }
        ServiceDef::of(redis.service())
    }

    /// The ready-made mock SMTP server.
    #[staticmethod]
    #[pyo3(signature = (program=None))]
    fn smtp(program: Option<PathBuf>) -> ServiceDef {
        let smtp = match program {
            Some(p) => Smtp::new().program(p),
            None => Smtp::new(),
        };
        ServiceDef::of(smtp.service())
    }

    /// The ready-made cron: `command` every `every` seconds of fake time.
    #[staticmethod]
    fn cron(every: f64, command: Vec<String>) -> PyResult<ServiceDef> {
        Ok(ServiceDef::of(Cron::every(secs(every)?, command).service()))
    }

    /// Ready when `pred(line)` is true for a line of stdout or stderr.
    fn ready_when(&self, pred: Py<PyAny>) {
        *lock(&self.ready) = Some(pred);
    }

    /// Ready when a line contains `needle`.
    fn ready_line_contains(&self, needle: String) -> PyResult<()> {
        self.update(|s| s.ready(hitchserve::Ready::line_contains(needle)))
    }

    /// Ready when the TCP address (`host:port`, templates allowed) accepts connections.
    fn ready_tcp(&self, addr: String) -> PyResult<()> {
        self.update(|s| s.ready(hitchserve::Ready::tcp_addr(addr)))
    }

    /// Run `hook(ctx)` before the service starts.
    fn set_setup(&self, hook: Py<PyAny>) {
        *lock(&self.setup) = Some(hook);
    }

    /// Run `hook(ctx)` once the service is ready.
    fn set_poststart(&self, hook: Py<PyAny>) {
        *lock(&self.poststart) = Some(hook);
    }

    fn directory(&self, dir: PathBuf) -> PyResult<()> {
        self.update(|s| s.directory(dir))
    }

    fn env(&self, key: OsString, value: OsString) -> PyResult<()> {
        self.update(|s| s.env(key, value))
    }

    fn needs(&self, names: Vec<String>) -> PyResult<()> {
        self.update(|s| s.needs(names))
    }

    fn needs_started(&self, names: Vec<String>) -> PyResult<()> {
        self.update(|s| s.needs_started(names))
    }

    fn needs_completed(&self, names: Vec<String>) -> PyResult<()> {
        self.update(|s| s.needs_completed(names))
    }

    fn port(&self, name: String) -> PyResult<()> {
        self.update(|s| s.port(name))
    }

    fn user(&self, name: String) -> PyResult<()> {
        self.update(|s| s.user(name))
    }

    fn one_shot(&self) -> PyResult<()> {
        self.update(Service::one_shot)
    }

    fn no_libfaketime(&self) -> PyResult<()> {
        self.update(Service::no_libfaketime)
    }

    fn stop_signal(&self, name: &str) -> PyResult<()> {
        let sig = signal(name)?;
        self.update(|s| s.stop_signal(sig))
    }

    /// The restart policy: `"never"`, `"on-failure"` or `"always"`, at most `max` restarts,
    /// the first after `backoff` seconds (the engine's default if `None`), doubled after each.
    #[pyo3(signature = (policy, max, backoff=None))]
    fn restart(&self, policy: &str, max: u32, backoff: Option<f64>) -> PyResult<()> {
        let restart = match policy {
            "never" => Restart::Never,
            "on-failure" => Restart::on_failure(max),
            "always" => Restart::always(max),
            other => {
                return Err(PyValueError::new_err(format!(
                    "not a restart policy: {other:?} (\"never\", \"on-failure\" or \"always\")"
                )))
            }
        };
        let restart = match backoff {
            Some(first) => restart.backoff(secs(first)?),
            None => restart,
        };
        self.update(|s| s.restart(restart))
    }
}

// ---------------------------------------------------------------------------------------
// Hooks

/// What a Python `setup`/`poststart` hook can do while it runs (the engine's `HookContext`).
/// Usable only during the hook: afterwards every method raises.
#[pyclass(module = "hitchserve._native", frozen)]
struct HookCtx {
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
fn run_hook(hook: &Py<PyAny>, ctx: &HookContext<'_>, raised: &Raised) -> hitchserve::HookResult {
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
        let mut svc = lock(&def.service)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this definition was already added"))?;
        if let Some(pred) = lock(&def.ready).take() {
            let raised = Arc::clone(&self.raised);
            let service = name.clone();
            svc = svc.ready_when(move |line| {
                Python::attach(|py| {
                    match pred.call1(py, (line,)).and_then(|r| r.is_truthy(py)) {
                        Ok(ready) => ready,
                        Err(err) => {
                            let message = describe(py, &err);
                            raised.keep(&service, err);
                            // Without the panic hook: the engine reports it, we raise it.
                            std::panic::resume_unwind(Box::new(message))
                        }
                    }
                })
            });
        }
        if let Some(hook) = lock(&def.setup).take() {
            let raised = Arc::clone(&self.raised);
            svc = svc.setup(move |ctx| run_hook(&hook, ctx, &raised));
        }
        if let Some(hook) = lock(&def.poststart).take() {
            let raised = Arc::clone(&self.raised);
            svc = svc.poststart(move |ctx| run_hook(&hook, ctx, &raised));
        }
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
