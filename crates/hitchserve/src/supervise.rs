//! Spawning, watching and stopping service processes, and the state they are in.
//!
//! Owns the per-service supervisor thread (spawn, wait, reap), the pipe readers that feed the
//! log store (and publish a quiet line's start as a partial line for tails), process groups, stop/kill, and the no-orphans layers: own process group,
//! the guardian, and the `HITCHSERVE_RUN` marker sweep. It does not decide
//! *when* to start a service (`bundle` walks the DAG) nor how lines are stored or printed.
//!
//! Invariants: a service's pgid is only signalled while its leader is unreaped (phases
//! `Running`, `Ready`, `Exiting`), because an unreaped leader keeps the pid from being
//! reused; whether an exit was expected is decided when the exit is seen, never later.

use std::ffi::OsString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal as NixSignal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::console::Console;
use crate::guardian;
use crate::hooks::{Hook, HookContext};
use crate::logs::{End, Filter, LineSplitter, LogLine, LogStore, Part, Source, Stream};
use crate::readiness::{Checker, ProbeEnv, Ready, Verdict};
use crate::rundir::RunDir;
use crate::service::Condition;
use crate::signal::{ExitStatus, Signal};

/// Environment variable that marks every process of a run, so escapees can be found.
pub(crate) const MARKER_VAR: &str = "HITCHSERVE_RUN";

/// Bytes asked for in one read of a service's pipe; more once it fills a read.
const READ_BUF_START: usize = 16 * 1024;
const READ_BUF_MAX: usize = 256 * 1024;
/// Capacity asked for each service's stdout and stderr pipe.
const PIPE_SIZE: i32 = 1024 * 1024;

/// After SIGKILL, how long processes may take to die before shutdown stops waiting.
const KILLED_GRACE: Duration = Duration::from_secs(10);

/// How long a dead service's pipes may take to deliver what it wrote before it died.
const READER_DRAIN: Duration = Duration::from_secs(2);

/// How long a stream must stay quiet before the start of a line it has not ended is shown
/// to tails as a partial line: long enough that a line written in a few quick writes is
/// seen whole, short enough to feel at once to a test waiting for a prompt.
const PARTIAL_QUIET: Duration = Duration::from_millis(50);

/// The bundle's own voice and the sinks every line goes to.
pub(crate) struct Output {
    pub store: Arc<LogStore>,
    pub console: Console,
    hitch_out: Arc<Source>,
    hitch_err: Arc<Source>,
}

impl Output {
    pub(crate) fn new() -> Output {
        let store = Arc::new(LogStore::new());
        Output {
            hitch_out: store.source(None, "Hitch", Part::Main, Stream::Stdout),
            hitch_err: store.source(None, "Hitch", Part::Main, Stream::Stderr),
            store,
            console: Console::new(),
        }
    }

    /// Store and print lines from one source; returns them if `checking` or printed.
    pub(crate) fn emit(
        &self,
        source: &Arc<Source>,
        lines: &[(&[u8], End)],
        checking: bool,
    ) -> Vec<LogLine> {
        if lines.is_empty() {
            return Vec::new();
        }
        // Decide before storing: a line a waiter can already see while muted is never
        // printed later, after interactive mode ends.
        let muted = self.console.is_muted();
        if muted {
            self.console.count_missed(lines.len());
        }
        let stored = self.store.append(source, lines, checking || !muted);
        if !muted {
            self.console.print(&stored);
        }
        stored
    }

    fn message(&self, source: &Arc<Source>, msg: &str) {
        let lines: Vec<(&[u8], End)> = msg
            .split('\n')
            .map(|l| (l.as_bytes(), End::Newline))
            .collect();
        self.emit(source, &lines, false);
    }

    pub(crate) fn log(&self, msg: &str) {
        self.message(&self.hitch_out, msg);
    }

    pub(crate) fn warn(&self, msg: &str) {
        self.message(&self.hitch_err, msg);
    }
}

