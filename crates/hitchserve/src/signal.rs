//! Signals a service can be stopped with or sent, and how a process ended.
//!
//! Owns our own `Signal` enum and `ExitStatus` so the public API never exposes nix or libc
//! types (we can bump those freely). It does not send anything: `exec` and `process` do.

use std::fmt;
use std::str::FromStr;

/// A POSIX signal that hitchserve can send to a service's process group.
///
/// The names follow the C constants so they read like the man pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// Hang-up; many daemons reload their configuration on it.
    SIGHUP,
    /// Interrupt, as sent by Ctrl-C.
    SIGINT,
    /// Quit; PostgreSQL's "immediate shutdown".
    SIGQUIT,
    /// Kill; cannot be caught or ignored.
    SIGKILL,
    /// User-defined signal 1.
    SIGUSR1,
    /// User-defined signal 2.
    SIGUSR2,
    /// Alarm clock.
    SIGALRM,
    /// Terminate politely: the default stop signal.
    SIGTERM,
    /// Continue a stopped process.
    SIGCONT,
    /// Stop (suspend) a process; cannot be caught.
    SIGSTOP,
    /// Terminal stop, as sent by Ctrl-Z.
    SIGTSTP,
    /// Window size changed.
    SIGWINCH,
    /// Abort, as `abort()` raises: a crash.
    SIGABRT,
    /// Segmentation fault: a crash.
    SIGSEGV,
    /// Bus error: a crash.
    SIGBUS,
    /// Floating-point exception: a crash.
    SIGFPE,
    /// Illegal instruction: a crash.
    SIGILL,
    /// Trace/breakpoint trap.
    SIGTRAP,
    /// Write to a pipe nobody reads.
    SIGPIPE,
}

const ALL: [Signal; 19] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGKILL,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGSTOP,
    Signal::SIGTSTP,
    Signal::SIGWINCH,
    Signal::SIGABRT,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGPIPE,
];

impl Signal {
    pub(crate) fn to_nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as N;
        match self {
            Signal::SIGHUP => N::SIGHUP,
            Signal::SIGINT => N::SIGINT,
            Signal::SIGQUIT => N::SIGQUIT,
            Signal::SIGKILL => N::SIGKILL,
            Signal::SIGUSR1 => N::SIGUSR1,
            Signal::SIGUSR2 => N::SIGUSR2,
            Signal::SIGALRM => N::SIGALRM,
            Signal::SIGTERM => N::SIGTERM,
            Signal::SIGCONT => N::SIGCONT,
            Signal::SIGSTOP => N::SIGSTOP,
            Signal::SIGTSTP => N::SIGTSTP,
            Signal::SIGWINCH => N::SIGWINCH,
            Signal::SIGABRT => N::SIGABRT,
            Signal::SIGSEGV => N::SIGSEGV,
            Signal::SIGBUS => N::SIGBUS,
            Signal::SIGFPE => N::SIGFPE,
            Signal::SIGILL => N::SIGILL,
            Signal::SIGTRAP => N::SIGTRAP,
            Signal::SIGPIPE => N::SIGPIPE,
        }
    }

    /// The signal's number on this platform.
    pub fn number(self) -> i32 {
        self.to_nix() as i32
    }

    /// The C name, e.g. `"SIGTERM"`.
    pub fn name(self) -> &'static str {
        self.to_nix().as_str()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`Signal`] from text.
#[derive(Debug, thiserror::Error)]
#[error("unknown signal `{0}`: use a name such as TERM, SIGINT or KILL, or its number")]
pub struct ParseSignalError(String);

impl FromStr for Signal {
    type Err = ParseSignalError;

    /// Accepts `SIGTERM`, `TERM`, `term` or `15`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i32>() {
            return ALL
                .into_iter()
                .find(|sig| sig.number() == n)
                .ok_or_else(|| ParseSignalError(s.to_owned()));
        }
        let upper = t.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        ALL.into_iter()
            .find(|sig| &sig.name()[3..] == name)
            .ok_or_else(|| ParseSignalError(s.to_owned()))
    }
}

/// How a service's main process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited by itself with this code.
    Code(i32),
    /// It was ended by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    pub(crate) fn from_std(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signaled(sig),
            // Stopped/continued statuses never reach us: we only wait for exits.
            (None, None) => ExitStatus::Code(-1),
        }
    }

    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The exit code, if it exited by itself.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signaled(_) => None,
        }
    }

    /// The signal number, if a signal ended it.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signaled(s) => Some(s),
            ExitStatus::Code(_) => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!("TERM".parse::<Signal>().unwrap(), Signal::SIGTERM);
        assert_eq!("sigint".parse::<Signal>().unwrap(), Signal::SIGINT);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::SIGKILL);
        assert!("NOPE".parse::<Signal>().is_err());
    }

    #[test]
    fn exit_status_reads_like_a_sentence() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert_eq!(ExitStatus::Signaled(9).to_string(), "signal 9 (SIGKILL)");
    }
}
