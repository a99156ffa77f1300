//! The process's spare threads: a thread that has finished its job (a service it
//! supervised, a bundle's run over) waits a while for another instead of ending, so that
//! bundles started one after another from the same thread (a benchmark, a Python test
//! session) don't make and end a thread per service each time (~35 µs of the machine's time
//! apiece here, at startup and again at shutdown).
//!
//! Owns the idle threads and handing a job to one (or to a new thread when none is idle).
//! What a job does is the caller's; a job's end is told through its `Done`, which the run
//! waits for at shutdown as it joined its threads before. `Done` fires once the thread is
//! back in its owner's idle list (or has decided to end), so a job given right after
//! another's `Done` finds that thread waiting.
//!
//! A thread keeps what it got from the thread it was made from: above all, under `cargo
//! test`, the output capture of the test that made it (where its prints go), and its name.
//! So idle threads are kept per *owner* — the thread outside the pool whose bundles made
//! them (a test's thread, or a job's owner for threads jobs make) — and only its own jobs
//! get them: another test's services never print into a finished test's output. The
//! threads of an owner that has ended are let go at the next use of the pool. Their name is
//! plain `hitchserve` (a name `std` keeps can't be changed); each job sets the kernel's
//! name for the thread (`ps`, `top`, `perf`) to its own.
//!
//! Invariant: an idle thread is in its owner's list exactly while it waits there for a job;
//! one that stops waiting (it waited long enough) first takes itself out under the lock —
//! and if a caller took it out already, that caller's job is on its way, and the thread runs
//! it. After a `fork`, the child makes a pool of its own (see `perprocess`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use crate::perprocess::PerProcess;

/// A job for a thread of the pool, and what tells its `Done` (dropped, never sent on).
pub(crate) struct Job {
    work: Box<dyn FnOnce() + Send + 'static>,
    ended: Sender<()>,
}

/// How long a thread with nothing to do waits for a job before it ends.
const IDLE_FOR: Duration = Duration::from_secs(10);
/// Most threads kept idle, all owners together: past that a thread ends with its job.
const MOST_IDLE: usize = 256;

/// The thread outside the pool that jobs are run for: its id, and a token that dies with it.
#[derive(Clone)]
struct Owner {
    id: ThreadId,
    alive: Weak<()>,
}

thread_local! {
    /// Dropped when the thread ends: its idle threads can go.
    static TOKEN: Arc<()> = Arc::new(());
    /// In a pool thread: the owner of the job it runs now.
    static RUNNING_FOR: RefCell<Option<Owner>> = const { RefCell::new(None) };
}

/// Whom a job given from this thread is for: this thread's job's owner in a pool thread,
/// else this thread.
fn owner() -> Owner {
    RUNNING_FOR
        .with(|r| r.borrow().clone())
        .unwrap_or_else(|| Owner {
            id: std::thread::current().id(),
            alive: TOKEN.with(Arc::downgrade),
        })
}

/// An owner's idle threads: whether the owner still runs, and each idle thread's id and
/// where to send it a job.
type OwnersIdle = (Weak<()>, Vec<(u64, Sender<Job>)>);

#[derive(Default)]
struct Idle {
    /// By owner.
    lists: HashMap<ThreadId, OwnersIdle>,
    count: usize,
    next_id: u64,
}

/// The pool of one process: a forked child makes its own (see `perprocess`).
static STATE: PerProcess<Mutex<Idle>> = PerProcess::new(|| Mutex::new(Idle::default()));

fn idle() -> MutexGuard<'static, Idle> {
    let mut idle = STATE.get().lock().unwrap_or_else(|e| e.into_inner());
    // Owners gone: their idle threads end (their senders dropped).
    let before = idle.lists.len();
    idle.lists.retain(|_, (alive, _)| alive.strong_count() > 0);
    if idle.lists.len() != before {
        idle.count = idle.lists.values().map(|(_, l)| l.len()).sum();
    }
    idle
}

/// The end of a job given to the pool.
pub(crate) struct Done(Receiver<()>);

impl Done {
    /// Wait until the job has ended (returned or panicked).
    pub(crate) fn wait(self) {
        // Nothing is ever sent: the sender goes when the job ends.
        let _ = self.0.recv();
    }

    /// Whether the job has ended.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.0.try_recv(), Err(TryRecvError::Disconnected))
    }
}

