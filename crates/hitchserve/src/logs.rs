//! The log store: every line every service wrote, once, in arrival order, and the queries on it.
//!
//! Owns storage (append-only, lines shared as `Arc`s so queries never copy text), the combined
//! `all.log` in the run directory, and the `Logs` query handle. It does not read pipes
//! (`supervise` does) nor print (`console` does). Invariant: a line's `seq` is its position in
//! arrival order across the whole bundle, and lines are never reordered or dropped.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::logfiles::LogFiles;

/// Which output of a service (or of the bundle itself) a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stream {
    /// The service's standard output.
    Stdout,
    /// The service's standard error.
    Stderr,
}

/// Where a line came from: a service (or the bundle) and a stream. One per pair, shared.
#[derive(Debug)]
pub(crate) struct Source {
    /// Index of the service in the bundle; `None` for the bundle's own lines.
    pub service: Option<usize>,
    /// The service name, or `Hitch`.
    pub name: String,
    pub stream: Stream,
    /// What the console shows between the brackets, e.g. `Err Django`.
    pub label: String,
    /// Console colour index.
    pub colour: usize,
}

impl Source {
    pub(crate) fn new(service: Option<usize>, name: &str, stream: Stream) -> Source {
        let label = match (service, stream) {
            (_, Stream::Stdout) => name.to_owned(),
            (Some(_), Stream::Stderr) => format!("Err {name}"),
            (None, Stream::Stderr) => name.to_owned(),
        };
        Source {
            service,
            name: name.to_owned(),
            stream,
            label,
            colour: service.map_or(usize::MAX, |i| i),
        }
    }

    /// True for the bundle's own warnings.
    pub(crate) fn is_warning(&self) -> bool {
        self.service.is_none() && self.stream == Stream::Stderr
    }
}

/// One line of output, exactly as written (without its newline).
#[derive(Debug)]
pub struct LogLine {
    seq: u64,
    source: Arc<Source>,
    bytes: Box<[u8]>,
    newline: bool,
    time: SystemTime,
}

impl LogLine {
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

    /// The raw bytes, without the newline; may be invalid UTF-8 and may end in `\r`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The text: invalid UTF-8 replaced by U+FFFD and one trailing `\r` removed.
    pub fn text(&self) -> Cow<'_, str> {
        let b = self.bytes.strip_suffix(b"\r").unwrap_or(&self.bytes);
        String::from_utf8_lossy(b)
    }

    /// False only for a last line that ended without a newline.
    pub fn had_newline(&self) -> bool {
        self.newline
    }

    /// When the bundle read it.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    pub(crate) fn label(&self) -> &str {
        &self.source.label
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }
}

impl fmt::Display for LogLine {
    /// The console format without colour: `[Err Django] text`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = f.width().unwrap_or(0);
        if self.source.is_warning() {
            write!(f, "[{:>width$}] WARNING: {}", self.label(), self.text())
        } else {
            write!(f, "[{:>width$}] {}", self.label(), self.text())
        }
    }
}

struct Inner {
    lines: Vec<Arc<LogLine>>,
    files: Option<Arc<LogFiles>>,
    /// Services whose output has ended for good (process exited, pipes drained).
    ended: Vec<usize>,
    /// The bundle has shut down: no line will ever arrive again.
    closed: bool,
}

/// Shared by the bundle, its reader threads and every `Logs` handle.
pub(crate) struct LogStore {
    inner: Mutex<Inner>,
    grown: Condvar,
}

