//! Every rule of a service's lifecycle from its start to its stop, one table row each;
//! nothing here starts a process. Restarts, pauses and policies: `restart_tests`.
use super::apply::apply;
use super::*;
use crate::runtime::report::{StartupFailure, Waiting};
use crate::service::Restart;

pub(super) const PID: u32 = 4242;

/// One instant for every event, so durations come out exact.
pub(super) fn at() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

pub(super) fn group() -> ProcessGroup {
    ProcessGroup::led_by(PID)
}

pub(super) fn plain() -> Traits {
    Traits {
        one_shot: false,
        setup: false,
        poststart: false,
        immediate: false,
        stop_signal: Signal::SIGTERM,
        started_dependents: false,
        restart: Restart::Never,
    }
}

pub(super) fn with(f: impl FnOnce(&mut Traits)) -> Traits {
    let mut t = plain();
    f(&mut t);
    t
}

pub(super) fn picked() -> Event {
    Event::Picked { at: at() }
}
pub(super) fn spawned() -> Event {
    Event::Spawned { pid: PID, at: at() }
}
pub(super) fn passed() -> Event {
    Event::ReadinessPassed { at: at() }
}
pub(super) fn setup(result: Result<(), String>) -> Event {
    Event::SetupDone {
        span: (at(), at()),
        result,
    }
}
pub(super) fn post_ok() -> Event {
    Event::PoststartDone {
        result: Ok(()),
        at: at(),
    }
}
pub(super) fn stop() -> Event {
    Event::Stop {
        deadline: None,
        main_exited: false,
        then_start: None,
    }
}
/// The main process exits (its status is known once reaped: `reaped`).
pub(super) fn exit(_code: i32) -> Event {
    Event::MainExited
}
pub(super) fn reaped(code: i32) -> Event {
    Event::Reaped {
        status: ExitStatus::Code(code),
        at: at(),
    }
}
pub(super) fn restart(setup: bool) -> Event {
    Event::Stop {
        deadline: None,
        main_exited: false,
        then_start: Some(setup),
    }
}

/// Apply `events` in order; the final state and the actions of the last event.
pub(super) fn drive(t: &Traits, events: Vec<Event>) -> (ServiceState, Vec<Action>) {
    let mut st = ServiceState::new();
    let mut last = Vec::new();
    for event in events {
        last = apply(&mut st, t, event);
    }
    (st, last)
}

pub(super) struct Case {
    pub what: &'static str,
    pub traits: Traits,
    pub events: Vec<Event>,
    /// The actions the last event asks for.
    pub actions: Vec<Action>,
    pub holds: fn(&ServiceState, &Traits) -> bool,
}

pub(super) fn ready_announced(st: &ServiceState, t: &Traits) -> bool {
    st.is_ready() && st.started_up(t)
}

