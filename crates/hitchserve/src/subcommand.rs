//! Sub-commands: programs run in a service's environment — its variables, directory, fake
//! clock and marker — such as `manage.py`, `psql` or `redis-cli`.
//!
//! Owns the `Subcommand` builder. `run()` runs it in the test's process group, as a shell
//! runs a command (it may use the terminal); `output()` — and a hook's command, an exec
//! probe — in a session of its own, with no terminal: what it leaves in its group (a
//! background child) is killed once it exits, and a wait for its output never outlasts it
//! by more than a moment. It carries the run's marker, so what it left running elsewhere is
//! swept with the services at shutdown. The caller's working directory is never touched:
//! only the child's is set.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::exec::ExecEnv;
use crate::signal::ExitStatus;

/// A command to run like the service it belongs to; from
/// [`ServiceHandle::subcommand`](crate::ServiceHandle::subcommand).
///
/// ```no_run
/// # fn demo(bundle: &hitchserve::Bundle) -> hitchserve::Result<()> {
/// let django = bundle.service("Django")?;
/// django.subcommand(["python3", "manage.py", "migrate"]).run()?;
/// let out = django.subcommand(["python3", "manage.py", "shell"])
///     .stdin("print(1 + 1)")
///     .output()?;
/// assert_eq!(out.stdout_text().trim(), "2");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Subcommand {
    exec: ExecEnv,
    argv: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    /// The variables set with `env` (checked before it runs: the service's own were checked
    /// when it was added, and what it inherited is not ours to judge).
    set: Vec<OsString>,
}

