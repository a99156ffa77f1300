//! The read side of the log store: queries (a range, the last lines, counts), the batches
//! a waiting tail takes, and turning index entries into `LogLine`s — from memory, or read
//! back from `all.log` for spilled blocks, or marked lost.
//!
//! Lines are picked under the store's lock and materialised after it, so a read from the
//! file never holds up a service's reader.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::index::{cut, Known};
use super::*;

/// What a waiter gets.
pub(crate) enum Batch {
    Lines(Vec<LogLine>),
    /// No line is waiting, but these lines have started (oldest publication first).
    Partials(Vec<Partial>),
    Ended,
    TimedOut,
}

/// A line picked under the lock, materialised after it (maybe from the file).
pub(super) struct Picked {
    seq: u64,
    entry: Entry,
    source: Arc<Source>,
    data: Option<Arc<Vec<u8>>>,
    /// The part of all.log to read back for it (up to what is readable there).
    file_range: (u64, u64),
    /// Neither in memory nor in all.log.
    lost: bool,
    /// For a line stored in pieces: each piece's bytes in memory, or where to read it.
    pieces: Option<Vec<PickedPiece>>,
    /// For a line known only by its run: its block's layout and its place among the
    /// block's lines (it is cut from the block read back).
    cut: Option<(Layout, u32)>,
}

/// Where each line of a block read back is in it: (start, length).
type Cuts = Vec<(u32, u32)>;

/// A piece's bytes if in memory, and its range in all.log.
type PickedPiece = (Option<Arc<Vec<u8>>>, (u64, u64));

const LOST_UNWRITTEN: &str = "all.log could not be written and the log memory limit was reached";
const LOST_UNREADABLE: &str = "it was moved to all.log to save memory and could not be read back";

/// What a query returns for a line that is gone: a note saying so, marked lost.
fn lost_line(e: &Entry, seq: u64, source: Arc<Source>, why: &str) -> LogLine {
    let note = format!("[hitchserve: this line ({} bytes) is lost: {why}]", e.len).into_bytes();
    let len = note.len() as u32;
    LogLine::new(seq, source, Arc::new(note), 0, len, e.newline, e.time).into_lost()
}

impl LogStore {
    /// The last `n` lines of `filter` in the console format (with `pad`, labels padded alike),
    /// then the lines its sources have started but not ended, so that an error shows a service
    /// stuck at a prompt.
    pub(crate) fn last_lines(&self, filter: &Filter, n: usize, pad: bool) -> Vec<String> {
        let lines = self.last(filter, n);
        let partials = self.partial_lines(filter);
        let all = lines.iter().chain(&partials);
        let width = if pad {
            all.clone().map(|l| l.label().len()).max().unwrap_or(0)
        } else {
            0
        };
        let whole = lines.iter().map(|l| format!("{l:width$}"));
        let started = partials
            .iter()
            .map(|l| format!("{l:width$} [hitchserve: no newline yet]"));
        whole.chain(started).collect()
    }

    /// The number of lines stored so far (the next line's seq).
    pub(crate) fn len(&self) -> u64 {
        self.lock().index.len() as u64
    }

    /// The run's `all.log` once it is open: where every line is, for errors to point at.
    pub(crate) fn file_path(&self) -> Option<std::path::PathBuf> {
        self.lock().file_path.clone()
    }

    /// Write the run's `timeline.svg` at `path` (through all.log's writer, which made it).
    pub(crate) fn write_timeline(&self, path: &std::path::Path, svg: &[u8]) -> std::io::Result<()> {
        let files = self.lock().files.clone();
        match files {
            Some(files) => files.write_timeline(path, svg),
            None => std::fs::write(path, svg),
        }
    }

    /// Lines matching `filter` with seq in `from..to` (`to` = now if `None`), oldest first.
    pub(crate) fn select(&self, filter: &Filter, from: u64, to: Option<u64>) -> Vec<LogLine> {
        let (picked, path) = {
            let inner = self.lock();
            let end = to.map_or(inner.index.len(), |t| (t as usize).min(inner.index.len()));
            let start = (from as usize).min(end);
            let picked = (start..end)
                .filter(|&i| filter.matches(&inner.sources[inner.index.source(i) as usize]))
                .map(|i| pick(&inner, i))
                .collect::<Vec<_>>();
            (picked, inner.files.clone())
        };
        self.materialise(picked, path)
    }

