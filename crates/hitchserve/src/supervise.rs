//! Spawning, watching and stopping service processes, and the state they are in.
//!
//! Owns the per-service supervisor thread (spawn, wait, reap), the pipe readers that feed the
//! log store, process groups, stop/kill, and the no-orphans layers: own process group,
//! `PR_SET_PDEATHSIG`, the guardian, and the `HITCHSERVE_RUN` marker sweep. It does not decide
//! *when* to start a service (`bundle` walks the DAG) nor how lines are stored or printed.
//!
//! Invariants: a service's pgid is only signalled while its leader is unreaped (phase
//! `Running`/`Ready`), because an unreaped leader keeps the pid from being reused; the thread
//! that spawns a child outlives it, because PDEATHSIG fires when the spawning *thread* exits.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal as NixSignal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::console::Console;
use crate::guardian::Guardian;
use crate::logs::{Filter, LineSplitter, LogLine, LogStore, Source, Stream};
use crate::readiness::{LineChecker, Ready, Verdict};
use crate::rundir::RunDir;
use crate::signal::{ExitStatus, Signal};

/// Environment variable that marks every process of a run, so escapees can be found.
pub(crate) const MARKER_VAR: &str = "HITCHSERVE_RUN";

/// How long a dead service's pipes may take to deliver what it wrote before it died.
const READER_DRAIN: Duration = Duration::from_secs(2);

/// The bundle's own voice and the sinks every line goes to.
pub(crate) struct Output {
    pub store: Arc<LogStore>,
    pub console: Console,
    hitch_out: Arc<Source>,
    hitch_err: Arc<Source>,
}

impl Output {
    pub(crate) fn new() -> Output {
        Output {
            store: Arc::new(LogStore::new()),
            console: Console::new(),
            hitch_out: Arc::new(Source::new(None, "Hitch", Stream::Stdout)),
            hitch_err: Arc::new(Source::new(None, "Hitch", Stream::Stderr)),
        }
    }

    /// Store and print lines from one source.
    pub(crate) fn emit(
        &self,
        source: &Arc<Source>,
        lines: Vec<(Box<[u8]>, bool)>,
    ) -> Vec<Arc<LogLine>> {
        if lines.is_empty() {
            return Vec::new();
        }
        // Decide before storing: a line a waiter can already see while muted is never
        // printed later, after interactive mode ends.
        let muted = self.console.is_muted();
        if muted {
            self.console.count_missed(lines.len());
        }
        let stored = self.store.append(source, lines);
        if !muted {
            self.console.print(&stored);
        }
        stored
    }

    fn message(&self, source: &Arc<Source>, msg: &str) {
        let lines = msg
            .split('\n')
            .map(|l| (Box::from(l.as_bytes()), true))
            .collect();
        self.emit(source, lines);
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
    pub needs: Vec<usize>,
    pub ready: Ready,
    pub stop_signal: Signal,
    pub out: Arc<Source>,
    pub err: Arc<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not started: waiting for its needs.
    Defined,
    /// Its supervisor thread is spawning it.
    Starting,
    /// Running, readiness not yet seen.
    Running,
    Ready,
    /// The main process has exited and is being reaped; never signal it now.
    Exiting,
    Exited(ExitStatus),
    /// The OS refused to start it; see `spawn_error`.
    SpawnFailed,
}

impl Phase {
    pub(crate) fn is_live(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Ready)
    }
}

pub(crate) struct State {
    pub phase: Phase,
    pub pid: Option<u32>,
    pub was_ready: bool,
    /// The bundle asked it to stop, so its exit is expected.
    pub stopping: bool,
    /// A crash after readiness already returned to the user once.
    pub crash_reported: bool,
    pub spawn_error: Option<std::io::Error>,
    pub check_panic: Option<String>,
    pub started_at: Option<Instant>,
    pub ready_at: Option<Instant>,
}

impl State {
    pub(crate) fn new() -> State {
        State {
            phase: Phase::Defined,
            pid: None,
            was_ready: false,
            stopping: false,
            crash_reported: false,
            spawn_error: None,
            check_panic: None,
            started_at: None,
            ready_at: None,
        }
    }

    /// It exited on its own after it was ready.
    pub(crate) fn crashed(&self) -> Option<ExitStatus> {
        match self.phase {
            Phase::Exited(status) if self.was_ready && !self.stopping => Some(status),
            _ => None,
        }
    }
}

