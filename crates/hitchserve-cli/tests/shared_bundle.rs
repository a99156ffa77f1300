//! A shared bundle (`hitchserve up --shared`, `attach`, `release`, and the library's
//! `SharedBundle`), run for real: many holder processes, one startup; holders killed with
//! SIGKILL; racing first users; a changed definition; the clock; each holder's own view of
//! the logs.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hitchserve::jiff::{SignedDuration, Timestamp};
use hitchserve::SharedBundle;

const BIN: &str = env!("CARGO_BIN_EXE_hitchserve");

/// A temporary project whose service `App` appends a line to `starts.txt` each time it
/// starts.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(tag: &str) -> Project {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hitchserve-shared-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Made here, not found: `create_dir` fails on anything in its place (a symlink
        // another user planted in the shared temp directory included).
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let p = Project { dir };
        p.define("READY");
        p
    }

    /// (Re)write the definition: `App` says `ready_word` once started.
    fn define(&self, ready_word: &str) {
        let starts = self.dir.join("starts.txt");
        std::fs::write(
            self.file(),
            format!(
                r#"
[services.App]
command = ["sh", "-c", "echo start >> '{}'; echo {ready_word}; exec sleep 1000"]
ready = {{ line_contains = "{ready_word}" }}
ports = ["http"]
env = {{ GREETING = "hello from App" }}
"#,
                starts.display()
            ),
        )
        .unwrap();
    }

    fn file(&self) -> PathBuf {
        self.dir.join("hitchserve.toml")
    }

    /// Replace the definition.
    fn write(&self, toml: &str) {
        std::fs::write(self.file(), toml).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-f").arg(self.file()).args(args).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn starts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("starts.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `up --shared` with a lease for `holder`, a long idle time (the test brings it down).
    fn up_shared(&self, holder: u32) {
        let out = self.run(&[
            "up",
            "--shared",
            "--idle",
            "600s",
            "--pid",
            &holder.to_string(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// The services' clock, as `hitchserve now` says it.
    fn now(&self) -> Timestamp {
        let out = self.run(&["now"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn holders(&self) -> Vec<u64> {
        self.status()["shared"]["holders"]
            .as_array()
            .map(|h| h.iter().filter_map(|p| p.as_u64()).collect())
            .unwrap_or_default()
    }

    /// Block until the bundle's `up` has ended (it holds `up.lock` until then).
    fn wait_down(&self) {
        let lock = std::fs::File::open(self.dir.join(".hitchserve/up.lock")).unwrap();
        // SAFETY: a blocking shared lock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) }, 0);
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process that only holds leases; killed and reaped when dropped.
struct Holder(Child);

impl Holder {
    fn new() -> Holder {
        Holder(Command::new("sleep").arg("1000").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn up_shared(p: &Project, holder: u32, idle: &str) -> serde_json::Value {
    let out = p.run(&[
        "up",
        "--shared",
        "--json",
        "--idle",
        idle,
        "--pid",
        &holder.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

/// Wait (generously) for what only a query can see: used once, for a process that is
/// blocked waiting (nothing announces that it waits; see its test).
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "still waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run by [`test_processes_share_one_startup`] in processes of their own, as nextest runs
/// every test: attach, and say which process the service is.
#[test]
#[ignore = "a holder process, run by test_processes_share_one_startup"]
fn shared_holder_process() {
    let file = std::env::var("HS_SHARED_FILE").expect("run by test_processes_share_one_startup");
    let shared = SharedBundle::builder(file)
        .program(BIN)
        .idle(Duration::from_secs(60))
        .attach()
        .unwrap();
    let pid = shared.service("App").unwrap().pid().unwrap().unwrap();
    println!("SERVICE-PID={pid} STARTED={}", shared.started_it());
}

#[test]
fn test_processes_share_one_startup() {
    let p = Project::new("nextest");
    // Six test processes at once, as nextest runs them (one test each), then two more.
    let run = |n: usize| -> Vec<String> {
        let children: Vec<Child> = (0..n)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "shared_holder_process",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env("HS_SHARED_FILE", p.file())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                assert!(out.status.success(), "{}", text(&out));
                let said = String::from_utf8_lossy(&out.stdout).into_owned();
                said.lines()
                    .find_map(|l| l.strip_prefix("SERVICE-PID=").map(str::to_owned))
                    .unwrap_or_else(|| panic!("no service pid in {said}"))
            })
            .collect()
    };
    let mut seen = run(6);
    seen.extend(run(2));
    assert_eq!(p.starts(), 1, "one startup for eight test processes");
    let pids: Vec<&str> = seen.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert!(
        pids.iter().all(|s| *s == pids[0]),
        "one service process: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|s| s.ends_with("STARTED=true")).count(),
        1
    );
}

#[test]
fn a_killed_holder_leaves_the_bundle_to_the_others_and_the_last_death_stops_it() {
    let p = Project::new("sigkill");
    let (mut a, mut b) = (Holder::new(), Holder::new());
    up_shared(&p, a.pid(), "0");
    up_shared(&p, b.pid(), "0");
    let service = p.status()["services"][0]["pid"].as_u64().unwrap();
    a.kill();
    // Killed and reaped: the bundle answers without it (it checks its holders' pidfds).
    assert_eq!(p.holders(), [u64::from(b.pid())]);
    assert_eq!(p.status()["services"][0]["state"], "ready");
    assert_eq!(p.status()["services"][0]["pid"].as_u64(), Some(service));
    b.kill();
    p.wait_down();
    assert!(
        !Path::new(&format!("/proc/{service}")).exists(),
        "the service outlived its bundle"
    );
    assert_eq!(p.starts(), 1);
}

/// A holder that attaches to a bundle with a crashed service is told so (it was told
/// "READY", exit 0, and met the crash later in a tail); `up --shared` waits while others
/// hold it (another test's fault injection starts it again), and replaces it once nobody
/// does.
#[test]
fn a_crashed_service_is_told_to_the_next_holder_waited_for_and_replaced_once_nobody_holds_it() {
    let p = Project::new("crashed");
    let (mut a, b, c) = (Holder::new(), Holder::new(), Holder::new());
    up_shared(&p, a.pid(), "60s");
    let killed = p.run(&["kill", "App"]);
    assert!(killed.status.success(), "{}", text(&killed));
    // `attach` is told at once.
    let refused = p.run(&["attach", "--pid", &b.pid().to_string()]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let said = text(&refused);
    assert!(
        said.contains("not all ready")
            && said.contains("App")
            && said.contains(&a.pid().to_string()),
        "{said}"
    );
    // `up --shared` waits (saying why) until the holder that killed it starts it again.
    let mut waiting = p
        .command(&["up", "--shared", "--json", "--pid", &b.pid().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut note = String::new();
    std::io::BufRead::read_line(&mut err, &mut note).unwrap();
    assert!(
        note.contains("waiting for the shared bundle") && note.contains("App"),
        "{note}"
    );
    let started = p.run(&["start", "App"]);
    assert!(started.status.success(), "{}", text(&started));
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.holders().len(), 2);
    // Crashed again, and nobody holds it: replaced by a new run.
    let killed = p.run(&["kill", "App"]);
    assert!(killed.status.success(), "{}", text(&killed));
    a.kill();
    drop(b);
    let v = up_shared(&p, c.pid(), "60s");
    assert_eq!(v["started"], true);
    assert_eq!(p.status()["services"][0]["state"], "ready");
    assert_eq!(p.starts(), 3);
}

/// Racing first users whose start fails all hear that failure: they tried again one after
/// another, each waiting out the failure anew (with a startup timeout, the last of 8
/// workers waited minutes).
#[test]
fn racing_first_users_of_a_start_that_fails_all_hear_its_failure() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::new("race-fail");
    let starts = p.dir.join("starts.txt");
    let go = p.dir.join("go");
    p.write(&format!(
        r#"
[services.App]
command = ["sh", "-c", "echo start >> '{}'; until [ -e '{}' ]; do sleep 0.01; done; echo broken; exit 3"]
ready = {{ line_contains = "READY" }}
"#,
        starts.display(),
        go.display()
    ));
    let holder = Holder::new();
    let racers: Vec<Child> = (0..3)
        .map(|_| {
            p.command(&["up", "--shared", "--pid", &holder.pid().to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Once one has started it and the two others wait for the decision (their locks are
    // blocked in /proc/locks), the start fails.
    let lock = p.dir.join(".hitchserve/shared.lock");
    wait_for("two racers waiting for the first one's start", || {
        let Ok(ino) = std::fs::metadata(&lock).map(|m| m.ino()) else {
            return false;
        };
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        let waiting = locks
            .lines()
            .filter(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
            .count();
        waiting == 2 && std::fs::read_to_string(&starts).is_ok()
    });
    std::fs::write(&go, "").unwrap();
    for racer in racers {
        let out = racer.wait_with_output().unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("exited before it was ready"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(p.starts(), 1, "each racer started it again");
}

#[test]
fn racing_first_users_start_one_bundle() {
    let p = Project::new("race");
    let holder = Holder::new();
    let racers: Vec<Child> = (0..20)
        .map(|_| {
            Command::new(BIN)
                .arg("-f")
                .arg(p.file())
                .args(["up", "--shared", "--json", "--idle", "0", "--pid"])
                .arg(holder.pid().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut started = 0;
    for racer in racers {
        let out = racer.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        started += usize::from(v["started"] == true);
    }
    assert_eq!(started, 1);
    assert_eq!(p.starts(), 1);
    assert_eq!(p.holders().len(), 20);
}

#[test]
fn a_changed_definition_is_refused_while_held_and_replaced_once_free() {
    let p = Project::new("changed");
    let (mut a, b) = (Holder::new(), Holder::new());
    up_shared(&p, a.pid(), "60s");
    p.define("SET");
    let out = p.run(&["up", "--shared", "--pid", &b.pid().to_string()]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("`App` changed"), "{said}");
    assert!(
        said.contains(&a.pid().to_string()),
        "names the holder: {said}"
    );
    // Nobody holds the old one any more: it is replaced, not served.
    a.kill();
    assert!(p.holders().is_empty());
    let v = up_shared(&p, b.pid(), "60s");
    assert_eq!(v["started"], true);
    assert_eq!(p.starts(), 2);
    let logs = text(&p.run(&["logs", "App"]));
    assert!(logs.contains("SET"), "{logs}");
}

#[test]
fn time_travel_needs_the_shared_bundle_to_itself() {
    let p = Project::new("clock");
    let other = Holder::new();
    let mine = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    up_shared(&p, other.pid(), "60s");
    let err = mine
        .time_travel_by(hitchserve::jiff::SignedDuration::from_hours(24))
        .unwrap_err()
        .to_string();
    assert!(err.contains("other"), "{err}");
    assert!(err.contains(&other.pid().to_string()), "{err}");
    // The CLI's `time-travel` is refused alike (it speaks for its caller, this process).
    let out = p.run(&["release", "--pid", &other.pid().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("released 1 lease\n"), "{}", text(&out));
    // Again: nothing is left to release, and it says so (not an error: a teardown may
    // release twice).
    let out = p.run(&["release", "--pid", &other.pid().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("holds no lease"), "{}", text(&out));
    // A lease id nobody holds is an error: a mistyped id would leave the real one held.
    let out = p.run(&["release", "--lease", "999"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no lease 999"), "{}", text(&out));
    assert!(text(&out).contains("hitchserve status"), "{}", text(&out));
    let before = mine.now().unwrap();
    mine.time_travel_by(hitchserve::jiff::SignedDuration::from_hours(24))
        .unwrap();
    let after = mine.now().unwrap();
    assert!(after.duration_since(before) >= hitchserve::jiff::SignedDuration::from_hours(24));
    // Its travel ends with its lease: the next holder finds the real clock.
    mine.release().unwrap();
    let next = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    assert!(!next.started_it(), "the same bundle");
    let now = next.now().unwrap();
    let real = hitchserve::jiff::Timestamp::now();
    assert!(
        now.duration_since(real).abs() < hitchserve::jiff::SignedDuration::from_hours(1),
        "the next holder inherited the travel: {now} (real time {real})"
    );
}

#[test]
fn each_holder_sees_the_lines_since_it_attached() {
    let p = Project::new("views");
    let early = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    // A restart while only `early` holds it: its lines are early's, not late's.
    let out = p.run(&["restart", "App"]);
    assert!(out.status.success(), "{}", text(&out));
    let late = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    let app = early.service("App").unwrap();
    let mut tail = app.tail();
    assert_eq!(
        tail.until("READY", Duration::from_secs(30))
            .unwrap()
            .incarnation,
        2
    );
    let late_lines = late.service("App").unwrap().logs().unwrap();
    assert!(
        late_lines.iter().all(|l| l.text != "READY"),
        "the late holder sees another's lines: {late_lines:?}"
    );
    // The next start is seen by both, each through its own cursor.
    let out = p.run(&["restart", "App"]);
    assert!(out.status.success(), "{}", text(&out));
    let found = late
        .service("App")
        .unwrap()
        .tail()
        .until("READY", Duration::from_secs(30))
        .unwrap();
    assert_eq!(found.incarnation, 3);
    assert_eq!(
        tail.until("READY", Duration::from_secs(30))
            .unwrap()
            .incarnation,
        3
    );
    // A pattern that doesn't parse is said at once, as a bad pattern.
    let bad = tail.until("(unclosed", Duration::from_secs(30));
    assert!(
        matches!(bad, Err(hitchserve::Error::InvalidPattern { .. })),
        "{bad:?}"
    );
    let report = late.report(40);
    assert!(report.contains("App] READY"), "{report}");
    assert!(report.contains("all.log: "), "{report}");
}

#[test]
fn a_shared_service_answers_as_a_local_one_does() {
    let p = Project::new("query");
    let shared = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    let app = shared.service("App").unwrap();
    assert_eq!(app.state().unwrap(), "ready");
    let pid = app.pid().unwrap().unwrap();
    assert_eq!(app.process().unwrap().pid(), pid);
    assert!(app.port("http").unwrap() > 0);
    let env = app.environment().unwrap();
    assert!(
        env.contains(&("GREETING".to_owned(), "hello from App".to_owned())),
        "{env:?}"
    );
    let out = app
        .command("sh")
        .unwrap()
        .args(["-c", "echo $GREETING"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from App"
    );
    let err = app.port("https").unwrap_err().to_string();
    assert!(err.contains("`https`") && err.contains("`http`"), "{err}");
    let err = shared.service("Nope").unwrap_err().to_string();
    assert!(err.contains("`Nope`") && err.contains("App"), "{err}");
    // A stopped service has no process, and says how to get one.
    let out = p.run(&["stop", "App"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = app.process().unwrap_err().to_string();
    assert!(
        err.contains("`App`") && err.contains("hitchserve start App"),
        "{err}"
    );
}

// Found by a review: each failed before its fix.

// Was: the CLI's `time-travel` sends no `pid` (client.rs, Command::TimeTravel), so the
// server's clock_refused (server.rs) counts every holder as "another" process, the caller
// included: the shell (here: this test process) that holds the only lease can't move the
// clock with `hitchserve time-travel`, though the README says it may like the library.
// Failed with: "the only holder's time travel was refused: hitchserve: time travel moves the
// clock of every holder of this shared bundle, and 1 other process(es) hold it (pids <this
// test's pid>)".
#[test]
fn cli_time_travel_by_the_only_holder_is_allowed() {
    let p = Project::new("cli-clock");
    // No --pid: the lease is held by the process that ran the command, this one.
    let out = p.run(&["up", "--shared", "--json", "--idle", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.holders(), [u64::from(std::process::id())]);
    let out = p.run(&["time-travel", "+1h"]);
    assert!(
        out.status.success(),
        "the only holder's time travel was refused: {}",
        text(&out)
    );
    // Run through a wrapper (`timeout` forks it), the caller is the wrapper: `--pid` names
    // the holder (the script's `$$`).
    let me = std::process::id().to_string();
    let wrapped = |args: &[&str]| {
        std::process::Command::new("timeout")
            .args(["600", BIN])
            .args(args)
            .current_dir(&p.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = wrapped(&["time-travel", "+1h"]);
    assert!(
        !out.status.success(),
        "the wrapper is no holder: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("holds no lease of this shared bundle"),
        "{}",
        text(&out)
    );
    let out = wrapped(&["time-travel", "+1h", "--pid", &me]);
    assert!(out.status.success(), "{}", text(&out));
}

// Was: lease ids start at 1 in every bundle (leases.rs, `Held { next: 1 }`) and a
// SharedBundle's release/Drop sends only `{"cmd":"release","lease":N}` to whatever bundle
// now answers on the project's socket (hitchserve/src/shared.rs, `Drop for SharedBundle`;
// server.rs "release"). A holder whose bundle was stopped (a `down`, a crash) and started
// again by another process releases the *new* bundle's lease 1 — another process's —
// when it is dropped; the new holder's bundle then stops for want of a lease.
// Failed with: "a holder of the old bundle released the new bundle's lease of another
// process; left: [], right: [<other's pid>]".
#[test]
fn dropping_a_holder_of_a_stopped_bundle_leaves_the_next_bundles_leases_alone() {
    let p = Project::new("stale");
    let stale = SharedBundle::builder(p.file())
        .program(BIN)
        .idle(Duration::from_secs(60))
        .attach()
        .unwrap();
    let out = p.run(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    let other = Holder::new();
    let v = up_shared(&p, other.pid(), "60s");
    assert_eq!(v["started"], true);
    assert_eq!(v["lease"], stale.lease(), "the new bundle reuses the id");
    drop(stale);
    assert_eq!(
        p.holders(),
        [u64::from(other.pid())],
        "a holder of the old bundle released the new bundle's lease of another process"
    );
}

// Was: a lease is granted while the bundle is being stopped by a `down` (or a SIGTERM to
// its `up`): Leases::take (leases.rs) refuses only when the *idle* timer has set `closing`;
// a stop that comes from `down`/a signal (up.rs, `stop_rx.recv()` then `bundle.shutdown()`)
// never sets it, and the listener thread keeps answering `lease` during the shutdown. So
// `up --shared` says READY (attached, `started: false`) on a bundle that is going away, and
// its holder is left attached to a dead bundle.
// Failed with: "`up --shared` said READY during a `down`, and its bundle is gone:
// {.."holders":[<first>,<second>],"lease":2,..,"started":false}; left: [], right: [<second>]".
/// The crash an `up --shared` waits on is said in the file's terms, as every error of
/// the command is (a service that exits 0 is told how to be a job that ends).
#[test]
fn a_crash_waited_on_is_said_in_the_files_terms() {
    let p = Project::new("crash-terms");
    let go = p.dir.join("go.fifo");
    assert!(Command::new("mkfifo").arg(&go).status().unwrap().success());
    p.write(&format!(
        r#"
[services.App]
command = ["sh", "-c", "echo READY; read x < '{go}'; exit 0"]
ready = {{ line_contains = "READY" }}
"#,
        go = go.display()
    ));
    let (a, b) = (Holder::new(), Holder::new());
    up_shared(&p, a.pid(), "60s");
    // Opened and closed: the service reads the end and exits 0, after it was ready.
    drop(std::fs::OpenOptions::new().write(true).open(&go).unwrap());
    let crashed = p.run(&[
        "logs",
        "--until",
        "exited unexpectedly",
        "-n",
        "100",
        "--timeout",
        "60s",
    ]);
    assert!(crashed.status.success(), "{}", text(&crashed));
    let mut waiting = p
        .command(&["up", "--shared", "--pid", &b.pid().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut note = String::new();
    std::io::BufRead::read_line(&mut err, &mut note).unwrap();
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert!(
        note.contains("waiting for the shared bundle") && note.contains("`needs_completed`"),
        "{note}"
    );
    assert!(!note.contains("::"), "{note}");
}

#[test]
fn up_shared_during_a_down_gets_a_running_bundle() {
    let p = Project::new("down-race");
    let gate = p.dir.join("let-it-stop");
    p.write(&format!(
        r#"
[bundle]
shutdown_timeout = "120s"

[services.App]
command = ["sh", "-c", "trap 'echo GOT-TERM; while [ ! -e {gate} ]; do sleep 0.05; done; exit 0' TERM; echo READY; while :; do sleep 1 & wait $!; done"]
ready = {{ line_contains = "READY" }}
"#,
        gate = gate.display()
    ));
    let (first, second) = (Holder::new(), Holder::new());
    up_shared(&p, first.pid(), "60s");
    // A `down` under way: the service has its stop signal and holds the shutdown open.
    let down = p
        .command(&["down"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = p.run(&[
        "logs",
        "App",
        "--until",
        "GOT-TERM",
        "-n",
        "100",
        "--timeout",
        "60s",
    ]);
    assert!(seen.status.success(), "{}", text(&seen));
    let asker = p
        .command(&[
            "up",
            "--shared",
            "--json",
            "--pid",
            &second.pid().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Refused a lease on the stopping bundle, it waits for the stop to end (on a pidfd of
    // the stopping `up`, as its descriptors show), to start a new one.
    let fds = format!("/proc/{}/fd", asker.id());
    wait_for("`up --shared` to wait for the stopping bundle", || {
        std::fs::read_dir(&fds).is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("pidfd"))
            })
        })
    });
    std::fs::write(&gate, "").unwrap();
    let _ = down.wait_with_output();
    let out = asker.wait_with_output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["started"], true,
        "a new bundle, not the stopping one: {said}"
    );
    assert_eq!(
        p.holders(),
        [u64::from(second.pid())],
        "`up --shared` said READY during a `down`, and its bundle is gone: {said}"
    );
}

// Was: a lease taken without --pid is held by getppid() (shared.rs `holder`). When the
// process that ran `hitchserve up --shared` has already exited (a backgrounded command, a
// script that has moved on), getppid() is the reaper — pid 1 (or a subreaper) — and the
// lease is granted to it: it never dies, so the bundle and its services never stop. Leases
// for pid 1 (`--pid 1`) are accepted alike (leases.rs `take` checks only pid <= 0).
// Failed with: "a lease was granted for a caller that had exited (holders [1]):
// {.."holders":[1],"lease":1,"pid":1,..,"started":true}".
#[test]
fn up_shared_whose_caller_is_gone_is_not_held_by_init() {
    let p = Project::new("orphan");
    let go = p.dir.join("go.fifo");
    let said = p.dir.join("said.fifo");
    assert!(Command::new("mkfifo").arg(&go).status().unwrap().success());
    assert!(Command::new("mkfifo")
        .arg(&said)
        .status()
        .unwrap()
        .success());
    // The shell starts `up --shared` in the background and exits; `up --shared` waits on
    // the fifo until the shell is gone.
    let script = format!(
        "( read x < '{go}'; exec '{BIN}' -f '{file}' up --shared --json --idle 0 > '{said}' 2>&1 ) < /dev/null > /dev/null 2>&1 &",
        go = go.display(),
        file = p.file().display(),
        said = said.display(),
    );
    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    std::fs::write(&go, "go\n").unwrap();
    // All it says, until it exits (the fifo's end).
    let answer = std::fs::read_to_string(&said).unwrap();
    let holders = p.holders();
    assert!(
        !answer.contains("\"lease\""),
        "a lease was granted for a caller that had exited (holders {holders:?}): {answer}"
    );
}

// Was: Leases::take (leases.rs) promises "a lease whose holder is already gone is refused,
// never counted", but pidfd_open succeeds on a process that has exited and not yet been
// reaped (a zombie): the lease is granted, `up --shared` says READY and counts it, and it
// ends at once.
// Failed with: "a lease was granted to a process that had exited:
// {.."holders":[<zombie pid>],"lease":1,..,"started":true}".
#[test]
fn a_process_that_has_exited_cannot_hold_a_lease() {
    let p = Project::new("zombie");
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    // Until it has exited, left unreaped (WNOWAIT): a zombie.
    // SAFETY: waitid on our own child, into a struct we own.
    let exited = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
    };
    assert_eq!(exited, 0, "{}", std::io::Error::last_os_error());
    let out = p.run(&[
        "up",
        "--shared",
        "--json",
        "--idle",
        "0",
        "--pid",
        &pid.to_string(),
    ]);
    let _ = dead.wait();
    assert!(
        !out.status.success(),
        "a lease was granted to a process that had exited: {}",
        text(&out)
    );
}

// Was: a SharedBundle remembers no identity of the bundle it attached to: every request
// (hitchserve/src/shared.rs `connect`/`ask`) goes to whatever bundle now listens on the
// project's socket. Once its bundle was stopped and another process started a new one, the
// old holder is silently served by a bundle it holds no lease on (its services, ports and
// its `seq`-based view of the logs are the new run's), instead of hearing that its bundle
// is gone.
// Failed with: "the stopped bundle's holder got an answer from the next bundle (App was
// Some(<old pid>), now Ok(Some(<new pid>)))".
#[test]
fn a_holder_whose_bundle_stopped_is_told_so_not_served_by_the_next_one() {
    let p = Project::new("stale-view");
    let stale = SharedBundle::builder(p.file())
        .program(BIN)
        .idle(Duration::from_secs(60))
        .attach()
        .unwrap();
    let old_pid = stale.service("App").unwrap().pid().unwrap();
    let out = p.run(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    let other = Holder::new();
    up_shared(&p, other.pid(), "60s");
    let answer = stale.service("App").and_then(|s| s.pid());
    assert!(
        answer.is_err(),
        "the stopped bundle's holder got an answer from the next bundle (App was {old_pid:?}, now {answer:?})"
    );
}

#[test]
fn a_view_is_a_lease_of_its_own_whose_lines_and_travel_are_its_own() {
    let p = Project::new("view");
    let session = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    let out = p.run(&["restart", "App"]);
    assert!(out.status.success(), "{}", text(&out));
    let view = session.view().unwrap();
    assert_eq!(p.holders().len(), 2, "a lease of its own");
    assert!(
        view.logs().unwrap().iter().all(|l| l.text != "READY"),
        "a view starts when it is taken"
    );
    assert!(session.logs().unwrap().iter().any(|l| l.text == "READY"));
    // The view's travel is undone when it goes; the session's lease keeps the bundle.
    view.time_travel_by(hitchserve::jiff::SignedDuration::from_hours(48))
        .unwrap();
    drop(view);
    assert_eq!(p.holders(), [u64::from(std::process::id())]);
    let now = session.now().unwrap();
    let real = hitchserve::jiff::Timestamp::now();
    assert!(
        now.duration_since(real).abs() < hitchserve::jiff::SignedDuration::from_hours(1),
        "the view's travel outlived it: {now} (real time {real})"
    );
}

/// How far `now` is from real time.
fn off(now: Timestamp) -> SignedDuration {
    now.duration_since(Timestamp::now()).abs()
}

// Found by a new user's read of the docs: each failed before its fix.

// README, "One bundle for many tests", the command-line block:
//   hitchserve status                       # ... and `shared`: the holders' pids, the idle time
// Failed with: only `status --json` has `shared`; the table `status` prints names neither the
// holders nor the idle time:
//   panicked at crates/hitchserve-cli/tests/user_review.rs:143:5:
//   `status` does not name the holder 18969:
//   SERVICE          STATE                                 PID        RSS      CPU  PORTS
//   App              ready                               18991       1.8M    0.00s
#[test]
fn status_shows_the_shared_bundles_holders_and_idle_time() {
    let p = Project::new("status");
    let holder = Holder::new();
    p.up_shared(holder.pid());
    let out = p.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&holder.pid().to_string()),
        "`status` does not name the holder {}:\n{said}",
        holder.pid()
    );
    assert!(
        said.contains("600") || said.contains("10m"),
        "`status` does not say the idle time (600 s):\n{said}"
    );
    // And each lease's id, for `release --lease`.
    assert!(
        said.contains(&format!("lease 1 held by pid {}", holder.pid())),
        "`status` does not give the lease's id:\n{said}"
    );
}

// README: "Time travel is bundle-wide: `SharedBundle::time_travel_by` / `_to` (and `hitchserve
// time-travel` ...) are refused while another process holds a lease, so parallel tests can't
// fight over the clock without knowing ... Its travel is undone — the clock set back to real
// time — once its leases end, so the next test doesn't inherit it."
// Failed with: a second test process attaches while the first has travelled (the attach
// succeeds and says nothing about the clock), starts on the first one's clock (+3 days),
// and that clock jumps 3 days back under it when the first test's lease ends:
//   panicked at crates/hitchserve-cli/tests/user_review.rs:188:5:
//   the clock moved under a holder that did not move it: 2026-12-04T12:40:51.104140275Z when
//   it attached, 2026-12-01T12:40:51.108771401Z once the traveller left (a jump of 71h 59m
//   59s 995ms 368µs 874ns ago)
// (The traveller is allowed because it was alone when it travelled; `attach` never checks the
// clock: control/leases.rs `take`.)
#[test]
fn a_test_process_attaching_during_another_ones_travel_is_not_moved_without_knowing() {
    let p = Project::new("attach-during-travel");
    let traveller = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    traveller
        .time_travel_by(SignedDuration::from_hours(72))
        .unwrap();
    // Another test process attaches (as `up --shared` does for it).
    let other = Holder::new();
    let out = p.run(&["attach", "--pid", &other.pid().to_string()]);
    if !out.status.success() {
        // Refused (or told): the other test knows. That is a documented way to behave.
        return;
    }
    let at_attach = p.now();
    traveller.release().unwrap();
    let after = p.now();
    let jump = after.duration_since(at_attach);
    assert!(
        jump.abs() < SignedDuration::from_hours(1),
        "the clock moved under a holder that did not move it: {at_attach} when it attached, \
         {after} once the traveller left (a jump of {jump:#})"
    );
}

// README: "(and `hitchserve time-travel`, which speaks for its caller) ... Its travel is undone
// — the clock set back to real time, said in the log — once its leases end, so the next test
// doesn't inherit it."
// The case of a CI job: one step runs `hitchserve up --shared` (its shell's lease ends with
// the step), a later step runs `hitchserve time-travel +5d`, then the tests attach.
// Failed with: a travel asked by a caller that holds no lease (nobody does) is allowed and is
// never undone; every later holder inherits it:
//   panicked at crates/hitchserve-cli/tests/user_review.rs:231:5:
//   the next holder inherits a travel nobody will undo: its clock is
//   2026-12-06T12:40:51.109719972Z, 119h 59m 59s 999ms 878µs 14ns from real time
// (control/leases.rs `travel`: "Nobody holds it: the travel stays, as in a bundle that isn't
// shared.")
#[test]
fn a_travel_asked_with_no_lease_held_is_not_inherited_by_the_next_holder() {
    let p = Project::new("travel-without-lease");
    let step = Holder::new();
    p.up_shared(step.pid());
    drop(step); // the step's shell ends, and its lease with it
    assert!(p.holders().is_empty(), "the dead step still holds a lease");
    let out = p.run(&["time-travel", "+5d"]);
    if !out.status.success() {
        // Refused, saying why: nobody inherits anything. Fine by the docs.
        return;
    }
    let next = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    let now = next.now().unwrap();
    assert!(
        off(now) < SignedDuration::from_hours(1),
        "the next holder inherits a travel nobody will undo: its clock is {now}, {:#} from \
         real time",
        off(now)
    );
}

// `SharedBundle::view` (rustdoc): "a test's own view — its lines, tails and failure report
// start now, and a time travel it makes is undone when it is dropped — while the process's
// first lease (a session's, in a `static`) keeps the bundle."
// Failed with: dropping a view that travelled sets the clock back to real time, undoing the
// session lease's own travel too, and the log says the session's process "holds the shared
// bundle no more" while it still does:
//   panicked at crates/hitchserve-cli/tests/user_review.rs:266:5:
//   the session's own travel (+2 days) was undone with the view's: the clock is
//   2026-12-01T12:40:51.126963714Z (90µs 886ns ago from real time)
// (its log, seen from Python with the same calls: "[Hitch] Time traveling to 3 days ago";
// "[Hitch] The clock is back to real time: process 18371, which moved it, holds the shared
// bundle no more" — while that process's session lease still held it.)
#[test]
fn dropping_a_view_undoes_its_own_travel_not_the_session_leases() {
    let p = Project::new("view-undoes-session");
    let session = SharedBundle::builder(p.file())
        .program(BIN)
        .attach()
        .unwrap();
    session
        .time_travel_by(SignedDuration::from_hours(48))
        .unwrap();
    let view = session.view().unwrap();
    view.time_travel_by(SignedDuration::from_hours(24)).unwrap();
    drop(view);
    let now = session.now().unwrap();
    let ahead = now.duration_since(Timestamp::now());
    assert!(
        ahead > SignedDuration::from_hours(47) && ahead < SignedDuration::from_hours(49),
        "the session's own travel (+2 days) was undone with the view's: the clock is {now} \
         ({ahead:#} from real time)"
    );
    let said = session.logs().unwrap();
    assert!(
        !said
            .iter()
            .any(|l| l.text.contains("holds the shared bundle no more")),
        "the log says the session's process left while its lease still holds the bundle:\n{}",
        said.iter()
            .map(|l| l.console.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// From a new CLI user's scenarios: `up --shared --pid 1` (or a dead pid) failed, yet
// started the shared bundle, held by nobody, and a later `up --shared` attached to it.
#[test]
fn up_shared_for_a_process_that_cant_hold_it_starts_nothing() {
    let p = Project::new("bad-holder");
    for pid in ["1", "999999999"] {
        let out = p.run(&["up", "--shared", "--idle", "600s", "--pid", pid]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("can't hold a lease"), "{}", text(&out));
        let st = p.run(&["status"]);
        assert!(
            text(&st).contains("no bundle is running"),
            "a bundle was started for {pid}: {}",
            text(&st)
        );
    }
}

/// An `up --shared` that waits for another holder's time travel to end, and is killed
/// meanwhile (a `timeout`), leaves no lease: its process never heard of one (it was granted
/// once the travel ended, and held the bundle for a process that did not know it).
#[test]
fn a_holder_that_gave_up_waiting_gets_no_lease() {
    let p = Project::new("gave-up");
    p.define("READY");
    let (traveller, late) = (Holder::new(), Holder::new());
    up_shared(&p, traveller.pid(), "0");
    let out = p.run(&["time-travel", "+1h", "--pid", &traveller.pid().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut waiting = p
        .command(&["up", "--shared", "--pid", &late.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The bundle says when a lease waits: then the asker gives up.
    let said = p.run(&[
        "logs",
        "--until",
        "waits for the time travel",
        "-n",
        "50",
        "--timeout",
        "60s",
    ]);
    assert!(said.status.success(), "{}", text(&said));
    // ... and so does the asker, rather than look hung.
    let mut err = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut note = String::new();
    std::io::BufRead::read_line(&mut err, &mut note).unwrap();
    assert!(note.contains("waiting for the shared bundle"), "{note}");
    // Whose travel, as the bundle says it (a bundle that says nothing gets another note).
    assert!(note.contains(&traveller.pid().to_string()), "{note}");
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    let out = p.run(&["release", "--pid", &traveller.pid().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    // No lease left (the late one's included): the bundle stops at once (idle 0).
    p.wait_down();
}
