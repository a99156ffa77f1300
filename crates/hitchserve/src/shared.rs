//! A bundle shared by many test processes: [`SharedBundle`].
//!
//! Test runners run a suite in many processes — nextest one per test, pytest-xdist one per
//! worker, CI one per shard — so a bundle kept in a `static` is started once per process. A
//! shared bundle is started once for all of them: by the `hitchserve` command (`hitchserve
//! up --shared`, from the CLI crate), from a `hitchserve.toml`, in the background. The first
//! process that asks starts it; the others attach; each holds a **lease** until it releases
//! it (dropping its [`SharedBundle`]) or dies (SIGKILL too: the bundle watches the holder,
//! nobody has to say goodbye). Once no lease has been held for the idle time (10 s unless
//! [`SharedBuilder::idle`] says otherwise), the bundle stops, and every process it started
//! dies with it. Racing first users start exactly one bundle; a bundle started from another
//! definition is replaced if nobody holds it, else [`SharedBundle::attach`] fails naming
//! what changed and who holds it.
//!
//! Why a file, not a closure like [`Bundle`](crate::Bundle)'s: the bundle outlives the
//! process that starts it and is attached to from other processes (and from the CLI and the
//! Python package), so its definition has to be data that every one of them can read and
//! compare — readiness checks and hooks written as Rust closures can't cross processes.
//!
//! Owns the holder's side: starting or attaching (through the `hitchserve` command), the
//! control-socket requests, and this holder's own view of the logs (the lines written since
//! it attached: what a failing test should show). Invariant: a `SharedBundle` holds exactly
//! one lease while it lives; the socket is reached only inside the project's private
//! `.hitchserve/control/`.
//!
//! Time travel moves the clock of every holder at once: [`SharedBundle::time_travel_by`] is
//! refused while another process holds the bundle, so parallel tests can't fight over the
//! clock without knowing.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// How a shared bundle is found or started: the file, the `hitchserve` program, the idle
/// time. Made by [`SharedBundle::builder`].
#[derive(Debug, Clone)]
pub struct SharedBuilder {
    file: PathBuf,
    program: Option<PathBuf>,
    /// Arguments before the `hitchserve` command's own (`-m hitchserve.cli` for Python's).
    program_args: Vec<std::ffi::OsString>,
    idle: Option<Duration>,
}

/// A lease on a bundle shared by many processes.
///
/// Test runners run a suite in many processes — nextest one per test, pytest-xdist one per
/// worker — so a bundle kept in a `static` is started once per process. A shared bundle is
/// started once for all of them, in the background, by the `hitchserve` command (`hitchserve
/// up --shared`, from the `hitchserve-cli` crate) from a `hitchserve.toml`: the first process
/// that asks starts it, the others attach. Each holds a lease until it drops its
/// `SharedBundle` or dies (SIGKILL too). Once no lease has been held for the idle time (10 s
/// unless [`SharedBuilder::idle`] says otherwise), the bundle stops, and every process it
/// started with it. Racing first users start one bundle; one started from another definition
/// is replaced when nobody holds it, else [`SharedBundle::attach`] fails naming what changed
/// and who holds it. Time travel is everybody's: [`SharedBundle::time_travel_by`] is refused
/// while another process holds the bundle.
///
/// A file, not closures as a [`Bundle`](crate::Bundle) takes: the bundle outlives the process
/// that starts it and is attached to from others (and from the CLI and Python), so its
/// definition has to be data they can all read and compare.
///
/// ```no_run
/// use std::sync::OnceLock;
/// use std::time::Duration;
/// use hitchserve::SharedBundle;
///
/// // One per test process: under nextest that is one per test, all attached to one bundle.
/// fn services() -> &'static SharedBundle {
///     static SHARED: OnceLock<SharedBundle> = OnceLock::new();
///     SHARED.get_or_init(|| SharedBundle::attach("tests/hitchserve.toml").expect("services"))
/// }
///
/// # fn main() -> hitchserve::Result<()> {
/// let db = services().service("Postgres")?;
/// let port = db.port("postgres")?;
/// // Only the lines written since this process attached: an earlier test's don't count.
/// let line = services().service("App")?.tail().until("listening", Duration::from_secs(10))?;
/// println!("{port} {}", line.text);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SharedBundle {
    file: PathBuf,
    project: PathBuf,
    lease: u64,
    /// The process that took the lease: a child forked from it holds a copy of this value,
    /// not the lease, and never releases it.
    holder: u32,
    /// The last line written before we attached: our view of the logs starts after it.
    seq: u64,
    all_log: Option<PathBuf>,
    started: bool,
    /// The run attached to: named in every request, so that a bundle started since (after
    /// ours stopped) doesn't answer for it.
    run: Option<String>,
}

