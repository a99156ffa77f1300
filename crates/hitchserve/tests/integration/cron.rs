//! Cron runs its command on fake time: a jump triggers it.

use std::time::Duration;

use hitchserve::services::Cron;

use crate::common::{Project, PATIENCE};

#[test]
fn a_time_jump_past_the_interval_runs_the_command() {
    let p = Project::new("cron");
    let mut b = p.bundle();
    b.add(
        "Hourly",
        Cron::every(
            Duration::from_secs(3600),
            ["sh", "-c", "echo tick >> ticks.txt; echo ran"],
        )
        .service(),
    )
    .unwrap();
    b.startup().unwrap();
    let logs = b.service("Hourly").unwrap().logs();
    assert!(!p.path("ticks.txt").exists(), "nothing is due yet");
    let mut tail = logs.tail();
    b.time_travel(Duration::from_secs(2 * 3600)).unwrap();
    tail.until(|l| l == "cron: exit 0", PATIENCE).unwrap();
    assert_eq!(
        std::fs::read_to_string(p.path("ticks.txt")).unwrap(),
        "tick\n"
    );
    assert!(logs.lines().contains(&"ran".to_owned()));
    // One jump, one run: another jump runs it again.
    b.time_travel(Duration::from_secs(2 * 3600)).unwrap();
    tail.until(|l| l == "cron: exit 0", PATIENCE).unwrap();
    assert_eq!(
        std::fs::read_to_string(p.path("ticks.txt")).unwrap(),
        "tick\ntick\n"
    );
}

/// A cron whose command is empty, or whose program is not on its PATH, is a bad definition
/// refused before anything starts, as a service's own program is. (Both were accepted and
/// crashed later, at the first jump, with a Python traceback.)
#[test]
fn a_cron_command_that_can_never_run_is_refused_before_anything_starts() {
    let p = Project::new("cron-bad");
    let mut b = p.bundle();
    let err = b
        .add(
            "Empty",
            Cron::every(Duration::from_secs(60), Vec::<String>::new()).service(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, hitchserve::Error::InvalidSetting { service, problem } if service == "Empty" && problem.contains("empty")),
        "{err:?}"
    );
    // Every 0 s would run it over and over: refused too.
    let err = b
        .add("Zero", Cron::every(Duration::ZERO, ["true"]).service())
        .unwrap_err();
    assert!(
        matches!(&err, hitchserve::Error::InvalidSetting { service, problem } if service == "Zero" && problem.contains("interval is 0")),
        "{err:?}"
    );
    b.add(
        "Missing",
        Cron::every(Duration::from_secs(60), ["no-such-program-hs", "--now"]).service(),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, hitchserve::Error::CommandNotFound { service, program, .. } if service == "Missing" && program == "no-such-program-hs"),
        "{err:?}"
    );
    assert!(b
        .logs()
        .lines()
        .iter()
        .all(|l| !l.contains("Starting Missing")));
}
