//! The control socket's wire format: JSON lines. A client sends one request object on one
//! line; the server answers with one reply object (`{"ok": true, ...}` or `{"ok": false,
//! "error": ...}`) — or, for `logs`, a stream of line objects ended by an `end` object.
//!
//! Owns writing one such line, which the server, the logs stream and `up` (answering each
//! `down`) all do. Invariant: every message is one JSON value followed by a newline.

use std::io::Write;
use std::os::unix::net::UnixStream;

use serde_json::Value;

pub(super) fn reply(conn: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    conn.write_all(format!("{v}\n").as_bytes())
}
