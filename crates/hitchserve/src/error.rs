//! The one error type of hitchserve.
//!
//! Every variant names the service it is about and says what to do next; messages are
//! lowercase with names in backticks. Errors carry the service's last log lines when they
//! help (a crash, a timeout), so a failing test shows why without opening a log file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::signal::ExitStatus;

/// `Result` with hitchserve's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context to act on it.
///
/// `Debug` prints the same human message as `Display` (the service, what happened, its last
/// lines, what to do): that is what a test returning [`Result`] prints when it fails, and
/// what `unwrap()` and `expect()` show. Match on the variants for the details.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A service name that can't be used.
    #[error("invalid service name `{name}`: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A setting of a service that can't be used: an environment variable's name or value, an
    /// argument of its command, a port's name.
    #[error("service `{service}`: {problem}")]
    InvalidSetting {
        /// The service.
        service: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// Two services with one name.
    #[error("service `{service}` is defined twice: give one of them another name")]
    DuplicateService {
        /// The name used twice.
        service: String,
    },

    /// A command (`Service::new`'s, or a sub-command's) has no program, or an empty one.
    #[error("service `{service}`: a command is empty: give it at least the program to run")]
    EmptyCommand {
        /// The service.
        service: String,
    },

    /// The program can't be found or isn't executable.
    #[error("service `{service}`: command `{program}` was not found {searched}: install it, fix the service's PATH, or give its full path")]
    CommandNotFound {
        /// The service.
        service: String,
        /// The program as given.
        program: String,
        /// Where we looked.
        searched: String,
    },

    /// The program of a ready-made service (such as the `hitchsmtp` mock) is not installed.
    #[error("service `{service}`: `{program}` is not installed (looked {searched}): install it with `{install}`")]
    NotInstalled {
        /// The service.
        service: String,
        /// The missing program.
        program: String,
        /// Where we looked.
        searched: String,
        /// The command that installs it.
        install: String,
    },

    /// The service's working directory does not exist.
    #[error("service `{service}`: directory `{}` does not exist: create it or fix Service::directory", path.display())]
    DirectoryMissing {
        /// The service.
        service: String,
        /// The directory, resolved against the project directory.
        path: PathBuf,
    },

    /// The service's working directory is a file (or another non-directory).
    #[error("service `{service}`: `{}` is a file, not a directory: give Service::directory a directory", path.display())]
    NotADirectory {
        /// The service.
        service: String,
        /// The path, resolved against the project directory.
        path: PathBuf,
    },

    /// A `needs` entry names no service of the bundle.
    #[error("service `{service}` needs `{need}`, which is not in the bundle (it has: {known})")]
    UnknownNeed {
        /// The service.
        service: String,
        /// The missing name.
        need: String,
        /// The services the bundle does have.
        known: String,
    },

    /// Services that need each other in a loop can never start.
    #[error("services need each other in a cycle: {}: remove one of these needs", cycle.join(" -> "))]
    NeedsCycle {
        /// The cycle, first name repeated at the end.
        cycle: Vec<String>,
    },

    /// The project directory is unusable.
    #[error("project directory `{}` can't be used: {source}", path.display())]
    ProjectDir {
        /// The directory given to `Bundle::new`.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file operation of the bundle itself failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The operating system refused to start the service.
    #[error("service `{service}` could not be started: {source}")]
    Spawn {
        /// The service.
        service: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A one-shot service (see `Service::one_shot`) exited with a failure: what needs it
    /// completed can't start.
    #[error(
        "one-shot service `{service}` failed ({status}): it must exit 0{}{}",
        lines_section(service, last_lines),
        log_section(log)
    )]
    OneShotFailed {
        /// The service.
        service: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last log lines (stdout and stderr), oldest first.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// The service exited while the bundle waited for it to become ready.
    #[error(
        "service `{service}` exited before it was ready ({status}){}{}{}",
        daemon_hint(status),
        lines_section(service, last_lines),
        log_section(log)
    )]
    ExitedBeforeReady {
        /// The service.
        service: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last log lines (stdout and stderr), oldest first.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// Not everything became ready within the startup timeout.
    #[error("startup timed out after {:.1} s; not ready:{}{}", timeout.as_secs_f64(), not_ready_section(not_ready), log_section(log))]
    StartupTimeout {
        /// The bundle's startup timeout.
        timeout: Duration,
        /// Each service that was not ready, and what it was waiting for.
        not_ready: Vec<NotReady>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// A readiness check panicked.
    #[error(
        "the readiness check of service `{service}` panicked: {message}{}{}",
        lines_section(service, last_lines),
        log_section(log)
    )]
    ReadinessPanicked {
        /// The service.
        service: String,
        /// The panic message.
        message: String,
        /// Its last log lines (stdout and stderr), oldest first: what the check was shown.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// A setup or poststart hook returned an error or panicked.
    #[error("the {hook} hook of service `{service}` failed: {message}{}{}", if last_lines.is_empty() { String::new() } else { lines_section(service, last_lines) }, log_section(log))]
    HookFailed {
        /// The service.
        service: String,
        /// `setup` or `poststart`.
        hook: &'static str,
        /// Its error, or what it panicked with.
        message: String,
        /// The last lines of what the hook ran, oldest first.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// A service that was ready has exited on its own.
    #[error(
        "service `{service}` exited unexpectedly ({status}){}{}{}",
        daemon_hint(status),
        lines_section(service, last_lines),
        log_section(log)
    )]
    ServiceExited {
        /// The service.
        service: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last log lines, oldest first.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// The run's `all.log` could not be written (a full disk, the run directory deleted):
    /// lines are kept in memory only from then on, and beyond the log memory limit the
    /// oldest are dropped. Returned once, by the next call on the bundle.
    #[error(
        "the bundle's log file `{}` could not be written ({reason}): {} are not in it, of which {} were also dropped from memory (past the log memory limit); free disk space (or leave the run directory in place) and run again",
        path.display(),
        amount(*lines_not_written, *bytes_not_written),
        amount(*lines_lost, *bytes_lost)
    )]
    LogFileFailed {
        /// The file, `<run dir>/logs/all.log`.
        path: PathBuf,
        /// What went wrong.
        reason: String,
        /// Lines (every service's and the bundle's) not written to it, so far.
        lines_not_written: u64,
        /// Their bytes.
        bytes_not_written: u64,
        /// Lines neither in the file nor in memory any more: queries show them as lost
        /// (`LogLine::is_lost`).
        lines_lost: u64,
        /// Their bytes.
        bytes_lost: u64,
    },

    /// A name that is not a service of the bundle.
    #[error("no service `{service}` in this bundle (it has: {known})")]
    NoSuchService {
        /// The name asked for.
        service: String,
        /// The services the bundle does have.
        known: String,
    },

    /// A wait on the logs ran out of time.
    #[error("timed out after {:.1} s waiting for {what}{}{}", timeout.as_secs_f64(), plain_lines(last_lines), log_section(log))]
    WaitTimeout {
        /// What was awaited, and where.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// The last lines of the logs waited on, oldest first.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// The service exited (or the bundle stopped) while a wait on its logs was pending.
    #[error(
        "gave up waiting for {what}: the output ended: {why}{}{}",
        plain_lines(last_lines),
        log_section(log)
    )]
    EndedWhileWaiting {
        /// What was awaited, and where.
        what: String,
        /// Why it ended: "`Web` exited (exit code 3)", "the bundle stopped".
        why: String,
        /// The last lines of the logs waited on, oldest first.
        last_lines: Vec<String>,
        /// The run's `all.log`, where every line is.
        log: Option<PathBuf>,
    },

    /// Some service is to run with fake time, and libfaketime is not installed. No longer
    /// returned: time travel needs no libfaketime since 2026-12 (kept so matches compile).
    #[error("services {} run with fake time, but libfaketime was not found (looked at {}): install the `faketime` package (apt-get install faketime), point HITCHSERVE_LIBFAKETIME at libfaketime.so.1, or opt out with Service::no_libfaketime() or Bundle::without_time_travel()", services.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "), searched.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", "))]
    LibfaketimeMissing {
        /// The services that would use it.
        services: Vec<String>,
        /// Where we looked.
        searched: Vec<PathBuf>,
    },

    /// `Service::user` names a user this system doesn't have.
    #[error("service `{service}` is to run as user `{user}`, who does not exist here: create the user (e.g. `useradd --system {user}`) or pick another")]
    NoSuchUser {
        /// The service.
        service: String,
        /// The user name.
        user: String,
    },

    /// A part of the service's readiness check can never pass.
    #[error("service `{service}`'s readiness check can never pass: {reason}")]
    ReadinessNeverPasses {
        /// The service.
        service: String,
        /// Which part, and what to do.
        reason: String,
    },

    /// A `{port.NAME}` or `{Service.port.NAME}` template, or [`Bundle::port`](crate::Bundle::port),
    /// names no port that was declared.
    #[error("service `{service}`: {template} names no port that was declared: check the service's name in it (a service of this bundle), and add Service::port(\"NAME\") to the service that owns the port")]
    UnknownPort {
        /// The service whose definition has the template (or whose port was asked for).
        service: String,
        /// The template, or `` `port("NAME")` `` when it was asked for by name.
        template: String,
    },

    /// A regular expression that doesn't parse.
    #[error("invalid regular expression `{pattern}`: {message}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },

    /// A library that must be preloaded sits at a path `LD_PRELOAD` can't hold.
    #[error("`{}` can't be preloaded: its path has a space or a colon, which LD_PRELOAD splits on; set TMPDIR (where our time-travel shim is written) to a path without them", path.display())]
    Unpreloadable {
        /// The path.
        path: PathBuf,
    },

    /// A path under a shared directory (the temporary directory), or a project directory or
    /// its `.hitchserve`, is not safely ours: another local user may have planted it (or
    /// could swap it) to take over what we would write or load there.
    #[error("refusing to use `{}`: it {problem}; another local user may be trying to take over this bundle. Remove or fix it (it may need root), or use a directory only you (or root) can change (for temporary files: set TMPDIR)", path.display())]
    UnsafePath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// A service that runs as another user can't reach a file or directory it needs.
    #[error("service `{service}` runs as `{user}`, who cannot reach `{}` ({why}): `{}` does not let that user through; give `{user}` access to it (e.g. `chmod o+x` on a directory), or move what is there somewhere `{user}` can reach (the project out of a private home directory; TMPDIR, where the time shim lives, to a directory others can pass through)", path.display(), blocked.display())]
    UnreachableForUser {
        /// The service.
        service: String,
        /// The user it runs as.
        user: String,
        /// What it must reach.
        path: PathBuf,
        /// The first directory on the way that stops it.
        blocked: PathBuf,
        /// Why it needs the path.
        why: String,
    },

    /// Time travel on a bundle built with `Bundle::without_time_travel`.
    #[error("time travel is off for this bundle (Bundle::without_time_travel): remove that to travel in time")]
    TimeTravelDisabled,

    /// A moment too far from now for the clock offset (about ±292 years).
    #[error("that moment is too far from now to travel to (at most about 292 years either way)")]
    TimeOutOfRange,

    /// The process has ended (or its pid now belongs to another process).
    #[error("process {pid} no longer exists")]
    NoSuchProcess {
        /// Its pid.
        pid: u32,
    },

    /// Something about a process could not be read or done (e.g. permission denied).
    #[error("could not get the {what} of process {pid}: {message}")]
    ProcessInfo {
        /// Its pid.
        pid: u32,
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        message: String,
    },

    /// A sub-command exited with a failure.
    #[error("sub-command `{command}` of service `{service}` failed ({status}){}", if stderr.is_empty() { String::new() } else { format!("; its stderr:\n{}", stderr.trim_end()) })]
    SubcommandFailed {
        /// The service it ran for.
        service: String,
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it wrote to stderr, when captured.
        stderr: String,
    },

    /// The bundle has stopped — shut down, or its startup failed — and what was asked needs
    /// it running or to start again: a bundle runs once.
    #[error("the bundle has stopped (it was shut down, or its startup failed): a bundle runs once; make a new one to start its services again")]
    ShutDown,

    /// `startup` was called twice, or services were added after it.
    #[error("the bundle was already started: define every service before calling startup, and call it once")]
    AlreadyStarted,

    /// `startup` was stopped by [`Interrupter::interrupt`](crate::Interrupter::interrupt)
    /// (Ctrl-C, say); what had started was stopped again.
    #[error("startup was interrupted: every service started so far was stopped")]
    Interrupted,

    /// A process forked (without exec) from the one that started the bundle asked to change
    /// it: its services are that process's to stop, start, signal and time-travel (the
    /// fork's copy of the bundle can read them).
    #[error("this bundle was started by process {owner}, and this process ({pid}) is a fork of it: it can look at the services, not stop, start, signal or time-travel them; do that in process {owner}")]
    ForkedChild {
        /// The process that started the bundle.
        owner: u32,
        /// This process.
        pid: u32,
    },

    /// Something that needs running services was asked before `startup`.
    #[error("the bundle is not running: call startup first")]
    NotRunning,

    /// What was asked of one service needs its process, and it has none now.
    #[error("service `{service}` is not running: it {state}")]
    ServiceNotRunning {
        /// The service.
        service: String,
        /// Where it is and what to do, e.g. "was stopped: start it again first (`start()`)".
        state: String,
    },

    /// A ready-made service's handle was asked of a service of another kind.
    #[error("service `{service}` is not a {kind} service (it was not made by `{kind}::service`): ask for the handle of the right service")]
    NotAService {
        /// The service.
        service: String,
        /// The kind asked for, e.g. `Chromium`.
        kind: String,
    },

    /// A shared bundle (see [`SharedBundle`](crate::SharedBundle)) could not be started,
    /// attached to or asked.
    #[error("shared bundle `{}`: {message}", file.display())]
    Shared {
        /// The bundle's file (`hitchserve.toml`).
        file: PathBuf,
        /// What went wrong, and what to do.
        message: String,
    },

    /// A WebDriver command failed (the browser's error, or no answer).
    #[error("service `{service}`: WebDriver command `{command}` failed: {message}")]
    WebDriver {
        /// The WebDriver service (e.g. a `Chromium`).
        service: String,
        /// The HTTP method and path.
        command: String,
        /// What went wrong: WebDriver's error code and message, or the transport's.
        message: String,
    },
}

