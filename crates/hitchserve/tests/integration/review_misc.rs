//! Review of the console claim (a printer thread per later claimer): tests that fail today.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use hitchserve::{Bundle, Service};

use crate::common::{helper_process, Project, PATIENCE};

const DIR_VAR: &str = "HITCHSERVE_TEST_REVIEW_MISC_DIR";
const SAME_VAR: &str = "HITCHSERVE_TEST_REVIEW_MISC_SAME_THREAD";

/// A bundle started (so its console first claimed) on another thread, as a bundle kept in a
/// `static` is started by the first test; the calling thread then claims the console (as a
/// later test does), so lines go through a printer thread.
fn started_elsewhere(dir: &str) -> Bundle {
    std::fs::write(Path::new(dir).join("said"), "").unwrap();
    let dir = dir.to_owned();
    let start = move || {
        let mut b = Bundle::new(&dir).startup_timeout(PATIENCE);
        b.add(
            "Echo",
            Service::new(["sh", "-c", "echo READY; exec tail -n +1 -F said"])
                .ready_when(|l| l == "READY"),
        )
        .unwrap();
        b.startup().unwrap();
        b
    };
    // With SAME_VAR set: started on this very thread (its first claimer: readers print directly).
    let b = match std::env::var_os(SAME_VAR) {
        Some(_) => start(),
        None => std::thread::spawn(start).join().unwrap(),
    };
    // A call from this thread claims the console: a printer thread prints for it.
    let _ = b.now();
    b
}

/// Make the service print `line` and wait until it is stored.
fn say(b: &Bundle, dir: &str, line: &str) {
    let mut tail = b.service("Echo").unwrap().logs().tail();
    let mut said = std::fs::OpenOptions::new()
        .append(true)
        .open(Path::new(dir).join("said"))
        .unwrap();
    said.write_all(format!("{line}\n").as_bytes()).unwrap();
    tail.until(|l| l == line, PATIENCE).unwrap();
}

#[test]
#[ignore = "helper: run by a_printer_whose_stdout_is_closed_reports_it_once"]
fn helper_printer_with_closed_stdout() {
    let Some(dir) = std::env::var(DIR_VAR).ok() else {
        return;
    };
    let b = started_elsewhere(&dir);
    // Stdout becomes a pipe nobody reads any more (a `| head` that ended).
    let mut fds = [0; 2];
    // SAFETY: plain system calls on descriptors we make here.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        assert_eq!(libc::dup2(fds[1], 1), 1);
    }
    for i in 0..6 {
        say(&b, &dir, &format!("line {i}"));
    }
    b.shutdown().unwrap();
    eprintln!("HELPER DONE");
}

// Failed (the printer thread, console.rs:91-96, catches the panic of `print!` but never
// sets `closed` as the direct path does (console.rs:161-163),
// so every batch panics again and the panic hook reports each one on stderr, backtrace and all):
//   a closed stdout must be reported once, not per batch: 6 reports
//   thread 'hitchserve-console' panicked at library/std/src/io/stdio.rs:...:
//   failed printing to stdout: Broken pipe (os error 32)
//   ... (one per line said)
#[test]
fn a_printer_whose_stdout_is_closed_reports_it_once() {
    let p = Project::new("review-misc-closed");
    let out = helper_process(
        "review_misc::helper_printer_with_closed_stdout",
        &[(DIR_VAR, p.dir.to_str().unwrap())],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HELPER DONE"), "{err}");
    let reports = err
        .lines()
        .filter(|l| l.starts_with("thread 'hitchserve-console'") && l.contains(" panicked at "))
        .count();
    assert!(
        reports <= 1,
        "a closed stdout must be reported once, not per batch: {reports} reports\n{err}"
    );
}

#[test]
#[ignore = "helper: run by a_log_after_a_service_line_is_printed_after_it"]
fn helper_log_after_service_line() {
    let Some(dir) = std::env::var(DIR_VAR).ok() else {
        return;
    };
    let b = started_elsewhere(&dir);
    for i in 0..ROUNDS {
        say(&b, &dir, &format!("line {i}"));
        b.log(format!("after line {i}"));
    }
    // The last round's lines are in the output once this one is (a rendezvous per batch).
    say(&b, &dir, "the end");
    say(&b, &dir, "the very end");
    b.shutdown().unwrap();
}

const ROUNDS: usize = 40;

// Failed, through the printer and without one alike: `Sink::emit` (logs/sink.rs:53-56)
// stores a line (waking the test waiting for it) and only then prints it — from the reader
// thread, or by handing it to the printer thread, whose rendezvous ends when the printer
// *receives* the batch, not once it has printed it (console.rs:85-88 says otherwise) — so the
// test's own `log`, printed at once by the claiming thread, often comes out first. Two runs:
//   through a printer: a log made after a service line was stored is printed before it in 18
//   of 40 rounds: [(0, Some(8), Some(6)), (1, Some(9), Some(7)), ...]
//   readers printing: ... in 27 of 40 rounds: [...]
// (counts vary from run to run: 3 to 40 of 40 seen in each mode; never 0 in 10 runs each)
#[test]
fn a_log_after_a_service_line_is_printed_after_it() {
    for same_thread in [false, true] {
        let p = Project::new("review-misc-order");
        let mut cmd = helper_process(
            "review_misc::helper_log_after_service_line",
            &[(DIR_VAR, p.dir.to_str().unwrap())],
        );
        if same_thread {
            cmd.env(SAME_VAR, "1");
        }
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        let at = |want: &str| lines.iter().position(|l| l.ends_with(want));
        let wrong: Vec<(usize, Option<usize>, Option<usize>)> = (0..ROUNDS)
            .map(|i| {
                (
                    i,
                    at(&format!("Echo] line {i}")),
                    at(&format!("Hitch] after line {i}")),
                )
            })
            .filter(|&(_, line, log)| line.is_none() || log.is_none() || line > log)
            .collect();
        let mode = match same_thread {
            false => "through a printer",
            true => "readers printing",
        };
        assert!(
            wrong.is_empty(),
            "{mode}: a log made after a service line was stored is printed before it in {} of {ROUNDS} rounds: {wrong:?}\n{text}",
            wrong.len()
        );
    }
}
