//! `hitchserve up`: take the project's lock, bind the control socket, start the bundle
//! (in the foreground, or `--detach`ed as a daemon child whose parent waits for its verdict),
//! serve control connections, and stop cleanly on a signal or a `down`.
//!
//! Owns the state directory's making and permissions, the lock (a detaching `up` takes it
//! before it starts its daemon child and hands it over: a client sees a bundle starting
//! from the first moment), the socket's life (bound as
//! `control.sock.starting` before any service starts, renamed once all are ready, removed
//! when `up` ends) and the detaching. Invariant: the socket and `up.log` are ours only
//! (0600 in a 0700 directory), and a refused second `up` leaves the running one's lock
//! pid and log untouched.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hitchserve::{Bundle, Error as HsError};
use serde_json::{json, Value};

use super::leases::{definition, Definition, Leases};
use super::logs::OpenStream;
use super::protocol::reply;
use super::server::{serve, serve_starting};
use super::signals::{another_signal, install_signal_pipe, next_signal, signal_exit, RECEIVED};
use super::state_dir::{
    cannot_open, open_state_file, private_dir, socket_dir, socket_path, state_dir, StateDir,
    SOCKET_STARTING,
};
use crate::config;
use crate::one_service::ServiceInfo;
use crate::ExitCode;

