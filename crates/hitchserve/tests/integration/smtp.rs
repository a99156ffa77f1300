//! The SMTP mock, with a real client (Python's smtplib run as a sub-command).

use std::path::{Path, PathBuf};

use hitchserve::services::Smtp;
use hitchserve::Bundle;

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

/// Where this test binary was built, as a downstream crate's tests would be: a copy of it
/// (a hard link where possible) in `<project>/target/debug/deps`, so no `hitchsmtp` of
/// this workspace sits next to it.
fn downstream_test_binary(p: &Project) -> PathBuf {
    let deps = p.path("target/debug/deps");
    std::fs::create_dir_all(&deps).unwrap();
    let exe = deps.join("downstream-tests");
    let me = std::env::current_exe().unwrap();
    if std::fs::hard_link(&me, &exe).is_err() {
        std::fs::copy(&me, &exe).unwrap();
    }
    exe
}

/// This workspace's mock, to "install" somewhere.
fn built_hitchsmtp() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let bin = me.parent().unwrap().parent().unwrap().join("hitchsmtp");
    assert!(
        bin.is_file(),
        "`{}` is missing: cargo build -p hitchsmtp",
        bin.display()
    );
    bin
}

fn install(bin: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join("hitchsmtp");
    if std::fs::hard_link(bin, &to).is_err() {
        std::fs::copy(bin, &to).unwrap();
    }
}

/// Runs [`helper_smtp_in_a_downstream_crate`] from a downstream crate's test binary with
/// `PATH` holding only the system's directories, `HITCHSMTP` unset and `env` set; returns
/// what it printed.
fn run_downstream(p: &Project, env: &[(&str, &Path)]) -> String {
    for dir in ["/usr/bin", "/bin"] {
        let there = Path::new(dir).join("hitchsmtp");
        assert!(
            !there.exists(),
            "`{}` would be found on PATH",
            there.display()
        );
    }
    let out = std::process::Command::new(downstream_test_binary(p))
        .args([
            "--exact",
            "smtp::helper_smtp_in_a_downstream_crate",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("HITCHSMTP")
        .env_remove("CARGO_HOME")
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", p.path("home"))
        .env("HITCHSERVE_TEST_PROJECT", &p.dir)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
#[ignore = "helper: run by the smtp_from_a_downstream_crate tests"]
fn helper_smtp_in_a_downstream_crate() {
    let project = std::env::var_os("HITCHSERVE_TEST_PROJECT").unwrap();
    let mut b = Bundle::new(project).startup_timeout(PATIENCE);
    b.add("Smtp", Smtp::new().service()).unwrap();
    match b.startup() {
        Ok(()) => {
            let exe = b.service("Smtp").unwrap().process().unwrap().exe().unwrap();
            println!("SMTP EXE: {}", exe.display());
        }
        Err(e) => println!("SMTP ERROR: {e}"),
    }
}

#[test]
fn smtp_from_a_downstream_crate_without_the_mock_names_the_install_command() {
    let p = Project::new("smtp-downstream-missing");
    let cargo_home = p.path("cargo-home");
    let out = run_downstream(&p, &[("CARGO_HOME", &cargo_home)]);
    let install = format!("`cargo install hitchsmtp@{}`", env!("CARGO_PKG_VERSION"));
    assert!(out.contains("SMTP ERROR: service `Smtp`"), "{out}");
    assert!(out.contains(&install), "{out}");
    assert!(
        out.contains(&format!("{}/bin", cargo_home.display())),
        "{out}"
    );
}

#[test]
fn smtp_from_a_downstream_crate_finds_the_mock_in_cargo_home() {
    let p = Project::new("smtp-downstream-cargo-home");
    let cargo_home = p.path("cargo-home");
    install(&built_hitchsmtp(), &cargo_home.join("bin"));
    let out = run_downstream(&p, &[("CARGO_HOME", &cargo_home)]);
    let expected = format!("SMTP EXE: {}/bin/hitchsmtp", cargo_home.display());
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn smtp_from_a_downstream_crate_finds_the_mock_in_the_default_cargo_bin() {
    let p = Project::new("smtp-downstream-home");
    let bin = p.path("home/.cargo/bin");
    install(&built_hitchsmtp(), &bin);
    let out = run_downstream(&p, &[]);
    assert!(
        out.contains(&format!("SMTP EXE: {}/hitchsmtp", bin.display())),
        "{out}"
    );
}
