//! Free TCP ports for services, and the `{port.NAME}` / `{Service.port.NAME}` templates that
//! put them into commands, environments and readiness checks.
//!
//! Owns allocation: a port the kernel says is free (bind to port 0) that no other
//! hitchserve bundle of this user, in this or any process, holds — each held port has a lock
//! file in the user's private directory under the temporary directory, `flock`ed for the
//! bundle's life. A lock dies with its process,
//! so a crashed test never leaks a port. A program outside hitchserve could still take the
//! port between allocation and the service binding it; that window is the service's start.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::error::{Error, Result};

/// A port held for a service until the bundle goes.
pub(crate) struct HeldPort {
    pub port: u16,
    _lock: File,
}

/// A free port, held against other hitchserve bundles of this user. The lock files live in
/// the per-user directory (see `safepath`): a lock directory shared with other users would
/// let them plant symlinks there (our open would truncate their target) or hold every lock.
/// Bundles of different users do not see each other's locks; the kernel's choice of a free
/// port (bind to port 0) keeps them apart but for the moment before a service binds.
pub(crate) fn allocate(service: &str) -> Result<HeldPort> {
    let dir = crate::safepath::user_subdir("ports", 0o700)?;
    let io = |source| Error::Io {
        context: format!(
            "could not reserve a port for `{service}` (lock files in `{}`)",
            dir.display()
        ),
        source,
    };
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io)?
            .port();
        // No truncation and no following links, even in our own directory.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(format!("{port}.lock")))
            .map_err(io)?;
        // SAFETY: a valid descriptor we own; flock has no other preconditions.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            return Ok(HeldPort { port, _lock: file });
        }
    }
    Err(io(std::io::Error::other(
        "no free port found after 200 tries",
    )))
}

/// Ports by (service, name).
pub(crate) type PortTable = HashMap<(String, String), u16>;

/// Replace `{port.NAME}` (of `service`) and `{Other.port.NAME}` in `text`. Anything else in
/// braces is left alone, so JSON or shell arguments pass through.
pub(crate) fn expand(text: &str, service: &str, ports: &PortTable) -> Result<String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let inner = after.find('}').map(|close| &after[..close]);
        let key = inner.and_then(|inner| {
            let parts: Vec<&str> = inner.split('.').collect();
            match parts.as_slice() {
                ["port", name] if ident(name) => Some((service, *name, inner)),
                [svc, "port", name] if ident(svc) && ident(name) => Some((*svc, *name, inner)),
                _ => None,
            }
        });
        match key {
            Some((svc, name, inner)) => {
                let port = ports
                    .get(&(svc.to_owned(), name.to_owned()))
                    .ok_or_else(|| Error::UnknownPort {
                        service: service.to_owned(),
                        template: format!("{{{inner}}}"),
                    })?;
                out.push_str(&port.to_string());
                rest = &after[inner.len() + 1..];
            }
            None => {
                // Not a template: keep the brace and look again from the next character,
                // so `{"port": {port.http}}` still finds the inner template.
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_own_and_other_ports_and_leaves_other_braces() {
        let mut ports = PortTable::new();
        ports.insert(("App".into(), "http".into()), 8123);
        ports.insert(("Db".into(), "pg".into()), 5499);
        assert_eq!(
            expand(
                "--port={port.http} --db={Db.port.pg} {\"a\": 1}",
                "App",
                &ports
            )
            .unwrap(),
            "--port=8123 --db=5499 {\"a\": 1}"
        );
        assert!(expand("{port.nope}", "App", &ports).is_err());
        assert_eq!(expand("{unclosed", "App", &ports).unwrap(), "{unclosed");
        assert_eq!(
            expand("{\"port\": {port.http}}", "App", &ports).unwrap(),
            "{\"port\": 8123}"
        );
        assert_eq!(
            expand("{\"db.port.main\": 1}", "App", &ports).unwrap(),
            "{\"db.port.main\": 1}"
        );
    }

    #[test]
    fn allocated_ports_differ_while_held() {
        let a = allocate("a").unwrap();
        let b = allocate("b").unwrap();
        assert_ne!(a.port, b.port);
    }
}
