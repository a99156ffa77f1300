//! One service at a time on a running bundle: stop, start, restart, pause, resume, kill,
//! and restart policies — with real servers and clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hitchserve::{Error, ExitStatus, Restart, Service, Signal};

use crate::common::{marked_pids, run_id, sh, Project, PATIENCE};

/// A TCP server on its `{port.tcp}` that answers each connection with `pong <pid>` once it
/// has read a line; READY once it listens.
const SERVER: &str = "import os, socket, sys\n\
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n\
print('READY', flush=True)\n\
while True:\n    c, _ = s.accept()\n    c.makefile().readline()\n    c.sendall(b'pong %d\\n' % os.getpid()); c.close()\n";

/// A client that asks the server every 20 ms and prints each answer, or `down`.
const CLIENT: &str = "import socket, sys, time\n\
while True:\n    try:\n        c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n        c.sendall(b'ping\\n'); print(c.makefile().readline().strip(), flush=True)\n    except OSError:\n        print('down', flush=True)\n    time.sleep(0.02)\n";

fn server() -> Service {
    Service::new(["python3", "-u", "-c", SERVER, "{port.tcp}"])
        .port("tcp")
        .ready_when(|l| l == "READY")
}

/// `Server`, and `Client` asking it every 20 ms; started.
fn server_and_client(p: &Project) -> hitchserve::Bundle {
    let mut b = p.bundle();
    b.add("Server", server()).unwrap();
    b.add(
        "Client",
        Service::new(["python3", "-u", "-c", CLIENT, "{Server.port.tcp}"])
            .ready_when(|l| l.starts_with("pong"))
            .needs(["Server"]),
    )
    .unwrap();
    b.startup().unwrap();
    b
}

fn ask(port: u16, read_timeout: Duration) -> std::io::Result<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(read_timeout))?;
    c.write_all(b"ping\n")?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    Ok(answer.trim().to_owned())
}

#[test]
fn a_client_reconnects_after_its_server_restarts_on_the_same_port() {
    let p = Project::new("fi-reconnect");
    let b = server_and_client(&p);
    let server = b.service("Server").unwrap();
    let client = b.service("Client").unwrap();
    let (old_pid, client_pid) = (server.pid().unwrap(), client.pid().unwrap());
    let port = b.port("Server", "tcp").unwrap();
    let mut tail = client.logs().tail();

    server.restart().unwrap();

    let new_pid = server.pid().unwrap();
    assert_ne!(new_pid, old_pid, "a new process");
    assert_eq!(server.incarnation(), 2);
    assert_eq!(b.port("Server", "tcp").unwrap(), port, "the same port");
    let pong = format!("pong {new_pid}");
    tail.until(|l| l == pong, PATIENCE)
        .expect("the client talks to the new server");
    assert_eq!(
        client.pid(),
        Some(client_pid),
        "the client was not restarted"
    );
    let logs = b.logs().lines();
    assert!(logs.iter().any(|l| l == "Stopping Server"), "{logs:?}");
    assert!(
        logs.iter().any(|l| l == "Starting Server (incarnation 2)"),
        "{logs:?}"
    );
    b.shutdown().unwrap();
}

#[test]
fn a_stopped_service_stays_down_and_what_needs_it_keeps_running() {
    let p = Project::new("fi-stop");
    let b = server_and_client(&p);
    let server = b.service("Server").unwrap();
    let client = b.service("Client").unwrap();
    let old_pid = server.pid().unwrap();
    let mut tail = client.logs().tail();

    server.stop().unwrap();

    assert!(!server.is_running());
    assert!(!crate::common::is_alive(old_pid));
    assert!(server.exit_status().is_some());
    tail.until(|l| l == "down", PATIENCE)
        .expect("the client sees the server gone");
    assert!(client.is_running(), "the client keeps running");
    b.check().expect("a stop asked for is not a crash");
    server.start().unwrap();
    assert!(server.is_ready());
    b.shutdown().expect("no crash to report");
}

#[test]
fn a_paused_server_times_out_its_client_and_resume_lets_it_answer() {
    let p = Project::new("fi-pause");
    let mut b = p.bundle();
    b.add("Server", server()).unwrap();
    b.startup().unwrap();
    let server = b.service("Server").unwrap();
    let port = b.port("Server", "tcp").unwrap();
    let pid = server.pid().unwrap();
    assert_eq!(ask(port, PATIENCE).unwrap(), format!("pong {pid}"));

    server.pause().unwrap();
    assert!(server.is_paused());
    let process = server.process().unwrap();
    assert!(
        crate::common::wait_for(PATIENCE, || {
            process.status().ok() == Some(hitchserve::Status::Stopped)
        }),
        "SIGSTOP reaches it"
    );
    // The kernel still accepts the connection; nobody answers it.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 64];
    let err = c
        .read(&mut buf)
        .expect_err("a paused server answers nothing");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );

    server.resume().unwrap();
    assert!(!server.is_paused());
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer.trim(),
        format!("pong {pid}"),
        "the same request, answered"
    );
    b.shutdown().unwrap();
}

