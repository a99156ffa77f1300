//! hitchsmtp: a mock SMTP server for tests. It accepts every message and prints one JSON
//! line per message on stdout (the fields of the original's HitchSMTP: `sent_from`,
//! `sent_to`, `header_from`, `header_to`, `header_from_name`, `header_from_email`,
//! `header_to_name`, `header_to_email`, `subject`, `date`, `contenttype`, `multipart`,
//! `payload`, `links`). A recipient at `smtperrors.com` whose local part starts with an SMTP
//! code gets that error back: `550-unknown-user@smtperrors.com` → `550 unknown user`.
//!
//! Usage: `hitchsmtp [--host 127.0.0.1] [--port 1025]`. It prints
//! `hitchsmtp: listening on HOST:PORT` once the socket is bound (not before).
//!
//! The server is this library's [`run`], so that other programs can carry the mock in
//! themselves (the Python package runs it as `python -m hitchserve.smtp`); the `hitchsmtp`
//! binary is a `main` over it.
//!
//! Bounded, as anything on a port other local users can reach must be: a line longer than
//! `MAX_LINE`, a message bigger than `MAX_MESSAGE` or a connection past `MAX_CONNECTIONS`
//! is refused with an SMTP error and the connection closed (one client sending bytes
//! without a newline grew the mock's memory without end), and a client silent for `IDLE`
//! is let go.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{json, Value};

/// The domain whose recipients get canned errors.
const ERROR_DOMAIN: &str = "smtperrors.com";

/// The longest line taken, newline included (RFC 5321 asks for 1,000 bytes; mail that
/// breaks it, a long unwrapped line, is what a test may well send).
const MAX_LINE: usize = 1024 * 1024;
/// The biggest message taken.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Conversations at once.
const MAX_CONNECTIONS: usize = 64;

/// Run the mock with the command line `args` (without the program name): listen and serve
/// until the process is killed. Returns only on a failure, with the exit code to use (2 for
/// a bad command line, 1 when the address can't be bound), the reason printed on stderr.
///
/// ```no_run
/// std::process::exit(hitchsmtp::run(["--port".to_owned(), "2525".to_owned()]));
/// ```
pub fn run(args: impl IntoIterator<Item = String>) -> i32 {
    let mut host = "127.0.0.1".to_owned();
    let mut port = "1025".to_owned();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--host", Some(v)) => host = v,
            ("--port", Some(v)) => port = v,
            _ => {
                eprintln!("usage: hitchsmtp [--host HOST] [--port PORT]");
                return 2;
            }
        }
    }
    let listener = match TcpListener::bind(format!("{host}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hitchsmtp: cannot listen on {host}:{port}: {e}");
            return 1;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| format!("{host}:{port}"), |a| a.to_string());
    println!("hitchsmtp: listening on {addr}");
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        // `incoming()` never ends; a failed accept (out of descriptors...) is retried.
        if let Ok((mut stream, _)) = listener.accept() {
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::AcqRel);
                let _ = stream.write_all(b"421 Too many connections, try again later\r\n");
                continue;
            }
            let mine = Arc::clone(&open);
            let spawned = std::thread::Builder::new().spawn(move || {
                if let Err(e) = serve(stream) {
                    eprintln!("hitchsmtp: connection ended: {e}");
                }
                mine.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One SMTP conversation.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    out.write_all(b"220 hitchsmtp ESMTP ready\r\n")?;
    let mut raw_line = Vec::new();
    loop {
        raw_line.clear();
        match read_line(&mut input, &mut raw_line)? {
            Line::End => return Ok(()),
            Line::TooLong => return refuse(&mut out, &mut input, "500 Line too long"),
            Line::Read => {}
        }
        let line = String::from_utf8_lossy(&raw_line);
        let command = line.trim_end();
        let upper = command.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-hitchsmtp\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN".into()
        } else if upper.starts_with("HELO") {
            "250 hitchsmtp".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&command[10..]);
            to.clear();
            "250 OK".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&command[8..]);
            match canned_error(&rcpt) {
                Some(error) => error,
                None => {
                    to.push(rcpt);
                    "250 OK".into()
                }
            }
        } else if upper == "DATA" && to.is_empty() {
            "503 Need MAIL FROM and RCPT TO first".into()
        } else if upper == "DATA" {
            out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            // A client that hangs up before the final `.` sent no message.
            let raw = match read_data(&mut input)? {
                Data::Message(raw) => raw,
                Data::End => return Ok(()),
                Data::TooLong => return refuse(&mut out, &mut input, "500 Line too long"),
                Data::TooBig => {
                    return refuse(
                        &mut out,
                        &mut input,
                        "552 Message size exceeds fixed maximum",
                    )
                }
            };
            let message = describe(&raw, &from, &to);
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{message}")?;
            stdout.flush()?;
            to.clear();
            "250 OK: queued".into()
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            "250 OK".into()
        } else if upper == "NOOP" {
            "250 OK".into()
        } else if upper == "QUIT" {
            out.write_all(b"221 Bye\r\n")?;
            return Ok(());
        } else if upper.starts_with("AUTH") {
            // Any credentials do; answer the challenges clients wait for.
            let words: Vec<&str> = upper.split_whitespace().collect();
            let challenges: &[&[u8]] = match words.as_slice() {
                [_, "LOGIN"] => &[b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"],
                [_, "LOGIN", _] => &[b"334 UGFzc3dvcmQ6\r\n"],
                [_, "PLAIN"] => &[b"334 \r\n"],
                _ => &[],
            };
            for challenge in challenges {
                out.write_all(challenge)?;
                let mut answer = Vec::new();
                match read_line(&mut input, &mut answer)? {
                    Line::End => return Ok(()),
                    Line::TooLong => return refuse(&mut out, &mut input, "500 Line too long"),
                    Line::Read => {}
                }
            }
            "235 Authentication successful".into()
        } else if upper.starts_with("VRFY") {
            "252 Cannot VRFY user, but will accept message".into()
        } else if upper == "STARTTLS" {
            "454 TLS not available".into()
        } else {
            "500 Command not recognised".into()
        };
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\r\n")?;
    }
}

