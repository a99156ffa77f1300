//! `hitchserve`: run a bundle defined in `hitchserve.toml` and drive it from anywhere.
//!
//! The command is this library's [`run`], so that it can be carried by other programs: the
//! `hitchserve` binary is a `main` over it, and the Python package's native module runs it as
//! `python -m hitchserve.cli`. The one thing that differs between them is how `up --detach`
//! (and `--shared`) runs the command again as the bundle's daemon: the `relaunch` prefix.
//!
//! `up` starts the bundle (in the foreground, or `--detach`ed) and serves control requests
//! on a Unix socket in the project's `.hitchserve/control/` (0600 in a 0700 directory); every other
//! command is a client of that socket. The CLI is a thin client of the library's public API.

#![warn(missing_docs)]

mod config;
mod control;
mod one_service;

/// How long a shared bundle runs on with no lease, as `--idle` reads it: `0`, or a number
/// and a unit (`500ms`, `10s`, `2m`, `1h30m`, `2d`, `"5 minutes"`; a bare number is
/// seconds). For hosts that take the same setting elsewhere (the Python package's pytest
/// plugin).
pub use control::idle_time;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hitchserve",
    version,
    about = "Start, watch, time-travel and stop the services a test needs."
)]
struct Cli {
    /// The bundle's file (its directory is the project directory). Given before the
    /// command, as in `hitchserve -f other.toml up`: after it, `-f` is `logs --follow`.
    #[arg(short = 'f', long = "file", default_value = "hitchserve.toml")]
    file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the bundle, print the services' logs, stop cleanly on Ctrl-C, SIGTERM or `down`.
    Up {
        /// Return once every service is ready, leaving the bundle running in the background
        /// (its logs are in .hitchserve/latest/logs/all.log). Exit code 0 means ready.
        #[arg(short, long)]
        detach: bool,
        /// Print the startup timeline once ready (an SVG is written to the run directory when the bundle stops).
        #[arg(long)]
        timeline: bool,
        /// Share the bundle between processes (test processes under nextest, pytest-xdist
        /// workers, scripts): start it unless it runs — started from this same file — and
        /// take a lease for --pid. It stops once no lease has been held for --idle; a lease
        /// ends on `release` or when its process dies. Implies --detach.
        #[arg(long)]
        shared: bool,
        /// With --shared: how long the bundle runs with no lease held (`0`: stop at once).
        #[arg(long, default_value = "10s", requires = "shared")]
        idle: String,
        /// With --shared: the process that holds the lease (default: the one that ran us).
        #[arg(long, requires = "shared")]
        pid: Option<i32>,
        /// With --shared: say the lease as JSON (`lease`, `seq`, `all_log`, `holders`,
        /// `started`, `pid`, `run`, `idle_seconds`).
        #[arg(long, requires = "shared")]
        json: bool,
        #[arg(long, hide = true)]
        daemon_child: bool,
        /// (The `up.lock` descriptor a detaching `up` locked and handed to its daemon child.)
        #[arg(long, hide = true, requires = "daemon_child")]
        lock_fd: Option<i32>,
    },
    /// Take a lease on the running shared bundle (see `up --shared`), for --pid.
    Attach {
        /// The process that holds the lease (default: the one that ran us, e.g. the shell).
        #[arg(long)]
        pid: Option<i32>,
        /// Say the lease as JSON.
        #[arg(long)]
        json: bool,
    },
    /// End leases on the shared bundle: one by its id, or every lease of --pid (default:
    /// the process that ran us). The bundle stops once none is left for its idle time.
    Release {
        /// The process whose leases end (default: the one that ran us).
        #[arg(long, conflicts_with = "lease")]
        pid: Option<i32>,
        /// One lease, by the id `up --shared` or `attach` gave.
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Stop the running bundle cleanly.
    Down,
    /// Each service: state, pid, CPU, memory, ports.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The same as `status`.
    Ps {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print logs; wait for a line with --until / --until-json (exit 1 on timeout).
    #[command(group(clap::ArgGroup::new("waiting").args(["until", "until_json"])))]
    Logs {
        /// One service (default: all, and the bundle's own lines).
        service: Option<String>,
        /// Only standard output.
        #[arg(long, conflicts_with = "err")]
        out: bool,
        /// Only standard error.
        #[arg(long)]
        err: bool,
        /// Only lines that are JSON, printed as JSON.
        #[arg(long)]
        json: bool,
        /// Only the last N lines; with --until / --until-json, also look at the last N.
        #[arg(short = 'n', long)]
        lines: Option<usize>,
        /// Keep printing lines as they come.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Wait until a line that comes next (or one of the last -n N) matches this regular
        /// expression, print it, exit 0. (Not with --json, which hides the lines that are
        /// not JSON: use --until-json.)
        #[arg(long, conflicts_with_all = ["until_json", "follow", "json"])]
        until: Option<String>,
        /// Wait until a JSON line that comes next (or one of the last -n N) matches
        /// `field=value` (or has `field`), print it, exit 0.
        #[arg(long, conflicts_with = "follow")]
        until_json: Option<String>,
        /// How long --until / --until-json wait (e.g. 10s, 2m).
        #[arg(
            long,
            default_value = "10s",
            allow_hyphen_values = true,
            requires = "waiting"
        )]
        timeout: String,
    },
    /// Move the services' clock: `+2d`, `+3h30m`, `-1h`, or `--to 2030-01-01T09:00:00Z`.
    TimeTravel {
        /// How far: forward (`+2d`, `2d`) or back (`-3h`, `3h ago`).
        #[arg(allow_hyphen_values = true, required_unless_present = "to")]
        by: Option<String>,
        /// An absolute moment (RFC 3339, e.g. 2030-01-01T09:00:00Z; a date alone is its
        /// midnight, UTC).
        #[arg(long, conflicts_with = "by")]
        to: Option<String>,
        /// On a shared bundle, the holder this travel is for (default: the process that ran
        /// us, e.g. the shell; give the script's `$$` when a wrapper such as `timeout` runs
        /// us).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// The port reserved for a service as NAME (`ports = ["NAME"]`, or its kind's own), for a
    /// script: `PORT=$(hitchserve port App http)`.
    Port {
        service: String,
        /// The port's name (default: the service's only port).
        name: Option<String>,
    },
    /// The services' current (faked) time.
    Now {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a service's environment, directory and fake time; its exit code
    /// is ours.
    Exec {
        service: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Send a signal (TERM, INT, HUP, KILL, USR1, ...) to a service's process group.
    Signal { service: String, signal: String },
    /// Stop one service (its stop signal, then SIGKILL after the shutdown timeout); returns
    /// once it has exited. Services that need it keep running.
    Stop { service: String },
    /// Start a stopped (or crashed) service again: same definition, ports and fake time;
    /// returns once it is ready (exit 1 with the error if it fails to start).
    Start {
        service: String,
        /// Run its setup hook again first.
        #[arg(long)]
        setup: bool,
    },
    /// `stop`, then `start`: returns once it is ready again.
    Restart {
        service: String,
        /// Run its setup hook again first.
        #[arg(long)]
        setup: bool,
    },
    /// Freeze a service (SIGSTOP to its process group): its ports accept, nothing answers.
    Pause { service: String },
    /// Thaw a paused service (SIGCONT to its process group).
    Resume { service: String },
    /// Send a signal whose effect is a crash (not a stop): its exit is reported like any
    /// crash after ready, or restarts it under its restart policy. After SIGKILL (the
    /// default) returns once the process has exited.
    Kill {
        service: String,
        /// The signal (KILL, TERM, SEGV, 9, ...).
        #[arg(long, short = 's', default_value = "KILL")]
        signal: String,
    },
}

fn project_dir(file: &Path) -> PathBuf {
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = parent.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The command's exit status. (The standard `ExitCode` can't be read back as a number, and
/// the Python module returns it as one.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode(u8);

impl ExitCode {
    /// Success (0).
    pub const SUCCESS: ExitCode = ExitCode(0);
    /// Failure (1).
    pub const FAILURE: ExitCode = ExitCode(1);

    /// The number a shell sees.
    pub fn code(self) -> u8 {
        self.0
    }
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> ExitCode {
        ExitCode(code)
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> std::process::ExitCode {
        std::process::ExitCode::from(code.0)
    }
}

/// Run the `hitchserve` command with the command line `args` (without the program's name).
///
/// `relaunch` is how to run this same command again, as `up --detach` and `up --shared` do to
/// start the bundle's daemon: the program and its first arguments (`[python, "-m",
/// "hitchserve.cli"]`); empty means this executable. Help, a usage error and every failure
/// are printed here; the result is the exit code. Meant to be the whole of a process (`up`
/// installs signal handlers, and client commands die quietly on a closed pipe, as a Unix
/// filter does).
pub fn run(relaunch: Vec<OsString>, args: Vec<OsString>) -> ExitCode {
    quiet_closed_stdout();
    let argv = std::iter::once(OsString::from("hitchserve")).chain(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` too: printed, and their code (0) returned.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // Output that can't be written (a full disk: `hitchserve status > /dev/full`) makes
    // `println!` panic, silently (see `quiet_closed_stdout`): said as an error, exit 1 —
    // it exited 101 with nothing said. (A closed pipe ends us by SIGPIPE, as any command.)
    let code =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command(cli, &relaunch))) {
            Ok(code) => code,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                match text.strip_prefix("failed printing to stdout: ") {
                    Some(why) => {
                        eprintln!("hitchserve: cannot write its output: {why}");
                        ExitCode::FAILURE
                    }
                    None => std::panic::resume_unwind(panic),
                }
            }
        };
    // Printed lines must be out before a host process (Python) goes on or exits: a process
    // that is not a Rust `main` never flushes Rust's stdout for us.
    let _ = std::io::stdout().flush();
    code
}

/// The engine prints service lines with `print!` (so that `cargo test` captures them), which
/// panics once stdout is a closed pipe (`hitchserve up | head`); the engine catches that and
/// stops printing, and the bundle runs on. Here the panic's message and backtrace are not
/// printed either: a closed pipe is not a bug. Any other panic is reported as before.
fn quiet_closed_stdout() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.starts_with("failed printing to stdout") {
                report(info);
            }
        }));
    });
}

fn command(cli: Cli, relaunch: &[OsString]) -> ExitCode {
    let project = project_dir(&cli.file);
    // What is read there (a pid to signal, a socket to trust) must be ours: never a
    // `.hitchserve` another user could have planted or swapped.
    let result = match control::check_state_dir(&project) {
        Err(e) => Err(e),
        Ok(()) => run_command(cli, &project, relaunch),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("hitchserve: {}", in_file_terms(&message));
            ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli, project: &Path, relaunch: &[OsString]) -> Result<ExitCode, String> {
    let project = project.to_path_buf();
    match cli.command {
        Command::Up {
            detach,
            timeline,
            shared,
            idle,
            pid,
            json,
            daemon_child,
            lock_fd,
        } => match (shared, control::idle_time(&idle)) {
            (_, Err(e)) => Err(e),
            (true, Ok(idle)) if !daemon_child => {
                control::up_shared(&cli.file, &project, pid, idle, timeline, json, relaunch)
            }
            (shared, Ok(idle)) => control::up(
                &cli.file,
                &project,
                detach,
                timeline,
                daemon_child.then_some(lock_fd),
                shared.then_some(idle),
                relaunch,
            ),
        },
        Command::Attach { pid, json } => control::attach(&cli.file, &project, pid, json),
        Command::Release { pid, lease } => control::release(&project, pid, lease),
        other => {
            // Like other Unix filters, a client dies quietly when its reader goes away
            // (`hitchserve logs | head`). `up` keeps Rust's ignored SIGPIPE: a closed
            // console must not kill the bundle, which only stops printing.
            // SAFETY: restoring the default action of one signal before any thread exists.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            control::client(&project, other)
        }
    }
}

/// The engine's advice names its Rust API; here it names what to write in the bundle file.
const RUST_TO_FILE: &[(&str, &str)] = &[
    ("Bundle::startup_timeout", "`startup_timeout` in [bundle]"),
    (
        "Bundle::without_time_travel()",
        "`without_time_travel = true` in [bundle]",
    ),
    (
        "Bundle::without_time_travel",
        "`without_time_travel = true` in [bundle]",
    ),
    ("Service::new", "its `command`"),
    ("Service::directory", "its `directory`"),
    ("Service::no_libfaketime()", "`no_libfaketime = true`"),
    ("Service::port(\"NAME\")", "`ports = [\"NAME\"]`"),
    ("remove its `user(..)`", "remove its `user`"),
    ("(`user(..)`)", "(`user`)"),
    (
        "is a `Service::one_shot()`",
        "is one the services after it list in `needs_completed`",
    ),
    ("Postgres::bin_dir", "its `bin_dir`"),
    ("MariaDb::basedir", "its `basedir`"),
    (
        "remove `user(..)`, or make it for another with `Postgres::os_user`",
        "remove its `user`",
    ),
    (
        "remove `user(..)`, or make it for another with `MariaDb::os_user`",
        "remove its `user`",
    ),
    ("(`port(\"http\")`)", "(`ports = [\"http\"]`)"),
    (
        "start it again first (`start()`)",
        "start it again first (with `hitchserve start`)",
    ),
    (
        "a bundle runs once; make a new one to start its services again",
        "it is going down: start a new one with `hitchserve up` once `down` is done",
    ),
];

/// `message` with the engine's Rust names put in bundle-file terms.
fn in_file_terms(message: &str) -> String {
    RUST_TO_FILE
        .iter()
        .fold(message.to_owned(), |m, (rust, file)| m.replace(rust, file))
}
