//! Bad definitions fail before anything starts, with a typed error naming the service.

use hitchserve::{Error, Service};

use crate::common::{sh, Project};

/// Startup must fail with `check`'s error, and no process of the run may have started.
fn fails_before_starting(
    p: &Project,
    b: &mut hitchserve::Bundle,
    check: impl Fn(&Error) -> bool,
) -> String {
    let marker = p.path("started");
    let err = b
        .startup()
        .expect_err("startup must refuse a bad definition");
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(
        !marker.exists(),
        "a service started despite a bad definition"
    );
    err.to_string()
}

fn starter(p: &Project) -> Service {
    sh(&format!(
        "touch {}; echo READY; exec sleep 1000",
        p.path("started").display()
    ))
}

#[test]
fn command_not_found_names_the_service_and_program() {
    let p = Project::new("notfound");
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("Bad", Service::new(["no-such-program-hitchserve", "x"]))
        .unwrap();
    let msg = fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::CommandNotFound { service, program, .. } if service == "Bad" && program == "no-such-program-hitchserve"),
    );
    assert!(msg.contains("`Bad`") && msg.contains("PATH"), "{msg}");
}

#[test]
fn command_is_looked_up_on_the_services_own_path() {
    let p = Project::new("ownpath");
    let bin = p.write("bin/my-tool", "#!/bin/sh\necho READY\nexec sleep 1000\n");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut b = p.bundle();
    let path = format!("{}:/usr/bin:/bin", p.path("bin").display());
    b.add(
        "Tool",
        Service::new(["my-tool"])
            .env("PATH", path)
            .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
}

#[test]
fn a_relative_program_path_is_taken_from_the_service_directory() {
    let p = Project::new("relprog");
    let bin = p.write("app/run.sh", "#!/bin/sh\necho READY\nexec sleep 1000\n");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut b = p.bundle();
    b.add(
        "App",
        Service::new(["./run.sh"])
            .directory("app")
            .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let mut b2 = p.bundle();
    b2.add("App", Service::new(["./run.sh"])).unwrap();
    assert!(matches!(b2.startup(), Err(Error::CommandNotFound { .. })));
}

#[test]
fn missing_directory_is_refused() {
    let p = Project::new("nodir");
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("Lost", Service::new(["true"]).directory("does/not/exist"))
        .unwrap();
    let msg = fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::DirectoryMissing { service, .. } if service == "Lost"),
    );
    assert!(msg.contains("does/not/exist"), "{msg}");
}

#[test]
fn a_file_given_as_a_directory_is_refused_as_such() {
    let p = Project::new("fileasdir");
    std::fs::write(p.path("notes.txt"), "not a directory").unwrap();
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("Odd", Service::new(["true"]).directory("notes.txt"))
        .unwrap();
    let msg = fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::NotADirectory { service, .. } if service == "Odd"),
    );
    assert!(
        msg.contains("notes.txt` is a file, not a directory"),
        "{msg}"
    );
}

#[test]
fn unknown_need_is_refused() {
    let p = Project::new("unknownneed");
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("App", Service::new(["true"]).needs(["Postgres"]))
        .unwrap();
    let msg = fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::UnknownNeed { service, need, .. } if service == "App" && need == "Postgres"),
    );
    assert!(
        msg.contains("`Good`"),
        "the message lists what the bundle has: {msg}"
    );
}

#[test]
fn a_needs_cycle_is_named() {
    let p = Project::new("cycle");
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("A", Service::new(["true"]).needs(["B"])).unwrap();
    b.add("B", Service::new(["true"]).needs(["C"])).unwrap();
    b.add("C", Service::new(["true"]).needs(["A"])).unwrap();
    let msg = fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::NeedsCycle { cycle } if cycle.len() == 4),
    );
    assert!(msg.contains("A -> B -> C -> A"), "{msg}");

    let mut b = p.bundle();
    b.add("Selfish", Service::new(["true"]).needs(["Selfish"]))
        .unwrap();
    let msg = b.startup().unwrap_err().to_string();
    assert!(msg.contains("Selfish -> Selfish"), "{msg}");
}

