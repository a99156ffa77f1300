//! The transitions: `apply`, the one function that moves a service from phase to phase,
//! and the rules it uses (a readiness pass, a stop, a start by hand, a reaped exit).

use std::time::{Duration, Instant};

use super::*;

/// Apply `event` to a service with traits `t`; the actions to carry out.
pub(crate) fn apply(st: &mut ServiceState, t: &Traits, event: Event) -> Vec<Action> {
    let event = match event {
        // News from a start that is no longer the service's: dropped. Between a reaped
        // process and the next one's spawn, the start number is still the old one, so the
        // phase tells too: a new start is under way.
        Event::OfStart { start, .. }
            if start != st.incarnation
                || matches!(
                    st.phase,
                    Phase::Waiting
                        | Phase::SettingUp { .. }
                        | Phase::Spawning { .. }
                        | Phase::Restarting { .. }
                        | Phase::NotStarted
                ) =>
        {
            return Vec::new()
        }
        Event::OfStart { event, .. } => *event,
        event => event,
    };
    let mut actions = Vec::new();
    // Take the phase to move its data; every arm puts one back.
    let phase = std::mem::replace(&mut st.phase, Phase::Waiting);
    st.phase = match (phase, event) {
        (Phase::Waiting, Event::Picked { at }) => {
            st.steps.started = Some(at);
            if t.setup {
                Phase::SettingUp { stop: None }
            } else {
                Phase::Spawning { stop: None }
            }
        }
        (Phase::SettingUp { stop }, Event::SetupDone { span, result }) => {
            st.steps.setup = Some(span);
            match (result, stop) {
                (Err(message), _) => {
                    st.fail(Failure::Hook(Part::Setup, message));
                    actions.push(Action::LogsEnded);
                    Phase::NotStarted
                }
                (Ok(()), Some(_)) => {
                    actions.push(Action::LogsEnded);
                    Phase::NotStarted
                }
                (Ok(()), None) => {
                    actions.push(Action::Spawn);
                    Phase::Spawning { stop: None }
                }
            }
        }
        (Phase::Spawning { stop }, Event::Spawned { pid, at }) => {
            st.steps.spawned = Some(at);
            st.incarnation += 1;
            let group = ProcessGroup::led_by(pid);
            if stop.is_some() {
                // The bundle began stopping while it was spawned: don't leave it behind.
                actions.push(Action::Signal(group, Signal::SIGKILL));
                Phase::Running {
                    group,
                    readiness: Readiness::Checking { last_failure: None },
                    stop,
                    paused: false,
                    after: AfterExit::Policy,
                }
            } else {
                if t.started_dependents {
                    actions.push(Action::Schedule);
                }
                let readiness = if t.immediate {
                    passed(st, t, at, &mut actions)
                } else {
                    Readiness::Checking { last_failure: None }
                };
                Phase::Running {
                    group,
                    readiness,
                    stop,
                    paused: false,
                    after: AfterExit::Policy,
                }
            }
        }
        (phase, Event::Spawned { pid, .. }) => {
            // Spawned outside `Spawning` can't happen; if it did, nobody would supervise it.
            actions.push(Action::Signal(ProcessGroup::led_by(pid), Signal::SIGKILL));
            phase
        }
        (Phase::SettingUp { .. } | Phase::Spawning { .. }, Event::SpawnFailed(e))
        | (Phase::Running { .. }, Event::Unsupervised(e)) => {
            st.fail(Failure::Spawn(e));
            actions.push(Action::LogsEnded);
            Phase::NotStarted
        }
        (
            Phase::Running {
                group,
                readiness: Readiness::Checking { .. },
                stop,
                paused,
                after,
            },
            Event::ReadinessPassed { at },
        ) => Phase::Running {
            group,
            readiness: passed(st, t, at, &mut actions),
            stop,
            paused,
            after,
        },
        (
            Phase::Running {
                group,
                readiness: Readiness::Checking { .. },
                stop,
                paused,
                after,
            },
            Event::ProbeFailed(why),
        ) => Phase::Running {
            group,
            readiness: Readiness::Checking {
                last_failure: Some(why),
            },
            stop,
            paused,
            after,
        },
        (
            Phase::Running {
                group,
                readiness,
                stop,
                paused,
                after,
            },
            event @ (Event::Pause | Event::Resume),
        ) => {
            // Never frozen while it is being stopped: it must act on its stop signal.
            let pause = matches!(event, Event::Pause) && stop.is_none();
            if pause != paused {
                let signal = if pause {
                    Signal::SIGSTOP
                } else {
                    Signal::SIGCONT
                };
                actions.push(Action::Signal(group, signal));
            }
            Phase::Running {
                group,
                readiness,
                stop,
                paused: pause,
                after,
            }
        }
        (
            Phase::Exited { .. } | Phase::NotStarted | Phase::Restarting { .. },
            Event::StartAgain { at, setup },
        ) => start_again(st, t, at, setup, &mut actions),
        // A start called off (or stopped) before it was spawned, started again before it
        // ended: it goes on, as this new start by hand.
        (Phase::SettingUp { stop: Some(_) }, Event::StartAgain { .. }) => {
            st.hand_starts += 1;
            Phase::SettingUp { stop: None }
        }
        (Phase::Spawning { stop: Some(_) }, Event::StartAgain { .. }) => {
            st.hand_starts += 1;
            Phase::Spawning { stop: None }
        }
        (Phase::Restarting { .. } | Phase::NotStarted, Event::GiveUp { status }) => {
            // (From `NotStarted`: its policy's start was refused; that error is in the
            // warning, not kept for a later start to report.)
            st.failure = None;
            actions.push(Action::LogsEnded);
            Phase::Exited {
                status,
                expected: false,
                readiness: Readiness::Checking { last_failure: None },
            }
        }
        (Phase::Restarting { .. }, Event::RestartDue { at }) => {
            new_steps(st, at);
            actions.push(Action::Spawn);
            Phase::Spawning { stop: None }
        }
        (
            phase @ Phase::Running {
                readiness: Readiness::Checking { .. },
                ..
            },
            Event::CheckPanicked(message),
        ) => {
            st.fail(Failure::CheckPanicked(message));
            phase
        }
        (mut phase, Event::PoststartDone { result, at }) => {
            let running = matches!(phase, Phase::Running { .. });
            if let Some(readiness) = readiness_mut(&mut phase) {
                if *readiness == Readiness::PostStart {
                    *readiness = match result {
                        Err(message) => {
                            st.fail(Failure::Hook(Part::Poststart, message));
                            Readiness::Checked
                        }
                        Ok(()) if running => {
                            st.steps.ready = Some(at);
                            actions.push(Action::Announce { took: took(st, at) });
                            Readiness::Ready { announced: false }
                        }
                        Ok(()) => {
                            // It exited meanwhile: a one-shot service may count as complete now.
                            actions.push(Action::Schedule);
                            Readiness::Checked
                        }
                    };
                }
            }
            phase
        }
        (mut phase, Event::Announced) => {
            if let Some(readiness @ Readiness::Ready { .. }) = readiness_mut(&mut phase) {
                *readiness = Readiness::Ready { announced: true };
                actions.push(Action::Schedule);
            }
            phase
        }
        (
            Phase::Running {
                group,
                readiness,
                stop,
                after,
                ..
            },
            Event::MainExited,
        ) => Phase::Exiting {
            group,
            expected: stop.is_some(),
            deadline: stop.and_then(|s| s.deadline),
            readiness,
            after,
        },
        (
            Phase::Exiting {
                expected,
                readiness,
                after,
                ..
            },
            Event::GroupKilled,
        ) => Phase::Draining {
            expected,
            readiness,
            after,
        },
        (
            Phase::Draining {
                after: AfterExit::Start { setup },
                ..
            },
            Event::Reaped { at, .. },
        ) => {
            // A restart by hand: a fresh start, on this (the supervisor's) thread.
            fresh_start(st, at);
            actions.push(Action::Spawn);
            if setup && t.setup {
                Phase::SettingUp { stop: None }
            } else {
                Phase::Spawning { stop: None }
            }
        }
        (
            Phase::Draining {
                expected,
                readiness,
                after,
            },
            Event::Reaped { status, .. },
        ) => {
            match (reap(t, status, expected, &readiness, st.restarts), after) {
                (Reap::Restart { after: wait, .. }, AfterExit::Policy) => {
                    st.restarts += 1;
                    actions.push(Action::RestartAfter(wait));
                    Phase::Restarting { status }
                }
                // A restart its policy would make, called off by a stop: the same as a stop
                // while it waits for that restart (no crash: the policy took the exit in hand).
                (Reap::Restart { .. }, _) => {
                    actions.push(Action::LogsEnded);
                    Phase::Exited {
                        status,
                        expected: true,
                        readiness,
                    }
                }
                _ => {
                    if t.one_shot && status.success() {
                        actions.push(Action::Completed);
                    }
                    actions.push(Action::LogsEnded);
                    Phase::Exited {
                        status,
                        expected,
                        readiness,
                    }
                }
            }
        }
        (
            phase,
            Event::Stop {
                deadline,
                main_exited,
                then_start,
            },
        ) => stop(
            st,
            phase,
            t,
            Stop { deadline },
            main_exited,
            then_start,
            &mut actions,
        ),
        // Anything else is news that no longer applies (a readiness pass after the process
        // exited, a probe failure after it passed): ignored.
        (phase, _) => phase,
    };
    actions
}

