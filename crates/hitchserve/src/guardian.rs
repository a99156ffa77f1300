//! The guardian: one tiny process per test process that kills every service of every bundle
//! if the test process dies without shutting them down (SIGKILL, abort, a crashed binary),
//! and the thread in our process that keeps it alive and fills the bundles' cgroups.
//!
//! It is `/bin/sh` running a short script, because the library lives inside other people's
//! test binaries and can't rely on their `main`, and forking without exec in a threaded
//! process is unsafe. It reads commands on stdin: `+r RUN` / `-r RUN` for a run whose marker it should
//! sweep, `+c DIR` / `-c DIR` for a run's cgroup (see `cgroup`); the services' process
//! groups it finds in a table we keep in memory (`table`: changing it wakes nobody), or as
//! `+g PGID` / `-g PGID` lines once the table is full. End of file on stdin means our
//! process is gone: it then kills every watched cgroup, SIGKILLs every watched group, kills
//! every process whose environment carries a watched run's marker (which finds processes
//! that left their group: setsid, double fork; read through each thread, as a process whose
//! first thread has ended shows none of its own; until two looks 50 ms apart find none, as a
//! process in the middle of an exec shows no environment for a moment) and removes the
//! cgroups. A new guardian finds what it must watch in its stdin before it runs.
//!
//! One thread per process (not per bundle), the watcher, sleeps in `poll` on the guardian's
//! pidfd: if the guardian dies (killed by someone, the OOM killer), it starts a new one at
//! once and replays what it must watch, or says loudly that it can't. The same thread moves
//! each new service into its run's cgroup, because a move may wait for the kernel for
//! milliseconds and must not delay a spawn.
//!
//! Invariant: the write end of its stdin is held only by our process (it is close-on-exec,
//! and a child made by `fork` closes its copy at the fork, in a fork handler), so end of
//! file means exactly that. One guardian serves all bundles of the process, so
//! its start-up cost is paid once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::cgroup::Cgroup;
use crate::exec::MARKER_VAR;
use crate::perprocess::PerProcess;

mod table;
use table::GroupTable;

