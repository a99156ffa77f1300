//! Review 5, issue #17 (1): lines of every service reach all.log while one service's
//! readiness check runs. (Before the fix all.log's writer was woken only when the
//! `WriterWake` of the write that found it asleep was dropped, and the supervisor held that
//! wake across its readiness check: every other write found the writer "not asleep" and woke
//! nobody. The writer now looks for lines by itself every 20 ms while lines come.)

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use crate::common::{sh, wait_for, Project, PATIENCE};

/// What the project's run directories hold in `logs/all.log` (one run here).
fn all_log_text(p: &Project) -> String {
    std::fs::read_dir(p.path(".hitchserve/runs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|run| std::fs::read_to_string(run.path().join("logs/all.log")).ok())
        .collect()
}

// Failed before the fix (it passed at abdff2c, before issue #17's commits), with:
//   panicked at crates/hitchserve/tests/integration/review5_writer_wake.rs:86:5:
//   Chatty's line never reached all.log (within 5 s, the writer batches every 20 ms) while
//   Gate's readiness check ran; all.log held:
//   [     Hitch] Starting Gate
//   [     Hitch] Starting Chatty
//   [    Chatty] READY
//   [     Hitch] Chatty ready after 0.00 s
// (the console meanwhile showed `[Gate] hello` and `[Chatty] after-the-gate`; both reached
// all.log only once the check returned.)
// The line is in the store (Chatty printed it only after the check had begun) but all.log
// stays as it was until the check returns: Gate's write took the writer's `asleep` flag and
// its supervisor holds the wake (supervisor.rs `deliver`, `_wake`) across `checker.check`,
// which is user code (`ready_when`). Chatty's writes see `asleep == false` and wake nobody.
// A check that makes an HTTP call, or one that blocks (a case the library reports on at
// shutdown), freezes all.log for the whole bundle — the file a person reads to see why
// startup hangs.
#[test]
fn lines_reach_all_log_while_another_services_readiness_check_runs() {
    let p = Project::new("rev5-wake");
    let mut b = p.bundle();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let checking = p.path("checking");
    b.add(
        "Gate",
        sh("while [ ! -e go ]; do sleep 0.01; done; echo hello; exec sleep 1000").ready_when(
            move |line| {
                if line != "hello" {
                    return false;
                }
                std::fs::write(&checking, "").unwrap();
                // A slow check (an HTTP call, say): here, until the test has looked.
                let _ = released.lock().unwrap().recv_timeout(PATIENCE);
                true
            },
        ),
    )
    .unwrap();
    b.add(
        "Chatty",
        sh(concat!(
            "echo READY; ",
            "while [ ! -e checking ]; do sleep 0.01; done; ",
            "echo after-the-gate; exec sleep 1000"
        )),
    )
    .unwrap();
    let (reached, text) = std::thread::scope(|s| {
        let starting = s.spawn(|| b.startup());
        // Everything said so far is on disk: the writer has found its queue empty and sleeps.
        let quiet = wait_for(PATIENCE, || all_log_text(&p).contains("Chatty ready after"));
        std::fs::write(p.path("go"), "").unwrap();
        let reached = quiet
            && wait_for(Duration::from_secs(5), || {
                all_log_text(&p).contains("after-the-gate")
            });
        let text = all_log_text(&p);
        let _ = release.send(());
        starting.join().unwrap().unwrap();
        (reached, text)
    });
    b.shutdown().unwrap();
    assert!(
        reached,
        "Chatty's line never reached all.log (within 5 s, the writer batches every 20 ms) \
         while Gate's readiness check ran; all.log held:\n{text}"
    );
    // Not a line lost: it was only late.
    let out = b.service("Chatty").unwrap().logs().lines();
    assert!(out.iter().any(|l| l == "after-the-gate"), "{out:?}");
}
