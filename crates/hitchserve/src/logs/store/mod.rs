//! The log store: every line of a bundle, once, in arrival order, within a memory budget.
//!
//! Line bytes live in shared blocks of about 64 KiB (a line never spans two), and each line
//! of a block in memory has a 32-byte index entry. Queries hand out `LogLine`s that share a
//! block (no copy). When the blocks and the index in memory exceed the limit, the oldest
//! blocks are dropped from memory once `all.log` holds their lines, their lines' entries
//! folded into a few runs (see `index`: a line's place in all.log is found by cutting the
//! block read back), and queries read them back from the file. So memory stays bounded
//! whatever the number of lines, and nothing is lost.
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
//! A line's place in all.log is fixed when it is appended; its bytes there are copied later,
//! by the log writer, from its block (each line is followed by a newline in its block, so
//! the writer needs no index: see `LogFiles::write_lines`), which is why a block is only
//! spilled once all.log holds its lines.
//!
//! This file holds the store's data and its life (made, closed, reopened, a service's output
//! ended or going on); `write` appending, sources, long lines' pieces, rendering for
//! all.log and spilling; `read`
//! the queries and the batches tails take; `index` what is known of each line by seq.
//!
//! Invariants: `index` knows the line with seq `i` as the `i`th; what the store counts
//! against the limit (`Inner::memory`) is every byte it holds per line or block; a block is
//! only appended to under the lock (it is shared meanwhile: see `block`), each line followed
//! by a newline; a block is only spilled once the log writer reports its bytes written;
//! user code (predicates) never runs under the lock.

use crate::logs::block::Block;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{amount, bytes};
use crate::logs::files::LogFiles;
use crate::logs::line::{Filter, LogLine, Part, Source, Stream};
use crate::logs::split::End;

mod index;
pub(crate) mod read;
mod write;

use index::{Entry, Index, Layout, LONG};

/// Usual block size; a longer line gets a block of its own.
const BLOCK: usize = 64 * 1024;
/// Most lines in one block.
const BLOCK_LINES: u32 = 2048;
/// `Entry::file` of a line not (yet) in `all.log`.
const NO_FILE: u64 = u64::MAX;
/// `Slot::long` of a block that is not a piece of a long line.
const NOT_LONG: u32 = u32::MAX;
/// How long a reader waits, past the limit, for the log writer to make progress
/// before going on without it (a stuck disk must slow services down, never hang them).
const WRITER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
/// Smallest piece a long line is cut into.
const MIN_PIECE: usize = 64 * 1024;
/// At most this many lines are handed out per wake-up of a waiter. Small enough that a
/// batch's vectors come from the heap again and again (at 4,096, ~600 KB of them were
/// mapped, faulted in and unmapped for every batch: a fifth of a fast tail's time).
const WAIT_BATCH: usize = 256;

/// Default for `Bundle::log_memory_limit`.
const DEFAULT_LIMIT: usize = 64 * 1024 * 1024;

struct Slot {
    /// Seq of its first line (its lines have consecutive seqs).
    first: u64,
    /// `None` once spilled.
    data: Option<Arc<Block>>,
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
    /// Once spilled: how its range of all.log is cut into its lines.
    layout: Option<Layout>,
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
    index: Index,
    blocks: Vec<Slot>,
    /// Bytes of block capacity in memory.
    held: usize,
    /// Bytes of the spilled blocks' layouts.
    layouts: usize,
    /// The most `memory()` has been.
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
    prefixes: Vec<Arc<[u8]>>,
    /// Services whose output has ended for good (process exited, pipes drained), and how
    /// ("exited (exit code 3)"), for a wait it ends.
    ended: Vec<(usize, String)>,
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
    kept: HashMap<u64, Arc<Block>>,
    /// Tails asleep on `grown`: an append wakes them only if there are any (a condition
    /// variable's notify is a system call even with nobody waiting, and the wake-up of a
    /// tail that has caught up with a chatty service costs its reader more).
    sleeping_tails: u32,
    /// Lines tails may see: all but those of a read still being stored (see
    /// `LogStore::wake_tails`) and those from the start of a read held back (`holds`), so
    /// that what one read of both pipes brought is seen whole, never a line of one pipe
    /// before the other's earlier lines — whoever else publishes meanwhile. Queries other
    /// than tails see every line stored.
    published: usize,
    /// Where each read held back (see `LogStore::hold`) began: nothing from there on is
    /// published until it is let go.
    holds: Vec<usize>,
}

