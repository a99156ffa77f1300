//! `hitchserve.toml`: a bundle defined in a file, for tests in any language.
//!
//! Owns parsing (serde + toml; unknown keys are errors, and every error names the file,
//! line and column) and turning the file into a `hitchserve::Bundle`, and the duration
//! syntax the command line shares (jiff's friendly format, bounded).
//!
//! One file per idea, importing each other only downwards: checked strings (`text`),
//! durations (`duration`), JSON line matches (`json_match`), the kinds of ready-made service
//! (`kinds`), the file's shape (`schema`), checks across keys (`check`), reading a file
//! (`load`) and building the bundle (`build`). This file only re-exports what the rest of
//! the CLI uses.
//!
//! Invariant: every value is checked while parsing, so that nothing the file says can fail
//! only once some services have started (no NUL byte in any string, no `=` in an env name).
//!
//! A service's restart policy (what to do when it exits unasked):
//!
//! ```toml
//! [services.Worker]
//! command = ["python3", "-u", "worker.py"]
//! restart = "on-failure"      # "never" (the default), "on-failure" (non-zero exit or a
//!                             # signal) or "always" (any exit, also status 0)
//! max_restarts = 3            # needed by on-failure and always: how many restarts at most
//! restart_backoff = "200ms"   # the first wait (default 100ms), doubled each time up to 30s
//! ```
//!
//! Each restart is logged; past `max_restarts` the exit is reported like a crash; services
//! that need it are not restarted. `max_restarts` or `restart_backoff` without a policy that
//! uses them is an error at its line and column, as a kind's option given to another is.

mod build;
mod check;
mod duration;
mod json_match;
mod kinds;
mod load;
mod schema;
mod text;

pub use build::bundle;
pub use duration::{duration, from_seconds, signed_duration};
pub use json_match::JsonMatch;
pub use load::load;
pub use schema::ServiceConfig;
pub use text::strings;

/// A fresh directory of one test's own under the shared temp directory: made, never found
/// (`create` fails on anything in its place, a symlink another user planted included), and
/// 0700 whatever the umask, so nothing can be planted inside it either.
#[cfg(test)]
fn test_dir(tag: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hs-cfg-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