/// One service of a [`SharedBundle`].
#[derive(Debug, Clone)]
pub struct SharedService<'a> {
    bundle: &'a SharedBundle,
    name: String,
}

/// A cursor on a shared service's lines (see [`SharedService::tail`]).
#[derive(Debug, Clone)]
pub struct SharedTail<'a> {
    service: SharedService<'a>,
    after: u64,
}

/// One log line of a shared bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLine {
    /// The service that wrote it (`""` for the bundle's own lines).
    pub service: String,
    /// The line as written.
    pub text: String,
    /// The line as the console shows it: `[   App] text`.
    pub console: String,
    /// Its place in the bundle's logs (increasing).
    pub seq: u64,
    /// Which of its service's processes wrote it (1 until it is started again).
    pub incarnation: u32,
}

impl SharedBuilder {
    /// The `hitchserve` program that starts the bundle. Default: `$HITCHSERVE_BIN` if set,
    /// else `hitchserve` on the `PATH` (`cargo install hitchserve-cli`).
    pub fn program(mut self, program: impl Into<PathBuf>) -> SharedBuilder {
        self.program = Some(program.into());
        self
    }

    /// The `hitchserve` command as a program and its first arguments, e.g. a Python with
    /// `-m hitchserve.cli` (what the Python package does).
    pub fn program_with_args<I, S>(mut self, program: impl Into<PathBuf>, args: I) -> SharedBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.program = Some(program.into());
        self.program_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How long the bundle runs once no lease is held (default 10 s): long enough to
    /// bridge the gap between one test process and the next. Used by the process that
    /// starts the bundle.
    pub fn idle(mut self, idle: Duration) -> SharedBuilder {
        self.idle = Some(idle);
        self
    }

    /// Start the bundle unless it runs, then take a lease for this process: returns once
    /// every service is ready.
    pub fn attach(self) -> Result<SharedBundle> {
        let program = self
            .program
            .clone()
            .or_else(|| std::env::var_os("HITCHSERVE_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("hitchserve"));
        let file = std::fs::canonicalize(&self.file)
            .map_err(|e| self.error(format!("cannot read the bundle's file: {e}")))?;
        let project = file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut cmd = Command::new(&program);
        cmd.args(&self.program_args)
            .arg("-f")
            .arg(&file)
            .args(["up", "--shared", "--json", "--pid"])
            .arg(std::process::id().to_string())
            .current_dir(&project)
            .stdin(Stdio::null());
        if let Some(idle) = self.idle {
            cmd.arg("--idle").arg(match idle.as_millis() {
                0 => "0".to_owned(),
                ms => format!("{ms}ms"),
            });
        }
        let out = cmd.output().map_err(|e| {
            self.error(match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "the `{}` command was not found: a shared bundle is run by the hitchserve \
                     CLI; install it (`cargo install hitchserve-cli`, or `cargo install --path crates/hitchserve-cli` from a checkout) or set HITCHSERVE_BIN",
                    program.display()
                ),
                _ => format!("cannot run `{}`: {e}", program.display()),
            })
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr.trim();
            let why = why.strip_prefix("hitchserve: ").unwrap_or(why);
            return Err(self.error(match why {
                "" => format!("`hitchserve up --shared` failed ({})", out.status),
                // clap's words for an option it doesn't know: a `hitchserve` from before
                // shared bundles.
                why if why.contains("unexpected argument '--shared'") => format!(
                    "`{}` is a hitchserve command without shared bundles: install the one of \
                     this library's version ({}), e.g. `cargo install hitchserve-cli`",
                    program.display(),
                    env!("CARGO_PKG_VERSION")
                ),
                why => why.to_owned(),
            }));
        }
        let said: Value = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| {
                self.error(format!("no answer from `hitchserve up --shared`: {stdout}"))
            })?;
        Ok(SharedBundle {
            lease: said["lease"].as_u64().unwrap_or(0),
            holder: std::process::id(),
            seq: said["seq"].as_u64().unwrap_or(0),
            all_log: said["all_log"].as_str().map(PathBuf::from),
            started: said["started"].as_bool().unwrap_or(false),
            run: said["run"].as_str().map(str::to_owned),
            file,
            project,
        })
    }