/// One running bundle: shared by the bundle handle, service handles and all threads.
pub(crate) struct Shared {
    pub output: Arc<Output>,
    pub plans: Vec<Plan>,
    pub states: Mutex<Vec<State>>,
    pub changed: Condvar,
    pub run: RunDir,
    guardian: Mutex<Option<Guardian>>,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn new(
        output: Arc<Output>,
        plans: Vec<Plan>,
        run: RunDir,
        guardian: Guardian,
    ) -> Shared {
        let states = plans.iter().map(|_| State::new()).collect();
        Shared {
            output,
            plans,
            states: Mutex::new(states),
            changed: Condvar::new(),
            run,
            guardian: Mutex::new(Some(guardian)),
            supervisors: Mutex::new(Vec::new()),
        }
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
        deadline: Instant,
        mut done: impl FnMut(&[State]) -> bool,
    ) -> (MutexGuard<'a, Vec<State>>, bool) {
        loop {
            if done(&guard) {
                return (guard, true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (guard, false);
            }
            guard = self
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn with_guardian(&self, f: impl FnOnce(&Guardian)) {
        if let Some(g) = self
            .guardian
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(g);
        }
    }

    /// The last `n` lines of a service, in the console format.
    pub(crate) fn last_lines(&self, idx: usize, n: usize) -> Vec<String> {
        let filter = Filter {
            service: Some(idx),
            stdout: true,
            stderr: true,
        };
        let lines = self.output.store.last(&filter, n);
        let width = lines.iter().map(|l| l.label().len()).max().unwrap_or(0);
        lines.iter().map(|l| format!("{l:width$}")).collect()
    }

    /// Start service `idx` on a new supervisor thread (which then owns the child).
    pub(crate) fn start(self: &Arc<Self>, idx: usize) -> std::io::Result<()> {
        let shared = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name(format!("hitchserve:{}", self.plans[idx].name))
            .spawn(move || supervise(&shared, idx))?;
        self.supervisors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }

    /// Send `signal` to the service's process group, if its process is alive.
    pub(crate) fn signal(&self, idx: usize, signal: Signal) -> bool {
        let states = self.lock();
        signal_locked(&states[idx], signal.to_nix())
    }

    /// Stop every service: stop signal to each group in parallel, SIGKILL after `timeout`,
    /// then kill whatever left its group. Returns once all are reaped.
    pub(crate) fn stop_all(&self, timeout: Duration) {
        let t0 = Instant::now();
        let mut stopping = Vec::new();
        {
            let mut states = self.lock();
            for (idx, st) in states.iter_mut().enumerate() {
                st.stopping = true;
                if signal_locked(st, self.plans[idx].stop_signal.to_nix()) {
                    stopping.push(self.plans[idx].name.as_str());
                }
            }
        }
        if !stopping.is_empty() {
            self.output
                .log(&format!("Stopping {}", stopping.join(", ")));
        }
        let leaders_gone = |s: &[State]| s.iter().all(|st| !st.phase.is_live());
        let (states, done) = self.wait_until(self.lock(), t0 + timeout, leaders_gone);
        if !done {
            let mut killed = Vec::new();
            for (idx, st) in states.iter().enumerate() {
                if signal_locked(st, NixSignal::SIGKILL) {
                    killed.push(self.plans[idx].name.as_str());
                }
            }
            drop(states);
            self.output.warn(&format!(
                "{} did not stop within {:.1} s: killed with SIGKILL",
                killed.join(", "),
                timeout.as_secs_f64()
            ));
            let (_states, _) = self.wait_until(
                self.lock(),
                Instant::now() + Duration::from_secs(10),
                leaders_gone,
            );
        } else {
            drop(states);
        }
        // Processes that left their group (setsid, double fork) still carry the marker.
        sweep(&self.run.id);
        let all_reaped = |s: &[State]| {
            s.iter().all(|st| {
                !matches!(
                    st.phase,
                    Phase::Exiting | Phase::Starting | Phase::Running | Phase::Ready
                )
            })
        };
        let _ = self.wait_until(self.lock(), Instant::now() + READER_DRAIN * 2, all_reaped);
        let handles =
            std::mem::take(&mut *self.supervisors.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
        if let Some(g) = self
            .guardian
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            g.quit();
        }
        if !stopping.is_empty() {
            self.output
                .log(&format!("Stopped in {:.2} s", t0.elapsed().as_secs_f64()));
        }
        self.output.store.close();
    }
}

fn signal_locked(st: &State, signal: NixSignal) -> bool {
    match (st.phase, st.pid) {
        (Phase::Running | Phase::Ready, Some(pid)) => {
            killpg(Pid::from_raw(pid as i32), signal).is_ok()
        }
        _ => false,
    }
}

/// The body of a supervisor thread: spawn, feed readers, wait, reap, report.
fn supervise(shared: &Arc<Shared>, idx: usize) {
    let plan = &shared.plans[idx];
    let mut cmd = Command::new(&plan.program);
    cmd.arg0(&plan.argv[0])
        .args(&plan.argv[1..])
        .current_dir(&plan.dir)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes two raw syscalls and allocates nothing, so it is
    // async-signal-safe as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    shared.update(idx, |st| {
        st.phase = Phase::Starting;
        st.started_at = Some(Instant::now());
    });
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            shared.update(idx, |st| {
                st.phase = Phase::SpawnFailed;
                st.spawn_error = Some(e);
            });
            return;
        }
    };
    let pid = child.id();
    shared.with_guardian(|g| g.watch(pid));
    let immediate = plan.ready.is_immediate();
    let torn_down = {
        let mut states = shared.lock();
        let st = &mut states[idx];
        st.pid = Some(pid);
        st.phase = if immediate {
            Phase::Ready
        } else {
            Phase::Running
        };
        if immediate {
            st.was_ready = true;
            st.ready_at = Some(Instant::now());
        }
        st.stopping
    };
    shared.changed.notify_all();
    if torn_down {
        // The bundle began stopping while we were spawning: don't leave this one behind.
        let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
    }

    let checker = Arc::new(plan.ready.checker());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pipes: [(Option<Pipe>, &Arc<Source>, &str); 2] = [
        (
            child.stdout.take().map(|p| Box::new(p) as _),
            &plan.out,
            "out",
        ),
        (
            child.stderr.take().map(|p| Box::new(p) as _),
            &plan.err,
            "err",
        ),
    ];
    let mut readers = 0;
    for (pipe, source, ext) in pipes {
        let Some(pipe) = pipe else { continue };
        let file_path = shared.run.logs().join(format!("{}.{ext}.log", plan.name));
        let file = File::create(&file_path).ok();
        let reader = Reader {
            shared: Arc::clone(shared),
            idx,
            source: Arc::clone(source),
            checker: Arc::clone(&checker),
        };
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("hitchserve:{}:{ext}", plan.name))
            .spawn(move || {
                reader.run(pipe, file);
                let _ = done.send(());
            });
        if spawned.is_ok() {
            readers += 1;
        }
    }
    drop(done_tx);

    wait_exit_unreaped(pid);
    shared.update(idx, |st| st.phase = Phase::Exiting);
    // Whatever it left in its group dies with it; the leader is still unreaped, so the
    // pgid can't have been reused.
    let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
    shared.with_guardian(|g| g.forget(pid));
    let status = child
        .wait()
        .map(ExitStatus::from_std)
        .unwrap_or(ExitStatus::Code(-1));

    let deadline = Instant::now() + READER_DRAIN;
    for _ in 0..readers {
        if done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            break;
        }
    }
    let unexpected = {
        let st = &shared.lock()[idx];
        st.was_ready && !st.stopping
    };
    if unexpected {
        // Said before the state changes, so whoever sees the crash also finds this line.
        shared
            .output
            .warn(&format!("`{}` exited unexpectedly ({status})", plan.name));
    }
    shared.update(idx, |st| st.phase = Phase::Exited(status));
    shared.output.store.mark_ended(idx);
}

