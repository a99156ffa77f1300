//! Async versions of the calls that wait, for tests on tokio (feature `tokio`).
//!
//! Owns the bridge only: each wait is the sync call, run on tokio's blocking pool (or, for
//! a `follow`, on a thread of its own feeding a channel), so no runtime thread is ever
//! blocked — also on a current-thread runtime, the one `#[tokio::test]` makes. The sync API
//! is unchanged and remains the reference; these add nothing but the `await`.
//!
//! A future dropped before it is done leaves its wait running to its own end (its timeout,
//! its line, or the bundle's stop), as a thread of the blocking pool — but for a tail's,
//! which waits in pieces of `SLICE` (a dropped one ends with its piece), and for
//! `startup_async`'s: dropping it cancels the startup (`CancelStartup`), which stops what it
//! started, and a later shutdown waits for that stop (`StartupWait`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bundle::{wait_started, Bundle, StartupWait};
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::logs::{LogLine, Tail, WaitPieces};
use crate::timetravel::Clock;

/// Run `f` on tokio's blocking pool and await it; a panic in it is resumed here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task: nothing left to await.
            Err(e) => panic!("hitchserve: the blocking task was cancelled: {e}"),
        },
    }
}

impl Bundle {
    /// [`startup`](Bundle::startup) for async code: the same, but the wait does not block
    /// the runtime's thread (other tasks run meanwhile).
    ///
    /// Dropping the future before it is done (a `tokio::time::timeout`, a `select!`)
    /// cancels the startup, as [`Interrupter::interrupt`](crate::Interrupter::interrupt)
    /// does a blocking one: what it started is stopped, and the bundle can't be started
    /// again (a later [`shutdown_async`](Bundle::shutdown_async) waits for that stop). The
    /// other async calls, dropped, change nothing: a tail's wait ends within 0.1 s; the
    /// others' waits end by themselves (their timeout, or the bundle's stop).
    ///
    /// ```no_run
    /// # async fn demo() -> hitchserve::Result<()> {
    /// use hitchserve::{Bundle, Service};
    /// let mut bundle = Bundle::new(".");
    /// bundle.add("Web", Service::new(["python3", "-m", "http.server", "8000"])
    ///     .ready_when(|l| l.contains("Serving HTTP")))?;
    /// bundle.startup_async().await?;
    /// bundle.shutdown_async().await?;
    /// # Ok(()) }
    /// ```
    pub async fn startup_async(&mut self) -> Result<()> {
        let (runtime, t0) = self.begin_startup()?;
        let (startup, shutdown, progress, interrupter) = self.startup_wait_args();
        let wait = Arc::new(StartupWait::default());
        self.set_startup_wait(Arc::clone(&wait));
        let cancel = CancelStartup {
            wait: Arc::clone(&wait),
            interrupter: interrupter.clone(),
            stopped: self.stopped_flag(),
            clock: self.clock_ref(),
            armed: true,
        };
        let result = blocking(move || {
            let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                wait_started(&runtime, startup, shutdown, progress, interrupter.flag())
            }));
            // Ended either way (a panic in a progress line, say), or a shutdown would wait
            // for it for ever.
            match waited {
                Ok(result) => {
                    wait.end(&runtime, &result, shutdown);
                    result
                }
                Err(panic) => {
                    // As a failed startup: what it started is stopped (the panic skipped
                    // `wait_started`'s own stop), then the wait is over.
                    crate::bundle::stop_all(&runtime, shutdown);
                    runtime.mark_crashes_reported();
                    wait.end(&runtime, &Err(crate::Error::Interrupted), shutdown);
                    std::panic::resume_unwind(panic)
                }
            }
        })
        .await;
        cancel.disarm();
        self.end_startup(t0, result)
    }

    /// [`shutdown`](Bundle::shutdown) for async code.
    pub async fn shutdown_async(&self) -> Result<()> {
        self.mark_shut_down();
        if let Some(wait) = self.startup_wait_here() {
            // A startup whose future was dropped is being stopped: once it has, so has this.
            blocking(move || wait.wait_ended()).await;
        }
        let Some(runtime) = self.begin_shutdown() else {
            return Ok(());
        };
        let timeout = self.shutdown_timeout_value();
        let stopping = Arc::clone(&runtime);
        blocking(move || crate::bundle::stop_all(&stopping, timeout)).await;
        self.end_shutdown(&runtime)
    }
}

/// Dropping `startup_async`'s future cancels the startup, as Ctrl-C does a blocking one:
/// it is interrupted, what it started is stopped (by its wait, on the blocking pool), and
/// the bundle is shut down — a later `shutdown` waits for that stop and has nothing to add.
/// A startup that had already succeeded when its future was dropped is left running, for
/// `shutdown` (or the drop) to stop as usual.
struct CancelStartup<'a> {
    wait: Arc<StartupWait>,
    interrupter: crate::Interrupter,
    stopped: &'a AtomicBool,
    clock: &'a Clock,
    armed: bool,
}

