//! Starting services: which thread starts each, its setup hook, the spawn itself, its
//! poststart hook, the log sources of each start (so a line says which start wrote it), and
//! the wait before a restart by its policy.
//!
//! Owns making the supervisor threads (in advance for services that will start later, so a
//! chain of services never waits for a thread to be created; see `threads`), the rule "the
//! first service that may start runs on the thread that found it may, the others on their
//! own", and scheduling rounds that loop rather than nest (a chain takes constant stack). A
//! restart by hand of a running service starts the next process on its supervisor thread
//! (of a stopped one: on a thread of its own). What may start is
//! `schedule`'s decision; what happens to a service's state is `state`'s.
//! The spawn itself is `ExecEnv::spawn_service`: posix_spawn with no `pre_exec`, even when
//! the caller blocks signals (see `exec::spawn`).

use std::cell::Cell;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::exec::ServiceChild;
use crate::guardian;
use crate::hooks::{Hook, HookContext};
use crate::logs::{Part, Source, Stream};
use crate::plan::{ServicePlan, Sources};
use crate::runtime::schedule;
use crate::runtime::state::{Event, Phase, ServiceState};
use crate::runtime::supervisor::supervise;
use crate::runtime::threads::{Started, Task};
use crate::runtime::usercode::UserCode;
use crate::runtime::{deadline_after, Runtime};
use crate::signal::ExitStatus;

thread_local! {
    /// The runtime this thread runs a scheduling round for (its address, 0 for none), and
    /// whether another round was asked for meanwhile.
    static SCHEDULING: Cell<(usize, bool)> = const { Cell::new((0, false)) };
}

impl Runtime {
    /// Start every service whose needs are met (and that isn't started yet). Used for the
    /// roots at startup and whenever a service changes in a way a dependent may wait for.
    ///
    /// Called again on this thread while a round runs (a service started here got ready at
    /// once, and the next of a chain may start), it asks the running round for another
    /// instead of recursing: a chain of any length starts in constant stack.
    pub(crate) fn start_startable(self: &Arc<Self>) {
        let me = Arc::as_ptr(self) as usize;
        let outer = SCHEDULING.get();
        if outer.0 == me {
            SCHEDULING.set((me, true));
            return;
        }
        /// Puts back the round this thread was in (maybe another bundle's), even on a panic.
        struct Restore((usize, bool));
        impl Drop for Restore {
            fn drop(&mut self) {
                SCHEDULING.set(self.0);
            }
        }
        let _restore = Restore(outer);
        loop {
            SCHEDULING.set((me, false));
            self.schedule_round();
            if !SCHEDULING.get().1 {
                return;
            }
        }
    }

    /// Pick what may start now and start it.
    fn schedule_round(self: &Arc<Self>) {
        let picked = {
            let mut states = self.lock();
            let picked = schedule::startable(self.services(), &states);
            let at = Instant::now();
            for &idx in &picked {
                // Picking asks for nothing to be done: the start is arranged below.
                let _ = self.apply_locked(&mut states, idx, Event::Picked { at });
            }
            picked
        };
        if picked.is_empty() {
            return;
        }
        self.changed.notify_all();
        // Services with a setup hook start on their own thread (a hook may take long, and
        // this may be another service's reader); of the rest, the first starts right here
        // (no thread to wake) and the others in parallel.
        let (hooked, plain): (Vec<usize>, Vec<usize>) = picked
            .into_iter()
            .partition(|&idx| self.services()[idx].setup.is_some());
        for idx in hooked {
            self.start_elsewhere(idx);
        }
        if let Some((&first, rest)) = plain.split_first() {
            for &idx in rest {
                self.start_elsewhere(idx);
            }
            self.start_here(first);
        }
    }

