//! The definition of one service: what to run, where, with what, and when it is ready.
//!
//! Owns the `Service` builder only. Nothing here touches the system: checking that the
//! program and directory exist happens in `plan` at startup, so a definition can be built
//! anywhere (even before the project directory exists).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::hooks::{Hook, HookContext, HookResult};
use crate::readiness::Ready;
use crate::signal::Signal;

/// What a service waits for in a service it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// Its readiness check passed (and its poststart hook finished). The default.
    Ready,
    /// Its process has started.
    Started,
    /// It exited 0 (a one-shot service).
    CompletedSuccessfully,
}

impl Condition {
    pub(crate) fn words(self) -> &'static str {
        match self {
            Condition::Ready => "to be ready",
            Condition::Started => "to start",
            Condition::CompletedSuccessfully => "to complete successfully",
        }
    }
}

/// A service to run: a command (argv, never a shell string) and how to tell it is ready.
///
/// ```
/// use hitchserve::{Service, Signal};
/// let app = Service::new(["python3", "-u", "app.py"])
///     .ready_when(|line| line.contains("Quit the server"))
///     .directory("app")
///     .env("DEBUG", "1")
///     .needs(["Postgres"])
///     .stop_signal(Signal::SIGINT);
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) argv: Vec<OsString>,
    pub(crate) ready: Ready,
    pub(crate) directory: Option<PathBuf>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) needs: Vec<(String, Condition)>,
    pub(crate) one_shot: bool,
    pub(crate) ports: Vec<String>,
    pub(crate) user: Option<String>,
    pub(crate) stop_signal: Signal,
    pub(crate) no_libfaketime: bool,
    pub(crate) setup: Option<Hook>,
    pub(crate) poststart: Option<Hook>,
    pub(crate) restart: Restart,
    /// Set by a ready-made service whose program was not found when it was defined.
    pub(crate) install: Option<Install>,
    /// The ready-made kind that made it (`"Redis"`...), for that kind's `handle`.
    pub(crate) kind: Option<&'static str>,
    /// The user that kind chose to run it as, as it made it.
    kind_user: Option<String>,
    /// What its ready-made builder found wrong (a builder that can't fail says it here, and
    /// `Bundle::add` refuses it).
    pub(crate) defect: Option<String>,
    /// Where in `argv` a program it runs in turn starts (a cron's command): it must be
    /// there, and found on the service's `PATH` at startup, as its own program is.
    pub(crate) runs_too: Option<usize>,
}

/// How to get a ready-made service's missing program, for the startup error.
#[derive(Clone, Debug)]
pub(crate) struct Install {
    /// Where it was looked for.
    pub searched: String,
    /// The one command that installs it.
    pub command: String,
}

