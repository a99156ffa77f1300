//! The thread that runs `startup`s (and `shutdown`s, so Ctrl-C is answered meanwhile): one,
//! kept for the life of the process, so that the
//! engine's thread pool — whose idle threads belong to the thread that started their bundle
//! — keeps its threads from one bundle to the next (a Python test session starts a bundle per
//! test). A startup begun while it is busy (bundles started from several Python threads at
//! once) gets a thread of its own, as every startup did before.
//!
//! Owns that thread and handing it work. Invariant: `RUNNER` is locked only with the GIL
//! held, so `os.fork()` (which holds the GIL too) never happens while it is locked; a child
//! forked from us finds the parent's runner (a thread it doesn't have) and makes its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use pyo3::Python;

use crate::wait::lock;

/// A job: its work, which gives back how to deliver its answer — done once the runner is
/// free again, so the caller that gets the answer and at once hands the runner the next job
/// (a test's next bundle) finds it free, not busy (which made a thread of its own).
pub(crate) type Job = Box<dyn FnOnce() -> Deliver + Send + 'static>;
pub(crate) type Deliver = Box<dyn FnOnce() + Send + 'static>;

struct Runner {
    /// The process it runs in.
    pid: u32,
    jobs: mpsc::Sender<Job>,
    busy: Arc<AtomicBool>,
}

static RUNNER: Mutex<Option<Runner>> = Mutex::new(None);

/// Run `job` on the runner if it is free, else on a thread of its own. Fails only if no
/// thread can be made.
pub(crate) fn run_startup(_gil: Python<'_>, job: Job) -> std::io::Result<()> {
    let mut runner = lock(&RUNNER);
    let me = std::process::id();
    if runner.as_ref().is_none_or(|r| r.pid != me) {
        // (A forked child's copy of the parent's runner is left as it is: never used.)
        if let Some(parents) = runner.take() {
            std::mem::forget(parents);
        }
        *runner = start().ok();
    }
    let mut job = job;
    if let Some(r) = runner.as_ref() {
        if !r.busy.swap(true, Ordering::AcqRel) {
            match r.jobs.send(job) {
                Ok(()) => return Ok(()),
                // It ended (it never does on its own): a thread of its own, and a new
                // runner next time.
                Err(returned) => {
                    job = returned.0;
                    *runner = None;
                }
            }
        }
    }
    drop(runner);
    std::thread::Builder::new()
        .name("hitchserve-startup".into())
        .spawn(move || job()())
        .map(drop)
}

fn start() -> std::io::Result<Runner> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let busy = Arc::new(AtomicBool::new(false));
    let free = Arc::clone(&busy);
    std::thread::Builder::new()
        .name("hitchserve-startup".into())
        .spawn(move || {
            for job in rx {
                // A panic is the job's (the startup's sender then drops, which its waiter
                // reports); the runner goes on.
                let deliver = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                free.store(false, Ordering::Release);
                if let Ok(deliver) = deliver {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(deliver));
                }
            }
        })?;
    Ok(Runner {
        pid: std::process::id(),
        jobs,
        busy,
    })
}
