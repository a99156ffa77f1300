//! The rules of one service at a time — pause and resume, restart policies, starts and
//! restarts by hand — one table row each; nothing here starts a process.

use super::tests::*;
use super::*;
use crate::service::Restart;

fn restart_cases() -> Vec<Case> {
    vec![
        Case {
            what: "pause: SIGSTOP to its group, once",
            traits: plain(),
            events: vec![picked(), spawned(), Event::Pause],
            actions: vec![Action::Signal(group(), Signal::SIGSTOP)],
            holds: |st, _| st.is_paused(),
        },
        Case {
            what: "a second pause sends nothing",
            traits: plain(),
            events: vec![picked(), spawned(), Event::Pause, Event::Pause],
            actions: vec![],
            holds: |st, _| st.is_paused(),
        },
        Case {
            what: "resume: SIGCONT",
            traits: plain(),
            events: vec![picked(), spawned(), Event::Pause, Event::Resume],
            actions: vec![Action::Signal(group(), Signal::SIGCONT)],
            holds: |st, _| !st.is_paused(),
        },
        Case {
            what: "stopping a paused service thaws it so it can act on its stop signal",
            traits: plain(),
            events: vec![picked(), spawned(), Event::Pause, stop()],
            actions: vec![
                Action::Signal(group(), Signal::SIGTERM),
                Action::Signal(group(), Signal::SIGCONT),
            ],
            holds: |st, _| !st.is_paused(),
        },
        Case {
            what: "a crash with a restart policy: restart later, not a crash",
            traits: with(|t| t.restart = Restart::on_failure(2)),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
                reaped(1),
            ],
            actions: vec![Action::RestartAfter(Duration::from_millis(100))],
            holds: |st, t| {
                matches!(st.phase, Phase::Restarting { .. })
                    && st.crashed(t).is_none()
                    && st.restarts == 1
                    && st.group_gone()
                    && !st.is_settled()
            },
        },
        Case {
            what: "the restart is due: spawn it again, a new incarnation",
            traits: with(|t| t.restart = Restart::on_failure(2)),
            events: vec![
                picked(),
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
                Event::RestartDue { at: at() },
                spawned(),
            ],
            actions: vec![],
            holds: |st, _| st.incarnation == 2 && st.pid() == Some(PID),
        },
        Case {
            what: "the backoff doubles",
            traits: with(|t| t.restart = Restart::on_failure(3)),
            events: vec![
                picked(),
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
                Event::RestartDue { at: at() },
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
            ],
            actions: vec![Action::RestartAfter(Duration::from_millis(200))],
            holds: |st, _| st.restarts == 2,
        },
        Case {
            what: "past its maximum the policy gives up: a crash",
            traits: with(|t| t.restart = Restart::on_failure(1)),
            events: vec![
                picked(),
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
                Event::RestartDue { at: at() },
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, t| st.crashed(t) == Some(ExitStatus::Code(1)) && st.is_settled(),
        },
        Case {
            what: "on-failure leaves an exit 0 alone",
            traits: with(|t| t.restart = Restart::on_failure(3)),
            events: vec![picked(), spawned(), exit(0), Event::GroupKilled, reaped(0)],
            actions: vec![Action::LogsEnded],
            holds: |st, _| st.is_settled(),
        },
        Case {
            what: "always restarts after an exit 0 too",
            traits: with(|t| t.restart = Restart::always(3)),
            events: vec![picked(), spawned(), exit(0), Event::GroupKilled, reaped(0)],
            actions: vec![Action::RestartAfter(Duration::from_millis(100))],
            holds: |st, _| matches!(st.phase, Phase::Restarting { .. }),
        },
        Case {
            what: "a one-shot that completes is not restarted",
            traits: with(|t| {
                t.one_shot = true;
                t.restart = Restart::always(3);
            }),
            events: vec![picked(), spawned(), exit(0), Event::GroupKilled, reaped(0)],
            actions: vec![Action::Completed, Action::LogsEnded],
            holds: |st, _| st.completed(),
        },
        Case {
            what: "an asked-for stop is never restarted",
            traits: with(|t| t.restart = Restart::always(3)),
            events: vec![
                picked(),
                spawned(),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, t| st.is_settled() && st.crashed(t).is_none(),
        },
        Case {
            what: "a stop while a restart waits calls it off",
            traits: with(|t| t.restart = Restart::on_failure(3)),
            events: vec![
                picked(),
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
                stop(),
                Event::RestartDue { at: at() },
            ],
            actions: vec![],
            holds: |st, t| st.is_settled() && st.crashed(t).is_none(),
        },
        Case {
            what: "a start by hand after a crash: spawned again, the crash forgotten",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
                reaped(1),
                Event::StartAgain {
                    at: at(),
                    setup: false,
                },
            ],
            actions: vec![Action::LogsGoOn, Action::Start],
            holds: |st, t| {
                matches!(st.phase, Phase::Spawning { stop: None })
                    && st.crashed(t).is_none()
                    && !st.crash_reported
            },
        },
        Case {
            what: "a start by hand with its setup hook",
            traits: with(|t| t.setup = true),
            events: vec![
                picked(),
                setup(Ok(())),
                spawned(),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                Event::StartAgain {
                    at: at(),
                    setup: true,
                },
            ],
            actions: vec![Action::LogsGoOn, Action::Start],
            holds: |st, _| matches!(st.phase, Phase::SettingUp { stop: None }),
        },
        Case {
            what: "a start by hand of a running service does nothing",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                Event::StartAgain {
                    at: at(),
                    setup: false,
                },
            ],
            actions: vec![],
            holds: |st, _| st.pid() == Some(PID) && st.incarnation == 1,
        },
        Case {
            what: "a restart by hand: the stop signal now",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                restart(false),
            ],
            actions: vec![Action::Signal(group(), Signal::SIGTERM)],
            // The old process, stopping, is not the ready one (a wait for ready returned at
            // once, and a test talked to the dying server).
            holds: |st, t| !st.is_ready() && !st.started_up(t) && st.is_stopping(),
        },
        Case {
            what: "a restart by hand: spawned again on its supervisor's thread once reaped",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                restart(false),
                exit(0),
                Event::GroupKilled,
                reaped(0),
            ],
            actions: vec![Action::Spawn],
            holds: |st, t| {
                matches!(st.phase, Phase::Spawning { stop: None })
                    && st.crashed(t).is_none()
                    && !st.is_settled()
            },
        },
        Case {
            what: "a restart by hand with its setup hook",
            traits: with(|t| t.setup = true),
            events: vec![
                picked(),
                setup(Ok(())),
                spawned(),
                restart(true),
                exit(0),
                Event::GroupKilled,
                reaped(0),
            ],
            actions: vec![Action::Spawn],
            holds: |st, _| matches!(st.phase, Phase::SettingUp { stop: None }),
        },
        Case {
            what: "a plain stop calls off a restart asked before",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                restart(false),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, _| st.is_settled(),
        },
        Case {
            what: "a restart of a crashed service is a start on a thread of its own",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
                reaped(1),
                restart(false),
            ],
            actions: vec![Action::LogsGoOn, Action::Start],
            holds: |st, t| matches!(st.phase, Phase::Spawning { .. }) && st.crashed(t).is_none(),
        },
        Case {
            what: "a restart asked after its main process exited unasked still restarts it",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                restart(false),
                Event::GroupKilled,
                reaped(1),
            ],
            actions: vec![Action::Spawn],
            holds: |st, _| matches!(st.phase, Phase::Spawning { .. }),
        },
        Case {
            what: "a stop while a crash drains: the policy's restart is called off, no crash",
            traits: with(|t| t.restart = Restart::on_failure(3)),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
                stop(),
                reaped(1),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, t| st.is_settled() && st.crashed(t).is_none() && st.restarts == 0,
        },
        Case {
            what: "a stop while a crash drains, with no policy: still a crash",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
                stop(),
                reaped(1),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, t| st.crashed(t) == Some(ExitStatus::Code(1)),
        },
        Case {
            what: "news from an earlier start is ignored",
            traits: with(|t| t.poststart = true),
            events: vec![
                picked(),
                spawned(),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                Event::StartAgain {
                    at: at(),
                    setup: false,
                },
                spawned(),
                Event::ReadinessPassed { at: at() }.of(1),
            ],
            actions: vec![],
            holds: |st, _| st.incarnation == 2 && st.steps.checked.is_none(),
        },
    ]
}