const SCRIPT: &str = r#"
trap '' HUP INT PIPE
table=$1
# Held open from now on: read at the end even if its name is gone by then.
if [ -n "$table" ] && [ -r "$table" ]; then exec 3<"$table"; else table=; fi
groups=' '
runs=' '
cgroups=' '
while IFS= read -r cmd; do
  case $cmd in
    '+g '*) groups="$groups${cmd#+g } " ;;
    '-g '*) g=${cmd#-g }; kept=' '
            for x in $groups; do [ "$x" = "$g" ] || kept="$kept$x "; done
            groups=$kept ;;
    '+r '*) runs="$runs${cmd#+r } " ;;
    '-r '*) r=${cmd#-r }; kept=' '
            for x in $runs; do [ "$x" = "$r" ] || kept="$kept$x "; done
            runs=$kept ;;
    '+c '*) cgroups="$cgroups${cmd#+c } " ;;
    '-c '*) c=${cmd#-c }; kept=' '
            for x in $cgroups; do [ "$x" = "$c" ] || kept="$kept$x "; done
            cgroups=$kept ;;
  esac
done
for c in $cgroups; do
  echo 1 > "$c/cgroup.kill"
  i=0
  while [ $i -lt 50 ]; do
    left=
    while read -r p; do left=1; kill -s KILL "$p"; done < "$c/cgroup.procs"
    [ -n "$left" ] || break
    i=$((i+1))
  done
done 2>/dev/null
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
if [ -n "$table" ]; then
  while read -r v g; do
    [ "$v" = . ] && break
    [ "$v" = + ] && kill -s KILL -- "-$g" 2>/dev/null
  done <&3
fi
set --
for r in $runs; do set -- "$@" -e "HITCHSERVE_RUN=$r"; done
if [ $# -gt 0 ]; then
  i=0; none=0
  while [ $i -lt 50 ]; do
    found=$(grep -lsxzF "$@" /proc/[0-9]*/task/[0-9]*/environ)
    if [ -z "$found" ]; then
      none=$((none+1)); [ $none -lt 2 ] || break; sleep 0.05; continue
    fi
    none=0
    for f in $found; do p=${f#/proc/}; kill -s KILL "${p%%/*}" 2>/dev/null; done
    i=$((i+1))
  done
fi
for c in $cgroups; do
  i=0
  while [ -d "$c" ] && ! rmdir "$c" 2>/dev/null && [ $i -lt 100 ]; do
    find "$c" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
    sleep 0.05; i=$((i+1))
  done
done
[ -z "$table" ] || rm -f "$table"
"#;

/// How long a run's cgroup may take to empty once everything in it was killed.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// The guardian process and our end of its stdin.
struct Running {
    child: Child,
    stdin: std::fs::File,
    /// Readable once it has exited. `None` before Linux 5.3 (then it is only noticed at
    /// the next command).
    pidfd: Option<Arc<OwnedFd>>,
}

struct Guardian {
    running: Option<Running>,
    /// The groups it watches, while there is room (made with the first guardian).
    table: Option<GroupTable>,
    /// Groups watched by lines on its stdin: none unless the table is full or missing.
    groups: BTreeSet<u32>,
    /// Lines that can wait for the next command (a run's end: until then the guardian
    /// would only look for what is gone already), so ending a run wakes it not.
    later: String,
    runs: BTreeSet<String>,
    cgroups: BTreeMap<String, Arc<Cgroup>>,
    /// Our end of the pipe that wakes the watcher thread, once it is started.
    wake: Option<UnixStream>,
    /// Why the last restart failed, while no guardian runs.
    failure: Option<String>,
}

/// Services waiting to be moved into their run's cgroup, and the one being moved.
struct Placements {
    queue: VecDeque<(u32, Arc<Cgroup>)>,
    moving: Option<u32>,
}

/// A process's guardian state. A child made by `fork` makes its own (see `perprocess`): the
/// parent's guardian, services and watcher thread are the parent's, and a lock a thread of
/// the parent held at the fork would never be let go in the child.
struct State {
    guardian: Mutex<Guardian>,
    placements: Mutex<Placements>,
    placed: Condvar,
}

static STATE: PerProcess<State> = PerProcess::new(|| State {
    guardian: Mutex::new(Guardian {
        running: None,
        table: None,
        groups: BTreeSet::new(),
        later: String::new(),
        runs: BTreeSet::new(),
        cgroups: BTreeMap::new(),
        wake: None,
        failure: None,
    }),
    placements: Mutex::new(Placements {
        queue: VecDeque::new(),
        moving: None,
    }),
    placed: Condvar::new(),
});

/// Our end of the running guardian's stdin, for the fork handler below (-1: none). Set
/// once the guardian runs, and back to -1 before that end is closed.
static STDIN_FD: AtomicI32 = AtomicI32::new(-1);

/// In a child made by `fork` (not by `posix_spawn`, which runs no fork handlers): close
/// its copy of our end of the guardian's stdin at once, so our guardian still sees its end
/// of file when we die while the child lives on. Only an atomic and `close`, both safe
/// in a child of a threaded process.
extern "C" fn close_guardian_stdin_in_child() {
    let fd = STDIN_FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the descriptor was our guardian pipe's at the fork, in this process's
        // copy of the table, and nothing here uses it.
        unsafe { libc::close(fd) };
    }
}

/// At a normal exit: tell the guardian what waited for the next command (the runs that
/// ended), so at our end it doesn't look for their processes in every `/proc/*/environ`
/// in vain. Skipped if another thread holds the lock (it may never let go now).
extern "C" fn tell_at_exit() {
    let mut g = match STATE.get().guardian.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let later = std::mem::take(&mut g.later);
    let Some(running) = g.running.as_mut().filter(|_| !later.is_empty()) else {
        return;
    };
    // Best effort, and never a wait nor a signal at exit: the pipe made non-blocking (our
    // end only), SIGPIPE (a guardian just died) blocked and taken back.
    let fd = running.stdin.as_raw_fd();
    // SAFETY: fcntl and sigmask calls on our own descriptor and on sets we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return;
        }
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old);
        let written = running.stdin.write(later.as_bytes());
        if written.is_err_and(|e| e.raw_os_error() == Some(libc::EPIPE)) {
            let none = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&pipe, std::ptr::null_mut(), &none);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

fn lock() -> MutexGuard<'static, Guardian> {
    STATE
        .get()
        .guardian
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn lock_placements() -> MutexGuard<'static, Placements> {
    STATE
        .get()
        .placements
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Register, once, the fork handler that lets a child go of our end of the guardian's
/// stdin and the exit handler that tells the guardian we end.
fn install_handlers() {
    static HANDLERS: Once = Once::new();
    HANDLERS.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic and closes a descriptor
        // (see `close_guardian_stdin_in_child`), and one that runs at a normal exit, on the
        // exiting thread, and never blocks (`tell_at_exit`).
        unsafe {
            libc::pthread_atfork(None, None, Some(close_guardian_stdin_in_child));
            libc::atexit(tell_at_exit);
        }
    });
}

