//! A mock SMTP server (`hitchsmtp`, its own crate) on a free port: every message it
//! accepts is a JSON line in its logs, for `logs().json()` and `until_json`.
//!
//! Owns finding the binary: `HITCHSMTP` (its path), then next to the running executable
//! and in its parent directory (where cargo puts a workspace's binaries, seen from
//! `target/debug/deps`), then `PATH`, then `$CARGO_HOME/bin` (`~/.cargo/bin`), where
//! `cargo install` puts it even when that is not on `PATH`. A crate that only depends on
//! the library has no `hitchsmtp` of its own: when none is found, startup fails with
//! [`Error::NotInstalled`](crate::Error::NotInstalled) naming the one command that
//! installs the matching version.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::bundle::Bundle;
use crate::error::Result;
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::{Install, Service};

/// The name of the mock's port (see [`Service::port`]).
pub const PORT: &str = "smtp";

/// A mock SMTP server to add to a bundle.
///
/// ```no_run
/// use std::time::Duration;
/// use hitchserve::{services::Smtp, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("Smtp", Smtp::new().service())?;
/// bundle.startup()?;
/// let smtp = Smtp::handle(&bundle, "Smtp")?;
/// let mut tail = smtp.service().logs().out().tail();
/// // ... the app sends to 127.0.0.1:smtp.port() ...
/// let email = tail.until_json(|m| m["subject"] == "Reminder", Duration::from_secs(10))?;
/// # let _ = email; Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Smtp {
    program: Option<PathBuf>,
}

impl Smtp {
    /// The mock on a free port on 127.0.0.1.
    pub fn new() -> Smtp {
        Smtp::default()
    }

    /// Use this `hitchsmtp` binary (instead of looking for one).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Smtp {
        self.program = Some(path.into());
        self
    }

    /// The service to add to a bundle. If no `hitchsmtp` is found (see the module's
    /// documentation), the bundle's startup says how to install it.
    pub fn service(self) -> Service {
        self.unmarked().made_by("Smtp")
    }

    /// `service`, before it is marked as a Smtp (for `handle`).
    fn unmarked(self) -> Service {
        let (program, install) = match self.program {
            Some(program) => (program, None),
            None => match Places::from_env().find() {
                Ok(program) => (program, None),
                // The service's own PATH gets a last look at startup.
                Err(searched) => (
                    PathBuf::from(PROGRAM),
                    Some(Install {
                        searched,
                        command: install_command(),
                    }),
                ),
            },
        };
        let mut service = Service::new([
            program.into_os_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "{port.smtp}".into(),
        ])
        .port(PORT)
        .ready(Ready::line_contains("hitchsmtp: listening on"));
        service.install = install;
        service
    }

    /// What a test uses of the running mock named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<SmtpHandle> {
        let service = super::kind::service_of_kind(bundle, name, "Smtp")?;
        Ok(SmtpHandle {
            port: bundle.port(name, PORT)?,
            service,
        })
    }
}

const PROGRAM: &str = "hitchsmtp";

/// The command that installs the mock matching this library's version.
fn install_command() -> String {
    format!("cargo install {PROGRAM}@{}", env!("CARGO_PKG_VERSION"))
}

/// Where a `hitchsmtp` may be, from the process's environment.
#[derive(Debug, Default)]
struct Places {
    /// `HITCHSMTP`.
    explicit: Option<PathBuf>,
    /// The running executable.
    exe: Option<PathBuf>,
    /// `PATH`.
    path: Option<OsString>,
    /// `CARGO_HOME`.
    cargo_home: Option<PathBuf>,
    /// `HOME`, for cargo's default `~/.cargo`.
    home: Option<PathBuf>,
}

impl Places {
    fn from_env() -> Places {
        let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
        Places {
            explicit: non_empty("HITCHSMTP").map(PathBuf::from),
            exe: std::env::current_exe().ok(),
            path: non_empty("PATH"),
            cargo_home: non_empty("CARGO_HOME").map(PathBuf::from),
            home: non_empty("HOME").map(PathBuf::from),
        }
    }

    fn cargo_bin(&self) -> Option<PathBuf> {
        let home = match (&self.cargo_home, &self.home) {
            (Some(cargo_home), _) => cargo_home.clone(),
            (None, Some(home)) => home.join(".cargo"),
            (None, None) => return None,
        };
        Some(home.join("bin"))
    }

