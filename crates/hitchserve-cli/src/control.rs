//! `up` and the control socket, and the client side of every other command.
//!
//! The socket (`.hitchserve/control/control.sock`, 0600 in a 0700 directory of its own:
//! `.hitchserve/` itself is 0711, as the library makes it, so that services run as another
//! user reach their run directories; `up.log` and `up.lock` there are 0600) speaks JSON lines: one
//! request object, then one reply object — or, for `logs`, a stream of line objects ended
//! by an `end` object. A lock file held by the running `up` refuses a second `up`. Requests
//! on one service (`stop`, `start`, ...) are answered in `one_service`; `down` is answered
//! once every service has stopped, with the error of a crash not reported before.
//!
//! The socket is bound before any service starts (as `control.sock.starting`, renamed once
//! all are ready), and reached through `/proc/self/fd` when the project is too deep for
//! `sun_path`: it never lives outside the project's private `.hitchserve/`. Requests are
//! checked as untrusted input: a bad one gets an error reply, never a panicked handler.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hitchserve::jiff::Timestamp;
use hitchserve::{Bundle, Error as HsError, Logs};
use nix::fcntl::OFlag;
use serde_json::{json, Value};

use crate::config;
use crate::one_service::{self, ServiceInfo};
use crate::Command;

fn state_dir(project: &Path) -> PathBuf {
    project.join(".hitchserve")
}

/// The control socket's name in the state directory, once the bundle is ready.
const SOCKET: &str = "control.sock";
/// Its name while the bundle starts: bound before any service starts (so a socket that
/// can't be made fails the `up` at once), renamed to [`SOCKET`] once all are ready.
const SOCKET_STARTING: &str = "control.sock.starting";

/// The sockets' directory, private to us (0700).
fn socket_dir(project: &Path) -> PathBuf {
    state_dir(project).join("control")
}

fn socket_path(project: &Path) -> PathBuf {
    socket_dir(project).join(SOCKET)
}

/// The state directory, open, to reach its sockets by a path that fits in `sun_path`.
struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl StateDir {
    fn open(project: &Path) -> Result<StateDir, String> {
        let path = socket_dir(project);
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
        Ok(StateDir { path, fd })
    }

    /// An address for the socket `name`: its own path if that fits in `sun_path` (107
    /// bytes), else the same file reached through our descriptor of the directory
    /// (`/proc/self/fd/N/name`), so deep project paths work without a socket elsewhere.
    fn address(&self, name: &str) -> PathBuf {
        let direct = self.path.join(name);
        if direct.as_os_str().len() <= 107 {
            return direct;
        }
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }
}