    fn error(&self, message: String) -> Error {
        Error::Shared {
            file: self.file.clone(),
            message,
        }
    }
}

impl SharedBundle {
    /// How to find or start the bundle defined in `file` (a `hitchserve.toml`; its
    /// directory is the project directory).
    pub fn builder(file: impl Into<PathBuf>) -> SharedBuilder {
        SharedBuilder {
            file: file.into(),
            program: None,
            program_args: Vec::new(),
            idle: None,
        }
    }

    /// Start the bundle defined in `file` unless it runs, then take a lease for this
    /// process; see [`SharedBundle::builder`] for the options.
    pub fn attach(file: impl Into<PathBuf>) -> Result<SharedBundle> {
        SharedBundle::builder(file).attach()
    }

    /// Another lease on the same bundle for this process, taken over its socket (no command
    /// is run): a test's own view — its lines, tails and failure report start now, and a time
    /// travel it makes is undone when it is dropped — while the process's first lease (a
    /// session's, in a `static`) keeps the bundle.
    pub fn view(&self) -> Result<SharedBundle> {
        // Waits (as `up --shared` does) while another process's time travel is under way.
        let v = self.ask(json!({"cmd": "lease", "pid": std::process::id(), "wait": 600}))?;
        Ok(SharedBundle {
            file: self.file.clone(),
            project: self.project.clone(),
            lease: v["lease"].as_u64().unwrap_or(0),
            holder: std::process::id(),
            seq: v["seq"].as_u64().unwrap_or(0),
            all_log: v["all_log"].as_str().map(PathBuf::from),
            started: false,
            run: self.run.clone(),
        })
    }

    /// The project directory (the file's).
    pub fn project_dir(&self) -> &Path {
        &self.project
    }

    /// The run's `all.log`: every line of every service, of every holder's time.
    pub fn all_log(&self) -> Option<&Path> {
        self.all_log.as_deref()
    }

    /// This holder's lease.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// Whether this attach started the bundle (else it was running already).
    pub fn started_it(&self) -> bool {
        self.started
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Shared {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    /// One request, one reply (`{"ok": true, ...}`), over a new connection.
    fn ask(&self, mut req: Value) -> Result<Value> {
        req["run"] = json!(self.run);
        let mut conn = self.connect()?;
        let lost = |e: std::io::Error| self.error(format!("the shared bundle went away: {e}"));
        conn.write_all(format!("{req}\n").as_bytes())
            .map_err(lost)?;
        let mut reader = BufReader::new(conn);
        let v = loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(lost)?;
            let v: Value = serde_json::from_str(&line)
                .map_err(|_| self.error("no answer from the shared bundle (it stopped?)"))?;
            // Before a lease's answer, why it waits (another holder's time travel).
            if v["waiting"].is_null() {
                break v;
            }
        };
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(self.error(v["error"].as_str().unwrap_or("the request failed")))
        }
    }

    /// A request answered by a stream of lines ended by `{"end": ...}`.
    fn stream(&self, mut req: Value) -> Result<(Vec<Value>, Value)> {
        req["run"] = json!(self.run);
        let mut conn = self.connect()?;
        let lost = |e: std::io::Error| self.error(format!("the shared bundle went away: {e}"));
        conn.write_all(format!("{req}\n").as_bytes())
            .map_err(lost)?;
        let mut lines = Vec::new();
        for line in BufReader::new(conn).lines() {
            let v: Value = serde_json::from_str(&line.map_err(lost)?).unwrap_or(Value::Null);
            if v.get("end").is_some() {
                return Ok((lines, v));
            }
            lines.push(v);
        }
        Err(self.error("the shared bundle stopped while answering"))
    }

