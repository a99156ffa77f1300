//! Stopping a run: every service's stop signal in parallel, SIGKILL to what is left after
//! the grace, then whatever left its group (the run's cgroup; the marker sweep through
//! `/proc` without one, or once something marked was started outside it), then waiting
//! until every supervisor has drained and reaped.
//!
//! Owns the shutdown order, stopping one service (`stop_one`: the same steps for its group
//! alone, and a restart by hand; what left its group is caught at shutdown) and the marker
//! sweep (`sweep`). A service whose thread is stuck in user code (a readiness closure or a
//! hook that never returns) can't report its own end: it counts as done once nothing of its
//! group is alive, and nobody waits for that thread.

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;

use crate::exec::{service_marker, MARKER_VAR, SERVICE_MARKER_VAR};
use crate::guardian;
use crate::pidwindow::{PidMark, PidWindow};
use crate::runtime::state::{Event, Phase, ServiceState};
use crate::runtime::supervisor::{group_alive, has_exited, GROUP_CHECK, READER_DRAIN};
use crate::runtime::usercode::UserCode;
use crate::runtime::{deadline_after, Runtime};
use crate::signal::Signal;

/// After SIGKILL, how long processes may take to die before shutdown stops waiting.
const KILLED_GRACE: Duration = Duration::from_secs(10);

impl Runtime {
    /// Service `idx`, stopped by hand (`stop`, `restart`) or about to be restarted by its
    /// policy, is gone: so is what it started that left its group (`setsid`, a double
    /// fork), found by the service's marker as the bundle's stop finds the run's (a worker
    /// left listening would take the port its next start needs). Not at a crash without a
    /// restart: what a one-shot leaves behind may be meant to run on; the bundle's stop
    /// ends it.
    pub(crate) fn sweep_service(&self, idx: usize) {
        let marker = service_marker(&self.run.id, &self.services()[idx].name);
        let needle = format!("{SERVICE_MARKER_VAR}={marker}");
        sweep(&needle, self.born_after.as_ref(), &self.ended_pids());
    }

