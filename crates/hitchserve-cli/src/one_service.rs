//! One service at a time, on the control socket's server side: `stop`, `start`, `restart`,
//! `pause`, `resume` and `kill` requests, and each service's state as `status` reports it.
//!
//! Owns the words the CLI uses for a service's state (ready, starting, paused, stopped,
//! crashed, restarting) and the waiting that makes each request return only once its effect
//! is visible (`start` once ready, `stop` and `kill` with SIGKILL once exited), so that a
//! `status` right after is true. It only calls the library's public per-service API.
//!
//! Invariant: every request is bounded — by the library's startup and shutdown timeouts, or
//! its minute of patience after SIGKILL — and gets one reply, an error naming the service if
//! it failed.

use hitchserve::{Bundle, Error as HsError, Observer, ServiceHandle, Signal};
use serde_json::{json, Value};

/// What the control server knows of each service from the file.
pub struct ServiceInfo {
    pub name: String,
    /// The names of its ports (its kind's own included).
    pub ports: Vec<String>,
    /// The user it was given (`user = ...`), if any.
    pub user: Option<String>,
    /// Another service needs it completed (`needs_completed`): a one-shot, whose run is not
    /// "ready" but "running", and whose exit 0 is "completed".
    pub one_shot: bool,
}

/// A request's verbs, as the control socket names them.
pub const VERBS: [&str; 6] = ["stop", "start", "restart", "pause", "resume", "kill"];

/// Answer one `stop`/`start`/`restart`/`pause`/`resume`/`kill` request: `{"ok": true,
/// "service": <its status entry afterwards>}` or `{"ok": false, "error": ...}`.
pub fn serve(bundle: &Bundle, req: &Value, verb: &str, infos: &[ServiceInfo]) -> Value {
    let name = req["service"].as_str().unwrap_or("");
    let fail = |why: String| json!({"ok": false, "error": why});
    let svc = match bundle.service(name) {
        Ok(svc) => svc,
        Err(e) => return fail(e.to_string()),
    };
    let info = infos.iter().find(|i| i.name == name);
    let setup = req["setup"].as_bool().unwrap_or(false);
    // The library's `NotRunning` speaks of the bundle; here it is this one service.
    let not_running = || {
        format!(
            "service `{name}` is not running (stopped, crashed or exited): start it with \
             `hitchserve start {name}`"
        )
    };
    let said = |e: HsError| match e {
        // From a start: it was stopped again before it was ready, or the bundle is stopping.
        HsError::NotRunning if verb == "start" || verb == "restart" => format!(
            "service `{name}` stopped before it was ready: another request stopped it, or the \
             bundle is going down (see `hitchserve status`)"
        ),
        HsError::NotRunning if !svc.is_running() => not_running(),
        e => e.to_string(),
    };
    let done = match verb {
        "stop" => svc.stop().map_err(said),
        "start" if setup => svc.start_with_setup().map_err(said),
        "start" => svc.start().map_err(said),
        "restart" if setup => svc.restart_with_setup().map_err(said),
        "restart" => svc.restart().map_err(said),
        "pause" | "resume" if !svc.is_running() => Err(not_running()),
        "pause" => svc.pause().map_err(said),
        "resume" => svc.resume().map_err(said),
        "kill" => match req["signal"].as_str().unwrap_or("KILL").parse::<Signal>() {
            Err(e) => Err(e.to_string()),
            Ok(_) if !svc.is_running() => Err(not_running()),
            // After SIGKILL the library returns once it has exited (or its restart policy
            // took over), so that `status` right after shows the crash (or the restart).
            Ok(sig) => svc.kill(sig).map_err(|e| e.to_string()),
        },
        other => Err(format!("unknown request `{other}`")),
    };
    match done {
        Ok(()) => json!({"ok": true, "service": entry(&bundle.observer(), &svc, info)}),
        Err(why) => fail(why),
    }
}