impl Guardian {
    /// Start a guardian, with `first` in its stdin pipe before it runs (if the pipe holds
    /// it, as it does in practice; returned if not, to be written once it runs): it can't
    /// see the end of its input (our death) before it has read what it must watch. With
    /// `ours`, it is this process's guardian: our end of its stdin is known to the fork
    /// handler from the moment it exists (a child forked without exec lets go of it).
    fn spawn<'a>(
        table: Option<&std::path::Path>,
        first: &'a [u8],
        ours: bool,
    ) -> std::io::Result<(Running, &'a [u8])> {
        debug_assert!(SCRIPT.contains(MARKER_VAR));
        if ours {
            install_handlers();
        }
        let (reader, stdin) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut stdin = std::fs::File::from(stdin);
        if ours {
            STDIN_FD.store(stdin.as_raw_fd(), Ordering::SeqCst);
        }
        let started = Self::start(table, first, &mut stdin, reader);
        match started {
            Ok((child, later)) => {
                // Unreaped, so the pid is still this child's.
                let pidfd = pidfd_open(child.id()).map(Arc::new);
                Ok((
                    Running {
                        child,
                        stdin,
                        pidfd,
                    },
                    later,
                ))
            }
            Err(e) => {
                if ours {
                    // Before our end closes: its number may be reused.
                    STDIN_FD.store(-1, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }

    /// The guardian process of `spawn`, `first` written to its stdin (`stdin`, with `reader`
    /// the other end) before it runs if it fits; what is left to write.
    fn start<'a>(
        table: Option<&std::path::Path>,
        first: &'a [u8],
        stdin: &mut std::fs::File,
        reader: OwnedFd,
    ) -> std::io::Result<(Child, &'a [u8])> {
        // Written only if it fits: with nobody reading yet, a write that does not would
        // wait for ever.
        let room = nix::fcntl::fcntl(stdin.as_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ)
            .map_or(0, |n| usize::try_from(n).unwrap_or(0));
        let later = if first.len() <= room {
            stdin.write_all(first)?;
            &first[first.len()..]
        } else {
            first
        };
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("hitchserve-guardian")
            .args(table)
            .env_remove(MARKER_VAR)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so a Ctrl-C meant for the test doesn't reach it first.
            .process_group(0)
            .current_dir("/")
            .spawn()?;
        Ok((child, later))
    }

    /// Start a new guardian (reaping a dead one) and tell it everything it must watch.
    fn restart(&mut self) -> std::io::Result<()> {
        if let Some(mut old) = self.running.take() {
            STDIN_FD.store(-1, Ordering::SeqCst);
            // Dropping its stdin ends it if it still runs; then it has exited or will.
            drop(old.stdin);
            let _ = old.child.wait();
        }
        // What waited to be told is in the state replayed below.
        self.later.clear();
        if self.table.is_none() {
            // Without one (no private directory to make it in), groups go as lines.
            self.table = crate::safepath::user_subdir("guardian", 0o700)
                .ok()
                .and_then(|dir| GroupTable::create(&dir).ok());
        }
        let mut replay = String::new();
        for g in &self.groups {
            replay.push_str(&format!("+g {g}\n"));
        }
        for r in &self.runs {
            replay.push_str(&format!("+r {r}\n"));
        }
        for c in self.cgroups.values() {
            replay.push_str(&format!("+c {}\n", c.path().display()));
        }
        let (mut running, later) = Self::spawn(
            self.table.as_ref().map(GroupTable::path),
            replay.as_bytes(),
            true,
        )?;
        if let Err(e) = running.stdin.write_all(later) {
            STDIN_FD.store(-1, Ordering::SeqCst);
            return Err(e);
        }
        self.running = Some(running);
        self.failure = None;
        self.start_watcher()
    }

    /// Start a guardian again if none runs, or (with no pidfd to watch it by) if ours has
    /// died: what `send` finds out by writing, for changes that write nothing (the table).
    fn keep_alive(&mut self) {
        let dead = match self.running.as_mut() {
            None => true,
            Some(r) => r.pidfd.is_none() && !matches!(r.child.try_wait(), Ok(None)),
        };
        if dead {
            // If even a restart fails, the run's marker sweep at shutdown still finds it.
            let _ = self.restart();
        }
    }

    /// Send one command, (re)starting the guardian if needed (it replays all state, this
    /// command included, since the caller changed the state first).
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let later = std::mem::take(&mut self.later);
        if let Some(running) = self.running.as_mut() {
            if running
                .stdin
                .write_all(format!("{later}{line}").as_bytes())
                .is_ok()
            {
                return Ok(());
            }
        }
        // (A restart tells it what is watched now: what waited is in that.)
        self.restart()
    }

    fn start_watcher(&mut self) -> std::io::Result<()> {
        if self.wake.is_some() {
            return Ok(());
        }
        let (ours, theirs) = UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        // Ours too: a wake is written under the guardian's lock, which the watcher needs
        // before it can drain them, so a full socket (a few hundred one-byte writes: each
        // costs a whole buffer's worth of accounting) must never block the writer. A wake
        // that doesn't fit is not needed: the ones queued already wake the watcher.
        ours.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name("hitchserve:guardian".into())
            .spawn(move || watch_guardian(theirs))?;
        self.wake = Some(ours);
        Ok(())
    }
}

/// The watcher thread: restart the guardian when it dies, move services into cgroups.
fn watch_guardian(wake: UnixStream) {
    loop {
        let (pidfd, pid) = {
            let g = lock();
            match g.running.as_ref() {
                Some(r) => (r.pidfd.clone(), Some(r.child.id())),
                None => (None, None),
            }
        };
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = pidfd.as_ref() {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // Nothing sensible left to wait on: the next command still restarts it.
            Err(_) => return,
        }
        let died = fds
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| !r.is_empty());
        let woken = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if woken {
            let mut buf = [0u8; 64];
            while matches!((&wake).read(&mut buf), Ok(n) if n > 0) {}
            place_queued();
        }
        if died {
            let mut g = lock();
            // Unless a command already restarted it meanwhile.
            if g.running.as_ref().map(|r| r.child.id()) == pid {
                if let Err(e) = g.restart() {
                    let message = format!(
                        "[Hitch] WARNING: the guardian process died and could not be restarted \
                         ({e}): if this process is killed now, its services are left running; \
                         new bundles will refuse to start"
                    );
                    eprintln!("{message}");
                    g.failure = Some(message);
                    STDIN_FD.store(-1, Ordering::SeqCst);
                    g.running = None;
                }
            }
        }
    }
}

