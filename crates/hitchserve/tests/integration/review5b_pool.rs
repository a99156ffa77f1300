//! Review 5b: the process-wide thread pool (runtime/pool.rs) against what a thread carries
//! from its first job to the next — its test's output capture, and its Rust name.

use std::process::Stdio;

use crate::common::{Project, PATIENCE};

const CAPTURE_VAR: &str = "HITCHSERVE_TEST_REVIEW5B_CAPTURE";
const NAME_VAR: &str = "HITCHSERVE_TEST_REVIEW5B_NAME";

/// A bundle of one service that says `word` then READY, started and shut down.
fn bundle_saying(dir: &std::path::Path, name: &str, word: &str) -> hitchserve::Bundle {
    let mut b = hitchserve::Bundle::new(dir).startup_timeout(PATIENCE);
    b.add(
        name,
        hitchserve::Service::new([
            "sh",
            "-c",
            &format!("echo '{word}'; echo READY; exec sleep 1000"),
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b
}

#[test]
#[ignore = "helper: run by review5b_a_failing_tests_output_holds_its_own_services_lines"]
fn review5b_helper_capture_first() {
    let Some(dir) = std::env::var_os(CAPTURE_VAR) else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("first");
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = bundle_saying(&dir, "First", "said in the first test");
    b.startup().unwrap();
    b.shutdown().unwrap();
    // Passes: the harness shows nothing of it.
}

#[test]
#[ignore = "helper: run by review5b_a_failing_tests_output_holds_its_own_services_lines"]
fn review5b_helper_capture_second() {
    let Some(dir) = std::env::var_os(CAPTURE_VAR) else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("second");
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = bundle_saying(&dir, "Second", "said in the second test");
    b.startup().unwrap();
    // Stored (the service is ready, so READY and the line before it were read); `log`
    // waits until stored lines are printed, so the line is on the console before this.
    b.log("the second test saw its service ready");
    b.shutdown().unwrap();
    panic!("failing on purpose, so that the harness shows this test's output");
}

// Failed before the fix (the second test's output, as the harness shows it), with:
//   the second test's output lacks its service's line: ---- review5b_pool::review5b_helper_capture_second stdout ----
//   [     Hitch] Starting Second
//   [     Hitch] READY in 0.01 s
//   [     Hitch] the second test saw its service ready
//   [     Hitch] Stopping Second
//   [     Hitch] Stopped in 0.01 s
// (no "[    Second] said in the second test", no "[    Second] READY", no "Second ready
// after" — run alone, without a bundle before it in the process, the same test shows all three.)
// Why: `print!` in a thread goes to the capture of the test whose thread spawned that thread
// (logs/console.rs relies on it: "the reader threads it spawns print into its output"). The
// pool (runtime/pool.rs) keeps the first test's supervisor threads and hands them the second
// test's services: their lines are printed into the first test's capture, long finished, and
// lost. A suite that starts a bundle per test no longer shows a failing test's service lines
// (or shows them under another failing test), the main point of the console under cargo test.
#[test]
fn review5b_a_failing_tests_output_holds_its_own_services_lines() {
    let p = Project::new("review5b-capture");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--test-threads=1",
            "--exact",
            "review5b_pool::review5b_helper_capture_first",
            "review5b_pool::review5b_helper_capture_second",
        ])
        .env(CAPTURE_VAR, p.dir.to_str().unwrap())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("---- review5b_pool::review5b_helper_capture_second stdout ----")
        .unwrap_or_else(|| panic!("no output of the second test: {text}"));
    let rest = &text[start + 1..];
    let end = rest.find("\n---- ").map_or(rest.len(), |e| e + 1);
    let second = &rest[..end];
    assert!(
        second.contains("the second test saw its service ready"),
        "the harness did not show the second test's own messages: {second}"
    );
    assert!(
        second.contains("Second] said in the second test"),
        "the second test's output lacks its service's line: {second}\n(whole output: {text})"
    );
    assert!(!second.contains("first test"), "{second}");
}

#[test]
#[ignore = "helper: run by review5b_a_readiness_check_runs_on_a_thread_never_named_after_another_service"]
fn review5b_helper_thread_names() {
    let Some(dir) = std::env::var_os(NAME_VAR) else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    // A first bundle: its threads go back to the pool when it stops.
    let alpha_dir = dir.join("alpha");
    std::fs::create_dir_all(&alpha_dir).unwrap();
    let mut alpha = bundle_saying(&alpha_dir, "Alpha", "hello");
    alpha.startup().unwrap();
    alpha.shutdown().unwrap();
    // A second one, whose readiness check notes the thread it runs on.
    let beta_dir = dir.join("beta");
    std::fs::create_dir_all(&beta_dir).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_c = std::sync::Arc::clone(&seen);
    let mut beta = hitchserve::Bundle::new(&beta_dir).startup_timeout(PATIENCE);
    beta.add(
        "Beta",
        hitchserve::Service::new(["sh", "-c", "echo READY; exec sleep 1000"]).ready_when(
            move |l| {
                let name = std::thread::current().name().unwrap_or("<none>").to_owned();
                // The kernel's name for the thread (what ps, top and perf show).
                let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
                seen_c
                    .lock()
                    .unwrap()
                    .push(format!("{name}|{}", comm.trim()));
                l == "READY"
            },
        ),
    )
    .unwrap();
    beta.startup().unwrap();
    beta.shutdown().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the check never ran");
    for seen in &seen {
        let (name, comm) = seen.split_once('|').unwrap();
        // Never another service's name: a pool thread's own name is the pool's.
        assert!(
            name == "hitchserve" || name.starts_with("hitchserve:Beta"),
            "Beta's readiness check ran on a thread named {name:?}"
        );
        assert_eq!(comm, "hitchserve:Beta", "the kernel's name for the thread");
    }
}

// Failed before the fix, with:
//   the helper failed: ... panicked at .../review5b_pool.rs:140:9:
//   Beta's readiness check ran on a thread named "hitchserve:Alpha"
// Why: pool.rs renames a reused thread with prctl(PR_SET_NAME) only — the kernel's comm —
// while `std::thread::current().name()` (what the panic hook prints: "thread
// 'hitchserve:Alpha' panicked at ...", what tracing/log formatters and user code show) stays
// the name of the thread's first job, which may be another service of another bundle. The
// commit says "a thread takes its job's name"; to Rust it does not: a panicking readiness check
// of Beta is reported as Alpha's thread.
#[test]
fn review5b_a_readiness_check_runs_on_a_thread_never_named_after_another_service() {
    let p = Project::new("review5b-names");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--test-threads=1",
            "--exact",
            "review5b_pool::review5b_helper_thread_names",
        ])
        .env(NAME_VAR, p.dir.to_str().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the helper failed: {text}"
    );
}
