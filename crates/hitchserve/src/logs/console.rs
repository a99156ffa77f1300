//! Live printing of log lines as `[   Name] line` / `[Err Name] line`, and interactive mode.
//!
//! Owns the label width, per-service colours, the colour decision (`NO_COLOR`, not a terminal)
//! and muting. It never stores anything: a muted line is still in the log store, so nothing is
//! lost. Printing goes through `print!` so `cargo test` captures it per test; a closed stdout
//! must never stop a reader thread, so a failed print is swallowed.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::logs::line::LogLine;

const PALETTE: [&str; 6] = ["36", "32", "33", "34", "35", "96"];
const RESET: &str = "\x1b[0m";

pub(crate) struct Console {
    width: AtomicUsize,
    colour: bool,
    muted: AtomicBool,
    /// Lines not printed while muted, reported when printing resumes.
    missed: AtomicU64,
    /// Stdout was closed (a reader went away): printing stopped; lines are still stored.
    closed: AtomicBool,
}

impl Console {
    pub(crate) fn new() -> Console {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Console {
            width: AtomicUsize::new("Hitch".len()),
            colour: !no_colour && std::io::stdout().is_terminal(),
            muted: AtomicBool::new(false),
            missed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Make room for a label of this length.
    pub(crate) fn fit_label(&self, len: usize) {
        self.width.fetch_max(len, Ordering::Relaxed);
    }

    pub(crate) fn width(&self) -> usize {
        self.width.load(Ordering::Relaxed)
    }

    pub(crate) fn set_muted(&self, muted: bool) -> u64 {
        self.muted.store(muted, Ordering::SeqCst);
        if muted {
            0
        } else {
            self.missed.swap(0, Ordering::SeqCst)
        }
    }

    pub(crate) fn is_muted(&self) -> bool {
        self.muted.load(Ordering::SeqCst)
    }

    pub(crate) fn count_missed(&self, n: usize) {
        self.missed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Print lines as one write, so lines of different services never interleave mid-line.
    pub(crate) fn print(&self, lines: &[LogLine]) {
        if lines.is_empty() || self.closed.load(Ordering::Relaxed) {
            return;
        }
        let width = self.width();
        let mut out = String::new();
        for line in lines {
            self.format_into(&mut out, line, width);
        }
        // `print!` (which test harnesses capture) panics when stdout is closed; the reader
        // thread calling us must live on, and one report of it is enough.
        if std::panic::catch_unwind(|| print!("{out}")).is_err() {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    fn format_into(&self, out: &mut String, line: &LogLine, width: usize) {
        use std::fmt::Write as _;
        if !self.colour {
            let _ = writeln!(out, "{line:width$}");
            return;
        }
        let src = line.source();
        let colour = match src.service {
            None => "1",
            Some(i) => PALETTE[i % PALETTE.len()],
        };
        let text = line.text();
        let label = line.label();
        let pad = width.saturating_sub(label.len());
        if let Some(name) = label.strip_prefix("Err ").filter(|_| src.service.is_some()) {
            let _ = writeln!(
                out,
                "\x1b[{colour}m[{:pad$}\x1b[31mErr\x1b[{colour}m {name}]{RESET} {text}",
                ""
            );
        } else if src.is_warning() {
            let _ = writeln!(
                out,
                "\x1b[{colour}m[{:pad$}{label}]{RESET} \x1b[33mWARNING: {text}{RESET}",
                ""
            );
        } else {
            let _ = writeln!(out, "\x1b[{colour}m[{:pad$}{label}]{RESET} {text}", "");
        }
    }
}
