//! The ready-made RabbitMQ, for real: boot-time users and vhosts, a publish/consume round
//! trip with a real AMQP client (Python's `pika`), rabbitmqctl on the run's own node, and a
//! shutdown that leaves neither the node nor its epmd behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use hitchserve::services::RabbitMq;

use crate::common::{self, Project, PATIENCE};

/// Publishes `hello` to a fresh queue and gets it back; then tries `guest`, which must fail;
/// then lists the vhosts through the management API.
const CLIENT: &str = r#"
import base64, json, os, urllib.request, pika
params = pika.URLParameters(os.environ["AMQP_URL"])
with pika.BlockingConnection(params) as conn:
    ch = conn.channel()
    ch.queue_declare(queue="greetings")
    ch.basic_publish(exchange="", routing_key="greetings", body=b"hello")
    for _ in range(200):
        method, props, body = ch.basic_get(queue="greetings", auto_ack=True)
        if body is not None:
            print("got", body.decode())
            break
        conn.sleep(0.05)
try:
    pika.BlockingConnection(pika.URLParameters(os.environ["GUEST_URL"])).close()
    print("guest got in")
except pika.exceptions.ProbableAuthenticationError:
    print("guest refused")
req = urllib.request.Request(os.environ["MANAGEMENT_URL"] + "/api/vhosts")
req.add_header("Authorization", "Basic " + base64.b64encode(os.environ["MANAGEMENT_AUTH"].encode()).decode())
with urllib.request.urlopen(req, timeout=30) as resp:
    print("vhosts", sorted(v["name"] for v in json.load(resp)))
"#;

/// Pids of every process in `pgid`'s group (zombies excluded).
fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if common::stat_field(pid, 5) == Some(i64::from(pgid)) && common::is_alive(pid) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_owned()));
        }
    }
    out
}

#[test]
fn rabbitmq_round_trips_a_message_and_leaves_no_node_or_epmd_behind() {
    let p = Project::new("rabbitmq");
    let mut b = p.bundle();
    b.add(
        "Rabbit",
        RabbitMq::new()
            .vhost("orders")
            .user("app", "s3cret word")
            .administrator("boss", "b0ss")
            .management()
            .service()
            .unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let rabbit = RabbitMq::handle(&b, "Rabbit").unwrap();
    assert!(rabbit.service().is_ready());
    // Plain lines in the logs: the console's colours are off.
    let lines = rabbit.service().logs().lines();
    assert!(lines.iter().any(|l| l.contains("Server startup complete")));
    assert!(
        !lines.iter().any(|l| l.contains("\u{1b}[")),
        "coloured log lines"
    );
    assert!(rabbit.node().ends_with("@localhost"), "{}", rabbit.node());
    assert_eq!(rabbit.url(), format!("amqp://127.0.0.1:{}", rabbit.port()));
    let url = rabbit.amqp_url("app", "s3cret word", "orders");
    assert_eq!(
        url,
        format!(
            "amqp://app:s3cret%20word@127.0.0.1:{}/orders",
            rabbit.port()
        )
    );

    // A real AMQP round trip, and no `guest` (the well-known default) to let others in.
    let out = std::process::Command::new("python3")
        .args(["-c", CLIENT])
        .env("AMQP_URL", &url)
        .env("GUEST_URL", rabbit.amqp_url("guest", "guest", "/"))
        .env(
            "MANAGEMENT_URL",
            format!("http://127.0.0.1:{}", rabbit.management_port().unwrap()),
        )
        .env("MANAGEMENT_AUTH", "boss:b0ss")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("got hello"), "{stdout}");
    assert!(stdout.contains("guest refused"), "{stdout}");
    assert!(stdout.contains("vhosts ['/', 'orders']"), "{stdout}");

    // rabbitmqctl reaches this node (and only through the run's cookie).
    let queues = rabbit
        .rabbitmqctl(["-q", "list_queues", "-p", "orders", "name"])
        .checked_output()
        .unwrap();
    assert!(
        queues.stdout_text().contains("greetings"),
        "{}",
        queues.stdout_text()
    );
    let users = rabbit
        .rabbitmqctl(["-q", "list_users"])
        .checked_output()
        .unwrap();
    assert!(
        users.stdout_text().contains("app"),
        "{}",
        users.stdout_text()
    );
    assert!(
        !users.stdout_text().contains("guest"),
        "{}",
        users.stdout_text()
    );
    let home = b.run_dir().unwrap().join("Rabbit");
    let cookie = std::fs::metadata(home.join(".erlang.cookie")).unwrap();
    assert_eq!(cookie.permissions().mode() & 0o777, 0o400);
    let server = rabbit.service().process().unwrap();
    assert_eq!(cookie.uid(), server.uids().unwrap().effective);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(server.username().unwrap(), "rabbitmq");
    }
    // The passwords were only needed at boot.
    assert!(!home.join("definitions.json").exists());

    // The node and its own epmd share the service's process group; nothing else is left.
    let pgid = rabbit.service().pid().unwrap();
    let members = group_members(pgid);
    let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
    assert!(names.contains(&"epmd"), "{names:?}");
    assert!(names.contains(&"beam.smp"), "{names:?}");
    let epmd_port = b
        .port("Rabbit", hitchserve::services::rabbitmq::EPMD_PORT)
        .unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", epmd_port)).is_ok());
    let run_id = common::run_id(&b);
    b.shutdown().unwrap();
    for (pid, name) in &members {
        assert!(common::wait_gone(*pid, PATIENCE), "{name} ({pid}) survived");
    }
    assert!(group_members(pgid).is_empty());
    assert!(common::marked_pids(&run_id).is_empty());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", epmd_port)).is_err(),
        "something still answers on the run's epmd port"
    );
}

