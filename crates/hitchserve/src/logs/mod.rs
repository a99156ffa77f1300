//! Logs as test evidence: every line every service wrote, and the queries on them.
//!
//! Owns the public query API — [`Logs`] views (a service or the whole bundle, both streams
//! or one), [`Tail`] cursors that wait for lines (`until`, `until_json`, `follow`, `grep`)
//! and JSON parsing — on top of the store (`store`) the line splitter (`split`), the sink
//! that stores and prints (`sink`), live printing (`console`) and the run's `all.log`
//! (`files`). It does not read service pipes (the runtime's supervisor does).
//!
//! Waiting is done by notification, never by polling, and never hangs: a wait ends when
//! its line arrives, its timeout passes, or the service's output ends.
//!
//! A tail also sees a line a service has started but not ended, once the service has been
//! quiet for a moment (a partial line: a prompt such as `Password: `), and never hands out
//! the same bytes twice: after a partial, it hands out only the rest of that line. Stored
//! lines, queries on them and readiness only ever see whole lines.

pub(crate) mod console;
pub(crate) mod files;
mod sink;
mod split;
mod store;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

pub(crate) use sink::Sink;
pub(crate) use split::{End, LineSplitter};
pub(crate) use store::LogStore;

/// Figures about the log store, from [`Bundle::log_stats`](crate::Bundle::log_stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Lines stored (every service and the bundle's own).
    pub lines: u64,
    /// Bytes of line storage in memory now.
    pub bytes_in_memory: usize,
    /// The limit set by [`Bundle::log_memory_limit`](crate::Bundle::log_memory_limit).
    pub memory_limit: usize,
    /// The most bytes of line storage there have been in memory at once. It can pass the
    /// limit by what the log writer has not yet put on disk.
    pub peak_bytes_in_memory: usize,
    /// Lines not written to the run's `all.log` because it failed (a full disk, the run
    /// directory deleted); 0 while all is well.
    pub lines_not_written: u64,
    /// Bytes of those lines (without labels).
    pub bytes_not_written: u64,
    /// Of those, lines also dropped from memory, past the memory limit: queries show them
    /// as lost ([`LogLine::is_lost`]).
    pub lines_lost: u64,
    /// Bytes of the lost lines.
    pub bytes_lost: u64,
}

impl LogStats {
    pub(crate) fn of(store: &LogStore) -> LogStats {
        let (lines, bytes_in_memory, memory_limit, losses) = store.stats();
        LogStats {
            lines,
            bytes_in_memory,
            memory_limit,
            peak_bytes_in_memory: losses.peak,
            lines_not_written: losses.unwritten_lines,
            bytes_not_written: losses.unwritten_bytes,
            lines_lost: losses.lost_lines,
            bytes_lost: losses.lost_bytes,
        }
    }
}

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
}

impl Source {
    pub(crate) fn new(
        id: u16,
        service: Option<usize>,
        name: &str,
        part: Part,
        stream: Stream,
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
    data: Arc<Vec<u8>>,
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
        data: Arc<Vec<u8>>,
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

    /// The start of a line that has not ended yet, as a tail shows it.
    pub(crate) fn partial(p: &store::Partial, skip: usize) -> LogLine {
        let skip = skip.min(p.bytes.len());
        let mut line = LogLine::new(
            p.from_seq,
            Arc::clone(&p.source),
            Arc::clone(&p.bytes),
            skip as u32,
            (p.bytes.len() - skip) as u32,
            false,
            p.time,
        );
        line.shape = Shape::Partial;
        line
    }

    /// What is left of this line after its first `skip` bytes, which a tail handed out
    /// as a partial line before.
    fn rest_after(mut self, skip: usize) -> LogLine {
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
    /// (see [`LogLine::is_rest`]). [`Logs`] queries never return partial lines. Its `seq`
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

    /// When the bundle read it.
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
}

impl Filter {
    pub(crate) fn service(service: Option<usize>) -> Filter {
        Filter {
            service,
            stdout: true,
            stderr: true,
            part: None,
        }
    }

    pub(crate) fn matches(&self, src: &Source) -> bool {
        if self.service.is_some() && src.service != self.service {
            return false;
        }
        if self.part.is_some_and(|p| p != src.part) {
            return false;
        }
        match src.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        }
    }
}

/// A view of stored log lines: of one service or the whole bundle, both streams or one.
///
/// Cheap to clone; every query reads the store as it is at that moment.
///
/// ```no_run
/// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
/// let app = bundle.service("App")?;
/// assert!(app.logs().out().lines().iter().any(|l| l.contains("READY")));
/// let requests = app.logs().json();          // every line that is JSON
/// println!("{}", app.logs().err());          // printed as the console shows it
/// # let _ = requests; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Logs {
    store: Arc<LogStore>,
    filter: Filter,
}