pub(super) fn one_shot_with_poststart() -> Traits {
    with(|t| {
        t.one_shot = true;
        t.immediate = true;
        t.poststart = true;
    })
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "picked without setup: spawned at once by whoever picked it",
            traits: plain(),
            events: vec![picked()],
            actions: vec![],
            holds: |st, _| matches!(st.phase, Phase::Spawning { stop: None }),
        },
        Case {
            what: "picked with setup: its hook runs first",
            traits: with(|t| t.setup = true),
            events: vec![picked()],
            actions: vec![],
            holds: |st, _| matches!(st.phase, Phase::SettingUp { stop: None }),
        },
        Case {
            what: "setup done: go on to spawn",
            traits: with(|t| t.setup = true),
            events: vec![picked(), setup(Ok(()))],
            actions: vec![Action::Spawn],
            holds: |st, _| matches!(st.phase, Phase::Spawning { .. }),
        },
        Case {
            what: "setup failed: never started, the failure kept for startup",
            traits: with(|t| t.setup = true),
            events: vec![picked(), setup(Err("initdb failed".into()))],
            actions: vec![Action::LogsEnded],
            holds: |st, _| {
                matches!(st.phase, Phase::NotStarted)
                    && matches!(&st.failure, Some(Failure::Hook(Part::Setup, m)) if m == "initdb failed")
            },
        },
        Case {
            what: "a stop asked during setup: not spawned at all",
            traits: with(|t| t.setup = true),
            events: vec![picked(), stop(), setup(Ok(()))],
            actions: vec![Action::LogsEnded],
            holds: |st, _| matches!(st.phase, Phase::NotStarted) && st.failure.is_none(),
        },
        Case {
            what: "a spawn that completes after a stop was asked is killed at once",
            traits: with(|t| t.immediate = true),
            events: vec![picked(), stop(), spawned()],
            actions: vec![Action::Signal(group(), Signal::SIGKILL)],
            holds: |st, _| !st.is_ready() && st.group() == Some(group()),
        },
        Case {
            what: "the exit of a process killed that way is expected",
            traits: plain(),
            events: vec![picked(), stop(), spawned(), Event::MainExited],
            actions: vec![],
            holds: |st, _| matches!(st.phase, Phase::Exiting { expected: true, .. }),
        },
        Case {
            what: "spawned: running, checking, signallable",
            traits: plain(),
            events: vec![picked(), spawned()],
            actions: vec![],
            holds: |st, _| {
                st.pid() == Some(PID) && st.has_started() && !st.is_ready() && st.group().is_some()
            },
        },
        Case {
            what: "spawned with services waiting for its start: schedule",
            traits: with(|t| t.started_dependents = true),
            events: vec![picked(), spawned()],
            actions: vec![Action::Schedule],
            holds: |st, _| st.meets(Condition::Started, &plain()),
        },
        Case {
            what: "spawned with no check: ready at once, announced next",
            traits: with(|t| t.immediate = true),
            events: vec![picked(), spawned()],
            actions: vec![Action::Announce {
                took: Duration::ZERO,
            }],
            holds: |st, t| st.is_ready() && !st.started_up(t),
        },
        Case {
            what: "a dependent on readiness waits for the ready line",
            traits: plain(),
            events: vec![picked(), spawned(), passed()],
            actions: vec![Action::Announce {
                took: Duration::ZERO,
            }],
            holds: |st, t| st.is_ready() && !st.meets(Condition::Ready, t),
        },
        Case {
            what: "announced: dependents may start",
            traits: plain(),
            events: vec![picked(), spawned(), passed(), Event::Announced],
            actions: vec![Action::Schedule],
            holds: ready_announced,
        },
        Case {
            what: "check passed with a poststart hook: the hook runs, not ready yet",
            traits: with(|t| t.poststart = true),
            events: vec![picked(), spawned(), passed()],
            actions: vec![Action::RunPoststart { start: 1 }],
            holds: |st, _| !st.is_ready(),
        },
        Case {
            what: "poststart done while running: ready",
            traits: with(|t| t.poststart = true),
            events: vec![picked(), spawned(), passed(), post_ok(), Event::Announced],
            actions: vec![Action::Schedule],
            holds: ready_announced,
        },
        Case {
            what: "a readiness pass outside running is ignored",
            traits: plain(),
            events: vec![picked(), spawned(), exit(1), passed()],
            actions: vec![],
            holds: |st, _| !st.was_ready() && st.steps.checked.is_none(),
        },
        Case {
            what: "a readiness pass before spawning is ignored",
            traits: plain(),
            events: vec![picked(), passed()],
            actions: vec![],
            holds: |st, _| matches!(st.phase, Phase::Spawning { .. }),
        },
        Case {
            what: "a second readiness pass does nothing more",
            traits: plain(),
            events: vec![picked(), spawned(), passed(), Event::Announced, passed()],
            actions: vec![],
            holds: ready_announced,
        },
        Case {
            what: "a stop asked after the main process exited does not make that exit expected",
            traits: plain(),
            events: vec![picked(), spawned(), passed(), exit(3), stop()],
            actions: vec![Action::Signal(group(), Signal::SIGTERM)],
            holds: |st, _| {
                matches!(
                    st.phase,
                    Phase::Exiting {
                        expected: false,
                        ..
                    }
                )
            },
        },
        Case {
            what: "a stop asked when the main process had already exited unseen: a crash",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                Event::Stop {
                    deadline: None,
                    main_exited: true,
                    then_start: None,
                },
                exit(3),
                Event::GroupKilled,
                reaped(3),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, t| st.crashed(t) == Some(ExitStatus::Code(3)),
        },
        Case {
            what: "a stopped service's exit is expected: no crash",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, t| st.crashed(t).is_none() && st.exit_status() == Some(ExitStatus::Code(0)),
        },
        Case {
            what: "the stop signal is the service's own",
            traits: with(|t| t.stop_signal = Signal::SIGINT),
            events: vec![picked(), spawned(), stop()],
            actions: vec![Action::Signal(group(), Signal::SIGINT)],
            holds: |st, _| matches!(st.phase, Phase::Running { stop: Some(_), .. }),
        },
        Case {
            what: "a crash after ready is a crash once reaped, said while draining",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
            ],
            actions: vec![],
            holds: |st, t| {
                st.on_reap(t, ExitStatus::Code(1)) == Reap::Crash { restarts: 0 }
                    && st.crashed(t).is_none()
                    && st.group().is_none()
            },
        },
        Case {
            what: "a one-shot that exited 0 with its poststart still running is not done",
            traits: one_shot_with_poststart(),
            events: vec![picked(), spawned(), exit(0), Event::GroupKilled, reaped(0)],
            actions: vec![Action::Completed, Action::LogsEnded],
            holds: |st, t| {
                !st.completed()
                    && !st.started_up(t)
                    && !st.meets(Condition::CompletedSuccessfully, t)
            },
        },
        Case {
            what: "... and is done when its poststart ends",
            traits: one_shot_with_poststart(),
            events: vec![
                picked(),
                spawned(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                post_ok(),
            ],
            actions: vec![Action::Schedule],
            holds: |st, t| st.completed() && st.started_up(t) && st.meets(Condition::Ready, t),
        },
        Case {
            what: "a one-shot that exits non-zero never completes",
            traits: with(|t| {
                t.one_shot = true;
                t.immediate = true;
            }),
            events: vec![picked(), spawned(), exit(1), Event::GroupKilled, reaped(1)],
            actions: vec![Action::LogsEnded],
            holds: |st, t| !st.completed() && st.crashed(t) == Some(ExitStatus::Code(1)),
        },
        Case {
            what: "a stop before its needs were met: it never starts",
            traits: plain(),
            events: vec![stop(), picked()],
            actions: vec![],
            holds: |st, _| matches!(st.phase, Phase::NotStarted) && st.is_settled(),
        },
        Case {
            what: "a failed spawn is kept for startup",
            traits: plain(),
            events: vec![
                picked(),
                Event::SpawnFailed(std::io::Error::other("ENOENT")),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, _| matches!(st.failure, Some(Failure::Spawn(_))) && st.is_settled(),
        },
        Case {
            what: "the first failure wins",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                Event::CheckPanicked("first".into()),
                Event::CheckPanicked("second".into()),
            ],
            actions: vec![],
            holds: |st, _| matches!(&st.failure, Some(Failure::CheckPanicked(m)) if m == "first"),
        },
        Case {
            what: "a probe failure is kept while checking, to say why in a timeout",
            traits: plain(),
            events: vec![picked(), spawned(), Event::ProbeFailed("refused".into())],
            actions: vec![],
            holds: |st, t| matches!(st.waiting_for(t), Some(Waiting::Check(Some(w))) if w == "refused"),
        },
        Case {
            what: "no pid once the group is killed: nothing left to signal",
            traits: plain(),
            events: vec![picked(), spawned(), stop(), exit(0), Event::GroupKilled],
            actions: vec![],
            holds: |st, _| {
                st.group().is_none() && st.pid().is_none() && st.group_gone() && !st.is_settled()
            },
        },
        Case {
            what: "a stop once exiting signals what is left of the group",
            traits: plain(),
            events: vec![picked(), spawned(), exit(0), stop()],
            actions: vec![Action::Signal(group(), Signal::SIGTERM)],
            holds: |st, _| st.pid().is_none() && st.group() == Some(group()),
        },
    ]
}