/// `hitchserve up`.
pub fn up(
    file: &Path,
    project: &Path,
    detach: bool,
    timeline: bool,
    daemon_child: bool,
) -> Result<ExitCode, String> {
    let dir = state_dir(project);
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "`{}` is a file, not a directory: hitchserve keeps its state there; move the file",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let sockets = socket_dir(project);
    std::fs::create_dir_all(&sockets)
        .map_err(|e| format!("cannot create `{}`: {e}", sockets.display()))?;
    // Nobody else may reach the socket, not even while it is being bound: a directory of
    // its own, 0700 (`.hitchserve/` is 0711: see the module header).
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot make `{}` private: {e}", sockets.display()))?;
    let refusal = || {
        format!(
            "a bundle is already running in `{}`: see `hitchserve status`, stop it with `hitchserve down`",
            project.display()
        )
    };
    if detach && !daemon_child {
        if up_is_running(project) {
            return Err(refusal());
        }
        return detach_up(file, project, timeline);
    }
    // Ctrl-C, SIGTERM and SIGHUP stop the bundle cleanly, from the start. A handler (not a
    // blocked signal mask: services would inherit the mask and ignore their stop signal)
    // writes to a pipe that a thread waits on; exec resets handlers, so services get the
    // default actions.
    // Until the lock is ours, a daemon child's stderr may be a running bundle's `up.log`:
    // an early failure goes to the waiting parent on stdout, never into that log.
    let early = |why: String| -> Result<ExitCode, String> {
        if daemon_child {
            println!("failed: {}", Value::from(why));
            Ok(ExitCode::FAILURE)
        } else {
            Err(why)
        }
    };
    let signal_pipe = match install_signal_pipe() {
        Ok(pipe) => pipe,
        Err(e) => return early(e),
    };
    let lock_path = dir.join("up.lock");
    // Not truncated before it is ours: a refused `up` must leave the running one's pid.
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
    {
        Ok(lock) => lock,
        Err(e) => return early(format!("cannot create `{}`: {e}", lock_path.display())),
    };
    let _ = lock.set_permissions(std::fs::Permissions::from_mode(0o600));
    // SAFETY: a valid descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return early(refusal());
    }
    let _ = lock.set_len(0);
    if daemon_child {
        // Our stderr is `up.log`, opened without truncating so that a refused second `up`
        // can't wipe the running bundle's log: now that the lock is ours, start it afresh.
        // SAFETY: truncating our own stderr; it is opened for appending, so writes follow.
        unsafe {
            libc::ftruncate(2, 0);
        }
    }
    // The socket first, before anything starts: a project too deep for a socket path, or
    // a directory we can't bind in, fails now rather than once every service is up.
    let state = StateDir::open(project)?;
    let starting = sockets.join(SOCKET_STARTING);
    let sock = socket_path(project);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&starting);
    let listener = UnixListener::bind(state.address(SOCKET_STARTING))
        .map_err(|e| format!("cannot listen on `{}`: {e}", starting.display()))?;
    let _ = std::fs::set_permissions(&starting, std::fs::Permissions::from_mode(0o600));
    let _socket_file = RemoveOnDrop([starting.clone(), sock.clone()]);
    // Our pid, for a `down` that comes while we are still starting (no socket yet). Once
    // it is written, a client that finds neither socket knows that ours was removed.
    let _ = (&lock).write_all(std::process::id().to_string().as_bytes());
    // To the waiting parent, one line: `ok`, or `failed: "<the error as a JSON string>"`.
    let report = |line: &str| {
        if daemon_child {
            match line.strip_prefix("failed: ") {
                Some(why) => println!("failed: {}", Value::from(why)),
                None => println!("{line}"),
            }
        }
    };
    let cfg = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            report(&format!("failed: {e}"));
            return Err(e);
        }
    };
    let mut bundle = match config::bundle(&cfg, project) {
        Ok(b) => b,
        Err(e) => {
            report(&format!("failed: {e}"));
            return Err(e);
        }
    };
    if daemon_child {
        bundle.start_interactive_mode();
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // On a terminal, say now and then which services are still starting.
        bundle = bundle.progress_every(Duration::from_secs(1));
    }
    // What stops the bundle: a signal (None) or a `down` (its connection, answered once
    // everything has stopped).
    let (stop_tx, stop_rx) = mpsc::channel::<Option<UnixStream>>();
    {
        // A signal during startup ends the startup; after it, the bundle.
        let (interrupter, stop_tx) = (bundle.interrupter(), stop_tx.clone());
        std::thread::spawn(move || {
            RECEIVED.store(next_signal(signal_pipe), Ordering::SeqCst);
            interrupter.interrupt();
            let _ = stop_tx.send(None);
        });
    }
    if let Err(e) = bundle.startup() {
        report(&format!("failed: {e}"));
        if matches!(e, HsError::Interrupted) {
            // Stopped on purpose: say so, and exit as a shell reports the signal.
            eprintln!("hitchserve: {e}");
            return Ok(signal_exit(RECEIVED.load(Ordering::SeqCst)));
        }
        return Err(e.to_string());
    }
    if timeline {
        if let Ok(t) = bundle.timeline() {
            print!("{t}");
        }
    }
    let bundle = Arc::new(bundle);
    // Clients wait for this name: from now on they are answered.
    std::fs::rename(&starting, &sock).map_err(|e| {
        format!(
            "cannot put the control socket in place at `{}`: {e}",
            sock.display()
        )
    })?;
    {
        let (bundle, stop_tx) = (Arc::clone(&bundle), stop_tx.clone());
        let cfg_ports: Vec<ServiceInfo> = cfg
            .services
            .iter()
            .map(|(n, s)| ServiceInfo {
                name: n.to_string(),
                ports: ports_of(s),
                user: s.user.as_ref().map(|u| u.to_string()),
                restarts: s.restarts(),
            })
            .collect();
        let cfg_ports = Arc::new(cfg_ports);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (bundle, stop_tx, cfg_ports) =
                    (Arc::clone(&bundle), stop_tx.clone(), Arc::clone(&cfg_ports));
                std::thread::spawn(move || {
                    let _ = serve(conn, &bundle, &stop_tx, &cfg_ports);
                });
            }
        });
    }
    report("ok");
    if daemon_child {
        // The parent has its answer; from now on nothing reads our stdout.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            // SAFETY: replacing our own stdout with /dev/null.
            unsafe {
                libc::dup2(null.as_raw_fd(), 1);
            }
        }
    }
    let first = stop_rx.recv().ok().flatten();
    let result = bundle.shutdown();
    // Each `down` hears how the bundle ended: a crash not reported before is its error too.
    let verdict = match &result {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": true, "error": e.to_string()}),
    };
    for mut asker in first.into_iter().chain(stop_rx.try_iter().flatten()) {
        let _ = reply(&mut asker, &verdict);
    }
    // Followers learn that the logs ended; give them the moment to say so.
    OpenStream::wait_all(Duration::from_secs(5));
    drop(_socket_file);
    drop(lock);
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.to_string()),
    }
}

