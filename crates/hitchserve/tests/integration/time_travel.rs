//! Time travel through libfaketime, with real Python services.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hitchserve::jiff::{SignedDuration, Timestamp};
use hitchserve::{Bundle, Service};
use serde_json::Value;

use crate::common::{compile_c, sh, Project, PATIENCE};

/// Prints its clocks as JSON every 20 ms. Sleeping and a queue timeout each round prove
/// that sleeps and timeouts still work in a faked process.
const TICKER: &str = r#"
import datetime, json, queue, time
q = queue.Queue()
print("READY", flush=True)
n = 0
while True:
    try:
        q.get(timeout=0.001)
    except queue.Empty:
        pass
    print(json.dumps({"n": n, "t": time.time(), "mono": time.monotonic(),
                      "dt": datetime.datetime.now().timestamp()}), flush=True)
    n += 1
    time.sleep(0.02)
"#;

fn secs(ts: Timestamp) -> f64 {
    ts.as_nanosecond() as f64 / 1e9
}

fn real_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ticker() -> Service {
    Service::new(["python3", "-u", "ticker.py"]).ready_when(|l| l == "READY")
}

fn started(p: &Project, services: &[(&str, Service)]) -> Bundle {
    p.write("ticker.py", TICKER);
    let mut b = p.bundle();
    for (name, svc) in services {
        b.add(*name, svc.clone()).unwrap();
    }
    b.startup().unwrap();
    b
}

/// The next tick of `service` whose wall clock reads at least `at`.
fn tick_at_or_after(b: &Bundle, service: &str, at: f64) -> Value {
    b.service(service)
        .unwrap()
        .logs()
        .out()
        .tail()
        .until_json(|v| v["t"].as_f64().is_some_and(|t| t >= at), PATIENCE)
        .unwrap()
}

#[test]
fn a_jump_forward_is_seen_by_the_service_and_its_clock_keeps_ticking() {
    let p = Project::new("tt-forward");
    let b = started(&p, &[("Clock", ticker())]);
    let before = tick_at_or_after(&b, "Clock", 0.0);
    b.time_travel(Duration::from_secs(2 * 86_400)).unwrap();
    let now = secs(b.now());
    assert!((now - real_now() - 2.0 * 86_400.0).abs() < 1.0);
    let after = tick_at_or_after(&b, "Clock", now - 1.0);
    let t = after["t"].as_f64().unwrap();
    assert!(
        (t - secs(b.now())).abs() < 1.0,
        "service says {t}, bundle says {now}"
    );
    // datetime.now() follows too.
    assert!((after["dt"].as_f64().unwrap() - t).abs() < 1.0);
    // Monotonic time is never faked: it moved on by real time only, not by two days.
    let mono_step = after["mono"].as_f64().unwrap() - before["mono"].as_f64().unwrap();
    assert!(
        mono_step > 0.0 && mono_step < 3600.0,
        "monotonic jumped by {mono_step}"
    );
    // ... and the faked clock keeps ticking.
    let later = tick_at_or_after(&b, "Clock", t + 0.1);
    assert!(later["n"].as_u64() > after["n"].as_u64());
    assert!(b
        .logs()
        .lines()
        .iter()
        .any(|l| l.starts_with("Time traveling to 2 days from now (")));
}

#[test]
fn a_signed_jump_back_is_seen_by_the_service_and_logged_as_where_the_clock_is() {
    let p = Project::new("tt-back");
    let b = started(&p, &[("Clock", ticker())]);
    let before = secs(b.now());
    b.time_travel_by(SignedDuration::from_hours(-3 * 24))
        .unwrap();
    assert!(secs(b.now()) < before - 2.0 * 86_400.0);
    let three_days_ago = real_now() - 2.0 * 86_400.0;
    let tick = b
        .service("Clock")
        .unwrap()
        .logs()
        .out()
        .tail()
        .until_json(
            |v| v["t"].as_f64().is_some_and(|t| t < three_days_ago),
            PATIENCE,
        )
        .unwrap();
    assert!(tick["dt"].as_f64().unwrap() < three_days_ago);
    b.time_travel_by(SignedDuration::from_hours(-24)).unwrap();
    b.time_travel_by(SignedDuration::from_hours(4 * 24))
        .unwrap();
    let said: Vec<String> = b
        .logs()
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("Time traveling to "))
        .map(|l| l.split(" (").next().unwrap_or_default().to_owned())
        .collect();
    // Where the clock is, from real time, as the seed says it (jumps add up), to the
    // second: not "2 days 23 hours ago" for two clock reads a moment apart.
    assert_eq!(
        said,
        [
            "Time traveling to 3 days ago",
            "Time traveling to 4 days ago",
            "Time traveling to now"
        ]
    );
}

