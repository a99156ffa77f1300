//! One service's lifecycle as data: the phase it is in (holding what is valid only there),
//! the events that move it, and `apply`, the only function that changes it.
//!
//! Owns the rules "may it be signalled, is it ready, has it completed, did it crash, what
//! failed its startup"; the transitions themselves are in `apply`. Pure: it spawns, signals and waits for nothing. `apply` returns the
//! `Action`s the runtime carries out (outside the lock, but signals before the lock is let
//! go), so every transition has a table test that starts no process.
//!
//! Invariants: a process group exists only in the phases where it may be signalled — its
//! leader is not reaped yet (`Running`, `Exiting`; the main process's pid is shown only while
//! it runs); whether an exit was expected is decided when the exit is seen (`MainExited`),
//! never later.

use std::time::{Duration, Instant};

use crate::exec::ProcessGroup;
use crate::logs::Part;
use crate::plan::Traits;
use crate::service::Condition;
use crate::signal::{ExitStatus, Signal};

/// Where a service is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Not started: waiting for its needs.
    Waiting,
    /// Its needs are met; its setup hook is running. `stop`: the bundle asked it to stop
    /// meanwhile, so it will not be spawned.
    SettingUp { stop: Option<Stop> },
    /// Its process is being spawned. `stop`: asked to stop meanwhile: killed once spawned.
    Spawning { stop: Option<Stop> },
    /// Its main process runs (and is the unreaped leader of `group`).
    Running {
        group: ProcessGroup,
        readiness: Readiness,
        /// Asked to stop: its exit from now on is expected.
        stop: Option<Stop>,
        /// Its group is stopped with SIGSTOP (see `ServiceHandle::pause`).
        paused: bool,
        /// What is to happen once its main process is reaped.
        after: AfterExit,
    },
    /// Its main process has exited but is not reaped, so the group is still ours: what is
    /// left of it gets the rest of the grace (`deadline`) if the exit was `expected`.
    Exiting {
        group: ProcessGroup,
        expected: bool,
        deadline: Option<Instant>,
        readiness: Readiness,
        after: AfterExit,
    },
    /// Its group has been killed; its pipes are being drained and its leader reaped.
    Draining {
        expected: bool,
        readiness: Readiness,
        after: AfterExit,
    },
    /// Done: reaped, every line it wrote stored.
    Exited {
        status: ExitStatus,
        expected: bool,
        readiness: Readiness,
    },
    /// It exited unasked and its restart policy starts it again once `backoff` has passed.
    Restarting { status: ExitStatus },
    /// It did not run: the bundle stopped before it started, its setup hook failed, the OS
    /// refused to start it, or no thread could supervise it (killed at once); its `failure`
    /// says which.
    NotStarted,
}

/// How far a running (or once running) service got towards ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Its readiness check has not passed yet; the last probe failure, if any, says why.
    Checking { last_failure: Option<String> },
    /// Its check passed; its poststart hook is running.
    PostStart,
    /// Its check passed and its poststart hook ended, but it exited before it was ready
    /// (a one-shot service that completed while its poststart hook ran, or a hook failed).
    Checked,
    /// Ready; `announced` once its "ready" line is logged (dependents start after that).
    Ready { announced: bool },
}

/// A request to stop, with when its group gets SIGKILL (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    pub deadline: Option<Instant>,
}

impl Failure {
    /// In words, for a log line.
    pub(crate) fn describe(&self) -> String {
        match self {
            Failure::Spawn(e) => format!("could not be started: {e}"),
            Failure::CheckPanicked(m) => format!("its readiness check panicked: {m}"),
            Failure::Hook(Part::Setup, m) => format!("its setup hook failed: {m}"),
            Failure::Hook(_, m) => format!("its poststart hook failed: {m}"),
        }
    }
}

/// What is to happen to a service once its main process is reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// Its restart policy decides (nobody has asked for anything).
    Policy,
    /// It stays down: a stop was asked (after an exit nobody asked for, that is still a
    /// crash; it is just not restarted).
    Stay,
    /// It starts again: a restart by hand, with its setup hook if `setup`.
    Start { setup: bool },
}

