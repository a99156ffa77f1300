//! Waiting for a run to start up (and for one service to be ready again: `wait_ready`), and
//! the errors a run gives: a startup failure, a startup timeout (what each service is still
//! waiting for), a crash after readiness, a service that isn't running.
//!
//! Owns turning states into `Error`s with each service's last lines. It reads states (and
//! takes a startup failure from its mailbox, so it is reported once); it never moves one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, NotReady, Result};
use crate::logs::{Filter, Part};
use crate::plan::Traits;
use crate::runtime::state::{Failure, Phase, Readiness, ServiceState};
use crate::runtime::Runtime;
use crate::service::Condition;
use crate::signal::ExitStatus;

/// How many of a service's last lines an error message carries.
pub(crate) const LAST_LINES: usize = 20;

impl Runtime {
    /// Start the services that need nothing, then wait: each service's supervisor starts its
    /// dependents the moment it is ready. Returns when all are ready, one failed, `timeout`
    /// (from `t0`) passed or `interrupted` was set (then `wake` is called).
    pub(crate) fn start_up(
        self: &Arc<Self>,
        timeout: Duration,
        progress: Option<Duration>,
        interrupted: &AtomicBool,
    ) -> Result<()> {
        let deadline = super::deadline_after(self.t0, timeout);
        if interrupted.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        self.start_startable();
        // While the first services start, make the threads the others will need.
        self.prepare_supervisors();
        let services = self.services();
        // (A progress interval too long to add to now is never due: no line.)
        let mut next_progress = progress.and_then(|every| Instant::now().checked_add(every));
        let failure = {
            // Woken early by its last service's reader (see `early`).
            let _waiting = self.early.waiting();
            let mut states = self.lock();
            loop {
                if self.early.passing() {
                    // Woken early: the read that woke it is being dealt with.
                    drop(states);
                    self.early.settle();
                    states = self.lock();
                }
                if interrupted.load(Ordering::SeqCst) {
                    return Err(Error::Interrupted);
                }
                let found = states.iter_mut().enumerate().find_map(|(idx, st)| {
                    Some((idx, st.take_startup_failure(&services[idx].traits)?))
                });
                if let Some(failure) = found {
                    break failure;
                }
                let done = |(idx, st): (usize, &ServiceState)| st.started_up(&services[idx].traits);
                if states.iter().enumerate().all(done) {
                    return Ok(());
                }
                if let (Some(at), Some(every)) = (next_progress, progress) {
                    if Instant::now() >= at {
                        let waiting: Vec<&str> = states
                            .iter()
                            .enumerate()
                            .filter(|&(idx, st)| !done((idx, st)))
                            .map(|(idx, _)| services[idx].name.as_str())
                            .collect();
                        let line = format!(
                            "still starting after {:.1} s: {}",
                            self.t0.elapsed().as_secs_f64(),
                            waiting.join(", ")
                        );
                        drop(states);
                        self.sink.log(&line);
                        states = self.lock();
                        next_progress = Instant::now().checked_add(every);
                        continue;
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    drop(states);
                    return Err(self.timeout_error_for(timeout, None));
                }
                let wake = match (deadline, next_progress) {
                    (Some(d), Some(p)) => Some(d.min(p)),
                    (d, p) => d.or(p),
                };
                // Only a milestone can end this wait: the last service started up, or one
                // failing or exiting (an interrupt wakes it too).
                states = match wake {
                    None => self
                        .milestone
                        .wait(states)
                        .unwrap_or_else(|e| e.into_inner()),
                    Some(wake) => {
                        let left = wake.saturating_duration_since(Instant::now());
                        self.milestone
                            .wait_timeout(states, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        };
        Err(self.failure_error(failure.0, failure.1))
    }

    /// Wait until service `idx` is ready again (or, one-shot, complete), within the startup
    /// timeout: after a start by hand, a restart, or a restart by its policy.
    pub(crate) fn wait_ready(&self, idx: usize) -> Result<()> {
        self.wait_ready_after(idx, 0)
    }

    /// `wait_ready` for a start later than start number `before` (a restart).
    pub(crate) fn wait_ready_after(&self, idx: usize, before: u32) -> Result<()> {
        let timeout = self.timeouts.startup;
        let deadline = super::deadline_after(Instant::now(), timeout);
        let t = &self.services()[idx].traits;
        let ready = |st: &ServiceState| st.incarnation > before && st.started_up(t);
        let failure = {
            let (mut states, _) = self.wait_until(self.lock(), deadline, |s| {
                let st = &s[idx];
                ready(st) || st.failure.is_some() || st.is_settled() || self.is_stopping()
            });
            let st = &mut states[idx];
            if ready(st) {
                return Ok(());
            }
            if self.is_stopping() {
                return Err(self.shut_down(idx));
            }
            match st.take_startup_failure(t) {
                Some(failure) => {
                    // The error tells of its exit: `shutdown` doesn't again (as after a
                    // failed startup), though `check` does, as it does every time.
                    if !matches!(failure, StartupFailure::Failed(_)) {
                        st.crash_reported = true;
                    }
                    failure
                }
                None if st.is_settled() => {
                    let error = self.not_running(idx, st);
                    return Err(error);
                }
                None => {
                    drop(states);
                    return Err(self.timeout_error_for(timeout, Some(idx)));
                }
            }
        };
        Err(self.failure_error(idx, failure))
    }

    /// The error for asking service `idx` (in state `st`) for something only a running
    /// process can do.
    pub(crate) fn not_running(&self, idx: usize, st: &ServiceState) -> Error {
        let state = match &st.phase {
            // Nothing starts any more: no advice to start it.
            _ if self.is_stopping() => "is stopped: the bundle has been shut down".to_owned(),
            Phase::Exited { expected: true, .. } => {
                "was stopped: start it again first (`start()`)".to_owned()
            }
            Phase::Exited { status, .. } => {
                format!("exited ({status}): start it again first (`start()`)")
            }
            Phase::Restarting { .. } => "waits for its restart policy to start it again \
                (`wait_until_ready()`)"
                .to_owned(),
            Phase::NotStarted => "was never started (see the startup error)".to_owned(),
            Phase::Waiting | Phase::SettingUp { .. } | Phase::Spawning { .. } => {
                "is starting (`wait_until_ready()`)".to_owned()
            }
            Phase::Exiting { .. } | Phase::Draining { .. } => "is exiting".to_owned(),
            Phase::Running { stop: Some(_), .. } => "is being stopped".to_owned(),
            Phase::Running { .. } => "is running".to_owned(),
        };
        Error::ServiceNotRunning {
            service: self.services()[idx].name.clone(),
            state,
        }
    }

    /// The error for starting (or waiting for) service `idx` once the bundle stops.
    pub(crate) fn shut_down(&self, idx: usize) -> Error {
        Error::ServiceNotRunning {
            service: self.services()[idx].name.clone(),
            state: "can't start: the bundle has been shut down".to_owned(),
        }
    }

    /// After a failed startup, every exit is already told of: don't report one again.
    pub(crate) fn mark_crashes_reported(&self) {
        self.lock()
            .iter_mut()
            .for_each(|st| st.crash_reported = true);
    }

    fn failure_error(&self, idx: usize, failure: StartupFailure) -> Error {
        let service = self.services()[idx].name.clone();
        match failure {
            StartupFailure::Failed(Failure::CheckPanicked(message)) => Error::ReadinessPanicked {
                service,
                message,
                last_lines: self.lines_of_this_start(idx),
                log: self.sink.store.file_path(),
            },
            StartupFailure::Failed(Failure::Spawn(source)) => Error::Spawn { service, source },
            StartupFailure::Failed(Failure::Hook(part, message)) => {
                let filter = Filter {
                    part: Some(part),
                    ..Filter::service(Some(idx))
                };
                let lines = self.sink.store.last(&filter, LAST_LINES);
                Error::HookFailed {
                    service,
                    hook: if part == Part::Setup {
                        "setup"
                    } else {
                        "poststart"
                    },
                    message,
                    last_lines: lines.iter().map(|l| l.to_string()).collect(),
                    log: self.sink.store.file_path(),
                }
            }
            StartupFailure::ExitedBeforeReady(status) if self.services()[idx].traits.one_shot => {
                Error::OneShotFailed {
                    service,
                    status,
                    last_lines: self.lines_of_this_start(idx),
                    log: self.sink.store.file_path(),
                }
            }
            StartupFailure::ExitedBeforeReady(status) => Error::ExitedBeforeReady {
                service,
                status,
                last_lines: self.lines_of_this_start(idx),
                log: self.sink.store.file_path(),
            },
            StartupFailure::ExitedAfterReady(status) => Error::ServiceExited {
                service,
                status,
                last_lines: self.lines_of_this_start(idx),
                log: self.sink.store.file_path(),
            },
        }
    }

    /// Service `idx`'s last lines for an error about its current start: of that start only
    /// (a failed start by hand showed the earlier start's lines as if they were its own).
    fn lines_of_this_start(&self, idx: usize) -> Vec<String> {
        let start = self.read(idx, |st| st.incarnation);
        self.sink.last_lines_of_start(idx, start, LAST_LINES)
    }

    /// The startup timeout error for every service not ready yet (or only `only`).
    fn timeout_error_for(&self, timeout: Duration, only: Option<usize>) -> Error {
        let services = self.services();
        // Each service not ready, what it waits for, and whether that is its readiness check.
        let waiting: Vec<(usize, String, bool)> = {
            let states = self.lock();
            services
                .iter()
                .enumerate()
                .filter(|(idx, _)| only.is_none_or(|o| o == *idx))
                .filter_map(|(idx, plan)| {
                    let waiting = states[idx].waiting_for(&plan.traits)?;
                    let checking = matches!(waiting, Waiting::Check(_));
                    let what = match waiting {
                        Waiting::OneShot => "its one-shot run to complete".to_owned(),
                        Waiting::Needs => {
                            let pending: Vec<String> = plan
                                .needs
                                .iter()
                                .filter(|&&(n, c)| !needs_met(&states[n], c))
                                .map(|&(n, c)| format!("`{}` {}", services[n].name, c.words()))
                                .collect();
                            format!("{} (not started)", pending.join(", "))
                        }
                        Waiting::Spawn => "its process to start".to_owned(),
                        Waiting::Setup => "its setup hook to finish".to_owned(),
                        Waiting::Poststart => "its poststart hook to finish".to_owned(),
                        Waiting::Check(Some(why)) => {
                            format!("{} (last try: {why})", plan.ready.describe())
                        }
                        Waiting::Check(None) => plan.ready.describe(),
                        Waiting::Stop => "its stop (or restart) by hand to end: it is \
                                          stopping"
                            .to_owned(),
                        Waiting::Restart(status) => format!(
                            "its restart: it exited ({status}), and its restart policy starts \
                             it again once its backoff has passed (the lines below are of the \
                             process that exited)"
                        ),
                    };
                    let what = match self.user_code.get(idx) {
                        Some(code) => format!(
                            "{what}; its {} has not returned (is it blocked?)",
                            code.words()
                        ),
                        None => what,
                    };
                    Some((idx, what, checking))
                })
                .collect()
        };
        Error::StartupTimeout {
            timeout,
            not_ready: waiting
                .into_iter()
                .map(|(idx, waiting_for, checking)| {
                    let last_lines = self.lines_of_this_start(idx);
                    let waiting_for = match checking && last_lines.is_empty() {
                        // Its lines may be there, unwritten: a program's output to a pipe
                        // waits in its buffer until that is full.
                        true if services[idx].ready.reads_lines() => format!(
                            "{waiting_for} — a line it printed may still wait in its output \
                             buffer, as a program's output to a pipe does until the buffer \
                             fills (Python: `python3 -u` or PYTHONUNBUFFERED=1; C programs: \
                             `stdbuf -oL`)"
                        ),
                        _ => waiting_for,
                    };
                    NotReady {
                        service: services[idx].name.clone(),
                        waiting_for,
                        last_lines,
                    }
                })
                .collect(),
            log: self.sink.store.file_path(),
        }
    }
}

/// The startup failure a service shows, if any: taken from its mailbox, or read from its
/// phase (an exit before it was ready, or after, during startup).
pub(crate) enum StartupFailure {
    Failed(Failure),
    ExitedBeforeReady(ExitStatus),
    ExitedAfterReady(ExitStatus),
}

impl ServiceState {
    /// The failure that ends startup, if this service has one (taken: reported once).
    /// Whether `take_startup_failure` would find one (without taking it).
    #[cfg(debug_assertions)]
    pub(crate) fn has_startup_failure(&self, t: &Traits) -> bool {
        self.failure.is_some()
            || match self.phase {
                Phase::Exited { expected: true, .. } => false,
                Phase::Exited { status, .. } => !(t.one_shot && status.success()),
                _ => false,
            }
    }

    pub(crate) fn take_startup_failure(&mut self, t: &Traits) -> Option<StartupFailure> {
        if let Some(f) = self.failure.take() {
            return Some(StartupFailure::Failed(f));
        }
        match self.phase {
            // A stop asked for is no failure.
            Phase::Exited { expected: true, .. } => None,
            Phase::Exited { status, .. } if t.one_shot && status.success() => None,
            Phase::Exited { status, .. } if self.was_ready() && !t.one_shot => {
                Some(StartupFailure::ExitedAfterReady(status))
            }
            Phase::Exited { status, .. } => Some(StartupFailure::ExitedBeforeReady(status)),
            _ => None,
        }
    }

    /// What its startup is waiting for, in words, or `None` if it is done.
    pub(crate) fn waiting_for(&self, t: &Traits) -> Option<Waiting> {
        Some(match &self.phase {
            Phase::Waiting => Waiting::Needs,
            Phase::SettingUp { .. } => Waiting::Setup,
            Phase::Spawning { .. } => Waiting::Spawn,
            Phase::Running {
                readiness: Readiness::PostStart,
                ..
            } => Waiting::Poststart,
            // A stop or restart by hand under way: not ready until it has started again.
            Phase::Running { stop: Some(_), .. }
            | Phase::Exiting { expected: true, .. }
            | Phase::Draining { expected: true, .. } => Waiting::Stop,
            Phase::Running { .. } if t.one_shot => Waiting::OneShot,
            Phase::Running {
                readiness: Readiness::Ready { .. },
                ..
            } => return None,
            Phase::Exited { .. } if self.completed() && t.one_shot => return None,
            Phase::Restarting { status } => Waiting::Restart(*status),
            Phase::Running {
                readiness: Readiness::Checking { last_failure },
                ..
            } => Waiting::Check(last_failure.clone()),
            _ => Waiting::Check(None),
        })
    }
}

/// What a service's startup waits for.
pub(crate) enum Waiting {
    Needs,
    Setup,
    Spawn,
    Check(Option<String>),
    Poststart,
    OneShot,
    /// Its process exited (so), and its restart policy starts it again after its backoff.
    Restart(ExitStatus),
    /// A stop (or restart) by hand is under way.
    Stop,
}

/// Whether a need is met, in the words of a timeout message (ready means ready, whether or
/// not its line was logged yet).
fn needs_met(st: &ServiceState, c: Condition) -> bool {
    match c {
        Condition::Ready => st.is_ready(),
        Condition::Started => st.has_started(),
        Condition::CompletedSuccessfully => st.completed(),
    }
}

/// The error for a service (or any, with `only == None`) that exited after readiness, or
/// (for the whole bundle) for its log file failing.
/// With `once`, a crash already reported is not reported again; with `mark`, what is
/// reported counts as told (a service's own `check`, a look, doesn't: the command line's
/// `status` uses it, and `down` still says the crash).
pub(crate) fn report_crash(
    runtime: &Runtime,
    only: Option<usize>,
    once: bool,
    mark: bool,
) -> Result<()> {
    let services = runtime.services();
    let found = {
        let mut states = runtime.lock();
        states
            .iter_mut()
            .enumerate()
            .filter(|(idx, _)| only.is_none_or(|o| o == *idx))
            .find_map(|(idx, st)| {
                let status = st.crashed(&services[idx].traits)?;
                if once && st.crash_reported {
                    return None;
                }
                // Told now, also by the bundle's `check` (which tells it every time it is
                // asked): the calls that report a crash once don't again (a test that checked
                // for it, then shut down, failed its teardown with the crash it had handled).
                if mark {
                    st.crash_reported = true;
                }
                Some((idx, status))
            })
    };
    match found {
        // A crash first: it is what the test most needs to hear of.
        None => match only {
            None => runtime.sink.store.file_failure(once).map_or(Ok(()), Err),
            Some(_) => Ok(()),
        },
        Some((idx, status)) => Err(Error::ServiceExited {
            service: services[idx].name.clone(),
            status,
            last_lines: runtime.lines_of_this_start(idx),
            log: runtime.sink.store.file_path(),
        }),
    }
}
