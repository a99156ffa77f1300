//! Every command but `up`: each a client of the control socket, which it connects to
//! (waiting while a bundle is still starting), sends one request and prints the reply.
//!
//! Owns the commands' output (the `status` table, `now`; `exec`'s command is `exec`'s)
//! and the checks made before asking a bundle (durations, signals, patterns), not what the
//! bundle does. Invariant: `down` returns only once the bundle has stopped (its `up` has
//! released the lock), and says a crash it had not reported.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::state_dir::{
    closed_to_us, is_socket, open_state_file, socket_dir, socket_path, trusted, up_is_running,
    up_pid, RunningUp, StateDir, SOCKET, SOCKET_STARTING,
};
use crate::config;
use crate::one_service;
use crate::Command;
use crate::ExitCode;

/// The requests a bundle answers while it starts (on its `starting` socket): what only looks.
const WHILE_STARTING: &[&str] = &["status", "logs", "now"];

/// `conn`, if the process listening at its other end runs as a trusted user (us, root, the
/// project's owner): what a bundle answers is acted on (the environment `exec` runs a
/// command with, a pid), so another user's process listening there must never be heard.
fn trusted_peer(conn: UnixStream, project: &Path) -> Result<UnixStream, String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let peer = getsockopt(&conn, PeerCredentials)
        .map_err(|e| format!("cannot tell who answers on the bundle's socket: {e}"))?;
    if !trusted(project).contains(&peer.uid()) {
        return Err(format!(
            "refusing the bundle's socket in `{}`: the process listening there runs as uid {}, \
             neither you, root nor the project's owner; stop it, and remove `.hitchserve/control`",
            project.display(),
            peer.uid()
        ));
    }
    Ok(conn)
}

fn connect(project: &Path, cmd: &str) -> Result<UnixStream, String> {
    // A bundle still starting answers only what looks (status, logs, now) on its `starting`
    // socket; the rest waits for its socket while its `up` lives.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut waited = false;
    let dir = socket_dir(project);
    loop {
        if let Ok(state) = StateDir::open(project) {
            if let Ok(conn) = UnixStream::connect(state.address(SOCKET)) {
                return trusted_peer(conn, project);
            }
            if WHILE_STARTING.contains(&cmd) {
                if let Ok(conn) = UnixStream::connect(state.address(SOCKET_STARTING)) {
                    return trusted_peer(conn, project);
                }
            }
        }
        if !up_is_running(project) {
            if let Some(why) = closed_to_us(project) {
                return Err(why);
            }
            return Err(if waited {
                "the bundle stopped before it was ready: its error is in `.hitchserve/up.log` \
                 (or on the console of `hitchserve up`)"
                    .to_owned()
            } else {
                format!(
                    "no bundle is running in `{}`: start one with `hitchserve up`",
                    project.display()
                )
            });
        }
        // Bound and renamed in place atomically: once the pid is written one of the two
        // names exists, unless someone removed it. (Checked in this order, so that a
        // rename in between is seen.)
        if let Some(pid) = up_pid(project) {
            if !is_socket(&dir.join(SOCKET_STARTING))
                && !is_socket(&dir.join(SOCKET))
                && up_is_running(project)
            {
                return Err(format!(
                    "the bundle's socket is gone: `{}` was removed while the bundle (pid {pid}) \
                     ran, so it can't be reached; stop it with `hitchserve down` (or `kill {pid}`) \
                     and start it again",
                    dir.join(SOCKET).display()
                ));
            }
        }
        if Instant::now() > deadline {
            return Err("the bundle is still starting after 10 minutes".to_owned());
        }
        waited = true;
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn request(project: &Path, req: &Value) -> Result<BufReader<Reply>, String> {
    // A stopped bundle (Ctrl-Z on its `up`, a SIGSTOP) would take the request and never
    // answer: said at once, before asking anything of it. (The pid only while an `up` holds
    // the lock: the file keeps the last one's.)
    let up = up_pid(project).filter(|_| up_is_running(project));
    if let Some(pid) = up.filter(|&pid| is_stopped(pid)) {
        return Err(stopped(pid, false));
    }
    request_patiently(project, req, up)
}

/// `request`, its answer waited for however long it takes, even from a stopped bundle
/// unless `up` (the pid of the bundle's `up`, to look at while waiting).
pub(super) fn request_patiently(
    project: &Path,
    req: &Value,
    up: Option<libc::pid_t>,
) -> Result<BufReader<Reply>, String> {
    let mut conn = connect(project, req["cmd"].as_str().unwrap_or(""))?;
    conn.write_all(format!("{req}\n").as_bytes())
        .map_err(|e| gone_meanwhile(&e))?;
    let _ = conn.set_read_timeout(Some(LOOK_AGAIN));
    Ok(BufReader::new(Reply { conn, up }))
}

/// How often a wait for the bundle's answer looks whether the bundle was stopped.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// The bundle's answer to a request, read as long as it takes — unless its `up` is found
/// stopped meanwhile (then the read fails, saying so: see `Stopped`).
pub(super) struct Reply {
    conn: UnixStream,
    up: Option<libc::pid_t>,
}

impl std::io::Read for Reply {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.conn.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(pid) = self.up.filter(|&pid| is_stopped(pid)) {
                        return Err(std::io::Error::other(Stopped(pid)));
                    }
                }
                other => return other,
            }
        }
    }
}

