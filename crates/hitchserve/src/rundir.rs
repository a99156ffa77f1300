//! The run directory: `<project>/.hitchserve/runs/<run id>/`, one per bundle run.
//!
//! Owns its creation, the `latest` link and pruning of old runs. Parallel bundles, in one
//! process or many, never share a folder: the id holds the time, the pid and a counter.
//! A run whose owning process is still alive is never pruned.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Runs kept in `.hitchserve/runs` besides live ones.
const KEEP: usize = 20;

pub(crate) struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

impl RunDir {
    pub(crate) fn create(project: &Path) -> Result<RunDir> {
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
        let base = project.join(".hitchserve");
        let runs = base.join("runs");
        let path = runs.join(&id);
        std::fs::create_dir_all(path.join("logs")).map_err(|source| Error::Io {
            context: format!("could not create the run directory `{}`", path.display()),
            source,
        })?;
        // Logs are evidence for a person, not something to commit.
        let _ = std::fs::write(base.join(".gitignore"), "*\n");
        let latest = base.join("latest");
        let tmp = base.join(format!(".latest-{id}"));
        if std::os::unix::fs::symlink(Path::new("runs").join(&id), &tmp).is_ok()
            && std::fs::rename(&tmp, &latest).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        prune(&runs);
        Ok(RunDir { id, path })
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