impl Service {
    /// What in it can't be used, said for a person, checked when it is added (see
    /// `exec::bad_command`); and a port with no name.
    pub(crate) fn bad_setting(&self) -> Option<String> {
        if let Some(defect) = &self.defect {
            return Some(defect.clone());
        }
        let env = self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_deref()));
        if let Some(problem) = crate::exec::bad_command(&self.argv, env) {
            return Some(problem);
        }
        if let Some(at) = self.runs_too {
            if self.argv.get(at).is_none_or(|p| p.is_empty()) {
                return Some(
                    "the command it runs is empty: give it one (`Cron::every(interval, \
                     [\"program\", ...])`)"
                        .to_owned(),
                );
            }
        }
        if self.ports.iter().any(String::is_empty) {
            return Some("a port's name is empty: name it (`port(\"http\")`)".to_owned());
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if let Some(bad) = self.ports.iter().find(|p| !p.chars().all(name_char)) {
            return Some(format!(
                "port name `{}` has a character other than letters, digits, `_`, `-` and `.`: \
                 `{{port.NAME}}` could not name it; rename it",
                bad.escape_debug()
            ));
        }
        if let Some(user) = &self.user {
            if user.is_empty() || user.contains('\0') {
                return Some(format!(
                    "`{}` can't be a user's name (`user(..)`): give the name of an existing \
                     user, e.g. `postgres`",
                    user.escape_debug()
                ));
            }
        }
        // Their data and template clusters belong to the user they were made for (and
        // MariaDB's admin account is named after it): another one meets files it may not
        // use.
        if let Some(kind @ ("Postgres" | "MariaDb")) = self.kind {
            if self.user != self.kind_user {
                let chosen = match &self.kind_user {
                    Some(user) => format!("`{user}`"),
                    None => "the test's own user".to_owned(),
                };
                return Some(format!(
                    "a ready-made {kind} runs as the user it was made for ({chosen}), which \
                     owns its data: remove `user(..)`, or make it for another with \
                     `{kind}::os_user`"
                ));
            }
        }
        if let Some(dir) = &self.directory {
            use std::os::unix::ffi::OsStrExt;
            if dir.as_os_str().as_bytes().contains(&0) {
                return Some(format!(
                    "its directory `{}` holds a NUL byte, which no path can: remove it",
                    dir.to_string_lossy().escape_debug()
                ));
            }
        }
        None
    }

    /// Marked as made by ready-made service `kind` (its `handle` checks it).
    pub(crate) fn made_by(mut self, kind: &'static str) -> Service {
        self.kind = Some(kind);
        self.kind_user = self.user.clone();
        self
    }

    /// A service running `argv`: the program (looked up on the service's `PATH`, or a path
    /// relative to its directory) and its arguments.
    pub fn new<I, S>(argv: I) -> Service
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Service {
            argv: argv.into_iter().map(Into::into).collect(),
            ready: Ready::started(),
            directory: None,
            env: Vec::new(),
            needs: Vec::new(),
            one_shot: false,
            ports: Vec::new(),
            user: None,
            stop_signal: Signal::SIGTERM,
            no_libfaketime: false,
            setup: None,
            poststart: None,
            restart: Restart::Never,
            install: None,
            kind: None,
            kind_user: None,
            defect: None,
            runs_too: None,
        }
    }

    /// Ready when a line on stdout or stderr makes `pred` true. Shorthand for
    /// `.ready(Ready::line(pred))`. Without any check a service is ready once started.
    pub fn ready_when(self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) -> Service {
        self.ready(Ready::line(pred))
    }

    /// How to tell the service is ready.
    pub fn ready(mut self, ready: Ready) -> Service {
        self.ready = ready;
        self
    }

    /// Run in this directory; a relative path is taken from the bundle's project directory
    /// (which is also the default).
    pub fn directory(mut self, dir: impl Into<PathBuf>) -> Service {
        self.directory = Some(dir.into());
        self
    }

    /// Set an environment variable (the service inherits the test's environment otherwise).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Service {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Set several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Service
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        for (k, v) in vars {
            self.env.push((k.into(), Some(v.into())));
        }
        self
    }

    /// Remove an inherited environment variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Service {
        self.env.push((key.into(), None));
        self
    }

    /// Start only after these services are ready. Adds to earlier `needs`.
    pub fn needs<I, S>(self, names: I) -> Service
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.needs_when(names, Condition::Ready)
    }

    /// Start as soon as these services' processes have started (not waiting for ready).
    pub fn needs_started<I, S>(self, names: I) -> Service
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.needs_when(names, Condition::Started)
    }

    /// Start only after these one-shot services (a migration, say) have exited 0. They
    /// become one-shot: exiting 0 is their success, not a crash; any other exit fails
    /// startup with their last lines.
    pub fn needs_completed<I, S>(self, names: I) -> Service
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.needs_when(names, Condition::CompletedSuccessfully)
    }

    /// Start after these services meet `condition`.
    pub fn needs_when<I, S>(mut self, names: I, condition: Condition) -> Service
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.needs
            .extend(names.into_iter().map(|n| (n.into(), condition)));
        self
    }

    /// Reserve a free TCP port named `name` for this service. (Besides port templates,
    /// `{run}` stands for the run directory, there before a service that names it starts,
    /// and `{service}` for the service's name.)
    /// Its number goes wherever
    /// `{port.NAME}` appears in this service's command, environment values and readiness
    /// check, and wherever `{Service.port.NAME}` appears in another service's; the bundle
    /// tells it with [`Bundle::port`](crate::Bundle::port). No two bundles get the same port,
    /// even in parallel test processes.
    ///
    /// ```
    /// use hitchserve::{Ready, Service};
    /// let web = Service::new(["python3", "-m", "http.server", "{port.http}"])
    ///     .port("http")
    ///     .ready(Ready::tcp_addr("127.0.0.1:{port.http}"));
    /// let client = Service::new(["python3", "client.py"])
    ///     .env("WEB_URL", "http://127.0.0.1:{Web.port.http}/")
    ///     .needs(["Web"]);
    /// # let _ = (web, client);
    /// ```
    pub fn port(mut self, name: impl Into<String>) -> Service {
        let name = name.into();
        // The same name again is the same port (not a second one reserved for nothing).
        if !self.ports.contains(&name) {
            self.ports.push(name);
        }
        self
    }

    /// Run the service — and its hooks' commands and its sub-commands — as this user (and
    /// that user's group), with `HOME`, `USER` and `LOGNAME` set to match. Needs root.
    /// Nothing is created: a user that doesn't exist is an error at startup. PostgreSQL,
    /// for one, refuses to run as root.
    ///
    /// Another user's service does not get the test's environment, which may hold secrets
    /// (CI tokens, cloud keys) that user's other processes could read: only `PATH`, `TMPDIR`,
    /// `TZ`, `TERM`, `COLORTERM`, `NO_COLOR` and the locale (`LANG`, `LANGUAGE`, `LC_*`) cross over,
    /// with what [`env`](Service::env) gives it — pass anything else it needs there.
    pub fn user(mut self, name: impl Into<String>) -> Service {
        self.user = Some(name.into());
        self
    }

    /// A service that does its job and exits 0 (a migration, a seed script): startup waits
    /// for that exit, and it is not a crash. Implied for services others
    /// [`needs_completed`](Service::needs_completed).
    pub fn one_shot(mut self) -> Service {
        self.one_shot = true;
        self
    }

    /// Code to run before the service starts (e.g. `initdb`), in the startup timeout and in
    /// the service's environment; see [`HookContext`] for what it can do. Its output is
    /// labelled `Setup Name`. An error or a panic fails startup. Given again (a setup of
    /// yours on a ready-made service, whose own makes its directories), it runs after the
    /// one given before, if that succeeded.
    pub fn setup(
        mut self,
        hook: impl Fn(&HookContext<'_>) -> HookResult + Send + Sync + 'static,
    ) -> Service {
        self.setup = Some(Hook::after(self.setup.take(), hook));
        self
    }

    /// Code to run once the service is ready (e.g. `CREATE USER`); services that need this
    /// one start only after it has finished. Its output is labelled `Post Name`. An error
    /// or a panic fails startup. Given again, it runs after the one given before, if that
    /// succeeded.
    pub fn poststart(
        mut self,
        hook: impl Fn(&HookContext<'_>) -> HookResult + Send + Sync + 'static,
    ) -> Service {
        self.poststart = Some(Hook::after(self.poststart.take(), hook));
        self
    }

    /// Run this service on real time: nothing preloaded, so time travel doesn't touch it.
    /// For programs a preloaded library upsets. (Named for libfaketime, which time travel
    /// used until 2026-12.)
    pub fn no_libfaketime(mut self) -> Service {
        self.no_libfaketime = true;
        self
    }

    /// The signal that asks the service to stop (default `SIGTERM`), sent to its whole
    /// process group; after the bundle's shutdown timeout it gets `SIGKILL`.
    pub fn stop_signal(mut self, signal: Signal) -> Service {
        self.stop_signal = signal;
        self
    }

    /// What to do when it exits unasked (default [`Restart::Never`]: the exit is reported,
    /// which is what a test wants). For long-running bundles such as `hitchserve up` as a
    /// development environment. Each restart is logged; giving up is reported as a crash;
    /// services that need this one are not restarted.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hitchserve::{Restart, Service};
    /// let worker = Service::new(["python3", "-u", "worker.py"])
    ///     .restart(Restart::on_failure(3).backoff(Duration::from_millis(200)));
    /// # let _ = worker;
    /// ```
    pub fn restart(mut self, policy: Restart) -> Service {
        self.restart = policy;
        self
    }
}

/// When a service that exits unasked is started again (see [`Service::restart`]).
///
/// Restarts wait `backoff` (100 ms unless set), doubled after each restart up to 30 s. A
/// restart keeps the service's ports, environment and the bundle's fake time; its setup hook
/// does not run again. Counted from the bundle's start (a `start()` by hand starts the count
/// again); past `max`, the exit is reported like a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restart {
    /// Never: an exit is reported (a crash after readiness, a failure during startup).
    Never,
    /// After an exit with a non-zero status or by a signal, at most `max` times.
    OnFailure {
        /// How many restarts at most.
        max: u32,
        /// The wait before the first restart.
        backoff: std::time::Duration,
    },
    /// After any exit (also status 0), at most `max` times.
    Always {
        /// How many restarts at most.
        max: u32,
        /// The wait before the first restart.
        backoff: std::time::Duration,
    },
}

