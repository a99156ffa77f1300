//! `Tail` and `Follow`: cursors over a view that wait for lines as they arrive.
//!
//! Owns consuming lines once (a partial line's start is handed out once, then only the rest
//! of that line) and waiting by notification with a deadline, never by polling.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::logs::line::LogLine;
use crate::logs::store;
use crate::logs::view::Logs;

/// Where a wait made in pieces stands between them (see `Tail::until_piece`).
#[derive(Debug, Default)]
pub(crate) struct WaitPieces {
    /// How many lines were stored when its first piece began.
    stored: Option<u64>,
    /// Partials it has looked at (see `LogStore::next_batch`).
    seen: u64,
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
    Some(p.line(skip))
}

impl Logs {
    /// A cursor that starts now: it sees only lines that arrive after this call (see
    /// [`Tail::lines_back`] to start earlier), and the start of a line not ended yet
    /// (a partial line, see [`Tail`]) even if it was written before.
    pub fn tail(&self) -> Tail {
        Tail::new(self.clone(), self.store.len())
    }
}

impl Tail {
    /// A cursor over `logs` that starts at line `pos`.
    pub(super) fn new(logs: Logs, pos: u64) -> Tail {
        Tail {
            logs,
            pos,
            taken: Vec::new(),
        }
    }

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

    /// [`until`](Tail::until) for one piece (up to `piece`) of a wait made in pieces (an
    /// async one), whose state between them is `pieces`: a partial line is looked at once
    /// until it changes, and the lines stored when the first piece began are all looked at,
    /// as in one wait.
    #[cfg(feature = "tokio")]
    pub(crate) fn until_piece(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        piece: Duration,
        pieces: &mut WaitPieces,
    ) -> Result<LogLine> {
        self.wait_in(
            |line| pred(&line.text()).then(|| line.clone()),
            piece,
            "a matching line",
            pieces,
        )
    }

    /// [`until_json`](Tail::until_json) for one piece of a wait made in pieces (see
    /// `until_piece`).
    #[cfg(feature = "tokio")]
    pub(crate) fn until_json_piece(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        piece: Duration,
        pieces: &mut WaitPieces,
    ) -> Result<Value> {
        self.wait_in(
            |line| line.json().filter(|v| pred(v)),
            piece,
            "a matching JSON line",
            pieces,
        )
    }

    fn wait<T>(
        &mut self,
        found: impl FnMut(&LogLine) -> Option<T>,
        timeout: Duration,
        what: &str,
    ) -> Result<T> {
        self.wait_in(found, timeout, what, &mut WaitPieces::default())
    }

    fn wait_in<T>(
        &mut self,
        mut found: impl FnMut(&LogLine) -> Option<T>,
        timeout: Duration,
        what: &str,
        pieces: &mut WaitPieces,
    ) -> Result<T> {
        let deadline = Instant::now().checked_add(timeout);
        // Lines stored before the wait began are all looked at, even with a zero timeout
        // (however many batches they take); lines that come later only until the deadline:
        // a service that keeps writing must not stretch the timeout.
        let stored = *pieces.stored.get_or_insert_with(|| self.logs.store.len());
        let mut first = true;
        // Partials this wait has looked at: each is looked at again only once it changes.
        let seen = &mut pieces.seen;
        loop {
            let mut pos = self.pos;
            let batch = if !std::mem::take(&mut first)
                && pos >= stored
                && deadline.is_some_and(|d| Instant::now() >= d)
            {
                store::read::Batch::TimedOut
            } else {
                self.logs
                    .store
                    .next_batch(&self.logs.filter, &mut pos, seen, deadline)
            };
            match batch {
                store::read::Batch::Held(held) if self.taken.is_empty() => {
                    if let Some((seq, hit)) = held.walk(|line| Some((line.seq(), found(line)?))) {
                        self.pos = seq + 1;
                        return Ok(hit);
                    }
                    self.pos = pos;
                }
                store::read::Batch::Held(held) => {
                    for line in held.into_lines() {
                        let line = rest_of(&mut self.taken, line);
                        if let Some(hit) = found(&line) {
                            self.pos = line.seq() + 1;
                            return Ok(hit);
                        }
                    }
                    self.pos = pos;
                }
                store::read::Batch::Lines(lines) => {
                    for line in lines {
                        let line = rest_of(&mut self.taken, line);
                        if let Some(hit) = found(&line) {
                            self.pos = line.seq() + 1;
                            return Ok(hit);
                        }
                    }
                    self.pos = pos;
                }
                store::read::Batch::Partials(partials) => {
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
                store::read::Batch::TimedOut => {
                    return Err(Error::WaitTimeout {
                        what: format!("{what} in {}", self.logs.describe()),
                        timeout,
                        last_lines: self.last_lines(),
                        log: self.logs.store.file_path(),
                    })
                }
                store::read::Batch::Ended => {
                    return Err(Error::EndedWhileWaiting {
                        what: format!("{what} in {}", self.logs.describe()),
                        why: self.why_ended(),
                        last_lines: self.last_lines_of_service(),
                        log: self.logs.store.file_path(),
                    })
                }
            }
        }
    }

    fn last_lines(&self) -> Vec<String> {
        self.logs.store.last_lines(&self.logs.filter, 20, true)
    }

    /// Why the output waited on ended: its service's end, or the bundle's.
    fn why_ended(&self) -> String {
        let store = &self.logs.store;
        let ended = self.logs.filter.service.and_then(|idx| {
            let how = store.how_ended(idx)?;
            Some(format!("`{}` {how}", store.service_name(idx)?))
        });
        ended.unwrap_or_else(|| "the bundle stopped".to_owned())
    }

    /// The last lines of the service waited on, both streams (what it said as it ended),
    /// or of what was waited on.
    fn last_lines_of_service(&self) -> Vec<String> {
        match self.logs.filter.service {
            Some(idx) => {
                let filter = crate::logs::line::Filter::service(Some(idx));
                self.logs.store.last_lines(&filter, 20, true)
            }
            None => self.last_lines(),
        }
    }
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
                store::read::Batch::Lines(lines) => self
                    .pending
                    .extend(lines.into_iter().map(|l| rest_of(taken, l))),
                store::read::Batch::Held(held) => self
                    .pending
                    .extend(held.into_lines().map(|l| rest_of(taken, l))),
                store::read::Batch::Partials(partials) => self
                    .pending
                    .extend(partials.iter().filter_map(|p| unseen_part(taken, p, true))),
                store::read::Batch::Ended | store::read::Batch::TimedOut => return None,
            }
        }
    }
}

impl fmt::Debug for Follow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follow").field("tail", &self.tail).finish()
    }
}
