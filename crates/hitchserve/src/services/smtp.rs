//! A mock SMTP server (`hitchsmtp`, a binary of this workspace) on a free port: every
//! message it accepts is a JSON line in its logs, for `logs().json()` and `until_json`.
//!
//! The binary is found through `HITCHSMTP` (its path), next to the running executable or
//! its parent directory (where cargo puts a workspace's binaries), or on `PATH`.

use std::path::PathBuf;

use crate::bundle::{Bundle, ServiceHandle};
use crate::error::Result;
use crate::readiness::Ready;
use crate::service::Service;

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

    /// Use this `hitchsmtp` binary.
    pub fn program(mut self, path: impl Into<PathBuf>) -> Smtp {
        self.program = Some(path.into());
        self
    }

    /// The service to add to a bundle.
    pub fn service(self) -> Service {
        let program = self.program.unwrap_or_else(find_binary);
        Service::new([
            program.into_os_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "{port.smtp}".into(),
        ])
        .port(PORT)
        .ready(Ready::line_contains("hitchsmtp: listening on"))
    }

    /// What a test uses of the running mock named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<SmtpHandle> {
        Ok(SmtpHandle {
            port: bundle.port(name, PORT)?,
            service: bundle.service(name)?,
        })
    }
}

fn find_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HITCHSMTP") {
        return path.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("hitchsmtp");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("hitchsmtp")
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
