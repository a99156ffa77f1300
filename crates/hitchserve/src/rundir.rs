//! The run directory: `<project>/.hitchserve/runs/<run id>/`, one per bundle run.
//!
//! Owns its creation (with modes that keep its logs private to the user: `.hitchserve/`,
//! `runs/` and the run are 0711, `logs/` 0700), the `latest` link and pruning of old runs (done by the log writer
//! thread, off the startup path: directory operations are slow on some filesystems). Parallel bundles, in one
//! process or many, never share a folder: the id holds the time, the pid and a counter.
//! A run whose owning process is still alive is never pruned.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// them. Safe to call from several threads.
    pub(crate) fn create(&self) -> std::io::Result<()> {
        let runs = self.path.parent().unwrap_or(&self.path);
        let base = runs.parent().unwrap_or(runs);
        if let Some(project) = base.parent() {
            // The project itself is the user's: it must exist, we make nothing above it.
            std::fs::metadata(project)?;
        }
        for dir in [base, runs, self.path.as_path()] {
            make_dir(dir, 0o711)?;
        }
        Ok(())
    }

    /// Create the directory (with `logs/`, private to us) and point `latest` at it.
    pub(crate) fn set_up(&self) -> std::io::Result<()> {
        self.create()?;
        make_dir(&self.logs(), 0o700)?;
        let Some(base) = self.path.parent().and_then(Path::parent) else {
            return Ok(());
        };
        let ignore = base.join(".gitignore");
        if !ignore.exists() {
            // Logs are evidence for a person, not something to commit.
            let _ = std::fs::write(ignore, "*\n");
        }
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

/// `dir` with exactly `mode` (whatever the umask), if it is ours; an existing directory of
/// another owner is left as it is.
fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "`{}` is not a directory",
            dir.display()
        )));
    }
    if meta.uid() == crate::safepath::euid() && meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn prune(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    // Ids start with a fixed-width timestamp, so name order is age order.
    names.sort();
    let excess = names.len().saturating_sub(KEEP);
    // Runs of older versions kept their logs in 0755 directories, in a `.hitchserve/` that
    // was then 0700 and is now 0711: close them.
    for name in names.iter().skip(excess) {
        let logs = runs.join(name).join("logs");
        if std::fs::metadata(&logs).is_ok_and(|m| {
            m.uid() == crate::safepath::euid() && m.permissions().mode() & 0o077 != 0
        }) {
            let _ = std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700));
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
