//! Which services may start now: a pure function of what each needs and what state the
//! others are in. The runtime calls it under its lock whenever a service changes in a way a
//! dependent may wait for (ready, started, completed) and starts what it returns.

use crate::plan::{ServicePlan, Traits};
use crate::runtime::state::{Phase, ServiceState};
use crate::service::Condition;

/// The dependency graph as the scheduler sees it.
pub(crate) trait Graph {
    /// What service `idx` needs, and in which condition.
    fn needs(&self, idx: usize) -> &[(usize, Condition)];
    fn traits(&self, idx: usize) -> &Traits;
}

impl Graph for [ServicePlan] {
    fn needs(&self, idx: usize) -> &[(usize, Condition)] {
        &self[idx].needs
    }

    fn traits(&self, idx: usize) -> &Traits {
        &self[idx].traits
    }
}

/// The services still waiting whose every need is met, in definition order.
pub(crate) fn startable(graph: &(impl Graph + ?Sized), states: &[ServiceState]) -> Vec<usize> {
    states
        .iter()
        .enumerate()
        .filter(|(idx, st)| {
            matches!(st.phase, Phase::Waiting)
                && graph
                    .needs(*idx)
                    .iter()
                    .all(|&(n, c)| states[n].meets(c, graph.traits(n)))
        })
        .map(|(idx, _)| idx)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::ProcessGroup;
    use crate::runtime::state::Readiness;
    use crate::signal::{ExitStatus, Signal};

    /// A graph given as (needs, traits) per service.
    struct Table(Vec<(Vec<(usize, Condition)>, Traits)>);

    impl Graph for Table {
        fn needs(&self, idx: usize) -> &[(usize, Condition)] {
            &self.0[idx].0
        }
        fn traits(&self, idx: usize) -> &Traits {
            &self.0[idx].1
        }
    }

    fn traits(one_shot: bool) -> Traits {
        Traits {
            one_shot,
            setup: false,
            poststart: false,
            immediate: false,
            stop_signal: Signal::SIGTERM,
            started_dependents: false,
            restart: crate::service::Restart::Never,
        }
    }

    fn in_phase(phase: Phase) -> ServiceState {
        ServiceState {
            phase,
            ..ServiceState::new()
        }
    }

    fn running(readiness: Readiness) -> ServiceState {
        in_phase(Phase::Running {
            group: ProcessGroup::led_by(1),
            readiness,
            stop: None,
            paused: false,
            after: crate::runtime::state::AfterExit::Policy,
        })
    }

    fn exited(code: i32, readiness: Readiness) -> ServiceState {
        in_phase(Phase::Exited {
            status: ExitStatus::Code(code),
            expected: false,
            readiness,
        })
    }

    fn checking() -> Readiness {
        Readiness::Checking { last_failure: None }
    }

    /// Service 0 in `first`; service 1 needs it in `condition`; what may start?
    fn startable_after(first: ServiceState, one_shot: bool, condition: Condition) -> Vec<usize> {
        let graph = Table(vec![
            (vec![], traits(one_shot)),
            (vec![(0, condition)], traits(false)),
        ]);
        startable(&graph, &[first, ServiceState::new()])
    }

    #[test]
    fn which_services_may_start() {
        use Condition::{CompletedSuccessfully as Completed, Ready, Started};
        let rows: Vec<(&str, ServiceState, bool, Condition, Vec<usize>)> = vec![
            (
                "roots start first",
                ServiceState::new(),
                false,
                Ready,
                vec![0],
            ),
            (
                "not while it checks",
                running(checking()),
                false,
                Ready,
                vec![],
            ),
            (
                "not before its ready line",
                running(Readiness::Ready { announced: false }),
                false,
                Ready,
                vec![],
            ),
            (
                "once announced",
                running(Readiness::Ready { announced: true }),
                false,
                Ready,
                vec![1],
            ),
            (
                "started: once spawned",
                running(checking()),
                false,
                Started,
                vec![1],
            ),
            (
                "started: also after it exited",
                exited(1, checking()),
                false,
                Started,
                vec![1],
            ),
            (
                "completed: not while its poststart runs",
                exited(0, Readiness::PostStart),
                true,
                Completed,
                vec![],
            ),
            (
                "completed: exited 0",
                exited(0, Readiness::Checked),
                true,
                Completed,
                vec![1],
            ),
            (
                "completed: not on failure",
                exited(1, checking()),
                true,
                Completed,
                vec![],
            ),
            (
                "a completed one-shot counts as ready",
                exited(0, checking()),
                true,
                Ready,
                vec![1],
            ),
            (
                "an exited service is not ready",
                exited(0, Readiness::Ready { announced: true }),
                false,
                Ready,
                vec![],
            ),
            (
                "nothing starts twice",
                in_phase(Phase::Spawning { stop: None }),
                false,
                Started,
                vec![],
            ),
        ];
        for (what, first, one_shot, condition, expected) in rows {
            assert_eq!(
                startable_after(first, one_shot, condition),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn a_service_starts_only_when_every_need_is_met() {
        let graph = Table(vec![
            (vec![], traits(false)),
            (vec![], traits(false)),
            (
                vec![(0, Condition::Ready), (1, Condition::Started)],
                traits(false),
            ),
        ]);
        let ready = || running(Readiness::Ready { announced: true });
        let half = [ready(), ServiceState::new(), ServiceState::new()];
        assert_eq!(startable(&graph, &half), vec![1]);
        let both = [ready(), running(checking()), ServiceState::new()];
        assert_eq!(startable(&graph, &both), vec![2]);
        let stopped = [ready(), running(checking()), in_phase(Phase::NotStarted)];
        assert!(
            startable(&graph, &stopped).is_empty(),
            "a stopped service stays stopped"
        );
    }
}
