//! `ServiceDef`: a service definition being built from Python (the engine's `Service`, or a
//! ready-made PostgreSQL, Redis, mock SMTP server or cron), with the Python callables it was
//! given (a readiness predicate, setup and poststart hooks), until `Bundle.add` takes it.
//!
//! It holds the callables as they are and wraps them only when the definition is taken
//! (`callbacks` says how they are called). Invariant: a definition is taken once; after that
//! a method that changes the engine's `Service`, and a second take, raise "this definition was
//! already added".

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hitchserve::services::{Cron, Postgres, Redis, Smtp};
use hitchserve::{Restart, Service};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::callbacks::{ready_check, run_hook};
use crate::errors::{OrRaise, Raised};
use crate::values::{secs, signal};
use crate::wait::lock;

/// A service definition being built; added to a bundle with `Bundle.add`.
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct ServiceDef {
    service: Mutex<Option<Service>>,
    ready: Mutex<Option<Py<PyAny>>>,
    /// Probes that must pass too (`ready_tcp`, `ready_http`, `ready_file` of a `Service`).
    probes: Mutex<Vec<hitchserve::Ready>>,
    setup: Mutex<Option<Py<PyAny>>>,
    poststart: Mutex<Option<Py<PyAny>>>,
}

impl ServiceDef {
    fn of(service: Service) -> ServiceDef {
        ServiceDef {
            service: Mutex::new(Some(service)),
            ready: Mutex::new(None),
            probes: Mutex::new(Vec::new()),
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

    /// The engine's `Service`, its Python callables wrapped (a readiness check or hook that
    /// raises keeps its exception in `raised`, under `name`); the definition is used up.
    pub(crate) fn take(&self, name: &str, raised: &Arc<Raised>) -> PyResult<Service> {
        let mut svc = lock(&self.service)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this definition was already added"))?;
        let pred = lock(&self.ready).take();
        let mut checks = std::mem::take(&mut *lock(&self.probes));
        if let Some(pred) = pred {
            let line = ready_check(pred, Arc::clone(raised), name.to_owned());
            checks.insert(0, hitchserve::Ready::line(line));
        }
        // The line check and every probe must pass (one alone is itself).
        match checks.len() {
            0 => {}
            1 => svc = svc.ready(checks.remove(0)),
            _ => svc = svc.ready(hitchserve::Ready::all(checks)),
        }
        if let Some(hook) = lock(&self.setup).take() {
            let raised = Arc::clone(raised);
            svc = svc.setup(move |ctx| run_hook(&hook, ctx, &raised));
        }
        if let Some(hook) = lock(&self.poststart).take() {
            let raised = Arc::clone(raised);
            svc = svc.poststart(move |ctx| run_hook(&hook, ctx, &raised));
        }
        Ok(svc)
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

    /// Also ready only once the TCP address (`host:port`, templates allowed) accepts a
    /// connection.
    fn probe_tcp(&self, addr: String) {
        lock(&self.probes).push(hitchserve::Ready::tcp_addr(addr));
    }

    /// Also ready only once an HTTP GET of `url` answers with a status below 500.
    fn probe_http(&self, url: String) {
        lock(&self.probes).push(hitchserve::Ready::http(url));
    }

    /// Also ready only once this start has made (or written) the file `path`.
    fn probe_file(&self, path: PathBuf) {
        lock(&self.probes).push(hitchserve::Ready::file(path));
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
