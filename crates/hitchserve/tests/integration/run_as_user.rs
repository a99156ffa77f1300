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

const SECRET_VAR: &str = "HITCHSERVE_TEST_CI_TOKEN";

/// The test's environment holds a secret (a CI token): a service run as another user gets
/// its locale and PATH and what it was given, never the rest (another local user who gets
/// that user's code running could read its environment).
#[test]
fn a_service_run_as_another_user_does_not_get_the_tests_secrets() {
    if !is_root() {
        eprintln!("skipped: only root can run a service as another user");
        return;
    }
    crate::common::helper_passes(
        "run_as_user::helper_secret_environment",
        &[(SECRET_VAR, "s3cret-token"), ("LC_TIME", "C.UTF-8")],
        "checked the environments",
    );
}

#[test]
#[ignore = "run by a_service_run_as_another_user_does_not_get_the_tests_secrets"]
fn helper_secret_environment() {
    let p = Project::new("run-as-env");
    let mut b = p.bundle();
    // No exec after READY (a shell execs its last command): a process in the middle of
    // an exec shows an empty environment for a moment.
    let script = "echo READY; while :; do sleep 1000; done";
    b.add(
        "Nobody",
        sh(script)
            .user("nobody")
            .env("GIVEN", "on purpose")
            .env("HOME", "/tmp"),
    )
    .unwrap();
    b.add("Mine", sh(script)).unwrap();
    b.startup().unwrap();
    let env_of = |name: &str| {
        let pid = b.service(name).unwrap().process().unwrap().pid();
        std::fs::read(format!("/proc/{pid}/environ")).unwrap()
    };
    let has = |env: &[u8], entry: &str| env.split(|&c| c == 0).any(|e| e == entry.as_bytes());
    let theirs = env_of("Nobody");
    assert!(!has(&theirs, &format!("{SECRET_VAR}=s3cret-token")));
    assert!(has(&theirs, "GIVEN=on purpose"));
    assert!(has(&theirs, "LC_TIME=C.UTF-8"));
    assert!(has(&theirs, "USER=nobody"));
    // A `HOME` it was given wins over the user's.
    assert!(has(&theirs, "HOME=/tmp"));
    let path = std::env::var("PATH").unwrap();
    assert!(has(&theirs, &format!("PATH={path}")));
    // The test's own user's services get the whole of it, as any child would.
    assert!(has(&env_of("Mine"), &format!("{SECRET_VAR}=s3cret-token")));
    b.shutdown().unwrap();
    println!("checked the environments");
}
