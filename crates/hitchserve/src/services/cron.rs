//! Cron: run a command every so often of the bundle's **fake** time, so a time jump triggers
//! it — the way the original's reminders example sent due emails.
//!
//! It is a small Python 3 service that reads the (faked) wall clock every 50 ms of real
//! time: a jump past the next due moment runs the command at once (once per jump, not once
//! per interval skipped). Each run's output shows among its log lines, then `exit N`.

use std::time::Duration;

use crate::readiness::Ready;
use crate::service::Service;

const LOOP: &str = r#"
import subprocess, sys, time
interval = float(sys.argv[1])
command = sys.argv[2:]
# The clock is read before the ready line: a jump right after readiness must count.
last = time.time()
print("cron: every %gs of fake time: %s" % (interval, " ".join(command)), flush=True)
while True:
    now = time.time()
    if now < last:
        last = now
    elif now - last >= interval:
        last = now
        print("cron: running", flush=True)
        code = subprocess.run(command).returncode
        print("cron: exit %d" % code, flush=True)
    time.sleep(0.05)
"#;

/// A command run every `interval` of fake time.
///
/// ```no_run
/// use std::time::Duration;
/// use hitchserve::{services::Cron, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("SendDue", Cron::every(Duration::from_secs(300), ["python3", "app.py", "send-due"])
///     .service()
///     .env("DATABASE_URL", "..."))?;
/// bundle.startup()?;
/// bundle.time_travel(Duration::from_secs(30 * 86_400))?; // the command runs now
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Cron {
    interval: Duration,
    argv: Vec<String>,
}

impl Cron {
    /// Run `argv` every `interval` of the bundle's (fake) time.
    pub fn every<I, S>(interval: Duration, argv: I) -> Cron
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cron {
            interval,
            argv: argv.into_iter().map(Into::into).collect(),
        }
    }

    /// The service to add to a bundle (adjust its environment or directory with the
    /// builder, e.g. to match the service whose command it runs).
    pub fn service(self) -> Service {
        let mut argv = vec![
            "python3".to_owned(),
            "-u".to_owned(),
            "-c".to_owned(),
            LOOP.to_owned(),
            format!("{}", self.interval.as_secs_f64()),
        ];
        let command_at = argv.len();
        argv.extend(self.argv);
        let mut service = Service::new(argv).ready(Ready::line_contains("cron: every"));
        // Its command is checked as a service's own program: there, and on its PATH.
        service.runs_too = Some(command_at);
        if self.interval.is_zero() {
            service.defect = Some(
                "its interval is 0: a cron runs its command every so often, more than 0 s \
                 apart (`Cron::every`)"
                    .to_owned(),
            );
        }
        service
    }
}