    /// Start service `idx` on this thread: spawn it here, then hand the child to its
    /// supervisor thread. Spawning first hides that thread's wake-up or creation behind
    /// the program's own start-up, so a chain of services never waits on a thread.
    fn start_here(self: &Arc<Self>, idx: usize) {
        let Some(started) = self.start(idx) else {
            return;
        };
        let pid = started.child.id();
        if let Err(e) = self.give(idx, Task::Supervise(started)) {
            // Without its thread nobody would reap or read it: kill it, forget its pgid
            // (it is about to be reaped), reap it, report why.
            crate::exec::ProcessGroup::led_by(pid).kill();
            guardian::forget(pid);
            // Out of `Running` before it is reaped: nobody may signal its group after.
            self.dispatch(idx, Event::Unsupervised(e));
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        }
    }

    /// Start service `idx` on its own supervisor thread (spawn included), so several
    /// services start in parallel.
    pub(crate) fn start_elsewhere(self: &Arc<Self>, idx: usize) {
        if let Err(e) = self.give(idx, Task::Start) {
            self.dispatch(idx, Event::SpawnFailed(e));
        }
    }

    /// Give a task to the service's supervisor thread: the one made in advance by
    /// `prepare_supervisors`, or a new one.
    fn give(self: &Arc<Self>, idx: usize, task: Task) -> std::io::Result<()> {
        let waiting = self.threads.workers().get_mut(idx).and_then(Option::take);
        let task = match waiting {
            Some(tx) => match tx.send(task) {
                Ok(()) => return Ok(()),
                Err(returned) => returned.0,
            },
            None => task,
        };
        let runtime = Arc::clone(self);
        self.threads.spawn(
            format!("hitchserve:{}", self.services()[idx].name),
            move || runtime.run_task(idx, task),
        )
    }

