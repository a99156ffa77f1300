//! The control server's side of one connection: read one request, checked as untrusted
//! input, and answer it (`status`, `now`, `time_travel`, `exec_env`, `signal`, `down`, and
//! through `one_service` the requests on one service; `logs` streams from `logs`; a shared
//! bundle's `lease` and `release` go to `leases`).
//!
//! Owns the requests' parsing and their replies, not the socket (that is `up`'s); while the
//! bundle starts, `serve_starting` answers what can be (status, logs, now) from its observer.
//! Invariant: a bad request gets an error reply, never a panicked handler; a request line
//! is at most [`MAX_REQUEST`] bytes.

use std::io::BufRead;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;

use hitchserve::jiff::Timestamp;
use hitchserve::{Bundle, Error as HsError, Observer};
use serde_json::{json, Value};

use super::leases::{differences, Definition, Leases, STOPPING};
use super::logs::{logs, OpenStream};
use super::protocol::reply;
use crate::config;
use crate::one_service::{self, ServiceInfo};

/// The longest request line read.
const MAX_REQUEST: u64 = 1 << 20;

/// One control connection: one request.
pub(super) fn serve(
    conn: UnixStream,
    bundle: &Bundle,
    stop: &mpsc::Sender<Option<UnixStream>>,
    cfg_ports: &[ServiceInfo],
    shared: Option<&Arc<Leases>>,
) -> std::io::Result<()> {
    let Some((mut out, req)) = read_request(conn)? else {
        return Ok(());
    };
    // Counted once read, until answered: `up` waits for the answer before it exits (a
    // `release` that ended the last lease of a bundle stopping when idle got none, the
    // bundle stopped and gone before this thread answered). Not a client that sends
    // nothing, nor a dump of logs: they would hold up every `down`.
    let _answering = (req["cmd"].as_str() != Some("logs")).then(OpenStream::new);
    // A holder of a shared bundle names the run it attached to: another run (the bundle
    // was stopped, and maybe started again since) is not the one it holds.
    if let Some(run) = req["run"].as_str() {
        if Some(run) != run_id(bundle).as_deref() {
            let e = "the shared bundle this holder attached to has stopped (another run, or none, \
                     is there now): attach again";
            return reply(
                &mut out,
                &match req["cmd"].as_str() {
                    Some("logs") => json!({"end": "error", "kind": "gone", "error": e}),
                    _ => json!({"ok": false, "kind": "gone", "error": e}),
                },
            );
        }
    }
    let err = |e: HsError| json!({"ok": false, "error": e.to_string()});
    let service = |key: &str| req[key].as_str().unwrap_or("").to_owned();
    let answer = match req["cmd"].as_str().unwrap_or("") {
        "status" => {
            let mut status = one_service::status(&bundle.observer(), cfg_ports);
            if let Some(leases) = shared {
                status["shared"] = leases.status();
            }
            status
        }
        "lease" => lease(bundle, shared, &req, &out),
        "release" => match shared {
            Some(leases) => {
                let id = req["lease"].as_u64();
                let pid = req["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                if id.is_none() && pid.is_none() {
                    json!({"ok": false, "error": "say which lease to release: `lease` (its id) or `pid` (every lease of that process)"})
                } else {
                    json!({"ok": true, "released": leases.release(id, pid)})
                }
            }
            None => not_shared(),
        },
        verb if one_service::VERBS.contains(&verb) => {
            one_service::serve(bundle, &req, verb, cfg_ports)
        }
        "now" => json!({"ok": true, "now": bundle.now().to_string()}),
        "time_travel" => {
            let pid = req["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
            let lease = req["lease"].as_u64();
            // Where the clock stands now, for the travel's end to restore.
            let offset_ns = bundle.now().duration_since(Timestamp::now()).as_nanos();
            if let Some(Err(refused)) = shared.map(|l| l.travel(pid, lease, offset_ns)) {
                return reply(&mut out, &json!({"ok": false, "error": refused}));
            }
            let r = if let Some(to) = req["to"].as_str() {
                match moment(to) {
                    Ok(ts) => bundle.time_travel_to(ts),
                    Err(e) => return reply(&mut out, &json!({"ok": false, "error": e})),
                }
            } else {
                let by = match req["by"].as_f64().map(config::from_seconds) {
                    Some(Ok(by)) => by,
                    Some(Err(e)) => return reply(&mut out, &json!({"ok": false, "error": e})),
                    None => {
                        return reply(
                            &mut out,
                            &json!({"ok": false, "error": "`by` must be a number of seconds (negative to go back), or give `to`"}),
                        )
                    }
                };
                // Forward or back, logged as asked ("3 hours ago").
                bundle.time_travel_by(by)
            };
            match r {
                Ok(()) => json!({"ok": true, "now": bundle.now().to_string()}),
                // Reported after the jump, which was made: said, so that nobody travels twice.
                Err(
                    e @ (hitchserve::Error::ServiceExited { .. }
                    | hitchserve::Error::LogFileFailed { .. }),
                ) => json!({"ok": false, "error": format!(
                    "the time travel was made (the services' clock is now {}), but {e}",
                    bundle.now()
                )}),
                Err(e) => err(e),
            }
        }
        "exec_env" => match bundle.service(&service("service")) {
            Ok(svc) => {
                let env: Vec<Value> = svc
                    .environment()
                    .iter()
                    .map(|(k, v)| json!([k.to_string_lossy(), v.to_string_lossy()]))
                    .collect();
                // Commands run as the service's user: the one its process runs as (a
                // ready-made kind picks its own, e.g. `postgres`), or the `user` it was given.
                let user = cfg_ports
                    .iter()
                    .find(|i| i.name == service("service"))
                    .and_then(|i| i.user.as_deref());
                let running = svc
                    .process()
                    .ok()
                    .and_then(|p| Some((p.uids().ok()?.effective, p.gids().ok()?.effective)));
                let ids = running
                    .or_else(|| {
                        user.and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
                            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
                    })
                    .map(|(uid, gid)| json!([uid, gid]));
                let user = user.map(str::to_owned).or_else(|| {
                    running.and_then(|(uid, _)| {
                        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                            .ok()
                            .flatten()
                            .map(|u| u.name)
                    })
                });
                json!({"ok": true, "env": env, "dir": svc.directory().to_string_lossy(), "user": user, "ids": ids})
            }
            Err(e) => err(e),
        },
        "signal" => {
            let sig = match req["signal"]
                .as_str()
                .unwrap_or("")
                .parse::<hitchserve::Signal>()
            {
                Ok(s) => s,
                Err(e) => return reply(&mut out, &json!({"ok": false, "error": e.to_string()})),
            };
            match bundle
                .service(&service("service"))
                .and_then(|s| s.signal(sig))
            {
                Ok(()) => json!({"ok": true}),
                // The library's words speak of the bundle; here it is one service.
                Err(HsError::NotRunning | HsError::ServiceNotRunning { .. }) => {
                    json!({"ok": false, "error": format!(
                    "service `{0}` is not running (stopped, crashed or exited): start it with \
                     `hitchserve start {0}`", service("service"))})
                }
                Err(e) => err(e),
            }
        }
        "down" => {
            // Answered by `up` once every service has stopped (or here, if `up` is already
            // past reading its requests: the client then waits for its lock as ever).
            if let Err(mpsc::SendError(Some(mut out))) = stop.send(Some(out)) {
                return reply(&mut out, &json!({"ok": true}));
            }
            return Ok(());
        }
        "logs" => return logs(&mut out, &bundle.observer(), &req),
        other => json!({"ok": false, "error": format!("unknown request `{other}`")}),
    };
    reply(&mut out, &answer)
}

/// The request on `conn`, with the stream to answer on; `None` once a bad one was answered.
fn read_request(conn: UnixStream) -> std::io::Result<Option<(UnixStream, Value)>> {
    let mut out = conn.try_clone()?;
    let mut line = Vec::new();
    // A request is small: a line without end can't grow without bound.
    BufReader::new(std::io::Read::take(conn, MAX_REQUEST)).read_until(b'\n', &mut line)?;
    match serde_json::from_slice(&line) {
        Ok(req @ Value::Object(_)) => Ok(Some((out, req))),
        _ => {
            reply(
                &mut out,
                &json!({"ok": false, "error": format!("a request is one JSON object on one line, of at most {MAX_REQUEST} bytes")}),
            )?;
            Ok(None)
        }
    }
}

/// One control connection while the bundle is still starting (on its `starting` socket):
/// `status`, `logs` and `now` are answered from `observer`; anything else waits for the
/// bundle to be up (the client does, on the other socket), so it is refused here.
pub(super) fn serve_starting(
    conn: UnixStream,
    observer: &Observer,
    cfg_ports: &[ServiceInfo],
) -> std::io::Result<()> {
    let Some((mut out, req)) = read_request(conn)? else {
        return Ok(());
    };
    let answer = match req["cmd"].as_str().unwrap_or("") {
        "status" => {
            let mut status = one_service::status(observer, cfg_ports);
            status["starting"] = json!(true);
            status
        }
        "now" => json!({"ok": true, "now": observer.now().to_string()}),
        "logs" => return logs(&mut out, observer, &req),
        other => json!({
            "ok": false,
            "error": format!("the bundle is still starting: `{other}` is answered once it is up")
        }),
    };
    reply(&mut out, &answer)
}

/// Whether the client on `conn` has closed its end (it sends nothing after its request, so
/// anything to read is its end of file).
fn hung_up(conn: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: polling one descriptor we own, without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP) != 0
}

