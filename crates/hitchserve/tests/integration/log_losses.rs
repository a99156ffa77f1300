//! When the run's `all.log` can't be written (a full disk, the run directory deleted), the
//! bundle says so at once, its next call returns an error, memory stays within the limit,
//! and what was lost is counted and shown as lost — never as wrong data.

use hitchserve::{Error, LogLine, Service};

use crate::common::{Project, Tmpfs, PATIENCE};

/// Lines the filler writes, each `line NNNNNN ` padded with dots to 99 bytes.
const LINES: usize = 40_000;
const MEMORY_LIMIT: usize = 256 * 1024;

/// Writes READY, waits for a file `go` (if asked), then `LINES` lines, then DONE on stderr.
const FILLER: &str = r#"
import os, sys, time
print("READY", flush=True)
if len(sys.argv) > 1:
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
w = sys.stdout.write
for i in range(40_000):
    w(("line %06d " % i).ljust(99, ".") + "\n")
sys.stdout.flush()
sys.stderr.write("DONE\n")
sys.stderr.flush()
time.sleep(1000)
"#;

fn expected(i: usize) -> String {
    format!("{:.<99}", format!("line {i:06} "))
}

/// Waits for the warning, then returns the error `check` gives.
fn wait_for_the_loss(b: &hitchserve::Bundle, warning: &mut hitchserve::Tail, what: &str) -> Error {
    let line = warning
        .until(
            |l| l.contains("could not write") && l.contains("all.log"),
            PATIENCE,
        )
        .unwrap_or_else(|e| {
            panic!(
                "no warning about all.log: {e}\nstats: {:?}\nbundle's last lines: {:?}",
                b.log_stats(),
                b.logs()
                    .last(10)
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
            )
        });
    assert!(
        line.to_string()
            .contains("[Hitch] WARNING: could not write"),
        "{line}"
    );
    assert!(line.text().contains(what), "{line}");
    assert!(line.text().contains("missing from it"), "{line}");
    let filler = b.logs().out();
    let last = expected(LINES - 1);
    filler
        .tail()
        .lines_back(1)
        .until(|l| l == last, PATIENCE)
        .unwrap();
    // The handle comes anyway (to read what is left); `check` says it, every time.
    b.service("Filler").unwrap();
    let err = b.check().unwrap_err();
    assert!(b.check().is_err());
    err
}

/// Checks every line of the filler is either exact or marked lost, and that the counts agree.
fn check_lines_and_counts(b: &hitchserve::Bundle, err: &Error) {
    let Error::LogFileFailed {
        lines_not_written,
        bytes_not_written,
        lines_lost,
        bytes_lost,
        ..
    } = *err
    else {
        panic!("wrong error: {err:?}");
    };
    assert!(lines_not_written > 0 && bytes_not_written > 0, "{err}");
    assert!(lines_lost > 0 && bytes_lost > 0, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("could not be written") && msg.contains("all.log"),
        "{msg}"
    );

    let stats = b.log_stats();
    assert!(stats.lines_not_written >= lines_not_written, "{stats:?}");
    assert!(stats.lines_lost >= lines_lost, "{stats:?}");
    // Within the limit, give or take the block still being filled.
    assert!(
        stats.bytes_in_memory <= MEMORY_LIMIT + 64 * 1024,
        "{stats:?}"
    );

    let out: Vec<LogLine> = b.service("Filler").unwrap().logs().out().entries();
    let filler: Vec<&LogLine> = out.iter().filter(|l| l.text() != "READY").collect();
    assert_eq!(filler.len(), LINES);
    let mut lost = 0;
    for (i, line) in filler.iter().enumerate() {
        if line.is_lost() {
            lost += 1;
            assert!(
                line.text()
                    .starts_with("[hitchserve: this line (99 bytes) is lost"),
                "{line}"
            );
        } else {
            assert_eq!(line.text(), expected(i), "line {i} is wrong");
        }
    }
    assert!(lost > 0);
    // The newest lines are the ones kept; the oldest are read back from all.log (through
    // the bundle's own descriptor, even once the file is deleted).
    assert!(!filler[LINES - 1].is_lost());
    assert!(!filler[0].is_lost());
    let all_lost = b.logs().entries().iter().filter(|l| l.is_lost()).count() as u64;
    assert_eq!(all_lost, b.log_stats().lines_lost);
}

#[test]
fn a_full_disk_is_reported_at_once_and_by_the_next_call_with_memory_within_the_limit() {
    let p = Project::new("full-disk");
    let Some(disk) = Tmpfs::mount(&p.path("disk"), "1m") else {
        return;
    };
    std::fs::write(disk.dir.join("fill.py"), FILLER).unwrap();
    let mut b = hitchserve::Bundle::new(&disk.dir)
        .startup_timeout(PATIENCE)
        .log_memory_limit(MEMORY_LIMIT);
    b.add(
        "Filler",
        Service::new(["python3", "fill.py"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    let mut warning = b.logs().err().tail();
    b.startup().unwrap();
    let err = wait_for_the_loss(&b, &mut warning, "No space left on device");
    check_lines_and_counts(&b, &err);
    // What did reach the disk is there, exactly.
    let all = std::fs::read(b.run_dir().unwrap().join("logs/all.log")).unwrap();
    let first = format!("] {}\n", expected(0));
    assert!(all.windows(first.len()).any(|w| w == first.as_bytes()));
    // Not reported by a call that reports once yet: shutdown does.
    let shut = b.shutdown();
    assert!(matches!(shut, Err(Error::LogFileFailed { .. })), "{shut:?}");
    drop(b);
    drop(disk);
}

#[test]
fn a_deleted_run_directory_is_reported_like_a_full_disk() {
    let p = Project::new("deleted-run");
    p.write("fill.py", FILLER);
    let mut b = p.bundle().log_memory_limit(MEMORY_LIMIT);
    b.add(
        "Filler",
        Service::new(["python3", "fill.py", "go"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    let mut warning = b.logs().err().tail();
    b.startup().unwrap();
    // The log writer makes all.log in the background: delete it once the startup's lines
    // are in it (else the first batch after the deletion, which finds it, may be only
    // those, and the filler's first lines come after what all.log vouches for).
    let all_log = b.run_dir().unwrap().join("logs/all.log");
    assert!(crate::common::wait_for(PATIENCE, || {
        std::fs::read_to_string(&all_log).is_ok_and(|text| text.contains("READY in"))
    }));
    std::fs::remove_dir_all(b.run_dir().unwrap()).unwrap();
    std::fs::write(p.path("go"), "").unwrap();
    let err = wait_for_the_loss(&b, &mut warning, "deleted");
    check_lines_and_counts(&b, &err);
}
