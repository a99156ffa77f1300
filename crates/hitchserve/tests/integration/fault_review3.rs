//! Review 3 of #15: what the first two reviews of one-service control missed. Each test
//! here failed when it was written (the transitions alone are pinned in
//! `runtime/state/tests.rs`, `review3_cases`).

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hitchserve::{Error, ExitStatus, Restart, Service, Signal};

use crate::common::{sh, wait_for, Project, PATIENCE};

/// A wait on a service's lines must end at once (not at its timeout) once nothing of it
/// runs or will run.
fn assert_output_ended(svc: &hitchserve::ServiceHandle, after: &str) {
    match svc.logs().tail().until(|l| l == "never printed", PATIENCE) {
        Err(Error::EndedWhileWaiting { .. }) => {}
        other => panic!(
            "after {after}, nothing of `{}` runs, yet a wait on its lines went on to its \
             timeout: {other:?}",
            svc.name()
        ),
    }
}

#[test]
fn a_tail_ends_when_a_start_by_hand_fails_its_setup_hook() {
    let p = Project::new("r3-tail-setup");
    let mut b = p.bundle();
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = Arc::clone(&calls);
    b.add(
        "Svc",
        sh("echo READY; exec sleep 1000").setup(move |_ctx| {
            if hook_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(())
            } else {
                Err("the second setup fails".into())
            }
        }),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    svc.stop().unwrap();
    let started = svc.start_with_setup();
    assert!(
        matches!(started, Err(Error::HookFailed { .. })),
        "{started:?}"
    );
    assert_output_ended(&svc, "a start by hand whose setup hook failed");
    b.shutdown().unwrap();
}

#[test]
fn a_tail_ends_when_a_start_by_hand_is_refused_by_the_os() {
    let p = Project::new("r3-tail-spawn");
    let script = p.write("svc.sh", "#!/bin/sh\necho READY\nexec sleep 1000\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut b = p.bundle();
    b.add(
        "Svc",
        Service::new(["./svc.sh"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    svc.stop().unwrap();
    std::fs::remove_file(&script).unwrap();
    let started = svc.start();
    assert!(matches!(started, Err(Error::Spawn { .. })), "{started:?}");
    assert_output_ended(&svc, "a start by hand the OS refused");
    b.shutdown().unwrap();
}

#[test]
fn a_failed_restart_by_hand_after_a_policy_restart_is_not_taken_for_the_policys() {
    let p = Project::new("r3-refused-by-hand");
    // Its restart below outlasts this: nobody waits on that start any more when it fails.
    let mut b = p.bundle().startup_timeout(Duration::from_secs(10));
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = Arc::clone(&calls);
    // The second setup hook ends (and fails) when released, and says so.
    let (release, released) = mpsc::channel::<()>();
    let (done, hook_done) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    b.add(
        "Svc",
        sh("echo READY; exec sleep 1000")
            .restart(Restart::on_failure(3).backoff(Duration::from_millis(10)))
            .setup(move |_ctx| {
                if hook_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Ok(());
                }
                // User code: it may wait as it likes. Fails when the test says so.
                let _ = released
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recv_timeout(PATIENCE);
                let _ = done.send(());
                Err("the second setup fails".into())
            }),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    let mut tail = b.logs().tail();
    // Its policy restarts it: the new process is supervised by the policy's restart thread.
    svc.kill(Signal::SIGKILL).unwrap();
    tail.until(|l| l.contains("restart 1 in"), PATIENCE)
        .unwrap();
    svc.wait_until_ready().unwrap();
    assert_eq!(svc.incarnation(), 2);
    // A restart by hand, on that same thread; its setup hook fails once nobody waits.
    let restarted = svc.restart_with_setup();
    assert!(
        matches!(restarted, Err(Error::StartupTimeout { .. })),
        "{restarted:?}"
    );
    release.send(()).unwrap();
    assert!(hook_done.recv_timeout(PATIENCE).is_ok());
    let _ = b.shutdown();
    let said = b.logs().grep(|l| l.contains("could not restart"));
    assert!(
        said.is_empty(),
        "the policy's restart thread took the failed restart by hand for a refused policy \
         restart (and turned it into an exit of the killed first process): {:?}",
        said.iter().map(|l| l.text()).collect::<Vec<_>>()
    );
}

#[test]
fn wait_exit_sees_an_exit_its_restart_policy_will_restart() {
    let p = Project::new("r3-wait-exit");
    let mut b = p.bundle();
    b.add(
        "Svc",
        sh("echo READY; exec sleep 1000")
            .restart(Restart::on_failure(1).backoff(Duration::from_secs(600))),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    let mut tail = b.logs().tail();
    svc.kill(Signal::SIGKILL).unwrap();
    tail.until(|l| l.contains("restart 1 in"), PATIENCE)
        .unwrap();
    assert!(wait_for(PATIENCE, || svc.restart_pending()));
    let status = svc.wait_exit(PATIENCE);
    let _ = b.shutdown();
    assert_eq!(
        status,
        Some(ExitStatus::Signaled(9)),
        "its main process exited (its policy restarts it in 600 s), yet wait_exit said it \
         still runs"
    );
}

#[test]
fn a_restart_does_not_rewrite_the_startup_timeline() {
    let p = Project::new("r3-timeline");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    let before = b.timeline().unwrap().services[0].clone();
    svc.restart().unwrap();
    let after = b.timeline().unwrap().services[0].clone();
    b.shutdown().unwrap();
    assert_eq!(
        (before.started, before.process_started, before.ready),
        (after.started, after.process_started, after.ready),
        "the startup timeline (and timeline.svg, 'which service made startup slow') shows \
         the restart's steps instead of the startup's"
    );
}
