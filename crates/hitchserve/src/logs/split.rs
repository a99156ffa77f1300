//! Splitting a pipe's byte stream into whole lines across reads, keeping every byte.

/// Longest unterminated line kept waiting for its newline: the store indexes lengths as
/// `u32` (leaving room for one more read). Longer "lines" are stored in parts, each marked as
/// having no newline, so no byte is lost.
const MAX_LINE: usize = u32::MAX as usize - (1 << 20);

#[derive(Default)]
pub(crate) struct LineSplitter {
    carry: Vec<u8>,
}

impl LineSplitter {
    /// Hand the lines completed by `chunk` to `take` — each as its bytes without the `\n`,
    /// and whether a newline ended it — then keep the unterminated rest for next time.
    pub(crate) fn split<R>(&mut self, chunk: &[u8], take: impl FnOnce(&[(&[u8], bool)]) -> R) -> R {
        let mut ends = memchr::memchr_iter(b'\n', chunk);
        let Some(first_nl) = ends.next() else {
            self.carry.extend_from_slice(chunk);
            let r = if self.carry.len() >= MAX_LINE {
                let long = std::mem::take(&mut self.carry);
                take(&[(&long, false)])
            } else {
                take(&[])
            };
            return r;
        };
        let mut lines: Vec<(&[u8], bool)> = Vec::new();
        if !self.carry.is_empty() {
            self.carry.extend_from_slice(&chunk[..first_nl]);
        }
        let first: &[u8] = if self.carry.is_empty() {
            &chunk[..first_nl]
        } else {
            &self.carry
        };
        lines.push((first, true));
        let mut start = first_nl + 1;
        for nl in ends {
            lines.push((&chunk[start..nl], true));
            start = nl + 1;
        }
        let r = take(&lines);
        drop(lines);
        self.carry.clear();
        self.carry.extend_from_slice(&chunk[start..]);
        r
    }

    /// The unterminated last line at end of stream, if any bytes are left.
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        if self.carry.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.carry))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &mut LineSplitter, chunk: &[u8]) -> Vec<(Vec<u8>, bool)> {
        s.split(chunk, |lines| {
            lines.iter().map(|(b, nl)| (b.to_vec(), *nl)).collect()
        })
    }

    #[test]
    fn joins_lines_across_reads_and_keeps_the_tail() {
        let mut s = LineSplitter::default();
        assert!(collect(&mut s, b"hel").is_empty());
        assert_eq!(collect(&mut s, b"lo\nwor"), vec![(b"hello".to_vec(), true)]);
        let got = collect(&mut s, b"ld\n\n\xff\r\n");
        assert_eq!(
            got,
            vec![
                (b"world".to_vec(), true),
                (vec![], true),
                (b"\xff\r".to_vec(), true)
            ]
        );
        assert!(s.finish().is_none());
        collect(&mut s, b"tail");
        assert_eq!(s.finish(), Some(b"tail".to_vec()));
    }
}
