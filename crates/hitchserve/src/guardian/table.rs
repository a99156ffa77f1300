//! The table of process groups the guardian kills if our process dies: a file of ours that
//! we keep mapped and the guardian reads only then.
//!
//! Why not a line on the guardian's stdin per change, as for runs and cgroups: each line
//! woke the guardian, a shell that reads its input a byte at a time — some 30-50 µs of CPU
//! for every service started and every service stopped, taken from the services on the
//! machine's cores (a tenth of stopping 20 services on two). A change here is a few stores
//! into memory: no system call, nobody woken.
//!
//! Owns the file's format and its slots. Each slot is one line the guardian's `read -r v g`
//! splits in two: `+ PGID` (watched) or `- PGID` (free), the pgid right-aligned in ten
//! columns, or `.` (never used: the guardian stops reading there). A slot is filled while it reads `-`, and only then turned `+` by a one-byte
//! store; it is freed by the one-byte store of `-`. So whenever our process dies — SIGKILL
//! between any two instructions — every slot reads either a whole pgid we watch or `-`,
//! never a torn number that could name a stranger's group.
//!
//! Invariant: a pgid is in the table (as `+`) from `watch` until `forget`, which comes
//! before its leader is reaped — so the number can't have been reused while it is there.
//! The file lives in our private per-user directory (0700): no other user can write it.
//! Its owner holds an exclusive `flock` on it for life, so a table whose lock can be taken
//! is an ended process's, whatever pid namespace it ran in; the guardian opens the table
//! when it starts, so it reads it even once another process has removed its name.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

/// Bytes per slot: `+`, a space, ten columns, a newline.
const SLOT: usize = 13;
/// Slots in the table: more services than that at once go to the guardian as lines.
pub(super) const SLOTS: usize = 4096;
/// A slot never used yet. Slots are taken in order (freed ones first), so the first unused
/// slot ends the table for the guardian, which reads a byte per system call: a table of a
/// few services is read in a few hundred, not 53,000 (~50 ms of CPU at every exit).
const UNUSED_SLOT: &[u8; SLOT] = b".           \n";

pub(super) struct GroupTable {
    path: PathBuf,
    map: NonNull<u8>,
    /// Which slot holds which pgid.
    used: std::collections::HashMap<u32, usize>,
    /// Slots freed, to reuse; slots past `fresh` were never used.
    free: Vec<usize>,
    fresh: usize,
    /// This process made the file (a forked child's copy of the table is its parent's).
    owner: u32,
    /// The file, held open with its lock: the lock says we live.
    _locked: std::fs::File,
}

// SAFETY: the mapping is only touched through `&mut self` (the guardian's lock), and the
// pointer stays valid for the table's life.
unsafe impl Send for GroupTable {}

