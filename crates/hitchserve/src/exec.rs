//! What every process the bundle starts shares: the run marker, how a program is found, the
//! service's environment, the `Command` built from them, and the process group it runs in.
//!
//! Owns `ExecEnv` (a service's directory, environment and user — used alike by the service
//! itself, its sub-commands, its probe commands and its hooks), program resolution, the
//! environment a service gets, how a service's main process is spawned (`spawn_service`:
//! posix_spawn with an empty signal mask, see `spawn`, or born inside the run's cgroup, see
//! `clone`), and `ProcessGroup`, the only kill target. It knows nothing of bundles or
//! states.
//!
//! Invariant: a `ProcessGroup` is signalled only while its leader is our unreaped child (the
//! caller's lock or ownership of the child guarantees it), so its pgid can't have been reused.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cgroup::Cgroup;
use crate::signal::Signal;

mod clone;
mod spawn;
pub(crate) use spawn::ServiceChild;

/// Environment variable that marks every process of a run, so escapees can be found.
pub(crate) const MARKER_VAR: &str = "HITCHSERVE_RUN";
/// Environment variable that marks every process of one service of a run
/// (`<run id>/<name>`), so that a stop by hand finds what left its group.
pub(crate) const SERVICE_MARKER_VAR: &str = "HITCHSERVE_SERVICE";

/// The value of `SERVICE_MARKER_VAR` for service `name` of run `run_id`.
pub(crate) fn service_marker(run_id: &str, name: &str) -> String {
    format!("{run_id}/{name}")
}

/// Where and as whom a service's processes run, and with what environment.
#[derive(Clone, Debug)]
pub(crate) struct ExecEnv {
    /// The service's name, for error messages.
    pub service: String,
    pub dir: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    /// Uid and gid to run as (see `Service::user`).
    pub run_as: Option<(u32, u32)>,
    /// Shared by the run's services: set once a process carrying the run's marker was
    /// started outside the run's cgroup (a hook's, a sub-command's or a probe's command, a
    /// service that could not be born inside, what a caller starts with the environment
    /// it was handed). Until then a cgroup holds everything of the run, and its stop needs
    /// no marker sweep through `/proc`.
    pub outside: Arc<AtomicBool>,
}

impl ExecEnv {
    /// A variable of the environment, as text.
    pub(crate) fn var(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    /// Find `program` as exec would, from this directory and on this `PATH`; the error says
    /// where we looked.
    pub(crate) fn resolve(&self, program: &OsStr) -> Result<PathBuf, String> {
        resolve_program(program, &self.dir, self.path_var())
    }

    /// Its `PATH`, if it has one.
    pub(crate) fn path_var(&self) -> Option<&OsStr> {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str())
    }

    /// A command running `program` (already resolved) as `arg0` with `args` in this
    /// directory, environment and user, with no blocked signals.
    pub(crate) fn command(&self, program: &Path, arg0: &OsStr, args: &[OsString]) -> Command {
        self.outside.store(true, Ordering::SeqCst);
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            // (std then drops root's supplementary groups too.)
            cmd.uid(uid).gid(gid);
        }
        cmd.arg0(arg0)
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        unblock_signals_in_child(&mut cmd);
        cmd
    }

    /// Start a service's main process: `program` (already resolved) as `arg0` with `args`, in
    /// this directory and environment, in a process group it leads, stdin on `/dev/null`,
    /// stdout and stderr piped, with no blocked signal. The error names the program.
    ///
    /// Without `fork()` even when the calling thread blocks signals (posix_spawn resets the
    /// mask itself). Inside `cgroup` from birth where it can be (the flag says whether it
    /// was; see `clone`), a service that runs as another user too (as a copy of this
    /// process, as from `fork`). std's `Command` (which forks) starts what neither way can:
    /// a service that runs as another user where `clone` can't be used (posix_spawn can't
    /// switch users), or any service without glibc 2.29's `posix_spawn`.
    pub(crate) fn spawn_service(
        &self,
        program: &Path,
        arg0: &OsStr,
        args: &[OsString],
        cgroup: Option<&Cgroup>,
    ) -> std::io::Result<(ServiceChild, bool)> {
        let fast = if spawn::available() || self.run_as.is_some() {
            let argv: Vec<&OsStr> = std::iter::once(arg0)
                .chain(args.iter().map(OsString::as_os_str))
                .collect();
            spawn::posix_spawn_service(program, &argv, &self.dir, &self.env, cgroup, self.run_as)
        } else {
            Ok(None)
        };
        let spawned = fast.and_then(|fast| match fast {
            Some(spawned) => Ok(spawned),
            None => {
                let mut cmd = self.command(program, arg0, args);
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                cmd.spawn()
                    .map(|child| (ServiceChild::from_std(child), false))
            }
        });
        spawned.map_err(|e| {
            // The directory is entered before the program is run: tell which one was missing.
            let what = match std::fs::metadata(&self.dir) {
                Err(_) => format!(
                    "entering its directory `{}` (it does not exist now)",
                    self.dir.display()
                ),
                Ok(_) => format!("running `{}`", program.display()),
            };
            std::io::Error::new(e.kind(), format!("{what}: {e}"))
        })
    }
}