#[test]
fn a_paused_service_still_stops() {
    let p = Project::new("fi-pause-stop");
    let mut b = p.bundle();
    b.add(
        "Paused",
        sh("trap 'echo bye; exit 0' TERM; echo READY; while :; do sleep 1; done"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Paused").unwrap();
    svc.pause().unwrap();
    svc.stop().unwrap();
    assert_eq!(
        svc.exit_status(),
        Some(ExitStatus::Code(0)),
        "it ran its trap"
    );
    assert!(svc.logs().lines().contains(&"bye".to_owned()));
    b.shutdown().unwrap();
}

#[test]
fn kill_with_sigkill_after_ready_is_reported_as_a_crash() {
    let p = Project::new("fi-kill");
    let mut b = p.bundle();
    b.add("Victim", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let victim = b.service("Victim").unwrap();
    victim.kill(Signal::SIGKILL).unwrap();
    assert_eq!(victim.wait_exit(PATIENCE), Some(ExitStatus::Signaled(9)));
    match b.check() {
        Err(Error::ServiceExited {
            service, status, ..
        }) => {
            assert_eq!(service, "Victim");
            assert_eq!(status, ExitStatus::Signaled(9));
        }
        other => panic!("expected the crash, got {other:?}"),
    }
    // Told by check (every time it is asked): shutdown, which reports a crash nobody was
    // told of, has nothing to add.
    assert!(b.check().is_err());
    b.shutdown().unwrap();
}

#[test]
fn a_killed_service_started_again_is_no_longer_a_crash() {
    let p = Project::new("fi-kill-start");
    let mut b = p.bundle();
    b.add("Victim", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let victim = b.service("Victim").unwrap();
    victim.kill(Signal::SIGKILL).unwrap();
    victim.wait_exit(PATIENCE).unwrap();
    victim.start().unwrap();
    b.check().unwrap();
    b.shutdown().unwrap();
}

/// `kill(SIGKILL)` returns once the exit is recorded: a `start` right after (no `wait_exit`)
/// starts a new process rather than finding the dying one still running. (Failed before:
/// `kill` returned once the signal was sent, and `start` was a no-op or raised the crash.)
#[test]
fn start_right_after_kill_with_sigkill_starts_it_again() {
    let p = Project::new("fi-kill-then-start");
    let mut b = p.bundle();
    b.add("Victim", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let victim = b.service("Victim").unwrap();
    for round in 1..=3 {
        let old = victim.pid().unwrap();
        victim.kill(Signal::SIGKILL).unwrap();
        assert_eq!(
            victim.exit_status(),
            Some(ExitStatus::Signaled(9)),
            "round {round}: kill returned before the exit was recorded"
        );
        assert!(!victim.is_running());
        victim.start().unwrap();
        assert_eq!(victim.incarnation(), round + 1);
        let new = victim.pid().expect("running again");
        assert_ne!(new, old);
    }
    b.check().unwrap();
    b.shutdown().unwrap();
}

/// With a restart policy, `kill(SIGKILL)` returns once the policy has taken over (the old
/// process is gone); the service comes back by itself.
#[test]
fn kill_with_sigkill_returns_once_a_restart_policy_has_taken_over() {
    let p = Project::new("fi-kill-policy");
    let mut b = p.bundle();
    b.add(
        "Victim",
        sh("echo READY; exec sleep 1000").restart(Restart::always(3)),
    )
    .unwrap();
    b.startup().unwrap();
    let victim = b.service("Victim").unwrap();
    let old = victim.pid().unwrap();
    victim.kill(Signal::SIGKILL).unwrap();
    assert!(
        victim.restart_pending() || victim.incarnation() == 2,
        "kill returned before its exit was seen"
    );
    assert_ne!(victim.pid(), Some(old));
    victim.wait_until_ready().unwrap();
    assert_eq!(victim.incarnation(), 2);
    b.shutdown().unwrap();
}

#[test]
fn a_restarted_service_sees_the_clock_as_time_travel_left_it() {
    let p = Project::new("fi-clock");
    let mut b = Project::bundle(&p);
    b.add(
        "Clock",
        Service::new([
            "python3",
            "-c",
            "import time; print('NOW', int(time.time()), flush=True); time.sleep(1000)",
        ])
        .ready_when(|l| l.starts_with("NOW")),
    )
    .unwrap();
    b.startup().unwrap();
    let month = Duration::from_secs(30 * 24 * 3600);
    b.time_travel(month).unwrap();
    let clock = b.service("Clock").unwrap();
    clock.restart().unwrap();
    let seen: Vec<(u32, i64)> = clock
        .logs()
        .entries()
        .iter()
        .filter_map(|l| {
            let t = l.text().strip_prefix("NOW ")?.parse().ok()?;
            Some((l.incarnation(), t))
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].0, seen[1].0), (1, 2));
    let moved = seen[1].1 - seen[0].1;
    assert!(
        moved >= month.as_secs() as i64 - 60,
        "the new process starts on the travelled clock ({moved} s later)"
    );
    b.shutdown().unwrap();
}

#[test]
fn a_tail_taken_before_a_restart_sees_both_incarnations_in_order() {
    let p = Project::new("fi-tail");
    let mut b = p.bundle();
    b.add(
        "Talker",
        sh("echo \"hello from $$\"; echo READY; exec sleep 1000"),
    )
    .unwrap();
    let mut tail = b.logs().tail();
    b.startup().unwrap();
    let talker = b.service("Talker").unwrap();
    let first = talker.pid().unwrap();
    let mut service_tail = talker.logs().tail();
    talker.restart().unwrap();
    let second = talker.pid().unwrap();

    let hello2 = format!("hello from {second}");
    let line = service_tail.until(|l| l == hello2, PATIENCE).unwrap();
    assert_eq!(line.incarnation(), 2);
    // The whole bundle's tail, from before startup: both starts, in order, each marked.
    let mut seen = Vec::new();
    while let Ok(l) = tail.next_line(Duration::ZERO) {
        seen.push((
            l.service().to_owned(),
            l.text().into_owned(),
            l.incarnation(),
        ));
    }
    let pos = |what: &str| {
        seen.iter()
            .position(|(_, t, _)| t == what)
            .unwrap_or_else(|| panic!("{what} not in {seen:?}"))
    };
    let hello1 = format!("hello from {first}");
    assert!(pos(&hello1) < pos("Stopping Talker"));
    // The stop's end is said before the new start (it came after it).
    let stopped = seen
        .iter()
        .position(|(_, t, _)| t.starts_with("Stopped Talker in "))
        .unwrap_or_else(|| panic!("no 'Stopped Talker in' in {seen:?}"));
    assert!(pos("Stopping Talker") < stopped);
    assert!(stopped < pos("Starting Talker (incarnation 2)"));
    assert!(pos("Starting Talker (incarnation 2)") < pos(&hello2));
    assert_eq!(seen[pos(&hello1)].2, 1);
    assert_eq!(seen[pos(&hello2)].2, 2);
    b.shutdown().unwrap();
}

#[test]
fn a_restart_policy_restarts_a_crashing_service_n_times_then_reports_it() {
    let p = Project::new("fi-policy");
    let mut b = p.bundle();
    // Ready, then it crashes once the test says so: every later start crashes at once.
    b.add(
        "Flaky",
        sh("echo READY; until [ -e crash ]; do sleep 0.01; done; exit 3")
            .restart(Restart::on_failure(2).backoff(Duration::from_millis(10))),
    )
    .unwrap();
    b.startup().unwrap();
    let flaky = b.service("Flaky").unwrap();
    let mut tail = b.logs().tail();
    p.write("crash", "");
    tail.until(|l| l.contains("giving up"), PATIENCE)
        .expect("the policy gives up after 2 restarts");
    assert_eq!(flaky.wait_exit(PATIENCE), Some(ExitStatus::Code(3)));
    assert_eq!(flaky.incarnation(), 3, "started once, restarted twice");
    let logs = b.logs().lines();
    let restarts: Vec<&String> = logs.iter().filter(|l| l.contains("restart ")).collect();
    assert_eq!(restarts.len(), 2, "{logs:?}");
    match b.check() {
        Err(Error::ServiceExited { service, .. }) => assert_eq!(service, "Flaky"),
        other => panic!("giving up is reported like a crash, got {other:?}"),
    }
    let _ = b.shutdown();
}

/// `Flaky` (restarted by `policy`) started up in `b`, then stopped; every later start of it
/// exits with code 3 before it is ready.
fn stopped_and_broken(
    p: &Project,
    mut b: hitchserve::Bundle,
    policy: Restart,
) -> (hitchserve::Bundle, hitchserve::ServiceHandle) {
    p.write("healthy", "");
    b.add(
        "Flaky",
        sh("[ -e healthy ] || exit 3; echo READY; exec sleep 1000")
            .ready_when(|l| l == "READY")
            .restart(policy),
    )
    .unwrap();
    b.startup().unwrap();
    let flaky = b.service("Flaky").unwrap();
    flaky.stop().unwrap();
    std::fs::remove_file(p.path("healthy")).unwrap();
    (b, flaky)
}

/// A start by hand whose restart policy gives up is an error telling of the exit, once:
/// `shutdown` does not report the same exit again (it did, as `ServiceExited`).
#[test]
fn a_start_by_hand_that_its_policy_gives_up_on_is_reported_once() {
    let p = Project::new("fi-policy-by-hand");
    let policy = Restart::on_failure(2).backoff(Duration::from_millis(10));
    let (b, flaky) = stopped_and_broken(&p, p.bundle(), policy);
    match flaky.start() {
        Err(Error::ExitedBeforeReady {
            service, status, ..
        }) => {
            assert_eq!((service.as_str(), status), ("Flaky", ExitStatus::Code(3)))
        }
        other => panic!("expected its exit before ready, got {other:?}"),
    }
    assert_eq!(
        flaky.incarnation(),
        4,
        "the start by hand, and the policy's two restarts"
    );
    // `check` says what state it is in, every time it is asked...
    assert!(matches!(b.check(), Err(Error::ServiceExited { .. })));
    // ... but the exit was reported: the end of the test doesn't fail with it again.
    b.shutdown().unwrap();
}

/// A bundle (startup timeout 3 s: the tests wait it out on purpose) with `App`, whose
/// setup hook returns at once the first time (startup's) and later waits until let go
/// (then says it returned); started up, `App` stopped, and a start of it with its setup
/// hook timed out (the hook still waits).
fn app_whose_start_timed_out_in_setup(
    p: &Project,
) -> (
    hitchserve::Bundle,
    hitchserve::ServiceHandle,
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Receiver<()>,
) {
    use std::sync::{mpsc, Mutex};
    // (Also the first, ordinary startup's timeout: long enough for a loaded machine.)
    let mut b = p.bundle().startup_timeout(Duration::from_secs(10));
    let (let_go, wait) = mpsc::channel::<()>();
    let (returned, hook_returned) = mpsc::channel::<()>();
    let (wait, returned) = (Mutex::new(wait), Mutex::new(returned));
    let calls = std::sync::atomic::AtomicU32::new(0);
    b.add(
        "App",
        sh("echo READY; exec sleep 1000")
            .ready_when(|l| l == "READY")
            .setup(move |_| {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                    let _ = wait.lock().unwrap().recv();
                    let _ = returned.lock().unwrap().send(());
                }
                Ok(())
            }),
    )
    .unwrap();
    b.startup().unwrap();
    let app = b.service("App").unwrap();
    app.stop().unwrap();
    match app.start_with_setup() {
        Err(Error::StartupTimeout { .. }) => {}
        other => panic!("expected the start to time out in its setup hook, got {other:?}"),
    }
    (b, app, let_go, hook_returned)
}

/// A start by hand that times out in its setup hook is called off: once the hook returns,
/// the service is not spawned (it was, and ran on after the test was told the start failed).
#[test]
fn a_start_by_hand_that_times_out_in_its_setup_hook_is_not_spawned_after() {
    let p = Project::new("fi-slow-setup");
    let (b, app, let_go, hook_returned) = app_whose_start_timed_out_in_setup(&p);
    let_go.send(()).unwrap();
    hook_returned.recv_timeout(PATIENCE).unwrap();
    // Its start is over, not spawned: waiting for it to be ready says it isn't running.
    match app.wait_until_ready() {
        Err(Error::ServiceNotRunning { service, .. }) => assert_eq!(service, "App"),
        other => panic!("the called-off start went on, got {other:?}"),
    }
    assert!(!app.is_running());
    assert_eq!(app.incarnation(), 1, "spawned once, at startup");
    assert!(b.logs().lines().iter().any(|l| l.contains("called off")));
    assert!(
        marked_pids(&run_id(&b)).is_empty(),
        "{:?}",
        marked_pids(&run_id(&b))
    );
    // A later start by hand is its own: it works.
    app.start().unwrap();
    assert!(app.is_running());
    b.shutdown().unwrap();
}

/// A start asked while a called-off start is still in its setup hook takes it back: the
/// start goes on, as the new one, and gets ready (it waited for the called-off start and
/// reported "never started").
#[test]
fn a_start_asked_while_a_called_off_start_sets_up_takes_it_back() {
    let p = Project::new("fi-take-back");
    let (b, app, let_go, _) = app_whose_start_timed_out_in_setup(&p);
    let mut said = b.logs().tail();
    std::thread::scope(|s| {
        let again = s.spawn(|| app.start());
        // Taken back (the hook still runs): let the hook return.
        said.until(|l| l.contains("the start under way goes on"), PATIENCE)
            .unwrap();
        let_go.send(()).unwrap();
        again.join().unwrap().unwrap();
    });
    assert!(app.is_running());
    assert_eq!(app.incarnation(), 2);
    b.shutdown().unwrap();
}

/// A start by hand that times out while its restart policy waits to restart it is called
/// off with the restart: nothing restarts it later (it did, after the test was told the
/// start failed).
#[test]
fn a_start_by_hand_that_times_out_calls_off_its_policys_restart() {
    let p = Project::new("fi-policy-timeout");
    // (Also the first, ordinary startup's timeout: long enough for a loaded machine.)
    let b = p.bundle().startup_timeout(Duration::from_secs(10));
    let policy = Restart::on_failure(5).backoff(Duration::from_secs(3600));
    let (b, flaky) = stopped_and_broken(&p, b, policy);
    // It exits at once; its policy's restart is an hour away: the start times out.
    match flaky.start() {
        Err(Error::StartupTimeout { .. }) => {}
        other => panic!("expected the start to time out, got {other:?}"),
    }
    // Nothing is to restart it: a wait for it to be ready ends at once, not at the timeout.
    match flaky.wait_until_ready() {
        Err(Error::ServiceNotRunning { service, .. }) => assert_eq!(service, "Flaky"),
        other => panic!("its policy's restart is still pending, got {other:?}"),
    }
    b.shutdown().unwrap();
}

#[test]
fn a_restart_policy_brings_a_crashed_service_back_ready() {
    let p = Project::new("fi-policy-back");
    let mut b = p.bundle();
    // It crashes once (the first start leaves a mark), then runs.
    b.add(
        "Worker",
        sh(
            "echo READY; if [ -e crashed ]; then exec sleep 1000; fi; touch crashed; \
            until [ -e go ]; do sleep 0.01; done; exit 1",
        )
        .restart(Restart::on_failure(3).backoff(Duration::from_millis(10))),
    )
    .unwrap();
    b.startup().unwrap();
    let worker = b.service("Worker").unwrap();
    let mut tail = b.logs().tail();
    p.write("go", "");
    tail.until(|l| l == "Starting Worker (incarnation 2)", PATIENCE)
        .unwrap();
    worker.wait_until_ready().unwrap();
    b.wait_until_ready("Worker").unwrap();
    assert!(worker.is_ready());
    b.check().expect("a restart that worked is not a crash");
    b.shutdown().unwrap();
}

#[test]
fn no_process_is_left_behind_by_a_service_killed_while_it_restarts() {
    let p = Project::new("fi-kill-restart");
    let mut b = p.bundle();
    b.add(
        "Slow",
        sh("sleep 1000 & echo started; read x < slow-fifo; echo READY; exec sleep 1000"),
    )
    .unwrap();
    let fifo = p.path("slow-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The first start reads end-of-file once this writer (opened when it reads) closes.
    let opener = {
        let fifo = fifo.clone();
        std::thread::spawn(move || drop(std::fs::OpenOptions::new().write(true).open(fifo)))
    };
    b.startup().unwrap();
    opener.join().unwrap();
    let run = run_id(&b);
    let slow = b.service("Slow").unwrap();
    let mut tail = slow.logs().tail();
    let restarter = {
        let slow = slow.clone();
        std::thread::spawn(move || slow.restart())
    };
    // The new start waits on the fifo: kill it there, before it is ready.
    let started = tail.until(|l| l == "started", PATIENCE).unwrap();
    assert_eq!(started.incarnation(), 2);
    slow.kill(Signal::SIGKILL).unwrap();
    match restarter.join().unwrap() {
        Err(Error::ExitedBeforeReady { service, .. }) => assert_eq!(service, "Slow"),
        other => panic!("the restart reports the kill, got {other:?}"),
    }
    b.shutdown().unwrap();
    assert!(marked_pids(&run).is_empty(), "{:?}", marked_pids(&run));
}

#[test]
fn a_start_after_shutdown_is_refused() {
    let p = Project::new("fi-after");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    b.shutdown().unwrap();
    match svc.start() {
        Err(e @ Error::ServiceNotRunning { .. }) => {
            assert!(e.to_string().contains("shut down"), "{e}")
        }
        other => panic!("a start after shutdown is refused, got {other:?}"),
    }
    assert!(svc.stop().is_ok(), "stopping what is stopped does nothing");
    assert!(matches!(svc.pause(), Err(Error::ServiceNotRunning { .. })));
}

#[test]
fn a_setup_hook_runs_again_only_when_asked() {
    let p = Project::new("fi-setup");
    let mut b = p.bundle();
    b.add(
        "Db",
        sh("echo READY; exec sleep 1000").setup(|ctx| {
            ctx.run(["sh", "-c", "echo initialised >> setup-runs"])?;
            Ok(())
        }),
    )
    .unwrap();
    b.startup().unwrap();
    let db = b.service("Db").unwrap();
    let runs = || {
        std::fs::read_to_string(p.path("setup-runs"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(runs(), 1);
    db.restart().unwrap();
    assert_eq!(runs(), 1, "a plain restart keeps what setup made");
    db.restart_with_setup().unwrap();
    assert_eq!(runs(), 2);
    assert_eq!(db.incarnation(), 3);
    b.shutdown().unwrap();
}

#[test]
fn shutdown_calls_off_a_pending_restart() {
    let p = Project::new("fi-pending");
    let mut b = p.bundle();
    b.add(
        "Flaky",
        sh("echo READY; until [ -e crash ]; do sleep 0.01; done; exit 3")
            .restart(Restart::on_failure(5).backoff(Duration::from_secs(3600))),
    )
    .unwrap();
    b.startup().unwrap();
    let run = run_id(&b);
    let flaky = b.service("Flaky").unwrap();
    let mut tail = b.logs().tail();
    p.write("crash", "");
    tail.until(|l| l.contains("restart 1 in"), PATIENCE)
        .unwrap();
    b.shutdown().expect("a restart called off is not a crash");
    assert_eq!(flaky.incarnation(), 1, "no new process during shutdown");
    assert!(marked_pids(&run).is_empty());
}

#[test]
fn a_policy_restart_the_os_refuses_is_reported_like_a_crash() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new("fi-refused");
    let script = p.write("svc.sh", "#!/bin/sh\necho READY\nexec sleep 1000\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut b = p.bundle();
    b.add(
        "Gone",
        Service::new(["./svc.sh"])
            .ready_when(|l| l == "READY")
            .restart(Restart::on_failure(3).backoff(Duration::from_millis(10))),
    )
    .unwrap();
    b.startup().unwrap();
    let gone = b.service("Gone").unwrap();
    let mut tail = b.logs().tail();
    std::fs::remove_file(&script).unwrap();
    gone.kill(Signal::SIGKILL).unwrap();
    tail.until(|l| l.contains("could not restart `Gone`"), PATIENCE)
        .expect("a refused restart is said");
    assert!(!gone.restart_pending());
    assert_eq!(gone.wait_exit(PATIENCE), Some(ExitStatus::Signaled(9)));
    match b.check() {
        Err(Error::ServiceExited { service, .. }) => assert_eq!(service, "Gone"),
        other => panic!("the exit stands as a crash, got {other:?}"),
    }
    let _ = b.shutdown();
}

/// A restart or start by hand whose poststart hook fails is an error, and leaves nothing
/// running: the new process is stopped, as a failed startup stops its services (it was
/// left alive, shown as starting for ever). Starting it again, once the hook succeeds, works.
#[test]
fn a_failed_start_by_hand_leaves_nothing_running() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let p = Project::new("failed-restart");
    let mut b = p.bundle();
    let starts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&starts);
    b.add(
        "App",
        sh("echo READY; exec sleep 1000")
            .ready_when(|l| l == "READY")
            .poststart(move |_| {
                // The second and third starts' hooks fail; the first and fourth succeed.
                match counted.fetch_add(1, Ordering::SeqCst) {
                    1 | 2 => Err("no luck this time".into()),
                    _ => Ok(()),
                }
            }),
    )
    .unwrap();
    b.startup().unwrap();
    let app = b.service("App").unwrap();
    let first = app.pid().unwrap();

    let err = app.restart().unwrap_err();
    assert!(err.to_string().contains("no luck this time"), "{err}");
    assert!(
        !app.is_running(),
        "a failed restart left its process running"
    );
    assert!(crate::common::wait_gone(first, PATIENCE));
    assert!(
        marked_pids(&run_id(&b)).is_empty(),
        "{:?}",
        marked_pids(&run_id(&b))
    );

    let err = app.start().unwrap_err();
    assert!(err.to_string().contains("no luck this time"), "{err}");
    assert!(!app.is_running(), "a failed start left its process running");

    app.start().unwrap();
    assert!(app.is_running());
    assert_eq!(starts.load(Ordering::SeqCst), 4);
    b.shutdown().unwrap();
}

/// An error about a start by hand shows that start's lines only: a start that exits (or
/// hangs) after an earlier one printed `READY` showed that line as one of its own.
#[test]
fn a_failed_start_by_hand_shows_only_its_own_lines() {
    let p = Project::new("own-lines");
    p.write("mode", "ok");
    let mut b = p.bundle();
    b.add(
        "Svc",
        sh("if [ \"$(cat mode)\" = ok ]; then echo READY; exec sleep 1000; fi; echo broken >&2; exit 3"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    svc.stop().unwrap();
    p.write("mode", "broken");
    match svc.start() {
        Err(Error::ExitedBeforeReady { last_lines, .. }) => {
            assert!(
                !last_lines.iter().any(|l| l.contains("READY")),
                "{last_lines:?}"
            );
            assert!(
                last_lines.iter().any(|l| l.contains("broken")),
                "{last_lines:?}"
            );
        }
        other => panic!("expected ExitedBeforeReady, got {other:?}"),
    }
    b.shutdown().unwrap();
}

/// `stop()` while the bundle itself is stopping returns once the service has exited, as a
/// stop does (it returned at once, the service still running: the bundle's stop had
/// taken it over).
#[test]
fn stop_during_shutdown_returns_once_the_service_has_exited() {
    let p = Project::new("fi-stop-in-shutdown");
    let mut b = p.bundle();
    // Takes a while to stop: its stop signal starts a slow exit.
    b.add(
        "Slow",
        sh("trap 'sleep 1; exit 0' TERM; echo READY; while :; do sleep 0.05; done"),
    )
    .unwrap();
    b.startup().unwrap();
    let slow = b.service("Slow").unwrap();
    let mut hitch = b.logs().tail();
    std::thread::scope(|s| {
        let shutdown = s.spawn(|| b.shutdown());
        hitch
            .until(|l| l.starts_with("Stopping "), PATIENCE)
            .unwrap();
        slow.stop().unwrap();
        assert!(
            slow.exit_status().is_some(),
            "stop() returned while the service was still stopping"
        );
        shutdown.join().unwrap().unwrap();
    });
}

/// A wait for readiness that times out while the service waits out its restart backoff
/// says so — not "waiting for a log line containing READY" beside a READY line of the
/// process that exited.
#[test]
fn a_wait_that_times_out_during_a_restart_backoff_says_so() {
    let p = Project::new("fi-backoff-timeout");
    let mut b = p
        .bundle()
        .startup_timeout(std::time::Duration::from_secs(10));
    b.add(
        "W",
        sh("echo READY; exec sleep 1000")
            .ready_when(|l| l.contains("READY"))
            .restart(Restart::on_failure(2).backoff(std::time::Duration::from_secs(3600))),
    )
    .unwrap();
    b.startup().unwrap();
    let w = b.service("W").unwrap();
    w.kill(Signal::SIGKILL).unwrap();
    assert!(w.restart_pending());
    let err = w.wait_until_ready().unwrap_err();
    let said = err.to_string();
    assert!(matches!(err, Error::StartupTimeout { .. }), "{said}");
    assert!(said.contains("its restart"), "{said}");
    assert!(said.contains("SIGKILL"), "{said}");
    b.shutdown().unwrap();
}

/// A one-shot whose run by hand fails says so once, from the call that ran it: `check()`
/// does not report it again as a crash. (A user reported it did; not reproduced here, by
/// `restart()` or `start()`, 20 rounds: kept as the check.)
#[test]
fn a_one_shot_whose_restart_fails_is_told_by_the_restart_alone() {
    let p = Project::new("fi-oneshot-restart");
    let mut b = p.bundle();
    // Succeeds the first time, fails once the marker file exists.
    let marker = p.dir.join("fail-now");
    b.add(
        "Mig",
        sh(&format!(
            "if [ -e {} ]; then exit 3; fi; exit 0",
            marker.display()
        ))
        .one_shot(),
    )
    .unwrap();
    b.startup().unwrap();
    std::fs::write(&marker, "").unwrap();
    let mig = b.service("Mig").unwrap();
    for round in 0..20 {
        let err = match round % 2 {
            0 => mig.restart().unwrap_err(),
            _ => mig.start().unwrap_err(),
        };
        assert!(matches!(err, Error::OneShotFailed { .. }), "{err:?}");
        if let Err(e) = b.check() {
            panic!("round {round}: the failure told by restart() was reported again: {e}");
        }
    }
    b.shutdown().unwrap();
}

/// A wait for ready while another thread restarts the service waits for the new process:
/// the old one, stopping, is not ready (the wait returned at once, with the old pid, and
/// the test talked to a dying server). Status says it is stopping.
#[test]
fn waiting_for_ready_during_a_restart_waits_for_the_new_process() {
    let p = Project::new("ready-during-restart");
    let mut b = p.bundle();
    b.add("Slow", slow_to_stop("0.5", None)).unwrap();
    b.startup().unwrap();
    let slow = b.service("Slow").unwrap();
    let old = slow.pid().unwrap();
    std::thread::scope(|s| {
        let restarter = s.spawn(|| b.service("Slow").unwrap().restart());
        assert!(crate::common::wait_for(PATIENCE, || slow.is_stopping()));
        assert!(!slow.is_ready());
        slow.wait_until_ready().unwrap();
        assert_eq!(slow.incarnation(), 2);
        assert!(slow.is_ready() && slow.pid() != Some(old));
        restarter.join().unwrap().unwrap();
    });
    b.shutdown().unwrap();
}

/// The service `name` of the bundle `observer` watches, once it is ready (the bundle is
/// starting on another thread).
fn once_ready(observer: &hitchserve::Observer, name: &str) -> hitchserve::ServiceHandle {
    let mut found = None;
    assert!(crate::common::wait_for(PATIENCE, || {
        found = observer.service(name).ok().filter(|s| s.is_ready());
        found.is_some()
    }));
    found.unwrap()
}

/// A service that is ready at once and takes `grace` (sh's `sleep` words) to stop once
/// asked, writing its pid to `pid_file` first if given.
fn slow_to_stop(grace: &str, pid_file: Option<&str>) -> Service {
    let pid = pid_file.map_or_else(String::new, |f| format!("echo $$ > {f}; "));
    sh(&format!(
        "{pid}trap 'sleep {grace}; exit 0' TERM; echo READY; while :; do sleep 0.05; done"
    ))
    .ready_when(|l| l == "READY")
}

/// Start `b` (its `A` is ready at once, its `C` waits for the file `gate`) on a thread of
/// its own; once `A` is ready, restart it from another thread and, once it is stopping,
/// open the gate. The bundle and its startup's result, `A`'s handle, its pid before, and
/// the restarter.
fn startup_with_a_restarted_meanwhile(
    p: &Project,
    b: hitchserve::Bundle,
) -> (
    hitchserve::Bundle,
    hitchserve::Result<()>,
    hitchserve::ServiceHandle,
    u32,
    std::thread::JoinHandle<hitchserve::Result<()>>,
) {
    let mut b = b;
    b.add(
        "C",
        sh("until [ -e gate ]; do sleep 0.02; done; echo READY; exec sleep 1000")
            .ready_when(|l| l == "READY"),
    )
    .unwrap();
    let observer = b.observer();
    let starting = std::thread::spawn(move || {
        let r = b.startup();
        (b, r)
    });
    let a = once_ready(&observer, "A");
    let old = a.pid().unwrap();
    let restarting = a.clone();
    let restarter = std::thread::spawn(move || restarting.restart());
    assert!(crate::common::wait_for(PATIENCE, || a.is_stopping()));
    std::fs::write(p.path("gate"), "").unwrap();
    let (b, started) = starting.join().unwrap();
    (b, started, a, old, restarter)
}

/// A dependent is not started against a need that is stopping (a restart of it during the
/// startup): it waits for the new process (it was started against the old, dying one).
#[test]
fn a_dependent_waits_for_a_need_restarted_during_startup() {
    let p = Project::new("dep-stopping");
    let mut b = p.bundle();
    b.add("A", slow_to_stop("1", Some("a.pid"))).unwrap();
    b.add(
        "B",
        sh("echo saw $(cat a.pid); echo READY; exec sleep 1000")
            .ready_when(|l| l == "READY")
            .needs(["A", "C"]),
    )
    .unwrap();
    let (b, started, a, old, restarter) = startup_with_a_restarted_meanwhile(&p, b);
    started.unwrap();
    restarter.join().unwrap().unwrap();
    let said = b.service("B").unwrap().logs().lines();
    assert!(
        !said.contains(&format!("saw {old}")),
        "B started against the stopping A: {said:?}"
    );
    assert!(
        said.contains(&format!("saw {}", a.pid().unwrap())),
        "{said:?}"
    );
    b.shutdown().unwrap();
}

/// A startup that times out while a service is being stopped by hand names it, and why
/// (it named no service at all).
#[test]
fn a_startup_timeout_during_a_stop_names_the_stopping_service() {
    let p = Project::new("timeout-stopping");
    let mut b = hitchserve::Bundle::new(&p.dir)
        .startup_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(20));
    b.add("A", slow_to_stop("5", None)).unwrap();
    let (b, started, _, _, restarter) = startup_with_a_restarted_meanwhile(&p, b);
    match started.unwrap_err() {
        Error::StartupTimeout { not_ready, .. } => assert!(
            not_ready
                .iter()
                .any(|n| n.service == "A" && n.waiting_for.contains("stop")),
            "{not_ready:?}"
        ),
        other => panic!("{other:?}"),
    }
    let _ = restarter.join();
    let _ = b.shutdown();
}

/// `start()` while another thread's `stop()` is under way starts it again once it has
/// stopped, and returns once it is ready (it returned an error telling to call `start()`).
#[test]
fn a_start_during_a_stop_starts_it_again_once_stopped() {
    let p = Project::new("start-during-stop");
    let mut b = p.bundle();
    b.add("Slow", slow_to_stop("0.5", None)).unwrap();
    b.startup().unwrap();
    let slow = b.service("Slow").unwrap();
    let old = slow.pid().unwrap();
    std::thread::scope(|s| {
        let stopper = s.spawn(|| b.service("Slow").unwrap().stop());
        assert!(crate::common::wait_for(PATIENCE, || slow.is_stopping()));
        slow.start().unwrap();
        stopper.join().unwrap().unwrap();
    });
    assert!(slow.is_ready() && slow.pid() != Some(old));
    assert_eq!(slow.incarnation(), 2);
    b.shutdown().unwrap();
}

/// `start()` during another thread's `stop()` of a service that ignores its stop signal:
/// the stop keeps its deadline and its SIGKILL (a start in between made the stop return
/// with the old process alive, never killed), then the start starts it.
#[test]
fn a_start_during_the_stop_of_a_stubborn_service_lets_the_stop_kill_it_first() {
    let p = Project::new("start-during-stubborn-stop");
    let mut b = hitchserve::Bundle::new(&p.dir)
        .startup_timeout(PATIENCE)
        .shutdown_timeout(Duration::from_secs(1));
    b.add(
        "Stubborn",
        sh("trap '' TERM; echo READY; while :; do sleep 0.05; done").ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Stubborn").unwrap();
    let old = svc.pid().unwrap();
    std::thread::scope(|s| {
        let stopper = s.spawn(|| b.service("Stubborn").unwrap().stop());
        assert!(crate::common::wait_for(PATIENCE, || svc.is_stopping()));
        svc.start().unwrap();
        stopper.join().unwrap().unwrap();
    });
    assert!(
        crate::common::wait_gone(old, PATIENCE),
        "the old process lives on"
    );
    assert!(svc.is_ready() && svc.pid() != Some(old));
    b.shutdown().unwrap();
}

/// A service whose worker left its process group (`setsid`, as daemons and some servers'
/// workers do): `stop()` and `restart()` end that worker too (it held the port the next
/// start needs), as the bundle's stop does.
#[test]
fn stop_and_restart_end_what_left_the_services_group() {
    let p = Project::new("stop-setsid");
    let mut b = p.bundle();
    b.add(
        "App",
        sh("rm -f worker.pid; setsid sh -c 'echo $$ > worker.pid.new; mv worker.pid.new worker.pid; exec sleep 1000' & \
            while [ ! -s worker.pid ]; do sleep 0.01; done; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.startup().unwrap();
    let worker = |p: &Project| -> u32 {
        std::fs::read_to_string(p.path("worker.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let first = worker(&p);
    assert!(crate::common::is_alive(first));
    let app = b.service("App").unwrap();
    // A client the test runs beside it, in its environment, is not the service's: it
    // lives through the restart.
    let mut beside = std::process::Command::new("sleep")
        .arg("1000")
        .env_clear()
        .envs(app.environment())
        .spawn()
        .unwrap();
    app.restart().unwrap();
    assert!(
        crate::common::wait_gone(first, PATIENCE),
        "restart left {first} running"
    );
    assert!(
        beside.try_wait().unwrap().is_none(),
        "restart ended a command beside it"
    );
    let _ = beside.kill();
    let _ = beside.wait();
    let second = worker(&p);
    assert_ne!(first, second);
    app.stop().unwrap();
    assert!(
        crate::common::wait_gone(second, PATIENCE),
        "stop left {second} running"
    );
    b.shutdown().unwrap();
}

/// A service with a restart policy whose worker left its group crashes: the worker goes
/// before the policy's restart (it would hold the port the new process needs).
#[test]
fn a_restart_by_policy_ends_what_the_crashed_process_left_outside_its_group() {
    let p = Project::new("policy-setsid");
    let mut b = p.bundle();
    b.add(
        "App",
        sh("rm -f worker.pid; setsid sh -c 'echo $$ > worker.pid.new; mv worker.pid.new worker.pid; exec sleep 1000' & \
            while [ ! -s worker.pid ]; do sleep 0.01; done; echo READY; \
            until [ -e crash ]; do sleep 0.01; done; rm -f crash; exit 3")
        .restart(Restart::on_failure(1).backoff(Duration::from_millis(10))),
    )
    .unwrap();
    b.startup().unwrap();
    let first: u32 = std::fs::read_to_string(p.path("worker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let app = b.service("App").unwrap();
    let mut tail = b.logs().tail();
    p.write("crash", "");
    tail.until(|l| l.starts_with("App ready after"), PATIENCE)
        .expect("restarted by its policy");
    assert!(
        crate::common::wait_gone(first, PATIENCE),
        "the policy's restart left {first} running"
    );
    assert_eq!(app.incarnation(), 2);
    let _ = b.check();
    let _ = b.shutdown();
}