/// The first wait before a restart, unless set.
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest wait between two restarts.
const RESTART_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

impl Restart {
    /// Restart after a failed exit (non-zero or by a signal), at most `max` times.
    pub fn on_failure(max: u32) -> Restart {
        Restart::OnFailure {
            max,
            backoff: RESTART_BACKOFF,
        }
    }

    /// Restart after any exit, at most `max` times.
    pub fn always(max: u32) -> Restart {
        Restart::Always {
            max,
            backoff: RESTART_BACKOFF,
        }
    }

    /// Wait `first` before the first restart (doubled after each, up to 30 s).
    pub fn backoff(self, first: std::time::Duration) -> Restart {
        match self {
            Restart::Never => Restart::Never,
            Restart::OnFailure { max, .. } => Restart::OnFailure {
                max,
                backoff: first,
            },
            Restart::Always { max, .. } => Restart::Always {
                max,
                backoff: first,
            },
        }
    }

    /// The wait before restart number `n + 1` after an exit with `success`, if the policy
    /// restarts after `n` restarts.
    pub(crate) fn next(self, success: bool, n: u32) -> Option<std::time::Duration> {
        let (max, backoff) = match self {
            Restart::Never => return None,
            Restart::OnFailure { .. } if success => return None,
            Restart::OnFailure { max, backoff } | Restart::Always { max, backoff } => {
                (max, backoff)
            }
        };
        if n >= max {
            return None;
        }
        let doubled = backoff.saturating_mul(1u32 << n.min(16));
        Some(doubled.min(RESTART_BACKOFF_MAX.max(backoff)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_named_twice_is_one_port() {
        let svc = Service::new(["true"])
            .port("http")
            .port("admin")
            .port("http");
        assert_eq!(svc.ports, ["http", "admin"]);
    }
}
