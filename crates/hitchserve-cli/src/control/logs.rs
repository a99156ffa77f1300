//! The `logs` request on the server side: the last lines, or all, then with `--follow` new
//! ones as they come, or with `--until` / `--until-json` the one line waited for, as a
//! stream of line objects ended by an `end` object.
//!
//! Owns the streaming, the wait that goes on across a service's stop and start, and the
//! count of open streams and requests being answered (`OpenStream`, counted by the server
//! for every request but a dump of logs) that `up` waits on before it exits. Invariant: a stream
//! ends with one `end` object unless the client left first; a follower whose client hung
//! up is noticed within a second, even while the bundle is quiet.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hitchserve::{Error as HsError, Logs, Observer};
use serde_json::{json, Value};

use super::protocol::reply;
use crate::config;

/// How long a request for a service's lines waits for the bundle to begin its run: `up`
/// begins it as soon as it has read its file and bound its socket (a moment), so only a
/// machine that doesn't run it for a while takes this long.
const RUN_BEGINS: Duration = Duration::from_secs(30);

/// The handle of service `name`, once the bundle has begun its run: a `logs` that comes
/// in the moment between `up` binding its socket and beginning the run (`up --detach &`,
/// then `logs`) waits for it, rather than failing with the library's "not running".
/// (Looked at every 5 ms: the library has no event for the run's beginning.)
fn service_once_begun(
    bundle: &Observer,
    name: &str,
) -> hitchserve::Result<hitchserve::ServiceHandle> {
    let deadline = Instant::now() + RUN_BEGINS;
    loop {
        match bundle.service(name) {
            Err(HsError::NotRunning) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// `line` as the console shows it (`shown`: its label, then its text), with its exact bytes
/// for its text.
fn console_bytes(line: &hitchserve::LogLine, shown: &str) -> Vec<u8> {
    let text = line.text();
    let label = shown.strip_suffix(text.as_ref()).unwrap_or_default();
    let bytes = line.bytes();
    // As `text` has it: without the `\r` of a line that ended with `\r\n`.
    let bytes = match line.had_newline() {
        true => bytes.strip_suffix(b"\r").unwrap_or(bytes),
        false => bytes,
    };
    [label.as_bytes(), bytes].concat()
}

/// Stream log lines: the last N (or all), then, with follow or until, new ones.
pub(super) fn logs(out: &mut UnixStream, bundle: &Observer, req: &Value) -> std::io::Result<()> {
    // Counted until answered, `--until` waits too: a bundle that stops meanwhile answers
    // them before it exits (they heard only that it went away).
    let _open = OpenStream::new();
    let mut view: Logs = match req["service"].as_str() {
        Some(name) => match service_once_begun(bundle, name) {
            Ok(s) => s.logs(),
            Err(e) => return reply(out, &json!({"end": "error", "error": e.to_string()})),
        },
        None => bundle.logs(),
    };
    match req["stream"].as_str() {
        Some("out") => view = view.out(),
        Some("err") => view = view.err(),
        _ => {}
    }
    let json_only = req["json"].as_bool().unwrap_or(false);
    // A line's object for the client (none for a line that isn't JSON, with `json`).
    let render = |line: &hitchserve::LogLine| -> Option<Value> {
        // Which of the service's processes wrote it (1 until it is started again; 0 for the
        // bundle's own lines), for clients of the socket; the CLI prints the line as it was.
        let incarnation = line.incarnation();
        let seq = line.seq();
        if json_only {
            line.json()
                .map(|v| json!({"json": v, "incarnation": incarnation, "seq": seq}))
        } else {
            let shown = line.to_string();
            let mut v = json!({"line": shown, "text": line.text(), "service": line.service(), "incarnation": incarnation, "seq": seq});
            if std::str::from_utf8(line.bytes()).is_err() {
                // JSON carries text only: the line's exact bytes, as all.log has them, for
                // the CLI to print (`line` has U+FFFD where they are not UTF-8).
                v["raw"] = json!(console_bytes(line, &shown));
            }
            Some(v)
        }
    };
    let emit = |out: &mut UnixStream, line: &hitchserve::LogLine| -> std::io::Result<()> {
        match render(line) {
            Some(v) => reply(out, &v),
            None => Ok(()),
        }
    };
    let (timeout, mut back) = match logs_numbers(req) {
        Ok(numbers) => numbers,
        Err(e) => return reply(out, &json!({"end": "error", "error": e})),
    };
    // A holder's own view (a shared bundle's test): only the lines after `after_seq`.
    let after = match &req["after_seq"] {
        Value::Null => None,
        v => match v.as_u64() {
            Some(seq) => Some(seq),
            None => {
                let e = format!("`after_seq` must be a line's `seq` (0 or more), not {v}");
                return reply(out, &json!({"end": "error", "error": e}));
            }
        },
    };
    if let Some(after) = after {
        // Looked back far enough to reach the first line after `after`: a tail counts back
        // from its own start, so leave room for lines written meanwhile (found by seq).
        let since = view.entries().iter().filter(|l| l.seq() > after).count();
        back = Some(back.map_or(since, |n| n.min(since)).saturating_add(1024));
    }
    let mine = |line: &hitchserve::LogLine| after.is_none_or(|a| line.seq() > a);
    // Like the library's tails, --until starts now: the line looked for is one that comes
    // next, or one of the last `n` (`-n`) if the caller knows it may have come already.
    if let Some(pattern) = req["until"].as_str() {
        let re = match regex_lite::Regex::new(pattern) {
            Ok(r) => r,
            Err(e) => return reply(out, &json!({"end": "error", "error": e.to_string()})),
        };
        let mut tail = view.tail().lines_back(back.unwrap_or(0));
        let found = across_restarts(bundle, req, timeout, |left| loop {
            let line = tail.until(|l| re.is_match(l), left)?;
            if mine(&line) {
                return Ok(line);
            }
        });
        let written = found.map(|l| emit(out, &l));
        return finish(out, written, timeout, &format!("`{pattern}`"));
    }
    if let Some(expr) = req["until_json"].as_str() {
        let matcher = match config::JsonMatch::parse(expr) {
            Ok(m) => m,
            Err(e) => return reply(out, &json!({"end": "error", "error": e})),
        };
        let mut tail = view.tail().lines_back(back.unwrap_or(0));
        let found = across_restarts(bundle, req, timeout, |left| match after {
            None => tail
                .until_json(|v| matcher.matches(v), left)
                .map(|v| (v, None, None)),
            // Line by line, to skip those before the holder's view begins.
            Some(_) => {
                let until = Instant::now() + left;
                loop {
                    let line = tail.next_line(until.saturating_duration_since(Instant::now()))?;
                    if let Some(v) = line.json().filter(|v| mine(&line) && matcher.matches(v)) {
                        // Its text too: a client may read the JSON itself (keys in the
                        // line's order, numbers as written).
                        return Ok((v, Some(line.seq()), Some(line.text().into_owned())));
                    }
                }
            }
        });
        let written =
            found.map(|(v, seq, text)| reply(out, &json!({"json": v, "seq": seq, "text": text})));
        return finish(out, written, timeout, &format!("`{expr}` (a JSON line)"));
    }
    let back = back.unwrap_or(usize::MAX);
    if !req["follow"].as_bool().unwrap_or(false) {
        let existing = match back {
            usize::MAX => view.entries(),
            n => view.last(n),
        };
        for line in existing.iter().filter(|l| mine(l)) {
            emit(out, line)?;
        }
        // Where is it stuck? A prompt still waiting for its newline is shown too.
        for line in view.pending().iter().filter(|l| mine(l)) {
            emit(out, line)?;
        }
        return reply(out, &json!({"end": "ok"}));
    }
    // One cursor for the old lines and the new, so none is lost or repeated in between.
    let mut tail = view.tail().lines_back(back);
    // Following one service: its output ends when it stops, and goes on if it is started
    // again (the bundle logs that start). Meanwhile, wait on the bundle's whole log, whose
    // end is the bundle's.
    let mut whole: Option<hitchserve::Tail> = None;
    let one_service = req["service"].is_string();
    // Lines stored already go out in one write (a write per line made a follower that fell
    // behind a chatty service slower than the service): sent once none is waiting.
    let mut batch = Vec::new();
    loop {
        let wait = match batch.is_empty() {
            true => Duration::from_secs(1),
            false => Duration::ZERO,
        };
        let next = tail.next_line(wait);
        if !batch.is_empty() && (next.is_err() || batch.len() >= BATCH_BYTES) {
            std::io::Write::write_all(out, &batch)?;
            batch.clear();
        }
        match next {
            Ok(line) if !mine(&line) => {}
            Ok(line) => {
                if let Some(v) = render(&line) {
                    batch.extend_from_slice(format!("{v}\n").as_bytes());
                }
                SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Nothing waiting: what was gathered went out above; wait for more.
            Err(HsError::WaitTimeout { .. }) if wait.is_zero() => {}
            // Quiet for a while: go on following, as long as someone is listening.
            Err(HsError::WaitTimeout { .. }) if !peer_gone(out) => {}
            Err(HsError::WaitTimeout { .. }) => return Ok(()),
            Err(HsError::EndedWhileWaiting { .. }) if one_service => {
                let whole = whole.get_or_insert_with(|| bundle.logs().tail().lines_back(0));
                // Any line may be its start; a second at most, for one logged before
                // `whole` began.
                match whole.next_line(Duration::from_secs(1)) {
                    // Another service's line: is anyone still listening?
                    Ok(_) if !peer_gone(out) => {}
                    Ok(_) => return Ok(()),
                    Err(HsError::WaitTimeout { .. }) if !peer_gone(out) => {}
                    Err(HsError::WaitTimeout { .. }) => return Ok(()),
                    Err(_) => break,
                }
            }
            // The output ended (the bundle is stopping).
            Err(_) => break,
        }
    }
    reply(out, &json!({"end": "ok"}))
}

/// A logs request's `timeout` (seconds, default 10) and `n` (lines back), checked: a
/// client may send anything.
fn logs_numbers(req: &Value) -> Result<(Duration, Option<usize>), String> {
    let timeout = match &req["timeout"] {
        Value::Null => Duration::from_secs(10),
        v => v
            .as_f64()
            .ok_or_else(|| format!("`timeout` must be a number of seconds, not {v}"))
            .and_then(config::from_seconds)
            .and_then(|d| {
                Duration::try_from(d)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("`timeout` must be more than 0 s, not {v}"))
            })?,
    };
    let back = match &req["n"] {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .ok_or_else(|| format!("`n` must be a number of lines (0 or more), not {v}"))?,
        ),
    };
    Ok((timeout, back))
}

/// How long a stopping bundle waits at most for followers still sending what they are
/// behind by (a client reading slower than that loses the rest: `down` must end).
const FOLLOWERS_AT_MOST: Duration = Duration::from_secs(60);

/// How many bytes of lines a follower gathers before it sends them.
const BATCH_BYTES: usize = 64 * 1024;

/// `logs --follow` streams still being served, and requests still being answered: `up`
/// lets them send their last line (their answer) before it exits.
static OPEN_STREAMS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// Lines sent by followers so far: a follower behind the bundle's end (its client reads
/// slower than the service wrote) is waited for as long as it moves on.
static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one open stream (or request being answered) while it lives.
pub(super) struct OpenStream;

impl OpenStream {
    pub(super) fn new() -> OpenStream {
        *OPEN_STREAMS.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        OpenStream
    }

    /// Wait until every stream has ended: while followers send lines, for as long as they
    /// do (every line a service wrote reaches a client that keeps reading), up to
    /// `FOLLOWERS_AT_MOST` in all; once none is sent for `patience`, no longer (a client that
    /// stopped reading).
    pub(super) fn wait_all(patience: Duration) {
        let began = Instant::now();
        let mut open = OPEN_STREAMS.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let patience = patience.min(FOLLOWERS_AT_MOST.saturating_sub(began.elapsed()));
            let sent = SENT.load(std::sync::atomic::Ordering::Relaxed);
            let (guard, waited) = OPEN_STREAMS
                .1
                .wait_timeout_while(open, patience, |n| *n > 0)
                .unwrap_or_else(|e| e.into_inner());
            open = guard;
            if !waited.timed_out()
                || SENT.load(std::sync::atomic::Ordering::Relaxed) == sent
                || began.elapsed() >= FOLLOWERS_AT_MOST
            {
                return;
            }
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        *OPEN_STREAMS.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        OPEN_STREAMS.1.notify_all();
    }
}

/// Whether the client hung up. Only a closed socket counts: a client that just shut its
/// writing side (`socat`, `nc -N`) still reads.
fn peer_gone(conn: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: polling one descriptor we own, without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

fn finish(
    out: &mut UnixStream,
    found: Result<std::io::Result<()>, HsError>,
    timeout: Duration,
    looked_for: &str,
) -> std::io::Result<()> {
    match found {
        Ok(written) => {
            written?;
            reply(out, &json!({"end": "ok"}))
        }
        Err(HsError::WaitTimeout {
            what, last_lines, ..
        }) => {
            // As the library's own timeout says it: the last lines, which often say why.
            let last = match last_lines.as_slice() {
                [] => " (no line yet)".to_owned(),
                lines => format!(
                    "; the last line{}:\n{}",
                    if lines.len() == 1 { "" } else { "s" },
                    lines
                        .iter()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            };
            reply(
                out,
                &json!({"end": "timeout", "error": format!(
                    "nothing matched {looked_for} within {:.1} s (waited for {what}){last}",
                    timeout.as_secs_f64()
                )}),
            )
        }
        Err(e) => reply(out, &json!({"end": "error", "error": e.to_string()})),
    }
}

/// A wait on one service's lines that goes on while the service is stopped by hand or is
/// restarted by its policy, as `logs -f` does: its line may come once it runs again. It
/// ends with the line, the timeout, the bundle's end, or the service's crash with no
/// restart pending (at once, as the library's waits do). (For the whole bundle's lines,
/// the wait is just `wait`.)
fn across_restarts<T>(
    bundle: &Observer,
    req: &Value,
    timeout: Duration,
    mut wait: impl FnMut(Duration) -> hitchserve::Result<T>,
) -> hitchserve::Result<T> {
    let one_service = req["service"].is_string();
    let deadline = Instant::now().checked_add(timeout);
    let mut whole: Option<hitchserve::Tail> = None;
    loop {
        let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
        match wait(left) {
            Err(ended @ HsError::EndedWhileWaiting { .. })
                if one_service && !left.is_zero() && coming_back(bundle, req) =>
            {
                // Stopped: wait for the bundle's next line (its start is one), then look again.
                let whole = whole.get_or_insert_with(|| bundle.logs().tail().lines_back(0));
                match whole.next_line(left.min(Duration::from_secs(1))) {
                    Ok(_) | Err(HsError::WaitTimeout { .. }) => {}
                    // The bundle's end: said as the service's (its lines were waited on).
                    Err(HsError::EndedWhileWaiting { .. }) => return Err(ended),
                    Err(e) => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Whether the service a wait is on may run again: its restart policy's restart is pending,
/// a start is under way (also one not spawned yet: it ended the wait), or it was stopped by
/// hand (`start` may come, as for `logs -f`).
/// Not once it crashed (the library's own verdict): that is the end of its lines.
fn coming_back(bundle: &Observer, req: &Value) -> bool {
    let Some(name) = req["service"].as_str() else {
        return false;
    };
    // (Running again already: its lines go on. Not started — a start by hand that failed
    // — has neither a process nor an exit: nothing will start it.)
    bundle.service(name).is_ok_and(|svc| {
        svc.restart_pending()
            || svc.is_starting()
            || svc.pid().is_some()
            || (svc.exit_status().is_some() && svc.crashed().is_none())
    })
}
