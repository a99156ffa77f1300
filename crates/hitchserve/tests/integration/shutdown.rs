//! Shutdown: stop signal to each group, SIGKILL after the timeout, nothing left behind.

use std::time::Duration;

use hitchserve::{Service, Signal};

use crate::common::{is_alive, is_root, marked_pids, run_id, sh, wait_gone, Project, PATIENCE};

fn read_pid(p: &Project, file: &str) -> u32 {
    std::fs::read_to_string(p.path(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A started bundle (with this shutdown timeout) of `Stubborn`, which ignores its stop
/// signal; and its pid.
fn stubborn(p: &Project, shutdown_timeout: Duration) -> (hitchserve::Bundle, u32) {
    let mut b = p.bundle().shutdown_timeout(shutdown_timeout);
    b.add(
        "Stubborn",
        sh("trap '' TERM; echo $$ > pid; echo READY; while :; do sleep 0.05; done"),
    )
    .unwrap();
    b.startup().unwrap();
    (b, read_pid(p, "pid"))
}

#[test]
fn a_service_that_ignores_the_stop_signal_is_killed_after_the_timeout() {
    let p = Project::new("stubborn");
    let (b, pid) = stubborn(&p, Duration::from_secs(1));
    b.shutdown().unwrap();
    assert!(!is_alive(pid));
    let warnings = b.logs().err().lines();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("Stubborn did not stop within 1.0 s: killed with SIGKILL")),
        "{warnings:?}"
    );
    let svc = b.service("Stubborn").unwrap();
    assert_eq!(svc.exit_status().and_then(|s| s.signal()), Some(9));
}

/// An interrupt during the shutdown (Ctrl-C) cuts the grace short: what is left gets
/// SIGKILL at once, not at the end of the shutdown timeout.
#[test]
fn an_interrupt_during_shutdown_kills_what_is_left_at_once() {
    let p = Project::new("stubborn-interrupted");
    let (b, pid) = stubborn(&p, Duration::from_secs(600));
    let interrupter = b.interrupter();
    let mut said = b.logs().tail();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Once the stop signal is out (the shutdown then waits for the grace).
            said.until(|l| l == "Stopping Stubborn", PATIENCE).unwrap();
            interrupter.interrupt();
        });
        b.shutdown().unwrap();
    });
    assert!(!is_alive(pid));
    let warnings = b.logs().err().lines();
    assert!(
        warnings
            .iter()
            .any(|l| l
                == "Stubborn had not stopped when the stop was interrupted: killed with SIGKILL"),
        "{warnings:?}"
    );
}

