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
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let inner = after
            .find('}')
            .map(|close| &after[..close])
            .filter(|inner| is_name(inner));
        match inner.and_then(|inner| port_template(inner, service, ports).map(|t| (inner, t))) {
            Some((inner, found)) => {
                let port = found.ok_or_else(|| Error::UnknownPort {
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

/// A template mistyped in `text`, said with what was meant: `{Run}`, `{servce}`,
/// `{Db.prot.pg}`, `{port.}` were passed on as they were, and the service got them
/// literally (a database URL with `{Db.prot.pg}` in it). Only what can't be meant
/// otherwise: other braces (JSON, a shell's, a format string's) pass through as ever.
pub(crate) fn mistyped_template(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        rest = after;
        let Some(inner) = after.find('}').map(|close| &after[..close]) else {
            break;
        };
        if !is_name(inner) {
            continue;
        }
        let meant = match inner {
            "run" | "service" => continue,
            _ if inner.eq_ignore_ascii_case("run") => "{run}".to_owned(),
            // (Not `{services}`: a word a format string may well hold.)
            _ if inner.eq_ignore_ascii_case("service")
                || (matches!(inner.len(), 6 | 7) && one_edit_apart(inner, "service")) =>
            {
                "{service}".to_owned()
            }
            _ => {
                // `[OTHER.]port.NAME`, with its `port` mistyped or its name missing. (Not any
                // word one letter from `port` — `{post.title}` is a format string's.)
                let steps: Vec<&str> = inner.split('.').collect();
                let at = steps.iter().position(|s| {
                    *s != "port"
                        && (s.eq_ignore_ascii_case("port")
                            || matches!(*s, "prot" | "potr" | "oprt" | "prt" | "ports"))
                });
                match at {
                    Some(at) if at + 1 < steps.len() && at <= 1 => {
                        let mut fixed = steps.clone();
                        fixed[at] = "port";
                        format!("{{{}}}", fixed.join("."))
                    }
                    _ if inner.ends_with(".port.") || inner == "port." => {
                        format!("{{{inner}NAME}}")
                    }
                    _ => continue,
                }
            }
        };
        return Some(format!(
            "`{{{inner}}}` is no template (they are {{port.NAME}}, {{OTHER.port.NAME}}, {{run}} \
             and {{service}}): did you mean `{meant}`?"
        ));
    }
    None
}

/// Whether `a` becomes `b` by one letter changed, added, removed, or two swapped.
fn one_edit_apart(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    match (a.len(), b.len()) {
        (x, y) if x == y => {
            a[1..] == b[1..] || (x >= 2 && a[0] == b[1] && a[1] == b[0] && a[2..] == b[2..])
        }
        (x, y) if x + 1 == y => a == &b[1..],
        (x, y) if x == y + 1 => &a[1..] == b,
        _ => false,
    }
}

/// Letters, digits, `_`, `-` and `.`: what a service's or a port's name is made of.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `inner` (between the braces, made of name characters) as a port template of `service`:
/// `port.NAME` (its own) or `OTHER.port.NAME`. Names may hold dots themselves (`api.v1`),
/// so each way of reading it is tried against the ports reserved: `None` if it is no
/// template at all, `Some(None)` if it is one naming no reserved port, else the port.
fn port_template(inner: &str, service: &str, ports: &PortTable) -> Option<Option<u16>> {
    let mut readings: Vec<(&str, &str)> = Vec::new();
    if let Some(name) = inner.strip_prefix("port.") {
        readings.push((service, name));
    }
    let mut from = 0;
    while let Some(at) = inner[from..].find(".port.") {
        let at = from + at;
        readings.push((&inner[..at], &inner[at + ".port.".len()..]));
        from = at + 1;
    }
    readings.retain(|(svc, name)| !svc.is_empty() && !name.is_empty());
    if readings.is_empty() {
        return None;
    }
    Some(
        readings
            .iter()
            .find_map(|&(svc, name)| ports.get(&(svc.to_owned(), name.to_owned())).copied()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_templates_are_said_with_what_was_meant() {
        for (text, meant) in [
            (
                "postgresql://app@127.0.0.1:{Db.prot.pg}/app",
                "{Db.port.pg}",
            ),
            ("{Run}/data", "{run}"),
            ("{RUN}", "{run}"),
            ("{servce}.log", "{service}"),
            ("{Service}", "{service}"),
            ("--port={prot.http}", "{port.http}"),
            ("{Port.http}", "{port.http}"),
            ("{port.}", "{port.NAME}"),
            ("{Web.port.}", "{Web.port.NAME}"),
            ("{Web.ports.http}", "{Web.port.http}"),
        ] {
            let said = mistyped_template(text).unwrap_or_else(|| panic!("{text}: not said"));
            assert!(said.contains(meant), "{text}: {said}");
        }
        for fine in [
            "{port.http}",
            "{Web.port.http}",
            "{run}/{service}",
            "{\"port\": 1}",
            "awk '{print $1}'",
            "${HOME}",
            "{x}",
            "{server}",
            "{}",
            "{{.State.Running}}",
            "{a.b.c}",
            "{report.port}",
            "{sport.x}",
            "{post.title}",
            "{services}",
            "{version}",
        ] {
            assert_eq!(mistyped_template(fine), None, "{fine}");
        }
    }

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

    /// Service and port names may hold dots (`api.v1`): each reading of a template is tried
    /// against the reserved ports. (They were left as written, unfilled, before.)
    #[test]
    fn expands_templates_whose_names_hold_dots() {
        let mut ports = PortTable::new();
        ports.insert(("api.v1".into(), "http".into()), 8123);
        ports.insert(("App".into(), "a.b".into()), 5499);
        ports.insert(("port".into(), "x".into()), 7001);
        assert_eq!(
            expand("{api.v1.port.http} {port.a.b} {port.port.x}", "App", &ports).unwrap(),
            "8123 5499 7001"
        );
        assert!(matches!(
            expand("{api.v2.port.http}", "App", &ports),
            Err(Error::UnknownPort { .. })
        ));
        assert_eq!(expand("{a.port.}", "App", &ports).unwrap(), "{a.port.}");
    }

    #[test]
    fn allocated_ports_differ_while_held() {
        let a = allocate("a").unwrap();
        let b = allocate("b").unwrap();
        assert_ne!(a.port, b.port);
    }
}
