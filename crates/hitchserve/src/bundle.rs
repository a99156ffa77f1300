//! The `Bundle`: named services with a project directory, started as a DAG and stopped together.
//!
//! Owns the public handle, validation of definitions (before anything starts), the startup
//! walk over `needs` (everything that can start in parallel does), startup errors, crash
//! reporting and shutdown on `Drop`. Spawning and stopping processes is `supervise`'s job.
//! Invariant: when `startup` returns an error, nothing it started is still running.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, NotReady, Result};
use crate::guardian;
use crate::logfiles::LogFiles;
use crate::logs::{Logs, Part, Stream};
use crate::process::Process;
use crate::rundir::RunDir;
use crate::service::{Condition, Service};
use crate::signal::{ExitStatus, Signal};
use crate::subcommand::Subcommand;
use crate::supervise::{deadline_after, Output, Phase, Plan, Shared, State, MARKER_VAR};
use crate::timetravel::{describe_jump, describe_shift, show, Clock};

/// How many of a service's last lines an error message carries.
const LAST_LINES: usize = 20;

/// A set of named services that start, run and stop together.
///
/// ```no_run
/// use std::time::Duration;
/// use hitchserve::{Bundle, Service};
///
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".")
///     .startup_timeout(Duration::from_secs(15))
///     .shutdown_timeout(Duration::from_secs(5));
/// bundle.add("Web", Service::new(["python3", "-u", "-m", "http.server", "8000"])
///     .ready_when(|line| line.contains("Serving HTTP")))?;
/// bundle.startup()?;
/// bundle.log("the test begins");
/// // ... talk to the services ...
/// bundle.shutdown()?; // also done when the bundle is dropped
/// # Ok(()) }
/// ```
pub struct Bundle {
    project: PathBuf,
    startup_timeout: Duration,
    shutdown_timeout: Duration,
    defs: Vec<(String, Service)>,
    output: Arc<Output>,
    shared: Option<Arc<Shared>>,
    stopped: std::sync::atomic::AtomicBool,
    time_travel: bool,
    clock: Clock,
    ports: crate::ports::PortTable,
    held_ports: Vec<crate::ports::HeldPort>,
    progress: Option<Duration>,
    interrupt: Arc<InterruptState>,
}

/// Ends a [`Bundle::startup`] that is under way from another thread: a signal handler's
/// thread, say, so that Ctrl-C during a slow startup stops at once instead of at the
/// startup timeout. Get one with [`Bundle::interrupter`] before calling `startup`.
///
/// ```no_run
/// # fn main() -> hitchserve::Result<()> {
/// use hitchserve::{Bundle, Error};
/// let mut bundle = Bundle::new(".");
/// let interrupter = bundle.interrupter();
/// std::thread::spawn(move || {
///     // ... wait for Ctrl-C here ...
///     interrupter.interrupt();
/// });
/// match bundle.startup() {
///     Err(Error::Interrupted) => println!("stopped before it was ready"),
///     other => other?,
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Interrupter(Arc<InterruptState>);

#[derive(Debug, Default)]
struct InterruptState {
    requested: std::sync::atomic::AtomicBool,
    /// The run being started, to wake its wait.
    run: std::sync::Mutex<Option<std::sync::Weak<Shared>>>,
}

impl Interrupter {
    /// Make the current (or next) `startup` fail with [`Error::Interrupted`] and stop what
    /// it started. It can't be taken back: every later `startup` of this bundle fails the
    /// same way. No effect on a bundle that is already up: call `shutdown` for that.
    pub fn interrupt(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        let run = self
            .0
            .run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        if let Some(shared) = run {
            // Under the state lock, so the startup wait can't miss the flag.
            let _states = shared.lock();
            shared.changed.notify_all();
        }
    }
}

impl Bundle {
    /// A bundle whose services run in `project_dir` unless told otherwise. Logs go to
    /// `<project_dir>/.hitchserve/runs/<run>/`.
    pub fn new(project_dir: impl Into<PathBuf>) -> Bundle {
        Bundle {
            project: project_dir.into(),
            startup_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(5),
            defs: Vec::new(),
            output: Arc::new(Output::new()),
            shared: None,
            stopped: std::sync::atomic::AtomicBool::new(false),
            time_travel: true,
            clock: Clock::new(),
            ports: crate::ports::PortTable::new(),
            held_ports: Vec::new(),
            progress: None,
            interrupt: Arc::default(),
        }
    }