/// `hitchserve up`.
pub fn up(
    file: &Path,
    project: &Path,
    detach: bool,
    timeline: bool,
    daemon_child: Option<Option<i32>>,
    shared: Option<Duration>,
    relaunch: &[OsString],
) -> Result<ExitCode, String> {
    // A daemon child, and the lock its parent took for it (if it was handed one).
    let (daemon_child, handed_lock) = match daemon_child {
        Some(fd) => (true, fd),
        None => (false, None),
    };
    // A missing or broken bundle file is said before anything is made in the project (`up`
    // in the wrong directory left a `.hitchserve` there). Read again below, under the lock.
    if !daemon_child {
        config::load(file)?;
    }
    let dir = state_dir(project);
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "`{}` is a file, not a directory: hitchserve keeps its state there; move the file",
            dir.display()
        ));
    }
    // A project another user could redirect is refused before anything is made in it.
    hitchserve::state_dir(project).map_err(|e| e.to_string())?;
    let sockets = socket_dir(project);
    // Nobody else may reach the socket, not even while it is being bound: a directory of
    // its own, 0700 (`.hitchserve/` is 0711: see the module header).
    private_dir(&sockets)?;
    let refusal = || {
        format!(
            "a bundle is already running in `{}`: see `hitchserve status`, stop it with `hitchserve down`",
            project.display()
        )
    };
    if detach && !daemon_child {
        return detach_up(file, project, timeline, shared, relaunch);
    }
    // Ctrl-C, SIGTERM and SIGHUP stop the bundle cleanly, from the start. A handler (not a
    // blocked signal mask: services would inherit the mask and ignore their stop signal)
    // writes to a pipe that a thread waits on; exec resets handlers, so services get the
    // default actions.
    // Until the lock is ours, a daemon child's stderr may be a running bundle's `up.log`:
    // an early failure goes to the waiting parent on stdout, never into that log.
    let early = |why: String| -> Result<ExitCode, String> {
        if daemon_child {
            say(&format!("failed: {}\n", Value::from(why)));
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
    let lock = match handed_lock {
        // Locked by the `up --detach` that started us, before it did: from its first
        // moment a client sees a bundle starting (it said "nothing runs" until we had
        // started and locked it ourselves).
        Some(fd) => match take_handed_lock(fd, &lock_path) {
            Ok(lock) => lock,
            Err(e) => return early(e),
        },
        None => match lock_up(project) {
            Ok(Some(lock)) => lock,
            Ok(None) => return early(refusal()),
            Err(e) => return early(e),
        },
    };
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
                Some(why) => say(&format!("failed: {}\n", Value::from(why))),
                None => say(&format!("{line}\n")),
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
    // Shared: what it was started from, for the holders to come to compare with theirs.
    let definition = match shared {
        Some(_) => match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| definition(&text))
        {
            Ok(def) => def,
            Err(e) => {
                let e = format!("cannot read `{}`: {e}", file.display());
                report(&format!("failed: {e}"));
                return Err(e);
            }
        },
        None => Definition::new(),
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
    let cfg_ports: Arc<Vec<ServiceInfo>> = Arc::new(
        cfg.services
            .iter()
            .map(|(n, s)| ServiceInfo {
                name: n.to_string(),
                ports: ports_of(s),
                user: s.user.as_ref().map(|u| u.to_string()),
                one_shot: cfg
                    .services
                    .values()
                    .any(|o| o.needs_completed.iter().any(|c| c.as_str() == n.as_str())),
            })
            .collect(),
    );
    // The bundle once it is up (and its leases, if shared): until then, a connection (to
    // the `starting` socket: `status`, `logs`, `now`) is answered from its observer.
    let live: Arc<OnceLock<Live>> = Arc::default();
    {
        let (live, stop_tx, cfg_ports) =
            (Arc::clone(&live), stop_tx.clone(), Arc::clone(&cfg_ports));
        let observer = bundle.observer();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (live, stop_tx, cfg_ports, observer) = (
                    Arc::clone(&live),
                    stop_tx.clone(),
                    Arc::clone(&cfg_ports),
                    observer.clone(),
                );
                std::thread::spawn(move || {
                    let _ = match live.get() {
                        Some((bundle, leases)) => {
                            serve(conn, bundle, &stop_tx, &cfg_ports, leases.as_ref())
                        }
                        None => serve_starting(conn, &observer, &cfg_ports),
                    };
                });
            }
        });
    }
    {
        // A signal during startup ends the startup; after it, the bundle. Another signal
        // while it stops cuts the services' grace short (SIGKILL at once).
        let (interrupter, stop_tx) = (bundle.interrupter(), stop_tx.clone());
        std::thread::spawn(move || {
            let first = next_signal(signal_pipe);
            let at = std::time::Instant::now();
            RECEIVED.store(first, Ordering::SeqCst);
            interrupter.interrupt();
            let _ = stop_tx.send(None);
            while let Some(sig) = another_signal(signal_pipe) {
                // `timeout` (like other supervisors) signals its child, then the child's
                // whole group: the same signal twice at once is one stop, not a second
                // asking to hurry (a person's second Ctrl-C comes later than this).
                if sig == first && at.elapsed() < SAME_SIGNAL_AGAIN {
                    continue;
                }
                interrupter.interrupt();
            }
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
            say(&t.to_string());
        }
    }
    let bundle = Arc::new(bundle);
    // Shared: leases from now on, and a stop once none has been held for the idle time.
    let leases = shared.map(|idle| {
        let bundle = Arc::clone(&bundle);
        let reset = move |pid: i32, before_ns: i128| {
            // Back to what the clock was before the travel (real time, unless the travel was
            // made on top of another holder's of the same process), said in the log.
            let before = hitchserve::jiff::SignedDuration::from_nanos(
                i64::try_from(before_ns).unwrap_or(i64::MAX),
            );
            let real = before.abs() < hitchserve::jiff::SignedDuration::from_millis(1);
            let to = match real {
                true => Ok(hitchserve::jiff::Timestamp::now()),
                false => hitchserve::jiff::Timestamp::now().checked_add(before),
            };
            match to
                .map_err(|e| e.to_string())
                .and_then(|to| bundle.time_travel_to(to).map_err(|e| e.to_string()))
            {
                Ok(()) if real => bundle.log(format!(
                    "The clock is back to real time: the lease of process {pid} that moved it \
                     has ended"
                )),
                Ok(()) => bundle.log(format!(
                    "The clock is back to where it was before the travel of process {pid}, \
                     whose lease that made it has ended"
                )),
                Err(e) => bundle.warn(format!("could not set the clock back: {e}")),
            }
        };
        Leases::new(idle, definition, Box::new(reset))
    });
    if let Some(leases) = &leases {
        let (leases, bundle, stop_tx) = (Arc::clone(leases), Arc::clone(&bundle), stop_tx.clone());
        std::thread::spawn(move || {
            leases.wait_idle();
            bundle.log(format!(
                "No lease held for {:.1} s: stopping the shared bundle",
                leases.idle.as_secs_f64()
            ));
            let _ = stop_tx.send(None);
        });
    }
    // Once nothing can find this bundle any more (its state directory removed: `rm -rf
    // .hitchserve`, `git clean -fdX`), a detached one stops — it would run on, unreachable,
    // and a next `up` would start another beside it; a foreground one says so (Ctrl-C still
    // stops it).
    {
        let (bundle, stop_tx, dir) = (Arc::clone(&bundle), stop_tx.clone(), state_dir(project));
        let detached = daemon_child;
        std::thread::spawn(move || {
            if !wait_until_removed(&dir) {
                return;
            }
            match detached {
                true => {
                    bundle.warn(format!(
                        "`{}` was removed: no command can reach this bundle any more, so it \
                         stops",
                        dir.display()
                    ));
                    let _ = stop_tx.send(None);
                }
                false => bundle.warn(format!(
                    "`{}` was removed: no command can reach this bundle any more (`status`, \
                     `logs`, `down`...); Ctrl-C stops it",
                    dir.display()
                )),
            }
        });
    }
    // From now on every request is answered by the bundle itself...
    let _ = live.set((Arc::clone(&bundle), leases.clone()));
    // ... and clients of the others wait for this name.
    std::fs::rename(&starting, &sock).map_err(|e| {
        format!(
            "cannot put the control socket in place at `{}`: {e}",
            sock.display()
        )
    })?;
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
    if let Some(leases) = &leases {
        // Stopping: a holder asking now waits for the stop and starts a new bundle.
        leases.close();
    }
    // Every service that crashed, as the crash shutdown reports (the first not reported
    // before) is one of them: the others are said with it.
    let crashed: Vec<(String, String)> = bundle
        .service_names()
        .iter()
        .filter_map(|name| match bundle.service(name).ok()?.crashed()? {
            hitchserve::Error::ServiceExited {
                service, status, ..
            } => Some((service, status.to_string())),
            _ => None,
        })
        .collect();
    let result = bundle.shutdown();
    // Each `down` hears how the bundle ended: a crash not reported before is its error too.
    let verdict = match &result {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": true, "error": with_other_crashes(e, &crashed)}),
    };
    for mut asker in first.into_iter().chain(stop_rx.try_iter().flatten()) {
        let _ = reply(&mut asker, &verdict);
    }
    // Followers learn that the logs ended (one behind gets every line first, as long as its
    // client reads on), requests under way get their answers.
    OpenStream::wait_all(Duration::from_secs(5));
    drop(_socket_file);
    drop(lock);
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(with_other_crashes(&e, &crashed)),
    }
}