    /// The control socket, reached inside the project's private directory (through our
    /// descriptor of it when the path is too long for `sun_path`), never through a link,
    /// and heard only if the directory and the process listening are a trusted user's (us,
    /// root, the project's owner: as the CLI checks them) — what it answers is acted on.
    fn connect(&self) -> Result<UnixStream> {
        let dir = self.project.join(".hitchserve").join("control");
        let fd: OwnedFd = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| self.error(format!("cannot open `{}`: {e}", dir.display())))?;
        let trusted = |uid: u32| {
            uid == crate::safepath::euid()
                || uid == 0
                || std::fs::metadata(&self.project)
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid)
        };
        let meta = nix::sys::stat::fstat(&fd)
            .map_err(|e| self.error(format!("cannot inspect `{}`: {e}", dir.display())))?;
        if !trusted(meta.st_uid) || meta.st_mode & 0o022 != 0 {
            return Err(self.error(format!(
                "refusing `{}`: owned by uid {} (mode {:o}), not a private directory of \
                 yours, root's or the project owner's; remove it",
                dir.display(),
                meta.st_uid,
                meta.st_mode & 0o7777
            )));
        }
        let direct = dir.join("control.sock");
        let address = match direct.as_os_str().len() {
            ..=107 => direct,
            _ => PathBuf::from(format!("/proc/self/fd/{}/control.sock", fd.as_raw_fd())),
        };
        let conn = UnixStream::connect(&address).map_err(|e| {
            self.error(format!(
                "the shared bundle is not running (any more): {e}; see `{}`",
                self.project.join(".hitchserve").join("up.log").display()
            ))
        })?;
        let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| self.error(format!("cannot tell who answers on its socket: {e}")))?;
        if !trusted(peer.uid()) {
            return Err(self.error(format!(
                "refusing its socket: the process listening there runs as uid {}, neither you, \
                 root nor the project's owner; stop it, and remove `{}`",
                peer.uid(),
                dir.display()
            )));
        }
        Ok(conn)
    }

    /// A service of the bundle.
    pub fn service(&self, name: &str) -> Result<SharedService<'_>> {
        let status = self.ask(json!({"cmd": "status"}))?;
        let names: Vec<&str> = status["services"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
            .unwrap_or_default();
        if !names.contains(&name) {
            return Err(Error::NoSuchService {
                service: name.to_owned(),
                known: names.join(", "),
            });
        }
        Ok(SharedService {
            bundle: self,
            name: name.to_owned(),
        })
    }

    /// The pids that hold a lease now, one per lease (ours included).
    pub fn holders(&self) -> Result<Vec<u32>> {
        let status = self.ask(json!({"cmd": "status"}))?;
        Ok(status["shared"]["holders"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|p| p.as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The services' current (faked) time.
    pub fn now(&self) -> Result<jiff::Timestamp> {
        let v = self.ask(json!({"cmd": "now"}))?;
        v["now"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| self.error("the bundle's answer to `now` is not a moment"))
    }

    /// Move every service's clock by `by` (negative: back). Refused while another process
    /// holds the bundle: the clock is everybody's. Undone (the clock set back to real time)
    /// once this lease ends, so the next holder doesn't inherit it.
    pub fn time_travel_by(&self, by: jiff::SignedDuration) -> Result<()> {
        let secs = by.as_secs_f64();
        self.ask(json!({
            "cmd": "time_travel", "by": secs, "pid": std::process::id(), "lease": self.lease,
        }))
        .map(drop)
    }

    /// Move every service's clock to `moment`. Refused while another process holds the
    /// bundle, as [`SharedBundle::time_travel_by`] is.
    pub fn time_travel_to(&self, moment: jiff::Timestamp) -> Result<()> {
        self.ask(json!({
            "cmd": "time_travel", "to": moment.to_string(), "pid": std::process::id(),
            "lease": self.lease,
        }))
        .map(drop)
    }

    /// This holder's lines: every line of every service written since it attached (what a
    /// failing test should show; the whole run's are in [`SharedBundle::all_log`]).
    pub fn logs(&self) -> Result<Vec<SharedLine>> {
        self.lines(None, self.seq)
    }

    fn lines(&self, service: Option<&str>, after: u64) -> Result<Vec<SharedLine>> {
        let (lines, end) =
            self.stream(json!({"cmd": "logs", "service": service, "after_seq": after}))?;
        match end["end"].as_str() {
            Some("ok") => Ok(lines.iter().filter_map(line).collect()),
            _ => Err(self.error(end["error"].as_str().unwrap_or("cannot read the logs"))),
        }
    }

    /// A failure report for a test: this holder's lines (the last `n`), and where the whole
    /// run's are.
    pub fn report(&self, n: usize) -> String {
        let mut said = match self.logs() {
            Ok(lines) => {
                let skip = lines.len().saturating_sub(n);
                let mut said = format!(
                    "the shared bundle's last {} line(s) since this test attached:\n",
                    lines.len() - skip
                );
                for l in &lines[skip..] {
                    said.push_str(&l.console);
                    said.push('\n');
                }
                said
            }
            Err(e) => format!("(could not read the shared bundle's logs: {e})\n"),
        };
        if let Some(all) = &self.all_log {
            said.push_str(&format!("all.log: {}\n", all.display()));
        }
        said
    }

    /// End this lease now (dropping the `SharedBundle` does too, quietly). A bundle that has
    /// stopped meanwhile holds no lease any more: that is not an error. In a child forked
    /// from the holder it does nothing: the lease is the holder's, which still runs (as
    /// dropping it there does nothing).
    pub fn release(mut self) -> Result<()> {
        if self.holder != std::process::id() {
            return Ok(());
        }
        let lease = std::mem::take(&mut self.lease);
        match self.ask(json!({"cmd": "release", "lease": lease})) {
            Ok(_) => Ok(()),
            Err(_) if !self.is_running() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the bundle this holder attached to still runs (it may have been stopped by a
    /// `hitchserve down`, or crashed).
    pub fn is_running(&self) -> bool {
        self.ask(json!({"cmd": "now"})).is_ok()
    }
}

impl Drop for SharedBundle {
    fn drop(&mut self) {
        // (In a child forked from the holder the lease is the holder's, which still runs.)
        if self.lease != 0 && self.holder == std::process::id() {
            let _ = self.ask(json!({"cmd": "release", "lease": self.lease}));
        }
    }
}

fn line(v: &Value) -> Option<SharedLine> {
    Some(SharedLine {
        service: v["service"].as_str()?.to_owned(),
        text: v["text"].as_str()?.to_owned(),
        console: v["line"].as_str()?.to_owned(),
        seq: v["seq"].as_u64()?,
        incarnation: v["incarnation"].as_u64().unwrap_or(0) as u32,
    })
}

impl<'a> SharedService<'a> {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn status(&self) -> Result<Value> {
        let status = self.bundle.ask(json!({"cmd": "status"}))?;
        status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == self.name.as_str()).cloned())
            .ok_or_else(|| {
                self.bundle
                    .error(format!("service `{}` is gone", self.name))
            })
    }

    /// The pid of its main process, if it runs.
    pub fn pid(&self) -> Result<Option<u32>> {
        Ok(self.status()?["pid"].as_u64().map(|p| p as u32))
    }

    /// Its main process, to inspect (memory, CPU, children, open files, connections...).
    pub fn process(&self) -> Result<crate::Process> {
        match self.pid()? {
            Some(pid) => crate::Process::new(pid),
            None => Err(Error::ServiceNotRunning {
                service: self.name.clone(),
                state: format!(
                    "is {} in the shared bundle: start it again first (`hitchserve start {}`)",
                    self.state().unwrap_or_else(|_| "not running".to_owned()),
                    self.name
                ),
            }),
        }
    }

    /// The state the CLI's `status` says: `ready`, `starting`, `stopped`, `crashed`...
    pub fn state(&self) -> Result<String> {
        Ok(self.status()?["state"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned())
    }

    /// The port reserved for it under `name`.
    pub fn port(&self, name: &str) -> Result<u16> {
        let status = self.status()?;
        status["ports"][name]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                let known: Vec<&String> = status["ports"]
                    .as_object()
                    .map(|m| m.keys().collect())
                    .unwrap_or_default();
                self.bundle.error(format!(
                    "service `{}` has no port `{name}` (it has: {})",
                    self.name,
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Its environment (the one its process got: ports, fake time and all).
    pub fn environment(&self) -> Result<Vec<(String, String)>> {
        let v = self
            .bundle
            .ask(json!({"cmd": "exec_env", "service": self.name}))?;
        Ok(v["env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A command that runs in its environment, directory and fake time, as its user (the
    /// CLI's `hitchserve exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let v = self
            .bundle
            .ask(json!({"cmd": "exec_env", "service": self.name}))?;
        let mut cmd = Command::new(program);
        cmd.env_clear();
        for p in v["env"].as_array().into_iter().flatten() {
            if let (Some(k), Some(val)) = (p[0].as_str(), p[1].as_str()) {
                cmd.env(k, val);
            }
        }
        if let Some(dir) = v["dir"].as_str() {
            cmd.current_dir(dir);
        }
        if let (Some(uid), Some(gid)) = (v["ids"][0].as_u64(), v["ids"][1].as_u64()) {
            if uid as u32 != nix::unistd::geteuid().as_raw() {
                cmd.uid(uid as u32).gid(gid as u32);
            }
        }
        Ok(cmd)
    }

    /// Its lines written since this holder attached.
    pub fn logs(&self) -> Result<Vec<SharedLine>> {
        self.bundle.lines(Some(&self.name), self.bundle.seq)
    }

    /// A cursor on its lines, from the moment this holder attached: each wait returns the
    /// next line that matches, after the one found before. Another test's lines (written
    /// before this one attached) are never found.
    pub fn tail(&self) -> SharedTail<'a> {
        SharedTail {
            service: self.clone(),
            after: self.bundle.seq,
        }
    }
}

impl SharedTail<'_> {
    /// Where it is: the `seq` of the last line it has passed (a wait finds only later ones).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The same cursor put just after the line `seq` (a [`SharedTail::position`]): for a
    /// cursor that outlives its [`SharedService`] (the Python package's keeps the number).
    pub fn from_position(mut self, seq: u64) -> Self {
        self.after = seq;
        self
    }

    /// Wait up to `timeout` for a line that matches the regular expression `pattern`
    /// (`regex-lite` syntax; [`Error::InvalidPattern`] at once if it doesn't parse).
    pub fn until(&mut self, pattern: &str, timeout: Duration) -> Result<SharedLine> {
        // Refused here, as a bad pattern (the bundle would refuse it as a bad request).
        regex_lite::Regex::new(pattern).map_err(|e| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            message: e.to_string(),
        })?;
        let v = self.wait(json!({"until": pattern}), timeout)?;
        let found =
            line(&v).ok_or_else(|| self.service.bundle.error("a line without its fields"))?;
        self.after = found.seq;
        Ok(found)
    }

    /// Wait up to `timeout` for a JSON line that matches `field=value` (or has `field`;
    /// a dotted field looks inside objects), as the CLI's `logs --until-json` does.
    pub fn until_json(&mut self, expr: &str, timeout: Duration) -> Result<Value> {
        self.until_json_line(expr, timeout).map(|(value, _)| value)
    }

    /// [`until_json`](Self::until_json), with the text of the line it was read from: for
    /// a caller that reads the JSON itself (keys in the line's order, numbers as written;
    /// the Python package does). The text is `None` from a bundle too old to send it.
    pub fn until_json_line(
        &mut self,
        expr: &str,
        timeout: Duration,
    ) -> Result<(Value, Option<String>)> {
        let mut v = self.wait(json!({"until_json": expr}), timeout)?;
        if let Some(seq) = v["seq"].as_u64() {
            self.after = seq;
        }
        let text = v["text"].as_str().map(str::to_owned);
        Ok((v["json"].take(), text))
    }

    fn wait(&self, what: Value, timeout: Duration) -> Result<Value> {
        let mut req = json!({
            "cmd": "logs", "service": self.service.name, "after_seq": self.after,
            "timeout": timeout.as_secs_f64(),
        });
        for (k, v) in what.as_object().into_iter().flatten() {
            req[k] = v.clone();
        }
        let bundle = self.service.bundle;
        let (mut lines, end) = bundle.stream(req)?;
        match end["end"].as_str() {
            Some("ok") if !lines.is_empty() => Ok(lines.remove(0)),
            Some("timeout") => Err(Error::WaitTimeout {
                what: format!(
                    "{} in the lines of shared service `{}`",
                    match (what["until"].as_str(), what["until_json"].as_str()) {
                        (Some(pattern), _) => format!("a line matching `{pattern}`"),
                        (_, Some(expr)) => format!("a JSON line with `{expr}`"),
                        _ => "a line".to_owned(),
                    },
                    self.service.name
                ),
                timeout,
                last_lines: self
                    .service
                    .logs()
                    .map(|l| {
                        let skip = l.len().saturating_sub(10);
                        l[skip..].iter().map(|l| l.console.clone()).collect()
                    })
                    .unwrap_or_default(),
                log: bundle.all_log.clone(),
            }),
            _ => Err(bundle.error(format!(
                "service `{}`: {}",
                self.service.name,
                end["error"].as_str().unwrap_or("the wait failed")
            ))),
        }
    }
}
