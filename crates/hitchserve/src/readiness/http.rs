//! The one HTTP/1.1 exchange behind `Ready::http` (a `GET`) and the WebDriver client of
//! `services::chromium` (`GET`, `POST` with a JSON body, `DELETE`): one request with
//! `Connection: close`, and the response framed as RFC 9112 §6.3 says — no body (1xx, 204,
//! 304), chunked, `Content-Length`, or until the server closes — so callers see the decoded
//! body.
//!
//! It owns the wire format only; its callers decide what a status or body means. Why not
//! a client crate: even `ureq` without TLS brings `ureq-proto`, `http`, `base64`, `log` and
//! `percent-encoding` for a few local requests, so the head is parsed by `httparse` (no
//! dependencies, the parser under hyper) and the framing, a few dozen lines, is here. The
//! invariant: every
//! read is bounded by the one deadline of the probe, so a silent or trickling server ends
//! as "no response within ...", never as a hang or a raw `EAGAIN`.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The most a head may take; a status check needs no more.
const MAX_HEAD: usize = 64 * 1024;
/// Most interim (1xx) responses taken before the final one.
const MAX_INTERIM: usize = 16;
/// Longest chunk size line (size, extensions, spaces).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most of a body a body check reads (a health endpoint answers far less).
const MAX_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 100;

/// What a probe learned from one response.
pub(crate) struct Response {
    pub status: u16,
    /// The decoded body, when asked for.
    pub body: Option<Vec<u8>>,
}

/// A byte source whose reads can be bounded in time (a socket; a slow reader in tests).
pub(crate) trait Source: Read {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Source for std::net::TcpStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// An `http://` URL's parts (the scheme in any case, as URLs have it).
pub(crate) struct Url<'a> {
    /// `user:password` before an `@`, as written (percent-encoded).
    pub credentials: Option<&'a str>,
    /// `host[:port]`.
    pub host: &'a str,
    /// What to ask for: from the first `/` on (`/` if none), without a `#fragment`.
    pub path: String,
}

impl<'a> Url<'a> {
    /// `url`'s parts, if it is an `http://` URL.
    pub(crate) fn parse(url: &'a str) -> Option<Url<'a>> {
        let rest = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(end);
        // A fragment is not sent; a query without a path asks for `/` with it.
        let after = after.split('#').next().unwrap_or_default();
        let path = match after {
            "" => "/".to_owned(),
            q if q.starts_with('?') => format!("/{q}"),
            p => p.to_owned(),
        };
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        Some(Url {
            credentials,
            host,
            path,
        })
    }

    /// The `Authorization` header its credentials make (HTTP basic), if it has any.
    pub(crate) fn authorization(&self) -> Option<String> {
        let decoded = percent_decoded(self.credentials?);
        Some(format!("Authorization: Basic {}\r\n", base64(&decoded)))
    }
}

/// `url` (of any scheme) as messages show it: a password it holds replaced by `***` —
/// also one written with an unencoded `/`, `?` or `#` (`admin:p#ss@host`), which ends the
/// URL's authority early.
pub(crate) fn shown(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|at| at + 3) else {
        return url.into();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = match url[start..end].rfind('@') {
        Some(at) => Some(start + at),
        None => mistyped_credentials(url, start),
    };
    let Some(at) = at else {
        return url.into();
    };
    match url[start..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[at..]).into(),
        None => url.into(),
    }
}

/// Where the `@` ends credentials whose password holds an unencoded `/`, `?` or `#`
/// (`http://admin:p#ss@host/`): `user:` first, then the first `@` of the URL.
fn mistyped_credentials(url: &str, start: usize) -> Option<usize> {
    // An IPv6 host (`[::1]:8080/a@b`) holds colons of its own: no credentials before it.
    if url[start..].starts_with('[') {
        return None;
    }
    let at = start + url[start..].find('@')?;
    let (user, password) = url[start..at].split_once(':')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '?', '#']);
    // `host:port/path@...` (the port maybe empty) is a port and a path with an `@`, not
    // credentials.
    let before_path = password.split(['/', '?', '#']).next().unwrap_or_default();
    let port = before_path.bytes().all(|b| b.is_ascii_digit());
    (plain(user) && !port).then_some(at)
}

