//! Time travel through libfaketime, with real Python services.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hitchserve::jiff::{SignedDuration, Timestamp};
use hitchserve::{Bundle, Error, Service};
use serde_json::Value;

use crate::common::{helper_process, sh, Project, PATIENCE};

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
        .any(|l| l.starts_with("Time travelling to 2 days from now (")));
}

#[test]
fn a_signed_jump_back_is_seen_by_the_service_and_logged_as_asked() {
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
        .filter(|l| l.starts_with("Time travelling to "))
        .map(|l| l.split(" (").next().unwrap_or_default().to_owned())
        .collect();
    // Said as asked, not as two clock reads a moment apart measure it ("2 days ago").
    assert_eq!(
        said,
        [
            "Time travelling to 3 days ago",
            "Time travelling to 1 day ago",
            "Time travelling to 4 days from now"
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

const LIB_VAR: &str = "HITCHSERVE_LIBFAKETIME";

/// Runs in a child process whose HITCHSERVE_LIBFAKETIME points nowhere.
#[test]
#[ignore = "helper: run by a_missing_libfaketime_is_a_clear_error_unless_time_travel_is_off"]
fn helper_without_libfaketime() {
    if std::env::var_os(LIB_VAR).is_none() {
        return;
    }
    let p = Project::new("tt-nolib");
    let mut b = p.bundle();
    b.add("App", Service::new(["sleep", "1000"])).unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::LibfaketimeMissing { services, .. } if services == &["App"]),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("`faketime` package") && msg.contains("`App`"),
        "{msg}"
    );

    // Opting out works without libfaketime...
    let mut b = p.bundle().without_time_travel();
    b.add("App", Service::new(["sleep", "1000"])).unwrap();
    b.startup().unwrap();
    assert!(matches!(
        b.time_travel(Duration::from_secs(1)),
        Err(Error::TimeTravelDisabled)
    ));
    b.shutdown().unwrap();
    // ... and so does a bundle whose every service opted out.
    let mut b = p.bundle();
    b.add("App", Service::new(["sleep", "1000"]).no_libfaketime())
        .unwrap();
    b.startup().unwrap();
    println!("HELPER OK");
}

#[test]
fn a_missing_libfaketime_is_a_clear_error_unless_time_travel_is_off() {
    let out = helper_process(
        "time_travel::helper_without_libfaketime",
        &[(LIB_VAR, "/nonexistent/libfaketime.so.1")],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("HELPER OK"), "{text}");
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

#[test]
fn libfaketime_shares_one_private_state_per_bundle_and_leaves_nothing_in_dev_shm() {
    let p = Project::new("shm");
    let mut b = p.bundle();
    b.add("Faked", sh("sleep 1000 & echo READY; wait")).unwrap();
    b.startup().unwrap();
    let pid = b.service("Faked").unwrap().pid().unwrap();
    let run_id = b
        .run_dir()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ours = || -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&format!("hitchserve-{run_id}-")))
            .collect()
    };
    // No pid-named pair (predictable, so another user could plant it first)...
    assert!(!std::path::Path::new(&format!("/dev/shm/faketime_shm_{pid}")).exists());
    // ...but one of ours, private.
    let made = ours();
    assert_eq!(made.len(), 2, "{made:?}");
    for name in &made {
        let meta = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
    }
    b.shutdown().unwrap();
    assert!(ours().is_empty(), "{:?}", ours());
}
