//! The per-user directories of private server sockets (PostgreSQL's, MariaDB's): pruning
//! those of servers long gone.

/// Remove socket directories of servers long gone: empty (a live server keeps its socket
/// and lock file there) and older than a minute (not one a starting server is about to use).
pub(crate) fn prune(sockets: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(sockets) else {
        return;
    };
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < old);
        if stale {
            // Fails, as it should, on a directory that isn't empty.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}