    /// A handle that can end this bundle's `startup` from another thread; see
    /// [`Interrupter`].
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(Arc::clone(&self.interrupt))
    }

    /// How long the whole startup may take, every service included (default 15 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Bundle {
        self.startup_timeout = timeout;
        self
    }

    /// How long services get to stop after their stop signal before SIGKILL (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Bundle {
        self.shutdown_timeout = timeout;
        self
    }

    /// While starting up, log which services are still starting every `every` (off by
    /// default; `hitchserve up` turns it on on a terminal).
    pub fn progress_every(mut self, every: Duration) -> Bundle {
        self.progress = Some(every);
        self
    }

    /// How many bytes of log lines to keep in memory (default 64 MiB for the whole bundle).
    /// Older lines beyond it live only in the run's `all.log`, from which queries read them
    /// back: nothing is lost, memory stays bounded for chatty services. If `all.log` can't be
    /// written (a full disk), memory still stays bounded: the oldest lines not on disk are
    /// dropped, with a warning and an error ([`Error::LogFileFailed`]).
    pub fn log_memory_limit(self, bytes: usize) -> Bundle {
        self.output.store.set_limit(bytes);
        self
    }

    /// Add a service. Names are letters, digits, `_`, `-` and `.`, start with a letter or
    /// digit, are at most 64 characters and unique; `Hitch` is the bundle's own.
    pub fn add(&mut self, name: impl Into<String>, service: Service) -> Result<()> {
        let name = name.into();
        if self.shared.is_some() {
            return Err(Error::AlreadyStarted);
        }
        check_name(&name)?;
        if self.defs.iter().any(|(n, _)| *n == name) {
            return Err(Error::DuplicateService { service: name });
        }
        let hook_label = if service.setup.is_some() {
            "Err Setup ".len()
        } else if service.poststart.is_some() {
            "Err Post ".len()
        } else {
            "Err ".len()
        };
        self.output.console.fit_label(hook_label + name.len());
        self.defs.push((name, service));
        Ok(())
    }

    pub(crate) fn startup_timeout_value(&self) -> Duration {
        self.startup_timeout
    }

    /// The names of its services, in the order they were added.
    pub fn service_names(&self) -> Vec<String> {
        self.defs.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The project directory given to [`Bundle::new`].
    pub fn project_dir(&self) -> &Path {
        &self.project
    }

    /// This run's directory (`.hitchserve/runs/<run>`), once started.
    pub fn run_dir(&self) -> Option<&Path> {
        self.shared.as_ref().map(|s| s.run.path.as_path())
    }

    /// Start every service, each once all it needs is ready, and block until all are ready.
    ///
    /// On any failure (a bad definition, a service that exits or doesn't become ready in
    /// time, a readiness check that panics) everything already started is stopped and the
    /// error says which service and why.
    pub fn startup(&mut self) -> Result<()> {
        if self.shared.is_some() {
            return Err(Error::AlreadyStarted);
        }
        // A startup that failed before starting anything (a bad definition, say) may be
        // tried again once the cause is fixed.
        self.stopped.store(false, Ordering::SeqCst);
        self.output.store.reopen();
        let result = self.start_run();
        if result.is_err() {
            // Nothing runs (any more): waits on the logs must end rather than hang.
            self.stopped.store(true, Ordering::SeqCst);
            if self.shared.is_none() {
                self.output.store.close();
            }
        }
        result
    }

    fn start_run(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let project = std::fs::canonicalize(&self.project).map_err(|source| Error::ProjectDir {
            path: self.project.clone(),
            source,
        })?;
        let run = RunDir::allocate(&project);
        self.allocate_ports()?;
        let mut plans = self.plan(&project, &run.id)?;
        let faked: Vec<&str> = plans
            .iter()
            .filter(|p| p.faked)
            .map(|p| p.name.as_str())
            .collect();
        let clock = if faked.is_empty() {
            None
        } else {
            let paths = Clock::plan(&run.path, &faked)?;
            for plan in plans.iter_mut().filter(|p| p.faked) {
                let uid = plan
                    .run_as
                    .map_or_else(crate::safepath::euid, |(uid, _)| uid);
                paths.apply(&mut plan.env, uid);
            }
            Some(paths)
        };
        if clock.is_some() || plans.iter().any(|p| p.run_as.is_some()) {
            run.create().map_err(|source| Error::Io {
                context: format!(
                    "could not create the run directory `{}`",
                    run.path.display()
                ),
                source,
            })?;
        }
        let must_reach: Vec<PathBuf> = clock
            .iter()
            .flat_map(|c| [&c.shim, &c.libfaketime, &c.faketime_file, &c.offset_file])
            .cloned()
            .collect();
        if let Some(paths) = clock {
            let users: Vec<(u32, u32)> = plans
                .iter()
                .filter(|p| p.faked)
                .map(|p| {
                    p.run_as.unwrap_or_else(|| {
                        (crate::safepath::euid(), nix::unistd::getegid().as_raw())
                    })
                })
                .collect();
            self.clock.start(paths, &users)?;
        }
        prepare_other_users(&plans, &run.path, &must_reach)?;
        guardian::add_run(&run.id).map_err(|source| Error::Io {
            context:
                "could not start the guardian process (/bin/sh) that cleans up after a killed test"
                    .into(),
            source,
        })?;
        let output = Arc::downgrade(&self.output);
        let store = Arc::downgrade(&self.output.store);
        let on_written = move || {
            if let Some(store) = store.upgrade() {
                store.relieve();
            }
        };
        let on_failed = move |reason: String| {
            if let Some(output) = output.upgrade() {
                let warning = output.store.files_failed(reason);
                output.warn(&warning);
            }
        };
        let files = match LogFiles::start(run.clone(), on_failed, on_written) {
            Ok(files) => files,
            Err(source) => {
                guardian::remove_run(&run.id);
                return Err(Error::Io {
                    context: "could not start the thread that writes log files".into(),
                    source,
                });
            }
        };
        self.output.store.attach_files(
            Arc::new(files),
            run.logs().join("all.log"),
            self.output.console.width(),
        );
        let shared = Arc::new(Shared::new(Arc::clone(&self.output), plans, run, t0));
        self.shared = Some(Arc::clone(&shared));
        let result = self.walk_dag(&shared, t0);
        if result.is_err() {
            // Evidence for a person: which service failed startup (or made it slow).
            save_timeline(&shared);
        }
        match result {
            Ok(()) => {
                self.output
                    .log(&format!("READY in {:.2} s", t0.elapsed().as_secs_f64()));
                Ok(())
            }
            Err(e) => {
                shared.stop_all(self.shutdown_timeout);
                self.clock.stop();
                // The startup error already told of any service that exited.
                shared
                    .lock()
                    .iter_mut()
                    .for_each(|st| st.crash_reported = true);
                Err(e)
            }
        }
    }

    /// Reserve every declared port (once: a retried startup keeps them).
    fn allocate_ports(&mut self) -> Result<()> {
        for (name, svc) in &self.defs {
            for port_name in &svc.ports {
                let key = (name.clone(), port_name.clone());
                if self.ports.contains_key(&key) {
                    continue;
                }
                let held = crate::ports::allocate(name)?;
                self.ports.insert(key, held.port);
                self.held_ports.push(held);
            }
        }
        Ok(())
    }

    /// The service with its port templates filled in.
    fn expand_ports(&self, name: &str, svc: &Service, run_dir: &Path) -> Result<Service> {
        let run = run_dir.to_string_lossy();
        let f = |text: &str| {
            crate::ports::expand(text, name, &self.ports)
                .map(|t| t.replace("{run}", &run).replace("{service}", name))
        };
        let os = |a: &std::ffi::OsString| -> Result<std::ffi::OsString> {
            match a.to_str() {
                Some(s) => Ok(f(s)?.into()),
                None => Ok(a.clone()),
            }
        };
        let mut out = svc.clone();
        out.argv = svc.argv.iter().map(os).collect::<Result<_>>()?;
        out.env = svc
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_ref().map(os).transpose()?)))
            .collect::<Result<_>>()?;
        out.ready = svc.ready.expand(&f)?;
        Ok(out)
    }

    /// The port reserved as `name` for `service` (see [`Service::port`]); ports are
    /// reserved at startup.
    pub fn port(&self, service: &str, name: &str) -> Result<u16> {
        self.ports
            .get(&(service.to_owned(), name.to_owned()))
            .copied()
            .ok_or_else(|| Error::UnknownPort {
                service: service.to_owned(),
                template: format!("{{{service}.port.{name}}}"),
            })
    }

    /// Resolve and check every definition; nothing has started yet.
    fn plan(&self, project: &Path, run_id: &str) -> Result<Vec<Plan>> {
        let index: HashMap<&str, usize> = self
            .defs
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let known = || {
            self.defs
                .iter()
                .map(|(n, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let store = &self.output.store;
        let mut plans = Vec::with_capacity(self.defs.len());
        for (idx, (name, svc)) in self.defs.iter().enumerate() {
            let svc = &self.expand_ports(
                name,
                svc,
                &project.join(".hitchserve").join("runs").join(run_id),
            )?;
            let Some(program) = svc.argv.first() else {
                return Err(Error::EmptyCommand {
                    service: name.clone(),
                });
            };
            let dir = match &svc.directory {
                Some(d) => project.join(d),
                None => project.to_path_buf(),
            };
            if !dir.is_dir() {
                let service = name.clone();
                return Err(match dir.exists() {
                    true => Error::NotADirectory { service, path: dir },
                    false => Error::DirectoryMissing { service, path: dir },
                });
            }
            let mut env = service_env(&base_env, &svc.env, run_id);
            let run_as = match &svc.user {
                None => None,
                Some(user) => {
                    let found = nix::unistd::User::from_name(user)
                        .ok()
                        .flatten()
                        .ok_or_else(|| Error::NoSuchUser {
                            service: name.clone(),
                            user: user.clone(),
                        })?;
                    for (k, v) in [
                        ("HOME", found.dir.as_os_str().to_owned()),
                        ("USER", user.into()),
                        ("LOGNAME", user.into()),
                    ] {
                        env.retain(|(key, _)| key != k);
                        env.push((k.into(), v));
                    }
                    Some((found.uid.as_raw(), found.gid.as_raw()))
                }
            };
            let path_var = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_os_str());
            let program = resolve_program(program, &dir, path_var).map_err(|searched| {
                let program = program.to_string_lossy().into_owned();
                match &svc.install {
                    Some(install) => Error::NotInstalled {
                        service: name.clone(),
                        program,
                        searched: format!("{}, and on the service's PATH", install.searched),
                        install: install.command.clone(),
                    },
                    None => Error::CommandNotFound {
                        service: name.clone(),
                        program,
                        searched,
                    },
                }
            })?;
            let mut needs: Vec<(usize, Condition)> = Vec::new();
            for (need, condition) in &svc.needs {
                let Some(&n) = index.get(need.as_str()) else {
                    return Err(Error::UnknownNeed {
                        service: name.clone(),
                        need: need.clone(),
                        known: known(),
                    });
                };
                if !needs.contains(&(n, *condition)) {
                    needs.push((n, *condition));
                }
            }
            plans.push(Plan {
                name: name.clone(),
                program,
                argv: svc.argv.clone(),
                dir,
                env,
                needs,
                one_shot: svc.one_shot,
                run_as,
                ready: svc.ready.clone(),
                stop_signal: svc.stop_signal,
                faked: self.time_travel && !svc.no_libfaketime,
                setup: svc.setup.clone(),
                poststart: svc.poststart.clone(),
                out: store.source(Some(idx), name, Part::Main, Stream::Stdout),
                err: store.source(Some(idx), name, Part::Main, Stream::Stderr),
                setup_sources: (
                    store.source(Some(idx), name, Part::Setup, Stream::Stdout),
                    store.source(Some(idx), name, Part::Setup, Stream::Stderr),
                ),
                post_sources: (
                    store.source(Some(idx), name, Part::Poststart, Stream::Stdout),
                    store.source(Some(idx), name, Part::Poststart, Stream::Stderr),
                ),
            });
        }
        // A service others wait on to complete is one-shot.
        let completed: Vec<usize> = plans
            .iter()
            .flat_map(|p| p.needs.iter())
            .filter(|(_, c)| *c == Condition::CompletedSuccessfully)
            .map(|&(n, _)| n)
            .collect();
        for n in completed {
            plans[n].one_shot = true;
        }
        if let Some(cycle) = find_cycle(&plans) {
            return Err(Error::NeedsCycle {
                cycle: cycle.into_iter().map(|i| plans[i].name.clone()).collect(),
            });
        }
        Ok(plans)
    }

    /// Start the services that need nothing, then wait: each service's supervisor starts its
    /// dependents the moment it is ready. Returns when all are ready or one failed.
    fn walk_dag(&self, shared: &Arc<Shared>, t0: Instant) -> Result<()> {
        let deadline = deadline_after(t0, self.startup_timeout);
        *self.interrupt.run.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::downgrade(shared));
        if self.interrupt.requested.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        shared.start_startable();
        // While the first services start, make the threads the others will need.
        shared.prepare_supervisors();
        let done = |s: &State| {
            if s.one_shot {
                s.phase == Phase::Exited(ExitStatus::Code(0)) && !s.post_running
            } else {
                s.phase == Phase::Ready && s.announced
            }
        };
        let mut next_progress = self.progress.map(|every| Instant::now() + every);
        let failure = {
            let mut states = shared.lock();
            loop {
                if self.interrupt.requested.load(Ordering::SeqCst) {
                    return Err(Error::Interrupted);
                }
                if let Some(failure) = find_failure(&mut states) {
                    break failure;
                }
                if states.iter().all(done) {
                    return Ok(());
                }
                if let (Some(at), Some(every)) = (next_progress, self.progress) {
                    if Instant::now() >= at {
                        let waiting: Vec<&str> = states
                            .iter()
                            .zip(&shared.plans)
                            .filter(|(s, _)| !done(s))
                            .map(|(_, p)| p.name.as_str())
                            .collect();
                        let line = format!(
                            "still starting after {:.1} s: {}",
                            t0.elapsed().as_secs_f64(),
                            waiting.join(", ")
                        );
                        drop(states);
                        self.output.log(&line);
                        states = shared.lock();
                        next_progress = Some(Instant::now() + every);
                        continue;
                    }
                }
                let wake = match (deadline, next_progress) {
                    (Some(d), Some(p)) => Some(d.min(p)),
                    (d, p) => d.or(p),
                };
                states = match wake {
                    None => shared
                        .changed
                        .wait(states)
                        .unwrap_or_else(|e| e.into_inner()),
                    Some(wake) => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            drop(states);
                            return Err(self.timeout_error(shared));
                        }
                        let left = wake.saturating_duration_since(Instant::now());
                        shared
                            .changed
                            .wait_timeout(states, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        };
        Err(failure.into_error(shared))
    }

    fn timeout_error(&self, shared: &Shared) -> Error {
        let waiting: Vec<(usize, String)> = {
            let states = shared.lock();
            shared
                .plans
                .iter()
                .enumerate()
                .filter_map(|(idx, plan)| {
                    let what = match states[idx].phase {
                        Phase::Running | Phase::Ready if states[idx].one_shot => {
                            "its one-shot run to complete".to_owned()
                        }
                        Phase::Ready => return None,
                        Phase::Defined => {
                            let pending: Vec<String> = plan
                                .needs
                                .iter()
                                .filter(|&&(n, c)| match c {
                                    Condition::Ready => states[n].phase != Phase::Ready,
                                    Condition::Started => states[n].pid.is_none(),
                                    Condition::CompletedSuccessfully => {
                                        states[n].phase != Phase::Exited(ExitStatus::Code(0))
                                    }
                                })
                                .map(|&(n, c)| format!("`{}` {}", shared.plans[n].name, c.words()))
                                .collect();
                            format!("{} (not started)", pending.join(", "))
                        }
                        Phase::Exited(ExitStatus::Code(0)) if states[idx].one_shot => return None,
                        Phase::Starting => "its process to start".to_owned(),
                        Phase::Setup => "its setup hook to finish".to_owned(),
                        Phase::PostStart => "its poststart hook to finish".to_owned(),
                        _ => match &states[idx].probe_failure {
                            Some(why) => format!("{} (last try: {why})", plan.ready.describe()),
                            None => plan.ready.describe(),
                        },
                    };
                    let what = match shared.in_user_code(idx) {
                        Some(code) => format!(
                            "{what}; its {} has not returned (is it blocked?)",
                            code.words()
                        ),
                        None => what,
                    };
                    Some((idx, what))
                })
                .collect()
        };
        Error::StartupTimeout {
            timeout: self.startup_timeout,
            not_ready: waiting
                .into_iter()
                .map(|(idx, waiting_for)| NotReady {
                    service: shared.plans[idx].name.clone(),
                    waiting_for,
                    last_lines: shared.last_lines(idx, LAST_LINES),
                })
                .collect(),
        }
    }

    /// Run every service on real time: no libfaketime anywhere, and time travel is off.
    pub fn without_time_travel(mut self) -> Bundle {
        self.time_travel = false;
        self
    }

    /// Move every faked service's clock forward by `by` (jumps add up). Seen by the
    /// services on their very next clock read; their clocks keep ticking from there.
    ///
    /// ```no_run
    /// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
    /// use std::time::Duration;
    /// bundle.time_travel(Duration::from_secs(30 * 24 * 3600))?; // 30 days later
    /// println!("the services think it is {}", bundle.now());
    /// # Ok(()) }
    /// ```
    pub fn time_travel(&self, by: Duration) -> Result<()> {
        let ns = i128::try_from(by.as_nanos()).unwrap_or(i128::MAX);
        self.jump(Some(ns), |clock| clock.shift(ns))
    }

    /// Move every faked service's clock by `by`: forward, or back when it is negative (jumps
    /// add up). The log says the jump as asked ("3 days ago"), not as measured between two
    /// clock reads.
    ///
    /// ```no_run
    /// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
    /// use hitchserve::jiff::SignedDuration;
    /// bundle.time_travel_by(SignedDuration::from_hours(-3 * 24))?; // logs "3 days ago"
    /// # Ok(()) }
    /// ```
    pub fn time_travel_by(&self, by: jiff::SignedDuration) -> Result<()> {
        let ns = by.as_nanos();
        self.jump(Some(ns), |clock| clock.shift(ns))
    }

    /// Make every faked service's clock say `moment` now (and tick on from there).
    ///
    /// ```no_run
    /// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
    /// let new_year: hitchserve::jiff::Timestamp = "2030-01-01T09:00:00Z".parse().unwrap();
    /// bundle.time_travel_to(new_year)?;
    /// # Ok(()) }
    /// ```
    pub fn time_travel_to(&self, moment: jiff::Timestamp) -> Result<()> {
        self.jump(None, |clock| clock.set_now(moment))
    }

    /// `by_ns`: the relative jump asked for, if it was one (said as asked in the log).
    fn jump(&self, by_ns: Option<i128>, how: impl FnOnce(&Clock) -> Result<i128>) -> Result<()> {
        if !self.time_travel {
            return Err(Error::TimeTravelDisabled);
        }
        if let Some(shared) = &self.shared {
            report_crash(shared, None, true)?;
        }
        let from = self.clock.now();
        how(&self.clock)?;
        let to = self.clock.now();
        let jump = by_ns.map_or_else(|| describe_jump(from, to), describe_shift);
        self.log(format!("Time travelling to {jump} ({})", show(to)));
        Ok(())
    }

    /// What time the faked services think it is.
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }

    /// Print a message among the service lines, as `[Hitch] message`, and store it.
    pub fn log(&self, message: impl AsRef<str>) {
        self.output.log(message.as_ref());
    }

    /// Print a warning among the service lines, as `[Hitch] WARNING: message`, and store it.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.output.warn(message.as_ref());
    }

    /// Stop printing log lines to the console (lines are still stored), e.g. to use a
    /// debugger or REPL in the terminal.
    pub fn start_interactive_mode(&self) {
        self.output.console.set_muted(true);
    }

    /// Print log lines to the console again.
    pub fn stop_interactive_mode(&self) {
        let missed = self.output.console.set_muted(false);
        if missed > 0 {
            let lines = if missed == 1 {
                "line was"
            } else {
                "lines were"
            };
            self.log(format!(
                "{missed} {lines} not printed during interactive mode; see the logs"
            ));
        }
    }

    /// Whether interactive mode is on (the console is muted).
    pub fn is_interactive(&self) -> bool {
        self.output.console.is_muted()
    }

    /// Every line of every service, and the bundle's own, in arrival order.
    pub fn logs(&self) -> Logs {
        Logs::new(Arc::clone(&self.output.store), None)
    }

    /// Every running service with its process tree, memory and CPU time: the bundle's
    /// `ps`. Its `Display` is a compact text tree.
    pub fn pstree(&self) -> Result<ProcessTree> {
        let shared = self.running()?;
        let mut services = Vec::new();
        for (idx, plan) in shared.plans.iter().enumerate() {
            let pid = {
                let states = shared.lock();
                match states[idx].phase {
                    Phase::Running | Phase::PostStart | Phase::Ready => states[idx].pid,
                    _ => None,
                }
            };
            let mut processes = Vec::new();
            if let Some(root) = pid.and_then(|p| Process::new(p).ok()) {
                let mut all = vec![(0, root.clone())];
                let mut stack = vec![(root, 0usize)];
                while let Some((p, depth)) = stack.pop() {
                    let kids = p.children(false).unwrap_or_default();
                    for kid in kids.into_iter().rev() {
                        stack.push((kid.clone(), depth + 1));
                    }
                    if depth > 0 {
                        all.push((depth, p));
                    }
                }
                for (depth, p) in all {
                    let Ok(mem) = p.memory_info() else { continue };
                    let cpu = p.cpu_times().map(|c| c.user + c.system).unwrap_or_default();
                    processes.push(TreeProcess {
                        depth,
                        pid: p.pid(),
                        command: p.cmdline().unwrap_or_default().join(" "),
                        rss: mem.rss,
                        cpu,
                    });
                }
            }
            services.push(TreeService {
                name: plan.name.clone(),
                processes,
            });
        }
        Ok(ProcessTree { services })
    }

    /// When each service reached each step of its startup: set up, started, ready, done
    /// with poststart. `Display` draws a text Gantt chart; [`Timeline::save_svg`](crate::Timeline::save_svg) a picture
    /// (the bundle also writes one to the run directory as `timeline.svg` when it stops, or
    /// when its startup fails).
    pub fn timeline(&self) -> Result<crate::timeline::Timeline> {
        Ok(crate::timeline::of(self.running()?))
    }

    /// How many log lines the bundle holds, and how many bytes of them are in memory (the
    /// rest are read back from `all.log` when asked for).
    pub fn log_stats(&self) -> LogStats {
        let (lines, bytes_in_memory, memory_limit, losses) = self.output.store.stats();
        LogStats {
            lines,
            bytes_in_memory,
            memory_limit,
            peak_bytes_in_memory: losses.peak,
            lines_not_written: losses.unwritten_lines,
            bytes_not_written: losses.unwritten_bytes,
            lines_lost: losses.lost_lines,
            bytes_lost: losses.lost_bytes,
        }
    }

    fn running(&self) -> Result<&Arc<Shared>> {
        self.shared.as_ref().ok_or(Error::NotRunning)
    }

    /// A handle on one service: its logs, pid and state — also after it crashed (a crash,
    /// or the run's `all.log` failing, [`Error::LogFileFailed`], is reported by
    /// [`Bundle::check`], the next time travel, `signal` or `shutdown`).
    pub fn service(&self, name: &str) -> Result<ServiceHandle> {
        let shared = self.running()?;
        let idx = shared
            .plans
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| Error::NoSuchService {
                service: name.to_owned(),
                known: shared
                    .plans
                    .iter()
                    .map(|p| format!("`{}`", p.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        // No crash report here: after a crash the test wants exactly this handle, to read
        // the crashed service's logs (`check`, the next time travel or shutdown report it).
        Ok(ServiceHandle {
            shared: Arc::clone(shared),
            idx,
        })
    }

    /// An error if any service exited after it was ready, or else if the run's `all.log`
    /// could not be written (every time it is asked; the other calls that report these do
    /// so once).
    pub fn check(&self) -> Result<()> {
        match &self.shared {
            Some(shared) => report_crash(shared, None, false),
            None => Ok(()),
        }
    }

    /// Stop every service: the stop signal to each process group in parallel, SIGKILL to
    /// those still alive after the shutdown timeout, then every process that left its group.
    ///
    /// Returns an error for a crash after startup not yet reported. Also done on drop.
    /// Only the first call stops anything; it may come from any thread.
    pub fn shutdown(&self) -> Result<()> {
        let Some(shared) = self.shared.as_ref() else {
            return Ok(());
        };
        if !self.stopped.swap(true, Ordering::SeqCst) {
            shared.stop_all(self.shutdown_timeout);
            self.clock.stop();
            save_timeline(shared);
            // After stopping, every exit is known and classified as asked for or not.
            return report_crash(shared, None, true);
        }
        Ok(())
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        match self.shared.as_ref() {
            Some(shared) if !self.stopped.swap(true, Ordering::SeqCst) => {
                shared.stop_all(self.shutdown_timeout);
                self.clock.stop();
                save_timeline(shared);
            }
            Some(_) => {}
            // Never started: still end any wait on its logs (e.g. a follow on another thread).
            None => self.output.store.close(),
        }
    }
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("project", &self.project)
            .field(
                "services",
                &self.defs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("run_dir", &self.run_dir())
            .finish()
    }
}

/// The error for a service (or any, with `only == None`) that exited after readiness, or
/// (for the whole bundle) for its log file failing.
/// With `once`, a crash already reported is not reported again.
fn report_crash(shared: &Shared, only: Option<usize>, once: bool) -> Result<()> {
    let found = {
        let mut states = shared.lock();
        states
            .iter_mut()
            .enumerate()
            .filter(|(idx, _)| only.is_none_or(|o| o == *idx))
            .find_map(|(idx, st)| {
                let status = st.crashed()?;
                if once && st.crash_reported {
                    return None;
                }
                if once {
                    st.crash_reported = true;
                }
                Some((idx, status))
            })
    };
    match found {
        // A crash first: it is what the test most needs to hear of.
        None => match only {
            None => shared.output.store.file_failure(once).map_or(Ok(()), Err),
            Some(_) => Ok(()),
        },
        Some((idx, status)) => Err(Error::ServiceExited {
            service: shared.plans[idx].name.clone(),
            status,
            last_lines: shared.last_lines(idx, LAST_LINES),
        }),
    }
}

/// One service of a started bundle. Cheap to clone; usable after shutdown to read logs.
#[derive(Clone)]
pub struct ServiceHandle {
    shared: Arc<Shared>,
    idx: usize,
}

impl ServiceHandle {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.plans[self.idx].name
    }

    /// Its log lines (stdout and stderr; `.out()` / `.err()` for one).
    pub fn logs(&self) -> Logs {
        Logs::new(Arc::clone(&self.shared.output.store), Some(self.idx))
    }

    /// The pid of its main process (the leader of its process group), while it runs.
    pub fn pid(&self) -> Option<u32> {
        let states = self.shared.lock();
        let st = &states[self.idx];
        match st.phase {
            Phase::Running | Phase::PostStart | Phase::Ready => st.pid,
            _ => None,
        }
    }

    /// A command to run in this service's environment, directory and fake time.
    pub fn subcommand<I, S>(&self, argv: I) -> Subcommand
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.shared.plans[self.idx].subcommand(argv.into_iter().map(Into::into).collect())
    }

    /// The service's whole environment (as it was started with: fake time included).
    pub fn environment(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        self.shared.plans[self.idx].env.clone()
    }

    /// The service's working directory.
    pub fn directory(&self) -> &Path {
        &self.shared.plans[self.idx].dir
    }

    /// Whether it is ready (its readiness check passed, and its poststart hook finished).
    pub fn is_ready(&self) -> bool {
        matches!(self.shared.lock()[self.idx].phase, Phase::Ready)
    }

    /// A variable of the service's environment (as it was started with).
    pub fn env_var(&self, key: &str) -> Option<String> {
        self.shared.plans[self.idx]
            .env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    /// Its main process, to inspect or signal (see [`Process`]).
    pub fn process(&self) -> Result<Process> {
        let pid = self.pid().ok_or(Error::NotRunning)?;
        Process::new(pid)
    }

    /// Whether its main process is still running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// How it ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.shared.lock()[self.idx].phase {
            Phase::Exited(status) => Some(status),
            _ => None,
        }
    }

    /// Wait up to `timeout` for the service's main process to exit; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = deadline_after(Instant::now(), timeout);
        let exited = |s: &[crate::supervise::State]| matches!(s[self.idx].phase, Phase::Exited(_));
        let (states, _) = self.shared.wait_until(self.shared.lock(), deadline, exited);
        match states[self.idx].phase {
            Phase::Exited(status) => Some(status),
            _ => None,
        }
    }

    /// An error if this service exited after it was ready (every time it is asked).
    pub fn check(&self) -> Result<()> {
        report_crash(&self.shared, Some(self.idx), false)
    }

    /// Send a signal to the service's whole process group.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        report_crash(&self.shared, Some(self.idx), true)?;
        if self.shared.signal(self.idx, signal) {
            Ok(())
        } else {
            Err(Error::NotRunning)
        }
    }
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.name())
            .field("pid", &self.pid())
            .finish()
    }
}

fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with a letter or digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Some("use only letters, digits, `_`, `-` and `.`")
    } else if name == "Hitch" {
        Some("`Hitch` is the bundle's own name in the logs")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The service's whole environment: the test's, then its own changes, then the run marker.
fn service_env(
    base: &[(OsString, OsString)],
    changes: &[(OsString, Option<OsString>)],
    run_id: &str,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = base.to_vec();
    let mut set = |key: &OsStr, value: Option<&OsStr>| {
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.to_owned(), v.to_owned()));
        }
    };
    for (k, v) in changes {
        set(k, v.as_deref());
    }
    set(OsStr::new(MARKER_VAR), Some(OsStr::new(run_id)));
    env
}

/// Find the program as exec would: a path with `/` from the service's directory, otherwise
/// on the service's `PATH`. The error text says where we looked.
/// `timeline.svg` in the run directory: which service made startup slow. Written when the
/// bundle stops (or its startup fails), not before `startup()` returns: drawing it took a
/// good part of the time between a service's ready line and `startup()` returning.
fn save_timeline(shared: &Shared) {
    let svg = shared.run.path.join("timeline.svg");
    let _ = crate::timeline::of(shared).save_svg(&svg);
}

/// For each service that runs as another user: its own directory `<run>/<Name>/` (mode 0700,
/// owned by that user, inside a run directory it can only pass through), and a check that it
/// can reach its working directory, that directory and, if its clock is faked, the shim,
/// libfaketime and the clock files — so a blocked path is an error before anything starts,
/// not a "Permission denied" later or, worse, a service that silently keeps real time
/// (the dynamic loader only warns when it can't preload a library).
fn prepare_other_users(plans: &[Plan], run_dir: &Path, clock_files: &[PathBuf]) -> Result<()> {
    for plan in plans {
        let Some((uid, gid)) = plan.run_as else {
            continue;
        };
        let own = run_dir.join(&plan.name);
        crate::safepath::make_dir_for(&own, 0o700, Some((uid, gid)))?;
        let user_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        use crate::safepath::Access;
        let mut needed: Vec<(&Path, Access, &str)> = vec![
            (plan.program.as_path(), Access::Execute, "its program"),
            (plan.dir.as_path(), Access::Search, "its working directory"),
            (
                own.as_path(),
                Access::Search,
                "its directory in the run directory",
            ),
        ];
        if plan.faked {
            needed.extend(clock_files.iter().map(|p| {
                (
                    p.as_path(),
                    Access::Read,
                    "to fake its clock (or use no_libfaketime)",
                )
            }));
        }
        for (path, access, why) in needed {
            if !crate::safepath::user_can(path, access, uid, gid) {
                return Err(Error::UnreachableForUser {
                    service: plan.name.clone(),
                    user: user_name,
                    path: path.to_path_buf(),
                    blocked: crate::safepath::first_blocked(path, uid, gid),
                    why: why.to_owned(),
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn resolve_program(
    program: &OsStr,
    dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let candidate = dir.join(program);
        return if executable(&candidate) {
            Ok(candidate)
        } else {
            Err(format!(
                "at `{}` (or it is not executable)",
                candidate.display()
            ))
        };
    }
    let Some(path_var) = path_var else {
        return Err("because the service has no PATH".to_owned());
    };
    for entry in std::env::split_paths(path_var) {
        let base = if entry.as_os_str().is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(entry)
        };
        let candidate = base.join(program);
        if executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!("on PATH `{}`", path_var.to_string_lossy()))
}

/// A cycle in `needs`, as service indices with the first repeated at the end.
fn find_cycle(plans: &[Plan]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        i: usize,
        plans: &[Plan],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[i] = Mark::OnPath;
        path.push(i);
        for &(n, _) in &plans[i].needs {
            match marks[n] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == n).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(n, plans, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; plans.len()];
    for i in 0..plans.len() {
        if marks[i] == Mark::New {
            if let Some(c) = visit(i, plans, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// A startup failure seen under the lock; turned into an error once the lock is released
/// (the error needs the service's last lines).
enum Failure {
    Panicked(usize, String),
    Spawn(usize, std::io::Error),
    Exited(usize, ExitStatus),
    ExitedAfterReady(usize, ExitStatus),
    Hook(usize, Part, String),
}

impl Failure {
    fn into_error(self, shared: &Shared) -> Error {
        let name = |idx: usize| shared.plans[idx].name.clone();
        match self {
            Failure::Panicked(idx, message) => Error::ReadinessPanicked {
                service: name(idx),
                message,
            },
            Failure::Spawn(idx, source) => Error::Spawn {
                service: name(idx),
                source,
            },
            Failure::Exited(idx, status) => Error::ExitedBeforeReady {
                service: name(idx),
                status,
                last_lines: shared.last_lines(idx, LAST_LINES),
            },
            Failure::Hook(idx, part, message) => {
                let filter = crate::logs::Filter {
                    part: Some(part),
                    ..crate::logs::Filter::service(Some(idx))
                };
                let lines = shared.output.store.last(&filter, LAST_LINES);
                Error::HookFailed {
                    service: name(idx),
                    hook: if part == Part::Setup {
                        "setup"
                    } else {
                        "poststart"
                    },
                    message,
                    last_lines: lines.iter().map(|l| l.to_string()).collect(),
                }
            }
            Failure::ExitedAfterReady(idx, status) => Error::ServiceExited {
                service: name(idx),
                status,
                last_lines: shared.last_lines(idx, LAST_LINES),
            },
        }
    }
}

/// The first startup failure among the services, if any.
fn find_failure(states: &mut [State]) -> Option<Failure> {
    for (idx, st) in states.iter_mut().enumerate() {
        if let Some(message) = st.check_panic.take() {
            return Some(Failure::Panicked(idx, message));
        }
        if let Some((part, message)) = st.hook_error.take() {
            return Some(Failure::Hook(idx, part, message));
        }
        match st.phase {
            Phase::SpawnFailed => {
                let source = st
                    .spawn_error
                    .take()
                    .unwrap_or_else(|| std::io::Error::other("unknown error"));
                return Some(Failure::Spawn(idx, source));
            }
            Phase::Exited(status) if st.one_shot && status.success() => {}
            Phase::Exited(status) if st.was_ready && !st.one_shot => {
                return Some(Failure::ExitedAfterReady(idx, status))
            }
            Phase::Exited(status) => return Some(Failure::Exited(idx, status)),
            _ => {}
        }
    }
    None
}

/// Figures about the log store, from [`Bundle::log_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Lines stored (every service and the bundle's own).
    pub lines: u64,
    /// Bytes of line storage in memory now.
    pub bytes_in_memory: usize,
    /// The limit set by [`Bundle::log_memory_limit`].
    pub memory_limit: usize,
    /// The most bytes of line storage there have been in memory at once. It can pass the
    /// limit by what the log writer has not yet put on disk.
    pub peak_bytes_in_memory: usize,
    /// Lines not written to the run's `all.log` because it failed (a full disk, the run
    /// directory deleted); 0 while all is well.
    pub lines_not_written: u64,
    /// Bytes of those lines (without labels).
    pub bytes_not_written: u64,
    /// Of those, lines also dropped from memory, past the memory limit: queries show them
    /// as lost ([`LogLine::is_lost`](crate::LogLine::is_lost)).
    pub lines_lost: u64,
    /// Bytes of the lost lines.
    pub bytes_lost: u64,
}

/// Every service's processes, from [`Bundle::pstree`].
#[derive(Debug, Clone)]
pub struct ProcessTree {
    /// One entry per service, in definition order.
    pub services: Vec<TreeService>,
}

/// A service in a [`ProcessTree`].
#[derive(Debug, Clone)]
pub struct TreeService {
    /// Its name.
    pub name: String,
    /// Its main process first, then its descendants depth first; empty if it isn't running.
    pub processes: Vec<TreeProcess>,
}

/// A process in a [`ProcessTree`].
#[derive(Debug, Clone)]
pub struct TreeProcess {
    /// 0 for the service's main process, 1 for its children, ...
    pub depth: usize,
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Resident memory, bytes.
    pub rss: u64,
    /// CPU time used so far.
    pub cpu: Duration,
}

impl std::fmt::Display for ProcessTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for svc in &self.services {
            if svc.processes.is_empty() {
                writeln!(f, "{} (not running)", svc.name)?;
                continue;
            }
            writeln!(f, "{}", svc.name)?;
            for p in &svc.processes {
                writeln!(
                    f,
                    "  {:indent$}{} {} (rss {:.1} MiB, cpu {:.2} s)",
                    "",
                    p.pid,
                    p.command,
                    p.rss as f64 / (1024.0 * 1024.0),
                    p.cpu.as_secs_f64(),
                    indent = p.depth * 2
                )?;
            }
        }
        Ok(())
    }
}
