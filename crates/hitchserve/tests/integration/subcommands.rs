//! Sub-commands run in their service's environment, directory and fake time.

use std::time::Duration;

use hitchserve::{Error, ExitStatus};

use crate::common::{sh, Project, Release};

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

/// Run `script` as a sub-command of a started bundle's `Svc` by `output()`, with a
/// `Release` armed; the pid the script wrote to `bgpid`, and what the call returned.
fn leave_behind(
    p: &Project,
    b: &hitchserve::Bundle,
    script: &str,
) -> (u32, hitchserve::Result<hitchserve::Output>, Release) {
    let release = Release::armed(p);
    let sub = b.service("Svc").unwrap().subcommand(["sh", "-c", script]);
    let result = sub.output();
    let bg = std::fs::read_to_string(p.dir.join("bgpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (bg, result, release)
}

/// A background child an `output()` sub-command leaves in its process group dies when the
/// sub-command exits, and `output()` returns then, not once the child lets go of its stdout
/// (it waited for the child: as long as the child lived).
#[test]
fn an_output_subcommand_s_background_child_dies_with_it_and_does_not_hold_its_output() {
    let p = Project::new("sub-leftover");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let d = p.dir.display();
    let script = format!(
        "(until [ -e {d}/release ]; do sleep 0.05; done; echo x > {d}/released) & \
         echo $! > {d}/bgpid; echo started"
    );
    let (bg, result, release) = leave_behind(&p, &b, &script);
    drop(release);
    let out = result.unwrap();
    assert_eq!(out.stdout_text(), "started\n");
    assert!(crate::common::wait_gone(bg, crate::common::PATIENCE));
    assert!(
        !p.dir.join("released").exists(),
        "the background child outlived its sub-command"
    );
    b.shutdown().unwrap();
}

/// A process that left the sub-command's group (`setsid`) and holds its stdout: `output()`
/// returns with what the sub-command wrote a moment after it exits; the process, which
/// carries the run's marker, dies with the bundle.
#[test]
fn output_returns_though_a_process_that_left_the_group_holds_the_pipe() {
    let p = Project::new("sub-escapee");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let d = p.dir.display();
    let script = format!(
        "setsid sh -c 'echo $$ > {d}/bgpid.tmp; mv {d}/bgpid.tmp {d}/bgpid; \
         until [ -e {d}/release ]; do sleep 0.05; done' & \
         until [ -e {d}/bgpid ]; do sleep 0.01; done; echo started"
    );
    let (bg, result, release) = leave_behind(&p, &b, &script);
    let out = result.unwrap();
    assert_eq!(out.stdout_text(), "started\n");
    assert!(
        crate::common::is_alive(bg),
        "output() waited for the escaped process to end"
    );
    b.shutdown().unwrap();
    assert!(crate::common::wait_gone(bg, crate::common::PATIENCE));
    drop(release);
}

const TTY_VAR: &str = "HITCHSERVE_TEST_SUBCOMMAND_TTY";

#[test]
#[ignore = "helper: run by a_subcommand_that_uses_the_terminal_runs_by_run_and_fails_not_hangs_by_output"]
fn helper_subcommand_terminal() {
    let Some(dir) = std::env::var_os(TTY_VAR) else {
        return;
    };
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(crate::common::STARTUP_PATIENCE);
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    let tty = "stty -echo </dev/tty && stty echo </dev/tty && echo used-the-terminal";
    // run(): in the test's process group, the terminal's own, as a shell runs a command.
    svc.subcommand(["sh", "-c", tty]).run().unwrap();
    // output(): in a session of its own, with no terminal: it fails at once, saying so
    // itself — not stopped by the terminal and waited for for ever.
    let out = svc.subcommand(["sh", "-c", tty]).output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr_text().contains("/dev/tty"), "{out:?}");
    // Also when the one that touches it is a child its leader waits for, the leader
    // ignoring the terminal's stop signals (the group then hung on the stopped child).
    let nested = "trap '' TTOU TTIN; sh -c 'stty -echo </dev/tty'; echo leader-done";
    let out = svc.subcommand(["sh", "-c", nested]).output().unwrap();
    assert_eq!(out.stdout_text(), "leader-done\n", "{out:?}");
    b.shutdown().unwrap();
    println!("terminal helper done");
}

/// Under a terminal (`script` gives the helper one, as IPython or `pytest -s` has): a
/// sub-command that uses it (`stty`, a pager, a password prompt) works by `run()`, in the
/// test's process group; by `output()`, in a session of its own with no terminal, it fails
/// at once, saying so (in a mere process group of its own the terminal stopped it, and a
/// stopped process never exits: it hung).
#[test]
fn a_subcommand_that_uses_the_terminal_runs_by_run_and_fails_not_hangs_by_output() {
    let p = Project::new("sub-tty");
    let exe = std::env::current_exe().unwrap();
    let line = format!(
        "'{}' --exact subcommands::helper_subcommand_terminal --ignored --nocapture --test-threads=1",
        exe.display()
    );
    // A bound, should the wait hang again.
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "300", "script", "-qec", &line, "/dev/null"])
        .env(TTY_VAR, &p.dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("terminal helper done"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process that left an `output()` sub-command's group and holds its stdin unread: with
/// more input than a pipe holds, `output()` still returns once the sub-command has exited
/// (it waited for the feeding of its stdin: as long as that process lived).
#[test]
fn output_with_a_large_stdin_returns_though_a_process_that_left_holds_it() {
    let p = Project::new("sub-stdin-escapee");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let d = p.dir.display();
    let script = format!(
        "exec 3<&0; setsid sh -c 'echo $$ > {d}/bgpid.tmp; mv {d}/bgpid.tmp {d}/bgpid; \
         until [ -e {d}/release ]; do sleep 0.05; done' <&3 >/dev/null 2>&1 & \
         until [ -e {d}/bgpid ]; do sleep 0.01; done; echo started"
    );
    let release = Release::armed(&p);
    let out = b
        .service("Svc")
        .unwrap()
        .subcommand(["sh", "-c", &script])
        .stdin(vec![b'x'; 1 << 20])
        .output()
        .unwrap();
    assert_eq!(out.stdout_text(), "started\n");
    let bg: u32 = std::fs::read_to_string(p.dir.join("bgpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        crate::common::is_alive(bg),
        "output() waited for the process holding its stdin to end"
    );
    b.shutdown().unwrap();
    assert!(crate::common::wait_gone(bg, crate::common::PATIENCE));
    drop(release);
}

/// Helper for the test below: run, on whatever terminal it was given, a sub-command of a
/// service run as `nobody` that prints its own stat line.
#[test]
#[ignore = "helper, run on a terminal by the test below"]
fn helper_another_users_run_on_a_terminal() {
    let p = Project::new("run-tty-helper");
    std::fs::set_permissions(&p.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut b = p.bundle();
    b.add("Db", sh("echo READY; exec sleep 1000").user("nobody"))
        .unwrap();
    b.startup().unwrap();
    let svc = b.service("Db").unwrap();
    svc.subcommand(["sh", "-c", "echo STAT $(cat /proc/self/stat)"])
        .run()
        .unwrap();
    b.shutdown().unwrap();
}

/// `run()` of another user's sub-command (`psql` as `postgres`, under root) on the test's
/// terminal: in a session of its own, the terminal not its controlling one, so it can't
/// push keystrokes into the input of the shell the tests run from (TIOCSTI).
#[test]
fn another_users_run_never_gets_the_terminal_as_its_own() {
    if !crate::common::is_root() {
        eprintln!("skipped: only root runs services as another user");
        return;
    }
    let helper =
        crate::common::helper_process("subcommands::helper_another_users_run_on_a_terminal", &[]);
    let line = format!(
        "{} {}",
        helper.get_program().to_string_lossy(),
        helper
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let stat = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("STAT "))
        .unwrap_or_else(|| panic!("no stat line in {text}"));
    let tty = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(4))
        .unwrap();
    assert_eq!(tty, "0", "{stat}");
}
