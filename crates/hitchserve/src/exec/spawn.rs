//! Starting a service's main process without `fork()`: glibc's `posix_spawn`, told to start
//! the child with an empty signal mask.
//!
//! Owns `ServiceChild` (a started service's pid and the read ends of its stdout and stderr
//! pipes, reaped by `wait`) and `posix_spawn_service`, which starts one in a process group of
//! its own, in its directory, with exactly its environment, stdin on `/dev/null`, SIGPIPE at
//! its default action and no blocked signal, whatever the calling thread blocks. Why not
//! std's `Command`: std passes the caller's mask on to the child (on purpose: it no longer
//! resets it), and a reset needs a `pre_exec` hook, which makes std `fork()` — 2-7x slower
//! startup at 100-500 services. glibc's `posix_spawn` sets the mask in its `vfork`-like child itself
//! (`POSIX_SPAWN_SETSIGMASK`). It knows nothing of services or bundles.
//!
//! When the run has a cgroup, the child is started inside it instead, by `clone` (the same
//! set-up, written out by hand), where the kernel allows; else as above. A child that runs
//! as another user is started only that way (`posix_spawn` can't switch users): where it
//! can't be, the caller starts it with std's `Command`.
//!
//! Invariant: no code of ours runs in a child `posix_spawn` makes: its whole set-up is what
//! the attributes and file actions below describe, so it is safe from any thread at any
//! time (what runs in `clone`'s child is held to the same rules there).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::cgroup::Cgroup;
use crate::exec::clone::{self, CloneError};

/// A service's main process, started but not yet reaped.
#[derive(Debug)]
pub(crate) struct ServiceChild {
    pid: u32,
    /// Read end of its stdout pipe, until taken.
    pub(crate) stdout: Option<OwnedFd>,
    /// Read end of its stderr pipe, until taken.
    pub(crate) stderr: Option<OwnedFd>,
    /// Its exit, once reaped (its pid may be anyone's after that).
    reaped: Option<std::process::ExitStatus>,
}

impl ServiceChild {
    /// Its pid, which is also its process group's id.
    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    /// Wait for it to exit and reap it (at once if it has exited).
    pub(crate) fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        if let Some(status) = self.reaped {
            return Ok(status);
        }
        let mut raw: libc::c_int = 0;
        loop {
            // SAFETY: waitpid on our own unreaped child, into a status we own.
            let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, 0) };
            if r == self.pid as libc::pid_t {
                let status = std::process::ExitStatus::from_raw(raw);
                self.reaped = Some(status);
                return Ok(status);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// A child we started, with the read ends of its stdout and stderr pipes.
    fn piped(pid: libc::pid_t, stdout: OwnedFd, stderr: OwnedFd) -> ServiceChild {
        ServiceChild {
            pid: pid as u32,
            stdout: Some(stdout),
            stderr: Some(stderr),
            reaped: None,
        }
    }

    /// The same for a child std started (a service that runs as another user where `clone`
    /// can't start it, or any service where `posix_spawn` lacks what we need).
    pub(crate) fn from_std(mut child: std::process::Child) -> ServiceChild {
        // Dropping std's `Child` neither kills nor reaps: the pid stays ours to reap.
        ServiceChild {
            pid: child.id(),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
            reaped: None,
        }
    }
}

/// `posix_spawn_file_actions_addchdir_np` (glibc 2.29), looked up at run time as std does, so
/// that a binary built here still loads where glibc is older; `None` there.
type AddChdir =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, *const libc::c_char) -> libc::c_int;

fn addchdir() -> Option<AddChdir> {
    static FOUND: OnceLock<Option<AddChdir>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; a non-null result is that function,
        // whose C signature is `AddChdir`'s.
        unsafe {
            let f = libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addchdir_np".as_ptr(),
            );
            (!f.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, AddChdir>(f))
        }
    })
}

/// Whether `posix_spawn_service` can start a process here (it needs to set the child's
/// directory); otherwise the caller starts it another way.
pub(crate) fn available() -> bool {
    addchdir().is_some()
}

/// A C string of `s`; an interior NUL is the caller's mistake, said as std says it.
fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// A C error number as an `io::Result`.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// A pipe for a child's output (see `clone::pipe`).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    clone::pipe(nix::fcntl::OFlag::empty())
}

