//! Time travel: every faked service believes the clock says what the bundle says.
//!
//! Owns the bundle's clock offset, its two run-directory files, and the environment that
//! makes a service faked. libfaketime (Debian's `faketime` package) is preloaded into each
//! faked service and reads a relative offset from `<run>/faketime.rc`; a small shim of ours
//! (`shim.c`), preloaded just before it, serves wall-clock reads from `<run>/clock.offset`,
//! 8 bytes of shared memory, so a jump shows on the very next read at no cost per read.
//!
//! What a faked service sees: `CLOCK_REALTIME` (`time.time()`, `datetime.now()`, `now()`
//! in SQL) moves with every jump and keeps ticking; `CLOCK_MONOTONIC` is never faked, so
//! timeouts, sleeps and `time.monotonic()` behave as without time travel. Programs that
//! ignore `LD_PRELOAD` (Go binaries, static or setuid ones) keep real time.
//!
//! Invariant: both files exist and say the current offset before any service starts, so
//! a user's `~/.faketimerc` or `/etc/faketimerc` never applies.

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

mod shm;

/// The shim, built by `build.rs`.
const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hitchserve-timeshim.so"));

/// Environment variable that overrides where libfaketime is.
pub(crate) const LIBFAKETIME_VAR: &str = "HITCHSERVE_LIBFAKETIME";

/// Whether an inherited variable would change how libfaketime behaves: every `FAKETIME*`
/// one and a few others. Never inherited by a faked service.
fn is_foreign(key: &OsStr) -> bool {
    let k = key.as_encoded_bytes();
    k.starts_with(b"FAKETIME")
        || matches!(k, b"NO_FAKE_STAT" | b"FAKE_UTIME" | b"DONT_FAKE_MONOTONIC")
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
    live: Mutex<Option<LiveFiles>>,
}

/// Where a started bundle keeps its offset.
#[derive(Clone, Debug)]
pub(crate) struct ClockPaths {
    pub offset_file: PathBuf,
    pub faketime_file: PathBuf,
    pub libfaketime: PathBuf,
    pub shim: PathBuf,
    /// Names libfaketime's shared state (see `shm`).
    shared_token: String,
}

struct LiveFiles {
    paths: ClockPaths,
    map: SharedOffset,
    /// Removed from `/dev/shm` when the bundle's clock stops.
    _shared: Vec<shm::SharedPair>,
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
        self.set_offset(self.offset().saturating_add(by_ns))
    }

    fn set_offset(&self, offset: i128) -> Result<i128> {
        let offset = i64::try_from(offset).map_err(|_| Error::TimeOutOfRange)?;
        let mut current = self.offset_ns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = self.live.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            write_faketime_file(&live.paths.faketime_file, offset)?;
            live.map.store(offset);
        }
        *current = i128::from(offset);
        Ok(*current)
    }

    /// Find libfaketime and decide where the run's files go; nothing is written yet.
    pub(crate) fn plan(run_dir: &Path, services: &[&str]) -> Result<ClockPaths> {
        let libfaketime = find_libfaketime().map_err(|searched| Error::LibfaketimeMissing {
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            searched,
        })?;
        if !preloadable(&libfaketime) {
            return Err(Error::Unpreloadable { path: libfaketime });
        }
        let shim = shim_path()?;
        Ok(ClockPaths {
            offset_file: run_dir.join("clock.offset"),
            faketime_file: run_dir.join("faketime.rc"),
            libfaketime,
            shim,
            shared_token: format!(
                "{}-{}",
                run_dir
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                crate::safepath::random_name()
            ),
        })
    }

    /// Write the shim and both offset files into the existing run directory (services may
    /// start right after).
    /// `users`: the (uid, gid) of every faked service.
    pub(crate) fn start(&self, paths: ClockPaths, users: &[(u32, u32)]) -> Result<()> {
        let io = |what: &str, path: &Path| {
            let context = format!("could not write {what} `{}`", path.display());
            move |source| Error::Io { context, source }
        };
        install_shim(&paths.shim)?;
        let offset = i64::try_from(self.offset()).map_err(|_| Error::TimeOutOfRange)?;
        write_faketime_file(&paths.faketime_file, offset)?;
        let map = SharedOffset::create(&paths.offset_file, offset)
            .map_err(io("the clock offset", &paths.offset_file))?;
        let mut shared: Vec<shm::SharedPair> = Vec::new();
        let mut seen: Vec<u32> = Vec::new();
        for &(uid, gid) in users {
            if seen.contains(&uid) {
                continue;
            }
            seen.push(uid);
            let pair =
                shm::SharedPair::create(&paths.shared_token, uid, gid).map_err(|source| {
                    Error::Io {
                        context: "could not make libfaketime's shared memory in /dev/shm".into(),
                        source,
                    }
                })?;
            shared.push(pair);
        }
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(LiveFiles {
            paths,
            map,
            _shared: shared,
        });
        Ok(())
    }

    /// The services are gone: remove what `start` made outside the run directory.
    pub(crate) fn stop(&self) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl ClockPaths {
    /// Make `env` (a service's whole environment) run under the bundle's clock.
    /// `uid`: the user the service runs as.
    pub(crate) fn apply(&self, env: &mut Vec<(OsString, OsString)>, uid: u32) {
        env.retain(|(k, _)| !is_foreign(k));
        // Ours first, then libfaketime, then whatever the service preloaded already.
        let mut preload = OsString::from(&self.shim);
        preload.push(":");
        preload.push(&self.libfaketime);
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
        set("FAKETIME_TIMESTAMP_FILE", self.faketime_file.as_os_str());
        set("FAKETIME_NO_CACHE", OsStr::new("1"));
        set("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1"));
        set(
            "FAKETIME_SHARED",
            OsStr::new(&shm::env_value(&self.shared_token, uid)),
        );
    }
}

