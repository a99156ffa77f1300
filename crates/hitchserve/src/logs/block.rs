//! A block of line bytes that is shared while it is still being filled.
//!
//! Lines are copied into blocks of about 64 KiB (see the store). A block's bytes are read by
//! queries, by waiting tails and by the all.log writer while the block's service goes on
//! writing into it: its capacity is fixed when it is made, it is only ever appended to, by
//! one thread at a time (the store appends under its lock), and a reader only sees the bytes
//! appended before it looked ([`Block`] derefs to them). So a block needs no lock of its own
//! and is never copied or closed early because someone holds it.
//!
//! Why hand-written (the one `unsafe` of the logs): `Arc<Vec<u8>>` can only be appended to
//! while nobody else holds it, which made the all.log writer take the store's lock to copy
//! lines out (a low-priority thread holding the lock the readers need: under CPU load, every
//! reader waited for it); `bytes::BytesMut` splits into pieces that cannot be joined back,
//! and a block must stay one slice for the store's offsets.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) struct Block {
    buf: Box<[UnsafeCell<MaybeUninit<u8>>]>,
    /// Bytes appended: `buf[..len]` is written and never written again.
    len: AtomicUsize,
}

// SAFETY: bytes below `len` are only read, and are published (Release) after they are
// written; bytes from `len` on are only written, by the one appender at a time that
// `append`'s contract requires, and read by nobody until published.
unsafe impl Sync for Block {}

// A panic cannot leave a block half-changed for anyone to see: what `append` writes is only
// seen once `len` is stored, after the copy (which does not panic). So lines, and all that
// holds them, stay usable across `catch_unwind` as they were with `Vec<u8>` blocks.
impl std::panic::RefUnwindSafe for Block {}

impl Block {
    /// An empty block for `capacity` bytes (not touched: pages are faulted in as they fill).
    pub(crate) fn with_capacity(capacity: usize) -> Block {
        let buf: Box<[MaybeUninit<u8>]> = Box::new_uninit_slice(capacity);
        // SAFETY: `UnsafeCell<T>` has the layout of `T` (repr(transparent)).
        let buf =
            unsafe { Box::from_raw(Box::into_raw(buf) as *mut [UnsafeCell<MaybeUninit<u8>>]) };
        Block {
            buf,
            len: AtomicUsize::new(0),
        }
    }

    /// A full block holding a copy of `bytes`.
    pub(crate) fn copied(bytes: &[u8]) -> Block {
        let block = Block::with_capacity(bytes.len());
        // SAFETY: nobody else has it yet.
        unsafe { block.append(&[bytes]) };
        block
    }

    /// A full block of `bytes`, taken over without a copy (a block read back from all.log, a
    /// long line joined from its pieces: up to a quarter of the log memory limit).
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Block {
        let buf: Box<[u8]> = bytes.into_boxed_slice();
        let len = buf.len();
        // SAFETY: `UnsafeCell<MaybeUninit<u8>>` has the layout of `u8` (both are
        // repr(transparent)), and an initialised byte is a valid `MaybeUninit<u8>`.
        let buf =
            unsafe { Box::from_raw(Box::into_raw(buf) as *mut [UnsafeCell<MaybeUninit<u8>>]) };
        Block {
            buf,
            len: AtomicUsize::new(len),
        }
    }

    /// How many bytes it can hold in all.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Whether `extra` more bytes fit.
    pub(crate) fn fits(&self, extra: usize) -> bool {
        self.len
            .load(Ordering::Relaxed)
            .checked_add(extra)
            .is_some_and(|end| end <= self.capacity())
    }

    /// Append `parts` one after the other, if they fit; returns where the first starts.
    ///
    /// # Safety
    /// Appends to a block must be ordered one after the other (each happens before the
    /// next, as under a lock: the store appends only under its own), not merely never at
    /// the same time: `len` is read here without synchronising with an earlier appender.
    pub(crate) unsafe fn append(&self, parts: &[&[u8]]) -> Option<usize> {
        let start = self.len.load(Ordering::Relaxed);
        let total = parts.iter().map(|p| p.len()).sum::<usize>();
        if !self.fits(total) {
            return None;
        }
        let mut at = start;
        for part in parts {
            // SAFETY: `at..at + part.len()` is within the buffer (checked above) and at or
            // past `len`: no reader looks there, and no other appender runs (the contract).
            unsafe {
                let to = UnsafeCell::raw_get(self.buf.as_ptr().add(at)).cast::<u8>();
                std::ptr::copy_nonoverlapping(part.as_ptr(), to, part.len());
            }
            at += part.len();
        }
        self.len.store(at, Ordering::Release);
        Some(start)
    }
}

