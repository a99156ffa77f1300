//! Benchmarks of the core, each against a raw baseline measured in the same run.
//!
//! `cargo run --release -p hitchserve --example bench` prints one JSON line per workload:
//! - W1: ready-detection latency, from the instant a service writes `READY` (it prints its
//!   own clock in the line) to `startup()` returning; baseline: reading the same line from
//!   a plain pipe (in Rust, this process), and the floor of a Python harness (a Python
//!   process that starts the service with `subprocess` and reads the line).
//! - W2: 20 services `sh -c 'echo READY; exec sleep 1000'` in 4 chains of 5: start-to-all-
//!   ready and shutdown; baseline: 4 threads spawning their chain (own process group, stdout
//!   and stderr piped, as a service is spawned) and reading each first line directly, then
//!   SIGTERM + wait.
//! - W3: a service writes 200,000 lines of about 80 bytes as fast as it can, then `DONE`:
//!   lines/s until a waiting tail sees `DONE` with all lines queryable, the bundle process's
//!   peak RSS (measured in a child process of its own) against the bytes held; baseline:
//!   the same producer piped into a plain line reader.
//! - W4: 10 services that trap SIGTERM and exit 0.1 s later: shutdown time.
//! - W6: PostgreSQL startup-to-ready, with initdb each time and with the template cluster.
//! - W9: restarting one service of a running bundle (`ServiceHandle::restart`, and `start`
//!   after `stop`) against its first startup, for a trivial service (`echo READY; exec sleep`).
//! - W7: startup of 20, 100, 500 and 1,000 independent services `sh -c 'echo READY; exec
//!   sleep 1000'`: startup() time per service, and how it grows with the count; baseline:
//!   as many children spawned as services are (own process group, stdout and stderr piped),
//!   then each first line read. All killed and reaped after each run.
//! - W8: 50 services each write 20,000 lines of 17 bytes then `DONE`: the bundle process's
//!   peak RSS (a child process of its own, as W3) with the default 64 MiB log memory limit
//!   and with 8 MiB, beside the bytes the store says it holds (`Bundle::log_stats`).
//! - W10: startup of 100 trivial services with SIGTERM blocked in the calling thread
//!   (`pthread_sigmask`, restored after) against the same with nothing blocked: a blocked
//!   signal that needs unblocking in the child must not cost a fork() per service.
//! - W5: 1,000,000 `time.time()` calls in a Python service: on real time, under
//!   hitchserve's time travel (after a jump), and under libfaketime's default cached mode.
//!
//! `cargo run ... --example bench W2` runs one workload. Every workload but W5 runs its
//! services without time travel (`Bundle::without_time_travel`, the core alone) unless
//! `HITCHSERVE_BENCH_TIME_TRAVEL` says `on` (the default `Bundle`: the time-travel shim in
//! every service) or `both` (off, then on); each line says which in `time_travel`. The
//! baselines never time-travel. W5 compares both itself and runs once.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hitchserve::{Bundle, Service};
use serde_json::json;

const W1_RUNS: usize = 20;
const W2_RUNS: usize = 11;
const W4_RUNS: usize = 5;

const READY_PY: &str = "import sys, time\nsys.stdout.write('READY %d\\n' % time.time_ns())\nsys.stdout.flush()\ntime.sleep(1000)";

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn stamp(line: &str) -> i128 {
    line.trim()
        .strip_prefix("READY ")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let idx = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn project() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hitchserve-bench-{}", std::process::id()));
    // New and ours (never one another user may have made in /tmp); others may pass through
    // (W6's PostgreSQL runs as `postgres`), not list it.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o711)
        .create(&dir)
        .expect("create the bench project directory");
    dir
}

/// The bundle every workload but W5 uses: with `time_travel` off the services run on real
/// time, like their baselines, and the figures are the core's alone; with it on (the default
/// `Bundle`) they also carry the time-travel shim.
fn quiet_bundle(dir: &std::path::Path, time_travel: bool) -> Bundle {
    let mut b = Bundle::new(dir)
        .startup_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_secs(10));
    if !time_travel {
        b = b.without_time_travel();
    }
    // stdout carries the JSON figures: keep the service lines off it.
    b.start_interactive_mode();
    b
}

/// W1's second floor, the one a Python harness meets (the original hitchserve, mirakuru,
/// pytest-xprocess): a Python process that starts the same service with `subprocess` and
/// reads its first line; prints the latency in ns.
const PY_READER: &str = "import subprocess, sys, time\n\
p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE)\n\
line = p.stdout.readline()\n\
now = time.time_ns()\n\
print(now - int(line.split()[1]))\n\
p.kill(); p.wait()\n";

