//! The console: `[   Name] line` / `[Err Name] line` aligned, `[Hitch]` lines, interactive mode.

use std::process::Stdio;

use hitchserve::Service;

use crate::common::{helper_process, Project, PATIENCE};

const PROJECT_VAR: &str = "HITCHSERVE_TEST_CONSOLE_PROJECT";

#[test]
#[ignore = "helper: run by console_prints_aligned_prefixed_lines_and_interactive_mode_mutes_it"]
fn helper_console_bundle() {
    let Some(dir) = std::env::var_os(PROJECT_VAR) else {
        return;
    };
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(PATIENCE);
    b.add(
        "Web",
        Service::new([
            "sh",
            "-c",
            "echo hello; echo oops >&2; echo READY; while [ ! -e go ]; do sleep 0.01; done; echo muted line; echo muted err >&2; exec sleep 1000",
        ])
        .ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.add(
        "LongerName",
        Service::new(["sh", "-c", "echo hi; exec sleep 1000"]).ready_when(|l| l == "hi"),
    )
    .unwrap();
    b.startup().unwrap();
    b.log("a message from the test");
    b.warn("something bad");
    let web = b.service("Web").unwrap();
    // stderr is a separate pipe: make sure `oops` has arrived before muting.
    web.logs()
        .err()
        .tail()
        .lines_back(1)
        .until(|l| l == "oops", PATIENCE)
        .unwrap();
    let mut out = web.logs().out().tail();
    let mut err = web.logs().err().tail();
    b.start_interactive_mode();
    std::fs::write(std::path::Path::new(&dir).join("go"), "").unwrap();
    out.until(|l| l == "muted line", PATIENCE).unwrap();
    err.until(|l| l == "muted err", PATIENCE).unwrap();
    b.stop_interactive_mode();
    b.log("back");
    assert!(web.logs().lines().contains(&"muted line".to_owned()));
    b.shutdown().unwrap();
}

#[test]
fn console_prints_aligned_prefixed_lines_and_interactive_mode_mutes_it() {
    let p = Project::new("console");
    let out = helper_process(
        "console::helper_console_bundle",
        &[(PROJECT_VAR, p.dir.to_str().unwrap())],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    // "Err LongerName" is the widest label: 14 characters.
    assert!(has("[           Web] hello"), "{text}");
    assert!(has("[       Err Web] oops"), "{text}");
    assert!(has("[    LongerName] hi"), "{text}");
    assert!(has("[         Hitch] a message from the test"), "{text}");
    assert!(has("[         Hitch] WARNING: something bad"), "{text}");
    assert!(has("[         Hitch] back"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("[         Hitch] READY in ")),
        "{text}"
    );
    assert!(
        !text.contains("muted"),
        "interactive mode must mute the console: {text}"
    );
    assert!(
        has("[         Hitch] 2 lines were not printed during interactive mode; see the logs"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}