/// Move every queued service into its cgroup, one at a time (see `forget`).
fn place_queued() {
    loop {
        let (pid, cgroup) = {
            let mut p = lock_placements();
            let Some(next) = p.queue.pop_front() else {
                return;
            };
            p.moving = Some(next.0);
            next
        };
        cgroup.place(pid);
        lock_placements().moving = None;
        STATE.get().placed.notify_all();
    }
}

/// Watch a run: its marker, and its cgroup if one can be made. Fails only if the guardian
/// can't be started at all.
/// Returns the run's cgroup, to start its services in.
pub(crate) fn add_run(run_id: &str) -> std::io::Result<Option<Arc<Cgroup>>> {
    let cgroup = Cgroup::create(run_id).map(Arc::new);
    let mut g = lock();
    g.runs.insert(run_id.to_owned());
    let mut line = format!("+r {run_id}\n");
    if let Some(c) = &cgroup {
        line.push_str(&format!("+c {}\n", c.path().display()));
        g.cgroups.insert(run_id.to_owned(), Arc::clone(c));
    }
    let sent = g.send(&line);
    if sent.is_err() {
        // Nothing watches it: don't leave the directory behind.
        if let Some(c) = g.cgroups.remove(run_id) {
            c.remove(Some(Instant::now()));
        }
        g.runs.remove(run_id);
    }
    sent.map(|()| cgroup)
}