/// In the child between fork and exec: die when the spawning thread dies.
fn die_with_parent(parent: Pid) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    // The parent may have died before prctl took effect.
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Block until `pid` has exited, leaving it a zombie so its pid (and pgid) stay reserved.
fn wait_exit_unreaped(pid: u32) {
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

type Pipe = Box<dyn Read + Send>;

/// Reads one pipe of one service until end of file.
struct Reader {
    shared: Arc<Shared>,
    idx: usize,
    source: Arc<Source>,
    checker: Arc<LineChecker>,
}

impl Reader {
    fn run(self, mut pipe: Pipe, mut file: Option<File>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut splitter = LineSplitter::default();
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if let Some(f) = file.as_mut() {
                // The exact bytes, as they arrive, so the file survives a failed test.
                let _ = f.write_all(&buf[..n]);
            }
            let lines = splitter.push(&buf[..n]);
            self.deliver(lines);
        }
        if let Some(last) = splitter.finish() {
            self.deliver(vec![last]);
        }
    }

    fn deliver(&self, lines: Vec<(Box<[u8]>, bool)>) {
        let stored = self.shared.output.emit(&self.source, lines);
        match self.checker.check(&stored) {
            Verdict::NotYet => {}
            Verdict::Ready => self.shared.update(self.idx, |st| {
                if st.phase == Phase::Running {
                    st.phase = Phase::Ready;
                    st.was_ready = true;
                    st.ready_at = Some(Instant::now());
                }
            }),
            Verdict::Panicked(message) => self
                .shared
                .update(self.idx, |st| st.check_panic = Some(message)),
        }
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
