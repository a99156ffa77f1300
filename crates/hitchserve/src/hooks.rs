//! Setup and poststart hooks: code a service needs run before it starts (e.g. `initdb`)
//! and after it is ready (e.g. `CREATE USER`), inside the startup timeout.
//!
//! Owns the hook type and the `HookContext` a hook gets. Hooks are closures on the
//! `Service` builder — one way to do it. What a hook runs through its context is labelled
//! `Setup Name` / `Err Setup Name` or `Post Name` / `Err Post Name` in the console and the
//! logs (`logs().setup()`, `logs().poststart()`). A hook that returns an error or panics
//! fails startup with an error naming the service and the hook; dependents of a service
//! start only once its poststart hook has finished.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use crate::error::{panic_message, Error, Result};
use crate::exec::ExecEnv;
use crate::logs::{Sink, Source};
use crate::signal::ExitStatus;
use crate::subcommand::Subcommand;

/// What a hook returns: any error, which then fails startup with its message.
pub type HookResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

type HookFn = dyn Fn(&HookContext<'_>) -> HookResult + Send + Sync;

/// A setup or poststart hook (see [`Service::setup`](crate::Service::setup)).
#[derive(Clone)]
pub(crate) struct Hook(Arc<HookFn>);

impl Hook {
    pub(crate) fn new(f: impl Fn(&HookContext<'_>) -> HookResult + Send + Sync + 'static) -> Hook {
        Hook(Arc::new(f))
    }

    /// `hook` run after `before`, if there is one (and if it succeeded).
    pub(crate) fn after(
        before: Option<Hook>,
        hook: impl Fn(&HookContext<'_>) -> HookResult + Send + Sync + 'static,
    ) -> Hook {
        match before {
            None => Hook::new(hook),
            Some(before) => Hook::new(move |ctx| {
                (before.0)(ctx)?;
                hook(ctx)
            }),
        }
    }

    /// Run it; a panic becomes an error message.
    pub(crate) fn call(&self, ctx: &HookContext<'_>) -> std::result::Result<(), String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(ctx))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(payload) => Err(format!("it panicked: {}", panic_message(&payload))),
        }
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// What a hook can do: run commands in the service's environment with labelled output,
/// log, and find the service's directories.
///
/// ```no_run
/// use hitchserve::{Service, Signal};
/// let db = Service::new(["postgres", "-D", "data", "-k", "."])
///     .ready_when(|l| l.contains("ready to accept connections"))
///     .setup(|ctx| {
///         ctx.run(["initdb", "-D", "data", "-U", "postgres"])?;
///         Ok(())
///     })
///     .poststart(|ctx| {
///         ctx.run(["psql", "-h", ".", "-U", "postgres", "-c", "CREATE USER app"])?;
///         ctx.log("user app created");
///         Ok(())
///     })
///     .stop_signal(Signal::SIGINT);
/// # let _ = db;
/// ```
pub struct HookContext<'a> {
    pub(crate) exec: &'a ExecEnv,
    pub(crate) run_dir: &'a Path,
    pub(crate) sink: &'a Arc<Sink>,
    /// The hook's labels: what it runs and logs goes to the logs under these.
    pub(crate) out: &'a Arc<Source>,
    pub(crate) err: &'a Arc<Source>,
    /// The run's reserved ports, by (service, name).
    pub(crate) ports: &'a crate::ports::PortTable,
    /// The service's main process, if it runs (in a poststart hook).
    pub(crate) pid: Option<u32>,
}

impl HookContext<'_> {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.exec.service
    }

    /// The service's working directory.
    pub fn directory(&self) -> &Path {
        &self.exec.dir
    }

    /// This run's directory (`.hitchserve/runs/<run>`): a place for per-run data.
    pub fn run_dir(&self) -> &Path {
        self.run_dir
    }

    /// The port reserved for the service as `name` (see
    /// [`Service::port`](crate::Service::port)); `None` if it declared no such port.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports
            .get(&(self.exec.service.clone(), name.to_owned()))
            .copied()
    }

    /// The pid of the service's main process: in a poststart hook (it runs then); `None` in
    /// a setup hook (it has not started yet).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The uid and gid the service runs as, if another user's.
    pub(crate) fn run_as(&self) -> Option<(u32, u32)> {
        self.exec.run_as
    }

    /// A variable of the service's environment, with its templates filled in: a way for a
    /// hook to learn its ports (`.env("ADDR", "127.0.0.1:{port.http}")`, then
    /// `ctx.env_var("ADDR")`) or to expand a whole template the same way.
    pub fn env_var(&self, key: &str) -> Option<String> {
        self.exec.var(key)
    }

    /// Create a directory (and its parents) owned by the service's user (see
    /// [`Service::user`](crate::Service::user)), e.g. a database's data directory. A symlink
    /// at `path` is refused rather than followed. A service that runs as another user already
    /// has `<run>/<Name>/`, private to that user.
    pub fn make_dir(&self, path: &Path) -> Result<()> {
        crate::safepath::make_dir_for(path, 0o755, self.exec.run_as)
    }

    /// Print and store a line under the hook's label.
    pub fn log(&self, message: &str) {
        self.sink.message(self.out, message, false);
    }

    /// A command in the service's environment, directory and fake time, to run yourself
    /// (its output is not labelled; use [`HookContext::run`] for that).
    pub fn subcommand<I, S>(&self, argv: I) -> Subcommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Subcommand::new(self.exec, argv.into_iter().map(Into::into).collect())
    }

    /// Run a command in the service's environment; its stdout and stderr are printed and
    /// stored under the hook's labels as they come. An error if it exits non-zero.
    pub fn run<I, S>(&self, argv: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.run_command(self.subcommand(argv))
    }

    /// Like [`HookContext::run`], for a sub-command built with extra arguments,
    /// environment or stdin.
    pub fn run_command(&self, sub: Subcommand) -> Result<()> {
        let status = self.run_labelled(&sub)?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::SubcommandFailed {
                service: self.service().to_owned(),
                command: sub.describe(),
                status,
                stderr: String::new(),
            })
        }
    }

    fn run_labelled(&self, sub: &Subcommand) -> Result<ExitStatus> {
        let mut child = sub.spawn_piped()?;
        let (done, pumped) = std::sync::mpsc::channel::<()>();
        let mut readers = 0;
        if let Some(pipe) = child.stdout.take() {
            let (sink, source, done) = (Arc::clone(self.sink), Arc::clone(self.out), done.clone());
            readers += 1;
            std::thread::spawn(move || {
                sink.pump(pipe, &source);
                let _ = done.send(());
            });
        }
        if let Some(pipe) = child.stderr.take() {
            let (sink, source, done) = (Arc::clone(self.sink), Arc::clone(self.err), done);
            readers += 1;
            std::thread::spawn(move || {
                sink.pump(pipe, &source);
                let _ = done.send(());
            });
        }
        // A hook's command must finish: whatever it left running in the background would
        // hold its output open (and the hook) forever.
        let status =
            crate::subcommand::reap_and_kill_group(&mut child).map_err(|source| Error::Spawn {
                service: self.service().to_owned(),
                source,
            })?;
        // What it left in its group is dead; a process that left the group (`setsid`) may
        // hold the pipes on: its lines are stored as they come, but the hook goes on after
        // `LEFTOVER_DRAIN` (it waited for that process's whole life).
        let deadline = std::time::Instant::now() + crate::subcommand::LEFTOVER_DRAIN;
        for _ in 0..readers {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if pumped.recv_timeout(left).is_err() {
                break;
            }
        }
        Ok(ExitStatus::from_std(status))
    }
}
