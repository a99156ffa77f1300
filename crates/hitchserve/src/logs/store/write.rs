//! The write side of the log store: sources, appending lines (copying them into blocks,
//! long lines in pieces, giving each its place in `all.log` and handing the writer the
//! blocks' stretches that hold them), publishing partial lines,
//! holding readers back when the writer is far behind, and spilling the oldest blocks once
//! the writer has them on disk (or, once `all.log` failed, dropping them and counting the
//! loss).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};

use super::read::pick;
use super::*;

impl LogStore {
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
        let base = inner.index.base() as usize;
        for i in base..inner.index.len() {
            let Some(&e) = inner.index.entry(i) else {
                continue;
            };
            if e.block == LONG {
                // Not before any service runs; left out of all.log rather than joined here.
                continue;
            }
            let bytes = match &inner.blocks[e.block as usize].data {
                Some(d) => d[e.start as usize..(e.start + e.len) as usize].to_vec(),
                None => Vec::new(),
            };
            let prefix = Arc::clone(&inner.prefixes[e.source as usize]);
            let file = render(&mut rendered, &mut inner.file_pos, &prefix, &bytes);
            if let Some(entry) = inner.index.entry_mut(i) {
                entry.file = file;
            }
            note_file_range(&mut inner.blocks[e.block as usize], file, e.len);
        }
        files.write(rendered);
        inner.files = Some(files);
        inner.file_path = Some(path);
    }

    /// Append lines from one source; returns them as stored if `want` (building them costs
    /// time a fast producer would notice). With `wake`, tails waiting for lines are woken
    /// now; without, the caller calls [`LogStore::wake_tails`] once it has stored what it
    /// has (a read of a chatty service's pipe is appended a group of lines at a time: one
    /// wake-up for them all spares the tails and the reader a switch per group; the lines
    /// of a read's first group then reach tails once the read's last is stored — one read,
    /// 256 KiB at most, later).
    pub(crate) fn append(
        &self,
        source: &Arc<Source>,
        lines: &[(&[u8], End)],
        want: bool,
        wake: bool,
    ) -> Vec<LogLine> {
        if lines.is_empty() {
            return Vec::new();
        }
        let time = now_nanos();
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Whatever comes next from a source continues its published partial: withdrawn.
        inner.partials[source.id as usize] = None;
        let first_seq = inner.index.len() as u64;
        let writing = inner.files.is_some() && inner.failure.is_none();
        // A piece of a long line, rendered here; other lines the writer renders from their
        // blocks (see `LogFiles::write_lines`).
        let mut rendered = Vec::new();
        // Only the first of them can be (or end) a long line: a piece comes alone, and
        // after the end of a long line comes a newline.
        let mut rest = lines;
        if let Some(&(bytes, end)) = lines.first() {
            if end == End::Piece || inner.open_long[source.id as usize].is_some() {
                append_piece(inner, source, bytes, end, writing, &mut rendered, time);
                rest = &lines[1..];
            }
        }
        let prefix = inner.prefixes[source.id as usize].len() as u64;
        // The stretches of blocks the lines went to, for the writer: (block, bytes).
        let mut stretches: Vec<(u32, Range<usize>)> = Vec::new();
        // Copied into blocks a run at a time (see `place`), then indexed line by line.
        let mut placed = [(0, 0); RUN];
        let mut next = 0;
        while next < rest.len() {
            let n = place(inner, &rest[next..], &mut placed);
            let run = &rest[next..next + n];
            next += n;
            for (&(bytes, end), &(block, start)) in run.iter().zip(&placed[..n]) {
                let newline = end == End::Newline;
                // (Its newline after it in the block: see `place`.)
                let until = start as usize + bytes.len() + 1;
                match stretches.last_mut() {
                    Some((b, range)) if *b == block && range.end == start as usize => {
                        range.end = until;
                    }
                    _ => stretches.push((block, start as usize..until)),
                }
                let file = if writing {
                    // Where the writer will put it.
                    let at = inner.file_pos + prefix;
                    inner.file_pos = at + bytes.len() as u64 + 1;
                    at
                } else {
                    if inner.failure.is_some() {
                        inner.unwritten.0 += 1;
                        inner.unwritten.1 += bytes.len() as u64;
                    }
                    NO_FILE
                };
                note_file_range(&mut inner.blocks[block as usize], file, bytes.len() as u32);
                inner.index.push(Entry {
                    block,
                    start,
                    len: bytes.len() as u32,
                    source: source.id,
                    newline,
                    file,
                    time,
                });
            }
        }
        inner.note_peak();
        let wanted = if want {
            inner.index.len() as u64
        } else {
            first_seq
        };
        let stored = (first_seq..wanted)
            .map(|seq| {
                // Just stored: not spilled (the block in use never is).
                let Some(&e) = inner.index.entry(seq as usize) else {
                    return self.join_now(inner, seq);
                };
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
            if writing {
                let prefix = &inner.prefixes[source.id as usize];
                for (block, range) in stretches {
                    if let Some(data) = inner.blocks[block as usize].data.as_ref() {
                        files.write_lines(data, range, prefix);
                    }
                }
            }
            let written = files.written();
            spill(inner, written);
            behind = over_bound(inner, written);
        }
        if wake || behind {
            // (Shown before a wait for the writer too: the lines are there to see.)
            inner.publish();
        }
        if inner.sleeping_tails > 0 {
            if wake || behind {
                self.grown.notify_all();
            } else {
                self.unwoken.store(true, Ordering::Release);
            }
        }
        if behind {
            self.wait_for_writer(guard);
        }
        stored
    }

    /// Show tails the lines appended without `wake`, and wake those asleep: those that were
    /// when the lines came (`unwoken`), and those that fell asleep since, having seen only
    /// what was published.
    pub(crate) fn wake_tails(&self) {
        let mut inner = self.lock();
        let moved = inner.publish();
        let sleepers = inner.sleeping_tails > 0;
        drop(inner);
        // The tails were asleep when the flag was set (see `unwoken`), or were just now:
        // a notify without the lock reaches them.
        if self.unwoken.swap(false, Ordering::AcqRel) || (moved && sleepers) {
            self.grown.notify_all();
        }
    }

    /// Hold back from tails every line appended from now on (by anyone) until `release`:
    /// what one read of both pipes brings is then seen whole. Returns the hold, for
    /// `release`.
    pub(crate) fn hold(&self) -> usize {
        let mut inner = self.lock();
        let at = inner.index.len();
        inner.holds.push(at);
        at
    }

    /// Let go of the hold `at` (see `hold`), and show tails what may be shown now.
    pub(crate) fn release(&self, at: usize) {
        let mut inner = self.lock();
        if let Some(i) = inner.holds.iter().position(|&h| h == at) {
            inner.holds.swap_remove(i);
        }
        drop(inner);
        self.wake_tails();
    }

    /// Show `bytes`, the start of a line `source` has not ended, to tails (replacing what
    /// was shown of it before).
    pub(crate) fn publish_partial(&self, source: &Arc<Source>, bytes: &[u8]) {
        let time = now_nanos();
        let mut inner = self.lock();
        inner.partial_stamp += 1;
        let partial = Partial {
            source: Arc::clone(source),
            bytes: Arc::new(Block::copied(bytes)),
            from_seq: inner.index.len() as u64,
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

    /// The writer is behind a fast producer (a slow disk, or many chatty services): hold
    /// this reader back until
    /// memory is within the limit again, so it stays bounded, or the writer has
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
            let held = inner.memory();
            let (guard, timeout) = self
                .relieved
                .wait_timeout(inner, WRITER_PATIENCE)
                .unwrap_or_else(|e| e.into_inner());
            inner = guard;
            if timeout.timed_out() && inner.memory() >= held {
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

    /// Lines stored, bytes held in memory for lines (blocks and index), the limit, and what
    /// `all.log` misses.
    pub(crate) fn stats(&self) -> (u64, usize, usize, Losses) {
        let inner = self.lock();
        (
            inner.index.len() as u64,
            inner.memory(),
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
        // (Lines without entries any more are in spilled blocks, all written.)
        let mut i = inner.index.len();
        while let Some(&e) = i.checked_sub(1).and_then(|k| inner.index.entry(k)) {
            if entry_durable(inner, &e, durable) {
                break;
            }
            i -= 1;
            inner.unwritten.0 += 1;
            inner.unwritten.1 += u64::from(e.len);
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
            "could not write `{}` ({f}): {} missing from it so far; later lines are kept in memory only, and beyond the log memory limit ({}) the oldest of them are dropped (the log stats count them)",
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
}

/// Store one piece of a long line from `source` (rendered as an all.log line of its own);
/// with the last piece, the line gets its entry.
#[cold]
#[inline(never)]
pub(super) fn append_piece(
    inner: &mut Inner,
    source: &Source,
    bytes: &[u8],
    end: End,
    writing: bool,
    rendered: &mut Vec<u8>,
    time: u64,
) {
    let sid = source.id as usize;
    if bytes.is_empty() && end != End::Piece {
        // The stream ended right after a piece: the line ends with no more bytes.
        if let Some(k) = inner.open_long[sid] {
            end_long(inner, source, k, end, time);
        }
        return;
    }
    let k = *inner.open_long[sid].get_or_insert_with(|| {
        inner.longs.push(Long::default());
        (inner.longs.len() - 1) as u32
    });
    // Blocks stay in file order, so spilling them in order stays right.
    if let Some(last) = inner.blocks.last_mut() {
        last.open = false;
    }
    let file = if writing {
        let prefix = &inner.prefixes[sid];
        render(rendered, &mut inner.file_pos, prefix, bytes)
    } else {
        NO_FILE
    };
    let mut slot = Slot {
        first: inner.index.len() as u64,
        data: Some(Arc::new(Block::copied(bytes))),
        lines: 0,
        open: false,
        file_start: NO_FILE,
        file_end: 0,
        long: k,
        layout: None,
    };
    note_file_range(&mut slot, file, bytes.len() as u32);
    inner.held += bytes.len();
    inner.note_peak();
    inner.blocks.push(slot);
    let long = &mut inner.longs[k as usize];
    long.pieces.push((inner.blocks.len() - 1) as u32);
    long.len += bytes.len() as u64;
    if end == End::Piece {
        return;
    }
    end_long(inner, source, k, end, time);
}

/// The last piece of long line `k` from `source` is in: give the line its entry.
fn end_long(inner: &mut Inner, source: &Source, k: u32, end: End, time: u64) {
    inner.open_long[source.id as usize] = None;
    // A block's lines have consecutive seqs: the entry taken here ends the open block.
    if let Some(last) = inner.blocks.last_mut() {
        last.open = false;
    }
    let long = &inner.longs[k as usize];
    let len = long.len as u32;
    if inner.failure.is_some() {
        inner.unwritten.0 += 1;
        inner.unwritten.1 += long.len;
    }
    inner.index.push(Entry {
        block: LONG,
        start: k,
        len,
        source: source.id,
        newline: end == End::Newline,
        file: NO_FILE,
        time,
    });
}

/// Memory is past the limit because the writer is behind (waiting for it would help: it
/// has not written everything yet). At the limit, not past a margin: every chatty reader
/// may add a batch (the splitter's `GROUP` of lines) before it notices, and 50 of them
/// past a margin of the limit again made the peak three times the limit.
pub(super) fn over_bound(inner: &Inner, written: u64) -> bool {
    inner.memory() > inner.limit && written < inner.file_pos && inner.stuck_at != Some(written)
}

pub(super) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(super) fn losses(inner: &Inner) -> Losses {
    Losses {
        peak: inner.peak,
        unwritten_lines: inner.unwritten.0,
        unwritten_bytes: inner.unwritten.1,
        lost_lines: inner.lost.0,
        lost_bytes: inner.lost.1,
    }
}

/// Most lines copied into a block in one run (see `place`).
const RUN: usize = 64;

/// Copy the first of `lines` — and as many after it as the open block takes, `RUN` at most —
/// into blocks, each followed by a newline (so the all.log writer finds them in the block
/// without the index: see `LogFiles::write_lines`); `placed` gets where each went, (block,
/// start); returns how many. Lines whose seqs follow the index's end, in order.
fn place(inner: &mut Inner, lines: &[(&[u8], End)], placed: &mut [(u32, u32); RUN]) -> usize {
    let mut n = 0;
    let id = inner.blocks.len().saturating_sub(1) as u32;
    if let Some(Slot {
        data: Some(data),
        lines: in_it,
        open: true,
        ..
    }) = inner.blocks.last_mut()
    {
        for &(bytes, _) in lines.iter().take(RUN) {
            if *in_it >= BLOCK_LINES {
                break;
            }
            // SAFETY: the store appends only under its lock (we have `&mut Inner`).
            let Some(start) = (unsafe { data.append(&[bytes, b"\n"]) }) else {
                break;
            };
            placed[n] = (id, start as u32);
            n += 1;
            *in_it += 1;
        }
    }
    if n == 0 {
        if let Some(&(bytes, _)) = lines.first() {
            placed[0] = put(inner, bytes);
            n = 1;
        }
    }
    n
}

/// Copy a line's bytes (and a newline: see `place`) into the open block if there is room,
/// else into a new block. Returns (block, start).
pub(super) fn put(inner: &mut Inner, bytes: &[u8]) -> (u32, u32) {
    let id = inner.blocks.len().saturating_sub(1) as u32;
    if let Some(slot) = inner.blocks.last_mut().filter(|s| s.open) {
        if slot.lines < BLOCK_LINES {
            if let Some(data) = slot.data.as_ref() {
                // SAFETY: the store appends only under its lock (we have `&mut Inner`).
                if let Some(start) = unsafe { data.append(&[bytes, b"\n"]) } {
                    slot.lines += 1;
                    return (id, start as u32);
                }
            }
        }
        slot.open = false;
    }
    let capacity = BLOCK.max(bytes.len() + 1);
    let block = Block::with_capacity(capacity);
    // SAFETY: nobody else has it yet. (It fits: made for it.)
    let _ = unsafe { block.append(&[bytes, b"\n"]) };
    inner.held += capacity;
    inner.note_peak();
    inner.blocks.push(Slot {
        first: inner.index.len() as u64,
        data: Some(Arc::new(block)),
        lines: 1,
        open: true,
        file_start: NO_FILE,
        file_end: 0,
        long: NOT_LONG,
        layout: None,
    });
    (inner.blocks.len() as u32 - 1, 0)
}

pub(super) fn note_file_range(slot: &mut Slot, file: u64, len: u32) {
    if file == NO_FILE {
        return;
    }
    slot.file_start = slot.file_start.min(file);
    slot.file_end = slot.file_end.max(file + u64::from(len));
}

/// A source's all.log prefix for labels padded to `width`: `[   Err Name] `.
pub(super) fn prefix(source: &Source, width: usize) -> Arc<[u8]> {
    let warning = if source.is_warning() { "WARNING: " } else { "" };
    format!("[{:>width$}] {warning}", source.label)
        .into_bytes()
        .into()
}

/// Render a line as all.log has it; returns the offset of its bytes in the file.
pub(super) fn render(out: &mut Vec<u8>, pos: &mut u64, prefix: &[u8], bytes: &[u8]) -> u64 {
    out.extend_from_slice(prefix);
    out.extend_from_slice(bytes);
    out.push(b'\n');
    let at = *pos + prefix.len() as u64;
    *pos += (prefix.len() + bytes.len() + 1) as u64;
    at
}

/// Drop the oldest blocks from memory while over the limit, if their lines are on disk —
/// or, once all.log has failed, whether they are or not (counting the lines lost).
pub(super) fn spill(inner: &mut Inner, written: u64) {
    let durable = inner.failure.as_ref().map(|f| f.durable);
    let last = inner.blocks.len().saturating_sub(1);
    while inner.memory() > inner.limit && inner.spill_from < last {
        let slot = &inner.blocks[inner.spill_from];
        if let Some(capacity) = slot.data.as_ref().map(|d| d.capacity()) {
            match durable {
                None if slot.file_start == NO_FILE || slot.file_end > written => {
                    // all.log doesn't have these lines yet: keep them until it does.
                    return;
                }
                None => {}
                Some(durable)
                    if slot.long != NOT_LONG
                        && (slot.file_start == NO_FILE || slot.file_end > durable) =>
                {
                    inner.lost.1 += capacity as u64;
                    let long = &mut inner.longs[slot.long as usize];
                    if !std::mem::replace(&mut long.lost, true) {
                        inner.lost.0 += 1;
                    }
                }
                // A piece on disk: nothing lost.
                Some(_) if slot.long != NOT_LONG => {}
                Some(durable) => {
                    let data = slot.data.clone().unwrap_or_default();
                    for seq in slot.first..slot.first + u64::from(slot.lines) {
                        let Some(&e) = inner.index.entry(seq as usize) else {
                            continue;
                        };
                        if is_durable(&e, durable) {
                            continue;
                        }
                        if inner.sources[e.source as usize].service.is_none() {
                            let bytes = data
                                .get(e.start as usize..e.start as usize + e.len as usize)
                                .unwrap_or_default();
                            inner.kept.insert(seq, Arc::new(Block::copied(bytes)));
                        } else {
                            inner.lost.0 += 1;
                            inner.lost.1 += u64::from(e.len);
                        }
                    }
                }
            }
            inner.held = inner.held.saturating_sub(capacity);
            let b = inner.spill_from;
            inner.blocks[b].data = None;
            if inner.blocks[b].long == NOT_LONG {
                // Its lines' entries become runs; all.log (or `kept`) has the rest.
                let not_in_file = |e: &Entry| durable.is_some_and(|d| !is_durable(e, d));
                let layout = inner.index.fold(b as u32, not_in_file);
                inner.layouts += layout.len() * size_of::<(u32, u32)>();
                inner.blocks[b].layout = Some(layout);
            }
        }
        inner.spill_from += 1;
    }
}