impl LogStore {
    pub(crate) fn new() -> LogStore {
        LogStore {
            inner: Mutex::new(Inner {
                lines: Vec::new(),
                files: None,
                ended: Vec::new(),
                closed: false,
            }),
            grown: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from an allocation failure;
        // the data is append-only and stays consistent, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start writing lines to the run's files; lines stored before now are written first.
    pub(crate) fn attach_files(&self, files: Arc<LogFiles>) {
        let mut inner = self.lock();
        files.lines(inner.lines.clone());
        inner.files = Some(files);
    }

    /// The bundle has stopped: flush and close `all.log`, and end every pending wait.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let files = inner.files.take();
        drop(inner);
        self.grown.notify_all();
        if let Some(files) = files {
            files.close();
        }
    }

    /// A service's output has ended for good: waits on it can stop.
    pub(crate) fn mark_ended(&self, service: usize) {
        self.lock().ended.push(service);
        self.grown.notify_all();
    }

    /// Wait for the first line at or after `*pos` that matches `filter` and `pred`;
    /// `*pos` moves past every line examined.
    fn wait_for(
        &self,
        filter: &Filter,
        pos: &mut u64,
        deadline: Instant,
        pred: &mut dyn FnMut(&Arc<LogLine>) -> bool,
    ) -> WaitOutcome {
        let mut inner = self.lock();
        loop {
            while let Some(line) = inner.lines.get(*pos as usize) {
                *pos += 1;
                if filter.matches(line) && pred(line) {
                    return WaitOutcome::Found(Arc::clone(line));
                }
            }
            let ended = match filter.service {
                Some(s) => inner.ended.contains(&s),
                None => false,
            };
            if ended || inner.closed {
                return WaitOutcome::Ended;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WaitOutcome::TimedOut;
            }
            inner = self
                .grown
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn len(&self) -> u64 {
        self.lock().lines.len() as u64
    }

    /// The seq from which the last `n` lines matching `filter` (before `before`) start.
    fn back_from(&self, filter: &Filter, before: u64, n: usize) -> u64 {
        if n == 0 {
            return before;
        }
        let inner = self.lock();
        let mut seen = 0;
        for line in inner.lines[..before as usize].iter().rev() {
            if filter.matches(line) {
                seen += 1;
                if seen == n {
                    return line.seq;
                }
            }
        }
        0
    }

    /// Append lines from one source; returns them as stored.
    pub(crate) fn append(
        &self,
        source: &Arc<Source>,
        lines: Vec<(Box<[u8]>, bool)>,
    ) -> Vec<Arc<LogLine>> {
        let time = SystemTime::now();
        let mut inner = self.lock();
        let first = inner.lines.len() as u64;
        let mut stored = Vec::with_capacity(lines.len());
        for (seq, (bytes, newline)) in (first..).zip(lines) {
            let line = Arc::new(LogLine {
                seq,
                source: Arc::clone(source),
                bytes,
                newline,
                time,
            });
            inner.lines.push(Arc::clone(&line));
            stored.push(line);
        }
        if let Some(files) = inner.files.as_ref() {
            // Sent under the lock, so all.log keeps the arrival order.
            files.lines(stored.clone());
        }
        drop(inner);
        self.grown.notify_all();
        stored
    }

    /// Lines matching `filter`, oldest first.
    pub(crate) fn select(&self, filter: &Filter) -> Vec<Arc<LogLine>> {
        self.lock()
            .lines
            .iter()
            .filter(|l| filter.matches(l))
            .cloned()
            .collect()
    }

    /// The last `n` lines matching `filter`, oldest first.
    pub(crate) fn last(&self, filter: &Filter, n: usize) -> Vec<Arc<LogLine>> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .lines
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub(crate) fn count(&self, filter: &Filter) -> usize {
        self.lock()
            .lines
            .iter()
            .filter(|l| filter.matches(l))
            .count()
    }
}

enum WaitOutcome {
    Found(Arc<LogLine>),
    Ended,
    TimedOut,
}

/// Which lines a `Logs` handle sees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Filter {
    /// `None`: every service and the bundle's own lines.
    pub service: Option<usize>,
    pub stdout: bool,
    pub stderr: bool,
}

impl Filter {
    fn matches(&self, line: &LogLine) -> bool {
        let src = line.source();
        if let Some(want) = self.service {
            if src.service != Some(want) {
                return false;
            }
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
/// println!("{}", app.logs().err()); // printed like the console shows it
/// # Ok(()) }
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
            filter: Filter {
                service,
                stdout: true,
                stderr: true,
            },
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

    /// The text of every line, oldest first (see [`LogLine::text`]).
    pub fn lines(&self) -> Vec<String> {
        self.entries()
            .iter()
            .map(|l| l.text().into_owned())
            .collect()
    }

    /// Every line with its raw bytes, source and time, oldest first.
    pub fn entries(&self) -> Vec<Arc<LogLine>> {
        self.store.select(&self.filter)
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<Arc<LogLine>> {
        self.store.last(&self.filter, n)
    }

    /// How many lines there are now.
    pub fn len(&self) -> usize {
        self.store.count(&self.filter)
    }

    /// True if there are no lines yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cursor that starts now: it sees only lines that arrive after this call (see
    /// [`Tail::lines_back`] to start earlier).
    pub fn tail(&self) -> Tail {
        Tail {
            pos: self.store.len(),
            logs: self.clone(),
        }
    }

    /// Which service and streams this view covers, in words, for error messages.
    fn describe(&self) -> String {
        let who = match self.filter.service {
            Some(_) => self
                .store
                .lock()
                .lines
                .iter()
                .find(|l| self.filter.matches(l))
                .map(|l| format!("`{}`", l.service()))
                .unwrap_or_else(|| "the service".to_owned()),
            None => "the bundle".to_owned(),
        };
        match (self.filter.stdout, self.filter.stderr) {
            (true, false) => format!("{who}'s stdout"),
            (false, true) => format!("{who}'s stderr"),
            _ => format!("{who}'s logs"),
        }
    }
}

/// A cursor over a [`Logs`] view that waits for lines as they arrive.
///
/// ```no_run
/// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
/// use std::time::Duration;
/// let app = bundle.service("App")?;
/// let mut tail = app.logs().out().tail();
/// // ... make the app do something ...
/// let line = tail.until(|l| l.contains("request handled"), Duration::from_secs(10))?;
/// println!("{}", line.text());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tail {
    logs: Logs,
    pos: u64,
}

impl Tail {
    /// Start `n` matching lines earlier than where the tail is now.
    pub fn lines_back(mut self, n: usize) -> Tail {
        self.pos = self.logs.store.back_from(&self.logs.filter, self.pos, n);
        self
    }

    /// Wait for the next line whose text makes `pred` true, up to `timeout`.
    ///
    /// Lines examined (matching or not) are consumed. Fails at once, never hangs, if the
    /// service's output ends (it exited) or the bundle shuts down while waiting.
    pub fn until(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<Arc<LogLine>> {
        let deadline = Instant::now() + timeout;
        let outcome =
            self.logs
                .store
                .wait_for(&self.logs.filter, &mut self.pos, deadline, &mut |line| {
                    pred(&line.text())
                });
        match outcome {
            WaitOutcome::Found(line) => Ok(line),
            WaitOutcome::TimedOut => Err(Error::WaitTimeout {
                what: format!("a matching line in {}", self.logs.describe()),
                timeout,
                last_lines: self.last_lines(),
            }),
            WaitOutcome::Ended => Err(Error::EndedWhileWaiting {
                what: format!("a matching line in {}", self.logs.describe()),
                last_lines: self.last_lines(),
            }),
        }
    }

    fn last_lines(&self) -> Vec<String> {
        self.logs.last(20).iter().map(|l| l.to_string()).collect()
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

/// Splits a byte stream into whole lines across reads; keeps every byte.
#[derive(Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Lines completed by `chunk`, each with `true` for "ended in a newline".
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<(Box<[u8]>, bool)> {
        let mut out = Vec::new();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..nl];
            if self.partial.is_empty() {
                out.push((Box::from(piece), true));
            } else {
                self.partial.extend_from_slice(piece);
                out.push((std::mem::take(&mut self.partial).into_boxed_slice(), true));
            }
            start = nl + 1;
        }
        self.partial.extend_from_slice(&chunk[start..]);
        out
    }

    /// The unterminated last line, if any bytes are left at end of stream.
    pub(crate) fn finish(&mut self) -> Option<(Box<[u8]>, bool)> {
        if self.partial.is_empty() {
            None
        } else {
            Some((std::mem::take(&mut self.partial).into_boxed_slice(), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_joins_lines_across_reads_and_keeps_the_tail() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"hel").is_empty());
        let got = s.push(b"lo\nwor");
        assert_eq!(got, vec![(Box::from(&b"hello"[..]), true)]);
        let got = s.push(b"ld\n\n\xff\r\n");
        assert_eq!(got.len(), 3);
        assert_eq!(&*got[0].0, b"world");
        assert_eq!(&*got[1].0, b"");
        assert_eq!(&*got[2].0, b"\xff\r");
        assert!(s.finish().is_none());
        s.push(b"tail");
        assert_eq!(s.finish(), Some((Box::from(&b"tail"[..]), false)));
    }
}
