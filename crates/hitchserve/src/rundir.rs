//! The run directory: `<project>/.hitchserve/runs/<run id>/`, one per bundle run.
//!
//! Owns its creation, the `latest` link and pruning of old runs (done by the log writer
//! thread, off the startup path: directory operations are slow on some filesystems). Parallel bundles, in one
//! process or many, never share a folder: the id holds the time, the pid and a counter.
//! A run whose owning process is still alive is never pruned.

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

    /// Create the directory (with `logs/`) and point `latest` at it.
    pub(crate) fn set_up(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.logs())?;
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
