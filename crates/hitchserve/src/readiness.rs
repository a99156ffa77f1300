//! When a service counts as ready.
//!
//! Owns the `Ready` vocabulary — log lines (text, regex, JSON), TCP, HTTP, a command, a
//! file, and `all` / `any` of those — and the per-run `Checker` that evaluates it. Line
//! checks see each log line exactly once, in the service's reader; probes (TCP, HTTP,
//! command, file) are tried by a prober thread at an interval that starts at a few
//! milliseconds and backs off (the HTTP exchange itself is in `http`). Once a part of the
//! check has passed it stays passed. It does not change service state: the runtime acts on
//! the verdicts. A check that panics is reported, never propagated.

use std::ffi::OsString;
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::panic_message;
use crate::logs::LogLine;

pub(crate) mod http;

type LinePredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;
type JsonPredicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;
type StatusPredicate = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// How to tell that a service is ready.
///
/// ```
/// use hitchserve::Ready;
/// let on_line = Ready::line(|line| line.contains("Quit the server"));
/// let simple = Ready::line_contains("READY");
/// let both = Ready::all([Ready::line_contains("listening"), Ready::tcp(8000)]);
/// let web = Ready::http("http://127.0.0.1:8000/health").status(|s| s == 200);
/// let at_once = Ready::started();
/// # let _ = (on_line, simple, both, web, at_once);
/// ```
#[derive(Clone)]
pub struct Ready(Kind);

#[derive(Clone)]
enum Kind {
    Started,
    Line { pred: LinePredicate, what: String },
    Json { pred: JsonPredicate, what: String },
    Tcp { addr: String },
    Http(Http),
    Exec { argv: Vec<OsString> },
    File { path: PathBuf },
    All(Vec<Ready>),
    Any(Vec<Ready>),
}

#[derive(Clone)]
struct Http {
    url: String,
    status: StatusPredicate,
    body: Option<LinePredicate>,
}

impl Ready {
    /// Ready as soon as the process has been started (no check at all).
    pub fn started() -> Ready {
        Ready(Kind::Started)
    }

    /// Ready when a line on stdout or stderr makes `pred` return true. Each line is passed
    /// once, whole, without its newline (and without a trailing `\r`).
    pub fn line(pred: impl Fn(&str) -> bool + Send + Sync + 'static) -> Ready {
        Ready(Kind::Line {
            pred: Arc::new(pred),
            what: "a log line that its readiness check accepts".to_owned(),
        })
    }

    /// Ready when a line contains `needle`.
    pub fn line_contains(needle: impl Into<String>) -> Ready {
        let needle = needle.into();
        let what = format!("a log line containing `{needle}`");
        Ready(Kind::Line {
            pred: Arc::new(move |line: &str| line.contains(&needle)),
            what,
        })
    }

