//! Readiness probes (TCP, HTTP, a command, a file): tried on a thread of their own, at an
//! interval that starts at a few milliseconds and backs off, until the service's check
//! passes or it is no longer waiting for them. What they find becomes an `Event`.

use std::sync::Arc;
use std::time::Duration;

use crate::readiness::{Checker, ProbeEnv, Verdict};
use crate::runtime::state::{Event, Phase, Readiness};
use crate::runtime::Runtime;

/// First pause between two rounds of readiness probes; it grows to `PROBE_MAX_PAUSE`.
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(5);
const PROBE_MAX_PAUSE: Duration = Duration::from_millis(250);
/// Longest one probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Try a service's probes until its check passes or it is no longer waiting for them.
/// `start`: the start number of the process the probes are for; they end once it is not the
/// service's current one.
pub(crate) fn probe_until_ready(runtime: &Arc<Runtime>, idx: usize, checker: &Checker, start: u32) {
    let env = ProbeEnv {
        exec: &runtime.services()[idx].exec,
        limit: PROBE_LIMIT,
    };
    let mut pause = PROBE_FIRST_PAUSE;
    loop {
        let checking = runtime.read(idx, |st| {
            st.incarnation == start
                && matches!(
                    st.phase,
                    Phase::Running {
                        readiness: Readiness::Checking { .. },
                        ..
                    }
                )
        });
        if !checking {
            return;
        }
        match checker.probe(&env) {
            Verdict::Ready => {
                let at = std::time::Instant::now();
                runtime.dispatch(idx, Event::ReadinessPassed { at }.of(start));
                return;
            }
            Verdict::Panicked(message) => {
                runtime.dispatch(idx, Event::CheckPanicked(message).of(start));
                return;
            }
            Verdict::NotYet => {
                if let Some(why) = checker.last_failure() {
                    runtime.dispatch(idx, Event::ProbeFailed(why).of(start));
                }
            }
        }
        // Probing is asking again and again by nature: the pause is the probe interval.
        std::thread::sleep(pause);
        pause = (pause * 3 / 2).min(PROBE_MAX_PAUSE);
    }
}
