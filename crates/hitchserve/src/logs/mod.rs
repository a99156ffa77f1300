//! Logs as test evidence: every line every service wrote, and the queries on them.
//!
//! One file per idea: a line and where it came from (`line`), [`Logs`] views (`view`: a
//! service or the whole bundle, both streams or one, JSON), [`Tail`] cursors that wait for
//! lines (`tail`: `until`, `until_json`, `follow`, `grep`), the store (`store`) and the
//! append-only blocks its line bytes live in, shared while they fill (`block`), the line
//! splitter (`split`), the sink that stores and prints (`sink`), live printing (`console`)
//! and the run's `all.log` (`files`); this file re-exports them and owns `LogStats`. The
//! files import each other only downwards, never through these re-exports. It does not read
//! service pipes (the runtime's supervisor does).
//!
//! Waiting is done by notification, never by polling, and never hangs: a wait ends when
//! its line arrives, its timeout passes, or the service's output ends.
//!
//! A tail also sees a line a service has started but not ended, once the service has been
//! quiet for a moment (a partial line: a prompt such as `Password: `), and never hands out
//! the same bytes twice: after a partial, it hands out only the rest of that line. Stored
//! lines, queries on them and readiness only ever see whole lines.

pub(crate) mod block;
pub(crate) mod console;
pub(crate) mod files;
pub(crate) mod line;
pub(crate) mod sink;
pub(crate) mod split;
pub(crate) mod store;
pub(crate) mod tail;
pub(crate) mod view;

pub(crate) use line::{Filter, Source};
pub use line::{LogLine, Part, Stream};
pub(crate) use sink::Sink;
pub(crate) use split::{End, LineSplitter};
pub(crate) use store::LogStore;
#[cfg(feature = "tokio")]
pub(crate) use tail::WaitPieces;
pub use tail::{Follow, Tail};
pub use view::Logs;

/// Figures about the log store, from [`Bundle::log_stats`](crate::Bundle::log_stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Lines stored (every service and the bundle's own).
    pub lines: u64,
    /// Bytes of line storage in memory now: line bytes and the index that finds them.
    pub bytes_in_memory: usize,
    /// The limit set by [`Bundle::log_memory_limit`](crate::Bundle::log_memory_limit).
    pub memory_limit: usize,
    /// The most bytes of line storage there have been in memory at once. It can pass the
    /// limit by what the log writer has not yet put on disk.
    pub peak_bytes_in_memory: usize,
    /// Lines not written to the run's `all.log` because it failed (a full disk, the run
    /// directory deleted); 0 while all is well.
    pub lines_not_written: u64,
    /// Bytes of those lines (without labels).
    pub bytes_not_written: u64,
    /// Of those, lines also dropped from memory, past the memory limit: queries show them
    /// as lost ([`LogLine::is_lost`]).
    pub lines_lost: u64,
    /// Bytes of the lost lines.
    pub bytes_lost: u64,
}

impl LogStats {
    pub(crate) fn of(store: &LogStore) -> LogStats {
        let (lines, bytes_in_memory, memory_limit, losses) = store.stats();
        LogStats {
            lines,
            bytes_in_memory,
            memory_limit,
            peak_bytes_in_memory: losses.peak,
            lines_not_written: losses.unwritten_lines,
            bytes_not_written: losses.unwritten_bytes,
            lines_lost: losses.lost_lines,
            bytes_lost: losses.lost_bytes,
        }
    }
}