impl AfterExit {
    fn asked(then_start: Option<bool>) -> AfterExit {
        then_start.map_or(AfterExit::Stay, |setup| AfterExit::Start { setup })
    }
}

/// A failure that ends startup, kept until `startup` reports it (the first one wins).
/// Exits before readiness are not here: the phase says those.
#[derive(Debug)]
pub(crate) enum Failure {
    Spawn(std::io::Error),
    CheckPanicked(String),
    Hook(Part, String),
}

/// When the service reached each step, for the timeline.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Steps {
    pub started: Option<Instant>,
    pub setup: Option<(Instant, Instant)>,
    pub spawned: Option<Instant>,
    pub checked: Option<Instant>,
    pub ready: Option<Instant>,
}

/// One service's state.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub phase: Phase,
    pub failure: Option<Failure>,
    /// A crash after readiness already returned to the user once.
    pub crash_reported: bool,
    /// The steps of its latest start.
    pub steps: Steps,
    /// The steps of its first start, once it has been started again (the startup timeline
    /// shows these).
    pub startup_steps: Option<Steps>,
    /// How many times its process has been spawned.
    pub incarnation: u32,
    /// How many times its restart policy has restarted it (since it was last started by hand).
    pub restarts: u32,
    /// How many starts by hand (`start`, `restart`) have been asked of it: each has its
    /// number, taken under the lock when it is asked (a restart's, before its process is
    /// even stopped; one that joins a start under way, or takes back a start called off,
    /// has one too). A failed one calls off only its own start (and the restarts its
    /// policy made of it), never a later one.
    pub hand_starts: u32,
}

/// What happened to a service: reported by the thread that saw it.
#[derive(Debug)]
pub(crate) enum Event {
    /// The scheduler found its needs met.
    Picked {
        at: Instant,
    },
    /// Its setup hook ended.
    SetupDone {
        span: (Instant, Instant),
        result: Result<(), String>,
    },
    Spawned {
        pid: u32,
        at: Instant,
    },
    SpawnFailed(std::io::Error),
    /// Spawned, but no thread could be made to supervise it: it was killed and reaped.
    Unsupervised(std::io::Error),
    ReadinessPassed {
        at: Instant,
    },
    ProbeFailed(String),
    CheckPanicked(String),
    PoststartDone {
        result: Result<(), String>,
        at: Instant,
    },
    /// Its "ready" line has been logged.
    Announced,
    /// News from a thread of start number `start` (its reader, prober or poststart hook):
    /// ignored if the service has been started again since.
    OfStart {
        start: u32,
        event: Box<Event>,
    },
    /// Start it again (it is settled): its setup hook too if `setup`.
    StartAgain {
        at: Instant,
        setup: bool,
    },
    /// Its restart policy's wait is over.
    RestartDue {
        at: Instant,
    },
    /// SIGSTOP / SIGCONT its group.
    Pause,
    Resume,
    /// Its restart can't happen (no thread for it, or the OS refused the new process): the
    /// exit (`status`) stands, reported like a crash.
    GiveUp {
        status: ExitStatus,
    },
    /// Its main process exited (seen before reaping).
    MainExited,
    /// What was left of its group has been killed.
    GroupKilled,
    /// Reaped, pipes drained.
    Reaped {
        status: ExitStatus,
        at: Instant,
    },
    /// Stop it: its stop signal now, SIGKILL at `deadline`. `main_exited`: its main process
    /// had already exited when the stop was asked (a crash its supervisor has not seen yet).
    /// `then_start`: start it again once reaped (a restart), with its setup hook if `true`;
    /// `None` calls off a restart asked before.
    Stop {
        deadline: Option<Instant>,
        main_exited: bool,
        then_start: Option<bool>,
    },
}

/// What the runtime must do after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Signal the group — before the lock is let go (only the lock keeps the leader unreaped).
    Signal(ProcessGroup, Signal),
    /// Go on to spawn it (the thread that reported the event does).
    Spawn,
    /// Run its poststart hook (for start number `start`) on a thread of its own.
    RunPoststart { start: u32 },
    /// Log that it is ready after `took`, then report `Announced`.
    Announce { took: Duration },
    /// Start whatever may start now.
    Schedule,
    /// A one-shot service completed: say so, then start what waited for it.
    Completed,
    /// Its restart policy restarts it once this much time has passed.
    RestartAfter(Duration),
    /// Start it (again) on a thread of its own.
    Start,
    /// Its output has ended for good (it exited and stays down): waits on its lines end.
    /// Done under the lock, like signals, so it can't pass a start that follows.
    LogsEnded,
    /// Its output goes on (it starts again): waits on its lines block again. Under the lock.
    LogsGoOn,
}

