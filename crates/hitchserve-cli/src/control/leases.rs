//! The leases of a shared bundle (`up --shared`): who holds it, and when it stops.
//!
//! A lease is held by a process (a pid): the test process that asked, or the shell that ran
//! `hitchserve attach`. It ends when that process releases it (`release`) or dies — SIGKILL
//! included: each lease's thread waits on a pidfd of its holder, so no holder has to say
//! goodbye. Once no lease is held for the idle time, the bundle stops, as after a `down`.
//!
//! Also owns the definition the bundle was started from (one text per service and one for
//! the `[bundle]` table), which a new holder's must equal: a changed service is told, never
//! silently served from the old definition.
//!
//! The clock is the whole bundle's: a holder may move it only while it holds the bundle
//! alone, and its travel is undone (the clock set back to what it was) once its lease ends,
//! so the next test to attach doesn't inherit it; a process asking for a lease meanwhile
//! waits for that (or is refused, naming the traveller). Travels nest: a test's own view may
//! travel on top of its session's travel, and its end restores the session's clock.
//!
//! Invariant: the idle timer runs exactly while no lease is held; a lease whose holder is
//! already gone (exited, even if not yet reaped) is refused, never counted; none is granted
//! once the bundle has begun to stop (`close`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The definition of a bundle, as a new holder compares it: each service's table, and the
/// `[bundle]` table under the name `[bundle]`, as canonical JSON text.
pub type Definition = BTreeMap<String, String>;

/// The error of a lease asked for while the bundle stops for want of one: the asker waits
/// for the stop to end and starts the bundle again.
pub const STOPPING: &str = "the shared bundle is stopping: no lease was held for its idle time";

/// The name the `[bundle]` table has in a [`Definition`].
pub const BUNDLE_TABLE: &str = "[bundle]";

/// What a `hitchserve.toml` defines, for comparing: read as TOML, each service's table and
/// the `[bundle]` table turned into JSON (whose maps are sorted), so that formatting,
/// comments and key order don't count as a change.
pub fn definition(text: &str) -> Result<Definition, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut def = Definition::new();
    if let Some(bundle) = table.get("bundle") {
        def.insert(BUNDLE_TABLE.to_owned(), canonical(bundle));
    }
    if let Some(services) = table.get("services").and_then(toml::Value::as_table) {
        for (name, service) in services {
            def.insert(name.clone(), canonical(service));
        }
    }
    Ok(def)
}

/// Keys whose value is a duration: compared as lengths of time (`"2s"` is `"2000ms"`).
const DURATION_KEYS: &[&str] = &[
    "startup_timeout",
    "shutdown_timeout",
    "every",
    "restart_backoff",
];

fn canonical(v: &toml::Value) -> String {
    let mut v = v.clone();
    if let Some(table) = v.as_table_mut() {
        for key in DURATION_KEYS {
            let Some(value) = table.get_mut(*key) else {
                continue;
            };
            let text = match &*value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => continue,
            };
            // (One that is no duration stays as written: the file's check says so.)
            if let Ok(d) = crate::config::duration(&text) {
                *value = toml::Value::String(format!("{}ns", d.as_nanos()));
            }
        }
    }
    serde_json::to_string(&v).unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// How two definitions differ, in words: the services added, removed and changed.
pub fn differences(running: &Definition, asked: &Definition) -> Vec<String> {
    let mut said = Vec::new();
    for (name, text) in asked {
        match running.get(name) {
            None => said.push(format!("`{name}` is new")),
            Some(old) if old != text => said.push(format!("`{name}` changed")),
            Some(_) => {}
        }
    }
    for name in running.keys().filter(|n| !asked.contains_key(*n)) {
        said.push(format!("`{name}` was removed"));
    }
    said
}

/// Who moved the clock: one lease (a test's own view, in a process that also holds the
/// session's), or every lease of a process (the CLI's `time-travel`, which knows no lease).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Traveller {
    Lease(u64),
    Pid(i32),
}

/// A travel under way.
struct Travel {
    by: Traveller,
    pid: i32,
    /// The clock's offset from real time before it, in nanoseconds.
    before_ns: i128,
    /// Its traveller's lease(s) ended while a later travel was under way: undone with it.
    ended: bool,
}

