//! Readiness beyond a log-line closure: regex, JSON, TCP, HTTP, a command, a file, and
//! all/any of them, each against a real server.

use std::time::Duration;

use hitchserve::{Error, Ready, Service};

use crate::common::{sh, Project, PATIENCE};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_server(port: u16) -> Service {
    Service::new([
        "python3".to_owned(),
        "-m".into(),
        "http.server".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
    ])
}

fn started(p: &Project, name: &str, svc: Service) -> hitchserve::Bundle {
    let mut b = p.bundle();
    b.add(name, svc).unwrap();
    b.startup().unwrap();
    b
}

#[test]
fn tcp_readiness_waits_for_the_port() {
    let p = Project::new("ready-tcp");
    let port = free_port();
    let b = started(&p, "Web", http_server(port).ready(Ready::tcp(port)));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(b);
}

#[test]
fn http_readiness_checks_status_and_body() {
    let p = Project::new("ready-http");
    p.write("hello.txt", "hi");
    let port = free_port();
    let b = started(
        &p,
        "Web",
        http_server(port).ready(
            Ready::http(format!("http://127.0.0.1:{port}/"))
                .status(|s| s == 200)
                .body(|b| b.contains("hello.txt")),
        ),
    );
    drop(b);
}

/// A server that answers 200 only to `Authorization: Basic` of `admin:p@ss w` (401
/// otherwise), on `port`.
fn server_with_basic_auth(port: u16) -> Service {
    const SERVER: &str = concat!(
        "import base64, http.server, sys\n",
        "want = 'Basic ' + base64.b64encode(b'admin:p@ss w').decode()\n",
        "class H(http.server.BaseHTTPRequestHandler):\n",
        "    def do_GET(self):\n",
        "        ok = self.headers.get('Authorization') == want and self.path == '/health?x=1'\n",
        "        self.send_response(200 if ok else 401)\n",
        "        self.end_headers()\n",
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n",
    );
    Service::new(["python3", "-c", SERVER, &port.to_string()])
}

