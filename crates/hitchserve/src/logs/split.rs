//! Splitting a pipe's byte stream into whole lines across reads, keeping every byte.
//!
//! A line is held back until its newline arrives, up to a size (`piece`): past it, the
//! bytes so far are handed on as a piece of a line that goes on (`End::Piece`), so one huge
//! line without a newline never piles up here; the store joins the pieces into one line.
//! The held-back start of a line can be looked at (`pending`), so that a reader can show
//! it as a partial line while the stream is quiet.

/// Longest line the store can index (`u32` lengths, leaving room for one more read). A
/// longer "line" is cut there, the part marked as having no newline, so no byte is lost.
const MAX_LINE: usize = u32::MAX as usize - (1 << 20);

/// How a piece of the stream handed on by the splitter ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// A newline (not included in the bytes).
    Newline,
    /// No newline: the end of the stream, or a line cut at the longest size.
    Unterminated,
    /// The line goes on in the next piece.
    Piece,
}

/// Most lines handed on at once: what a read's lines cost downstream in passing (the list of
/// them here, their rendering for all.log, the lines handed to readiness and the console)
/// stays small whatever one read brings. Left in as many malloc arenas as there are chatty
/// services, big passing buffers made a run's RSS far exceed what the store holds.
const GROUP: usize = 1024;

pub(crate) struct LineSplitter {
    carry: Vec<u8>,
    /// Held-back bytes past which they are handed on as a piece.
    piece: usize,
    /// Bytes of the current line already handed on as pieces.
    sent: usize,
}

impl LineSplitter {
    /// A splitter that holds back at most about `piece` bytes of an unfinished line.
    pub(crate) fn new(piece: usize) -> LineSplitter {
        LineSplitter {
            carry: Vec::new(),
            piece: piece.clamp(1, MAX_LINE),
            sent: 0,
        }
    }

    /// Hand what `chunk` completes to `take`, `GROUP` lines at most at a time — each line or
    /// piece as its bytes (without the `\n`) and how it ends — then keep the unterminated
    /// rest for next time.
    pub(crate) fn split(&mut self, chunk: &[u8], mut take: impl FnMut(&[(&[u8], End)])) {
        let mut ends = Newlines::new(chunk);
        let Some(first_nl) = ends.next() else {
            self.carry.extend_from_slice(chunk);
            if self.carry.len() < self.piece {
                return;
            }
            let end = if self.sent + self.carry.len() >= MAX_LINE {
                self.sent = 0;
                End::Unterminated
            } else {
                self.sent += self.carry.len();
                End::Piece
            };
            take(&[(&self.carry, end)]);
            self.carry.clear();
            return;
        };
        self.sent = 0;
        let mut lines: Vec<(&[u8], End)> = Vec::new();
        if !self.carry.is_empty() {
            self.carry.extend_from_slice(&chunk[..first_nl]);
        }
        let first: &[u8] = if self.carry.is_empty() {
            &chunk[..first_nl]
        } else {
            &self.carry
        };
        lines.push((first, End::Newline));
        let mut start = first_nl + 1;
        for nl in ends {
            if lines.len() == GROUP {
                take(&lines);
                lines.clear();
            }
            lines.push((&chunk[start..nl], End::Newline));
            start = nl + 1;
        }
        take(&lines);
        drop(lines);
        self.carry.clear();
        self.carry.extend_from_slice(&chunk[start..]);
    }

    /// The start of a line held back for its newline, if it has not been handed on in
    /// pieces: what may be shown as a partial line while the stream is quiet.
    pub(crate) fn pending(&self) -> Option<&[u8]> {
        (self.sent == 0 && !self.carry.is_empty()).then_some(self.carry.as_slice())
    }

    /// The unterminated last line at end of stream, if any bytes are left — or, if the
    /// line was handed on in pieces, its end (maybe no bytes): the line must still end.
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        let in_pieces = std::mem::take(&mut self.sent) > 0;
        if self.carry.is_empty() && !in_pieces {
            None
        } else {
            Some(std::mem::take(&mut self.carry))
        }
    }
}

/// The offsets of the newlines in a chunk, in order.
///
/// Not `memchr::memchr_iter`: that is a search from each newline to the next, and on the
/// usual lines of 20-200 bytes its set-up per search cost four times what this does — a
/// mask of the newlines of 64 bytes at a time, read off bit by bit (1.3 ms against 0.3 ms
/// for 16 MB of 80-byte lines, on the reader's path for every line).
struct Newlines<'a> {
    chunk: &'a [u8],
    /// Offset of the 64 bytes `mask` is of.
    at: usize,
    /// A bit per newline not handed out yet among those 64 bytes.
    mask: u64,
}

impl<'a> Newlines<'a> {
    fn new(chunk: &'a [u8]) -> Newlines<'a> {
        let mut n = Newlines {
            chunk,
            at: 0,
            mask: 0,
        };
        n.mask = n.mask_at(0);
        n
    }

    /// The newlines among the (up to) 64 bytes at `at`.
    #[inline]
    fn mask_at(&self, at: usize) -> u64 {
        let Some(bytes) = self.chunk.get(at..) else {
            return 0;
        };
        match bytes.get(..64) {
            Some(block) => mask64(block),
            None => bytes
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .fold(0, |m, (i, _)| m | 1 << i),
        }
    }
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.at += 64;
            if self.at >= self.chunk.len() {
                return None;
            }
            self.mask = self.mask_at(self.at);
        }
        let bit = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(self.at + bit)
    }
}