/// Startup-to-ready of a fresh node, median of 3 (a figure for the docs, not a test):
/// `cargo test -p hitchserve --test integration rabbitmq_startup_figures -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, run by hand"]
fn rabbitmq_startup_figures() {
    let mut times = Vec::new();
    for _ in 0..3 {
        let p = Project::new("rabbitmq-bench");
        let mut b = p.bundle();
        b.add(
            "Rabbit",
            RabbitMq::new().user("app", "pw").service().unwrap(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        b.startup().unwrap();
        times.push(started.elapsed());
        b.shutdown().unwrap();
    }
    times.sort();
    println!(
        "RabbitMQ startup-to-ready: {times:.2?}, median {:.2?}",
        times[1]
    );
}

/// A RabbitMQ started again — restarted, or started again with its setup — comes up with
/// its users (the restart's boot failed: its configuration pointed at definitions that were
/// removed once loaded; a setup run again found its files there).
#[test]
fn rabbitmq_restarts_with_and_without_its_setup() {
    let p = Project::new("rabbitmq-restart");
    let mut b = p.bundle();
    b.add(
        "Rabbit",
        RabbitMq::new().user("app", "secret").service().unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let rabbit = RabbitMq::handle(&b, "Rabbit").unwrap();
    let users = || {
        rabbit
            .rabbitmqctl(["list_users", "--silent"])
            .checked_output()
            .unwrap()
            .stdout_text()
    };
    assert!(users().contains("app"));
    // A plain `rabbitmqctl` in its environment (`hitchserve exec`) reaches the node.
    let plain = rabbit
        .service()
        .subcommand(["rabbitmqctl", "list_users", "--silent"])
        .checked_output()
        .unwrap();
    assert!(
        plain.stdout_text().contains("app"),
        "{}",
        plain.stdout_text()
    );
    rabbit.service().restart().unwrap();
    assert!(users().contains("app"), "after a restart: {}", users());
    rabbit.service().stop().unwrap();
    rabbit.service().start_with_setup().unwrap();
    assert!(users().contains("app"), "after a setup again: {}", users());
    b.shutdown().unwrap();
}