#[test]
fn absolute_jumps_and_several_jumps_that_add_up() {
    let p = Project::new("tt-absolute");
    let b = started(&p, &[("Clock", ticker())]);
    let target: Timestamp = "2030-01-01T09:00:00Z".parse().unwrap();
    b.time_travel_to(target).unwrap();
    let tick = tick_at_or_after(&b, "Clock", secs(target) - 1.0);
    let t = tick["t"].as_f64().unwrap();
    assert!(t >= secs(target) - 1.0 && t - secs(target) < 60.0, "{t}");
    b.time_travel(Duration::from_secs(86_400)).unwrap();
    b.time_travel(Duration::from_secs(86_400)).unwrap();
    let expected = secs(target) + 2.0 * 86_400.0;
    assert!((secs(b.now()) - expected).abs() < 60.0);
    let tick = tick_at_or_after(&b, "Clock", expected - 1.0);
    assert!((tick["t"].as_f64().unwrap() - secs(b.now())).abs() < 1.0);
    // Back to the present.
    b.time_travel_to(Timestamp::now()).unwrap();
    let tick = tick_at_or_after(&b, "Clock", 0.0);
    let _ = tick;
    let now = secs(b.now());
    assert!((now - real_now()).abs() < 1.0);
}

#[test]
fn an_opted_out_service_keeps_real_time() {
    let p = Project::new("tt-optout");
    let b = started(
        &p,
        &[("Faked", ticker()), ("Real", ticker().no_libfaketime())],
    );
    b.time_travel(Duration::from_secs(30 * 86_400)).unwrap();
    let faked = tick_at_or_after(&b, "Faked", secs(b.now()) - 1.0);
    assert!((faked["t"].as_f64().unwrap() - secs(b.now())).abs() < 1.0);
    let mut tail = b.service("Real").unwrap().logs().out().tail();
    let real = tail.until_json(|v| v.get("t").is_some(), PATIENCE).unwrap();
    assert!((real["t"].as_f64().unwrap() - real_now()).abs() < 5.0);
}

#[test]
fn a_users_faketimerc_and_faketime_variable_do_not_leak_in() {
    let p = Project::new("tt-rc");
    p.write("home/.faketimerc", "+100d\n");
    let home = p.path("home");
    let b = started(
        &p,
        &[("Clock", ticker().env("HOME", &home).env("FAKETIME", "+50d"))],
    );
    // No jump yet: the service must be on real time.
    let tick = tick_at_or_after(&b, "Clock", 0.0);
    assert!(
        (tick["t"].as_f64().unwrap() - real_now()).abs() < 5.0,
        "a faketimerc or FAKETIME leaked in: {tick}"
    );
}

#[test]
fn time_travel_before_startup_starts_services_in_the_future() {
    let p = Project::new("tt-early");
    p.write("ticker.py", TICKER);
    let mut b = p.bundle();
    b.add("Clock", ticker()).unwrap();
    b.time_travel(Duration::from_secs(365 * 86_400)).unwrap();
    b.startup().unwrap();
    let tick = tick_at_or_after(&b, "Clock", 0.0);
    assert!((tick["t"].as_f64().unwrap() - secs(b.now())).abs() < 1.0);
}

/// The shim must load even when the project's path has a space (LD_PRELOAD splits on it),
/// and a user's libfaketime variables (here one that would switch it off for python3) are
/// not inherited; sleeps and lock timeouts keep working.
#[test]
fn time_travel_works_from_a_path_with_a_space_and_ignores_foreign_faketime_variables() {
    let p = Project::new("tt space");
    let b = started(
        &p,
        &[(
            "Clock",
            ticker()
                .env("FAKETIME_SKIP_CMDS", "python3")
                .env("FAKETIME_STOP_AFTER_SECONDS", "0"),
        )],
    );
    b.time_travel(Duration::from_secs(86_400)).unwrap();
    let tick = tick_at_or_after(&b, "Clock", secs(b.now()) - 1.0);
    assert!((tick["t"].as_f64().unwrap() - secs(b.now())).abs() < 1.0);
}

