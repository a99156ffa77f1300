//! Time travel: every faked service believes the clock says what the bundle says.
//!
//! Owns the bundle's clock offset, its run-directory file, and the environment that makes a
//! service faked. A small shim of ours (`shim.c`, built by `build.rs`), the only library
//! preloaded for it, serves wall-clock reads from `<run>/clock.offset`, 8 bytes of shared
//! memory, so a jump shows on the very next read at no cost per read, and takes the offset off
//! absolute wall-clock deadlines (timed waits, `clock_nanosleep`, absolute timers) so a wait
//! lasts what the service computed.
//!
//! What a faked service sees: `CLOCK_REALTIME` (`time.time()`, `datetime.now()`, `now()`
//! in SQL, `date`, Java's and Node's clocks) moves with every jump and keeps ticking;
//! `CLOCK_MONOTONIC` is never faked, so timeouts, sleeps and `time.monotonic()` behave as
//! without time travel; file times (`stat`) are real. Programs that ignore `LD_PRELOAD` (Go
//! binaries, static or setuid ones) keep real time.
//!
//! Why no libfaketime (it was preloaded after the shim until 2026-12): its start-up cost
//! each exec'd process about 0.2 ms here (0.5 ms on a loaded machine; `callgrind`: 289k
//! instructions for `/bin/true` against 138k with the shim alone), which doubled the
//! startup time of bundles of small services, and with our flags (a relative offset,
//! monotonic time real, no rate) every call it still faked on glibc 2.33 and later is now
//! the shim's (file times it never reached: glibc's `stat` family no longer goes through the
//! `__xstat` calls it wrapped). Not offered as an opt-in: preloaded beside the shim, both
//! would shift the same deadlines. Its `FAKETIME*` variables are still never inherited (by a
//! service on real time either), so a user's libfaketime in `LD_PRELOAD` can't move a
//! service's clock behind the bundle's back.
//!
//! Invariant: the offset file exists and says the current offset before any service starts.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

use crate::error::{Error, Result};

/// The shim, built by `build.rs`.
const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hitchserve-timeshim.so"));

/// Whether an inherited variable would change how a libfaketime the user preloads behaves:
/// every `FAKETIME*` one and a few others. Never inherited by a service (see
/// `drop_foreign`).
fn is_foreign(key: &OsStr) -> bool {
    let k = key.as_encoded_bytes();
    k.starts_with(b"FAKETIME")
        || matches!(k, b"NO_FAKE_STAT" | b"FAKE_UTIME" | b"DONT_FAKE_MONOTONIC")
}

/// Take the variables of a user's libfaketime out of an environment: out of the one every
/// service inherits (one on real time — `no_libfaketime`, a bundle without time travel — is
/// on real time: the user's libfaketime in `LD_PRELOAD`, passed on, would move it), and out
/// of a faked service's whole environment (its clock is the bundle's alone).
pub(crate) fn drop_foreign(env: &mut Vec<(OsString, OsString)>) {
    env.retain(|(k, _)| !is_foreign(k));
}

/// The dynamic loader splits `LD_PRELOAD` on spaces and colons.
fn preloadable(path: &Path) -> bool {
    !path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(|b| matches!(b, b' ' | b':' | b'\t' | b'\n'))
}

/// The bundle's clock: an offset from real time, in nanoseconds.
pub(crate) struct Clock {
    offset_ns: Mutex<i128>,
    live: Mutex<Option<SharedOffset>>,
}

