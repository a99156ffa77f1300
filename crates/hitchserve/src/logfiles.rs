//! The run directory's log file `logs/all.log`, written by one background thread.
//!
//! Every line of every service and of the bundle, in arrival order, as the console shows it
//! (`[Err Name] line`) but with the line's exact bytes (invalid UTF-8 and `\r` kept), so a
//! failed test leaves its evidence behind. One file per run on purpose: creating files is
//! slow on some filesystems (ext4 here spends milliseconds allocating inodes after many
//! deletions), and a file per stream made starting 20 services measurably slower.
//!
//! Writing happens on a dedicated, low-priority thread fed by a channel, so no reader and no
//! readiness check ever waits for the disk. The channel is unbounded on purpose: a slow disk
//! must never make a service block on its pipe. Lines reach the file within `BATCH` of
//! arriving. Invariant: lines are written in the order they were sent, and everything sent
//! before `close` is on disk when it returns.

use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long lines may wait in memory before they are written out.
const BATCH: Duration = Duration::from_millis(20);

use crate::rundir::RunDir;

pub(crate) struct LogFiles {
    closing: Arc<AtomicBool>,
    /// Bytes of all.log written out so far: lines below this offset can be read back.
    written: Arc<AtomicU64>,
    tx: Mutex<Option<Sender<Vec<u8>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl LogFiles {
    /// Start the writer: it sets up the run directory, creates `logs/all.log`, then prunes
    /// old runs. `warn` reports a file it can't create.
    /// `written` is called after each batch reaches the file, so memory held for lines
    /// now on disk can be released.
    pub(crate) fn start(
        run: RunDir,
        warn: impl FnOnce(String) + Send + 'static,
        on_written: impl Fn() + Send + 'static,
    ) -> std::io::Result<LogFiles> {
        let (tx, rx) = channel::<Vec<u8>>();
        let closing = Arc::new(AtomicBool::new(false));
        let closing_w = Arc::clone(&closing);
        let written = Arc::new(AtomicU64::new(0));
        let written_w = Arc::clone(&written);
        let writer = std::thread::Builder::new()
            .name("hitchserve:logfiles".into())
            .spawn(move || {
                lower_priority();
                let path = run.logs().join("all.log");
                // 0600 (in a 0700 directory): logs can hold secrets.
                let file = run.set_up().and_then(|()| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                });
                run.prune_old();
                let file = match file {
                    Ok(file) => file,
                    Err(e) => {
                        warn(format!(
                            "could not write `{}` ({e}): the logs are only kept in memory",
                            path.display()
                        ));
                        // Still drain, so senders never notice.
                        while rx.recv().is_ok() {}
                        return;
                    }
                };
                let mut w = BufWriter::with_capacity(256 * 1024, file);
                let mut failed = false;
                // Wake at most every BATCH: a wake-up per line would take CPU from services.
                // `close` unparks us, so stopping never waits for a batch.
                while let Ok(first) = rx.recv() {
                    // The flag, not just the unpark, says we are closing: the channel's own
                    // blocking may have consumed the unpark token already.
                    let until = Instant::now() + BATCH;
                    while !closing_w.load(Ordering::Acquire) {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                    let mut chunk = first;
                    let mut total = 0u64;
                    loop {
                        failed |= w.write_all(&chunk).is_err();
                        total += chunk.len() as u64;
                        match rx.try_recv() {
                            Ok(more) => chunk = more,
                            Err(_) => break,
                        }
                    }
                    failed |= w.flush().is_err();
                    // After a failed write the file no longer matches the offsets the store
                    // computed: stop vouching for it, so no line leaves memory for it.
                    if !failed {
                        written_w.fetch_add(total, Ordering::Release);
                        on_written();
                    }
                }
                let _ = w.flush();
            })?;
        Ok(LogFiles {
            closing,
            written,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Append rendered lines (see the store) to all.log.
    pub(crate) fn write(&self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(bytes);
        }
    }

    /// How many bytes of all.log are on disk (only ever grows; stops for good at the first
    /// write error).
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Write out everything sent so far and stop the writer.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// Make the calling thread yield to services and readers: on Linux, nice applies per thread.
fn lower_priority() {
    // SAFETY: plain syscalls on our own thread id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
