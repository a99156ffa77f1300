//! The running bundle: its services' states, the threads that watch them, and the one place
//! where a state changes.
//!
//! Owns `Runtime`, shared by the bundle handle, service handles and every thread of a run.
//! Threads report what they saw as an `Event`; `dispatch` applies it under the lock through
//! `state::apply` (pure) and carries out the `Action`s it returns — signals before the lock
//! is let go, everything else after. Around it, one file per job: `launch` (setting up a
//! run), `spawn` (which thread starts a service, setup hook, spawn, restarts by policy),
//! `supervisor` (reading pipes, noticing the exit, reaping), `probe` (readiness probes),
//! `stop` (stopping one service or everything, the marker sweep), `control` (starting one
//! service again, pausing it), `report` (waiting until ready, and the errors it and a crash
//! give), `usercode` (which thread runs user code that may never return), `threads` (the
//! threads of a run), `pool` (the process's spare threads, which a run's threads come
//! from), and `schedule` (pure: what may start now).
//!
//! The leaves: `state` (a service's state and how an event changes it), `threads`,
//! `usercode`, and `early` (the early wake of a startup wait).
//!
//! This file imports only the leaves of the runtime (`state`, `threads`, `usercode`,
//! `early`); the files around it extend `Runtime` and import it. Carrying out an action
//! calls their methods (`start_startable`, `run_poststart`), which dispatch events in
//! turn: that is how one service's readiness starts the next without a thread hop (a
//! scheduling round asked for during a round runs after it, not inside it, so a chain
//! takes constant stack).
//! It does not know the public API (`bundle`, `handle`) nor draw anything (`inspect`).
//! Waits for one service wake at every change; waits for the whole run (startup, stopping
//! everything) only at its milestones (`Tally`, kept by `apply_locked`), and during a
//! startup at an early wake (`early`).
//!
//! Invariant: a service's phase changes only in `apply_locked` (through `state::apply`);
//! outside it only two marks change: a failure is taken from its mailbox by the wait that
//! reports it, and `crash_reported` is set by the report of a crash.

mod control;
mod early;
mod launch;
mod pool;
mod probe;
pub(crate) mod report;
pub(crate) mod schedule;
mod spawn;
pub(crate) mod state;
mod stop;
mod supervisor;
mod threads;
mod usercode;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::logs::Sink;
use crate::pidwindow::PidMark;
use crate::plan::{Plan, ServicePlan, Sources};
use crate::rundir::RunDir;

use crate::runtime::state::{Action, Event, ServiceState};
use crate::runtime::threads::Threads;
use crate::runtime::usercode::UserCodes;

/// One running bundle.
pub(crate) struct Runtime {
    /// When startup began: the timeline's zero.
    pub t0: Instant,
    pub sink: Arc<Sink>,
    pub plan: Plan,
    pub run: RunDir,
    /// How long a start may take, and how long a stop may take before SIGKILL.
    pub timeouts: Timeouts,
    states: Mutex<Vec<ServiceState>>,
    /// Woken at every change of a state.
    changed: Condvar,
    /// Woken only at a milestone of the run as a whole (see `Tally`), and by an early wake
    /// of a startup (see `early`): what waits for every service at once (startup, stopping
    /// everything) waits on it, so the many changes between milestones wake nobody (a
    /// wake-up costs the machine tens of µs).
    milestone: Condvar,
    tally: Tally,
    /// Wakes a startup wait at the start of the work on its last service's ready line
    /// rather than at its end (see `early`).
    early: early::EarlyWake,
    /// Set under the state lock when the bundle begins to stop: nothing starts after that.
    stopping: AtomicBool,
    /// Set by an interrupt (Ctrl-C) during the stop of the whole run: it doesn't wait out the
    /// grace — what is left gets SIGKILL at once.
    pub(crate) hurry: AtomicBool,
    /// Per service, where its current start's lines go.
    sources: Mutex<Vec<Arc<Sources>>>,
    threads: Threads,
    user_code: UserCodes,
    /// The big read buffers its services' readers share.
    read_buffers: supervisor::ReadBuffers,
    /// The process that started the run: its services, threads and guardian are that
    /// process's (a child forked from it has a copy of this, and none of them).
    pub pid: u32,
    /// The run's cgroup, where there is one: services are started inside it.
    cgroup: Option<Arc<Cgroup>>,
    /// The kernel's pid counters before its first service started: processes it made have
    /// pids in their window (see `pidwindow`), where the marker sweep looks first.
    born_after: Option<PidMark>,
    /// The pids of its services' main processes that have exited (each recorded once dead,
    /// before it is reaped): the marker sweep passes over those still unreaped (see
    /// `stop::sweep`).
    ended: Mutex<Vec<u32>>,
}

