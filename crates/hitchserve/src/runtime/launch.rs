//! Setting up a run before its first service starts: the run directory, the fake clock's
//! files, other users' directories and access, the guardian, and the log file writer.
//!
//! Owns the order of those steps and cleaning up after one that fails. Every error here
//! comes before any service process exists.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::guardian;
use crate::logs::files::LogFiles;
use crate::logs::Sink;
use crate::plan::Plan;
use crate::rundir::RunDir;
use crate::runtime::{Runtime, Timeouts};
use crate::timetravel::Clock;

impl Runtime {
    /// Make everything `plan` needs in `run`, start `clock` if a service runs on it, and
    /// return the runtime, with no service started yet. `t0`: when startup began.
    pub(crate) fn launch(
        sink: &Arc<Sink>,
        plan: Plan,
        run: RunDir,
        clock: &Clock,
        t0: Instant,
        timeouts: Timeouts,
    ) -> Result<Arc<Runtime>> {
        if plan.needs_run_dir() {
            run.create()?;
        }
        if let Some(paths) = &plan.clock {
            clock.start(paths)?;
        }
        plan.prepare_users(&run.path)?;
        let cgroup = guardian::add_run(&run.id).map_err(|source| Error::Io {
            context:
                "could not start the guardian process (/bin/sh) that cleans up after a killed test"
                    .into(),
            source,
        })?;
        let weak_sink = Arc::downgrade(sink);
        let store = Arc::downgrade(&sink.store);
        let on_written = move || {
            if let Some(store) = store.upgrade() {
                store.relieve();
            }
        };
        let on_failed = move |reason: String| {
            if let Some(sink) = weak_sink.upgrade() {
                let warning = sink.store.files_failed(reason);
                sink.warn(&warning);
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
        sink.store.attach_files(
            Arc::new(files),
            run.logs().join("all.log"),
            sink.console.width(),
        );
        Ok(Arc::new(Runtime::new(
            Arc::clone(sink),
            plan,
            run,
            cgroup,
            t0,
            timeouts,
        )))
    }
}
