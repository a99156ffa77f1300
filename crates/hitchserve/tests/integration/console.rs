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

const BROKEN_VAR: &str = "HITCHSERVE_TEST_CONSOLE_BROKEN_PIPE";

#[test]
#[ignore = "helper: run by a_closed_stdout_stops_printing_with_one_warning_and_no_panic"]
fn helper_console_broken_pipe() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let Some(dir) = std::env::var_os(BROKEN_VAR) else {
        return;
    };
    // This process's stdout becomes a pipe whose reader we close mid-run (`pytest | head`),
    // and is put back before the test harness prints its verdict.
    // SAFETY: plain descriptor calls on descriptors this test owns.
    let saved = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(saved >= 0);
    // (Close-on-exec: a service holding the reader would keep the pipe open.)
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    assert_eq!(unsafe { libc::dup2(writer.as_raw_fd(), 1) }, 1);
    drop(writer);
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(PATIENCE);
    b.add(
        "Web",
        Service::new([
            "sh",
            "-c",
            "echo READY; while [ ! -e closed ]; do sleep 0.01; done; \
             i=0; while [ $i -lt 100 ]; do i=$((i+1)); echo after $i; done; exec sleep 1000",
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    // What was printed so far reached the pipe; then its reader goes.
    let mut first = [0u8; 1];
    std::fs::File::from(reader).read_exact(&mut first).unwrap();
    let web = b.service("Web").unwrap();
    let mut tail = web.logs().out().tail();
    std::fs::write(std::path::Path::new(&dir).join("closed"), "").unwrap();
    tail.until(|l| l == "after 100", PATIENCE).unwrap();
    b.log("after the reader went");
    let after = web
        .logs()
        .out()
        .lines()
        .iter()
        .filter(|l| l.starts_with("after "))
        .count();
    assert_eq!(after, 100, "every line is stored");
    b.shutdown().unwrap();
    // SAFETY: as above; `saved` is ours and closed once put back.
    unsafe {
        assert_eq!(libc::dup2(saved, 1), 1);
        libc::close(saved);
    }
    println!("broken pipe helper done");
}

/// A reader of the test's stdout that goes away (`cargo test | head`, `pytest | head`) stops
/// the console: one warning on stderr, no panic message, every line still stored. (Failed
/// before: the caught panic of `print!` still wrote "failed printing to stdout" and a
/// backtrace to stderr.)
#[test]
fn a_closed_stdout_stops_printing_with_one_warning_and_no_panic() {
    let p = Project::new("console-broken-pipe");
    let out = helper_process(
        "console::helper_console_broken_pipe",
        &[(BROKEN_VAR, p.dir.to_str().unwrap())],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("broken pipe helper done"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.matches("stdout is closed").count(),
        1,
        "one warning: {stderr}"
    );
}
