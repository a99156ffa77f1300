//! Where `up` keeps its state in the project (`.hitchserve/`), and what a client reads
//! there: the control sockets' private directory and names, the lock file that says an `up`
//! is running, and the pid it writes there.
//!
//! Owns the names and the reading, not the making (that is `up`'s), the wait for a
//! running `up`'s end (`RunningUp`), and whom a state file, the control directory and the
//! bundle answering on its socket are trusted from (`trusted`: us, root, the project's
//! owner). Invariants: a socket is only ever reached inside the project's
//! `.hitchserve/control/` (through `/proc/self/fd` when the path is too long for
//! `sun_path`), never from a copy elsewhere; a state file is opened without following a
//! link and used only if a trusted user owns it, it has one name and no one else can write
//! it — one planted while `.hitchserve` was writable by others is refused, never written
//! nor believed (a pid in it never signalled).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;

pub(super) fn state_dir(project: &Path) -> PathBuf {
    project.join(".hitchserve")
}

/// The control socket's name in the state directory, once the bundle is ready.
pub(super) const SOCKET: &str = "control.sock";
/// Its name while the bundle starts: bound before any service starts (so a socket that
/// can't be made fails the `up` at once), renamed to [`SOCKET`] once all are ready.
pub(super) const SOCKET_STARTING: &str = "control.sock.starting";

/// The sockets' directory, private to us (0700).
pub(super) fn socket_dir(project: &Path) -> PathBuf {
    state_dir(project).join("control")
}

pub(super) fn socket_path(project: &Path) -> PathBuf {
    socket_dir(project).join(SOCKET)
}

/// The project's state directory, if there is one, checked as `hitchserve::state_dir` checks
/// it (a real directory — never a link — of ours, root's or the project owner's). None there
/// is fine: nothing runs, and `up` makes it.
pub fn check_state_dir(project: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(state_dir(project)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => hitchserve::state_dir(project)
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// `dir` (in the state directory, which `hitchserve::state_dir` checked is a real directory
/// of ours, root's or the project owner's) made 0700, or the one there if it is a real
/// directory of ours — never a link followed — made 0700. One another user's run left there
/// (a `sudo` run in a checkout, or the checkout's owner after one) is empty once its `up`
/// has ended: it is replaced by ours.
pub(super) fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let me = nix::unistd::geteuid().as_raw();
    let make = || match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(format!("cannot create `{}`: {e}", dir.display()))
        }
        _ => Ok(()),
    };
    make()?;
    let inspect = || {
        std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot inspect `{}`: {e}", dir.display()))
    };
    let mut meta = inspect()?;
    if meta.is_dir() && meta.uid() != me && std::fs::remove_dir(dir).is_ok() {
        make()?;
        meta = inspect()?;
    }
    if !meta.is_dir() || meta.uid() != me {
        return Err(format!(
            "refusing to use `{}`: it is not a directory of yours (a link, a file, or another \
             user's that still holds something: a bundle of theirs may run here); remove it",
            dir.display()
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot make `{}` private: {e}", dir.display()))
}

/// The users whose state files and bundle we trust: us, root, and the project directory's
/// owner (whoever can write the project can change the code its services run anyway: the
/// README's Security section).
pub(super) fn trusted(project: &Path) -> Vec<u32> {
    let mut uids = vec![nix::unistd::geteuid().as_raw(), 0];
    if let Ok(meta) = std::fs::metadata(project) {
        uids.push(meta.uid());
    }
    uids
}

/// Open the project's state file `name` (`up.lock`, `up.log`, `shared.lock`) with
/// `options`, never through a link, and check it (see [`check_state_file`]).
pub(super) fn open_state_file(
    options: &mut OpenOptions,
    project: &Path,
    name: &str,
) -> Result<File, String> {
    let path = &state_dir(project).join(name);
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| cannot_open(path, &e))?;
    check_state_file(&file, path, project)?;
    Ok(file)
}

/// Why a state file can't be opened: a link there (opened without following one) is said as
/// such, not as "too many levels of symbolic links".
pub(super) fn cannot_open(path: &Path, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "refusing to use `{}`: it is a symbolic link, which we never follow there; remove it",
            path.display()
        ),
        _ => format!("cannot open `{}`: {e}", path.display()),
    }
}

/// Whether the opened state file at `path` may be used: a regular file of a trusted user (see
/// [`trusted`]) with one name (a hard link of another file would be written through) that
/// nobody else can write. One another user put there, while `.hitchserve` was writable by
/// others, is refused with what to do.
fn check_state_file(file: &File, path: &Path, project: &Path) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect `{}`: {e}", path.display()))?;
    let problem = if !meta.is_file() {
        Some("it is not a regular file".to_owned())
    } else if !trusted(project).contains(&meta.uid()) {
        Some(format!(
            "it is owned by uid {}, neither you, root nor the project's owner",
            meta.uid()
        ))
    } else if meta.nlink() != 1 {
        Some(format!(
            "it has {} names (a hard link to another file)",
            meta.nlink()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some("other users can write it".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "refusing to use `{}`: {problem}: another user may have put it there; remove it",
            path.display()
        )),
    }
}