/// Files removed when `up` ends, however it ends (before its lock is released, so never a
/// later `up`'s).
struct RemoveOnDrop<const N: usize>([PathBuf; N]);

impl<const N: usize> Drop for RemoveOnDrop<N> {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The signal that asked us to stop, once one did.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The write end of the signal pipe, for the handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: only async-signal-safe calls: a non-blocking write of the signal number
        // to a pipe we own, with errno kept for the interrupted code.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [sig as u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Route SIGINT, SIGTERM and SIGHUP to a pipe; returns its read end (see [`next_signal`]).
/// A signal our parent set to be ignored (`nohup`, a background job) stays ignored.
fn install_signal_pipe() -> Result<libc::c_int, String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors; sigaction installs a handler that only
    // makes async-signal-safe calls.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(format!(
                "cannot make a pipe: {}",
                std::io::Error::last_os_error()
            ));
        }
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK);
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(s, std::ptr::null(), &mut old);
            if old.sa_sigaction != libc::SIG_IGN {
                libc::sigaction(s, &action, std::ptr::null_mut());
            }
        }
    }
    Ok(fds[0])
}

/// Block until a signal arrives on the pipe; returns its number.
fn next_signal(pipe: libc::c_int) -> libc::c_int {
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reading one byte from the pipe's read end, which we own.
        let n = unsafe { libc::read(pipe, byte.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return libc::c_int::from(byte[0]);
        }
        if n == 0 {
            return libc::SIGTERM;
        }
    }
}

/// The exit code of a process stopped by `sig`, as shells report it.
fn signal_exit(sig: libc::c_int) -> ExitCode {
    ExitCode::from((128 + sig).clamp(0, 255) as u8)
}