/// A bit per newline among 64 bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
fn mask64(block: &[u8]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    assert!(block.len() >= 64);
    let p = block.as_ptr().cast::<__m128i>();
    // SAFETY: SSE2 is part of every x86_64 target; the four unaligned 16-byte loads are
    // within `block`, which holds at least 64 bytes (asserted above).
    unsafe {
        let nl = _mm_set1_epi8(b'\n' as i8);
        let m = |k: usize| -> u64 {
            let v = _mm_loadu_si128(p.add(k));
            u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, nl)) as u16)
        };
        m(0) | m(1) << 16 | m(2) << 32 | m(3) << 48
    }
}

/// A bit per newline among 64 bytes.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn mask64(block: &[u8]) -> u64 {
    block[..64]
        .iter()
        .enumerate()
        .fold(0, |m, (i, &b)| m | u64::from(b == b'\n') << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &mut LineSplitter, chunk: &[u8]) -> Vec<(Vec<u8>, End)> {
        let mut got = Vec::new();
        s.split(chunk, |lines| {
            got.extend(lines.iter().map(|(b, end)| (b.to_vec(), *end)));
        });
        got
    }

    #[test]
    fn newlines_are_found_wherever_they_are() {
        // Every length up to past two masks, newlines at the edges of each 64 bytes too.
        for len in 0..200 {
            for every in [1, 2, 7, 63, 64, 65] {
                let chunk: Vec<u8> = (0..len)
                    .map(|i| if i % every == every - 1 { b'\n' } else { b'x' })
                    .collect();
                let want: Vec<usize> = memchr::memchr_iter(b'\n', &chunk).collect();
                assert_eq!(
                    Newlines::new(&chunk).collect::<Vec<_>>(),
                    want,
                    "{len} {every}"
                );
            }
        }
    }

    #[test]
    fn many_lines_are_handed_on_in_groups_in_order() {
        let mut s = LineSplitter::new(1 << 20);
        let text: String = (0..2 * GROUP + 5).map(|i| format!("{i}\n")).collect();
        let mut groups = Vec::new();
        // Cut mid-line, so the first line of the second read is joined to the carry.
        let (a, b) = text.as_bytes().split_at(text.len() / 2 + 1);
        for chunk in [a, b] {
            s.split(chunk, |lines| {
                groups.push(lines.iter().map(|(l, _)| l.to_vec()).collect::<Vec<_>>());
            });
        }
        assert!(groups.iter().all(|g| !g.is_empty() && g.len() <= GROUP));
        let all: Vec<Vec<u8>> = groups.concat();
        let want: Vec<Vec<u8>> = (0..2 * GROUP + 5)
            .map(|i| i.to_string().into_bytes())
            .collect();
        assert_eq!(all, want);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn joins_lines_across_reads_and_keeps_the_tail() {
        let mut s = LineSplitter::new(1 << 20);
        assert!(collect(&mut s, b"hel").is_empty());
        assert_eq!(
            collect(&mut s, b"lo\nwor"),
            vec![(b"hello".to_vec(), End::Newline)]
        );
        let got = collect(&mut s, b"ld\n\n\xff\r\n");
        assert_eq!(
            got,
            vec![
                (b"world".to_vec(), End::Newline),
                (vec![], End::Newline),
                (b"\xff\r".to_vec(), End::Newline)
            ]
        );
        assert!(s.finish().is_none());
        assert_eq!(s.pending(), None);
        collect(&mut s, b"tail");
        assert_eq!(s.pending(), Some(&b"tail"[..]));
        assert_eq!(s.finish(), Some(b"tail".to_vec()));
    }

    #[test]
    fn a_long_line_is_handed_on_in_pieces_that_join_exactly() {
        let mut s = LineSplitter::new(4);
        assert!(collect(&mut s, b"ab").is_empty());
        assert_eq!(
            collect(&mut s, b"cde"),
            vec![(b"abcde".to_vec(), End::Piece)]
        );
        assert!(collect(&mut s, b"f").is_empty());
        // Part of the line is gone as a piece: what is held back is not its start.
        assert_eq!(s.pending(), None);
        assert_eq!(
            collect(&mut s, b"g\nhi\n"),
            vec![
                (b"fg".to_vec(), End::Newline),
                (b"hi".to_vec(), End::Newline)
            ]
        );
    }

    #[test]
    fn a_stream_that_ends_right_after_a_piece_still_ends_its_line() {
        let mut s = LineSplitter::new(4);
        assert_eq!(
            collect(&mut s, b"abcd"),
            vec![(b"abcd".to_vec(), End::Piece)]
        );
        // Nothing is held back, but the line handed on in pieces has not ended yet.
        assert_eq!(s.finish(), Some(Vec::new()));
        assert_eq!(s.finish(), None);
    }
}