    /// Ready when a line matches the regular expression `pattern` (see the `regex-lite`
    /// syntax); an invalid pattern is an error here, not at startup.
    pub fn line_regex(pattern: &str) -> Result<Ready, crate::Error> {
        let re = regex_lite::Regex::new(pattern).map_err(|e| crate::Error::InvalidPattern {
            pattern: pattern.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Ready(Kind::Line {
            pred: Arc::new(move |line: &str| re.is_match(line)),
            what: format!("a log line matching /{pattern}/"),
        }))
    }

    /// Ready when a log line is JSON and makes `pred` true (other lines are skipped).
    pub fn json(pred: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Ready {
        Ready(Kind::Json {
            pred: Arc::new(pred),
            what: "a JSON log line that its check accepts".to_owned(),
        })
    }

    /// Ready when a TCP connection to `127.0.0.1:port` succeeds.
    pub fn tcp(port: u16) -> Ready {
        Ready(Kind::Tcp {
            addr: format!("127.0.0.1:{port}"),
        })
    }

    /// Ready when a TCP connection to `addr` (`host:port`) succeeds.
    pub fn tcp_addr(addr: impl Into<String>) -> Ready {
        Ready(Kind::Tcp { addr: addr.into() })
    }

    /// Ready when an HTTP GET of `url` (plain `http://`) answers with a status below 500
    /// (narrow it with [`Ready::status`], check the body with [`Ready::body`]).
    pub fn http(url: impl Into<String>) -> Ready {
        Ready(Kind::Http(Http {
            url: url.into(),
            status: Arc::new(|s| s < 500),
            body: None,
        }))
    }

    /// For an HTTP check: which statuses count as ready.
    pub fn status(self, pred: impl Fn(u16) -> bool + Send + Sync + 'static) -> Ready {
        match self.0 {
            Kind::Http(h) => Ready(Kind::Http(Http {
                status: Arc::new(pred),
                ..h
            })),
            other => Ready(other),
        }
    }

    /// For an HTTP check: what the body must satisfy.
    pub fn body(self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) -> Ready {
        match self.0 {
            Kind::Http(h) => Ready(Kind::Http(Http {
                body: Some(Arc::new(pred)),
                ..h
            })),
            other => Ready(other),
        }
    }

    /// Ready when this command, run in the service's environment and directory, exits 0
    /// (e.g. `pg_isready`).
    pub fn exec<I, S>(argv: I) -> Ready
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Ready(Kind::Exec {
            argv: argv.into_iter().map(Into::into).collect(),
        })
    }

    /// Ready when this file exists (a relative path is taken from the service's directory),
    /// made or changed by this start: a file left by an earlier one (a pid file, a flag, a
    /// socket of the process a restart stopped) counts once the new process makes it
    /// again, or writes to it.
    pub fn file(path: impl Into<PathBuf>) -> Ready {
        Ready(Kind::File { path: path.into() })
    }

    /// Ready when every one of these is (each counts once it has passed).
    pub fn all(checks: impl IntoIterator<Item = Ready>) -> Ready {
        Ready(Kind::All(checks.into_iter().collect()))
    }

    /// Ready when any one of these is.
    pub fn any(checks: impl IntoIterator<Item = Ready>) -> Ready {
        Ready(Kind::Any(checks.into_iter().collect()))
    }

    /// What a service with this check waits for, for error messages.
    pub(crate) fn describe(&self) -> String {
        match &self.0 {
            Kind::Started => "its process to start".to_owned(),
            Kind::Line { what, .. } | Kind::Json { what, .. } => what.clone(),
            Kind::Tcp { addr } => format!("a TCP connection to {addr}"),
            Kind::Http(h) => format!("an HTTP answer from {}", http::shown(&h.url)),
            Kind::Exec { argv } => format!(
                "`{}` to exit 0",
                argv.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Kind::File { path } => format!("the file `{}`", path.display()),
            Kind::All(v) => format!(
                "all of: {}",
                v.iter().map(Ready::describe).collect::<Vec<_>>().join("; ")
            ),
            Kind::Any(v) => format!(
                "any of: {}",
                v.iter().map(Ready::describe).collect::<Vec<_>>().join("; ")
            ),
        }
    }

    /// The same check with `f` applied to its addresses, URLs, commands and paths (for
    /// port templates).
    pub(crate) fn expand(
        &self,
        f: &dyn Fn(&str) -> Result<String, crate::Error>,
    ) -> Result<Ready, crate::Error> {
        let os = |a: &OsString| -> Result<OsString, crate::Error> {
            match a.to_str() {
                Some(s) => Ok(f(s)?.into()),
                None => Ok(a.clone()),
            }
        };
        Ok(Ready(match &self.0 {
            Kind::Tcp { addr } => Kind::Tcp { addr: f(addr)? },
            Kind::Http(h) => Kind::Http(Http {
                url: f(&h.url)?,
                ..h.clone()
            }),
            Kind::Exec { argv } => Kind::Exec {
                argv: argv.iter().map(os).collect::<Result<_, _>>()?,
            },
            Kind::File { path } => Kind::File {
                path: match path.to_str() {
                    Some(p) => PathBuf::from(f(p)?),
                    None => path.clone(),
                },
            },
            Kind::All(v) => Kind::All(v.iter().map(|r| r.expand(f)).collect::<Result<_, _>>()?),
            Kind::Any(v) => Kind::Any(v.iter().map(|r| r.expand(f)).collect::<Result<_, _>>()?),
            other => other.clone(),
        }))
    }

    /// The check for one start of a service whose directory is `dir`; made before its
    /// process is spawned, as it notes which of its files are there already (see
    /// [`Ready::file`]).
    pub(crate) fn checker(&self, dir: &Path) -> Checker {
        let mut leaves = Vec::new();
        let tree = flatten(self, &mut leaves);
        let passed = vec![false; leaves.len()];
        // Met by the start alone (`started()`, also inside `all` / `any`): nothing to check.
        let done = holds(&tree, &passed);
        let files_before = leaves
            .iter()
            .map(|leaf| match leaf {
                Leaf::Probe(Kind::File { path }) => FileId::of(&dir.join(path)),
                _ => None,
            })
            .collect();
        Checker {
            tree,
            leaves,
            files_before,
            state: Mutex::new(CheckState {
                passed,
                done,
                last_failure: None,
            }),
        }
    }

    /// Whether the process starting is enough (`started()`, alone or in `all` / `any`):
    /// the check holds with none of its other parts passed.
    pub(crate) fn is_immediate(&self) -> bool {
        let mut leaves = Vec::new();
        let tree = flatten(self, &mut leaves);
        holds(&tree, &vec![false; leaves.len()])
    }

    /// Whether a part of this check looks at the service's lines.
    pub(crate) fn reads_lines(&self) -> bool {
        match &self.0 {
            Kind::Line { .. } | Kind::Json { .. } => true,
            Kind::All(v) | Kind::Any(v) => v.iter().any(Ready::reads_lines),
            _ => false,
        }
    }

    /// Why a part of this check can never pass, if one can't: an `any` of nothing, an
    /// HTTP check of a URL it can't ask. Found when the bundle starts, before anything runs.
    pub(crate) fn never_passes(&self) -> Option<String> {
        match &self.0 {
            Kind::Any(v) if v.is_empty() => {
                Some("`Ready::any` of no checks: give it at least one".to_owned())
            }
            Kind::Http(h) if http::Url::parse(&h.url).is_none() => Some(format!(
                "`{}` is not an http:// URL, the only kind an HTTP check can ask \
                 (check its TCP port, or a log line, instead)",
                http::shown(&h.url)
            )),
            Kind::Http(h) if http::unencoded_password(&h.url).is_some() => {
                http::unencoded_password(&h.url)
            }
            Kind::Http(h) => {
                let host = http::Url::parse(&h.url).map_or("", |u| u.host);
                bad_host_port(host, false)
                    .map(|why| format!("the URL `{}` {why}", http::shown(&h.url)))
            }
            Kind::Tcp { addr } => bad_host_port(addr, true)
                .map(|why| format!("the TCP address `{addr}` {why} (give `host:port`)")),
            Kind::Exec { argv } if argv.first().is_none_or(|p| p.is_empty()) => {
                Some("`Ready::exec` of an empty command: name the program to run".to_owned())
            }
            Kind::Exec { argv } if argv.iter().any(|a| has_nul(a)) => Some(
                "`Ready::exec` has an argument holding a NUL byte, which no program can be \
                 given: remove it"
                    .to_owned(),
            ),
            Kind::File { path } if path.as_os_str().is_empty() => {
                Some("`Ready::file` of an empty path: name the file to wait for".to_owned())
            }
            Kind::File { path } if has_nul(path.as_os_str()) => Some(
                "`Ready::file` of a path holding a NUL byte, which no file's path can: \
                 remove it"
                    .to_owned(),
            ),
            // All of them: none may be one that can't pass. Any: only if none can.
            Kind::All(v) => v.iter().find_map(Ready::never_passes),
            Kind::Any(v) => {
                let reasons: Option<Vec<String>> = v.iter().map(Ready::never_passes).collect();
                reasons.map(|r| r.join("; and "))
            }
            _ => None,
        }
    }
}

impl Ready {
    /// The programs of the `exec` probes that must pass for this check to (those not
    /// under an `any`, which may pass without them), for a look before anything starts.
    pub(crate) fn required_programs(&self) -> Vec<&std::ffi::OsStr> {
        match &self.0 {
            Kind::Exec { argv } => argv.first().map(OsString::as_os_str).into_iter().collect(),
            Kind::All(v) => v.iter().flat_map(Ready::required_programs).collect(),
            _ => Vec::new(),
        }
    }
}

/// Whether `text` holds a NUL byte (the kernel takes paths and arguments NUL-terminated).
fn has_nul(text: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    text.as_bytes().contains(&0)
}

/// Why `host:port` (the port optional unless `port_needed`) can never be connected to, if
/// it can't: no host, no port, a port that is not a number from 1 to 65535.
fn bad_host_port(text: &str, port_needed: bool) -> Option<String> {
    // `[::1]:80`: the port is after the bracket.
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => return Some("has a `[` without its `]`".to_owned()),
        },
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() {
        return Some("names no host".to_owned());
    }
    match port {
        None if port_needed => Some("has no port".to_owned()),
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => Some("has port 0, which nothing listens on".to_owned()),
            Ok(_) => None,
            Err(_) => Some(format!(
                "has `{p}` for a port, not a number from 1 to 65535"
            )),
        },
    }
}

