//! Review of the time-travel shim (`src/timetravel/shim.c`): cases its bookkeeping of wall
//! clocks gets wrong. Each runs `review_tt.c` in one mode as a faked service; the program
//! prints a JSON line per round with the faked wall clock, so a round wholly after a jump can
//! be picked without sleeping.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use hitchserve::jiff::SignedDuration;
use hitchserve::{Bundle, Service};
use serde_json::Value;

use crate::common::{compile_c, Project, PATIENCE};

const REVIEW_TT_C: &str = include_str!("review_tt.c");

fn real_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn build(p: &Project) -> PathBuf {
    compile_c(p, "review_tt", REVIEW_TT_C)
}

/// The program in `mode` as service "Probe", started.
fn started(p: &Project, mode: &str) -> Bundle {
    let bin = build(p);
    let mut b = p.bundle();
    b.add(
        "Probe",
        Service::new([bin.as_os_str(), mode.as_ref()]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    b
}

/// After a jump of 3 hours back, the first round that ran on the new clock (its faked time
/// more than an hour behind real time).
fn round_after_jump_back(b: &Bundle) -> Value {
    let mut tail = b.service("Probe").unwrap().logs().out().tail();
    b.time_travel_by(SignedDuration::from_hours(-3)).unwrap();
    let cutoff = real_now() - 3600.0;
    tail.until_json(|v| v["t"].as_f64().is_some_and(|t| t < cutoff), PATIENCE)
        .unwrap_or_else(|e| panic!("no round after the jump: {e}\n{:?}", b.logs().lines()))
}

// Fails today:
//   a forked child's monotonic timer got the parent's wall-clock timer's bookkeeping:
//   {"mode":"fork_timer","remaining":10800.3,"result":"set","t":...}
// shim.c:346-378: `wall_timers` is inherited by fork() while the timers are not (POSIX: a
// child has none), and kernel timer ids restart at 0 in the child, so the child's first
// timer, made on CLOCK_MONOTONIC, has the id of the parent's CLOCK_REALTIME one and
// timer_settime (shim.c:413) shifts its absolute monotonic deadline by the offset: after a
// jump 3 hours back it fires 3 hours late; after a jump forward it fires at once. Pre-forking
// servers (a parent that made a wall-clock timer, workers that use monotonic ones) hit this.
#[test]
fn a_forked_childs_monotonic_timer_keeps_its_absolute_deadline_after_a_jump() {
    let p = Project::new("rtt-fork-timer");
    let b = started(&p, "fork_timer");
    let line = round_after_jump_back(&b);
    let remaining = line["remaining"].as_f64().unwrap();
    assert!(
        remaining < 5.0,
        "a monotonic timer set to fire in 0.3 s fires in {remaining} s: {line}"
    );
}

// Fails today:
//   {"mode":"dup_timerfd","remaining":10800.3,"result":"same_number","t":...}
// shim.c:352-353, 418-438: the bitmap of wall-clock timerfds is set by timerfd_create and
// never cleared by close(), so a descriptor number that once was a CLOCK_REALTIME timerfd
// stays marked when it is reused by a CLOCK_MONOTONIC timerfd that did not come from
// timerfd_create (dup, dup2, fcntl F_DUPFD, SCM_RIGHTS, inherited): its absolute monotonic
// deadline is then shifted by the offset (3 hours late after a jump back, at once after a
// jump forward). The comment at shim.c:344 only admits that a dup'd wall-clock timerfd keeps
// real deadlines, not that a monotonic one gets faked ones.
#[test]
fn a_monotonic_timerfd_on_a_reused_descriptor_number_keeps_its_absolute_deadline() {
    let p = Project::new("rtt-dup-timerfd");
    let b = started(&p, "dup_timerfd");
    let line = round_after_jump_back(&b);
    assert_eq!(line["result"], "same_number", "{line}");
    let remaining = line["remaining"].as_f64().unwrap();
    assert!(
        remaining < 5.0,
        "a monotonic timerfd set to fire in 0.3 s fires in {remaining} s: {line}"
    );
}

// Fails today:
//   {"mode":"forever","remaining":0.0,"result":"ETIMEDOUT","t":...}
// shim.c:79-88 via real_deadline (shim.c:165): shift() adds the negated offset to tv_sec
// without saturating, so after a jump back (offset < 0) a deadline of {LONG_MAX, 0} — "no
// deadline" — overflows to a negative time, which real_deadline (shim.c:169) then clamps to
// "just past": pthread_cond_timedwait returns ETIMEDOUT at once instead of waiting for the
// signal (without the shim, or at offset 0, it waits). Same for every converted call
// (sem_timedwait, timed locks, clock_nanosleep, absolute timers).
#[test]
fn a_wait_with_the_largest_deadline_does_not_time_out_after_a_jump_back() {
    let p = Project::new("rtt-forever");
    let b = started(&p, "forever");
    let line = round_after_jump_back(&b);
    assert_eq!(line["result"], "signalled", "{line}");
}

// Fails today:
//   {"mode":"invalid_nsec","remaining":0.0,"result":"slept","t":...}
// shim.c:160-174: real_deadline copies and normalises every wall-clock deadline through
// shift() whenever the offset is mapped (even at offset 0, with no time travel at all), so a
// deadline with tv_nsec = 1e9 — which clock_nanosleep, pthread_cond_timedwait, sem_timedwait
// and timer_settime reject with EINVAL — becomes a valid one a second later and is slept on.
// A faked service's error paths differ from the real ones.
#[test]
fn an_absolute_deadline_with_an_invalid_tv_nsec_is_still_refused() {
    let p = Project::new("rtt-invalid-nsec");
    let b = started(&p, "invalid_nsec");
    let line = b
        .service("Probe")
        .unwrap()
        .logs()
        .out()
        .tail()
        .until_json(|v| v.get("result").is_some(), PATIENCE)
        .unwrap();
    assert_eq!(line["result"], "EINVAL", "{line}");
}

/// A library of the service's whose constructor reads the wall clock (a C++ static
/// initialiser that stamps a start time, a cache seeded with "now").
const EARLY_LIB_C: &str = r#"
#include <stdio.h>
#include <time.h>
__attribute__((constructor)) static void early(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    printf("{\"who\": \"library constructor\", \"t\": %ld}\n", (long)t.tv_sec);
    fflush(stdout);
}
"#;

const EARLY_MAIN_C: &str = r#"
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    printf("{\"who\": \"main\", \"t\": %ld}\nREADY\n", (long)t.tv_sec);
    fflush(stdout);
    for (;;)
        pause();
}
"#;

// Fails today:
//   the "library constructor" read 1796127363, the bundle says 1827663363:
//   {"t":1796127363,"who":"library constructor"}   (main read 1827663363: faked, a year on)
// shim.c:58-72, 96-98: the shim is set up in its own constructor, but the loader runs the
// constructors of the program's own libraries first (dependencies before the preloaded
// object that comes earlier in the search list), so until the shim's constructor has run,
// clock_gettime (and time, gettimeofday, ...) falls back to the raw system call with no
// offset mapped: real time, without a word. The shim's first call could set itself up
// instead of relying on being initialised first.
#[test]
fn a_service_librarys_constructor_reads_the_faked_clock() {
    let p = Project::new("rtt-early-ctor");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let lib_src = p.write("early.c", EARLY_LIB_C);
    let main_src = p.write("main.c", EARLY_MAIN_C);
    let lib = p.path("libearly.so");
    let bin = p.path("early");
    let built = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&lib_src)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let built = std::process::Command::new(&cc)
        .arg("-o")
        .arg(&bin)
        .arg(&main_src)
        .arg("-Wl,--no-as-needed")
        .arg(format!("-L{}", p.dir.display()))
        .arg("-learly")
        .arg(format!("-Wl,-rpath,{}", p.dir.display()))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut b = p.bundle();
    b.add(
        "Early",
        Service::new([bin.as_os_str()]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.time_travel_by(SignedDuration::from_hours(365 * 24))
        .unwrap();
    b.startup().unwrap();
    let now = b.now().as_second() as f64;
    for line in b.service("Early").unwrap().logs().lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let t = v["t"].as_f64().unwrap();
        assert!(
            (t - now).abs() < 3600.0,
            "the {} read {t}, the bundle says {now}: {v}",
            v["who"]
        );
    }
}