/// What the waits for the whole run look at in one service's state.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Marks {
    started_up: bool,
    failed: bool,
    exited: bool,
    gone: bool,
    settled: bool,
}

impl Marks {
    fn of(st: &ServiceState, t: &crate::plan::Traits) -> Marks {
        Marks {
            started_up: st.started_up(t),
            failed: st.failure.is_some(),
            exited: matches!(st.phase, state::Phase::Exited { .. }),
            gone: st.group_gone(),
            settled: st.is_settled(),
        }
    }
}

/// How many services are started up, have no process group left, are settled: kept by
/// `apply_locked`, under the state lock (atomics only to be shared). A milestone is a
/// change after which a wait for the whole run may be over: the last service started up,
/// the last group gone, the last service settled, or any service failing or exiting.
#[derive(Default)]
struct Tally {
    started_up: AtomicUsize,
    gone: AtomicUsize,
    settled: AtomicUsize,
}

impl Tally {
    /// Count `before` -> `after` for one of `n` services; whether that is a milestone.
    fn count(&self, before: Marks, after: Marks, n: usize) -> bool {
        let step = |count: &AtomicUsize, was: bool, is: bool| {
            if was == is {
                return false;
            }
            let now = if is {
                count.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                let was = count.fetch_sub(1, Ordering::Relaxed);
                debug_assert!(was > 0, "a tally went below zero");
                was.wrapping_sub(1)
            };
            now == n
        };
        let all_started = step(&self.started_up, before.started_up, after.started_up);
        let all_gone = step(&self.gone, before.gone, after.gone);
        let all_settled = step(&self.settled, before.settled, after.settled);
        all_started
            || all_gone
            || all_settled
            || (after.failed && !before.failed)
            || (after.exited && !before.exited)
    }
}

/// The bundle's timeouts, as the runtime applies them to one service as to all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub startup: Duration,
    pub shutdown: Duration,
}