impl Default for Ready {
    fn default() -> Ready {
        Ready::started()
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The verdict after new lines or a round of probes.
pub(crate) enum Verdict {
    NotYet,
    Ready,
    Panicked(String),
}

/// The check as a tree over numbered leaves.
enum Node {
    Leaf(usize),
    Always,
    All(Vec<Node>),
    Any(Vec<Node>),
}

enum Leaf {
    Line(LinePredicate),
    Json(JsonPredicate),
    Probe(Kind),
}

fn flatten(ready: &Ready, leaves: &mut Vec<Leaf>) -> Node {
    let mut leaf = |l: Leaf| {
        leaves.push(l);
        Node::Leaf(leaves.len() - 1)
    };
    match &ready.0 {
        Kind::Started => Node::Always,
        Kind::Line { pred, .. } => leaf(Leaf::Line(Arc::clone(pred))),
        Kind::Json { pred, .. } => leaf(Leaf::Json(Arc::clone(pred))),
        Kind::All(v) => Node::All(v.iter().map(|r| flatten(r, leaves)).collect()),
        Kind::Any(v) => Node::Any(v.iter().map(|r| flatten(r, leaves)).collect()),
        probe => leaf(Leaf::Probe(probe.clone())),
    }
}

fn holds(node: &Node, passed: &[bool]) -> bool {
    match node {
        Node::Leaf(i) => passed[*i],
        Node::Always => true,
        Node::All(v) => v.iter().all(|n| holds(n, passed)),
        Node::Any(v) => v.iter().any(|n| holds(n, passed)),
    }
}

struct CheckState {
    passed: Vec<bool>,
    /// The whole check has passed (or panicked): nothing more to look at.
    done: bool,
    last_failure: Option<String>,
}

/// Where probes run: the service's directory, environment and user.
pub(crate) struct ProbeEnv<'a> {
    pub exec: &'a crate::exec::ExecEnv,
    /// No probe may take longer than this.
    pub limit: Duration,
}

/// A `Ready` in use for one run of a service.
pub(crate) struct Checker {
    tree: Node,
    leaves: Vec<Leaf>,
    /// For each file leaf, the file that was there before the start, if one was.
    files_before: Vec<Option<FileId>>,
    state: Mutex<CheckState>,
}

/// Which file is at a path, and as of which change: a file made again or written to since
/// is another. Of the file a symlink there points to, and of the link itself (made again,
/// it may point to the same file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    target: Stamp,
    link: Stamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let target = std::fs::metadata(path).ok()?;
        let link = std::fs::symlink_metadata(path).ok()?;
        Some(FileId {
            target: Stamp::of(&target),
            link: Stamp::of(&link),
        })
    }

    /// Whether this file, the same as one noted before the start, may still have been made
    /// or written by it: on a filesystem whose times are whole seconds (ext2, FAT, some
    /// NFS), a rewrite in the same second as the last one changes nothing we can see —
    /// counted as this start's then (as a file check was before it noted anything), rather
    /// than never.
    fn ambiguous(&self) -> bool {
        [self.target, self.link]
            .iter()
            .all(|s| s.mtime.1 == 0 && s.ctime.1 == 0)
    }
}

