//! The threads of a run: every job it gave the process's thread pool (`pool`; waited for at
//! shutdown), and the supervisor threads taken in advance, each waiting for its service's
//! task.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::exec::ServiceChild;
use crate::plan::Sources;
use crate::readiness::Checker;
use crate::runtime::pool::{self, Done};

/// A service's process just spawned: the child, where its lines go, and its readiness
/// check (made before the spawn: it notes the files there already, see `Ready::file`).
pub(crate) struct Started {
    pub child: ServiceChild,
    pub sources: Arc<Sources>,
    pub checker: Arc<Checker>,
}

/// What a supervisor thread is given to do.
pub(crate) enum Task {
    /// Start the service (setup hook, spawn), then supervise it.
    Start,
    /// Supervise a child already spawned.
    Supervise(Started),
}

/// The threads of a run: every one made, and those made in advance waiting for a task.
pub(crate) struct Threads {
    handles: Mutex<Vec<Done>>,
    workers: Mutex<Vec<Option<mpsc::Sender<Task>>>>,
}

impl Threads {
    pub(crate) fn new(n: usize) -> Threads {
        Threads {
            handles: Mutex::new(Vec::new()),
            workers: Mutex::new((0..n).map(|_| None).collect()),
        }
    }

    pub(crate) fn workers(&self) -> MutexGuard<'_, Vec<Option<mpsc::Sender<Task>>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn handles(&self) -> MutexGuard<'_, Vec<Done>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Threads made in advance for services that never started: let them go.
    pub(crate) fn release_workers(&self) {
        self.workers().iter_mut().for_each(|w| *w = None);
    }

    /// Run `job` on a thread of the pool named `name`, to be waited for at shutdown.
    pub(crate) fn spawn(
        &self,
        name: String,
        job: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let done = pool::run(&name, job)?;
        self.handles().push(done);
        Ok(())
    }
}
