//! The `Bundle`: the public façade over a set of named services that start, run and stop
//! together.
//!
//! Owns the public handle: collecting definitions, the builder options, and turning calls
//! into work for the layers below — `plan` checks and resolves the definitions, `runtime`
//! runs them, `inspect` draws them, `timetravel` moves their clock. Invariant: when
//! `startup` returns an error, nothing it started is still running.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::inspect::timeline::Timeline;
use crate::inspect::ProcessTree;
use crate::interrupt::{InterruptState, Interrupter};
use crate::logs::{LogStats, Logs, Sink};
use crate::observer::Observer;
use crate::plan::Plan;
use crate::ports::{HeldPort, PortTable};
use crate::rundir::RunDir;
use crate::runtime::report::report_crash;
use crate::runtime::{Runtime, Timeouts};
use crate::service::Service;
use crate::timetravel::{describe_moment, describe_shift, show, Clock};

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
    sink: Arc<Sink>,
    runtime: Option<Arc<Runtime>>,
    stopped: AtomicBool,
    /// `shutdown` was called (also before any startup): a bundle runs once.
    shut_down: AtomicBool,
    time_travel: bool,
    clock: Arc<Clock>,
    ports: PortTable,
    held_ports: Vec<HeldPort>,
    progress: Option<Duration>,
    interrupt: Arc<InterruptState>,
    /// The wait of the last `startup_async`, for a shutdown to wait for if its future was
    /// dropped (see `asynch`).
    #[cfg(feature = "tokio")]
    startup_wait: Option<Arc<StartupWait>>,
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
            sink: Arc::new(Sink::new()),
            runtime: None,
            stopped: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            time_travel: true,
            clock: Arc::new(Clock::new()),
            ports: PortTable::new(),
            held_ports: Vec::new(),
            progress: None,
            interrupt: Arc::default(),
            #[cfg(feature = "tokio")]
            startup_wait: None,
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
    /// default; `hitchserve up` turns it on on a terminal). At most every 100 ms (a shorter
    /// time is taken as that: a line per wake-up would flood the log); zero turns it off.
    pub fn progress_every(mut self, every: Duration) -> Bundle {
        self.progress = (!every.is_zero()).then(|| every.max(Duration::from_millis(100)));
        self
    }

    /// How many bytes of log lines to keep in memory (default 64 MiB for the whole bundle).
    /// Older lines beyond it live only in the run's `all.log`, from which queries read them
    /// back: nothing is lost, memory stays bounded for chatty services. If `all.log` can't be
    /// written (a full disk), memory still stays bounded: the oldest lines not on disk are
    /// dropped, with a warning and an error ([`Error::LogFileFailed`]).
    pub fn log_memory_limit(self, bytes: usize) -> Bundle {
        self.sink.store.set_limit(bytes);
        self
    }

    /// Add a service. Names are letters, digits, `_`, `-` and `.`, start with a letter or
    /// digit, are at most 64 characters and unique; `Hitch` is the bundle's own.
    pub fn add(&mut self, name: impl Into<String>, service: Service) -> Result<()> {
        let name = name.into();
        if self.runtime.is_some() {
            return Err(Error::AlreadyStarted);
        }
        crate::plan::check_name(&name)?;
        if let Some(problem) = service.bad_setting() {
            return Err(Error::InvalidSetting {
                service: name,
                problem,
            });
        }
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
        self.sink.console.fit_label(hook_label + name.len());
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
        self.runtime.as_ref().map(|r| r.run.path.as_path())
    }

    /// Live lines go to the output of the thread (the test) calling the bundle now: see
    /// `logs::console`. Called by the calls a test makes first.
    fn claim_console(&self) {
        self.sink.console.claim();
    }

    /// Start every service, each once all it needs is ready, and block until all are ready.
    ///
    /// On any failure (a bad definition, a service that exits or doesn't become ready in
    /// time, a readiness check that panics) everything already started is stopped and the
    /// error says which service and why.
    pub fn startup(&mut self) -> Result<()> {
        self.claim_console();
        let (runtime, t0) = self.begin_startup()?;
        let result = wait_started(
            &runtime,
            self.startup_timeout,
            self.shutdown_timeout,
            self.progress,
            &self.interrupt.requested,
        );
        self.end_startup(t0, result)
    }

    /// The part of `startup` that doesn't wait: check and resolve the definitions, set the
    /// run up, start nothing yet.
    pub(crate) fn begin_startup(&mut self) -> Result<(Arc<Runtime>, Instant)> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        if self.runtime.is_some() {
            return Err(match self.stopped.load(Ordering::SeqCst) {
                true => Error::ShutDown,
                false => Error::AlreadyStarted,
            });
        }
        // A startup that failed before starting anything (a bad definition, say) may be
        // tried again once the cause is fixed.
        self.stopped.store(false, Ordering::SeqCst);
        self.sink.store.reopen();
        let t0 = Instant::now();
        match self.launch(t0) {
            Ok(runtime) => Ok((runtime, t0)),
            Err(e) => {
                // Nothing runs: waits on the logs must end rather than hang.
                self.stopped.store(true, Ordering::SeqCst);
                self.sink.store.close();
                Err(e)
            }
        }
    }

    /// The part of `startup` after its wait (see `wait_started`).
    pub(crate) fn end_startup(&mut self, t0: Instant, result: Result<()>) -> Result<()> {
        match result {
            Ok(()) => {
                self.sink
                    .log(&format!("READY in {:.2} s", t0.elapsed().as_secs_f64()));
                Ok(())
            }
            Err(e) => {
                self.clock.stop();
                // Nothing runs any more.
                self.stopped.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn launch(&mut self, t0: Instant) -> Result<Arc<Runtime>> {
        let project = crate::rundir::canonical_project(&self.project)?;
        let run = RunDir::allocate(&project);
        crate::plan::reserve_ports(&self.defs, &mut self.ports, &mut self.held_ports)?;
        let plan = Plan::resolve(
            &self.defs,
            &project,
            &run,
            &self.ports,
            self.time_travel,
            &self.sink.store,
        )?;
        let timeouts = Timeouts {
            startup: self.startup_timeout,
            shutdown: self.shutdown_timeout,
        };
        let runtime = match Runtime::launch(&self.sink, plan, run, &self.clock, t0, timeouts) {
            Ok(runtime) => runtime,
            Err(e) => {
                self.clock.stop();
                return Err(e);
            }
        };
        self.runtime = Some(Arc::clone(&runtime));
        *self.interrupt.run.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::downgrade(&runtime));
        Ok(runtime)
    }

    /// What `startup` waits with, for a thread of its own (the async version's).
    #[cfg(feature = "tokio")]
    pub(crate) fn startup_wait_args(&self) -> (Duration, Duration, Option<Duration>, Interrupter) {
        (
            self.startup_timeout,
            self.shutdown_timeout,
            self.progress,
            self.interrupter(),
        )
    }

    /// A look at this bundle from another thread — also while [`startup`](Bundle::startup)
    /// runs in this one, which holds the bundle: which services are up, their logs, their
    /// processes (a status display, a progress bar). Get it before calling `startup`.
    ///
    /// ```no_run
    /// # fn main() -> hitchserve::Result<()> {
    /// use hitchserve::{Bundle, Service};
    /// let mut bundle = Bundle::new(".");
    /// bundle.add("Db", Service::new(["sleep", "1000"]))?;
    /// let observer = bundle.observer();
    /// std::thread::spawn(move || {
    ///     // While startup runs: NotRunning until it has begun, then each service's handle.
    ///     if let Ok(db) = observer.service("Db") {
    ///         println!("Db: pid {:?}, ready: {}", db.pid(), db.is_ready());
    ///     }
    /// });
    /// bundle.startup()?;
    /// # Ok(()) }
    /// ```
    pub fn observer(&self) -> Observer {
        Observer::new(
            Arc::clone(&self.interrupt),
            Arc::clone(&self.sink),
            Arc::clone(&self.clock),
        )
    }

    /// The port reserved as `name` for `service` (see [`Service::port`]); ports are
    /// reserved at startup.
    pub fn port(&self, service: &str, name: &str) -> Result<u16> {
        // Not started (ports are reserved at startup), or no such service: said as such.
        self.service(service)?;
        self.ports
            .get(&(service.to_owned(), name.to_owned()))
            .copied()
            .ok_or_else(|| Error::UnknownPort {
                service: service.to_owned(),
                template: format!("`port(\"{name}\")`"),
            })
    }

    /// Run every service on real time: no time-travel shim anywhere, and time travel is off.
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
        self.jump(true, |clock| clock.shift(ns))
    }

    /// Move every faked service's clock by `by`: forward, or back when it is negative (jumps
    /// add up). The log says where the clock now is, from real time ("Time traveling to 3
    /// days ago", to the second), and the moment.
    ///
    /// ```no_run
    /// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
    /// use hitchserve::jiff::SignedDuration;
    /// bundle.time_travel_by(SignedDuration::from_hours(-3 * 24))?; // logs "3 days ago"
    /// # Ok(()) }
    /// ```
    pub fn time_travel_by(&self, by: jiff::SignedDuration) -> Result<()> {
        self.claim_console();
        let ns = by.as_nanos();
        self.jump(true, |clock| clock.shift(ns))
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
        self.claim_console();
        self.jump(false, |clock| clock.set_now(moment))
    }

    /// `relative`: a jump by a duration (else to a moment).
    fn jump(&self, relative: bool, how: impl FnOnce(&Clock) -> Result<i128>) -> Result<()> {
        if !self.time_travel {
            return Err(Error::TimeTravelDisabled);
        }
        if let Some(runtime) = &self.runtime {
            runtime.here()?;
        }
        if self.runtime.is_some() && self.stopped.load(Ordering::SeqCst) {
            // Nothing runs on that clock any more (its files are gone).
            return Err(Error::ShutDown);
        }
        how(&self.clock)?;
        let to = self.clock.now();
        // Where the services' clock now is, from real time, as the seed says it ("Time
        // traveling to 2 days from now" after two jumps of a day). A relative jump to the
        // nearest second (real time moved on a few microseconds since the clock was read);
        // an absolute one to the nearest minute ("now" for `datetime.now()`).
        let jump = match relative {
            true => {
                let ns = to.as_nanosecond() - jiff::Timestamp::now().as_nanosecond();
                describe_shift(ns + ns.signum() * 500_000_000)
            }
            false => describe_moment(to),
        };
        self.log(format!("Time traveling to {jump} ({})", show(to)));
        // A crash not reported yet is, once: after the jump, which is made either way (a
        // test that expected the crash goes on at the time it asked for).
        match &self.runtime {
            Some(runtime) => report_crash(runtime, None, true, true),
            None => Ok(()),
        }
    }

    /// What time the faked services think it is.
    pub fn now(&self) -> jiff::Timestamp {
        self.claim_console();
        self.clock.now()
    }

    /// Print a message among the service lines, as `[Hitch] message`, and store it.
    pub fn log(&self, message: impl AsRef<str>) {
        self.claim_console();
        self.sink.console.settle();
        self.sink.log(message.as_ref());
    }

    /// Print a warning among the service lines, as `[Hitch] WARNING: message`, and store it.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.claim_console();
        self.sink.console.settle();
        self.sink.warn_for_test(message.as_ref());
    }

    /// Stop printing log lines to the console (lines are still stored), e.g. to use a
    /// debugger or REPL in the terminal. The bundle's own warnings (a service that crashed,
    /// one that needed SIGKILL) are still printed at once; [`Bundle::log`] and
    /// [`Bundle::warn`] are muted too.
    pub fn start_interactive_mode(&self) {
        self.sink.console.set_muted(true);
    }

    /// Print log lines to the console again.
    pub fn stop_interactive_mode(&self) {
        let missed = self.sink.console.set_muted(false);
        if missed > 0 {
            let lines = if missed == 1 {
                "line was"
            } else {
                "lines were"
            };
            self.log(format!(
                "{missed} service {lines} not printed during interactive mode; see the logs"
            ));
        }
    }

    /// Whether interactive mode is on (the console is muted).
    pub fn is_interactive(&self) -> bool {
        self.sink.console.is_muted()
    }

    /// Every line of every service, and the bundle's own, in arrival order.
    pub fn logs(&self) -> Logs {
        self.claim_console();
        Logs::new(Arc::clone(&self.sink.store), None)
    }

    /// Every running service with its process tree, memory and CPU time: the bundle's
    /// `ps`. Its `Display` is a compact text tree.
    pub fn pstree(&self) -> Result<ProcessTree> {
        Ok(crate::inspect::pstree(self.running()?))
    }

    /// When each service reached each step of its startup: set up, started, ready, done
    /// with poststart. `Display` draws a text Gantt chart; [`Timeline::save_svg`](crate::Timeline::save_svg) a picture
    /// (the bundle also writes one to the run directory as `timeline.svg` when it stops, or
    /// when its startup fails).
    pub fn timeline(&self) -> Result<Timeline> {
        Ok(crate::inspect::timeline::of(self.running()?))
    }

    /// How many log lines the bundle holds, and how many bytes of them are in memory (the
    /// rest are read back from `all.log` when asked for).
    pub fn log_stats(&self) -> LogStats {
        LogStats::of(&self.sink.store)
    }

    fn running(&self) -> Result<&Arc<Runtime>> {
        self.runtime.as_ref().ok_or(Error::NotRunning)
    }

    /// A handle on one service: its logs, pid and state — also after it crashed (a crash,
    /// or the run's `all.log` failing, [`Error::LogFileFailed`], is reported by
    /// [`Bundle::check`], the next time travel, `signal` or `shutdown`).
    pub fn service(&self, name: &str) -> Result<ServiceHandle> {
        self.claim_console();
        // No crash report here: after a crash the test wants exactly this handle, to read
        // the crashed service's logs (`check`, the next time travel or shutdown report it).
        ServiceHandle::of(self.running()?, name)
    }

    /// Wait until the service called `name` is ready: after a start, restart or a restart by
    /// its policy (see [`ServiceHandle::start`]); within the startup timeout.
    pub fn wait_until_ready(&self, name: &str) -> Result<()> {
        self.claim_console();
        self.service(name)?.wait_until_ready()
    }

    /// An error if any service exited after it was ready, or else if the run's `all.log`
    /// could not be written (every time it is asked; the other calls that report a crash —
    /// the next time travel, `signal`, `shutdown` — do so once, and not one `check` has
    /// already told).
    pub fn check(&self) -> Result<()> {
        self.claim_console();
        match &self.runtime {
            Some(runtime) => report_crash(runtime, None, false, true),
            None => Ok(()),
        }
    }

    /// Stop every service: the stop signal to each process group in parallel, SIGKILL to
    /// those still alive after the shutdown timeout, then every process that left its group.
    ///
    /// Returns an error for a crash after startup not yet reported. Also done on drop. An
    /// [`Interrupter`] cuts the grace short: what is left gets SIGKILL at once.
    /// Only the first call stops anything; it may come from any thread. In a child forked
    /// (without exec) from the process that started the bundle, it does nothing, and
    /// neither does dropping the bundle there: the services are the parent's.
    pub fn shutdown(&self) -> Result<()> {
        self.mark_shut_down();
        self.wait_for_cancelled_startup();
        match self.begin_shutdown() {
            Some(runtime) => {
                stop_all(&runtime, self.shutdown_timeout);
                self.end_shutdown(&runtime)
            }
            None => Ok(()),
        }
    }

    /// `shutdown` was asked: no startup after it (also when it came before any).
    pub(crate) fn mark_shut_down(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
    }

    /// The runtime to stop, if this is the first call that stops it. None in a child forked
    /// from the process that started it: the services are that process's to stop.
    pub(crate) fn begin_shutdown(&self) -> Option<Arc<Runtime>> {
        let runtime = self.runtime.as_ref()?;
        if runtime.pid != std::process::id() {
            return None;
        }
        (!self.stopped.swap(true, Ordering::SeqCst)).then(|| Arc::clone(runtime))
    }

    /// After [`stop_all`]: the clock's files go, a crash not reported yet is.
    pub(crate) fn end_shutdown(&self, runtime: &Runtime) -> Result<()> {
        self.clock.stop();
        // After stopping, every exit is known and classified as asked for or not.
        report_crash(runtime, None, true, true)
    }

    /// What `startup_async` keeps for a shutdown, and lends its cancelling guard.
    #[cfg(feature = "tokio")]
    pub(crate) fn set_startup_wait(&mut self, wait: Arc<StartupWait>) {
        self.startup_wait = Some(wait);
    }

    /// The last `startup_async`'s wait, in the process that started the bundle (in a child
    /// forked from it, nothing ends that wait).
    #[cfg(feature = "tokio")]
    pub(crate) fn startup_wait_here(&self) -> Option<Arc<StartupWait>> {
        let here = self
            .runtime
            .as_ref()
            .is_some_and(|r| r.pid == std::process::id());
        self.startup_wait.clone().filter(|_| here)
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn stopped_flag(&self) -> &AtomicBool {
        &self.stopped
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn clock_ref(&self) -> &Clock {
        &self.clock
    }

    /// A startup whose async future was dropped stops what it started on the blocking
    /// pool: a shutdown (or the drop) waits for that first.
    fn wait_for_cancelled_startup(&self) {
        #[cfg(feature = "tokio")]
        if let Some(wait) = self.startup_wait_here() {
            wait.wait_ended();
        }
    }

    /// The shutdown timeout, for the async version's thread.
    #[cfg(feature = "tokio")]
    pub(crate) fn shutdown_timeout_value(&self) -> Duration {
        self.shutdown_timeout
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        self.wait_for_cancelled_startup();
        match self.runtime.as_ref() {
            // A child forked from the process that started it: its copy goes quietly (the
            // services, and the threads a stop would wait for, are the parent's).
            Some(runtime) if runtime.pid != std::process::id() => {}
            Some(runtime) if !self.stopped.swap(true, Ordering::SeqCst) => {
                stop_all(runtime, self.shutdown_timeout);
                self.clock.stop();
            }
            Some(_) => {}
            // Never started: still end any wait on its logs (e.g. a follow on another thread).
            None => self.sink.store.close(),
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

/// The part of `startup` that waits: until every service is ready, one fails, the timeout
/// passes or `interrupted` is set; after a failure, everything started is stopped.
pub(crate) fn wait_started(
    runtime: &Arc<Runtime>,
    startup_timeout: Duration,
    shutdown_timeout: Duration,
    progress: Option<Duration>,
    interrupted: &AtomicBool,
) -> Result<()> {
    let result = runtime.start_up(startup_timeout, progress, interrupted);
    if result.is_err() {
        // Evidence for a person: which service failed startup (or made it slow).
        stop_all(runtime, shutdown_timeout);
        // The startup error already told of any service that exited.
        runtime.mark_crashes_reported();
    }
    result
}

/// Stop every service, and meanwhile write `timeline.svg` in the run directory: which
/// service made startup slow. Written when the bundle stops (or its startup fails), not
/// before `startup()` returns: it took a good part of the time between a service's ready
/// line and `startup()` returning. Written once the stop signals are out, while the
/// services stop (mostly a wait for their exits); all.log's writer made the file when the
/// run started (making a file is what cost, not drawing it), and this only fills it.
pub(crate) fn stop_all(runtime: &Arc<Runtime>, timeout: Duration) {
    runtime.stop_all(timeout, || {
        // A panic here must not cut the stop short (the services would be left running).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let svg = crate::inspect::timeline::of(runtime).to_svg();
            let path = runtime.run.path.join(crate::logs::files::TIMELINE);
            let _ = runtime.sink.store.write_timeline(&path, svg.as_bytes());
        }));
    });
}

#[cfg(feature = "tokio")]
/// The wait of one `startup_async` (see `asynch`), run on the blocking pool: whether it has ended (with
/// everything it started stopped, if its future was dropped), for a shutdown to wait for.
#[derive(Default)]
pub(crate) struct StartupWait {
    state: std::sync::Mutex<WaitState>,
    ended: std::sync::Condvar,
}

#[cfg(feature = "tokio")]
#[derive(Default)]
struct WaitState {
    /// Its future was dropped: what it started is to be stopped.
    cancelled: bool,
    /// The wait is over; `Some(true)` if every service started up.
    ended: Option<bool>,
}

#[cfg(feature = "tokio")]
impl StartupWait {
    /// Its future was dropped: the wait's state then (`None`: still waiting, now cancelled).
    pub(crate) fn cancel(&self) -> Option<bool> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.ended.is_none() {
            state.cancelled = true;
        }
        state.ended
    }

    /// The wait is over with `result`: if its future was dropped meanwhile and the startup
    /// succeeded all the same, stop what it started (a failed one stopped it already).
    pub(crate) fn end(&self, runtime: &Arc<Runtime>, result: &Result<()>, shutdown: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.cancelled && result.is_ok() {
            drop(state);
            stop_all(runtime, shutdown);
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        }
        state.ended = Some(result.is_ok());
        self.ended.notify_all();
    }

    /// Block until the wait is over (a dropped one ends promptly: it was interrupted).
    pub(crate) fn wait_ended(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.ended.is_none() {
            state = self.ended.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}