/// Why `url`'s credentials can't be sent, if they can't: a password with an unencoded
/// `/`, `?` or `#` (the URL's authority ends there).
pub(crate) fn unencoded_password(url: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    if url[start..end].contains('@') {
        return None;
    }
    mistyped_credentials(url, start)?;
    Some(format!(
        "the password in the URL `{}` holds a `/`, `?` or `#`, which end a URL's host: \
         write them percent-encoded (%2F, %3F, %23)",
        shown(url)
    ))
}

/// `%XX` escapes decoded (a malformed one is kept as written).
fn percent_decoded(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Standard base64 with padding. Written here: one header's worth, not a dependency's.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Send `GET path` on `stream` (with `extra` header lines, each ending in CRLF) and read the
/// answer, all before `deadline`.
pub(crate) fn get(
    stream: &mut (impl Source + Write),
    host: &str,
    path: &str,
    extra: &str,
    want_body: bool,
    deadline: Instant,
    limit: Duration,
) -> Result<Response, String> {
    request(
        stream, "GET", host, path, extra, None, want_body, deadline, limit,
    )
}

/// Send `method path` (with `extra` header lines, and `json` as an `application/json`
/// body, if any) on `stream` and read the answer, all before `deadline`.
#[expect(clippy::too_many_arguments, reason = "one call's parts, each plain")]
pub(crate) fn request(
    stream: &mut (impl Source + Write),
    method: &str,
    host: &str,
    path: &str,
    extra: &str,
    json: Option<&[u8]>,
    want_body: bool,
    deadline: Instant,
    limit: Duration,
) -> Result<Response, String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: hitchserve\r\n{extra}"
    );
    if let Some(body) = json {
        head.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    // One write where it fits: a request split over two segments costs a delayed ACK.
    let mut wire = head.into_bytes();
    wire.extend_from_slice(json.unwrap_or_default());
    stream
        .write_all(&wire)
        .map_err(|e| format!("sending the request failed: {e}"))?;
    read_response(stream, want_body, deadline, limit)
}

/// Read one response (after any interim 1xx ones).
pub(crate) fn read_response(
    source: &mut impl Source,
    want_body: bool,
    deadline: Instant,
    limit: Duration,
) -> Result<Response, String> {
    let mut conn = Conn {
        source,
        buf: Vec::new(),
        pos: 0,
        deadline,
        limit,
    };
    let mut interim = 0;
    loop {
        let head = conn.head()?;
        // 101 switches protocols: there is no further response to wait for.
        if (100..200).contains(&head.status) && head.status != 101 {
            // A server may send a few; one that never stops must not fill memory.
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(format!(
                    "over {MAX_INTERIM} interim (1xx) responses and no final one"
                ));
            }
            conn.discard_read();
            continue;
        }
        if !want_body {
            return Ok(Response {
                status: head.status,
                body: None,
            });
        }
        let body = match head.framing {
            _ if head.status < 200 || head.status == 204 || head.status == 304 => Vec::new(),
            Framing::Chunked => conn.chunked()?,
            Framing::Length(n) => conn.exactly(n)?,
            Framing::UntilClose => conn.until_close()?,
        };
        return Ok(Response {
            status: head.status,
            body: Some(body),
        });
    }
}

enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
}

/// Bytes read so far and where decoding stands in them.
struct Conn<'a, S> {
    source: &'a mut S,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
    limit: Duration,
}