/// Everything needed to spawn one service, resolved and checked before anything starts.
pub(crate) struct Plan {
    pub name: String,
    pub program: PathBuf,
    pub argv: Vec<OsString>,
    pub dir: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub needs: Vec<(usize, Condition)>,
    /// Done once it has exited 0 (see `Service::one_shot`).
    pub one_shot: bool,
    /// Uid and gid to run as (see `Service::user`).
    pub run_as: Option<(u32, u32)>,
    pub ready: Ready,
    pub stop_signal: Signal,
    /// Runs under the bundle's fake clock.
    pub faked: bool,
    pub setup: Option<Hook>,
    pub poststart: Option<Hook>,
    pub out: Arc<Source>,
    pub err: Arc<Source>,
    /// Labels for what the hooks run: (stdout, stderr) of setup, then of poststart.
    pub setup_sources: (Arc<Source>, Arc<Source>),
    pub post_sources: (Arc<Source>, Arc<Source>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not started: waiting for its needs.
    Defined,
    /// Its supervisor thread is spawning it (running its setup hook first, if any).
    Starting,
    /// Its setup hook is running.
    Setup,
    /// Running, readiness not yet seen.
    Running,
    /// Its readiness check passed; its poststart hook is running.
    PostStart,
    Ready,
    /// The main process has exited (this status) but is not reaped yet, so its pgid is
    /// still ours: what is left of its group is being drained or stopped.
    Exiting(ExitStatus),
    Exited(ExitStatus),
    /// The OS refused to start it; see `spawn_error`.
    SpawnFailed,
    /// Never started: its setup hook failed, or the bundle stopped while it ran.
    Abandoned,
}

pub(crate) struct State {
    pub phase: Phase,
    pub pid: Option<u32>,
    pub was_ready: bool,
    /// Its "ready" line has been logged.
    pub announced: bool,
    /// The bundle asked it to stop (or is stopping): its exit from now on is expected.
    pub stopping: bool,
    /// When stopping: when its group gets SIGKILL (`None`: no limit).
    pub stop_deadline: Option<Instant>,
    /// Whether the bundle was stopping it when its main process exited.
    pub exit_expected: bool,
    /// Its main process has exited and its process group has been killed: only draining
    /// its pipes and reaping remain.
    pub group_done: bool,
    /// A crash after readiness already returned to the user once.
    pub crash_reported: bool,
    pub spawn_error: Option<std::io::Error>,
    pub check_panic: Option<String>,
    /// Copied from its plan: exiting 0 is its success.
    pub one_shot: bool,
    /// Its poststart hook is running (a one-shot service isn't complete until it is done).
    pub post_running: bool,
    /// The last failure of a readiness probe ("connection refused on 127.0.0.1:5432").
    pub probe_failure: Option<String>,
    /// A hook failed: which one and why.
    pub hook_error: Option<(Part, String)>,
    pub started_at: Option<Instant>,
    pub ready_at: Option<Instant>,
    /// For the timeline: setup hook start and end, process spawned, readiness check passed.
    pub setup_span: Option<(Instant, Instant)>,
    pub spawned_at: Option<Instant>,
    pub checked_at: Option<Instant>,
}

impl State {
    pub(crate) fn new() -> State {
        State {
            phase: Phase::Defined,
            pid: None,
            was_ready: false,
            announced: false,
            stopping: false,
            stop_deadline: None,
            exit_expected: false,
            group_done: false,
            crash_reported: false,
            spawn_error: None,
            check_panic: None,
            hook_error: None,
            one_shot: false,
            post_running: false,
            probe_failure: None,
            started_at: None,
            ready_at: None,
            setup_span: None,
            spawned_at: None,
            checked_at: None,
        }
    }

    /// It exited on its own after it was ready.
    pub(crate) fn crashed(&self) -> Option<ExitStatus> {
        match self.phase {
            Phase::Exited(status) if self.one_shot && status.success() => None,
            Phase::Exited(status) if self.was_ready && !self.exit_expected => Some(status),
            _ => None,
        }
    }
}

/// One running bundle: shared by the bundle handle, service handles and all threads.
pub(crate) struct Shared {
    /// When startup began: the timeline's zero.
    pub t0: Instant,
    pub output: Arc<Output>,
    pub plans: Vec<Plan>,
    pub states: Mutex<Vec<State>>,
    pub changed: Condvar,
    pub run: RunDir,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
    /// Supervisor threads made in advance, waiting for their service's child.
    workers: Mutex<Vec<Option<mpsc::Sender<Task>>>>,
    /// Per service, which user code (a readiness closure, a hook) one of its threads is
    /// running now: `UserCode as u8`, 0 for none. User code may block forever; stopping must
    /// then neither wait for that thread nor for what only that thread would report.
    user_code: Vec<AtomicU8>,
}

/// User code a service's thread may be stuck in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum UserCode {
    Readiness = 1,
    Setup = 2,
    Poststart = 3,
}

impl UserCode {
    fn from_u8(v: u8) -> Option<UserCode> {
        match v {
            1 => Some(UserCode::Readiness),
            2 => Some(UserCode::Setup),
            3 => Some(UserCode::Poststart),
            _ => None,
        }
    }

    pub(crate) fn words(self) -> &'static str {
        match self {
            UserCode::Readiness => "readiness check",
            UserCode::Setup => "setup hook",
            UserCode::Poststart => "poststart hook",
        }
    }
}

/// Marks a service's thread as inside user code until dropped.
struct InUserCode<'a>(&'a AtomicU8);

impl Drop for InUserCode<'_> {
    fn drop(&mut self) {
        self.0.store(0, AtomicOrdering::Release);
    }
}

