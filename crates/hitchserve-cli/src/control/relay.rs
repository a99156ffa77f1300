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
//! mode alone and read nothing from it — the terminal would stop us for trying — and the
//! command reads no input. A SIGTERM or SIGHUP to us ends the relay: our terminal is put
//! back, and we die of the signal (the command then gets its SIGTERM, as any `exec`'s does).
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

/// Our terminal's size changed (SIGWINCH).
static RESIZED: AtomicBool = AtomicBool::new(false);
/// A SIGTERM or SIGHUP came (its number; 0: none).
static ENDED_BY: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: libc::c_int) {
    match sig {
        libc::SIGWINCH => RESIZED.store(true, Ordering::SeqCst),
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

/// Our stdin as it was before it was made raw; put back when dropped.
struct RawMode(Option<Termios>);

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
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
        // In the background, the terminal is not ours to set or read (see the header).
        let ttys = [ttys[0] && in_foreground(), ttys[1], ttys[2]];
        let _raw = if ttys[0] {
            let before = termios::tcgetattr(fd(0)).ok();
            if let Some(b) = &before {
                let mut raw = b.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(fd(0), SetArg::TCSANOW, &raw);
            }
            RawMode(before)
        } else {
            RawMode(None)
        };
        // SIGCHLD and SIGWINCH are blocked but while waiting (`ppoll`), so that neither is
        // missed between a look and the wait.
        let handled = [
            Signal::SIGCHLD,
            Signal::SIGWINCH,
            Signal::SIGTERM,
            Signal::SIGHUP,
        ];
        let mut mask = SigSet::empty();
        for s in handled {
            mask.add(s);
        }
        let old_mask = mask
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .unwrap_or_else(|_| SigSet::empty());
        let mut during = old_mask;
        for s in handled {
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
    let mut reading = ttys[0];
    let mut showing = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
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
        // Without a pidfd (an old kernel) the child is looked at every 100 ms.
        let timeout = if pidfd.is_some() {
            None
        } else {
            Some(nix::sys::time::TimeSpec::from_duration(
                std::time::Duration::from_millis(100),
            ))
        };
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
                Ok(0) => reading = false,
                Ok(n) => typed.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => reading = false,
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

/// Show what the pty still has, after the command's exit.
fn show_all(master: &OwnedFd, out: RawFd, buf: &mut [u8]) {
    while let Ok(n) = nix::unistd::read(master, buf) {
        if n == 0 {
            break;
        }
        write_all(out, &buf[..n]);
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

/// Whether we are in our terminal's foreground process group (stdin's terminal).
fn in_foreground() -> bool {
    // SAFETY: tcgetpgrp and getpgrp only look.
    unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
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
