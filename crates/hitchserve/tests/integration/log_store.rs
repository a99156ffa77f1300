//! Every line of every service is stored, exactly, and written to the run directory.

use hitchserve::{Service, Stream};

use crate::common::{Project, Tmpfs, PATIENCE};

/// Writes 100,000 lines mixing invalid UTF-8, `\r\n` and a 10 MB line, then a last line
/// without newline, and records the exact bytes it wrote.
const PRODUCER: &str = r#"
import os, sys
out = bytearray()
for i in range(100_000):
    if i % 1000 == 7:
        out += b"bad \xff\xfe utf8 %d\n" % i
    elif i % 1000 == 8:
        out += b"crlf %d\r\n" % i
    elif i == 50_000:
        out += b"x" * (10 * 1024 * 1024) + b"\n"
    else:
        out += b"line %d\n" % i
out += b"no newline at the end \xc3"
open("expected.bin", "wb").write(out)
view = memoryview(out)
while view:
    n = os.write(1, view[:65536 * 3 + 17])
    view = view[n:]
os.close(1)
sys.stderr.write("DONE\n")
sys.stderr.flush()
import time
time.sleep(1000)
"#;

#[test]
fn a_hundred_thousand_lines_with_invalid_utf8_and_no_final_newline_are_stored_exactly() {
    let p = Project::new("lossless");
    p.write("produce.py", PRODUCER);
    let mut b = p.bundle();
    b.add(
        "Big",
        Service::new(["python3", "produce.py"]).ready_when(|l| l == "DONE"),
    )
    .unwrap();
    b.startup().unwrap();
    let big = b.service("Big").unwrap();
    let out = big.logs().out();
    // stdout was closed before DONE went to stderr, but the two pipes race: wait for the
    // unterminated last line, which is stored when stdout reaches end of file.
    out.tail()
        .lines_back(1)
        .until(|l| l.starts_with("no newline at the end"), PATIENCE)
        .unwrap();
    let expected = std::fs::read(p.path("expected.bin")).unwrap();

    let entries = out.entries();
    assert_eq!(entries.len(), 100_001);
    let mut rebuilt = Vec::with_capacity(expected.len());
    for line in &entries {
        assert_eq!(line.stream(), Stream::Stdout);
        rebuilt.extend_from_slice(line.bytes());
        if line.had_newline() {
            rebuilt.push(b'\n');
        }
    }
    assert!(
        rebuilt == expected,
        "stored lines differ from what was written"
    );
    assert!(!entries.last().unwrap().had_newline());
    assert_eq!(entries[50_000].bytes().len(), 10 * 1024 * 1024);
    assert_eq!(entries[7].text(), "bad \u{fffd}\u{fffd} utf8 7");
    assert_eq!(entries[8].bytes(), b"crlf 8\r");
    assert_eq!(entries[8].text(), "crlf 8");

    let lines = out.lines();
    assert_eq!(lines[0], "line 0");
    assert_eq!(lines[100_000], "no newline at the end \u{fffd}");
    assert_eq!(big.logs().err().lines(), vec!["DONE"]);

    // all.log in the run directory holds every line's exact bytes too, labelled, for a
    // person reading a failed test.
    b.shutdown().unwrap();
    let all = std::fs::read(b.run_dir().unwrap().join("logs/all.log")).unwrap();
    let mut expected_file = Vec::new();
    for line in &entries {
        expected_file.extend_from_slice(b"[    Big] ");
        expected_file.extend_from_slice(line.bytes());
        expected_file.push(b'\n');
    }
    let big_lines: Vec<u8> = all
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"[    Big] "))
        .flatten()
        .copied()
        .collect();
    assert!(
        big_lines == expected_file,
        "all.log does not hold the exact lines"
    );
}

