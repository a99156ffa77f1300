//! A shared bundle (`hitchserve up --shared`, `attach`, `release`, and the library's
//! `SharedBundle`), run for real: many holder processes, one startup; holders killed with
//! SIGKILL; racing first users; a changed definition; the clock; each holder's own view of
//! the logs.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
        std::fs::create_dir_all(&dir).unwrap();
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

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("-f")
            .arg(self.file())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
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

/// Wait (generously) for what only a query can see, such as a lease ended by a death.
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
    wait_for("the killed holder's lease to end", || {
        p.holders() == [u64::from(b.pid())]
    });
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
    wait_for("the lease to end", || p.holders().is_empty());
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
    let before = mine.now().unwrap();
    mine.time_travel_by(hitchserve::jiff::SignedDuration::from_hours(24))
        .unwrap();
    let after = mine.now().unwrap();
    assert!(after.duration_since(before) >= hitchserve::jiff::SignedDuration::from_hours(24));
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