/// The bundle's `up` (this pid) was found stopped while we waited for its answer.
#[derive(Debug)]
struct Stopped(libc::pid_t);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&stopped(self.0, true))
    }
}

impl std::error::Error for Stopped {}

/// Whether a read of a `Reply` failed because the bundle was found stopped.
fn is_stopped_error(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stopped>())
}

/// Whether process `pid` is stopped (a SIGSTOP, a terminal's Ctrl-Z, a debugger).
fn is_stopped(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// What to say of a bundle whose `up` (`pid`) is stopped; `asked`: the request was sent.
fn stopped(pid: libc::pid_t, asked: bool) -> String {
    let then = if asked {
        "; the request was sent, and is carried out once it goes on"
    } else {
        ""
    };
    format!(
        "the bundle is stopped (its `hitchserve up`, pid {pid}, got a Ctrl-Z or a SIGSTOP), so \
         it can't answer: let it go on with `fg` in its shell or `kill -CONT {pid}`{then}"
    )
}

/// A connection to the bundle that broke (a broken pipe, a reset): the bundle stopped while
/// we asked — said in words, not as the system's error number.
fn gone_meanwhile(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    if let Some(stopped) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Stopped>())
    {
        return stopped.to_string();
    }
    match e.kind() {
        K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof => {
            "the bundle stopped while the request was under way (a `down`, or a crash of \
             `hitchserve up`): see `hitchserve status`"
                .to_owned()
        }
        _ => format!("the connection to the bundle failed: {e}"),
    }
}

pub(super) fn one_reply(project: &Path, req: &Value) -> Result<Value, String> {
    let mut r = request(project, req)?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| gone_meanwhile(&e))?;
    let v: Value =
        serde_json::from_str(&line).map_err(|_| "no answer from the bundle".to_owned())?;
    if v["ok"] == false {
        return Err(v["error"].as_str().unwrap_or("failed").to_owned());
    }
    Ok(v)
}

/// A request of `one_service`, waited on; prints the service's state afterwards.
fn one_service(project: &Path, req: Value) -> Result<ExitCode, String> {
    let v = one_reply(project, &req)?;
    println!("{}", one_service::summary(&v["service"]));
    Ok(ExitCode::SUCCESS)
}