/// A start by hand of a stopped service, on a thread of its own.
fn start_again(
    st: &mut ServiceState,
    t: &Traits,
    at: Instant,
    setup: bool,
    actions: &mut Vec<Action>,
) -> Phase {
    st.hand_starts += 1;
    fresh_start(st, at);
    actions.push(Action::LogsGoOn);
    actions.push(Action::Start);
    if setup && t.setup {
        Phase::SettingUp { stop: None }
    } else {
        Phase::Spawning { stop: None }
    }
}

/// A start by hand at `at`: a fresh count of restarts, no failure or crash kept. (Its
/// number, `hand_starts`, was taken when it was asked.)
fn fresh_start(st: &mut ServiceState, at: Instant) {
    st.restarts = 0;
    st.failure = None;
    st.crash_reported = false;
    new_steps(st, at);
}

/// The steps of a new start, begun at `at`; the first start's are kept for the startup
/// timeline.
fn new_steps(st: &mut ServiceState, at: Instant) {
    let previous = std::mem::replace(
        &mut st.steps,
        Steps {
            started: Some(at),
            ..Steps::default()
        },
    );
    st.startup_steps.get_or_insert(previous);
}

/// Its readiness check passed at `at`: on to its poststart hook, or ready.
fn passed(st: &mut ServiceState, t: &Traits, at: Instant, actions: &mut Vec<Action>) -> Readiness {
    st.steps.checked = Some(at);
    if t.poststart {
        actions.push(Action::RunPoststart {
            start: st.incarnation,
        });
        Readiness::PostStart
    } else {
        st.steps.ready = Some(at);
        actions.push(Action::Announce { took: took(st, at) });
        Readiness::Ready { announced: false }
    }
}

