//! Dependency conditions: wait for ready (default), for started, or for a one-shot service
//! (a migration) to complete successfully.

use hitchserve::{Error, ExitStatus, Service};

use crate::common::{sh, Project};

#[test]
fn a_migration_runs_to_completion_before_the_app_and_is_no_crash() {
    let p = Project::new("cond-completed");
    let mut b = p.bundle();
    b.add(
        "Migrate",
        Service::new([
            "sh",
            "-c",
            "echo migrating; sleep 0.2; echo 'CREATE TABLE done' > schema.txt; echo migrated",
        ]),
    )
    .unwrap();
    b.add(
        "App",
        sh("cat schema.txt; echo READY; exec sleep 1000").needs_completed(["Migrate"]),
    )
    .unwrap();
    b.startup().unwrap();
    let app = b.service("App").unwrap();
    assert_eq!(app.logs().lines(), vec!["CREATE TABLE done", "READY"]);
    let migrate = b.service("Migrate").unwrap();
    assert_eq!(migrate.exit_status(), Some(ExitStatus::Code(0)));
    b.check().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_failing_migration_fails_startup_with_its_last_lines() {
    let p = Project::new("cond-failed");
    let mut b = p.bundle();
    b.add(
        "Migrate",
        Service::new(["sh", "-c", "echo 'ERROR: relation exists' >&2; exit 3"]),
    )
    .unwrap();
    b.add(
        "App",
        sh("echo READY; exec sleep 1000").needs_completed(["Migrate"]),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    match &err {
        Error::OneShotFailed {
            service,
            status,
            last_lines,
            ..
        } => {
            assert_eq!(service, "Migrate");
            assert_eq!(*status, ExitStatus::Code(3));
            assert!(last_lines.iter().any(|l| l.contains("relation exists")));
        }
        other => panic!("wrong error: {other:?}"),
    }
    // Said as what it is: a one-shot that failed (it read "ready", then "exited
    // unexpectedly", then "exited before it was ready").
    assert!(
        err.to_string()
            .starts_with("one-shot service `Migrate` failed (exit code 3)"),
        "{err}"
    );
    let said = b.logs().lines();
    assert!(
        said.iter()
            .any(|l| l == "one-shot `Migrate` failed (exit code 3)"),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|l| l.contains("exited unexpectedly")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|l| l.starts_with("Migrate running after ")),
        "{said:?}"
    );
    assert!(
        b.service("App").unwrap().exit_status().is_none(),
        "App never started"
    );
}

#[test]
fn needs_started_does_not_wait_for_readiness() {
    let p = Project::new("cond-started");
    let mut b = p.bundle();
    // Slow only becomes ready once Eager has run: with `needs` this could never start.
    b.add(
        "Slow",
        sh("while [ ! -e eager.ran ]; do sleep 0.01; done; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.add(
        "Eager",
        sh("touch eager.ran; echo READY; exec sleep 1000").needs_started(["Slow"]),
    )
    .unwrap();
    b.startup().unwrap();
    let all = b.logs().lines();
    let at = |needle: &str| all.iter().position(|l| l.starts_with(needle)).unwrap();
    assert!(at("Starting Eager") < at("Slow ready"));
}

/// A one-shot service that completed counts as ready for a plain `needs`, even when the
/// dependent's other needs come later.
#[test]
fn a_completed_one_shot_satisfies_a_plain_need() {
    let p = Project::new("cond-oneshot-needs");
    let mut b = p.bundle();
    b.add("Migrate", Service::new(["true"]).one_shot()).unwrap();
    b.add("Db", sh("sleep 0.3; echo READY; exec sleep 1000"))
        .unwrap();
    b.add(
        "App",
        sh("echo READY; exec sleep 1000").needs(["Migrate", "Db"]),
    )
    .unwrap();
    b.startup().unwrap();
    assert!(b.service("App").unwrap().is_ready());
}

/// A one-shot service with a poststart hook is complete only once the hook has finished.
#[test]
fn a_one_shot_is_complete_only_after_its_poststart() {
    let p = Project::new("cond-oneshot-post");
    let mut b = p.bundle();
    b.add(
        "Seed",
        Service::new(["true"]).one_shot().poststart(|ctx| {
            ctx.run(["sh", "-c", "sleep 0.3; touch seeded"])?;
            Ok(())
        }),
    )
    .unwrap();
    b.add(
        "App",
        sh("test -e seeded && echo READY; exec sleep 1000").needs_completed(["Seed"]),
    )
    .unwrap();
    b.startup().unwrap();
    assert!(b.service("App").unwrap().is_ready());
}