struct Lease {
    pid: i32,
    /// Its holder's pidfd (shared with the watcher thread): readable once the holder died.
    pidfd: Arc<OwnedFd>,
    /// Dropped to end the lease's watcher thread (it polls the other end).
    _release: OwnedFd,
}

/// How long a shared bundle waits for its first lease, whatever its idle time: its starter
/// asks for one once the bundle is ready, and may be slow to (a loaded machine).
const FIRST_LEASE_GRACE: Duration = Duration::from_secs(30);

struct Held {
    next: u64,
    /// Whether any lease was ever taken (before that, the idle time is at least
    /// [`FIRST_LEASE_GRACE`]).
    taken: bool,
    /// Set once the bundle began to stop (the idle timer, a `down`, a signal): no lease is
    /// granted after.
    closing: bool,
    /// The travels under way, oldest first: who made each, and the clock's offset before it
    /// (what its end restores) — a session's travel, then a test's own view's on top.
    travels: Vec<Travel>,
    leases: BTreeMap<u64, Lease>,
    /// Set when the last lease ended (or at start): the idle timer counts from it.
    idle_since: Option<Instant>,
}

/// The leases of one shared bundle.
pub struct Leases {
    held: Mutex<Held>,
    changed: Condvar,
    /// How long the bundle runs with no lease before it stops.
    pub idle: Duration,
    /// The definition it was started from.
    pub definition: Definition,
    /// Sets the clock's offset back (pid of the traveller, offset in ns) once a travel's
    /// leases have ended.
    reset_clock: Box<dyn Fn(i32, i128) + Send + Sync>,
}

