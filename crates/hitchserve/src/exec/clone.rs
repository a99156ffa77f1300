//! Starting a service's main process inside its run's cgroup from its first instruction:
//! `clone3(CLONE_INTO_CGROUP)` in the `vfork` manner of glibc's `posix_spawn` (the child
//! shares our memory — or, for one that runs as another user, a copy of it — on a stack
//! of its own, and we wait until it has exec'd).
//!
//! Why by hand: neither std nor glibc before 2.39 (`posix_spawnattr_setcgroup_np`) can
//! start a child in a cgroup, and moving a process in afterwards takes a lock that holds up
//! every fork on the machine: about 30 µs per service here, and a window in which a service
//! can fork before it is moved. The child's set-up is what `posix_spawn_service` asks of
//! glibc: every signal at its default action, its own process group, stdin on `/dev/null`,
//! stdout and stderr onto our pipes, its directory, an empty signal mask, exec — and, for a
//! service that runs as another user (which posix_spawn can't do), what std's `Command`
//! does for that: no supplementary groups (when we are root), its group, its user. That
//! child gets a copy of our memory, as from `fork` (see `copy` in `spawn_in_cgroup`).
//!
//! Owns that child's code and the system call, and the pipes made for children (`pipe`:
//! never on 0, 1 or 2). Anything this can't do says so
//! (`Refused`) and the caller starts the service the other way: a kernel before 5.7 or a
//! seccomp filter without `clone3` (`ENOSYS`, `EINVAL`), a cgroup we may not start
//! processes in (`EPERM`, `EACCES`, `EBUSY`), an architecture other than x86-64.
//!
//! Invariant: the child runs only `child_main`, which calls nothing but system calls on
//! memory the caller prepared (no allocation, no lock, no panic), with every signal blocked
//! until its handlers are reset; our thread is stopped meanwhile (`CLONE_VFORK`); a child
//! whose ids change never shares our memory.

use std::ffi::{c_char, c_int, CStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A pipe whose ends are close-on-exec (and `flags`) and not 0, 1 or 2: when our own stdio
/// is closed, a new pipe may get those numbers, and a child's dup2 onto 1 and 2 would
/// clobber them.
pub(super) fn pipe(flags: nix::fcntl::OFlag) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | flags)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd; on success the new fd is ours alone.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// Why no child was made.
pub(crate) enum CloneError {
    /// This way can't be used here (see the module header): start it the other way.
    Refused(io::Error),
    /// The child was made but could not run the program: that is the spawn's error.
    Failed(io::Error),
}

/// The child to start: `program` with `argv` and `envp` (NULL-terminated) in `dir`;
/// `out_w`/`err_w` become its stdout and stderr; as user and group `run_as` if given
/// (without supplementary groups when we are root, as std's `Command` does).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Child<'a> {
    pub program: &'a CStr,
    pub argv: &'a [*mut c_char],
    pub envp: &'a [*mut c_char],
    pub dir: &'a CStr,
    pub out_w: RawFd,
    pub err_w: RawFd,
    pub run_as: Option<(u32, u32)>,
}

/// What the child needs, prepared by the caller; all pointers outlive the call.
#[repr(C)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct ChildArgs {
    program: *const c_char,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
    dir: *const c_char,
    out_w: c_int,
    err_w: c_int,
    /// Switch to `uid` and `gid` (1), after dropping supplementary groups (2 as well).
    set_ids: c_int,
    uid: u32,
    gid: u32,
    /// Set by the child when a step fails: the error number (the child then exits 127).
    errno: c_int,
    /// A child with a copy of our memory (not shared) writes that error number here too:
    /// the write end of a close-on-exec pipe; -1 for a child that shares our memory.
    report: c_int,
}

/// How long a spawn waits, at most, for a copy child's exec to finish (see
/// `spawn_in_cgroup`): only a process forked meanwhile by another thread, holding a copy
/// of the pipe, makes it wait this long; then it goes on as if the exec had finished.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const EXEC_PATIENCE_MS: u16 = 1000;

/// `ChildArgs::set_ids` bits.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SET_IDS: c_int = 1;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const DROP_GROUPS: c_int = 2;

