//! The `hitchserve` command, run for real against temporary projects.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_hitchserve");

/// A temporary project: its directory (where `hitchserve.toml` is), and the directory
/// removed at the end (the same, or one above it).
struct Project(PathBuf, PathBuf);

impl Project {
    fn new(tag: &str, toml: &str) -> Project {
        Project::under(tag, "", toml)
    }

    /// A project `sub` below the temporary directory.
    fn under(tag: &str, sub: &str, toml: &str) -> Project {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "hitchserve-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hitchserve.toml"), toml).unwrap();
        Project(dir, root)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(&self.0).stdin(Stdio::null());
        // The stop signals as a terminal gives them, whatever this test runner was given:
        // the CLI keeps an ignored SIGINT it inherits (as `nohup` or `cmd &` leave it).
        // SAFETY: `signal` is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `o` failed, saying `said`.
fn refused(o: &Output, said: &str) {
    assert!(
        !o.status.success() && text(o).contains(said),
        "not refused with {said:?}: {}",
        text(o)
    );
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

    // Back in time, by a negative duration.
    let back = p.run(&["time-travel", "-1d"]);
    assert!(back.status.success(), "{}", text(&back));
    let then: serde_json::Value =
        serde_json::from_slice(&p.run(&["now", "--json"]).stdout).unwrap();
    let then = &then["now"].as_str().unwrap()[..10];
    assert!(then < day, "{then} is not before {day}");

    // To a date alone: its midnight, UTC. Past what a moment can be: said so.
    let to_date = p.run(&["time-travel", "--to", "2031-02-03"]);
    assert!(to_date.status.success(), "{}", text(&to_date));
    let now: serde_json::Value = serde_json::from_slice(&p.run(&["now", "--json"]).stdout).unwrap();
    assert!(
        now["now"].as_str().unwrap().starts_with("2031-02-03T00:00"),
        "{now}"
    );
    refused(
        &p.run(&["time-travel", "--to", "9999-12-31T00:00:00Z"]),
        "out of range",
    );

    // --until: found (exit 0, among the old lines with -n) and not found (exit non-zero).
    assert!(p
        .run(&["logs", "Clock", "--until", "^READY$", "-n", "1000000000"])
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
    // With the last lines, as the library's timeout shows them: they often say why.
    assert!(
        text(&missing).contains("the last line"),
        "{}",
        text(&missing)
    );
    assert!(text(&missing).contains("\"day\""), "{}", text(&missing));

    // exec passes the exit code through and runs in the service's directory.
    let killed = p.run(&["exec", "Clock", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(killed.status.code(), Some(128 + 9), "as a shell reports it");
    let exec = p.run(&["exec", "Clock", "--", "sh", "-c", "pwd; exit 3"]);
    assert_eq!(exec.status.code(), Some(3));
    // A command not found: 127, as a shell says it (it said "as `root`, ... (that takes
    // root)" of a service that has no user, and exited 1).
    let missing = p.run(&["exec", "Clock", "--", "no-such-program-hs"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing));
    assert!(
        text(&missing).contains("cannot run `no-such-program-hs`: ")
            && !text(&missing).contains("takes root"),
        "{}",
        text(&missing)
    );
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
    // One that passed that check but lost the race for the lock (as several `up --detach`
    // at once do) reports to its parent only: nothing of it lands in the running one's log.
    let loser = p
        .cmd(&["up", "--daemon-child"])
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&up_log)
                .unwrap(),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&loser.stdout);
    assert!(
        !loser.status.success() && said.starts_with("failed: ") && said.contains("already running"),
        "{said}"
    );
    let kept = std::fs::read_to_string(&up_log).unwrap();
    assert!(kept.contains("written by the running bundle"), "{kept}");
    assert!(!kept.contains("already running"), "{kept}");

    down(&p);
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

/// `up --detach --timeline` prints the startup timeline (the detached bundle writes it to
/// the pipe its starter reads; it was dropped there), then READY.
#[test]
fn a_detached_up_prints_the_timeline_it_was_asked_for() {
    let p = Project::new("detach-timeline", DAYS);
    // (`-d` as docker compose has it.)
    let without = p.run(&["up", "-d"]);
    assert!(without.status.success(), "{}", text(&without));
    let plain = String::from_utf8_lossy(&without.stdout).into_owned();
    assert!(p.run(&["down"]).status.success());
    let o = p.run(&["up", "--detach", "--timeline"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(p.run(&["down"]).status.success());
    assert!(o.status.success(), "{}", text(&o));
    assert!(!plain.contains("Clock"), "{plain}");
    assert!(out.contains("Clock") && out.contains("READY"), "{out}");
    assert!(out.find("Clock") < out.find("READY (hitchserve"), "{out}");
}

/// The engine's advice is given in bundle-file terms, not its Rust API's: a startup
/// timeout names `startup_timeout` in [bundle], a missing directory the service's
/// `directory`, an undeclared port `ports = [...]`.
#[test]
fn errors_say_what_to_change_in_the_bundle_file() {
    let p = Project::new(
        "fileterms",
        "[bundle]\nstartup_timeout = \"1s\"\n\n[services.Slow]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\"]\nready = { line_contains = \"never\" }\n",
    );
    let t = text(&p.run(&["up", "--detach"]));
    assert!(t.contains("increase `startup_timeout` in [bundle]"), "{t}");
    assert!(!t.contains("Bundle::"), "{t}");

    let p = Project::new(
        "fileterms-dir",
        "[services.App]\ncommand = [\"true\"]\ndirectory = \"nope\"\n",
    );
    let t = text(&p.run(&["up", "--detach"]));
    assert!(t.contains("fix its `directory`"), "{t}");

    let p = Project::new(
        "fileterms-port",
        "[services.App]\ncommand = [\"sleep\", \"{port.http}\"]\n",
    );
    let t = text(&p.run(&["up", "--detach"]));
    assert!(t.contains("add `ports = [\"NAME\"]`"), "{t}");
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
            let env = environ_of(pid)?;
            env.split(|&b| b == 0)
                .any(|v| v == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// A process's environment. A process in the middle of an exec (a shell running its last
/// command) shows an empty one for a moment: one whose `/proc/PID/stat` says so (alive, not
/// a kernel thread, no end to its environment yet) is read again, for up to a second. A
/// poll: nothing tells of another process's exec reaching its end.
fn environ_of(pid: u32) -> Option<Vec<u8>> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let mid_exec = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let alive = !matches!(fields.first().copied(), Some("Z" | "X") | None);
        Some(alive && field(9)? & PF_KTHREAD == 0 && field(51)? == 0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        if !env.is_empty() || mid_exec() != Some(true) || std::time::Instant::now() >= deadline {
            return Some(env);
        }
        std::thread::yield_now();
    }
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

/// `.hitchserve` removed under a detached bundle (`git clean -fdX`): nothing could find it
/// any more (commands said "no bundle is running", a next `up` started another beside it),
/// so it stops, and its services with it.
#[test]
fn a_detached_bundle_whose_state_directory_is_removed_stops() {
    let p = Project::new("statermrf", STARTER);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let daemon: u32 = std::fs::read_to_string(p.0.join(".hitchserve/up.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_slice(&p.run(&["status", "--json"]).stdout).unwrap();
    let service = status["services"][0]["pid"].as_u64().unwrap() as u32;
    std::fs::remove_dir_all(p.0.join(".hitchserve")).unwrap();
    assert!(wait_gone(daemon), "the bundle ran on, unreachable");
    assert!(wait_gone(service), "its service ran on");
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
    // The services' main processes (not any marked process: one caught inside a fork, before
    // its exec, has every signal blocked for that moment).
    let st = p.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let mains: Vec<u64> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["pid"].as_u64())
        .collect();
    assert_eq!(mains.len(), 2, "{v}");
    for pid in &mains {
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

/// SIGTERM to a ready foreground `up` stops its services with their grace (from review: an
/// interrupt had set the bundle to hurry, and every service got SIGKILL at once), also when
/// it comes twice at once (`timeout N hitchserve up`).
#[test]
fn sigterm_to_a_ready_foreground_bundle_gives_its_services_their_grace() {
    let p = Project::new(
        "grace",
        "[bundle]\nstartup_timeout = \"30s\"\n\n[services.Graceful]\ncommand = [\"sh\", \"-c\", \"trap 'sleep 0.3; echo clean-exit; exit 0' TERM; echo READY; while :; do sleep 0.05; done\"]\nready = { line_contains = \"READY\" }\n",
    );
    let mut up = p.cmd(&["up"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Hitch] READY in")));
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // Twice at once, as `timeout` does (to its child, then to the child's group): one
    // stop, not a second signal asking to hurry.
    // SAFETY: signalling the bundle process this test started.
    unsafe {
        libc::kill(up.id() as libc::pid_t, libc::SIGTERM);
        libc::kill(up.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
    let out = drain.join().unwrap();
    assert!(
        out.iter().any(|l| l.contains("clean-exit")),
        "the service got no grace:\n{}",
        out.join("\n")
    );
    assert!(
        !out.iter().any(|l| l.contains("SIGKILL")),
        "{}",
        out.join("\n")
    );
}

/// A detached bundle whose `up` (the client waiting for its answer) is SIGKILLed while it
/// starts goes on and starts up (it panicked writing its answer to the gone client, and was
/// gone: `exec.CommandContext` and CI timeouts kill this way).
#[test]
fn a_detached_bundle_outlives_its_up_killed_during_startup() {
    let p = Project::new(
        "detached-orphaned",
        "[bundle]\nstartup_timeout = \"5m\"\n\n[services.Slow]\ncommand = [\"sh\", \"-c\", \"echo $$ > booted.fifo; read x < go.fifo; echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\n",
    );
    mkfifo(&p, "booted.fifo");
    mkfifo(&p, "go.fifo");
    let mut up = p
        .cmd(&["up", "--detach"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Reading blocks until the service, started, writes its pid.
    std::fs::read_to_string(p.0.join("booted.fifo")).unwrap();
    up.kill().unwrap();
    up.wait().unwrap();
    // Opening blocks until the service reads: then it says READY.
    std::fs::write(p.0.join("go.fifo"), "go\n").unwrap();
    // `exec` waits for the startup under way (only `status`, `logs` and `now` answer while
    // it starts), then runs.
    let ex = p.run(&["exec", "Slow", "true"]);
    assert!(ex.status.success(), "{}", text(&ex));
    let st = p.run(&["status", "--json"]);
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["services"][0]["state"], "ready", "{v}");
    // And it runs on, having answered nobody.
    let st = p.run(&["status"]);
    assert!(st.status.success(), "{}", text(&st));
    let o = p.run(&["down"]);
    assert!(
        o.status.success() && !text(&o).contains("no bundle is running"),
        "{}",
        text(&o)
    );
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
        .cmd(&["logs", "Clock", "--out", "-f", "-n", "1"])
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
        std::os::unix::net::UnixStream::connect(p.0.join(".hitchserve/control/control.sock"))
            .unwrap();
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

    down(&p);
    let rest = lines.count();
    assert!(follow.wait().unwrap().success(), "after {rest} more lines");
}

/// A follower behind a chatty service when `down` comes gets every line, then its end (it
/// was cut off after 5 s with "the bundle went away", a third of the lines lost: a write
/// per line, and a fixed wait for open streams).
#[test]
fn a_follower_behind_at_down_gets_every_line() {
    const LINES: usize = 300_000;
    let p = Project::new(
        "follow-behind",
        &format!(
            "[services.Burst]\ncommand = [\"python3\", \"-c\", \"import sys\\nsys.stdout.write(''.join('line %d\\\\n' % i for i in range({LINES})))\\nprint('READY', flush=True)\\nimport time\\ntime.sleep(1000)\"]\nready = {{ line_contains = \"READY\" }}\n"
        ),
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let mut follow = p
        .cmd(&["logs", "Burst", "--out", "-f", "-n", "1000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (first, following) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines().map_while(Result::ok);
        let head = lines.next();
        let _ = first.send(());
        head.into_iter()
            .chain(lines)
            .filter(|l| l.starts_with("[Burst] line "))
            .count()
    });
    // Down once the follower streams (its first line is here), far behind the service.
    following.recv().unwrap();
    down(&p);
    let got = reader.join().unwrap();
    let status = follow.wait().unwrap();
    assert_eq!(got, LINES);
    assert!(status.success());
}

/// A user's `FAKETIME*` variables reach no service, also not one on real time (they
/// reached those: with the user's libfaketime preloaded, its clock moved).
#[test]
fn a_users_faketime_variables_reach_no_service() {
    let p = Project::new(
        "faketime-env",
        "[services.Real]\ncommand = [\"sh\", \"-c\", \"echo \\\"seen:${FAKETIME:-none}:${FAKETIME_X:-none}\\\"; echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nno_libfaketime = true\n[services.Faked]\ncommand = [\"sh\", \"-c\", \"echo \\\"seen:${FAKETIME:-none}:${FAKETIME_X:-none}\\\"; echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\n",
    );
    let up = p
        .cmd(&["up", "--detach"])
        .env("FAKETIME", "+1y")
        .env("FAKETIME_X", "1")
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", text(&up));
    for name in ["Real", "Faked"] {
        let logs = p.run(&["logs", name, "--out"]);
        assert!(
            text(&logs).contains("seen:none:none"),
            "{name}: {}",
            text(&logs)
        );
    }
    down(&p);
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
    // On a terminal (a pty from `script`), the other user's command gets a terminal of
    // its own, relayed: not the caller's, which a process it left running could read from
    // once it ended (nor push keystrokes into: TIOCSTI), yet its controlling one (field 7
    // of its stat is a terminal), so that what needs a terminal (a password prompt) works.
    let said = said_on_a_terminal(
        &p,
        &format!(
            "readlink /proc/self/fd/0; exec {BIN} exec Db -- sh -c \
             'readlink /proc/self/fd/0 /proc/self/fd/1; cat /proc/self/stat'"
        ),
    );
    let mut lines = said.lines().map(str::trim);
    let (ours, its_in, its_out, stat) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    assert!(ours.starts_with("/dev/pts/"), "{said}");
    assert!(its_in.starts_with("/dev/pts/") && its_in != ours, "{said}");
    assert_eq!(its_in, its_out, "{said}");
    let tty = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(4))
        .unwrap_or_else(|| panic!("no stat in {said:?}"));
    assert_ne!(tty, "0", "{stat}");
    // Nor does it get a descriptor of it past stdin, stdout and stderr (a shell's `3<>`).
    let said = said_on_a_terminal(
        &p,
        &format!(
            "exec 3<>/dev/tty; {BIN} exec Db -- sh -c 'readlink /proc/$$/fd/3 || echo no-fd-3'"
        ),
    );
    assert!(said.contains("no-fd-3"), "{said}");
    // In the background (not the terminal's foreground group: `timeout`'s child), it
    // leaves the terminal alone: setting it raw stopped it for good.
    let said = said_on_a_terminal(
        &p,
        &format!("timeout 60 {BIN} exec Db -- echo in-the-background; echo rc=$?"),
    );
    assert!(
        said.contains("in-the-background") && said.contains("rc=0"),
        "{said}"
    );
    // A SIGTERM to `exec` (a runner's timeout) ends it as before, of the signal, with the
    // caller's terminal put back as it was (not raw) — also when the command ignores it.
    let mut ended = on_a_terminal(
        &p,
        &format!(
            "{BIN} exec Db -- sh -c 'trap \"\" TERM; echo EXEC=$PPID; exec sleep 1000'; \
             echo rc=$?; stty -a"
        ),
    );
    let rest = signalled_exec(ended.stdout.take().unwrap(), libc::SIGTERM);
    drop(ended.stdin.take());
    let _ = ended.wait();
    assert!(rest.contains("rc=143"), "{rest}");
    assert!(
        rest.contains(" icanon") && rest.contains(" echo "),
        "{rest}"
    );
    // On a terminal that is not its controlling one (`setsid`), the terminal is still its
    // to read (it took that for the background, and the command never got its input).
    let mut no_ctty = on_a_terminal(
        &p,
        &format!(
            "timeout 60 setsid -w {BIN} exec Db -- sh -c 'read x; echo got=$x; exit 4'; \
             echo rc=$?"
        ),
    );
    std::io::Write::write_all(no_ctty.stdin.as_mut().unwrap(), b"hello\r").unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(no_ctty.stdout.as_mut().unwrap(), &mut said).unwrap();
    drop(no_ctty.stdin.take());
    let _ = no_ctty.wait();
    assert!(
        said.contains("got=hello") && said.contains("rc=4"),
        "{said}"
    );
    // What is typed reaches it, and its exit code is ours.
    let mut typed = on_a_terminal(
        &p,
        &format!("exec {BIN} exec Db -- sh -c 'read word; echo \"got $word\"; exit 3'"),
    );
    std::io::Write::write_all(typed.stdin.as_mut().unwrap(), b"hello\r").unwrap();
    let out = typed.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("got hello"),
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // The terminal's Ctrl-C reaches the command all the same (passed on by `exec`): it
    // stops a query, not the session. `script` runs its command with `$SHELL -c` (`sh`
    // when unset, as in CI): a shell left waiting in the terminal's foreground would die of
    // the Ctrl-C itself, as it does when any program handles one, so it is replaced.
    let mut on_tty = on_a_terminal(
        &p,
        &format!(
            "exec {BIN} exec Db -- sh -c 'trap \"echo GOT-INT; exit 0\" INT; echo WAITING; \
             while true; do sleep 0.1; done'"
        ),
    );
    let mut out = BufReader::new(on_tty.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("WAITING") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no WAITING");
    }
    std::io::Write::write_all(on_tty.stdin.as_mut().unwrap(), b"\x03").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("GOT-INT"), "{rest}");
    assert!(on_tty.wait().unwrap().success());
    // A signal `exec` was started ignoring stays ignored, as a shell's commands leave it:
    // SIGHUP under `nohup` (on a terminal, where a SIGHUP ends the relay otherwise), and
    // SIGINT for a command run with `&` by a shell without job control (not passed on).
    let mut nohup = on_a_terminal(
        &p,
        &format!(
            "trap '' HUP; {BIN} exec Db -- sh -c 'echo EXEC=$PPID; sleep 3; echo survived'; \
             echo rc=$?"
        ),
    );
    let rest = signalled_exec(nohup.stdout.take().unwrap(), libc::SIGHUP);
    drop(nohup.stdin.take());
    let _ = nohup.wait();
    assert!(rest.contains("survived") && rest.contains("rc=0"), "{rest}");
    let mut no_tty = Command::new("sh")
        .args([
            "-c",
            &format!(
                "trap '' INT; exec {BIN} exec Db -- sh -c 'echo EXEC=$PPID; sleep 3; echo survived'"
            ),
        ])
        .current_dir(&p.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rest = signalled_exec(no_tty.stdout.take().unwrap(), libc::SIGINT);
    assert!(rest.contains("survived"), "{rest}");
    assert!(no_tty.wait().unwrap().success());
    down(&p);
}

/// Read `out` up to the `EXEC=pid` line a command run by `exec` says, send `sig` to that
/// `exec`, and return the rest of what is said.
fn signalled_exec(out: impl std::io::Read, sig: libc::c_int) -> String {
    let mut out = BufReader::new(out);
    let mut line = String::new();
    let exec: i32 = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no EXEC line");
        if let Some(pid) = line.trim().strip_prefix("EXEC=") {
            break pid.parse().unwrap();
        }
    };
    // SAFETY: a signal to the `exec` this test started.
    unsafe { libc::kill(exec, sig) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    rest
}

/// A command looked for on a PATH with a directory the service's user may not search (root's
/// `~/.cargo/bin`, in CI) fails "Permission denied" rather than "not found": said so, with
/// the PATH and what to do.
#[test]
fn exec_as_another_user_says_why_a_command_on_path_cannot_run() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return; // only root can start a service as another user
    }
    let dir = std::env::temp_dir().join(format!("hs-private-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let p = Project::new(
        "execpath",
        &format!(
            "[services.Db]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\n\
             ready = {{ line_contains = \"READY\" }}\nuser = \"nobody\"\n\
             env = {{ PATH = \"{}:/usr/bin:/bin\" }}\n",
            dir.display()
        ),
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let o = p.run(&["exec", "Db", "--", "no-such-program-hs"]);
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(
        text(&o).contains("give its whole path") && text(&o).contains(&dir.display().to_string()),
        "{}",
        text(&o)
    );
    down(&p);
}

/// What `line` says on a terminal of its own (see `on_a_terminal`), once it has ended. Its
/// input is held open until then: at the end of its input, `script` types an end-of-file
/// character, which would reach the command.
fn said_on_a_terminal(p: &Project, line: &str) -> String {
    let mut child = on_a_terminal(p, line);
    let input = child.stdin.take();
    let mut said = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut said).unwrap();
    drop(input);
    let _ = child.wait();
    said
}

/// `line` run by a shell on a terminal of its own (a pty from `script`), in the project;
/// its input, output and errors piped.
fn on_a_terminal(p: &Project, line: &str) -> std::process::Child {
    Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .current_dir(&p.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_mariadb_kind_makes_its_users_and_databases() {
    let p = Project::new(
        "mariadb",
        "[bundle]\nstartup_timeout = \"60s\"\n\n[services.Db]\nkind = \"mariadb\"\n\
         users = [{ name = \"app\", password = \"pw\" }]\n\
         databases = [{ name = \"shop\", owner = \"app\" }]\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // Over TCP as the app user (the service's environment has the port), in its database.
    let sql = p.run(&[
        "exec",
        "Db",
        "--",
        "sh",
        "-c",
        "MYSQL_PWD=pw mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -u app -D shop -B -N \
         -e 'CREATE TABLE t (x int); INSERT INTO t VALUES (42); SELECT x FROM t'",
    ]);
    assert!(sql.status.success(), "{}", text(&sql));
    assert_eq!(String::from_utf8_lossy(&sql.stdout).trim(), "42");
    down(&p);
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

/// Wait until an `up` started in the background holds the project's lock (it takes it first
/// thing: from then on the other commands see a bundle starting). Looked at every
/// millisecond: nothing tells of a lock taken.
fn wait_locked(p: &Project) {
    let lock = p.0.join(".hitchserve/up.lock");
    let held = || {
        std::fs::File::open(&lock).is_ok_and(|f| {
            use std::os::fd::AsRawFd;
            // SAFETY: a shared, non-blocking try on a descriptor we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !held() {
        assert!(
            std::time::Instant::now() < deadline,
            "up never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// `down` and `status` while an `up --detach` (`up --detach &` in a script) has only just
/// begun: from the moment the project's lock is held — by the `up` the script started, not
/// only once its background bundle has started and taken it — `status` sees a bundle
/// starting and `down` stops that startup at once, exit 0. (Before: `down` said nothing
/// ran and the bundle started anyway, or waited for a readiness that never came and then
/// said "the bundle stopped before it was ready", exit 1.)
#[test]
fn down_right_after_a_detached_up_began_stops_its_startup() {
    let p = Project::new(
        "downdetached",
        "[bundle]\nstartup_timeout = \"10m\"\n\n[services.Slow]\ncommand = [\"sh\", \"-c\", \"echo started; exec tail -f /dev/null\"]\nready = { line_contains = \"never\" }\n",
    );
    let up = p
        .cmd(&["up", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_locked(&p);
    let status = output_within(p.cmd(&["status"]), std::time::Duration::from_secs(120));
    assert!(
        status.status.success() && text(&status).contains("Slow"),
        "{}",
        text(&status)
    );
    let down = output_within(p.cmd(&["down"]), std::time::Duration::from_secs(120));
    assert!(down.status.success(), "{}", text(&down));
    let out = up.wait_with_output().unwrap();
    assert!(!out.status.success(), "the startup was not stopped");
    let after = p.run(&["status"]);
    assert!(
        text(&after).contains("no bundle is running"),
        "{}",
        text(&after)
    );
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

/// Whether a file named `started` appeared in the project: its services write it.
fn anything_started(p: &Project) -> bool {
    p.0.join("started").exists()
}

/// A service that says it started (by a file) and is ready at once.
const STARTER: &str = "[services.First]\ncommand = [\"sh\", \"-c\", \"touch started; echo READY; exec tail -f /dev/null\"]\nready = { line_contains = \"READY\" }\n";

#[test]
fn absurd_durations_in_the_file_are_errors_at_their_line_and_column() {
    for value in [
        "inf", "1e300", "", "-5", "+", "+nan", "0s", "1 month", "100000d",
    ] {
        for (toml, place) in [
            (
                format!("[bundle]\nstartup_timeout = \"{value}\"\n"),
                ":2:19",
            ),
            (
                format!("[bundle]\nshutdown_timeout = \"{value}\"\n"),
                ":2:20",
            ),
            (
                format!(
                    "[services.C]\nkind = \"cron\"\ncommand = [\"true\"]\nevery = \"{value}\"\n"
                ),
                ":4:9",
            ),
        ] {
            let p = Project::new("badduration", &format!("{STARTER}\n{toml}"));
            let o = p.run(&["up", "--detach"]);
            let t = text(&o);
            assert!(!o.status.success(), "{toml}: {t}");
            assert!(t.contains(&format!("`{value}`")), "{toml}: {t}");
            // Where, and what would do.
            let line = place.rsplit(':').nth(1).unwrap().parse::<usize>().unwrap()
                + STARTER.lines().count()
                + 1;
            let col = place.rsplit(':').next().unwrap();
            assert!(
                t.contains(&format!("hitchserve.toml:{line}:{col}")),
                "{toml}: {t}"
            );
            assert!(
                t.contains("such as 500ms, 15s")
                    || t.contains("more than 0")
                    || t.contains("at most"),
                "{toml}: {t}"
            );
            assert!(!t.contains("panicked"), "{t}");
            assert!(!anything_started(&p));
        }
    }
}

/// A duration of the wrong TOML type (a boolean, an array, a table, a date) says what a
/// duration is, at its line and column (it said "data did not match any variant of untagged
/// enum DurationValue").
#[test]
fn a_duration_of_the_wrong_type_says_what_a_duration_is() {
    for value in ["true", "[1]", "{ a = 1 }", "1979-05-27T07:32:00Z"] {
        let toml = format!("[bundle]\nstartup_timeout = {value}\n");
        let p = Project::new("durationtype", &format!("{STARTER}\n{toml}"));
        let o = p.run(&["up", "--detach"]);
        let t = text(&o);
        assert!(!o.status.success(), "{toml}: {t}");
        let line = STARTER.lines().count() + 3;
        assert!(
            t.contains(&format!("hitchserve.toml:{line}:19")),
            "{toml}: {t}"
        );
        assert!(
            t.contains("expected a duration: a number and a unit"),
            "{toml}: {t}"
        );
        assert!(!t.contains("untagged"), "{t}");
        assert!(!anything_started(&p));
    }
}

#[test]
fn absurd_durations_on_the_command_line_are_errors_before_asking_the_bundle() {
    // No bundle runs: a bad value must be named, not "no bundle is running" (nor a panic).
    let p = Project::new("badflags", STARTER);
    for value in ["inf", "1e300", "", "-5", "+", "+nan", "0"] {
        let o = p.run(&["logs", "--until", "x", "--timeout", value]);
        let t = text(&o);
        assert!(!o.status.success(), "--timeout {value:?}: {t}");
        assert!(
            t.contains("--timeout") && t.contains(&format!("`{value}`")),
            "{t}"
        );
        assert!(!t.contains("panicked") && !t.contains("no bundle"), "{t}");
    }
    for value in ["inf", "1e300", "", "-5", "+", "+nan", "1 month", "-100000d"] {
        let o = p.run(&["time-travel", value]);
        let t = text(&o);
        assert!(!o.status.success(), "time-travel {value:?}: {t}");
        assert!(
            t.contains(&format!("`{value}`")) && t.contains("goes back"),
            "{t}"
        );
        assert!(!t.contains("panicked") && !t.contains("no bundle"), "{t}");
    }
}

/// Send one raw request line to the bundle's socket; every reply line.
fn raw(p: &Project, request: &str) -> Vec<serde_json::Value> {
    let mut conn =
        std::os::unix::net::UnixStream::connect(p.0.join(".hitchserve/control/control.sock"))
            .unwrap();
    std::io::Write::write_all(&mut conn, format!("{request}\n").as_bytes()).unwrap();
    BufReader::new(conn)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn control_requests_with_absurd_numbers_get_an_error_reply_and_the_bundle_serves_on() {
    let p = Project::new("rawnumbers", STARTER);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let before = raw(&p, r#"{"cmd":"now"}"#)[0]["now"].clone();
    for request in [
        r#"{"cmd":"time_travel","by":-1e300}"#,
        r#"{"cmd":"time_travel","by":1e300}"#,
        r#"{"cmd":"time_travel","by":"soon"}"#,
        r#"{"cmd":"time_travel"}"#,
        r#"{"cmd":"time_travel","by":-1e10}"#,
        r#"{"cmd":"logs","until":"x","timeout":-5}"#,
        r#"{"cmd":"logs","until":"x","timeout":1e300}"#,
        r#"{"cmd":"logs","until":"x","timeout":0}"#,
        r#"{"cmd":"logs","until":"x","timeout":"10s"}"#,
        r#"{"cmd":"logs","n":-1}"#,
        r#"{"cmd":"logs","n":1.5}"#,
        r#"{"cmd":"logs","until_json":"a..b"}"#,
        r#"not json"#,
        r#"[1, 2]"#,
    ] {
        let replies = raw(&p, request);
        let last = replies
            .last()
            .unwrap_or_else(|| panic!("{request}: no reply"));
        assert!(
            last["ok"] == false || last["end"] == "error",
            "{request}: {replies:?}"
        );
        assert!(
            last["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{last}"
        );
    }
    // Nothing moved the clock, and the bundle still answers.
    let after = raw(&p, r#"{"cmd":"now"}"#)[0]["now"].clone();
    assert!(after.as_str().unwrap()[..10] == before.as_str().unwrap()[..10]);
    let status = p.run(&["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let up_log = std::fs::read_to_string(p.0.join(".hitchserve/up.log")).unwrap();
    assert!(!up_log.contains("panicked"), "{up_log}");
    down(&p);
}

/// Run `cmd`; its output, or a failure if it has not ended after a generous while (the
/// bug this guards against waited ten minutes).
fn output_within(mut cmd: Command, patience: std::time::Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(patience) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: killing the child this function started (not yet reaped: its waiter
            // is still blocked).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("still waiting after {patience:?}");
        }
    }
}

#[test]
fn a_removed_control_socket_is_reported_at_once_and_down_still_works() {
    let p = Project::new("sockgone", STARTER);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    let pid: u32 = out
        .split("pid ")
        .nth(1)
        .and_then(|r| r.trim_end_matches([')', '\n']).parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    std::fs::remove_file(p.0.join(".hitchserve/control/control.sock")).unwrap();
    let patience = std::time::Duration::from_secs(60);
    for args in [&["status"][..], &["logs"][..], &["now"][..]] {
        let o = output_within(p.cmd(args), patience);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(
            t.contains("the bundle's socket is gone") && t.contains("hitchserve down"),
            "{t}"
        );
    }
    let down = output_within(p.cmd(&["down"]), patience);
    assert!(down.status.success(), "{}", text(&down));
    assert!(wait_gone(pid), "the bundle survived `down`");
}

#[test]
fn logs_until_starts_now_and_n_looks_back() {
    let p = Project::new(
        "untilnow",
        "[services.Once]\ncommand = [\"sh\", \"-c\", \"echo '{\\\"n\\\": 1}'; echo READY; exec tail -f /dev/null\"]\nready = { line_contains = \"READY\" }\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // The lines came before we asked: not seen from now on...
    for until in [&["--until", "READY"][..], &["--until-json", "n=1"][..]] {
        let args = [&["logs", "Once"][..], until, &["--timeout", "300ms"]].concat();
        let o = p.run(&args);
        assert!(
            !o.status.success() && text(&o).contains("nothing matched"),
            "{args:?}: {}",
            text(&o)
        );
        // ... but among the last 2 lines.
        let args = [&args[..], &["-n", "2"]].concat();
        let o = p.run(&args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    }
    down(&p);
}

#[test]
fn down_with_nothing_running_is_not_an_error() {
    let p = Project::new("downidle", STARTER);
    let o = p.run(&["down"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to stop"), "{}", text(&o));
}

/// `logs NAME --until` on a service that has exited for good ends at once, saying how (it
/// waited out its whole --timeout, as if a restart might come).
#[test]
fn logs_until_ends_when_its_service_has_exited_for_good() {
    let p = Project::new(
        "until-ended",
        "[services.Late]\ncommand = [\"sh\", \"-c\", \"echo READY; read x < die.fifo; echo dying >&2; exit 4\"]\nready = { line_contains = \"READY\" }\n\n[services.Other]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\n",
    );
    mkfifo(&p, "die.fifo");
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    std::fs::write(p.0.join("die.fifo"), "now\n").unwrap();
    // Far longer than the test may take: only its end can end this wait.
    let o = p.run(&["logs", "Late", "--until", "never", "--timeout", "3600s"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("`Late` exited (exit code 4)") && text(&o).contains("dying"),
        "{}",
        text(&o)
    );
    // (`down` says the crash, and exits 1.)
    let o = p.run(&["down"]);
    assert!(
        text(&o).contains("`Late` exited unexpectedly"),
        "{}",
        text(&o)
    );
}

/// A stop by hand, then a start: a `logs --until` waiting meanwhile finds the new start's
/// line (from review: a stop by hand had ended it at once).
#[test]
fn logs_until_waits_through_a_stop_and_a_start_by_hand() {
    let p = Project::new(
        "until-by-hand",
        "[services.Late]\ncommand = [\"sh\", \"-c\", \"if [ -e second ]; then echo SECOND; fi; echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\n",
    );
    assert!(p.run(&["up", "--detach"]).status.success());
    // Also the last lines: on a loaded machine the client may only attach once the new
    // start has said SECOND (there is no event for its having attached).
    let logs = p
        .cmd(&[
            "logs",
            "Late",
            "--until",
            "SECOND",
            "-n",
            "100",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(p.run(&["stop", "Late"]).status.success());
    std::fs::write(p.0.join("second"), "").unwrap();
    assert!(p.run(&["start", "Late"]).status.success());
    let o = logs.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    down(&p);
}

#[test]
fn status_right_after_a_crash_says_crashed() {
    let p = Project::new(
        "crashstatus",
        "[services.App]\ncommand = [\"sh\", \"-c\", \"echo READY; read x < crash.fifo; exit 3\"]\nready = { line_contains = \"READY\" }\n",
    );
    mkfifo(&p, "crash.fifo");
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // Opening blocks until App reads; writing a line makes it exit 3.
    std::fs::write(p.0.join("crash.fifo"), "now\n").unwrap();
    // The bundle says so (on its own lines: no service's handle asked for yet)...
    let said = p.run(&[
        "logs",
        "--until",
        "exited unexpectedly",
        "-n",
        "100",
        "--timeout",
        "60s",
    ]);
    assert!(said.status.success(), "{}", text(&said));
    // ... just before it records the exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let state = loop {
        let st = p.run(&["status", "--json"]);
        assert!(st.status.success(), "{}", text(&st));
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        let state = v["services"][0]["state"].as_str().unwrap().to_owned();
        if state != "ready" || std::time::Instant::now() > deadline {
            break state;
        }
    };
    assert!(
        state.starts_with("crashed") && state.contains("exit code 3"),
        "{state}"
    );
    // Its logs are there at the first ask too.
    let logs = p.run(&["logs", "App"]);
    assert!(
        logs.status.success() && text(&logs).contains("READY"),
        "{}",
        text(&logs)
    );
}

#[test]
fn a_project_too_deep_for_a_socket_path_works() {
    let deep = format!("{}/{}", "d".repeat(60), "e".repeat(60));
    let p = Project::under("deep", &deep, STARTER);
    assert!(
        p.0.join(".hitchserve/control/control.sock")
            .as_os_str()
            .len()
            > 107
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let status = p.run(&["status"]);
    assert!(
        status.status.success() && text(&status).contains("ready"),
        "{}",
        text(&status)
    );
    let logs = p.run(&["logs", "First", "--until", "READY", "-n", "5"]);
    assert!(logs.status.success(), "{}", text(&logs));
    down(&p);
}

#[test]
fn a_control_socket_that_cannot_be_made_fails_before_anything_starts() {
    let p = Project::new("nosocket", STARTER);
    // A directory where the socket goes: it can't be bound there.
    std::fs::create_dir_all(p.0.join(".hitchserve/control/control.sock.starting/busy")).unwrap();
    let o = p.run(&["up", "--detach"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("cannot listen"), "{t}");
    assert!(!anything_started(&p), "a service started first: {t}");
}

#[test]
fn loose_inputs_are_errors_before_anything_starts() {
    for (extra, words) in [
        (
            "[services.App]\ncommand = [\"true\"]\nenv = { \"A=B\" = \"1\" }\n",
            "`A=B` can't be an environment variable's name",
        ),
        (
            "[services.App]\ncommand = [\"true\"]\nenv = { \"\" = \"1\" }\n",
            "can't be an environment variable's name",
        ),
        ("[services.App]\ncommand = [\"tr\\u0000ue\"]\n", "NUL byte"),
        (
            "[services.App]\ncommand = [\"true\"]\nenv = { A = \"x\\u0000\" }\n",
            "NUL byte",
        ),
        (
            "[services.App]\ncommand = [\"true\"]\ndirectory = \"a\\u0000b\"\n",
            "NUL byte",
        ),
        (
            "[services.App]\ncommand = [\"true\"]\nready = { json = \"a..b\" }\n",
            "not a JSON match",
        ),
        (
            "[services.App]\ncommand = [\"true\"]\ndirectory = \"hitchserve.toml\"\n",
            "is a file, not a directory",
        ),
    ] {
        let p = Project::new("loose", &format!("{STARTER}\n{extra}"));
        let o = p.run(&["up", "--detach"]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(words), "{extra}: {t}");
        assert!(!anything_started(&p), "{extra}: a service started first");
    }
    // And on the command line, before asking any bundle.
    let p = Project::new("looseflags", STARTER);
    for expr in ["", "=x", "a..b"] {
        let o = p.run(&["logs", "--until-json", expr]);
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains("not a JSON match"),
            "{expr:?}: {t}"
        );
    }
    refused(&p.run(&["logs", "--until", "("]), "--until");
}

/// A stopped bundle (Ctrl-Z on its `up`, a SIGSTOP) takes requests and never answers: the
/// commands said nothing and waited for ever. They say so at once, or — stopped while a
/// `logs -f` waits — within a moment, and work again once it goes on.
#[test]
fn a_stopped_bundle_is_said_not_waited_for() {
    let p = Project::new(
        "stopped",
        "[services.A]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\n\
         ready = { line_contains = \"READY\" }\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let pid: i32 = std::fs::read_to_string(p.0.join(".hitchserve/up.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    /// Lets the bundle go on however the test ends (its `down` can't stop a stopped one).
    struct GoOn(i32);
    impl Drop for GoOn {
        fn drop(&mut self) {
            // SAFETY: a signal to the test's bundle.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let go_on = GoOn(pid);
    let mut follow = p
        .cmd(&["logs", "-f", "A"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("READY"), "{line}");
    // SAFETY: a signal to the test's bundle.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let followed = follow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&followed.stderr);
    assert!(!followed.status.success(), "{err}");
    assert!(err.contains(&format!("kill -CONT {pid}")), "{err}");
    for cmd in [&["status"][..], &["down"], &["now"]] {
        let o = p.run(cmd);
        assert!(!o.status.success(), "{cmd:?}: {}", text(&o));
        assert!(
            text(&o).contains("the bundle is stopped"),
            "{cmd:?}: {}",
            text(&o)
        );
    }
    drop(go_on);
    let status = p.run(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    down(&p);
    // The lock file keeps the last `up`'s pid: once nobody holds the lock, a stopped process
    // that has that pid now (reused) is no bundle.
    let mut other = Command::new("sleep").arg("1000").spawn().unwrap();
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(other.id() as i32, libc::SIGSTOP) };
    std::fs::write(p.0.join(".hitchserve/up.lock"), other.id().to_string()).unwrap();
    let status = p.run(&["status"]);
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        text(&status).contains("no bundle is running"),
        "{}",
        text(&status)
    );
}

/// `hitchserve down`, which must succeed.
/// A named pipe `name` in the project, for a service and the test to meet at.
fn mkfifo(p: &Project, name: &str) {
    let path = std::ffi::CString::new(p.0.join(name).to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
}

/// Open the fifo `name` of the project for writing and close it: the service reading it
/// sees its end and goes on.
fn open_and_close(p: &Project, name: &str) {
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(p.0.join(name))
            .unwrap(),
    );
}

/// `up` in the foreground, its output piped and read up to a line holding `marker`.
fn up_printed(
    p: &Project,
    marker: &str,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut up = p
        .cmd(&["up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains(marker) {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "up ended");
    }
    (up, out)
}

fn down(p: &Project) {
    let o = p.run(&["down"]);
    assert!(o.status.success(), "down: {}", text(&o));
}

#[test]
fn memcached_and_an_nginx_proxy_from_the_file_answer_on_their_ports() {
    use std::io::{Read, Write};
    let p = Project::new(
        "web-kinds",
        r#"
[bundle]
startup_timeout = "30s"

[services.App]
command = ["python3", "-m", "http.server", "{port.http}", "--bind", "127.0.0.1"]
ports = ["http"]
ready = { tcp = "{port.http}" }

[services.Proxy]
kind = "nginx"
proxy = { service = "App", port = "http" }

[services.Cache]
kind = "memcached"
memory_mb = 8
"#,
    );
    std::fs::write(p.0.join("hello.txt"), "through the proxy\n").unwrap();
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let status = p.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let port = |service: &str, name: &str| -> u16 {
        let s = v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap();
        s["ports"][name].as_u64().unwrap() as u16
    };
    let ask = |port: u16, request: &str| -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    let page = ask(
        port("Proxy", "http"),
        "GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n",
    );
    assert!(page.ends_with("\r\n\r\nthrough the proxy\n"), "{page}");
    let version = ask(port("Cache", "memcached"), "version\r\nquit\r\n");
    assert!(version.starts_with("VERSION 1."), "{version}");
    down(&p);
}

#[test]
fn plain_logs_show_a_prompt_still_waiting_for_its_newline() {
    let p = Project::new(
        "prompt",
        "[services.Login]\ncommand = [\"sh\", \"-c\", \"echo READY; printf 'Password: '; exec tail -f /dev/null\"]\nready = { line_contains = \"READY\" }\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // Once the prompt has been seen by a tail (it shows after a quiet moment)...
    let seen = p.run(&["logs", "Login", "--until", "^Password", "-n", "5"]);
    assert!(seen.status.success(), "{}", text(&seen));
    // ... plain `logs` shows it too, after the whole lines: where the service is stuck.
    let o = p.run(&["logs", "Login"]);
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    let last = shown.lines().last().unwrap_or_default().to_owned();
    assert!(o.status.success() && last.contains("Password:"), "{shown}");
    assert!(shown.contains("READY"), "{shown}");
    down(&p);
}

/// A line that is not UTF-8 (Latin-1, a binary dump) is printed by `logs` exactly as the
/// service wrote it, as all.log has it, not with U+FFFD in place of its bytes.
#[test]
fn logs_print_a_line_that_is_not_utf8_as_its_bytes() {
    let p = Project::new(
        "latin1",
        "[services.Old]\ncommand = [\"sh\", \"-c\", \"printf 'caf\\\\351 cr\\\\r\\\\n'; echo READY; exec tail -f /dev/null\"]\nready = { line_contains = \"READY\" }\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let o = p.run(&["logs", "Old"]);
    assert!(o.status.success(), "{}", text(&o));
    // Its bytes, the `\r` of its `\r\n` left out as for any line; the next line as text.
    let want: &[u8] = b"[Old] caf\xe9 cr\n[Old] READY\n";
    assert!(
        o.stdout.windows(want.len()).any(|w| w == want),
        "{:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    down(&p);
}

/// A web server and a service that needs it, for the one-service commands.
const WEB_AND_DEP: &str = r#"
[bundle]
startup_timeout = "30s"
shutdown_timeout = "10s"

[services.Web]
command = ["python3", "-u", "-m", "http.server", "{port.http}", "--bind", "127.0.0.1"]
ports = ["http"]
ready = { tcp = "{port.http}" }

[services.Dep]
command = ["sh", "-c", "echo READY; exec sleep 100000"]
ready = { line_contains = "READY" }
needs = ["Web"]
"#;

/// One service's entry in `status --json`.
fn status_of(p: &Project, name: &str) -> serde_json::Value {
    let st = p.run(&["status", "--json"]);
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// The marker of the project's current run, from the environment of its service `name`
/// (not `.hitchserve/latest`: the log writer makes that link, in its own time).
fn run_of(p: &Project, name: &str) -> String {
    let pid = status_of(p, name)["pid"].as_u64().unwrap();
    let env = environ_of(pid as u32).expect("its environment");
    env.split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"HITCHSERVE_RUN="))
        .map(|run| String::from_utf8_lossy(run).into_owned())
        .unwrap_or_else(|| panic!("no HITCHSERVE_RUN in the environment of {name}"))
}

/// Every process of the run is gone once `down` has returned.
fn assert_nothing_left(run: &str) {
    for pid in marked(run) {
        assert!(wait_gone(pid), "process {pid} of run {run} outlived `down`");
    }
}

fn is_alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// A request to `port` on localhost, its whole answer (the server closes after one).
fn http_get(port: u64, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// Lines of a running `hitchserve logs -f`, read on a thread: the first that contains
/// `needle` within a generous while, or a failure.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?} from `logs -f`: {e}"),
        }
    }
}

#[test]
fn stop_then_start_gives_a_new_ready_process_while_its_dependent_keeps_running() {
    let p = Project::new("stopstart", WEB_AND_DEP);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Dep");
    let (web, dep) = (status_of(&p, "Web"), status_of(&p, "Dep"));
    let port = web["ports"]["http"].as_u64().unwrap();
    let (web_pid, dep_pid) = (web["pid"].as_u64().unwrap(), dep["pid"].as_u64().unwrap());
    assert_eq!(web["incarnation"], 1);

    // A follower started before the restart sees the new process's lines too.
    let mut follow = p
        .cmd(&["logs", "Web", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, followed) = std::sync::mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // It follows (its request line is shown): from now on nothing is missed.
    loop {
        http_get(port, "/before-stop");
        if followed
            .recv_timeout(std::time::Duration::from_secs(1))
            .is_ok_and(|l| l.contains("/before-stop"))
        {
            break;
        }
    }

    let stopped = p.run(&["stop", "Web"]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    assert!(!is_alive(web_pid), "`stop` returned before Web exited");
    let web = status_of(&p, "Web");
    assert!(
        web["state"].as_str().unwrap().starts_with("stopped") && web["pid"].is_null(),
        "{web}"
    );
    let dep = status_of(&p, "Dep");
    assert_eq!(
        (dep["state"].as_str(), dep["pid"].as_u64()),
        (Some("ready"), Some(dep_pid))
    );
    assert!(is_alive(dep_pid));

    let started = p.run(&["start", "Web"]);
    assert!(started.status.success(), "{}", text(&started));
    assert!(text(&started).contains("Web: ready"), "{}", text(&started));
    let web = status_of(&p, "Web");
    let new_pid = web["pid"].as_u64().unwrap();
    assert_ne!(new_pid, web_pid);
    assert_eq!(
        (web["state"].as_str(), web["incarnation"].as_u64()),
        (Some("ready"), Some(2))
    );
    assert_eq!(web["restarts"], 1);
    // Ready means it answers, on the same port.
    assert_eq!(web["ports"]["http"].as_u64(), Some(port));
    assert!(http_get(port, "/after-restart").starts_with("HTTP/1.0 404"));
    wait_for_line(&followed, "/after-restart");
    assert_eq!(status_of(&p, "Dep")["pid"].as_u64(), Some(dep_pid));
    let table = p.run(&["status"]);
    assert!(
        text(&table).contains("ready, restarts: 1"),
        "{}",
        text(&table)
    );

    // `restart` is both, in one command.
    let restarted = p.run(&["restart", "Web"]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    assert_eq!(status_of(&p, "Web")["incarnation"], 3);

    // Each stop and start is in the bundle's log.
    let logs = text(&p.run(&["logs"]));
    for said in [
        "Stopping Web",
        "Stopped Web",
        "Starting Web (incarnation 2)",
    ] {
        assert!(logs.contains(said), "{said:?} not in:\n{logs}");
    }
    down(&p);
    assert!(follow.wait().unwrap().success());
    assert_nothing_left(&run);
}

#[test]
fn pause_makes_a_client_time_out_and_resume_lets_it_answer() {
    use std::io::{Read, Write};
    let p = Project::new("pause", WEB_AND_DEP);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Web");
    let port = status_of(&p, "Web")["ports"]["http"].as_u64().unwrap();

    let paused = p.run(&["pause", "Web"]);
    assert!(paused.status.success(), "{}", text(&paused));
    assert_eq!(status_of(&p, "Web")["state"], "paused");
    // The kernel still accepts the connection; nobody answers.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    write!(conn, "GET /while-paused HTTP/1.0\r\n\r\n").unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut first = [0u8; 1];
    let err = conn.read(&mut first).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );

    let resumed = p.run(&["resume", "Web"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(status_of(&p, "Web")["state"], "ready");
    // The same request, waiting since, is answered now.
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 404"), "{answer}");

    // Paused, then brought down: `down` resumes it to stop it.
    assert!(p.run(&["pause", "Web"]).status.success());
    down(&p);
    assert_nothing_left(&run);
}

#[test]
fn kill_after_ready_shows_as_a_crash_in_status_and_makes_down_exit_non_zero() {
    let p = Project::new("killcrash", WEB_AND_DEP);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Web");
    let dep_pid = status_of(&p, "Dep")["pid"].as_u64().unwrap();

    // SIGKILL by default; `kill` returns once the process has exited.
    let killed = p.run(&["kill", "Web"]);
    assert!(killed.status.success(), "{}", text(&killed));
    let web = status_of(&p, "Web");
    assert_eq!(web["state"], "crashed (signal 9 (SIGKILL))", "{web}");
    assert!(web["pid"].is_null());
    assert!(is_alive(dep_pid), "Dep is not stopped because Web crashed");

    // What a crash means is what the library says of it: `down` stops everything, then
    // reports the crash it had not reported yet.
    let o = p.run(&["down"]);
    assert!(!o.status.success(), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("the bundle stopped") && said.contains("`Web` exited unexpectedly"),
        "{said}"
    );
    assert!(!up_running(&p), "down returned before the bundle stopped");
    assert_nothing_left(&run);
}

fn up_running(p: &Project) -> bool {
    let st = p.run(&["status"]);
    !text(&st).contains("no bundle is running")
}

#[test]
fn a_restart_policy_from_the_file_restarts_a_crashing_service_n_times_then_reports_it() {
    // The first process crashes when the test says so, each one after it at once.
    let p = Project::new(
        "policy",
        r#"
[bundle]
startup_timeout = "30s"

[services.Worker]
command = ["sh", "-c", "n=$(( $(cat starts 2>/dev/null || echo 0) + 1 )); echo $n > starts; echo READY $n; if [ $n = 1 ]; then read x < crash.fifo; fi; exit 3"]
ready = { line_contains = "READY" }
restart = "on-failure"
max_restarts = 2
restart_backoff = "50ms"

[services.Other]
command = ["sh", "-c", "echo READY; exec sleep 100000"]
ready = { line_contains = "READY" }
"#,
    );
    mkfifo(&p, "crash.fifo");
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Other");
    assert_eq!(status_of(&p, "Worker")["state"], "ready");
    // Opening blocks until Worker reads; the line makes it exit 3.
    std::fs::write(p.0.join("crash.fifo"), "now\n").unwrap();
    let gave_up = p.run(&[
        "logs",
        "--until",
        "giving up",
        "-n",
        "1000",
        "--timeout",
        "60s",
    ]);
    assert!(gave_up.status.success(), "{}", text(&gave_up));
    assert!(
        text(&gave_up).contains("was restarted 2 times"),
        "{}",
        text(&gave_up)
    );
    let logs = text(&p.run(&["logs"]));
    for said in [
        "restart 1 in",
        "restart 2 in",
        "Starting Worker (incarnation 3)",
    ] {
        assert!(logs.contains(said), "{said:?} not in:\n{logs}");
    }
    assert!(!logs.contains("incarnation 4"), "{logs}");
    // The give-up is logged just before the exit is recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let worker = loop {
        let worker = status_of(&p, "Worker");
        if worker["state"] != "restarting" || std::time::Instant::now() > deadline {
            break worker;
        }
    };
    assert_eq!(worker["state"], "crashed (exit code 3)", "{worker}");
    assert_eq!(worker["incarnation"], 3);
    assert_eq!(
        std::fs::read_to_string(p.0.join("starts")).unwrap().trim(),
        "3"
    );
    assert_eq!(status_of(&p, "Other")["state"], "ready");

    let o = p.run(&["down"]);
    assert!(
        !o.status.success() && text(&o).contains("`Worker` exited unexpectedly"),
        "{}",
        text(&o)
    );
    assert_nothing_left(&run);
}

#[test]
fn one_service_commands_given_a_mistake_fail_clearly_and_at_once() {
    let p = Project::new("onemistakes", WEB_AND_DEP);
    let patience = std::time::Duration::from_secs(60);
    // Nothing running: told so, never a wait.
    for args in [
        &["stop", "Web"][..],
        &["start", "Web"],
        &["restart", "Web", "--setup"],
        &["pause", "Web"],
        &["resume", "Web"],
        &["kill", "Web"],
    ] {
        let o = output_within(p.cmd(args), patience);
        assert!(
            !o.status.success() && text(&o).contains("no bundle is running"),
            "{args:?}: {}",
            text(&o)
        );
    }
    // A bad signal is told before asking any bundle.
    let o = output_within(p.cmd(&["kill", "Web", "--signal", "SIGFOO"]), patience);
    assert!(!o.status.success() && text(&o).contains("unknown signal `SIGFOO`"));

    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Dep");
    for verb in ["stop", "start", "restart", "pause", "resume", "kill"] {
        let o = output_within(p.cmd(&[verb, "Nope"]), patience);
        assert!(
            !o.status.success() && text(&o).contains("no service `Nope`"),
            "{verb}: {}",
            text(&o)
        );
    }
    // A stopped service can't be paused, resumed, killed or signalled: says so and how to
    // start it again; stopping it again is nothing to do.
    assert!(p.run(&["stop", "Web"]).status.success());
    for args in [
        &["pause", "Web"][..],
        &["resume", "Web"],
        &["kill", "Web"],
        &["signal", "Web", "HUP"],
    ] {
        let o = output_within(p.cmd(args), patience);
        assert!(
            !o.status.success()
                && text(&o).contains("service `Web` is not running")
                && text(&o).contains("hitchserve start Web"),
            "{args:?}: {}",
            text(&o)
        );
    }
    let again = p.run(&["stop", "Web"]);
    assert!(again.status.success(), "{}", text(&again));
    // A stopped service is no crash: `down` exits 0.
    down(&p);
    assert_nothing_left(&run);
}

/// A service run from a copy of `sleep` in the project, which a test can remove so that
/// its next start fails (the OS refuses to spawn it), with the restart policy `policy`.
fn removable_program(tag: &str, policy: &str) -> Project {
    let p = Project::new(
        tag,
        &format!(
            r#"
[bundle]
startup_timeout = "30s"

[services.App]
command = ["./prog", "100000"]
{policy}

[services.Other]
command = ["sh", "-c", "echo READY; exec sleep 100000"]
ready = {{ line_contains = "READY" }}
"#
        ),
    );
    std::fs::copy("/bin/sleep", p.0.join("prog")).unwrap();
    p
}

#[test]
fn a_service_whose_start_failed_is_not_shown_as_restarting() {
    let p = removable_program("startfailed", "restart = \"on-failure\"\nmax_restarts = 2");
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Other");
    assert!(p.run(&["stop", "App"]).status.success());
    std::fs::remove_file(p.0.join("prog")).unwrap();
    let o = output_within(p.cmd(&["start", "App"]), std::time::Duration::from_secs(60));
    assert!(
        !o.status.success() && text(&o).contains("could not be started"),
        "{}",
        text(&o)
    );
    // Nothing is going to start it again: its policy restarts exits, not a start by
    // hand that the OS refused. `restarting` would have a test wait for nothing.
    let app = status_of(&p, "App");
    assert_ne!(app["state"], "restarting", "{app}");
    let table = text(&p.run(&["status"]));
    assert!(!table.contains("restarting"), "{table}");
    down(&p);
    assert_nothing_left(&run);
}

#[test]
fn a_policy_restart_the_os_refuses_is_reported_not_left_restarting() {
    let p = removable_program(
        "respawnfailed",
        "restart = \"on-failure\"\nmax_restarts = 2\nrestart_backoff = \"50ms\"",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "Other");
    std::fs::remove_file(p.0.join("prog")).unwrap();
    let killed = p.run(&["kill", "App"]);
    assert!(killed.status.success(), "{}", text(&killed));
    // The policy's start (after 50 ms) fails at once; wait, generously, for the state
    // to say so: "crashed". (Not merely "not restarting": between the policy's timer and
    // its failed spawn the service is briefly "not running", and a `down` then stopped it
    // before the failure was known — seen once under load.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let app = loop {
        let app = status_of(&p, "App");
        let crashed = app["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("crashed"));
        if crashed || std::time::Instant::now() > deadline {
            break app;
        }
    };
    assert!(
        app["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("crashed")),
        "{app}"
    );
    // The service is gone for good: that is a crash nobody reported yet.
    let o = p.run(&["down"]);
    assert!(
        !o.status.success() && text(&o).contains("App"),
        "`down` exited 0 though App was lost: {}",
        text(&o)
    );
    assert_nothing_left(&run);
}

#[test]
fn logs_until_on_a_stopped_service_waits_for_its_next_start() {
    let p = Project::new(
        "untilstopped",
        r#"
[bundle]
startup_timeout = "30s"

[services.App]
command = ["sh", "-c", "echo READY; while true; do echo tick; sleep 0.1; done"]
ready = { line_contains = "READY" }
"#,
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let run = run_of(&p, "App");
    assert!(p.run(&["stop", "App"]).status.success());
    // As `logs App -f` does, a wait for App's next line goes on while it is stopped: the
    // line comes once it is started again (its ticks, whenever the wait began).
    let waiting = p
        .cmd(&["logs", "App", "--until", "tick", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = p.run(&["start", "App"]);
    assert!(started.status.success(), "{}", text(&started));
    let o = waiting.wait_with_output().unwrap();
    assert!(
        o.status.success() && text(&o).contains("tick"),
        "{}",
        text(&o)
    );
    down(&p);
    assert_nothing_left(&run);
}

/// Another user could have planted links in the project's `.hitchserve`: `up` refuses, and
/// nothing is made or changed through them.
#[test]
fn up_never_follows_a_link_planted_in_the_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let victim = std::env::temp_dir().join(format!("hitchserve-cli-victim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&victim);
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Project::new("planted", STARTER);
    std::os::unix::fs::symlink(&victim, p.0.join(".hitchserve")).unwrap();
    let o = p.run(&["up", "--detach"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("symbolic link"), "{}", text(&o));
    let q = Project::new("planted-control", STARTER);
    std::fs::create_dir(q.0.join(".hitchserve")).unwrap();
    std::os::unix::fs::symlink(&victim, q.0.join(".hitchserve/control")).unwrap();
    let o = q.run(&["up", "--detach"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("not a directory of yours"),
        "{}",
        text(&o)
    );
    // A link planted as `up.lock`: said as a link, never followed.
    let r = Project::new("planted-lock", STARTER);
    std::fs::create_dir(r.0.join(".hitchserve")).unwrap();
    std::os::unix::fs::symlink(victim.join("lock"), r.0.join(".hitchserve/up.lock")).unwrap();
    let o = r.run(&["up"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is a symbolic link"), "{}", text(&o));
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o755,
        "chmod through a link"
    );
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "made through a link"
    );
    std::fs::remove_dir_all(&victim).unwrap();
}

/// `hitchserve up | head -1`: once the reader has gone, the bundle runs on without printing,
/// and says nothing about it (it printed a panic and a backtrace).
#[test]
fn up_into_a_pipe_that_closes_runs_on_quietly() {
    let p = Project::new(
        "closedpipe",
        "[services.Chatty]\ncommand = [\"sh\", \"-c\", \"echo READY; i=0; while true; do i=$((i+1)); echo line $i; sleep 0.01; done\"]\nready = { line_contains = \"READY\" }\n",
    );
    let (up, out) = up_printed(&p, "line 1");
    drop(out);
    // Lines written after the reader went: `up` tried to print them.
    let seen = p.run(&["logs", "Chatty", "--until", "line 100", "--timeout", "60s"]);
    assert!(seen.status.success(), "{}", text(&seen));
    down(&p);
    let o = up.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// `down` after two services crashed says both (shutdown reports one crash, the first not
/// reported before), also when a time travel reported one (saying its jump was made).
#[test]
fn down_says_every_service_that_crashed() {
    let p = Project::new(
        "twocrashes",
        "[services.A]\ncommand = [\"sh\", \"-c\", \"echo READY; read x < A.fifo; exit 3\"]\nready = { line_contains = \"READY\" }\n\n[services.B]\ncommand = [\"sh\", \"-c\", \"echo READY; read x < B.fifo; exit 4\"]\nready = { line_contains = \"READY\" }\n",
    );
    mkfifo(&p, "A.fifo");
    mkfifo(&p, "B.fifo");
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    for service in ["A", "B"] {
        // Opened and closed: the service reads the end and exits.
        open_and_close(&p, &format!("{service}.fifo"));
        let crashed = p.run(&[
            "logs",
            "--until",
            &format!("`{service}` exited unexpectedly"),
            "-n",
            "100",
            "--timeout",
            "60s",
        ]);
        assert!(crashed.status.success(), "{}", text(&crashed));
    }
    // A time travel reports a crash after its jump: it says the jump was made.
    let travel = p.run(&["time-travel", "+1d"]);
    assert!(!travel.status.success(), "{}", text(&travel));
    assert!(
        text(&travel).contains("the time travel was made")
            && text(&travel).contains("exited unexpectedly"),
        "{}",
        text(&travel)
    );
    let down = p.run(&["down"]);
    assert!(!down.status.success(), "{}", text(&down));
    let said = text(&down);
    assert!(
        said.contains("exit code 3") && said.contains("exit code 4"),
        "{said}"
    );
}

/// `up` printing into a pipe nobody reads any more (`up | less` left paused): the services
/// go on (their lines are stored, not printed), `down` works, and once the pipe is read
/// again a line says how many lines were not printed. Also with a line far longer than a
/// pipe holds (it was written whole, and blocked), and with two services writing lines of
/// about a page at once (two readers told of one free page both wrote; the second blocked).
#[test]
fn up_into_a_pipe_nobody_reads_never_stops_its_services() {
    // Each waits for its fifo, opened once nobody reads stdout any more.
    let page_lines = |c: char| {
        format!(
            "echo READY; cat {c}.fifo; yes $(head -c 4000 /dev/zero | tr '\\\\0' {c}) | head -n 3000; echo PAGES DONE; exec sleep 1000"
        )
    };
    let toml = format!(
        "[services.Chatty]\ncommand = [\"sh\", \"-c\", \"echo READY; cat c.fifo; i=0; while [ $i -lt 150000 ]; do i=$((i+1)); echo line $i of a service that writes a lot, lots and lots of it; done; exec sleep 1000\"]\nready = {{ line_contains = \"READY\" }}\n\
         \n[services.Big]\ncommand = [\"sh\", \"-c\", \"echo READY; cat x.fifo; head -c 300000 /dev/zero | tr '\\\\0' x; echo; echo BIG DONE; exec sleep 1000\"]\nready = {{ line_contains = \"READY\" }}\n\
         \n[services.Pages1]\ncommand = [\"sh\", \"-c\", \"{}\"]\nready = {{ line_contains = \"READY\" }}\n\
         \n[services.Pages2]\ncommand = [\"sh\", \"-c\", \"{}\"]\nready = {{ line_contains = \"READY\" }}\n",
        page_lines('a'),
        page_lines('b'),
    );
    let p = Project::new("stalledpipe", &toml);
    for fifo in ["a.fifo", "b.fifo", "c.fifo", "x.fifo"] {
        mkfifo(&p, fifo);
    }
    // Opened and closed: the service waiting for it goes on.
    let go = |fifo: &str| open_and_close(&p, fifo);
    let (mut up, out) = up_printed(&p, "READY");
    // Not read from now on. A line far longer than the pipe holds, while it has room: it
    // was written whole, and blocked for good. (Looked for among every line: `--until`
    // alone looks only at lines to come.)
    let until = |service: &str, last: &str| {
        let seen = p.run(&[
            "logs",
            service,
            "--until",
            last,
            "-n",
            "1000000",
            "--timeout",
            "120s",
        ]);
        assert!(seen.status.success(), "{service}: {}", text(&seen));
    };
    go("x.fifo");
    until("Big", "^BIG DONE$");
    // Lines of about a page from two services at once, and far more than the pipe holds.
    go("a.fifo");
    go("b.fifo");
    go("c.fifo");
    until("Pages1", "^PAGES DONE$");
    until("Pages2", "^PAGES DONE$");
    until("Chatty", "^line 150000 ");
    // Read again: the next line printed (a time travel's) comes after a note of what was
    // not printed.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let travel = p.run(&["time-travel", "+1h"]);
    assert!(travel.status.success(), "{}", text(&travel));
    let noted = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(line) if line.contains("not printed while stdout was not being read") => break line,
            Ok(_) => {}
            Err(e) => panic!("no note of the lines not printed: {e}"),
        }
    };
    assert!(noted.contains("lines were not printed"), "{noted}");
    let down = p.cmd(&["down"]).output().unwrap();
    assert!(down.status.success(), "{}", text(&down));
    drop(rx);
    let _ = up.wait();
    let _ = reader.join();
}

/// While a bundle starts, `status`, `logs` and `now` answer at once (they waited for the
/// whole startup): which service is starting, which has not started, what each wrote.
#[test]
fn status_and_logs_answer_while_the_bundle_is_still_starting() {
    let p = Project::new(
        "whilestarting",
        "[bundle]\nstartup_timeout = \"5m\"\n\n[services.Gate]\ncommand = [\"sh\", \"-c\", \"echo waiting for go; echo x > booted.fifo; read x < go.fifo; echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\n\n[services.After]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nneeds = [\"Gate\"]\n",
    );
    mkfifo(&p, "booted.fifo");
    mkfifo(&p, "go.fifo");
    let mut up = p
        .cmd(&["up", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Reading blocks until Gate, started, writes: it then waits for `go`.
    std::fs::read_to_string(p.0.join("booted.fifo")).unwrap();
    let seen = p.run(&[
        "logs",
        "Gate",
        "--until",
        "waiting for go",
        "-n",
        "5",
        "--timeout",
        "60s",
    ]);
    assert!(seen.status.success(), "{}", text(&seen));
    let o = p.run(&["status"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("still starting"), "{out}");
    assert!(!state_of(&out, "Gate").contains("ready"), "{out}");
    assert!(state_of(&out, "After").contains("not started"), "{out}");
    let json = p.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["starting"], true, "{v}");
    let now = p.run(&["now"]);
    assert!(now.status.success(), "{}", text(&now));
    // Opening blocks until Gate reads: then it says READY, and the startup ends.
    std::fs::write(p.0.join("go.fifo"), "go\n").unwrap();
    assert!(up.wait().unwrap().success());
    let o = p.run(&["status"]);
    let out = text(&o);
    assert!(!out.contains("still starting"), "{out}");
    assert!(state_of(&out, "After").contains("ready"), "{out}");
    down(&p);
}

fn state_of(table: &str, name: &str) -> String {
    table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_owned()
}

/// `up --detach` says a failed startup on stderr only (a one-shot's failure warning went to
/// stdout, where a script reads what `up` answers).
#[test]
fn a_detached_up_says_a_failed_one_shot_on_stderr_only() {
    let p = Project::new(
        "oneshotfail",
        "[services.Migrate]\ncommand = [\"sh\", \"-c\", \"echo migrating; exit 2\"]\n\n[services.App]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nneeds_completed = [\"Migrate\"]\n",
    );
    let o = p.run(&["up", "--detach"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "stdout");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`Migrate` failed"),
        "{}",
        text(&o)
    );
}

/// `hitchserve port SERVICE [NAME]` prints a reserved port, for a script
/// (`PORT=$(hitchserve port App http)`); a service with one port needs no name.
#[test]
fn port_prints_a_services_reserved_port() {
    let p = Project::new(
        "portcmd",
        "[services.App]\ncommand = [\"sh\", \"-c\", \"echo READY $HTTP; exec sleep 1000\"]\nports = [\"http\", \"admin\"]\nenv = { HTTP = \"{port.http}\" }\nready = { line_contains = \"READY\" }\n\n[services.Cache]\nkind = \"redis\"\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let o = p.run(&["port", "App", "http"]);
    assert!(o.status.success(), "{}", text(&o));
    let port = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let said = p.run(&[
        "logs",
        "App",
        "--until",
        &format!("READY {port}"),
        "-n",
        "5",
    ]);
    assert!(said.status.success(), "port {port}: {}", text(&said));
    let o = p.run(&["port", "Cache"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse::<u16>()
        .is_ok());
    let o = p.run(&["port", "App"]);
    assert!(
        !o.status.success() && text(&o).contains("several ports: name one"),
        "{}",
        text(&o)
    );
    let o = p.run(&["port", "App", "nope"]);
    assert!(
        !o.status.success() && text(&o).contains("has no port `nope`"),
        "{}",
        text(&o)
    );
    down(&p);
}

/// A `control/` directory another user's run left (a `sudo` run in a checkout, then its
/// owner; or the reverse), empty once that run ended, is replaced by ours: `up` was refused.
#[test]
fn up_replaces_an_empty_control_directory_another_users_run_left() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can make a directory another user's");
        return;
    }
    let p = Project::new("othercontrol", STARTER);
    std::fs::create_dir_all(p.0.join(".hitchserve/control")).unwrap();
    std::os::unix::fs::chown(p.0.join(".hitchserve/control"), Some(65534), Some(65534)).unwrap();
    let o = p.run(&["up", "--detach"]);
    assert!(o.status.success(), "{}", text(&o));
    down(&p);
}

/// A bundle another user started here (root's `up` in a user's project) can't be reached
/// by this user: `status` and `down` say so and fail — `down` said "nothing to stop", exit
/// 0, and the whole bundle ran on.
#[test]
fn a_bundle_another_user_started_is_said_not_taken_for_none() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can act as another user");
        return;
    }
    let p = Project::new("otheruser", STARTER);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // The command where that user can run it (the build's directory may be closed to it).
    let bin = p.0.join("hitchserve-copy");
    std::fs::copy(BIN, &bin).unwrap();
    for verb in ["status", "down"] {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg(verb)
            .current_dir(&p.0)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!o.status.success(), "{verb}: {}", text(&o));
        assert!(
            text(&o).contains("started by uid 0")
                && text(&o).contains("run this command as that user"),
            "{verb}: {}",
            text(&o)
        );
    }
    // Still running: its own user stops it.
    down(&p);
}

/// `exec`'s command ends with `exec` itself: a SIGTERM to the `exec` process alone (a test
/// runner's timeout, say) does not leave it running until `down`.
#[test]
fn a_killed_exec_takes_its_command_with_it() {
    let p = Project::new("execkilled", DAYS);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // The command says its pid on exec's stdout, then runs on: that line is the event.
    let mut exec = p
        .cmd(&[
            "exec",
            "Clock",
            "--",
            "sh",
            "-c",
            "echo $$; exec sleep 1000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(exec.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u32 = line.trim().parse().expect("the command's pid");
    // SAFETY: signalling the `exec` process this test started.
    unsafe {
        libc::kill(exec.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = exec.wait();
    assert!(wait_gone(pid), "the command outlived its exec");
    down(&p);
}

/// `logs` options that can't work together are a usage error (exit 2) — they were taken
/// silently: `--json --until` matched a line it then hid (printing nothing, exit 0),
/// `--until` with `--until-json` dropped one, `-f` with `--until` was ignored, and
/// `--timeout` alone meant nothing.
#[test]
fn logs_options_that_cannot_work_together_are_a_usage_error() {
    let p = Project::new("logsconflicts", DAYS);
    for args in [
        &["logs", "Clock", "--json", "--until", "x"][..],
        &["logs", "Clock", "--until", "x", "--until-json", "a=1"],
        &["logs", "Clock", "-f", "--until", "x"],
        &["logs", "Clock", "-f", "--until-json", "a"],
        &["logs", "Clock", "--timeout", "1s"],
    ] {
        let o = p.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
}

/// `up --shared` and `attach` say a broken file's line and column, as `up` does (they said
/// the TOML parser's words alone).
#[test]
fn shared_commands_place_a_broken_file_s_error() {
    let p = Project::new(
        "sharedbroken",
        "[services.A\ncommand = [\"sleep\", \"100\"]\n",
    );
    for args in [&["up", "--shared"][..], &["attach"]] {
        let o = p.run(args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(t.contains("hitchserve.toml:1:"), "{args:?}: {t}");
    }
}

/// A one-shot (what another service `needs_completed`) shows as running while it runs, and
/// as completed once it has exited 0 (it showed "ready", then "stopped (exit code 0)").
#[test]
fn status_shows_a_one_shot_as_running_then_completed() {
    let p = Project::new(
        "oneshotstatus",
        "[services.Migrate]\ncommand = [\"sh\", \"-c\", \"echo migrating; until [ -e done ]; do sleep 0.02; done; echo migrated\"]\n\n[services.App]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nneeds_completed = [\"Migrate\"]\n",
    );
    let mut up = p
        .cmd(&["up", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_locked(&p);
    let seen = p.run(&[
        "logs",
        "Migrate",
        "--until",
        "migrating",
        "-n",
        "10",
        "--timeout",
        "60s",
    ]);
    assert!(seen.status.success(), "{}", text(&seen));
    let status: serde_json::Value =
        serde_json::from_slice(&p.run(&["status", "--json"]).stdout).unwrap();
    let state = |v: &serde_json::Value, name: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["state"].as_str().unwrap_or("").to_owned())
            .unwrap()
    };
    assert_eq!(state(&status, "Migrate"), "running", "{status}");
    std::fs::write(p.0.join("done"), "").unwrap();
    assert!(up.wait().unwrap().success());
    let status: serde_json::Value =
        serde_json::from_slice(&p.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(state(&status, "Migrate"), "completed", "{status}");
    assert_eq!(state(&status, "App"), "ready", "{status}");
    down(&p);
}

/// A service that exits 0 before it is ready (gone to the background, or a job that ends):
/// the advice says what to write in the bundle file, not the Rust API.
#[test]
fn up_of_a_service_that_exits_0_before_ready_says_what_to_write() {
    let p = Project::new(
        "exits0",
        "[services.Migrate]\ncommand = [\"true\"]\nready = { line_contains = \"READY\" }\n",
    );
    let up = p.run(&["up", "--detach"]);
    assert!(!up.status.success(), "{}", text(&up));
    let said = text(&up);
    assert!(
        said.contains("daemonized") && said.contains("`needs_completed`"),
        "{said}"
    );
    assert!(!said.contains("::"), "{said}");
}

/// `up` where there is no bundle file (the wrong directory) says so and leaves nothing
/// behind: it made `.hitchserve` there first.
#[test]
fn up_without_a_bundle_file_leaves_nothing_behind() {
    let p = Project::new("nofile", STARTER);
    std::fs::remove_file(p.0.join("hitchserve.toml")).unwrap();
    for args in [&["up"][..], &["up", "--detach"]] {
        let o = p.run(args);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("there is no such file"), "{}", text(&o));
        assert!(
            !p.0.join(".hitchserve").exists(),
            "{args:?} made .hitchserve"
        );
    }
}

/// Output that can't be written (a full disk) is an error said on stderr, exit 1: it was a
/// panic's exit 101 with nothing said.
#[test]
fn output_that_cannot_be_written_is_said() {
    let p = Project::new("devfull", STARTER);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = p.cmd(&["now"]).stdout(full).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot write its output"),
        "{}",
        text(&o)
    );
    down(&p);
}

/// A service with a `user`, started by someone who is not root: said before anything runs,
/// in the file's terms (it failed giving the run directory to that user).
#[test]
fn a_user_needs_root_and_says_so() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can act as another user");
        return;
    }
    let p = Project::new(
        "usernotroot",
        "[services.W]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nuser = \"daemon\"\n",
    );
    let bin = p.0.join("hitchserve-copy");
    std::fs::copy(BIN, &bin).unwrap();
    std::os::unix::fs::chown(&p.0, Some(65534), Some(65534)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["up", "--detach"])
        .current_dir(&p.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("only root can start a process as another user")
            && text(&o).contains("remove its `user`")
            && !text(&o).contains("::")
            && !text(&o).contains("(..)"),
        "{}",
        text(&o)
    );
}

/// A mistyped template is an error saying what was meant (the service got it literally: a
/// database URL with `{Db.prot.pg}` in it).
#[test]
fn a_mistyped_template_says_what_was_meant() {
    let p = Project::new(
        "typo",
        "[services.Db]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nports = [\"pg\"]\n\n[services.App]\ncommand = [\"sh\", \"-c\", \"echo READY; exec sleep 1000\"]\nready = { line_contains = \"READY\" }\nenv = { DATABASE_URL = \"postgresql://app@127.0.0.1:{Db.prot.pg}/app\" }\nneeds = [\"Db\"]\n",
    );
    let o = p.run(&["up", "--detach"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("service `App`") && text(&o).contains("did you mean `{Db.port.pg}`"),
        "{}",
        text(&o)
    );
}
