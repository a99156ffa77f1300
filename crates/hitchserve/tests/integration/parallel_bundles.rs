//! Many bundles in one process and in parallel don't interfere; the sync API works inside
//! a tokio test.

use std::collections::HashSet;

use crate::common::{is_alive, marked_pids, run_id, sh, Project};

#[test]
fn eight_bundles_in_parallel_threads_each_have_their_own_run() {
    let p = Project::new("parallel");
    let runs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let p = &p;
                s.spawn(move || {
                    let mut b = p.bundle();
                    b.add(
                        "One",
                        sh(&format!("echo one-{i}; echo READY; exec sleep 1000")),
                    )
                    .unwrap();
                    b.add(
                        "Two",
                        sh(&format!("echo two-{i}; echo READY; exec sleep 1000")).needs(["One"]),
                    )
                    .unwrap();
                    b.startup().unwrap();
                    let lines = b.service("Two").unwrap().logs().lines();
                    assert_eq!(lines, vec![format!("two-{i}"), "READY".to_owned()]);
                    let run = run_id(&b);
                    let pids = [
                        b.service("One").unwrap().pid(),
                        b.service("Two").unwrap().pid(),
                    ];
                    assert!(pids.iter().all(|p| p.is_some_and(is_alive)));
                    b.shutdown().unwrap();
                    assert!(marked_pids(&run).is_empty());
                    run
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(runs.iter().collect::<HashSet<_>>().len(), 8);
}

#[tokio::test]
async fn works_inside_a_tokio_test() {
    let p = Project::new("tokio");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    assert!(b.service("Svc").unwrap().pid().is_some());
    b.shutdown().unwrap();
}
