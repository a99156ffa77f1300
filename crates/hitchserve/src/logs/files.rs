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
//! The queue holds bytes rendered by the store (a long line's pieces, the lines stored before
//! the file was made) and, for every other line, a stretch of a store's block — its lines,
//! each followed by a newline there — that the writer copies out after the lines' prefix
//! (`write_lines`). A block is shared while it fills (see `block`), so the writer takes no
//! lock of the store's, and a chatty service's reader copies each line once, not twice, and
//! takes no fresh memory for all.log (rendered by the reader, 200,000 lines of a fast
//! producer took some 6 MB of fresh pages: with the copy, over a quarter of its time).
//!
//! Writing happens on a dedicated thread fed by a queue, so no reader and no
//! readiness check waits for the disk — unless memory is past the log memory limit with the
//! writer behind: then the store holds the readers back, at most a second per stall (see the
//! store), and batches end at `MAX_BATCH` so progress is published meanwhile. Lines reach
//! the file within `BATCH` of arriving. Waking a sleeping thread is the costly part of a
//! write (a wake-up of another core: measured ~18 µs for the sender here, on the way from a
//! ready line to the test waiting for it), so the writer doesn't sleep until woken as long
//! as lines keep coming: for `AWAKE_FOR` after its last batch it looks at its queue every
//! `BATCH` by itself, and only then sleeps until a write wakes it. At `close`, the rest is
//! written by the closing thread itself (see `Writer`): waking the writer and waiting for it
//! to end was two thread hops at every shutdown. Invariant: lines are written in the order
//! they were sent (a batch is taken from the queue only by whoever holds the `Writer`), and
//! everything sent before `close` is on disk when it returns.
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
use std::ops::Range;
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

use crate::logs::block::Block;
use crate::rundir::RunDir;

/// Bytes rendered before they are written out (the writer's own buffer, reused).
const WRITE_SIZE: usize = 256 * 1024;

/// What is to be written next.
enum Chunk {
    /// Bytes rendered by the sender.
    Bytes(Vec<u8>),
    /// Lines of a block of the store, each followed by a newline there, for the writer to
    /// write each after `prefix` (see `LogFiles::write_lines`).
    Lines {
        block: Arc<Block>,
        bytes: Range<usize>,
        prefix: Arc<[u8]>,
    },
}

/// What the store has sent and the writer not yet taken.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
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
    /// Where writing stands (see `Writer`).
    state: Arc<Mutex<Writer>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wait until the queue has a chunk; whether the writer slept until woken for it: it looks
