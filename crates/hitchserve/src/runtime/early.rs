//! The early wake of a startup wait: when a startup waits only for one service's ready
//! line and that service's supervisor has just read a little of its output, the wait is
//! woken before the read is dealt with (stored, checked, announced), not after.
//!
//! Why: waking a thread that sleeps on an idle core costs tens of µs (on a VM, the core's
//! own wake-up); dealing with a read costs about as much. Woken at the start of the work,
//! the waiting thread's wake-up overlaps it instead of following it. The woken wait then
//! waits, yielding, a bounded while, until that read is dealt with (`settle`), and looks
//! at the states again as after any wake-up.
//!
//! Only small reads wake early (a ready line comes alone, or nearly so; a big read is a
//! chatty service, whose lines would only wake the wait for nothing), only while a startup
//! waits with every other service started up, and only with more than one core (on one,
//! the waiting thread's wake-up would only take the core the reader needs). An early wake is never the only
//! one: the milestone that ends the wait wakes it as before, so a missed or useless early
//! wake (a ready line whose service still has a poststart hook or a probe to pass) costs
//! nothing but itself. It wakes the waits on the run's milestones, so a wait for every
//! service to stop, during a startup, may wake for nothing too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads of at most this many bytes wake a startup wait early.
pub(crate) const SMALL_READ: usize = 4096;

/// How long a woken wait waits, at most, for the read that woke it to be dealt with before
/// it goes back to sleep on the states (dealing with a small read takes ~30-40 µs; more
/// means its thread was preempted, and the milestone will wake the wait anyway).
const SETTLE_AT_MOST: Duration = Duration::from_micros(300);

/// Whether this process may use more than one core (asked once: the answer reads the
/// affinity mask and the cgroup's CPU quota).
fn several_cores() -> bool {
    static SEVERAL: OnceLock<bool> = OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// The startup waits in progress, and the reads being dealt with after waking them early.
#[derive(Default)]
pub(crate) struct EarlyWake {
    waits: AtomicUsize,
    passes: AtomicUsize,
}

/// A startup wait in progress (see `EarlyWake::waiting`).
pub(crate) struct Waiting<'a>(&'a EarlyWake);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waits.fetch_sub(1, Ordering::Release);
    }
}

/// A read being dealt with after an early wake: over when dropped, once its lines are
/// stored and checked and what that made happen on the reader's thread has happened (the
/// milestone included, unless a poststart hook or a probe is still to pass).
pub(crate) struct Pass<'a>(&'a EarlyWake);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.passes.fetch_sub(1, Ordering::Release);
    }
}

impl EarlyWake {
    /// A startup wait begins; it ends when the guard is dropped.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.waits.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// Whether a read of `bytes` is worth an early wake, given whether the service that
    /// read it is the last one a startup waits for and still waits for a line.
    pub(crate) fn worth_it(&self, bytes: usize, last_pending: impl FnOnce() -> bool) -> bool {
        bytes <= SMALL_READ
            && self.waits.load(Ordering::Acquire) > 0
            && several_cores()
            && last_pending()
    }

    /// A read is about to be dealt with: counted before the caller wakes the waits, so a
    /// woken wait finds it in progress.
    pub(crate) fn pass(&self) -> Pass<'_> {
        self.passes.fetch_add(1, Ordering::AcqRel);
        Pass(self)
    }

    /// Whether a read that woke the waits early is still being dealt with.
    pub(crate) fn passing(&self) -> bool {
        self.passes.load(Ordering::Acquire) > 0
    }

    /// In a woken wait (without the states' lock): wait until the reads that woke it early
    /// are dealt with, yielding between looks, `SETTLE_AT_MOST` at most. A yield, not a
    /// spin: a wait that shares its core with the reader must let it run (measured: a
    /// spinning wait held the reader's core for the whole bound, W1 0.42 ms against 0.17),
    /// though a yield may give the core away for longer than the bound when a busy process
    /// waits for it too (then the wait is late by that much, no more).
    pub(crate) fn settle(&self) {
        let until = Instant::now() + SETTLE_AT_MOST;
        while self.passes.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_reads_while_a_startup_waits_for_the_last_service_wake_early() {
        let early = EarlyWake::default();
        assert!(!early.worth_it(10, || true), "nobody waits");
        let waiting = early.waiting();
        assert_eq!(early.worth_it(10, || true), several_cores());
        assert!(!early.worth_it(10, || false), "others are still starting");
        assert!(!early.worth_it(SMALL_READ + 1, || true), "a chatty read");
        drop(waiting);
        assert!(!early.worth_it(10, || true), "the wait is over");
    }

    #[test]
    fn settle_returns_once_the_pass_is_over_or_at_its_bound() {
        let early = EarlyWake::default();
        early.settle();
        assert!(!early.passing());
        let pass = early.pass();
        // A pass nobody ends: settle gives up at its bound rather than hang.
        early.settle();
        assert!(early.passing());
        drop(pass);
        assert!(!early.passing());
    }
}
