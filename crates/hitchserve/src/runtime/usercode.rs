//! Which of a service's threads is inside user code — a readiness closure or a hook — that
//! may block forever. Stopping must then neither wait for that thread nor for what only that
//! thread would report; a startup timeout names it.
//!
//! Owns one atomic per service, set while a guard lives. Read without the state lock, on
//! purpose: the thread inside user code may hold nothing, and a stop must not wait for it.

use std::sync::atomic::{AtomicU8, Ordering};

/// User code a service's thread may be stuck in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum UserCode {
    Readiness = 1,
    Setup = 2,
    Poststart = 3,
}

impl UserCode {
    fn from_u8(v: u8) -> Option<UserCode> {
        match v {
            1 => Some(UserCode::Readiness),
            2 => Some(UserCode::Setup),
            3 => Some(UserCode::Poststart),
            _ => None,
        }
    }

    pub(crate) fn words(self) -> &'static str {
        match self {
            UserCode::Readiness => "readiness check",
            UserCode::Setup => "setup hook",
            UserCode::Poststart => "poststart hook",
        }
    }
}

/// Per service, the user code one of its threads runs now (0: none).
pub(crate) struct UserCodes(Vec<AtomicU8>);

/// Marks a service's thread as inside user code until dropped.
pub(crate) struct InUserCode<'a>(&'a AtomicU8);

impl Drop for InUserCode<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl UserCodes {
    pub(crate) fn new(n: usize) -> UserCodes {
        UserCodes((0..n).map(|_| AtomicU8::new(0)).collect())
    }

    /// Say that this thread runs `what` of service `idx` until the guard is dropped.
    pub(crate) fn entering(&self, idx: usize, what: UserCode) -> InUserCode<'_> {
        self.0[idx].store(what as u8, Ordering::Release);
        InUserCode(&self.0[idx])
    }

    /// The user code a thread of service `idx` is running now, if any.
    pub(crate) fn get(&self, idx: usize) -> Option<UserCode> {
        UserCode::from_u8(self.0[idx].load(Ordering::Acquire))
    }

    /// Whether a thread of any service is in user code.
    pub(crate) fn any(&self) -> bool {
        (0..self.0.len()).any(|idx| self.get(idx).is_some())
    }
}
