//! The run directory's log file `logs/all.log`, written by one background thread.
//!
//! Every line of every service and of the bundle, in arrival order, as the console shows it
//! (`[Err Name] line`) but with the line's exact bytes (invalid UTF-8 and `\r` kept), so a
//! failed test leaves its evidence behind. One exception: a line longer than a quarter of the
//! log memory limit is written in pieces as they arrive, each under the same prefix, so a
//! piece break looks like a newline there (and may split a UTF-8 character); queries join the
//! pieces back into the exact line. One file per run on purpose: creating files is
//! slow on some filesystems (ext4 here spends milliseconds allocating inodes after many
//! deletions), and a file per stream made starting 20 services measurably slower.
//!
//! Writing happens on a dedicated, low-priority thread fed by a channel, so no reader and no
//! readiness check waits for the disk — unless memory is past the log memory limit with the
//! writer behind: then the store holds the readers back, at most a second per stall (see the
//! store), and batches end at `MAX_BATCH` so progress is published meanwhile. Lines reach
//! the file within `BATCH` of arriving. Invariant: lines are written in the order they were sent, and everything sent
//! before `close` is on disk when it returns.
//!
//! The file can fail under us: a full disk, or the run directory deleted mid-run (writes to
//! a deleted file still succeed, so each batch checks the file is still linked). Either way
//! the writer stops for good, vouches only for the bytes written before, and says so once
//! through `on_failed`; the store then keeps lines in memory only (see the store).
//! Spilled lines are read back through the writer's own descriptor, so they stay readable
//! even after the file is deleted.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long lines may wait in memory before they are written out (unless a reader waits
/// for the writer: see `hurry`).
const BATCH: Duration = Duration::from_millis(20);

/// Most bytes written before what is written is published (see the writer loop).
const MAX_BATCH: u64 = 4 << 20;

use crate::rundir::RunDir;

pub(crate) struct LogFiles {
    closing: Arc<AtomicBool>,
    /// Bytes of all.log written out so far: lines below this offset can be read back.
    written: Arc<AtomicU64>,
    /// Set to make the writer start its batch at once.
    hurry: Arc<AtomicBool>,
    /// The writer thread, to wake it early.
    thread: std::thread::Thread,
    /// The open all.log, for reading spilled lines back (set once the writer created it).
    file: Arc<OnceLock<File>>,
    tx: Mutex<Option<Sender<Vec<u8>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl LogFiles {
    /// Start the writer: it sets up the run directory, creates `logs/all.log`, then prunes
    /// old runs. `on_failed` is called once, with what went wrong, if the file can't be
    /// created or written (then `written` stops for good). `on_written` is called after
    /// each batch reaches the file, so memory held for lines now on disk can be released.
    pub(crate) fn start(
        run: RunDir,
        on_failed: impl FnOnce(String) + Send + 'static,
        on_written: impl Fn() + Send + 'static,
    ) -> std::io::Result<LogFiles> {
        let (tx, rx) = channel::<Vec<u8>>();
        let closing = Arc::new(AtomicBool::new(false));
        let closing_w = Arc::clone(&closing);
        let written = Arc::new(AtomicU64::new(0));
        let written_w = Arc::clone(&written);
        let hurry = Arc::new(AtomicBool::new(false));
        let hurry_w = Arc::clone(&hurry);
        let file_cell = Arc::new(OnceLock::new());
        let file_w = Arc::clone(&file_cell);
        let writer = std::thread::Builder::new()
            .name("hitchserve:logfiles".into())
            .spawn(move || {
                lower_priority();
                let path = run.logs().join("all.log");
                // 0600 (in a 0700 directory): logs can hold secrets.
                let file = run.set_up().and_then(|()| {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                });
                run.prune_old();
                let file: &File = match file {
                    Ok(file) => file_w.get_or_init(|| file),
                    Err(e) => {
                        on_failed(format!("could not create it: {e}"));
                        // Still drain, so senders never notice.
                        while rx.recv().is_ok() {}
                        return;
                    }
                };
                let mut w = BufWriter::with_capacity(256 * 1024, file);
                let mut on_failed = Some(on_failed);
                // Wake at most every BATCH: a wake-up per line would take CPU from services.
                // `close` unparks us, so stopping never waits for a batch.
                let mut backlog = false;
                while let Ok(first) = rx.recv() {
                    // The flag, not just the unpark, says we are closing: the channel's own
                    // blocking may have consumed the unpark token already. With a backlog
                    // (the last batch stopped at MAX_BATCH), no waiting.
                    let until = Instant::now() + BATCH;
                    while !std::mem::take(&mut backlog)
                        && !closing_w.load(Ordering::Acquire)
                        && !hurry_w.swap(false, Ordering::AcqRel)
                    {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                    let mut chunk = first;
                    let mut total = 0u64;
                    let mut result = Ok(());
                    loop {
                        if on_failed.is_some() && result.is_ok() {
                            result = w.write_all(&chunk);
                        }
                        total += chunk.len() as u64;
                        // A batch ends at MAX_BATCH even if more is queued: what is written
                        // must be published (and its memory released) while a slow disk
                        // still works through a backlog, or readers waiting for the writer
                        // would give up on it and memory would grow without bound.
                        if total >= MAX_BATCH {
                            backlog = true;
                            break;
                        }
                        match rx.try_recv() {
                            Ok(more) => chunk = more,
                            Err(_) => break,
                        }
                    }
                    let Some(report) = on_failed.take() else {
                        // Failed before: drain only, so senders never notice.
                        continue;
                    };
                    let result = result.and_then(|()| w.flush()).map(|()| unlinked(file));
                    // A deleted file still takes writes (and disk space nobody can see),
                    // and what is in it stays readable through our descriptor: count this
                    // batch as written, and stop. After a failed write, what reached the
                    // file is what it holds: we are its only writer, from offset 0.
                    let before = written_w.load(Ordering::Acquire);
                    let now = match result {
                        Ok(_) => before + total,
                        Err(_) => file.metadata().map_or(before, |m| m.len()),
                    };
                    if now > before {
                        written_w.store(now.min(before + total), Ordering::Release);
                        on_written();
                    }
                    match result {
                        Ok(false) => on_failed = Some(report),
                        // After a failed write the file no longer matches the offsets the
                        // store computed: stop vouching for it, so no line leaves memory
                        // for it and nothing more is written.
                        Ok(true) => {
                            report("it was deleted (was the run directory removed?)".to_owned())
                        }
                        Err(e) => report(e.to_string()),
                    }
                }
                if on_failed.is_some() {
                    let _ = w.flush();
                } else {
                    // Don't let the buffer's drop write more after a failure.
                    let _ = w.into_parts();
                }
            })?;
        Ok(LogFiles {
            closing,
            thread: writer.thread().clone(),
            written,
            hurry,
            file: file_cell,
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
    /// write error, at what the file holds then).
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// A reader is waiting for the writer (memory is far past the limit): write now rather
    /// than at the end of the batch.
    pub(crate) fn hurry(&self) {
        self.hurry.store(true, Ordering::Release);
        self.thread.unpark();
    }

    /// The open all.log, to read spilled lines back from (`None` before it is created or if
    /// it could not be).
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.get()
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

/// Whether the file has been deleted (it has no name left in any directory).
fn unlinked(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.nlink() == 0)
}

/// Make the calling thread yield to services and readers: on Linux, nice applies per thread.
fn lower_priority() {
    // SAFETY: plain syscalls on our own thread id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
