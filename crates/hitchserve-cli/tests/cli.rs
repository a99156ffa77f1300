//! The `hitchserve` command, run for real against temporary projects.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_hitchserve");

struct Project(PathBuf);

impl Project {
    fn new(tag: &str, toml: &str) -> Project {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hitchserve-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hitchserve.toml"), toml).unwrap();
        Project(dir)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(&self.0).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const DAYS: &str = r#"
[bundle]
startup_timeout = "30s"

[services.Clock]
command = ["python3", "-u", "-c", "import datetime, json, time\nprint('READY', flush=True)\nwhile True:\n    print(json.dumps({'day': datetime.date.today().isoformat()}), flush=True)\n    time.sleep(0.05)"]
ready = { line_contains = "READY" }

[services.Web]
command = ["python3", "-m", "http.server", "{port.http}", "--bind", "127.0.0.1"]
ports = ["http"]
ready = { tcp = "{port.http}" }
needs = ["Clock"]
"#;

#[test]
fn detached_bundle_answers_every_control_command_then_goes_down() {
    let p = Project::new("detach", DAYS);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));

    let status = p.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Clock", "Web"]);
    assert!(v["services"][1]["ports"]["http"].as_u64().is_some());
    assert!(v["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "ready"));
    assert!(p.run(&["ps"]).status.success());

    // Time travel, seen by the Python service's own clock.
    let moved = p.run(&["time-travel", "+2d"]);
    assert!(moved.status.success(), "{}", text(&moved));
    let now: serde_json::Value = serde_json::from_slice(&p.run(&["now", "--json"]).stdout).unwrap();
    let day = &now["now"].as_str().unwrap()[..10];
    let seen = p.run(&[
        "logs",
        "Clock",
        "--until-json",
        &format!("day={day}"),
        "--timeout",
        "30s",
    ]);
    assert!(seen.status.success(), "{}", text(&seen));
    assert!(String::from_utf8_lossy(&seen.stdout).contains(day));

    // --until: found (exit 0) and not found (exit non-zero).
    assert!(p
        .run(&["logs", "Clock", "--until", "^READY$"])
        .status
        .success());
    let missing = p.run(&[
        "logs",
        "Clock",
        "--until",
        "never printed",
        "--timeout",
        "300ms",
    ]);
    assert!(!missing.status.success() && text(&missing).contains("nothing matched"));

    // exec passes the exit code through and runs in the service's directory.
    let killed = p.run(&["exec", "Clock", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(killed.status.code(), Some(128 + 9), "as a shell reports it");
    let exec = p.run(&["exec", "Clock", "--", "sh", "-c", "pwd; exit 3"]);
    assert_eq!(exec.status.code(), Some(3));
    let dir = std::fs::canonicalize(&p.0).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout).trim(),
        dir.to_str().unwrap()
    );

    assert!(p.run(&["signal", "Web", "CONT"]).status.success());
    let unknown = p.run(&["logs", "Nope"]);
    assert!(!unknown.status.success() && text(&unknown).contains("`Nope`"));

    // A second `up` in the same project is refused, and leaves the running one's log alone.
    let up_log = p.0.join(".hitchserve/up.log");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&up_log)
        .unwrap();
    std::io::Write::write_all(&mut log, b"written by the running bundle\n").unwrap();
    for args in [&["up", "--detach"][..], &["up"][..]] {
        let second = p.run(args);
        assert!(
            !second.status.success() && text(&second).contains("already running"),
            "{}",
            text(&second)
        );
    }
    let kept = std::fs::read_to_string(&up_log).unwrap();
    assert!(kept.contains("written by the running bundle"), "{kept}");

    assert!(p.run(&["down"]).status.success());
    let after = p.run(&["status"]);
    assert!(!after.status.success() && text(&after).contains("no bundle is running"));
}

#[test]
fn foreground_up_prints_logs_and_exits_0_after_down() {
    let p = Project::new("foreground", DAYS);
    let mut up = p.cmd(&["up"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut seen_ready = false;
    let mut seen_service_line = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen_service_line |= line.contains("Clock] READY");
        if line.contains("Hitch] READY in") {
            seen_ready = true;
            break;
        }
    }
    assert!(seen_ready && seen_service_line);
    // Commands wait for a bundle that is still coming up, so `down` can't miss it.
    let down = p.run(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(up.wait().unwrap().success());
}

#[test]
fn bad_toml_names_line_and_column_and_a_failed_startup_exits_non_zero() {
    let p = Project::new(
        "badtoml",
        "[services.App]\ncommand = [\"true\"]\nneeds = 3\n",
    );
    let o = p.run(&["up"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("hitchserve.toml:3:9"), "{}", text(&o));

    let p = Project::new("unknownkey", "[services.App]\ncomand = [\"true\"]\n");
    let o = p.run(&["up", "--detach"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains(":2:1") && t.contains("comand"), "{t}");

    let p = Project::new(
        "crashy",
        "[services.App]\ncommand = [\"sh\", \"-c\", \"echo boom >&2; exit 4\"]\nready = { line_contains = \"never\" }\n",
    );
    let o = p.run(&["up", "--detach"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("`App`") && t.contains("exit code 4") && t.contains("boom"),
        "{t}"
    );
}

/// Processes whose environment carries this run's marker.
fn marked(run: &str) -> Vec<u32> {
    let needle = format!("HITCHSERVE_RUN={run}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|&b| b == 0)
                .any(|v| v == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

fn wait_gone(pid: u32) -> bool {
    // SAFETY: plain syscalls on integers we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as libc::c_int;
        if fd < 0 {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = libc::poll(&mut pfd, 1, 30_000);
        libc::close(fd);
        n == 1
    }
}

#[test]
fn kill_9_of_a_detached_bundle_leaves_no_service_behind() {
    let p = Project::new("kill9", DAYS);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    let pid: i32 = out
        .split("pid ")
        .nth(1)
        .and_then(|r| r.trim_end_matches([')', '\n']).parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let run = std::fs::read_link(Path::new(&p.0).join(".hitchserve/latest")).unwrap();
    let run = run.file_name().unwrap().to_str().unwrap().to_owned();
    let pids = marked(&run);
    assert!(pids.len() >= 2, "{pids:?}");
    // A client following the logs learns that the bundle went away.
    let mut follow = p
        .cmd(&["logs", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(lines.next().is_some_and(|l| l.is_ok()));
    // SAFETY: killing the detached bundle process we started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = lines.count();
    let followed = follow.wait_with_output().unwrap();
    assert!(!followed.status.success());
    assert!(String::from_utf8_lossy(&followed.stderr).contains("went away"));
    for pid in pids {
        assert!(
            wait_gone(pid),
            "service process {pid} survived kill -9 of its bundle"
        );
    }
}

#[test]
fn sigterm_to_a_foreground_bundle_stops_it_and_its_services_keep_default_signals() {
    let p = Project::new("sigterm", DAYS);
    let mut up = p.cmd(&["up"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Hitch] READY in")));
    let run = std::fs::read_link(Path::new(&p.0).join(".hitchserve/latest")).unwrap();
    let run = run.file_name().unwrap().to_str().unwrap().to_owned();
    let pids = marked(&run);
    assert!(pids.len() >= 2, "{pids:?}");
    for pid in &pids {
        // A service must not inherit a blocked signal mask: it would ignore its stop signal.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(blocked) = status.lines().find(|l| l.starts_with("SigBlk:")) {
            let mask = u64::from_str_radix(blocked[7..].trim(), 16).unwrap();
            let stop_signals = (1 << (libc::SIGTERM - 1)) | (1 << (libc::SIGINT - 1));
            assert_eq!(mask & stop_signals, 0, "process {pid}: {blocked}");
        }
    }
    // Drain the console so the bundle never blocks on a full pipe while stopping.
    let drain = std::thread::spawn(move || lines.count());
    // SAFETY: signalling the bundle process this test started.
    unsafe {
        libc::kill(up.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
    drain.join().unwrap();
    for pid in pids {
        assert!(
            wait_gone(pid),
            "service process {pid} survived SIGTERM of its bundle"
        );
    }
}

/// A foreground `up` whose one service has started but will never be ready; the
/// thread drains its console.
fn starting_forever(tag: &str) -> (Project, std::process::Child, std::thread::JoinHandle<usize>) {
    let p = Project::new(
        tag,
        "[bundle]\nstartup_timeout = \"10m\"\n\n[services.Slow]\ncommand = [\"sh\", \"-c\", \"echo started; exec tail -f /dev/null\"]\nready = { line_contains = \"never\" }\n",
    );
    let mut up = p
        .cmd(&["up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Slow] started")));
    let drain = std::thread::spawn(move || lines.count());
    (p, up, drain)
}

#[test]
fn a_signal_during_startup_ends_it_without_waiting_for_the_timeout() {
    let (_p, up, drain) = starting_forever("sigstartup");
    // SAFETY: signalling the bundle process this test started.
    unsafe {
        libc::kill(up.id() as libc::pid_t, libc::SIGINT);
    }
    let out = up.wait_with_output().unwrap();
    drain.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGINT),
        "as shells report it"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{err}");
}

#[test]
fn logs_follow_streams_new_lines_and_ends_when_the_bundle_goes_down() {
    let p = Project::new("follow", DAYS);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let mut follow = p
        .cmd(&["logs", "Clock", "--out", "--follow", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    // Clock prints a line every 50 ms: more than the one asked for means it follows.
    let firsts: Vec<String> = lines.by_ref().take(3).map(Result::unwrap).collect();
    assert!(
        firsts.iter().all(|l| l.starts_with("[Clock] {\"day\"")),
        "{firsts:?}"
    );
    // A client of the socket that shuts its writing side after the request still reads.
    let mut raw =
        std::os::unix::net::UnixStream::connect(p.0.join(".hitchserve/control.sock")).unwrap();
    std::io::Write::write_all(
        &mut raw,
        b"{\"cmd\":\"logs\",\"service\":\"Clock\",\"follow\":true,\"n\":0}\n",
    )
    .unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    // Clock prints every 50 ms: 60 lines span well over the 1 s between peer checks.
    let got = BufReader::new(raw)
        .lines()
        .take(60)
        .map_while(Result::ok)
        .count();
    assert_eq!(got, 60);

    assert!(p.run(&["down"]).status.success());
    let rest = lines.count();
    assert!(follow.wait().unwrap().success(), "after {rest} more lines");
    let again = p.run(&["down"]);
    assert!(
        !again.status.success() && text(&again).contains("no bundle is running"),
        "{}",
        text(&again)
    );
}

#[test]
fn exec_runs_as_the_services_user() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return; // only root can start a service as another user
    }
    let p = Project::new(
        "execuser",
        "[services.Db]\ncommand = [\"sh\", \"-c\", \"echo READY; exec tail -f /dev/null\"]\nready = { line_contains = \"READY\" }\nuser = \"nobody\"\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let id = p.run(&["exec", "Db", "--", "id", "-un"]);
    assert!(id.status.success(), "{}", text(&id));
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "nobody");
    assert!(p.run(&["down"]).status.success());
}

#[test]
fn down_during_startup_ends_it_without_waiting_for_the_timeout() {
    let (p, up, drain) = starting_forever("downstartup");
    let down = p.run(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    let out = up.wait_with_output().unwrap();
    drain.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{err}");
}

/// examples/reminders/scenario.sh: the reminders scenario with the command line only.
#[test]
fn the_reminders_scenario_passes_with_the_command_line_only() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/reminders/scenario.sh");
    let out = Command::new("sh")
        .arg(&script)
        .env("HITCHSERVE", BIN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("scenario passed"));
}