#[test]
fn every_transition_follows_the_table() {
    for case in cases() {
        let (st, actions) = drive(&case.traits, case.events);
        assert_eq!(actions, case.actions, "{}: actions", case.what);
        assert!((case.holds)(&st, &case.traits), "{}: {:?}", case.what, st);
    }
}

#[test]
fn an_exit_before_ready_is_a_startup_failure_and_after_ready_another() {
    let t = plain();
    let (mut st, _) = drive(
        &t,
        vec![picked(), spawned(), exit(2), Event::GroupKilled, reaped(2)],
    );
    assert!(matches!(
        st.take_startup_failure(&t),
        Some(StartupFailure::ExitedBeforeReady(ExitStatus::Code(2)))
    ));
    let (mut st, _) = drive(
        &t,
        vec![
            picked(),
            spawned(),
            passed(),
            exit(2),
            Event::GroupKilled,
            reaped(2),
        ],
    );
    assert!(matches!(
        st.take_startup_failure(&t),
        Some(StartupFailure::ExitedAfterReady(ExitStatus::Code(2)))
    ));
}

#[test]
fn a_failure_is_reported_once_then_the_phase_speaks() {
    let t = plain();
    let (mut st, _) = drive(
        &t,
        vec![picked(), spawned(), Event::CheckPanicked("boom".into())],
    );
    assert!(matches!(
        st.take_startup_failure(&t),
        Some(StartupFailure::Failed(Failure::CheckPanicked(_)))
    ));
    assert!(st.take_startup_failure(&t).is_none());
}
