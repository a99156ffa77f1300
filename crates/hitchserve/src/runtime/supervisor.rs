//! A service's supervisor: the thread that reads its pipes, checks readiness on its lines,
//! notices its exit, stops what is left of its group, drains and reaps it.
//!
//! One thread per service does it all with `poll` over stdout, stderr and a pidfd: fewer
//! threads, and the exit is seen while the leader is still an unreaped zombie. Each line is
//! stored (so written to `all.log`), printed, and shown to the readiness check; a quiet
//! line's start is published to tails as a partial line. What the thread sees becomes an
//! `Event`; it never changes a state itself.
//!
//! Invariant: whether an exit was expected is decided when the exit is seen (the
//! `MainExited` event), before the group is drained: a shutdown that starts during the
//! drain does not turn a crash into a clean stop.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::exec::ProcessGroup;
use crate::guardian;
use crate::logs::{End, LineSplitter, LogStore, Source};
use crate::readiness::{Checker, Verdict};
use crate::runtime::early::Pass;
use crate::runtime::probe::probe_until_ready;
use crate::runtime::state::{Event, Phase, Reap};
use crate::runtime::threads::Started;
use crate::runtime::usercode::UserCode;
use crate::runtime::Runtime;
use crate::signal::ExitStatus;

/// Bytes asked for in one read of a service's pipe; more (a shared big buffer, see
/// `ReadBuffers`) once it fills a read.
const READ_BUF_START: usize = 16 * 1024;
const READ_BUF_MAX: usize = 256 * 1024;
/// Big read buffers a run makes at most: two cores read no faster with more, and 50 chatty
/// services each with its own would hold 12.5 MiB for nothing.
const BIG_BUFFERS: usize = 4;
/// Capacity asked for each service's stdout and stderr pipe.
const PIPE_SIZE: i32 = 1024 * 1024;

/// How long a dead service's pipes may take to deliver what it wrote before it died.
pub(crate) const READER_DRAIN: Duration = Duration::from_secs(2);

/// How long a stream must stay quiet before the start of a line it has not ended is shown
/// to tails as a partial line: long enough that a line written in a few quick writes is
/// seen whole, short enough to feel at once to a test waiting for a prompt.
const PARTIAL_QUIET: Duration = Duration::from_millis(50);