#[test]
fn duplicate_and_invalid_names_are_refused_when_added() {
    let p = Project::new("names");
    let mut b = p.bundle();
    b.add("App", Service::new(["true"])).unwrap();
    assert!(matches!(
        b.add("App", Service::new(["true"])),
        Err(Error::DuplicateService { service }) if service == "App"
    ));
    for bad in ["", "has space", "a/b", "-dash", "Hitch", &"x".repeat(65)] {
        let err = b.add(bad, Service::new(["true"])).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
    }
    for good in ["web-1", "db_2", "v1.0", "9lives"] {
        b.add(good, Service::new(["true"])).unwrap();
    }
}

#[test]
fn an_empty_command_is_refused() {
    let p = Project::new("empty");
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("Nothing", Service::new(Vec::<String>::new()))
        .unwrap();
    fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::EmptyCommand { service } if service == "Nothing"),
    );
    // An empty program is no program either (it was "command `` was not found").
    let p = Project::new("empty-program");
    let mut b = p.bundle();
    b.add("Good", starter(&p)).unwrap();
    b.add("Blank", Service::new([""])).unwrap();
    fails_before_starting(
        &p,
        &mut b,
        |e| matches!(e, Error::EmptyCommand { service } if service == "Blank"),
    );
}

#[test]
fn a_missing_project_directory_is_refused() {
    let p = Project::new("noproject");
    let mut b = hitchserve::Bundle::new(p.path("nope"));
    b.add("App", Service::new(["true"])).unwrap();
    assert!(matches!(b.startup(), Err(Error::ProjectDir { .. })));
}

/// A startup refused for a bad definition can be tried again once the cause is fixed, and
/// that run works fully: waits, shutdown, no process left.
#[test]
fn startup_can_be_retried_after_a_bad_definition_is_fixed() {
    let p = Project::new("retry");
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000").directory("sub"))
        .unwrap();
    assert!(matches!(b.startup(), Err(Error::DirectoryMissing { .. })));
    std::fs::create_dir_all(p.path("sub")).unwrap();
    b.startup().unwrap();
    let app = b.service("App").unwrap();
    let line = app
        .logs()
        .tail()
        .lines_back(1)
        .until(|l| l == "READY", crate::common::PATIENCE)
        .unwrap();
    assert_eq!(line.text(), "READY");
    let pid = app.pid().unwrap();
    b.shutdown().unwrap();
    assert!(crate::common::wait_gone(pid, crate::common::PATIENCE));
}

/// What no program could be given — a NUL byte in an argument or an environment value, a
/// variable name that is empty or holds `=`, a port with no name — is refused when the
/// service is added, naming it (a name with `=` started, and the service read another
/// variable than the one set; a NUL failed at spawn with "nul byte found in provided data").
#[test]
fn settings_no_program_could_be_given_are_refused_when_added() {
    let p = Project::new("bad-settings");
    for (service, says) in [
        (Service::new(["echo", "a\0b"]), "argument 1 of the command"),
        (sh("true").env("A=B", "x"), "`A=B` can't be the name"),
        (sh("true").env("", "x"), "`` can't be the name"),
        (
            sh("true").env("A", "x\0y"),
            "the value of the environment variable `A`",
        ),
        (sh("true").port(""), "a port's name is empty"),
        (sh("true").user("no\0body"), "can't be a user's name"),
        (sh("true").user(""), "can't be a user's name"),
        (sh("true").directory("a\0b"), "holds a NUL byte"),
    ] {
        let mut b = p.bundle();
        let e = b.add("Odd", service).unwrap_err();
        assert!(matches!(e, Error::InvalidSetting { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("`Odd`") && text.contains(says), "{text}");
        assert!(!text.contains("x\0y"), "a value is never shown: {text}");
    }
    // A sub-command's too: not "service could not be started".
    let mut b = p.bundle();
    b.add("Up", starter(&p)).unwrap();
    b.startup().unwrap();
    let svc = b.service("Up").unwrap();
    let e = svc.subcommand(["echo", "a\0b"]).run().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidSetting { problem, .. } if problem.contains("a sub-command")),
        "{e:?}"
    );
    let e = svc.subcommand(["true"]).env("A=B", "1").run().unwrap_err();
    assert!(matches!(e, Error::InvalidSetting { .. }), "{e:?}");
    b.shutdown().unwrap();
}
