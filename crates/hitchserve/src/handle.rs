//! `ServiceHandle`: one service of a started bundle, for a test to read and poke.
//!
//! Owns the public per-service API (logs, pid, process, environment, sub-commands, exit,
//! signals). A façade: it reads the runtime's states and asks the runtime to act.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::logs::Logs;
use crate::process::Process;
use crate::runtime::report::report_crash;
use crate::runtime::{deadline_after, Runtime};
use crate::signal::{ExitStatus, Signal};
use crate::subcommand::Subcommand;

/// One service of a started bundle. Cheap to clone; usable after shutdown to read logs.
#[derive(Clone)]
pub struct ServiceHandle {
    runtime: Arc<Runtime>,
    idx: usize,
}

impl ServiceHandle {
    pub(crate) fn new(runtime: Arc<Runtime>, idx: usize) -> ServiceHandle {
        ServiceHandle { runtime, idx }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.runtime.services()[self.idx].name
    }

    /// Its log lines (stdout and stderr; `.out()` / `.err()` for one).
    pub fn logs(&self) -> Logs {
        Logs::new(Arc::clone(&self.runtime.sink.store), Some(self.idx))
    }

    /// The pid of its main process (the leader of its process group), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.runtime.read(self.idx, |st| st.pid())
    }

    /// A command to run in this service's environment, directory and fake time.
    pub fn subcommand<I, S>(&self, argv: I) -> Subcommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Subcommand::new(
            &self.runtime.services()[self.idx].exec,
            argv.into_iter().map(Into::into).collect(),
        )
    }

    /// The service's whole environment (as it was started with: fake time included).
    pub fn environment(&self) -> Vec<(OsString, OsString)> {
        self.runtime.services()[self.idx].exec.env.clone()
    }

    /// The service's working directory.
    pub fn directory(&self) -> &Path {
        &self.runtime.services()[self.idx].exec.dir
    }

    /// Whether it is ready (its readiness check passed, and its poststart hook finished).
    pub fn is_ready(&self) -> bool {
        self.runtime.read(self.idx, |st| st.is_ready())
    }

    /// A variable of the service's environment (as it was started with).
    pub fn env_var(&self, key: &str) -> Option<String> {
        self.runtime.services()[self.idx].exec.var(key)
    }

    /// Its main process, to inspect or signal (see [`Process`]).
    pub fn process(&self) -> Result<Process> {
        let pid = self.pid().ok_or(Error::NotRunning)?;
        Process::new(pid)
    }

    /// Whether its main process is still running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// How it ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.runtime.read(self.idx, |st| st.exit_status())
    }

    /// Wait up to `timeout` for the service's main process to exit; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = deadline_after(Instant::now(), timeout);
        let idx = self.idx;
        let (states, _) = self.runtime.wait_until(self.runtime.lock(), deadline, |s| {
            s[idx].exit_status().is_some()
        });
        states[idx].exit_status()
    }

    /// An error if this service exited after it was ready (every time it is asked).
    pub fn check(&self) -> Result<()> {
        report_crash(&self.runtime, Some(self.idx), false)
    }

    /// Send a signal to the service's whole process group.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        report_crash(&self.runtime, Some(self.idx), true)?;
        // Under the lock: it keeps the group's leader unreaped while the signal is sent.
        let states = self.runtime.lock();
        match states[self.idx].group() {
            Some(group) if group.signal(signal) => Ok(()),
            _ => Err(Error::NotRunning),
        }
    }
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.name())
            .field("pid", &self.pid())
            .finish()
    }
}