impl Shared {
    pub(crate) fn new(output: Arc<Output>, plans: Vec<Plan>, run: RunDir, t0: Instant) -> Shared {
        let states = plans
            .iter()
            .map(|p| State {
                one_shot: p.one_shot,
                ..State::new()
            })
            .collect();
        let n = plans.len();
        Shared {
            t0,
            output,
            plans,
            states: Mutex::new(states),
            changed: Condvar::new(),
            run,
            supervisors: Mutex::new(Vec::new()),
            workers: Mutex::new((0..n).map(|_| None).collect()),
            user_code: (0..n).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Say that this thread runs `what` of service `idx` until the guard is dropped.
    fn entering(&self, idx: usize, what: UserCode) -> InUserCode<'_> {
        self.user_code[idx].store(what as u8, AtomicOrdering::Release);
        InUserCode(&self.user_code[idx])
    }

    /// The user code a thread of service `idx` is running now, if any.
    pub(crate) fn in_user_code(&self, idx: usize) -> Option<UserCode> {
        UserCode::from_u8(self.user_code[idx].load(AtomicOrdering::Acquire))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, idx: usize, f: impl FnOnce(&mut State)) {
        f(&mut self.lock()[idx]);
        self.changed.notify_all();
    }

    /// Wait until `done` holds or the deadline passes; returns the guard either way.
    pub(crate) fn wait_until<'a>(
        &'a self,
        mut guard: MutexGuard<'a, Vec<State>>,
        deadline: Option<Instant>,
        mut done: impl FnMut(&[State]) -> bool,
    ) -> (MutexGuard<'a, Vec<State>>, bool) {
        loop {
            if done(&guard) {
                return (guard, true);
            }
            guard = match deadline {
                None => self.changed.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return (guard, false);
                    }
                    self.changed
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// `wait_until` for stopping: while a thread is stuck in user code, nobody will signal
    /// that its group is gone, so look again every `GROUP_CHECK`.
    fn wait_stopped(
        &self,
        deadline: Option<Instant>,
        mut done: impl FnMut(&[State]) -> bool,
    ) -> (MutexGuard<'_, Vec<State>>, bool) {
        let mut guard = self.lock();
        loop {
            let any_stuck = (0..self.plans.len()).any(|idx| self.in_user_code(idx).is_some());
            if !any_stuck {
                return self.wait_until(guard, deadline, done);
            }
            let soon = Instant::now() + GROUP_CHECK;
            let wake = deadline.map_or(soon, |d| d.min(soon));
            let (g, ok) = self.wait_until(guard, Some(wake), &mut done);
            if ok || deadline.is_some_and(|d| Instant::now() >= d) {
                return (g, ok);
            }
            guard = g;
        }
    }

    /// The last `n` lines of a service, in the console format, and the line it has started
    /// but not ended, if any.
    pub(crate) fn last_lines(&self, idx: usize, n: usize) -> Vec<String> {
        let filter = Filter::service(Some(idx));
        crate::logs::last_lines(&self.output.store, &filter, n, true)
    }

    /// Spawn service `idx` (marked `Starting` by the caller) and record it as running.
    /// `None` if it could not be spawned (the state says why).
    fn spawn_registered(self: &Arc<Self>, idx: usize) -> Option<Child> {
        let plan = &self.plans[idx];
        if let Some(setup) = &plan.setup {
            self.update(idx, |st| st.phase = Phase::Setup);
            self.output.log(&format!("Setting up {}", plan.name));
            let began = Instant::now();
            let result = self.run_hook(idx, setup, &plan.setup_sources);
            self.update(idx, |st| st.setup_span = Some((began, Instant::now())));
            if let Err(message) = result {
                self.update(idx, |st| {
                    st.hook_error = Some((Part::Setup, message));
                    st.phase = Phase::Abandoned;
                });
                return None;
            }
            let stopping = {
                let mut states = self.lock();
                let st = &mut states[idx];
                st.phase = if st.stopping {
                    Phase::Abandoned
                } else {
                    Phase::Starting
                };
                st.stopping
            };
            self.changed.notify_all();
            if stopping {
                return None;
            }
        }
        self.output.log(&format!("Starting {}", plan.name));
        let child = match spawn_child(plan) {
            Ok(child) => child,
            Err(e) => {
                self.update(idx, |st| {
                    st.phase = Phase::SpawnFailed;
                    st.spawn_error = Some(e);
                });
                return None;
            }
        };
        let pid = child.id();
        guardian::watch(&self.run.id, pid);
        let torn_down = {
            let mut states = self.lock();
            let st = &mut states[idx];
            st.pid = Some(pid);
            st.phase = Phase::Running;
            st.spawned_at = Some(Instant::now());
            st.stopping
        };
        self.changed.notify_all();
        if torn_down {
            // The bundle began stopping while we were spawning: don't leave this one behind.
            let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
        } else if self
            .plans
            .iter()
            .any(|p| p.needs.contains(&(idx, Condition::Started)))
        {
            // Some service waited only for this one's process to start.
            self.start_startable();
        }
        Some(child)
    }

    /// A service without a readiness check is ready once running.
    fn ready_if_immediate(self: &Arc<Self>, idx: usize) {
        if self.plans[idx].ready.is_immediate() {
            self.became_ready(idx);
        }
    }

    /// Start service `idx` on this thread: spawn it here, then hand the child to its
    /// supervisor thread. Spawning first hides that thread's wake-up or creation behind
    /// the program's own start-up, so a chain of services never waits on a thread.
    fn start_here(self: &Arc<Self>, idx: usize) {
        let Some(child) = self.spawn_registered(idx) else {
            return;
        };
        let pid = child.id();
        // Ready (if it needs no check) before its supervisor can see it exit: a one-shot
        // that exits at once must still run its poststart hook before it counts as complete.
        // (`run_task` does the same, in the same order.)
        self.ready_if_immediate(idx);
        if let Err(e) = self.give(idx, Task::Supervise(child)) {
            // Without its thread nobody would reap or read it: kill it, forget its pgid
            // (it is about to be reaped), reap it, report why.
            let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
            guardian::forget(pid);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
            self.update(idx, |st| {
                st.phase = Phase::SpawnFailed;
                st.spawn_error = Some(e);
            });
        }
    }

    /// Start service `idx` on its own supervisor thread (spawn included), so several
    /// services start in parallel.
    fn start_elsewhere(self: &Arc<Self>, idx: usize) {
        if let Err(e) = self.give(idx, Task::Spawn) {
            self.update(idx, |st| {
                st.phase = Phase::SpawnFailed;
                st.spawn_error = Some(e);
            });
        }
    }

    /// Give a task to the service's supervisor thread: the one made in advance by
    /// `prepare_supervisors`, or a new one.
    fn give(self: &Arc<Self>, idx: usize, task: Task) -> std::io::Result<()> {
        let waiting = self.lock_workers().get_mut(idx).and_then(Option::take);
        let task = match waiting {
            Some(tx) => match tx.send(task) {
                Ok(()) => return Ok(()),
                Err(returned) => returned.0,
            },
            None => task,
        };
        let shared = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name(format!("hitchserve:{}", self.plans[idx].name))
            .spawn(move || run_task(&shared, idx, task))?;
        self.lock_supervisors().push(handle);
        Ok(())
    }

    /// Make the supervisor threads of services not started yet, so that starting one later
    /// doesn't wait for a thread to be created. Each waits for its task, or for the bundle
    /// to stop (its sender dropped).
    pub(crate) fn prepare_supervisors(self: &Arc<Self>) {
        let pending: Vec<usize> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, st)| st.phase == Phase::Defined)
            .map(|(idx, _)| idx)
            .collect();
        for idx in pending {
            let (tx, rx) = mpsc::channel::<Task>();
            let shared = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("hitchserve:{}", self.plans[idx].name))
                .spawn(move || {
                    if let Ok(task) = rx.recv() {
                        run_task(&shared, idx, task);
                    }
                });
            if let Ok(handle) = spawned {
                self.lock_supervisors().push(handle);
                if let Some(slot) = self.lock_workers().get_mut(idx) {
                    *slot = Some(tx);
                }
            }
        }
    }

    fn lock_workers(&self) -> MutexGuard<'_, Vec<Option<mpsc::Sender<Task>>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_supervisors(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.supervisors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start every service whose needs are all ready (and that isn't started yet), unless
    /// the bundle is stopping. Used for the roots at startup and whenever one gets ready.
    pub(crate) fn start_startable(self: &Arc<Self>) {
        let to_start: Vec<usize> = {
            let mut states = self.lock();
            let met: Vec<[bool; 3]> = states
                .iter()
                .map(|s| {
                    let completed =
                        s.phase == Phase::Exited(ExitStatus::Code(0)) && !s.post_running;
                    [
                        // Announced too: its "ready" line comes before its dependents start.
                        // A one-shot service that completed counts as ready too.
                        (s.phase == Phase::Ready && s.announced) || (s.one_shot && completed),
                        s.pid.is_some(),
                        completed,
                    ]
                })
                .collect();
            let meets = |n: usize, c: Condition| match c {
                Condition::Ready => met[n][0],
                Condition::Started => met[n][1],
                Condition::CompletedSuccessfully => met[n][2],
            };
            let mut picked = Vec::new();
            for (idx, plan) in self.plans.iter().enumerate() {
                let st = &mut states[idx];
                if st.phase == Phase::Defined
                    && !st.stopping
                    && plan.needs.iter().all(|&(n, c)| meets(n, c))
                {
                    st.phase = Phase::Starting;
                    st.started_at = Some(Instant::now());
                    picked.push(idx);
                }
            }
            picked
        };
        // Services with a setup hook start on their own thread (a hook may take long, and
        // this may be another service's reader); of the rest, the first starts right here
        // (no thread to wake) and the others in parallel.
        let (hooked, plain): (Vec<usize>, Vec<usize>) = to_start
            .into_iter()
            .partition(|&idx| self.plans[idx].setup.is_some());
        for idx in hooked {
            self.start_elsewhere(idx);
        }
        if let Some((&first, rest)) = plain.split_first() {
            for &idx in rest {
                self.start_elsewhere(idx);
            }
            self.start_here(first);
        }
    }

    /// Service `idx` passed its readiness check: run its poststart hook (on a thread of
    /// its own: this is its reader, which must keep draining its pipes), then say so and
    /// start what waited for it — right here, so a chain of services never waits for
    /// another thread to wake up.
    fn became_ready(self: &Arc<Self>, idx: usize) {
        let has_poststart = self.plans[idx].poststart.is_some();
        {
            let mut states = self.lock();
            let st = &mut states[idx];
            if st.phase != Phase::Running {
                return;
            }
            st.checked_at = Some(Instant::now());
            st.phase = if has_poststart {
                Phase::PostStart
            } else {
                Phase::Ready
            };
            st.post_running = has_poststart;
        }
        if !has_poststart {
            self.announce_ready(idx);
            return;
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("hitchserve:{}:post", self.plans[idx].name))
            .spawn(move || {
                let plan = &shared.plans[idx];
                if let Some(hook) = &plan.poststart {
                    if let Err(message) = shared.run_hook(idx, hook, &plan.post_sources) {
                        shared.update(idx, |st| {
                            st.hook_error = Some((Part::Poststart, message));
                            st.post_running = false;
                        });
                        return;
                    }
                }
                let ok = {
                    let mut states = shared.lock();
                    let st = &mut states[idx];
                    st.post_running = false;
                    let ok = st.phase == Phase::PostStart;
                    if ok {
                        st.phase = Phase::Ready;
                    }
                    ok
                };
                shared.changed.notify_all();
                if ok {
                    shared.announce_ready(idx);
                } else {
                    // A one-shot service may have completed meanwhile: now it counts.
                    shared.start_startable();
                }
            });
        match spawned {
            Ok(handle) => self.lock_supervisors().push(handle),
            Err(e) => self.update(idx, |st| {
                st.hook_error = Some((Part::Poststart, format!("could not start its thread: {e}")))
            }),
        }
    }

    /// Run a hook with its labelled output; a failure as a message.
    fn run_hook(
        self: &Arc<Self>,
        idx: usize,
        hook: &Hook,
        sources: &(Arc<Source>, Arc<Source>),
    ) -> std::result::Result<(), String> {
        let ctx = HookContext {
            shared: self,
            idx,
            out: Arc::clone(&sources.0),
            err: Arc::clone(&sources.1),
        };
        let what = if Arc::ptr_eq(&sources.0, &self.plans[idx].setup_sources.0) {
            UserCode::Setup
        } else {
            UserCode::Poststart
        };
        let _user = self.entering(idx, what);
        hook.call(&ctx)
    }

    /// It is ready (poststart included): log it, then start what waited for it.
    fn announce_ready(self: &Arc<Self>, idx: usize) {
        let took = {
            let mut states = self.lock();
            let st = &mut states[idx];
            st.was_ready = true;
            let now = Instant::now();
            st.ready_at = Some(now);
            st.started_at
                .map(|t| now.duration_since(t))
                .unwrap_or_default()
        };
        self.output.log(&format!(
            "{} ready after {:.2} s",
            self.plans[idx].name,
            took.as_secs_f64()
        ));
        // Marked after the line above, so "READY" is never printed before it.
        self.update(idx, |st| st.announced = true);
        self.start_startable();
    }

    /// Send `signal` to the service's process group, if its process is alive.
    pub(crate) fn signal(&self, idx: usize, signal: Signal) -> bool {
        let states = self.lock();
        signal_locked(&states[idx], signal.to_nix())
    }

    /// Stop every service: stop signal to each group in parallel, SIGKILL to what is left
    /// of each group after `timeout` (the main process exiting first doesn't cut its group's
    /// grace short), then kill whatever left its group. Returns once all are reaped.
    pub(crate) fn stop_all(&self, timeout: Duration) {
        let t0 = Instant::now();
        let deadline = deadline_after(t0, timeout);
        let mut stopping = Vec::new();
        {
            let mut states = self.lock();
            for (idx, st) in states.iter_mut().enumerate() {
                // A main process that already exited did so unasked: a crash, even if its
                // supervisor hasn't noticed yet.
                let exited_unasked =
                    matches!(st.phase, Phase::Running | Phase::PostStart | Phase::Ready)
                        && st.pid.is_some_and(has_exited);
                st.stopping = !exited_unasked;
                st.stop_deadline = deadline;
                if signal_locked(st, self.plans[idx].stop_signal.to_nix()) {
                    stopping.push(self.plans[idx].name.as_str());
                }
            }
        }
        self.changed.notify_all();
        if !stopping.is_empty() {
            self.output
                .log(&format!("Stopping {}", stopping.join(", ")));
        }
        // A service whose thread is stuck in user code (a readiness closure or a hook that
        // never returns) can't report its own end: it counts as done once nothing of its
        // group is alive (a setup hook has no group yet), and nobody waits for that thread.
        let stuck_and_gone = |idx: usize, st: &State| {
            self.in_user_code(idx).is_some() && st.pid.is_none_or(|pid| !group_alive(pid))
        };
        let all_done = |s: &[State]| {
            s.iter().enumerate().all(|(idx, st)| {
                !matches!(
                    st.phase,
                    Phase::Exiting(_)
                        | Phase::Starting
                        | Phase::Setup
                        | Phase::Running
                        | Phase::PostStart
                        | Phase::Ready
                ) || stuck_and_gone(idx, st)
            })
        };
        // First until every group is gone (escapees may still hold pipes open: the sweep
        // below is for them), then until every supervisor has drained and reaped.
        let groups_gone = |s: &[State]| {
            s.iter().enumerate().all(|(idx, st)| match st.phase {
                Phase::Starting
                | Phase::Setup
                | Phase::Running
                | Phase::PostStart
                | Phase::Ready => stuck_and_gone(idx, st),
                Phase::Exiting(_) => st.group_done || stuck_and_gone(idx, st),
                _ => true,
            })
        };
        let (states, done) = self.wait_stopped(deadline, groups_gone);
        if !done {
            let mut killed = Vec::new();
            for (idx, st) in states.iter().enumerate() {
                if signal_locked(st, NixSignal::SIGKILL) {
                    killed.push(self.plans[idx].name.as_str());
                }
            }
            drop(states);
            if !killed.is_empty() {
                self.output.warn(&format!(
                    "{} did not stop within {:.1} s: killed with SIGKILL",
                    killed.join(", "),
                    timeout.as_secs_f64()
                ));
            }
        } else {
            drop(states);
        }
        // Processes that left their group (setsid, double fork) are still in the run's
        // cgroup, where there is one, and still carry the marker unless they cleared it.
        guardian::kill_cgroup(&self.run.id);
        sweep(&self.run.id);
        let grace = deadline_after(Instant::now(), KILLED_GRACE + READER_DRAIN);
        drop(self.wait_stopped(grace, all_done));
        // Threads made in advance for services that never started: let them go.
        self.lock_workers().iter_mut().for_each(|w| *w = None);
        let stuck: Vec<(usize, UserCode)> = (0..self.plans.len())
            .filter_map(|idx| self.in_user_code(idx).map(|what| (idx, what)))
            .collect();
        for &(idx, what) in &stuck {
            self.output.warn(&format!(
                "the {} of `{}` has not returned (is it blocked?): its thread is left behind",
                what.words(),
                self.plans[idx].name
            ));
        }
        let handles = std::mem::take(&mut *self.lock_supervisors());
        for h in handles {
            // With a thread stuck in user code, join only threads that have ended: the
            // stuck one may never end, and every other one has done its work by now.
            if stuck.is_empty() || h.is_finished() {
                let _ = h.join();
            }
        }
        guardian::remove_run(&self.run.id);
        if !stopping.is_empty() {
            self.output
                .log(&format!("Stopped in {:.2} s", t0.elapsed().as_secs_f64()));
        }
        self.output.store.close();
    }
}

