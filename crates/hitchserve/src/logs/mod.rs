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
mod line;
mod sink;
mod split;
mod store;
mod tail;

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) use line::{Filter, Source};
pub use line::{LogLine, Part, Stream};
pub(crate) use sink::Sink;
pub(crate) use split::{End, LineSplitter};
pub(crate) use store::LogStore;
pub use tail::{Follow, Tail};

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
        Tail::new(self.clone(), self.store.len())
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
