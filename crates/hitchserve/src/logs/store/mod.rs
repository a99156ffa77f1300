//! The log store: every line of a bundle, once, in arrival order, within a memory budget.
//!
//! Line bytes live in shared blocks of about 64 KiB (a line never spans two), and each line
//! has a 32-byte index entry. Queries hand out `LogLine`s that share a block (no copy). When
//! the blocks in memory exceed the limit, the oldest ones are dropped from memory once
//! `all.log` holds their lines — every line's offset there is known — and queries read them
//! back from the file. So memory stays bounded and nothing is lost.
//!
//! Unless `all.log` fails (a full disk, the run directory deleted): then lines not on disk
//! can only live in memory, and past the limit the oldest of them are dropped — counted, said
//! in a warning and in an error from the bundle's next call, and shown by queries as lost
//! lines (`LogLine::is_lost`), never as wrong data. The newest lines are kept: they are the
//! ones a failing test's error quotes. The bundle's own lines are never dropped (they are
//! few, and one of them is the warning that says what happened).
//!
//! A line longer than a quarter of the limit arrives in pieces (see `split`), so it never
//! has to be whole in memory: each piece gets a block of its own and an `all.log` line of
//! its own (written before the line's end is known), and the line's entry lists its pieces,
//! which queries join back into the exact bytes.
//!
//! A line a live service has started but not ended (a prompt such as `Password: `) is not a
//! line yet: its reader publishes the held-back start here after a quiet period (a
//! `Partial`, one per source at most), for tails only. It is never an entry nor in all.log,
//! and the source's next append (the line ending, or a piece of it) withdraws it.
//!
//! This file holds the store and appending; `read` the queries and the batches tails take;
//! `blocks` the block layout, long lines' pieces and spilling.
//!
//! Invariants: `entries[i]` is the line with seq `i`; a block is only appended to while the
//! store holds its only reference (`Arc::get_mut`); a block is only spilled once the log
//! writer reports its bytes written; user code (predicates) never runs under the lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{amount, bytes};
use crate::logs::files::LogFiles;
use crate::logs::{End, Filter, LogLine, Part, Source, Stream};

mod blocks;
mod read;

use blocks::{
    append_piece, is_durable, losses, note_file_range, now_nanos, over_bound, prefix, put, render,
    spill,
};
use read::{entry_durable, pick};

pub(crate) use read::Batch;

/// Usual block size; a longer line gets a block of its own.
const BLOCK: usize = 64 * 1024;
/// Most lines in one block.
const BLOCK_LINES: u32 = 2048;
/// `Entry::file` of a line not (yet) in `all.log`.
const NO_FILE: u64 = u64::MAX;
/// `Entry::block` of a line stored in pieces; its `start` indexes `Inner::longs`.
const LONG: u32 = u32::MAX;
/// `Slot::long` of a block that is not a piece of a long line.
const NOT_LONG: u32 = u32::MAX;
/// How long a reader waits, past twice the limit, for the log writer to make progress
/// before going on without it (a stuck disk must slow services down, never hang them).
const WRITER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
/// Smallest piece a long line is cut into.
const MIN_PIECE: usize = 64 * 1024;
/// At most this many lines are handed out per wake-up of a waiter.
const WAIT_BATCH: usize = 4096;

/// Default for `Bundle::log_memory_limit`.
const DEFAULT_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
struct Entry {
    block: u32,
    start: u32,
    len: u32,
    source: u16,
    newline: bool,
    /// Offset of the line's bytes in `all.log`.
    file: u64,
    /// Arrival time, nanoseconds since the Unix epoch.
    time: u64,
}

struct Slot {
    /// Seq of its first line (its lines have consecutive seqs).
    first: u64,
    /// `None` once spilled.
    data: Option<Arc<Vec<u8>>>,
    /// Lines in it: bounded, so the file range read back for one spilled line stays small
    /// even when lines are short or empty.
    lines: u32,
    /// Still taking lines.
    open: bool,
    /// The file range holding this block's lines (contiguous: the file is in seq order).
    file_start: u64,
    file_end: u64,
    /// For a piece of a long line: its index in `Inner::longs`, else `NOT_LONG`.
    long: u32,
}