fn w1(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, hitchserve::Error> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut python = Vec::new();
    for _ in 0..W1_RUNS {
        let mut b = quiet_bundle(dir, tt);
        b.add(
            "Py",
            Service::new(["python3", "-c", READY_PY]).ready_when(|l| l.starts_with("READY ")),
        )?;
        b.startup()?;
        let returned = now_ns();
        let line = b.service("Py")?.logs().out().lines().remove(0);
        ours.push((returned - stamp(&line)) as f64 / 1e6);
        b.shutdown()?;

        let mut child = Command::new("python3")
            .args(["-c", READY_PY])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read");
        let read = now_ns();
        raw.push((read - stamp(&line)) as f64 / 1e6);
        let _ = child.kill();
        let _ = child.wait();

        let out = Command::new("python3")
            .args(["-c", PY_READER, READY_PY])
            .output()
            .expect("run the Python reader");
        if let Ok(ns) = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>() {
            python.push(ns / 1e6);
        }
    }
    Ok(json!({
        "workload": "W1", "what": "ready-detection latency (write READY -> startup() returns)",
        "runs": W1_RUNS,
        "median_ms": percentile(ours.clone(), 0.5), "p95_ms": percentile(ours, 0.95),
        "baseline_median_ms": percentile(raw.clone(), 0.5), "baseline_p95_ms": percentile(raw, 0.95),
        "python_floor_median_ms": (!python.is_empty()).then(|| percentile(python, 0.5)),
        "target": "median < 1 ms",
    }))
}

const CHAIN_SH: &str = "echo READY; exec sleep 1000";