fn not_shared() -> Value {
    json!({"ok": false, "kind": "not_shared", "error": "this bundle was started without `--shared`: it has no leases, and stops on `hitchserve down` only"})
}

/// A `lease` request: `pid` (the holder) and `definition` (what the holder was given, see
/// [`Definition`]), answered with the lease's id and where the bundle's lines stand now (a
/// holder's own view of the logs starts after `seq`).
/// How long a new holder's lease waits for a crashed service to be started again while
/// others hold the bundle (a test's fault injection) before it is refused.
const CRASH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

fn lease(bundle: &Bundle, shared: Option<&Arc<Leases>>, req: &Value, asker: &UnixStream) -> Value {
    let Some(leases) = shared else {
        return not_shared();
    };
    let Some(pid) = req["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
        return json!({"ok": false, "error": "a lease needs `pid`: the process that holds it"});
    };
    if !req["definition"].is_null() {
        let asked: Definition = match serde_json::from_value(req["definition"].clone()) {
            Ok(def) => def,
            Err(e) => {
                return json!({"ok": false, "error": format!("`definition` must map names to texts: {e}")})
            }
        };
        let changed = differences(&leases.definition, &asked);
        if !changed.is_empty() {
            let holders = leases.holders();
            return json!({
                "ok": false, "kind": "changed", "holders": holders,
                "error": format!(
                    "the running shared bundle was started from another definition ({}){}",
                    changed.join(", "),
                    match holders.len() {
                        0 => String::new(),
                        n => format!(
                            ", and {n} lease(s) still hold it (pids {}): let them finish, or stop it with `hitchserve down`",
                            holders.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    }
                ),
            });
        }
    }
    // How long to wait for another process's travel to end: `up --shared` and views wait,
    // `attach` (a shell's) is told at once.
    let wait = req["wait"]
        .as_f64()
        .filter(|w| w.is_finite() && *w >= 0.0)
        .map_or(std::time::Duration::ZERO, |w| {
            std::time::Duration::from_secs_f64(w.min(3600.0))
        });
    // Lines before the answer, saying why it waits: only for a client that asked for them.
    let progress = req["progress"].as_bool().unwrap_or(false);
    let tell = |what: Value| {
        if progress {
            let mut to_asker = asker;
            let _ = std::io::Write::write_all(&mut to_asker, format!("{what}\n").as_bytes());
        }
    };
    // A new holder's lease is "all ready" (`up`'s exit 0): not while a service has crashed.
    // While others hold the bundle, the crash may be a test's fault injection (a `kill`,
    // then a `start`): waited for, as a time travel is, for a while. Nobody holding it: said
    // at once (`up --shared` replaces the bundle). A view (a holder's own lease, taken over
    // the socket with no definition) is never refused for it. A look only
    // (`ServiceHandle::crashed`): `down` still reports the crash.
    if !req["definition"].is_null() {
        let crashed = || {
            bundle
                .service_names()
                .into_iter()
                .find_map(|name| bundle.service(&name).ok().and_then(|s| s.crashed()))
        };
        let deadline = std::time::Instant::now() + wait.min(CRASH_PATIENCE);
        let mut told = false;
        while !leases.is_closing() {
            let Some(crash) = crashed() else { break };
            let holders = leases.holders();
            if holders.is_empty() || std::time::Instant::now() >= deadline {
                return json!({
                    "ok": false, "kind": "crashed", "holders": holders,
                    "error": format!(
                        "the shared bundle is not all ready: {crash}{}",
                        match holders.len() {
                            0 => String::new(),
                            n => format!(
                                "; {n} lease(s) hold it (pids {}): `hitchserve start NAME` \
                                 starts the service again, `hitchserve down` stops the bundle",
                                holders.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
                            ),
                        }
                    ),
                });
            }
            if !std::mem::replace(&mut told, true) {
                tell(json!({"waiting": crash.to_string(), "for": "crash"}));
            }
            if hung_up(asker) {
                return json!({"ok": false, "error": "the process that asked for this lease gave up waiting"});
            }
            // (No event says a crash is over: a service started again is looked at.)
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let waiting = |travellers: &str| {
        bundle.log(format!(
            "Process {pid} waits for the time travel of process {travellers} to end before it \
             holds this bundle"
        ));
        // The asker hears why its answer waits (a line before the answer).
        tell(json!({"waiting": travellers, "for": "travel"}));
    };
    match leases.take(pid, wait, || hung_up(asker), waiting) {
        Ok(id) => {
            let seq = bundle.logs().last(1).first().map_or(0, |l| l.seq());
            let all_log = bundle.run_dir().map(|d| {
                d.join("logs")
                    .join("all.log")
                    .to_string_lossy()
                    .into_owned()
            });
            json!({
                "ok": true, "lease": id, "seq": seq, "all_log": all_log, "run": run_id(bundle),
                "holders": leases.holders(), "idle_seconds": leases.idle.as_secs_f64(),
            })
        }
        Err(e) if e == STOPPING => json!({"ok": false, "kind": "stopping", "error": e}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// This run's id (its run directory's name): what a holder names in its requests.
fn run_id(bundle: &Bundle) -> Option<String> {
    bundle
        .run_dir()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// The moment `time-travel --to` names: RFC 3339, or a date alone (its midnight, UTC).
fn moment(to: &str) -> Result<Timestamp, String> {
    let parsed = to.parse::<Timestamp>().or_else(|e| {
        to.parse::<hitchserve::jiff::civil::Date>()
            .map_err(|_| e)
            .and_then(|d| {
                let midnight = d.to_datetime(hitchserve::jiff::civil::Time::midnight());
                hitchserve::jiff::tz::Offset::UTC.to_timestamp(midnight)
            })
    });
    parsed.map_err(|e| {
        if e.to_string().contains("range") {
            format!(
                "`{to}` is out of range: a moment lies between {} and {}",
                Timestamp::MIN.strftime("%Y-%m-%d"),
                Timestamp::MAX.strftime("%Y-%m-%d")
            )
        } else {
            format!("`{to}` is not a moment (RFC 3339, e.g. 2030-01-01T09:00:00Z, or a date): {e}")
        }
    })
}
