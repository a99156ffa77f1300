//! The bundle's cgroup: a cgroup v2 made for one bundle run, under the cgroup of the process
//! that owns the bundle, where the kernel lets us make one (root, or a delegated subtree).
//!
//! A process can leave its process group and session and clear its environment, but it
//! cannot leave its cgroup without write access to cgroup files, and every process it forks
//! is born inside. So once a service's main process is in the bundle's cgroup, killing the
//! cgroup kills all that came from it: the net under the process-group and marker layers.
//!
//! Owns making, filling, killing and removing that directory. It does not decide when: the
//! guardian places services (off the spawn path) and kills the cgroup if our process dies;
//! the runtime's `stop` kills it at shutdown.
//!
//! A service is born inside where the kernel lets us (`exec::clone`, through `birth_fd`):
//! nothing to move, and nothing it forks can be born outside. Otherwise it is placed after
//! the spawn, because neither std nor glibc's `posix_spawn` can start a child in a cgroup
//! and a `pre_exec` would cost the fast spawn path. A move takes effect only after an RCU
//! grace period when the kernel is idle (measured 7-12 ms here; 40 µs when warm), so it
//! must never block a spawn.
//!
//! Invariant: a service's main process is written to `cgroup.procs` only while it is our
//! unreaped child (see `guardian::forget`), so its reused pid is never moved in and killed.
//! Its descendants found at that moment (`/proc/*/task/*/children`) are not our children: one
//! that exits and whose pid is reused between that read and the write would move a stranger
//! in — a window of microseconds, accepted.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) struct Cgroup {
    path: PathBuf,
    procs: File,
    /// The directory itself (`O_PATH`), to start children in.
    dir: Option<OwnedFd>,
    /// A move was refused (no permission to move out of our own cgroup, say): don't retry.
    refused: AtomicBool,
    /// Starting a child inside was refused: start them outside and move them.
    births_refused: AtomicBool,
}

impl Cgroup {
    /// Make the run's cgroup; `None` where there is no cgroup v2 or we may not make one.
    pub(crate) fn create(run_id: &str) -> Option<Cgroup> {
        let path = own_cgroup()?.join(format!("hitchserve-{run_id}"));
        // The guardian's script splits its lists on white space.
        if path
            .to_str()
            .is_none_or(|p| p.contains(char::is_whitespace))
        {
            return None;
        }
        std::fs::create_dir(&path).ok()?;
        match File::options().write(true).open(path.join("cgroup.procs")) {
            Ok(procs) => Some(Cgroup {
                dir: File::options()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(&path)
                    .ok()
                    .map(OwnedFd::from),
                path,
                procs,
                refused: AtomicBool::new(false),
                births_refused: AtomicBool::new(false),
            }),
            Err(_) => {
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory to start a child in (`clone3(CLONE_INTO_CGROUP)`), unless that was
    /// refused before.
    pub(crate) fn birth_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.births_refused.load(Ordering::Relaxed) {
            return None;
        }
        self.dir.as_ref().map(|d| d.as_fd())
    }

    /// Starting a child inside was refused: `birth_fd` says `None` from now on.
    pub(crate) fn refuse_births(&self) {
        self.births_refused.store(true, Ordering::Relaxed);
    }

    /// Move a service's main process in, then whatever it forked before the move.
    pub(crate) fn place(&self, pid: u32) {
        if self.refused.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = (&self.procs).write_all(pid.to_string().as_bytes()) {
            if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                self.refused.store(true, Ordering::Relaxed);
            }
            return;
        }
        // A fork racing the move either finished before it (the child is listed below)
        // or happens after it (the child is born inside).
        let mut todo = children(pid);
        while let Some(child) = todo.pop() {
            let _ = (&self.procs).write_all(child.to_string().as_bytes());
            todo.extend(children(child));
        }
    }

    /// Whether a live process is still inside.
    pub(crate) fn is_populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .map(|events| !events.lines().any(|l| l == "populated 0"))
            .unwrap_or(false)
    }

    /// SIGKILL everything inside (all at once where the kernel has `cgroup.kill`, 5.14+).
    /// Returns whether anything was there.
    pub(crate) fn kill(&self) -> bool {
        if !self.is_populated() {
            return false;
        }
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return true;
        }
        // Older kernels: kill what is listed until nothing is (a process may fork between
        // two reads; bounded, so a fork bomb can't keep us here).
        for _ in 0..50 {
            let Ok(list) = std::fs::read_to_string(self.path.join("cgroup.procs")) else {
                break;
            };
            let pids: Vec<i32> = list.lines().filter_map(|l| l.parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        true
    }

    /// Wait (woken by the kernel's `cgroup.events` notification) until nothing is inside or
    /// the deadline passes, then remove the directory. Returns whether it is gone.
    pub(crate) fn remove(&self, deadline: Option<Instant>) -> bool {
        if let Ok(events) = File::open(self.path.join("cgroup.events")) {
            // Read through the polled descriptor itself: that read re-arms the kernfs
            // notification (read another way, poll returns at once, forever: a busy loop).
            let populated = || {
                let mut buf = [0u8; 256];
                std::os::unix::fs::FileExt::read_at(&events, &mut buf, 0).is_ok_and(|n| {
                    !String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "populated 0")
                })
            };
            while populated() {
                let timeout = match deadline {
                    None => PollTimeout::NONE,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                    }
                };
                let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => true,
            // Cgroups made inside ours (a nested hitchserve's runs, killed with ours before
            // it could remove them) keep it: they go first.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                remove_descendants(&self.path, 16);
                std::fs::remove_dir(&self.path).is_ok() || !self.path.exists()
            }
            Err(_) => !self.path.exists(),
        }
    }
}

/// Remove the (empty) cgroups under `dir`, deepest first, `depth` levels down at most.
/// Best effort: what can't be removed keeps `dir` for the guardian.
fn remove_descendants(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_descendants(&entry.path(), depth - 1);
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// The processes `pid`'s threads forked that are still its children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The directory of our own cgroup in the cgroup v2 hierarchy, if one is mounted.
fn own_cgroup() -> Option<PathBuf> {
    static OWN: OnceLock<Option<PathBuf>> = OnceLock::new();
    OWN.get_or_init(|| {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        // A cgroup removed under us, or one outside our cgroup namespace.
        if rel.ends_with(" (deleted)") || !rel.starts_with('/') {
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mountinfo.lines().find_map(|line| {
            let (fields, after) = line.split_once(" - ")?;
            if after.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            // The mount must show the hierarchy's root, so that our path is under it.
            let mut f = fields.split_whitespace();
            let root = f.nth(3)?;
            let point = f.next()?;
            (root == "/").then(|| unescape(point))
        })?;
        Some(Path::new(&mount).join(rel.trim_start_matches('/')))
    })
    .clone()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(n) = u8::from_str_radix(digits, 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
