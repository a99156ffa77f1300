//! Review 6: a process forked (without exec) from one whose bundle runs.
//!
//! Pool and guardian state are per process now (`perprocess`): a forked child's threads,
//! guardian and services are its own, and the parent's are the parent's. A `Bundle` the
//! child inherits is the parent's too: the child letting go of it (returning out of the
//! scope that owns it, Python's garbage collector or `with` block in a `multiprocessing`
//! or `os.fork()` child) must neither stop the parent's services nor wait for threads
//! that exist only in the parent.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::common::{is_alive, marked_pids, run_id, sh, Project};

/// Whether our child `pid` ended within `timeout` (SIGKILLed if not); reaped either way.
fn ended_within(pid: libc::pid_t, timeout: Duration) -> bool {
    // SAFETY: a plain syscall; on success we own the new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open");
    // SAFETY: a fresh descriptor nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let ended = matches!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)),
        Ok(1)
    );
    if !ended {
        // SAFETY: our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    ended
}

/// Failed before the fix, with:
///   the forked child hung dropping its copy of the parent's bundle
///   (and, before it hung, its drop SIGTERMed the parent's service: the parent's bundle
///   printed "[Hitch] WARNING: `Sleeper` exited unexpectedly (signal 15 (SIGTERM))")
/// Why: `Bundle`'s drop runs the whole shutdown whatever process it is in. In the child it
/// signals the services' groups (the parent's, by number: SIGTERM, then SIGKILL once the
/// shutdown timeout passes, since no supervisor in the child ever reports them gone), waits
/// out the kill grace (gdb: `Runtime::wait_stopped` from `stop_all`), then waits for its
/// supervisor threads' `Done`s: those threads exist only in the parent, so in the child
/// nobody ever drops their senders and `Done::wait` never returns.
#[test]
fn a_forked_child_dropping_its_copy_of_a_running_bundle_neither_stops_the_parents_services_nor_hangs(
) {
    let p = Project::new("r6-fork-drop");
    let mut b = p.bundle().shutdown_timeout(Duration::from_secs(1));
    b.add("Sleeper", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let pids = marked_pids(&run_id(&b));
    assert!(!pids.is_empty());
    // SAFETY: the child drops the bundle (what returning out of its scope does) and then
    // leaves with _exit; glibc's allocator is ready for a fork.
    let child = unsafe { libc::fork() };
    if child == 0 {
        drop(b);
        // SAFETY: ends the child at once, as a child of fork should.
        unsafe { libc::_exit(0) };
    }
    assert!(child > 0, "fork failed");
    // Generous: dropping a copy that is not ours should take no time at all.
    let ended = ended_within(child, Duration::from_secs(20));
    let alive: Vec<u32> = pids.iter().copied().filter(|&pid| is_alive(pid)).collect();
    assert!(
        ended,
        "the forked child hung dropping its copy of the parent's bundle"
    );
    assert_eq!(alive, pids, "the forked child stopped the parent's service");
    b.check()
        .expect("the parent's bundle still runs its service");
}
