//! How lines are laid into blocks and leave memory: copying a line into the open block,
//! long lines in pieces, rendering a line as `all.log` has it, and spilling the oldest
//! blocks once the writer has them on disk (or, once `all.log` failed, dropping them and
//! counting the loss).

use super::*;

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
        first: inner.entries.len() as u64,
        data: Some(Arc::new(bytes.to_vec())),
        lines: 0,
        open: false,
        file_start: NO_FILE,
        file_end: 0,
        long: k,
    };
    note_file_range(&mut slot, file, bytes.len() as u32);
    inner.held += bytes.len();
    inner.peak = inner.peak.max(inner.held);
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
    let long = &inner.longs[k as usize];
    let len = long.len as u32;
    if inner.failure.is_some() {
        inner.unwritten.0 += 1;
        inner.unwritten.1 += long.len;
    }
    inner.entries.push(Entry {
        block: LONG,
        start: k,
        len,
        source: source.id,
        newline: end == End::Newline,
        file: NO_FILE,
        time,
    });
}

/// Memory is past twice the limit because the writer is behind (waiting for it would
/// help: it has not written everything yet).
pub(super) fn over_bound(inner: &Inner, written: u64) -> bool {
    inner.held > inner.limit.saturating_mul(2)
        && written < inner.file_pos
        && inner.stuck_at != Some(written)
}

pub(super) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether all.log holds the line, given how much of it is readable.
pub(super) fn is_durable(e: &Entry, durable: u64) -> bool {
    e.file != NO_FILE && e.file.saturating_add(u64::from(e.len)) <= durable
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

/// Copy a line's bytes into the open block if there is room and nobody else holds it,
/// else into a new block. Returns (block, start).
pub(super) fn put(inner: &mut Inner, bytes: &[u8]) -> (u32, u32) {
    let id = inner.blocks.len().saturating_sub(1) as u32;
    if let Some(slot) = inner.blocks.last_mut().filter(|s| s.open) {
        if slot.lines < BLOCK_LINES {
            if let Some(v) = slot.data.as_mut().and_then(Arc::get_mut) {
                if v.len() + bytes.len() <= v.capacity() {
                    let start = v.len() as u32;
                    v.extend_from_slice(bytes);
                    slot.lines += 1;
                    return (id, start);
                }
            }
        }
        slot.open = false;
    }
    let capacity = BLOCK.max(bytes.len());
    let mut v = Vec::with_capacity(capacity);
    v.extend_from_slice(bytes);
    inner.held += capacity;
    inner.peak = inner.peak.max(inner.held);
    inner.blocks.push(Slot {
        first: inner.entries.len() as u64,
        data: Some(Arc::new(v)),
        lines: 1,
        open: true,
        file_start: NO_FILE,
        file_end: 0,
        long: NOT_LONG,
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
pub(super) fn prefix(source: &Source, width: usize) -> Vec<u8> {
    let warning = if source.is_warning() { "WARNING: " } else { "" };
    format!("[{:>width$}] {warning}", source.label).into_bytes()
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
    while inner.held > inner.limit && inner.spill_from < last {
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
                        let e = inner.entries[seq as usize];
                        if is_durable(&e, durable) {
                            continue;
                        }
                        if inner.sources[e.source as usize].service.is_none() {
                            let bytes = data
                                .get(e.start as usize..e.start as usize + e.len as usize)
                                .unwrap_or_default();
                            inner.kept.insert(seq, Arc::new(bytes.to_vec()));
                        } else {
                            inner.lost.0 += 1;
                            inner.lost.1 += u64::from(e.len);
                        }
                    }
                }
            }
            inner.held = inner.held.saturating_sub(capacity);
            inner.blocks[inner.spill_from].data = None;
        }
        inner.spill_from += 1;
    }
}