impl Inner {
    /// Publish what may be (everything before the first held-back read); whether that
    /// showed tails more.
    fn publish(&mut self) -> bool {
        let upto = self
            .holds
            .iter()
            .copied()
            .min()
            .unwrap_or(usize::MAX)
            .min(self.index.len());
        let moved = upto > self.published;
        if moved {
            self.published = upto;
        }
        moved
    }
}

/// The start of a line a source has not ended, as published after a quiet period.
#[derive(Clone)]
pub(crate) struct Partial {
    pub source: Arc<Source>,
    pub bytes: Arc<Block>,
    /// Lines stored when it was published: the line it starts is the first line of its
    /// source stored at or after this seq.
    pub from_seq: u64,
    /// Publication order across the store, from 1.
    pub stamp: u64,
    /// When it was published, nanoseconds since the Unix epoch.
    pub time: u64,
}

impl Partial {
    /// It as a line a tail hands out, from its `skip`th byte on.
    pub(crate) fn line(&self, skip: usize) -> LogLine {
        LogLine::partial(
            self.from_seq,
            Arc::clone(&self.source),
            Arc::clone(&self.bytes),
            skip,
            self.time,
        )
    }
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
    /// Lines were appended for sleeping tails without waking them (the reader wakes them
    /// once it has stored all that one read brought: see `LogStore::wake_tails`). Set under
    /// the lock, after the tails went to sleep on `grown`; read without it.
    unwoken: AtomicBool,
    /// Notified when memory was released (lines reached all.log).
    relieved: Condvar,
}

impl LogStore {
    pub(crate) fn new() -> LogStore {
        LogStore {
            inner: Mutex::new(Inner {
                sources: Vec::new(),
                index: Index::new(),
                blocks: Vec::new(),
                held: 0,
                layouts: 0,
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
                sleeping_tails: 0,
                published: 0,
                holds: Vec::new(),
            }),
            grown: Condvar::new(),
            unwoken: AtomicBool::new(false),
            relieved: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data is append-only and stays consistent even if a panic interrupted us.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bundle has stopped: flush and close `all.log`, and end every pending wait.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.published = inner.index.len();
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
        self.lock().ended.retain(|&(s, _)| s != service);
    }

    /// A service's output has ended for good (`how` it ended, in words): waits on it can
    /// stop.
    pub(crate) fn mark_ended(&self, service: usize, how: String) {
        let mut inner = self.lock();
        // The latest word on it (a restart refused after an exit says both, in turn).
        inner.ended.retain(|&(s, _)| s != service);
        inner.ended.push((service, how));
        // (Its own lines are all shown to its tails once it has ended: see `next_batch`;
        // another service's read held back stays so.)
        inner.publish();
        drop(inner);
        self.grown.notify_all();
    }

    /// How service `service`'s output ended, if it has.
    pub(crate) fn how_ended(&self, service: usize) -> Option<String> {
        let inner = self.lock();
        inner
            .ended
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, how)| how.clone())
    }
}

impl Inner {
    /// Bytes the store holds for its lines: blocks in memory, the index, the blocks' table.
    fn memory(&self) -> usize {
        self.held + self.index.bytes() + self.blocks.capacity() * size_of::<Slot>() + self.layouts
    }

    /// Note the memory held now in the peak.
    fn note_peak(&mut self) {
        self.peak = self.peak.max(self.memory());
    }
}

/// Whether all.log holds the line, given how much of it is readable.
fn is_durable(e: &Entry, durable: u64) -> bool {
    e.file != NO_FILE && e.file.saturating_add(u64::from(e.len)) <= durable
}

/// Whether all.log holds the whole line (a long one: its last piece, so all of them).
fn entry_durable(inner: &Inner, e: &Entry, durable: u64) -> bool {
    if e.block != LONG {
        return is_durable(e, durable);
    }
    let long = &inner.longs[e.start as usize];
    long.pieces.last().is_some_and(|&b| {
        let slot = &inner.blocks[b as usize];
        slot.file_start != NO_FILE && slot.file_end <= durable
    })
}
