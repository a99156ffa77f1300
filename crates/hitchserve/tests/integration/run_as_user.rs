//! Services (and their sub-commands) can run as another user: PostgreSQL refuses root.

use hitchserve::{Error, Service};

use crate::common::{sh, Project};

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

#[test]
fn a_service_and_its_subcommands_run_as_the_user_asked_for() {
    let p = Project::new("run-as");
    let mut b = p.bundle();
    b.add(
        "Nobody",
        sh("echo \"$(id -un) $HOME\"; echo READY; exec sleep 1000").user("nobody"),
    )
    .unwrap();
    let started = b.startup();
    if !is_root() {
        // Only root may switch users: the error says the service could not start.
        assert!(matches!(started, Err(Error::Spawn { .. })), "{started:?}");
        return;
    }
    started.unwrap();
    // Starting it did not make the test process non-dumpable (as a child sharing its
    // memory that switched users would: no core dumps, no debugger, /proc files root's).
    // SAFETY: prctl without pointers.
    assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE) }, 1);
    let svc = b.service("Nobody").unwrap();
    let first = svc.logs().lines().remove(0);
    assert!(first.starts_with("nobody "), "{first}");
    assert_eq!(svc.process().unwrap().username().unwrap(), "nobody");
    let out = svc.subcommand(["id", "-un"]).checked_output().unwrap();
    assert_eq!(out.stdout_text().trim(), "nobody");
}

#[test]
fn an_unknown_user_is_refused_before_anything_starts() {
    let p = Project::new("run-as-unknown");
    let mut b = p.bundle();
    b.add(
        "Ghost",
        Service::new(["true"]).user("no-such-user-hitchserve"),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchUser { service, .. } if service == "Ghost"),
        "{err:?}"
    );
    assert!(err.to_string().contains("useradd"), "{err}");
}
