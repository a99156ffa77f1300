//! setup / poststart hooks: run in order, labelled, and fail startup clearly.

use hitchserve::{Error, Service};

use crate::common::{sh, Project, PATIENCE};

/// A service that needs a file made by setup, and a poststart that talks to it over HTTP.
const SERVER: &str = r#"
import http.server, sys
open("config.txt").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"hello from server")
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open("port.txt", "w").write(str(s.server_port))
print("LISTENING", flush=True)
s.serve_forever()
"#;

const CLIENT: &str = r#"
import urllib.request
port = open("port.txt").read()
print(urllib.request.urlopen("http://127.0.0.1:%s/" % port).read().decode())
"#;

#[test]
fn hooks_run_in_order_with_labelled_output_and_dependents_wait_for_poststart() {
    let p = Project::new("hooks-order");
    p.write("server.py", SERVER);
    p.write("client.py", CLIENT);
    let mut b = p.bundle();
    b.add(
        "Web",
        Service::new(["python3", "-u", "server.py"])
            .ready_when(|l| l == "LISTENING")
            .setup(|ctx| {
                ctx.run([
                    "sh",
                    "-c",
                    "echo config > config.txt; echo init done; echo a warning >&2",
                ])?;
                ctx.log("setup finished");
                Ok(())
            })
            .poststart(|ctx| {
                ctx.run(["python3", "client.py"])?;
                Ok(())
            }),
    )
    .unwrap();
    b.add("After", sh("echo READY; exec sleep 1000").needs(["Web"]))
        .unwrap();
    b.startup().unwrap();
    let web = b.service("Web").unwrap();
    assert_eq!(
        web.logs().setup().out().lines(),
        vec!["init done", "setup finished"]
    );
    assert_eq!(web.logs().setup().err().lines(), vec!["a warning"]);
    assert_eq!(web.logs().poststart().lines(), vec!["hello from server"]);
    assert_eq!(web.logs().main().lines(), vec!["LISTENING"]);
    let shown = web.logs().to_string();
    for expected in [
        "Setup Web] init done",
        "[Err Setup Web] a warning",
        " Post Web] hello from server",
    ] {
        assert!(shown.contains(expected), "{shown}");
    }
    // Order in the bundle's log: setup output, the service, poststart, then the dependent.
    let all = b.logs().lines();
    let at = |needle: &str| {
        all.iter()
            .position(|l| l == needle)
            .unwrap_or_else(|| panic!("{needle}: {all:#?}"))
    };
    assert!(at("init done") < at("LISTENING"));
    assert!(at("LISTENING") < at("hello from server"));
    assert!(at("hello from server") < at("Starting After"));
}

#[test]
fn a_failing_setup_stops_startup_and_the_service_never_starts() {
    let p = Project::new("hooks-setup-fail");
    let mut b = p.bundle();
    b.add("Good", sh("echo READY; exec sleep 1000")).unwrap();
    b.add(
        "Db",
        sh("touch started; echo READY; exec sleep 1000").setup(|ctx| {
            ctx.run(["sh", "-c", "echo initdb: disk full >&2; exit 1"])?;
            Ok(())
        }),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    match &err {
        Error::HookFailed {
            service,
            hook,
            last_lines,
            ..
        } => {
            assert_eq!(service, "Db");
            assert_eq!(*hook, "setup");
            assert!(
                last_lines.iter().any(|l| l.contains("disk full")),
                "{last_lines:?}"
            );
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        err.to_string().contains("setup hook of service `Db`"),
        "{err}"
    );
    assert!(!p.path("started").exists());
}

#[test]
fn a_failing_or_panicking_poststart_stops_startup() {
    let p = Project::new("hooks-post-fail");
    let mut b = p.bundle();
    b.add(
        "Db",
        sh("echo READY; exec sleep 1000")
            .poststart(|_ctx| Err("CREATE USER failed: role exists".into())),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::HookFailed { service, hook: "poststart", message, .. } if service == "Db" && message.contains("role exists")),
        "{err:?}"
    );
    assert!(
        b.service("Db").unwrap().wait_exit(PATIENCE).is_some(),
        "the service was stopped"
    );

    let mut b = p.bundle();
    b.add(
        "Db",
        sh("echo READY; exec sleep 1000").poststart(|_ctx| panic!("unexpected state")),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::HookFailed { message, .. } if message.contains("unexpected state")),
        "{err:?}"
    );
}

