//! `exec`: a command run in a service's environment (its variables, its directory, its
//! user), ended with us, its exit code ours as a shell's.
//!
//! Run as another user (a root caller, a service with `user`), the command is in a session
//! of its own, so that our terminal is never its controlling one (it could push keystrokes
//! into our shell's input: TIOCSTI); on a terminal it gets a pseudo-terminal of ours, relayed
//! (`relay`), so that nothing of that user ever holds our terminal — what it left running
//! after the command ended could read what is typed next. Off a terminal, the terminal's
//! signals to us (SIGINT, SIGQUIT) are passed on to it: in its own session, only we get them
//! (not those we were started ignoring: a command run with `&` without job control).
//! Also owns `close_past_stdio_at_exec`, which `up --detach` uses for its daemon too.

use std::os::unix::process::ExitStatusExt;

use serde_json::Value;

use super::relay::{Pty, Relayed};
use super::signals::ignored;
use crate::ExitCode;

/// The pid `ForwardSignals` passes signals on to (0: none yet), and a signal that came
/// before it was known (0: none).
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static FORWARD_PENDING: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    use std::sync::atomic::Ordering::SeqCst;
    let pid = FORWARD_TO.load(SeqCst);
    if pid > 0 {
        // To its whole group (it leads one: its session), as the terminal would send it.
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(-pid, sig);
        }
    } else {
        FORWARD_PENDING.store(sig, SeqCst);
    }
}

/// While it lives, the signals it was installed for go to the child given to `to`
/// instead of us; as before once dropped.
struct ForwardSignals(Vec<(libc::c_int, libc::sighandler_t)>);

impl ForwardSignals {
    fn install(signals: &[libc::c_int]) -> ForwardSignals {
        FORWARD_TO.store(0, std::sync::atomic::Ordering::SeqCst);
        FORWARD_PENDING.store(0, std::sync::atomic::Ordering::SeqCst);
        let handler = forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installing a handler that only calls kill or stores an atomic
        // (async-signal-safe); `signal` on Linux (glibc) restarts interrupted calls, so the
        // wait goes on.
        // A signal our parent set us to ignore (a command run with `&` by a shell without
        // job control ignores SIGINT and SIGQUIT) stays ignored: not passed on.
        ForwardSignals(
            signals
                .iter()
                .filter(|&&sig| !ignored(sig))
                .map(|&sig| (sig, unsafe { libc::signal(sig, handler) }))
                .collect(),
        )
    }

    /// Pass signals on to `pid` from now on, and one that came before.
    fn to(&self, pid: u32) {
        use std::sync::atomic::Ordering::SeqCst;
        FORWARD_TO.store(pid as i32, SeqCst);
        let pending = FORWARD_PENDING.swap(0, SeqCst);
        if pending > 0 {
            // SAFETY: a signal to the group of the child we just started (it leads it once
            // spawned: its `setsid` ran before its exec).
            unsafe {
                libc::kill(-(pid as i32), pending);
            }
        }
    }
}

