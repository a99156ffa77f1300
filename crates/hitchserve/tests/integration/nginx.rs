//! The ready-made nginx, for real: a reverse proxy in front of a Python app, a whole
//! configuration of one's own, everything nginx writes inside the run directory, and no
//! worker left once the bundle stops.

use std::io::{Read, Write};
use std::net::TcpStream;

use hitchserve::services::Nginx;
use hitchserve::{Ready, Service};

use crate::common::{is_alive, is_root, stat_field, wait_gone, Project, PATIENCE};

/// `GET path` over HTTP/1.0: the status line and the body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: example.test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The live processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat_field(child, 4) == Some(i64::from(pid)) && is_alive(child))
        .collect()
}

#[test]
fn nginx_proxies_to_the_app_and_leaves_no_worker() {
    let p = Project::new("nginx");
    p.write("site/hello.txt", "hello from the app\n");
    let mut b = p.bundle();
    b.add(
        "App",
        Service::new([
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "{port.http}",
        ])
        .directory("site")
        .port("http")
        .ready(Ready::tcp_addr("127.0.0.1:{port.http}")),
    )
    .unwrap();
    b.add("Proxy", Nginx::proxy("App", "http").service())
        .unwrap();
    b.add(
        "Own",
        Nginx::config(format!(
            "{}http {{\n{}\nserver {{ listen 127.0.0.1:{{port.http}}; location / {{ return 200 \"my own config\\n\"; }} }}\n}}\n",
            hitchserve::services::nginx::MAIN_DIRECTIVES,
            hitchserve::services::nginx::HTTP_DIRECTIVES,
        ))
        .service(),
    )
    .unwrap();
    b.startup().unwrap();
    let proxy = Nginx::handle(&b, "Proxy").unwrap();
    let app = b.service("App").unwrap();
    let mut app_log = app.logs().tail();

    let (status, body) = get(proxy.port(), "/hello.txt");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "hello from the app\n");
    // It went through nginx to the app, with the client's Host.
    app_log
        .until(|l| l.contains("GET /hello.txt"), PATIENCE)
        .unwrap();
    assert_eq!(proxy.url(), format!("http://127.0.0.1:{}", proxy.port()));
    let own = Nginx::handle(&b, "Own").unwrap();
    assert_eq!(get(own.port(), "/anything").1, "my own config\n");

    // Everything nginx writes is in the run directory.
    let dir = b.run_dir().unwrap().join("Proxy");
    let master = proxy.service().pid().unwrap();
    let pid_file = std::fs::read_to_string(dir.join("nginx.pid")).unwrap();
    assert_eq!(pid_file.trim(), master.to_string());
    assert!(std::fs::read_to_string(dir.join("nginx.conf"))
        .unwrap()
        .contains(&format!("listen 127.0.0.1:{};", proxy.port())));
    assert!(dir.join("proxy_temp").is_dir());
    assert!(std::fs::read_to_string(dir.join("access.log"))
        .unwrap()
        .contains("GET /hello.txt"));
    if is_root() {
        assert_ne!(proxy.service().process().unwrap().uids().unwrap().real, 0);
    }

    let mut nginx_pids = children(master);
    assert!(!nginx_pids.is_empty(), "nginx has no worker");
    nginx_pids.push(master);
    nginx_pids.extend(children(own.service().pid().unwrap()));
    b.shutdown().unwrap();
    for pid in nginx_pids {
        assert!(
            wait_gone(pid, PATIENCE),
            "nginx process {pid} outlived the bundle"
        );
    }
}

/// A restart that runs its setup hook again writes its configuration afresh (it failed
/// with "File exists": the last start's file was in the way, and nginx stayed stopped).
#[test]
fn nginx_restarts_with_its_setup_hook() {
    let p = Project::new("nginx-setup");
    let mut b = p.bundle();
    b.add(
        "Web",
        Nginx::servers("server { listen 127.0.0.1:{port.http}; return 200 \"up\\n\"; }").service(),
    )
    .unwrap();
    b.startup().unwrap();
    let web = Nginx::handle(&b, "Web").unwrap();
    let before = web.service().pid().unwrap();
    web.service().restart_with_setup().unwrap();
    assert_ne!(web.service().pid(), Some(before));
    assert_eq!(get(web.port(), "/").1, "up\n");
    b.shutdown().unwrap();
}

/// Startup-to-ready of nginx alone (its app already up), median of 3: `cargo test --release
/// -p hitchserve --test integration nginx_startup_figures -- --ignored --nocapture`.
#[test]
#[ignore = "a figure for the docs, not a check"]
fn nginx_startup_figures() {
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let p = Project::new("nginx-bench");
            let mut b = p.bundle();
            b.add(
                "Proxy",
                Nginx::servers("server { listen 127.0.0.1:{port.http}; return 204; }").service(),
            )
            .unwrap();
            let t = std::time::Instant::now();
            b.startup().unwrap();
            let took = t.elapsed().as_secs_f64() * 1000.0;
            b.shutdown().unwrap();
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "nginx startup-to-ready: median {:.0} ms of {times:?}",
        times[1]
    );
}
