//! A pseudo-terminal of our own for a command run as another user, relayed to and from our
//! terminal (as sudo's `use_pty` does).
//!
//! The command gets the pty as its controlling terminal and as each of its stdin, stdout
//! and stderr that is a terminal for us (the others it gets as they are); we copy what is
//! typed on our terminal — raw meanwhile, so Ctrl-C, Ctrl-\ and the line editing are the
//! pty's, for the command — to the pty, and what the pty shows to our terminal, until the
//! command has exited; then our terminal is as it was and the pty is closed, so a process
//! the command left running reads nothing more. The pty starts with our terminal's settings
//! and size, and follows its size. Ctrl-Z is not job control through `exec`: a command that
//! stops (its own SIGTSTP included) is continued at once. Run in the background (not the
//! terminal's foreground process group: `cmd &`, `timeout`'s child), we leave the terminal's
//! mode alone and read nothing from it — the terminal would stop us for trying — until we
//! are brought to the foreground (`fg` continues us); meanwhile the command gets no input.
//! A SIGTERM or SIGHUP to us ends the relay: our terminal is put back, and we die of the
//! signal (the command then gets its SIGTERM, as any `exec`'s does) — unless we were started
//! ignoring it (`nohup`): then it stays ignored.
//!
//! Hand-written rather than a crate: the pty and the terminal modes are nix's; what is left
//! is this loop, which must also end with the command and never block on either side.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, SpecialCharacterIndices, Termios};

use super::signals::ignored;

/// Our terminal's size changed (SIGWINCH), or we were continued (SIGCONT: `fg` may have
/// brought us to the foreground, and the shell may have set the terminal's mode meanwhile).
static RESIZED: AtomicBool = AtomicBool::new(false);
/// A SIGTERM or SIGHUP came (its number; 0: none).
static ENDED_BY: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: libc::c_int) {
    match sig {
        libc::SIGWINCH | libc::SIGCONT => RESIZED.store(true, Ordering::SeqCst),
        libc::SIGTERM | libc::SIGHUP => ENDED_BY.store(sig, Ordering::SeqCst),
        // SIGCHLD: only wakes the wait (the loop looks at the child each time).
        _ => {}
    }
}

/// How the relay ended.
pub(super) enum Relayed {
    /// The command exited so (reaped).
    Exited(ExitStatus),
    /// We got this signal (SIGTERM, SIGHUP) first: our terminal is put back; the caller
    /// dies of it.
    EndedBy(libc::c_int),
}

/// Most bytes typed ahead that the command has not read yet, before we stop reading ours.
const TYPED_AHEAD: usize = 64 * 1024;

pub(super) struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    /// Which of our stdin, stdout and stderr are terminals.
    ttys: [bool; 3],
}

/// What the child needs, between fork and exec, to take the pty (plain numbers: nothing
/// is allocated or dropped there).
#[derive(Clone, Copy)]
pub(super) struct Attach {
    slave: RawFd,
    ttys: [bool; 3],
}