impl Checker {
    fn lock(&self) -> MutexGuard<'_, CheckState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a line check still waits (so lines must be shown to it).
    pub(crate) fn is_pending(&self) -> bool {
        let st = self.lock();
        !st.done
            && self
                .leaves
                .iter()
                .enumerate()
                .any(|(i, l)| !st.passed[i] && matches!(l, Leaf::Line(_) | Leaf::Json(_)))
    }

    /// Whether some part of the check is a probe (TCP, HTTP, command, file).
    pub(crate) fn has_probes(&self) -> bool {
        self.leaves.iter().any(|l| matches!(l, Leaf::Probe(_)))
    }

    /// The last probe failure, for a timeout message.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.lock().last_failure.clone()
    }

    fn settle(&self, st: &mut CheckState) -> Verdict {
        if !st.done && holds(&self.tree, &st.passed) {
            st.done = true;
            Verdict::Ready
        } else {
            Verdict::NotYet
        }
    }

    /// Show new lines to the line checks.
    pub(crate) fn check(&self, lines: &[LogLine]) -> Verdict {
        if !self.is_pending() {
            return Verdict::NotYet;
        }
        for line in lines {
            let text = line.text();
            for (i, leaf) in self.leaves.iter().enumerate() {
                if self.lock().passed[i] {
                    continue;
                }
                let hit = match leaf {
                    Leaf::Line(pred) => catch_unwind(AssertUnwindSafe(|| pred(&text))),
                    Leaf::Json(pred) => {
                        catch_unwind(AssertUnwindSafe(|| line.json().is_some_and(|v| pred(&v))))
                    }
                    Leaf::Probe(_) => continue,
                };
                let mut st = self.lock();
                match hit {
                    Ok(false) => {}
                    Ok(true) => {
                        st.passed[i] = true;
                        if let Verdict::Ready = self.settle(&mut st) {
                            return Verdict::Ready;
                        }
                    }
                    Err(payload) => {
                        st.done = true;
                        return Verdict::Panicked(panic_message(&payload));
                    }
                }
            }
        }
        Verdict::NotYet
    }

    /// Try every probe not passed yet, once.
    pub(crate) fn probe(&self, env: &ProbeEnv<'_>) -> Verdict {
        for (i, leaf) in self.leaves.iter().enumerate() {
            let Leaf::Probe(kind) = leaf else { continue };
            if self.lock().passed[i] {
                continue;
            }
            let before = self.files_before.get(i).copied().flatten();
            let result = catch_unwind(AssertUnwindSafe(|| run_probe(kind, env, before)));
            let mut st = self.lock();
            match result {
                Ok(Ok(())) => {
                    st.passed[i] = true;
                    if let Verdict::Ready = self.settle(&mut st) {
                        return Verdict::Ready;
                    }
                }
                Ok(Err(why)) => st.last_failure = Some(why),
                Err(payload) => {
                    st.done = true;
                    return Verdict::Panicked(panic_message(&payload));
                }
            }
        }
        Verdict::NotYet
    }
}

