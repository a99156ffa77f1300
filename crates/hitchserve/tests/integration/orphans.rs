//! No orphans, ever: when the process owning a bundle is SIGKILLed, the guardian kills every
//! process the bundle started — grandchildren and `setsid` daemons included.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::common::{helper_process, marked_pids, sh, stat_field, wait_gone, Project, PATIENCE};

const PROJECT_VAR: &str = "HITCHSERVE_TEST_ORPHAN_PROJECT";

/// Runs in a child process: starts a bundle, says its run id, then waits to be killed.
#[test]
#[ignore = "helper: run by sigkilled_owner_leaves_no_process_behind"]
fn helper_bundle_owner() {
    let Some(dir) = std::env::var_os(PROJECT_VAR) else {
        return;
    };
    let mut b = hitchserve::Bundle::new(dir).startup_timeout(PATIENCE);
    b.add(
        "Forker",
        sh(concat!(
            "sleep 1000 & ",
            "sh -c 'sleep 1000 & wait' & ",
            "(setsid sh -c 'echo $$ > daemon.pid; exec sleep 1000' &); ",
            "while [ ! -s daemon.pid ]; do sleep 0.01; done; ",
            "echo READY; wait"
        )),
    )
    .unwrap();
    b.startup().unwrap();
    let run = crate::common::run_id(&b);
    println!("RUN {run}");
    loop {
        std::thread::park();
    }
}

#[test]
fn sigkilled_owner_leaves_no_process_behind() {
    let p = Project::new("sigkill-owner");
    let dir = p.dir.to_str().unwrap().to_owned();
    let mut owner = helper_process("orphans::helper_bundle_owner", &[(PROJECT_VAR, &dir)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = None;
    for line in BufReader::new(owner.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("RUN ") {
            run = Some(id.to_owned());
            break;
        }
    }
    let run = run.expect("the helper never reported its run");
    let pids = marked_pids(&run);
    // sh, sleep, sh + its sleep, the daemon: at least five processes of the bundle.
    assert!(pids.len() >= 5, "{pids:?}");
    let daemon: u32 = std::fs::read_to_string(p.path("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pids.contains(&daemon));
    let owner_sid = stat_field(owner.id(), 6);
    assert_ne!(stat_field(daemon, 6), owner_sid);

    owner.kill().unwrap(); // SIGKILL: no destructor, no shutdown runs in the owner
    owner.wait().unwrap();

    for pid in &pids {
        assert!(
            wait_gone(*pid, PATIENCE),
            "process {pid} outlived its killed owner"
        );
    }
    assert!(marked_pids(&run).is_empty());
}