    /// The binary, or where it was looked for (for the error).
    fn find(&self) -> Result<PathBuf, String> {
        // An explicit path is used as given: if it is wrong, startup says so.
        if let Some(path) = &self.explicit {
            return Ok(path.clone());
        }
        let next_to_exe: Vec<&Path> = self
            .exe
            .iter()
            .flat_map(|exe| exe.ancestors().skip(1).take(2))
            .collect();
        let on_path: Vec<PathBuf> = self
            .path
            .iter()
            .flat_map(std::env::split_paths)
            .filter(|dir| dir.is_absolute())
            .collect();
        let cargo_bin = self.cargo_bin();
        let dirs = next_to_exe
            .iter()
            .copied()
            .chain(on_path.iter().map(PathBuf::as_path))
            .chain(cargo_bin.as_deref());
        for dir in dirs {
            let candidate = dir.join(PROGRAM);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        let mut searched = vec!["in $HITCHSMTP (not set)".to_owned()];
        for dir in &next_to_exe {
            searched.push(format!("in `{}`", dir.display()));
        }
        searched.push(if on_path.is_empty() {
            "on PATH (empty)".to_owned()
        } else {
            "on PATH".to_owned()
        });
        searched.push(match (&cargo_bin, &self.cargo_home) {
            (Some(bin), Some(_)) => format!("in `{}` ($CARGO_HOME/bin)", bin.display()),
            (Some(bin), None) => format!("in `{}` (cargo's default bin dir)", bin.display()),
            (None, _) => "in $CARGO_HOME/bin (neither CARGO_HOME nor HOME is set)".to_owned(),
        });
        Err(searched.join(", "))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running mock SMTP server, from [`Smtp::handle`].
#[derive(Debug, Clone)]
pub struct SmtpHandle {
    port: u16,
    service: ServiceHandle,
}

impl SmtpHandle {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message received so far, as JSON.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.service.logs().out().json()
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}

#[cfg(test)]
mod tests {
    //! The search order on real directories; a downstream crate's whole startup is in
    //! tests/integration/smtp.rs.
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir()
                .join(format!("hitchserve-smtp-find-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        /// `rel/hitchsmtp`, executable or not; returns `rel`'s path.
        fn mock(&self, rel: &str, mode: u32) -> PathBuf {
            let dir = self.0.join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(PROGRAM);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            dir
        }

        fn places(&self, path: &[&Path]) -> Places {
            Places {
                explicit: None,
                exe: Some(self.0.join("target/debug/deps/tests-0123")),
                path: Some(std::env::join_paths(path).unwrap()),
                cargo_home: None,
                home: Some(self.0.join("home")),
            }
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_workspace_binary_beats_path_which_beats_cargo_bin() {
        let t = Tree::new("order");
        let on_path = t.mock("bin", 0o755);
        let cargo_bin = t.mock("home/.cargo/bin", 0o755);
        assert_eq!(t.places(&[]).find(), Ok(cargo_bin.join(PROGRAM)));
        assert_eq!(t.places(&[&on_path]).find(), Ok(on_path.join(PROGRAM)));
        let workspace = t.mock("target/debug", 0o755);
        assert_eq!(t.places(&[&on_path]).find(), Ok(workspace.join(PROGRAM)));
    }

    #[test]
    fn cargo_home_replaces_the_default_and_a_file_that_cannot_run_is_skipped() {
        let t = Tree::new("cargo-home");
        t.mock("home/.cargo/bin", 0o755);
        let mut places = t.places(&[]);
        places.cargo_home = Some(t.0.join("elsewhere"));
        let err = places.find().unwrap_err();
        let bin = t.0.join("elsewhere/bin");
        assert!(
            err.contains(&format!("`{}` ($CARGO_HOME/bin)", bin.display())),
            "{err}"
        );
        t.mock("elsewhere/bin", 0o644);
        assert!(places.find().is_err());
        t.mock("elsewhere/bin", 0o755);
        assert_eq!(places.find(), Ok(bin.join(PROGRAM)));
    }

    #[test]
    fn hitchsmtp_is_taken_as_given() {
        let t = Tree::new("explicit");
        t.mock("target/debug", 0o755);
        let mut places = t.places(&[]);
        places.explicit = Some("/opt/mine/hitchsmtp".into());
        assert_eq!(places.find(), Ok(PathBuf::from("/opt/mine/hitchsmtp")));
    }
}