impl Attach {
    /// In the child, after `setsid`: the pty as its controlling terminal, and as its
    /// stdin, stdout and stderr where ours were terminals.
    pub(super) fn attach(&self) -> std::io::Result<()> {
        // SAFETY: ioctl and dup2 on descriptors the child inherited; async-signal-safe.
        unsafe {
            if libc::ioctl(self.slave, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (fd, &tty) in self.ttys.iter().enumerate() {
                if tty && libc::dup2(self.slave, fd as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only looks at the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

fn fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only for 0, 1 and 2, which stay open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

fn window_size(of: RawFd) -> Option<libc::winsize> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the struct we pass.
    (unsafe { libc::ioctl(of, libc::TIOCGWINSZ, &mut size) } == 0).then_some(size)
}

fn set_window_size(to: RawFd, size: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads the struct we pass.
    unsafe {
        libc::ioctl(to, libc::TIOCSWINSZ, size);
    }
}

/// Our stdin's terminal: as it was before we made it raw, and raw; put back when dropped.
#[derive(Default)]
struct Terminal(Option<(Termios, Termios)>);

impl Terminal {
    /// Make it raw if we are in its foreground now (at once if it is already); whether it is
    /// ours to read.
    fn take_if_foreground(&mut self) -> bool {
        if !in_foreground() {
            return false;
        }
        if self.0.is_none() {
            let Ok(before) = termios::tcgetattr(fd(0)) else {
                return false;
            };
            let mut raw = before.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(fd(0), SetArg::TCSANOW, &raw);
            self.0 = Some((before, raw));
        }
        true
    }

    /// Raw again if we took it and are in its foreground (continued after a stop, a shell
    /// may have set its own mode).
    fn again(&self) {
        if let Some((_, raw)) = &self.0 {
            if in_foreground() {
                let _ = termios::tcsetattr(fd(0), SetArg::TCSANOW, raw);
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some((before, _)) = &self.0 {
            let _ = termios::tcsetattr(fd(0), SetArg::TCSANOW, before);
        }
    }
}

impl Pty {
    /// A pty like our terminal, if any of our stdin, stdout and stderr is one.
    pub(super) fn for_our_terminal() -> Result<Option<Pty>, String> {
        let ttys = [0, 1, 2].map(is_tty);
        let Some(first) = ttys.iter().position(|&t| t) else {
            return Ok(None);
        };
        let first = first as RawFd;
        let mut settings = termios::tcgetattr(fd(first)).ok();
        if let Some(t) = &mut settings {
            // See the header: no job control through `exec`.
            t.control_chars[SpecialCharacterIndices::VSUSP as usize] = 0;
        }
        let size = window_size(first);
        let pty = nix::pty::openpty(size.as_ref(), settings.as_ref())
            .map_err(|e| format!("cannot make a terminal for the command: {e}"))?;
        for end in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                end,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| format!("cannot make a terminal for the command: {e}"))?;
        }
        Ok(Some(Pty {
            master: pty.master,
            slave: pty.slave,
            ttys,
        }))
    }

    pub(super) fn for_child(&self) -> Attach {
        Attach {
            slave: self.slave.as_raw_fd(),
            ttys: self.ttys,
        }
    }

    /// Relay between our terminal and the pty until `child` (started with `for_child`'s
    /// `attach`) has exited; its exit status.
    /// `exited` is called once the command has exited, before it is reaped (its pid is
    /// then no longer to be signalled).
    pub(super) fn relay(self, child: &mut Child, exited: &dyn Fn()) -> std::io::Result<Relayed> {
        let Pty {
            master,
            slave,
            ttys,
        } = self;
        drop(slave);
        let _ = nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        // Where the pty's output goes: our stdout if a terminal, else stderr, else back to
        // the terminal our stdin is (its echo).
        let out: RawFd = if ttys[1] {
            1
        } else if ttys[2] {
            2
        } else {
            0
        };
        // The signals the loop looks after are blocked but while it waits (`ppoll`), so that
        // none is missed between a look and the wait — and from before our terminal is made
        // raw until after it is put back, so that none kills us with it raw.
        // A SIGTERM or SIGHUP our parent set us to ignore (`nohup`) stays ignored.
        let handled: Vec<Signal> = [
            Signal::SIGCHLD,
            Signal::SIGWINCH,
            Signal::SIGCONT,
            Signal::SIGTERM,
            Signal::SIGHUP,
        ]
        .into_iter()
        .filter(|&s| !matches!(s, Signal::SIGTERM | Signal::SIGHUP) || !ignored(s as i32))
        .collect();
        let mut mask = SigSet::empty();
        for &s in &handled {
            mask.add(s);
        }
        let old_mask = mask
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .unwrap_or_else(|_| SigSet::empty());
        let mut during = old_mask;
        for &s in &handled {
            during.remove(s);
        }
        let handler = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(note_signal),
            nix::sys::signal::SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only stores an atomic.
        let before: Vec<_> = handled
            .iter()
            .filter_map(|&s| {
                unsafe { nix::sys::signal::sigaction(s, &handler) }
                    .ok()
                    .map(|a| (s, a))
            })
            .collect();
        RESIZED.store(false, Ordering::SeqCst);
        ENDED_BY.store(0, Ordering::SeqCst);
        let status = pump(&master, ttys, out, child, &during, exited);
        for (s, action) in before {
            // SAFETY: putting back what was there.
            let _ = unsafe { nix::sys::signal::sigaction(s, &action) };
        }
        let _ = old_mask.thread_set_mask();
        status
    }
}

/// The relay's loop; see `Pty::relay`.
fn pump(
    master: &OwnedFd,
    ttys: [bool; 3],
    out: RawFd,
    child: &mut Child,
    during: &SigSet,
    exited: &dyn Fn(),
) -> std::io::Result<Relayed> {
    let pidfd = pidfd_open(child.id());
    let mut typed: Vec<u8> = Vec::new();
    // Our stdin, a terminal, taken (raw) while we are in its foreground (see the header);
    // put back as it was when this returns.
    let mut terminal = Terminal::default();
    let mut input_ended = false;
    let mut showing = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let reading = ttys[0] && !input_ended && terminal.take_if_foreground();
        if has_exited(child.id()) {
            exited();
            if showing {
                show_all(master, out, &mut buf);
            }
            return child.wait().map(Relayed::Exited);
        }
        let sig = ENDED_BY.load(Ordering::SeqCst);
        if sig != 0 {
            return Ok(Relayed::EndedBy(sig));
        }
        continue_if_stopped(child.id());
        if RESIZED.swap(false, Ordering::SeqCst) {
            terminal.again();
            let first = ttys.iter().position(|&t| t).unwrap_or(0) as RawFd;
            if let Some(size) = window_size(first) {
                set_window_size(master.as_raw_fd(), &size);
            }
        }
        let mut fds = Vec::with_capacity(3);
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        let master_at = fds.len();
        if showing {
            let mut want = PollFlags::POLLIN;
            if !typed.is_empty() {
                want |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(master.as_fd(), want));
        }
        let stdin_at = fds.len();
        let read_stdin = reading && typed.len() < TYPED_AHEAD;
        if read_stdin {
            fds.push(PollFd::new(fd(0), PollFlags::POLLIN));
        }
        // Without a pidfd (an old kernel) the child is looked at every 100 ms; in the
        // background, whether we are in the foreground now every 200 ms (nothing says so:
        // `fg` continues only a stopped job).
        let look_again = match (pidfd.is_some(), ttys[0] && !input_ended && !reading) {
            (false, _) => Some(100),
            (true, true) => Some(200),
            (true, false) => None,
        };
        let timeout = look_again.map(|ms| {
            nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_millis(ms))
        });
        match nix::poll::ppoll(&mut fds, timeout, Some(*during)) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => {
                // Nothing to relay with: wait for the command alone.
                exited();
                return child.wait().map(Relayed::Exited);
            }
        }
        let ready = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        if read_stdin && !ready(stdin_at).is_empty() {
            match nix::unistd::read(fd(0), &mut buf) {
                Ok(0) => input_ended = true,
                Ok(n) => typed.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => input_ended = true,
            }
        }
        if showing {
            let r = ready(master_at);
            if r.contains(PollFlags::POLLOUT) && !typed.is_empty() {
                match nix::unistd::write(master, &typed) {
                    Ok(n) => {
                        typed.drain(..n);
                    }
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(_) => typed.clear(),
                }
            }
            if r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                match nix::unistd::read(master, &mut buf) {
                    Ok(0) => showing = false,
                    Ok(n) => write_all(out, &buf[..n]),
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    // EIO: every end of the pty's other side is closed.
                    Err(_) => showing = false,
                }
            }
        }
    }
}

/// Most bytes shown from the pty after the command's exit: what it wrote last is there
/// (a pty holds a few KiB), and a process it left running may write for ever.
const SHOWN_AFTER_EXIT: usize = 256 * 1024;

/// Show what the pty still has, after the command's exit.
fn show_all(master: &OwnedFd, out: RawFd, buf: &mut [u8]) {
    let mut shown = 0;
    while shown < SHOWN_AFTER_EXIT {
        match nix::unistd::read(master, buf) {
            Ok(n) if n > 0 => {
                write_all(out, &buf[..n]);
                shown += n;
            }
            _ => break,
        }
    }
}

/// Write all of `bytes` to our `out` (a terminal), giving up on an error.
fn write_all(out: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(fd(out), bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Whether we are in our terminal's foreground process group (stdin's terminal). A terminal
/// that is not our controlling one (`setsid`) has no foreground of ours: it is ours to use.
fn in_foreground() -> bool {
    // SAFETY: tcgetpgrp and getpgrp only look.
    let foreground = unsafe { libc::tcgetpgrp(0) };
    foreground < 0 || foreground == unsafe { libc::getpgrp() }
}

/// Whether child `pid` has exited, left unreaped (so its pid stays ours meanwhile).
fn has_exited(pid: u32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    !matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ),
        Ok(WaitStatus::StillAlive)
    )
}

/// A stopped command is continued at once (see the header).
fn continue_if_stopped(pid: u32) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if let Ok(WaitStatus::Stopped(..)) =
        waitid(Id::Pid(pid), WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG)
    {
        let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new descriptor we then own, or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: as above: a fresh descriptor.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}
