//! Live printing of log lines as `[   Name] line` / `[Err Name] line`, and interactive mode.
//!
//! Owns the label width, per-service colours, the colour decision (`NO_COLOR`, not a terminal)
//! and muting. It never stores anything: a muted line is still in the log store, so nothing is
//! lost. Printing goes through `print!` so `cargo test` captures it per test (except in a
//! forked child: see `write_out`); a closed stdout must never stop a reader thread, so a
//! failed print ends printing, said once on stderr (never as a panic's message) — nor must
//! a stdout nobody reads any more (a full pipe: `up | less` left paused), so a print waits
//! a second at most for room, then lines are not printed until stdout takes writes again,
//! and a line says how many were not.
//!
//! Also owns *whose* output the lines go to. Under `cargo test`, `print!` writes to the
//! capture of the test whose thread spawned the printing thread — so a bundle kept in a
//! `static` for many tests would print every line into the first test's output, shown (if
//! ever) with the wrong test. So the console is *claimed* by the thread that calls the bundle:
//! the first claimer (the one that started it) gets lines printed straight from the reader
//! threads, as before; once another thread claims it, lines go to a printer thread spawned by
//! that thread (which inherits its capture), and so on: the lines go to the test that is
//! running when they arrive (with tests in parallel, the one that called the bundle last).
//!
//! A line is visible to waiters once stored, a moment before it is printed: each reader
//! stores and prints a batch under a shared gate, and a message the test logs waits for the
//! gate first ([`Console::settle`]), so it never comes on the console before a line the test
//! saw.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;

use crate::logs::line::LogLine;
use crate::perprocess::PerProcess;

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
    /// The thread that claimed the console last ([`thread_token`]), 0 before any did.
    owner: AtomicUsize,
    /// Once a second thread claimed the console: the printer thread it spawned.
    printer: Mutex<Option<SyncSender<Option<String>>>>,
    /// See [`Console::printing`] and [`Console::settle`].
    gate: std::sync::RwLock<()>,
    /// Whether `printer` was ever set (read without its lock on every print).
    redirected: AtomicBool,
}

/// A number that tells this thread from every other thread of the process, past and
/// present (not an address: a new thread may reuse an ended one's).
fn thread_token() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static TOKEN: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// The process that made the first console: it prints through `print!` (see `write_out`).
static ORIGIN: AtomicU32 = AtomicU32::new(0);

/// Print `out`; false if stdout is closed. Through `print!`, which `cargo test` captures per
/// test (and which panics on a closed stdout: caught here), in the process that made the
/// first console. A child forked from it (without exec) writes to fd 1 itself, one write at
/// a time: `print!` holds std's process-wide stdout lock while it writes, and a child
/// forked while one of the parent's readers was inside a slow write (a full pipe) inherits
/// that lock held by a thread it doesn't have, so its first line would wait for ever.
///
/// A reader of stdout that stops reading (`hitchserve up | less` left paused, a stalled log
/// collector) must never stop the services: their reader threads print. So `out` is written
/// a piece at a time, each once stdout can take it without blocking; if it can't for
/// `STALL`, the rest is not printed, nor is anything more until stdout takes writes again —
/// then a line says how many lines were not printed (they are stored all the same).
fn write_out(out: &str) -> bool {
    let written = write_or_fail(out);
    if !written {
        stdout_closed();
    }
    written
}

/// How long a print waits for stdout's reader to make room before printing stops until it
/// does: a slow terminal keeps up, a reader that stopped reading does not.
const STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this much is written at once: a pipe that polls writable takes a write of a
/// page without blocking. A longer line is written in pieces of this size.
const PIECE: usize = 4096;

/// Where printing stands, for every thread of the process (stdout is the process's). Held
/// across each look at stdout and the write that follows: two threads told of the same
/// free page would otherwise both write, and the second block.
struct Printing {
    /// Stdout stopped taking writes (see `write_out`): nothing is printed until it does.
    stalled: bool,
    /// Lines not printed since it stopped.
    unprinted: u64,
    /// It stopped in the middle of a line (the note starts on a line of its own).
    mid_line: bool,
}

static PRINTING: PerProcess<Mutex<Printing>> = PerProcess::new(|| {
    Mutex::new(Printing {
        stalled: false,
        unprinted: 0,
        mid_line: false,
    })
});

fn write_or_fail(out: &str) -> bool {
    let mut printing = PRINTING.get().lock().unwrap_or_else(|e| e.into_inner());
    if printing.stalled {
        match writable(std::time::Duration::ZERO) {
            Room::Gone => return false,
            Room::Full => {
                printing.unprinted += out.matches('\n').count() as u64;
                return true;
            }
            Room::Some => {
                let missed = printing.unprinted;
                let note = format!(
                    "{}[Hitch] WARNING: {missed} line{} not printed while stdout was not being \
                     read; every line is stored (queries, all.log)\n",
                    if printing.mid_line { "\n" } else { "" },
                    if missed == 1 { " was" } else { "s were" }
                );
                // Said once it is written: a note that stalls leaves the count (and these
                // lines) for the next.
                let mut trying = Printing {
                    stalled: false,
                    unprinted: 0,
                    mid_line: false,
                };
                if !write_pieces(&mut trying, &note) {
                    return false;
                }
                if trying.stalled {
                    printing.unprinted += out.matches('\n').count() as u64;
                    printing.mid_line |= trying.mid_line;
                    return true;
                }
                *printing = trying;
            }
        }
    }
    write_pieces(&mut printing, out)
}

