//! The process API: a psutil-like handle on each service's processes, read from /proc.

use hitchserve::{ConnectionKind, Error, Resource, Service, Signal, Status};

use crate::common::{sh, Project, PATIENCE};

/// A parent that forks two workers, each holding some memory, and says so.
const FORKER: &str = r#"
import os, sys, time
kids = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        ballast = bytearray(20 * 1024 * 1024)
        for j in range(0, len(ballast), 4096):
            ballast[j] = 1
        # One write per line: two processes share the pipe.
        os.write(1, b"worker %d up\n" % i)
        time.sleep(1000)
        os._exit(0)
    kids.append(pid)
print("READY", flush=True)
for pid in kids:
    os.waitpid(pid, 0)
"#;

#[test]
fn memory_and_children_of_a_service_that_forks_two_workers() {
    let p = Project::new("proc-fork");
    p.write("forker.py", FORKER);
    let mut b = p.bundle();
    b.add(
        "Forker",
        Service::new(["python3", "-u", "forker.py"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Forker").unwrap();
    let logs = svc.logs().out();
    let mut tail = logs.tail().lines_back(3);
    tail.until(|l| l == "worker 0 up", PATIENCE).unwrap();
    logs.tail()
        .lines_back(3)
        .until(|l| l == "worker 1 up", PATIENCE)
        .unwrap();
    let proc = svc.process().unwrap();
    assert_eq!(proc.pid(), svc.pid().unwrap());
    let kids = proc.children(false).unwrap();
    assert_eq!(kids.len(), 2, "{kids:?}");
    for kid in &kids {
        assert_eq!(kid.ppid().unwrap(), proc.pid());
        assert_eq!(kid.parent().unwrap().unwrap(), proc);
        assert!(kid.memory_info().unwrap().rss >= 20 * 1024 * 1024);
        assert!(kid.memory_percent().unwrap() > 0.0);
    }
    assert_eq!(proc.children(true).unwrap().len(), 2);
    assert!(proc.cmdline().unwrap().iter().any(|a| a == "forker.py"));
    assert_eq!(proc.cwd().unwrap(), std::fs::canonicalize(&p.dir).unwrap());
    assert!(proc.exe().unwrap().to_string_lossy().contains("python"));
    assert!(proc.environ().unwrap().contains_key("HITCHSERVE_RUN"));
    assert!(proc.num_threads().unwrap() >= 1);
    assert!(!proc.threads().unwrap().is_empty());
    assert!(proc.num_fds().unwrap() >= 3);
    assert!(proc.create_time().unwrap() <= std::time::SystemTime::now());
    let mem = proc.memory_info().unwrap();
    assert!(mem.vms >= mem.rss && mem.rss > 0);
    assert!(proc.rlimit(Resource::OpenFiles).unwrap().soft.is_some());
    assert!(!proc.cpu_affinity().unwrap().is_empty());
    assert_eq!(proc.uids().unwrap().real, nix_uid());
    assert!(!proc.username().unwrap().is_empty());
    assert!(proc.num_ctx_switches().unwrap().voluntary > 0);
    let _ = proc.io_counters().unwrap();
    // As the test's own: under `nice`, services inherit it.
    // SAFETY: a plain syscall; errno is not looked at (0 is a valid answer).
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    assert_eq!(proc.nice().unwrap(), own);
    assert!(
        proc.terminal().unwrap().is_none(),
        "services have no terminal"
    );
    let tree = b.pstree().unwrap().to_string();
    assert!(
        tree.contains("Forker") && tree.contains("forker.py"),
        "{tree}"
    );
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

#[test]
fn the_listening_port_of_a_python_http_server_is_found_through_connections() {
    let p = Project::new("proc-port");
    let mut b = p.bundle();
    b.add(
        "Web",
        Service::new([
            "python3",
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .ready_when(|l| l.contains("Serving HTTP")),
    )
    .unwrap();
    b.startup().unwrap();
    let web = b.service("Web").unwrap();
    // The server says which port the kernel gave it: the connections must agree.
    let line = web.logs().out().lines().remove(0);
    let port: u16 = line
        .split("port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let conns = web.process().unwrap().connections().unwrap();
    let listening: Vec<_> = conns
        .iter()
        .filter(|c| c.kind == ConnectionKind::Tcp && c.state == "LISTEN")
        .collect();
    assert_eq!(listening.len(), 1, "{conns:?}");
    assert_eq!(listening[0].local.unwrap().port(), port);
}

/// Ticks every 20 ms, counting.
const TICKS: &str = "i=0; echo READY; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done";

#[test]
fn suspend_stops_a_ticking_service_and_resume_restarts_it() {
    let p = Project::new("proc-suspend");
    let mut b = p.bundle();
    b.add("Ticker", sh(TICKS)).unwrap();
    b.startup().unwrap();
    let svc = b.service("Ticker").unwrap();
    let proc = svc.process().unwrap();
    proc.suspend().unwrap();
    // A stopped process can't tick. The stop takes effect as the signal is delivered:
    // wait for that state, bounded, yielding between looks.
    let deadline = std::time::Instant::now() + PATIENCE;
    while proc.status().unwrap() != Status::Stopped {
        assert!(std::time::Instant::now() < deadline, "never stopped");
        std::thread::yield_now();
    }
    let mut tail = svc.logs().out().tail();
    let before = svc.logs().out().len();
    assert_eq!(proc.status().unwrap(), Status::Stopped);
    proc.resume().unwrap();
    let next = tail.until(|l| l.starts_with("tick"), PATIENCE).unwrap();
    assert!(svc.logs().out().len() > before, "{next:?}");
    assert_ne!(proc.status().unwrap(), Status::Stopped);
}

#[test]
fn send_signal_reaches_the_process_and_a_gone_process_is_a_typed_error() {
    let p = Project::new("proc-signal");
    let mut b = p.bundle();
    b.add(
        "Handler",
        sh("trap 'echo got USR1' USR1; echo READY; while :; do sleep 0.02; done"),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Handler").unwrap();
    let proc = svc.process().unwrap();
    let mut tail = svc.logs().out().tail();
    proc.send_signal(Signal::SIGUSR1).unwrap();
    tail.until(|l| l == "got USR1", PATIENCE).unwrap();
    assert!(proc.is_running());
    proc.kill().unwrap();
    assert!(proc.wait(PATIENCE));
    assert!(!proc.is_running());
    assert!(svc.wait_exit(PATIENCE).is_some());
    assert!(matches!(
        proc.memory_info(),
        Err(Error::NoSuchProcess { .. })
    ));
    assert!(matches!(
        proc.send_signal(Signal::SIGTERM),
        Err(Error::NoSuchProcess { .. })
    ));
    assert!(matches!(
        svc.process(),
        Err(Error::ServiceNotRunning { .. })
    ));
}

/// Asking a running bundle what only another state or kind of service has is an error
/// that says which (each named the bundle as not running, or an undeclared port).
#[test]
fn questions_a_service_cant_answer_say_why() {
    use hitchserve::services::{MariaDb, Memcached, Nginx, Postgres, RabbitMq, Redis, Smtp};
    let p = Project::new("cant-answer");
    let mut b = p.bundle();
    b.add(
        "Web",
        crate::common::sh("echo READY; exec sleep 1000")
            .port("http")
            .ready_when(|l| l == "READY"),
    )
    .unwrap();
    // Ports are reserved at startup.
    assert!(matches!(b.port("Web", "http"), Err(Error::NotRunning)));
    b.startup().unwrap();
    assert!(b.port("Web", "http").is_ok());
    match b.port("Nope", "http") {
        Err(Error::NoSuchService { service, .. }) => assert_eq!(service, "Nope"),
        other => panic!("expected NoSuchService, got {other:?}"),
    }
    // A ready-made kind's handle, of a service it didn't make.
    let kinds = [
        ("Postgres", Postgres::handle(&b, "Web").map(drop)),
        ("Redis", Redis::handle(&b, "Web").map(drop)),
        ("MariaDb", MariaDb::handle(&b, "Web").map(drop)),
        ("Memcached", Memcached::handle(&b, "Web").map(drop)),
        ("Nginx", Nginx::handle(&b, "Web").map(drop)),
        ("RabbitMq", RabbitMq::handle(&b, "Web").map(drop)),
        ("Smtp", Smtp::handle(&b, "Web").map(drop)),
    ];
    for (kind, got) in kinds {
        match got {
            Err(Error::NotAService { service, kind: k }) => {
                assert_eq!((service.as_str(), k.as_str()), ("Web", kind))
            }
            other => panic!("{kind}::handle of a plain service: {other:?}"),
        }
    }
    // Its process, once it was stopped.
    let web = b.service("Web").unwrap();
    web.stop().unwrap();
    match web.process() {
        Err(e @ Error::ServiceNotRunning { .. }) => {
            assert!(e.to_string().contains("was stopped"), "{e}")
        }
        other => panic!("expected ServiceNotRunning, got {other:?}"),
    }
    b.shutdown().unwrap();
    // Once the bundle is down, nothing is to be started again: no advice to.
    let err = web.pause().unwrap_err().to_string();
    assert!(
        err.contains("the bundle has been shut down") && !err.contains("start()"),
        "{err}"
    );
}