/// The state directory, open, to reach its sockets by a path that fits in `sun_path`.
pub(super) struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl StateDir {
    /// The control directory, if it is a real directory (never a link followed) of a
    /// trusted user that nobody else can write: a socket found anywhere else could be
    /// another user's, answering as our bundle.
    pub(super) fn open(project: &Path) -> Result<StateDir, String> {
        let path = socket_dir(project);
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
        let meta = nix::sys::stat::fstat(&fd)
            .map_err(|e| format!("cannot inspect `{}`: {e}", path.display()))?;
        if !trusted(project).contains(&meta.st_uid) || meta.st_mode & 0o022 != 0 {
            return Err(format!(
                "refusing to use `{}`: it is owned by uid {} (mode {:o}), not a private \
                 directory of yours, root's or the project owner's; remove it",
                path.display(),
                meta.st_uid,
                meta.st_mode & 0o7777
            ));
        }
        Ok(StateDir { path, fd })
    }

    /// An address for the socket `name`: its own path if that fits in `sun_path` (107
    /// bytes), else the same file reached through our descriptor of the directory
    /// (`/proc/self/fd/N/name`), so deep project paths work without a socket elsewhere.
    pub(super) fn address(&self, name: &str) -> PathBuf {
        let direct = self.path.join(name);
        if direct.as_os_str().len() <= 107 {
            return direct;
        }
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }
}

/// Whether an `up` holds the project's lock (it may still be starting).
pub(super) fn up_is_running(project: &Path) -> bool {
    let Ok(lock) = open_state_file(OpenOptions::new().read(true), project, "up.lock") else {
        return false;
    };
    // SAFETY: a valid descriptor we own; a shared, non-blocking try.
    let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

/// Why we can't tell whether a bundle runs: its lock is another user's, closed to us (a
/// bundle root started in a user's project, asked by that user). `None` if we can tell.
/// Said rather than taken for "nothing runs": a `down` that said so and exited 0 left
/// the whole bundle running.
pub(super) fn closed_to_us(project: &Path) -> Option<String> {
    let dir = state_dir(project);
    let lock = dir.join("up.lock");
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock);
    match opened {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let owner = std::fs::symlink_metadata(&lock)
                .or_else(|_| std::fs::symlink_metadata(&dir))
                .map(|m| m.uid())
                .ok()?;
            // Left by one that ended (root's `up` once ran here): no `hitchserve` of that
            // user runs at all, so none runs here. (Unknown if `/proc` hides their processes.)
            if runs_a_hitchserve(owner) == Some(false) {
                return None;
            }
            Some(format!(
                "a bundle may be running in `{}`, started by uid {owner}: its `{}` is that \
                 user's, closed to you; run this command as that user (e.g. with sudo)",
                project.display(),
                dir.display()
            ))
        }
        _ => None,
    }
}

/// Whether a process of `uid` may be a `hitchserve up` (or the Python package's `-m
/// hitchserve.cli up`); `None` if `/proc` shows none of that user's processes at all
/// (mounted with `hidepid`). Read from each process's owner and command line.
fn runs_a_hitchserve(uid: u32) -> Option<bool> {
    let mut seen_any = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid || entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        seen_any = true;
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // Whatever the executable is called: any command with an `up` argument counts (a
        // `docker compose up` too — said "may be running", the safe side).
        if cmdline
            .split(|&b| b == 0)
            .skip(1)
            .any(|arg| arg == b"up" || arg == b"--daemon-child")
        {
            return Some(true);
        }
    }
    seen_any.then_some(false)
}

pub(super) fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The pid an `up` wrote in its lock file once its socket was bound (see [`up`](super::up::up)).
/// Nothing from a lock file not to be trusted (see [`check_state_file`]): its pid is
/// never signalled.
pub(super) fn up_pid(project: &Path) -> Option<libc::pid_t> {
    let file = open_state_file(OpenOptions::new().read(true), project, "up.lock").ok()?;
    std::io::read_to_string(file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .filter(|&pid| pid > 0)
}

/// The running `up` of a project, to wait for its end — its own, not the lock's: once it has
/// released the lock, another `up` (a shared bundle started again) may take it at once.
pub(super) struct RunningUp(OwnedFd);

impl RunningUp {
    /// The `up` that holds the project's lock now, if any (and it has written its pid).
    pub(super) fn of(project: &Path) -> Option<RunningUp> {
        let pid = up_pid(project)?;
        // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor the kernel just gave us, owned from here on.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Opened while an `up` holds the lock: the pid in the lock file is that one's.
        up_is_running(project).then_some(RunningUp(pidfd))
    }

    /// Wait up to `patience` for it to exit: whether it did.
    pub(super) fn wait(&self, patience: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(patience.as_millis()).unwrap_or(i32::MAX);
        loop {
            // SAFETY: polling one descriptor we own.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return n == 1;
            }
        }
    }
}