impl Event {
    /// This news, from a thread of start number `start`.
    pub(crate) fn of(self, start: u32) -> Event {
        Event::OfStart {
            start,
            event: Box::new(self),
        }
    }
}

impl ServiceState {
    pub(crate) fn new() -> ServiceState {
        ServiceState {
            phase: Phase::Waiting,
            failure: None,
            crash_reported: false,
            steps: Steps::default(),
            startup_steps: None,
            incarnation: 0,
            restarts: 0,
            hand_starts: 0,
        }
    }

    /// How its process ended, in words for a wait its end cut short ("exited (exit code
    /// 3)", "was stopped", "was never started").
    pub(crate) fn how_it_ended(&self) -> String {
        match &self.phase {
            Phase::Exited { expected: true, .. } => "was stopped".to_owned(),
            Phase::Exited { status, .. } => format!("exited ({status})"),
            // Its restart (by its policy, or by hand) could not be made.
            _ if self.incarnation > 0 => match &self.failure {
                Some(failure) => {
                    format!("exited, and was not started again: {}", failure.describe())
                }
                None => "exited, and was not started again".to_owned(),
            },
            _ => match &self.failure {
                Some(failure) => format!("was not started: {}", failure.describe()),
                None => "was not started".to_owned(),
            },
        }
    }

    /// Whether start by hand number `n` is what runs or starts now and nobody has asked it
    /// to stop (an exit seen already counts too: its policy may restart it): what calling
    /// it off after it failed may stop (its policy's restarts included).
    pub(crate) fn is_unstopped_hand_start(&self, n: u32) -> bool {
        self.hand_starts == n
            && matches!(
                self.phase,
                Phase::SettingUp { stop: None }
                    | Phase::Spawning { stop: None }
                    | Phase::Running {
                        stop: None,
                        after: AfterExit::Policy,
                        ..
                    }
                    | Phase::Exiting {
                        after: AfterExit::Policy,
                        ..
                    }
                    | Phase::Draining {
                        after: AfterExit::Policy,
                        ..
                    }
                    | Phase::Restarting { .. }
            )
    }

    fn fail(&mut self, failure: Failure) {
        self.failure.get_or_insert(failure);
    }

    /// The group to signal, while its leader is unreaped.
    pub(crate) fn group(&self) -> Option<ProcessGroup> {
        match self.phase {
            Phase::Running { group, .. } | Phase::Exiting { group, .. } => Some(group),
            _ => None,
        }
    }