#[test]
fn restarts_pauses_and_policies_follow_the_table() {
    for case in restart_cases() {
        let (st, actions) = drive(&case.traits, case.events);
        assert_eq!(actions, case.actions, "{}: actions", case.what);
        assert!((case.holds)(&st, &case.traits), "{}: {:?}", case.what, st);
    }
}

/// Review 3 of #15: rows that failed when they were written (see the report).
fn review3_cases() -> Vec<Case> {
    vec![
        Case {
            what: "a restart asked while its setup hook runs: spawned once the hook is done",
            traits: with(|t| t.setup = true),
            events: vec![picked(), restart(false), setup(Ok(()))],
            actions: vec![Action::Spawn],
            holds: |st, _| matches!(st.phase, Phase::Spawning { stop: None }),
        },
        Case {
            what: "a restart asked while it is being spawned: that is the fresh start, nothing stops it",
            traits: plain(),
            events: vec![picked(), stop(), restart(false), spawned()],
            actions: vec![],
            holds: |st, _| {
                matches!(
                    st.phase,
                    Phase::Running {
                        stop: None,
                        after: AfterExit::Policy,
                        ..
                    }
                )
            },
        },
        Case {
            what: "a start by hand whose setup hook fails: its output has ended again",
            traits: with(|t| t.setup = true),
            events: vec![
                picked(),
                setup(Ok(())),
                spawned(),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                Event::StartAgain {
                    at: at(),
                    setup: true,
                },
                setup(Err("no".into())),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, _| matches!(st.phase, Phase::NotStarted),
        },
        Case {
            what: "a start by hand the OS refuses: its output has ended again",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                Event::StartAgain {
                    at: at(),
                    setup: false,
                },
                Event::SpawnFailed(std::io::Error::from(std::io::ErrorKind::NotFound)),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, _| matches!(st.phase, Phase::NotStarted),
        },
        Case {
            what: "a start by hand stopped during its setup hook: its output has ended again",
            traits: with(|t| t.setup = true),
            events: vec![
                picked(),
                setup(Ok(())),
                spawned(),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                Event::StartAgain {
                    at: at(),
                    setup: true,
                },
                stop(),
                setup(Ok(())),
            ],
            actions: vec![Action::LogsEnded],
            holds: |st, _| matches!(st.phase, Phase::NotStarted),
        },
        Case {
            what: "a panic of the previous start's check, once a restart by hand began, is ignored",
            traits: with(|t| t.setup = true),
            events: vec![
                picked(),
                setup(Ok(())),
                spawned(),
                passed(),
                Event::Announced,
                restart(true),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                Event::CheckPanicked("old probe".into()).of(1),
            ],
            actions: vec![],
            holds: |st, _| matches!(st.phase, Phase::SettingUp { .. }) && st.failure.is_none(),
        },
        Case {
            what: "a panic of a crashed start's check is not kept for the policy's next start",
            traits: with(|t| t.restart = Restart::on_failure(3)),
            events: vec![
                picked(),
                spawned(),
                passed(),
                Event::Announced,
                exit(1),
                Event::GroupKilled,
                reaped(1),
                Event::CheckPanicked("old probe".into()).of(1),
            ],
            actions: vec![],
            holds: |st, _| st.restart_pending() && st.failure.is_none(),
        },
    ]
}

/// Started up (without a setup hook), stopped, reaped: then `more`.
fn after_a_stop<const N: usize>(more: [Event; N]) -> Vec<Event> {
    let mut events = vec![
        picked(),
        spawned(),
        stop(),
        exit(0),
        Event::GroupKilled,
        reaped(0),
    ];
    events.extend(more);
    events
}

/// `after_a_stop`, for a service with a setup hook.
fn after_a_stop_with_setup<const N: usize>(more: [Event; N]) -> Vec<Event> {
    let mut events = vec![picked(), setup(Ok(())), spawned(), stop(), exit(0)];
    events.extend([Event::GroupKilled, reaped(0)]);
    events.extend(more);
    events
}

/// Each start by hand has its number, taken when it is asked: a failed one calls off only
/// its own start (review of the call-off: rows that failed when they were written).
fn hand_start_cases() -> Vec<Case> {
    let start_again = |setup| Event::StartAgain { at: at(), setup };
    vec![
        Case {
            what: "a start by hand is number 1; startup's start is none",
            traits: plain(),
            events: after_a_stop([start_again(false)]),
            actions: vec![Action::LogsGoOn, Action::Start],
            holds: |st, _| st.hand_starts == 1 && st.is_unstopped_hand_start(1),
        },
        Case {
            what: "a restart of a running service takes its number when asked, before the reap",
            traits: plain(),
            events: vec![picked(), spawned(), restart(false)],
            actions: vec![Action::Signal(group(), Signal::SIGTERM)],
            holds: |st, _| {
                st.hand_starts == 1
                    && !st.is_unstopped_hand_start(0)
                    && !st.is_unstopped_hand_start(1)
            },
        },
        Case {
            what: "... and its start, at the reap, is that number (no new one)",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                restart(false),
                exit(0),
                Event::GroupKilled,
                reaped(0),
            ],
            actions: vec![Action::Spawn],
            holds: |st, _| st.hand_starts == 1 && st.is_unstopped_hand_start(1),
        },
        Case {
            what: "a restart cancelled by a stop keeps its number: a later start is another",
            traits: plain(),
            events: vec![
                picked(),
                spawned(),
                restart(false),
                stop(),
                exit(0),
                Event::GroupKilled,
                reaped(0),
                start_again(false),
            ],
            actions: vec![Action::LogsGoOn, Action::Start],
            holds: |st, _| st.hand_starts == 2 && !st.is_unstopped_hand_start(1),
        },
        Case {
            what: "a restart joining a start in its setup hook is a start of its own",
            traits: with(|t| t.setup = true),
            events: after_a_stop_with_setup([start_again(true), restart(false)]),
            actions: vec![],
            holds: |st, _| {
                matches!(st.phase, Phase::SettingUp { stop: None })
                    && st.hand_starts == 2
                    && !st.is_unstopped_hand_start(1)
            },
        },
        Case {
            what: "a start called off in its setup hook, started again: it goes on, a new number",
            traits: with(|t| t.setup = true),
            events: after_a_stop_with_setup([start_again(true), stop(), start_again(false)]),
            actions: vec![],
            holds: |st, _| {
                matches!(st.phase, Phase::SettingUp { stop: None })
                    && st.hand_starts == 2
                    && st.is_unstopped_hand_start(2)
            },
        },
        Case {
            what: "a start called off while spawning, started again: not killed once spawned",
            traits: plain(),
            events: after_a_stop([start_again(false), stop(), start_again(false), spawned()]),
            actions: vec![],
            holds: |st, _| {
                st.hand_starts == 2 && st.is_unstopped_hand_start(2) && st.incarnation == 2
            },
        },
        Case {
            what: "its policy's pending restart belongs to the start it restarts",
            traits: with(|t| t.restart = Restart::on_failure(2)),
            events: after_a_stop([
                start_again(false),
                spawned(),
                exit(1),
                Event::GroupKilled,
                reaped(1),
            ]),
            actions: vec![Action::RestartAfter(Duration::from_millis(100))],
            holds: |st, _| st.restart_pending() && st.is_unstopped_hand_start(1),
        },
    ]
}

#[test]
fn each_start_by_hand_has_its_own_number() {
    for case in hand_start_cases() {
        let (st, actions) = drive(&case.traits, case.events);
        assert_eq!(actions, case.actions, "{}: actions", case.what);
        assert!((case.holds)(&st, &case.traits), "{}: {:?}", case.what, st);
    }
}

#[test]
fn review3_transitions_follow_the_table() {
    let mut failed = Vec::new();
    for case in review3_cases() {
        let (st, actions) = drive(&case.traits, case.events);
        if actions != case.actions || !(case.holds)(&st, &case.traits) {
            failed.push(format!(
                "{}: actions {actions:?} (want {:?}), state {st:?}",
                case.what, case.actions
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