fn took(st: &ServiceState, at: Instant) -> Duration {
    st.steps
        .started
        .map(|t| at.saturating_duration_since(t))
        .unwrap_or_default()
}

fn readiness_mut(phase: &mut Phase) -> Option<&mut Readiness> {
    match phase {
        Phase::Running { readiness, .. }
        | Phase::Exiting { readiness, .. }
        | Phase::Draining { readiness, .. }
        | Phase::Exited { readiness, .. } => Some(readiness),
        _ => None,
    }
}

fn stop(
    st: &mut ServiceState,
    phase: Phase,
    t: &Traits,
    asked: Stop,
    main_exited: bool,
    then: Option<bool>,
    actions: &mut Vec<Action>,
) -> Phase {
    if then.is_some()
        && matches!(
            phase,
            Phase::Running { .. } | Phase::Exiting { .. } | Phase::Draining { .. }
        )
    {
        // A restart: its start comes once the process is reaped, but its number is taken
        // now, so no other start (another thread's, made in between) can be taken for it.
        st.hand_starts += 1;
    }
    match phase {
        Phase::Waiting => {
            actions.push(Action::LogsEnded);
            Phase::NotStarted
        }
        // A restart of a service being started is that start (a fresh one already); a stop
        // asked before is called off by it.
        Phase::SettingUp { .. } if then.is_some() => {
            st.hand_starts += 1;
            Phase::SettingUp { stop: None }
        }
        Phase::Spawning { .. } if then.is_some() => {
            st.hand_starts += 1;
            Phase::Spawning { stop: None }
        }
        Phase::SettingUp { stop } => Phase::SettingUp {
            stop: stop.or(Some(asked)),
        },
        Phase::Spawning { stop } => Phase::Spawning {
            stop: stop.or(Some(asked)),
        },
        Phase::Running {
            group,
            readiness,
            stop,
            paused,
            ..
        } => {
            actions.push(Action::Signal(group, t.stop_signal));
            if paused {
                // A stopped process can't act on its stop signal until it runs again.
                actions.push(Action::Signal(group, Signal::SIGCONT));
            }
            // A main process that already exited did so unasked: a crash, even if its
            // supervisor hasn't noticed yet.
            let stop = match stop {
                None if main_exited => None,
                None => Some(asked),
                kept => kept,
            };
            Phase::Running {
                group,
                readiness,
                stop,
                paused: false,
                after: AfterExit::asked(then),
            }
        }
        Phase::Exiting {
            group,
            expected,
            deadline,
            readiness,
            ..
        } => {
            // The rest of its group gets the stop signal; whether the exit was expected was
            // decided when it was seen.
            actions.push(Action::Signal(group, t.stop_signal));
            Phase::Exiting {
                group,
                expected,
                deadline,
                readiness,
                after: AfterExit::asked(then),
            }
        }
        Phase::Draining {
            expected,
            readiness,
            ..
        } => Phase::Draining {
            expected,
            readiness,
            after: AfterExit::asked(then),
        },
        // A restart of a service that is not running: just a start.
        Phase::Exited { .. } | Phase::NotStarted | Phase::Restarting { .. } if then.is_some() => {
            start_again(st, t, Instant::now(), then == Some(true), actions)
        }
        // Its restart policy's restart is called off: the bundle (or the test) stops it.
        Phase::Restarting { status } => {
            actions.push(Action::LogsEnded);
            Phase::Exited {
                status,
                expected: true,
                readiness: Readiness::Checking { last_failure: None },
            }
        }
        other => other,
    }
}

