//! Helpers shared by the integration tests: temporary projects and process liveness.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hitchserve::{Bundle, Service};

/// Generous: the machine may be loaded; a wait only takes this long when something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The startup timeout of a test's bundle: two Erlang nodes (RabbitMQ) or database servers
/// booting side by side on a loaded 2-core machine take far longer than alone, and a
/// longer timeout costs nothing when the startup succeeds.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// A temporary project directory, removed on drop.
pub struct Project {
    pub dir: PathBuf,
}

impl Project {
    pub fn new(tag: &str) -> Project {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hitchserve-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp project");
        Project { dir }
    }

    pub fn bundle(&self) -> Bundle {
        Bundle::new(&self.dir)
            .startup_timeout(STARTUP_PATIENCE)
            .shutdown_timeout(Duration::from_secs(10))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `sh -c script`, ready on a line equal to `READY`.
pub fn sh(script: &str) -> Service {
    Service::new(["sh", "-c", script]).ready_when(|line| line == "READY")
}

/// The run id of a started bundle (the name of its run directory).
pub fn run_id(bundle: &Bundle) -> String {
    bundle
        .run_dir()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("a started bundle has a run directory")
        .to_owned()
}

/// Live (non-zombie) processes whose environment carries this run's marker.
pub fn marked_pids(run_id: &str) -> Vec<u32> {
    let needle = format!("HITCHSERVE_RUN={run_id}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(env) = environ_of(pid) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && is_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// True if the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
    }
}

/// A process's environment block. A process in the middle of an exec (a service's `sh`
/// running `exec sleep` just after it printed READY) shows an empty one for a moment: a
/// live user process with an empty one is looked at again, for up to a second (a loaded
/// machine may not run it for a while), so it
/// is not taken for one without the marker. (Kernel threads and zombies have none.) A poll:
/// nothing tells of another process's exec reaching its end.
fn environ_of(pid: u32) -> Option<Vec<u8>> {
    const PF_KTHREAD: i64 = 0x0020_0000;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let settled = !env.is_empty()
            || stat_field(pid, 9).is_none_or(|flags| flags & PF_KTHREAD != 0)
            || !is_alive(pid)
            || std::time::Instant::now() >= deadline;
        if settled {
            return Some(env);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Field `n` (1-based, as in proc(5)) of /proc/<pid>/stat.
pub fn stat_field(pid: u32, n: usize) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Block until the process has exited (it may stay a zombie), up to `timeout`; true if it
/// did. Uses a pidfd, so it is woken by the exit itself, not by polling.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    // SAFETY: plain syscalls on integers we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as libc::c_int;
        if fd < 0 {
            return true; // ESRCH: already gone and reaped
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int);
        libc::close(fd);
        n == 1 || !is_alive(pid)
    }
}

/// Run one `#[ignore]`d helper test of this binary in a child process with `env` set, its
/// output captured (`--nocapture`, so what the bundle prints reaches the pipe).
pub fn helper_process(test: &str, env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .envs(env.iter().copied())
    .stdin(std::process::Stdio::null());
    cmd
}

/// Run helper `test` (see [`helper_process`]) with `env` and check that it passed and
/// printed `said` (the line it prints once its checks are done).
pub fn helper_passes(test: &str, env: &[(&str, &str)], said: &str) {
    let out = helper_process(test, env).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(said), "{text}");
}

/// A small tmpfs mounted for one test, unmounted (lazily: a service may still hold a file
/// there) when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) when it can't be done here: only root may mount.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: a plain syscall without arguments.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed as root");
        Some(Tmpfs {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Check `condition` until it holds, up to `timeout`; true if it did. For conditions the
/// kernel has no event for (a process appearing, a cgroup move): each look is cheap, and the
/// pause between looks only sets how soon after the change we notice it.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The process's cgroup v2 path (the `0::` line of /proc/<pid>/cgroup).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Whether this test runs as root (the bundle's cgroup needs it here, as in CI).
pub fn is_root() -> bool {
    // SAFETY: a plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `var=value` is in the process's environment.
pub fn has_env(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|v| v == entry.as_bytes()))
        .unwrap_or(false)
}

/// Compile the C program `source` (a test's own, as text) into the project as `name`, with
/// pthreads and librt; its path.
pub fn compile_c(p: &Project, name: &str, source: &str) -> PathBuf {
    cc(p, name, source, &["-O2", "-Wall", "-pthread"], &["-lrt"])
}

/// [`compile_c`], as a shared library (`NAME.so`) to preload.
pub fn compile_c_shared(p: &Project, name: &str, source: &str) -> PathBuf {
    cc(
        p,
        &format!("{name}.so"),
        source,
        &["-O2", "-Wall", "-shared", "-fPIC"],
        &["-ldl"],
    )
}

/// `source` written as `NAME.c` in the project and built to `out` there with `cc`.
fn cc(p: &Project, out: &str, source: &str, flags: &[&str], libs: &[&str]) -> PathBuf {
    let name = out.trim_end_matches(".so");
    let src = p.write(&format!("{name}.c"), source);
    let bin = p.path(out);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = std::process::Command::new(&cc)
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .args(libs)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    bin
}

/// Makes `release` in the project when dropped — or after `PATIENCE` by itself, should a
/// test's call wait for what it left behind (it did: the bound keeps such a regression from
/// hanging the suite). The script it releases waits for `release`.
pub struct Release(
    Option<std::sync::mpsc::Sender<()>>,
    Option<std::thread::JoinHandle<()>>,
);

impl Release {
    pub fn armed(p: &Project) -> Release {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let release = p.dir.join("release");
        let watchdog = std::thread::spawn(move || {
            let _ = wait.recv_timeout(PATIENCE);
            let _ = std::fs::write(release, "");
        });
        Release(Some(done), Some(watchdog))
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        drop(self.0.take());
        if let Some(w) = self.1.take() {
            let _ = w.join();
        }
    }
}