    /// The last `n` lines matching `filter`, oldest first.
    pub(crate) fn last(&self, filter: &Filter, n: usize) -> Vec<LogLine> {
        let (mut picked, path) = {
            let inner = self.lock();
            let picked = (0..inner.index.len())
                .rev()
                .filter(|&i| filter.matches(&inner.sources[inner.index.source(i) as usize]))
                .take(n)
                .map(|i| pick(&inner, i))
                .collect::<Vec<_>>();
            (picked, inner.files.clone())
        };
        picked.reverse();
        self.materialise(picked, path)
    }

    pub(crate) fn count(&self, filter: &Filter) -> usize {
        let inner = self.lock();
        inner
            .index
            .count(|source| filter.matches(&inner.sources[source as usize]))
    }

    /// The seq from which the last `n` lines matching `filter` (before `before`) start.
    pub(crate) fn back_from(&self, filter: &Filter, before: u64, n: usize) -> u64 {
        if n == 0 {
            return before;
        }
        let inner = self.lock();
        let before = (before as usize).min(inner.index.len());
        let mut seen = 0;
        for i in (0..before).rev() {
            if filter.matches(&inner.sources[inner.index.source(i) as usize]) {
                seen += 1;
                if seen == n {
                    return i as u64;
                }
            }
        }
        0
    }

    /// The name of a service as its lines are labelled, for messages.
    pub(crate) fn service_name(&self, service: usize) -> Option<String> {
        self.lock()
            .sources
            .iter()
            .find(|s| s.service == Some(service))
            .map(|s| s.name.clone())
    }

