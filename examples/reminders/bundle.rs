// The reminders bundle, shared by `crates/hitchserve/examples/reminders.rs` and the
// integration test `reminders.rs` (each `include!`s it): the app, the mock SMTP server,
// and a cron that runs `send-due` every 5 minutes of fake time.

/// The reminders bundle for `project` (examples/reminders), with this SMTP mock.
fn reminders_bundle(
    project: &std::path::Path,
    smtp: hitchserve::services::Smtp,
) -> hitchserve::Result<hitchserve::Bundle> {
    use hitchserve::{services::Cron, Ready, Service};
    let mut bundle = hitchserve::Bundle::new(project)
        .startup_timeout(std::time::Duration::from_secs(30));
    let env = [
        ("REMINDERS_DB", "{run}/reminders.sqlite"),
        ("SMTP_PORT", "{Smtp.port.smtp}"),
    ];
    bundle.add("Smtp", smtp.service())?;
    bundle.add(
        "App",
        Service::new(["python3", "-u", "app.py", "serve"])
            .port("http")
            .env("APP_PORT", "{port.http}")
            .envs(env)
            .ready(Ready::all([
                Ready::line_contains("READY"),
                Ready::tcp_addr("127.0.0.1:{port.http}"),
            ]))
            .needs(["Smtp"]),
    )?;
    bundle.add(
        "SendDue",
        Cron::every(std::time::Duration::from_secs(300), ["python3", "app.py", "send-due"])
            .service()
            .env("APP_PORT", "{App.port.http}")
            .envs(env)
            .needs(["App"]),
    )?;
    Ok(bundle)
}
