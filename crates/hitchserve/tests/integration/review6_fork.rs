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
    exit_code_within(pid, timeout).is_some()
}

/// Our child `pid`'s exit code if it exited within `timeout` (`Some(-1)` if a signal ended
/// it; SIGKILLed, and `None`, if it had not ended); reaped either way.
fn exit_code_within(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
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
    ended.then(|| match libc::WIFEXITED(status) {
        true => libc::WEXITSTATUS(status),
        false => -1,
    })
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

/// In a forked child, stopping, starting, signalling or time-travelling the parent's
/// services is an error naming both processes; the parent's services and clock are as they
/// were. (Before: the child's `stop` SIGTERMed the parent's service — a crash the parent
/// reported — and waited 17 s for supervisors it doesn't have; its time travel moved the
/// parent's services' clock, while the parent's `now()` said otherwise.)
#[test]
fn a_forked_child_can_look_at_the_parents_services_but_not_act_on_them() {
    let p = Project::new("r6-fork-act");
    let mut b = p.bundle().shutdown_timeout(Duration::from_secs(1));
    b.add("Sleeper", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let before = b.now();
    let pid = b.service("Sleeper").unwrap().pid().unwrap();
    // SAFETY: the child only calls the bundle and leaves with _exit; glibc's allocator is
    // ready for a fork.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let svc = b.service("Sleeper").unwrap();
        let refused = |r: hitchserve::Result<()>| {
            matches!(r, Err(hitchserve::Error::ForkedChild { owner, pid })
                if owner != pid && pid == std::process::id())
        };
        let all = [
            refused(b.time_travel(Duration::from_secs(365 * 86_400))),
            refused(svc.stop()),
            refused(svc.start()),
            refused(svc.restart()),
            refused(svc.pause()),
            refused(svc.resume()),
            refused(svc.kill(hitchserve::Signal::SIGKILL)),
            refused(svc.signal(hitchserve::Signal::SIGTERM)),
            refused(svc.wait_until_ready()),
            // Looking is fine.
            svc.pid() == Some(pid),
        ];
        let code = if all.iter().all(|&ok| ok) { 0 } else { 1 };
        // SAFETY: ends the child at once, as a child of fork should.
        unsafe { libc::_exit(code) };
    }
    assert!(child > 0, "fork failed");
    assert_eq!(
        exit_code_within(child, Duration::from_secs(20)),
        Some(0),
        "a call in the forked child was not refused (None: it hung)"
    );
    assert!(
        is_alive(pid),
        "the child's calls reached the parent's service"
    );
    b.check().expect("no crash in the parent");
    let drift = b.now().duration_since(before);
    assert!(
        drift < hitchserve::jiff::SignedDuration::from_hours(1),
        "the child's time travel moved the parent's clock: {drift}"
    );
    b.shutdown().unwrap();
}
