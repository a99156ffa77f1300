//! The sink every line goes through: stored (and so written to `all.log`), then printed.
//!
//! Owns the bundle's own voice (`[Hitch] ...` lines and warnings), the order "decide whether
//! to print, store, print", and copying a pipe's lines into the logs (`pump`, for what hooks
//! run). It does not read service pipes (the runtime's supervisor does) nor decide what a
//! line means (readiness does).
//!
//! Invariant: a line is stored before it is printed, and a line that a waiter could already
//! see while the console was muted is never printed later.

use std::io::Read;
use std::sync::Arc;

use crate::logs::console::Console;
use crate::logs::line::{Filter, LogLine, Part, Source, Stream};
use crate::logs::split::{End, LineSplitter};
use crate::logs::store::LogStore;

/// The bundle's own voice and the sinks every line goes to.
pub(crate) struct Sink {
    pub store: Arc<LogStore>,
    pub console: Console,
    hitch_out: Arc<Source>,
    hitch_err: Arc<Source>,
}

impl Sink {
    pub(crate) fn new() -> Sink {
        let store = Arc::new(LogStore::new());
        Sink {
            hitch_out: store.source(None, "Hitch", Part::Main, Stream::Stdout),
            hitch_err: store.source(None, "Hitch", Part::Main, Stream::Stderr),
            store,
            console: Console::new(),
        }
    }

    /// Store and print lines from one source; returns them if `checking` or printed. With
    /// `wake`, tails waiting for them are woken now; without, the caller calls
    /// `LogStore::wake_tails` once it has emitted what it has.
    pub(crate) fn emit(
        &self,
        source: &Arc<Source>,
        lines: &[(&[u8], End)],
        checking: bool,
        wake: bool,
    ) -> Vec<LogLine> {
        self.emit_as(source, lines, checking, false, wake)
    }

    /// `emit`; `loud`: printed in interactive mode too (the bundle's own warnings).
    fn emit_as(
        &self,
        source: &Arc<Source>,
        lines: &[(&[u8], End)],
        checking: bool,
        loud: bool,
        wake: bool,
    ) -> Vec<LogLine> {
        if lines.is_empty() {
            return Vec::new();
        }
        // Decide before storing: a line a waiter can already see while muted is never
        // printed later, after interactive mode ends.
        // Stored and printed as one step for `Console::settle`.
        let _printing = self.console.printing();
        let muted = !loud && self.console.is_muted();
        // What interactive mode hid from the test: its services' lines.
        if muted && source.service.is_some() {
            self.console.count_missed(lines.len());
        }
        let stored = self.store.append(source, lines, checking || !muted, wake);
        if !muted {
            self.console.print(&stored);
        }
        stored
    }

    /// Store and print a message (one line per `\n`) under `source`.
    pub(crate) fn message(&self, source: &Arc<Source>, msg: &str, loud: bool) {
        let lines: Vec<(&[u8], End)> = msg
            .split('\n')
            .map(|l| (l.as_bytes(), End::Newline))
            .collect();
        self.emit_as(source, &lines, false, loud, true);
    }

    /// `[Hitch] msg`.
    pub(crate) fn log(&self, msg: &str) {
        self.message(&self.hitch_out, msg, false);
    }

    /// `[Hitch] WARNING: msg`, printed in interactive mode too: what went wrong (a crash, a
    /// stop that needed SIGKILL) is said at once, even to a test paused at a prompt.
    pub(crate) fn warn(&self, msg: &str) {
        self.message(&self.hitch_err, msg, true);
    }

    /// `[Hitch] WARNING: msg` for the test (`Bundle::warn`): muted in interactive mode, as
    /// its `log` is (the Python package prints both itself there).
    pub(crate) fn warn_for_test(&self, msg: &str) {
        self.message(&self.hitch_err, msg, false);
    }

    /// The last `n` lines of service `idx` written by its start number `start` or a later
    /// one (an error about that start shows no line of an earlier one), in the console
    /// format, and the line it has started but not ended, if any: for error messages.
    pub(crate) fn last_lines_of_start(&self, idx: usize, start: u32, n: usize) -> Vec<String> {
        let filter = Filter {
            from_start: start,
            ..Filter::service(Some(idx))
        };
        self.store.last_lines(&filter, n, true)
    }

    /// Copy a pipe's lines into the logs under `source` until end of file.
    pub(crate) fn pump(&self, mut pipe: impl Read, source: &Arc<Source>) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut splitter = LineSplitter::new(self.store.piece_size());
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    splitter.split(&buf[..n], |lines| {
                        self.emit(source, lines, false, true);
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(last) = splitter.finish() {
            self.emit(source, &[(&last, End::Unterminated)], false, true);
        }
    }
}
