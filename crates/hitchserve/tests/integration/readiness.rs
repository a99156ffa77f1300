//! Readiness beyond a log-line closure: regex, JSON, TCP, HTTP, a command, a file, and
//! all/any of them, each against a real server.

use std::time::Duration;

use hitchserve::{Error, Ready, Service};

use crate::common::{sh, Project};

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
