//! The signals that stop `up` (SIGINT, SIGTERM, SIGHUP), routed through a pipe to a
//! thread that waits on it, and the exit code a shell gives a process stopped by one.
//!
//! Owns the handler and the pipe, not what a signal does (that is `up`'s). Invariant: the
//! handler makes only async-signal-safe calls, and exec resets it, so services get the
//! default actions (a blocked signal mask would be inherited instead).

use std::sync::atomic::{AtomicI32, Ordering};

use crate::ExitCode;

/// The signal that asked us to stop, once one did.
pub(super) static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The write end of the signal pipe, for the handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: only async-signal-safe calls: a non-blocking write of the signal number
        // to a pipe we own, with errno kept for the interrupted code.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [sig as u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Whether `sig` is ignored now — as our parent left it (`nohup` ignores SIGHUP, a shell
/// without job control SIGINT and SIGQUIT for a command run with `&`): such a signal is
/// left ignored, never handled, as a shell's commands do.
pub(super) fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: a query (no new action): fills `old` with the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Route SIGINT, SIGTERM and SIGHUP to a pipe; returns its read end (see [`next_signal`]).
/// A signal our parent set to be ignored (`nohup`, a background job) stays ignored.
pub(super) fn install_signal_pipe() -> Result<libc::c_int, String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors; sigaction installs a handler that only
    // makes async-signal-safe calls.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(format!(
                "cannot make a pipe: {}",
                std::io::Error::last_os_error()
            ));
        }
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK);
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            if !ignored(s) {
                libc::sigaction(s, &action, std::ptr::null_mut());
            }
        }
    }
    Ok(fds[0])
}

/// Block until a signal arrives on the pipe; returns its number.
pub(super) fn next_signal(pipe: libc::c_int) -> libc::c_int {
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reading one byte from the pipe's read end, which we own.
        let n = unsafe { libc::read(pipe, byte.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return libc::c_int::from(byte[0]);
        }
        if n == 0 {
            return libc::SIGTERM;
        }
    }
}

/// The next signal caught, or `None` once the pipe can't say any more (closed, or an error
/// other than an interrupted read): for a loop that must end then, not spin.
pub(super) fn another_signal(pipe: libc::c_int) -> Option<libc::c_int> {
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reading one byte from the pipe's read end, which we own.
        let n = unsafe { libc::read(pipe, byte.as_mut_ptr().cast(), 1) };
        match n {
            1 => return Some(libc::c_int::from(byte[0])),
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
}

/// The exit code of a process stopped by `sig`, as shells report it.
pub(super) fn signal_exit(sig: libc::c_int) -> ExitCode {
    ExitCode::from((128 + sig).clamp(0, 255) as u8)
}