/// The body of a supervisor thread: read both pipes, notice the exit, reap, report. True
/// if the service is to be started again on this thread (a restart by hand).
pub(crate) fn supervise(runtime: &Arc<Runtime>, idx: usize, started: Started) -> bool {
    let Started {
        mut child,
        sources,
        checker,
    } = started;
    let plan = &runtime.services()[idx];
    let pid = child.id();
    let group = ProcessGroup::led_by(pid);
    // This process's start number: what its reader and prober report is about it alone.
    let start = runtime.read(idx, |st| st.incarnation);
    let mut out = StreamReader::new(runtime, (idx, start), child.stdout.take(), &sources.out);
    let mut err = StreamReader::new(runtime, (idx, start), child.stderr.take(), &sources.err);
    if checker.has_probes() {
        let (prober, prober_checker) = (Arc::clone(runtime), Arc::clone(&checker));
        let _ = runtime
            .threads
            .spawn(format!("hitchserve:{}:probe", plan.name), move || {
                probe_until_ready(&prober, idx, &prober_checker, start)
            });
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
    runtime.record_ended(pid);
    // Expected or not is decided now: a shutdown that starts during the drain below must
    // not turn a crash into a clean stop.
    runtime.dispatch(idx, Event::MainExited);
    let (expected, stop_deadline) = runtime.read(idx, |st| match st.phase {
        Phase::Exiting {
            expected, deadline, ..
        } => (expected, deadline),
        _ => (false, None),
    });
    if expected {
        // Stopping: the rest of its group (a server under a wrapper shell, say) gets the
        // remaining grace to finish. Nothing signals "group empty": when both pipes have
        // hung up, whoever held them is gone (what they hold is read below); otherwise look
        // at /proc now and then.
        while (out.is_open() || err.is_open())
            && !hung_up(&out, &err)
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
    group.kill();
    if expected && !runtime.is_stopping() {
        // A stop by hand: also what left its group (before the drain: such a process may
        // hold the pipes).
        runtime.sweep_service(idx);
    }
    guardian::forget(pid);
    runtime.dispatch(idx, Event::GroupKilled);
    // Drain what it wrote before it died. A process that escaped the group may hold a
    // pipe open; don't wait for it forever.
    let deadline = Instant::now() + READER_DRAIN;
    while (out.is_open() || err.is_open()) && Instant::now() < deadline {
        poll_once(&mut out, &mut err, &checker, None, pid, Some(deadline));
    }
    out.finish(&checker);
    err.finish(&checker);
    let status = child.wait().map(ExitStatus::from_std).unwrap_or(status);
    // A stop by hand (`stop`, `restart`) ends here: said before the state changes, so it
    // comes before the line of a restart's new start. (The bundle's own stop says it once,
    // for every service.)
    if expected && !runtime.is_stopping() {
        // The stop's deadline is its shutdown timeout after it was asked.
        let took = stop_deadline
            .and_then(|d| d.checked_sub(runtime.timeouts.shutdown))
            .map(|asked| asked.elapsed());
        runtime.sink.log(&match took {
            Some(took) => format!("Stopped {} in {:.2} s", plan.name, took.as_secs_f64()),
            None => format!("Stopped {}", plan.name),
        });
    }
    // Said before the state changes, so whoever sees the crash (or the restart) also finds
    // this line.
    match runtime.read(idx, |st| st.on_reap(&plan.traits, status)) {
        Reap::Quiet => {}
        Reap::Crash { restarts: 0 } if plan.traits.one_shot => runtime
            .sink
            .warn(&format!("one-shot `{}` failed ({status})", plan.name)),
        Reap::Crash { restarts: 0 } => runtime
            .sink
            .warn(&format!("`{}` exited unexpectedly ({status})", plan.name)),
        Reap::Crash { restarts } => runtime.sink.warn(&format!(
            "`{}` exited unexpectedly ({status}) and was restarted {restarts} time{}: giving up",
            plan.name,
            if restarts == 1 { "" } else { "s" }
        )),
        Reap::Restart { after, n } => runtime.sink.warn(&format!(
            "`{}` exited unexpectedly ({status}): restart {n} in {:.2} s",
            plan.name,
            after.as_secs_f64()
        )),
    }
    // Its logs end (unless it starts again) with the transition, under the lock: after it
    // counts as exited (a wait that ends this way finds its exit status), before what
    // follows from its exit (what waited for it to complete) starts.
    let at = Instant::now();
    runtime.dispatch(idx, Event::Reaped { status, at })
}

/// How often a stopping service's group is looked at once its main process has exited.
pub(crate) const GROUP_CHECK: Duration = Duration::from_millis(10);

/// Whether any live (not zombie) process is in process group `pgid`.
pub(crate) fn group_alive(pgid: u32) -> bool {
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

/// Whether every writer of each pipe still open is gone (its unread bytes may remain): the
/// kernel's own "group gone" for a group whose processes all held them, without /proc.
fn hung_up(out: &StreamReader<'_>, err: &StreamReader<'_>) -> bool {
    let mut fds: Vec<PollFd> = [out, err]
        .into_iter()
        .filter_map(|r| r.fd.as_ref())
        .map(|fd| PollFd::new(fd.as_fd(), PollFlags::empty()))
        .collect();
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n as usize == fds.len())
        && fds
            .iter()
            .all(|fd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)))
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
    let is_ready = |w: usize| ready.iter().any(|&(x, r)| x == w && r);
    let exited = is_ready(2);
    match (is_ready(0), is_ready(1)) {
        (true, true) => read_both(out, err, checker),
        (true, false) => {
            out.read_some(checker, false);
        }
        (false, true) => {
            err.read_some(checker, false);
        }
        (false, false) => {}
    }
    let exited = if watch_exit && pidfd.is_none() {
        has_exited(pid)
    } else {
        exited
    };
    if partial_due.is_some() {
        let now = Instant::now();
        out.publish_partial_if_due(now);
        err.publish_partial_if_due(now);
    }
    exited
}

/// Bytes `read_both` reads at most before it lets tails see them and polls again.
const BOTH_AT_MOST: usize = 4 * 1024 * 1024;

