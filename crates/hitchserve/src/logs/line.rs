//! One log line and where it came from: `LogLine`, `Stream`, `Part`, the `Source` a line is
//! stored under, and the `Filter` a view selects lines with.
//!
//! Owns how a line reads (text, bytes, JSON, label, the console format) and which lines a
//! filter matches. Lines are made only by the store.

use crate::logs::block::Block;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Which output of a service (or of the bundle itself) a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stream {
    /// The service's standard output (for the bundle: its log lines).
    Stdout,
    /// The service's standard error (for the bundle: its warnings).
    Stderr,
}

impl Stream {
    /// The label prefix for a service's lines on this stream, e.g. `Err ` for stderr.
    fn prefix(self) -> &'static str {
        match self {
            Stream::Stdout => "",
            Stream::Stderr => "Err ",
        }
    }
}

/// Which part of a service's life a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Part {
    /// Its main process (and whatever it started).
    Main,
    /// Its setup hook, before it started (labelled `Setup Name`).
    Setup,
    /// Its poststart hook, after it was ready (labelled `Post Name`).
    Poststart,
}

impl Part {
    fn prefix(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Setup => "Setup ",
            Part::Poststart => "Post ",
        }
    }
}

/// Where a line came from: a service (or the bundle), a part of its life and a stream.
/// One per combination, shared by its lines. A new kind of source is one more `Part`.
#[derive(Debug)]
pub(crate) struct Source {
    /// Index in the store's source table.
    pub id: u16,
    /// Index of the service in the bundle; `None` for the bundle's own lines.
    pub service: Option<usize>,
    /// The service name, or `Hitch`.
    pub name: String,
    pub part: Part,
    pub stream: Stream,
    /// What the console shows between the brackets, e.g. `Err Setup Postgres`.
    pub label: String,
    /// Which start of the service wrote through it (1 for the first; 0 for the bundle's own).
    pub incarnation: u32,
}

impl Source {
    pub(crate) fn new(
        id: u16,
        service: Option<usize>,
        name: &str,
        part: Part,
        stream: Stream,
        incarnation: u32,
    ) -> Source {
        let label = match service {
            Some(_) => format!("{}{}{name}", stream.prefix(), part.prefix()),
            None => name.to_owned(),
        };
        Source {
            id,
            service,
            name: name.to_owned(),
            part,
            stream,
            label,
            incarnation,
        }
    }

    /// True for the bundle's own warnings.
    pub(crate) fn is_warning(&self) -> bool {
        self.service.is_none() && self.stream == Stream::Stderr
    }
}

/// One line of output, exactly as written (without its newline). Cheap to clone: the
/// bytes are shared with the store.
#[derive(Clone)]
pub struct LogLine {
    seq: u64,
    source: Arc<Source>,
    data: Arc<Block>,
    start: u32,
    len: u32,
    newline: bool,
    time: u64,
    lost: bool,
    shape: Shape,
}

/// Which part of a line a `LogLine` holds: tails may hand out a line in two parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Whole,
    /// The start of a line not ended yet.
    Partial,
    /// The bytes of a line after the partial the same tail handed out before.
    Rest,
}

impl LogLine {
    pub(crate) fn new(
        seq: u64,
        source: Arc<Source>,
        data: Arc<Block>,
        start: u32,
        len: u32,
        newline: bool,
        time: u64,
    ) -> LogLine {
        LogLine {
            seq,
            source,
            data,
            start,
            len,
            newline,
            time,
            lost: false,
            shape: Shape::Whole,
        }
    }

