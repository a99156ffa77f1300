//! A new user's review of the shared bundle (README "One bundle for many tests", "The command
//! line"; the rustdoc of `hitchserve::SharedBundle`): documented behaviour that is not true
//! today. Each test is named after what the docs promise and fails today; the failure seen is
//! in the comment above it. Real processes; every project is brought down (`hitchserve down`)
//! when its `Project` is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use hitchserve::jiff::{SignedDuration, Timestamp};
use hitchserve::SharedBundle;

const BIN: &str = env!("CARGO_BIN_EXE_hitchserve");

/// A temporary project with one service, `App`; brought down and removed when dropped.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(tag: &str) -> Project {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hitchserve-user-review-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hitchserve.toml"),
            r#"
[services.App]
command = ["sh", "-c", "echo READY; exec sleep 1000"]
ready = { line_contains = "READY" }
"#,
        )
        .unwrap();
        Project { dir }
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
        let out = self.run(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["shared"]["holders"]
            .as_array()
            .map(|h| h.iter().filter_map(|p| p.as_u64()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process that only holds leases (another test process); killed and reaped when dropped.
struct Holder(Child);

impl Holder {
    fn new() -> Holder {
        Holder(Command::new("sleep").arg("1000").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How far `now` is from real time.
fn off(now: Timestamp) -> SignedDuration {
    now.duration_since(Timestamp::now()).abs()
}

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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !p.holders().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead step still holds a lease"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
// (its log, seen from Python with the same calls: "[Hitch] Time travelling to 3 days ago";
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
