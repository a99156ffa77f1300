//! libfaketime's shared state (a POSIX semaphore and an 8-byte-plus shared memory object in
//! `/dev/shm`), made by us once per bundle and per user its faked services run as.
//!
//! Left alone, libfaketime makes a pair named after each process's pid in every faked
//! process (`/dev/shm/faketime_shm_<pid>`): names any local user can predict and plant first
//! (libfaketime then exits at start-up: a way to break any bundle), and files left behind by
//! every process that dies by a signal. Given `FAKETIME_SHARED`, as the `faketime` wrapper
//! does for its children, every faked process of the bundle uses ours instead and makes none.
//!
//! Owns the names (`hitchserve-<run id>-<random>-<uid>-sem|shm`: unpredictable, and found by
//! the guardian from the run id when the bundle's process is killed), their creation (`O_EXCL`, mode 0600, then
//! handed to the service's user) and their removal when the bundle stops. Invariant: the
//! layout written here is libfaketime 0.9.x's `struct ft_shared_s`, initialised as its own
//! `ft_shm_create` does (start times "unset", nanoseconds -1).

use std::ffi::CString;
use std::io;

/// `FAKETIME_SHARED` for the services of `uid`: "SEM SHM" (names for `sem_open`/`shm_open`).
pub(super) fn env_value(token: &str, uid: u32) -> String {
    let (sem, shm) = names(token, uid);
    format!("{sem} {shm}")
}

fn names(token: &str, uid: u32) -> (String, String) {
    (
        format!("/hitchserve-{token}-{uid}-sem"),
        format!("/hitchserve-{token}-{uid}-shm"),
    )
}

/// One pair, removed on drop.
pub(super) struct SharedPair {
    sem: CString,
    shm: CString,
}

/// Bytes of libfaketime's `struct ft_shared_s` that we initialise (ticks, file index, four
/// timespecs); the object is one page.
const SHM_SIZE: i64 = 4096;

impl SharedPair {
    pub(super) fn create(token: &str, uid: u32, gid: u32) -> io::Result<SharedPair> {
        let (sem, shm) = names(token, uid);
        let sem = CString::new(sem).map_err(io::Error::other)?;
        let shm = CString::new(shm).map_err(io::Error::other)?;
        // SAFETY: a valid C string; O_EXCL: never an object someone else made.
        let s = unsafe {
            libc::sem_open(
                sem.as_ptr(),
                libc::O_CREAT | libc::O_EXCL,
                0o600 as libc::c_uint,
                1 as libc::c_uint,
            )
        };
        if s == libc::SEM_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a semaphore we just opened; the name stays until we unlink it.
        unsafe { libc::sem_close(s) };
        let pair = SharedPair { sem, shm };
        // SAFETY: a valid C string; O_EXCL as above.
        let fd = unsafe {
            libc::shm_open(
                pair.shm.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we own from here on.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(SHM_SIZE as u64)?;
        // ticks, file_idx, then start_time {real, mon, mon_raw, boot}, each {sec, nsec}:
        // the nanoseconds of the first three are -1 ("not started yet").
        let mut init = [0u8; 80];
        for nsec_at in [24, 40, 56] {
            init[nsec_at..nsec_at + 8].copy_from_slice(&(-1i64).to_ne_bytes());
        }
        std::os::unix::fs::FileExt::write_all_at(&file, &init, 0)?;
        if uid != crate::safepath::euid() {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            // The semaphore's file, made just now with O_EXCL in sticky /dev/shm: nobody
            // else can have replaced it; no link is followed anyway.
            let sem_file = format!("/dev/shm/sem.{}", &pair.sem.to_string_lossy()[1..]);
            std::os::unix::fs::lchown(sem_file, Some(uid), Some(gid))?;
        }
        Ok(pair)
    }
}

impl Drop for SharedPair {
    fn drop(&mut self) {
        // SAFETY: valid C strings; unlinking names we made.
        unsafe {
            libc::sem_unlink(self.sem.as_ptr());
            libc::shm_unlink(self.shm.as_ptr());
        }
    }
}
