//! Sub-commands run in their service's environment, directory and fake time.

use std::time::Duration;

use hitchserve::{Error, ExitStatus};

use crate::common::{sh, Project};

const SHOW: &str = "import os, sys, time\nprint(os.environ.get('APP_MODE'), os.getcwd(), time.time(), sys.stdin.read())";

#[test]
fn a_subcommand_inherits_env_directory_and_fake_time_and_leaves_the_caller_where_it_was() {
    let p = Project::new("sub-inherit");
    std::fs::create_dir_all(p.path("app")).unwrap();
    let mut b = p.bundle();
    b.add(
        "App",
        sh("echo READY; exec sleep 1000")
            .directory("app")
            .env("APP_MODE", "testing"),
    )
    .unwrap();
    b.startup().unwrap();
    let cwd_before = std::env::current_dir().unwrap();
    b.time_travel(Duration::from_secs(3 * 86_400)).unwrap();
    let app = b.service("App").unwrap();
    let out = app
        .subcommand(["python3", "-c", SHOW])
        .stdin("piped in")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[0], "testing");
    assert_eq!(
        fields[1],
        std::fs::canonicalize(p.path("app"))
            .unwrap()
            .to_str()
            .unwrap()
    );
    let t: f64 = fields[2].parse().unwrap();
    let now = b.now().as_nanosecond() as f64 / 1e9;
    assert!((t - now).abs() < 5.0, "sub-command time {t}, bundle {now}");
    assert_eq!(fields[3..].join(" "), "piped in");
    assert_eq!(std::env::current_dir().unwrap(), cwd_before);

    // .env() and .arg() add to what it inherits.
    let out = app
        .subcommand(["sh", "-c"])
        .arg("echo $APP_MODE $1")
        .arg("sh")
        .arg("extra")
        .env("APP_MODE", "override")
        .output()
        .unwrap();
    assert_eq!(out.stdout_text().trim(), "override extra");
}

#[test]
fn run_fails_with_the_command_and_status_and_output_captures_whatever_happened() {
    let p = Project::new("sub-fail");
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let app = b.service("App").unwrap();
    app.subcommand(["true"]).run().unwrap();
    let err = app.subcommand(["sh", "-c", "exit 5"]).run().unwrap_err();
    assert!(
        matches!(&err, Error::SubcommandFailed { service, status: ExitStatus::Code(5), .. } if service == "App"),
        "{err:?}"
    );
    assert!(err.to_string().contains("sh -c exit 5"), "{err}");
    let out = app
        .subcommand(["sh", "-c", "echo out; echo oops >&2; exit 2"])
        .output()
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(2));
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(out.stderr_text(), "oops\n");
    let err = app
        .subcommand(["sh", "-c", "echo why >&2; exit 1"])
        .checked_output()
        .unwrap_err();
    assert!(err.to_string().contains("why"), "{err}");
    assert!(matches!(
        app.subcommand(["no-such-tool-anywhere"]).run(),
        Err(Error::CommandNotFound { .. })
    ));
}