/// `from + d`, or `None` (no deadline) if that is beyond what `Instant` can hold.
pub(crate) fn deadline_after(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

fn signal_locked(st: &State, signal: NixSignal) -> bool {
    match (st.phase, st.pid) {
        (Phase::Running | Phase::PostStart | Phase::Ready | Phase::Exiting(_), Some(pid)) => {
            killpg(Pid::from_raw(pid as i32), signal).is_ok()
        }
        _ => false,
    }
}

impl Plan {
    /// A command to run like this service: its environment, directory and fake time.
    pub(crate) fn subcommand(&self, argv: Vec<OsString>) -> crate::subcommand::Subcommand {
        crate::subcommand::Subcommand::new(&self.name, argv, self.dir.clone(), self.env.clone())
            .run_as(self.run_as)
    }
}

/// What a supervisor thread is given to do.
enum Task {
    /// Spawn the service, then supervise it.
    Spawn,
    /// Supervise a child already spawned.
    Supervise(Child),
}

fn run_task(shared: &Arc<Shared>, idx: usize, task: Task) {
    let child = match task {
        Task::Supervise(child) => child,
        Task::Spawn => {
            let Some(child) = shared.spawn_registered(idx) else {
                return;
            };
            shared.ready_if_immediate(idx);
            child
        }
    };
    supervise(shared, idx, child);
}

/// Spawn a service's main process in its own process group, with its pipes.
fn spawn_child(plan: &Plan) -> std::io::Result<Child> {
    // No `pre_exec` (e.g. for PR_SET_PDEATHSIG): it forces fork() instead of vfork-based
    // posix_spawn, which made starting 20 services 1.5x slower here. The guardian covers
    // the death of the bundle's process. (Only a caller with blocked signals gets one.)
    let mut cmd = Command::new(&plan.program);
    if let Some((uid, gid)) = plan.run_as {
        // (std then drops root's supplementary groups too.)
        cmd.uid(uid).gid(gid);
    }
    cmd.arg0(&plan.argv[0])
        .args(&plan.argv[1..])
        .current_dir(&plan.dir)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::signal::unblock_signals_in_child(&mut cmd);
    cmd.spawn()
}

/// The body of a supervisor thread: read both pipes, notice the exit, reap, report.
///
/// One thread per service does it all with `poll` over stdout, stderr and a pidfd: fewer
/// threads, and the exit is seen while the leader is still an unreaped zombie.
fn supervise(shared: &Arc<Shared>, idx: usize, mut child: Child) {
    let plan = &shared.plans[idx];
    let pid = child.id();
    let mut out = StreamReader::new(
        shared,
        idx,
        child.stdout.take().map(OwnedFd::from),
        &plan.out,
    );
    let mut err = StreamReader::new(
        shared,
        idx,
        child.stderr.take().map(OwnedFd::from),
        &plan.err,
    );
    let checker = Arc::new(plan.ready.checker());
    if checker.has_probes() {
        let (prober_shared, prober_checker) = (Arc::clone(shared), Arc::clone(&checker));
        let spawned = std::thread::Builder::new()
            .name(format!("hitchserve:{}:probe", plan.name))
            .spawn(move || probe_until_ready(&prober_shared, idx, &prober_checker));
        if let Ok(handle) = spawned {
            shared.lock_supervisors().push(handle);
        }
    }
    let pidfd = pidfd_open(pid);
    // Until the main process exits: read whatever arrives.
    loop {
        let exited = poll_once(&mut out, &mut err, &checker, pidfd.as_ref(), pid, None);
        if exited {
            break;
        }
    }
    let status = exit_status_unreaped(pid);
    // Expected or not is decided now: a shutdown that starts during the drain below must
    // not turn a crash into a clean stop.
    let (expected, stop_deadline) = {
        let mut states = shared.lock();
        let st = &mut states[idx];
        st.phase = Phase::Exiting(status);
        st.exit_expected = st.stopping;
        (st.stopping, st.stop_deadline)
    };
    shared.changed.notify_all();
    if expected {
        // Stopping: the rest of its group (a server under a wrapper shell, say) gets the
        // remaining grace to finish. Nothing signals "group empty": when both pipes have
        // closed, whoever held them is gone; otherwise look at /proc now and then.
        while (out.is_open() || err.is_open())
            && group_has_others(pid)
            && stop_deadline.is_none_or(|d| Instant::now() < d)
        {
            let next = Instant::now() + GROUP_CHECK;
            let wake = stop_deadline.map_or(next, |d| d.min(next));
            poll_once(&mut out, &mut err, &checker, None, pid, Some(wake));
        }
    }
    // Whatever is left of its group dies now; the leader is still unreaped, so the pgid
    // can't have been reused.
    let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
    guardian::forget(pid);
    shared.update(idx, |st| st.group_done = true);
    // Drain what it wrote before it died. A process that escaped the group may hold a
    // pipe open; don't wait for it forever.
    let deadline = Instant::now() + READER_DRAIN;
    while (out.is_open() || err.is_open()) && Instant::now() < deadline {
        poll_once(&mut out, &mut err, &checker, None, pid, Some(deadline));
    }
    out.finish(&checker);
    err.finish(&checker);
    let status = child.wait().map(ExitStatus::from_std).unwrap_or(status);
    let done_right = plan.one_shot && status.success();
    if !expected && !done_right && shared.lock()[idx].was_ready {
        // Said before the state changes, so whoever sees the crash also finds this line.
        shared
            .output
            .warn(&format!("`{}` exited unexpectedly ({status})", plan.name));
    }
    shared.update(idx, |st| st.phase = Phase::Exited(status));
    shared.output.store.mark_ended(idx);
    if done_right {
        shared.output.log(&format!("{} completed", plan.name));
        // Services waiting for this one to complete may start now.
        shared.start_startable();
    }
}

/// How often a stopping service's group is looked at once its main process has exited.
const GROUP_CHECK: Duration = Duration::from_millis(10);

/// Whether any live (not zombie) process is in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(all) = procfs::process::all_processes() else {
        return false;
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .any(|st| st.pgrp == pgid as i32 && !matches!(st.state, 'Z' | 'X'))
}

