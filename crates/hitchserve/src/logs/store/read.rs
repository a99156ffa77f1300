//! The read side of the log store: queries (a range, the last lines, counts), the batches
//! a waiting tail takes, and turning index entries into `LogLine`s — from memory, or read
//! back from `all.log` for spilled blocks, or marked lost.
//!
//! Lines are picked under the store's lock and materialised after it, so a read from the
//! file never holds up a service's reader.

use crate::logs::block::Block;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::index::{cut, Known};
use super::*;

/// What a waiter gets.
pub(crate) enum Batch {
    Lines(Vec<LogLine>),
    /// Lines held in memory, the usual case for a tail that keeps up: looked at through
    /// [`Held::walk`] without a `LogLine` of its own each.
    Held(Held),
    /// No line is waiting, but these lines have started (oldest publication first).
    Partials(Vec<Partial>),
    Ended,
    TimedOut,
}

/// Lines in memory handed to a waiter: the blocks and sources they are in (each once)
/// and, per line, where.
pub(crate) struct Held {
    blocks: Vec<Arc<Block>>,
    sources: Vec<Arc<Source>>,
    lines: Vec<HeldLine>,
}

// A batch's block and source indexes are `u16`: it has no more blocks or sources than lines.
const _: () = assert!(WAIT_BATCH <= 1 << 16);

/// Where one line of a [`Held`] batch is.
struct HeldLine {
    seq: u64,
    time: u64,
    start: u32,
    len: u32,
    /// Indexes into the batch's `blocks` and `sources`.
    block: u16,
    source: u16,
    newline: bool,
}

