//! The process's spare threads: a thread that has finished its job (a service it
//! supervised, a bundle's run over) waits a while for another instead of ending, so that a
//! test suite starting a bundle per test doesn't make and end a thread per service each
//! time (~35 µs of the machine's time apiece here, at startup and again at shutdown).
//!
//! Owns the idle threads and handing a job to one (or to a new thread when none is idle).
//! What a job does is the caller's; a job's end is told through its `Done`, which the run
//! waits for at shutdown as it joined its threads before.
//!
//! Invariant: an idle thread is in `IDLE` exactly while it waits there for a job; one that
//! stops waiting (it waited long enough) first takes itself out under the lock — and if a
//! caller took it out already, that caller's job is on its way, and the thread runs it.
//! After a `fork`, the child's copy of the list names the parent's threads: it is emptied.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A job for a thread of the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a thread with nothing to do waits for a job before it ends.
const IDLE_FOR: Duration = Duration::from_secs(10);
/// Most threads kept idle: past that a thread ends with its job.
const MOST_IDLE: usize = 256;

struct Idle {
    /// The process these threads are of (0 before first use).
    owner: u32,
    /// Each idle thread: its id and where to send it a job.
    waiting: Vec<(u64, Sender<Job>)>,
    next_id: u64,
}

static IDLE: Mutex<Idle> = Mutex::new(Idle {
    owner: 0,
    waiting: Vec::new(),
    next_id: 0,
});

fn idle() -> MutexGuard<'static, Idle> {
    let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    if idle.owner != me {
        // Forked: the threads listed are the parent's. (Forgotten, not dropped: dropping
        // a sender is harmless, but nothing of theirs needs doing here.)
        std::mem::forget(std::mem::take(&mut idle.waiting));
        idle.owner = me;
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

/// Run `job` on an idle thread of the pool, or on a new one named `name`. Fails only if no
/// thread can be made.
pub(crate) fn run(name: &str, job: impl FnOnce() + Send + 'static) -> std::io::Result<Done> {
    let (ended, done) = mpsc::channel::<()>();
    let named = std::ffi::CString::new(name).ok();
    let job: Job = Box::new(move || {
        let _ended = ended;
        if let Some(name) = named {
            // A thread that served another job before goes by this one's name now (the
            // kernel keeps the first 15 bytes).
            // SAFETY: PR_SET_NAME reads a NUL-terminated string from a valid pointer.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        }
        job();
    });
    let mut job = job;
    loop {
        let Some((_, thread)) = idle().waiting.pop() else {
            break;
        };
        match thread.send(job) {
            Ok(()) => return Ok(Done(done)),
            // It ended meanwhile: try the next.
            Err(returned) => job = returned.0,
        }
    }
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || work(job))?;
    Ok(Done(done))
}

/// A pool thread's life: run its job, then wait for another or end.
fn work(first: Job) {
    let mut job = first;
    loop {
        // A panic is the job's (and already reported by the hook): the thread goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let Some(next) = wait_for_job() else {
            return;
        };
        job = next;
    }
}

/// Wait in the idle list for the next job; `None` once waited `IDLE_FOR` (or the list is
/// full).
fn wait_for_job() -> Option<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let id = {
        let mut idle = idle();
        if idle.waiting.len() >= MOST_IDLE {
            return None;
        }
        idle.next_id += 1;
        let id = idle.next_id;
        idle.waiting.push((id, tx));
        id
    };
    match rx.recv_timeout(IDLE_FOR) {
        Ok(job) => Some(job),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => {
            let mut idle = idle();
            match idle.waiting.iter().position(|(i, _)| *i == id) {
                Some(at) => {
                    idle.waiting.swap_remove(at);
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

    #[test]
    fn a_finished_thread_runs_the_next_job_and_panics_stay_in_their_job() {
        let (tx, rx) = mpsc::channel();
        let first = {
            let tx = tx.clone();
            run("hs-pool-test", move || {
                let _ = tx.send(std::thread::current().id());
            })
            .expect("a thread")
        };
        let a = rx.recv().expect("the first job ran");
        first.wait();
        // A job that panics ends (its Done says so) without taking its thread along.
        let panicking = run("hs-pool-test", || panic!("a job's own panic")).expect("a thread");
        panicking.wait();
        let second = run("hs-pool-test", move || {
            let _ = tx.send(std::thread::current().id());
        })
        .expect("a thread");
        let b = rx.recv().expect("the second job ran");
        second.wait();
        // Other tests use the pool at the same time: any idle thread may take a job, so
        // only that each ran, and ended, is certain; that threads are reused is shown by
        // the same thread id coming back at least once over a few jobs.
        let mut seen = vec![a, b];
        for _ in 0..8 {
            let (tx, rx) = mpsc::channel();
            run("hs-pool-test", move || {
                let _ = tx.send(std::thread::current().id());
            })
            .expect("a thread")
            .wait();
            seen.push(rx.recv().expect("ran"));
        }
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert!(
            distinct.len() < seen.len(),
            "no thread was reused: {seen:?}"
        );
    }
}