/// SIGKILL whatever is left in the run's cgroup (processes that left their group and shed
/// the marker). Returns whether anything was there.
pub(crate) fn kill_cgroup(run_id: &str) -> bool {
    let cgroup = lock().cgroups.get(run_id).cloned();
    cgroup.is_some_and(|c| c.kill())
}

/// The run has stopped everything itself: remove its cgroup once empty and stop watching it.
pub(crate) fn remove_run(run_id: &str) {
    let cgroup = lock().cgroups.get(run_id).cloned();
    // Waited for without the lock: others may spawn meanwhile. Processes just killed are
    // gone within a moment; one stuck in the kernel keeps its cgroup for the guardian.
    let deadline = Instant::now().checked_add(EMPTY_WAIT);
    let gone = cgroup.as_ref().is_none_or(|c| c.remove(deadline));
    let mut g = lock();
    g.runs.remove(run_id);
    let mut line = format!("-r {run_id}\n");
    if gone {
        if let Some(c) = g.cgroups.remove(run_id) {
            line.push_str(&format!("-c {}\n", c.path().display()));
        }
    }
    // Told with the next command: if we die first, the guardian looks for this run's
    // marker and cgroup in vain (both unique to it), nothing worse.
    g.later.push_str(&line);
}

/// Watch a service's process group, and move it into its run's cgroup (off this thread)
/// unless it was born there (`inside`).
pub(crate) fn watch(run_id: &str, pgid: u32, inside: bool) {
    let mut g = lock();
    g.keep_alive();
    if !g.table.as_mut().is_some_and(|t| t.add(pgid)) {
        g.groups.insert(pgid);
        // If even a restart fails, the run's marker sweep at shutdown still finds it.
        let _ = g.send(&format!("+g {pgid}\n"));
    }
    if inside {
        return;
    }
    let Some(cgroup) = g.cgroups.get(run_id).cloned() else {
        return;
    };
    if let Some(mut wake) = g.wake.as_ref() {
        lock_placements().queue.push_back((pgid, cgroup));
        // (Non-blocking: a full socket already holds a wake; see `start_watcher`.)
        let _ = wake.write(b"p");
    }
}