    /// Its main process's pid, while that runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self.phase {
            Phase::Running { group, .. } => Some(group.leader()),
            _ => None,
        }
    }

    fn readiness(&self) -> Option<&Readiness> {
        match &self.phase {
            Phase::Running { readiness, .. }
            | Phase::Exiting { readiness, .. }
            | Phase::Draining { readiness, .. }
            | Phase::Exited { readiness, .. } => Some(readiness),
            _ => None,
        }
    }

    /// Ready now (its main process runs and its check passed, poststart included).
    /// A start of it is under way (and not called off): waiting for its needs, setting up,
    /// being spawned, or running and not ready yet.
    pub(crate) fn is_starting(&self) -> bool {
        match &self.phase {
            Phase::Waiting => true,
            Phase::SettingUp { stop } | Phase::Spawning { stop } => stop.is_none(),
            Phase::Running {
                readiness, stop, ..
            } => stop.is_none() && !matches!(readiness, Readiness::Ready { .. }),
            _ => false,
        }
    }

    /// Ready now: its check passed and no stop is asked (a restart's old process, stopping,
    /// is not the ready one).
    pub(crate) fn is_ready(&self) -> bool {
        matches!(
            self.phase,
            Phase::Running {
                readiness: Readiness::Ready { .. },
                stop: None,
                ..
            }
        )
    }

    /// Asked to stop (a stop, a restart, the bundle's shutdown), and its process not yet
    /// reaped.
    pub(crate) fn is_stopping(&self) -> bool {
        matches!(
            self.phase,
            Phase::Running { stop: Some(_), .. }
                | Phase::Exiting { expected: true, .. }
                | Phase::Draining { expected: true, .. }
        )
    }

    /// It was ready at some point.
    pub(crate) fn was_ready(&self) -> bool {
        matches!(self.readiness(), Some(Readiness::Ready { .. }))
    }

    /// How it ended, once reaped.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        match self.phase {
            // Also while its restart policy waits to start it again: this process has ended.
            Phase::Exited { status, .. } | Phase::Restarting { status } => Some(status),
            _ => None,
        }
    }

    /// Its process has been spawned (it may have exited since).
    pub(crate) fn has_started(&self) -> bool {
        matches!(
            self.phase,
            Phase::Running { .. }
                | Phase::Exiting { .. }
                | Phase::Draining { .. }
                | Phase::Exited { .. }
        )
    }

    /// It exited 0 and its poststart hook, if any, has ended.
    pub(crate) fn completed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Exited {
                status: ExitStatus::Code(0),
                ref readiness,
                ..
            } if *readiness != Readiness::PostStart
        )
    }

    /// Whether `condition` on this service holds, for a service that needs it.
    pub(crate) fn meets(&self, condition: Condition, t: &Traits) -> bool {
        match condition {
            // Announced too: its "ready" line comes before its dependents start. A one-shot
            // service that completed counts as ready too.
            Condition::Ready => {
                // Not while it is stopping (a restart's old process): its dependents start
                // once the new one is ready.
                matches!(
                    self.phase,
                    Phase::Running {
                        readiness: Readiness::Ready { announced: true },
                        stop: None,
                        ..
                    }
                ) || (t.one_shot && self.completed())
            }
            Condition::Started => self.has_started(),
            Condition::CompletedSuccessfully => self.completed(),
        }
    }

    /// Its startup is done: ready and announced, or (one-shot) completed.
    pub(crate) fn started_up(&self, t: &Traits) -> bool {
        if t.one_shot {
            self.completed()
        } else {
            matches!(
                self.phase,
                Phase::Running {
                    readiness: Readiness::Ready { announced: true },
                    stop: None,
                    ..
                }
            )
        }
    }

    /// It exited on its own after it was ready (or after its restart policy gave up): its
    /// exit status.
    pub(crate) fn crashed(&self, t: &Traits) -> Option<ExitStatus> {
        match self.phase {
            Phase::Exited { status, .. } if t.one_shot && status.success() => None,
            Phase::Exited {
                status,
                expected: false,
                ref readiness,
            } if matches!(readiness, Readiness::Ready { .. }) || self.restarts > 0 => Some(status),
            _ => None,
        }
    }

    /// It has exited and its restart policy will start it again.
    pub(crate) fn restart_pending(&self) -> bool {
        matches!(self.phase, Phase::Restarting { .. })
    }

    /// Its group is stopped by `pause`.
    pub(crate) fn is_paused(&self) -> bool {
        matches!(self.phase, Phase::Running { paused: true, .. })
    }

    /// Nothing of it runs or will run without being started again: nobody need wait for it.
    pub(crate) fn is_settled(&self) -> bool {
        matches!(
            self.phase,
            Phase::Waiting | Phase::NotStarted | Phase::Exited { .. }
        )
    }

    /// Its process group is gone (or it never had one).
    pub(crate) fn group_gone(&self) -> bool {
        matches!(
            self.phase,
            Phase::Waiting
                | Phase::NotStarted
                | Phase::Draining { .. }
                | Phase::Exited { .. }
                | Phase::Restarting { .. }
        )
    }
}

pub(crate) mod apply;

/// What reaping a service's main process means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reap {
    /// An exit nobody need hear of: asked for, a one-shot's completion, or before readiness
    /// (startup reports that one).
    Quiet,
    /// A crash (after readiness, or its restart policy gave up after `restarts`).
    Crash { restarts: u32 },
    /// Its restart policy starts it again (restart number `n`) after `after`.
    Restart { after: Duration, n: u32 },
}

#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;
