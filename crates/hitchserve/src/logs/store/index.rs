//! The store's line index: what it knows of each line by seq, in memory that spills with
//! the blocks.
//!
//! Lines whose block is in memory have a 32-byte `Entry` each (`recent`). When a block is
//! spilled, its lines' entries are folded into runs (`old`): consecutive lines of one block,
//! one source, that all ended with a newline, and whose all.log prefixes have one length.
//! A run keeps the arrival time of its first line only: a spilled line's time is its run's
//! (when its service began writing that stretch of lines) — per-line times would cost memory
//! per line again, and a service writing one line per write (an unbuffered logger) would grow
//! the index without bound. A run doesn't record where each line is: `all.log` does, since a line
//! there is its prefix, its bytes (never a newline: the splitter cut there) and a newline.
//! The spilled block keeps a `Layout` (how many lines, after which prefix length) from which
//! a block read back is cut into its lines. So a spilled line costs nothing per line unless
//! its source or newline changes (a run each), and the index counts against the memory limit.
//!
//! Once `all.log` has failed, a line dropped from memory (lost) is not in the file either: its
//! run says how long its lines were (the note a query shows says it), so lost lines share a
//! run only with lost lines as long. A long line's entry is kept whole.
//!
//! Invariant: `recent[k]` is the line with seq `base + k`, and `old` covers seqs `0..base`
//! in order, without gaps.

use std::collections::VecDeque;
use std::sync::Arc;

/// Entries past which the index grows by a quarter at a time (see `Index::push`).
const GROW_BY_QUARTER_FROM: usize = 16 * 1024;

/// `Entry::block` of a line stored in pieces; its `start` indexes `Inner::longs`.
pub(super) const LONG: u32 = u32::MAX;

#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub block: u32,
    pub start: u32,
    pub len: u32,
    pub source: u16,
    pub newline: bool,
    /// Offset of the line's bytes in `all.log`.
    pub file: u64,
    /// Arrival time, nanoseconds since the Unix epoch.
    pub time: u64,
}

/// Consecutive old lines described together.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    /// Seq of its first line.
    pub first: u64,
    /// Arrival time of its first line, nanoseconds since the Unix epoch (its lines' time).
    pub time: u64,
    pub lines: u32,
    /// Their block; `LONG` for a long line (its entry is in `old_longs`).
    pub block: u32,
    /// For lost lines: the length of each (0 otherwise).
    pub len: u32,
    pub source: u16,
    pub newline: bool,
    /// Dropped from memory while not in all.log (all.log failed).
    pub lost: bool,
}

/// How a spilled block's bytes in all.log are cut into its lines: (lines, the length of
/// the all.log prefix before each of them), in order. The first line's prefix is not in the
/// block's file range (its length is not used).
pub(super) type Layout = Arc<Vec<(u32, u32)>>;

/// The prefix length in a layout of a block's first line alone (not used).
const FIRST: u32 = u32::MAX;

/// What the index knows of a line.
pub(super) enum Known {
    /// Its entry (its block is in memory, or it is a long line).
    Entry(Entry),
    /// A line of a spilled block: its run, and its place among the block's lines.
    Old(Run, u32),
}

pub(super) struct Index {
    base: u64,
    recent: VecDeque<Entry>,
    old: Vec<Run>,
    /// Entries of old long lines, by seq (few: each line is a quarter of the limit at least).
    old_longs: Vec<(u64, Entry)>,
}

impl Index {
    pub(super) fn new() -> Index {
        Index {
            base: 0,
            recent: VecDeque::new(),
            old: Vec::new(),
            old_longs: Vec::new(),
        }
    }

    /// Lines indexed: the next line's seq.
    pub(super) fn len(&self) -> usize {
        (self.base as usize) + self.recent.len()
    }

    pub(super) fn push(&mut self, e: Entry) {
        // Grown by a quarter once large, not doubled: the index counts against the memory
        // limit by its capacity, and a doubling (4 MB more at 131,072 entries) took a store
        // of tiny lines half past its limit in one step.
        let cap = self.recent.capacity();
        if self.recent.len() == cap && cap >= GROW_BY_QUARTER_FROM {
            self.recent.reserve_exact(cap / 4);
        }
        self.recent.push_back(e);
    }

    /// Seq of the oldest line that still has an entry.
    pub(super) fn base(&self) -> u64 {
        self.base
    }

    /// The entry of line `seq` if it still has one.
    pub(super) fn entry(&self, seq: usize) -> Option<&Entry> {
        seq.checked_sub(self.base as usize)
            .and_then(|k| self.recent.get(k))
    }

    pub(super) fn entry_mut(&mut self, seq: usize) -> Option<&mut Entry> {
        seq.checked_sub(self.base as usize)
            .and_then(|k| self.recent.get_mut(k))
    }