fn w2(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, hitchserve::Error> {
    let mut start = Vec::new();
    let mut stop = Vec::new();
    let mut raw_start = Vec::new();
    let mut raw_stop = Vec::new();
    for _ in 0..W2_RUNS {
        let mut b = quiet_bundle(dir, tt);
        for chain in 0..4 {
            for link in 0..5 {
                let mut svc = Service::new(["sh", "-c", CHAIN_SH]).ready_when(|l| l == "READY");
                if link > 0 {
                    svc = svc.needs([format!("C{chain}L{}", link - 1)]);
                }
                b.add(format!("C{chain}L{link}"), svc)?;
            }
        }
        let t = Instant::now();
        b.startup()?;
        start.push(ms(t.elapsed()));
        let t = Instant::now();
        b.shutdown()?;
        stop.push(ms(t.elapsed()));

        let t = Instant::now();
        let children: Vec<std::process::Child> = std::thread::scope(|s| {
            let chains: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..5)
                            .map(|_| {
                                // Spawned as a service is: own group, both pipes.
                                let mut c = Command::new("sh")
                                    .args(["-c", CHAIN_SH])
                                    .stdin(Stdio::null())
                                    .stdout(Stdio::piped())
                                    .stderr(Stdio::piped())
                                    .process_group(0)
                                    .spawn()
                                    .expect("spawn sh");
                                let mut line = String::new();
                                let mut r = BufReader::new(c.stdout.take().expect("piped"));
                                r.read_line(&mut line).expect("read");
                                c
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            chains
                .into_iter()
                .flat_map(|h| h.join().expect("chain thread"))
                .collect()
        });
        raw_start.push(ms(t.elapsed()));
        let t = Instant::now();
        for c in &children {
            let _ = nix_term(c.id());
        }
        for mut c in children {
            let _ = c.wait();
        }
        raw_stop.push(ms(t.elapsed()));
    }
    let (s, rs) = (percentile(start, 0.5), percentile(raw_start, 0.5));
    let (d, rd) = (percentile(stop, 0.5), percentile(raw_stop, 0.5));
    Ok(json!({
        "workload": "W2", "what": "20 services in 4 chains of 5 (median of runs)",
        "runs": W2_RUNS,
        "startup_ms": s, "baseline_startup_ms": rs, "startup_ratio": s / rs,
        "shutdown_ms": d, "baseline_shutdown_ms": rd,
        "target": "startup <= 1.2x baseline",
    }))
}

fn nix_term(pid: u32) -> std::io::Result<()> {
    // SAFETY: sending a signal to a child we spawned and have not reaped.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn w4(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, hitchserve::Error> {
    let mut stop = Vec::new();
    for _ in 0..W4_RUNS {
        let mut b = quiet_bundle(dir, tt);
        for i in 0..10 {
            b.add(
                format!("Slow{i}"),
                // READY only once the background `sleep` has exec'd: a stop signal that
                // lands between dash's fork and exec is lost, and that child then lives
                // on until the shutdown timeout (1 shutdown in ~30 took 10 s).
                Service::new([
                    "sh",
                    "-c",
                    "trap 'sleep 0.1; exit 0' TERM; sleep 1000 & \
                     until [ \"$(cat /proc/$!/comm 2>/dev/null)\" = sleep ]; do :; done; \
                     echo READY; wait",
                ])
                .ready_when(|l| l == "READY"),
            )?;
        }
        b.startup()?;
        let t = Instant::now();
        b.shutdown()?;
        stop.push(ms(t.elapsed()));
    }
    let d = percentile(stop, 0.5);
    Ok(json!({
        "workload": "W4", "what": "shutdown of 10 services that exit 0.1 s after SIGTERM (median)",
        "runs": W4_RUNS,
        "shutdown_ms": d, "baseline_ms": 100.0, "ratio": d / 100.0,
        "target": "<= 1.2x 0.1 s",
    }))
}

const W3_LINES: usize = 200_000;
/// Runs of W3 (each ours, then the raw reader): its rate swings with the host from run to
/// run, more than W1-W2 do.
const W3_RUNS: usize = 11;

fn w3_producer() -> String {
    // 79 characters + newline.
    let line = "0123456789".repeat(8)[..79].to_owned();
    format!("yes {line} | head -n {W3_LINES}; echo DONE; exec sleep 1000")
}

/// One W3 run in this process: (lines/s, peak RSS bytes, bytes held).
fn w3_once(dir: &std::path::Path, tt: bool) -> Result<(f64, u64, usize), hitchserve::Error> {
    let mut b = quiet_bundle(dir, tt);
    b.add("Producer", Service::new(["sh", "-c", &w3_producer()]))?;
    let mut tail = b.logs().out().tail();
    let t = Instant::now();
    b.startup()?;
    tail.until(|l| l == "DONE", Duration::from_secs(60))?;
    let secs = t.elapsed().as_secs_f64();
    let stored = b.service("Producer")?.logs().out().len();
    assert_eq!(stored, W3_LINES + 1, "every line must be queryable");
    let held = b.log_stats().bytes_in_memory;
    let rss = peak_rss();
    b.shutdown()?;
    Ok((W3_LINES as f64 / secs, rss, held))
}

fn w3_raw() -> f64 {
    let t = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", &w3_producer()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut r = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 || line == b"DONE\n" {
            break;
        }
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    n as f64 / secs
}

/// VmHWM of this process, in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn w3(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut rss = 0;
    let mut held = 0;
    for _ in 0..W3_RUNS {
        // A process of its own, so the peak RSS is this workload's alone.
        let out = Command::new(std::env::current_exe()?)
            .arg("W3-once")
            .arg(dir)
            .arg(on_off(tt))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim())?;
        ours.push(v["lines_per_s"].as_f64().unwrap_or(0.0));
        rss = rss.max(v["peak_rss"].as_u64().unwrap_or(0));
        held = held.max(v["held"].as_u64().unwrap_or(0));
        raw.push(w3_raw());
    }
    let (o, r) = (percentile(ours, 0.5), percentile(raw, 0.5));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(json!({
        "workload": "W3", "what": "200,000 lines of 80 bytes then DONE (median of runs)",
        "runs": W3_RUNS,
        "lines_per_s": o, "baseline_lines_per_s": r, "rate_ratio": o / r,
        "peak_rss_mib": mib(rss), "bytes_held_mib": mib(held),
        "rss_budget_mib": 2.0 * mib(held) + 16.0,
        "target": "rate >= 50% of baseline; RSS <= 2x bytes held + 16 MB",
    }))
}

const W5_PY: &str = "import time\nt = time.perf_counter()\nf = time.time\nfor _ in range(1_000_000): f()\nprint('ELAPSED %.6f' % (time.perf_counter() - t), flush=True)\ntime.sleep(1000)";
const W5_RUNS: usize = 5;