/// A line stored in pieces.
#[derive(Default)]
struct Long {
    /// Its pieces' blocks, in order.
    pieces: Vec<u32>,
    len: u64,
    /// A piece of it was dropped from memory without being in all.log.
    lost: bool,
}

struct Inner {
    sources: Vec<Arc<Source>>,
    entries: Vec<Entry>,
    blocks: Vec<Slot>,
    /// Bytes of block capacity in memory.
    held: usize,
    /// The most `held` has been.
    peak: usize,
    /// The writer made no progress from this offset within `WRITER_PATIENCE`: don't hold
    /// readers back again until it does.
    stuck_at: Option<u64>,
    limit: usize,
    /// No block before this one is in memory any more.
    spill_from: usize,
    files: Option<Arc<LogFiles>>,
    file_path: Option<PathBuf>,
    /// Bytes handed to the writer so far (the next line's prefix starts here).
    file_pos: u64,
    width: usize,
    /// Each source's all.log prefix (`[   Err Name] `), by source id.
    prefixes: Vec<Vec<u8>>,
    /// Services whose output has ended for good (process exited, pipes drained).
    ended: Vec<usize>,
    /// The bundle has shut down: no line will ever arrive again.
    closed: bool,
    /// `all.log` could not be written: lines past `durable` only live in memory.
    failure: Option<FileFailure>,
    /// Lines (and their bytes) that are not in `all.log` because it failed.
    unwritten: (u64, u64),
    /// Of those, lines (and bytes) also dropped from memory: gone.
    lost: (u64, u64),
    longs: Vec<Long>,
    /// By source id: the long line it is in the middle of, if any (an index in `longs`).
    open_long: Vec<Option<u32>>,
    /// By source id: the start of the line it is in the middle of, if published.
    partials: Vec<Option<Partial>>,
    /// Partials published so far (the last one's stamp).
    partial_stamp: u64,
    /// The bundle's own lines (its warnings, "Starting X") from blocks dropped from memory
    /// while all.log could not take them: never lost — they are few, small, and say what
    /// happened (the warning about all.log among them). By seq.
    kept: HashMap<u64, Arc<Vec<u8>>>,
}

/// The start of a line a source has not ended, as published after a quiet period.
#[derive(Clone)]
pub(crate) struct Partial {
    pub source: Arc<Source>,
    pub bytes: Arc<Vec<u8>>,
    /// Lines stored when it was published: the line it starts is the first line of its
    /// source stored at or after this seq.
    pub from_seq: u64,
    /// Publication order across the store, from 1.
    pub stamp: u64,
    /// When it was published, nanoseconds since the Unix epoch.
    pub time: u64,
}

struct FileFailure {
    /// What went wrong, for messages.
    reason: String,
    /// Bytes of `all.log` that can still be read back: lines ending past it are not there.
    durable: u64,
    /// The error was returned by a call on the bundle already.
    reported: bool,
}

/// What the store knows of lines that did not reach `all.log`, for `Bundle::log_stats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Losses {
    pub peak: usize,
    pub unwritten_lines: u64,
    pub unwritten_bytes: u64,
    pub lost_lines: u64,
    pub lost_bytes: u64,
}

/// Shared by the bundle, its supervisor threads and every `Logs` handle.
pub(crate) struct LogStore {
    inner: Mutex<Inner>,
    grown: Condvar,
    /// Notified when memory was released (lines reached all.log).
    relieved: Condvar,
}

