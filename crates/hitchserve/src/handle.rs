//! `ServiceHandle`: one service of a started bundle, for a test to read and poke.
//!
//! Owns the public per-service API (logs, pid, process, environment, sub-commands, exit,
//! signals, and the fault-injection steps: stop, start, restart, pause, resume, kill). A
//! façade: it reads the runtime's states and asks the runtime to act.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::logs::Logs;
use crate::process::Process;
use crate::runtime::report::report_crash;
use crate::runtime::{deadline_after, Runtime};
use crate::signal::{ExitStatus, Signal};
use crate::subcommand::Subcommand;

/// How long `kill` with `SIGKILL` waits for the exit: SIGKILL can't be caught, so only a
/// process stuck in the kernel (an NFS hang, say) takes more than a moment.
const KILL_PATIENCE: Duration = Duration::from_secs(60);

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

    /// The handle of the service called `name` in `runtime`, or the error that lists the
    /// services it has.
    pub(crate) fn of(runtime: &Arc<Runtime>, name: &str) -> Result<ServiceHandle> {
        let idx = runtime
            .index(name)
            .ok_or_else(|| crate::error::Error::NoSuchService {
                service: name.to_owned(),
                known: runtime
                    .services()
                    .iter()
                    .map(|p| format!("`{}`", p.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(ServiceHandle::new(Arc::clone(runtime), idx))
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

    /// The service's whole environment (as it was started with: fake time included), for
    /// a command run beside it: without the service's own marker, which a stop of the
    /// service by hand looks for (the run's marker stays: such a command dies with the
    /// bundle).
    pub fn environment(&self) -> Vec<(OsString, OsString)> {
        let exec = &self.runtime.services()[self.idx].exec;
        // What is started with it carries the run's marker, outside the run's cgroup.
        exec.outside
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut env = exec.env.clone();
        env.retain(|(k, _)| k != crate::exec::SERVICE_MARKER_VAR);
        env
    }

    /// The service's working directory.
    pub fn directory(&self) -> &Path {
        &self.runtime.services()[self.idx].exec.dir
    }

    /// Whether a start of it is under way: waiting for what it needs, in its setup hook,
    /// being spawned, or running and not ready yet (a wait for its lines goes on through
    /// such a start).
    pub fn is_starting(&self) -> bool {
        self.runtime.read(self.idx, |st| st.is_starting())
    }

    /// Whether it is ready (its readiness check passed, and its poststart hook finished),
    /// and not stopping (see [`is_stopping`](ServiceHandle::is_stopping)).
    pub fn is_ready(&self) -> bool {
        self.runtime.read(self.idx, |st| st.is_ready())
    }

    /// Whether it is stopping: a stop, a restart (before its new start) or the bundle's
    /// shutdown was asked, and its process has not ended yet. A stopping service is not
    /// ready.
    pub fn is_stopping(&self) -> bool {
        self.runtime.read(self.idx, |st| st.is_stopping())
    }

    /// A variable of the service's environment (as it was started with).
    pub fn env_var(&self, key: &str) -> Option<String> {
        self.runtime.services()[self.idx].exec.var(key)
    }

    /// Its main process, to inspect or signal (see [`Process`]); an error
    /// ([`Error::ServiceNotRunning`](crate::Error::ServiceNotRunning), saying why) if none runs.
    pub fn process(&self) -> Result<Process> {
        let pid = self.runtime.read(self.idx, |st| {
            st.pid()
                .ok_or_else(|| self.runtime.not_running(self.idx, st))
        })?;
        Process::new(pid)
    }

    /// The ready-made kind that made it (`"Redis"`...), if one did.
    pub(crate) fn kind(&self) -> Option<&'static str> {
        self.runtime.services()[self.idx].kind
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

    /// An error if this service exited after it was ready (every time it is asked). Told
    /// once, it is handled: `shutdown` doesn't report it again (as after
    /// [`Bundle::check`](crate::Bundle::check)) — a test that killed it and checked the crash
    /// doesn't fail its teardown with it. For a look that leaves it to `shutdown`, see
    /// [`crashed`](Self::crashed).
    pub fn check(&self) -> Result<()> {
        report_crash(&self.runtime, Some(self.idx), false, true)
    }

    /// The crash [`check`](Self::check) would report, if any, without counting it as told:
    /// `shutdown` still reports it (a status display's look).
    pub fn crashed(&self) -> Option<crate::Error> {
        report_crash(&self.runtime, Some(self.idx), false, false).err()
    }

    /// Stop it: its stop signal to its whole process group, `SIGKILL` to what is left after
    /// the bundle's shutdown timeout; returns once it has exited and every line it wrote is
    /// stored. Services that need it keep running (a test checks what they do without it);
    /// processes that left its group are caught when the bundle stops. Its exit is expected:
    /// no crash. Nothing happens if it isn't running.
    ///
    /// ```no_run
    /// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
    /// let db = bundle.service("Postgres")?;
    /// db.stop()?;
    /// // ... the app reports the database as down ...
    /// db.start()?; // waits until it is ready again
    /// # Ok(()) }
    /// ```
    pub fn stop(&self) -> Result<()> {
        self.runtime.here()?;
        if self.runtime.stop_one(self.idx, None).is_none() && self.runtime.is_stopping() {
            // The bundle's own stop is under way, and stops this one too: return once it
            // has, as a stop does.
            let idx = self.idx;
            let patience = self.runtime.timeouts.shutdown + Duration::from_secs(5);
            let deadline = deadline_after(Instant::now(), patience);
            let (states, _) = self
                .runtime
                .wait_until(self.runtime.lock(), deadline, |s| s[idx].is_settled());
            drop(states);
        }
        Ok(())
    }

    /// Start it again after it stopped (by [`stop`](Self::stop), a crash or a `kill`), with
    /// the same definition, reserved ports and environment, on the bundle's current fake
    /// time, and wait until it is ready (its readiness check and poststart hook, within the
    /// bundle's startup timeout) — or an error as at startup, and then nothing of this
    /// start is left running: its process is stopped, or not spawned once its setup hook
    /// returns, and its restart policy does not restart it. Its setup hook does not run
    /// again (see [`start_with_setup`](Self::start_with_setup)). A service that runs is left
    /// as it is (this waits until it is ready). Its log goes on: lines of this start have
    /// [`LogLine::incarnation`](crate::LogLine::incarnation) one more.
    pub fn start(&self) -> Result<()> {
        self.start_as(false)
    }

    /// [`start`](Self::start), with its setup hook run again first.
    pub fn start_with_setup(&self) -> Result<()> {
        self.start_as(true)
    }

    /// A start that fails leaves nothing running (see `Runtime::stop_if_failed`).
    fn start_as(&self, setup: bool) -> Result<()> {
        self.runtime.here()?;
        let started = self.runtime.start_again(self.idx, setup)?;
        let result = self.runtime.wait_ready(self.idx);
        match started {
            Some(n) => self.runtime.stop_if_failed(self.idx, n, result),
            None => result,
        }
    }

    /// [`stop`](Self::stop), then [`start`](Self::start): one call, waited on. Its logs
    /// never end in between: a wait on its lines under way goes on with the new process's.
    pub fn restart(&self) -> Result<()> {
        self.runtime.here()?;
        self.runtime.restart_one(self.idx, false)
    }

    /// [`restart`](Self::restart), with its setup hook run again before the new start.
    pub fn restart_with_setup(&self) -> Result<()> {
        self.runtime.here()?;
        self.runtime.restart_one(self.idx, true)
    }

    /// Freeze it: `SIGSTOP` to its whole process group — the "hung dependency" fault (its
    /// port still accepts connections; nothing answers). [`resume`](Self::resume) thaws it;
    /// stopping a paused service resumes it first.
    pub fn pause(&self) -> Result<()> {
        self.runtime.here()?;
        self.runtime.pause(self.idx, true)
    }

    /// Thaw it after [`pause`](Self::pause): `SIGCONT` to its whole process group.
    pub fn resume(&self) -> Result<()> {
        self.runtime.here()?;
        self.runtime.pause(self.idx, false)
    }

    /// Whether it is paused (see [`pause`](Self::pause)).
    pub fn is_paused(&self) -> bool {
        self.runtime.read(self.idx, |st| st.is_paused())
    }

    /// Deliver `signal` to its whole process group without making its exit expected — the
    /// "crash" fault: if it dies, the crash is reported as any crash after readiness is (by
    /// [`check`](Self::check), the next time travel or shutdown), unless it is started again.
    /// With `SIGKILL`, which nothing can catch, it returns once the service has exited and
    /// its exit is recorded (or its restart policy has taken over), so that
    /// [`start`](Self::start) right after starts it again; with another signal, once the
    /// signal is sent (the service may handle it: [`wait_exit`](Self::wait_exit) waits for
    /// an exit). An error ([`Error::WaitTimeout`](crate::Error::WaitTimeout)) if it has not
    /// exited a minute after `SIGKILL` (a process stuck in the kernel).
    pub fn kill(&self, signal: Signal) -> Result<()> {
        let before = self.signal_group(signal)?;
        if signal != Signal::SIGKILL {
            return Ok(());
        }
        let idx = self.idx;
        let deadline = deadline_after(Instant::now(), KILL_PATIENCE);
        let (states, exited) = self.runtime.wait_until(self.runtime.lock(), deadline, |s| {
            s[idx].exit_status().is_some() || s[idx].incarnation != before
        });
        drop(states);
        match exited {
            true => Ok(()),
            false => Err(crate::Error::WaitTimeout {
                what: format!(
                    "service `{}` to exit after SIGKILL (a process stuck in the kernel?)",
                    self.name()
                ),
                timeout: KILL_PATIENCE,
                last_lines: Vec::new(),
                log: self.runtime.sink.store.file_path(),
            }),
        }
    }

    /// Wait until it is ready (after a start, a restart, or a restart by its policy), within
    /// the bundle's startup timeout; an error if it exits or fails first.
    pub fn wait_until_ready(&self) -> Result<()> {
        self.runtime.here()?;
        self.runtime.wait_ready(self.idx)
    }

    /// How many times its process has been started (1 after startup, 2 after one restart).
    pub fn incarnation(&self) -> u32 {
        self.runtime.read(self.idx, |st| st.incarnation)
    }

    /// Send a signal to the service's whole process group. `SIGSTOP` and `SIGCONT` are
    /// [`pause`](Self::pause) and [`resume`](Self::resume), so that [`is_paused`](Self::is_paused)
    /// and a later stop stay true.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.signal_group(signal).map(|_| ())
    }

    /// `signal`; the start number of the process group it was sent to.
    fn signal_group(&self, signal: Signal) -> Result<u32> {
        self.runtime.here()?;
        report_crash(&self.runtime, Some(self.idx), true, true)?;
        match signal {
            Signal::SIGSTOP => return self.pause().map(|()| self.incarnation()),
            Signal::SIGCONT => return self.resume().map(|()| self.incarnation()),
            _ => {}
        }
        // Under the lock: it keeps the group's leader unreaped while the signal is sent.
        let states = self.runtime.lock();
        let st = &states[self.idx];
        match st.group() {
            Some(group) if group.signal(signal) => Ok(st.incarnation),
            _ => Err(self.runtime.not_running(self.idx, st)),
        }
    }

    /// Whether it has exited and its restart policy will start it again (see
    /// [`Service::restart`](crate::Service::restart)).
    pub fn restart_pending(&self) -> bool {
        self.runtime.read(self.idx, |st| st.restart_pending())
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