/// Both pipes have something: read each until it is empty (for now), and let tails see the
/// lines only then. A wait for a line of one stream then finds the lines the service wrote
/// to the other before it (a test that waits for `done` on stdout and then looks for a
/// traceback on stderr): they were in their pipe when this one's line was read.
fn read_both(out: &mut StreamReader<'_>, err: &mut StreamReader<'_>, checker: &Checker) {
    // Held back from tails even if another service's reader or the bundle publishes
    // meanwhile; shown (and tails woken) when dropped.
    let _hold = Hold::new(&out.runtime.sink.store);
    let mut total = 0;
    loop {
        let n = out.read_some(checker, true) + err.read_some(checker, true);
        total += n;
        if n == 0 || total >= BOTH_AT_MOST {
            return;
        }
    }
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

/// Whether the process has exited, without reaping it. (`/proc` is asked only when it is
/// not our child: for a live child that look cost a `statx` per service at every stop.)
pub(crate) fn has_exited(pid: u32) -> bool {
    match waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
    ) {
        Ok(status) => status != nix::sys::wait::WaitStatus::StillAlive,
        Err(_) => !Path::new(&format!("/proc/{pid}")).exists(),
    }
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

/// The big read buffers of a run, lent to a chatty stream for one read at a time.
pub(crate) struct ReadBuffers {
    /// Buffers not lent out, and how many were made.
    spare: Mutex<(Vec<Vec<u8>>, usize)>,
}

impl ReadBuffers {
    pub(crate) fn new() -> ReadBuffers {
        ReadBuffers {
            spare: Mutex::new((Vec::new(), 0)),
        }
    }

    /// A big buffer, unless `BIG_BUFFERS` are lent out already.
    fn take(&self) -> Option<Vec<u8>> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(buf) = spare.0.pop() {
            return Some(buf);
        }
        if spare.1 == BIG_BUFFERS {
            return None;
        }
        spare.1 += 1;
        drop(spare);
        Some(vec![0u8; READ_BUF_MAX])
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.0.push(buf);
    }
}

/// One pipe of a service: read, split into lines, store, check readiness, copy to its file.
struct StreamReader<'a> {
    runtime: &'a Arc<Runtime>,
    /// The service, and the start number of the process whose pipe this is.
    who: (usize, u32),
    fd: Option<OwnedFd>,
    source: &'a Arc<Source>,
    splitter: LineSplitter,
    /// Its own buffer, for reads while it is not chatty.
    buf: Vec<u8>,
    /// Its last read filled the buffer: the next one takes a big buffer if one is spare.
    chatty: bool,
    /// When the start of a line held back now is to be shown as a partial line, if the
    /// stream stays quiet until then.
    partial_due: Option<Instant>,
}

