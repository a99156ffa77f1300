//! When a service counts as ready.
//!
//! Owns the `Ready` vocabulary and the per-run checker that sees each log line exactly once.
//! It does not read pipes or change service state itself: `supervise` feeds it lines and acts
//! on the verdict. A checker that panics is reported, never propagated into a reader thread.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::logs::LogLine;

type LinePredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How to tell that a service is ready.
///
/// ```
/// use hitchserve::Ready;
/// let on_line = Ready::line(|line| line.contains("Quit the server"));
/// let simple = Ready::line_contains("READY");
/// let at_once = Ready::started();
/// # let _ = (on_line, simple, at_once);
/// ```
#[derive(Clone)]
pub struct Ready(Kind);

#[derive(Clone)]
enum Kind {
    Started,
    Line { pred: LinePredicate, what: String },
}

impl Ready {
    /// Ready as soon as the process has been started (no check at all).
    pub fn started() -> Ready {
        Ready(Kind::Started)
    }

    /// Ready when a line on stdout or stderr makes `pred` return true. Each line is passed
    /// once, whole, without its newline (and without a trailing `\r`).
    pub fn line(pred: impl Fn(&str) -> bool + Send + Sync + 'static) -> Ready {
        Ready(Kind::Line {
            pred: Arc::new(pred),
            what: "a log line that its ready_when check accepts".to_owned(),
        })
    }

    /// Ready when a line contains `needle`.
    pub fn line_contains(needle: impl Into<String>) -> Ready {
        let needle = needle.into();
        let what = format!("a log line containing `{needle}`");
        Ready(Kind::Line {
            pred: Arc::new(move |line: &str| line.contains(&needle)),
            what,
        })
    }

    /// What a service with this check waits for, for error messages.
    pub(crate) fn describe(&self) -> &str {
        match &self.0 {
            Kind::Started => "its process to start",
            Kind::Line { what, .. } => what,
        }
    }

    pub(crate) fn checker(&self) -> LineChecker {
        match &self.0 {
            Kind::Started => LineChecker(Mutex::new(None)),
            Kind::Line { pred, .. } => LineChecker(Mutex::new(Some(Arc::clone(pred)))),
        }
    }

    pub(crate) fn is_immediate(&self) -> bool {
        matches!(self.0, Kind::Started)
    }
}

impl Default for Ready {
    fn default() -> Ready {
        Ready::started()
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The verdict on a batch of lines.
pub(crate) enum Verdict {
    NotYet,
    Ready,
    Panicked(String),
}

/// A line predicate in use; cleared once it has said yes, so later lines cost nothing.
pub(crate) struct LineChecker(Mutex<Option<LinePredicate>>);

impl LineChecker {
    /// Whether it still waits for its line (so lines must be shown to it).
    pub(crate) fn is_pending(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub(crate) fn check(&self, lines: &[LogLine]) -> Verdict {
        let Some(pred) = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Verdict::NotYet;
        };
        for line in lines {
            match catch_unwind(AssertUnwindSafe(|| pred(&line.text()))) {
                Ok(false) => {}
                Ok(true) => {
                    *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Verdict::Ready;
                }
                Err(payload) => {
                    *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Verdict::Panicked(panic_message(&payload));
                }
            }
        }
        Verdict::NotYet
    }
}

pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}
