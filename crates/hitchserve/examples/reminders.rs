//! The reminders showcase: `cargo run --release --example reminders`.
//!
//! A reminders web app (examples/reminders/app.py), the hitchsmtp mock SMTP server, and a
//! cron that runs `send-due` every 5 minutes of *fake* time. A reminder is made for 30
//! days from now; 29 days later (a time jump) no email has gone; past 30 days it arrives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hitchserve::services::Smtp;

include!("../../../examples/reminders/bundle.rs");

const DAY: u64 = 86_400;
const PATIENCE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/reminders");
    let mut bundle = reminders_bundle(&project, Smtp::new().program(hitchsmtp()?))?;
    bundle.startup()?;

    let app = bundle.service("App")?;
    let smtp = Smtp::handle(&bundle, "Smtp")?;
    let cron = bundle.service("SendDue")?.logs();
    app.subcommand([
        "python3",
        "app.py",
        "add",
        "ann@example.com",
        "30",
        "Call mum",
    ])
    .run()?;

    bundle.time_travel(Duration::from_secs(29 * DAY))?;
    cron.tail().until(|l| l == "cron: exit 0", PATIENCE)?;
    assert!(smtp.messages().is_empty(), "an email went out too early");
    bundle.log("29 days later: nothing sent yet, as it should be");

    let mut inbox = smtp.service().logs().out().tail();
    bundle.time_travel(Duration::from_secs(2 * DAY))?;
    let email = inbox.until_json(|m| m["subject"] == "Reminder: Call mum", PATIENCE)?;
    app.logs()
        .tail()
        .lines_back(usize::MAX)
        .until(|l| l == "sent reminder 1 to ann@example.com", PATIENCE)?;
    bundle.log(format!(
        "31 days later the reminder arrived: to {} with link {}",
        email["sent_to"][0], email["links"][0]
    ));
    bundle.shutdown()?;
    Ok(())
}

/// The mock SMTP server's binary, built first if `cargo run` brought us here without it.
fn hitchsmtp() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?
        .to_path_buf();
    let bin = profile_dir.join("hitchsmtp");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-q", "-p", "hitchsmtp"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        if !build.status()?.success() {
            return Err("could not build hitchsmtp (cargo build -p hitchsmtp)".into());
        }
    }
    Ok(bin)
}