/// `from + d`, or `None` (no deadline) if that is beyond what `Instant` can hold.
pub(crate) fn deadline_after(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

impl Runtime {
    fn new(
        sink: Arc<Sink>,
        plan: Plan,
        run: RunDir,
        cgroup: Option<Arc<Cgroup>>,
        t0: Instant,
        timeouts: Timeouts,
    ) -> Runtime {
        let n = plan.services.len();
        let sources = plan
            .services
            .iter()
            .map(|p| Arc::new(p.sources.clone()))
            .collect();
        let states: Vec<ServiceState> = (0..n).map(|_| ServiceState::new()).collect();
        let tally = Tally::default();
        for (st, p) in states.iter().zip(&plan.services) {
            let none = Marks {
                started_up: false,
                failed: false,
                exited: false,
                gone: false,
                settled: false,
            };
            tally.count(none, Marks::of(st, &p.traits), n);
        }
        Runtime {
            t0,
            sink,
            timeouts,
            states: Mutex::new(states),
            changed: Condvar::new(),
            milestone: Condvar::new(),
            tally,
            early: early::EarlyWake::default(),
            stopping: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            sources: Mutex::new(sources),
            run,
            threads: Threads::new(n),
            user_code: UserCodes::new(n),
            read_buffers: supervisor::ReadBuffers::new(),
            pid: std::process::id(),
            cgroup,
            born_after: PidMark::now(),
            ended: Mutex::new(Vec::new()),
            plan,
        }
    }

    /// An error unless this is the process that started the bundle: a fork's copy can
    /// look, not act (its services are the parent's, and so are the threads that would
    /// see what an act did).
    pub(crate) fn here(&self) -> crate::error::Result<()> {
        let me = std::process::id();
        match self.pid == me {
            true => Ok(()),
            false => Err(crate::error::Error::ForkedChild {
                owner: self.pid,
                pid: me,
            }),
        }
    }

    /// Every service's plan, in definition order.
    pub(crate) fn services(&self) -> &[ServicePlan] {
        &self.plan.services
    }

    /// The index of the service called `name`.
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.services().iter().position(|p| p.name == name)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<ServiceState>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the bundle has begun to stop (read under the state lock to be sure).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A service's main process `pid` has exited (it may be unreaped yet).
    pub(crate) fn record_ended(&self, pid: u32) {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }

    /// The pids `record_ended` was told of, sorted.
    pub(crate) fn ended_pids(&self) -> Vec<u32> {
        let mut pids = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pids.sort_unstable();
        pids
    }

    /// Read service `idx`'s state.
    pub(crate) fn read<R>(&self, idx: usize, f: impl FnOnce(&ServiceState) -> R) -> R {
        f(&self.lock()[idx])
    }

    /// Wake every wait on the states (to look at something outside them: an interrupt).
    pub(crate) fn wake(&self) {
        let _states = self.lock();
        self.changed.notify_all();
        self.milestone.notify_all();
    }

    /// Wait until `done` holds or the deadline passes; returns the guard either way.
    pub(crate) fn wait_until<'a>(
        &'a self,
        guard: MutexGuard<'a, Vec<ServiceState>>,
        deadline: Option<Instant>,
        done: impl FnMut(&[ServiceState]) -> bool,
    ) -> (MutexGuard<'a, Vec<ServiceState>>, bool) {
        self.wait_on(&self.changed, guard, deadline, done)
    }

    /// `wait_until` for a `done` about every service at once, that only a milestone (see
    /// `Tally`) can make true: woken at those only (and by a startup's early wake).
    pub(crate) fn wait_for_milestone<'a>(
        &'a self,
        guard: MutexGuard<'a, Vec<ServiceState>>,
        deadline: Option<Instant>,
        done: impl FnMut(&[ServiceState]) -> bool,
    ) -> (MutexGuard<'a, Vec<ServiceState>>, bool) {
        self.wait_on(&self.milestone, guard, deadline, done)
    }

    fn wait_on<'a>(
        &'a self,
        woken_by: &Condvar,
        mut guard: MutexGuard<'a, Vec<ServiceState>>,
        deadline: Option<Instant>,
        mut done: impl FnMut(&[ServiceState]) -> bool,
    ) -> (MutexGuard<'a, Vec<ServiceState>>, bool) {
        loop {
            if done(&guard) {
                return (guard, true);
            }
            guard = match deadline {
                None => woken_by.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return (guard, false);
                    }
                    woken_by
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Apply `event` to service `idx` under the held lock and send the signals it asks for
    /// right now, while the lock keeps every leader unreaped (and end or reopen its logs, so
    /// that can't pass a transition that follows). The other actions are returned,
    /// to be carried out once the lock is let go; `signalled` says whether a signal was sent.
    /// A milestone (see `Tally`) wakes its waiters here, under the lock.
    fn apply_locked(
        &self,
        states: &mut [ServiceState],
        idx: usize,
        event: Event,
    ) -> (Vec<Action>, bool) {
        let (actions, signalled, milestone) = self.apply_locked_quietly(states, idx, event);
        if milestone {
            self.milestone.notify_all();
        }
        (actions, signalled)
    }

    /// `apply_locked`, but a milestone is returned for the caller to wake its waiters once
    /// the lock is let go (a waiter woken under it would only wait again, for the lock).
    fn apply_locked_quietly(
        &self,
        states: &mut [ServiceState],
        idx: usize,
        event: Event,
    ) -> (Vec<Action>, bool, bool) {
        let traits = &self.services()[idx].traits;
        let before = Marks::of(&states[idx], traits);
        #[cfg(debug_assertions)]
        let views_before = self.whole_run_views(states);
        let mut actions = state::apply::apply(&mut states[idx], traits, event);
        let after = Marks::of(&states[idx], traits);
        let milestone = before != after && self.tally.count(before, after, states.len());
        #[cfg(debug_assertions)]
        {
            // The waits for the whole run look only at milestones: any of what they wait for
            // that comes true here must be one, or they'd sleep through it.
            let views_after = self.whole_run_views(states);
            let came_true = views_before
                .iter()
                .zip(&views_after)
                .any(|(was, is)| !was && *is);
            debug_assert!(
                !came_true || milestone,
                "a whole-run wait's condition came true without a milestone"
            );
        }
        let mut signalled = false;
        actions.retain(|action| match action {
            Action::Signal(group, signal) => {
                signalled |= group.signal(*signal);
                false
            }
            Action::LogsEnded => {
                self.sink.store.mark_ended(idx, states[idx].how_it_ended());
                false
            }
            Action::LogsGoOn => {
                self.sink.store.mark_restarted(idx);
                false
            }
            _ => true,
        });
        (actions, signalled, milestone)
    }

    /// What the waits for the whole run wait for (debug builds check that each comes true
    /// only at a milestone): startup over (every service started up, or one failed), every
    /// group gone, every service settled.
    #[cfg(debug_assertions)]
    fn whole_run_views(&self, states: &[ServiceState]) -> [bool; 3] {
        let t = |idx: usize| &self.services()[idx].traits;
        let all_up = states.iter().enumerate().all(|(i, st)| st.started_up(t(i)));
        let a_failure = states
            .iter()
            .enumerate()
            .any(|(i, st)| st.has_startup_failure(t(i)));
        [
            all_up || a_failure,
            states.iter().all(ServiceState::group_gone),
            states.iter().all(ServiceState::is_settled),
        ]
    }

    /// Apply `event` to service `idx` and carry out what follows. Returns true if the
    /// caller is to spawn the service now (`Action::Spawn`).
    pub(crate) fn dispatch(self: &Arc<Self>, idx: usize, event: Event) -> bool {
        let (actions, _, milestone) = {
            let mut states = self.lock();
            self.apply_locked_quietly(&mut states, idx, event)
        };
        if milestone {
            self.milestone.notify_all();
        }
        // Ready but not yet announced: nobody waits for that. The `Announced` that follows
        // wakes the waiters, once (a wake-up is a good part of a ready line's way to the test
        // that waits for it). Invariant: `Announce` is carried out below, on this thread,
        // with only its log line before that dispatch (which may wait for all.log's writer
        // at the memory limit: then the waiters hear later, never not at all).
        if !actions.iter().any(|a| matches!(a, Action::Announce { .. })) {
            self.changed.notify_all();
        }
        self.carry_out(idx, actions)
    }

    /// Carry out actions that need no lock. True if one of them is `Spawn`.
    fn carry_out(self: &Arc<Self>, idx: usize, actions: Vec<Action>) -> bool {
        let mut spawn = false;
        for action in actions {
            match action {
                Action::Signal(..) | Action::LogsEnded | Action::LogsGoOn => {}
                Action::Spawn => spawn = true,
                Action::RunPoststart { start } => self.run_poststart(idx, start),
                Action::Announce { took } => {
                    let plan = &self.services()[idx];
                    // A one-shot is not done until it exits 0 ("completed"): not "ready".
                    let what = if plan.traits.one_shot {
                        "running"
                    } else {
                        "ready"
                    };
                    self.sink.log(&format!(
                        "{} {what} after {:.2} s",
                        plan.name,
                        took.as_secs_f64()
                    ));
                    // Marked after the line above, so "READY" is never printed before it.
                    self.dispatch(idx, Event::Announced);
                }
                Action::Schedule => self.start_startable(),
                Action::Completed => {
                    self.sink
                        .log(&format!("{} completed", self.services()[idx].name));
                    self.start_startable();
                }
                Action::RestartAfter(after) => self.restart_later(idx, after),
                Action::Start => self.start_elsewhere(idx),
            }
        }
        spawn
    }
}
