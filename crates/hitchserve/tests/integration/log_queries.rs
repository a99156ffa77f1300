//! Logs as test evidence: JSON, tails (`until`, `until_json`, `follow`, `grep`), waits that
//! end early or time out with the last lines, and a store that spills without losing lines.

use std::time::Duration;

use hitchserve::{Error, Service};
use serde::Deserialize;

use crate::common::{sh, Project, PATIENCE};

/// Prints a mix of JSON and text, one line per `tick` file written by the test.
const MIXED: &str = r#"
import json, os, sys, time
print("READY", flush=True)
n = 0
while True:
    if os.path.exists("go-%d" % n):
        print("plain text %d" % n, flush=True)
        print(json.dumps({"n": n, "kind": "tick", "subject": "Tick %d" % n}), flush=True)
        print("{not json", flush=True)
        n += 1
    else:
        time.sleep(0.01)
"#;

fn mixed(p: &Project) -> hitchserve::Bundle {
    p.write("mixed.py", MIXED);
    let mut b = p.bundle();
    b.add(
        "Mixed",
        Service::new(["python3", "-u", "mixed.py"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    b
}

fn go(p: &Project, n: usize) {
    std::fs::write(p.path(&format!("go-{n}")), "").unwrap();
}

#[test]
fn until_json_skips_text_and_returns_the_matching_value() {
    let p = Project::new("until-json");
    let b = mixed(&p);
    let logs = b.service("Mixed").unwrap().logs().out();
    let mut tail = logs.tail();
    go(&p, 0);
    go(&p, 1);
    let v = tail.until_json(|v| v["n"] == 1, PATIENCE).unwrap();
    assert_eq!(v["subject"], "Tick 1");
    // The cursor moved past tick 1: waiting again sees only later lines.
    go(&p, 2);
    let v = tail.until_json(|v| v["kind"] == "tick", PATIENCE).unwrap();
    assert_eq!(v["n"], 2);
}

#[derive(Deserialize, Debug, PartialEq)]
struct Tick {
    n: u32,
    kind: String,
}

#[test]
fn json_parses_every_json_line_in_order_and_json_as_gives_typed_values() {
    let p = Project::new("json");
    let b = mixed(&p);
    let logs = b.service("Mixed").unwrap().logs().out();
    let mut tail = logs.tail();
    for n in 0..3 {
        go(&p, n);
    }
    tail.until_json(|v| v["n"] == 2, PATIENCE).unwrap();
    let values = logs.json();
    assert_eq!(values.len(), 3, "{values:?}");
    assert!(values.iter().enumerate().all(|(i, v)| v["n"] == i));
    let ticks: Vec<Tick> = logs.json_as();
    assert_eq!(
        ticks,
        (0..3)
            .map(|n| Tick {
                n,
                kind: "tick".into()
            })
            .collect::<Vec<_>>()
    );
    // Lines that are JSON but not a Tick are skipped, not an error.
    b.log("{\"other\": true}");
    assert_eq!(b.logs().json_as::<Tick>().len(), 3);
    assert_eq!(b.logs().json().len(), 4);
}

#[test]
fn a_tail_taken_before_a_line_sees_it_and_one_taken_after_does_not() {
    let p = Project::new("tail-before-after");
    let b = mixed(&p);
    let logs = b.service("Mixed").unwrap().logs().out();
    let mut before = logs.tail();
    go(&p, 0);
    before.until(|l| l == "plain text 0", PATIENCE).unwrap();
    let mut after = logs.tail();
    go(&p, 1);
    // `after` never sees tick 0: the first matching line it gets is tick 1's.
    let first = after
        .until(|l| l.starts_with("plain text"), PATIENCE)
        .unwrap();
    assert_eq!(first.text(), "plain text 1");
    // ... unless it starts earlier.
    let mut back = logs.tail().lines_back(6);
    let first = back
        .until(|l| l.starts_with("plain text"), PATIENCE)
        .unwrap();
    assert_eq!(first.text(), "plain text 0");
}

#[test]
fn grep_returns_matching_lines_seen_so_far_without_moving_the_tail() {
    let p = Project::new("grep");
    let b = mixed(&p);
    let logs = b.service("Mixed").unwrap().logs().out();
    let tail = logs.tail();
    go(&p, 0);
    go(&p, 1);
    tail.clone().until_json(|v| v["n"] == 1, PATIENCE).unwrap();
    let seen = tail.grep(|l| l.starts_with("plain"));
    let seen: Vec<_> = seen.iter().map(|l| l.text().into_owned()).collect();
    assert_eq!(seen, vec!["plain text 0", "plain text 1"]);
    assert_eq!(
        tail.grep(|l| l.starts_with("plain")).len(),
        2,
        "grep doesn't consume"
    );
    assert_eq!(logs.grep(|l| l == "READY").len(), 1);
}

#[test]
fn follow_yields_lines_as_they_arrive_and_ends_when_the_service_exits() {
    let p = Project::new("follow");
    let mut b = p.bundle();
    b.add(
        "Counter",
        sh("echo READY; for i in 1 2 3; do while [ ! -e go-$i ]; do sleep 0.01; done; echo line $i; done"),
    )
    .unwrap();
    b.startup().unwrap();
    let logs = b.service("Counter").unwrap().logs().out();
    let mut follow = logs.tail().lines_back(1).follow();
    assert_eq!(follow.next().unwrap().text(), "READY");
    for i in 1..=3 {
        std::fs::write(p.path(&format!("go-{i}")), "").unwrap();
        assert_eq!(follow.next().unwrap().text(), format!("line {i}"));
    }
    // The service exits after line 3: the iterator ends instead of blocking forever.
    assert!(follow.next().is_none());
}

#[test]
fn a_wait_ends_at_once_when_the_service_dies() {
    let p = Project::new("dies-while-waiting");
    let mut b = p.bundle();
    b.add(
        "Doomed",
        sh("echo READY; while [ ! -e die ]; do sleep 0.01; done; echo 'about to die'; echo dying >&2; exit 4"),
    )
    .unwrap();
    b.startup().unwrap();
    // A wait on its stdout: its stderr's last words are evidence too.
    let mut tail = b.service("Doomed").unwrap().logs().out().tail();
    std::fs::write(p.path("die"), "").unwrap();
    // Far longer than the test may take: only the service's exit can end this wait.
    let err = tail
        .until(|l| l == "never printed", Duration::from_secs(3600))
        .unwrap_err();
    match &err {
        Error::EndedWhileWaiting {
            what,
            why,
            last_lines,
            ..
        } => {
            assert!(what.contains("`Doomed`"), "{what}");
            assert_eq!(why, "`Doomed` exited (exit code 4)");
            assert!(last_lines.iter().any(|l| l.contains("about to die")));
            assert!(
                last_lines.iter().any(|l| l.contains("Err Doomed] dying")),
                "{last_lines:?}"
            );
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("the output ended: `Doomed` exited (exit code 4)"),
        "{err}"
    );
}

#[test]
fn a_timeout_says_what_was_awaited_and_carries_the_last_lines() {
    let p = Project::new("wait-timeout");
    let b = mixed(&p);
    let logs = b.service("Mixed").unwrap().logs().out();
    let err = logs
        .tail()
        .until(|l| l == "never printed", Duration::from_millis(300))
        .unwrap_err();
    match &err {
        Error::WaitTimeout {
            what,
            timeout,
            last_lines,
            log,
        } => {
            assert!(what.contains("`Mixed`'s stdout"), "{what}");
            // And where every line is, in the message a failing test prints.
            let log = log.as_ref().expect("the run's all.log");
            assert!(log.ends_with("logs/all.log"), "{}", log.display());
            assert!(
                err.to_string().contains(&log.display().to_string()),
                "{err}"
            );
            assert_eq!(*timeout, Duration::from_millis(300));
            assert_eq!(last_lines, &vec!["[Mixed] READY".to_owned()]);
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("timed out after 0.3 s") && msg.contains("READY"),
        "{msg}"
    );
}

#[test]
fn a_million_lines_past_a_small_memory_limit_are_all_queryable_in_order() {
    let p = Project::new("spill");
    let mut b = p.bundle().log_memory_limit(1 << 20);
    b.add(
        "Chatty",
        Service::new([
            "python3",
            "-c",
            "import sys\nw = sys.stdout.write\nfor i in range(1_000_000): w('line %07d\\n' % i)\nsys.stdout.flush()\nsys.stderr.write('DONE\\n')\nimport time; time.sleep(1000)",
        ])
        .ready_when(|l| l == "DONE"),
    )
    .unwrap();
    b.startup().unwrap();
    let out = b.service("Chatty").unwrap().logs().out();
    out.tail()
        .lines_back(1)
        .until(|l| l == "line 0999999", PATIENCE)
        .unwrap();
    let lines = out.lines();
    assert_eq!(lines.len(), 1_000_000);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("line {i:07}"));
    }
    drop(lines);
    // Old lines come back from all.log, recent ones from memory; `last` and tails work too.
    assert_eq!(out.last(1)[0].text(), "line 0999999");
    let back = out
        .tail()
        .lines_back(1_000_000)
        .next_line(PATIENCE)
        .unwrap();
    assert_eq!(back.text(), "line 0000000");
}

/// A wait's timeout holds even while lines pour in faster than they are examined.
#[test]
fn a_timeout_holds_under_a_flood_of_lines() {
    let p = Project::new("flood");
    let mut b = p.bundle();
    b.add(
        "Flood",
        sh("echo READY; exec yes 'a line that never matches'"),
    )
    .unwrap();
    b.startup().unwrap();
    let err = b
        .service("Flood")
        .unwrap()
        .logs()
        .tail()
        .until(|l| l == "never", Duration::from_millis(500))
        .unwrap_err();
    assert!(matches!(err, Error::WaitTimeout { .. }), "{err:?}");
}

#[test]
fn a_zero_timeout_still_looks_at_lines_already_there() {
    let p = Project::new("zero-timeout");
    let mut b = p.bundle();
    b.add("Hi", sh("echo hello; echo READY; exec sleep 1000"))
        .unwrap();
    b.startup().unwrap();
    let logs = b.service("Hi").unwrap().logs();
    let line = logs
        .tail()
        .lines_back(2)
        .until(|l| l == "hello", Duration::ZERO)
        .unwrap();
    assert_eq!(line.text(), "hello");
}

/// Asks for a password without a newline, then waits for the test to answer (a file).
const LOGIN: &str = r#"
import os, sys, time
print("READY", flush=True)
sys.stdout.write("Password: ")
sys.stdout.flush()
while not os.path.exists("answer"):
    time.sleep(0.01)
sys.stdout.write("accepted\n")
print("welcome", flush=True)
time.sleep(1000)
"#;

fn login(p: &Project) -> hitchserve::Bundle {
    p.write("login.py", LOGIN);
    let mut b = p.bundle();
    b.add(
        "Login",
        Service::new(["python3", "login.py"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    b
}

#[test]
fn until_sees_a_prompt_without_a_newline_and_then_only_the_rest_of_its_line() {
    let p = Project::new("partial-until");
    let b = login(&p);
    let logs = b.service("Login").unwrap().logs().out();
    let mut tail = logs.tail();
    let prompt = tail
        .until(|l| l.starts_with("Password:"), PATIENCE)
        .unwrap();
    assert_eq!(prompt.text(), "Password: ");
    assert!(prompt.is_partial() && !prompt.is_rest() && !prompt.had_newline());
    // Not a stored line: queries only ever hold whole lines.
    assert_eq!(logs.lines(), vec!["READY"]);
    std::fs::write(p.path("answer"), "").unwrap();
    // The tail does not hand out `Password: ` again: the rest of that line, then on.
    let rest = tail.next_line(PATIENCE).unwrap();
    assert_eq!(rest.text(), "accepted");
    assert!(rest.is_rest() && !rest.is_partial() && rest.had_newline());
    let next = tail.next_line(PATIENCE).unwrap();
    assert_eq!(next.text(), "welcome");
    assert!(!next.is_rest() && !next.is_partial());
    assert_eq!(rest.seq() + 1, next.seq());
    // The whole line is stored once, in the logs and in all.log.
    assert_eq!(logs.lines(), vec!["READY", "Password: accepted", "welcome"]);
    assert_eq!(logs.len(), 3);
    b.shutdown().unwrap();
    let all = std::fs::read_to_string(b.run_dir().unwrap().join("logs/all.log")).unwrap();
    let password: Vec<&str> = all.lines().filter(|l| l.contains("Password")).collect();
    assert_eq!(password.len(), 1, "{all}");
    assert!(password[0].ends_with("Login] Password: accepted"), "{all}");
}

#[test]
fn follow_yields_a_prompt_as_a_partial_line_then_the_rest_of_its_line() {
    let p = Project::new("partial-follow");
    let b = login(&p);
    let logs = b.service("Login").unwrap().logs().out();
    // Another tail that matched nothing in the partial sees the line whole when it ends.
    let whole = {
        let mut other = logs.tail();
        std::thread::spawn(move || other.until(|l| l.contains("accepted"), PATIENCE))
    };
    // `follow` blocks without a limit: read it on a thread, wait here with one. It ends
    // when the bundle stops.
    let (tx, rx) = std::sync::mpsc::channel();
    let follow = logs.tail().lines_back(1).follow();
    let reader = std::thread::spawn(move || {
        for line in follow {
            let _ = tx.send((line.text().into_owned(), line.is_partial(), line.is_rest()));
        }
    });
    let next = || rx.recv_timeout(PATIENCE).expect("a line from follow");
    assert_eq!(next(), ("READY".into(), false, false));
    assert_eq!(next(), ("Password: ".into(), true, false));
    std::fs::write(p.path("answer"), "").unwrap();
    assert_eq!(next(), ("accepted".into(), false, true));
    assert_eq!(next(), ("welcome".into(), false, false));
    let whole = whole.join().unwrap().unwrap();
    assert_eq!(whole.text(), "Password: accepted");
    assert!(!whole.is_partial() && !whole.is_rest());
    assert_eq!(logs.grep(|l| l.starts_with("Password")).len(), 1);
    b.shutdown().unwrap();
    reader.join().unwrap();
}

#[test]
fn a_timeout_shows_the_line_the_service_has_started_but_not_ended() {
    let p = Project::new("partial-timeout");
    let b = login(&p);
    let logs = b.service("Login").unwrap().logs().out();
    logs.tail()
        .until(|l| l.starts_with("Password:"), PATIENCE)
        .unwrap();
    let err = logs
        .tail()
        .until(|l| l == "never printed", Duration::from_millis(200))
        .unwrap_err();
    match &err {
        Error::WaitTimeout { last_lines, .. } => assert_eq!(
            last_lines,
            &vec![
                "[Login] READY".to_owned(),
                "[Login] Password:  [hitchserve: no newline yet]".to_owned()
            ]
        ),
        other => panic!("wrong error: {other:?}"),
    }
}

/// A service writes many lines to stderr, then `DONE` to stdout, beside a service that
/// writes without pause (whose reader shows tails its own lines all the time): a wait for
/// `DONE` finds every one of those stderr lines stored (a test that waits for the end and
/// then looks for a traceback must not pass while it is still in the pipe).
#[test]
fn a_wait_for_a_stdout_line_finds_the_stderr_lines_written_before_it() {
    const WRITER: &str = "import sys\n\
        print('READY', flush=True)\n\
        sys.stdin.readline()\n\
        sys.stderr.write(''.join('e%d\\n' % i for i in range(60000)))\n\
        sys.stderr.flush()\n\
        print('DONE', flush=True)\n\
        sys.stdin.readline()\n";
    const CHATTY: &str = "import sys, os\n\
        print('READY', flush=True)\n\
        while True:\n    os.write(1, b'chat\\n')\n";
    let p = Project::new("stderr-before-stdout");
    let mut short = Vec::new();
    for round in 0..5 {
        let mut b = p.bundle();
        // Its stdin a fifo the test opens: a line there starts the writing, once the tail
        // below is taken. Kept open until the end: its end would end the service.
        let fifo = p.path(&format!("go-{round}"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let script = format!("exec python3 -c \"$0\" < {}", fifo.display());
        b.add(
            "Writer",
            Service::new(["sh", "-c", &script, WRITER]).ready_when(|l| l == "READY"),
        )
        .unwrap();
        b.add(
            "Chatty",
            Service::new(["python3", "-c", CHATTY]).ready_when(|l| l == "READY"),
        )
        .unwrap();
        let go =
            std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(fifo).unwrap());
        b.startup().unwrap();
        let mut fifo = go.join().unwrap();
        let svc = b.service("Writer").unwrap();
        let mut tail = svc.logs().out().tail();
        std::io::Write::write_all(&mut fifo, b"go\n").unwrap();
        tail.until(|l| l == "DONE", PATIENCE).unwrap();
        let n = svc.logs().err().len();
        if n != 60000 {
            short.push((round, n));
        }
        b.shutdown().unwrap();
    }
    assert!(
        short.is_empty(),
        "stderr lines seen when DONE was: {short:?}"
    );
}