/// Where a started bundle keeps its offset.
#[derive(Clone, Debug)]
pub(crate) struct ClockPaths {
    pub offset_file: PathBuf,
    pub shim: PathBuf,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            offset_ns: Mutex::new(0),
            live: Mutex::new(None),
        }
    }

    fn offset(&self) -> i128 {
        *self.offset_ns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The faked current time.
    pub(crate) fn now(&self) -> Timestamp {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Timestamp::from_nanosecond(real + self.offset()).unwrap_or(Timestamp::MAX)
    }

    /// Set the offset so that now is `moment`; returns the new offset.
    pub(crate) fn set_now(&self, moment: Timestamp) -> Result<i128> {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        self.set_offset(moment.as_nanosecond() - real)
    }

    /// Move by `by_ns` nanoseconds (negative: back); returns the new offset.
    pub(crate) fn shift(&self, by_ns: i128) -> Result<i128> {
        // Read and written under one lock: jumps from several threads add up.
        self.change_offset(|current| current.saturating_add(by_ns))
    }

    fn set_offset(&self, offset: i128) -> Result<i128> {
        self.change_offset(|_| offset)
    }

    /// The offset made `to(current)`, under the lock; an offset out of range is refused and
    /// leaves it as it was.
    fn change_offset(&self, to: impl FnOnce(i128) -> i128) -> Result<i128> {
        let mut current = self.offset_ns.lock().unwrap_or_else(|e| e.into_inner());
        let offset = i64::try_from(to(*current)).map_err(|_| Error::TimeOutOfRange)?;
        if let Some(map) = self.live.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            map.store(offset);
        }
        *current = i128::from(offset);
        Ok(*current)
    }

    /// Decide where the run's files go; nothing is written yet.
    pub(crate) fn plan(run_dir: &Path) -> Result<ClockPaths> {
        Ok(ClockPaths {
            offset_file: run_dir.join("clock.offset"),
            shim: shim_path()?,
        })
    }

    /// Write the shim and the offset file into the existing run directory (services may
    /// start right after).
    pub(crate) fn start(&self, paths: &ClockPaths) -> Result<()> {
        install_shim(&paths.shim)?;
        let offset = i64::try_from(self.offset()).map_err(|_| Error::TimeOutOfRange)?;
        let map = SharedOffset::create(&paths.offset_file, offset).map_err(|source| Error::Io {
            context: format!(
                "could not write the clock offset `{}`",
                paths.offset_file.display()
            ),
            source,
        })?;
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(map);
        Ok(())
    }

    /// The services are gone: unmap the offset.
    pub(crate) fn stop(&self) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl ClockPaths {
    /// Make `env` (a service's whole environment) run under the bundle's clock.
    pub(crate) fn apply(&self, env: &mut Vec<(OsString, OsString)>) {
        drop_foreign(env);
        // Ours first, then whatever the service preloaded already.
        let mut preload = OsString::from(&self.shim);
        if let Some((_, user)) = env.iter().find(|(k, _)| k == "LD_PRELOAD") {
            if !user.is_empty() {
                preload.push(":");
                preload.push(user);
            }
        }
        let mut set = |k: &str, v: &OsStr| {
            env.retain(|(key, _)| key != k);
            env.push((k.into(), v.to_owned()));
        };
        set("LD_PRELOAD", &preload);
        set("HITCHSERVE_CLOCK_OFFSET", self.offset_file.as_os_str());
    }
}

/// The shim's path: in the per-user directory under the temporary directory (see
/// `safepath`: ours, writable by nobody else), in `lib/` (mode 0755, so services run as
/// another user can load it), named after its content so different builds never overwrite
/// each other's. Never in the project: its path may hold a space or a colon, which
/// `LD_PRELOAD` splits on, and a per-user fallback for those cases would mean two places
/// code is loaded from.
fn shim_path() -> Result<PathBuf> {
    // FNV-1a: stable across builds and platforms.
    let hash = SHIM.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = crate::safepath::user_subdir("lib", 0o755)?.join(format!("timeshim-{hash:016x}.so"));
    if preloadable(&path) {
        Ok(path)
    } else {
        Err(Error::Unpreloadable { path })
    }
}