impl LogStore {
    pub(crate) fn new() -> LogStore {
        LogStore {
            inner: Mutex::new(Inner {
                sources: Vec::new(),
                entries: Vec::new(),
                blocks: Vec::new(),
                held: 0,
                peak: 0,
                stuck_at: None,
                limit: DEFAULT_LIMIT,
                spill_from: 0,
                files: None,
                file_path: None,
                file_pos: 0,
                width: 0,
                prefixes: Vec::new(),
                ended: Vec::new(),
                closed: false,
                failure: None,
                unwritten: (0, 0),
                lost: (0, 0),
                longs: Vec::new(),
                open_long: Vec::new(),
                partials: Vec::new(),
                partial_stamp: 0,
                kept: HashMap::new(),
            }),
            grown: Condvar::new(),
            relieved: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data is append-only and stays consistent even if a panic interrupted us.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register where lines can come from; returns the shared source to append with.
    /// A source for lines of `service` (its first start), or of the bundle itself (`None`).
    pub(crate) fn source(
        &self,
        service: Option<usize>,
        name: &str,
        part: Part,
        stream: Stream,
    ) -> Arc<Source> {
        let incarnation = u32::from(service.is_some());
        let mut inner = self.lock();
        // The table is indexed by u16: past that, reuse the newest source of this kind.
        self.add_source(&mut inner, service, name, part, stream, incarnation)
            .or_else(|| {
                inner
                    .sources
                    .iter()
                    .rev()
                    .find(|s| s.service == service && s.part == part && s.stream == stream)
                    .cloned()
            })
            .unwrap_or_else(|| Arc::clone(&inner.sources[0]))
    }

    /// A source for lines of a later start (`incarnation`) of `service`; `None` once the
    /// store holds 65,535 sources (the caller then keeps the previous start's).
    pub(crate) fn source_for(
        &self,
        service: usize,
        name: &str,
        part: Part,
        stream: Stream,
        incarnation: u32,
    ) -> Option<Arc<Source>> {
        let mut inner = self.lock();
        self.add_source(&mut inner, Some(service), name, part, stream, incarnation)
    }

    fn add_source(
        &self,
        inner: &mut Inner,
        service: Option<usize>,
        name: &str,
        part: Part,
        stream: Stream,
        incarnation: u32,
    ) -> Option<Arc<Source>> {
        let id = u16::try_from(inner.sources.len()).ok()?;
        let source = Arc::new(Source::new(id, service, name, part, stream, incarnation));
        inner.sources.push(Arc::clone(&source));
        let prefix = prefix(&source, inner.width);
        inner.prefixes.push(prefix);
        inner.open_long.push(None);
        inner.partials.push(None);
        Some(source)
    }

    pub(crate) fn set_limit(&self, bytes: usize) {
        self.lock().limit = bytes;
    }

    /// How much of an unfinished line a reader may hold back before handing it on as a
    /// piece: a quarter of the limit, so a huge line stays within it too.
    pub(crate) fn piece_size(&self) -> usize {
        (self.lock().limit / 4).max(MIN_PIECE)
    }

    /// Start writing lines to `all.log` (at `path`, through `files`); lines stored before
    /// now are written first. Labels are padded to `width` from now on.
    pub(crate) fn attach_files(&self, files: Arc<LogFiles>, path: PathBuf, width: usize) {
        let mut inner = self.lock();
        inner.width = width;
        inner.prefixes = inner.sources.iter().map(|s| prefix(s, width)).collect();
        if let Some(last) = inner.blocks.last_mut() {
            last.open = false;
        }
        let mut rendered = Vec::new();
        for i in 0..inner.entries.len() {
            let e = inner.entries[i];
            if e.block == LONG {
                // Not before any service runs; left out of all.log rather than joined here.
                continue;
            }
            let bytes = match &inner.blocks[e.block as usize].data {
                Some(d) => d[e.start as usize..(e.start + e.len) as usize].to_vec(),
                None => Vec::new(),
            };
            let prefix = std::mem::take(&mut inner.prefixes[e.source as usize]);
            let file = render(&mut rendered, &mut inner.file_pos, &prefix, &bytes);
            inner.prefixes[e.source as usize] = prefix;
            inner.entries[i].file = file;
            note_file_range(&mut inner.blocks[e.block as usize], file, e.len);
        }
        files.write(rendered);
        inner.files = Some(files);
        inner.file_path = Some(path);
    }

    /// Append lines from one source; returns them as stored if `want` (building them costs
    /// time a fast producer would notice).
    pub(crate) fn append(
        &self,
        source: &Arc<Source>,
        lines: &[(&[u8], End)],
        want: bool,
    ) -> Vec<LogLine> {
        if lines.is_empty() {
            return Vec::new();
        }
        let time = now_nanos();
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Whatever comes next from a source continues its published partial: withdrawn.
        inner.partials[source.id as usize] = None;
        let first_seq = inner.entries.len() as u64;
        let mut rendered = Vec::new();
        let writing = inner.files.is_some() && inner.failure.is_none();
        // Only the first of them can be (or end) a long line: a piece comes alone, and
        // after the end of a long line comes a newline.
        let mut rest = lines;
        if let Some(&(bytes, end)) = lines.first() {
            if end == End::Piece || inner.open_long[source.id as usize].is_some() {
                append_piece(inner, source, bytes, end, writing, &mut rendered, time);
                rest = &lines[1..];
            }
        }
        for &(bytes, end) in rest {
            let newline = end == End::Newline;
            let (block, start) = put(inner, bytes);
            let file = if writing {
                let prefix = &inner.prefixes[source.id as usize];
                render(&mut rendered, &mut inner.file_pos, prefix, bytes)
            } else {
                if inner.failure.is_some() {
                    inner.unwritten.0 += 1;
                    inner.unwritten.1 += bytes.len() as u64;
                }
                NO_FILE
            };
            note_file_range(&mut inner.blocks[block as usize], file, bytes.len() as u32);
            inner.entries.push(Entry {
                block,
                start,
                len: bytes.len() as u32,
                source: source.id,
                newline,
                file,
                time,
            });
        }
        let wanted = if want {
            inner.entries.len() as u64
        } else {
            first_seq
        };
        let stored = (first_seq..wanted)
            .map(|seq| {
                let e = inner.entries[seq as usize];
                if e.block == LONG {
                    return self.join_now(inner, seq);
                }
                let data = inner.blocks[e.block as usize]
                    .data
                    .clone()
                    .unwrap_or_default();
                LogLine::new(
                    seq,
                    Arc::clone(source),
                    data,
                    e.start,
                    e.len,
                    e.newline,
                    e.time,
                )
            })
            .collect();
        let mut behind = false;
        if let Some(files) = inner.files.as_ref() {
            // Sent under the lock, so all.log keeps the arrival order the offsets assume.
            files.write(rendered);
            let written = files.written();
            spill(inner, written);
            behind = over_bound(inner, written);
        }
        self.grown.notify_all();
        if behind {
            self.wait_for_writer(guard);
        }
        stored
    }

    /// Show `bytes`, the start of a line `source` has not ended, to tails (replacing what
    /// was shown of it before).
    pub(crate) fn publish_partial(&self, source: &Arc<Source>, bytes: &[u8]) {
        let time = now_nanos();
        let mut inner = self.lock();
        inner.partial_stamp += 1;
        let partial = Partial {
            source: Arc::clone(source),
            bytes: Arc::new(bytes.to_vec()),
            from_seq: inner.entries.len() as u64,
            stamp: inner.partial_stamp,
            time,
        };
        inner.partials[source.id as usize] = Some(partial);
        drop(inner);
        self.grown.notify_all();
    }

    /// A long line just stored, joined (its last pieces are still in memory).
    #[cold]
    #[inline(never)]
    fn join_now(&self, inner: &Inner, seq: u64) -> LogLine {
        let picked = vec![pick(inner, seq as usize)];
        let files = inner.files.clone();
        self.materialise(picked, files).remove(0)
    }

    /// The writer is far behind a fast producer (a slow disk): hold this reader back until
    /// memory is within twice the limit again, so it stays bounded, or the writer has
    /// made no progress for `WRITER_PATIENCE` (then not again until it does: a stalled disk
    /// costs a service one such wait, and memory grows as it must). The service only notices
    /// once its pipe is full. Not when all.log has failed: then memory is bounded by
    /// dropping lines.
    fn wait_for_writer(&self, mut inner: MutexGuard<'_, Inner>) {
        loop {
            let written = inner.files.as_ref().map_or(0, |f| f.written());
            if !over_bound(&inner, written) || inner.failure.is_some() || inner.closed {
                return;
            }
            if let Some(files) = inner.files.as_ref() {
                files.hurry();
            }
            let held = inner.held;
            let (guard, timeout) = self
                .relieved
                .wait_timeout(inner, WRITER_PATIENCE)
                .unwrap_or_else(|e| e.into_inner());
            inner = guard;
            if timeout.timed_out() && inner.held >= held {
                inner.stuck_at = Some(written);
                return;
            }
        }
    }

    /// The writer has put more on disk: release what memory that allows.
    pub(crate) fn relieve(&self) {
        let mut inner = self.lock();
        let written = inner.files.as_ref().map_or(0, |f| f.written());
        spill(&mut inner, written);
        drop(inner);
        self.relieved.notify_all();
    }

    /// Lines stored, bytes of them held in memory, the limit, and what `all.log` misses.
    pub(crate) fn stats(&self) -> (u64, usize, usize, Losses) {
        let inner = self.lock();
        (
            inner.entries.len() as u64,
            inner.held,
            inner.limit,
            losses(&inner),
        )
    }

    /// `all.log` failed for good (`reason`): from now on lines live in memory only. Returns
    /// the warning to give, with what is missing from the file so far.
    pub(crate) fn files_failed(&self, reason: String) -> String {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let durable = inner.files.as_ref().map_or(0, |f| f.written());
        // The file is in seq order: the lines it misses are the last ones.
        let mut i = inner.entries.len();
        while i > 0 && !entry_durable(inner, &inner.entries[i - 1], durable) {
            i -= 1;
            inner.unwritten.0 += 1;
            inner.unwritten.1 += u64::from(inner.entries[i].len);
        }
        inner.failure = Some(FileFailure {
            reason,
            durable,
            reported: false,
        });
        spill(inner, durable);
        // A reader waiting for the writer must not wait for it any more.
        self.relieved.notify_all();
        let path = inner.file_path.as_deref().unwrap_or(Path::new("all.log"));
        let f = inner.failure.as_ref().map_or("", |f| f.reason.as_str());
        format!(
            "could not write `{}` ({f}): {} missing from it so far; later lines are kept in memory only, and beyond the log memory limit ({}) the oldest of them are dropped (Bundle::log_stats counts them)",
            path.display(),
            amount(inner.unwritten.0, inner.unwritten.1),
            bytes(inner.limit as u64),
        )
    }

    /// The failure of `all.log` as an error, if any (with `once`, only if not returned
    /// before).
    pub(crate) fn file_failure(&self, once: bool) -> Option<crate::error::Error> {
        let mut inner = self.lock();
        let losses = losses(&inner);
        let path = inner.file_path.clone().unwrap_or_default();
        let f = inner.failure.as_mut()?;
        if once && f.reported {
            return None;
        }
        if once {
            f.reported = true;
        }
        Some(crate::error::Error::LogFileFailed {
            path,
            reason: f.reason.clone(),
            lines_not_written: losses.unwritten_lines,
            bytes_not_written: losses.unwritten_bytes,
            lines_lost: losses.lost_lines,
            bytes_lost: losses.lost_bytes,
        })
    }

    /// The bundle has stopped: flush and close `all.log`, and end every pending wait.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let files = inner.files.clone();
        drop(inner);
        self.grown.notify_all();
        self.relieved.notify_all();
        if let Some(files) = files {
            files.close();
        }
    }

    /// Waits may block again (a new startup attempt after one that started nothing).
    pub(crate) fn reopen(&self) {
        self.lock().closed = false;
    }

    /// A service's output goes on (it was started again): waits on it block again.
    pub(crate) fn mark_restarted(&self, service: usize) {
        self.lock().ended.retain(|&s| s != service);
    }

    /// A service's output has ended for good: waits on it can stop.
    pub(crate) fn mark_ended(&self, service: usize) {
        self.lock().ended.push(service);
        self.grown.notify_all();
    }
}
