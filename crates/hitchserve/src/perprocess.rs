//! State that belongs to one process, made afresh in a child made by `fork` (Python's
//! `multiprocessing` forks by default).
//!
//! Owns the rule, used by the thread pool and the guardian: a `fork` copies the memory of a
//! process with one thread, the one that forked. A lock held at that instant by another
//! thread stays locked in the child for ever (nobody there will let it go), and what the
//! state names (threads, a guardian process and the pipe to it) is the parent's. So each
//! process gets a value of its own on first use, and the child's copy of the parent's value
//! is never touched: not locked, not dropped (its descriptors are the parent's business; see
//! `guardian` for the one a child must close, which it closes at the fork itself).

use std::sync::atomic::{AtomicPtr, Ordering};

/// A value per process, made by `make` on the first use in each process.
pub(crate) struct PerProcess<T: 'static> {
    current: AtomicPtr<(u32, T)>,
    make: fn() -> T,
}

impl<T: Sync + 'static> PerProcess<T> {
    pub(crate) const fn new(make: fn() -> T) -> PerProcess<T> {
        PerProcess {
            current: AtomicPtr::new(std::ptr::null_mut()),
            make,
        }
    }

    /// This process's value. (One made in another process is left as it is: a few bytes,
    /// never freed, so nothing in it is dropped here.)
    pub(crate) fn get(&'static self) -> &'static T {
        let me = std::process::id();
        loop {
            let current = self.current.load(Ordering::Acquire);
            // SAFETY: what `current` points to comes from `Box::into_raw` below and is
            // never freed.
            if let Some((pid, value)) = unsafe { current.as_ref() } {
                if *pid == me {
                    return value;
                }
            }
            let fresh = Box::into_raw(Box::new((me, (self.make)())));
            match self
                .current
                .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: just made, never freed.
                Ok(_) => return unsafe { &(*fresh).1 },
                // Another thread of this process made one first: use that one.
                // SAFETY: ours was never shared; freed once.
                Err(_) => drop(unsafe { Box::from_raw(fresh) }),
            }
        }
    }
}