    /// The run holding old line `seq` (< base).
    fn run(&self, seq: u64) -> &Run {
        let at = self.old.partition_point(|r| r.first <= seq);
        &self.old[at - 1]
    }

    /// The source of line `seq` (< len).
    #[inline]
    pub(super) fn source(&self, seq: usize) -> u16 {
        match self.entry(seq) {
            Some(e) => e.source,
            None => self.run(seq as u64).source,
        }
    }

    /// What is known of line `seq` (< len); `first_of` gives a block's first seq.
    pub(super) fn known(&self, seq: usize, first_of: impl Fn(u32) -> u64) -> Known {
        if let Some(e) = self.entry(seq) {
            return Known::Entry(*e);
        }
        let run = *self.run(seq as u64);
        if run.block == LONG {
            let at = self.old_longs.partition_point(|(s, _)| *s < seq as u64);
            return Known::Entry(self.old_longs[at].1);
        }
        Known::Old(run, (seq as u64 - first_of(run.block)) as u32)
    }

    /// Lines whose source `matches`.
    pub(super) fn count(&self, matches: impl Fn(u16) -> bool) -> usize {
        let old: usize = self
            .old
            .iter()
            .filter(|r| matches(r.source))
            .map(|r| r.lines as usize)
            .sum();
        old + self.recent.iter().filter(|e| matches(e.source)).count()
    }

    /// Fold the oldest entries into runs, up to the last line of `block` (just spilled; the
    /// blocks before it were); `lost` says which lines are not in all.log. Returns the
    /// block's layout.
    pub(super) fn fold(&mut self, block: u32, lost: impl Fn(&Entry) -> bool) -> Layout {
        let mut layout: Vec<(u32, u32)> = Vec::new();
        // End of the previous line of this block in all.log (bytes, no newline).
        let mut prev_end: Option<u64> = None;
        while let Some(&e) = self
            .recent
            .front()
            .filter(|e| e.block == LONG || e.block <= block)
        {
            self.recent.pop_front();
            let seq = self.base;
            self.base += 1;
            if e.block == LONG {
                self.old_longs.push((seq, e));
                self.old.push(Run {
                    first: seq,
                    time: e.time,
                    lines: 1,
                    block: LONG,
                    len: e.len,
                    source: e.source,
                    newline: e.newline,
                    lost: false,
                });
                continue;
            }
            let lost = lost(&e);
            if e.block == block && !lost {
                match prev_end {
                    None => layout.push((1, FIRST)),
                    Some(p) => {
                        let gap = (e.file - p - 1) as u32;
                        match layout.last_mut() {
                            // The first line alone so far takes the second's prefix length
                            // (its own is not used).
                            Some((n, g)) if *g == FIRST => {
                                *n += 1;
                                *g = gap;
                            }
                            Some((n, g)) if *g == gap => *n += 1,
                            _ => layout.push((1, gap)),
                        }
                    }
                }
                prev_end = Some(e.file + u64::from(e.len));
            }
            // A lost line's note says how long it was: lost lines share a run only with
            // lost lines as long.
            if let Some(r) = self.old.last_mut() {
                let joins = r.block == e.block
                    && r.source == e.source
                    && r.newline == e.newline
                    && r.lost == lost
                    && (!lost || r.len == e.len);
                if joins {
                    r.lines += 1;
                    continue;
                }
            }
            self.old.push(Run {
                first: seq,
                time: e.time,
                lines: 1,
                block: e.block,
                len: if lost { e.len } else { 0 },
                source: e.source,
                newline: e.newline,
                lost,
            });
        }
        // Memory counts against the limit: give back what a burst made the entries take.
        if self.recent.capacity() > 4 * self.recent.len() + 1024 {
            self.recent.shrink_to(2 * self.recent.len());
        }
        Arc::new(layout)
    }

    /// Bytes this index takes in memory.
    pub(super) fn bytes(&self) -> usize {
        self.recent.capacity() * size_of::<Entry>()
            + self.old.capacity() * size_of::<Run>()
            + self.old_longs.capacity() * size_of::<(u64, Entry)>()
    }
}

/// Where each line of a spilled block starts and how long it is, in `data` (the block's
/// range read back from all.log), cut as `layout` says; `None` if the bytes don't match it.
pub(super) fn cut(data: &[u8], layout: &[(u32, u32)]) -> Option<Vec<(u32, u32)>> {
    let total: usize = layout.iter().map(|&(n, _)| n as usize).sum();
    let mut out = Vec::with_capacity(total);
    let mut pos = 0usize;
    for &(n, gap) in layout {
        for _ in 0..n {
            if !out.is_empty() {
                pos = pos.checked_add(gap as usize)?;
            }
            let rest = data.get(pos..)?;
            let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            out.push((pos as u32, len as u32));
            pos += len + 1;
        }
    }
    Some(out)
}
