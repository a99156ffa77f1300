//! The log store's memory, its line index included, stays within the limit whatever the
//! number of lines, and every line stays queryable: millions of tiny lines, a small limit;
//! many chatty services at once.

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
    // A tail from the first line sees every line once, in order, across the spilled blocks
    // (read back from all.log) and the ones still in memory (made at once).
    let mut next = 1u64;
    let last = out
        .tail()
        .lines_back(2 * HALF as usize)
        .until(
            |l| {
                assert_eq!(l, next.to_string(), "the tail's line {next}");
                next += 1;
                next > 2 * HALF
            },
            PATIENCE,
        )
        .unwrap();
    assert_eq!(last.text(), (2 * HALF).to_string());

    // Once everything is on disk (shutdown flushes all.log), memory is within the limit. A
    // 32-byte entry per line kept in memory would alone take 64 MB here, 15 times the limit.
    b.shutdown().unwrap();
    let stats = b.log_stats();
    assert!(stats.lines >= 2 * HALF + 2, "{stats:?}");
    assert!(stats.bytes_in_memory <= LIMIT, "{stats:?}");
    assert_eq!(stats.lines_lost, 0, "{stats:?}");
}

const CHATTY: usize = 20;
const CHATTY_LINES: usize = 20_000;
const CHATTY_LIMIT: usize = 8 << 20;

#[test]
fn many_chatty_services_are_held_back_at_the_limit_and_lose_nothing() {
    let p = Project::new("chatty-memory");
    let mut b = p.bundle().log_memory_limit(CHATTY_LIMIT);
    // 20 services writing 20,000 numbered lines as fast as they can, at once: about 40 MB
    // of lines and index for an 8 MiB limit, so the log writer is behind most of the time.
    let script = format!("seq 1 {CHATTY_LINES}; echo DONE; exec sleep 1000");
    for i in 0..CHATTY {
        b.add(
            format!("Chatty{i}"),
            Service::new(["sh", "-c", &script]).ready_when(|l| l == "DONE"),
        )
        .unwrap();
    }
    // Ready once each has written DONE: every line before it is stored by then.
    b.startup().unwrap();
    let stats = b.log_stats();
    // Readers wait for the writer once memory passes the limit: what passes it is at most
    // one batch of lines per reader (it was twice the limit and more, before).
    assert!(
        stats.peak_bytes_in_memory < CHATTY_LIMIT + CHATTY_LIMIT / 2,
        "{stats:?}"
    );
    assert_eq!(stats.lines_lost, 0, "{stats:?}");
    for i in 0..CHATTY {
        let out = b.service(&format!("Chatty{i}")).unwrap().logs().out();
        let lines = out.lines();
        assert_eq!(lines.len(), CHATTY_LINES + 1, "Chatty{i}");
        for (n, line) in lines.iter().take(CHATTY_LINES).enumerate() {
            assert_eq!(line, &(n + 1).to_string(), "Chatty{i}, line {n}");
        }
    }
    b.shutdown().unwrap();
}
