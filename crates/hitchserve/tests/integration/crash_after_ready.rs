//! A crash after startup is not silent.

use hitchserve::{Error, ExitStatus};

use crate::common::{sh, Project, PATIENCE};

#[test]
fn crash_after_ready_is_reported_by_check_time_travel_and_shutdown_and_its_logs_stay_readable() {
    let p = Project::new("crash");
    let mut b = p.bundle();
    b.add("Stable", sh("echo READY; exec sleep 1000")).unwrap();
    // Dies when told to, after it was ready.
    b.add(
        "Fragile",
        sh("echo READY; while [ ! -e die ]; do sleep 0.02; done; echo 'segfault, sort of' >&2; exit 7"),
    )
    .unwrap();
    b.startup().unwrap();
    b.check().unwrap();
    let fragile = b.service("Fragile").unwrap();
    std::fs::write(p.path("die"), "").unwrap();
    assert_eq!(fragile.wait_exit(PATIENCE), Some(ExitStatus::Code(7)));
    // The crashed service's handle comes at once, to read its logs.
    let crashed = b.service("Fragile").unwrap();
    assert!(crashed
        .logs()
        .err()
        .lines()
        .iter()
        .any(|l| l.contains("segfault")));
    assert!(b.service("Stable").unwrap().check().is_ok());
    // The next time travel reports it, once, after its jump; then the test may go on.
    let before = b.now();
    assert!(matches!(
        b.time_travel(std::time::Duration::from_secs(3600)),
        Err(Error::ServiceExited { .. })
    ));
    assert!(
        b.now().duration_since(before) >= hitchserve::jiff::SignedDuration::from_secs(3600),
        "the jump that reported the crash was not made"
    );
    b.time_travel(std::time::Duration::from_secs(60)).unwrap();
    // check() reports it every time it is asked.
    for _ in 0..2 {
        let err = b.check().unwrap_err();
        assert!(
            matches!(&err, Error::ServiceExited { service, status: ExitStatus::Code(7), last_lines, .. }
                if service == "Fragile" && last_lines.iter().any(|l| l.contains("segfault"))),
            "{err:?}"
        );
        assert!(fragile.check().is_err());
    }
    assert!(b
        .logs()
        .err()
        .lines()
        .iter()
        .any(|l| l.contains("`Fragile` exited unexpectedly (exit code 7)")));
}

#[test]
fn an_unreported_crash_fails_shutdown() {
    let p = Project::new("crash-shutdown");
    let mut b = p.bundle();
    b.add(
        "Fragile",
        sh("echo READY; while [ ! -e die ]; do sleep 0.02; done; exit 1"),
    )
    .unwrap();
    b.startup().unwrap();
    let fragile = b.service("Fragile").unwrap();
    std::fs::write(p.path("die"), "").unwrap();
    assert!(fragile.wait_exit(PATIENCE).is_some());
    assert!(matches!(b.shutdown(), Err(Error::ServiceExited { .. })));
}

/// A crash is still a crash when shutdown begins before its pipes are drained (here a
/// daemon it left behind keeps its stdout open).
#[test]
fn a_crash_just_before_shutdown_is_still_reported() {
    let p = Project::new("crash-then-stop");
    let mut b = p.bundle();
    b.add(
        "Leaky",
        sh(concat!(
            "(setsid sh -c 'exec sleep 1000' &); ",
            "echo READY; while [ ! -e die ]; do sleep 0.02; done; exit 3"
        )),
    )
    .unwrap();
    b.startup().unwrap();
    let leaky = b.service("Leaky").unwrap();
    let pid = leaky.pid().unwrap();
    std::fs::write(p.path("die"), "").unwrap();
    assert!(crate::common::wait_gone(pid, PATIENCE));
    let err = b.shutdown().unwrap_err();
    assert!(
        matches!(&err, Error::ServiceExited { service, status: ExitStatus::Code(3), .. } if service == "Leaky"),
        "{err:?}"
    );
    assert!(
        b.check().is_err(),
        "check() reports it every time, also after shutdown"
    );
}

/// A crash the service's own `check()` told is handled: `shutdown` doesn't report it again
/// (a test that killed a service and checked the crash failed its teardown with it, where
/// the bundle's `check()` counted); `crashed()` only looks, and leaves it to `shutdown`.
#[test]
fn a_crash_told_by_the_services_check_is_not_reported_again_by_shutdown() {
    for told in [true, false] {
        let p = Project::new("crash-told");
        let mut b = p.bundle();
        b.add("Web", sh("echo READY; exec sleep 1000")).unwrap();
        b.startup().unwrap();
        let web = b.service("Web").unwrap();
        web.kill(hitchserve::Signal::SIGKILL).unwrap();
        assert!(web.crashed().is_some());
        if told {
            assert!(matches!(web.check(), Err(Error::ServiceExited { .. })));
            // Every time it is asked.
            assert!(web.check().is_err());
            b.shutdown().unwrap();
        } else {
            assert!(matches!(b.shutdown(), Err(Error::ServiceExited { .. })));
        }
    }
}
