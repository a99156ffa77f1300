//! Starting a service's main process inside its run's cgroup from its first instruction:
//! `clone3(CLONE_INTO_CGROUP)` in the `vfork` manner of glibc's `posix_spawn` (the child
//! shares our memory on a stack of its own, and we wait until it has exec'd).
//!
//! Why by hand: neither std nor glibc before 2.39 (`posix_spawnattr_setcgroup_np`) can
//! start a child in a cgroup, and moving a process in afterwards takes a lock that holds up
//! every fork on the machine: about 30 µs per service here, and a window in which a service
//! can fork before it is moved. The child's set-up is what `posix_spawn_service` asks of
//! glibc: every signal at its default action, its own process group, stdin on `/dev/null`,
//! stdout and stderr onto our pipes, its directory, an empty signal mask, exec.
//!
//! Owns that child's code and the system call. Anything this can't do says so
//! (`Refused`) and the caller starts the service the other way: a kernel before 5.7 or a
//! seccomp filter without `clone3` (`ENOSYS`, `EINVAL`), a cgroup we may not start
//! processes in (`EPERM`, `EACCES`, `EBUSY`), an architecture other than x86-64.
//!
//! Invariant: the child runs only `child_main`, which calls nothing but system calls on
//! memory the caller prepared (no allocation, no lock, no panic), with every signal blocked
//! until its handlers are reset; our thread is stopped meanwhile (`CLONE_VFORK`).

use std::ffi::{c_char, c_int, CStr};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// Why no child was made.
pub(crate) enum CloneError {
    /// This way can't be used here (see the module header): start it the other way.
    Refused(io::Error),
    /// The child was made but could not run the program: that is the spawn's error.
    Failed(io::Error),
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
    /// Set by the child when a step fails: the error number (the child then exits 127).
    errno: c_int,
}

/// Start `program` with `argv` and `envp` (NULL-terminated) in `dir`, in `cgroup` (an
/// `O_PATH` descriptor of its directory); `out_w`/`err_w` become its stdout and stderr.
/// Returns its pid.
#[cfg(target_arch = "x86_64")]
pub(crate) fn spawn_in_cgroup(
    program: &CStr,
    argv: &[*mut c_char],
    envp: &[*mut c_char],
    dir: &CStr,
    out_w: RawFd,
    err_w: RawFd,
    cgroup: BorrowedFd<'_>,
) -> Result<libc::pid_t, CloneError> {
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
        errno: 0,
    };
    // u128: 16-byte alignment, as the ABI wants the stack at a call.
    let mut stack = vec![0u128; STACK / 16];
    let mut clone_args = CloneArgs {
        flags: libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: STACK as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: std::os::fd::AsRawFd::as_raw_fd(&cgroup) as u64,
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
    // SAFETY: clone3 with CLONE_VM | CLONE_VFORK: the child starts at the instruction after
    // `syscall` with rax = 0 and rsp at the top of `stack` (16-aligned: its size is a
    // multiple of 16), and at once calls `child_main(&args)`, which never returns; it
    // touches only `args` and its own stack. r12 and r13 survive the system call. We
    // resume once it has exec'd or exited, so `args`, `stack` and everything they point
    // to outlive its use of them.
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
    let errno = unsafe { std::ptr::read_volatile(&args.errno) };
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
    _program: &CStr,
    _argv: &[*mut c_char],
    _envp: &[*mut c_char],
    _dir: &CStr,
    _out_w: RawFd,
    _err_w: RawFd,
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
            // SAFETY: errno of the thread (ours, stopped), written by `syscall` just now.
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
        std::ptr::write_volatile(&mut a.errno, if e == 0 { libc::EINVAL } else { e });
        libc::syscall(libc::SYS_exit_group, 127);
        // exit_group does not return.
        loop {
            libc::syscall(libc::SYS_exit, 127);
        }
    }
}
