//! The ready-made memcached, for real: set, get and stats over its text protocol, its real
//! clock under time travel, and nothing left once the bundle stops.

use std::time::Duration;

use hitchserve::services::Memcached;

use crate::common::{is_alive, is_root, marked_pids, run_id, wait_gone, Project, PATIENCE};

#[test]
fn memcached_answers_set_get_and_stats_and_keeps_real_time() {
    let p = Project::new("memcached");
    let mut b = p.bundle();
    b.add("Cache", Memcached::new().memory_mb(16).service())
        .unwrap();
    b.startup().unwrap();
    let cache = Memcached::handle(&b, "Cache").unwrap();
    // Readiness asked the server itself, not only its port.
    assert!(cache
        .service()
        .logs()
        .poststart()
        .lines()
        .iter()
        .any(|l| l.starts_with("memcached 1.") && l.ends_with(&cache.address())));
    assert_eq!(cache.address(), format!("127.0.0.1:{}", cache.port()));
    assert_eq!(
        cache.url(),
        format!("memcached://127.0.0.1:{}", cache.port())
    );
    assert_eq!(
        cache.service().env_var("MEMCACHED_SERVERS").unwrap(),
        cache.address()
    );

    let mut client = cache.client().unwrap();
    client.set("greeting", b"hello\r\nworld", 0).unwrap();
    client.set("short-lived", b"soon gone", 60).unwrap();
    assert_eq!(
        client.get("greeting").unwrap().as_deref(),
        Some(&b"hello\r\nworld"[..])
    );
    assert_eq!(client.get("missing").unwrap(), None);
    assert!(
        client.set("two words", b"x", 0).is_err(),
        "a key with a space"
    );
    let stats = cache.stats().unwrap();
    assert_eq!(stats["curr_items"], "2");
    assert_eq!(stats["limit_maxbytes"], (16 * 1024 * 1024).to_string());
    if is_root() {
        assert_ne!(cache.service().process().unwrap().uids().unwrap().real, 0);
    }

    // Time travel does not reach memcached's expiry clock (monotonic, never faked): the
    // 60-second item outlives a two-minute jump, as the service's documentation says.
    b.time_travel(Duration::from_secs(120)).unwrap();
    assert!(client.get("short-lived").unwrap().is_some());
    let environ = cache.service().process().unwrap().environ().unwrap();
    let preload = environ.get("LD_PRELOAD").cloned().unwrap_or_default();
    assert!(!preload.contains("faketime"), "{preload}");

    let pid = cache.service().pid().unwrap();
    let run = run_id(&b);
    b.shutdown().unwrap();
    assert!(wait_gone(pid, PATIENCE));
    assert!(!is_alive(pid));
    assert_eq!(marked_pids(&run), Vec::<u32>::new());
}

/// Startup-to-ready, median of 3: `cargo test --release -p hitchserve --test integration
/// memcached_startup_figures -- --ignored --nocapture`.
#[test]
#[ignore = "a figure for the docs, not a check"]
fn memcached_startup_figures() {
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let p = Project::new("memcached-bench");
            let mut b = p.bundle();
            b.add("Cache", Memcached::new().service()).unwrap();
            let t = std::time::Instant::now();
            b.startup().unwrap();
            let took = t.elapsed().as_secs_f64() * 1000.0;
            b.shutdown().unwrap();
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "memcached startup-to-ready: median {:.0} ms of {times:?}",
        times[1]
    );
}