impl Held {
    /// A batch of up to `lines` lines (its list is sized once: grown by doubling, it was
    /// a fast tail's main cost after the lines themselves).
    fn with_capacity(lines: usize) -> Held {
        Held {
            blocks: Vec::new(),
            sources: Vec::new(),
            lines: Vec::with_capacity(lines),
        }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Add line `i` of `inner` if it is an ordinary line held in memory (not one in pieces,
    /// nor of a spilled block, nor kept after a failure); false if it is not. `e` is its
    /// entry, if it has one.
    #[inline]
    fn push(&mut self, inner: &Inner, i: usize, e: Option<&Entry>) -> bool {
        let Some(e) = e.filter(|e| e.block != LONG) else {
            return false;
        };
        let Some(data) = inner.blocks[e.block as usize].data.as_ref() else {
            return false;
        };
        // A batch spans a few blocks and sources: the last one is almost always it.
        let block = match self.blocks.iter().rposition(|b| Arc::ptr_eq(b, data)) {
            Some(at) => at,
            None => {
                self.blocks.push(Arc::clone(data));
                self.blocks.len() - 1
            }
        };
        let source = &inner.sources[e.source as usize];
        let source = match self.sources.iter().rposition(|s| Arc::ptr_eq(s, source)) {
            Some(at) => at,
            None => {
                self.sources.push(Arc::clone(source));
                self.sources.len() - 1
            }
        };
        // (A batch holds at most `WAIT_BATCH` lines, so it has no more blocks or sources.)
        self.lines.push(HeldLine {
            seq: i as u64,
            time: e.time,
            start: e.start,
            len: e.len,
            block: block as u16,
            source: source as u16,
            newline: e.newline,
        });
        true
    }

    /// Line `l` of this batch as a `LogLine` of its own.
    fn line(&self, l: &HeldLine) -> LogLine {
        LogLine::new(
            l.seq,
            Arc::clone(&self.sources[l.source as usize]),
            Arc::clone(&self.blocks[l.block as usize]),
            l.start,
            l.len,
            l.newline,
            l.time,
        )
    }

    /// Look at each line in turn through one `LogLine` moved along the batch, until `f`
    /// says to stop (`Some`); returns what it said.
    pub(crate) fn walk<T>(&self, mut f: impl FnMut(&LogLine) -> Option<T>) -> Option<T> {
        let mut lines = self.lines.iter();
        let mut line = self.line(lines.next()?);
        if let Some(hit) = f(&line) {
            return Some(hit);
        }
        for l in lines {
            line.rebind(
                l.seq,
                &self.sources[l.source as usize],
                &self.blocks[l.block as usize],
                l.start,
                l.len,
                l.newline,
                l.time,
            );
            if let Some(hit) = f(&line) {
                return Some(hit);
            }
        }
        None
    }

    /// Each line as a `LogLine` of its own.
    pub(crate) fn into_lines(self) -> impl Iterator<Item = LogLine> {
        (0..self.lines.len()).map(move |i| self.line(&self.lines[i]))
    }
}

/// The longest line an error quotes whole: a service's megabyte-long line (a dump, a
/// minified bundle) must not flood the test's output or a CI log.
const QUOTED_AT_MOST: usize = 2000;

/// `line` as an error quotes it: cut past `QUOTED_AT_MOST` bytes, saying how much more
/// there is, and where.
fn shortened(mut line: String) -> String {
    if line.len() <= QUOTED_AT_MOST {
        return line;
    }
    let mut cut = QUOTED_AT_MOST;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    let more = line.len() - cut;
    line.truncate(cut);
    line.push_str(&format!(
        " [hitchserve: {more} more bytes of this line are in all.log]"
    ));
    line
}

/// A line picked under the lock, materialised after it (maybe from the file).
pub(super) struct Picked {
    seq: u64,
    entry: Entry,
    source: Arc<Source>,
    data: Option<Arc<Block>>,
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
type PickedPiece = (Option<Arc<Block>>, (u64, u64));

const LOST_UNWRITTEN: &str = "all.log could not be written and the log memory limit was reached";
const LOST_UNREADABLE: &str = "it was moved to all.log to save memory and could not be read back";

/// What a query returns for a line that is gone: a note saying so, marked lost.
fn lost_line(e: &Entry, seq: u64, source: Arc<Source>, why: &str) -> LogLine {
    let note = format!("[hitchserve: this line ({} bytes) is lost: {why}]", e.len).into_bytes();
    let len = note.len() as u32;
    LogLine::new(
        seq,
        source,
        Arc::new(Block::from_vec(note)),
        0,
        len,
        e.newline,
        e.time,
    )
    .into_lost()
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
        let whole = lines.iter().map(|l| shortened(format!("{l:width$}")));
        let started = partials
            .iter()
            .map(|l| shortened(format!("{l:width$}")) + " [hitchserve: no newline yet]");
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
            let ended = filter
                .service
                .is_some_and(|s| inner.ended.iter().any(|(e, _)| *e == s));
            // What tails may see (see `published`); all, once nothing more comes.
            let end = if ended || inner.closed {
                inner.index.len()
            } else {
                inner.published
            };
            let mut picked = Vec::new();
            // Lines still in memory, the usual case for a tail that keeps up, are handed
            // out as they are (no `Picked`, no `materialise`): a batch of them ends at the
            // first line that is not, and a batch of the others at the first that is.
            let mut i = *pos as usize;
            let mut held = Held::with_capacity(end.saturating_sub(i).min(WAIT_BATCH));
            // Whether the last source looked at matches: lines come in runs of one source.
            let mut last: Option<(u16, bool)> = None;
            while i < end && picked.len() + held.len() < WAIT_BATCH {
                let entry = inner.index.entry(i);
                let source = match entry {
                    Some(e) => e.source,
                    None => inner.index.source(i),
                };
                let matches = match last {
                    Some((s, m)) if s == source => m,
                    _ => {
                        let m = filter.matches(&inner.sources[source as usize]);
                        last = Some((source, m));
                        m
                    }
                };
                if matches {
                    if !picked.is_empty() {
                        if in_memory(&inner, i) {
                            break;
                        }
                        picked.push(pick(&inner, i));
                    } else if !held.push(&inner, i, entry) {
                        if !held.is_empty() {
                            break;
                        }
                        picked.push(pick(&inner, i));
                    }
                }
                i += 1;
            }
            *pos = i as u64;
            if !held.is_empty() {
                return Batch::Held(held);
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
        let mut loaded: Option<(u64, Arc<Block>)> = None;
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
                    let data = Arc::new(Block::from_vec(joined));
                    return LogLine::new(p.seq, source, data, 0, e.len, e.newline, e.time);
                }
                if p.lost {
                    return lost_line(&p.entry, p.seq, source, LOST_UNWRITTEN);
                }
                let (from, to) = p.file_range;
                let block = match &loaded {
                    Some((start, data)) if *start == from => Arc::clone(data),
                    _ => {
                        let data = Arc::new(Block::from_vec(read_back(file, from, to)));
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

/// Whether line `i` is an ordinary line held in memory (see [`Held::push`]).
#[inline]
fn in_memory(inner: &Inner, i: usize) -> bool {
    match inner.index.known(i, |b| inner.blocks[b as usize].first) {
        Known::Entry(e) => e.block != LONG && inner.blocks[e.block as usize].data.is_some(),
        Known::Old(..) => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::split::LineSplitter;

    /// Lines appended as one group are copied into blocks a run at a time: across block
    /// ends, around a line bigger than a block, and back, each reads back as written — as
    /// one group, and as the splitter hands them on from reads cut anywhere.
    #[test]
    fn a_group_of_lines_reads_back_as_written_across_blocks() {
        let text = |i: usize| match i {
            500 => "x".repeat(BLOCK + 10),
            _ => format!("{i:0w$}", w = 1 + i % 200),
        };
        let lines: Vec<String> = (0..3_000).map(text).collect();
        let read_back = |store: &LogStore| -> Vec<String> {
            store
                .select(&Filter::service(None), 0, None)
                .iter()
                .map(|l| l.text().into_owned())
                .collect()
        };
        let store = LogStore::new();
        let a = store.source(Some(0), "A", Part::Main, Stream::Stdout);
        let group: Vec<(&[u8], End)> = lines.iter().map(|l| (l.as_bytes(), End::Newline)).collect();
        store.append(&a, &group, false, true);
        assert_eq!(read_back(&store), lines);
        let stream = lines.join("\n") + "\n";
        for cut in [stream.len(), 100_003, 4_097, 81] {
            let store = LogStore::new();
            let a = store.source(Some(0), "A", Part::Main, Stream::Stdout);
            let mut splitter = LineSplitter::new(1 << 20);
            for chunk in stream.as_bytes().chunks(cut) {
                splitter.split(chunk, |lines| {
                    store.append(&a, lines, false, true);
                });
            }
            assert_eq!(read_back(&store), lines, "reads of {cut} bytes");
        }
    }

    /// A waiter walks a batch through one line moved along it: each line it sees is the
    /// line stored there (text, service, seq), across blocks and sources, and a batch
    /// ends at the first line a filter leaves out of memory only.
    #[test]
    fn a_waiter_sees_each_line_of_a_batch_as_stored() {
        let store = LogStore::new();
        let a = store.source(Some(0), "A", Part::Main, Stream::Stdout);
        let b = store.source(Some(1), "B", Part::Main, Stream::Stdout);
        // Lines of 80 bytes: more than a block's worth, from both sources in turn.
        let text = |i: usize| format!("{i:080}");
        for i in 0..2_000 {
            let line = text(i);
            let source = if i % 3 == 0 { &b } else { &a };
            store.append(source, &[(line.as_bytes(), End::Newline)], false, true);
        }
        let everything = Filter::service(None);
        let want = store.select(&everything, 0, None);
        let (mut pos, mut seen, mut got) = (0, 0, Vec::new());
        while (pos as usize) < want.len() {
            match store.next_batch(&everything, &mut pos, &mut seen, None) {
                Batch::Held(held) => {
                    let none: Option<()> = held.walk(|l| {
                        got.push((l.seq(), l.service().to_owned(), l.text().into_owned()));
                        None
                    });
                    assert!(none.is_none());
                }
                _ => panic!("lines in memory come as held"),
            }
        }
        let want: Vec<_> = want
            .iter()
            .map(|l| (l.seq(), l.service().to_owned(), l.text().into_owned()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[3], (3, "B".to_owned(), text(3)));
        // A filter leaves the other source's lines out of the batch, not its seqs.
        let only_b = Filter::service(Some(1));
        let (mut pos, mut b_lines) = (0, Vec::new());
        // (A deadline of now: past the last line of B, the wait ends rather than waits.)
        while let Batch::Held(held) =
            store.next_batch(&only_b, &mut pos, &mut 0, Some(Instant::now()))
        {
            held.walk(|l| {
                b_lines.push((l.seq(), l.service().to_owned()));
                None::<()>
            });
        }
        let want_b: Vec<_> = (0..2_000u64)
            .filter(|i| i % 3 == 0)
            .map(|i| (i, "B".to_owned()))
            .collect();
        assert_eq!(b_lines, want_b);
        // A walk stops at the first line that answers.
        let mut pos = 0;
        let Batch::Held(held) = store.next_batch(&everything, &mut pos, &mut 0, None) else {
            panic!("lines in memory come as held");
        };
        assert_eq!(
            held.walk(|l| (l.seq() == 7).then(|| l.text().into_owned())),
            Some(text(7))
        );
        let lines: Vec<_> = held.into_lines().map(|l| l.seq()).collect();
        assert_eq!(lines, (0..WAIT_BATCH as u64).collect::<Vec<_>>());
    }

    /// A tail on another thread reads the lines of the block being filled (held, as
    /// `LogLine`s) while a reader goes on appending to that block: each reads back as
    /// stored. Small enough for Miri.
    #[test]
    fn a_tail_reads_the_open_block_while_it_fills() {
        use std::sync::Arc;
        let store = Arc::new(LogStore::new());
        let a = store.source(Some(0), "A", Part::Main, Stream::Stdout);
        let text = |i: usize| "y".repeat(i % 7);
        let tail = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let (mut pos, mut seen, mut got) = (0, 0, Vec::new());
                let mut kept = Vec::new();
                while got.len() < 60 {
                    match store.next_batch(&Filter::service(None), &mut pos, &mut seen, None) {
                        Batch::Held(held) => {
                            for line in held.into_lines() {
                                got.push(line.bytes().to_vec());
                                kept.push(line);
                            }
                        }
                        Batch::Lines(lines) => got.extend(lines.iter().map(|l| l.bytes().to_vec())),
                        _ => {}
                    }
                    // Lines handed out before still read as they were.
                    for (k, line) in kept.iter().enumerate() {
                        assert_eq!(line.bytes(), text(k).as_bytes());
                    }
                }
                got
            })
        };
        for group in 0..6 {
            let lines: Vec<String> = (group * 10..group * 10 + 10).map(text).collect();
            let lines: Vec<(&[u8], End)> =
                lines.iter().map(|l| (l.as_bytes(), End::Newline)).collect();
            store.append(&a, &lines, false, true);
        }
        let got = tail.join().expect("the tail saw something wrong");
        let want: Vec<Vec<u8>> = (0..60).map(|i| text(i).into_bytes()).collect();
        assert_eq!(got, want);
    }

    /// A tail that looks after a reader's append of part of a read (nobody asleep then,
    /// so nobody to wake) and falls asleep before the read's end publishes it: the end
    /// wakes it.
    #[test]
    fn a_tail_asleep_since_a_reads_append_is_woken_by_its_end() {
        use std::sync::Arc;
        let store = Arc::new(LogStore::new());
        let a = store.source(Some(0), "A", Part::Main, Stream::Stdout);
        store.append(&a, &[(b"DONE".as_slice(), End::Newline)], false, false);
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&store);
        std::thread::spawn(move || {
            let (mut pos, mut seen) = (0, 0);
            let got = matches!(
                s2.next_batch(&Filter::service(None), &mut pos, &mut seen, None),
                Batch::Held(_) | Batch::Lines(_)
            );
            tx.send(got).unwrap();
        });
        // Until the tail is asleep (a state nothing announces: polled).
        while store.lock().sleeping_tails == 0 {
            std::thread::yield_now();
        }
        store.wake_tails();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(30)),
            Ok(true),
            "the tail was never woken for the line published to it"
        );
    }
}