    /// Make the supervisor threads of services not started yet, so that starting one later
    /// doesn't wait for a thread to be created. Each waits for its task, or for the bundle
    /// to stop (its sender dropped).
    pub(crate) fn prepare_supervisors(self: &Arc<Self>) {
        let pending: Vec<usize> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, st)| matches!(st.phase, Phase::Waiting))
            .map(|(idx, _)| idx)
            .collect();
        for idx in pending {
            let (tx, rx) = mpsc::channel::<Task>();
            let runtime = Arc::clone(self);
            let spawned = self.threads.spawn(
                format!("hitchserve:{}", self.services()[idx].name),
                move || {
                    if let Ok(task) = rx.recv() {
                        runtime.run_task(idx, task);
                    }
                },
            );
            if spawned.is_ok() {
                if let Some(slot) = self.threads.workers().get_mut(idx) {
                    *slot = Some(tx);
                }
            }
        }
    }

    fn run_task(self: &Arc<Self>, idx: usize, task: Task) {
        let mut task = task;
        loop {
            let started = match task {
                Task::Supervise(started) => started,
                Task::Start => {
                    let Some(started) = self.start(idx) else {
                        return;
                    };
                    started
                }
            };
            // A restart by hand starts the next process on this same thread.
            if !supervise(self, idx, started) {
                return;
            }
            task = Task::Start;
        }
    }

    /// Run service `idx`'s setup hook if its phase says so, then spawn it. `None` if it is
    /// not to run (its state says why); else the child and where its lines go.
    fn start(self: &Arc<Self>, idx: usize) -> Option<Started> {
        let plan = &self.services()[idx];
        let (setting_up, spawning, incarnation) = self.read(idx, |st| {
            (
                matches!(st.phase, Phase::SettingUp { .. }),
                matches!(st.phase, Phase::Spawning { .. }),
                st.incarnation + 1,
            )
        });
        if !setting_up && !spawning {
            // Nothing asked for this start (or it was called off meanwhile).
            return None;
        }
        let sources = self.sources_for(idx, incarnation);
        if let (true, Some(setup)) = (setting_up, &plan.setup) {
            self.sink.log(&format!("Setting up {}", plan.name));
            let began = Instant::now();
            let result = self.run_hook(idx, setup, &sources.setup, UserCode::Setup);
            let span = (began, Instant::now());
            if !self.dispatch(idx, Event::SetupDone { span, result }) {
                return None;
            }
        }
        if incarnation > 1 {
            // Its log marks where each start begins.
            self.sink.log(&format!(
                "Starting {} (incarnation {incarnation})",
                plan.name
            ));
        } else {
            self.sink.log(&format!("Starting {}", plan.name));
        }
        // Before the spawn: what is there already is not this start's doing.
        let checker = Arc::new(plan.ready.checker(&plan.exec.dir));
        match spawn_child(plan, self.cgroup.as_deref()) {
            Ok((child, inside)) => {
                let pid = child.id();
                if !inside {
                    plan.exec
                        .outside
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                guardian::watch(&self.run.id, pid, inside);
                let at = Instant::now();
                self.dispatch(idx, Event::Spawned { pid, at });
                Some(Started {
                    child,
                    sources,
                    checker,
                })
            }
            Err(e) => {
                self.dispatch(idx, Event::SpawnFailed(e));
                None
            }
        }
    }

    /// Where the lines of start number `incarnation` of service `idx` go: new sources for a
    /// later start (its lines say which start wrote them), kept as the service's current.
    fn sources_for(&self, idx: usize, incarnation: u32) -> Arc<Sources> {
        let mut table = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if incarnation <= table[idx].out.incarnation {
            return Arc::clone(&table[idx]);
        }
        let store = &self.sink.store;
        let name = &self.services()[idx].name;
        let source = |part, stream| store.source_for(idx, name, part, stream, incarnation);
        let made = (|| {
            Some(Sources {
                out: source(Part::Main, Stream::Stdout)?,
                err: source(Part::Main, Stream::Stderr)?,
                setup: (
                    source(Part::Setup, Stream::Stdout)?,
                    source(Part::Setup, Stream::Stderr)?,
                ),
                post: (
                    source(Part::Poststart, Stream::Stdout)?,
                    source(Part::Poststart, Stream::Stderr)?,
                ),
            })
        })();
        match made {
            Some(made) => table[idx] = Arc::new(made),
            None => self.sink.warn(&format!(
                "the log store can name no more sources: lines of `{name}` from its start \
                 {incarnation} on are marked as start {}",
                table[idx].out.incarnation
            )),
        }
        Arc::clone(&table[idx])
    }

    /// The sources service `idx`'s current start writes to.
    pub(crate) fn current_sources(&self, idx: usize) -> Arc<Sources> {
        let table = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&table[idx])
    }

    /// Its restart policy restarts service `idx` after `after`: wait on a thread of its own
    /// (a stop or a start by hand meanwhile calls it off), then start and supervise it there.
    pub(crate) fn restart_later(self: &Arc<Self>, idx: usize, after: Duration) {
        let runtime = Arc::clone(self);
        let name = format!("hitchserve:{}:restart", self.services()[idx].name);
        let spawned = self.threads.spawn(name, move || {
            let due = deadline_after(Instant::now(), after);
            // This restart's wait only: a later one (after a start by hand and another
            // crash) has a timer of its own.
            let n = runtime.read(idx, |st| st.restarts);
            let mine = |st: &ServiceState| {
                matches!(st.phase, Phase::Restarting { .. }) && st.restarts == n
            };
            let (mut states, _) = runtime.wait_until(runtime.lock(), due, |s| {
                !mine(&s[idx]) || runtime.is_stopping()
            });
            if !mine(&states[idx]) {
                return;
            }
            // Under the lock that `stop_all` sets `stopping` under: a bundle that has
            // begun to stop gets no new process (its stop pass may have missed this
            // service, reaped after it).
            let event = if runtime.is_stopping() {
                Event::Stop {
                    deadline: None,
                    main_exited: true,
                    then_start: None,
                }
            } else {
                // What the crashed process started that left its group (a `setsid` worker)
                // would hold the port the new one needs: it goes now, under the lock, so no
                // new process of the service (a start by hand) can be among those found.
                runtime.sweep_service(idx);
                Event::RestartDue { at: Instant::now() }
            };
            let exited = match states[idx].phase {
                Phase::Restarting { status } => Some(status),
                _ => None,
            };
            let (actions, _) = runtime.apply_locked(&mut states, idx, event);
            drop(states);
            runtime.changed.notify_all();
            if !runtime.carry_out(idx, actions) {
                return;
            }
            match runtime.start(idx) {
                Some(started) => runtime.run_task(idx, Task::Supervise(started)),
                None => {
                    // Nobody waits for this start to hear that it failed: say so, and
                    // let the exit stand, reported like a crash.
                    let refused = runtime.read(idx, |st| match (&st.phase, &st.failure) {
                        (Phase::NotStarted, Some(failure)) => Some(failure.describe()),
                        _ => None,
                    });
                    if let (Some(why), Some(status)) = (refused, exited) {
                        runtime.give_up(idx, status, &why);
                    }
                }
            }
        });
        match spawned {
            Ok(()) => {}
            Err(e) => {
                let status = self.read(idx, |st| match st.phase {
                    Phase::Restarting { status } => Some(status),
                    _ => None,
                });
                if let Some(status) = status {
                    self.give_up(idx, status, &format!("no thread for it ({e})"));
                }
            }
        }
    }

    /// Its restart policy can't restart service `idx` (`why`): its exit (`status`) stands,
    /// reported like a crash.
    fn give_up(self: &Arc<Self>, idx: usize, status: ExitStatus, why: &str) {
        self.sink.warn(&format!(
            "could not restart `{}`: {why}; its exit ({status}) stands",
            self.services()[idx].name
        ));
        self.dispatch(idx, Event::GiveUp { status });
    }

    /// Run a hook of service `idx` with its labelled output; a failure as a message.
    fn run_hook(
        &self,
        idx: usize,
        hook: &Hook,
        sources: &(Arc<Source>, Arc<Source>),
        what: UserCode,
    ) -> Result<(), String> {
        let plan = &self.services()[idx];
        let pid = self.read(idx, |st| st.pid());
        let ctx = HookContext {
            exec: &plan.exec,
            run_dir: &self.run.path,
            sink: &self.sink,
            out: &sources.0,
            err: &sources.1,
            ports: &self.plan.ports,
            pid,
        };
        let _user = self.user_code.entering(idx, what);
        hook.call(&ctx)
    }

    /// Run service `idx`'s poststart hook on a thread of its own (the thread that saw it
    /// pass its check may be its reader, which must keep draining its pipes).
    pub(crate) fn run_poststart(self: &Arc<Self>, idx: usize, start: u32) {
        let runtime = Arc::clone(self);
        let name = format!("hitchserve:{}:post", self.services()[idx].name);
        let spawned = self.threads.spawn(name, move || {
            let plan = &runtime.services()[idx];
            let sources = runtime.current_sources(idx);
            let result = match &plan.poststart {
                Some(hook) => runtime.run_hook(idx, hook, &sources.post, UserCode::Poststart),
                None => Ok(()),
            };
            let at = Instant::now();
            runtime.dispatch(idx, Event::PoststartDone { result, at }.of(start));
        });
        match spawned {
            Ok(()) => {}
            Err(e) => {
                let result = Err(format!("could not start its thread: {e}"));
                let at = Instant::now();
                self.dispatch(idx, Event::PoststartDone { result, at }.of(start));
            }
        }
    }
}

/// Spawn a service's main process in its own process group, with its pipes, inside the
/// run's cgroup if it can be born there (the flag says whether it was).
fn spawn_child(
    plan: &ServicePlan,
    cgroup: Option<&Cgroup>,
) -> std::io::Result<(ServiceChild, bool)> {
    // No `pre_exec` (e.g. for PR_SET_PDEATHSIG): it would force fork() instead of vfork-based
    // posix_spawn, which made starting 20 services 1.5x slower here. The guardian covers
    // the death of the bundle's process.
    plan.exec
        .spawn_service(&plan.program, &plan.argv[0], &plan.argv[1..], cgroup)
}
