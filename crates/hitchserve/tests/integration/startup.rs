//! Startup honours `needs` and starts in parallel whatever can start in parallel.

use hitchserve::{Ready, Service};

use crate::common::{sh, Project, PATIENCE};

/// A -> (B, C) -> D. B and C only become ready once both are running, so the test can
/// only pass if the two middle services run at the same time; order is read from the
/// services' own record and from the bundle's log.
#[test]
fn diamond_starts_in_dependency_order_with_middle_services_in_parallel() {
    let p = Project::new("diamond");
    let mut b = p.bundle();
    let record = |name: &str| format!("echo {name} >> order.txt");
    b.add(
        "A",
        sh(&format!("{}; echo READY; exec sleep 1000", record("A"))),
    )
    .unwrap();
    for (me, other) in [("B", "C"), ("C", "B")] {
        let script = format!(
            "{}; touch {me}.up; while [ ! -e {other}.up ]; do sleep 0.01; done; echo READY; exec sleep 1000",
            record(me)
        );
        b.add(me, sh(&script).needs(["A"])).unwrap();
    }
    b.add(
        "D",
        sh(&format!("{}; echo READY; exec sleep 1000", record("D"))).needs(["B", "C"]),
    )
    .unwrap();
    b.startup().unwrap();

    let order = std::fs::read_to_string(p.path("order.txt")).unwrap();
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], "A");
    assert_eq!(order[3], "D");

    // The bundle's own lines tell the same story.
    let log = b.logs().lines();
    let at = |needle: &str| {
        log.iter()
            .position(|l| l == needle)
            .unwrap_or_else(|| panic!("no line `{needle}` in {log:#?}"))
    };
    let a_ready = log.iter().position(|l| l.starts_with("A ready")).unwrap();
    let b_ready = log.iter().position(|l| l.starts_with("B ready")).unwrap();
    let c_ready = log.iter().position(|l| l.starts_with("C ready")).unwrap();
    assert!(at("Starting B") > a_ready && at("Starting C") > a_ready);
    assert!(at("Starting D") > b_ready && at("Starting D") > c_ready);
    b.shutdown().unwrap();
}

