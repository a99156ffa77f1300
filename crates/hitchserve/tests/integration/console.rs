//! The console: `[   Name] line` / `[Err Name] line` aligned, `[Hitch]` lines, interactive mode.

use std::process::Stdio;
use std::sync::OnceLock;

use hitchserve::Service;

use crate::common::{helper_process, Project, PATIENCE};

const PROJECT_VAR: &str = "HITCHSERVE_TEST_CONSOLE_PROJECT";

#[test]
#[ignore = "helper: run by console_prints_aligned_prefixed_lines_and_interactive_mode_mutes_it"]
fn helper_console_bundle() {
    let Some(dir) = std::env::var_os(PROJECT_VAR) else {
        return;
    };
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(PATIENCE);
    b.add(
        "Web",
        Service::new([
            "sh",
            "-c",
            "echo hello; echo oops >&2; echo READY; while [ ! -e go ]; do sleep 0.01; done; echo muted line; echo muted err >&2; exec sleep 1000",
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.add(
        "LongerName",
        Service::new(["sh", "-c", "echo hi; exec sleep 1000"]).ready_when(|l| l == "hi"),
    )
    .unwrap();
    b.startup().unwrap();
    b.log("a message from the test");
    b.warn("something bad");
    let web = b.service("Web").unwrap();
    // stderr is a separate pipe: make sure `oops` has arrived before muting.
    web.logs()
        .err()
        .tail()
        .lines_back(1)
        .until(|l| l == "oops", PATIENCE)
        .unwrap();
    let mut out = web.logs().out().tail();
    let mut err = web.logs().err().tail();
    b.start_interactive_mode();
    std::fs::write(std::path::Path::new(&dir).join("go"), "").unwrap();
    out.until(|l| l == "muted line", PATIENCE).unwrap();
    err.until(|l| l == "muted err", PATIENCE).unwrap();
    b.stop_interactive_mode();
    b.log("back");
    assert!(web.logs().lines().contains(&"muted line".to_owned()));
    b.shutdown().unwrap();
}

#[test]
fn console_prints_aligned_prefixed_lines_and_interactive_mode_mutes_it() {
    let p = Project::new("console");
    let out = helper_process(
        "console::helper_console_bundle",
        &[(PROJECT_VAR, p.dir.to_str().unwrap())],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    // "Err LongerName" is the widest label: 14 characters.
    assert!(has("[           Web] hello"), "{text}");
    assert!(has("[       Err Web] oops"), "{text}");
    assert!(has("[    LongerName] hi"), "{text}");
    assert!(has("[         Hitch] a message from the test"), "{text}");
    assert!(has("[         Hitch] WARNING: something bad"), "{text}");
    assert!(has("[         Hitch] back"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("[         Hitch] READY in ")),
        "{text}"
    );
    assert!(
        !text.contains("muted"),
        "interactive mode must mute the console: {text}"
    );
    assert!(
        has("[         Hitch] 2 service lines were not printed during interactive mode; see the logs"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

const SHARED_VAR: &str = "HITCHSERVE_TEST_CONSOLE_SHARED_PROJECT";

/// The bundle the two helpers below share, as tests share one kept in a `static`.
fn shared_bundle(dir: &str) -> &'static hitchserve::Bundle {
    static SHARED: OnceLock<hitchserve::Bundle> = OnceLock::new();
    SHARED.get_or_init(|| {
        std::fs::write(std::path::Path::new(dir).join("said"), "").unwrap();
        let mut b = hitchserve::Bundle::new(dir).startup_timeout(PATIENCE);
        b.add(
            "Echo",
            Service::new(["sh", "-c", "echo READY; exec tail -n +1 -F said"])
                .ready_when(|l| l == "READY"),
        )
        .unwrap();
        b.startup().unwrap();
        b
    })
}

/// Make the shared service print `word`, and return once it is in this test's output: the
/// line after it was stored only once `word` was printed (a reader prints a batch before it
/// reads the next).
fn say(dir: &str, word: &str) {
    let echo = shared_bundle(dir).service("Echo").unwrap();
    let mut tail = echo.logs().tail();
    for line in [word.to_owned(), format!("{word} (after)")] {
        let mut said = std::fs::OpenOptions::new()
            .append(true)
            .open(std::path::Path::new(dir).join("said"))
            .unwrap();
        std::io::Write::write_all(&mut said, format!("{line}\n").as_bytes()).unwrap();
        tail.until(|l| l == line, PATIENCE).unwrap();
    }
}

#[test]
#[ignore = "helper: run by live_lines_go_to_the_test_running_when_they_arrive"]
fn helper_shared_console_1() {
    let Some(dir) = std::env::var(SHARED_VAR).ok() else {
        return;
    };
    say(&dir, "said during the first test");
    panic!("failing on purpose, so that the harness shows this test's output");
}

#[test]
#[ignore = "helper: run by live_lines_go_to_the_test_running_when_they_arrive"]
fn helper_shared_console_2() {
    let Some(dir) = std::env::var(SHARED_VAR).ok() else {
        return;
    };
    say(&dir, "said during the second test");
    panic!("failing on purpose, so that the harness shows this test's output");
}

#[test]
fn live_lines_go_to_the_test_running_when_they_arrive() {
    let p = Project::new("console-shared");
    // Two tests, one after the other, sharing a bundle kept in a `static`; the harness
    // captures each one's output and shows it because each fails.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--test-threads=1",
            "--exact",
            "console::helper_shared_console_1",
            "console::helper_shared_console_2",
        ])
        .env(SHARED_VAR, p.dir.to_str().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let section = |test: &str| -> String {
        let start = text
            .find(&format!("---- console::{test} stdout ----"))
            .unwrap_or_else(|| panic!("no output of {test}: {text}"));
        let rest = &text[start + 1..];
        let end = rest.find("\n---- ").map_or(rest.len(), |e| e + 1);
        rest[..end].to_owned()
    };
    let (first, second) = (
        section("helper_shared_console_1"),
        section("helper_shared_console_2"),
    );
    assert!(
        first.contains("Echo] said during the first test"),
        "{first}"
    );
    assert!(!first.contains("second test"), "{first}");
    assert!(
        second.contains("Echo] said during the second test"),
        "{second}"
    );
    assert!(!second.contains("first test"), "{second}");
}