    /// Stop every service: stop signal to each group in parallel, SIGKILL to what is left
    /// of each group after `timeout` (the main process exiting first doesn't cut its group's
    /// grace short), then kill whatever left its group. Returns once all are reaped.
    /// `meanwhile` runs once the stop signals are sent, while the services stop.
    pub(crate) fn stop_all(&self, timeout: Duration, meanwhile: impl FnOnce()) {
        let t0 = Instant::now();
        let deadline = deadline_after(t0, timeout);
        let mut stopping = Vec::new();
        {
            let mut states = self.lock();
            // Under the lock: a start by hand checks it under the same lock.
            self.stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
            for idx in 0..states.len() {
                let main_exited = states[idx].pid().is_some_and(has_exited);
                let event = Event::Stop {
                    deadline,
                    main_exited,
                    then_start: None,
                };
                // Stopping asks for nothing but signals (sent here, under the lock).
                let (_, signalled) = self.apply_locked(&mut states, idx, event);
                if signalled {
                    stopping.push(self.services()[idx].name.as_str());
                }
            }
        }
        self.changed.notify_all();
        if !stopping.is_empty() {
            self.sink.log(&format!("Stopping {}", stopping.join(", ")));
        }
        meanwhile();
        let stuck_and_gone = |idx: usize, st: &ServiceState| {
            self.user_code.get(idx).is_some() && st.group().is_none_or(|g| !group_alive(g.leader()))
        };
        // First until every group is gone (escapees may still hold pipes open: the sweep
        // below is for them), then until every supervisor has drained and reaped.
        let groups_gone = |s: &[ServiceState]| {
            s.iter()
                .enumerate()
                .all(|(idx, st)| st.group_gone() || stuck_and_gone(idx, st))
        };
        let all_done = |s: &[ServiceState]| {
            s.iter()
                .enumerate()
                .all(|(idx, st)| st.is_settled() || stuck_and_gone(idx, st))
        };
        let hurry = || self.hurry.load(std::sync::atomic::Ordering::SeqCst);
        // Whether the groups were gone when the wait ended, as the wait saw it: looked at
        // again, a stuck hook or check that has returned meanwhile would make a group that
        // is gone look alive, and its service would be "killed" with a false warning.
        let mut gone = false;
        let (states, _) = self.wait_stopped(deadline, true, |s| {
            gone = groups_gone(s);
            gone || hurry()
        });
        if !gone {
            let mut killed = Vec::new();
            for (idx, st) in states.iter().enumerate() {
                if st.group().is_some_and(|g| g.signal(Signal::SIGKILL)) {
                    killed.push(self.services()[idx].name.as_str());
                }
            }
            drop(states);
            if !killed.is_empty() {
                let why = match hurry() {
                    true => "had not stopped when the stop was interrupted".to_owned(),
                    false => format!("did not stop within {:.1} s", timeout.as_secs_f64()),
                };
                self.sink
                    .warn(&format!("{} {why}: killed with SIGKILL", killed.join(", ")));
            }
        } else {
            drop(states);
        }
        // Processes that left their group (setsid, double fork) are still in the run's
        // cgroup, where there is one, and still carry the marker unless they cleared it.
        guardian::kill_cgroup(&self.run.id);
        // Everything marked was born in the cgroup (see `ExecEnv::outside`): killed with it,
        // no process can have left it (but by moving itself to another cgroup, as root: not
        // covered). Else those that left their group are found by the marker.
        let outside = self
            .services()
            .iter()
            .any(|p| p.exec.outside.load(std::sync::atomic::Ordering::SeqCst));
        if self.cgroup.is_none() || outside {
            let ended = self.ended_pids();
            let needle = format!("{MARKER_VAR}={}", self.run.id);
            sweep(&needle, self.born_after.as_ref(), &ended);
        }
        let grace = deadline_after(Instant::now(), KILLED_GRACE + READER_DRAIN);
        drop(self.wait_stopped(grace, true, all_done));
        self.threads.release_workers();
        let stuck: Vec<(usize, UserCode)> = (0..self.services().len())
            .filter_map(|idx| self.user_code.get(idx).map(|what| (idx, what)))
            .collect();
        for &(idx, what) in &stuck {
            self.sink.warn(&format!(
                "the {} of `{}` has not returned (is it blocked?): its thread is left behind",
                what.words(),
                self.services()[idx].name
            ));
        }
        let handles = std::mem::take(&mut *self.threads.handles());
        for h in handles {
            // With a thread stuck in user code, join only threads that have ended: the
            // stuck one may never end, and every other one has done its work by now.
            if stuck.is_empty() || h.is_finished() {
                h.wait();
            }
        }
        guardian::remove_run(&self.run.id);
        if !stopping.is_empty() {
            self.sink
                .log(&format!("Stopped in {:.2} s", t0.elapsed().as_secs_f64()));
        }
        self.sink.store.close();
    }

    /// Stop service `idx` alone: its stop signal to its group, SIGKILL to what is left after
    /// the shutdown timeout; returns once it is reaped. What needs it keeps running. With
    /// `then_start`, it is started again once reaped (a restart; its setup hook too if
    /// `Some(true)`) and this returns once the new start has begun. `None` if the bundle
    /// is stopping (then nothing was done); else the number of the start by hand that a
    /// restart waits for (see `ServiceState::hand_starts`).
    pub(crate) fn stop_one(self: &Arc<Self>, idx: usize, then_start: Option<bool>) -> Option<u32> {
        self.stop_one_if(idx, then_start, None)
    }

