//! The run directory is private to the user, but for what a service that runs as another user
//! must reach; secrets never reach a log or an error.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use hitchserve::{
    services::{MariaDb, Postgres},
    Error,
};

use crate::common::{sh, Project, PATIENCE};

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Whether `nobody` can read `path` (with `runuser`, as root).
fn nobody_can_read(path: &std::path::Path) -> bool {
    Command::new("runuser")
        .args(["-u", "nobody", "--", "cat"])
        .arg(path)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn logs_are_private_to_the_user_who_runs_the_bundle() {
    let p = Project::new("private-logs");
    let mut b = p.bundle();
    b.add(
        "Talk",
        sh("echo 'the secret is 42'; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.startup().unwrap();
    let run = b.run_dir().unwrap().to_path_buf();
    b.shutdown().unwrap();
    let all_log = run.join("logs").join("all.log");
    assert!(std::fs::read_to_string(&all_log)
        .unwrap()
        .contains("the secret is 42"));
    assert_eq!(mode(&all_log), 0o600);
    assert_eq!(mode(&run.join("logs")), 0o700);
    // Others may pass through (a database run as `postgres` must), never list.
    assert_eq!(mode(&run), 0o711);
    assert_eq!(mode(run.parent().unwrap()), 0o711);
    assert_eq!(mode(&p.path(".hitchserve")), 0o711);
    if is_root() {
        assert!(!nobody_can_read(&all_log));
    }
}

#[test]
fn a_service_run_as_another_user_has_its_own_directory_and_fake_time() {
    if !is_root() {
        eprintln!("skipped: only root can run a service as another user");
        return;
    }
    let p = Project::new("user-dir");
    // Passing through is enough: the project need not be readable by the service's user.
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut b = p.bundle();
    b.add(
        "Nobody",
        sh("date +%Y > {run}/{service}/year && cat {run}/{service}/year; echo READY; exec sleep 1000")
            .user("nobody"),
    )
    .unwrap();
    let year_now: i32 = jiff::ZonedDateTime::now().year().into();
    b.time_travel(Duration::from_secs(3660 * 86_400)).unwrap();
    b.startup().unwrap();
    let own = b.run_dir().unwrap().join("Nobody");
    let meta = std::fs::metadata(&own).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    let year: i32 = b.service("Nobody").unwrap().logs().lines()[0]
        .trim()
        .parse()
        .unwrap();
    assert!(
        year >= year_now + 9,
        "the service saw {year}, not a faked year"
    );
}

/// The run directory is there before a service that names `{run}` starts — with time
/// travel off too (then nothing else made it before the services started: it was the log
/// writer's, made meanwhile) — and what the service makes in it is its own doing (a
/// `mkdir {run}/{service}` of its own works).
#[test]
fn a_service_that_names_the_run_directory_finds_it_there() {
    for time_travel in [true, false] {
        let p = Project::new("own-dir");
        let mut b = p.bundle();
        if !time_travel {
            b = b.without_time_travel();
        }
        b.add(
            "Flag",
            sh("mkdir {run}/{service} && touch {run}/{service}.ready; exec sleep 1000")
                .ready(hitchserve::Ready::file("{run}/{service}.ready")),
        )
        .unwrap();
        b.startup()
            .unwrap_or_else(|e| panic!("time travel {time_travel}: {e}"));
        let run = b.run_dir().unwrap();
        assert!(run.join("Flag").is_dir(), "time travel {time_travel}");
        b.shutdown().unwrap();
    }
}

#[test]
fn a_project_the_service_user_cannot_reach_is_refused_before_anything_starts() {
    if !is_root() {
        eprintln!("skipped: only root can run a service as another user");
        return;
    }
    let p = Project::new("unreachable");
    let private = p.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut b = hitchserve::Bundle::new(private.join(".")).startup_timeout(PATIENCE);
    std::fs::create_dir(private.join("app")).unwrap();
    b.add("First", sh("echo READY; exec sleep 1000")).unwrap();
    b.add(
        "Nobody",
        sh("echo READY; exec sleep 1000")
            .user("nobody")
            .directory("app")
            .needs(["First"]),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    match &err {
        Error::UnreachableForUser {
            service,
            user,
            blocked,
            ..
        } => {
            assert_eq!(service, "Nobody");
            assert_eq!(user, "nobody");
            assert_eq!(blocked, &std::fs::canonicalize(&private).unwrap());
        }
        other => panic!("expected UnreachableForUser, got {other:?}"),
    }
    // Refused before anything started: no line from the first service.
    assert!(b.logs().lines().iter().all(|l| !l.contains("READY")));
}

#[test]
fn a_failing_create_user_never_shows_the_password() {
    let p = Project::new("pg-secret");
    let mut b = p.bundle();
    let pw = "s3cret-Pa55word";
    // CREATE USER fails: names starting with `pg_` are reserved.
    b.add(
        "Postgres",
        Postgres::new().user("pg_app", pw).service().unwrap(),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    let message = err.to_string();
    assert!(message.contains("Postgres"), "{message}");
    assert!(
        !message.contains(pw),
        "the password is in the error: {message}"
    );
    let run = b.run_dir().unwrap().to_path_buf();
    let logged = b.logs().lines().join("\n");
    assert!(logged.contains("is reserved"), "{logged}");
    assert!(
        !logged.contains(pw),
        "the password is in the logs: {logged}"
    );
    drop(b);
    let all_log = std::fs::read(run.join("logs").join("all.log")).unwrap();
    assert!(!String::from_utf8_lossy(&all_log).contains(pw));
}

#[test]
fn a_failing_mariadb_create_user_never_shows_the_password() {
    let p = Project::new("mariadb-secret");
    let mut b = p.bundle();
    let pw = "s3cret-Pa55word";
    // CREATE USER fails: the name is longer than MariaDB allows (128 characters).
    let name = "a".repeat(300);
    b.add("MariaDb", MariaDb::new().user(&name, pw).service().unwrap())
        .unwrap();
    let err = b.startup().unwrap_err();
    let message = err.to_string();
    assert!(message.contains("MariaDb"), "{message}");
    assert!(
        !message.contains(pw),
        "the password is in the error: {message}"
    );
    let run = b.run_dir().unwrap().to_path_buf();
    let logged = b.logs().lines().join("\n");
    assert!(logged.contains("too long for user name"), "{logged}");
    assert!(
        !logged.contains(pw),
        "the password is in the logs: {logged}"
    );
    drop(b);
    let all_log = std::fs::read(run.join("logs").join("all.log")).unwrap();
    assert!(!String::from_utf8_lossy(&all_log).contains(pw));
}

/// A user whose only way into a directory would be a supplementary group (made once).
fn member_of_a_group() -> (u32, u32) {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        if nix::unistd::Group::from_name("hs-grp").unwrap().is_none() {
            assert!(Command::new("groupadd")
                .args(["--system", "hs-grp"])
                .status()
                .unwrap()
                .success());
        }
        if nix::unistd::User::from_name("hs-member").unwrap().is_none() {
            assert!(Command::new("useradd")
                .args(["--system", "--no-create-home", "-G", "hs-grp", "hs-member"])
                .status()
                .unwrap()
                .success());
        }
    });
    let grp = nix::unistd::Group::from_name("hs-grp").unwrap().unwrap();
    let user = nix::unistd::User::from_name("hs-member").unwrap().unwrap();
    (user.uid.as_raw(), grp.gid.as_raw())
}

#[test]
fn a_supplementary_group_does_not_count_services_run_without_one() {
    if !is_root() {
        eprintln!("skipped: only root can run a service as another user");
        return;
    }
    let (_, grp) = member_of_a_group();
    let p = Project::new("supplementary");
    let dir = p.path("grouped");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(grp)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(PATIENCE);
    b.add(
        "Member",
        sh("echo READY; exec sleep 1000").user("hs-member"),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::UnreachableForUser { service, .. } if service == "Member"),
        "{err:?}"
    );
}

/// `startup`'s error for a bundle of one trivial service in `p`.
fn startup_error(p: &Project) -> String {
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    let e = b.startup().unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e:?}");
    e.to_string()
}

/// The project directory is trusted (whoever can write it can change what its services
/// run): one writable by everyone (GitLab's runners clone with umask 0000) or, under root,
/// one owned by a user (`sudo` in a checkout, a CI container on a mounted workspace) is used,
/// with a `.hitchserve` of our own modes — or its owner's, left as it is. Another user's
/// `.hitchserve` is not.
#[test]
fn a_project_of_any_mode_is_used_but_another_users_state_directory_is_not() {
    let p = Project::new("open-project");
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    b.shutdown().unwrap();
    assert_eq!(mode(&p.path(".hitchserve")), 0o711);
    assert_eq!(
        hitchserve::state_dir(&p.dir).unwrap(),
        std::fs::canonicalize(&p.dir).unwrap().join(".hitchserve")
    );
    if is_root() {
        // A user's checkout, where that user ran the tests before.
        let theirs = Project::new("their-project");
        std::fs::create_dir(theirs.path(".hitchserve")).unwrap();
        for d in [&theirs.dir, &theirs.path(".hitchserve")] {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        let mut b = theirs.bundle();
        b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
        b.startup().unwrap();
        b.shutdown().unwrap();
        // A third user's `.hitchserve` in our project: refused.
        let planted = Project::new("planted-owner");
        std::fs::create_dir(planted.path(".hitchserve")).unwrap();
        std::os::unix::fs::chown(planted.path(".hitchserve"), Some(65534), None).unwrap();
        let e = startup_error(&planted);
        assert!(e.contains("is owned by uid 65534"), "{e}");
    }
}

#[test]
fn a_link_planted_in_the_state_directory_is_never_followed() {
    let victim = Project::new("victim");
    std::fs::create_dir(victim.path("keep")).unwrap();
    std::fs::set_permissions(&victim.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // `.hitchserve` itself a link.
    let p = Project::new("planted-state");
    std::os::unix::fs::symlink(&victim.dir, p.path(".hitchserve")).unwrap();
    let e = startup_error(&p);
    assert!(e.contains("symbolic link"), "{e}");
    // `runs` a link inside a real `.hitchserve`.
    let p = Project::new("planted-runs");
    std::fs::create_dir(p.path(".hitchserve")).unwrap();
    std::os::unix::fs::symlink(&victim.dir, p.path(".hitchserve/runs")).unwrap();
    let e = startup_error(&p);
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(mode(&victim.dir), 0o755, "the link's target keeps its mode");
    assert!(
        victim.path("keep").is_dir(),
        "nothing is pruned through the link"
    );
    assert_eq!(std::fs::read_dir(&victim.dir).unwrap().count(), 1);
    // `.gitignore` a link to a file that doesn't exist yet: never created through it.
    let p = Project::new("planted-ignore");
    std::fs::create_dir(p.path(".hitchserve")).unwrap();
    let target = victim.path("made-by-us");
    std::os::unix::fs::symlink(&target, p.path(".hitchserve/.gitignore")).unwrap();
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    b.shutdown().unwrap();
    assert!(!target.exists(), "written through the link");
}