impl std::ops::Deref for Block {
    type Target = [u8];

    /// The bytes appended so far.
    fn deref(&self) -> &[u8] {
        let len = self.len.load(Ordering::Acquire);
        // SAFETY: the first `len` bytes are written (published by `append` with Release,
        // seen here with Acquire) and never written again.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), len) }
    }
}

impl Default for Block {
    fn default() -> Block {
        Block::with_capacity(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Readers on other threads see a prefix of what is appended, never torn or changed
    /// bytes, while the block fills; the whole of it in the end.
    #[test]
    fn readers_see_what_was_appended_while_it_fills() {
        let block = Arc::new(Block::with_capacity(64 * 1024));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let block = Arc::clone(&block);
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while seen < 64 * 1024 {
                        let bytes: &[u8] = &block;
                        assert!(bytes.len() >= seen, "went back");
                        for (i, &b) in bytes.iter().enumerate() {
                            assert_eq!(b, (i % 251) as u8, "byte {i}");
                        }
                        seen = bytes.len();
                    }
                })
            })
            .collect();
        let all: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for chunk in all.chunks(1000) {
            // SAFETY: this thread is the only appender.
            assert!(unsafe { block.append(&[chunk]) }.is_some());
        }
        for r in readers {
            r.join().expect("a reader saw something wrong");
        }
        assert_eq!(&block[..], &all[..]);
        // Full: nothing more fits, and nothing changes.
        // SAFETY: as above.
        assert!(unsafe { block.append(&[b"x"]) }.is_none());
        assert_eq!(Block::copied(b"ab").capacity(), 2);
    }

    /// Small enough for Miri (`cargo +nightly miri test -p hitchserve --lib block`): two
    /// readers hold slices of a block while it is appended to in parts past them, on another
    /// thread; empty and zero-capacity blocks.
    #[test]
    fn small_block_shared_while_it_fills() {
        let block = Arc::new(Block::with_capacity(300));
        let reader = {
            let block = Arc::clone(&block);
            std::thread::spawn(move || {
                let mut held: Vec<&[u8]> = Vec::new();
                // (Borrowed from the Arc kept alive below, for the whole loop.)
                let block: &Block = &block;
                loop {
                    let bytes: &[u8] = block;
                    // Slices taken before stay as they were while the block fills.
                    for (k, old) in held.iter().enumerate() {
                        assert!(old.iter().enumerate().all(|(i, &b)| b == i as u8), "{k}");
                    }
                    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
                    let done = bytes.len() == 300;
                    held.push(bytes);
                    if done {
                        break;
                    }
                    std::thread::yield_now();
                }
            })
        };
        let all: Vec<u8> = (0..300).map(|i| i as u8).collect();
        for chunk in all.chunks(30) {
            let (a, b) = chunk.split_at(7);
            // SAFETY: this thread is the only appender.
            assert!(unsafe { block.append(&[a, b"", b]) }.is_some());
            std::thread::yield_now();
        }
        reader.join().expect("the reader saw something wrong");
        let empty = Block::with_capacity(0);
        assert!(empty.is_empty() && empty.fits(0) && !empty.fits(1));
        // SAFETY: nobody else has it.
        assert_eq!(unsafe { empty.append(&[]) }, Some(0));
        assert_eq!(unsafe { empty.append(&[b"x"]) }, None);
        assert!(Block::default().is_empty());
        assert!(Block::copied(b"").is_empty());
        assert_eq!(&Block::copied(b"abc")[..], b"abc");
        let mut v = Vec::with_capacity(10);
        v.extend_from_slice(b"abc");
        let taken = Block::from_vec(v);
        assert_eq!((&taken[..], taken.capacity()), (&b"abc"[..], 3));
        // SAFETY: nobody else has it.
        assert_eq!(unsafe { taken.append(&[b"d"]) }, None);
        assert!(Block::from_vec(Vec::new()).is_empty());
    }
}
