//! Review of e902b24 (blocks shared while they fill; each line followed by a `\n` in its
//! block; the all.log writer splits a block's stretch at those newlines without the store's
//! lock): the edge cases the first check (review16_logs) misses — empty lines, `\r`, a lone
//! `\r`, a line that fills a block to the byte, a line one byte longer than a block, a
//! line longer than a block, a line long enough to come in pieces, more tiny lines than a
//! block takes, two services' stdout and stderr interleaved in one block, the bundle's own
//! messages (with empty lines) stored before and after all.log exists, and an unterminated
//! last line — past the log memory limit: every line reads back exact (spilled ones through
//! the offsets the store gave them) and all.log holds each line, in seq order, under its
//! prefix.
use crate::common::{Project, PATIENCE};
use hitchserve::Service;
use std::collections::{HashMap, VecDeque};

const EDGE: &str = r#"
import sys, os
name, rounds = sys.argv[1].encode(), int(sys.argv[2])
out, err = sys.stdout.buffer, sys.stderr.buffer
def fill(tag, n):
    head = b"%s %s " % (name, tag)
    return head + b"x" * (n - len(head))
def w(b):
    out.write(b + b"\n")
for r in range(rounds):
    w(b"")
    w(b"%s cr %d\r" % (name, r))
    w(b"\r")
    # A block of 64 KiB to the byte (with its newline), then two lines filling the next one.
    w(fill(b"full%d" % r, 65535))
    w(fill(b"a%d" % r, 1000))
    w(fill(b"b%d" % r, 64534))
    # More tiny lines than a block takes (2048).
    for k in range(3000):
        w(b"" if k % 3 else b"%d" % k)
        if k % 500 == 0:
            err.write(b"%s err %d %d\n" % (name, r, k))
            out.flush(); err.flush()
    w(fill(b"over%d" % r, 65536))
    w(fill(b"big%d" % r, 100000))
    w(fill(b"huge%d" % r, 300000))
    for k in range(300):
        w(b"%s t%d %s" % (name, k, b"z" * (k % 50)))
    out.flush()
    err.write(b"%s err end %d\n" % (name, r)); err.flush()
err.write(b"DONE\n"); err.flush()
out.write(b"%s UNTERMINATED\r" % name); out.flush()
os.close(1)
import time
time.sleep(1000)
"#;

const ROUNDS: usize = 8;

fn fill(name: &str, tag: &str, n: usize) -> Vec<u8> {
    let mut v = format!("{name} {tag} ").into_bytes();
    v.resize(n, b'x');
    v
}

/// What `EDGE` writes to stdout and stderr.
fn expected(name: &str) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        out.push(Vec::new());
        out.push(format!("{name} cr {r}\r").into_bytes());
        out.push(b"\r".to_vec());
        out.push(fill(name, &format!("full{r}"), 65535));
        out.push(fill(name, &format!("a{r}"), 1000));
        out.push(fill(name, &format!("b{r}"), 64534));
        for k in 0..3000 {
            out.push(if k % 3 != 0 {
                Vec::new()
            } else {
                k.to_string().into_bytes()
            });
            if k % 500 == 0 {
                err.push(format!("{name} err {r} {k}").into_bytes());
            }
        }
        out.push(fill(name, &format!("over{r}"), 65536));
        out.push(fill(name, &format!("big{r}"), 100000));
        out.push(fill(name, &format!("huge{r}"), 300000));
        for k in 0..300 {
            out.push(format!("{name} t{k} {}", "z".repeat(k % 50)).into_bytes());
        }
        err.push(format!("{name} err end {r}").into_bytes());
    }
    err.push(b"DONE".to_vec());
    out.push(format!("{name} UNTERMINATED\r").into_bytes());
    (out, err)
}

fn check(name: &str, what: &str, got: &[Vec<u8>], want: &[Vec<u8>]) {
    assert_eq!(got.len(), want.len(), "{name} {what}: line count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "{name} {what} line {i}: got {:?} ({} bytes), want {:?} ({} bytes)",
            String::from_utf8_lossy(&g[..g.len().min(60)]),
            g.len(),
            String::from_utf8_lossy(&w[..w.len().min(60)]),
            w.len()
        );
    }
}