/// Stop the running bundle, and wait until it has: `down`.
pub(super) fn down(project: &Path) -> Result<ExitCode, String> {
    if !up_is_running(project) {
        if let Some(why) = closed_to_us(project) {
            return Err(why);
        }
        println!(
            "no bundle is running in `{}`: nothing to stop",
            project.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The `up` that runs now, to wait for its own end below (its lock may be taken by the
    // next `up` at once: a shared bundle started again by a holder).
    let running = RunningUp::of(project);
    let mut crashed = None;
    // An `up` that has only just begun has neither its pid nor a socket yet: a moment.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if is_socket(&socket_path(project)) {
            // The reply comes once the bundle has stopped: with the error of a crash
            // it had not reported yet. No reply (it went away first) is no news.
            let mut r = request(project, &json!({"cmd": "down"}))?;
            let mut line = String::new();
            if let Err(e) = r.read_line(&mut line) {
                if is_stopped_error(&e) {
                    return Err(gone_meanwhile(&e));
                }
            }
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["ok"] == false {
                return Err(v["error"].as_str().unwrap_or("failed").to_owned());
            }
            crashed = v["error"].as_str().map(str::to_owned);
            break;
        }
        if let Some(pid) = up_pid(project) {
            // Still starting, or its socket was removed: stop it as Ctrl-C would.
            // SAFETY: signalling the `up` that holds the project's lock.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            break;
        }
        if !up_is_running(project) || Instant::now() > deadline {
            // It ended meanwhile (or never got as far as its pid: the wait below says).
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Shutdown is bounded by each service's stop timeout; this is a last resort.
    let patience = Duration::from_secs(600);
    let stopped = |crashed: Option<String>| match crashed {
        None => Ok(ExitCode::SUCCESS),
        Some(why) => Err(format!("the bundle stopped; before that, {why}")),
    };
    if let Some(up) = running {
        return match up.wait(patience) {
            true => stopped(crashed),
            false => Err(format!(
                "the bundle did not stop within {} s: see `.hitchserve/up.log`",
                patience.as_secs()
            )),
        };
    }
    // No pid written yet (a bundle still starting): `up` holds its lock file (which is never
    // removed) until it has stopped.
    let lock = open_state_file(std::fs::OpenOptions::new().read(true), project, "up.lock")?;
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: a blocking shared lock on a descriptor this thread owns.
        let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) };
        let _ = done_tx.send(
            (r == 0)
                .then_some(())
                .ok_or_else(std::io::Error::last_os_error),
        );
    });
    match done_rx.recv_timeout(patience) {
        Ok(Ok(())) => stopped(crashed),
        Ok(Err(e)) => Err(format!("cannot wait for the bundle to stop: {e}")),
        Err(_) => Err(format!(
            "the bundle did not stop within {} s: see `.hitchserve/up.log`",
            patience.as_secs()
        )),
    }
}

