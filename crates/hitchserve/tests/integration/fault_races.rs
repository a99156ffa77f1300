//! Review of #15: races and edge cases of one-service control (stop, start, restart, pause,
//! kill, restart policies) that a test can hit. Each test here failed when it was written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hitchserve::{Error, Ready, Restart, Service};

use crate::common::{marked_pids, run_id, sh, wait_for, Project, PATIENCE};

/// Ready; on its first start, a child that leaves its group (setsid) keeps its stdout open,
/// and it crashes once `crash` exists, so its drain lasts the whole reader drain (2 s).
/// Every later start just runs.
const CRASH_WITH_ESCAPEE: &str = "if [ -e crashed ]; then echo READY; exec sleep 1000; fi; \
    setsid sleep 1000 & echo READY; until [ -e crash ]; do sleep 0.01; done; \
    touch crashed; exit 3";

fn crash_while_draining(p: &Project, b: &mut hitchserve::Bundle) -> hitchserve::ServiceHandle {
    b.add(
        "Flaky",
        sh(CRASH_WITH_ESCAPEE).restart(Restart::on_failure(3).backoff(Duration::from_millis(10))),
    )
    .unwrap();
    b.startup().unwrap();
    let flaky = b.service("Flaky").unwrap();
    p.write("crash", "");
    // Its main process has exited: it is being drained (the escapee holds its pipe).
    assert!(wait_for(PATIENCE, || flaky.pid().is_none()));
    flaky
}

#[test]
fn a_stop_during_a_crash_drain_is_not_undone_by_the_restart_policy() {
    let p = Project::new("rv-stop-drain");
    let mut b = p.bundle();
    let flaky = crash_while_draining(&p, &mut b);
    flaky.stop().unwrap();
    assert_eq!(
        flaky.pid(),
        None,
        "stop() returned and the policy has started it again (incarnation {})",
        flaky.incarnation()
    );
    assert_eq!(flaky.incarnation(), 1);
    let _ = b.shutdown();
}