/// An interrupt before the shutdown (a Ctrl-C that stopped the test while the bundle ran)
/// leaves the services their grace: only one during the stop cuts it short (every later
/// stop killed at once).
#[test]
fn an_interrupt_before_the_shutdown_leaves_the_services_their_grace() {
    let p = Project::new("interrupted-before");
    let mut b = p.bundle().shutdown_timeout(PATIENCE);
    b.add(
        "Tidy",
        sh("trap 'echo bye; exit 0' TERM; echo READY; while :; do sleep 0.05; done")
            .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    b.interrupter().interrupt();
    b.shutdown().unwrap();
    let tidy = b.service("Tidy").unwrap();
    assert_eq!(
        tidy.exit_status(),
        Some(hitchserve::ExitStatus::Code(0)),
        "{:?}",
        b.logs().lines()
    );
    assert!(tidy.logs().lines().contains(&"bye".to_owned()));
    assert!(!b.logs().lines().iter().any(|l| l.contains("SIGKILL")));
}

#[test]
fn output_written_while_stopping_is_stored() {
    let p = Project::new("goodbye");
    let mut b = p.bundle();
    b.add(
        "Polite",
        sh("trap 'echo bye; echo err-bye >&2; exit 0' TERM; echo READY; while :; do sleep 0.05; done"),
    )
    .unwrap();
    b.startup().unwrap();
    b.shutdown().unwrap();
    let logs = b.service("Polite").unwrap().logs();
    assert!(logs.out().lines().contains(&"bye".to_owned()));
    // (sh may also report its killed `sleep` as "Terminated".)
    assert!(logs.err().lines().contains(&"err-bye".to_owned()));
    assert_eq!(
        b.service("Polite")
            .unwrap()
            .exit_status()
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn the_stop_signal_can_be_chosen() {
    let p = Project::new("sigint");
    let mut b = p.bundle();
    b.add(
        "Django",
        sh("trap 'echo got INT; exit 0' INT; trap 'echo got TERM; exit 0' TERM; echo READY; while :; do sleep 0.05; done")
            .stop_signal(Signal::SIGINT),
    )
    .unwrap();
    b.startup().unwrap();
    b.shutdown().unwrap();
    let lines = b.service("Django").unwrap().logs().out().lines();
    assert!(lines.contains(&"got INT".to_owned()), "{lines:?}");
    assert!(!lines.contains(&"got TERM".to_owned()));
}

/// A command the test runs beside a service in its `environment()` dies with the bundle
/// (it carries the run's marker) — also where the run has a cgroup, which holds everything
/// the services started but not this (so the marker sweep, spared when nothing marked was
/// started outside the cgroup, is made).
#[test]
fn a_command_run_beside_a_service_in_its_environment_dies_with_the_bundle() {
    let p = Project::new("beside");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let mut beside = std::process::Command::new("setsid")
        .args(["sleep", "1000"])
        .env_clear()
        .envs(b.service("Svc").unwrap().environment())
        .spawn()
        .unwrap();
    b.shutdown().unwrap();
    let gone = wait_gone(beside.id(), PATIENCE);
    if !gone {
        let _ = beside.kill();
    }
    let _ = beside.wait();
    assert!(gone, "the command beside it outlived the bundle");
}

/// Children, grandchildren and a double-forked `setsid` daemon all die with the bundle.
#[test]
fn shutdown_leaves_no_process_behind() {
    let p = Project::new("noorphans");
    let mut b = p.bundle();
    b.add(
        "Forker",
        sh(concat!(
            "sleep 1000 & echo $! > child.pid; ",
            "sh -c 'sleep 1000 & echo $! > grandchild.pid; wait' & ",
            "(setsid sh -c 'echo $$ > daemon.pid; exec sleep 1000' &); ",
            "while [ ! -s daemon.pid ] || [ ! -s grandchild.pid ]; do sleep 0.01; done; ",
            "echo READY; wait"
        )),
    )
    .unwrap();
    b.startup().unwrap();
    let pids: Vec<u32> = ["child.pid", "grandchild.pid", "daemon.pid"]
        .iter()
        .map(|f| read_pid(&p, f))
        .collect();
    let daemon = pids[2];
    let leader = b.service("Forker").unwrap().pid().unwrap();
    assert!(pids.iter().all(|&pid| is_alive(pid)));
    assert_ne!(
        crate::common::stat_field(daemon, 6),
        crate::common::stat_field(leader, 6),
        "the daemon must have left the service's session"
    );
    let run = run_id(&b);
    assert!(marked_pids(&run).len() >= 5);
    b.shutdown().unwrap();
    for pid in pids.into_iter().chain([leader]) {
        assert!(
            wait_gone(pid, PATIENCE),
            "process {pid} survived the shutdown"
        );
    }
    assert!(marked_pids(&run).is_empty());
}

/// A daemon in a new session with an empty environment shares nothing with the service but
/// the bundle's cgroup: shutdown finds it there.
#[test]
fn shutdown_kills_an_escapee_without_group_or_marker() {
    if !is_root() {
        eprintln!("skipped: the bundle's cgroup needs root here (CI runs as root)");
        return;
    }
    let p = Project::new("escapee");
    let mut b = p.bundle();
    b.add("Escaper", crate::orphans::escaping_service())
        .unwrap();
    b.startup().unwrap();
    let leader = b.service("Escaper").unwrap().pid().unwrap();
    let run = run_id(&b);
    let escapee = crate::orphans::let_it_escape(&p, leader, &run);
    b.shutdown().unwrap();
    assert!(
        wait_gone(escapee, PATIENCE),
        "the escapee {escapee} survived the shutdown"
    );
    // Nothing of the run is left, its cgroup included.
    let cgroup = format!("/hitchserve-{run}");
    let left = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" cgroup2 "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .any(|mount| walk_has(std::path::Path::new(&mount), &cgroup, 4));
    assert!(!left, "the run's cgroup was not removed");
}

/// A cgroup made inside the run's (what a nested hitchserve does for its own runs, and
/// leaves behind when the outer shutdown kills it first) doesn't keep the run's cgroup.
/// (Failed before the fix, with: the run's cgroup was not removed: rmdir said EBUSY.)
#[test]
fn shutdown_removes_the_runs_cgroup_with_cgroups_made_inside_it() {
    if !is_root() {
        eprintln!("skipped: the bundle's cgroup needs root here (CI runs as root)");
        return;
    }
    let p = Project::new("nested-cgroup");
    let mut b = p.bundle();
    // The service's own cgroup directory, from its /proc/self/cgroup and the cgroup2 mount.
    b.add(
        "Nester",
        sh(concat!(
            "own=$(sed -n 's/^0:://p' /proc/self/cgroup); ",
            "mnt=$(awk '$3 == \"cgroup2\" {print $2; exit}' /proc/mounts); ",
            "mkdir \"$mnt$own/inner\" && mkdir \"$mnt$own/inner/deeper\" && echo READY; ",
            "exec sleep 1000"
        )),
    )
    .unwrap();
    b.startup().unwrap();
    let run = run_id(&b);
    b.shutdown().unwrap();
    let cgroup = format!("/hitchserve-{run}");
    let left = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" cgroup2 "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .any(|mount| walk_has(std::path::Path::new(&mount), &cgroup, 4));
    assert!(!left, "the run's cgroup was not removed");
}

/// Whether a directory ending in `suffix` is under `dir`, `depth` levels down at most.
fn walk_has(dir: &std::path::Path, suffix: &str, depth: usize) -> bool {
    if dir.to_str().is_some_and(|d| d.ends_with(suffix)) {
        return true;
    }
    depth > 0
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .any(|e| walk_has(&e.path(), suffix, depth - 1))
        })
}

#[test]
fn dropping_the_bundle_shuts_it_down() {
    let p = Project::new("drop");
    let leader;
    {
        let mut b = p.bundle();
        b.add("Sleeper", Service::new(["sleep", "1000"])).unwrap();
        b.startup().unwrap();
        leader = b.service("Sleeper").unwrap().pid().unwrap();
        assert!(is_alive(leader));
    }
    assert!(wait_gone(leader, PATIENCE));
}

/// A wrapper shell dies at once on SIGTERM; the server under it still gets the rest of the
/// shutdown timeout to finish, instead of being SIGKILLed with its wrapper.
#[test]
fn the_group_keeps_its_grace_when_the_main_process_exits_first() {
    let p = Project::new("wrapper");
    let mut b = p.bundle();
    b.add(
        "Wrapped",
        // The server under the wrapper is one process, so no fork can race the signal. It
        // writes with `os.write`: the stop may come while `print` is still in its READY line,
        // and a `print` in the handler then failed as a reentrant call.
        sh(concat!(
            "python3 -c 'import os, signal, sys, time\n",
            "def bye(*a):\n    time.sleep(0.2); os.write(1, b\"graceful goodbye\\n\"); os._exit(0)\n",
            "signal.signal(signal.SIGTERM, bye)\nos.write(1, b\"READY\\n\")\n",
            "while True: time.sleep(1)' & wait"
        )),
    )
    .unwrap();
    b.startup().unwrap();
    b.shutdown().unwrap();
    let lines = b.service("Wrapped").unwrap().logs().out().lines();
    assert!(lines.contains(&"graceful goodbye".to_owned()), "{lines:?}");
    assert!(!b
        .logs()
        .err()
        .lines()
        .iter()
        .any(|l| l.contains("killed with SIGKILL")));
}

/// Timeouts as long as `Duration::MAX` mean "no limit", never an overflow.
#[test]
fn unlimited_timeouts_are_accepted() {
    let p = Project::new("maxtimeouts");
    let mut b = hitchserve::Bundle::new(&p.dir)
        .startup_timeout(Duration::MAX)
        .shutdown_timeout(Duration::MAX);
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    let mut tail = svc.logs().tail().lines_back(1);
    assert_eq!(tail.next_line(Duration::MAX).unwrap().text(), "READY");
    b.shutdown().unwrap();
    assert!(svc.wait_exit(Duration::MAX).is_some());
}

#[test]
fn signals_blocked_by_the_caller_are_not_passed_on_to_services() {
    // A program that blocks SIGTERM (to sigwait for it) starts a bundle from that thread.
    std::thread::spawn(|| {
        // SAFETY: blocking one signal in this thread only, with a set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let p = Project::new("blockedmask");
        let mut b = p.bundle().shutdown_timeout(PATIENCE);
        b.add(
            "Polite",
            // Not sh: dash clears its signal mask when it starts.
            Service::new([
                "python3",
                "-u",
                "-c",
                "import signal, sys\n\
                 signal.signal(signal.SIGTERM, lambda *_: (print('got TERM'), sys.exit(0)))\n\
                 print('READY')\n\
                 while True: signal.pause()",
            ])
            .ready_when(|l| l == "READY"),
        )
        .unwrap();
        b.startup().unwrap();
        b.shutdown().unwrap();
        let svc = b.service("Polite").unwrap();
        let lines = svc.logs().out().lines();
        assert!(lines.contains(&"got TERM".to_owned()), "{lines:?}");
        assert_eq!(svc.exit_status().and_then(|s| s.code()), Some(0));
    })
    .join()
    .unwrap();
}