/// The group's leader is about to be reaped: its pgid may be reused, so stop watching, and
/// don't move it (or let a move in progress finish first).
pub(crate) fn forget(pgid: u32) {
    {
        let mut p = lock_placements();
        p.queue.retain(|(pid, _)| *pid != pgid);
        while p.moving == Some(pgid) {
            p = STATE
                .get()
                .placed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
    let mut g = lock();
    g.keep_alive();
    if !g.table.as_mut().is_some_and(|t| t.remove(pgid)) && g.groups.remove(&pgid) {
        let _ = g.send(&format!("-g {pgid}\n"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// The guardian's own end, run for real: once its stdin ends it kills the groups marked
    /// `+` in its table, not the ones marked `-` (freed: their numbers may be reused), and
    /// removes the table.
    /// A child forked while threads of its parent held the guardian's locks can still use
    /// bundles (the locks are the parent's), and it holds no copy of the pipe to the
    /// parent's guardian. (Failed before the fix, with: the child hung at its first use.)
    #[test]
    fn a_forked_child_has_a_guardian_state_of_its_own_and_no_copy_of_the_pipe() {
        lock().keep_alive();
        let parents_pipe = STDIN_FD.load(Ordering::SeqCst);
        assert!(parents_pipe >= 0, "no guardian runs");
        let held = (lock(), lock_placements());
        // SAFETY: the child only looks at a descriptor, takes its own (fresh) locks and
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: a plain syscall on an integer.
            let closed = unsafe { libc::fcntl(parents_pipe, libc::F_GETFD) } == -1;
            let fresh = lock().running.is_none() && lock_placements().queue.is_empty();
            let code = match (closed, fresh) {
                (true, true) => 0,
                (false, _) => 1,
                (true, false) => 2,
            };
            // SAFETY: ends the child at once, as a child of fork should.
            unsafe { libc::_exit(code) };
        }
        drop(held);
        assert!(pid > 0, "fork failed");
        let pidfd = pidfd_open(pid as u32).expect("a pidfd");
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let ended = poll(&mut fds, PollTimeout::from(30_000u16));
        if !matches!(ended, Ok(1)) {
            // SAFETY: our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            matches!(ended, Ok(1)),
            "the forked child hung at the guardian's lock"
        );
        assert!(libc::WIFEXITED(status), "status {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "1: the child kept the parent's pipe; 2: it saw the parent's state"
        );
    }

    #[test]
    fn at_its_end_the_guardian_kills_the_groups_its_table_watches() {
        /// A `sleep` in a group of its own, killed and reaped when dropped (a failing
        /// assertion must not leave it behind).
        struct Sleeper(Child);
        impl Drop for Sleeper {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let sleeper = || {
            Sleeper(
                Command::new("sleep")
                    .arg("1000")
                    .process_group(0)
                    .env_remove(MARKER_VAR)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn sleep"),
            )
        };
        let (mut watched, mut freed) = (sleeper(), sleeper());
        let (watched_pid, freed_pid) = (watched.0.id(), freed.0.id());
        let dir = crate::safepath::user_subdir("guardian", 0o700).expect("our directory");
        let mut table = GroupTable::create(&dir).expect("a table");
        assert!(table.add(watched_pid));
        assert!(table.add(freed_pid));
        assert!(table.remove(freed_pid));
        let path = table.path().to_owned();
        // Ours is dropped below without removing the file: the guardian does.
        std::mem::forget(table);
        let (mut guardian, _) =
            Guardian::spawn(Some(&path), b"", false).expect("spawn the guardian");
        drop(guardian.stdin);
        let ended = guardian.child.wait().expect("the guardian ends");
        assert!(ended.success(), "{ended:?}");
        // Dead within the patience (its pidfd readable), not waited for forever.
        let pidfd = pidfd_open(watched_pid).expect("a pidfd");
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let left = poll(&mut fds, PollTimeout::from(30_000u16)).expect("poll");
        assert_eq!(left, 1, "the watched group was not killed");
        let status = watched.0.wait().expect("reap the watched sleep");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(freed.0.try_wait().expect("look at the freed one").is_none());
        assert!(!path.exists(), "the guardian removes its table");
    }
}
