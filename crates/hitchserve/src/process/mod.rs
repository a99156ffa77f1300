//! The psutil-like handle on a process: what a test asks of a service's processes.
//!
//! Owns reading `/proc` (through procfs) and signalling (through nix) for one pid, with our
//! own plain types in the API. A `Process` remembers its start time, so a pid reused by
//! another process is reported as gone (`Error::NoSuchProcess`), never inspected by mistake.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use procfs::process::{FDTarget, ProcState};

use crate::error::{Error, Result};
use crate::signal::Signal;

mod info;

pub use info::{
    Connection, ConnectionKind, CpuTimes, CtxSwitches, Ids, IoCounters, MemoryInfo, OpenFile,
    Resource, Rlimit, Status, ThreadInfo,
};

/// A process of a service (its main process or any descendant).
///
/// ```no_run
/// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
/// let pg = bundle.service("Postgres")?.process()?;
/// let ports: Vec<u16> = pg.connections()?.iter()
///     .filter(|c| c.state == "LISTEN")
///     .filter_map(|c| c.local.map(|a| a.port()))
///     .collect();
/// println!("rss {} bytes, {} children, listening on {ports:?}",
///     pg.memory_info()?.rss, pg.children(true)?.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pid: u32,
    /// Start time in clock ticks since boot: tells this process from a later one with the
    /// same pid.
    started: u64,
}

fn info_err(pid: u32, what: &'static str) -> impl Fn(procfs::ProcError) -> Error {
    move |e| match e {
        procfs::ProcError::NotFound(_) => Error::NoSuchProcess { pid },
        other => Error::ProcessInfo {
            pid,
            what,
            message: other.to_string(),
        },
    }
}

impl Process {
    /// The process with this pid, if it exists now.
    pub fn new(pid: u32) -> Result<Process> {
        let p = procfs::process::Process::new(pid as i32).map_err(info_err(pid, "open"))?;
        let stat = p.stat().map_err(info_err(pid, "stat"))?;
        Ok(Process {
            pid,
            started: stat.starttime,
        })
    }

    /// The procfs handle, after checking the pid still means this process.
    fn proc(&self) -> Result<procfs::process::Process> {
        let p =
            procfs::process::Process::new(self.pid as i32).map_err(info_err(self.pid, "open"))?;
        let stat = p.stat().map_err(info_err(self.pid, "stat"))?;
        if stat.starttime != self.started {
            return Err(Error::NoSuchProcess { pid: self.pid });
        }
        Ok(p)
    }

    fn stat(&self) -> Result<procfs::process::Stat> {
        self.proc()?.stat().map_err(info_err(self.pid, "stat"))
    }