    /// Make this line stand for another whole line (a waiting tail walks a batch with one
    /// line it moves along, so a line it only looks at costs no reference counting).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn rebind(
        &mut self,
        seq: u64,
        source: &Arc<Source>,
        data: &Arc<Block>,
        start: u32,
        len: u32,
        newline: bool,
        time: u64,
    ) {
        if !Arc::ptr_eq(&self.source, source) {
            self.source = Arc::clone(source);
        }
        if !Arc::ptr_eq(&self.data, data) {
            self.data = Arc::clone(data);
        }
        self.seq = seq;
        self.start = start;
        self.len = len;
        self.newline = newline;
        self.time = time;
        self.lost = false;
        self.shape = Shape::Whole;
    }

    /// The start of a line that has not ended yet (`bytes`, from its `skip`th on), as a
    /// tail shows it.
    pub(crate) fn partial(
        seq: u64,
        source: Arc<Source>,
        bytes: Arc<Block>,
        skip: usize,
        time: u64,
    ) -> LogLine {
        let skip = skip.min(bytes.len());
        let len = (bytes.len() - skip) as u32;
        let mut line = LogLine::new(seq, source, bytes, skip as u32, len, false, time);
        line.shape = Shape::Partial;
        line
    }

    /// What is left of this line after its first `skip` bytes, which a tail handed out
    /// as a partial line before.
    pub(super) fn rest_after(mut self, skip: usize) -> LogLine {
        if self.lost {
            // Its text is a note, not its bytes: nothing to cut.
            return self;
        }
        let skip = (skip as u32).min(self.len);
        self.start += skip;
        self.len -= skip;
        self.shape = Shape::Rest;
        self
    }

    /// This line stands for one that is gone: its text says why instead of what it was.
    pub(crate) fn into_lost(mut self) -> LogLine {
        self.lost = true;
        self
    }

    /// True if the line is gone (the run's `all.log` could not be written and the log
    /// memory limit was reached): its seq, source and time are right, and its text is a note
    /// saying so (`[hitchserve: this line (N bytes) is lost: ...]`), never the line's bytes.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Position in the bundle's arrival order (0-based, across all services).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The service that wrote it, or `"Hitch"` for the bundle's own lines.
    pub fn service(&self) -> &str {
        &self.source.name
    }

    /// Whether the bundle itself logged it (`Bundle::log` / `Bundle::warn` and status lines).
    pub fn is_bundle_message(&self) -> bool {
        self.source.service.is_none()
    }

    /// Which stream it came from.
    pub fn stream(&self) -> Stream {
        self.source.stream
    }

    /// Which part of the service's life wrote it (main process, setup or poststart hook).
    pub fn part(&self) -> Part {
        self.source.part
    }

    /// Which start of its service wrote it: 1 for the first, 2 after the first restart
    /// (see [`ServiceHandle::restart`](crate::ServiceHandle::restart)), and so on; 0 for the
    /// bundle's own lines.
    pub fn incarnation(&self) -> u32 {
        self.source.incarnation
    }

    /// The raw bytes, without the newline; may be invalid UTF-8 and may end in `\r`.
    pub fn bytes(&self) -> &[u8] {
        let start = self.start as usize;
        self.data
            .get(start..start + self.len as usize)
            .unwrap_or_default()
    }

    /// The text: invalid UTF-8 replaced by U+FFFD and, from a line that ended with `\r\n`,
    /// the `\r` removed (a `\r` before no newline — a partial line's progress counter, say —
    /// is kept).
    pub fn text(&self) -> Cow<'_, str> {
        let b = self.bytes();
        let b = if self.newline {
            b.strip_suffix(b"\r").unwrap_or(b)
        } else {
            b
        };
        // `from_utf8` is much faster than the lossy walk for the usual, valid, line.
        match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(b),
        }
    }

    /// The line parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(self.bytes()).ok()
    }

    /// False for a last line that ended without a newline, and for a partial line.
    pub fn had_newline(&self) -> bool {
        self.newline
    }

    /// True if this is the start of a line that has not ended yet: a tail hands one out
    /// when the service has written no more for a moment (about 50 ms) after it, as a
    /// prompt such as `Password: ` does. The same tail then hands out only what follows
    /// (see [`LogLine::is_rest`]). [`Logs`](crate::Logs) queries never return partial lines. Its `seq`
    /// is the lowest the whole line can get.
    pub fn is_partial(&self) -> bool {
        self.shape == Shape::Partial
    }

    /// True if this is the rest of a line whose start the same tail handed out before as a
    /// partial line: only the bytes after that start (maybe none, if the line ended right
    /// there). `seq` and `time` are the whole line's.
    pub fn is_rest(&self) -> bool {
        self.shape == Shape::Rest
    }

    /// When the bundle read it. For a line moved out of memory to `all.log` (past
    /// [`Bundle::log_memory_limit`](crate::Bundle::log_memory_limit)): when the bundle read the
    /// first of the stretch of lines its service wrote before it (within one block of lines).
    pub fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.time)
    }

    pub(crate) fn label(&self) -> &str {
        &self.source.label
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }
}

impl fmt::Display for LogLine {
    /// The console format without colour: `[Err Django] text`; a width pads the label.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = f.width().unwrap_or(0);
        let warning = if self.source.is_warning() {
            "WARNING: "
        } else {
            ""
        };
        write!(f, "[{:>width$}] {warning}{}", self.label(), self.text())
    }
}

impl fmt::Debug for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLine")
            .field("seq", &self.seq)
            .field("label", &self.label())
            .field("text", &self.text())
            .finish()
    }
}

/// Which lines a `Logs` handle sees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Filter {
    /// `None`: every service and the bundle's own lines.
    pub service: Option<usize>,
    pub stdout: bool,
    pub stderr: bool,
    /// `None`: every part.
    pub part: Option<Part>,
    /// Only lines of this start of the service or later (0: of every start).
    pub from_start: u32,
}

impl Filter {
    pub(crate) fn service(service: Option<usize>) -> Filter {
        Filter {
            service,
            stdout: true,
            stderr: true,
            part: None,
            from_start: 0,
        }
    }

    pub(crate) fn matches(&self, src: &Source) -> bool {
        if self.service.is_some() && src.service != self.service {
            return false;
        }
        if self.part.is_some_and(|p| p != src.part) || src.incarnation < self.from_start {
            return false;
        }
        match src.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        }
    }
}