/// One try of probe `kind`; `before`: for a file, the one that was there before the start.
fn run_probe(kind: &Kind, env: &ProbeEnv<'_>, before: Option<FileId>) -> Result<(), String> {
    match kind {
        Kind::Tcp { addr } => connect(addr, env.limit).map(drop),
        Kind::Http(h) => http_get(h, env.limit),
        Kind::Exec { argv } => {
            let sub = crate::subcommand::Subcommand::new(env.exec, argv.clone());
            match sub.output_within(env.limit) {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "`{}` exited with {}{}",
                    sub.describe(),
                    out.status,
                    last_line(&out.stderr_text())
                )),
                Err(e) => Err(e.to_string()),
            }
        }
        Kind::File { path } => {
            let path = env.exec.dir.join(path);
            match FileId::of(&path) {
                None => Err(format!("`{}` does not exist yet", path.display())),
                Some(now) if Some(now) == before && !now.ambiguous() => Err(format!(
                    "`{}` is the one an earlier start left: not made or written by this one yet",
                    path.display()
                )),
                Some(_) => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .last()
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

fn connect(addr: &str, limit: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("can't resolve {addr}: {e}"))?
        .collect();
    let mut last = format!("no address for {addr}");
    for a in addrs {
        match TcpStream::connect_timeout(&a, limit.max(Duration::from_millis(1))) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{e} on {a}"),
        }
    }
    Err(last)
}

fn http_get(h: &Http, limit: Duration) -> Result<(), String> {
    let url = http::shown(&h.url);
    let parts = http::Url::parse(&h.url)
        .ok_or_else(|| format!("only http:// URLs can be checked, not {url}"))?;
    let hostport = parts.host;
    // A port is what follows the last `:`, unless that is inside an IPv6 `[..]`.
    let addr = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let deadline = Instant::now() + limit;
    let mut stream = connect(&addr, limit)?;
    let _ = stream.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ));
    let response = http::get(
        &mut stream,
        hostport,
        &parts.path,
        &parts.authorization().unwrap_or_default(),
        h.body.is_some(),
        deadline,
        limit,
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status;
    if !(h.status)(status) {
        return Err(format!("{url} answered {status}"));
    }
    if let (Some(body_ok), Some(body)) = (&h.body, response.body) {
        if !body_ok(&String::from_utf8_lossy(&body)) {
            return Err(format!(
                "{url} answered {status} with a body its check refused"
            ));
        }
    }
    Ok(())
}