/// A service's state in words.
fn state(svc: &ServiceHandle, one_shot: bool) -> String {
    if svc.restart_pending() {
        return "restarting".to_owned();
    }
    if let Some(status) = svc.exit_status() {
        // The library's own verdict: an exit it reports (after ready, or once its restart
        // policy gave up) is a crash; one asked for (`stop`) is not.
        return match svc.crashed() {
            Some(_) => format!("crashed ({status})"),
            None if one_shot && status.success() => "completed".to_owned(),
            None => format!("stopped ({status})"),
        };
    }
    if svc.is_stopping() {
        return "stopping".to_owned();
    }
    match (svc.pid(), svc.is_ready(), svc.is_paused()) {
        (Some(_), _, true) => "paused".to_owned(),
        (Some(_), true, false) if one_shot => "running".to_owned(),
        (Some(_), true, false) => "ready".to_owned(),
        (Some(_), false, false) => "starting".to_owned(),
        (None, _, _) if svc.incarnation() == 0 => "not started".to_owned(),
        (None, _, _) => "not running".to_owned(),
    }
}

/// One service as `status` (and every request of this module) reports it.
fn entry(bundle: &Observer, svc: &ServiceHandle, info: Option<&ServiceInfo>) -> Value {
    let name = svc.name();
    let proc = svc.process().ok();
    let rss = proc
        .as_ref()
        .and_then(|p| p.memory_info().ok())
        .map(|m| m.rss);
    let cpu = proc
        .as_ref()
        .and_then(|p| p.cpu_times().ok())
        .map(|c| (c.user + c.system).as_secs_f64());
    let ports: serde_json::Map<String, Value> = info
        .map(|i| {
            i.ports
                .iter()
                .filter_map(|p| bundle.port(name, p).ok().map(|n| (p.clone(), json!(n))))
                .collect()
        })
        .unwrap_or_default();
    let incarnation = svc.incarnation();
    json!({
        "name": name,
        "state": state(svc, info.is_some_and(|i| i.one_shot)),
        "pid": svc.pid(),
        "paused": svc.is_paused(),
        "incarnation": incarnation,
        "restarts": incarnation.saturating_sub(1),
        "rss": rss,
        "cpu_seconds": cpu,
        "ports": ports,
    })
}

/// The `status` reply: every service, and the bundle's time, through the bundle's observer
/// (the same while it starts and once it is up). While the bundle starts, the services not
/// begun yet are `not started` (before the run has begun, all of them, in the file's order).
pub fn status(bundle: &Observer, infos: &[ServiceInfo]) -> Value {
    let mut names = bundle.service_names();
    if names.is_empty() {
        names = infos.iter().map(|i| i.name.clone()).collect();
    }
    let services: Vec<Value> = names
        .iter()
        .map(|name| match bundle.service(name) {
            Ok(svc) => entry(bundle, &svc, infos.iter().find(|i| i.name == *name)),
            Err(_) => json!({"name": name, "state": "not started"}),
        })
        .collect();
    json!({"ok": true, "services": services, "now": bundle.now().to_string()})
}

/// The state column of the `status` table: the state, and how many times it was started
/// again once it has been (`ready, restarts: 1`).
pub fn state_column(entry: &Value) -> String {
    let state = entry["state"].as_str().unwrap_or("");
    match entry["restarts"].as_u64() {
        Some(n) if n > 0 => format!("{state}, restarts: {n}"),
        _ => state.to_owned(),
    }
}

/// What a client prints once a request of this module succeeded: `App: ready, pid 4242,
/// restarts: 1`.
pub fn summary(entry: &Value) -> String {
    let mut said = format!(
        "{}: {}",
        entry["name"].as_str().unwrap_or(""),
        entry["state"].as_str().unwrap_or("")
    );
    if let Some(pid) = entry["pid"].as_u64() {
        said.push_str(&format!(", pid {pid}"));
    }
    if let Some(n) = entry["restarts"].as_u64().filter(|&n| n > 0) {
        said.push_str(&format!(", restarts: {n}"));
    }
    said
}