impl Leases {
    pub fn new(
        idle: Duration,
        definition: Definition,
        reset_clock: Box<dyn Fn(i32, i128) + Send + Sync>,
    ) -> Arc<Leases> {
        Arc::new(Leases {
            held: Mutex::new(Held {
                next: 1,
                taken: false,
                closing: false,
                travels: Vec::new(),
                leases: BTreeMap::new(),
                idle_since: Some(Instant::now()),
            }),
            changed: Condvar::new(),
            idle,
            definition,
            reset_clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pids holding a lease, one per lease, in the order they were taken.
    pub fn holders(&self) -> Vec<i32> {
        self.prune();
        self.lock().leases.values().map(|l| l.pid).collect()
    }

    /// End at once the leases whose holder has died, rather than when their watcher thread
    /// gets to it: what a query answers right after a holder's death is true.
    fn prune(&self) {
        let dead: Vec<u64> = self
            .lock()
            .leases
            .iter()
            .filter(|(_, l)| readable(&l.pidfd))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.end(id);
        }
    }

    /// A new lease for `pid`, ended when it dies: its id. While another process has moved
    /// the clock (a test that travels, holding the bundle alone), waits up to `wait` for its
    /// travel to end — a holder attaching meanwhile would see the clock jump back under it —
    /// then refuses, naming it.
    pub fn take(
        self: &Arc<Self>,
        pid: i32,
        wait: Duration,
        asker_gone: impl Fn() -> bool,
        on_wait: impl FnOnce(&str),
    ) -> Result<u64, String> {
        if pid == std::process::id() as i32 {
            return Err(cant_hold(pid));
        }
        let pidfd = Arc::new(holder_pidfd(pid)?);
        let (wake, release) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a lease: {e}"))?;
        self.prune();
        let id = {
            let mut held = self.lock();
            let deadline = Instant::now() + wait;
            let mut on_wait = Some(on_wait);
            loop {
                if held.closing {
                    return Err(STOPPING.to_owned());
                }
                let travellers: Vec<String> = held
                    .travels
                    .iter()
                    .filter(|t| !t.ended && t.pid != pid)
                    .map(|t| t.pid.to_string())
                    .collect();
                if travellers.is_empty() {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "process {} moved the clock of this shared bundle and holds it alone (a \
                         test that travels in time): a holder attaching now would see the clock \
                         jump back when it finishes; try again once it has (`hitchserve up \
                         --shared` waits for it)",
                        travellers.join(", ")
                    ));
                }
                if let Some(say) = on_wait.take() {
                    say(&travellers.join(", "));
                }
                // The asker may give up meanwhile (a `timeout`, Ctrl-C): no lease for it then
                // (one granted later would hold the bundle for a process that never heard of
                // it). Looked at every quarter second: a closed connection has no event here.
                if asker_gone() {
                    return Err("the process that asked for this lease gave up waiting".into());
                }
                held = self
                    .changed
                    .wait_timeout(held, left.min(Duration::from_millis(250)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Waited, and its asker gave up meanwhile.
            if on_wait.is_none() && asker_gone() {
                return Err("the process that asked for this lease gave up waiting".into());
            }
            held.taken = true;
            let id = held.next;
            held.next += 1;
            held.leases.insert(
                id,
                Lease {
                    pid,
                    pidfd: Arc::clone(&pidfd),
                    _release: release,
                },
            );
            held.idle_since = None;
            id
        };
        self.changed.notify_all();
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            wait_either(&pidfd, &wake);
            me.end(id);
        });
        Ok(id)
    }

    fn end(&self, id: u64) -> bool {
        let mut held = self.lock();
        let ended = held.leases.remove(&id);
        if held.leases.is_empty() && held.idle_since.is_none() {
            held.idle_since = Some(Instant::now());
        }
        // A travel whose lease (or whose process's last lease) ended is undone for those to
        // come: the clock goes back to what it was before it — once no later travel is under
        // way on top of it.
        if let Some(lease) = &ended {
            let pid = lease.pid;
            let pid_gone = !held.leases.values().any(|l| l.pid == pid);
            for t in held.travels.iter_mut() {
                t.ended |= match t.by {
                    Traveller::Lease(l) => l == id,
                    Traveller::Pid(p) => p == pid && pid_gone,
                };
            }
        }
        let mut back = None;
        while held.travels.last().is_some_and(|t| t.ended) {
            back = held.travels.pop().map(|t| (t.pid, t.before_ns));
        }
        drop(held);
        if let Some((pid, before_ns)) = back {
            (self.reset_clock)(pid, before_ns);
        }
        self.changed.notify_all();
        ended.is_some()
    }

    /// Whether the bundle is stopping (no lease is granted).
    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// No lease is granted from now on: the bundle is stopping.
    pub fn close(&self) {
        self.lock().closing = true;
        self.changed.notify_all();
    }

    /// May `pid` move the clock (now `offset_ns` from real time)? Only while it holds a lease
    /// and no other process does. Its travel is undone once `lease` ends if given (and its
    /// own), else once every lease of `pid` has: the clock goes back to `offset_ns`. The error
    /// says why not.
    pub fn travel(
        &self,
        pid: Option<i32>,
        lease: Option<u64>,
        offset_ns: i128,
    ) -> Result<(), String> {
        self.prune();
        let mut held = self.lock();
        if let Some(p) = pid.filter(|p| !held.leases.values().any(|l| l.pid == *p)) {
            if !held.leases.is_empty() {
                // Said first: the other holders are not the point, this one is no holder.
                let holders: std::collections::BTreeSet<i32> =
                    held.leases.values().map(|l| l.pid).collect();
                return Err(format!(
                    "process {p} holds no lease of this shared bundle (its holders: {}): travel \
                     for a holder (`--pid`), or take a lease for {p} first (`hitchserve attach \
                     --pid {p}`)",
                    holders
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let others: Vec<String> = held
            .leases
            .values()
            .filter(|l| Some(l.pid) != pid)
            .map(|l| l.pid)
            // One process may hold several leases (a session's and a test's view).
            .collect::<std::collections::BTreeSet<i32>>()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        if !others.is_empty() {
            return Err(format!(
                "time travel moves the clock of every holder of this shared bundle, and {} other \
                 process(es) hold it (pids {}): a test that travels in time needs a bundle to \
                 itself (one of its own — not shared — or run it when nothing else holds this one: \
                 e.g. in a nextest test group of max-threads 1, or a pytest run of its own)",
                others.len(),
                others.join(", ")
            ));
        }
        let Some(pid) = pid.filter(|p| held.leases.values().any(|l| l.pid == *p)) else {
            return Err(
                "time travel in a shared bundle needs a lease, so that it is undone when \
                        the lease ends and no later holder inherits it: take one first \
                        (`hitchserve attach`), then travel"
                    .to_owned(),
            );
        };
        let by = match lease.filter(|id| held.leases.get(id).is_some_and(|l| l.pid == pid)) {
            Some(id) => Traveller::Lease(id),
            None => Traveller::Pid(pid),
        };
        // A second travel by the same traveller restores, in the end, what was before its first.
        if !held.travels.last().is_some_and(|t| t.by == by && !t.ended) {
            held.travels.push(Travel {
                by,
                pid,
                before_ns: offset_ns,
                ended: false,
            });
        }
        Ok(())
    }

    /// Release a lease by its id, or every lease of a pid: how many were released.
    pub fn release(&self, id: Option<u64>, pid: Option<i32>) -> usize {
        let ids: Vec<u64> = {
            let held = self.lock();
            held.leases
                .iter()
                .filter(|(i, l)| id.is_none_or(|id| id == **i) && pid.is_none_or(|p| p == l.pid))
                .map(|(i, _)| *i)
                .collect()
        };
        ids.into_iter().filter(|&i| self.end(i)).count()
    }

    /// Block until no lease has been held for the idle time; from then on, none is granted.
    pub fn wait_idle(&self) {
        let mut held = self.lock();
        loop {
            match held.idle_since {
                Some(since) => {
                    let idle = match held.taken {
                        true => self.idle,
                        false => self.idle.max(FIRST_LEASE_GRACE),
                    };
                    let left = idle.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        held.closing = true;
                        return;
                    }
                    held = self
                        .changed
                        .wait_timeout(held, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => {
                    held = self.changed.wait(held).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// What `status` says of the leases.
    pub fn status(&self) -> Value {
        let holders = self.holders();
        let (mut leases, first): (Vec<(u64, i32)>, bool) = {
            let held = self.lock();
            let leases = held.leases.iter().map(|(id, l)| (*id, l.pid)).collect();
            (leases, !held.taken)
        };
        leases.sort_unstable();
        let leases: Vec<Value> = leases
            .into_iter()
            .map(|(id, pid)| json!({"lease": id, "pid": pid}))
            .collect();
        // Before its first lease, it waits at least the grace (its starter may be slow).
        let idle = match first {
            true => self.idle.max(FIRST_LEASE_GRACE),
            false => self.idle,
        };
        json!({"holders": holders, "leases": leases, "idle_seconds": idle.as_secs_f64(),
               "awaiting_first_lease": first})
    }
}

/// Why `pid` can't hold a lease: it lives as long as the machine (or the bundle).
fn cant_hold(pid: i32) -> String {
    format!(
        "process {pid} can't hold a lease: it lives as long as the machine (or the bundle) \
         does, so the bundle would never stop; give the process of the test or script (--pid)"
    )
}

/// A pidfd of `pid`, a process that can hold a lease (alive, not pid 1): checked by `take`,
/// and by `up --shared` before it starts anything for it.
pub fn holder_pidfd(pid: i32) -> Result<OwnedFd, String> {
    if pid <= 0 {
        return Err(format!("`{pid}` is not a process id"));
    }
    if pid == 1 {
        return Err(cant_hold(pid));
    }
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(format!(
            "process {pid} can't hold a lease: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor the kernel just gave us, owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // A pidfd is readable once its process has exited — also before it is reaped.
    if readable(&pidfd) {
        return Err(format!("process {pid} can't hold a lease: it has exited"));
    }
    Ok(pidfd)
}

/// Whether a descriptor is readable now (for a pidfd: its process has exited).
fn readable(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one descriptor we own, without waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// Wait until the holder dies (its pidfd is readable) or the lease is released (the pipe's
/// writing end was dropped).
fn wait_either(pidfd: &OwnedFd, wake: &OwnedFd) {
    let mut fds = [
        libc::pollfd {
            fd: pidfd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: polling two descriptors we own, for as long as it takes.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n > 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duration written another way is the same definition (a holder's `"2s"` against
    /// the running `"2000ms"` was refused as a change); another length is a change.
    #[test]
    fn durations_are_compared_as_lengths_of_time() {
        let def = |timeout: &str, every: &str| {
            definition(&format!(
                "[bundle]\nstartup_timeout = {timeout}\n\n[services.Tick]\nkind = \"cron\"\n\
                 every = {every}\ncommand = [\"true\"]\n"
            ))
            .unwrap()
        };
        let running = def("\"2s\"", "\"1m\"");
        assert!(differences(&running, &def("\"2000ms\"", "\"60s\"")).is_empty());
        assert!(differences(&running, &def("2", "60")).is_empty());
        assert_eq!(
            differences(&running, &def("\"3s\"", "\"1m\"")),
            vec!["`[bundle]` changed".to_owned()]
        );
    }
}