/// A faked service carries our shim and nothing else: no libfaketime (its start-up cost
/// each exec'd process more than the rest of the preload), and so nothing in `/dev/shm`.
#[test]
fn a_faked_service_preloads_only_our_shim_and_makes_nothing_in_dev_shm() {
    let p = Project::new("shim-only");
    let mut b = p.bundle();
    // A shell that forks a child: both exec'd under the preload.
    b.add("Faked", sh("sleep 1000 & echo READY; wait")).unwrap();
    b.startup().unwrap();
    let pid = b.service("Faked").unwrap().pid().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains("timeshim-"),
        "the shim is not loaded:\n{maps}"
    );
    assert!(
        !maps.contains("libfaketime"),
        "libfaketime is loaded:\n{maps}"
    );
    let run_id = crate::common::run_id(&b);
    let shm: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&run_id) || n.ends_with(&format!("_{pid}")))
        .collect();
    assert!(shm.is_empty(), "{shm:?}");
    b.time_travel(Duration::from_secs(86_400)).unwrap();
    let out = b
        .service("Faked")
        .unwrap()
        .subcommand(["date", "+%s"])
        .output()
        .unwrap();
    let date: f64 = out.stdout_text().trim().parse().unwrap();
    assert!((date - secs(b.now())).abs() < 5.0, "date says {date}");
}

/// Waits with an absolute deadline on the wall clock, computed from the faked clock: each
/// must last its relative time (300 ms), after a jump forward (a deadline left as it is
/// would wait 30 days: the tail below gives up) and after a jump back (it would return at
/// once, before the faked clock reaches the deadline: `reached` false).
const DEADLINES_C: &str = include_str!("deadlines.c");

/// The calls `deadlines.c` makes each round, in order.
const DEADLINE_CALLS: [&str; 8] = [
    "pthread_cond_timedwait",
    "pthread_cond_timedwait_monotonic",
    "sem_timedwait",
    "pthread_mutex_timedlock",
    "pthread_rwlock_timedrdlock",
    "clock_nanosleep",
    "timer_settime",
    "timerfd_settime",
];

/// The first whole round of `deadlines.c` whose deadlines are from `now` (faked) on, not
/// from before the last jump.
fn deadline_round(b: &Bundle, tail: &mut hitchserve::Tail, now: f64) -> Vec<Value> {
    let first = tail
        .until_json(
            |v| {
                v["call"] == DEADLINE_CALLS[0]
                    && v["t"]
                        .as_f64()
                        .is_some_and(|t| t >= now - 1.0 && t < now + 3600.0)
            },
            PATIENCE,
        )
        .unwrap_or_else(|e| {
            panic!(
                "no wait returned after the jump: {e}\n{:?}",
                b.logs().lines()
            )
        });
    let round = first["round"].clone();
    let mut lines = vec![first];
    for call in &DEADLINE_CALLS[1..] {
        let line = tail
            .until_json(|v| v["round"] == round, PATIENCE)
            .unwrap_or_else(|e| panic!("`{call}` never returned after the jump: {e}"));
        assert_eq!(line["call"], *call, "{line}");
        lines.push(line);
    }
    lines
}