/// `<a@b>` or `a@b` (with optional parameters after) → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

/// `550-unknown-user@smtperrors.com` → `550 unknown user`.
fn canned_error(rcpt: &str) -> Option<String> {
    let (local, domain) = rcpt.rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case(ERROR_DOMAIN) {
        return None;
    }
    let (code, text) = local.split_once('-').unwrap_or((local, "error"));
    let valid =
        code.len() == 3 && code.starts_with(['4', '5']) && code.bytes().all(|b| b.is_ascii_digit());
    let code = if valid { code } else { "550" };
    Some(format!("{code} {}", text.replace('-', " ")))
}

/// What reading a line gave.
enum Line {
    Read,
    /// The client hung up.
    End,
    /// No newline within `MAX_LINE` bytes.
    TooLong,
}

/// Read one line (newline included) into `line`, `MAX_LINE` bytes at most.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Line> {
    let n = input.take(MAX_LINE as u64).read_until(b'\n', line)?;
    Ok(match n {
        0 => Line::End,
        _ if line.ends_with(b"\n") => Line::Read,
        MAX_LINE => Line::TooLong,
        // The last bytes before the client hung up, without a newline.
        _ => Line::Read,
    })
}

/// How long a refused client's remaining bytes are read (and dropped) after the refusal,
/// at most.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a client may stay silent before its connection is closed (a place among
/// `MAX_CONNECTIONS` is not held for ever).
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Say `reply` and end the conversation. What the client still sends is read and dropped
/// for a while (`MAX_MESSAGE` bytes, `LINGER` of silence at most): closed with it unread,
/// the socket would answer with a reset, and the client would see that, not the reply.
fn refuse(out: &mut TcpStream, input: &mut impl Read, reply: &str) -> std::io::Result<()> {
    out.write_all(reply.as_bytes())?;
    out.write_all(b"\r\n")?;
    out.shutdown(std::net::Shutdown::Write)?;
    out.set_read_timeout(Some(LINGER))?;
    let until = std::time::Instant::now() + LINGER;
    let mut buf = [0u8; 64 * 1024];
    let mut left = MAX_MESSAGE;
    while left > 0 && std::time::Instant::now() < until {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// What reading a message gave.
enum Data {
    Message(Vec<u8>),
    /// The client hung up before the final `.`: no message.
    End,
    TooLong,
    /// Bigger than `MAX_MESSAGE`.
    TooBig,
}

/// The message lines up to the lone `.`, dot-unstuffed, with CRLF endings.
fn read_data(input: &mut impl BufRead) -> std::io::Result<Data> {
    let mut raw = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(input, &mut line)? {
            Line::End => return Ok(Data::End),
            Line::TooLong => return Ok(Data::TooLong),
            Line::Read => {}
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content == b"." {
            return Ok(Data::Message(raw));
        }
        // RFC 5321 4.5.2: a leading dot was added by the client; take it away.
        raw.extend_from_slice(content.strip_prefix(b".").unwrap_or(content));
        raw.extend_from_slice(b"\r\n");
        if raw.len() > MAX_MESSAGE {
            return Ok(Data::TooBig);
        }
    }
}

fn now_rfc822() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    mail_parser::DateTime::from_timestamp(secs).to_rfc822()
}

fn links(text: &str) -> Vec<String> {
    let re = regex_lite::Regex::new(r#"https?://[^\s<>"')\]]+"#).expect("a valid pattern");
    re.find_iter(text)
        .map(|m| {
            m.as_str()
                .trim_end_matches(['.', ',', ';', ':', '!', '?'])
                .to_owned()
        })
        .collect()
}

/// A body as the original's mock gave it (Python's `smtpd` joined the lines with `\n`, and
/// the line before the final `.` ended the data): `\n` line ends, no newline after the last.
fn as_text(body: &str) -> String {
    let text = body.replace("\r\n", "\n");
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

/// The JSON line for one message.
fn describe(raw: &[u8], from: &str, to: &[String]) -> Value {
    let Some(message) = MessageParser::default().parse(raw) else {
        let text = String::from_utf8_lossy(raw).into_owned();
        return json!({
            "sent_from": from, "sent_to": to, "subject": null, "payload": text,
            "links": links(&text), "multipart": false,
        });
    };
    let first = |a: Option<&mail_parser::Address>| -> (Value, Value) {
        match a.and_then(|a| a.first()) {
            Some(addr) => (json!(addr.name()), json!(addr.address())),
            None => (Value::Null, Value::Null),
        }
    };
    let (from_name, from_email) = first(message.from());
    let (to_name, to_email) = first(message.to());
    let content_type = |ct: Option<&mail_parser::ContentType>| -> String {
        ct.map_or_else(
            || "text/plain".to_owned(),
            |c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub),
                None => c.ctype().to_owned(),
            },
        )
    };
    let multipart = message.parts.len() > 1;
    let mut all_links = Vec::new();
    let payload = if multipart {
        let parts: Vec<Value> = message
            .parts
            .iter()
            .filter(|p| !p.is_multipart())
            .map(|part| {
                let headers: serde_json::Map<String, Value> = part
                    .headers()
                    .iter()
                    .map(|h| {
                        // The header as written (parsed values lose it for structured ones).
                        let raw_value = raw
                            .get(h.offset_start as usize..h.offset_end as usize)
                            .map(|b| String::from_utf8_lossy(b).trim().to_owned());
                        (h.name().to_owned(), json!(raw_value))
                    })
                    .collect();
                let text = part.text_contents().map(str::to_owned);
                let part_links = text.as_deref().map(links).unwrap_or_default();
                all_links.extend(part_links.iter().cloned());
                json!({
                    "contenttype": content_type(part.content_type()),
                    "filename": part.attachment_name(),
                    "headers": headers,
                    "content": text.map_or_else(|| String::from_utf8_lossy(part.contents()).into_owned(), |t| as_text(&t)),
                    "links": part_links,
                })
            })
            .collect();
        Value::Array(parts)
    } else {
        // The body as sent (HTML stays HTML, so its links are found).
        let root = message.root_part();
        let text = root
            .text_contents()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(root.contents()).into_owned());
        all_links = links(&text);
        json!(as_text(&text))
    };
    json!({
        "sent_from": from,
        "sent_to": to,
        "header_from": message.header_raw("From").map(str::trim),
        "header_to": message.header_raw("To").map(str::trim),
        "header_from_name": from_name,
        "header_from_email": from_email,
        "header_to_name": to_name,
        "header_to_email": to_email,
        "subject": message.subject(),
        // As sent (the original's); without one, when it arrived (on the service's clock:
        // fake time too).
        "date": message
            .header_raw("Date")
            .map(|d| d.trim().to_owned())
            .unwrap_or_else(now_rfc822),
        "contenttype": content_type(message.content_type()),
        "multipart": multipart,
        "payload": payload,
        "links": all_links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_errors_come_from_the_local_part() {
        assert_eq!(
            canned_error("550-unknown-user@smtperrors.com").as_deref(),
            Some("550 unknown user")
        );
        assert_eq!(
            canned_error("451-try-later@SMTPERRORS.com").as_deref(),
            Some("451 try later")
        );
        assert_eq!(canned_error("someone@example.com"), None);
    }

    #[test]
    fn a_message_reads_as_the_originals_mock_gave_it() {
        let raw = b"From: webmaster@localhost\r\nTo: <x@example.com>\r\nDate: Tue, 14 Jul 2015 05:59:44 -0000\r\nSubject: Hi\r\n\r\nUser django has given this as an email address.\r\n\r\nTo confirm, go to http://x/\r\n";
        let v = describe(raw, "webmaster@localhost", &["x@example.com".to_owned()]);
        assert_eq!(
            v["payload"],
            "User django has given this as an email address.\n\nTo confirm, go to http://x/"
        );
        assert_eq!(v["date"], "Tue, 14 Jul 2015 05:59:44 -0000");
        assert_eq!(v["header_to"], "<x@example.com>");
        assert_eq!(v["links"][0], "http://x/");
    }

    #[test]
    fn addresses_and_links_are_extracted() {
        assert_eq!(address("<a@b.com> SIZE=100"), "a@b.com");
        assert_eq!(
            links("go to https://x.test/c?d=1, or http://y.test."),
            vec!["https://x.test/c?d=1", "http://y.test"]
        );
    }
}
