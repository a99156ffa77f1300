//! The binary, spoken to over a real socket: it prints its ready line only once bound, and
//! one JSON line per message.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// Start the binary on a free port; its stdout and the address it listens on.
fn start() -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    String,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hitchsmtp"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("hitchsmtp: listening on ")
        .unwrap()
        .to_owned();
    (child, out, addr)
}

#[test]
fn a_raw_smtp_conversation_becomes_a_json_line() {
    let (mut child, mut out, addr) = start();
    let mut line = String::new();
    // Bound before it said so: connecting works at once.
    let stream = TcpStream::connect(&addr).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut reply = || {
        let mut r = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            r.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return r;
            }
        }
    };
    assert!(reply().starts_with("220"));
    for (cmd, code) in [
        ("EHLO test", "250"),
        ("MAIL FROM:<a@example.com>", "250"),
        ("RCPT TO:<b@example.com>", "250"),
        ("RCPT TO:<451-mailbox-busy@smtperrors.com>", "451"),
        ("DATA", "354"),
    ] {
        write!(w, "{cmd}\r\n").unwrap();
        let r = reply();
        assert!(r.starts_with(code), "{cmd}: {r}");
    }
    write!(w, "Subject: Hello\r\nFrom: a@example.com\r\n\r\n..dotted\r\nSee http://example.org/x\r\n.\r\n").unwrap();
    assert!(reply().starts_with("250"));
    write!(w, "QUIT\r\n").unwrap();
    assert!(reply().starts_with("221"));
    line.clear();
    out.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["subject"], "Hello");
    assert_eq!(v["sent_to"], serde_json::json!(["b@example.com"]));
    assert!(v["payload"].as_str().unwrap().starts_with(".dotted"));
    assert_eq!(v["links"][0], "http://example.org/x");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_client_that_hangs_up_mid_message_sends_nothing() {
    let (mut child, mut out, addr) = start();
    let mut line = String::new();
    {
        let mut w = TcpStream::connect(&addr).unwrap();
        write!(
            w,
            "HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: cut\r\n\r\nhalf"
        )
        .unwrap();
    }
    // A complete message afterwards is the first (and only) line printed.
    let mut w = TcpStream::connect(&addr).unwrap();
    write!(w, "HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: whole\r\n\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["subject"], "whole");
    let _ = child.kill();
    let _ = child.wait();
}

/// Any local user can reach the port: a line without end, or a message without end, is
/// refused and its connection closed (the mock's memory grew with it), and the mock goes
/// on serving others.
#[test]
fn endless_lines_and_messages_are_refused_and_the_mock_goes_on() {
    let (mut child, mut out, addr) = start();
    let read_reply = |reader: &mut BufReader<TcpStream>| {
        let mut r = String::new();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).unwrap() == 0 {
                return r;
            }
            r.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return r;
            }
        }
    };
    // A new conversation, up to the message's data.
    let at_data = |read_reply: &dyn Fn(&mut BufReader<TcpStream>) -> String| {
        let stream = TcpStream::connect(&addr).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        assert!(read_reply(&mut reader).starts_with("220"));
        for cmd in [
            "HELO t",
            "MAIL FROM:<a@example.com>",
            "RCPT TO:<b@example.com>",
            "DATA",
        ] {
            write!(w, "{cmd}\r\n").unwrap();
            read_reply(&mut reader);
        }
        (reader, w)
    };
    // A command line of 2 MiB without a newline.
    let stream = TcpStream::connect(&addr).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    assert!(read_reply(&mut reader).starts_with("220"));
    // The mock may close before all is sent: a write error then is fine.
    let _ = w.write_all(&vec![b'x'; 2 * 1024 * 1024]);
    assert!(read_reply(&mut reader).starts_with("500"));
    assert_eq!(read_reply(&mut reader), "", "the connection is closed");

    // A message of 40 MiB in short lines.
    let (mut reader, mut w) = at_data(&read_reply);
    let line = format!("{}\r\n", "y".repeat(1000));
    for _ in 0..(40 * 1024) {
        if w.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    assert!(read_reply(&mut reader).starts_with("552"));

    // Someone else's mail still goes through.
    let (mut reader, mut w) = at_data(&read_reply);
    write!(w, "Subject: Fine\r\n\r\nok\r\n.\r\n").unwrap();
    assert!(read_reply(&mut reader).starts_with("250"));
    let mut json = String::new();
    out.read_line(&mut json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["subject"], "Fine");
    let _ = child.kill();
    let _ = child.wait();
}
