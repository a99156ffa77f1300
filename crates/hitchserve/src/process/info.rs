//! The plain data a `Process` hands out: state, CPU times, memory, threads, open files,
//! connections, I/O, context switches, ids and resource limits — our own types, so the
//! public API never shows procfs or nix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A process's scheduling state, as `ps` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Running or runnable (`R`).
    Running,
    /// Sleeping, interruptibly (`S`).
    Sleeping,
    /// Waiting for I/O, uninterruptibly (`D`).
    DiskSleep,
    /// Stopped by a signal, e.g. after `suspend` (`T`).
    Stopped,
    /// Stopped by a debugger (`t`).
    TracingStop,
    /// Exited, not yet reaped (`Z`).
    Zombie,
    /// Dead (`X`).
    Dead,
    /// An idle kernel thread (`I`).
    Idle,
    /// Anything else (`W`, `P`, ...).
    Other,
}

/// CPU time used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTimes {
    /// In user mode.
    pub user: Duration,
    /// In the kernel.
    pub system: Duration,
    /// By reaped children, in user mode.
    pub children_user: Duration,
    /// By reaped children, in the kernel.
    pub children_system: Duration,
}

/// Memory use, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Resident set size.
    pub rss: u64,
    /// Virtual memory size.
    pub vms: u64,
    /// Resident memory shared with other processes (file-backed or shared memory).
    pub shared: u64,
    /// Code.
    pub text: u64,
    /// Data and stack.
    pub data: u64,
}

/// One thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThreadInfo {
    /// Its thread id.
    pub id: u32,
    /// CPU time in user mode.
    pub user: Duration,
    /// CPU time in the kernel.
    pub system: Duration,
}

/// A regular file the process has open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// Its path.
    pub path: PathBuf,
    /// The file descriptor.
    pub fd: i32,
}

/// The kind of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionKind {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// UDP over IPv4 or IPv6.
    Udp,
    /// A Unix domain socket.
    Unix,
}

/// A socket the process has open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The file descriptor.
    pub fd: i32,
    /// TCP, UDP or Unix.
    pub kind: ConnectionKind,
    /// Local address (TCP, UDP).
    pub local: Option<SocketAddr>,
    /// Remote address (TCP, UDP); unspecified for a listening socket.
    pub remote: Option<SocketAddr>,
    /// State in psutil's words: `LISTEN`, `ESTABLISHED`, `TIME_WAIT`, ..., `NONE` for UDP.
    pub state: String,
    /// The bound path of a Unix socket, if any.
    pub path: Option<PathBuf>,
}

/// I/O done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoCounters {
    /// Read system calls.
    pub read_count: u64,
    /// Write system calls.
    pub write_count: u64,
    /// Bytes read from storage.
    pub read_bytes: u64,
    /// Bytes written to storage.
    pub write_bytes: u64,
    /// Bytes passed to read-like calls.
    pub read_chars: u64,
    /// Bytes passed to write-like calls.
    pub write_chars: u64,
}

/// Context switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtxSwitches {
    /// It gave up the CPU (waiting for something).
    pub voluntary: u64,
    /// It was preempted.
    pub involuntary: u64,
}

/// User or group ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    /// Real.
    pub real: u32,
    /// Effective.
    pub effective: u32,
    /// Saved.
    pub saved: u32,
}

/// A resource limit (see `getrlimit(2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// CPU time, seconds.
    Cpu,
    /// File size, bytes.
    FileSize,
    /// Data segment, bytes.
    Data,
    /// Stack, bytes.
    Stack,
    /// Core file size, bytes.
    Core,
    /// Resident set, bytes.
    Rss,
    /// Processes of the user.
    Processes,
    /// Open files.
    OpenFiles,
    /// Locked memory, bytes.
    LockedMemory,
    /// Address space, bytes.
    AddressSpace,
}

/// Soft and hard limit; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// The limit in force.
    pub soft: Option<u64>,
    /// The ceiling the soft limit may be raised to.
    pub hard: Option<u64>,
}
