//! Attaching to an IPython kernel that a Python service opened with
//! `import IPython; IPython.embed_kernel()`.
//!
//! Owns finding the kernel's connection file (from the `--existing kernel-NNNN.json` line
//! the kernel logs, resolved against Jupyter's runtime directory as the service sees it) and
//! handing the terminal to `jupyter console`. The console is muted meanwhile (interactive
//! mode) and restored afterwards, whatever happens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;

/// The connection file named in a line like `    --existing kernel-30003.json`.
fn connection_file_in(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("--existing")?;
    let name = rest.trim();
    (name.ends_with(".json") && !name.contains(char::is_whitespace)).then_some(name)
}

/// Where Jupyter keeps connection files for this service.
fn runtime_dir(svc: &ServiceHandle) -> PathBuf {
    if let Some(dir) = svc.env_var("JUPYTER_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    let asked = svc
        .subcommand(["jupyter", "--runtime-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout_text().trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(dir) = asked {
        return PathBuf::from(dir);
    }
    let home = svc.env_var("HOME").unwrap_or_else(|| "/".into());
    Path::new(&home).join(".local/share/jupyter/runtime")
}

fn resolve(svc: &ServiceHandle, name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        runtime_dir(svc).join(path)
    }
}

impl Bundle {
    /// Wait up to `timeout` for service `name` to embed an IPython kernel, and return the
    /// kernel's connection file: give it to `jupyter_client` to drive the kernel from a
    /// test. A kernel announced earlier whose file still exists counts.
    ///
    /// ```no_run
    /// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
    /// use std::time::Duration;
    /// let file = bundle.wait_for_kernel("Celery", Duration::from_secs(30))?;
    /// println!("jupyter console --existing {}", file.display());
    /// # Ok(()) }
    /// ```
    pub fn wait_for_kernel(&self, name: &str, timeout: Duration) -> Result<PathBuf> {
        let svc = self.service(name)?;
        let logs = svc.logs();
        let known = logs
            .entries()
            .iter()
            .rev()
            .find_map(|l| connection_file_in(&l.text()).map(str::to_owned));
        if let Some(file) = known.map(|n| resolve(&svc, &n)).filter(|p| p.exists()) {
            return Ok(file);
        }
        let line = logs
            .tail()
            .until(|l| connection_file_in(l).is_some(), timeout)
            .map_err(|e| match e {
                Error::WaitTimeout {
                    last_lines, log, ..
                } => Error::WaitTimeout {
                    what: format!(
                        "`{name}` to embed an IPython kernel (a `--existing kernel-….json` line)"
                    ),
                    timeout,
                    last_lines,
                    log,
                },
                other => other,
            })?;
        let text = line.text();
        let file = connection_file_in(&text).unwrap_or_default();
        Ok(resolve(&svc, file))
    }

    /// Wait for service `name` to embed an IPython kernel (up to the startup timeout), then
    /// hand the terminal to `jupyter console` attached to it, with the bundle's console
    /// muted; the logs print again once you leave the console.
    pub fn connect_to_kernel(&self, name: &str) -> Result<()> {
        let file = self.wait_for_kernel(name, self.startup_timeout_value())?;
        let svc = self.service(name)?;
        let was_interactive = self.is_interactive();
        self.start_interactive_mode();
        let result = svc
            .subcommand(["jupyter", "console", "--existing"])
            .arg(file)
            .run_in_terminal();
        if !was_interactive {
            self.stop_interactive_mode();
        }
        result.map_err(|e| match e {
            Error::CommandNotFound { service, .. } => Error::CommandNotFound {
                service,
                program: "jupyter".into(),
                searched:
                    "on the service's PATH: install jupyter-console (pip install jupyter-console)"
                        .into(),
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::connection_file_in;

    #[test]
    fn finds_the_connection_file_in_the_kernel_banner() {
        assert_eq!(
            connection_file_in("    --existing kernel-30003.json"),
            Some("kernel-30003.json")
        );
        assert_eq!(
            connection_file_in("--existing /tmp/k.json"),
            Some("/tmp/k.json")
        );
        assert_eq!(
            connection_file_in("To connect another client to this kernel, use:"),
            None
        );
        assert_eq!(connection_file_in("--existing"), None);
    }
}
