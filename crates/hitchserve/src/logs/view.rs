//! `Logs`: a view of log lines — a service or the whole bundle, both streams or one, a part
//! of its life — and the queries on it (lines, entries, JSON, grep), each reading the store
//! as it is at that moment. Waiting for lines is `tail`'s.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::logs::line::{Filter, LogLine, Part};
use crate::logs::store::LogStore;

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
    pub(super) store: Arc<LogStore>,
    pub(super) filter: Filter,
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

    /// Which service and streams this view covers, in words, for error messages.
    pub(super) fn describe(&self) -> String {
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