    /// `stop_one`, with `only`: only if start by hand number `only` is what runs or starts
    /// now, with no stop asked (decided under the lock the stop is made under: another
    /// thread's later start is never stopped for this one's failure); else `None` and
    /// nothing done. A start still in its setup hook is not waited for: it will not spawn.
    pub(crate) fn stop_one_if(
        self: &Arc<Self>,
        idx: usize,
        then_start: Option<bool>,
        only: Option<u32>,
    ) -> Option<u32> {
        let name = &self.services()[idx].name;
        // Said before the stop signal goes (so before its supervisor can say "Stopped"), if
        // it is one this stop will signal (looked at again under the lock below).
        let running = self.read(idx, |st| {
            let signalled = match st.phase {
                Phase::Running { stop: None, .. } => true,
                // Killed once spawned (its supervisor then says "Stopped"); a restart joins
                // it instead, and a call-off says so itself.
                Phase::Spawning { stop: None } => then_start.is_none() && only.is_none(),
                _ => false,
            };
            signalled && only.is_none_or(|n| st.is_unstopped_hand_start(n))
        });
        if running && !self.is_stopping() {
            self.sink.log(&format!("Stopping {name}"));
        }
        let t0 = Instant::now();
        let timeout = self.timeouts.shutdown;
        let deadline = deadline_after(t0, timeout);
        let (actions, before, awaited) = {
            let mut states = self.lock();
            if self.is_stopping() {
                return None;
            }
            if only.is_some_and(|n| !states[idx].is_unstopped_hand_start(n)) {
                return None;
            }
            let main_exited = states[idx].pid().is_some_and(has_exited);
            let before = states[idx].incarnation;
            let event = Event::Stop {
                deadline,
                main_exited,
                then_start,
            };
            // What a call-off (`only`) does where no stop signal says it.
            let called_off = match states[idx].phase {
                _ if only.is_none() => None,
                Phase::SettingUp { .. } => Some("it won't be spawned once its setup hook returns"),
                Phase::Spawning { .. } => Some("it is killed as soon as it is spawned"),
                Phase::Restarting { .. } => Some("its restart policy won't start it again"),
                _ => None,
            };
            // Its setup hook (the test's code) may run a long while yet: not waited for.
            let wait = !(only.is_some() && matches!(states[idx].phase, Phase::SettingUp { .. }));
            let (actions, _) = self.apply_locked(&mut states, idx, event);
            let awaited = states[idx].hand_starts;
            drop(states);
            if let Some(what) = called_off {
                self.sink.log(&format!(
                    "{}'s failed start is called off: {what}",
                    self.services()[idx].name
                ));
            }
            if !wait {
                self.changed.notify_all();
                self.carry_out(idx, actions);
                return Some(awaited);
            }
            (actions, before, awaited)
        };
        self.changed.notify_all();
        // (Starting again a service that wasn't running.)
        self.carry_out(idx, actions);
        let stuck_and_gone = |st: &ServiceState| {
            self.user_code.get(idx).is_some() && st.group().is_none_or(|g| !group_alive(g.leader()))
        };
        // Its group as it was: with `then_start`, the next process may run by now — not
        // a process to wait for, nor to kill. (Without, a process spawned since is the one
        // this stop kills: waited for.)
        let restarted = |st: &ServiceState| then_start.is_some() && st.incarnation > before;
        // A later start by hand took it over (one taking back a stop made while it was
        // spawned): nothing of this stop is left to wait for.
        let overridden = |st: &ServiceState| st.hand_starts > awaited;
        let old_gone = |st: &ServiceState| {
            st.group_gone() || restarted(st) || overridden(st) || stuck_and_gone(st)
        };
        let (states, gone) = self.wait_stopped(deadline, false, |s| old_gone(&s[idx]));
        if !gone
            && states[idx].incarnation == before
            && states[idx]
                .group()
                .is_some_and(|g| g.signal(Signal::SIGKILL))
        {
            drop(states);
            self.sink.warn(&format!(
                "{name} did not stop within {:.1} s: killed with SIGKILL",
                timeout.as_secs_f64()
            ));
        } else {
            drop(states);
        }
        // Its group is gone; once it is reaped (its supervisor says "Stopped"), that is the
        // stop (a restart's next start is not part of it).
        let grace = deadline_after(Instant::now(), KILLED_GRACE + READER_DRAIN);
        drop(self.wait_stopped(grace, false, |s| {
            let st = &s[idx];
            st.is_settled() || st.incarnation > before || stuck_and_gone(st)
        }));
        Some(awaited)
    }