fn ports_of(s: &config::ServiceConfig) -> Vec<String> {
    let mut ports = config::strings(&s.ports);
    match s.kind.as_deref() {
        Some("postgres") => ports.push(hitchserve::services::postgres::PORT.into()),
        Some("redis") => ports.push(hitchserve::services::redis::PORT.into()),
        Some("smtp") => ports.push(hitchserve::services::smtp::PORT.into()),
        Some("memcached") => ports.push(hitchserve::services::memcached::PORT.into()),
        Some("nginx") => ports.push(hitchserve::services::nginx::PORT.into()),
        Some("mariadb") => ports.push(hitchserve::services::mariadb::PORT.into()),
        Some("rabbitmq") => ports.push(hitchserve::services::rabbitmq::PORT.into()),
        Some("chromium") => ports.push(hitchserve::services::chromium::PORT.into()),
        _ => {}
    }
    ports
}

/// Start `up` in the background and wait for its verdict.
fn detach_up(file: &Path, project: &Path, timeline: bool) -> Result<ExitCode, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log_path = state_dir(project).join("up.log");
    // The bundle's whole console, secrets included: ours only.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("cannot open `{}`: {e}", log_path.display()))?;
    // Also one made 0644 by an older version, in the 0700 directory of those days.
    log.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make `{}` private: {e}", log_path.display()))?;
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("-f").arg(&file).args(["up", "--daemon-child"]);
    if timeline {
        cmd.arg("--timeline");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .current_dir(project);
    // SAFETY: setsid is async-signal-safe; it detaches the bundle from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let signal_pipe = install_signal_pipe()?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the bundle: {e}"))?;
    // Ctrl-C while we wait: pass it on, so the bundle's startup ends instead of going on
    // in the background. (Once the bundle is up, we are gone.)
    let bundle_pid = child.id() as libc::pid_t;
    // Set once we stop waiting: from then on a signal is not the bundle's business (and
    // its pid may be reaped and reused).
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let sig = next_signal(signal_pipe);
            RECEIVED.store(sig, Ordering::SeqCst);
            if !done.load(Ordering::SeqCst) {
                // SAFETY: signalling the child we started and have not reaped.
                unsafe {
                    libc::kill(bundle_pid, libc::SIGTERM);
                }
            }
        });
    }
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let mut r = BufReader::new(out);
        loop {
            first.clear();
            if r.read_line(&mut first).unwrap_or(0) == 0 {
                break;
            }
            if first.starts_with("ok") || first.starts_with("failed") {
                break;
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    if first.starts_with("ok") {
        println!(
            "READY (hitchserve running in the background, pid {})",
            child.id()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait().ok();
    let received = RECEIVED.load(Ordering::SeqCst);
    let reported = first
        .strip_prefix("failed: ")
        .and_then(|j| serde_json::from_str::<String>(j.trim()).ok());
    let why = match (reported, status.and_then(|s| s.signal())) {
        (Some(why), _) => why,
        // Killed before it could report (by our forwarded signal, say): up.log may hold
        // an older run's words, so don't read it.
        (None, Some(sig)) => format!("the bundle was stopped by signal {sig} while starting"),
        (None, None) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            match log.trim() {
                "" => format!(
                    "the bundle exited ({}) without saying why",
                    status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
                ),
                log => log.to_owned(),
            }
        }
    };
    let why = why.trim();
    let why = why.strip_prefix("hitchserve: ").unwrap_or(why);
    if received != 0 {
        eprintln!("hitchserve: {why}");
        return Ok(signal_exit(received));
    }
    Err(why.to_owned())
}

fn reply(conn: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    conn.write_all(format!("{v}\n").as_bytes())
}

/// The longest request line read.
const MAX_REQUEST: u64 = 1 << 20;

/// One control connection: one request.
fn serve(
    conn: UnixStream,
    bundle: &Bundle,
    stop: &mpsc::Sender<Option<UnixStream>>,
    cfg_ports: &[ServiceInfo],
) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut line = Vec::new();
    // A request is small: a line without end can't grow without bound.
    BufReader::new(std::io::Read::take(conn, MAX_REQUEST)).read_until(b'\n', &mut line)?;
    let req: Value = match serde_json::from_slice(&line) {
        Ok(req @ Value::Object(_)) => req,
        _ => {
            return reply(
                &mut out,
                &json!({"ok": false, "error": format!("a request is one JSON object on one line, of at most {MAX_REQUEST} bytes")}),
            )
        }
    };
    let err = |e: HsError| json!({"ok": false, "error": e.to_string()});
    let service = |key: &str| req[key].as_str().unwrap_or("").to_owned();
    let answer = match req["cmd"].as_str().unwrap_or("") {
        "status" => one_service::status(bundle, cfg_ports),
        verb if one_service::VERBS.contains(&verb) => {
            one_service::serve(bundle, &req, verb, cfg_ports)
        }
        "now" => json!({"ok": true, "now": bundle.now().to_string()}),
        "time_travel" => {
            let r = if let Some(to) = req["to"].as_str() {
                match to.parse::<Timestamp>() {
                    Ok(ts) => bundle.time_travel_to(ts),
                    Err(e) => {
                        return reply(
                            &mut out,
                            &json!({"ok": false, "error": format!("`{to}` is not a moment (RFC 3339, e.g. 2030-01-01T09:00:00Z): {e}")}),
                        )
                    }
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
        "logs" => return logs(&mut out, bundle, &req),
        other => json!({"ok": false, "error": format!("unknown request `{other}`")}),
    };
    reply(&mut out, &answer)
}

/// Stream log lines: the last N (or all), then, with follow or until, new ones.
fn logs(out: &mut UnixStream, bundle: &Bundle, req: &Value) -> std::io::Result<()> {
    let mut view: Logs = match req["service"].as_str() {
        Some(name) => match bundle.service(name) {
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
    let emit = |out: &mut UnixStream, line: &hitchserve::LogLine| -> std::io::Result<()> {
        // Which of the service's processes wrote it (1 until it is started again; 0 for the
        // bundle's own lines), for clients of the socket; the CLI prints the line as it was.
        let incarnation = line.incarnation();
        if json_only {
            match line.json() {
                Some(v) => reply(out, &json!({"json": v, "incarnation": incarnation})),
                None => Ok(()),
            }
        } else {
            reply(
                out,
                &json!({"line": line.to_string(), "incarnation": incarnation}),
            )
        }
    };
    let (timeout, back) = match logs_numbers(req) {
        Ok(numbers) => numbers,
        Err(e) => return reply(out, &json!({"end": "error", "error": e})),
    };
    // Like the library's tails, --until starts now: the line looked for is one that comes
    // next, or one of the last `n` (`-n`) if the caller knows it may have come already.
    if let Some(pattern) = req["until"].as_str() {
        let re = match regex_lite::Regex::new(pattern) {
            Ok(r) => r,
            Err(e) => return reply(out, &json!({"end": "error", "error": e.to_string()})),
        };
        let mut tail = view.tail().lines_back(back.unwrap_or(0));
        let found = across_restarts(bundle, req, timeout, |left| {
            tail.until(|l| re.is_match(l), left)
        });
        let written = found.map(|l| emit(out, &l));
        return finish(out, written, timeout);
    }
    if let Some(expr) = req["until_json"].as_str() {
        let matcher = match config::JsonMatch::parse(expr) {
            Ok(m) => m,
            Err(e) => return reply(out, &json!({"end": "error", "error": e})),
        };
        let mut tail = view.tail().lines_back(back.unwrap_or(0));
        let found = across_restarts(bundle, req, timeout, |left| {
            tail.until_json(|v| matcher.matches(v), left)
        });
        let written = found.map(|v| reply(out, &json!({"json": v})));
        return finish(out, written, timeout);
    }
    let back = back.unwrap_or(usize::MAX);
    if !req["follow"].as_bool().unwrap_or(false) {
        let existing = match back {
            usize::MAX => view.entries(),
            n => view.last(n),
        };
        for line in &existing {
            emit(out, line)?;
        }
        // Where is it stuck? A prompt still waiting for its newline is shown too.
        for line in &view.pending() {
            emit(out, line)?;
        }
        return reply(out, &json!({"end": "ok"}));
    }
    let _open = OpenStream::new();
    // One cursor for the old lines and the new, so none is lost or repeated in between.
    let mut tail = view.tail().lines_back(back);
    // Following one service: its output ends when it stops, and goes on if it is started
    // again (the bundle logs that start). Meanwhile, wait on the bundle's whole log, whose
    // end is the bundle's.
    let mut whole: Option<hitchserve::Tail> = None;
    let one_service = req["service"].is_string();
    loop {
        match tail.next_line(Duration::from_secs(1)) {
            Ok(line) => emit(out, &line)?,
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

/// `logs --follow` streams still being served: `up` lets them send their last line
/// before it exits.
static OPEN_STREAMS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// Counts one open stream while it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> OpenStream {
        *OPEN_STREAMS.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        OpenStream
    }

    /// Wait, up to `patience`, until every stream has ended.
    fn wait_all(patience: Duration) {
        let open = OPEN_STREAMS.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = OPEN_STREAMS
            .1
            .wait_timeout_while(open, patience, |n| *n > 0);
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
) -> std::io::Result<()> {
    match found {
        Ok(written) => {
            written?;
            reply(out, &json!({"end": "ok"}))
        }
        Err(HsError::WaitTimeout { .. }) => reply(
            out,
            &json!({"end": "timeout", "error": format!("nothing matched within {:.1} s", timeout.as_secs_f64())}),
        ),
        Err(e) => reply(out, &json!({"end": "error", "error": e.to_string()})),
    }
}

/// Whether an `up` holds the project's lock (it may still be starting).
fn up_is_running(project: &Path) -> bool {
    let Ok(lock) = std::fs::File::open(state_dir(project).join("up.lock")) else {
        return false;
    };
    // SAFETY: a valid descriptor we own; a shared, non-blocking try.
    let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The pid an `up` wrote in its lock file once its socket was bound (see [`up`]).
fn up_pid(project: &Path) -> Option<libc::pid_t> {
    std::fs::read_to_string(state_dir(project).join("up.lock"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .filter(|&pid| pid > 0)
}

fn connect(project: &Path) -> Result<UnixStream, String> {
    // A bundle still starting has no socket yet: wait for it while its `up` lives.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut waited = false;
    let dir = socket_dir(project);
    loop {
        if let Ok(state) = StateDir::open(project) {
            if let Ok(conn) = UnixStream::connect(state.address(SOCKET)) {
                return Ok(conn);
            }
        }
        if !up_is_running(project) {
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

fn request(project: &Path, req: &Value) -> Result<BufReader<UnixStream>, String> {
    let mut conn = connect(project)?;
    conn.write_all(format!("{req}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(BufReader::new(conn))
}

fn one_reply(project: &Path, req: &Value) -> Result<Value, String> {
    let mut r = request(project, req)?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
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

/// Every command but `up`.
pub fn client(project: &Path, command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Up { .. } => unreachable!("handled by up"),
        Command::Down => {
            if !up_is_running(project) {
                println!(
                    "no bundle is running in `{}`: nothing to stop",
                    project.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let unreachable = !is_socket(&socket_path(project));
            let mut crashed = None;
            match (unreachable, up_pid(project)) {
                // Still starting, or its socket was removed: stop it as Ctrl-C would.
                // SAFETY: signalling the `up` that holds the project's lock.
                (true, Some(pid)) => unsafe {
                    libc::kill(pid, libc::SIGTERM);
                },
                _ => {
                    // The reply comes once the bundle has stopped: with the error of a crash
                    // it had not reported yet. No reply (it went away first) is no news.
                    let mut r = request(project, &json!({"cmd": "down"}))?;
                    let mut line = String::new();
                    let _ = r.read_line(&mut line);
                    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if v["ok"] == false {
                        return Err(v["error"].as_str().unwrap_or("failed").to_owned());
                    }
                    crashed = v["error"].as_str().map(str::to_owned);
                }
            }
            // `up` holds its lock file (which is never removed) until it has stopped.
            let lock = std::fs::File::open(state_dir(project).join("up.lock"))
                .map_err(|e| format!("cannot open the bundle's lock file: {e}"))?;
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
            // Shutdown is bounded by each service's stop timeout; this is a last resort.
            let patience = Duration::from_secs(600);
            match done_rx.recv_timeout(patience) {
                Ok(Ok(())) => match crashed {
                    None => Ok(ExitCode::SUCCESS),
                    Some(why) => Err(format!("the bundle stopped; before that, {why}")),
                },
                Ok(Err(e)) => Err(format!("cannot wait for the bundle to stop: {e}")),
                Err(_) => Err(format!(
                    "the bundle did not stop within {} s: see `.hitchserve/up.log`",
                    patience.as_secs()
                )),
            }
        }
        Command::Status { json } | Command::Ps { json } => {
            let v = one_reply(project, &json!({"cmd": "status"}))?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "{:<16} {:<32} {:>8} {:>10} {:>8}  PORTS",
                    "SERVICE", "STATE", "PID", "RSS", "CPU"
                );
                for s in v["services"].as_array().cloned().unwrap_or_default() {
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
                    println!(
                        "{:<16} {:<32} {:>8} {:>10} {:>8}  {}",
                        s["name"].as_str().unwrap_or(""),
                        one_service::state_column(&s),
                        pid,
                        rss,
                        cpu,
                        ports.join(" ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
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
        Command::TimeTravel { by, to } => {
            let req = match (by, to) {
                (_, Some(to)) => json!({"cmd": "time_travel", "to": to}),
                (Some(by), None) => {
                    let d = config::signed_duration(&by)
                        .map_err(|e| format!("{e} (`-3h` or `3h ago` goes back)"))?;
                    json!({"cmd": "time_travel", "by": d.as_secs_f64()})
                }
                (None, None) => return Err("say how far (+2d) or to when (--to ...)".into()),
            };
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
            let env: Vec<(String, String)> = v["env"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                .collect();
            let dir = v["dir"].as_str().unwrap_or(".");
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..])
                .env_clear()
                .envs(env)
                .current_dir(dir);
            let as_user = match (v["ids"][0].as_u64(), v["ids"][1].as_u64()) {
                (Some(uid), Some(gid)) => Some((uid as u32, gid as u32)),
                _ => None,
            };
            if let Some((uid, gid)) = as_user {
                // SAFETY: geteuid has no preconditions.
                if uid != unsafe { libc::geteuid() } {
                    use std::os::unix::process::CommandExt;
                    cmd.uid(uid).gid(gid);
                }
            }
            let status = cmd.status().map_err(|e| match v["user"].as_str() {
                Some(user) if as_user.is_some() => format!(
                    "cannot run `{}` as `{user}`, the service's user (that takes root): {e}",
                    command[0]
                ),
                _ => format!("cannot run `{}`: {e}", command[0]),
            })?;
            // Like a shell: the command's exit code, or 128 + the signal that killed it.
            let code = match (status.code(), status.signal()) {
                (Some(code), _) => code,
                (None, Some(sig)) => 128 + sig,
                (None, None) => 1,
            };
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
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
                let line = line.map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if let Some(text) = v["line"].as_str() {
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

/// A wait on one service's lines that goes on while the service is stopped, as `logs -f`
/// does: its line may come once it is started again. It ends with the line, the timeout, or
/// the bundle's end. (For the whole bundle's lines, the wait is just `wait`.)
fn across_restarts<T>(
    bundle: &Bundle,
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
            Err(HsError::EndedWhileWaiting { .. }) if one_service && !left.is_zero() => {
                // Stopped: wait for the bundle's next line (its start is one), then look again.
                let whole = whole.get_or_insert_with(|| bundle.logs().tail().lines_back(0));
                match whole.next_line(left.min(Duration::from_secs(1))) {
                    Ok(_) | Err(HsError::WaitTimeout { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            other => return other,
        }
    }
}