/// What a finished sub-command left behind.
#[derive(Clone, Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Subcommand {
    /// `argv` run like the service `exec` describes (its user included), but not as part
    /// of it: without the service's own marker, so that a stop of the service by hand
    /// doesn't end a command run beside it (the run's marker stays: it dies with the
    /// bundle).
    pub(crate) fn new(exec: &ExecEnv, argv: Vec<OsString>) -> Subcommand {
        let mut exec = exec.clone();
        exec.env
            .retain(|(k, _)| k != crate::exec::SERVICE_MARKER_VAR);
        Subcommand {
            exec,
            argv,
            stdin: None,
            set: Vec::new(),
        }
    }

    /// Add an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Subcommand {
        self.argv.push(arg.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Subcommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable, over the service's.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Subcommand {
        let key = key.into();
        self.exec.env.retain(|(k, _)| *k != key);
        self.exec.env.push((key.clone(), value.into()));
        self.set.push(key);
        self
    }

    /// Feed these bytes to its standard input (otherwise it reads nothing).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Subcommand {
        self.stdin = Some(bytes.into());
        self
    }

    pub(crate) fn describe(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Result<Command> {
        let Some(program) = self.argv.first().filter(|p| !p.is_empty()) else {
            return Err(Error::EmptyCommand {
                service: self.exec.service.clone(),
            });
        };
        let env = self
            .exec
            .env
            .iter()
            .filter(|(k, _)| self.set.contains(k))
            .map(|(k, v)| (k.as_os_str(), Some(v.as_os_str())));
        if let Some(problem) = crate::exec::bad_command(&self.argv, env) {
            return Err(Error::InvalidSetting {
                service: self.exec.service.clone(),
                problem: format!("a sub-command: {problem}"),
            });
        }
        let program = self
            .exec
            .resolve(program)
            .map_err(|searched| Error::CommandNotFound {
                service: self.exec.service.clone(),
                program: program.to_string_lossy().into_owned(),
                searched,
            })?;
        Ok(self
            .exec
            .command(&program, program.as_os_str(), &self.argv[1..]))
    }

    /// Run it and wait for it. Captured (`output()`), in a session of its own (see
    /// `own_session`): once it has exited, whatever it left in its group is killed, and
    /// what a process that left the group (`setsid`) still writes to its pipes is read for
    /// `LEFTOVER_DRAIN` at most.
    /// Not captured (`run()`), in the test's process group, as a shell runs a command: it may
    /// use the terminal (a pager, a password prompt), and the terminal's Ctrl-C reaches it;
    /// what it leaves running carries the run's marker and dies with the bundle. Run as
    /// another user, it gets a session of its own all the same (the terminal is not its
    /// controlling one: see `spawn_and_wait`).
    fn spawn_and_wait(&self, capture: bool) -> Result<Output> {
        let spawn_err = |source| Error::Spawn {
            service: self.exec.service.clone(),
            source,
        };
        let mut cmd = self.command()?;
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if capture {
            own_session(&mut cmd);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else if self
            .exec
            .run_as
            .is_some_and(|(uid, _)| uid != crate::safepath::euid())
        {
            // Another user's command on our terminal: never as its controlling terminal,
            // or it could push keystrokes into our shell's input (TIOCSTI) — a root shell,
            // under root. It still writes there.
            own_session(&mut cmd);
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // Not joined: a process that left the group may hold its stdin unread; the feeder
        // ends (a broken pipe) when that process does.
        drop(self.feed(&mut child));
        if !capture {
            let status = child.wait().map_err(spawn_err)?;
            return Ok(Output {
                status: ExitStatus::from_std(status),
                stdout: Vec::new(),
                stderr: Vec::new(),
            });
        }
        let captured = Captured::start(&mut child);
        let status = reap_and_kill_group(&mut child).map_err(spawn_err)?;
        let (stdout, stderr) = captured.collect(LEFTOVER_DRAIN);
        Ok(Output {
            status: ExitStatus::from_std(status),
            stdout,
            stderr,
        })
    }

    /// Feed its stdin from a thread, if it has one: a child that writes a lot before
    /// reading must not deadlock with us.
    fn feed(&self, child: &mut std::process::Child) -> Option<std::thread::JoinHandle<()>> {
        match (self.stdin.clone(), child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        }
    }

    /// Start it with stdout and stderr piped (stdin fed from a thread if given), in a
    /// session of its own (see `own_session`) so that what it leaves behind can be killed
    /// with it.
    pub(crate) fn spawn_piped(&self) -> Result<std::process::Child> {
        let mut cmd = self.command()?;
        own_session(&mut cmd);
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            service: self.exec.service.clone(),
            source,
        })?;
        drop(self.feed(&mut child));
        Ok(child)
    }

    /// Run it with its output going where the test's goes; an error if it exits non-zero.
    pub fn run(&self) -> Result<()> {
        let out = self.spawn_and_wait(false)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::SubcommandFailed {
                service: self.exec.service.clone(),
                command: self.describe(),
                status: out.status,
                stderr: String::new(),
            })
        }
    }

    /// Run it, capture what it wrote, and kill it if it takes longer than `limit`.
    pub(crate) fn output_within(&self, limit: std::time::Duration) -> Result<Output> {
        let mut child = self.spawn_piped()?;
        let captured = Captured::start(&mut child);
        let pid = child.id();
        if !crate::process::wait_pid(pid, limit) {
            let _ = child.kill();
        }
        let status = reap_and_kill_group(&mut child).map_err(|source| Error::Spawn {
            service: self.exec.service.clone(),
            source,
        })?;
        let (stdout, stderr) = captured.collect(LEFTOVER_DRAIN);
        Ok(Output {
            status: ExitStatus::from_std(status),
            stdout,
            stderr,
        })
    }

    /// Run it with the terminal handed over (stdin, stdout and stderr inherited).
    pub(crate) fn run_in_terminal(&self) -> Result<()> {
        let mut cmd = self.command()?;
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let status = cmd
            .status()
            .map_err(|source| Error::Spawn {
                service: self.exec.service.clone(),
                source,
            })
            .map(ExitStatus::from_std)?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::SubcommandFailed {
                service: self.exec.service.clone(),
                command: self.describe(),
                status,
                stderr: String::new(),
            })
        }
    }

    /// Run it and capture what it wrote, whatever its exit status.
    pub fn output(&self) -> Result<Output> {
        self.spawn_and_wait(true)
    }

    /// Run it, capture what it wrote, and fail (with its stderr) unless it exits 0.
    pub fn checked_output(&self) -> Result<Output> {
        let out = self.output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(Error::SubcommandFailed {
                service: self.exec.service.clone(),
                command: self.describe(),
                status: out.status,
                stderr: out.stderr_text(),
            })
        }
    }

    /// The program and arguments.
    pub fn argv(&self) -> impl Iterator<Item = &OsStr> {
        self.argv.iter().map(OsString::as_os_str)
    }
}