/// Run `job` on an idle thread of this thread's owner, or on a new one; the thread goes by
/// `name` in the kernel while it runs it. Fails only if no thread can be made.
pub(crate) fn run(name: &str, job: impl FnOnce() + Send + 'static) -> std::io::Result<Done> {
    let (ended, done) = mpsc::channel::<()>();
    let named = std::ffi::CString::new(name).ok();
    let owner = owner();
    let for_whom = owner.clone();
    let named_job = Box::new(move || {
        if let Some(name) = named {
            // The kernel keeps the first 15 bytes.
            // SAFETY: PR_SET_NAME reads a NUL-terminated string from a valid pointer.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        }
        RUNNING_FOR.with(|r| *r.borrow_mut() = Some(for_whom));
        job();
    });
    let mut job = Job {
        work: named_job,
        ended,
    };
    loop {
        let thread = {
            let mut idle = idle();
            let taken = idle
                .lists
                .get_mut(&owner.id)
                .and_then(|(_, list)| list.pop());
            if taken.is_some() {
                idle.count -= 1;
            }
            taken
        };
        let Some((_, thread)) = thread else {
            break;
        };
        match thread.send(job) {
            Ok(()) => return Ok(Done(done)),
            // It ended meanwhile: try the next.
            Err(returned) => job = returned.0,
        }
    }
    std::thread::Builder::new()
        .name("hitchserve".to_owned())
        .spawn(move || work(owner, job))?;
    Ok(Done(done))
}

/// A pool thread's life: run its job, then wait for another of its owner's or end.
fn work(owner: Owner, first: Job) {
    let mut job = first;
    loop {
        let Job { work, ended } = job;
        // A panic is the job's (and already reported by the hook): the thread goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        RUNNING_FOR.with(|r| *r.borrow_mut() = None);
        let Some(next) = wait_for_job(&owner, ended) else {
            return;
        };
        job = next;
    }
}

/// Wait in the owner's idle list for its next job; `None` once waited `IDLE_FOR`, or if
/// the owner has ended or too many threads are idle. `ended` (the last job's) is dropped
/// once the thread is in the list, or has decided to end.
fn wait_for_job(owner: &Owner, ended: Sender<()>) -> Option<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let id = {
        let mut idle = idle();
        if idle.count >= MOST_IDLE || owner.alive.strong_count() == 0 {
            drop(idle);
            drop(ended);
            return None;
        }
        idle.next_id += 1;
        let id = idle.next_id;
        idle.lists
            .entry(owner.id)
            .or_insert_with(|| (owner.alive.clone(), Vec::new()))
            .1
            .push((id, tx));
        idle.count += 1;
        id
    };
    drop(ended);
    match rx.recv_timeout(IDLE_FOR) {
        Ok(job) => Some(job),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => {
            let mut idle = idle();
            let list = idle.lists.get_mut(&owner.id).map(|(_, list)| list);
            match list.and_then(|list| {
                let at = list.iter().position(|(i, _)| *i == id)?;
                Some(list.swap_remove(at))
            }) {
                Some(_) => {
                    idle.count -= 1;
                    None
                }
                // Taken by a caller just now: its job is coming.
                None => {
                    drop(idle);
                    rx.recv().ok()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_pool() -> ThreadId {
        let (tx, rx) = mpsc::channel();
        run("hs-pool-test", move || {
            let _ = tx.send(std::thread::current().id());
        })
        .expect("a thread")
        .wait();
        rx.recv().expect("it ran")
    }

    /// A child forked while a thread of its parent held the pool's lock still has a pool
    /// (the lock is the parent's; the thread that held it doesn't exist in the child).
    /// (Failed before as: the child hung at its first use of the pool.)
    #[test]
    fn a_forked_child_has_a_pool_of_its_own() {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::io::AsFd;
        let held = idle();
        // SAFETY: the child only uses the pool (threads, channels: glibc's allocator is
        // ready for a fork) and then leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let (tx, rx) = mpsc::channel();
            let ran = run("hs-fork-test", move || {
                let _ = tx.send(());
            })
            .map(Done::wait)
            .is_ok()
                && rx.recv_timeout(Duration::from_secs(30)).is_ok();
            // SAFETY: ends the child at once, as a child of fork should.
            unsafe { libc::_exit(if ran { 0 } else { 1 }) };
        }
        drop(held);
        assert!(pid > 0, "fork failed");
        // SAFETY: a plain syscall; on success we own the new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open");
        // SAFETY: a fresh descriptor nobody else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut fds = [nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ended = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(30_000u16));
        if !matches!(ended, Ok(1)) {
            // SAFETY: our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            matches!(ended, Ok(1)) && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the forked child could not use a pool: {ended:?}, status {status}"
        );
    }

    #[test]
    fn a_finished_thread_runs_its_owners_next_job_and_panics_stay_in_their_job() {
        // This test's own thread is the owner: nothing else gives the pool jobs for it.
        let first = on_pool();
        // A job that panics ends (its Done says so) without taking its thread along.
        run("hs-pool-test", || panic!("a job's own panic"))
            .expect("a thread")
            .wait();
        let second = on_pool();
        assert_eq!(first, second, "the owner's idle thread was not reused");
        // Another thread is another owner: it gets a thread of its own.
        let other = std::thread::spawn(on_pool).join().expect("the other owner");
        assert_ne!(other, first);
    }
}
