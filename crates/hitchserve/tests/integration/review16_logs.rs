//! Review of bd19ef0 (all.log's writer renders the lines from the store's blocks): with
//! several chatty services and long lines in pieces among their lines, past the log memory
//! limit, all.log holds every line at the offset the store gave it (spilled lines read back
//! through those offsets come back exact) and in arrival order.
use crate::common::{Project, PATIENCE};
use hitchserve::Service;

const CHATTY: &str = r#"
import sys, os
name, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout.buffer
for i in range(n):
    if i % 997 == seed:
        out.write(b"%s L%d " % (name.encode(), i) + b"x" * 200000 + b"\n")
    else:
        out.write(b"%s line %d %s\n" % (name.encode(), i, b"y" * (i % 37)))
    if i % 13 == 0:
        out.flush()
out.flush()
sys.stderr.write("DONE\n"); sys.stderr.flush()
import time
time.sleep(1000)
"#;

#[test]
fn review16_chatty_services_with_long_lines_spill_and_all_log_matches_the_offsets() {
    let p = Project::new("rev16-render");
    p.write("chatty.py", CHATTY);
    let mut b = p.bundle().log_memory_limit(256 * 1024);
    let names = ["A", "Bee", "Cxxxxx", "D"];
    let n = 20_000;
    for (k, name) in names.iter().enumerate() {
        b.add(
            *name,
            Service::new([
                "python3",
                "chatty.py",
                name,
                &n.to_string(),
                &(k * 100 + 7).to_string(),
            ])
            .ready_when(|l| l == "DONE"),
        )
        .unwrap();
    }
    b.startup().unwrap();
    for name in names {
        let out = b.service(name).unwrap().logs().out();
        let last = format!("{name} line {} {}", n - 1, "y".repeat((n - 1) % 37));
        out.tail()
            .lines_back(1)
            .until(|l| l == last, PATIENCE)
            .unwrap();
    }
    for (k, name) in names.iter().enumerate() {
        let out = b.service(name).unwrap().logs().out();
        let got: Vec<Vec<u8>> = out.entries().iter().map(|l| l.bytes().to_vec()).collect();
        let want: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                if i % 997 == k * 100 + 7 {
                    format!("{name} L{i} {}", "x".repeat(200000)).into_bytes()
                } else {
                    format!("{name} line {i} {}", "y".repeat(i % 37)).into_bytes()
                }
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{name} line {i}: got {:?}",
                String::from_utf8_lossy(&g[..g.len().min(80)])
            );
        }
    }
    let stats = b.log_stats();
    assert_eq!(stats.lines_lost, 0, "{stats:?}");
    b.shutdown().unwrap();
    let all = std::fs::read(b.run_dir().unwrap().join("logs/all.log")).unwrap();
    let entries = b.logs().entries();
    // Each line under its prefix (`[label] `), in seq order; a long line in pieces, each
    // under the same prefix.
    let mut rest: &[u8] = &all;
    let mut next_line = |seq: u64| -> (Vec<u8>, Vec<u8>) {
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .unwrap_or_else(|| panic!("all.log ends before seq {seq}"));
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        let close = line.windows(2).position(|w| w == b"] ").unwrap_or_else(|| {
            panic!(
                "seq {seq}: no prefix in {:?}",
                String::from_utf8_lossy(line)
            )
        });
        (line[..close + 2].to_vec(), line[close + 2..].to_vec())
    };
    for e in &entries {
        let (prefix, mut bytes) = next_line(e.seq());
        while bytes.len() < e.bytes().len() && e.bytes().len() >= 64 * 1024 {
            let (p, more) = next_line(e.seq());
            assert_eq!(p, prefix, "seq {}: a piece under another prefix", e.seq());
            bytes.extend_from_slice(&more);
        }
        assert!(
            bytes == e.bytes(),
            "seq {}: all.log has {:?}, the store {:?}",
            e.seq(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
            e.text().chars().take(80).collect::<String>()
        );
    }
    assert!(rest.is_empty(), "all.log has more than the store");
}
