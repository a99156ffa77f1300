//! Review 5, issue #17 (3): a tail's wait looks at the lines already stored even with a
//! zero timeout ("Lines already there are always looked at, even with a zero timeout",
//! `Tail::wait`) — but only at the first batch of them: the deadline is checked before each
//! further batch. Batches used to hold 4,096 lines; now they hold 256, and a batch also ends
//! where lines still in memory meet lines spilled to all.log (`next_batch`). So a wait with
//! no time to spare misses a line that was stored long before it began.

use std::time::Duration;

use crate::common::{sh, wait_for, Project, PATIENCE};

// Failed before the fix (it passed at abdff2c, before issue #17's commits), with:
//   panicked at crates/hitchserve/tests/integration/review5_tails.rs:36:34:
//   line 300 was stored before the wait began, yet: timed out after 0.0 s waiting for a
//   matching line in `Counter`'s stdout; the last 20 lines were: [Counter] 282 ... [Counter]
//   300, [Counter] READY
// The first batch (256 lines) holds no match; the deadline has passed before the second.
// With 4,096-line batches (before 9158ad1) the wait found it.
#[test]
fn a_zero_timeout_wait_looks_at_all_300_lines_already_stored() {
    let p = Project::new("rev5-tail-zero");
    let mut b = p.bundle();
    b.add("Counter", sh("seq 1 300; echo READY; exec sleep 1000"))
        .unwrap();
    b.startup().unwrap();
    let out = b.service("Counter").unwrap().logs().out();
    // READY came after every number, on the same stream: all 301 lines are stored.
    assert_eq!(out.len(), 301);
    let found = out
        .tail()
        .lines_back(301)
        .until(|l| l == "300", Duration::ZERO);
    b.shutdown().unwrap();
    let line =
        found.unwrap_or_else(|e| panic!("line 300 was stored before the wait began, yet: {e}"));
    assert_eq!(line.text(), "300");
}

const LIMIT: usize = 128 * 1024;

// Failed before the fix (it passed at abdff2c, before issue #17's commits), with:
//   panicked at crates/hitchserve/tests/integration/review5_tails.rs:87:9:
//   `after`, stored after 201 lines now spilled to all.log, was missed: timed out after 0.0 s
//   waiting for a matching line in `Wide`'s stdout; ...
// Only 202 lines, fewer than a batch: the first batch ends at the first line still in
// memory (`after`: the older blocks were spilled), and the deadline has passed before the
// next batch.
#[test]
fn a_zero_timeout_wait_looks_past_the_spilled_lines_to_those_in_memory() {
    let p = Project::new("rev5-tail-spill");
    let mut b = p.bundle().log_memory_limit(LIMIT);
    // 200 lines of 1,500 bytes (300 KB, some five 64 KB blocks), READY, then (once told)
    // one more line.
    b.add(
        "Wide",
        sh(concat!(
            "python3 -c 'for i in range(200): print(str(i).ljust(1500, \".\"))'; ",
            "echo READY; ",
            "while [ ! -e go ]; do sleep 0.01; done; echo after; exec sleep 1000"
        )),
    )
    .unwrap();
    b.startup().unwrap();
    // Once all.log has them, the older blocks leave memory (the open one never does).
    assert!(
        wait_for(PATIENCE, || {
            let s = b.log_stats();
            s.bytes_in_memory <= s.memory_limit
        }),
        "{:?}",
        b.log_stats()
    );
    let out = b.service("Wide").unwrap().logs().out();
    let mut now = out.tail();
    std::fs::write(p.path("go"), "").unwrap();
    // Stored (in the block still open, so in memory) once a tail from now has seen it.
    now.until(|l| l == "after", PATIENCE).unwrap();
    assert_eq!(out.len(), 202);
    let found = out
        .tail()
        .lines_back(202)
        .until(|l| l == "after", Duration::ZERO);
    b.shutdown().unwrap();
    let line = found.unwrap_or_else(|e| {
        panic!("`after`, stored after 201 lines now spilled to all.log, was missed: {e}")
    });
    assert_eq!(line.text(), "after");
}