/// Start `child` in `cgroup` (an `O_PATH` descriptor of its directory). Returns its pid.
#[cfg(target_arch = "x86_64")]
pub(crate) fn spawn_in_cgroup(
    child: Child<'_>,
    cgroup: BorrowedFd<'_>,
) -> Result<libc::pid_t, CloneError> {
    let Child {
        program,
        argv,
        envp,
        dir,
        out_w,
        err_w,
        run_as,
    } = child;
    /// `struct clone_args` of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    const SYS_CLONE3: i64 = 435;
    /// The child's stack: it needs a few hundred bytes; a page fault or two are touched.
    const STACK: usize = 64 * 1024;

    if argv.last().is_none_or(|p| !p.is_null()) || envp.last().is_none_or(|p| !p.is_null()) {
        return Err(CloneError::Refused(io::Error::other(
            "argv and envp must end with NULL",
        )));
    }
    let mut args = ChildArgs {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: dir.as_ptr(),
        out_w,
        err_w,
        set_ids: match run_as {
            None => 0,
            // SAFETY: getuid has no preconditions.
            Some(_) if unsafe { libc::getuid() } == 0 => SET_IDS | DROP_GROUPS,
            Some(_) => SET_IDS,
        },
        uid: run_as.map_or(0, |(uid, _)| uid),
        gid: run_as.map_or(0, |(_, gid)| gid),
        errno: 0,
        report: -1,
    };
    // A child that becomes another user gets a copy of our memory, not ours: the kernel
    // makes the memory of a task whose ids change non-dumpable, and shared memory would
    // leave the test process so (no core dumps, /proc files root's, no debugger) — and,
    // where `fs.suid_dumpable` is 1, another user's task would share root's memory until
    // exec. So it reports a failed step through a pipe, as std's fork does.
    let copy = run_as.is_some();
    // Non-blocking, and waited on with a bound: a process another thread forks meanwhile
    // and that never execs keeps a copy of the write end, so the pipe's end may not come.
    // It normally comes within microseconds of our resuming (see below).
    let report = if copy {
        let (r, w) = pipe(nix::fcntl::OFlag::O_NONBLOCK).map_err(CloneError::Failed)?;
        args.report = w.as_raw_fd();
        Some((r, w))
    } else {
        None
    };
    let vm = if copy { 0 } else { libc::CLONE_VM as u64 };
    // u128: 16-byte alignment, as the ABI wants the stack at a call.
    let mut stack = vec![0u128; STACK / 16];
    let mut clone_args = CloneArgs {
        flags: vm | libc::CLONE_VFORK as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: STACK as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.as_raw_fd() as u64,
    };
    // Every signal blocked (glibc's own two included) until the child has reset the
    // handlers: a handler of ours must never run in a child that shares our memory.
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask with valid pointers to 8-byte sets.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8,
        )
    };
    let ret: i64;
    // SAFETY: clone3 with CLONE_VFORK (and CLONE_VM, unless `copy`): the child starts at
    // the instruction after `syscall` with rax = 0 and rsp at the top of `stack` (ours or
    // its copy; 16-aligned: its size is a multiple of 16), and at once calls
    // `child_main(&args)`, which never returns; it touches only `args` and its own stack.
    // r12 and r13 survive the system call. We resume once it has exec'd or exited, so
    // `args`, `stack` and everything they point to outlive its use of them.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") SYS_CLONE3 => ret,
            in("rdi") &mut clone_args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") &mut args as *mut ChildArgs,
            in("r13") child_main as *const () as usize,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    // SAFETY: as above; restores the caller's mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            8,
        )
    };
    drop(stack);
    if ret < 0 {
        return Err(CloneError::Refused(io::Error::from_raw_os_error(
            (-ret) as i32,
        )));
    }
    let pid = ret as libc::pid_t;
    // The child is done with `args` (it exec'd or exited before we resumed).
    // SAFETY: a plain read of our own local, which the child may have written.
    let mut errno = unsafe { std::ptr::read_volatile(&args.errno) };
    if let Some((r, w)) = report {
        // Its copy of the write end closes once exec is done (or at exit). We resume a
        // little earlier, when its old memory is let go: a copy child then still tears
        // down its copy of ours before exec names the process and sets up its
        // environment, so wait for the end (what std waits for too): the process then has
        // its program's name (its environment follows within the exec's last steps).
        // Within one deadline: a signal handled on this thread must not start it over.
        drop(w);
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&r),
            nix::poll::PollFlags::POLLIN,
        )];
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(EXEC_PATIENCE_MS.into());
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(EXEC_PATIENCE_MS);
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                Err(nix::errno::Errno::EINTR) if !left.is_zero() => {}
                _ => break,
            }
        }
        let mut bytes = [0u8; 4];
        // 4 bytes (written at once: less than a pipe's atomic size) or none (EAGAIN).
        let got = loop {
            match nix::unistd::read(&r, &mut bytes) {
                Err(nix::errno::Errno::EINTR) => {}
                Ok(n) => break n,
                Err(_) => break 0,
            }
        };
        if got == bytes.len() {
            errno = c_int::from_ne_bytes(bytes);
        }
    }
    if errno != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
        return Err(CloneError::Failed(io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

/// Anywhere else: not available.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn spawn_in_cgroup(
    _child: Child<'_>,
    _cgroup: BorrowedFd<'_>,
) -> Result<libc::pid_t, CloneError> {
    Err(CloneError::Refused(io::Error::from_raw_os_error(
        libc::ENOSYS,
    )))
}

/// The child, between `clone3` and `execve`: system calls only (see the invariant).
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn child_main(args: *mut ChildArgs) -> ! {
    /// A raw system call's result: the error number, or 0.
    unsafe fn check(ret: libc::c_long) -> c_int {
        if ret < 0 {
            // SAFETY: the errno `syscall` just wrote: of our stopped thread, shared with
            // the child, or of the child's copy of it.
            unsafe { *libc::__errno_location() }
        } else {
            0
        }
    }
    // SAFETY (whole body): `args` points to the caller's `ChildArgs`, alive until we exec or
    // exit; every pointer in it is valid and NUL-terminated as `spawn_in_cgroup` requires.
    unsafe {
        let a = &mut *args;
        // Every signal at its default action: ignoring survives exec, and handlers are
        // ours. (The kernel's `struct sigaction`: handler, flags, restorer, mask.)
        let default: [u64; 4] = [libc::SIG_DFL as u64, 0, 0, 0];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8,
                );
            }
        }
        let mut e = check(libc::syscall(libc::SYS_setpgid, 0, 0));
        if e == 0 {
            let null = libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
            );
            e = check(null);
            if e == 0 && null != 0 {
                e = check(libc::syscall(libc::SYS_dup2, null, 0));
                if null > 2 {
                    libc::syscall(libc::SYS_close, null);
                }
            }
        }
        if e == 0 {
            e = check(libc::syscall(libc::SYS_dup2, a.out_w, 1));
        }
        if e == 0 {
            e = check(libc::syscall(libc::SYS_dup2, a.err_w, 2));
        }
        // Another user's, as std's `Command` does it (supplementary groups, group, user),
        // for this process alone: the raw calls change only the calling task, which is
        // the child (glibc's wrappers would change every thread of ours), and its memory
        // is a copy of ours (see `copy`).
        if e == 0 && a.set_ids & DROP_GROUPS != 0 {
            e = check(libc::syscall(
                libc::SYS_setgroups,
                0,
                std::ptr::null::<u32>(),
            ));
        }
        if e == 0 && a.set_ids & SET_IDS != 0 {
            e = check(libc::syscall(libc::SYS_setgid, a.gid));
            if e == 0 {
                e = check(libc::syscall(libc::SYS_setuid, a.uid));
            }
        }
        // As the service's user: a directory only it may enter is entered.
        if e == 0 {
            e = check(libc::syscall(libc::SYS_chdir, a.dir));
        }
        if e == 0 {
            let none: u64 = 0;
            e = check(libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &none as *const u64,
                std::ptr::null_mut::<u64>(),
                8,
            ));
        }
        if e == 0 {
            e = check(libc::syscall(libc::SYS_execve, a.program, a.argv, a.envp));
        }
        let e = if e == 0 { libc::EINVAL } else { e };
        std::ptr::write_volatile(&mut a.errno, e);
        if a.report >= 0 {
            libc::syscall(
                libc::SYS_write,
                a.report,
                (&e as *const c_int).cast::<u8>(),
                std::mem::size_of::<c_int>(),
            );
        }
        libc::syscall(libc::SYS_exit_group, 127);
        // exit_group does not return.
        loop {
            libc::syscall(libc::SYS_exit, 127);
        }
    }
}