impl Logs {
    pub(crate) fn new(store: Arc<LogStore>, service: Option<usize>) -> Logs {
        Logs {
            store,
            filter: Filter::service(service),
        }
    }

    /// Only standard output (for the bundle view: also the bundle's own log lines).
    pub fn out(&self) -> Logs {
        let mut l = self.clone();
        l.filter.stdout = true;
        l.filter.stderr = false;
        l
    }

    /// Only standard error (for the bundle view: also the bundle's own warnings).
    pub fn err(&self) -> Logs {
        let mut l = self.clone();
        l.filter.stdout = false;
        l.filter.stderr = true;
        l
    }

    /// Only what the setup hook ran (lines labelled `Setup Name` / `Err Setup Name`).
    pub fn setup(&self) -> Logs {
        self.part(Part::Setup)
    }

    /// Only what the poststart hook ran (lines labelled `Post Name` / `Err Post Name`).
    pub fn poststart(&self) -> Logs {
        self.part(Part::Poststart)
    }

    /// Only the service's own process (no hook output).
    pub fn main(&self) -> Logs {
        self.part(Part::Main)
    }

    /// Only lines from this part of the service's life.
    pub fn part(&self, part: Part) -> Logs {
        let mut l = self.clone();
        l.filter.part = Some(part);
        l
    }

    /// The text of every line, oldest first (see [`LogLine::text`]).
    pub fn lines(&self) -> Vec<String> {
        self.entries()
            .iter()
            .map(|l| l.text().into_owned())
            .collect()
    }

    /// Every line with its raw bytes, source and time, oldest first.
    pub fn entries(&self) -> Vec<LogLine> {
        self.store.select(&self.filter, 0, None)
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<LogLine> {
        self.store.last(&self.filter, n)
    }

    /// Lines a service has started but not ended — a prompt waiting without a newline — once
    /// it has been quiet for a moment, oldest first ([`LogLine::is_partial`]). Not among the
    /// stored lines (`entries`, `lines`, `len`) until their newline comes.
    pub fn pending(&self) -> Vec<LogLine> {
        self.store.partial_lines(&self.filter)
    }

    /// How many lines there are now.
    pub fn len(&self) -> usize {
        self.store.count(&self.filter)
    }

    /// True if there are no lines yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lines whose text makes `pred` true, oldest first.
    pub fn grep(&self, mut pred: impl FnMut(&str) -> bool) -> Vec<LogLine> {
        self.entries()
            .into_iter()
            .filter(|l| pred(&l.text()))
            .collect()
    }

    /// Every line that parses as JSON, parsed, in order; other lines are skipped.
    pub fn json(&self) -> Vec<Value> {
        self.entries().iter().filter_map(LogLine::json).collect()
    }

    /// Every line that parses as JSON into a `T`, in order; other lines (not JSON, or JSON
    /// of another shape) are skipped.
    pub fn json_as<T: DeserializeOwned>(&self) -> Vec<T> {
        self.entries()
            .iter()
            .filter_map(|l| serde_json::from_slice(l.bytes()).ok())
            .collect()
    }

    /// A cursor that starts now: it sees only lines that arrive after this call (see
    /// [`Tail::lines_back`] to start earlier), and the start of a line not ended yet
    /// (a partial line, see [`Tail`]) even if it was written before.
    pub fn tail(&self) -> Tail {
        Tail {
            pos: self.store.len(),
            logs: self.clone(),
            taken: Vec::new(),
        }
    }

    /// Which service and streams this view covers, in words, for error messages.
    fn describe(&self) -> String {
        let who = match self.filter.service {
            Some(s) => self
                .store
                .service_name(s)
                .map_or_else(|| "the service".to_owned(), |n| format!("`{n}`")),
            None => "the bundle".to_owned(),
        };
        match (self.filter.stdout, self.filter.stderr) {
            (true, false) => format!("{who}'s stdout"),
            (false, true) => format!("{who}'s stderr"),
            _ => format!("{who}'s logs"),
        }
    }
}

impl fmt::Display for Logs {
    /// Every line in the console format, one per line, labels aligned.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries();
        let width = entries.iter().map(|l| l.label().len()).max().unwrap_or(0);
        for line in entries {
            writeln!(f, "{line:width$}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logs")
            .field("filter", &self.filter)
            .field("len", &self.len())
            .finish()
    }
}

/// A cursor over a [`Logs`] view that waits for lines as they arrive.
///
/// A line is consumed once the cursor has looked at it: `until` moves past the line it
/// returns (and every line before it), so the next wait starts after it.
///
/// A line a service has started but not ended — a prompt such as `Password: `, written
/// without a newline — is handed out as a partial line ([`LogLine::is_partial`]) once the
/// service has written nothing more for a moment (about 50 ms), and only after every
/// stored line before it. A partial line that does not match is looked at again as it
/// grows and, once it ends, as the whole line. A partial line the tail hands out (`until`
/// returns it, `follow` yields it) is never handed out again: for that line the tail then
/// gives only the rest, the bytes after the partial up to the newline
/// ([`LogLine::is_rest`]; empty if the line ended right there), as a terminal would show
/// it. Stored lines (`Logs::lines`, `entries`, `len`, `all.log`) hold the whole line, once,
/// and readiness checks only ever see whole lines.
///
/// ```no_run
/// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
/// use std::time::Duration;
/// let login = bundle.service("Login")?;
/// let mut tail = login.logs().out().tail();
/// let prompt = tail.until(|l| l.starts_with("Password:"), Duration::from_secs(10))?;
/// assert!(prompt.is_partial()); // "Password: ", no newline yet
/// // ... let the service go on; it ends the line with "accepted" ...
/// let rest = tail.next_line(Duration::from_secs(10))?;
/// assert_eq!((rest.text(), rest.is_rest()), ("accepted".into(), true));
/// assert!(login.logs().lines().contains(&"Password: accepted".to_owned()));
/// # Ok(()) }
/// ```
///
/// ```no_run
/// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
/// use std::time::Duration;
/// let smtp = bundle.service("Smtp")?;
/// let mut tail = smtp.logs().out().tail();
/// // ... make the app send an email ...
/// let email = tail.until_json(|m| m["subject"] == "Reminder", Duration::from_secs(10))?;
/// assert_eq!(email["sent_to"][0], "you@example.com");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tail {
    logs: Logs,
    pos: u64,
    /// Starts of lines handed out as partial lines whose end has not been looked at yet.
    taken: Vec<Taken>,
}

