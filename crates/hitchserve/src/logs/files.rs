//! The run directory's log file `logs/all.log`, written by one background thread — which
//! also makes the run's `timeline.svg`, empty, for the bundle to fill when it stops.
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
//! Writing happens on a dedicated, low-priority thread fed by a queue, so no reader and no
//! readiness check waits for the disk — unless memory is past the log memory limit with the
//! writer behind: then the store holds the readers back, at most a second per stall (see the
//! store), and batches end at `MAX_BATCH` so progress is published meanwhile. Lines reach
//! the file within `BATCH` of arriving. Waking a sleeping thread is the costly part of a
//! write (a wake-up of another core: measured ~18 µs for the sender here, on the way from a
//! ready line to the test waiting for it), so the writer doesn't sleep until woken as long
//! as lines keep coming: for `AWAKE_FOR` after its last batch it looks at its queue every
//! `BATCH` by itself, and only then sleeps until a write wakes it. Invariant: lines are
//! written in the order they were sent, and everything sent before `close` is on disk when
//! it returns.
//!
//! The file can fail under us: a full disk, or the run directory deleted mid-run (writes to
//! a deleted file still succeed, so each batch checks the file is still linked). Either way
//! the writer stops for good, vouches only for the bytes written before, and says so once
//! through `on_failed`; the store then keeps lines in memory only (see the store).
//! Spilled lines are read back through the writer's own descriptor, so they stay readable
//! even after the file is deleted.
//!
//! Why the writer makes `timeline.svg`: making a file can take a good part of a
//! millisecond on ext4 (inode allocation), which at shutdown was a tenth of stopping 20
//! services; made here, off every critical path, the bundle only writes into it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long lines may wait in memory before they are written out (unless a reader waits
/// for the writer: see `hurry`).
const BATCH: Duration = Duration::from_millis(20);

/// How long after its last batch the writer keeps looking for lines by itself (see the
/// module's header) before it sleeps until woken.
const AWAKE_FOR: Duration = Duration::from_secs(1);

/// Most bytes written before what is written is published (see the writer loop).
const MAX_BATCH: u64 = 4 << 20;

/// The startup timeline's file name in the run directory.
pub(crate) const TIMELINE: &str = "timeline.svg";

use crate::rundir::RunDir;

/// What the store has sent and the writer not yet taken.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    /// No more will come: the writer ends once the queue is empty.
    closed: bool,
    /// The writer found the queue empty and sleeps until woken: the next sender wakes it.
    asleep: bool,
}

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
    /// The run's `timeline.svg`, made empty by the writer (set once made).
    timeline: Arc<OnceLock<File>>,
    queue: Arc<Mutex<Queue>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer's next chunk, and whether the writer slept until woken for it: it looks at
