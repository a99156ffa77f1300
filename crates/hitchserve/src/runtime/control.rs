//! One service at a time on a running bundle: start it again, pause and resume it — the
//! fault-injection steps a test takes (stopping one is in `stop`, waiting until it is ready
//! again in `report`).
//!
//! Owns the rule that nothing starts once the bundle has begun to stop (checked under the
//! state lock, where `stop_all` sets it), so a start racing a shutdown can't leave a process
//! behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::runtime::state::{AfterExit, Event, Phase, ServiceState};
use crate::runtime::Runtime;

impl Runtime {
    /// Start service `idx` again if it has stopped (its setup hook too if `setup`); then the
    /// caller waits for it to be ready. A service that runs or is starting is left as it is,
    /// but for a start called off (or stopped) before it was spawned: it goes on, as this.
    /// Returns the number of this start by hand (see `ServiceState::hand_starts`), if this
    /// started it.
    pub(crate) fn start_again(self: &Arc<Self>, idx: usize, setup: bool) -> Result<Option<u32>> {
        // A stop by hand under way (another thread's): it ends first, its own way (its
        // deadline, its SIGKILL), then this starts it.
        let patience = self
            .timeouts
            .shutdown
            .saturating_add(Duration::from_secs(15));
        let deadline = super::deadline_after(Instant::now(), patience);
        drop(self.wait_until(self.lock(), deadline, |s| !stopping_by_hand(&s[idx])));
        let (actions, started, taken_back) = {
            let mut states = self.lock();
            if self.is_stopping() {
                return Err(self.shut_down(idx));
            }
            // Waiting for its needs (a start during startup): the scheduler starts it.
            let taken_back = matches!(
                states[idx].phase,
                Phase::SettingUp { stop: Some(_) } | Phase::Spawning { stop: Some(_) }
            );
            let stopped = taken_back
                || matches!(
                    states[idx].phase,
                    Phase::Exited { .. } | Phase::NotStarted | Phase::Restarting { .. }
                );
            if !stopped {
                return Ok(None);
            }
            let at = Instant::now();
            let actions = self
                .apply_locked(&mut states, idx, Event::StartAgain { at, setup })
                .0;
            (actions, states[idx].hand_starts, taken_back)
        };
        self.changed.notify_all();
        if taken_back {
            self.sink.log(&format!(
                "Starting {} again: the start under way goes on",
                self.services()[idx].name
            ));
        }
        self.carry_out(idx, actions);
        Ok(Some(started))
    }

    /// The outcome of start by hand number `started` (`result`): if it failed — its
    /// readiness check or poststart hook failed, or it timed out — call it off, so the
    /// failed start leaves nothing running, as a failed startup does: its process is
    /// stopped, or it is not spawned once its setup hook returns, or the restart its policy
    /// was to make of it is not made. Never a later start (another thread's, or one that
    /// `restart` asked since).
    pub(crate) fn stop_if_failed(
        self: &Arc<Self>,
        idx: usize,
        started: u32,
        result: Result<()>,
    ) -> Result<()> {
        if result.is_err() {
            self.stop_one_if(idx, None, Some(started));
        }
        result
    }

    /// Stop service `idx` and start it again once reaped (its setup hook too if `setup`), or
    /// just start it if it isn't running; then wait until the new start is ready.
    pub(crate) fn restart_one(self: &Arc<Self>, idx: usize, setup: bool) -> Result<()> {
        let before = self.read(idx, |st| st.incarnation);
        let Some(awaited) = self.stop_one(idx, Some(setup)) else {
            return Err(self.shut_down(idx));
        };
        let result = self.wait_ready_after(idx, before);
        self.stop_if_failed(idx, awaited, result)
    }

    /// SIGSTOP (`pause`) or SIGCONT its whole group; an error if its process isn't running
    /// (or, for a pause, is being stopped).
    pub(crate) fn pause(&self, idx: usize, pause: bool) -> Result<()> {
        {
            let mut states = self.lock();
            let st = &states[idx];
            // A pause would freeze a stop under way (it could not act on its stop signal).
            let stopping = matches!(st.phase, Phase::Running { stop: Some(_), .. });
            if st.pid().is_none() || (pause && stopping) {
                return Err(self.not_running(idx, st));
            }
            let event = if pause { Event::Pause } else { Event::Resume };
            let _ = self.apply_locked(&mut states, idx, event);
        }
        self.changed.notify_all();
        let name = &self.services()[idx].name;
        self.sink.log(&if pause {
            format!("Pausing {name} (SIGSTOP)")
        } else {
            format!("Resuming {name} (SIGCONT)")
        });
        Ok(())
    }
}

/// A stop by hand is under way (asked, its process not reaped yet), with no start after it.
fn stopping_by_hand(st: &ServiceState) -> bool {
    matches!(
        st.phase,
        Phase::Running {
            stop: Some(_),
            after: AfterExit::Stay,
            ..
        } | Phase::Exiting {
            expected: true,
            after: AfterExit::Stay,
            ..
        } | Phase::Draining {
            expected: true,
            after: AfterExit::Stay,
            ..
        }
    )
}
