//! The SMTP mock, with a real client (Python's smtplib run as a sub-command).

use hitchserve::services::Smtp;

use crate::common::{Project, PATIENCE};

const SEND: &str = r#"
import smtplib, sys
from email.message import EmailMessage
port = int(sys.argv[1])
kind = sys.argv[2]
msg = EmailMessage()
msg["From"] = "Reminder Bot <noreply@localhost>"
msg["To"] = "Ann Example <ann@example.com>"
msg["Subject"] = "Reminder" if kind != "attach" else "Your invoice"
msg.set_content("Remind me about the gig. Details: https://example.com/gig/42")
if kind == "attach":
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="invoice.pdf")
with smtplib.SMTP("127.0.0.1", port) as s:
    if kind == "error":
        try:
            s.sendmail("noreply@localhost", ["550-unknown-user@smtperrors.com"], msg.as_string())
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["550-unknown-user@smtperrors.com"]
            print("refused", code, text.decode())
    else:
        s.send_message(msg)
        print("sent")
"#;

fn started(p: &Project) -> (hitchserve::Bundle, hitchserve::services::SmtpHandle) {
    p.write("send.py", SEND);
    let mut b = p.bundle();
    b.add("Smtp", Smtp::new().service()).unwrap();
    b.startup().unwrap();
    let smtp = Smtp::handle(&b, "Smtp").unwrap();
    (b, smtp)
}

fn send(smtp: &hitchserve::services::SmtpHandle, kind: &str) -> String {
    smtp.service()
        .subcommand(["python3", "send.py"])
        .arg(smtp.port().to_string())
        .arg(kind)
        .checked_output()
        .unwrap()
        .stdout_text()
}

#[test]
fn a_message_arrives_as_json_with_the_originals_fields() {
    let p = Project::new("smtp-plain");
    let (_b, smtp) = started(&p);
    let mut tail = smtp.service().logs().out().tail();
    assert_eq!(send(&smtp, "plain").trim(), "sent");
    let email = tail
        .until_json(|m| m["subject"] == "Reminder", PATIENCE)
        .unwrap();
    assert_eq!(email["sent_from"], "noreply@localhost");
    assert_eq!(email["sent_to"][0], "ann@example.com");
    assert_eq!(email["header_from_name"], "Reminder Bot");
    assert_eq!(email["header_from_email"], "noreply@localhost");
    assert_eq!(email["header_to_email"], "ann@example.com");
    assert_eq!(email["header_to_name"], "Ann Example");
    assert_eq!(email["multipart"], false);
    assert_eq!(email["contenttype"], "text/plain");
    assert!(email["payload"]
        .as_str()
        .unwrap()
        .contains("Remind me about the gig."));
    assert_eq!(email["links"][0], "https://example.com/gig/42");
    assert!(email["date"].is_string());
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn a_multipart_message_with_an_attachment_lists_its_parts() {
    let p = Project::new("smtp-attach");
    let (_b, smtp) = started(&p);
    let mut tail = smtp.service().logs().out().tail();
    send(&smtp, "attach");
    let email = tail
        .until_json(|m| m["subject"] == "Your invoice", PATIENCE)
        .unwrap();
    assert_eq!(email["multipart"], true);
    let parts = email["payload"].as_array().unwrap();
    let pdf = parts
        .iter()
        .find(|p| p["filename"] == "invoice.pdf")
        .unwrap_or_else(|| panic!("{email:#}"));
    assert_eq!(pdf["contenttype"], "application/pdf");
    assert!(parts.iter().any(|p| p["content"]
        .as_str()
        .is_some_and(|c| c.contains("Remind me"))));
    assert_eq!(email["links"][0], "https://example.com/gig/42");
}

#[test]
fn an_address_at_smtperrors_gets_its_canned_error() {
    let p = Project::new("smtp-error");
    let (_b, smtp) = started(&p);
    let out = send(&smtp, "error");
    assert_eq!(out.trim(), "refused 550 unknown user");
    assert!(smtp.messages().is_empty());
}
