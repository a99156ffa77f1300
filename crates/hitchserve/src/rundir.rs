//! The run directory: `<project>/.hitchserve/runs/<run id>/`, one per bundle run.
//!
//! Owns its creation (with modes that keep its logs private to the user: `.hitchserve/`,
//! `runs/` and the run are 0711, `logs/` 0700), the `latest` link and pruning of old runs (done by the log writer
//! thread, off the startup path: directory operations are slow on some filesystems). Parallel bundles, in one
//! process or many, never share a folder: the id holds the time, the pid and a counter.
//! A run whose owning process is still alive is never pruned; only names that are run ids
//! are. Also owns the public `state_dir`; `.hitchserve` and every directory below it are
//! made or checked (`safepath::ensure_state_dir`), never followed through a link.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::safepath;

/// Runs kept in `.hitchserve/runs` besides live ones.
const KEEP: usize = 20;

#[derive(Clone)]
pub(crate) struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

impl RunDir {
    /// Pick a fresh id and path under `project`; nothing is created yet.
    pub(crate) fn allocate(project: &Path) -> RunDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!(
            "{}.{:06}-{}-{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = project.join(".hitchserve").join("runs").join(&id);
        RunDir { id, path }
    }

    /// Create the run directory and its parents, `.hitchserve/` and `runs/`, with mode 0711:
    /// services that run as another user (a database under root, say) must pass through
    /// them to their own directory and the clock files, but nobody else may list or write
    /// them. Each is made, or checked to be a real directory of ours that nobody else can
    /// write (never a link followed): the project was checked by `state_dir`'s rule, so
    /// nobody else can swap one of them between the check and its use. Safe to call from
    /// several threads.
    pub(crate) fn create(&self) -> Result<()> {
        let runs = self.path.parent().unwrap_or(&self.path);
        let base = runs.parent().unwrap_or(runs);
        let owner = project_owner(base.parent().unwrap_or(base))?;
        for dir in [base, runs, self.path.as_path()] {
            safepath::ensure_state_dir(dir, 0o711, owner)?;
        }
        Ok(())
    }

    /// Create the directory (with `logs/`, private to us) and point `latest` at it.
    pub(crate) fn set_up(&self) -> Result<()> {
        self.create()?;
        // Ours alone: made by this run.
        safepath::ensure_dir(&self.logs(), 0o700)?;
        let Some(base) = self.path.parent().and_then(Path::parent) else {
            return Ok(());
        };
        // Logs are evidence for a person, not something to commit. Made only if nothing is
        // there (never through a link).
        if let Ok(mut ignore) = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(base.join(".gitignore"))
        {
            let _ = ignore.write_all(b"*\n");
        }
        // A link made aside, then renamed over the old one (rename replaces a link, never
        // follows it).
        let latest = base.join("latest");
        let tmp = base.join(format!(".latest-{}", self.id));
        if std::os::unix::fs::symlink(Path::new("runs").join(&self.id), &tmp).is_ok()
            && std::fs::rename(&tmp, &latest).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(())
    }

    /// Delete old runs, keeping the last `KEEP` and any whose process is alive.
    pub(crate) fn prune_old(&self) {
        if let Some(runs) = self.path.parent() {
            prune(runs);
        }
    }

    pub(crate) fn logs(&self) -> PathBuf {
        self.path.join("logs")
    }
}

/// The owner of the project directory: trusted with what is below it (see
/// `safepath::ensure_state_dir`).
fn project_owner(project: &Path) -> Result<u32> {
    std::fs::metadata(project)
        .map(|m| m.uid())
        .map_err(|source| crate::error::Error::ProjectDir {
            path: project.to_path_buf(),
            source,
        })
}

/// The directory where hitchserve keeps a project's runs (and the command line its control
/// socket): `<project>/.hitchserve`, made (mode 0711) or checked to be a real directory —
/// never a link followed — of yours, root's or the project owner's, that no other user can
/// write. The path returned is through the project's canonical path (links resolved once).
/// `Bundle::startup` makes the same check; tools built on the engine that keep their own
/// state beside its runs call this first.
///
/// # Errors
/// [`Error::ProjectDir`](crate::Error::ProjectDir) if the project directory can't be read
/// or is not a directory; [`Error::UnsafePath`](crate::Error::UnsafePath) if `.hitchserve`
/// is a link, not a directory, another user's or writable by other users;
/// [`Error::Io`](crate::Error::Io) if it can't be made.
///
/// ```no_run
/// let dir = hitchserve::state_dir(".")?;
/// assert!(dir.ends_with(".hitchserve"));
/// # Ok::<(), hitchserve::Error>(())
/// ```
pub fn state_dir(project: impl AsRef<Path>) -> Result<PathBuf> {
    let project = canonical_project(project.as_ref())?;
    let dir = project.join(".hitchserve");
    safepath::ensure_state_dir(&dir, 0o711, project_owner(&project)?)?;
    Ok(dir)
}

/// The project directory with its links resolved, checked to be a directory.
pub(crate) fn canonical_project(project: &Path) -> Result<PathBuf> {
    let io = |source| crate::error::Error::ProjectDir {
        path: project.to_path_buf(),
        source,
    };
    let real = std::fs::canonicalize(project).map_err(io)?;
    if !real.is_dir() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "it is not a directory (give `Bundle::new` the directory the services run in)",
        )));
    }
    Ok(real)
}

/// Whether `name` is a run id (`RunDir::allocate`'s `<secs>.<micros>-<pid>-<n>`): only
/// those are pruned.
fn is_run_id(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = name.split('-');
    let (Some(time), Some(pid), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    time.split_once('.')
        .is_some_and(|(s, us)| digits(s) && digits(us))
        && digits(pid)
        && digits(n)
}

fn prune(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| is_run_id(name))
        .collect();
    // Ids start with a fixed-width timestamp, so name order is age order.
    names.sort();
    let excess = names.len().saturating_sub(KEEP);
    // Runs of older versions kept their logs in 0755 directories, in a `.hitchserve/` that
    // was then 0700 and is now 0711: close them.
    for name in names.iter().skip(excess) {
        // Through the opened directory, never a link: such an old run may have been open.
        let Ok(logs) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(runs.join(name).join("logs"))
        else {
            continue;
        };
        if logs
            .metadata()
            .is_ok_and(|m| m.uid() == safepath::euid() && m.permissions().mode() & 0o077 != 0)
        {
            let _ = logs.set_permissions(std::fs::Permissions::from_mode(0o700));
        }
    }
    for name in names.into_iter().take(excess) {
        let owner_alive = name
            .split('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !owner_alive {
            let _ = std::fs::remove_dir_all(runs.join(name));
        }
    }
}