/// the queue every `BATCH` until `awake_until`, then sleeps until a write wakes it. `None`
/// once the queue is empty and closed.
fn next_chunk(queue: &Mutex<Queue>, awake_until: Instant) -> Option<(Vec<u8>, bool)> {
    let mut q = lock(queue);
    let mut slept = false;
    loop {
        if let Some(chunk) = q.chunks.pop_front() {
            q.asleep = false;
            return Some((chunk, slept));
        }
        if q.closed {
            return None;
        }
        let awake = Instant::now() < awake_until;
        q.asleep = !awake;
        drop(q);
        if awake {
            std::thread::park_timeout(BATCH);
        } else {
            // A wake sent between the unlock and here is kept by the thread's token.
            std::thread::park();
            slept = true;
        }
        q = lock(queue);
    }
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
        Self::start_awake_for(run, on_failed, on_written, AWAKE_FOR)
    }

    /// `start`, with the writer looking for lines by itself for `awake_for` after a batch.
    fn start_awake_for(
        run: RunDir,
        on_failed: impl FnOnce(String) + Send + 'static,
        on_written: impl Fn() + Send + 'static,
        awake_for: Duration,
    ) -> std::io::Result<LogFiles> {
        let queue = Arc::new(Mutex::new(Queue::default()));
        let queue_w = Arc::clone(&queue);
        let closing = Arc::new(AtomicBool::new(false));
        let closing_w = Arc::clone(&closing);
        let written = Arc::new(AtomicU64::new(0));
        let written_w = Arc::clone(&written);
        let hurry = Arc::new(AtomicBool::new(false));
        let hurry_w = Arc::clone(&hurry);
        let file_cell = Arc::new(OnceLock::new());
        let file_w = Arc::clone(&file_cell);
        let timeline = Arc::new(OnceLock::new());
        let timeline_w = Arc::clone(&timeline);
        let writer = std::thread::Builder::new()
            .name("hitchserve:logfiles".into())
            .spawn(move || {
                lower_priority();
                let path = run.logs().join("all.log");
                // 0600 (in a 0700 directory): logs can hold secrets.
                let file = run
                    .set_up()
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|()| {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .mode(0o600)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                            .open(&path)
                    });
                // Only if nobody made it meanwhile (see `timeline`): never emptied here.
                if file.is_ok() {
                    if let Ok(svg) = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(run.path.join(TIMELINE))
                    {
                        let _ = timeline_w.set(svg);
                    }
                }
                run.prune_old();
                let file: &File = match file {
                    Ok(file) => file_w.get_or_init(|| file),
                    Err(e) => {
                        on_failed(format!("could not create it: {e}"));
                        // Still drain, so senders never notice.
                        while next_chunk(&queue_w, Instant::now()).is_some() {}
                        return;
                    }
                };
                let mut w = BufWriter::with_capacity(256 * 1024, file);
                let mut on_failed = Some(on_failed);
                // Write at most every BATCH: a wake-up per line would take CPU from services.
                // `close` unparks us, so stopping never waits for a batch.
                let mut backlog = false;
                let mut awake_until = Instant::now() + awake_for;
                while let Some((first, slept)) = next_chunk(&queue_w, awake_until) {
                    // Woken by this chunk: let the lines of the moment join it. The flag, not
                    // just the unpark, says we are closing: the wait for the first chunk may
                    // have consumed the unpark token already. With a backlog (the last batch
                    // stopped at MAX_BATCH), no waiting.
                    let until = Instant::now() + BATCH;
                    while slept
                        && !std::mem::take(&mut backlog)
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
                        match lock(&queue_w).chunks.pop_front() {
                            Some(more) => chunk = more,
                            None => break,
                        }
                    }
                    awake_until = Instant::now() + awake_for;
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
            timeline,
            queue,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Append rendered lines (see the store) to all.log; wakes the writer only if it sleeps
    /// until woken (see the module's header).
    pub(crate) fn write(&self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut q = lock(&self.queue);
        if q.closed {
            return;
        }
        q.chunks.push_back(bytes);
        let wake = std::mem::take(&mut q.asleep);
        drop(q);
        if wake {
            self.thread.unpark();
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

    /// Write `bytes` as the run's `timeline.svg` (into the file the writer made, else a new
    /// one at `path`).
    pub(crate) fn write_timeline(
        &self,
        path: &std::path::Path,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self.timeline.get() {
            Some(file) => {
                file.set_len(0)?;
                file.write_all_at(bytes, 0)
            }
            None => std::fs::write(path, bytes),
        }
    }

    /// Write out everything sent so far and stop the writer.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        lock(&self.queue).closed = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A fresh project directory under the shared temp directory (made, never found: the
    /// create fails on anything planted there; 0700 whatever the umask), removed when
    /// dropped.
    struct Project(std::path::PathBuf);

    impl Project {
        fn new(name: &str) -> Project {
            use std::os::unix::fs::DirBuilderExt;
            let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .expect("a fresh project directory");
            Project(path)
        }
    }

    impl Drop for Project {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Two lines written one at a time reach the file while the writer runs on — not only
    /// at `close` — whether it looks for lines by itself or sleeps until a write wakes it.
    /// (Failed with a lost wake-up as: batch 1 was never written.)
    #[test]
    fn a_write_reaches_the_file_whether_the_writer_looks_or_sleeps() {
        for (mode, awake_for) in [("sleeping", Duration::ZERO), ("looking", AWAKE_FOR)] {
            let project = Project::new(&format!("hs-files-{mode}"));
            let run = RunDir::allocate(&project.0);
            let log = run.logs().join("all.log");
            let (tx, rx) = mpsc::channel();
            let files = LogFiles::start_awake_for(
                run,
                |why| panic!("all.log failed: {why}"),
                move || {
                    let _ = tx.send(());
                },
                awake_for,
            )
            .expect("start the writer");
            let patience = Duration::from_secs(30);
            for (i, line) in ["first\n", "second\n"].into_iter().enumerate() {
                if awake_for.is_zero() {
                    // Only once it sleeps does this write have to wake it. It announces
                    // nothing as it falls asleep: look (bounded) until it does.
                    let deadline = std::time::Instant::now() + patience;
                    while !lock(&files.queue).asleep && std::time::Instant::now() < deadline {
                        std::thread::yield_now();
                    }
                    assert!(lock(&files.queue).asleep, "{mode}: the writer never slept");
                }
                files.write(line.as_bytes().to_vec());
                rx.recv_timeout(patience)
                    .unwrap_or_else(|_| panic!("{mode}: batch {i} was never written"));
            }
            let written = std::fs::read_to_string(&log).expect("read all.log");
            assert_eq!(written, "first\nsecond\n", "{mode}");
            assert_eq!(files.written(), written.len() as u64);
            // Nothing is written after close, and close ends the writer.
            files.close();
            files.write(b"late\n".to_vec());
            assert_eq!(std::fs::read_to_string(&log).unwrap(), written);
        }
    }
}