/// What a hook's command leaves running in the background is stopped with it, so the hook
/// finishes instead of waiting for its output to close.
#[test]
fn a_hook_command_with_a_background_child_still_finishes() {
    let p = Project::new("hooks-background");
    let mut b = p.bundle();
    b.add(
        "Svc",
        sh("echo READY; exec sleep 1000").setup(|ctx| {
            ctx.run(["sh", "-c", "sleep 1000 & echo started in background"])?;
            Ok(())
        }),
    )
    .unwrap();
    b.startup().unwrap();
    assert_eq!(
        b.service("Svc").unwrap().logs().setup().lines(),
        vec!["started in background"]
    );
}

/// A hook's command whose escaped child (`setsid`) holds its output: the hook goes on a
/// moment after the command exits (it waited for the child's whole life, and a startup
/// timeout then blamed the user's hook for "not returning"); the child, which carries the
/// run's marker, dies with the bundle.
#[test]
fn a_hook_command_whose_escaped_child_holds_its_output_still_finishes() {
    let p = Project::new("hooks-escapee");
    let d = p.dir.display().to_string();
    let mut b = p.bundle();
    b.add(
        "Svc",
        sh("echo READY; exec sleep 1000").setup(move |ctx| {
            let script = format!(
                "setsid sh -c 'echo $$ > {d}/bgpid.tmp; mv {d}/bgpid.tmp {d}/bgpid; \
                 until [ -e {d}/release ]; do sleep 0.05; done' & \
                 until [ -e {d}/bgpid ]; do sleep 0.01; done; echo hook-done"
            );
            ctx.run(["sh", "-c", &script])?;
            Ok(())
        }),
    )
    .unwrap();
    // A bound, should the hook wait for the child again: it is released after a while.
    let release = crate::common::Release::armed(&p);
    b.startup().unwrap();
    let bg: u32 = std::fs::read_to_string(p.dir.join("bgpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        crate::common::is_alive(bg),
        "the hook waited for its command's escaped child to end"
    );
    b.shutdown().unwrap();
    assert!(crate::common::wait_gone(bg, crate::common::PATIENCE));
    drop(release);
}

/// A hook knows the service's reserved ports by name, and (in poststart) its main pid.
#[test]
fn a_hook_knows_its_services_ports_and_its_pid_once_it_runs() {
    let p = Project::new("hook-port");
    let mut b = p.bundle();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (setup_seen, post_seen) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&seen));
    b.add(
        "Web",
        sh("echo READY; exec sleep 1000")
            .port("http")
            .setup(move |ctx| {
                setup_seen.lock().unwrap().push((
                    "setup",
                    ctx.port("http"),
                    ctx.pid(),
                    ctx.port("none"),
                ));
                Ok(())
            })
            .poststart(move |ctx| {
                post_seen
                    .lock()
                    .unwrap()
                    .push(("post", ctx.port("http"), ctx.pid(), None));
                Ok(())
            }),
    )
    .unwrap();
    b.startup().unwrap();
    let port = b.port("Web", "http").unwrap();
    let pid = b.service("Web").unwrap().pid();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("setup", Some(port), None, None),
            ("post", Some(port), pid, None)
        ]
    );
    b.shutdown().unwrap();
}

/// `is_starting` holds while a start is under way — in its setup hook, before any process —
/// and not once it is ready (a wait for its lines goes on through such a start).
#[test]
fn a_service_in_its_setup_hook_is_starting() {
    use std::sync::{Arc, Condvar, Mutex};
    let p = Project::new("is-starting");
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let in_hook = Arc::clone(&gate);
    let mut b = p.bundle();
    b.add(
        "Slow",
        sh("echo READY; exec sleep 1000").setup(move |_| {
            let (lock, cv) = &*in_hook;
            let mut g = lock.lock().unwrap();
            g.0 = true; // entered
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
            Ok(())
        }),
    )
    .unwrap();
    let observer = b.observer();
    let starting = std::thread::spawn(move || {
        b.startup().unwrap();
        b
    });
    {
        let (lock, cv) = &*gate;
        let mut g = lock.lock().unwrap();
        while !g.0 {
            g = cv.wait(g).unwrap();
        }
    }
    let slow = observer.service("Slow").unwrap();
    assert!(slow.is_starting() && slow.pid().is_none());
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let b = starting.join().unwrap();
    assert!(!slow.is_starting() && slow.is_ready());
    b.shutdown().unwrap();
}
