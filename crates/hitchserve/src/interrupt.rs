//! `Interrupter`: ends a startup under way from another thread (a signal handler's, say).
//!
//! Owns the flag and the wake-up of the startup wait it interrupts. The flag is read by the
//! runtime's startup wait; the wake-up goes through the runtime's state lock, so the wait
//! can't miss it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::runtime::Runtime;

/// Ends a [`Bundle::startup`](crate::Bundle::startup) that is under way from another thread: a signal handler's
/// thread, say, so that Ctrl-C during a slow startup stops at once instead of at the
/// startup timeout. Get one with [`Bundle::interrupter`](crate::Bundle::interrupter) before calling `startup`.
///
/// ```no_run
/// # fn main() -> hitchserve::Result<()> {
/// use hitchserve::{Bundle, Error};
/// let mut bundle = Bundle::new(".");
/// let interrupter = bundle.interrupter();
/// std::thread::spawn(move || {
///     // ... wait for Ctrl-C here ...
///     interrupter.interrupt();
/// });
/// match bundle.startup() {
///     Err(Error::Interrupted) => println!("stopped before it was ready"),
///     other => other?,
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Interrupter(pub(crate) Arc<InterruptState>);

#[derive(Debug, Default)]
pub(crate) struct InterruptState {
    pub(crate) requested: AtomicBool,
    /// The run being started, to wake its wait.
    pub(crate) run: Mutex<Option<Weak<Runtime>>>,
}

impl Interrupter {
    /// Whether `interrupt` was called.
    #[cfg(feature = "tokio")]
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.0.requested
    }

    /// Make the current (or next) `startup` fail with [`Error::Interrupted`](crate::Error::Interrupted) and stop what
    /// it started. It can't be taken back: every later `startup` of this bundle fails the
    /// same way. A bundle that is already up goes on (call `shutdown` for that); but during
    /// its shutdown (or the stop of a failed startup), it cuts the services' grace short:
    /// what is left gets SIGKILL at once (a second Ctrl-C during a slow stop).
    pub fn interrupt(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        let run = self
            .0
            .run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade);
        if let Some(runtime) = run {
            // Only a stop under way is hurried: the stop an interrupted startup makes, or
            // a shutdown's, still gives the services their grace.
            if runtime.is_stopping() {
                runtime.hurry.store(true, Ordering::SeqCst);
            }
            // Under the state lock, so the startup wait (or a shutdown's) can't miss it.
            runtime.wake();
        }
    }
}