/// `write_or_fail`'s pieces, under `printing`: false if stdout is closed.
fn write_pieces(printing: &mut Printing, out: &str) -> bool {
    let mut rest = out;
    while !rest.is_empty() {
        // Whole lines up to a piece's size; a longer line in pieces of that size.
        let cut = match rest.get(..PIECE.min(rest.len())) {
            _ if rest.len() <= PIECE => rest.len(),
            Some(head) => head.rfind('\n').map_or(PIECE, |nl| nl + 1),
            None => PIECE,
        };
        // (At a character's boundary: `print!` takes text.)
        let mut cut = cut.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, after) = rest.split_at(cut);
        match writable(STALL) {
            Room::Gone => return false,
            Room::Full => {
                printing.stalled = true;
                printing.mid_line = !out[..out.len() - rest.len()].is_empty()
                    && !out[..out.len() - rest.len()].ends_with('\n');
                // The lines begun or not: none of them is printed whole.
                printing.unprinted += rest.matches('\n').count() as u64;
                return true;
            }
            Room::Some => {}
        }
        if !write_piece(piece) {
            return false;
        }
        rest = after;
    }
    true
}

/// Write one piece (see `write_out`); false if stdout is closed.
fn write_piece(piece: &str) -> bool {
    if ORIGIN.load(Ordering::Relaxed) == std::process::id() {
        // Through `print!` (`cargo test` captures it); flushed, as a piece of a long line
        // has no newline to make it written.
        return std::panic::catch_unwind(|| {
            print!("{piece}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        })
        .is_ok();
    }
    let mut rest = piece.as_bytes();
    while !rest.is_empty() {
        // (`Stdout`'s descriptor, without std's lock.)
        match nix::unistd::write(std::io::stdout(), rest) {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// What stdout can take now.
enum Room {
    /// A write (of a piece) without blocking.
    Some,
    /// Nothing within the time given: its reader is not reading.
    Full,
    /// Its reader has gone (a pipe or socket nobody reads any more), or it is closed.
    Gone,
}

/// Wait up to `within` for stdout to take a write.
fn writable(within: std::time::Duration) -> Room {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdout = std::io::stdout();
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&stdout),
            PollFlags::POLLOUT,
        )];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => return Room::Full,
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                {
                    return Room::Gone;
                }
                return Room::Some;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // Can't tell: write, as before.
            Err(_) => return Room::Some,
        }
    }
}

/// Say once per process, on stderr, that the console stopped printing (and that nothing
/// is lost).
fn stdout_closed() {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "[Hitch] WARNING: stdout is closed (its reader has gone): service lines are no \
             longer printed; every line is still stored (queries, all.log)"
        );
    }
}

impl Console {
    pub(crate) fn new() -> Console {
        let _ =
            ORIGIN.compare_exchange(0, std::process::id(), Ordering::Relaxed, Ordering::Relaxed);
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Console {
            width: AtomicUsize::new("Hitch".len()),
            colour: !no_colour && std::io::stdout().is_terminal(),
            muted: AtomicBool::new(false),
            missed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            owner: AtomicUsize::new(0),
            printer: Mutex::new(None),
            gate: std::sync::RwLock::new(()),
            redirected: AtomicBool::new(false),
        }
    }

    /// Send the lines printed from now on to the calling thread's output (see the module
    /// header). Cheap when this thread has the console already.
    pub(crate) fn claim(&self) {
        let me = thread_token();
        let owner = self.owner.load(Ordering::Relaxed);
        if owner == me {
            return;
        }
        if owner == 0
            && self
                .owner
                .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            // The first: the reader threads it spawns print into its output themselves.
            return;
        }
        // Rendezvous: a reader hands over a batch (`Some`), then a barrier (`None`) that the
        // printer takes only once it has printed the batch — so a reader's `print` returns
        // once its lines are printed, as when it prints them itself.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<String>>(0);
        let spawned = std::thread::Builder::new()
            .name("hitchserve-console".into())
            .spawn(move || {
                for out in rx.into_iter().flatten() {
                    // As in `print`: a closed stdout must not end the thread with a panic —
                    // but once is enough: the printer ends, and the next send says so.
                    if !write_out(&out) {
                        return;
                    }
                }
            });
        if spawned.is_ok() {
            // Printer and owner change together (racing claims leave a consistent pair);
            // the old printer ends once it has printed what it was sent.
            let mut printer = self.printer.lock().unwrap_or_else(|e| e.into_inner());
            *printer = Some(tx);
            self.redirected.store(true, Ordering::SeqCst);
            self.owner.store(me, Ordering::SeqCst);
        }
    }

    /// Held (shared) by each reader while it stores a batch and prints it: see [`settle`].
    ///
    /// [`settle`]: Console::settle
    pub(crate) fn printing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until every batch stored so far is printed: a message the test logs after it
    /// saw a service's line (stored, and so visible, just before it is printed) comes after
    /// that line on the console.
    pub(crate) fn settle(&self) {
        drop(self.gate.write().unwrap_or_else(|e| e.into_inner()));
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
        // The claiming thread itself (`log`, `warn`, a time travel's line) prints at once,
        // in order with what it prints itself; other threads through its printer.
        let through_printer = self.redirected.load(Ordering::Relaxed)
            && thread_token() != self.owner.load(Ordering::Relaxed);
        let printer = match through_printer {
            true => self
                .printer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            false => None,
        };
        if let Some(printer) = printer {
            // Claimed by a later thread: its printer prints (if it is gone, nothing does —
            // the lines are stored all the same).
            if printer.send(Some(out)).is_err() || printer.send(None).is_err() {
                // Its stdout was closed: printing stopped; lines are still stored.
                self.closed.store(true, Ordering::Relaxed);
            }
            return;
        }
        // A closed stdout: the reader thread calling us must live on, and one report of it
        // is enough.
        if !write_out(&out) {
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