/// A service that was not ready when startup timed out.
#[derive(Debug, Clone)]
pub struct NotReady {
    /// The service.
    pub service: String,
    /// What it was still waiting for, e.g. "its readiness check" or "`Postgres` to be ready".
    pub waiting_for: String,
    /// Its last log lines, oldest first.
    pub last_lines: Vec<String>,
}

/// "last line" or "last N lines".
fn last_lines(n: usize) -> String {
    match n {
        1 => "last line".to_owned(),
        n => format!("last {n} lines"),
    }
}

/// For a server that exited 0 on its own: it has most likely gone to the background, which
/// hitchserve can't watch (what it left running dies with the bundle).
fn daemon_hint(status: &ExitStatus) -> &'static str {
    match status {
        ExitStatus::Code(0) => {
            ": a server that exits 0 on its own has usually gone to the background (daemonized); \
             run it in the foreground (redis-server `--daemonize no`, nginx `-g 'daemon off;'`, \
             a `--foreground` or `--no-daemon` option); a job that does its work and exits 0 (a \
             migration) is a `Service::one_shot()`"
        }
        _ => "",
    }
}

fn lines_section(service: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return format!("; `{service}` printed nothing");
    }
    let mut out = format!("; {} of `{service}`:", last_lines(lines.len()));
    for line in lines {
        let _ = write!(out, "\n    {line}");
    }
    out
}