impl GroupTable {
    /// Make a new, empty table in `dir` (our private directory), removing the tables of
    /// processes long gone (their guardian removes a table when it ends; a guardian killed
    /// with its owner can't).
    pub(super) fn create(dir: &Path) -> std::io::Result<GroupTable> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        prune(dir);
        let path = dir.join(format!(
            "groups-{}-{}",
            std::process::id(),
            crate::safepath::random_name()
        ));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        // SAFETY: a valid descriptor we own; flock has no other preconditions.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let written = if locked == 0 {
            file.write_all(&UNUSED_SLOT.repeat(SLOTS))
        } else {
            Err(std::io::Error::last_os_error())
        };
        let len = std::num::NonZeroUsize::new(SLOT * SLOTS)
            .ok_or_else(|| std::io::Error::other("an empty table"))?;
        // SAFETY: a fresh shared mapping of a file we just wrote `len` bytes to; only this
        // table uses it, until `drop` unmaps it.
        let mapped = written.and_then(|()| {
            unsafe {
                mmap(
                    None,
                    len,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_SHARED,
                    file.as_fd(),
                    0,
                )
            }
            .map_err(std::io::Error::from)
        });
        match mapped {
            Ok(map) => Ok(GroupTable {
                path,
                map: map.cast(),
                used: std::collections::HashMap::new(),
                free: Vec::new(),
                fresh: 0,
                owner: std::process::id(),
                _locked: file,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Where the guardian finds it.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Watch `pgid` (again, if it is there already); false if the table is full.
    pub(super) fn add(&mut self, pgid: u32) -> bool {
        if self.used.contains_key(&pgid) {
            return true;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.fresh < SLOTS => {
                self.fresh += 1;
                self.fresh - 1
            }
            None => return false,
        };
        let line = format!("- {pgid:>10}\n");
        debug_assert_eq!(line.len(), SLOT);
        let at = self.slot(slot);
        // SAFETY: `at` is the start of a slot inside the mapping, SLOT bytes long; the slot
        // reads `-` or `.`, so the guardian would skip it or stop there (every slot after a
        // fresh one is unused) whatever these bytes are.
        unsafe { std::ptr::copy_nonoverlapping(line.as_ptr(), at.as_ptr(), SLOT) };
        self.mark(at, b'+');
        self.used.insert(pgid, slot);
        true
    }

    /// Stop watching `pgid`; false if it was not in the table.
    pub(super) fn remove(&mut self, pgid: u32) -> bool {
        let Some(slot) = self.used.remove(&pgid) else {
            return false;
        };
        self.mark(self.slot(slot), b'-');
        self.free.push(slot);
        true
    }

    fn slot(&self, slot: usize) -> NonNull<u8> {
        debug_assert!(slot < SLOTS);
        // SAFETY: slot < SLOTS, so the offset stays inside the mapping.
        unsafe { self.map.add(slot * SLOT) }
    }

    /// The one-byte store that makes a slot count (`+`) or not (`-`), after what it holds.
    fn mark(&self, at: NonNull<u8>, what: u8) {
        // SAFETY: `at` points into the live mapping; an atomic byte store, so the guardian
        // never sees half of it, ordered after the slot's other bytes.
        unsafe { AtomicU8::from_ptr(at.as_ptr()) }.store(what, Ordering::Release);
    }
}

/// Remove the tables in `dir` whose owner has ended: their lock can be taken. (A forked
/// child still holding its parent's descriptor keeps the lock: a file left, nothing worse.)
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("groups-"))
        {
            continue;
        }
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(entry.path())
        else {
            continue;
        };
        // SAFETY: a valid descriptor we own; flock has no other preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for GroupTable {
    fn drop(&mut self) {
        // SAFETY: unmapping what `create` mapped, once.
        unsafe {
            let _ = nix::sys::mman::munmap(self.map.cast(), SLOT * SLOTS);
        }
        // A forked child's copy is its parent's table: the file stays.
        if self.owner == std::process::id() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_as_the_guardian_reads_it() {
        let dir = crate::safepath::user_subdir("guardian", 0o700).expect("our directory");
        let mut table = GroupTable::create(&dir).expect("a table");
        assert!(table.add(12345));
        assert!(table.add(12345), "already there: still watched, once");
        assert!(table.add(7));
        assert!(table.add(4_194_304));
        assert!(table.remove(7));
        assert!(!table.remove(7), "gone already");
        // A freed slot is reused.
        assert!(table.add(99));
        let text = std::fs::read_to_string(table.path()).expect("read it");
        let watched: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("+ "))
            .map(str::trim)
            .collect();
        assert_eq!(watched, ["12345", "99", "4194304"]);
        // What the guardian reads: the slots used so far, then unused ones only.
        let used = text.lines().take_while(|l| !l.starts_with('.')).count();
        assert_eq!(used, 3);
        assert!(text.lines().skip(used).all(|l| l.starts_with('.')));
        assert!(text.lines().all(|l| l.len() == SLOT - 1));
        assert_eq!(text.len(), SLOT * SLOTS);
        // Full: the rest go to the guardian as lines.
        for pgid in 100..(100 + SLOTS as u32 - 3) {
            assert!(table.add(pgid));
        }
        assert!(!table.add(1));
        let path = table.path().to_owned();
        drop(table);
        assert!(!path.exists(), "removed with the table");
    }

    /// A table is removed once its owner has ended (its lock is free), never while its
    /// owner lives (it holds the lock).
    #[test]
    fn tables_of_ended_processes_are_removed() {
        let dir = crate::safepath::user_subdir("guardian", 0o700).expect("our directory");
        let live = GroupTable::create(&dir).expect("a table of ours");
        let ended = dir.join(format!("groups-0-test-ended-{}", std::process::id()));
        std::fs::write(&ended, UNUSED_SLOT).expect("a table nobody holds");
        prune(&dir);
        assert!(!ended.exists(), "the ended process's table stays");
        assert!(live.path().exists(), "our own table went");
    }
}