/// The bundle once it is up, and its leases if it is shared.
type Live = (Arc<Bundle>, Option<Arc<Leases>>);

/// Block until the state directory `dir`, or its lock file (by which commands find a
/// running bundle), is removed or moved away; false if that can't be watched. Told by the
/// kernel (inotify), not looked for.
fn wait_until_removed(dir: &Path) -> bool {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Ok(inotify) = Inotify::init(InitFlags::IN_CLOEXEC) else {
        return false;
    };
    let flags = AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR;
    if inotify.add_watch(dir, flags).is_err() {
        return false;
    }
    loop {
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        };
        let gone = events.iter().any(|e| {
            e.mask
                .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                || e.name.as_deref() == Some(std::ffi::OsStr::new("up.lock"))
        });
        if gone {
            return true;
        }
    }
}

/// The error shutdown reported, and each other service that `crashed` (name, how it
/// ended) after it: shutdown reports one crash, the first not reported before.
fn with_other_crashes(e: &hitchserve::Error, crashed: &[(String, String)]) -> String {
    let mut said = e.to_string();
    if let hitchserve::Error::ServiceExited { service: first, .. } = e {
        for (service, status) in crashed.iter().filter(|(s, _)| s != first) {
            said.push_str(&format!(
                "\n  `{service}` exited unexpectedly too ({status}): `hitchserve logs {service}` \
                 shows its lines"
            ));
        }
    }
    said
}

/// A signal again within this time of the first one that stopped `up` is the same request.
const SAME_SIGNAL_AGAIN: Duration = Duration::from_millis(500);

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

/// Open `up.lock` (made if need be, private, never followed through a link, checked as
/// every state file is) and take it for this `up`; `None` if another `up` holds it.
fn lock_up(project: &Path) -> Result<Option<std::fs::File>, String> {
    // Not truncated before it is ours: a refused `up` must leave the running one's pid.
    let lock = open_state_file(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600),
        project,
        "up.lock",
    )?;
    let _ = lock.set_permissions(std::fs::Permissions::from_mode(0o600));
    // SAFETY: a valid descriptor we own.
    let taken = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if taken {
        // The last run's pid goes at once: a `down` that reads it now must not signal it.
        let _ = lock.set_len(0);
    }
    Ok(taken.then_some(lock))
}