/// `status`'s table: a row per service, each column as wide as its widest cell (a state
/// such as "exited (killed by SIGKILL), restarts: 3" is long), then a shared bundle's
/// leases.
fn status_table(v: &Value) -> String {
    let mut rows = vec![["SERVICE", "STATE", "PID", "RSS", "CPU", "PORTS"].map(str::to_owned)];
    for s in v["services"].as_array().into_iter().flatten() {
        let rss = s["rss"]
            .as_u64()
            .map_or("-".to_owned(), |r| format!("{:.1}M", r as f64 / 1048576.0));
        let cpu = s["cpu_seconds"]
            .as_f64()
            .map_or("-".to_owned(), |c| format!("{c:.2}s"));
        let pid = s["pid"].as_u64().map_or("-".to_owned(), |p| p.to_string());
        let ports: Vec<String> = s["ports"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        rows.push([
            s["name"].as_str().unwrap_or("").to_owned(),
            one_service::state_column(s),
            pid,
            rss,
            cpu,
            ports.join(" "),
        ]);
    }
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (name, state, pid, rss, cpu) = (width(0), width(1), width(2), width(3), width(4));
    let mut out = String::new();
    for r in &rows {
        let line = format!(
            "{:<name$}  {:<state$}  {:>pid$}  {:>rss$}  {:>cpu$}  {}",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if v["starting"] == true {
        out.push_str("the bundle is still starting (`hitchserve up` has not returned yet)\n");
    }
    // A shared bundle: its leases (ids for `release --lease`), and when it stops.
    if let Some(shared) = v["shared"].as_object() {
        let leases: Vec<String> = shared["leases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| format!("lease {} held by pid {}", l["lease"], l["pid"]))
            .collect();
        let idle = shared["idle_seconds"].as_f64().unwrap_or(0.0);
        if shared["awaiting_first_lease"] == true {
            out.push_str(&format!(
                "shared: no lease yet; stops {idle:.1} s after it was ready unless its first \
                 lease is taken\n"
            ));
        } else {
            out.push_str(&format!(
                "shared: {}; stops {idle:.1} s after the last one ends\n",
                match leases.is_empty() {
                    true => "no lease".to_owned(),
                    false => leases.join(", "),
                }
            ));
        }
    }
    out
}

/// Every command but `up`.
pub fn client(project: &Path, command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Up { .. } | Command::Attach { .. } | Command::Release { .. } => {
            unreachable!("handled by up, attach and release")
        }
        Command::Down => down(project),
        Command::Status { json } | Command::Ps { json } => {
            let v = one_reply(project, &json!({"cmd": "status"}))?;
            if json {
                println!("{v}");
            } else {
                print!("{}", status_table(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Port { service, name } => {
            let v = one_reply(project, &json!({"cmd": "status"}))?;
            let services = v["services"].as_array().cloned().unwrap_or_default();
            let Some(entry) = services.iter().find(|s| s["name"] == service.as_str()) else {
                let known: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
                return Err(format!(
                    "no service `{service}` in this bundle (it has {})",
                    known.join(", ")
                ));
            };
            let ports = entry["ports"].as_object().cloned().unwrap_or_default();
            let port = match (&name, ports.len()) {
                (Some(n), _) => ports.get(n.as_str()),
                (None, 1) => ports.values().next(),
                (None, _) => None,
            };
            match port {
                Some(p) => {
                    println!("{p}");
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    let names = ports
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    Err(match (&name, names.is_empty()) {
                        (_, true) => format!("service `{service}` has no port"),
                        (Some(n), false) => {
                            format!("service `{service}` has no port `{n}` (its ports: {names})")
                        }
                        (None, false) => {
                            format!("service `{service}` has several ports: name one ({names})")
                        }
                    })
                }
            }
        }
        Command::Now { json } => {
            let v = one_reply(project, &json!({"cmd": "now"}))?;
            if json {
                println!("{}", json!({"now": v["now"]}));
            } else {
                println!("{}", v["now"].as_str().unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::TimeTravel { by, to, pid } => {
            let req = match (by, to) {
                (_, Some(to)) => json!({"cmd": "time_travel", "to": to}),
                (Some(by), None) => {
                    let d = config::signed_duration(&by)
                        .map_err(|e| format!("{e} (`-3h` or `3h ago` goes back)"))?;
                    json!({"cmd": "time_travel", "by": d.as_secs_f64()})
                }
                (None, None) => return Err("say how far (+2d) or to when (--to ...)".into()),
            };
            // On a shared bundle, it speaks for the holder: our caller unless told, as for
            // `attach`.
            let mut req = req;
            req["pid"] = json!(pid.unwrap_or_else(|| nix::unistd::getppid().as_raw()));
            let v = one_reply(project, &req)?;
            println!("{}", v["now"].as_str().unwrap_or(""));
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { service } => {
            one_service(project, json!({"cmd": "stop", "service": service}))
        }
        Command::Start { service, setup } => one_service(
            project,
            json!({"cmd": "start", "service": service, "setup": setup}),
        ),
        Command::Restart { service, setup } => one_service(
            project,
            json!({"cmd": "restart", "service": service, "setup": setup}),
        ),
        Command::Pause { service } => {
            one_service(project, json!({"cmd": "pause", "service": service}))
        }
        Command::Resume { service } => {
            one_service(project, json!({"cmd": "resume", "service": service}))
        }
        Command::Kill { service, signal } => {
            // Checked here too, so that a mistake is told before asking a bundle.
            signal
                .parse::<hitchserve::Signal>()
                .map_err(|e| format!("--signal: {e}"))?;
            one_service(
                project,
                json!({"cmd": "kill", "service": service, "signal": signal}),
            )
        }
        Command::Signal { service, signal } => {
            one_reply(
                project,
                &json!({"cmd": "signal", "service": service, "signal": signal}),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { service, command } => {
            let v = one_reply(project, &json!({"cmd": "exec_env", "service": service}))?;
            super::exec::exec(&command, &v)
        }
        Command::Logs {
            service,
            out,
            err,
            json,
            lines,
            follow,
            until,
            until_json,
            timeout,
        } => {
            let stream = if out {
                Some("out")
            } else if err {
                Some("err")
            } else {
                None
            };
            // Checked here too, so that a mistake is told before waiting on a bundle.
            let timeout = config::duration(&timeout).map_err(|e| format!("--timeout: {e}"))?;
            if let Some(pattern) = &until {
                regex_lite::Regex::new(pattern).map_err(|e| format!("--until: {e}"))?;
            }
            if let Some(expr) = &until_json {
                config::JsonMatch::parse(expr).map_err(|e| format!("--until-json: {e}"))?;
            }
            let req = json!({
                "cmd": "logs", "service": service, "stream": stream, "json": json, "n": lines,
                "follow": follow, "until": until, "until_json": until_json,
                "timeout": timeout.as_secs_f64(),
            });
            let r = request(project, &req)?;
            for line in r.lines() {
                let line = line.map_err(|e| gone_meanwhile(&e))?;
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if let Some(raw) = v["raw"].as_array() {
                    // A line that is not UTF-8, printed exactly as it was written.
                    let mut bytes: Vec<u8> = raw
                        .iter()
                        .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect();
                    bytes.push(b'\n');
                    let mut stdout = std::io::stdout().lock();
                    let _ = std::io::Write::write_all(&mut stdout, &bytes);
                } else if let Some(text) = v["line"].as_str() {
                    println!("{text}");
                } else if !v["json"].is_null() {
                    println!("{}", v["json"]);
                } else if let Some(end) = v["end"].as_str() {
                    return match end {
                        "ok" => Ok(ExitCode::SUCCESS),
                        _ => Err(v["error"].as_str().unwrap_or(end).to_owned()),
                    };
                }
            }
            Err("the bundle went away before answering (it stopped or crashed)".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_columns_stay_aligned_whatever_the_states_length() {
        let v = json!({"services": [
            {"name": "Db", "state": "ready", "pid": 12, "rss": 1048576, "cpu_seconds": 0.5,
             "ports": {"sql": 5432}},
            {"name": "AVeryLongServiceName", "state": "exited (killed by SIGKILL)",
             "restarts": 3, "pid": null, "ports": {}},
        ]});
        let table = status_table(&v);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        // Each row's PID (right-aligned) ends where the header's does, after the long state.
        let pid_end = lines[0].find("PID").unwrap() + "PID".len();
        assert!(lines[1][..pid_end].ends_with(" 12"), "{table}");
        assert!(lines[2][..pid_end].ends_with(" -"), "{table}");
        assert!(
            lines[2][..pid_end].contains("exited (killed by SIGKILL), restarts: 3 "),
            "{table}"
        );
        assert!(lines[1].ends_with("  sql=5432"), "{table}");
    }
}