    fn status_file(&self) -> Result<procfs::process::Status> {
        self.proc()?.status().map_err(info_err(self.pid, "status"))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its parent's pid.
    pub fn ppid(&self) -> Result<u32> {
        Ok(self.stat()?.ppid as u32)
    }

    /// Its parent, if it still exists.
    pub fn parent(&self) -> Result<Option<Process>> {
        match self.ppid()? {
            0 => Ok(None),
            ppid => Ok(Process::new(ppid).ok()),
        }
    }

    /// Its children; with `recursive`, all descendants (breadth first).
    pub fn children(&self, recursive: bool) -> Result<Vec<Process>> {
        self.proc()?;
        let mut by_parent: HashMap<u32, Vec<Process>> = HashMap::new();
        let all = procfs::process::all_processes().map_err(info_err(self.pid, "list processes"))?;
        for p in all.flatten() {
            if let Ok(stat) = p.stat() {
                by_parent
                    .entry(stat.ppid as u32)
                    .or_default()
                    .push(Process {
                        pid: stat.pid as u32,
                        started: stat.starttime,
                    });
            }
        }
        let mut out = Vec::new();
        let mut queue = vec![self.pid];
        while let Some(parent) = queue.pop() {
            for child in by_parent.remove(&parent).unwrap_or_default() {
                if recursive {
                    queue.insert(0, child.pid);
                }
                out.push(child);
            }
        }
        Ok(out)
    }

    /// Its command line.
    pub fn cmdline(&self) -> Result<Vec<String>> {
        self.proc()?
            .cmdline()
            .map_err(info_err(self.pid, "cmdline"))
    }

    /// Its name (the executable's, at most 15 characters).
    pub fn name(&self) -> Result<String> {
        Ok(self.stat()?.comm)
    }

    /// Its executable.
    pub fn exe(&self) -> Result<PathBuf> {
        self.proc()?.exe().map_err(info_err(self.pid, "exe"))
    }

    /// Its working directory.
    pub fn cwd(&self) -> Result<PathBuf> {
        self.proc()?.cwd().map_err(info_err(self.pid, "cwd"))
    }

    /// Its environment (non-UTF-8 bytes replaced).
    pub fn environ(&self) -> Result<HashMap<String, String>> {
        let env = self
            .proc()?
            .environ()
            .map_err(info_err(self.pid, "environ"))?;
        Ok(env
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect())
    }

    /// Its scheduling state.
    pub fn status(&self) -> Result<Status> {
        let state = self.stat()?.state().map_err(info_err(self.pid, "state"))?;
        Ok(match state {
            ProcState::Running => Status::Running,
            ProcState::Sleeping => Status::Sleeping,
            ProcState::Waiting => Status::DiskSleep,
            ProcState::Stopped => Status::Stopped,
            ProcState::Tracing => Status::TracingStop,
            ProcState::Zombie => Status::Zombie,
            ProcState::Dead => Status::Dead,
            ProcState::Idle => Status::Idle,
            _ => Status::Other,
        })
    }

    /// When it started.
    pub fn create_time(&self) -> Result<SystemTime> {
        let boot = procfs::boot_time_secs().map_err(info_err(self.pid, "boot time"))?;
        let ticks = procfs::ticks_per_second().max(1);
        let since_boot = Duration::from_nanos(self.started.saturating_mul(1_000_000_000) / ticks);
        Ok(UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
    }

    /// CPU time used so far.
    pub fn cpu_times(&self) -> Result<CpuTimes> {
        let s = self.stat()?;
        let t = ticks;
        Ok(CpuTimes {
            user: t(s.utime),
            system: t(s.stime),
            children_user: t(s.cutime.max(0) as u64),
            children_system: t(s.cstime.max(0) as u64),
        })
    }

    /// Percent of one CPU used over the next `interval` (blocks that long; 100 = one core).
    pub fn cpu_percent(&self, interval: Duration) -> Result<f64> {
        let busy = |c: CpuTimes| (c.user + c.system).as_secs_f64();
        let (t0, c0) = (Instant::now(), self.cpu_times()?);
        std::thread::sleep(interval);
        let (t1, c1) = (Instant::now(), self.cpu_times()?);
        let wall = (t1 - t0).as_secs_f64();
        Ok(if wall > 0.0 {
            100.0 * (busy(c1) - busy(c0)) / wall
        } else {
            0.0
        })
    }

    /// Memory use.
    pub fn memory_info(&self) -> Result<MemoryInfo> {
        let m = self.proc()?.statm().map_err(info_err(self.pid, "statm"))?;
        let page = procfs::page_size();
        Ok(MemoryInfo {
            rss: m.resident * page,
            vms: m.size * page,
            shared: m.shared * page,
            text: m.text * page,
            data: m.data * page,
        })
    }

    /// Its resident memory as a percentage of the machine's.
    pub fn memory_percent(&self) -> Result<f64> {
        let rss = self.memory_info()?.rss as f64;
        let total = procfs::Current::current()
            .map(|m: procfs::Meminfo| m.mem_total)
            .map_err(info_err(self.pid, "meminfo"))? as f64;
        Ok(if total > 0.0 {
            100.0 * rss / total
        } else {
            0.0
        })
    }

    /// How many threads it has.
    pub fn num_threads(&self) -> Result<usize> {
        Ok(self.stat()?.num_threads.max(0) as usize)
    }

    /// Its threads, with their CPU times.
    pub fn threads(&self) -> Result<Vec<ThreadInfo>> {
        let tasks = self.proc()?.tasks().map_err(info_err(self.pid, "tasks"))?;
        Ok(tasks
            .flatten()
            .filter_map(|t| t.stat().ok())
            .map(|s| ThreadInfo {
                id: s.pid as u32,
                user: ticks(s.utime),
                system: ticks(s.stime),
            })
            .collect())
    }

    /// How many file descriptors it has open.
    pub fn num_fds(&self) -> Result<usize> {
        self.proc()?.fd_count().map_err(info_err(self.pid, "fds"))
    }

    /// The regular files it has open.
    pub fn open_files(&self) -> Result<Vec<OpenFile>> {
        let fds = self.proc()?.fd().map_err(info_err(self.pid, "fds"))?;
        Ok(fds
            .flatten()
            .filter_map(|fd| match fd.target {
                FDTarget::Path(path) if path.is_file() => Some(OpenFile { path, fd: fd.fd }),
                _ => None,
            })
            .collect())
    }

    /// Its sockets (TCP, UDP, Unix) with addresses and state: e.g. which ports it listens on.
    pub fn connections(&self) -> Result<Vec<Connection>> {
        let p = self.proc()?;
        let sockets: HashMap<u64, i32> = p
            .fd()
            .map_err(info_err(self.pid, "fds"))?
            .flatten()
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(inode) => Some((inode, fd.fd)),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        // The process's own network namespace: read its tables, not ours.
        for table in [p.tcp(), p.tcp6()].into_iter().flatten() {
            for e in table {
                if let Some(&fd) = sockets.get(&e.inode) {
                    out.push(Connection {
                        fd,
                        kind: ConnectionKind::Tcp,
                        local: Some(e.local_address),
                        remote: Some(e.remote_address),
                        state: tcp_state(&e.state),
                        path: None,
                    });
                }
            }
        }
        for table in [p.udp(), p.udp6()].into_iter().flatten() {
            for e in table {
                if let Some(&fd) = sockets.get(&e.inode) {
                    out.push(Connection {
                        fd,
                        kind: ConnectionKind::Udp,
                        local: Some(e.local_address),
                        remote: Some(e.remote_address),
                        state: "NONE".to_owned(),
                        path: None,
                    });
                }
            }
        }
        for e in p.unix().into_iter().flatten() {
            if let Some(&fd) = sockets.get(&e.inode) {
                out.push(Connection {
                    fd,
                    kind: ConnectionKind::Unix,
                    local: None,
                    remote: None,
                    state: "NONE".to_owned(),
                    path: e.path,
                });
            }
        }
        out.sort_by_key(|c| c.fd);
        Ok(out)
    }

    /// I/O done so far (reading another user's process needs privileges).
    pub fn io_counters(&self) -> Result<IoCounters> {
        let io = self.proc()?.io().map_err(info_err(self.pid, "io"))?;
        Ok(IoCounters {
            read_count: io.syscr,
            write_count: io.syscw,
            read_bytes: io.read_bytes,
            write_bytes: io.write_bytes,
            read_chars: io.rchar,
            write_chars: io.wchar,
        })
    }

    /// Context switches so far.
    pub fn num_ctx_switches(&self) -> Result<CtxSwitches> {
        let s = self.status_file()?;
        Ok(CtxSwitches {
            voluntary: s.voluntary_ctxt_switches.unwrap_or(0),
            involuntary: s.nonvoluntary_ctxt_switches.unwrap_or(0),
        })
    }

    /// Its nice value.
    pub fn nice(&self) -> Result<i32> {
        Ok(self.stat()?.nice as i32)
    }

    /// One of its resource limits.
    pub fn rlimit(&self, resource: Resource) -> Result<Rlimit> {
        let l = self
            .proc()?
            .limits()
            .map_err(info_err(self.pid, "limits"))?;
        let limit = match resource {
            Resource::Cpu => l.max_cpu_time,
            Resource::FileSize => l.max_file_size,
            Resource::Data => l.max_data_size,
            Resource::Stack => l.max_stack_size,
            Resource::Core => l.max_core_file_size,
            Resource::Rss => l.max_resident_set,
            Resource::Processes => l.max_processes,
            Resource::OpenFiles => l.max_open_files,
            Resource::LockedMemory => l.max_locked_memory,
            Resource::AddressSpace => l.max_address_space,
        };
        let value = |v: procfs::process::LimitValue| match v {
            procfs::process::LimitValue::Unlimited => None,
            procfs::process::LimitValue::Value(n) => Some(n),
        };
        Ok(Rlimit {
            soft: value(limit.soft_limit),
            hard: value(limit.hard_limit),
        })
    }

    /// The CPUs it may run on.
    pub fn cpu_affinity(&self) -> Result<Vec<u32>> {
        let ranges = self.status_file()?.cpus_allowed_list.unwrap_or_default();
        Ok(ranges.into_iter().flat_map(|(a, b)| a..=b).collect())
    }

    /// Its user ids.
    pub fn uids(&self) -> Result<Ids> {
        let s = self.status_file()?;
        Ok(Ids {
            real: s.ruid,
            effective: s.euid,
            saved: s.suid,
        })
    }

    /// Its group ids.
    pub fn gids(&self) -> Result<Ids> {
        let s = self.status_file()?;
        Ok(Ids {
            real: s.rgid,
            effective: s.egid,
            saved: s.sgid,
        })
    }

    /// The name of its real user (the uid as text if it has no name).
    pub fn username(&self) -> Result<String> {
        let uid = self.uids()?.real;
        Ok(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name))
    }

    /// Its controlling terminal, e.g. `/dev/pts/3`, if any.
    pub fn terminal(&self) -> Result<Option<String>> {
        let (major, minor) = self.stat()?.tty_nr();
        Ok(match major {
            0 => None,
            136..=143 => Some(format!("/dev/pts/{}", (major - 136) * 256 + minor)),
            4 if minor < 64 => Some(format!("/dev/tty{minor}")),
            4 => Some(format!("/dev/ttyS{}", minor - 64)),
            _ => Some(format!("tty({major},{minor})")),
        })
    }

    /// Whether it still exists (a zombie counts as gone).
    pub fn is_running(&self) -> bool {
        self.status()
            .is_ok_and(|s| !matches!(s, Status::Zombie | Status::Dead))
    }

    /// Send it a signal.
    pub fn send_signal(&self, signal: Signal) -> Result<()> {
        self.proc()?;
        kill(Pid::from_raw(self.pid as i32), signal.to_nix()).map_err(|e| match e {
            nix::errno::Errno::ESRCH => Error::NoSuchProcess { pid: self.pid },
            other => Error::ProcessInfo {
                pid: self.pid,
                what: "signal",
                message: other.to_string(),
            },
        })
    }

    /// Stop it (`SIGSTOP`) until `resume`.
    pub fn suspend(&self) -> Result<()> {
        self.send_signal(Signal::SIGSTOP)
    }

    /// Let a suspended process run again (`SIGCONT`).
    pub fn resume(&self) -> Result<()> {
        self.send_signal(Signal::SIGCONT)
    }

    /// Ask it to end (`SIGTERM`).
    pub fn terminate(&self) -> Result<()> {
        self.send_signal(Signal::SIGTERM)
    }

    /// End it now (`SIGKILL`).
    pub fn kill(&self) -> Result<()> {
        self.send_signal(Signal::SIGKILL)
    }

    /// Wait up to `timeout` for it to end; true if it has. Woken by the exit itself (a pidfd),
    /// not by polling.
    pub fn wait(&self, timeout: Duration) -> bool {
        if !self.is_running() {
            return true;
        }
        wait_pid(self.pid, timeout);
        !self.is_running()
    }
}

/// Block until process `pid` exits (it may stay a zombie) or `timeout` passes; true if it
/// exited. Woken by the exit itself through a pidfd; where the kernel gives none (before 5.3,
/// a seccomp filter that refuses it), by a look every 10 ms — never "exited" at once for
/// want of one (a probe then lost its time limit). A signal to this thread meanwhile does
/// not cut the wait short.
pub(crate) fn wait_pid(pid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now().checked_add(timeout);
    let left = || {
        deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(std::time::Instant::now())
        })
    };
    // SAFETY: plain syscalls on integers and a descriptor we own and close.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as libc::c_int };
    if fd >= 0 {
        let exited = loop {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left().as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break n == 1;
        };
        // SAFETY: ours, closed once.
        unsafe { libc::close(fd) };
        return exited;
    }
    loop {
        let gone = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.stat())
            .map_or(true, |st| matches!(st.state, 'Z' | 'X'));
        if gone {
            return true;
        }
        let left = left();
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

fn ticks(n: u64) -> Duration {
    let per_sec = procfs::ticks_per_second().max(1);
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / per_sec)
}

fn tcp_state(state: &procfs::net::TcpState) -> String {
    use procfs::net::TcpState as T;
    match state {
        T::Established => "ESTABLISHED",
        T::SynSent => "SYN_SENT",
        T::SynRecv => "SYN_RECV",
        T::FinWait1 => "FIN_WAIT1",
        T::FinWait2 => "FIN_WAIT2",
        T::TimeWait => "TIME_WAIT",
        T::Close => "CLOSE",
        T::CloseWait => "CLOSE_WAIT",
        T::LastAck => "LAST_ACK",
        T::Listen => "LISTEN",
        T::Closing => "CLOSING",
        T::NewSynRecv => "NEW_SYN_RECV",
    }
    .to_owned()
}