#[test]
fn readiness_is_seen_on_stderr_too_and_each_line_is_whole() {
    let p = Project::new("stderr-ready");
    let mut b = p.bundle();
    // The ready line arrives in two writes; the check must see it once, whole.
    b.add(
        "Split",
        Service::new([
            "sh",
            "-c",
            "printf 'REA' >&2; sleep 0.2; printf 'DY\\n' >&2; exec sleep 1000",
        ])
        .ready_when(|line| line == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Split").unwrap();
    assert_eq!(svc.logs().err().lines(), vec!["READY"]);
    assert!(svc.logs().out().is_empty());
    b.shutdown().unwrap();
}

#[test]
fn a_service_without_a_check_is_ready_once_started_and_gets_its_env_and_directory() {
    let p = Project::new("env-dir");
    std::fs::create_dir_all(p.path("sub")).unwrap();
    let mut b = p.bundle();
    b.add(
        "Env",
        Service::new([
            "sh",
            "-c",
            "echo \"$GREETING from $(pwd)\"; echo done; exec sleep 1000",
        ])
        .env("GREETING", "hello")
        .directory("sub")
        .ready(Ready::line_contains("done")),
    )
    .unwrap();
    b.add("Plain", Service::new(["sleep", "1000"])).unwrap();
    b.startup().unwrap();
    let line = &b.service("Env").unwrap().logs().out().lines()[0];
    let expected_dir = std::fs::canonicalize(p.path("sub")).unwrap();
    assert_eq!(line, &format!("hello from {}", expected_dir.display()));
    assert!(b.service("Plain").unwrap().pid().is_some());
    b.shutdown().unwrap();
}

#[test]
fn commands_are_argv_not_shell_strings() {
    let p = Project::new("argv");
    let mut b = p.bundle();
    // With a shell, `$HOME; echo injected` would expand and run a second command.
    b.add(
        "Echo",
        Service::new([
            "sh",
            "-c",
            "echo \"$1\"; echo READY; exec sleep 1000",
            "sh",
            "$HOME; echo injected",
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    assert_eq!(
        b.service("Echo").unwrap().logs().out().lines(),
        vec!["$HOME; echo injected", "READY"]
    );
}

/// The ready line's two writes are further apart than the quiet period after which tails
/// see a partial line (the service waits for a file the test writes only once a tail has
/// seen that partial): readiness still sees the line once, whole, and only it.
#[test]
fn a_ready_line_split_by_a_long_pause_is_still_seen_whole() {
    use std::sync::{Arc, Mutex};
    let p = Project::new("ready-split-pause");
    let mut b = p.bundle();
    let checked = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen_by_check = Arc::clone(&checked);
    b.add(
        "Slow",
        Service::new([
            "python3",
            "-c",
            "import os, sys, time\nsys.stdout.write('READY '); sys.stdout.flush()\nwhile not os.path.exists('rest'): time.sleep(0.01)\nsys.stdout.write('NOW\\n'); sys.stdout.flush()\ntime.sleep(1000)",
        ])
        .ready_when(move |line| {
            seen_by_check.lock().unwrap().push(line.to_owned());
            line == "READY NOW"
        }),
    )
    .unwrap();
    let logs = b.logs();
    let rest = p.path("rest");
    let writer = std::thread::spawn(move || {
        let partial = logs.tail().until(|l| l == "READY ", PATIENCE);
        // Written even if the partial never showed, so startup ends either way.
        std::fs::write(rest, "").unwrap();
        partial.map(|l| l.is_partial())
    });
    b.startup().unwrap();
    assert!(writer.join().unwrap().unwrap(), "a tail saw `READY ` first");
    assert_eq!(*checked.lock().unwrap(), vec!["READY NOW"]);
    assert_eq!(b.service("Slow").unwrap().logs().lines(), vec!["READY NOW"]);
    b.shutdown().unwrap();
}

/// How many services `a_long_chain_of_immediate_services_starts_on_a_2_mib_thread` chains.
/// Each is started by the previous one's readiness on the same thread (no thread hop): that
/// must not recurse once per service (it did: the first redesign overflowed at 650).
const LONG_CHAIN: usize = 750;

/// The body of the test below, run in a child test process (a stack overflow aborts the
/// whole process): `S0` is ready on a line, read by its supervisor thread (2 MiB, as set by
/// `RUST_MIN_STACK`), which then starts `S1`..`S749`, each ready at once, one after another.
#[test]
#[ignore = "helper: run by a_long_chain_of_immediate_services_starts_on_a_2_mib_thread"]
fn long_chain_child() {
    let p = Project::new("long-chain");
    let mut b = p.bundle();
    b.add("S0", sh("echo READY; exec sleep 1000")).unwrap();
    for i in 1..LONG_CHAIN {
        b.add(
            format!("S{i}"),
            Service::new(["sleep", "1000"]).needs([format!("S{}", i - 1)]),
        )
        .unwrap();
    }
    b.startup().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_long_chain_of_immediate_services_starts_on_a_2_mib_thread() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "startup::long_chain_child",
            "--ignored",
            "--nocapture",
        ])
        .env("RUST_MIN_STACK", (2 * 1024 * 1024).to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a chain of {LONG_CHAIN} services failed to start ({}): {}",
        out.status,
        stderr
            .lines()
            .filter(|l| l.contains("overflow"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// `progress_every(Duration::ZERO)` turns the progress lines off (it logged one per
/// wake-up: 130,000 lines in 0.2 s).
#[test]
fn progress_every_zero_is_off() {
    let p = Project::new("progress-zero");
    let mut b = p.bundle().progress_every(std::time::Duration::ZERO);
    b.add(
        "Slow",
        sh("until [ -e go ]; do sleep 0.01; done; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.add(
        "Opener",
        sh("sleep 0.2; touch go; echo READY; exec sleep 1000"),
    )
    .unwrap();
    b.startup().unwrap();
    let lines = b.logs().lines();
    assert!(
        !lines.iter().any(|l| l.contains("still starting")),
        "{lines:?}"
    );
    b.shutdown().unwrap();
}

/// `progress_every(Duration::MAX)` is a progress line never (it panicked: an interval too
/// long to add to now).
#[test]
fn progress_every_longer_than_time_itself_is_never_due() {
    let p = Project::new("progress-max");
    let mut b = p.bundle().progress_every(std::time::Duration::MAX);
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let lines = b.logs().lines();
    assert!(
        !lines.iter().any(|l| l.contains("still starting")),
        "{lines:?}"
    );
    b.shutdown().unwrap();
}

/// An observer looks at a bundle from another thread while its startup runs: before it,
/// nothing (NotRunning); during it, the services and their lines; after, the same handles.
#[test]
fn an_observer_sees_the_services_while_startup_runs_elsewhere() {
    let p = Project::new("observer");
    for fifo in ["booted.fifo", "go.fifo"] {
        let path =
            std::ffi::CString::new(p.path(fifo).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    }
    let mut b = p.bundle();
    b.add(
        "Gate",
        sh("echo waiting; echo x > booted.fifo; read x < go.fifo; echo READY; exec sleep 1000"),
    )
    .unwrap();
    let observer = b.observer();
    assert!(matches!(
        observer.service("Gate"),
        Err(hitchserve::Error::NotRunning)
    ));
    let starting = std::thread::spawn(move || {
        b.startup().unwrap();
        b
    });
    // Reading blocks until Gate, started, writes: it then waits for `go`.
    std::fs::read_to_string(p.path("booted.fifo")).unwrap();
    assert_eq!(observer.service_names(), ["Gate"]);
    let gate = observer.service("Gate").unwrap();
    assert!(!gate.is_ready());
    gate.logs()
        .tail()
        .lines_back(10)
        .until(|l| l == "waiting", PATIENCE)
        .unwrap();
    assert!(matches!(
        observer.service("Nope"),
        Err(hitchserve::Error::NoSuchService { .. })
    ));
    // Opening blocks until Gate reads: then it says READY.
    std::fs::write(p.path("go.fifo"), "go\n").unwrap();
    let b = starting.join().unwrap();
    assert!(observer.service("Gate").unwrap().is_ready());
    b.shutdown().unwrap();
}

/// A bundle whose last service writes `n` lines and then runs `end`; with `paced`, it
/// writes each line only once the test has seen the one before (the test makes
/// `ack<i>`), so each is a read of its own, and each wakes the startup's wait early (see
/// the runtime's `early`).
fn many_small_writes_then(p: &Project, n: usize, paced: bool, end: &str) -> hitchserve::Bundle {
    let mut b = p.bundle();
    b.add("First", sh("echo READY; exec sleep 1000")).unwrap();
    let wait = if paced {
        "while [ ! -e ack$i ]; do sleep 0.001; done; "
    } else {
        ""
    };
    let script =
        format!("i=0; while [ $i -lt {n} ]; do echo not yet $i; {wait}i=$((i+1)); done; {end}");
    b.add("Last", sh(&script).needs(["First"])).unwrap();
    b
}

/// The startup still ends only with the last service's ready line, once its "ready
/// after" line is said, and every line before it is stored.
#[test]
fn startup_ends_at_the_last_services_ready_line_after_many_small_writes() {
    let p = Project::new("early-wake");
    let mut b = many_small_writes_then(&p, 40, true, "echo READY; exec sleep 1000");
    let mut tail = b.logs().out().tail();
    std::thread::scope(|s| {
        let acks = s.spawn(|| {
            for i in 0..40 {
                let want = format!("not yet {i}");
                tail.until(|l| l == want, PATIENCE).unwrap();
                std::fs::write(p.path(&format!("ack{i}")), "").unwrap();
            }
        });
        b.startup().unwrap();
        acks.join().unwrap();
    });
    let lines = b.service("Last").unwrap().logs().out().lines();
    assert_eq!(lines.len(), 41, "{lines:?}");
    assert_eq!(lines[39], "not yet 39");
    assert_eq!(lines[40], "READY");
    let log = b.logs().lines();
    let ready_after = log.iter().position(|l| l.starts_with("Last ready after"));
    let ready = log.iter().position(|l| l.starts_with("READY in"));
    assert!(
        matches!((ready_after, ready), (Some(a), Some(r)) if a < r),
        "{log:#?}"
    );
    b.shutdown().unwrap();
}

/// The same, unpaced, but the last service exits instead: its lines' early wakes never end
/// the startup as a success.
#[test]
fn startup_fails_when_the_last_service_exits_after_many_small_writes() {
    let p = Project::new("early-wake-exit");
    let mut b = many_small_writes_then(&p, 300, false, "exit 3");
    let err = b.startup().unwrap_err().to_string();
    assert!(err.contains("Last"), "{err}");
    assert_eq!(b.service("Last").unwrap().logs().out().lines().len(), 300);
}