/// Destroys what `posix_spawn`'s set-up calls initialised, whichever way we leave.
struct Attr(libc::posix_spawnattr_t);
impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawnattr_init before this guard was made.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}
struct Actions(libc::posix_spawn_file_actions_t);
impl Drop for Actions {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawn_file_actions_init before this guard was made.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Start `program` (a path, not searched for) with `argv` (`argv[0]` first) in `dir` with
/// exactly `env`: in a new process group it leads, stdin on `/dev/null`, stdout and stderr
/// piped to us, no blocked signal, SIGPIPE at its default. Call `available` first
/// (unless with `run_as`, which doesn't need it).
/// Inside `cgroup` from birth where the kernel lets us (see `clone`); the flag says
/// whether it was.
///
/// With `run_as` (uid, gid), only born inside: `posix_spawn` can't switch users. `None`
/// when that can't be done here: the caller starts it the other way (std's `Command`).
pub(crate) fn posix_spawn_service(
    program: &Path,
    argv: &[&OsStr],
    dir: &Path,
    env: &[(OsString, OsString)],
    cgroup: Option<&Cgroup>,
    run_as: Option<(u32, u32)>,
) -> io::Result<Option<(ServiceChild, bool)>> {
    let program = c_string(program.as_os_str())?;
    let dir = c_string(dir.as_os_str())?;
    let args = argv
        .iter()
        .map(|a| c_string(a))
        .collect::<io::Result<Vec<_>>>()?;
    let vars = env
        .iter()
        .map(|(k, v)| {
            let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(OsStr::from_bytes(&kv))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut arg_ptrs: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    arg_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = vars.iter().map(|v| v.as_ptr().cast_mut()).collect();
    env_ptrs.push(std::ptr::null_mut());

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    if let Some((cgroup, fd)) = cgroup.and_then(|c| c.birth_fd().map(|fd| (c, fd))) {
        if !CLONE_UNUSABLE.load(Ordering::Relaxed) {
            let child = clone::Child {
                program: &program,
                argv: &arg_ptrs,
                envp: &env_ptrs,
                dir: &dir,
                out_w: out_w.as_raw_fd(),
                err_w: err_w.as_raw_fd(),
                run_as,
            };
            match clone::spawn_in_cgroup(child, fd) {
                Ok(pid) => {
                    drop((out_w, err_w));
                    return Ok(Some((ServiceChild::piped(pid, out_r, err_r), true)));
                }
                Err(CloneError::Failed(e)) => return Err(e),
                Err(CloneError::Refused(e)) => match e.raw_os_error() {
                    // The system can't (no clone3, or one without CLONE_INTO_CGROUP): the
                    // other way, from now on.
                    Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL) => {
                        CLONE_UNUSABLE.store(true, Ordering::Relaxed)
                    }
                    // The machine is short of processes or memory for now: posix_spawn
                    // would be refused the same, and the next spawn may well be born inside.
                    Some(libc::EAGAIN | libc::ENOMEM) => return Err(e),
                    // This cgroup refuses (no permission, a threaded or dying cgroup, ...):
                    // the other way for the rest of this run.
                    _ => cgroup.refuse_births(),
                },
            }
        }
    }
    if run_as.is_some() {
        return Ok(None);
    }
    let Some(addchdir) = addchdir() else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "posix_spawn_file_actions_addchdir_np is missing (glibc before 2.29)",
        ));
    };

    // SAFETY: each posix_spawn* call gets a pointer to an object initialised by its `_init`
    // (destroyed once by its guard) and NUL-terminated strings and arrays that outlive the
    // call; `posix_spawn` writes the pid into a local we own. The child runs none of our
    // code (glibc applies the attributes and file actions, then execs).
    unsafe {
        let mut attr = Attr(std::mem::zeroed());
        check(libc::posix_spawnattr_init(&mut attr.0))?;
        let mut actions = Actions(std::mem::zeroed());
        check(libc::posix_spawn_file_actions_init(&mut actions.0))?;

        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
        // Every signal at its default action: ignoring survives exec, and a test process
        // may ignore some (SIGPIPE as Rust and Python do, SIGINT and SIGQUIT under `nohup`
        // or a shell's `&`, SIGTERM by choice) — a service that inherited that would not
        // stop on its stop signal. (Handled signals are reset by exec anyway.)
        let mut default: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut default);
        check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &default))?;
        // Its own group, led by itself (pgid 0 = its pid): what stop and kill signal.
        check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
        let flags = libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF
            | libc::POSIX_SPAWN_SETPGROUP;
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            flags as libc::c_short,
        ))?;

        check(libc::posix_spawn_file_actions_addopen(
            &mut actions.0,
            libc::STDIN_FILENO,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        // dup2 clears close-on-exec on 1 and 2; every other end of the pipes closes at exec.
        check(libc::posix_spawn_file_actions_adddup2(
            &mut actions.0,
            out_w.as_raw_fd(),
            libc::STDOUT_FILENO,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(
            &mut actions.0,
            err_w.as_raw_fd(),
            libc::STDERR_FILENO,
        ))?;
        check(addchdir(&mut actions.0, dir.as_ptr()))?;

        let mut pid: libc::pid_t = 0;
        check(libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.0,
            &attr.0,
            arg_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        ))?;
        // The write ends are the child's now; ours close here (out_w, err_w dropped), so
        // the read ends see EOF once the service and its children are done.
        drop((out_w, err_w));
        Ok(Some((ServiceChild::piped(pid, out_r, err_r), false)))
    }
}