#[test]
fn review16b_edge_lines_spill_and_all_log_matches_the_store() {
    let p = Project::new("rev16b-edges");
    p.write("edge.py", EDGE);
    let mut b = p.bundle().log_memory_limit(512 * 1024);
    let names = ["E", "Fffffff"];
    for name in names {
        b.add(
            name,
            Service::new(["python3", "edge.py", name, &ROUNDS.to_string()])
                .ready_when(|l| l == "DONE"),
        )
        .unwrap();
    }
    // Stored before all.log exists (rendered by `attach_files`), with empty lines and `\r`.
    b.log("before one\n\nbefore two\r\n");
    b.startup().unwrap();
    b.log("after one\n\n\rafter two");
    b.warn("a warning\n\nof two lines");
    for name in names {
        let out = b.service(name).unwrap().logs().out();
        let last = format!("{name} UNTERMINATED\r");
        out.tail()
            .lines_back(1)
            .until(|l| l == last, PATIENCE)
            .unwrap();
    }
    b.log("the end");
    for name in names {
        let logs = b.service(name).unwrap().logs();
        let (want_out, want_err) = expected(name);
        let bytes = |ls: Vec<hitchserve::LogLine>| -> Vec<Vec<u8>> {
            ls.iter()
                .map(|l| {
                    assert!(!l.is_lost(), "{name}: seq {} lost", l.seq());
                    l.bytes().to_vec()
                })
                .collect()
        };
        check(name, "stdout", &bytes(logs.out().entries()), &want_out);
        check(name, "stderr", &bytes(logs.err().entries()), &want_err);
    }
    let stats = b.log_stats();
    assert_eq!(stats.lines_lost, 0, "{stats:?}");
    // Some 9 MB of lines, within the limit in memory: most were spilled.
    assert!(
        stats.bytes_in_memory < 2 * 1024 * 1024,
        "spilled ({stats:?})"
    );
    b.shutdown().unwrap();
    let all = std::fs::read(b.run_dir().unwrap().join("logs/all.log")).unwrap();
    let entries = b.logs().entries();
    // all.log's lines by source (its label, and whether a warning), in file order: a long
    // line's pieces go to the file as they come, before lines of others stored meanwhile
    // (the line's seq is given at its end), so the file is in seq order per source, and
    // across sources for lines not in pieces.
    let mut by_source: HashMap<Vec<u8>, VecDeque<(usize, Vec<u8>)>> = HashMap::new();
    let mut rest: &[u8] = &all;
    let mut n = 0;
    while !rest.is_empty() {
        let nl = memchr_nl(rest).expect("all.log ends with a newline");
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        let close = line
            .windows(2)
            .position(|w| w == b"] ")
            .unwrap_or_else(|| panic!("all.log line {n}: no prefix in {:?}", lossy(line)));
        assert_eq!(line[0], b'[', "all.log line {n}: {:?}", lossy(line));
        let mut key = b"[".to_vec();
        key.extend_from_slice(line[1..close].trim_ascii_start());
        key.push(b']');
        let mut at = close + 2;
        if line[at..].starts_with(b"WARNING: ") {
            key.extend_from_slice(b" WARNING");
            at += b"WARNING: ".len();
        }
        by_source
            .entry(key)
            .or_default()
            .push_back((n, line[at..].to_vec()));
        n += 1;
    }
    let mut last_whole = None;
    for e in &entries {
        let shown = e.to_string();
        let close = shown.find("] ").expect("a label");
        let mut key = shown.as_bytes()[..close + 1].to_vec();
        if shown[close + 2..].starts_with("WARNING: ") && !e.bytes().starts_with(b"WARNING: ") {
            key.extend_from_slice(b" WARNING");
        }
        let queue = by_source
            .get_mut(&key)
            .unwrap_or_else(|| panic!("seq {}: no line of {:?} in all.log", e.seq(), lossy(&key)));
        let (at, mut bytes) = queue
            .pop_front()
            .unwrap_or_else(|| panic!("seq {}: all.log has no more of {:?}", e.seq(), lossy(&key)));
        let mut pieces = 1;
        // A long line in pieces: each an all.log line under the same prefix.
        while bytes.len() < e.bytes().len() && e.bytes().len() >= 64 * 1024 {
            let (_, more) = queue.pop_front().expect("the rest of a long line");
            bytes.extend_from_slice(&more);
            pieces += 1;
        }
        assert!(
            bytes == e.bytes(),
            "seq {} (all.log line {at}): all.log has {:?} ({} bytes), the store {:?} ({} bytes)",
            e.seq(),
            lossy(&bytes),
            bytes.len(),
            lossy(e.bytes()),
            e.bytes().len()
        );
        if pieces == 1 && e.bytes().len() < 128 * 1024 {
            assert!(
                last_whole.is_none_or(|l| l < at),
                "seq {}: all.log line {at} before the line of the seq before",
                e.seq()
            );
            last_whole = Some(at);
        }
    }
    for (key, left) in by_source {
        assert!(
            left.is_empty(),
            "all.log has more of {:?} than the store: {:?}",
            lossy(&key),
            lossy(&left[0].1)
        );
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned()
}

/// Whether `T` is `UnwindSafe` and `RefUnwindSafe`, found at run time (method resolution
/// prefers the impl on `Probe<T>` when its bounds hold, else takes the one on `&Probe<T>`),
/// so that a type losing them fails this test rather than the whole suite's build.
struct Probe<T>(std::marker::PhantomData<T>);

trait UnwindSafeYes {
    fn unwind_safe(&self) -> bool {
        true
    }
}

impl<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe> UnwindSafeYes for Probe<T> {}

#[allow(dead_code)] // (used only while some type is not unwind safe)
trait UnwindSafeNo {
    fn unwind_safe(&self) -> bool {
        false
    }
}

impl<T> UnwindSafeNo for &Probe<T> {}

macro_rules! unwind_safe {
    ($t:ty) => {
        (&Probe::<$t>(std::marker::PhantomData)).unwind_safe()
    };
}

/// Log lines (and what holds them) stay usable across `catch_unwind`, as they were before
/// e902b24: a test that checks a panic (`catch_unwind(|| assert!(...lines...))`) must not
/// stop compiling because a line's bytes are now in a `Block` (`UnsafeCell`s).
#[test]
fn review16b_log_lines_are_unwind_safe() {
    let not: Vec<&str> = [
        ("LogLine", unwind_safe!(hitchserve::LogLine)),
        ("Vec<LogLine>", unwind_safe!(Vec<hitchserve::LogLine>)),
        ("Follow", unwind_safe!(hitchserve::Follow)),
        ("Tail", unwind_safe!(hitchserve::Tail)),
        ("Logs", unwind_safe!(hitchserve::Logs)),
    ]
    .into_iter()
    .filter(|&(_, yes)| !yes)
    .map(|(name, _)| name)
    .collect();
    assert!(
        not.is_empty(),
        "not UnwindSafe + RefUnwindSafe any more: {not:?}"
    );
}
