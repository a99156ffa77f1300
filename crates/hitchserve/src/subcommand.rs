//! Sub-commands: programs run in a service's environment — its variables, directory, fake
//! clock and marker — such as `manage.py`, `psql` or `redis-cli`.
//!
//! Owns the `Subcommand` builder. A sub-command carries the run's marker, so one still
//! running at shutdown is swept with the services. The caller's working directory is never
//! touched: only the child's is set.

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
    /// `argv` run like the service `exec` describes (its user included).
    pub(crate) fn new(exec: &ExecEnv, argv: Vec<OsString>) -> Subcommand {
        Subcommand {
            exec: exec.clone(),
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

    fn spawn_and_wait(&self, mut cmd: Command, capture: bool) -> Result<Output> {
        let spawn_err = |source| Error::Spawn {
            service: self.exec.service.clone(),
            source,
        };
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let feeder = match (self.stdin.clone(), child.stdin.take()) {
            // Fed from a thread: a child that writes a lot before reading must not deadlock.
            (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        let out = child.wait_with_output().map_err(spawn_err)?;
        if let Some(f) = feeder {
            let _ = f.join();
        }
        Ok(Output {
            status: ExitStatus::from_std(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Start it with stdout and stderr piped (stdin fed from a thread if given), in a
    /// process group of its own so that what it leaves behind can be killed with it.
    pub(crate) fn spawn_piped(&self) -> Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command()?;
        cmd.process_group(0);
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
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        Ok(child)
    }

    /// Run it with its output going where the test's goes; an error if it exits non-zero.
    pub fn run(&self) -> Result<()> {
        let out = self.spawn_and_wait(self.command()?, false)?;
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
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .map(|pipe| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        })
        .collect();
        let pid = child.id();
        if !crate::process::wait_pid(pid, limit) {
            let _ = child.kill();
        }
        let status = reap_and_kill_group(&mut child).map_err(|source| Error::Spawn {
            service: self.exec.service.clone(),
            source,
        })?;
        let mut outs = readers.into_iter().map(|r| r.join().unwrap_or_default());
        Ok(Output {
            status: ExitStatus::from_std(status),
            stdout: outs.next().unwrap_or_default(),
            stderr: outs.next().unwrap_or_default(),
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
        self.spawn_and_wait(self.command()?, true)
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

/// SIGKILL what is left in the process group a piped sub-command led (background children
/// that would keep its pipes open); its leader has been reaped already.
fn kill_group(pgid: u32) {
    // SAFETY: signalling a process group we created; ESRCH when it is empty is fine.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

/// Wait for `child` (the leader of a process group of its own) to exit, SIGKILL what it left
/// in its group, then reap it. The group is killed while its leader is still a zombie: its
/// id can't be taken by a new group then (once reaped, with nothing else in the group, it
/// could be, and the SIGKILL would go to that group).
pub(crate) fn reap_and_kill_group(
    child: &mut std::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Exited (still a zombie), or not ours to wait for any more: kill, then reap.
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    kill_group(child.id());
    child.wait()
}