impl<'a> StreamReader<'a> {
    fn new(
        runtime: &'a Arc<Runtime>,
        who: (usize, u32),
        fd: Option<OwnedFd>,
        source: &'a Arc<Source>,
    ) -> StreamReader<'a> {
        if let Some(fd) = fd.as_ref() {
            // A bigger pipe lets a chatty service run ahead of us instead of blocking, and
            // lets us take its output in fewer, larger reads. Best effort: the system may
            // cap it (fs.pipe-max-size).
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            // Non-blocking (our end only: the service's end is another open file), so a
            // read to see whether more is there (`read_both`) never waits.
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
        }
        StreamReader {
            runtime,
            who,
            fd,
            source,
            splitter: LineSplitter::new(runtime.sink.store.piece_size()),
            buf: Vec::new(),
            chatty: false,
            partial_due: None,
        }
    }

    fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// One read: its lines are stored (and so written to `all.log`) and checked; tails are
    /// woken for them unless `hold_wake` (the caller wakes them). The bytes read (0: none
    /// there now, or the end).
    fn read_some(&mut self, checker: &Checker, hold_wake: bool) -> usize {
        let Some(fd) = self.fd.as_ref() else { return 0 };
        let pool = &self.runtime.read_buffers;
        let mut big = if self.chatty { pool.take() } else { None };
        let buf = match big.as_mut() {
            Some(big) => big,
            None => {
                if self.buf.is_empty() {
                    self.buf = vec![0u8; READ_BUF_START];
                }
                &mut self.buf
            }
        };
        let read = nix::unistd::read(fd, buf);
        let n = match read {
            Ok(0) => None,
            Ok(n) => {
                // A chatty service: bigger bites next time, if a big buffer is spare.
                self.chatty = n == buf.len();
                Some(n)
            }
            // Nothing this time.
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => Some(0),
            Err(_) => None,
        };
        let got = n.unwrap_or(0);
        match n {
            None => self.finish(checker),
            Some(0) => {}
            Some(n) => {
                let (runtime, source, who) = (self.runtime, self.source, self.who);
                let _early = runtime.wake_early(who.0, n, checker);
                // Tails are woken once for all the read's lines, also if delivering
                // panicked on the way.
                let _wake = (!hold_wake).then(|| WakeTails(&runtime.sink.store));
                self.splitter.split(&buf[..n], |lines| {
                    deliver(runtime, source, who, lines, checker, false);
                });
                self.partial_due = self
                    .splitter
                    .pending()
                    .map(|_| Instant::now() + PARTIAL_QUIET);
            }
        }
        if let Some(big) = big {
            pool.give_back(big);
        }
        got
    }

    /// Show the held-back start of a line to tails once the stream has been quiet long
    /// enough. Readiness does not see it: it only ever sees whole lines.
    fn publish_partial_if_due(&mut self, now: Instant) {
        if self.partial_due.is_some_and(|due| due <= now) {
            self.partial_due = None;
            if let Some(bytes) = self.splitter.pending() {
                self.runtime.sink.store.publish_partial(self.source, bytes);
            }
        }
    }

    /// End of the stream: an unterminated last line is still a line.
    fn finish(&mut self, checker: &Checker) {
        self.fd = None;
        self.partial_due = None;
        if let Some(last) = self.splitter.finish() {
            deliver(
                self.runtime,
                self.source,
                self.who,
                &[(&last, End::Unterminated)],
                checker,
                true,
            );
        }
    }
}

impl Runtime {
    /// Service `idx`'s reader read `bytes`: if a startup waits for its ready line alone, wake
    /// it now, while the read is dealt with (see `early`); that is over when the returned
    /// guard is dropped.
    fn wake_early(&self, idx: usize, bytes: usize, checker: &Checker) -> Option<Pass<'_>> {
        let services = self.services();
        let last_pending = || {
            !services[idx].traits.one_shot
                && self.tally.started_up.load(Ordering::Relaxed) + 1 == services.len()
                && checker.is_pending()
        };
        if !self.early.worth_it(bytes, last_pending) {
            return None;
        }
        let pass = self.early.pass();
        self.milestone.notify_all();
        Some(pass)
    }
}

/// A hold of the store's publishing (see `LogStore::hold`), let go when dropped, also if
/// delivering panicked on the way.
struct Hold<'a> {
    store: &'a LogStore,
    at: usize,
}

impl<'a> Hold<'a> {
    fn new(store: &'a LogStore) -> Hold<'a> {
        Hold {
            at: store.hold(),
            store,
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.store.release(self.at);
    }
}

/// Wakes the tails waiting for the lines stored without waking them, when dropped.
struct WakeTails<'a>(&'a LogStore);

impl Drop for WakeTails<'_> {
    fn drop(&mut self) {
        self.0.wake_tails();
    }
}

/// Store and print a service's lines, and check them for readiness.
fn deliver(
    runtime: &Arc<Runtime>,
    source: &Arc<Source>,
    (idx, start): (usize, u32),
    lines: &[(&[u8], End)],
    checker: &Checker,
    wake: bool,
) {
    let pending = checker.is_pending();
    let stored = runtime.sink.emit(source, lines, pending, wake);
    if !pending {
        return;
    }
    let verdict = {
        let _user = runtime.user_code.entering(idx, UserCode::Readiness);
        checker.check(&stored)
    };
    match verdict {
        Verdict::NotYet => {}
        Verdict::Ready => {
            let at = Instant::now();
            runtime.dispatch(idx, Event::ReadinessPassed { at }.of(start));
        }
        Verdict::Panicked(message) => {
            runtime.dispatch(idx, Event::CheckPanicked(message).of(start));
        }
    }
}