/// Write the shim unless the file there is already exactly it, ours and unwritable by others
/// (checked on the open file, not following a link, so what we checked is what is loaded).
fn install_shim(path: &Path) -> Result<()> {
    if shim_is_intact(path) {
        return Ok(());
    }
    let io = |source| Error::Io {
        context: format!("could not write the time-travel shim `{}`", path.display()),
        source,
    };
    // Bundles in other threads and processes may be installing it too: a tmp name of our own.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io)?;
    let written = file
        .write_all(SHIM)
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

fn shim_is_intact(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    /// The file this process last found intact (path, device, inode, change time): the
    /// same file unchanged since needs no second read. Its content can only have changed
    /// through our own user, in a directory only we may write (we replace it, a new inode;
    /// a change in place shows in its change time, unless made within the same clock tick).
    type Identity = (PathBuf, u64, u64, i64, i64);
    static CHECKED: Mutex<Option<Identity>> = Mutex::new(None);
    let identity = |m: &std::fs::Metadata| {
        (
            path.to_path_buf(),
            m.dev(),
            m.ino(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    let ours = |m: &std::fs::Metadata| {
        crate::safepath::check_ours(path, m, false).is_ok() && m.len() == SHIM.len() as u64
    };
    // Without opening it: a look at it (not through a link) is a tenth of a read.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
        if ours(&m) && checked.as_ref() == Some(&identity(&m)) {
            return true;
        }
    }
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let mut content = Vec::with_capacity(SHIM.len());
    let intact = ours(&meta) && file.read_to_end(&mut content).is_ok() && content == SHIM;
    if intact {
        *CHECKED.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity(&meta));
    }
    intact
}

/// The 8-byte offset file, mapped shared: a store here is what every faked process reads.
struct SharedOffset {
    ptr: NonNull<std::ffi::c_void>,
}

// SAFETY: the mapping is only accessed through an `AtomicI64`, from any thread.
unsafe impl Send for SharedOffset {}
// SAFETY: as above; concurrent atomic stores are fine.
unsafe impl Sync for SharedOffset {}

impl SharedOffset {
    fn create(path: &Path, offset: i64) -> std::io::Result<SharedOffset> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        (&file).write_all(&offset.to_ne_bytes())?;
        let len = std::num::NonZeroUsize::new(8).ok_or_else(|| std::io::Error::other("size"))?;
        // SAFETY: a fresh shared mapping of a file we just sized to 8 bytes.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file.as_fd(),
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(SharedOffset { ptr })
    }

    fn store(&self, offset: i64) {
        // SAFETY: the mapping is 8 bytes, page-aligned, and lives as long as `self`.
        let atomic = unsafe { AtomicI64::from_ptr(self.ptr.as_ptr().cast()) };
        atomic.store(offset, Ordering::SeqCst);
    }
}

impl Drop for SharedOffset {
    fn drop(&mut self) {
        // SAFETY: unmapping what `create` mapped, once.
        unsafe {
            let _ = nix::sys::mman::munmap(self.ptr, 8);
        }
    }
}

/// Where a travel to `moment` goes, as the seed says it: from real time (`now` within a
/// minute of it, as for `datetime.now()`).
pub(crate) fn describe_moment(moment: Timestamp) -> String {
    const MINUTE: i128 = 60_000_000_000;
    let ns = moment.as_nanosecond() - Timestamp::now().as_nanosecond();
    match ns.unsigned_abs() < MINUTE as u128 {
        true => "now".to_owned(),
        // To the nearest minute: real time moved on a little since the moment was chosen.
        false => describe_shift((ns + ns.signum() * MINUTE / 2) / MINUTE * MINUTE),
    }
}

/// How a jump by `ns` nanoseconds reads: its largest unit and the next one if it has some
/// ("1 hour 30 minutes from now", "2 days from now"), whole seconds.
pub(crate) fn describe_shift(ns: i128) -> String {
    const UNITS: [(u128, &str); 4] = [
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let secs = ns / 1_000_000_000;
    let (n, ago) = (secs.unsigned_abs(), secs < 0);
    if n == 0 {
        return "now".to_owned();
    }
    let count =
        |amount: u128, unit: &str| format!("{amount} {unit}{}", if amount == 1 { "" } else { "s" });
    let Some(top) = UNITS.iter().position(|&(size, _)| n >= size) else {
        return "now".to_owned();
    };
    let (size, unit) = UNITS[top];
    let mut said = count(n / size, unit);
    // The next smaller unit that has some ("1 day 30 minutes").
    if let Some(&(next, next_unit)) = UNITS[top + 1..].iter().find(|&&(u, _)| (n % size) / u > 0) {
        said = format!("{said} {}", count((n % size) / next, next_unit));
    }
    let when = if ago { "ago" } else { "from now" };
    format!("{said} {when}")
}

/// A moment as the log shows it: local time if the system knows its zone, else UTC.
pub(crate) fn show(moment: Timestamp) -> String {
    let zoned = moment.to_zoned_datetime(jiff::tz::TimeZone::system());
    zoned.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_is_said_as_asked_in_two_units_at_most() {
        let h = 3_600_000_000_000_i128;
        assert_eq!(describe_shift(23 * h), "23 hours from now");
        assert_eq!(describe_shift(48 * h), "2 days from now");
        assert_eq!(describe_shift(3 * h / 2), "1 hour 30 minutes from now");
        assert_eq!(describe_shift(-(36 * h)), "1 day 12 hours ago");
        assert_eq!(describe_shift(-(5 * h / 2)), "2 hours 30 minutes ago");
        assert_eq!(describe_shift(61_000_000_000), "1 minute 1 second from now");
        assert_eq!(describe_shift(24 * h + h / 2), "1 day 30 minutes from now");
        assert_eq!(describe_shift(0), "now");
    }

    /// A shim found intact once is not read again while it is the same file unchanged; one
    /// replaced, or gone, is found out and written again.
    #[test]
    fn a_changed_or_missing_shim_is_written_again() {
        let dir = crate::safepath::user_subdir("lib", 0o755).expect("our directory");
        let path = dir.join(format!("timeshim-test-{}.so", std::process::id()));
        let _ = std::fs::remove_file(&path);
        assert!(!shim_is_intact(&path));
        install_shim(&path).expect("install");
        assert!(shim_is_intact(&path));
        assert!(shim_is_intact(&path), "still, from what was checked");
        // Replaced by a file of the same size (another inode).
        let mut other = SHIM.to_vec();
        other[SHIM.len() / 2] ^= 0xff;
        let tmp = path.with_extension("other");
        std::fs::write(&tmp, &other).expect("write another");
        std::fs::rename(&tmp, &path).expect("replace it");
        assert!(!shim_is_intact(&path));
        install_shim(&path).expect("install again");
        assert_eq!(std::fs::read(&path).expect("read it"), SHIM);
        std::fs::remove_file(&path).expect("remove it");
        assert!(!shim_is_intact(&path));
    }
}