impl Drop for ForwardSignals {
    fn drop(&mut self) {
        for &(sig, before) in &self.0 {
            // SAFETY: putting back the disposition `signal` returned.
            unsafe {
                libc::signal(sig, before);
            }
        }
        FORWARD_TO.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Mark every descriptor past stdin, stdout and stderr close-on-exec (std's own included,
/// which it needs open until the exec): the program a child of ours runs holds none of ours.
/// Linux 5.11+; on older kernels (EINVAL, ENOSYS) descriptors stay as they were. Called
/// between fork and exec: a system call, async-signal-safe.
pub(super) fn close_past_stdio_at_exec() {
    // SAFETY: close_range only changes descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Wait until child `pid` has exited, leaving it unreaped.
fn wait_unreaped(pid: u32) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Run `command` in the service whose `exec_env` reply is `v`; its exit code.
pub(super) fn exec(command: &[String], v: &Value) -> Result<ExitCode, String> {
    let env: Vec<(String, String)> = v["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
        .collect();
    let dir = v["dir"].as_str().unwrap_or(".");
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env_clear()
        .envs(env)
        .current_dir(dir);
    let as_user = match (v["ids"][0].as_u64(), v["ids"][1].as_u64()) {
        (Some(uid), Some(gid)) => Some((uid as u32, gid as u32)),
        _ => None,
    };
    let switched = as_user.is_some_and(|(uid, _)| uid != effective_uid());
    if let Some((uid, gid)) = as_user.filter(|_| switched) {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    // Another user's command on our terminal: a terminal of its own (see the header).
    let pty = if switched {
        Pty::for_our_terminal()?
    } else {
        None
    };
    // The command ends with us: `exec` killed (a test runner's timeout, a SIGTERM to this
    // process alone) must not leave it running until `down`. SIGTERM, as the signal to us
    // most often is; checked against a parent that died before.
    let parent = std::process::id() as libc::pid_t;
    let attach = pty.as_ref().map(Pty::for_child);
    // SAFETY: prctl, getppid, setsid, ioctl and dup2 are async-signal-safe; nothing else
    // runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if switched {
                libc::setsid();
                // Nothing of ours past stdin, stdout and stderr reaches another user's
                // command (a descriptor of our terminal a shell opened, say).
                close_past_stdio_at_exec();
            }
            if let Some(attach) = &attach {
                attach.attach()?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(128 + libc::SIGTERM);
            }
            Ok(())
        });
    }
    if !std::path::Path::new(dir).is_dir() {
        eprintln!(
            "hitchserve: the service's directory `{dir}` is gone: cannot run a command in it"
        );
        return Ok(ExitCode::from(126));
    }
    // In a session of its own, the terminal's Ctrl-C and Ctrl-\ reach only us: passed on,
    // so that they stop a query, not the session (taken from before the spawn: one that
    // comes meanwhile is passed on once it runs). With a pty, they reach it through it (our
    // terminal is raw meanwhile), and a SIGTERM or SIGHUP ends the relay (see `relay`).
    let forwarding = switched.then(|| ForwardSignals::install(&[libc::SIGINT, libc::SIGQUIT]));
    // Once it has exited, before it is reaped: its pid is not ours to signal any more.
    let exited = || FORWARD_TO.store(0, std::sync::atomic::Ordering::SeqCst);
    let status = match cmd.spawn().and_then(|mut child| {
        if let Some(f) = &forwarding {
            f.to(child.id());
        }
        match pty {
            Some(pty) => pty.relay(&mut child, &exited),
            None => {
                wait_unreaped(child.id());
                exited();
                child.wait().map(Relayed::Exited)
            }
        }
    }) {
        Ok(Relayed::Exited(status)) => status,
        Ok(Relayed::EndedBy(sig)) => {
            // Our terminal is as it was: die of the signal, as before the relay (the
            // command gets its SIGTERM from our end).
            drop(forwarding);
            // SAFETY: the default action again, then the signal to ourselves.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            return Ok(ExitCode::from((128 + sig) as u8));
        }
        // Like a shell: 127 for a command not found, 126 for one it can't run.
        Err(e) => {
            let why = match (v["user"].as_str(), switched) {
                // Looked for on PATH, a directory the user may not search (root's
                // `~/.cargo/bin`, say) made "not found" a "Permission denied".
                (Some(user), true)
                    if e.kind() == std::io::ErrorKind::PermissionDenied
                        && !command[0].contains('/') =>
                {
                    let path = v["env"]
                        .as_array()
                        .and_then(|env| env.iter().find(|p| p[0] == "PATH"))
                        .and_then(|p| p[1].as_str())
                        .unwrap_or("");
                    format!(
                        "cannot run `{}` as `{user}`, the service's user: {e} — it is not in \
                         a directory of PATH that `{user}` may search, or `{user}` may not run \
                         it (PATH={path}); give its whole path",
                        command[0]
                    )
                }
                (Some(user), true) => format!(
                    "cannot run `{}` as `{user}`, the service's user: {e}",
                    command[0]
                ),
                _ => format!("cannot run `{}`: {e}", command[0]),
            };
            eprintln!("hitchserve: {why}");
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            return Ok(ExitCode::from(code));
        }
    };
    drop(forwarding);
    // Like a shell: the command's exit code, or 128 + the signal that killed it.
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