#[test]
fn a_shutdown_during_a_crash_drain_returns_and_leaves_no_restarted_process() {
    let p = Project::new("rv-shutdown-drain");
    let mut b = p.bundle();
    let _flaky = crash_while_draining(&p, &mut b);
    let run = run_id(&b);
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        let r = b.shutdown();
        let _ = tx.send(());
        r
    });
    // Generous: a shutdown here takes the 2 s drain and at most the 12 s killed grace.
    let returned = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let left = marked_pids(&run);
    if !returned {
        // Unstick it so the test ends: kill what was left.
        for pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = stopper.join();
    assert!(
        returned,
        "shutdown hung: the policy restarted {left:?} during it"
    );
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_tail_ends_when_a_service_waiting_for_its_restart_is_stopped() {
    let p = Project::new("rv-tail-restarting");
    let mut b = p.bundle();
    b.add(
        "Flaky",
        sh("echo READY; until [ -e crash ]; do sleep 0.01; done; exit 3")
            .restart(Restart::on_failure(1).backoff(Duration::from_secs(600))),
    )
    .unwrap();
    b.startup().unwrap();
    let flaky = b.service("Flaky").unwrap();
    let mut tail = b.logs().tail();
    p.write("crash", "");
    tail.until(|l| l.contains("restart 1 in"), PATIENCE)
        .unwrap();
    flaky.stop().unwrap();
    // Its output has ended for good: a wait on it ends (not at its timeout).
    match flaky
        .logs()
        .tail()
        .until(|l| l == "never", Duration::from_secs(10))
    {
        Err(Error::EndedWhileWaiting { .. }) => {}
        other => panic!("expected the wait to end with the service, got {other:?}"),
    }
    b.shutdown().unwrap();
}

#[test]
fn a_start_is_not_made_ready_by_the_previous_starts_poststart_hook() {
    let p = Project::new("rv-poststart");
    let mut b = p.bundle();
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = Arc::clone(&calls);
    // The hooks of starts 2 and 3 say what they do on `said`, and end when released.
    let (say, said) = mpsc::channel::<String>();
    let (release2, released2) = mpsc::channel::<()>();
    let (release3, released3) = mpsc::channel::<()>();
    let released = [
        std::sync::Mutex::new(released2),
        std::sync::Mutex::new(released3),
    ];
    b.add(
        "Db",
        sh("echo READY; exec sleep 1000").poststart(move |_ctx| {
            let n = hook_calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n > 1 {
                // Later calls end when the test says so (user code: it may wait as it likes).
                let _ = say.send(format!("hook{n}-running"));
                let _ = released[n - 2]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recv_timeout(PATIENCE);
                let _ = say.send(format!("hook{n}-done"));
            }
            Ok(())
        }),
    )
    .unwrap();
    let heard = |what: &str| said.recv_timeout(PATIENCE).ok().as_deref() == Some(what);
    b.startup().unwrap();
    let db = b.service("Db").unwrap();
    // Start 2: stopped while its poststart hook runs.
    let second = {
        let db = db.clone();
        std::thread::spawn(move || db.restart())
    };
    assert!(heard("hook2-running"));
    db.stop().unwrap();
    let _ = second.join().unwrap();
    // Start 3: its poststart hook waits; then the old one (of start 2) ends.
    let third = {
        let db = db.clone();
        std::thread::spawn(move || db.start())
    };
    assert!(heard("hook3-running"));
    release2.send(()).unwrap();
    assert!(heard("hook2-done"));
    // Whatever happened, let start 3's hook end so that the test ends.
    let ready_before_own_hook = wait_for(Duration::from_secs(3), || db.is_ready());
    release3.send(()).unwrap();
    let result = third.join().unwrap();
    assert!(
        !ready_before_own_hook,
        "start 3 counted as ready when start 2's poststart hook ended (its own still ran)"
    );
    result.unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_start_is_not_made_ready_by_the_previous_starts_probe() {
    let p = Project::new("rv-probe");
    let mut b = p.bundle().startup_timeout(Duration::from_secs(10));
    // Ready once it printed LINE and `flag` exists. Starts 1 and 2 print LINE, start 3 does
    // not (so it can never be ready). Each probe takes a second: the probe thread of
    // start 2 is inside a probe when start 2 is stopped and start 3 begins.
    b.add(
        "Svc",
        Service::new([
            "sh",
            "-c",
            "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; \
             if [ $n -le 2 ]; then echo LINE; fi; exec sleep 1000",
        ])
        .ready(Ready::all([
            Ready::line(|l| l == "LINE"),
            Ready::exec(["sh", "-c", "sleep 1; test -e flag"]),
        ])),
    )
    .unwrap();
    p.write("flag", "");
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    std::fs::remove_file(p.path("flag")).unwrap();
    // The bundle's tail: a tail of the service alone ends when restart() stops it (see
    // `a_tail_of_a_service_waiting_across_its_restart_sees_the_new_lines`).
    let mut hitch = b.logs().tail();
    let second = {
        let svc = svc.clone();
        std::thread::spawn(move || svc.restart())
    };
    let line = hitch.until(|l| l == "LINE", PATIENCE).unwrap();
    assert_eq!(line.incarnation(), 2);
    svc.stop().unwrap();
    let _ = second.join().unwrap();
    let third = {
        let svc = svc.clone();
        std::thread::spawn(move || svc.start())
    };
    hitch
        .until(|l| l == "Starting Svc (incarnation 3)", PATIENCE)
        .unwrap_or_else(|e| panic!("{e}"));
    p.write("flag", "");
    match third.join().unwrap() {
        Err(Error::StartupTimeout { .. }) => {}
        other => panic!(
            "start 3 never printed LINE, yet: {other:?} (start 2's probe thread, \
             still running, passed start 3's check with start 2's line)"
        ),
    }
    b.shutdown().unwrap();
}

#[test]
fn errors_about_a_stopped_service_name_it_and_say_it_is_stopped() {
    let p = Project::new("rv-errors");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    svc.stop().unwrap();
    let pause = svc.pause().unwrap_err().to_string();
    let kill = svc
        .kill(hitchserve::Signal::SIGTERM)
        .unwrap_err()
        .to_string();
    b.shutdown().unwrap();
    assert!(pause.contains("Svc"), "pause of a stopped service: {pause}");
    assert!(kill.contains("Svc"), "kill of a stopped service: {kill}");
}

#[test]
fn wait_until_ready_of_a_service_stopped_by_hand_is_not_a_crash() {
    let p = Project::new("rv-wait-stopped");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    svc.stop().unwrap();
    let wait = svc.wait_until_ready();
    let by_name = b.wait_until_ready("Svc");
    b.shutdown().unwrap();
    assert!(
        !matches!(wait, Err(Error::ServiceExited { .. })),
        "wait_until_ready of a service stopped by hand says it exited unexpectedly: {wait:?}"
    );
    assert!(
        !matches!(by_name, Err(Error::ServiceExited { .. })),
        "{by_name:?}"
    );
}

#[test]
fn a_tail_of_a_service_waiting_across_its_restart_sees_the_new_lines() {
    let p = Project::new("rv-tail-across");
    let mut b = p.bundle();
    b.add(
        "Talker",
        sh("echo \"hello from $$\"; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.startup().unwrap();
    let talker = b.service("Talker").unwrap();
    let first = talker.pid().unwrap();
    let mut tail = talker.logs().tail();
    let restarter = {
        let talker = talker.clone();
        std::thread::spawn(move || talker.restart())
    };
    // Waiting while the restart runs: the stop must not end the wait, the new start writes.
    let seen = tail.until(
        |l| l.starts_with("hello from ") && l != format!("hello from {first}"),
        PATIENCE,
    );
    restarter.join().unwrap().unwrap();
    b.shutdown().unwrap();
    let line = seen.expect("a wait across a restart sees the new process's line");
    assert_eq!(line.incarnation(), 2);
}

#[test]
fn a_pause_while_a_service_is_being_stopped_does_not_freeze_its_stop() {
    let p = Project::new("rv-pause-stopping");
    let mut b = p.bundle();
    b.add(
        "Svc",
        sh(
            "trap 'echo got-term; until [ -e release ]; do sleep 0.01; done; exit 0' TERM; \
            echo READY; while :; do sleep 0.05; done",
        ),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    let mut tail = svc.logs().tail();
    let stopper = {
        let svc = svc.clone();
        std::thread::spawn(move || svc.stop())
    };
    tail.until(|l| l == "got-term", PATIENCE).unwrap();
    // The test pauses it while it shuts down (a stop by another thread, or the bundle's).
    let paused = svc.pause();
    p.write("release", "");
    stopper.join().unwrap().unwrap();
    let status = svc.exit_status();
    b.shutdown().unwrap();
    assert_eq!(
        status,
        Some(hitchserve::ExitStatus::Code(0)),
        "pause() ({paused:?}) froze a service that was stopping: it was SIGKILLed at the \
         shutdown timeout instead of finishing its trap"
    );
}
