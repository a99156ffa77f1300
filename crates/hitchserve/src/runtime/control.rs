//! One service at a time on a running bundle: start it again, pause and resume it — the
//! fault-injection steps a test takes (stopping one is in `stop`, waiting until it is ready
//! again in `report`).
//!
//! Owns the rule that nothing starts once the bundle has begun to stop (checked under the
//! state lock, where `stop_all` sets it), so a start racing a shutdown can't leave a process
//! behind.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::runtime::state::{Event, Phase};
use crate::runtime::Runtime;

impl Runtime {
    /// Start service `idx` again if it has stopped (its setup hook too if `setup`); then the
    /// caller waits for it to be ready. A service that runs or is starting is left as it is.
    pub(crate) fn start_again(self: &Arc<Self>, idx: usize, setup: bool) -> Result<()> {
        let started = {
            let mut states = self.lock();
            if self.is_stopping() {
                return Err(Error::NotRunning);
            }
            let st = &states[idx];
            let stopped = st.is_settled() || matches!(st.phase, Phase::Restarting { .. });
            if stopped {
                let at = Instant::now();
                let _ = self.apply_locked(&mut states, idx, Event::StartAgain { at, setup });
            }
            stopped
        };
        if started {
            self.changed.notify_all();
            // Waits on its lines block again: more are coming.
            self.sink.store.mark_restarted(idx);
            self.start_elsewhere(idx);
        }
        Ok(())
    }

    /// SIGSTOP (`pause`) or SIGCONT its whole group; an error if its process isn't running.
    pub(crate) fn pause(&self, idx: usize, pause: bool) -> Result<()> {
        {
            let mut states = self.lock();
            if states[idx].pid().is_none() {
                return Err(Error::NotRunning);
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