/// An HTTP check's URL may hold credentials (basic auth, percent-encoded, any case of
/// `http://`): they are sent, and never shown — the password is `***` in every message.
#[test]
fn http_readiness_sends_the_urls_credentials_and_never_shows_its_password() {
    let p = Project::new("ready-http-auth");
    let port = free_port();
    let b = started(
        &p,
        "Guarded",
        server_with_basic_auth(port).ready(
            Ready::http(format!(
                "HTTP://admin:p%40ss%20w@127.0.0.1:{port}/health?x=1#top"
            ))
            .status(|s| s == 200),
        ),
    );
    drop(b);
    let port = free_port();
    let mut b = p.bundle().startup_timeout(Duration::from_secs(2));
    b.add(
        "Refused",
        server_with_basic_auth(port).ready(
            Ready::http(format!(
                "http://admin:wrong-secret@127.0.0.1:{port}/health?x=1"
            ))
            .status(|s| s == 200),
        ),
    )
    .unwrap();
    let err = b.startup().unwrap_err().to_string();
    assert!(
        err.contains("admin:***@") && err.contains("answered 401"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret"), "{err}");
}

#[test]
fn exec_and_file_readiness() {
    let p = Project::new("ready-exec-file");
    let b = started(
        &p,
        "Slow",
        sh("sleep 0.2; touch flag; exec sleep 1000").ready(Ready::exec(["test", "-e", "flag"])),
    );
    assert!(p.path("flag").exists());
    drop(b);
    let b = started(
        &p,
        "Slower",
        sh("sleep 0.2; touch other.flag; exec sleep 1000").ready(Ready::file("other.flag")),
    );
    assert!(p.path("other.flag").exists());
    drop(b);
}

#[test]
fn regex_and_json_line_readiness() {
    let p = Project::new("ready-lines");
    let b = started(
        &p,
        "Re",
        sh("echo 'listening on 80x'; echo 'listening on 8080'; exec sleep 1000")
            .ready(Ready::line_regex(r"^listening on \d+$").unwrap()),
    );
    assert_eq!(b.service("Re").unwrap().logs().lines().len(), 2);
    drop(b);
    let b = started(
        &p,
        "Js",
        sh(r#"echo 'not json'; echo '{"status": "starting"}'; echo '{"status": "up"}'; exec sleep 1000"#)
            .ready(Ready::json(|v| v["status"] == "up")),
    );
    assert_eq!(b.service("Js").unwrap().logs().json().len(), 2);
    drop(b);
    assert!(matches!(
        Ready::line_regex("(unclosed"),
        Err(Error::InvalidPattern { .. })
    ));
}

#[test]
fn all_needs_every_part_and_any_needs_one() {
    let p = Project::new("ready-combinators");
    let port = free_port();
    // The log line comes first, the port later: `all` waits for both.
    let script =
        format!("echo warming up; sleep 0.2; exec python3 -m http.server {port} --bind 127.0.0.1");
    let b = started(
        &p,
        "Both",
        sh(&script).ready(Ready::all([
            Ready::line_contains("warming up"),
            Ready::tcp(port),
        ])),
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(b);
    let b = started(
        &p,
        "Either",
        sh("echo go; exec sleep 1000").ready(Ready::any([
            Ready::file("never-there"),
            Ready::line_contains("go"),
        ])),
    );
    drop(b);
}

/// `started()` inside `all` / `any` counts as soon as the process runs, and `all` of
/// nothing holds at once (they timed out: only a bare `started()` was seen as met).
#[test]
fn started_inside_all_or_any_is_met_once_the_process_runs() {
    let p = Project::new("ready-started-inside");
    for (name, ready) in [
        (
            "AnyStarted",
            Ready::any([Ready::started(), Ready::line_contains("never")]),
        ),
        ("AllStarted", Ready::all([Ready::started()])),
        ("AllOfNothing", Ready::all([])),
        (
            "AnyProbeOrStarted",
            Ready::any([Ready::file("never-there"), Ready::started()]),
        ),
        // A part that can't pass, beside one that can: an `any` still can.
        (
            "AnyHttpsOrStarted",
            Ready::any([Ready::http("https://127.0.0.1:1/"), Ready::started()]),
        ),
    ] {
        // Nothing it prints could pass a line check: only its start can make it ready.
        let mut b = p.bundle().startup_timeout(PATIENCE);
        b.add(name, sh("exec sleep 1000").ready(ready)).unwrap();
        b.startup().unwrap();
        assert!(b.service(name).unwrap().is_ready(), "{name}");
        b.shutdown().unwrap();
    }
}

/// A check that can never pass is an error before anything starts, naming the service
/// (it waited out the startup timeout).
#[test]
fn a_readiness_check_that_can_never_pass_is_refused_before_anything_starts() {
    let p = Project::new("ready-never");
    for (ready, says) in [
        (Ready::any([]), "`Ready::any` of no checks"),
        (
            Ready::all([
                Ready::line_contains("x"),
                Ready::http("https://127.0.0.1:1/"),
            ]),
            "not an http:// URL",
        ),
        (Ready::http("http://"), "names no host"),
        (
            Ready::http("http://admin:p#ss@127.0.0.1:1/"),
            "write them percent-encoded",
        ),
        (Ready::http("http://127.0.0.1:0/health"), "port 0"),
        (Ready::tcp(0), "port 0"),
        (Ready::tcp_addr("not an address"), "has no port"),
        (Ready::tcp_addr("127.0.0.1:http"), "not a number"),
        (Ready::exec(Vec::<&str>::new()), "empty command"),
        (Ready::exec(["tr\0ue"]), "NUL byte"),
        // A probe's program not on the service's PATH (it was tried until the timeout).
        (
            Ready::exec(["no-such-probe-hs", "--check"]),
            "runs `no-such-probe-hs`, which was not found",
        ),
        (
            Ready::all([
                Ready::line_contains("READY"),
                Ready::exec(["no-such-probe-hs"]),
            ]),
            "runs `no-such-probe-hs`",
        ),
        (Ready::file(""), "empty path"),
        (Ready::file("a\0b"), "NUL byte"),
    ] {
        let mut b = p.bundle().startup_timeout(PATIENCE);
        b.add("Never", sh("echo READY; exec sleep 1000").ready(ready))
            .unwrap();
        match b.startup() {
            Err(e @ Error::ReadinessNeverPasses { .. }) => {
                let text = e.to_string();
                assert!(text.contains("`Never`") && text.contains(says), "{text}");
            }
            other => panic!("expected ReadinessNeverPasses, got {other:?}"),
        }
    }
}

#[test]
fn a_probe_that_never_succeeds_shows_its_last_failure_in_the_timeout() {
    let p = Project::new("ready-never");
    let port = free_port();
    let mut b = p.bundle().startup_timeout(Duration::from_secs(2));
    b.add("Mute", sh("exec sleep 1000").ready(Ready::tcp(port)))
        .unwrap();
    let err = b.startup().unwrap_err();
    let Error::StartupTimeout { not_ready, .. } = &err else {
        panic!("{err:?}");
    };
    let waiting = &not_ready[0].waiting_for;
    assert!(waiting.contains(&format!("127.0.0.1:{port}")), "{waiting}");
    assert!(waiting.to_lowercase().contains("refused"), "{waiting}");
}

/// A one-file HTTP server on `{port.http}` (argv[1]) for the HTTP probe's tests.
fn python_server(script: &str) -> Service {
    Service::new(["python3", "-c", script, "{port.http}"]).port("http")
}

/// Answers every GET with `OK` sent in two chunks, as HTTP/1.1 servers do for streamed
/// bodies.
const CHUNKED_OK: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b"O", b"K"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// Answers with a `Content-Length` body, then keeps the connection open despite
/// `Connection: close` (one connection at a time, each held until the next arrives).
const KEEPS_OPEN: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
held = None
while True:
    c, _ = s.accept()
    request = b""
    while b"\r\n\r\n" not in request:
        data = c.recv(4096)
        if not data:
            break
        request += data
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    if held is not None:
        held.close()
    held = c
"#;

/// Accepts connections and never says a word.
const SILENT: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
    del held[:-8]
"#;

#[test]
fn http_readiness_decodes_a_chunked_body() {
    let p = Project::new("ready-http-chunked");
    let b = started(
        &p,
        "Web",
        python_server(CHUNKED_OK).ready(
            Ready::http("http://127.0.0.1:{port.http}/health")
                .status(|s| s == 200)
                .body(|b| b == "OK"),
        ),
    );
    drop(b);
}

#[test]
fn http_readiness_reads_a_content_length_body_without_waiting_for_the_close() {
    let p = Project::new("ready-http-length");
    let b = started(
        &p,
        "Web",
        python_server(KEEPS_OPEN).ready(
            Ready::http("http://127.0.0.1:{port.http}/")
                .status(|s| s == 200)
                .body(|b| b == "OK"),
        ),
    );
    drop(b);
}

#[test]
fn a_silent_http_server_is_reported_as_no_response_within_the_probe_limit() {
    let p = Project::new("ready-http-silent");
    // Longer than one probe (2 s), so at least one has given up when startup does.
    let mut b = p.bundle().startup_timeout(Duration::from_secs(8));
    b.add(
        "Mute",
        python_server(SILENT).ready(Ready::http("http://127.0.0.1:{port.http}/")),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    let Error::StartupTimeout { not_ready, .. } = &err else {
        panic!("{err:?}");
    };
    let waiting = &not_ready[0].waiting_for;
    assert!(waiting.contains("no response within 2.0 s"), "{waiting}");
    assert!(!waiting.contains("os error"), "{waiting}");
}

/// A `syscall()` that refuses `pidfd_open` (ENOSYS), as a kernel before 5.3 or a seccomp
/// filter does; everything else goes to the real one.
const NO_PIDFD_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
long syscall(long n, ...) {
    va_list ap;
    va_start(ap, n);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    if (n == SYS_pidfd_open) {
        errno = ENOSYS;
        return -1;
    }
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(n, a, b, c, d, e, f);
}
"#;

const NO_PIDFD_VAR: &str = "HITCHSERVE_TEST_NO_PIDFD_PROJECT";

#[test]
#[ignore = "helper: run by an_exec_probe_keeps_its_time_limit_without_pidfds"]
fn helper_exec_probe_without_pidfds() {
    let Some(dir) = std::env::var_os(NO_PIDFD_VAR) else {
        return;
    };
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(Duration::from_secs(7));
    b.add(
        "Hung",
        sh("echo started; exec sleep 1000").ready(Ready::exec(["sh", "-c", "exec sleep 1000"])),
    )
    .unwrap();
    let err = b.startup().unwrap_err();
    let said = err.to_string();
    // Each try was killed at the probe's limit and tried again: the last one is said.
    assert!(
        matches!(err, Error::StartupTimeout { .. }) && said.contains("last try"),
        "{said}"
    );
    println!("no-pidfd helper done");
}

/// Where the kernel gives no pidfd (before 5.3, a seccomp filter that refuses it), an exec
/// probe still has its time limit: a probe that hangs is killed and tried again. (It counted
/// as "exited" at once, and the one hung probe ran for the whole startup timeout.)
#[test]
fn an_exec_probe_keeps_its_time_limit_without_pidfds() {
    let p = Project::new("ready-no-pidfd");
    let lib = crate::common::compile_c_shared(&p, "no_pidfd", NO_PIDFD_C);
    let out = crate::common::helper_process(
        "readiness::helper_exec_probe_without_pidfds",
        &[
            (NO_PIDFD_VAR, p.dir.to_str().unwrap()),
            ("LD_PRELOAD", lib.to_str().unwrap()),
        ],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("no-pidfd helper done"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file check counts the file this start makes, not one an earlier start left: a restart
/// returned at once, the old process's flag still there, before the new process was up.
#[test]
fn a_ready_file_left_by_the_last_start_does_not_make_a_restart_ready() {
    let p = Project::new("ready-file-restart");
    let mut b = p.bundle();
    b.add(
        "Flagged",
        sh("sleep 0.3; echo $$ > ready.tmp && mv ready.tmp ready.flag; exec sleep 1000")
            .ready(Ready::file("ready.flag")),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Flagged").unwrap();
    let flag = || std::fs::read_to_string(p.path("ready.flag")).unwrap();
    assert_eq!(flag().trim(), svc.pid().unwrap().to_string());
    svc.restart().unwrap();
    assert_eq!(
        flag().trim(),
        svc.pid().unwrap().to_string(),
        "ready on the old flag"
    );
    b.shutdown().unwrap();
}

/// A ready file that is a symlink made again by the new start (`ln -sfn`, to the same
/// target) counts: the link is another (the target's identity alone said "the old one").
#[test]
fn a_ready_symlink_made_again_makes_a_restart_ready() {
    let p = Project::new("ready-symlink-restart");
    p.write("target.txt", "x");
    let mut b = p.bundle();
    b.add(
        "Linked",
        sh("ln -sfn target.txt ready.link; echo $$ > linked.pid; exec sleep 1000")
            .ready(Ready::file("ready.link")),
    )
    .unwrap();
    b.startup().unwrap();
    let svc = b.service("Linked").unwrap();
    svc.restart().unwrap();
    assert!(svc.is_ready());
    b.shutdown().unwrap();
}