/// Where every line of the run is: what a failing test's output should point at.
fn log_section(log: &Option<PathBuf>) -> String {
    match log {
        Some(path) => format!("\n  every line of the run: {}", path.display()),
        None => String::new(),
    }
}

fn plain_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return "; nothing was logged there".to_owned();
    }
    let mut out = match lines.len() {
        1 => "; the last line was:".to_owned(),
        n => format!("; the last {n} lines were:"),
    };
    for line in lines {
        let _ = write!(out, "\n    {line}");
    }
    out
}

fn not_ready_section(not_ready: &[NotReady]) -> String {
    let mut out = String::new();
    for n in not_ready {
        let _ = write!(out, "\n  `{}` was waiting for {}", n.service, n.waiting_for);
        if n.last_lines.is_empty() {
            out.push_str(" (it printed nothing)");
        } else {
            let _ = write!(out, "; its {}:", last_lines(n.last_lines.len()));
            for line in &n.last_lines {
                let _ = write!(out, "\n      {line}");
            }
        }
    }
    out.push_str("\n  increase Bundle::startup_timeout if the services are just slow");
    out
}

impl Error {
    /// The variant's name (`"ServiceExited"`, `"StartupTimeout"`...): a stable word for
    /// programs that sort errors, e.g. bindings to other languages.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "InvalidName",
            Error::InvalidSetting { .. } => "InvalidSetting",
            Error::DuplicateService { .. } => "DuplicateService",
            Error::EmptyCommand { .. } => "EmptyCommand",
            Error::CommandNotFound { .. } => "CommandNotFound",
            Error::NotInstalled { .. } => "NotInstalled",
            Error::DirectoryMissing { .. } => "DirectoryMissing",
            Error::NotADirectory { .. } => "NotADirectory",
            Error::UnknownNeed { .. } => "UnknownNeed",
            Error::NeedsCycle { .. } => "NeedsCycle",
            Error::ProjectDir { .. } => "ProjectDir",
            Error::Io { .. } => "Io",
            Error::Spawn { .. } => "Spawn",
            Error::ExitedBeforeReady { .. } => "ExitedBeforeReady",
            Error::OneShotFailed { .. } => "OneShotFailed",
            Error::StartupTimeout { .. } => "StartupTimeout",
            Error::ReadinessPanicked { .. } => "ReadinessPanicked",
            Error::HookFailed { .. } => "HookFailed",
            Error::ServiceExited { .. } => "ServiceExited",
            Error::LogFileFailed { .. } => "LogFileFailed",
            Error::NoSuchService { .. } => "NoSuchService",
            Error::WaitTimeout { .. } => "WaitTimeout",
            Error::EndedWhileWaiting { .. } => "EndedWhileWaiting",
            Error::LibfaketimeMissing { .. } => "LibfaketimeMissing",
            Error::NoSuchUser { .. } => "NoSuchUser",
            Error::ReadinessNeverPasses { .. } => "ReadinessNeverPasses",
            Error::UnknownPort { .. } => "UnknownPort",
            Error::InvalidPattern { .. } => "InvalidPattern",
            Error::Unpreloadable { .. } => "Unpreloadable",
            Error::UnsafePath { .. } => "UnsafePath",
            Error::UnreachableForUser { .. } => "UnreachableForUser",
            Error::TimeTravelDisabled => "TimeTravelDisabled",
            Error::TimeOutOfRange => "TimeOutOfRange",
            Error::NoSuchProcess { .. } => "NoSuchProcess",
            Error::ProcessInfo { .. } => "ProcessInfo",
            Error::SubcommandFailed { .. } => "SubcommandFailed",
            Error::AlreadyStarted => "AlreadyStarted",
            Error::ShutDown => "ShutDown",
            Error::ForkedChild { .. } => "ForkedChild",
            Error::Interrupted => "Interrupted",
            Error::NotRunning => "NotRunning",
            Error::ServiceNotRunning { .. } => "ServiceNotRunning",
            Error::NotAService { .. } => "NotAService",
            Error::WebDriver { .. } => "WebDriver",
            Error::Shared { .. } => "Shared",
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `3 lines (120 bytes)`, for messages.
pub(crate) fn amount(lines: u64, n: u64) -> String {
    let l = if lines == 1 { "line" } else { "lines" };
    format!("{lines} {l} ({})", bytes(n))
}

/// A byte count for people: `512 bytes`, `3.0 KiB`, `8.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The message of a panic caught from user code (a readiness closure, a hook).
pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}
