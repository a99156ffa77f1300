//! A small bundle: a web server and a worker that needs it. `cargo run --example demo`.

use std::time::Duration;

use hitchserve::{Bundle, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A directory of our own, new (never one another user may have made in /tmp).
    let project = std::env::temp_dir().join(format!("hitchserve-demo-{}", std::process::id()));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&project)?;
    let mut bundle = Bundle::new(&project).startup_timeout(Duration::from_secs(20));
    bundle.add(
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
        .ready_when(|line| line.contains("Serving HTTP")),
    )?;
    bundle.add(
        "Worker",
        Service::new([
            "sh",
            "-c",
            "echo working; echo 'a warning' >&2; echo READY; exec sleep 1000",
        ])
        .ready_when(|line| line == "READY")
        .needs(["Web"]),
    )?;
    bundle.startup()?;
    bundle.log("all services are up");
    let web = bundle.service("Web")?;
    println!("Web's pid: {:?}", web.pid());
    println!(
        "Worker's stderr:\n{}",
        bundle.service("Worker")?.logs().err()
    );
    bundle.shutdown()?;
    Ok(())
}
