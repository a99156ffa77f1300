//! The reminders scenario end to end (examples/reminders): an email due in 30 days does not
//! go out after 29 days of time travel and does after 31, with its link, and the app logs
//! the sending. The same bundle as `cargo run --example reminders`.

use std::path::Path;
use std::time::Duration;

use hitchserve::services::Smtp;

use crate::common::PATIENCE;

const DAY: u64 = 86_400;

include!("../../../../examples/reminders/bundle.rs");

fn reminders() -> hitchserve::Bundle {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/reminders");
    reminders_bundle(&project, Smtp::new()).unwrap()
}

#[test]
fn a_reminder_due_in_30_days_is_emailed_after_30_days_and_not_before() {
    let mut b = reminders();
    b.startup().unwrap();
    let app = b.service("App").unwrap();
    let smtp = Smtp::handle(&b, "Smtp").unwrap();
    let cron = b.service("SendDue").unwrap().logs();
    app.subcommand([
        "python3",
        "app.py",
        "add",
        "ann@example.com",
        "30",
        "Call mum",
    ])
    .checked_output()
    .unwrap();

    let mut ran = cron.tail();
    b.time_travel(Duration::from_secs(29 * DAY)).unwrap();
    ran.until(|l| l == "cron: exit 0", PATIENCE).unwrap();
    assert!(smtp.messages().is_empty(), "{:?}", smtp.messages());

    let mut inbox = smtp.service().logs().out().tail();
    b.time_travel(Duration::from_secs(2 * DAY)).unwrap();
    let email = inbox
        .until_json(|m| m["subject"] == "Reminder: Call mum", PATIENCE)
        .unwrap();
    assert_eq!(email["sent_to"][0], "ann@example.com");
    assert_eq!(email["links"][0], "https://reminders.example/r/1");
    app.logs()
        .tail()
        .lines_back(usize::MAX)
        .until(|l| l == "sent reminder 1 to ann@example.com", PATIENCE)
        .unwrap();
    b.shutdown().unwrap();
}