    /// `wait_until` for stopping: while a thread is stuck in user code, nobody will signal
    /// that its group is gone, so look again every `GROUP_CHECK`. With `whole_run`, `done`
    /// is about every service (all groups gone, all settled): woken at milestones only.
    fn wait_stopped(
        &self,
        deadline: Option<Instant>,
        whole_run: bool,
        mut done: impl FnMut(&[ServiceState]) -> bool,
    ) -> (MutexGuard<'_, Vec<ServiceState>>, bool) {
        let wait = |guard, deadline, done: &mut dyn FnMut(&[ServiceState]) -> bool| {
            if whole_run {
                self.wait_for_milestone(guard, deadline, done)
            } else {
                self.wait_until(guard, deadline, done)
            }
        };
        let mut guard = self.lock();
        loop {
            if !self.user_code.any() {
                return wait(guard, deadline, &mut done);
            }
            let soon = Instant::now() + GROUP_CHECK;
            let wake = deadline.map_or(soon, |d| d.min(soon));
            let (g, ok) = wait(guard, Some(wake), &mut done);
            if ok || deadline.is_some_and(|d| Instant::now() >= d) {
                return (g, ok);
            }
            guard = g;
        }
    }
}

/// SIGKILL every process whose environment holds `needle` (a marker, `VAR=value`) as a
/// whole entry; repeat until none is left (a process may fork between two scans). Returns how many were killed. Only the
/// processes made since `born_after` can carry it: where the kernel's counters say which
/// pids those have (see `pidwindow`), only those are looked at. `ended` (sorted) are the pids
/// of main processes that have exited: one that is still our unreaped child (a zombie holds
/// its pid: nobody else can have it) is passed over.
fn sweep(needle: &str, born_after: Option<&PidMark>, ended: &[u32]) -> usize {
    let me = std::process::id();
    let mut killed = 0;
    for _ in 0..50 {
        let window = born_after.and_then(PidMark::window);
        let found = marked_pids(needle, me, window.as_ref(), ended);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill(Pid::from_raw(pid as i32), NixSignal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

/// Windows up to this many pids are looked at pid by pid (a missing one costs a failed
/// open), wider ones through a listing of `/proc`.
const PROBE_AT_MOST: u32 = 1024;

/// The processes (other than us) whose environment holds `needle` as a whole entry: every
/// process on the machine, or those with a pid in `window`; but for our zombies among
/// `ended` (see `sweep`): a zombie's environment is empty, and looking costs an open, a read
/// and its `stat`, where asking the kernel whether it is our exited child costs one call.
///
/// Each look is kept to an open, a read into a buffer used for all of them, and a close: no
/// per-process allocation or `stat`.
fn marked_pids(needle: &str, me: u32, window: Option<&PidWindow>, ended: &[u32]) -> Vec<u32> {
    let passed_over = |pid: u32| ended.binary_search(&pid).is_ok() && our_zombie(pid);
    let candidates: Box<dyn Iterator<Item = u32>> = match window {
        Some(w) if w.len() <= PROBE_AT_MOST => Box::new(w.pids()),
        _ => {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return Vec::new();
            };
            Box::new(
                dir.flatten()
                    .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                    .filter(move |&pid| window.is_none_or(|w| w.contains(pid))),
            )
        }
    };
    let candidates = candidates.filter(|&pid| !passed_over(pid));
    // Our own threads' ids are in a window too (read by id, each shows our environment):
    // listed once there is something to look at.
    let mut ours: Option<Vec<u32>> = None;
    let mut out = Vec::new();
    let mut path = String::with_capacity(32);
    let mut buf = vec![0u8; 16 * 1024];
    let mut stat_buf = Vec::with_capacity(1024);
    let finder = memchr::memmem::Finder::new(needle.as_bytes());
    for pid in candidates {
        if pid == me || ours.get_or_insert_with(own_threads).contains(&pid) {
            continue;
        }
        path.clear();
        // (Writing to a String can't fail.)
        let _ = std::fmt::Write::write_fmt(&mut path, format_args!("/proc/{pid}/environ"));
        // Zombies and kernel threads have an empty environ: nothing to kill there. A
        // process whose first thread has ended while others run on is a zombie too, whose
        // environ recent kernels don't open (ESRCH): read through its other threads.
        let len = match std::fs::File::open(&path) {
            Ok(file) => read_environ(file, &path, pid, &mut buf, &mut stat_buf),
            Err(e)
                if e.raw_os_error() == Some(libc::ESRCH)
                    && environment_of(pid, &mut stat_buf) == Environment::InThreads =>
            {
                read_through_threads(pid, &mut buf)
            }
            Err(_) => continue,
        };
        let environ = &buf[..len];
        // A whole entry: at the start or after a NUL, and ending at a NUL or the end.
        let whole = finder.find_iter(environ).any(|at| {
            (at == 0 || environ[at - 1] == 0)
                && environ.get(at + needle.len()).is_none_or(|&b| b == 0)
        });
        if whole {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is our child, exited and not reaped yet (without reaping it).
fn our_zombie(pid: u32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    waitid(Id::Pid(Pid::from_raw(pid as i32)), flags)
        .is_ok_and(|status| status != WaitStatus::StillAlive)
}

/// The ids of our own threads.
fn own_threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// How long the sweep looks again at a process that is in the middle of an exec (a matter
/// of microseconds, unless a loaded machine does not run it for a while).
const EXEC_PATIENCE: Duration = Duration::from_secs(1);

/// Read the environment of process `pid` into `buf` from `file` (its `/proc/PID/environ`,
/// at `path`); returns its length.
///
/// An environment that reads empty is looked at again: a process in the middle of an exec
/// shows none for a moment (its new memory is in place, where its environment lies is not
/// set yet), and a read of a file opened before an exec finds the old memory gone. Either
/// could be ours: read again, each time after `/proc/PID/stat` said what to expect — while
/// the exec is under way, until its end (a matter of microseconds, `EXEC_PATIENCE` at
/// most); once the environment is set, once more. A zombie, an exiting process, a kernel
/// thread or a process whose environment is empty indeed is not looked at again.
fn read_environ(
    mut file: std::fs::File,
    path: &str,
    pid: u32,
    buf: &mut Vec<u8>,
    stat_buf: &mut Vec<u8>,
) -> usize {
    let len = read_all(&mut file, buf);
    if len != 0 {
        return len;
    }
    let deadline = Instant::now() + EXEC_PATIENCE;
    loop {
        let set = match environment_of(pid, stat_buf) {
            Environment::None => return 0,
            Environment::InThreads => return read_through_threads(pid, buf),
            Environment::MidExec => false,
            Environment::Set => true,
        };
        let len = match std::fs::File::open(path) {
            Ok(mut again) => read_all(&mut again, buf),
            Err(_) => return 0,
        };
        if len != 0 || set || Instant::now() >= deadline {
            return len;
        }
        // (A sleep, not a spin: on a loaded machine the spin would take the CPU from the
        // very process whose exec it waits for.)
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The environment of process `pid` whose first thread has ended (it shows none) while
/// others run on, read through one of those.
fn read_through_threads(pid: u32, buf: &mut Vec<u8>) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for task in tasks.flatten() {
        if let Ok(mut file) = std::fs::File::open(task.path().join("environ")) {
            let len = read_all(&mut file, buf);
            if len != 0 {
                return len;
            }
        }
    }
    0
}

/// Read `file` whole into `buf` (grown as needed); returns the length read. A read error
/// ends it (a process that died meanwhile shows what was read).
fn read_all(file: &mut std::fs::File, buf: &mut Vec<u8>) -> usize {
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len().max(1024) * 2, 0);
        }
        match std::io::Read::read(file, &mut buf[len..]) {
            Ok(0) => return len,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return len,
        }
    }
}

/// What `/proc/PID/stat` says of a process's environment.
#[derive(Debug, PartialEq, Eq)]
enum Environment {
    /// None to look at: a zombie, an exiting process, a kernel thread, an environment that
    /// is empty indeed — or no such process, or one we may not look into.
    None,
    /// The process is between the two halves of an exec: where its environment ends is not
    /// set yet.
    MidExec,
    /// It has an environment with something in it.
    Set,
    /// Its first thread has ended (a zombie, showing no environment) while others run on:
    /// they show it.
    InThreads,
}

/// What process `pid`'s `/proc/PID/stat` says of its environment. `buf` is reused from
/// call to call.
fn environment_of(pid: u32, buf: &mut Vec<u8>) -> Environment {
    // Not `procfs`: this runs in the sweep's loop over every process, where the whole
    // look is kept to an open and a read into a reused buffer.
    let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/stat")) else {
        return Environment::None;
    };
    let len = read_all(&mut file, buf);
    environment_in_stat(&buf[..len])
}

/// [`environment_of`] from a `/proc/PID/stat` line. A process we may not look into shows
/// 0 where its environment lies, but then its environment could not be opened either, so
/// it is not asked about.
fn environment_in_stat(stat: &[u8]) -> Environment {
    const PF_EXITING: u64 = 0x4;
    const PF_KTHREAD: u64 = 0x0020_0000;
    // The name (field 2) may hold spaces and parentheses: fields are counted after its
    // last `)`.
    let Some(close) = memchr::memrchr(b')', stat) else {
        return Environment::None;
    };
    let Ok(rest) = std::str::from_utf8(&stat[close + 1..]) else {
        return Environment::None;
    };
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (the state), so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let state = fields.first().copied().unwrap_or("Z");
    let (Some(flags), Some(threads), Some(env_start), Some(env_end)) =
        (field(9), field(20), field(50), field(51))
    else {
        return Environment::None;
    };
    if state == "Z" && threads > 1 {
        Environment::InThreads
    } else if matches!(state, "Z" | "X" | "x") || flags & (PF_EXITING | PF_KTHREAD) != 0 {
        Environment::None
    } else if env_end == 0 {
        Environment::MidExec
    } else if env_end == env_start {
        Environment::None
    } else {
        Environment::Set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A `sleep` with `vars` as its whole environment, killed and reaped when dropped.
    struct Sleeper(std::process::Child);

    impl Sleeper {
        fn with(vars: &[(&str, &str)]) -> Sleeper {
            let child = Command::new("/bin/sleep")
                .arg("1000")
                .env_clear()
                .envs(vars.iter().copied())
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            // The spawn returns once exec has replaced the child's memory, a moment before
            // exec sets where its environment is: until then, /proc shows it empty.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut buf = Vec::new();
            while environment_of(child.id(), &mut buf) == Environment::MidExec
                && std::time::Instant::now() < deadline
            {
                std::thread::yield_now();
            }
            Sleeper(child)
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// With the run's pid mark, the sweep kills a marked process made since, and does not
    /// even look at one made before (no process of the run can be that old).
    #[test]
    fn the_sweep_looks_at_the_processes_made_since_the_run_began() {
        let run = format!("sweep-window-{}", std::process::id());
        let older = Sleeper::with(&[(MARKER_VAR, &run)]);
        let mark = PidMark::now().expect("the kernel's counters");
        let mut newer = Sleeper::with(&[(MARKER_VAR, &run)]);
        // (Counted per kill: a process is found again until it has died.)
        assert!(sweep(&format!("{MARKER_VAR}={run}"), Some(&mark), &[]) >= 1);
        let status = newer.0.wait().expect("reap it");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        let needle = format!("{MARKER_VAR}={run}");
        assert_eq!(
            marked_pids(&needle, std::process::id(), None, &[]),
            [older.0.id()]
        );
        // Without a mark, every process is looked at.
        assert!(sweep(&format!("{MARKER_VAR}={run}"), None, &[]) >= 1);
    }

    /// An ended pid is passed over only while it is our zombie (it holds the pid): one that
    /// is anything else (reaped, its pid anyone's again) is looked at. (It was passed over
    /// inside any window said to hold, and failed forks at a task limit move the pid
    /// counter without counting: a marked process that got such a pid again survived.)
    #[test]
    fn the_sweep_passes_over_only_the_ended_pids_that_are_our_zombies() {
        let run = format!("sweep-ended-{}", std::process::id());
        let needle = format!("{MARKER_VAR}={run}");
        let mark = PidMark::now().expect("the kernel's counters");
        let a = Sleeper::with(&[(MARKER_VAR, &run)]);
        let window = mark.window().expect("no wrap in a moment");
        let me = std::process::id();
        // (Told, against the truth, that `a` has ended: it is alive, so not a zombie.)
        assert_eq!(
            marked_pids(&needle, me, Some(&window), &[a.0.id()]),
            [a.0.id()]
        );
        assert_eq!(marked_pids(&needle, me, None, &[a.0.id()]), [a.0.id()]);
        assert!(!our_zombie(a.0.id()));
        // Killed, not reaped: our zombie.
        kill(Pid::from_raw(a.0.id() as i32), NixSignal::SIGKILL).expect("kill it");
        let patience = std::time::Instant::now() + Duration::from_secs(30);
        while !our_zombie(a.0.id()) && std::time::Instant::now() < patience {
            std::thread::yield_now();
        }
        assert!(our_zombie(a.0.id()));
    }

    /// Only a live user process with no end to its environment is in the middle of an
    /// exec; kernel threads, zombies, exiting processes and a process whose environment is
    /// empty indeed have none to look at again.
    #[test]
    fn the_sweep_looks_again_only_at_a_process_that_has_an_environment_to_show() {
        use Environment::{InThreads, MidExec, None, Set};
        let line = |state: &str, flags: u64, env: (u64, u64)| {
            let mut fields = vec!["0".to_string(); 52];
            fields[2] = state.to_string();
            fields[8] = flags.to_string();
            fields[19] = "1".to_string();
            fields[49] = env.0.to_string();
            fields[50] = env.1.to_string();
            format!("1234 (a (b) c) {}", fields[2..].join(" ")).into_bytes()
        };
        let set = (140_733_913_991_721, 140_733_913_993_195);
        assert_eq!(environment_in_stat(&line("R", 0x40_0000, (0, 0))), MidExec);
        assert_eq!(environment_in_stat(&line("D", 0, (0, 0))), MidExec);
        assert_eq!(environment_in_stat(&line("S", 0x40_0000, set)), Set);
        assert_eq!(environment_in_stat(&line("S", 0, (set.1, set.1))), None);
        assert_eq!(environment_in_stat(&line("S", 0x20_8040, (0, 0))), None);
        assert_eq!(environment_in_stat(&line("Z", 0, (0, 0))), None);
        let mut zombie_leader = String::from_utf8(line("Z", 0x40_0044, (0, 0))).unwrap();
        zombie_leader = zombie_leader.replacen(" 0 1 0 ", " 0 3 0 ", 1);
        assert_eq!(environment_in_stat(zombie_leader.as_bytes()), InThreads);
        assert_eq!(environment_in_stat(&line("R", 0x40_0044, (0, 0))), None);
        assert_eq!(environment_in_stat(b"1234 (cut"), None);
        assert_eq!(environment_in_stat(b"1234 (short) S 1 2 3"), None);
        // Real ones: this process, and a process whose environment is empty.
        let mut buf = Vec::new();
        assert_eq!(environment_of(std::process::id(), &mut buf), Set);
        let empty = Sleeper::with(&[]);
        assert_eq!(environment_of(empty.0.id(), &mut buf), None);
    }

    /// The sweep opened a process's environment just before the process exec'd (a shell
    /// running its last command): the read finds the old memory gone, and reads empty. The
    /// sweep reads it again and finds the marker.
    #[test]
    fn the_sweep_finds_a_process_that_exec_d_as_it_was_looked_at() {
        use std::io::Write;
        let run = format!("sweep-exec-{}", std::process::id());
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read x; exec /bin/sleep 1000"])
            .env_clear()
            .env(MARKER_VAR, &run)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let comm = format!("/proc/{pid}/comm");
        let mut stat_buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let settled = |stat_buf: &mut Vec<u8>| {
            // (No event says an exec has ended: looked at until it has.)
            while environment_of(pid, stat_buf) != Environment::Set && Instant::now() < deadline {
                std::thread::yield_now();
            }
        };
        settled(&mut stat_buf);
        let path = format!("/proc/{pid}/environ");
        let file = std::fs::File::open(&path).expect("open its environment");
        child
            .stdin
            .as_mut()
            .expect("piped")
            .write_all(b"go\n")
            .expect("let it exec");
        while std::fs::read_to_string(&comm).is_ok_and(|c| c != "sleep\n")
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        settled(&mut stat_buf);
        let mut buf = Vec::new();
        let len = read_environ(file, &path, pid, &mut buf, &mut stat_buf);
        let _ = child.kill();
        let _ = child.wait();
        let needle = format!("{MARKER_VAR}={run}");
        assert!(
            memchr::memmem::find(&buf[..len], needle.as_bytes()).is_some(),
            "{:?}",
            String::from_utf8_lossy(&buf[..len])
        );
    }

    /// A process whose first thread has ended while another runs on (a zombie leader:
    /// `pthread_exit` in `main`) is found through that other thread.
    #[test]
    fn the_sweep_finds_a_process_whose_first_thread_has_ended() {
        const SOURCE: &str = "#include <pthread.h>\n#include <unistd.h>\n\
            static void *go_on(void *a) { (void)a; sleep(1000); return 0; }\n\
            int main(void) { pthread_t t; pthread_create(&t, 0, go_on, 0); pthread_exit(0); }\n";
        let dir = std::env::temp_dir().join(format!("hitchserve-zleader-{}", std::process::id()));
        // (Made, never found: a directory planted there makes the test fail, not run it.)
        std::fs::create_dir(&dir).expect("a fresh directory");
        let (src, bin) = (dir.join("z.c"), dir.join("z"));
        std::fs::write(&src, SOURCE).expect("write the program");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let built = Command::new(cc)
            .args(["-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("a C compiler (CI installs one)");
        assert!(built.status.success(), "{built:?}");
        let run = format!("sweep-zleader-{}", std::process::id());
        let mut child = Command::new(&bin)
            .env_clear()
            .env(MARKER_VAR, &run)
            .spawn()
            .expect("spawn it");
        let pid = child.id();
        let mut stat_buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // (No event says a thread has ended: looked at until it has.)
        while environment_of(pid, &mut stat_buf) != Environment::InThreads
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let needle = format!("{MARKER_VAR}={run}");
        let found = marked_pids(&needle, std::process::id(), None, &[]);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found, [pid]);
    }

    #[test]
    fn the_sweep_finds_the_marker_only_as_a_whole_entry() {
        let run = format!("sweep-test-{}", std::process::id());
        let needle = format!("{MARKER_VAR}={run}");
        let longer = format!("{run}x");
        let marked = Sleeper::with(&[("A", "1"), (MARKER_VAR, &run), ("B", "2")]);
        let alone = Sleeper::with(&[(MARKER_VAR, &run)]);
        let other_run = Sleeper::with(&[(MARKER_VAR, &longer)]);
        let in_a_value = Sleeper::with(&[("X", &needle)]);
        // A big environment: read in more than one go.
        let big = "v".repeat(40 * 1024);
        let after_a_big_one = Sleeper::with(&[("BIG", &big), (MARKER_VAR, &run)]);
        let mut found = marked_pids(&needle, std::process::id(), None, &[]);
        found.sort_unstable();
        let mut want = vec![marked.0.id(), alone.0.id(), after_a_big_one.0.id()];
        want.sort_unstable();
        assert_eq!(found, want);
        drop((other_run, in_a_value));
    }
}