    /// Wait for lines matching `filter` at or after `*pos`; `*pos` moves past every line
    /// examined. Returns at most `WAIT_BATCH` lines at a time. Once there are none, returns
    /// the partials of matching sources published after stamp `*seen` (which moves on).
    pub(crate) fn next_batch(
        &self,
        filter: &Filter,
        pos: &mut u64,
        seen: &mut u64,
        deadline: Option<Instant>,
    ) -> Batch {
        let mut inner = self.lock();
        loop {
            let end = inner.index.len();
            let mut picked = Vec::new();
            // Lines still in memory, the usual case for a tail that keeps up, are made here
            // at once (no `Picked`, no `materialise`): a batch of them ends at the first line
            // that is not, and a batch of the others at the first that is.
            let mut lines = Vec::new();
            let mut i = *pos as usize;
            while i < end && picked.len() + lines.len() < WAIT_BATCH {
                if filter.matches(&inner.sources[inner.index.source(i) as usize]) {
                    match in_memory(&inner, i) {
                        Some(line) if picked.is_empty() => lines.push(line),
                        Some(_) => break,
                        None if lines.is_empty() => picked.push(pick(&inner, i)),
                        None => break,
                    }
                }
                i += 1;
            }
            *pos = i as u64;
            if !lines.is_empty() {
                return Batch::Lines(lines);
            }
            if !picked.is_empty() {
                let path = inner.files.clone();
                drop(inner);
                return Batch::Lines(self.materialise(picked, path));
            }
            if inner.partial_stamp > *seen {
                let mut partials: Vec<Partial> = inner
                    .partials
                    .iter()
                    .flatten()
                    .filter(|p| p.stamp > *seen && filter.matches(&p.source))
                    .cloned()
                    .collect();
                *seen = inner.partial_stamp;
                if !partials.is_empty() {
                    partials.sort_by_key(|p| p.stamp);
                    return Batch::Partials(partials);
                }
            }
            let ended = filter
                .service
                .is_some_and(|s| inner.ended.iter().any(|(e, _)| *e == s));
            if ended || inner.closed {
                return Batch::Ended;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return Batch::TimedOut;
            }
            inner.sleeping_tails += 1;
            inner = match left {
                None => self.grown.wait(inner).unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    self.grown
                        .wait_timeout(inner, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            inner.sleeping_tails -= 1;
        }
    }

    /// The partial lines of sources matching `filter`, oldest publication first.
    pub(crate) fn partial_lines(&self, filter: &Filter) -> Vec<LogLine> {
        let inner = self.lock();
        let mut partials: Vec<&Partial> = inner
            .partials
            .iter()
            .flatten()
            .filter(|p| filter.matches(&p.source))
            .collect();
        partials.sort_by_key(|p| p.stamp);
        partials.iter().map(|p| p.line(0)).collect()
    }

    /// Turn picked lines into `LogLine`s, reading spilled blocks back from `all.log` (one
    /// read per block, outside the lock).
    pub(super) fn materialise(
        &self,
        picked: Vec<Picked>,
        files: Option<Arc<LogFiles>>,
    ) -> Vec<LogLine> {
        // The last block read back, and (once needed) where its lines are in it.
        let mut loaded: Option<(u64, Arc<Vec<u8>>)> = None;
        let mut cuts: Option<(u64, Option<Cuts>)> = None;
        let file = files.as_deref().and_then(LogFiles::file);
        picked
            .into_iter()
            .map(|p| {
                let e = p.entry;
                let source = p.source;
                if let Some(data) = p.data {
                    return LogLine::new(p.seq, source, data, e.start, e.len, e.newline, e.time);
                }
                if let Some(pieces) = p.pieces {
                    if p.lost {
                        return lost_line(&p.entry, p.seq, source, LOST_UNWRITTEN);
                    }
                    let mut joined = Vec::with_capacity(e.len as usize);
                    for (data, (from, to)) in pieces {
                        match data {
                            Some(d) => joined.extend_from_slice(&d),
                            None => joined.extend_from_slice(&read_back(file, from, to)),
                        }
                    }
                    if joined.len() != e.len as usize {
                        return lost_line(&p.entry, p.seq, source, LOST_UNREADABLE);
                    }
                    let data = Arc::new(joined);
                    return LogLine::new(p.seq, source, data, 0, e.len, e.newline, e.time);
                }
                if p.lost {
                    return lost_line(&p.entry, p.seq, source, LOST_UNWRITTEN);
                }
                let (from, to) = p.file_range;
                let block = match &loaded {
                    Some((start, data)) if *start == from => Arc::clone(data),
                    _ => {
                        let data = Arc::new(read_back(file, from, to));
                        loaded = Some((from, Arc::clone(&data)));
                        data
                    }
                };
                let (start, len) = match &p.cut {
                    None => (e.file.saturating_sub(from), u64::from(e.len)),
                    Some((layout, at)) => {
                        if cuts.as_ref().is_none_or(|(start, _)| *start != from) {
                            cuts = Some((from, cut(&block, layout)));
                        }
                        let found = cuts
                            .as_ref()
                            .and_then(|(_, c)| c.as_ref())
                            .and_then(|c| c.get(*at as usize));
                        match found {
                            Some(&(start, len)) => (u64::from(start), u64::from(len)),
                            None => return lost_line(&p.entry, p.seq, source, LOST_UNREADABLE),
                        }
                    }
                };
                let inside = (p.cut.is_some() || e.file >= from)
                    && start.saturating_add(len) <= block.len() as u64;
                if inside {
                    let (start, len) = (start as u32, len as u32);
                    LogLine::new(p.seq, source, block, start, len, e.newline, e.time)
                } else {
                    lost_line(&p.entry, p.seq, source, LOST_UNREADABLE)
                }
            })
            .collect()
    }
}

/// Line `i` made from memory, if it is an ordinary line held there (not one in pieces, nor
/// of a spilled block, nor kept after a failure).
#[inline]
fn in_memory(inner: &Inner, i: usize) -> Option<LogLine> {
    let Known::Entry(e) = inner.index.known(i, |b| inner.blocks[b as usize].first) else {
        return None;
    };
    if e.block == LONG {
        return None;
    }
    let data = inner.blocks[e.block as usize].data.as_ref()?;
    Some(LogLine::new(
        i as u64,
        Arc::clone(&inner.sources[e.source as usize]),
        Arc::clone(data),
        e.start,
        e.len,
        e.newline,
        e.time,
    ))
}

#[inline]
pub(super) fn pick(inner: &Inner, i: usize) -> Picked {
    let e = match inner.index.known(i, |b| inner.blocks[b as usize].first) {
        Known::Entry(e) if e.block == LONG => return pick_long(inner, i, e),
        Known::Entry(e) => e,
        Known::Old(run, at) => return pick_old(inner, i, run, at),
    };
    // Without a failure, a line leaves memory only once all.log has it.
    let durable = inner.failure.as_ref().map_or(u64::MAX, |f| f.durable);
    let slot = &inner.blocks[e.block as usize];
    if slot.data.is_none() {
        if let Some(kept) = inner.kept.get(&(i as u64)) {
            return Picked {
                seq: i as u64,
                entry: Entry { start: 0, ..e },
                source: Arc::clone(&inner.sources[e.source as usize]),
                data: Some(Arc::clone(kept)),
                file_range: (slot.file_start, slot.file_end.min(durable)),
                lost: false,
                pieces: None,
                cut: None,
            };
        }
    }
    Picked {
        seq: i as u64,
        entry: e,
        source: Arc::clone(&inner.sources[e.source as usize]),
        data: slot.data.clone(),
        file_range: (slot.file_start, slot.file_end.min(durable)),
        lost: slot.data.is_none() && !is_durable(&e, durable),
        pieces: None,
        cut: None,
    }
}

/// A line of a spilled block, known by its run: the `at`th line of its block.
#[cold]
#[inline(never)]
fn pick_old(inner: &Inner, i: usize, run: index::Run, at: u32) -> Picked {
    let durable = inner.failure.as_ref().map_or(u64::MAX, |f| f.durable);
    let slot = &inner.blocks[run.block as usize];
    let source = Arc::clone(&inner.sources[run.source as usize]);
    let entry = Entry {
        block: run.block,
        start: 0,
        len: run.len,
        source: run.source,
        newline: run.newline,
        file: NO_FILE,
        time: run.time,
    };
    if let Some(kept) = inner.kept.get(&(i as u64)) {
        return Picked {
            seq: i as u64,
            entry: Entry {
                len: kept.len() as u32,
                ..entry
            },
            source,
            data: Some(Arc::clone(kept)),
            file_range: (0, 0),
            lost: false,
            pieces: None,
            cut: None,
        };
    }
    Picked {
        seq: i as u64,
        entry,
        source,
        data: None,
        file_range: (slot.file_start, slot.file_end.min(durable)),
        lost: run.lost,
        pieces: None,
        cut: slot.layout.clone().map(|layout| (layout, at)),
    }
}

#[cold]
#[inline(never)]
fn pick_long(inner: &Inner, i: usize, e: Entry) -> Picked {
    let durable = inner.failure.as_ref().map_or(u64::MAX, |f| f.durable);
    let long = &inner.longs[e.start as usize];
    let pieces = long
        .pieces
        .iter()
        .map(|&b| {
            let slot = &inner.blocks[b as usize];
            (
                slot.data.clone(),
                (slot.file_start, slot.file_end.min(durable)),
            )
        })
        .collect();
    Picked {
        seq: i as u64,
        entry: e,
        source: Arc::clone(&inner.sources[e.source as usize]),
        data: None,
        file_range: (0, 0),
        lost: long.lost,
        pieces: Some(pieces),
        cut: None,
    }
}

/// Read a spilled block's file range back; empty on failure (callers mark such lines).
fn read_back(file: Option<&std::fs::File>, from: u64, to: u64) -> Vec<u8> {
    let Some(f) = file else {
        return Vec::new();
    };
    let mut buf = vec![0u8; to.saturating_sub(from) as usize];
    match f.read_exact_at(&mut buf, from) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}