/// Seconds for 1M `time.time()` calls in a service set up by `make`.
fn w5_once(
    dir: &std::path::Path,
    faked: bool,
    make: impl Fn(Service) -> Service,
) -> Result<f64, hitchserve::Error> {
    let mut b = Bundle::new(dir).startup_timeout(Duration::from_secs(60));
    b.start_interactive_mode();
    b.add("Py", make(Service::new(["python3", "-c", W5_PY])))?;
    if faked {
        b.time_travel(Duration::from_secs(2 * 86_400))?;
    }
    let mut tail = b.logs().out().tail();
    b.startup()?;
    let line = tail.until(|l| l.starts_with("ELAPSED "), Duration::from_secs(120))?;
    let secs = line.text()["ELAPSED ".len()..]
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    b.shutdown()?;
    Ok(secs)
}

fn w5(dir: &std::path::Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let libfaketime = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    let rc = dir.join("w5-faketime.rc");
    std::fs::write(&rc, "+172800\n")?;
    let (mut real, mut ours, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..W5_RUNS {
        real.push(w5_once(dir, false, |s| s.no_libfaketime())?);
        ours.push(w5_once(dir, true, |s| s)?);
        // The comparison with libfaketime only where it is installed: the rest still runs.
        if let Some(libfaketime) = libfaketime {
            cached.push(w5_once(dir, false, |s| {
                s.no_libfaketime()
                    .env("LD_PRELOAD", libfaketime)
                    .env("FAKETIME_TIMESTAMP_FILE", &rc)
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            })?);
        }
    }
    let (r, o) = (percentile(real, 0.5), percentile(ours, 0.5));
    let c = (!cached.is_empty()).then(|| percentile(cached, 0.5));
    Ok(json!({
        "workload": "W5", "what": "1M time.time() calls in Python (median of runs, seconds)",
        "runs": W5_RUNS,
        "real_time_s": r, "hitchserve_faked_s": o, "libfaketime_cached_s": c,
        "faked_vs_cached": c.map(|c| o / c), "faked_vs_real": o / r,
        "libfaketime": if c.is_some() { "installed" } else { "not installed (apt-get install faketime): no comparison" },
        "target": "faked <= 2x libfaketime cached mode",
    }))
}

const W9_RUNS: usize = 11;

fn w9(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, hitchserve::Error> {
    let (mut first, mut restart, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..W9_RUNS {
        let mut b = quiet_bundle(dir, tt);
        b.add(
            "Trivial",
            Service::new(["sh", "-c", "echo READY; exec sleep 1000"]).ready_when(|l| l == "READY"),
        )?;
        let t = Instant::now();
        b.startup()?;
        first.push(ms(t.elapsed()));
        let svc = b.service("Trivial")?;
        let t = Instant::now();
        svc.restart()?;
        restart.push(ms(t.elapsed()));
        svc.stop()?;
        let t = Instant::now();
        svc.start()?;
        start.push(ms(t.elapsed()));
        b.shutdown()?;
    }
    let (first, restart, start) = (
        percentile(first, 0.5),
        percentile(restart, 0.5),
        percentile(start, 0.5),
    );
    Ok(json!({
        "workload": "W9", "what": "restart of a trivial service vs its first startup (median of runs, ms)",
        "runs": W9_RUNS,
        "first_startup_ms": first, "restart_ms": restart, "start_after_stop_ms": start,
        "restart_ratio": restart / first, "start_ratio": start / first,
    }))
}

/// W7's points: (services, runs). Never more than 1,000 children alive at once.
const W7_POINTS: [(usize, usize); 4] = [(20, 5), (100, 5), (500, 3), (1_000, 3)];

/// Children spawned by a baseline: killed and reaped when dropped, whatever happened.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Spawns `n` children as a service is spawned (own process group, stdout and stderr
/// piped), then reads each one's first line: the wall time.
fn spawn_raw(n: usize, script: &str) -> Duration {
    let t = Instant::now();
    let mut children = Children(Vec::with_capacity(n));
    for _ in 0..n {
        let c = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        children.0.push(c);
    }
    for c in &mut children.0 {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("read");
    }
    let took = t.elapsed();
    drop(children);
    took
}

/// Startup of `n` independent trivial services: the wall time.
fn startup_n(dir: &std::path::Path, tt: bool, n: usize) -> Result<Duration, hitchserve::Error> {
    let mut b = quiet_bundle(dir, tt);
    for i in 0..n {
        b.add(
            format!("S{i}"),
            Service::new(["sh", "-c", CHAIN_SH]).ready_when(|l| l == "READY"),
        )?;
    }
    let t = Instant::now();
    b.startup()?;
    let took = t.elapsed();
    b.shutdown()?;
    Ok(took)
}

fn w7(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, hitchserve::Error> {
    let mut points = Vec::new();
    let mut per = Vec::new();
    for (n, runs) in W7_POINTS {
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(ms(startup_n(dir, tt, n)?) / n as f64);
            raw.push(ms(spawn_raw(n, CHAIN_SH)) / n as f64);
        }
        let (o, r) = (percentile(ours, 0.5), percentile(raw, 0.5));
        per.push((o, r));
        points.push(json!({
            "services": n, "runs": runs,
            "per_service_ms": o, "baseline_per_spawn_ms": r, "ratio": o / r,
        }));
    }
    let (first, last) = (per[0], per[per.len() - 1]);
    Ok(json!({
        "workload": "W7",
        "what": "startup() per service, 20 to 1,000 independent `echo READY; exec sleep` (median of runs)",
        "points": points,
        "growth_1000_vs_20": last.0 / first.0,
        "baseline_growth_1000_vs_20": last.1 / first.1,
        "target": "per-service cost flat as the count grows (growth ~1x, like the baseline's)",
    }))
}

const W8_SERVICES: usize = 50;
const W8_LINES: usize = 20_000;
/// The limits W8 measures: the default (`None`, 64 MiB) and 8 MiB.
const W8_LIMITS: [Option<usize>; 2] = [None, Some(8 << 20)];

/// One W8 run in this process: 50 services each write 20,000 short lines then `DONE`.
fn w8_once(
    dir: &std::path::Path,
    tt: bool,
    limit: Option<usize>,
) -> Result<serde_json::Value, hitchserve::Error> {
    let mut b = quiet_bundle(dir, tt);
    if let Some(limit) = limit {
        b = b.log_memory_limit(limit);
    }
    // 16 characters + newline.
    let script = format!("yes 0123456789abcdef | head -n {W8_LINES}; echo DONE; exec sleep 1000");
    for i in 0..W8_SERVICES {
        b.add(
            format!("Chatty{i}"),
            Service::new(["sh", "-c", &script]).ready_when(|l| l == "DONE"),
        )?;
    }
    let t = Instant::now();
    // Ready once each has written DONE: every line before it is stored by then.
    b.startup()?;
    let secs = t.elapsed().as_secs_f64();
    let stats = b.log_stats();
    let rss = peak_rss();
    b.shutdown()?;
    Ok(json!({
        "secs": secs, "peak_rss": rss, "lines": stats.lines,
        "held": stats.bytes_in_memory, "peak_held": stats.peak_bytes_in_memory,
        "limit": stats.memory_limit, "lost": stats.lines_lost,
    }))
}

fn w8(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mib = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let mut points = Vec::new();
    for limit in W8_LIMITS {
        // A process of its own, so the peak RSS is this point's alone.
        let out = Command::new(std::env::current_exe()?)
            .arg("W8-once")
            .arg(dir)
            .arg(on_off(tt))
            .arg(limit.map_or("default".to_owned(), |l| l.to_string()))
            .output()?;
        if !out.status.success() {
            return Err(format!("W8-once: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
        points.push(json!({
            "log_memory_limit_mib": mib(&v["limit"]),
            "peak_rss_mib": mib(&v["peak_rss"]),
            "bytes_held_mib": mib(&v["held"]), "peak_bytes_held_mib": mib(&v["peak_held"]),
            "lines_stored": v["lines"], "lines_lost": v["lost"],
            "secs_to_all_done": v["secs"],
        }));
    }
    Ok(json!({
        "workload": "W8",
        "what": "50 services x 20,000 lines of 17 bytes, peak RSS at the default and an 8 MiB log memory limit",
        "points": points,
        "raw_bytes_written_mib": (W8_SERVICES * W8_LINES * 17) as f64 / (1024.0 * 1024.0),
        "target": "RSS bounded by the limit, not by the lines written",
    }))
}

/// W10's runs (each: one with SIGTERM blocked, one with nothing blocked).
const W10_RUNS: usize = 5;
const W10_SERVICES: usize = 100;

/// Restores the calling thread's signal mask when dropped.
struct MaskGuard(nix::sys::signal::SigSet);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{pthread_sigmask, SigmaskHow};
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

fn block_sigterm() -> nix::Result<MaskGuard> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    Ok(MaskGuard(old))
}

fn w10(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (mut blocked, mut clear) = (Vec::new(), Vec::new());
    for _ in 0..W10_RUNS {
        clear.push(ms(startup_n(dir, tt, W10_SERVICES)?));
        let guard = block_sigterm()?;
        let took = startup_n(dir, tt, W10_SERVICES);
        drop(guard);
        blocked.push(ms(took?));
    }
    let (b, c) = (percentile(blocked, 0.5), percentile(clear, 0.5));
    Ok(json!({
        "workload": "W10",
        "what": "startup of 100 services with SIGTERM blocked in the calling thread vs nothing blocked (median of runs, ms)",
        "runs": W10_RUNS,
        "blocked_startup_ms": b, "unblocked_startup_ms": c, "ratio": b / c,
        "target": "ratio ~1 (no fork() cliff)",
    }))
}

const W6_RUNS: usize = 3;

fn w6_once(dir: &std::path::Path, fresh: bool, tt: bool) -> Result<f64, hitchserve::Error> {
    let mut b = quiet_bundle(dir, tt);
    let mut pg = hitchserve::services::Postgres::new();
    if fresh {
        pg = pg.fresh_initdb();
    }
    b.add("Postgres", pg.service()?)?;
    let t = Instant::now();
    b.startup()?;
    let took = ms(t.elapsed());
    b.shutdown()?;
    Ok(took)
}

fn w6(dir: &std::path::Path, tt: bool) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    // The first template run makes the template: not what is measured.
    w6_once(dir, false, tt)?;
    let (mut fresh, mut template) = (Vec::new(), Vec::new());
    for _ in 0..W6_RUNS {
        fresh.push(w6_once(dir, true, tt)?);
        template.push(w6_once(dir, false, tt)?);
    }
    Ok(json!({
        "workload": "W6", "what": "PostgreSQL startup to ready (median of runs, ms)",
        "runs": W6_RUNS,
        "with_initdb_ms": percentile(fresh, 0.5),
        "with_template_ms": percentile(template, 0.5),
    }))
}

/// `HITCHSERVE_BENCH_TIME_TRAVEL`: `on`, `off` or `both`; unset (or empty): off, what every
/// workload measured before the switch. W5 compares both itself and ignores it.
fn time_travel_modes() -> Result<Vec<bool>, String> {
    match std::env::var("HITCHSERVE_BENCH_TIME_TRAVEL").as_deref() {
        Err(_) | Ok("") | Ok("off") => Ok(vec![false]),
        Ok("on") => Ok(vec![true]),
        Ok("both") => Ok(vec![false, true]),
        Ok(other) => Err(format!(
            "HITCHSERVE_BENCH_TIME_TRAVEL={other}: expected on, off or both"
        )),
    }
}

fn on_off(tt: bool) -> &'static str {
    if tt {
        "on"
    } else {
        "off"
    }
}

type Workload = fn(&std::path::Path, bool) -> Result<serde_json::Value, Box<dyn std::error::Error>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    if let Some("W3-once") = args.next().as_deref() {
        let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
        let tt = args.next().as_deref() == Some("on");
        let (rate, rss, held) = w3_once(&dir, tt)?;
        println!(
            "{}",
            json!({"lines_per_s": rate, "peak_rss": rss, "held": held})
        );
        return Ok(());
    }
    if let Some("W8-once") = std::env::args().nth(1).as_deref() {
        let mut args = std::env::args().skip(2);
        let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
        let tt = args.next().as_deref() == Some("on");
        let limit = args.next().and_then(|l| l.parse().ok());
        println!("{}", w8_once(&dir, tt, limit)?);
        return Ok(());
    }
    run_all()
}

fn run_all() -> Result<(), Box<dyn std::error::Error>> {
    let modes = time_travel_modes()?;
    let dir = project();
    let only = std::env::args().nth(1);
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // In the order they have always run: W6 (PostgreSQL) last, it is the slowest. W5
    // compares real and faked time itself: it runs once, whatever the switch says.
    let workloads: [(&str, Workload); 10] = [
        ("W1", |d, tt| Ok(w1(d, tt)?)),
        ("W2", |d, tt| Ok(w2(d, tt)?)),
        ("W3", w3),
        ("W4", |d, tt| Ok(w4(d, tt)?)),
        ("W5", |d, _| w5(d)),
        ("W9", |d, tt| Ok(w9(d, tt)?)),
        ("W7", |d, tt| Ok(w7(d, tt)?)),
        ("W8", w8),
        ("W10", w10),
        ("W6", w6),
    ];
    for (name, workload) in workloads {
        if !run(name) {
            continue;
        }
        if name == "W5" {
            println!("{}", workload(&dir, true)?);
            continue;
        }
        for &tt in &modes {
            let mut v = workload(&dir, tt)?;
            v["time_travel"] = json!(on_off(tt));
            println!("{v}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