impl<S: Source> Conn<'_, S> {
    /// Read more; `Ok(false)` at the end of the stream.
    fn fill(&mut self) -> Result<bool, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.too_slow());
        }
        self.source
            .set_timeout(left)
            .map_err(|e| format!("can't bound the read: {e}"))?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.source.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A read timeout shows as EAGAIN (WouldBlock) on Unix sockets.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.too_slow())
                }
                Err(e) => return Err(format!("reading the response failed: {e}")),
            }
        }
    }

    fn too_slow(&self) -> String {
        let limit = format!("{:.1} s", self.limit.as_secs_f64());
        if self.buf.is_empty() {
            format!("no response within {limit} (the connection was accepted, then nothing came)")
        } else {
            format!(
                "no complete response within {limit} ({} bytes came)",
                self.buf.len()
            )
        }
    }

    fn closed_early(&self, what: &str) -> String {
        format!(
            "the server closed the connection in the middle of {what} ({} bytes came)",
            self.buf.len()
        )
    }

    fn head(&mut self) -> Result<Head, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf[self.pos..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed.code.unwrap_or(0);
                    let framing = framing(parsed.headers)?;
                    self.pos += len;
                    return Ok(Head { status, framing });
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() - self.pos > MAX_HEAD {
                        return Err(format!("the response head is over {} KiB", MAX_HEAD / 1024));
                    }
                    if !self.fill()? {
                        return Err(if self.buf.is_empty() {
                            "the server closed the connection without answering".to_owned()
                        } else {
                            self.closed_early("the response head")
                        });
                    }
                }
                Err(e) => return Err(format!("not an HTTP response: {e}")),
            }
        }
    }

    /// Forget what has been read (an interim response's head): memory stays bounded.
    fn discard_read(&mut self) {
        self.buf.drain(..self.pos);
        self.pos = 0;
    }

    /// Make at least `n` unread bytes available.
    fn want(&mut self, n: usize, what: &str) -> Result<(), String> {
        while self.buf.len() - self.pos < n {
            if !self.fill()? {
                return Err(self.closed_early(what));
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos;
        self.pos += n;
        &self.buf[start..self.pos]
    }

    fn exactly(&mut self, n: usize) -> Result<Vec<u8>, String> {
        check_size(n)?;
        self.want(n, "the body")?;
        Ok(self.take(n).to_vec())
    }

    fn until_close(&mut self) -> Result<Vec<u8>, String> {
        while self.fill()? {
            check_size(self.buf.len() - self.pos)?;
        }
        let n = self.buf.len() - self.pos;
        Ok(self.take(n).to_vec())
    }

    fn chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.pos..]) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.pos += len;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => {
                        // httparse takes extensions and spaces of any length: a size line
                        // that never ends would be parsed again after every read.
                        if self.buf.len() - self.pos > MAX_CHUNK_LINE {
                            return Err(format!(
                                "a chunk size line over {} KiB",
                                MAX_CHUNK_LINE / 1024
                            ));
                        }
                        if !self.fill()? {
                            return Err(self.closed_early("a chunk size"));
                        }
                    }
                    Err(_) => return Err("a malformed chunk size in a chunked body".to_owned()),
                }
            };
            if size == 0 {
                // Trailers may follow; nothing in them matters to a readiness check.
                return Ok(body);
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            check_size(body.len().saturating_add(size))?;
            self.want(size + 2, "a chunk")?;
            body.extend_from_slice(self.take(size));
            if self.take(2) != b"\r\n" {
                return Err("a chunk of a chunked body does not end in CRLF".to_owned());
            }
        }
    }
}

fn check_size(n: usize) -> Result<(), String> {
    if n > MAX_BODY {
        Err(format!(
            "the body is over {} MiB, more than a body check reads",
            MAX_BODY / (1024 * 1024)
        ))
    } else {
        Ok(())
    }
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, String> {
    let mut length: Option<usize> = None;
    let mut chunked = None;
    for h in headers {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a last coding of `chunked` frames the body (RFC 9112 §6.3).
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| format!("an invalid Content-Length `{value}`"))?;
            if length.is_some_and(|m| m != n) {
                return Err("two different Content-Length headers".to_owned());
            }
            length = Some(n);
        }
    }
    Ok(match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
    })
}

#[cfg(test)]
mod tests {
    //! The framing on byte streams cut into the smallest pieces; the whole probe against
    //! real servers is in tests/integration/readiness.rs.
    use super::*;