/// A partial line a tail handed out: `len` bytes that start the first line of `source`
/// stored at or after `from_seq`.
#[derive(Clone, Copy, Debug)]
struct Taken {
    source: u16,
    from_seq: u64,
    len: usize,
}

/// `line`, or what is left of it once the start `taken` records is cut (which is then
/// forgotten).
fn rest_of(taken: &mut Vec<Taken>, line: LogLine) -> LogLine {
    if taken.is_empty() {
        return line;
    }
    let source = line.source().id;
    match taken
        .iter()
        .position(|t| t.source == source && line.seq() >= t.from_seq)
    {
        Some(i) => line.rest_after(taken.swap_remove(i).len),
        None => line,
    }
}

/// The part of partial `p` not handed out yet (`None` if nothing new); with `take`,
/// recorded as handed out.
fn unseen_part(taken: &mut Vec<Taken>, p: &store::Partial, take: bool) -> Option<LogLine> {
    let source = p.source.id;
    // A start taken of an earlier line whose end was looked at is gone already, so one of
    // this source is this line's.
    let i = taken.iter().position(|t| t.source == source);
    let skip = i.map_or(0, |i| taken[i].len);
    if skip >= p.bytes.len() {
        return None;
    }
    if take {
        let t = Taken {
            source,
            from_seq: p.from_seq,
            len: p.bytes.len(),
        };
        match i {
            Some(i) => taken[i] = t,
            None => taken.push(t),
        }
    }
    Some(LogLine::partial(p, skip))
}

impl Tail {
    /// Start `n` matching lines earlier than where the tail is now.
    pub fn lines_back(mut self, n: usize) -> Tail {
        self.pos = self.logs.store.back_from(&self.logs.filter, self.pos, n);
        self
    }

    /// Wait for the next line whose text makes `pred` true, up to `timeout`. Once the
    /// stored lines are looked at, the partial lines (see [`Tail`]) are too.
    ///
    /// Fails at once, never hangs, if the service's output ends (it exited) or the bundle
    /// shuts down while waiting; the error carries the last lines of the view.
    pub fn until(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<LogLine> {
        self.wait(
            |line| pred(&line.text()).then(|| line.clone()),
            timeout,
            "a matching line",
        )
    }

    /// Wait for the next line that is JSON and makes `pred` true; returns the value.
    /// Lines that are not JSON are skipped.
    pub fn until_json(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        self.wait(
            |line| line.json().filter(|v| pred(v)),
            timeout,
            "a matching JSON line",
        )
    }

    /// The next line, whatever it is, waiting up to `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Result<LogLine> {
        self.until(|_| true, timeout)
    }

    /// The stored lines after the cursor that make `pred` true, without waiting or moving
    /// it (a line whose start the tail handed out as a partial: its rest).
    pub fn grep(&self, mut pred: impl FnMut(&str) -> bool) -> Vec<LogLine> {
        let mut taken = self.taken.clone();
        self.logs
            .store
            .select(&self.logs.filter, self.pos, None)
            .into_iter()
            .map(|l| rest_of(&mut taken, l))
            .filter(|l| pred(&l.text()))
            .collect()
    }