/// Whether a live process other than the (exited) leader is still in process group `pgid`.
fn group_has_others(pgid: u32) -> bool {
    let Ok(all) = procfs::process::all_processes() else {
        return false;
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .any(|st| st.pgrp == pgid as i32 && st.pid != pgid as i32 && !matches!(st.state, 'Z' | 'X'))
}

/// How an exited, not yet reaped, process ended (without reaping it).
fn exit_status_unreaped(pid: u32) -> ExitStatus {
    use nix::sys::wait::WaitStatus;
    match waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
    ) {
        Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signaled(sig as i32),
        _ => ExitStatus::Code(-1),
    }
}

/// First pause between two rounds of readiness probes; it grows to `PROBE_MAX_PAUSE`.
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(5);
const PROBE_MAX_PAUSE: Duration = Duration::from_millis(250);
/// Longest one probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Try a service's probes until its check passes or it is no longer waiting for them.
fn probe_until_ready(shared: &Arc<Shared>, idx: usize, checker: &Checker) {
    let plan = &shared.plans[idx];
    let env = ProbeEnv {
        service: &plan.name,
        dir: &plan.dir,
        env: &plan.env,
        run_as: plan.run_as,
        limit: PROBE_LIMIT,
    };
    let mut pause = PROBE_FIRST_PAUSE;
    loop {
        if shared.lock()[idx].phase != Phase::Running {
            return;
        }
        match checker.probe(&env) {
            Verdict::Ready => {
                shared.became_ready(idx);
                return;
            }
            Verdict::Panicked(message) => {
                shared.update(idx, |st| st.check_panic = Some(message));
                return;
            }
            Verdict::NotYet => {
                let failure = checker.last_failure();
                shared.update(idx, |st| st.probe_failure = failure);
            }
        }
        // Probing is asking again and again by nature: the pause is the probe interval.
        std::thread::sleep(pause);
        pause = (pause * 3 / 2).min(PROBE_MAX_PAUSE);
    }
}