impl CancelStartup<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelStartup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.wait.cancel() {
            // Up and running: the bundle's shutdown stops it.
            Some(true) => return,
            // Failed, and stopped by its wait.
            Some(false) => {}
            None => self.interrupter.interrupt(),
        }
        // As `end_startup` after a failure: nothing runs any more (once the wait has ended).
        self.stopped.store(true, Ordering::SeqCst);
        self.clock.stop();
    }
}

/// How long each piece of a tail's async wait holds a thread of the blocking pool: a
/// future dropped mid-wait (a `select!`, a `timeout`) leaves at most this much of it
/// running — the end of the runtime (a `#[tokio::test]`'s) waited out its whole timeout.
const SLICE: Duration = Duration::from_millis(100);

/// `wait` (a tail's `until` or `until_json`) for async code, in pieces of `SLICE` up to
/// `timeout` in all, on a copy of `tail` put back once it is done: dropped, it changes
/// nothing. The pieces share one wait's state (`WaitPieces`): the lines stored when it
/// began are all looked at, and a partial line once until it changes, as in one wait.
async fn sliced<P: Send + 'static, T: Send + 'static>(
    tail: &mut Tail,
    mut pred: P,
    timeout: Duration,
    wait: fn(&mut Tail, &mut P, Duration, &mut WaitPieces) -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now().checked_add(timeout);
    let mut work = tail.clone();
    let mut pieces = WaitPieces::default();
    let result = loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let piece = left.min(SLICE);
        let (back, given, state, result) = blocking(move || {
            let result = wait(&mut work, &mut pred, piece, &mut pieces);
            (work, pred, pieces, result)
        })
        .await;
        (work, pred, pieces) = (back, given, state);
        match result {
            Err(Error::WaitTimeout { .. }) if left > SLICE => {}
            // The last piece: the error of the whole wait.
            Err(Error::WaitTimeout {
                what,
                last_lines,
                log,
                ..
            }) => {
                break Err(Error::WaitTimeout {
                    what,
                    timeout,
                    last_lines,
                    log,
                })
            }
            other => break other,
        }
    };
    *tail = work;
    result
}

impl Tail {
    /// [`until`](Tail::until) for async code.
    pub async fn until_async(
        &mut self,
        pred: impl FnMut(&str) -> bool + Send + 'static,
        timeout: Duration,
    ) -> Result<LogLine> {
        sliced(self, pred, timeout, |tail, pred, piece, pieces| {
            tail.until_piece(pred, piece, pieces)
        })
        .await
    }

    /// [`until_json`](Tail::until_json) for async code.
    pub async fn until_json_async(
        &mut self,
        pred: impl FnMut(&Value) -> bool + Send + 'static,
        timeout: Duration,
    ) -> Result<Value> {
        sliced(self, pred, timeout, |tail, pred, piece, pieces| {
            tail.until_json_piece(pred, piece, pieces)
        })
        .await
    }

    /// [`next_line`](Tail::next_line) for async code.
    pub async fn next_line_async(&mut self, timeout: Duration) -> Result<LogLine> {
        self.until_async(|_| true, timeout).await
    }

    /// [`follow`](Tail::follow) for async code: lines as they arrive, from
    /// [`FollowAsync::next`]. A thread of its own follows; it ends with the service's
    /// output, the bundle's stop, or once this is dropped and a line arrives.
    pub fn follow_async(self) -> FollowAsync {
        // Enough to absorb a burst without holding the follower back for every line.
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let follow = self.follow();
        let spawned = std::thread::Builder::new()
            .name("hitchserve:follow".into())
            .spawn(move || {
                for line in follow {
                    if tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            });
        // Without its thread the stream just ends at once (the sender is gone).
        drop(spawned);
        FollowAsync { rx }
    }
}

/// Lines as they arrive, from [`Tail::follow_async`].
pub struct FollowAsync {
    rx: tokio::sync::mpsc::Receiver<LogLine>,
}

impl FollowAsync {
    /// The next line; `None` once the service's output has ended or the bundle stopped.
    pub async fn next(&mut self) -> Option<LogLine> {
        self.rx.recv().await
    }
}

impl std::fmt::Debug for FollowAsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FollowAsync")
    }
}

impl ServiceHandle {
    /// [`wait_until_ready`](ServiceHandle::wait_until_ready) for async code.
    pub async fn wait_until_ready_async(&self) -> Result<()> {
        let handle = self.clone();
        blocking(move || handle.wait_until_ready()).await
    }

    /// [`start`](ServiceHandle::start) for async code.
    pub async fn start_async(&self) -> Result<()> {
        let handle = self.clone();
        blocking(move || handle.start()).await
    }

    /// [`stop`](ServiceHandle::stop) for async code.
    pub async fn stop_async(&self) -> Result<()> {
        let handle = self.clone();
        blocking(move || handle.stop()).await
    }

    /// [`restart`](ServiceHandle::restart) for async code.
    pub async fn restart_async(&self) -> Result<()> {
        let handle = self.clone();
        blocking(move || handle.restart()).await
    }
}
