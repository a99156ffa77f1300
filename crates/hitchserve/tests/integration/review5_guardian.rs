//! Review 5, issue #17 (6): the guardian's process-group table. Watching or forgetting a
//! group used to be a line on the guardian's stdin, and a line that could not be written
//! (the guardian was dead) restarted it. Now a service's start and stop only store into the
//! table: without a pidfd to tell the watcher thread that the guardian died (before Linux
//! 5.3, or where a container's seccomp profile refuses `pidfd_open`, which the library
//! supports: "then it is only noticed at the next command"), nothing notices any more while
//! the bundle runs — services started or restarted after the guardian was killed die with
//! nobody to clean up after the owner.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{helper_process, is_alive, marked_pids, sh, wait_for, wait_gone};
use crate::common::{Project, PATIENCE};
use crate::orphans::guardian_of;

const PROJECT_VAR: &str = "HITCHSERVE_TEST_REV5_GUARDIAN_PROJECT";

/// From here on, this thread and every thread and process it starts get ENOSYS from
/// `pidfd_open`, as on a kernel before 5.3.
fn deny_pidfd_open() {
    let stmt = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // The syscall number (`seccomp_data.nr`, at offset 0).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        stmt(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_pidfd_open as u32,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            0,
            0,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` and `filter` outlive them (the kernel copies them).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0), -1);
    }
}

/// Runs in a child process without `pidfd_open`: starts a bundle, says its run and the
/// service's pid, restarts the service once the file `restart` appears, says the new pid,
/// then waits to be killed.
#[test]
#[ignore = "helper: run by a_service_restarted_after_the_guardian_was_killed_dies_with_its_owner_without_pidfds"]
fn helper_owner_without_pidfds() {
    let Some(dir) = std::env::var_os(PROJECT_VAR) else {
        return;
    };
    deny_pidfd_open();
    let dir = std::path::PathBuf::from(dir);
    let mut b = hitchserve::Bundle::new(&dir).startup_timeout(PATIENCE);
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let svc = b.service("Svc").unwrap();
    println!("PID {}", svc.pid().unwrap());
    println!("RUN {}", crate::common::run_id(&b));
    assert!(wait_for(PATIENCE, || dir.join("restart").exists()));
    svc.restart().unwrap();
    println!("NEW {}", svc.pid().unwrap());
    loop {
        std::thread::park();
    }
}

/// A helper process, SIGKILLed and reaped on drop.
struct Owner(Child);

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Failed before the fix (it passed at abdff2c, before issue #17's commits), with:
//   panicked at crates/hitchserve/tests/integration/review5_guardian.rs:192:5:
//   the service restarted after the guardian was killed outlived its SIGKILLed owner: no
//   guardian was started again (the owner has none: None)
// Its restart forgot the old group and watched the new one in the table, which wrote
// nothing to the guardian; before, the `-g`/`+g` lines failed on the dead guardian's pipe
// and restarted it (`Guardian::send`), and the new guardian would have cleaned up.
#[test]
fn a_service_restarted_after_the_guardian_was_killed_dies_with_its_owner_without_pidfds() {
    let p = Project::new("rev5-nopidfd");
    let dir = p.dir.to_str().unwrap().to_owned();
    let mut child = helper_process(
        "review5_guardian::helper_owner_without_pidfds",
        &[(PROJECT_VAR, &dir)],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut owner = Owner(child);
    let (tx, said) = mpsc::channel::<(String, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((key, value)) = line.split_once(' ') {
                let _ = tx.send((key.to_owned(), value.to_owned()));
            }
        }
    });
    let wait_for_word = |word: &str| -> String {
        loop {
            let (key, value) = said
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("the helper never said {word}"));
            if key == word {
                return value;
            }
        }
    };
    let first: u32 = wait_for_word("PID").parse().unwrap();
    let run = wait_for_word("RUN");
    let guardian = guardian_of(owner.0.id()).expect("the owner has a guardian");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guardian as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_for(PATIENCE, || !is_alive(guardian)));
    std::fs::write(p.path("restart"), "").unwrap();
    let second: u32 = wait_for_word("NEW").parse().unwrap();
    assert_ne!(first, second);
    let replaced = guardian_of(owner.0.id());

    // SIGKILL: no destructor, no shutdown runs in the owner.
    owner.0.kill().unwrap();
    owner.0.wait().unwrap();
    let gone = wait_gone(second, Duration::from_secs(10));
    // Leave nothing behind, whatever the outcome: its processes, and its group table (its
    // guardian, killed, could not remove it).
    let table = format!("groups-{}-", owner.0.id());
    let tables = std::env::temp_dir().join(format!("hitchserve-{}/guardian", unsafe {
        libc::geteuid()
    }));
    for entry in std::fs::read_dir(tables).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&table) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for pid in marked_pids(&run) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        gone,
        "the service restarted after the guardian was killed outlived its SIGKILLed owner: no \
         guardian was started again (the owner has none: {replaced:?})"
    );
}