/// How often to look for the exit when the kernel has no pidfd (before Linux 5.3).
const EXIT_POLL_FALLBACK: Duration = Duration::from_millis(20);

/// Wait for output or the exit once. Returns true when the main process has exited.
fn poll_once(
    out: &mut StreamReader<'_>,
    err: &mut StreamReader<'_>,
    checker: &Checker,
    pidfd: Option<&OwnedFd>,
    pid: u32,
    deadline: Option<Instant>,
) -> bool {
    let watch_exit = deadline.is_none();
    let mut fds = Vec::with_capacity(3);
    let mut which = Vec::with_capacity(3);
    for (i, r) in [&*out, &*err].into_iter().enumerate() {
        if let Some(fd) = r.fd.as_ref() {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(i);
        }
    }
    if watch_exit {
        if let Some(fd) = pidfd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(2);
        }
    }
    let timeout = match deadline {
        Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
            .unwrap_or(PollTimeout::MAX),
        None if pidfd.is_none() => {
            PollTimeout::try_from(EXIT_POLL_FALLBACK).unwrap_or(PollTimeout::MAX)
        }
        None => PollTimeout::NONE,
    };
    // A held-back line start is due to be shown: wake for it (no timer when there is none,
    // so a busy stream pays nothing).
    let partial_due = match (out.partial_due, err.partial_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let timeout = match partial_due {
        Some(due) => {
            // Rounded up: poll counts whole milliseconds, and 0 would spin until it is due.
            let wait = due.saturating_duration_since(Instant::now());
            let wait =
                PollTimeout::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX);
            if timeout == PollTimeout::NONE {
                wait
            } else {
                timeout.min(wait)
            }
        }
        None => timeout,
    };
    if fds.is_empty() && pidfd.is_some() {
        unreachable_exit_wait(pid);
        return true;
    }
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return false,
        Err(_) => {
            // Nothing sensible to wait on any more: wait for the exit plainly.
            if watch_exit {
                unreachable_exit_wait(pid);
                return true;
            }
            return false;
        }
    }
    let ready: Vec<(usize, bool)> = fds
        .iter()
        .zip(&which)
        .map(|(fd, &w)| (w, fd.revents().is_some_and(|r| !r.is_empty())))
        .collect();
    drop(fds);
    let mut exited = false;
    for (w, is_ready) in ready {
        if !is_ready {
            continue;
        }
        match w {
            0 => out.read_some(checker),
            1 => err.read_some(checker),
            _ => exited = true,
        }
    }
    if watch_exit && pidfd.is_none() {
        exited = has_exited(pid);
    }
    if partial_due.is_some() {
        let now = Instant::now();
        out.publish_partial_if_due(now);
        err.publish_partial_if_due(now);
    }
    exited
}