    /// Hands out one byte per read, then the end (or, if `hang`, a read timeout).
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        hang: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match self.data.get(self.at) {
                Some(&b) if !out.is_empty() => {
                    out[0] = b;
                    self.at += 1;
                    Ok(1)
                }
                _ if self.hang => Err(io::ErrorKind::WouldBlock.into()),
                _ => Ok(0),
            }
        }
    }

    impl Source for Trickle {
        fn set_timeout(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(data: &str, hang: bool) -> Result<Response, String> {
        let mut t = Trickle {
            data: data.as_bytes().to_vec(),
            at: 0,
            hang,
        };
        let limit = Duration::from_secs(60);
        read_response(&mut t, true, Instant::now() + limit, limit)
    }

    fn body(data: &str, hang: bool) -> String {
        let r = read(data, hang).unwrap();
        String::from_utf8(r.body.unwrap()).unwrap()
    }

    #[test]
    fn a_urls_parts_credentials_and_shown_form() {
        let u = Url::parse("HTTP://us%3Aer:p%40ss@h:8080/a/b?q=1#frag").unwrap();
        assert_eq!(
            (u.credentials, u.host, u.path.as_str()),
            (Some("us%3Aer:p%40ss"), "h:8080", "/a/b?q=1")
        );
        assert_eq!(
            u.authorization().unwrap(),
            format!("Authorization: Basic {}\r\n", base64(b"us:er:p@ss"))
        );
        let u = Url::parse("http://h?q=1").unwrap();
        assert_eq!(
            (u.credentials, u.host, u.path.as_str()),
            (None, "h", "/?q=1")
        );
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert!(Url::parse("https://h/").is_none() && Url::parse("http:/h").is_none());
        assert_eq!(shown("http://admin:s3cret@h/x"), "http://admin:***@h/x");
        assert_eq!(shown("https://admin:s3cret@h"), "https://admin:***@h");
        assert_eq!(shown("http://token@h/x"), "http://token@h/x");
        assert_eq!(shown("http://h/a@b:c"), "http://h/a@b:c");
        // A password with an unencoded `#`, `/` or `?` ends the host early: masked all the
        // same, and refused saying how to write it.
        for url in [
            "http://admin:p#ss@h:1/",
            "http://admin:p/ss@h/",
            "http://admin:s3?cret@h",
        ] {
            assert!(
                shown(url).starts_with("http://admin:***@h"),
                "{}",
                shown(url)
            );
            let why = unencoded_password(url).unwrap();
            assert!(!why.contains("ss@") && !why.contains("cret"), "{why}");
        }
        assert_eq!(unencoded_password("http://h/users/a@b.com"), None);
        assert_eq!(unencoded_password("http://h:8080/users/a@b.com"), None);
        for url in [
            "http://[::1]:8080/users/a@b.com",
            "http://[::1]/a@b",
            "http://h:/users/a@b.com",
        ] {
            assert_eq!(unencoded_password(url), None, "{url}");
            assert_eq!(shown(url), url);
        }
        assert_eq!(
            shown("http://h:8080/users/a@b.com"),
            "http://h:8080/users/a@b.com"
        );
        assert_eq!(unencoded_password("http://admin:pw@h/"), None);
        // RFC 4648's test vectors.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
        assert_eq!(percent_decoded("a%2Fb%zz%4"), b"a/b%zz%4");
    }

    #[test]
    fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
        let wire = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    1;ext=1\r\nO\r\n1\r\nK\r\n0\r\nX-Trailer: t\r\n\r\n";
        assert_eq!(body(wire, true), "OK");
    }

    #[test]
    fn a_content_length_body_ends_without_waiting_for_the_close() {
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKtrailing",
                true
            ),
            "OK"
        );
    }

    #[test]
    fn without_framing_the_body_runs_until_the_close() {
        assert_eq!(body("HTTP/1.0 200 OK\r\n\r\nOK", false), "OK");
    }

    #[test]
    fn interim_responses_are_skipped_and_204_has_no_body() {
        let r = read(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            true,
        )
        .unwrap();
        assert_eq!((r.status, r.body.unwrap().len()), (204, 0));
    }

    #[test]
    fn endless_interim_responses_and_chunk_size_lines_are_refused() {
        let flood = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 5);
        let err = read(&flood, true).err().unwrap();
        assert!(err.contains("interim (1xx) responses"), "{err}");
        let endless = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "x".repeat(MAX_CHUNK_LINE + 10)
        );
        let err = read(&endless, true).err().unwrap();
        assert!(err.contains("chunk size line over"), "{err}");
    }

    #[test]
    fn silence_and_early_close_are_named() {
        let silent = read("", true).err().unwrap();
        assert!(silent.starts_with("no response within 60.0 s"), "{silent}");
        let cut = read("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nOK", false)
            .err()
            .unwrap();
        assert!(
            cut.contains("closed the connection in the middle of the body"),
            "{cut}"
        );
        let bad = read(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false,
        )
        .err()
        .unwrap();
        assert!(bad.contains("malformed chunk size"), "{bad}");
    }
}