/// `clone3` into a cgroup failed in a way that will fail again (no such system call, or a
/// kernel before 5.7): don't try again.
static CLONE_UNUSABLE: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A field of `/proc/<pid>/status`, as hex bits.
    fn status_bits(pid: u32, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .expect("the field");
        u64::from_str_radix(value.trim(), 16).expect("hex")
    }

    /// Removes a test directory whichever way the test ends.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// As root: a service that runs as another user is born inside the cgroup too, as that
    /// user and group without the supplementary groups of the thread that starts it, in a
    /// directory only that user may enter, and the test process stays dumpable (its memory
    /// is not the child's); one that may not enter its directory is refused with the
    /// reason. Runs on a thread of its own: it gives that thread supplementary groups.
    fn run_as_another_user_inside(
        cgroup: &Cgroup,
        run: &str,
        env: &[(OsString, OsString)],
        sleep: &Path,
        argv: &[&OsStr],
    ) {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let (uid, gid) = (65534u32, 65534u32);
        let tmp = std::env::temp_dir().canonicalize().expect("the temp dir");
        // Nobody must be able to pass through every directory above its own.
        if tmp
            .ancestors()
            .any(|a| std::fs::metadata(a).map_or(true, |m| m.mode() & 0o001 == 0))
        {
            eprintln!("another user's service not tried: {tmp:?} is closed to other users");
            return;
        }
        let base = tmp.join(format!("spawn-user-{}", crate::safepath::random_name()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&base)
            .expect("a test directory");
        let _cleanup = Cleanup(base.clone());
        let dir = base.join("own");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("its directory");
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("given to nobody");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)).expect("0711");
        // Groups for this thread alone (the raw call; glibc's would change every thread).
        let groups: [libc::gid_t; 2] = [4, 27];
        // SAFETY: setgroups of the calling task with a valid array of two ids.
        let set = unsafe { libc::syscall(libc::SYS_setgroups, 2, groups.as_ptr()) };
        assert_eq!(set, 0, "supplementary groups for the test thread");
        // SAFETY: prctl without pointers.
        let dumpable = || unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
        let before = dumpable();
        let started = posix_spawn_service(sleep, argv, &dir, env, Some(cgroup), Some((uid, gid)));
        let after = dumpable();
        let (mut child, inside) = match started {
            Ok(Some(s)) => s,
            Ok(None) => {
                eprintln!("clone3 into a cgroup is not usable here: std's way, tested elsewhere");
                return;
            }
            Err(e) => panic!("another user's service: {e}"),
        };
        let pid = child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let cgroup_line =
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = child.wait();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert!(inside, "born inside");
        assert!(
            cgroup_line.contains(&format!("hitchserve-{run}")),
            "{cgroup_line}"
        );
        assert_eq!(field("Uid:"), "65534 65534 65534 65534");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534");
        assert_eq!(
            field("Groups:"),
            "",
            "the starting thread's groups are dropped"
        );
        assert_eq!(cwd, dir);
        assert_eq!((before, after), (1, 1), "the test process stays dumpable");
        // Root's directory, 0700: not for nobody.
        let closed = base.join("closed");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&closed)
            .expect("root's directory");
        match posix_spawn_service(sleep, argv, &closed, env, Some(cgroup), Some((uid, gid))) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}"),
            Ok(started) => {
                if let Some((mut child, _)) = started {
                    // SAFETY: our own unreaped child.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    let _ = child.wait();
                }
                panic!("nobody entered root's 0700 directory")
            }
        }
    }

    /// Both ways of starting a service, `posix_spawn` and (as root, where the kernel has
    /// it) `clone3` into the run's cgroup, give it the same set-up whatever the calling
    /// thread blocks; and both say why a program could not run.
    #[test]
    fn both_ways_of_starting_a_service_give_it_the_same_set_up() {
        let run = format!("spawn-test-{}", crate::safepath::random_name());
        let cgroup = Cgroup::create(&run).map(std::sync::Arc::new);
        let kept = cgroup.clone();
        let joined = std::thread::spawn(move || {
            // SAFETY: blocks SIGTERM in this thread only, with a set we own.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            let dir = std::env::temp_dir().canonicalize().expect("the temp dir");
            let env = [(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))];
            let sleep = Path::new("/bin/sleep");
            let argv = [OsStr::new("sleep"), OsStr::new("1000")];
            let mut ways = vec![("posix_spawn", None)];
            match &cgroup {
                Some(c) => ways.push(("clone3", Some(&**c))),
                None => eprintln!("clone3 into a cgroup not tried: no cgroup here (not root)"),
            }
            for (way, cg) in ways {
                let (mut child, inside) = posix_spawn_service(sleep, &argv, &dir, &env, cg, None)
                    .expect("spawn sleep")
                    .expect("started without switching users");
                let pid = child.id();
                let check = || -> Result<(), String> {
                    if status_bits(pid, "SigBlk") != 0 {
                        return Err("blocked signals".into());
                    }
                    if status_bits(pid, "SigIgn") & (1 << (libc::SIGPIPE - 1)) != 0 {
                        return Err("SIGPIPE ignored".into());
                    }
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map_err(|e| e.to_string())?;
                    let after = &stat[stat.rfind(')').unwrap_or(0) + 2..];
                    if after.split(' ').nth(2) != Some(pid.to_string().as_str()) {
                        return Err(format!("not its own group's leader: {stat}"));
                    }
                    let link = |what: &str| {
                        std::fs::read_link(format!("/proc/{pid}/{what}")).unwrap_or_default()
                    };
                    if link("cwd") != dir {
                        return Err(format!("in {:?}", link("cwd")));
                    }
                    if link("fd/0") != Path::new("/dev/null") {
                        return Err(format!("stdin {:?}", link("fd/0")));
                    }
                    for fd in ["fd/1", "fd/2"] {
                        if !link(fd).to_string_lossy().starts_with("pipe:") {
                            return Err(format!("{fd} {:?}", link(fd)));
                        }
                    }
                    let cgroup_line = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .map_err(|e| e.to_string())?;
                    if inside != cgroup_line.contains(&format!("hitchserve-{run}")) {
                        return Err(format!("inside: {inside}, cgroup {cgroup_line}"));
                    }
                    Ok(())
                };
                let checked = check();
                // SAFETY: our own unreaped child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let _ = child.wait();
                checked.unwrap_or_else(|e| panic!("{way}: {e}"));
                assert_eq!(inside, way == "clone3", "{way}: started inside");

                let missing = Path::new("/nonexistent/program");
                let e = posix_spawn_service(missing, &argv, &dir, &env, cg, None)
                    .expect_err("a missing program");
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{way}: {e}");
                let e =
                    posix_spawn_service(sleep, &argv, Path::new("/nonexistent"), &env, cg, None)
                        .expect_err("a missing directory");
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{way}: {e}");
            }
            if let Some(c) = &cgroup {
                run_as_another_user_inside(c, &run, &env, sleep, &argv);
            }
            let no_cgroup =
                posix_spawn_service(sleep, &argv, &dir, &env, None, Some((65534, 65534)))
                    .expect("no error");
            assert!(
                no_cgroup.is_none(),
                "another user's service, not in a cgroup: std's way"
            );
        })
        .join();
        // Whichever way the test went, its cgroup goes (its processes were killed).
        if let Some(c) = kept {
            let deadline = Instant::now().checked_add(Duration::from_secs(30));
            let removed = c.remove(deadline);
            joined.expect("the spawning thread");
            assert!(removed, "the test's cgroup is removed");
        } else {
            joined.expect("the spawning thread");
        }
    }
}