    /// A blocking iterator over lines as they arrive; it ends when the service's output
    /// ends (or the bundle stops). A line that stays unfinished for a moment comes in two
    /// parts: the partial line, then its rest (see [`Tail`]). The seed's `tail.follow(lines_back=2)` is
    /// `logs.tail().lines_back(2).follow()`. A follow of the whole bundle's logs ends only
    /// when the bundle stops, so run it on another thread than the one that stops it.
    pub fn follow(self) -> Follow {
        Follow {
            tail: self,
            pending: std::collections::VecDeque::new(),
            seen: 0,
        }
    }

    fn wait<T>(
        &mut self,
        mut found: impl FnMut(&LogLine) -> Option<T>,
        timeout: Duration,
        what: &str,
    ) -> Result<T> {
        let deadline = Instant::now().checked_add(timeout);
        let mut first = true;
        // Partials this wait has looked at: each is looked at again only once it changes.
        let mut seen = 0;
        loop {
            let mut pos = self.pos;
            // Lines already there are always looked at, even with a zero timeout.
            let batch =
                if !std::mem::take(&mut first) && deadline.is_some_and(|d| Instant::now() >= d) {
                    // A backlog of lines must not stretch the timeout.
                    store::Batch::TimedOut
                } else {
                    self.logs
                        .store
                        .next_batch(&self.logs.filter, &mut pos, &mut seen, deadline)
                };
            match batch {
                store::Batch::Lines(lines) => {
                    for line in lines {
                        let line = rest_of(&mut self.taken, line);
                        if let Some(hit) = found(&line) {
                            self.pos = line.seq() + 1;
                            return Ok(hit);
                        }
                    }
                    self.pos = pos;
                }
                store::Batch::Partials(partials) => {
                    for p in &partials {
                        let Some(line) = unseen_part(&mut self.taken, p, false) else {
                            continue;
                        };
                        if let Some(hit) = found(&line) {
                            unseen_part(&mut self.taken, p, true);
                            return Ok(hit);
                        }
                    }
                }
                store::Batch::TimedOut => {
                    return Err(Error::WaitTimeout {
                        what: format!("{what} in {}", self.logs.describe()),
                        timeout,
                        last_lines: self.last_lines(),
                    })
                }
                store::Batch::Ended => {
                    return Err(Error::EndedWhileWaiting {
                        what: format!("{what} in {}", self.logs.describe()),
                        last_lines: self.last_lines(),
                    })
                }
            }
        }
    }

    fn last_lines(&self) -> Vec<String> {
        last_lines(&self.logs.store, &self.logs.filter, 20, false)
    }
}

/// The last `n` lines of `filter` in the console format (with `pad`, labels padded alike),
/// then the lines its sources have started but not ended, so that an error shows a service
/// stuck at a prompt.
pub(crate) fn last_lines(store: &LogStore, filter: &Filter, n: usize, pad: bool) -> Vec<String> {
    let lines = store.last(filter, n);
    let partials = store.partial_lines(filter);
    let all = lines.iter().chain(&partials);
    let width = if pad {
        all.clone().map(|l| l.label().len()).max().unwrap_or(0)
    } else {
        0
    };
    let whole = lines.iter().map(|l| format!("{l:width$}"));
    let started = partials
        .iter()
        .map(|l| format!("{l:width$} [hitchserve: no newline yet]"));
    whole.chain(started).collect()
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tail")
            .field("filter", &self.logs.filter)
            .field("pos", &self.pos)
            .finish()
    }
}

/// Lines as they arrive, from [`Tail::follow`]. Blocks in `next` until a line arrives;
/// ends when the service's output ends or the bundle stops.
pub struct Follow {
    tail: Tail,
    pending: std::collections::VecDeque<LogLine>,
    /// Stamp of the last partial looked at.
    seen: u64,
}

impl Follow {
    /// Print every line as the console does (`[Err Name] line`) until the output ends: a
    /// debugging aid that works even in interactive mode.
    pub fn print(self) {
        for line in self {
            println!("{line}");
        }
    }
}

impl Iterator for Follow {
    type Item = LogLine;

    fn next(&mut self) -> Option<LogLine> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            let t = &mut self.tail;
            let taken = &mut t.taken;
            match t
                .logs
                .store
                .next_batch(&t.logs.filter, &mut t.pos, &mut self.seen, None)
            {
                store::Batch::Lines(lines) => self
                    .pending
                    .extend(lines.into_iter().map(|l| rest_of(taken, l))),
                store::Batch::Partials(partials) => self
                    .pending
                    .extend(partials.iter().filter_map(|p| unseen_part(taken, p, true))),
                store::Batch::Ended | store::Batch::TimedOut => return None,
            }
        }
    }
}

impl fmt::Debug for Follow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follow").field("tail", &self.tail).finish()
    }
}