/// What reaping a main process that exited with `status` means.
pub(super) fn reap(
    t: &Traits,
    status: ExitStatus,
    expected: bool,
    readiness: &Readiness,
    restarts: u32,
) -> Reap {
    if expected || (t.one_shot && status.success()) {
        return Reap::Quiet;
    }
    match t.restart.next(status.success(), restarts) {
        Some(after) => Reap::Restart {
            after,
            n: restarts + 1,
        },
        None if matches!(readiness, Readiness::Ready { .. }) || restarts > 0 => {
            // "Restarted N times: giving up" only when the policy would restart this exit.
            let applies = t.restart.next(status.success(), 0).is_some();
            Reap::Crash {
                restarts: if applies { restarts } else { 0 },
            }
        }
        None => Reap::Quiet,
    }
}

impl ServiceState {
    /// What reaping the main process it is draining will mean (said in the log before the
    /// state changes, so whoever sees the change finds the line).
    pub(crate) fn on_reap(&self, t: &Traits, status: ExitStatus) -> Reap {
        match self.phase {
            Phase::Draining {
                expected,
                ref readiness,
                after: AfterExit::Policy,
            } => reap(t, status, expected, readiness, self.restarts),
            // Asked to stay down: only a crash is news (no restart).
            Phase::Draining {
                expected,
                ref readiness,
                after: AfterExit::Stay,
            } => match reap(t, status, expected, readiness, self.restarts) {
                // The restart its policy would make is called off: no news.
                Reap::Restart { .. } => Reap::Quiet,
                other => other,
            },
            _ => Reap::Quiet,
        }
    }
}