/// Block until the process exits, leaving it unreaped (used when there is nothing to poll).
fn unreachable_exit_wait(pid: u32) {
    loop {
        match waitid(
            Id::Pid(Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Whether the process has exited, without reaping it.
fn has_exited(pid: u32) -> bool {
    matches!(
        waitid(
            Id::Pid(Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
        ),
        Ok(status) if status != nix::sys::wait::WaitStatus::StillAlive
    ) || !Path::new(&format!("/proc/{pid}")).exists()
}

/// A pidfd for `pid`: readable once the process has exited. `None` before Linux 5.3.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; on success the kernel hands us a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh, valid descriptor owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One pipe of a service: read, split into lines, store, check readiness, copy to its file.
struct StreamReader<'a> {
    shared: &'a Arc<Shared>,
    idx: usize,
    fd: Option<OwnedFd>,
    source: &'a Arc<Source>,
    splitter: LineSplitter,
    buf: Vec<u8>,
    /// When the start of a line held back now is to be shown as a partial line, if the
    /// stream stays quiet until then.
    partial_due: Option<Instant>,
}

impl<'a> StreamReader<'a> {
    fn new(
        shared: &'a Arc<Shared>,
        idx: usize,
        fd: Option<OwnedFd>,
        source: &'a Arc<Source>,
    ) -> StreamReader<'a> {
        if let Some(fd) = fd.as_ref() {
            // A bigger pipe lets a chatty service run ahead of us instead of blocking, and
            // lets us take its output in fewer, larger reads. Best effort: the system may
            // cap it (fs.pipe-max-size).
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        }
        StreamReader {
            shared,
            idx,
            fd,
            source,
            splitter: LineSplitter::new(shared.output.store.piece_size()),
            buf: Vec::new(),
            partial_due: None,
        }
    }

    fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// One read: its lines are stored (and so written to `all.log`) and checked.
    fn read_some(&mut self, checker: &Checker) {
        let Some(fd) = self.fd.as_ref() else { return };
        if self.buf.is_empty() {
            self.buf = vec![0u8; READ_BUF_START];
        }
        let n = match nix::unistd::read(fd, &mut self.buf) {
            Ok(0) => {
                self.finish(checker);
                return;
            }
            Ok(n) if n == self.buf.len() && n < READ_BUF_MAX => {
                // A chatty service: take bigger bites from now on.
                self.buf.resize(READ_BUF_MAX, 0);
                n
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return,
            Err(_) => {
                self.finish(checker);
                return;
            }
        };
        let (shared, source, idx) = (self.shared, self.source, self.idx);
        self.splitter.split(&self.buf[..n], |lines| {
            deliver(shared, source, idx, lines, checker);
        });
        self.partial_due = self
            .splitter
            .pending()
            .map(|_| Instant::now() + PARTIAL_QUIET);
    }

    /// Show the held-back start of a line to tails once the stream has been quiet long
    /// enough. Readiness does not see it: it only ever sees whole lines.
    fn publish_partial_if_due(&mut self, now: Instant) {
        if self.partial_due.is_some_and(|due| due <= now) {
            self.partial_due = None;
            if let Some(bytes) = self.splitter.pending() {
                self.shared.output.store.publish_partial(self.source, bytes);
            }
        }
    }

    /// End of the stream: an unterminated last line is still a line.
    fn finish(&mut self, checker: &Checker) {
        self.fd = None;
        self.partial_due = None;
        if let Some(last) = self.splitter.finish() {
            deliver(
                self.shared,
                self.source,
                self.idx,
                &[(&last, End::Unterminated)],
                checker,
            );
        }
    }
}

/// Store and print a service's lines, and check them for readiness.
fn deliver(
    shared: &Arc<Shared>,
    source: &Arc<Source>,
    idx: usize,
    lines: &[(&[u8], End)],
    checker: &Checker,
) {
    let pending = checker.is_pending();
    let stored = shared.output.emit(source, lines, pending);
    if !pending {
        return;
    }
    let verdict = {
        let _user = shared.entering(idx, UserCode::Readiness);
        checker.check(&stored)
    };
    match verdict {
        Verdict::NotYet => {}
        Verdict::Ready => shared.became_ready(idx),
        Verdict::Panicked(message) => shared.update(idx, |st| st.check_panic = Some(message)),
    }
}

/// SIGKILL every process whose environment carries this run's marker; repeat until none is
/// left (a process may fork between two scans). Returns how many were killed.
pub(crate) fn sweep(run_id: &str) -> usize {
    let needle = format!("{MARKER_VAR}={run_id}");
    let me = std::process::id();
    let mut killed = 0;
    for _ in 0..50 {
        let found = marked_pids(&needle, me);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill(Pid::from_raw(pid as i32), NixSignal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

fn marked_pids(needle: &str, me: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Zombies and kernel threads have an empty environ: nothing to kill there.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}
