//! Failure during startup stops everything it started and says which service and why.

use std::time::Duration;

use hitchserve::{Error, ExitStatus, Ready, Service};

use crate::common::{is_alive, marked_pids, run_id, sh, wait_gone, Project, PATIENCE};

#[test]
fn exit_before_ready_reports_exit_code_and_last_lines_and_stops_the_others() {
    let p = Project::new("exitearly");
    let mut b = p.bundle();
    b.add(
        "Steady",
        sh("echo $$ > steady.pid; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.add(
        "Crashy",
        sh("for i in $(seq 1 30); do echo line $i; done; echo 'fatal: no config' >&2; exit 3")
            .needs(["Steady"]),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    match &err {
        Error::ExitedBeforeReady {
            service,
            status,
            last_lines,
            ..
        } => {
            assert_eq!(service, "Crashy");
            assert_eq!(*status, ExitStatus::Code(3));
            // stdout and stderr are separate pipes, so where `fatal` falls among the
            // stdout lines varies; the last stdout line is always among the last 20.
            assert_eq!(last_lines.len(), 20);
            assert!(last_lines.iter().any(|l| l.ends_with("line 30")));
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`Crashy`") && msg.contains("exit code 3") && msg.contains("line 30"),
        "{msg}"
    );
    let steady: u32 = std::fs::read_to_string(p.path("steady.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !is_alive(steady),
        "the service that was ready must be stopped"
    );
    assert!(marked_pids(&run_id(&b)).is_empty());
}

#[test]
fn death_by_signal_is_named() {
    let p = Project::new("signalled");
    let mut b = p.bundle();
    b.add(
        "Doomed",
        sh("echo going; echo 'fatal: no config' >&2; kill -9 $$"),
    )
    .unwrap();
    let msg = b.startup().unwrap_err().to_string();
    assert!(
        msg.contains("signal 9 (SIGKILL)") && msg.contains("going"),
        "{msg}"
    );
    assert!(msg.contains("[Err Doomed] fatal: no config"), "{msg}");
}

#[test]
fn timeout_names_what_each_service_waited_for_with_last_lines() {
    let p = Project::new("timeout");
    let mut b = p.bundle().startup_timeout(Duration::from_secs(2));
    b.add("Slow", sh("echo still warming up; exec sleep 1000"))
        .unwrap();
    b.add("Waiting", sh("echo READY; exec sleep 1000").needs(["Slow"]))
        .unwrap();
    // Quiet while a line is awaited: maybe its lines wait in its output buffer (said).
    b.add("Quiet", sh("exec sleep 1000")).unwrap();
    b.add(
        "QuietPort",
        Service::new(["sleep", "1000"]).ready(Ready::tcp(1)),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    let Error::StartupTimeout { not_ready, .. } = &err else {
        panic!("wrong error: {err:?}");
    };
    assert_eq!(not_ready.len(), 4);
    let buffer = |n: &hitchserve::NotReady| n.waiting_for.contains("PYTHONUNBUFFERED");
    assert!(buffer(&not_ready[2]), "{:?}", not_ready[2]);
    // Not for a service that printed lines, nor one waiting for others or for a port.
    assert!(!buffer(&not_ready[0]) && !buffer(&not_ready[1]) && !buffer(&not_ready[3]));
    assert_eq!(not_ready[0].service, "Slow");
    assert!(not_ready[0].waiting_for.contains("readiness check"));
    assert!(not_ready[0].last_lines[0].contains("still warming up"));
    assert_eq!(not_ready[1].service, "Waiting");
    assert!(not_ready[1].waiting_for.contains("`Slow`"));
    let msg = err.to_string();
    assert!(
        msg.contains("timed out after 2.0 s") && msg.contains("still warming up"),
        "{msg}"
    );
    assert!(
        marked_pids(&run_id(&b)).is_empty(),
        "the slow service must be stopped"
    );
}

#[test]
fn a_panicking_readiness_check_fails_startup() {
    let p = Project::new("panicky");
    let mut b = p.bundle();
    b.add(
        "Odd",
        Service::new(["sh", "-c", "echo hello; exec sleep 1000"]).ready_when(|line| {
            if line == "hello" {
                panic!("cannot parse {line}");
            }
            false
        }),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::ReadinessPanicked { service, message, last_lines, .. } if service == "Odd" && message.contains("cannot parse hello") && last_lines.iter().any(|l| l.ends_with("hello"))),
        "{err:?}"
    );
    assert!(marked_pids(&run_id(&b)).is_empty());
}

#[test]
fn an_interrupted_startup_stops_what_it_started_and_says_so() {
    let p = Project::new("interrupted");
    let mut b = p.bundle();
    b.add(
        "Slow",
        sh("echo $$ > pid; echo started; while :; do sleep 0.05; done")
            .ready_when(|l| l == "never"),
    )
    .unwrap();
    let interrupter = b.interrupter();
    let mut tail = b.logs().tail();
    let waiter = std::thread::spawn(move || {
        tail.until(|l| l == "started", PATIENCE).unwrap();
        interrupter.interrupt();
    });
    let err = b.startup().unwrap_err();
    waiter.join().unwrap();
    assert!(matches!(err, Error::Interrupted), "{err}");
    let pid: u32 = std::fs::read_to_string(p.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(pid, PATIENCE), "Slow survived the interrupt");
}

/// A closure that blocks until the test ends (its sender is dropped).
fn blocker() -> (
    std::sync::mpsc::Sender<()>,
    impl Fn() + Send + Sync + 'static,
) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Mutex::new(rx);
    (tx, move || {
        let _ = rx.lock().map(|rx| rx.recv());
    })
}

#[test]
fn a_readiness_check_that_blocks_is_ended_by_the_startup_timeout() {
    let p = Project::new("blocked-ready");
    let mut b = p.bundle().startup_timeout(Duration::from_millis(300));
    let (_release, block) = blocker();
    b.add(
        "Stuck",
        sh("echo hello; exec sleep 1000").ready_when(move |_| {
            block();
            false
        }),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(matches!(&err, Error::StartupTimeout { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Stuck"), "{text}");
    assert!(text.contains("readiness check"), "{text}");
}

#[test]
fn a_hook_that_blocks_is_ended_by_the_startup_timeout() {
    for poststart in [false, true] {
        let p = Project::new("blocked-hook");
        let mut b = p.bundle().startup_timeout(Duration::from_millis(300));
        let (_release, block) = blocker();
        let svc = sh("echo READY; exec sleep 1000");
        let svc = if poststart {
            svc.poststart(move |_| {
                block();
                Ok(())
            })
        } else {
            svc.setup(move |_| {
                block();
                Ok(())
            })
        };
        b.add("Hooked", svc).unwrap();
        let err = b.startup().unwrap_err();
        assert!(matches!(&err, Error::StartupTimeout { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("Hooked"), "{text}");
        let hook = if poststart { "poststart" } else { "setup" };
        assert!(text.contains(hook), "{text}");
    }
}

#[test]
fn an_error_debug_prints_the_human_message_a_failing_test_shows() {
    let p = Project::new("debug-msg");
    let mut b = p.bundle();
    b.add("Quitter", sh("echo 'boom on stderr' >&2; exit 3"))
        .unwrap();
    let err = b.startup().unwrap_err();
    // `fn t() -> hitchserve::Result<()>` prints `Error: {err:?}`: the message, not a struct.
    let debug = format!("{err:?}");
    assert_eq!(debug, err.to_string());
    assert!(
        debug.contains("`Quitter`") && debug.contains("boom on stderr"),
        "{debug}"
    );
    // ... and where the run's every line is.
    let all_log = b.run_dir().unwrap().join("logs").join("all.log");
    assert!(debug.contains(&all_log.display().to_string()), "{debug}");
    assert_eq!(err.kind(), "ExitedBeforeReady");
}

/// A server that goes to the background (its main process exits 0 at once, as
/// `redis-server --daemonize yes` does): the error says what probably happened and what to
/// do, and what it left running dies with the bundle.
#[test]
fn a_server_that_daemonizes_is_told_to_run_in_the_foreground() {
    let p = Project::new("daemonizes");
    let mut b = p.bundle();
    b.add(
        "Daemon",
        sh("setsid sh -c 'exec sleep 1000' > /dev/null 2>&1 < /dev/null & exit 0"),
    )
    .unwrap();
    let err = b.startup().unwrap_err().to_string();
    assert!(
        err.contains("exited before it was ready (exit code 0)"),
        "{err}"
    );
    assert!(
        err.contains("daemonized") && err.contains("foreground"),
        "{err}"
    );
    // Or it was a job that ends: said how to define one.
    assert!(err.contains("one_shot"), "{err}");
}

/// A service's megabyte-long line (a dump, a minified bundle) is quoted cut short by an
/// error, saying how much more there is and where: it must not flood a CI log.
#[test]
fn an_error_quotes_a_huge_line_cut_short() {
    let p = Project::new("hugeline");
    let mut b = p.bundle();
    b.add(
        "Dumper",
        sh("head -c 1000000 /dev/zero | tr '\\0' x; echo; echo fatal: bad dump; exit 1"),
    )
    .unwrap();
    let err = b.startup().unwrap_err().to_string();
    assert!(err.len() < 10_000, "{} bytes", err.len());
    assert!(
        err.contains("more bytes of this line are in all.log"),
        "{}",
        &err[..err.len().min(3000)]
    );
    assert!(
        err.contains("fatal: bad dump"),
        "{}",
        &err[..err.len().min(3000)]
    );
}
