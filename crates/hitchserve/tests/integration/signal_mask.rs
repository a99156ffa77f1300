//! A service starts with no blocked signal whatever the thread that starts the bundle blocks,
//! on the posix_spawn path (any service) and on std's (one that runs as another user).

use std::path::PathBuf;

use hitchserve::{Ready, Service};

use crate::common::{Project, PATIENCE};

/// A field of `/proc/<who>/status` (`who`: a pid, or `thread-self`), as hex bits.
fn status_bits(who: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{who}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{who}/status: {e}"));
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{who}/status:\n{status}"));
    u64::from_str_radix(value.trim(), 16).unwrap_or_else(|e| panic!("{field} `{value}`: {e}"))
}

/// The bit of `signal` in a `/proc/<pid>/status` signal set.
fn bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

#[test]
fn a_service_starts_with_an_empty_signal_mask_when_the_caller_blocks_signals() {
    std::thread::spawn(|| {
        // SAFETY: blocking two signals in this thread only, with a set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        // The premise: this thread, which starts the bundle, really blocks them.
        let mine = status_bits("thread-self", "SigBlk");
        assert_eq!(
            mine & (bit(libc::SIGTERM) | bit(libc::SIGUSR1)),
            bit(libc::SIGTERM) | bit(libc::SIGUSR1),
            "{mine:x}"
        );

        let p = Project::new("sigmask");
        let mut b = p.bundle();
        // `sleep` itself, not under a shell: dash clears its mask when it starts.
        b.add(
            "Sleeper",
            Service::new(["sleep", "1000"]).ready(Ready::started()),
        )
        .unwrap();
        let as_nobody = is_root();
        if as_nobody {
            // Another user's service (born inside by clone3 as a copy of this process, or
            // std's `Command` where that can't be used): the same guarantee.
            b.add(
                "Nobody",
                Service::new(["sleep", "1000"])
                    .user("nobody")
                    .ready(Ready::started()),
            )
            .unwrap();
        }
        b.startup().unwrap();

        let mut names = vec!["Sleeper"];
        if as_nobody {
            names.push("Nobody");
        }
        for name in names {
            let svc = b.service(name).unwrap();
            let pid = svc.pid().expect("a started service has a pid").to_string();
            // Its exec has closed the pipe its start waits on, but the kernel names the
            // process after the program a moment later (no event says when: looked at).
            let deadline = std::time::Instant::now() + PATIENCE;
            let comm = loop {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
                if comm.trim() == "sleep" || std::time::Instant::now() > deadline {
                    break comm;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            assert_eq!(
                comm.trim(),
                "sleep",
                "{name}: pid {pid} is the service itself"
            );
            assert_eq!(status_bits(&pid, "SigBlk"), 0, "{name}: blocked signals");
            // Our process ignores SIGPIPE (as Rust programs do); the service must not.
            assert_eq!(
                status_bits(&pid, "SigIgn") & bit(libc::SIGPIPE),
                0,
                "{name}: SIGPIPE ignored"
            );
            // The rest of how it is started holds on this path too: its own process group,
            // its directory.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let pgrp = after_comm.split(' ').nth(2).unwrap();
            assert_eq!(pgrp, pid, "{name}: leads its own process group");
            let cwd: PathBuf = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
            assert_eq!(
                cwd,
                p.dir.canonicalize().unwrap(),
                "{name}: runs in its directory"
            );
        }
        b.shutdown().unwrap();
        assert!(b.service("Sleeper").unwrap().wait_exit(PATIENCE).is_some());
    })
    .join()
    .unwrap();
}