/// The service's whole environment: the test's, then its own changes, then the run's and
/// the service's markers.
pub(crate) fn service_env(
    base: &[(OsString, OsString)],
    changes: &[(OsString, Option<OsString>)],
    run_id: &str,
    name: &str,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = base.to_vec();
    let mut set = |key: &OsStr, value: Option<&OsStr>| {
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.to_owned(), v.to_owned()));
        }
    };
    for (k, v) in changes {
        set(k, v.as_deref());
    }
    set(OsStr::new(MARKER_VAR), Some(OsStr::new(run_id)));
    set(
        OsStr::new(SERVICE_MARKER_VAR),
        Some(OsStr::new(&service_marker(run_id, name))),
    );
    env
}

/// Find the program as exec would: a path with `/` from the service's directory, otherwise
/// on the service's `PATH`. The error text says where we looked.
pub(crate) fn resolve_program(
    program: &OsStr,
    dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let candidate = dir.join(program);
        return if executable(&candidate) {
            Ok(candidate)
        } else {
            Err(format!(
                "at `{}` (or it is not executable)",
                candidate.display()
            ))
        };
    }
    let Some(path_var) = path_var else {
        return Err("because the service has no PATH".to_owned());
    };
    for entry in std::env::split_paths(path_var) {
        let base = if entry.as_os_str().is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(entry)
        };
        let candidate = base.join(program);
        if executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!("on PATH `{}`", path_var.to_string_lossy()))
}

/// The process group a service (or a piped sub-command) leads: what gets signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessGroup(u32);

impl ProcessGroup {
    /// The group led by `pid` (spawned with `process_group(0)`).
    pub(crate) fn led_by(pid: u32) -> ProcessGroup {
        ProcessGroup(pid)
    }

    /// Its leader's pid, which is also its pgid.
    pub(crate) fn leader(self) -> u32 {
        self.0
    }

    /// Send `signal` to every process in the group; false if none got it.
    pub(crate) fn signal(self, signal: Signal) -> bool {
        let pgid = nix::unistd::Pid::from_raw(self.0 as i32);
        nix::sys::signal::killpg(pgid, signal.to_nix()).is_ok()
    }

    /// SIGKILL what is left in it (ESRCH when it is empty is fine).
    pub(crate) fn kill(self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Start the child with no blocked signal and every signal at its default action, whatever
/// the spawning thread had blocked or the test process ignores.
///
/// A signal mask and ignored signals are inherited across `exec`, and std resets only
/// SIGPIPE: a program that blocks SIGTERM to `sigwait` for it, or runs under `nohup` (SIGINT
/// and SIGQUIT ignored), would pass that on, and its services would ignore their stop
/// signal. The reset needs a `pre_exec` hook, which makes std fork instead of using the
/// faster posix_spawn, so it is added only when there is something to reset. (A service's
/// main process comes here only where neither posix_spawn nor `clone` can start it: see
/// `ExecEnv::spawn_service`.)
pub(crate) fn unblock_signals_in_child(cmd: &mut Command) {
    // SAFETY: reading the calling thread's mask into a set we own.
    let blocked = unsafe {
        let mut current: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
        (1..=libc::SIGRTMAX()).any(|s| libc::sigismember(&current, s) == 1)
    };
    // SAFETY: reading each signal's action into a struct we own.
    let ignored: Vec<libc::c_int> = (1..=libc::SIGRTMAX())
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP && s != libc::SIGPIPE)
        .filter(|&s| unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(s, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
        })
        .collect();
    if blocked || !ignored.is_empty() {
        // SAFETY: between fork and exec the hook only calls sigemptyset, pthread_sigmask
        // and signal, all async-signal-safe, on data of its own (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                for &s in &ignored {
                    libc::signal(s, libc::SIG_DFL);
                }
                Ok(())
            });
        }
    }
}

/// What in a command line and its environment changes no program could be given, said for a
/// person: the kernel passes names, values and arguments as NUL-terminated strings, and a
/// name with `=` (or none) is not a variable the program could read back.
pub(crate) fn bad_command<'a>(
    argv: &[OsString],
    env: impl IntoIterator<Item = (&'a std::ffi::OsStr, Option<&'a std::ffi::OsStr>)>,
) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let nul = |s: &std::ffi::OsStr| s.as_bytes().contains(&0);
    if let Some(i) = argv.iter().position(|a| nul(a)) {
        return Some(format!(
            "argument {i} of the command (`{}`) holds a NUL byte, which no program can be \
             given: remove it",
            argv[i].to_string_lossy().escape_debug()
        ));
    }
    for (key, value) in env {
        let name = key.to_string_lossy();
        if key.is_empty() || key.as_bytes().contains(&b'=') || nul(key) {
            return Some(format!(
                "`{}` can't be the name of an environment variable: a name is not empty and \
                 holds no `=` nor NUL byte",
                name.escape_debug()
            ));
        }
        if value.is_some_and(nul) {
            return Some(format!(
                "the value of the environment variable `{name}` holds a NUL byte, which no \
                 program can be given: remove it"
            ));
        }
    }
    None
}