/// How long the pipes of a sub-command that has exited are read once what it left in its
/// group is killed: only a process that left the group (`setsid`) can still hold them.
pub(crate) const LEFTOVER_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// A sub-command's stdout and stderr, each read to its end by a thread of its own (so
/// neither pipe can fill while we wait on the other) into a buffer taken when asked.
struct Captured {
    bufs: [std::sync::Arc<std::sync::Mutex<Vec<u8>>>; 2],
    ended: std::sync::mpsc::Receiver<()>,
    readers: usize,
}

impl Captured {
    /// Start reading `child`'s piped stdout and stderr (nothing for one not piped).
    fn start(child: &mut std::process::Child) -> Captured {
        use std::io::Read;
        use std::sync::{Arc, Mutex};
        let (tx, ended) = std::sync::mpsc::channel();
        let bufs = [
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        ];
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        let mut readers = 0;
        for (pipe, buf) in pipes.into_iter().zip(&bufs) {
            let Some(mut pipe) = pipe else { continue };
            let (buf, tx) = (Arc::clone(buf), tx.clone());
            readers += 1;
            std::thread::spawn(move || {
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(());
            });
        }
        Captured {
            bufs,
            ended,
            readers,
        }
    }

    /// What was read, once both pipes have ended or `patience` has passed (a reader still
    /// blocked then, on a pipe an escaped process holds, ends when that process does).
    fn collect(self, patience: std::time::Duration) -> (Vec<u8>, Vec<u8>) {
        let deadline = std::time::Instant::now() + patience;
        for _ in 0..self.readers {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                break;
            }
        }
        let [out, err] = self
            .bufs
            .map(|b| std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner())));
        (out, err)
    }
}

/// SIGKILL what is left in the process group a piped sub-command led (background children
/// that would keep its pipes open); its leader has been reaped already.
fn kill_group(pgid: u32) {
    // SAFETY: signalling a process group we created; ESRCH when it is empty is fine.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

/// Run `cmd` in a session of its own: a process group of its own (what it leaves there is
/// killed with it) with no controlling terminal. In a mere process group of its own, on the
/// test's terminal (IPython, `pytest -s`), a command that touched the terminal (`stty`, a
/// password prompt, a pager) was stopped by SIGTTOU/SIGTTIN — its leader, or a child it
/// then waited for — and waited for for ever; without a terminal, opening `/dev/tty` fails
/// at once and the command says so itself.
fn own_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; a child just forked is no group leader, so it
    // can't fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Wait for `child` (the leader of a session of its own) to exit, SIGKILL what it left in
/// its process group, then reap it. The group is killed while its leader is still a zombie:
/// its id can't be taken by a new group then (once reaped, with nothing else in the group,
/// it could be, and the SIGKILL would go to that group). A stop (a SIGSTOP) is waited
/// through. Its exit collected elsewhere (SIGCHLD ignored, a `waitpid(-1)` in the process)
/// is an error saying so, and nothing is signalled (its group id is no longer ours).
pub(crate) fn reap_and_kill_group(
    child: &mut std::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    loop {
        // Exited, still a zombie (a stop is not asked for: waited through).
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECHILD) => {
                return Err(std::io::Error::other(
                    "its exit was collected elsewhere in this process (is SIGCHLD ignored, \
                     or does something wait for any child?): its status is unknown",
                ))
            }
            _ => break,
        }
    }
    kill_group(child.id());
    child.wait()
}