#[test]
fn lines_are_kept_per_stream_and_in_order_and_interleaved_for_the_bundle() {
    let p = Project::new("streams");
    let mut b = p.bundle();
    b.add(
        "Mixed",
        Service::new([
            "sh",
            "-c",
            "echo o1; echo e1 >&2; echo o2; echo e2 >&2; echo READY; exec sleep 1000",
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.add(
        "Other",
        Service::new(["sh", "-c", "echo other; exec sleep 1000"]).ready_when(|l| l == "other"),
    )
    .unwrap();
    b.startup().unwrap();
    // The two pipes are read independently: wait until both have delivered everything.
    let mixed = b.service("Mixed").unwrap();
    mixed
        .logs()
        .err()
        .tail()
        .lines_back(2)
        .until(|l| l == "e2", PATIENCE)
        .unwrap();
    b.log("a note");
    b.warn("a worry");
    let mixed = b.service("Mixed").unwrap();
    assert_eq!(mixed.logs().out().lines(), vec!["o1", "o2", "READY"]);
    assert_eq!(mixed.logs().err().lines(), vec!["e1", "e2"]);
    assert_eq!(mixed.logs().len(), 5);

    let all = b.logs();
    let text = all.lines();
    assert!(text.contains(&"other".to_owned()) && text.contains(&"e2".to_owned()));
    let note = all
        .entries()
        .into_iter()
        .find(|l| l.text() == "a note")
        .unwrap();
    assert!(note.is_bundle_message() && note.service() == "Hitch");
    let shown = all.err().to_string();
    assert!(shown.contains("] WARNING: a worry"), "{shown}");
    assert!(mixed.logs().to_string().contains("[Err Mixed] e1"));

    // Sequence numbers give one arrival order across the bundle.
    let seqs: Vec<u64> = all.entries().iter().map(|l| l.seq()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    b.shutdown().unwrap();
    let all = std::fs::read_to_string(p.dir.join(".hitchserve/latest/logs/all.log")).unwrap();
    assert!(
        all.contains("[Err Mixed] e2\n") && all.contains("[    Hitch] WARNING: a worry\n"),
        "{all}"
    );
}

#[test]
fn a_tail_sees_only_new_lines_and_ends_when_the_service_exits() {
    let p = Project::new("tail");
    let mut b = p.bundle();
    b.add(
        "Ticker",
        Service::new([
            "sh",
            "-c",
            "echo READY; while [ ! -e go ]; do sleep 0.02; done; echo after; while [ ! -e stop ]; do sleep 0.02; done",
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let logs = b.service("Ticker").unwrap().logs();
    let mut tail = logs.tail();
    std::fs::write(p.path("go"), "").unwrap();
    // READY came before the tail was taken, so the first line it sees is `after`.
    let first = tail
        .until(|l| l == "READY" || l == "after", PATIENCE)
        .unwrap();
    assert_eq!(first.text(), "after");
    // ... unless it starts earlier.
    let back = logs.tail().lines_back(2).until(|_| true, PATIENCE).unwrap();
    assert_eq!(back.text(), "READY");
    std::fs::write(p.path("stop"), "").unwrap();
    let err = tail.until(|l| l == "never", PATIENCE).unwrap_err();
    assert!(
        matches!(err, hitchserve::Error::EndedWhileWaiting { .. }),
        "{err}"
    );
}

/// Writes one 24 MiB line (bytes varying) without a newline and closes stdout, then DONE
/// on stderr: the line is a last line, the one a store keeps in memory longest.
const HUGE_LINE: &str = r#"
import os, sys, time
pattern = bytes(b for b in range(256) if b != 10) * 4
line = (pattern * (24 * 1024 * 1024 // len(pattern) + 1))[: 24 * 1024 * 1024]
view = memoryview(line)
while view:
    n = os.write(1, view[:1 << 20])
    view = view[n:]
os.close(1)
sys.stderr.write("DONE\n")
sys.stderr.flush()
time.sleep(1000)
"#;

#[test]
fn a_huge_line_is_stored_in_pieces_within_the_memory_limit_and_read_back_exactly() {
    const LIMIT: usize = 4 << 20;
    let p = Project::new("huge-line");
    // On a tmpfs, so that the peak measures the store, not how busy the disk is.
    let Some(disk) = Tmpfs::mount(&p.path("disk"), "256m") else {
        return;
    };
    std::fs::write(disk.dir.join("huge.py"), HUGE_LINE).unwrap();
    let mut b = hitchserve::Bundle::new(&disk.dir)
        .startup_timeout(PATIENCE)
        .log_memory_limit(LIMIT);
    // Printing 24 MiB to the captured console is not what this is about.
    b.start_interactive_mode();
    b.add(
        "Huge",
        Service::new(["python3", "huge.py"]).ready_when(|l| l == "DONE"),
    )
    .unwrap();
    b.startup().unwrap();
    let out = b.service("Huge").unwrap().logs().out();
    // Stored when stdout reaches its end.
    let line = out
        .tail()
        .lines_back(1)
        .next_line(PATIENCE)
        .unwrap_or_else(|e| panic!("{e}; {:?}", b.log_stats()));
    let pattern: Vec<u8> = (0..=255u8)
        .filter(|&b| b != b'\n')
        .collect::<Vec<_>>()
        .repeat(4);
    let expected: Vec<u8> = pattern.iter().copied().cycle().take(24 << 20).collect();
    assert!(
        line.bytes() == expected.as_slice(),
        "the huge line differs ({} bytes)",
        line.bytes().len()
    );
    drop(line);
    // The line was never whole in memory (as one block it would be 24 MiB at once): only
    // the pieces the log writer had not put on disk yet, a few MiB.
    let peak = b.log_stats().peak_bytes_in_memory;
    assert!(peak <= 16 << 20, "{peak} bytes were held at once");
    // Everything is on disk once the bundle stops: memory is back within the limit (give or
    // take one piece and a block), the huge line's pieces included.
    b.shutdown().unwrap();
    let stats = b.log_stats();
    assert!(
        stats.bytes_in_memory <= LIMIT + LIMIT / 4 + 64 * 1024,
        "{stats:?}"
    );
    // Read back from all.log, exactly.
    let entries = out.entries();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].bytes() == expected.as_slice(),
        "the huge line read back differs ({} bytes)",
        entries[0].bytes().len()
    );
    assert!(!entries[0].had_newline() && !entries[0].is_lost());
    drop(b);
    drop(disk);
}

#[test]
fn a_long_last_line_without_newline_that_ends_on_a_piece_boundary_is_kept() {
    // A 256 KiB limit hands long lines on in 64 KiB pieces: lines of exactly one and four
    // pieces, and one between, each the whole output of a service that then exits.
    for n in [65_536usize, 70_000, 262_144] {
        let p = Project::new("piece-end");
        let mut b = p.bundle().log_memory_limit(256 << 10);
        b.start_interactive_mode();
        b.add(
            "Writer",
            hitchserve::Service::new([
                "python3",
                "-c",
                &format!("import os; os.write(1, b'x' * {n}); os.close(1)"),
            ])
            .one_shot(),
        )
        .unwrap();
        b.startup().unwrap();
        let svc = b.service("Writer").unwrap();
        svc.wait_exit(PATIENCE).unwrap();
        let entries = svc.logs().out().entries();
        assert_eq!(entries.len(), 1, "{n} bytes: {} lines", entries.len());
        assert_eq!(entries[0].bytes().len(), n);
        assert!(entries[0].bytes().iter().all(|&b| b == b'x'));
    }
}