/// at the queue every `BATCH` until `awake_until`, then sleeps until a write wakes it.
/// `None` once the queue is empty and closed. The chunk stays queued: it is taken by whoever
/// writes the batch (see `Batches`), so a batch the writer and `close` both reach for is
/// written once, in order.
fn wait_for_chunk(queue: &Mutex<Queue>, awake_until: Instant) -> Option<bool> {
    let mut q = lock(queue);
    let mut slept = false;
    loop {
        if !q.chunks.is_empty() {
            q.asleep = false;
            return Some(slept);
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

/// Where writing all.log stands, shared by the writer thread and `close`.
enum Writer {
    /// The writer thread is making the file.
    SettingUp,
    /// The file is open: whoever holds this writes the next batch.
    Writing(Batches),
    /// Nothing more is written: the file could not be made, or it is closed.
    Done,
}

/// all.log's writing end and what a batch reports.
struct Batches {
    w: BufWriter<SharedFile>,
    /// Called once if a write fails; `None` once it was (then batches are only drained).
    on_failed: Option<Box<dyn FnOnce(String) + Send>>,
    on_written: Box<dyn Fn() + Send>,
    written: Arc<AtomicU64>,
    /// Where lines are rendered before they are written (kept: fresh memory for every
    /// batch cost a chatty service's reader more than the copy).
    buf: Vec<u8>,
}

/// The open all.log, written through the cell readers read it from (no second descriptor).
struct SharedFile(Arc<OnceLock<File>>);

impl SharedFile {
    fn file(&self) -> std::io::Result<&File> {
        self.0
            .get()
            .ok_or_else(|| std::io::Error::other("all.log is not open"))
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file()?.flush()
    }
}

impl Batches {
    /// Write one batch of what is queued (nothing if the queue is empty); whether it
    /// stopped at `MAX_BATCH` with more queued.
    fn write_batch(&mut self, queue: &Mutex<Queue>) -> bool {
        let mut total = 0u64;
        let mut result = Ok(());
        let mut backlog = false;
        loop {
            // Taken in a statement of its own: a guard made in a `while let` would hold the
            // queue (and every sender) through the write.
            let next = lock(queue).chunks.pop_front();
            let Some(chunk) = next else { break };
            let writing = self.on_failed.is_some() && result.is_ok();
            match chunk {
                Chunk::Bytes(bytes) => {
                    if writing {
                        result = self.w.write_all(&bytes);
                    }
                    total += bytes.len() as u64;
                }
                // Drained only, once writing failed: nothing more is written, and the
                // store keeps these lines in memory.
                Chunk::Lines { .. } if !writing => {}
                Chunk::Lines {
                    block,
                    bytes,
                    prefix,
                } => {
                    let lines = block.get(bytes.clone()).unwrap_or_default();
                    let mut at = 0;
                    while at < lines.len() && result.is_ok() {
                        self.buf.clear();
                        while at < lines.len() && self.buf.len() < WRITE_SIZE {
                            let end = memchr::memchr(b'\n', &lines[at..])
                                .map_or(lines.len(), |nl| at + nl + 1);
                            self.buf.extend_from_slice(&prefix);
                            self.buf.extend_from_slice(&lines[at..end]);
                            at = end;
                        }
                        result = self.w.write_all(&self.buf);
                        total += self.buf.len() as u64;
                        if self.buf.capacity() > 2 * WRITE_SIZE {
                            // A line longer than a write (up to a quarter of the limit)
                            // grew it: not kept for the rest of the run, outside the limit.
                            self.buf = Vec::new();
                        }
                        if total >= MAX_BATCH && at < lines.len() {
                            // The rest comes first in the next batch.
                            let rest = bytes.start + at..bytes.end;
                            lock(queue).chunks.push_front(Chunk::Lines {
                                block,
                                bytes: rest,
                                prefix,
                            });
                            break;
                        }
                    }
                }
            }
            // A batch ends at MAX_BATCH even if more is queued: what is written must be
            // published (and its memory released) while a slow disk still works through a
            // backlog, or readers waiting for the writer would give up on it and memory
            // would grow without bound.
            if total >= MAX_BATCH {
                backlog = true;
                break;
            }
        }
        if total == 0 {
            return false;
        }
        let Some(report) = self.on_failed.take() else {
            // Failed before: drain only, so senders never notice.
            return backlog;
        };
        let result = result
            .and_then(|()| self.w.flush())
            .and_then(|()| self.w.get_ref().file().map(unlinked));
        // A deleted file still takes writes (and disk space nobody can see), and what is
        // in it stays readable through our descriptor: count this batch as written, and
        // stop. After a failed write, what reached the file is what it holds: we are its
        // only writer, from offset 0.
        let before = self.written.load(Ordering::Acquire);
        let now = match result {
            Ok(_) => before + total,
            Err(_) => self
                .w
                .get_ref()
                .file()
                .and_then(File::metadata)
                .map_or(before, |m| m.len()),
        };
        if now > before {
            self.written
                .store(now.min(before + total), Ordering::Release);
            (self.on_written)();
        }
        match result {
            Ok(false) => self.on_failed = Some(report),
            // After a failed write the file no longer matches the offsets the store
            // computed: stop vouching for it, so no line leaves memory for it and nothing
            // more is written.
            Ok(true) => report("it was deleted (was the run directory removed?)".to_owned()),
            Err(e) => report(e.to_string()),
        }
        backlog
    }

    /// Write out everything queued (the queue is closed), and let the file go.
    fn finish(mut self, queue: &Mutex<Queue>) {
        while !lock(queue).chunks.is_empty() {
            self.write_batch(queue);
        }
        if self.on_failed.is_some() {
            let _ = self.w.flush();
        } else {
            // Don't let the buffer's drop write more after a failure.
            let _ = self.w.into_parts();
        }
    }
}

fn lock_writer(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
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
        let state = Arc::new(Mutex::new(Writer::SettingUp));
        let writer_w = Arc::clone(&state);
        let writer = std::thread::Builder::new()
            .name("hitchserve:logfiles".into())
            .spawn(move || {
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
                let file = match file {
                    Ok(file) => file,
                    Err(e) => {
                        *lock_writer(&writer_w) = Writer::Done;
                        on_failed(format!("could not create it: {e}"));
                        // Still drain, so senders never notice.
                        while wait_for_chunk(&queue_w, Instant::now()).is_some() {
                            lock(&queue_w).chunks.clear();
                        }
                        return;
                    }
                };
                let _ = file_w.set(file);
                {
                    let mut state = lock_writer(&writer_w);
                    // (Closed before the file was made: `close` waits for us to finish.)
                    if matches!(*state, Writer::SettingUp) {
                        *state = Writer::Writing(Batches {
                            w: BufWriter::with_capacity(256 * 1024, SharedFile(file_w)),
                            on_failed: Some(Box::new(on_failed)),
                            on_written: Box::new(on_written),
                            written: written_w,
                            buf: Vec::new(),
                        });
                    }
                }
                // Write at most every BATCH: a wake-up per line would take CPU from services.
                // `close` writes what is left itself, so stopping never waits for a batch.
                let mut backlog = false;
                let mut awake_until = Instant::now() + awake_for;
                while let Some(slept) = wait_for_chunk(&queue_w, awake_until) {
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
                    match &mut *lock_writer(&writer_w) {
                        Writer::Writing(batches) => backlog = batches.write_batch(&queue_w),
                        // `close` took over.
                        Writer::SettingUp | Writer::Done => return,
                    }
                    awake_until = Instant::now() + awake_for;
                }
                let mut state = lock_writer(&writer_w);
                if let Writer::Writing(batches) = std::mem::replace(&mut *state, Writer::Done) {
                    batches.finish(&queue_w);
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
            state,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Append rendered lines (see the store) to all.log; wakes the writer only if it sleeps
    /// until woken (see the module's header).
    pub(crate) fn write(&self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.send(Chunk::Bytes(bytes));
        }
    }

    /// Append lines of a store's block to all.log — `bytes` of `block`, each line followed
    /// by a newline there — each after `prefix`: the writer copies them out when it writes
    /// them (so a chatty service's reader doesn't copy every line twice), with no lock of the
    /// store's (a block is only appended to, and shared as it fills). Wakes the writer as
    /// `write` does.
    pub(crate) fn write_lines(&self, block: &Arc<Block>, bytes: Range<usize>, prefix: &Arc<[u8]>) {
        if !bytes.is_empty() {
            self.send(Chunk::Lines {
                block: Arc::clone(block),
                bytes,
                prefix: Arc::clone(prefix),
            });
        }
    }

    fn send(&self, chunk: Chunk) {
        let mut q = lock(&self.queue);
        if q.closed {
            return;
        }
        match (q.chunks.back_mut(), chunk) {
            // Following on in the same block, with the same prefix: one stretch.
            (
                Some(Chunk::Lines {
                    block: last_block,
                    bytes: last,
                    prefix: last_prefix,
                }),
                Chunk::Lines {
                    block,
                    bytes,
                    prefix,
                },
            ) if Arc::ptr_eq(last_block, &block)
                && Arc::ptr_eq(last_prefix, &prefix)
                && last.end == bytes.start =>
            {
                last.end = bytes.end;
            }
            (_, chunk) => q.chunks.push_back(chunk),
        }
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

    /// Write out everything sent so far and stop the writer. Once the file is open, the
    /// rest is written here, on the caller's thread: waking the writer and waiting for it
    /// to end cost two thread hops (~0.1 ms) at every shutdown. Before, the writer is
    /// waited for.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        lock(&self.queue).closed = true;
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut state = lock_writer(&self.state);
        if matches!(*state, Writer::Writing(_)) {
            if let Writer::Writing(batches) = std::mem::replace(&mut *state, Writer::Done) {
                batches.finish(&self.queue);
            }
            drop(state);
            // It ends by itself once it looks (the handle dropped: not waited for).
            self.thread.unpark();
            return;
        }
        drop(state);
        if let Some(handle) = handle {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// Whether the file has been deleted (it has no name left in any directory).
fn unlinked(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.nlink() == 0)
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

    /// A writer for `run` that fails the test if all.log fails, and says on the returned
    /// channel each time a batch is written.
    fn writer(run: RunDir, awake_for: Duration) -> (LogFiles, mpsc::Receiver<()>) {
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
        (files, rx)
    }

    /// A block as the store fills it: `lines` each followed by a newline.
    fn block_of(lines: &[String]) -> Arc<Block> {
        let block = Block::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            // SAFETY: this thread is its only appender.
            unsafe { block.append(&[line.as_bytes(), b"\n"]) };
        }
        Arc::new(block)
    }

    /// Everything sent before `close` is in the file, in order, when it returns: sent
    /// right after the start (the writer may still be making the file) or once it writes,
    /// and more than one batch holds (`close` then writes it in batches itself) — bytes and
    /// lines the writer renders alike, also a range of lines longer than a batch.
    #[test]
    fn close_returns_with_everything_sent_before_it_on_disk() {
        for (round, lines) in [(0, 10), (1, 10), (2, 120_000), (3, 200_000)] {
            let project = Project::new(&format!("hs-files-close-{round}"));
            let run = RunDir::allocate(&project.0);
            let log = run.logs().join("all.log");
            let (files, rx) = writer(run, AWAKE_FOR);
            if round > 0 {
                // Once the file is made and a batch written: `close` finds it writing.
                files.write(b"first\n".to_vec());
                rx.recv_timeout(Duration::from_secs(30))
                    .expect("the first batch was never written");
            }
            let mut expected = if round > 0 {
                "first\n".to_owned()
            } else {
                String::new()
            };
            // Lines of blocks go in stretches of 100 between rendered ones (in round 3, all
            // of them in one block: one stretch, longer than a batch).
            let prefix: Arc<[u8]> = Arc::from(&b"[P] "[..]);
            let stretch = if round == 3 { lines } else { 100 };
            let mut i = 0;
            while i < lines {
                let n = stretch.min(lines - i);
                if round == 3 || (i / 100) % 2 == 1 {
                    let texts: Vec<String> = (i..i + n)
                        .map(|k| format!("seq {k} {}", "y".repeat(40)))
                        .collect();
                    let block = block_of(&texts);
                    let mut at = 0;
                    for text in &texts {
                        expected.push_str(&format!("[P] {text}\n"));
                        // A line at a time: following on, they make one stretch.
                        files.write_lines(&block, at..at + text.len() + 1, &prefix);
                        at += text.len() + 1;
                    }
                } else {
                    for k in i..i + n {
                        let line = format!("line {k:06} of round {round} {}\n", "x".repeat(40));
                        expected.push_str(&line);
                        files.write(line.into_bytes());
                    }
                }
                i += n;
            }
            files.close();
            let written = std::fs::read_to_string(&log).expect("read all.log");
            assert!(written == expected, "round {round}: all.log differs");
            assert_eq!(files.written(), expected.len() as u64, "round {round}");
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
            let (files, rx) = writer(run, awake_for);
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

    /// A whole line may be far longer than a write (up to a quarter of the log memory limit:
    /// 16 MiB by default) and is rendered into the writer's buffer whole. Once it is on
    /// disk, the buffer must not keep that memory for the rest of the run: it is counted
    /// against no limit (the store spills the line's block, the writer would still hold a
    /// copy). Failed before the fix with: the writer keeps a buffer of 33554432 bytes.
    #[test]
    fn a_huge_line_leaves_no_huge_buffer_behind_in_the_writer() {
        const HUGE: usize = 16 << 20;
        let project = Project::new("hs-files-huge-line");
        let run = RunDir::allocate(&project.0);
        let log = run.logs().join("all.log");
        // The huge line, then short ones, in one block (as the store keeps a line longer
        // than a block: in a block of its own).
        let lines = ["x".repeat(HUGE), "seq 1".to_owned(), "seq 2".to_owned()];
        let block = block_of(&lines);
        let (files, rx) = writer(run, AWAKE_FOR);
        files.write_lines(&block, 0..block.len(), &Arc::from(&b""[..]));
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the batch was never written");
        // (Taken once the batch that reported is over: the writer holds this through it.)
        let kept = match &*lock_writer(&files.state) {
            Writer::Writing(batches) => batches.buf.capacity(),
            _ => panic!("the writer stopped"),
        };
        assert!(
            kept <= 2 * WRITE_SIZE,
            "the writer keeps a buffer of {kept} bytes"
        );
        files.close();
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            (HUGE + 1 + "seq 1\nseq 2\n".len()) as u64
        );
    }
}