/// libfaketime's relative form, e.g. `+172800.000000000`: validated by construction (garbage
/// in this file makes a faked process exit). Replaced atomically.
fn write_faketime_file(path: &Path, offset_ns: i64) -> Result<()> {
    let sign = if offset_ns < 0 { '-' } else { '+' };
    let abs = offset_ns.unsigned_abs();
    let text = format!("{sign}{}.{:09}\n", abs / 1_000_000_000, abs % 1_000_000_000);
    let tmp = path.with_extension("rc.tmp");
    // Readable by services that run as another user, whatever the umask.
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::Io {
            context: format!("could not write the time offset to `{}`", path.display()),
            source,
        })
}

fn find_libfaketime() -> std::result::Result<PathBuf, Vec<PathBuf>> {
    if let Some(path) = std::env::var_os(LIBFAKETIME_VAR) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(vec![path])
        };
    }
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    let candidates: Vec<PathBuf> = [
        format!("/usr/lib/{multiarch}/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_owned(),
        "/usr/lib64/faketime/libfaketime.so.1".to_owned(),
        "/usr/local/lib/faketime/libfaketime.so.1".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(candidates)
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
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    let ours = file.metadata().is_ok_and(|m| {
        crate::safepath::check_ours(path, &m, false).is_ok() && m.len() == SHIM.len() as u64
    });
    let mut content = Vec::with_capacity(SHIM.len());
    ours && file.read_to_end(&mut content).is_ok() && content == SHIM
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

/// "2 days from now", "3 hours ago": how a jump reads in the log.
pub(crate) fn describe_jump(from: Timestamp, to: Timestamp) -> String {
    describe_shift(to.as_nanosecond() - from.as_nanosecond())
}

/// How a jump by `ns` nanoseconds reads: whole units, rounded towards zero.
pub(crate) fn describe_shift(ns: i128) -> String {
    let secs = ns / 1_000_000_000;
    let (n, ago) = (secs.unsigned_abs(), secs < 0);
    let (amount, unit) = match n {
        0..=59 => (n, "second"),
        60..=3599 => (n / 60, "minute"),
        3600..=86_399 => (n / 3600, "hour"),
        _ => (n / 86_400, "day"),
    };
    if n == 0 {
        return "now".to_owned();
    }
    let plural = if amount == 1 { "" } else { "s" };
    let when = if ago { "ago" } else { "from now" };
    format!("{amount} {unit}{plural} {when}")
}

/// A moment as the log shows it: local time if the system knows its zone, else UTC.
pub(crate) fn show(moment: Timestamp) -> String {
    let zoned = moment.to_zoned_datetime(jiff::tz::TimeZone::system());
    zoned.strftime("%Y-%m-%d %H:%M:%S").to_string()
}
