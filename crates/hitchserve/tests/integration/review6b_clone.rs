//! Review 6b: services born inside their run's cgroup (`clone3(CLONE_INTO_CGROUP)`,
//! exec/clone.rs), and the fallback to `posix_spawn` plus a move (exec/spawn.rs).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hitchserve::{Ready, Service};

use crate::common::{helper_process, is_root, wait_gone, Project};

/// A field of `/proc/<pid>/status`, as hex bits.
fn status_bits(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .expect("the field");
    u64::from_str_radix(value.trim(), 16).expect("hex")
}

/// glibc's internal signals (SIGCANCEL 32, SIGSETXID 33). glibc's `posix_spawn` leaves them
/// SIG_IGN in its child (its `sigfillset` leaves them out of the "set to default" set, and
/// its child ignores what is blocked and internal), and SIG_IGN survives exec; `clone.rs`'s
/// child sets every signal to SIG_DFL. So a service's SigIgn tells which way it was
/// started: these bits set = `posix_spawn` = born outside its run's cgroup and moved in
/// afterwards (the window the commit closes); clear = `clone3` = born inside.
const GLIBC_INTERNAL: u64 = (1 << 31) | (1 << 32);

const HELPER_VAR: &str = "HITCHSERVE_REVIEW6B_HELPER";

/// Run a helper of this binary, bounded: its stdout and stderr, and whether it passed.
fn run_helper(test: &str) -> (bool, String) {
    let mut child = helper_process(test, &[(HELPER_VAR, "1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the helper");
    let pid = child.id();
    let out_pipe = child.stdout.take().unwrap();
    let err_pipe = child.stderr.take().unwrap();
    let reader = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(out_pipe));
    let err = reader(Box::new(err_pipe));
    if !wait_gone(pid, Duration::from_secs(60)) {
        let _ = child.kill();
    }
    let status = child.wait().expect("reap the helper");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status.success() && text.contains("1 passed"), text)
}

/// A v1 `pids` cgroup (this machine and CI mount the v1 controllers beside the unified
/// hierarchy) holding this whole process: a task limit such as systemd's `TasksMax` or a
/// container's `pids.max`, which a loaded test run can reach for a moment.
struct TaskLimit {
    dir: PathBuf,
}

impl TaskLimit {
    fn enter() -> Option<TaskLimit> {
        let root = PathBuf::from("/sys/fs/cgroup/pids");
        if !root.join("cgroup.procs").exists() {
            return None;
        }
        let dir = root.join(format!("review6b-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).ok()?;
        Some(TaskLimit { dir })
    }

    /// Only `spare` more tasks (processes or threads) in this process from now on.
    fn reach(&self, spare: u64) {
        let current = std::fs::read_to_string(self.dir.join("pids.current")).unwrap();
        let max = current.trim().parse::<u64>().unwrap() + spare;
        std::fs::write(self.dir.join("pids.max"), max.to_string()).unwrap();
    }

    fn lift(&self) {
        std::fs::write(self.dir.join("pids.max"), "max").unwrap();
    }
}

impl Drop for TaskLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("pids.max"), "max");
        // This process, and the guardian it forked while inside.
        let inside = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in inside.split_whitespace() {
            let _ = std::fs::write("/sys/fs/cgroup/pids/cgroup.procs", pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
#[ignore = "helper of review6b_a_service_is_still_born_inside_its_cgroup_after_a_spawn_failed_at_the_task_limit"]
fn review6b_helper_spawn_at_the_task_limit_then_below_it() {
    if std::env::var_os(HELPER_VAR).is_none() {
        return;
    }
    let Some(limit) = TaskLimit::enter() else {
        println!("skipped: no v1 pids controller here");
        println!("1 passed");
        return;
    };
    let p = Project::new("r6b-eagain");
    let sleeper = || Service::new(["sleep", "1000"]).ready(Ready::started());
    let bundle = || {
        let mut b = p.bundle().shutdown_timeout(Duration::from_secs(5));
        b.add("Sleeper", sleeper()).unwrap();
        b
    };
    // A first bundle: the guardian and the pool's threads exist from now on.
    let mut first = bundle();
    first.startup().unwrap();
    let first_ign = status_bits(first.service("Sleeper").unwrap().pid().unwrap(), "SigIgn");

    // For a moment no task can be made but the bundle's log writer thread: its service's
    // start fails (EAGAIN), as it should. (`startup` spawns its first service on the
    // calling thread.)
    limit.reach(1);
    let mut at_limit = bundle();
    let at_limit = at_limit.startup();
    limit.lift();
    println!("start at the task limit: {at_limit:?}");

    // The limit is gone: the next bundle's service should be born inside its cgroup again.
    let mut b = bundle();
    b.startup().unwrap();
    let pid = b.service("Sleeper").unwrap().pid().unwrap();
    let ignored = status_bits(pid, "SigIgn");
    println!(
        "SigIgn of the first bundle's service {first_ign:#x}, of the one after the limit \
         {ignored:#x}"
    );
    first.shutdown().unwrap();
    b.shutdown().unwrap();
    drop(limit);
    assert!(at_limit.is_err(), "the start at the task limit failed");
    assert_eq!(
        first_ign & GLIBC_INTERNAL,
        0,
        "the first start was born inside (clone3)"
    );
    assert_eq!(
        ignored & GLIBC_INTERNAL,
        0,
        "after one EAGAIN the service is started by posix_spawn (outside its cgroup, moved \
         in later): clone3 is off for the rest of the process"
    );
}

// Failed before the fix, with:
//   start at the task limit: Err(service `Sleeper` could not be started: running
//   `/usr/bin/sleep`: Resource temporarily unavailable (os error 11))
//   SigIgn of the first bundle's service 0x0, of the one after the limit 0x180000000
//   assertion `left == right` failed: after one EAGAIN the service is started by
//   posix_spawn (outside its cgroup, moved in later): clone3 is off for the rest of the
//   process   left: 6442450944  right: 0
// Why: exec/spawn.rs treats every clone3 error other than EPERM/EACCES/EBUSY/EOPNOTSUPP
// as "the kernel can't" and sets the process-wide CLONE_UNUSABLE for good. EAGAIN (a task
// limit: RLIMIT_NPROC, pids.max, systemd's TasksMax, threads-max) and ENOMEM are
// transient: the same spawn through posix_spawn fails with them too, and once the load
// passes every later service of every bundle in the process is born outside its cgroup and
// moved in afterwards, reopening the window the commit closes (a service that forks and
// leaves its group at once escapes shutdown's cgroup kill), silently.
#[test]
fn review6b_a_service_is_still_born_inside_its_cgroup_after_a_spawn_failed_at_the_task_limit() {
    if !is_root() {
        println!("skipped: the run's cgroup (and a pids cgroup) need root, as in CI");
        return;
    }
    let (passed, text) =
        run_helper("review6b_clone::review6b_helper_spawn_at_the_task_limit_then_below_it");
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("SigIgn") || l.contains("limit") || l.contains("left:"))
        .collect();
    assert!(
        passed,
        "helper said:\n{}\n--- full output ---\n{text}",
        said.join("\n")
    );
}