#[test]
fn absolute_deadlines_on_the_faked_clock_wait_their_relative_time_after_jumps() {
    let p = Project::new("tt-deadlines");
    let bin = compile_c(&p, "deadlines", DEADLINES_C);
    let mut b = p.bundle();
    b.add(
        "Waits",
        Service::new([bin.as_os_str()]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let mut tail = b.service("Waits").unwrap().logs().out().tail();
    for jump in [
        SignedDuration::from_hours(30 * 24),
        SignedDuration::from_hours(-30 * 24 - 3),
    ] {
        b.time_travel_by(jump).unwrap();
        let round = deadline_round(&b, &mut tail, secs(b.now()));
        for line in &round {
            assert!(
                line["timed_out"] == true && line["reached"] == true,
                "after a jump by {jump}: {line}"
            );
        }
    }
    assert!((secs(b.now()) - (real_now() - 3.0 * 3600.0)).abs() < 5.0);
}

/// Python's clocks follow, and its sleeps and timed waits (on the monotonic clock) last
/// their time, after a jump forward and a jump back.
#[test]
fn python_sleeps_and_timed_waits_last_their_time_after_jumps() {
    let p = Project::new("tt-python-waits");
    p.write(
        "waits.py",
        r#"
import datetime, json, queue, threading, time
print("READY", flush=True)
while True:
    t0 = time.monotonic()
    threading.Event().wait(0.1)
    try:
        queue.Queue().get(timeout=0.1)
    except queue.Empty:
        pass
    c = threading.Condition()
    with c:
        c.wait(0.1)
    time.sleep(0.1)
    print(json.dumps({"t": time.time(), "dt": datetime.datetime.now().timestamp(),
                      "waited": time.monotonic() - t0}), flush=True)
"#,
    );
    let mut b = p.bundle();
    b.add(
        "Py",
        Service::new(["python3", "-u", "waits.py"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    for jump in [
        SignedDuration::from_hours(30 * 24),
        SignedDuration::from_hours(-30 * 24 - 3),
    ] {
        b.time_travel_by(jump).unwrap();
        let now = secs(b.now());
        // A round that started after the jump: its waits ran wholly on the new clock.
        let mut tail = b.service("Py").unwrap().logs().out().tail();
        tail.until_json(|v| v.get("t").is_some(), PATIENCE).unwrap();
        let line = tail.until_json(|v| v.get("t").is_some(), PATIENCE).unwrap();
        let t = line["t"].as_f64().unwrap();
        assert!((t - now).abs() < 5.0, "after {jump}: {line}, bundle {now}");
        assert!((line["dt"].as_f64().unwrap() - t).abs() < 1.0, "{line}");
        // Four waits of 0.1 s: none returned early.
        assert!(line["waited"].as_f64().unwrap() >= 0.4, "{line}");
    }
}

/// `Bundle` is `Sync` and `time_travel` takes `&self`: jumps made from several threads at
/// once all count (each read the offset, then wrote its own: some were lost).
#[test]
fn jumps_from_several_threads_at_once_add_up() {
    let p = Project::new("tt-threads");
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let before = b.now();
    let b = std::sync::Arc::new(b);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = std::sync::Arc::clone(&b);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    b.time_travel(Duration::from_secs(3600)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let moved = b.now().duration_since(before);
    // 400 hours, and the real time that passed meanwhile (far less than an hour).
    assert!(
        moved >= jiff::SignedDuration::from_hours(400)
            && moved < jiff::SignedDuration::from_hours(401),
        "moved {moved:?}"
    );
    b.shutdown().unwrap();
}

/// The moment in the "Time traveling" line is local time, as `now()` and the services show
/// it, also when `TZ` names a zone (it was UTC then: the zone database was not read).
#[test]
fn the_time_travel_line_shows_the_moment_in_the_local_zone() {
    crate::common::helper_passes(
        "time_travel::helper_time_travel_line_in_tokyo",
        &[("TZ", "Asia/Tokyo")],
        "checked the line",
    );
}

#[test]
#[ignore = "run by the_time_travel_line_shows_the_moment_in_the_local_zone"]
fn helper_time_travel_line_in_tokyo() {
    let p = Project::new("tt-tokyo");
    let b = p.bundle();
    let moment: Timestamp = "2030-06-01T00:00:00Z".parse().unwrap();
    b.time_travel_to(moment).unwrap();
    let lines = b.logs().lines();
    assert!(
        lines.iter().any(|l| l.contains("(2030-06-01 09:00:00")),
        "{lines:?}"
    );
    println!("checked the line");
}

/// Once the bundle has been shut down, a time travel (nothing runs on that clock) and a
/// second startup are `ShutDown` (the travel logged a jump; the startup's error was about
/// defining services).
#[test]
fn after_shutdown_time_travel_and_startup_say_the_bundle_has_stopped() {
    let p = Project::new("tt-after");
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    b.shutdown().unwrap();
    let e = b.time_travel(Duration::from_secs(60)).unwrap_err();
    assert!(matches!(e, hitchserve::Error::ShutDown), "{e:?}");
    assert!(e.to_string().contains("make a new one"), "{e}");
    let e = b.startup().unwrap_err();
    assert!(matches!(e, hitchserve::Error::ShutDown), "{e:?}");
}

/// A bundle shut down before it ever started runs no more either (its startup went ahead).
#[test]
fn a_bundle_shut_down_before_its_startup_does_not_start() {
    let p = Project::new("shut-first");
    let mut b = p.bundle();
    b.add("App", sh("echo READY; exec sleep 1000")).unwrap();
    b.shutdown().unwrap();
    let e = b.startup().unwrap_err();
    assert!(matches!(e, hitchserve::Error::ShutDown), "{e:?}");
}
