//! The log store's memory, its line index included, stays within the limit whatever the
//! number of lines, and every line stays queryable: millions of tiny lines, a small limit.

use hitchserve::Service;

use crate::common::{Project, PATIENCE};

const LIMIT: usize = 4 << 20;
const HALF: u64 = 1_000_000;

#[test]
fn millions_of_tiny_lines_keep_log_memory_within_the_limit_index_included() {
    let p = Project::new("index-memory");
    let mut b = p.bundle().log_memory_limit(LIMIT);
    // Two million numbered lines of 1-7 bytes on stdout, and two lines on stderr.
    let script = format!(
        "seq 1 {HALF}; echo MIDDLE >&2; seq {} {}; echo DONE >&2; exec sleep 1000",
        HALF + 1,
        2 * HALF
    );
    b.add(
        "Tiny",
        Service::new(["sh", "-c", &script]).ready_when(|l| l == "DONE"),
    )
    .unwrap();
    b.startup().unwrap();
    let logs = b.service("Tiny").unwrap().logs();
    let out = logs.out();
    out.tail()
        .lines_back(1)
        .until(|l| l == (2 * HALF).to_string(), PATIENCE)
        .unwrap();

    // Every line, exact and in order: most come back from all.log, cut from their blocks.
    let lines = out.lines();
    assert_eq!(lines.len() as u64, 2 * HALF);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &(i + 1).to_string(), "line {i}");
    }
    drop(lines);
    assert_eq!(logs.err().lines(), ["MIDDLE", "DONE"]);
    // Both streams together (their order across the two pipes is the reader's).
    assert_eq!(logs.len() as u64, 2 * HALF + 2);
    // The last lines, counts, and a tail from the first line.
    let last: Vec<String> = out.last(2).iter().map(|l| l.text().into_owned()).collect();
    assert_eq!(last, [(2 * HALF - 1).to_string(), (2 * HALF).to_string()]);
    assert_eq!(out.len() as u64, 2 * HALF);
    let first = out
        .tail()
        .lines_back(2 * HALF as usize)
        .next_line(PATIENCE)
        .unwrap();
    assert_eq!(first.text(), "1");

    // Once everything is on disk (shutdown flushes all.log), memory is within the limit. A
    // 32-byte entry per line kept in memory would alone take 64 MB here, 15 times the limit.
    b.shutdown().unwrap();
    let stats = b.log_stats();
    assert!(stats.lines >= 2 * HALF + 2, "{stats:?}");
    assert!(stats.bytes_in_memory <= LIMIT, "{stats:?}");
    assert_eq!(stats.lines_lost, 0, "{stats:?}");
}
