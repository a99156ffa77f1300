//! Free ports: reserved per service, substituted into commands, environments and readiness
//! checks, and never handed to two bundles at once.

use std::collections::HashSet;

use hitchserve::{Error, Ready, Service};

use crate::common::{sh, Project};

/// Binds every port given on its command line, then says READY (a clash would crash it).
const BINDER: &str = "import socket, sys, time\nsocks = []\nfor p in sys.argv[1:]:\n    s = socket.socket(); s.bind(('127.0.0.1', int(p))); s.listen(); socks.append(s)\nprint('READY', flush=True)\ntime.sleep(1000)\n";

#[test]
fn sixteen_bundles_in_parallel_each_with_four_ports_never_collide() {
    let p = Project::new("ports-parallel");
    let ports: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let p = &p;
                s.spawn(move || {
                    let mut b = p.bundle().without_time_travel();
                    b.add(
                        "Binder",
                        Service::new([
                            "python3", "-c", BINDER, "{port.a}", "{port.b}", "{port.c}", "{port.d}",
                        ])
                        .port("a")
                        .port("b")
                        .port("c")
                        .port("d")
                        .ready(Ready::all([
                            Ready::line_contains("READY"),
                            Ready::tcp_addr("127.0.0.1:{port.a}"),
                        ])),
                    )
                    .unwrap();
                    b.startup().unwrap();
                    let ours: Vec<u16> = ["a", "b", "c", "d"]
                        .iter()
                        .map(|n| b.port("Binder", n).unwrap())
                        .collect();
                    b.shutdown().unwrap();
                    ours
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ports.len(), 64);
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 64, "{ports:?}");
}

const CLIENT: &str = "import os, urllib.request\nprint('status', urllib.request.urlopen(os.environ['WEB_URL']).status, flush=True)\nimport time; time.sleep(1000)\n";

#[test]
fn a_port_reaches_a_dependents_environment_through_a_template() {
    let p = Project::new("ports-template");
    let mut b = p.bundle();
    b.add(
        "Web",
        Service::new([
            "python3",
            "-m",
            "http.server",
            "{port.http}",
            "--bind",
            "127.0.0.1",
        ])
        .port("http")
        .ready(Ready::http("http://127.0.0.1:{port.http}/")),
    )
    .unwrap();
    b.add(
        "Client",
        Service::new(["python3", "-c", CLIENT])
            .env("WEB_URL", "http://127.0.0.1:{Web.port.http}/")
            .ready_when(|l| l.starts_with("status"))
            .needs(["Web"]),
    )
    .unwrap();
    b.startup().unwrap();
    assert_eq!(
        b.service("Client").unwrap().logs().lines(),
        vec!["status 200"]
    );
    let port = b.port("Web", "http").unwrap();
    assert_eq!(
        b.service("Client").unwrap().env_var("WEB_URL").unwrap(),
        format!("http://127.0.0.1:{port}/")
    );
    assert!(matches!(
        b.port("Web", "nope"),
        Err(Error::UnknownPort { .. })
    ));
}

#[test]
fn an_unknown_port_template_is_refused_before_anything_starts() {
    let p = Project::new("ports-unknown");
    let mut b = p.bundle();
    b.add("App", sh("echo {port.http}; echo READY; exec sleep 1000"))
        .unwrap();
    let err = b.startup().unwrap_err();
    assert!(
        matches!(&err, Error::UnknownPort { service, template } if service == "App" && template == "{port.http}"),
        "{err:?}"
    );
}

/// Service and port names may hold dots: `{api.v1.port.http}` and `{port.admin.v2}` are
/// filled in like any template, in a command, an environment value and a readiness check.
/// (They were left as written, silently, and a tcp check then failed.) A port name no
/// template could name is refused when the service is added.
#[test]
fn templates_reach_services_and_ports_whose_names_hold_dots() {
    let p = Project::new("ports-dotted");
    let mut b = p.bundle();
    b.add(
        "api.v1",
        Service::new([
            "python3",
            "-m",
            "http.server",
            "{port.admin.v2}",
            "--bind",
            "127.0.0.1",
        ])
        .port("admin.v2")
        .ready(Ready::tcp_addr("127.0.0.1:{port.admin.v2}")),
    )
    .unwrap();
    b.add(
        "Client",
        sh("echo READY; exec sleep 1000")
            .env("API", "http://127.0.0.1:{api.v1.port.admin.v2}/")
            .needs(["api.v1"]),
    )
    .unwrap();
    b.startup().unwrap();
    let port = b.port("api.v1", "admin.v2").unwrap();
    assert_eq!(
        b.service("Client").unwrap().env_var("API").unwrap(),
        format!("http://127.0.0.1:{port}/")
    );
    b.shutdown().unwrap();

    let mut b = p.bundle();
    let err = b.add("Bad", sh("exec sleep 1000").port("a b")).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSetting { service, problem } if service == "Bad" && problem.contains("`a b`")),
        "{err:?}"
    );
}