/// What `file` holds, read from its start without moving its offset (shared with the
/// bundle writing it).
fn read_from_start(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut bytes = vec![0; len.min(1 << 20)];
    let n = file.read_at(&mut bytes, 0)?;
    bytes.truncate(n);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The lock a detaching `up` took and handed us as descriptor `fd`: checked to be
/// `lock_path`'s file and locked (the lock is the descriptor's: ours now), and made
/// close-on-exec again so that no service inherits it.
fn take_handed_lock(fd: i32, lock_path: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    let bad = || {
        format!("--lock-fd {fd} is not the project's `up.lock`: this option is hitchserve's own")
    };
    // SAFETY: F_GETFD on an integer: only asks whether it is an open descriptor.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad());
    }
    // SAFETY: an open descriptor, handed to this process for it to own (our parent keeps
    // its own copy of the same open file only until it has heard from us).
    let lock = unsafe { std::fs::File::from_raw_fd(fd) };
    let named = std::fs::symlink_metadata(lock_path).map_err(|e| cannot_open(lock_path, &e))?;
    let held = lock.metadata().map_err(|e| cannot_open(lock_path, &e))?;
    if (named.dev(), named.ino()) != (held.dev(), held.ino()) {
        // Not ours to close: it was never ours.
        std::mem::forget(lock);
        return Err(bad());
    }
    // SAFETY: plain calls on the descriptor we now own.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        if libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0 {
            return Err(format!(
                "a bundle is already running in `{}`: see `hitchserve status`",
                lock_path
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(lock_path)
                    .display()
            ));
        }
    }
    Ok(lock)
}

/// Start `up` in the background and wait for its verdict. `relaunch` runs this command
/// again (see [`crate::run`]); empty: this executable.
pub(super) fn detach_up(
    file: &Path,
    project: &Path,
    timeline: bool,
    shared: Option<Duration>,
    relaunch: &[OsString],
) -> Result<ExitCode, String> {
    use std::os::unix::process::CommandExt;
    // The lock first, handed to the bundle we start: from now on, not once that bundle has
    // started, `status`, `logs` and `down` see a bundle starting.
    let lock = lock_up(project)?.ok_or_else(|| {
        format!(
            "a bundle is already running in `{}`: see `hitchserve status`, stop it with `hitchserve down`",
            project.display()
        )
    })?;
    let lock_fd = lock.as_raw_fd();
    let (program, first_args) = match relaunch.split_first() {
        Some((program, args)) => (PathBuf::from(program), args),
        None => (
            std::env::current_exe().map_err(|e| {
                format!(
                    "cannot find the hitchserve program to run the bundle in the background: {e}"
                )
            })?,
            &[][..],
        ),
    };
    let log_path = state_dir(project).join("up.log");
    // The bundle's whole console, secrets included: ours only.
    let log = open_state_file(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600),
        project,
        "up.log",
    )?;
    // Also one made 0644 by an older version, in the 0700 directory of those days.
    log.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make `{}` private: {e}", log_path.display()))?;
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut cmd = std::process::Command::new(program);
    cmd.args(first_args).arg("-f").arg(&file).args([
        "up",
        "--daemon-child",
        "--lock-fd",
        &lock_fd.to_string(),
    ]);
    if timeline {
        cmd.arg("--timeline");
    }
    if let Some(idle) = shared {
        cmd.arg("--shared")
            .arg("--idle")
            .arg(match idle.as_millis() {
                0 => "0".to_owned(),
                ms => format!("{ms}ms"),
            });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            log.try_clone()
                .map_err(|e| format!("cannot use `{}`: {e}", log_path.display()))?,
        )
        .current_dir(project);
    // SAFETY: setsid and close_range are system calls, async-signal-safe. setsid detaches
    // the bundle from our terminal; close_range marks every descriptor past stdio
    // close-on-exec (std's own included, which it needs open until exec), so that the
    // bundle, the long-lived daemon, holds none its caller inherited — a harness reading a
    // pipe until it closes (a make jobserver, a `pass_fds`) would wait for the bundle's end.
    // The lock's descriptor alone is then left open across the exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            super::exec::close_past_stdio_at_exec();
            if libc::fcntl(lock_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
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
            // Before its answer the bundle prints only what was asked (the startup
            // timeline) and its warnings (a service that crashed): pass them on — warnings to
            // stderr, as every other failure is said; everything to stderr for a shared
            // bundle, whose stdout may be JSON that a program reads.
            if shared.is_some() || first.contains("] WARNING: ") {
                eprint!("{first}");
            } else {
                print!("{first}");
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    if first.starts_with("ok") {
        if shared.is_some() {
            // `up --shared` says what it holds once it holds it.
            return Ok(ExitCode::SUCCESS);
        }
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
            // Through the file checked and opened above, never the path again.
            let log = read_from_start(&log).unwrap_or_default();
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

/// Write to our stdout, whoever reads it: a detached bundle's is a pipe to the `up` that
/// waits for its answer, and that may be gone (SIGKILLed): the bundle goes on (`println!`
/// panicked on the broken pipe, and the bundle was gone).
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
