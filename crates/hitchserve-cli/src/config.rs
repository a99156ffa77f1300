//! `hitchserve.toml`: a bundle defined in a file, for tests in any language.
//!
//! Owns parsing (serde + toml; unknown keys are errors, and every error names the file,
//! line and column) and turning the file into a `hitchserve::Bundle`, and the duration
//! syntax the command line shares (jiff's friendly format, bounded).
//!
//! Invariant: every value is checked while parsing, so that nothing the file says can fail
//! only once some services have started (no NUL byte in any string, no `=` in an env name).
//!
//! A service's restart policy (what to do when it exits unasked):
//!
//! ```toml
//! [services.Worker]
//! command = ["python3", "-u", "worker.py"]
//! restart = "on-failure"      # "never" (the default), "on-failure" (non-zero exit or a
//!                             # signal) or "always" (any exit, also status 0)
//! max_restarts = 3            # needed by on-failure and always: how many restarts at most
//! restart_backoff = "200ms"   # the first wait (default 100ms), doubled each time up to 30s
//! ```
//!
//! Each restart is logged; past `max_restarts` the exit is reported like a crash; services
//! that need it are not restarted. `max_restarts` or `restart_backoff` without a policy that
//! uses them is an error at its line and column, as a kind's option given to another is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hitchserve::jiff::{self, SignedDuration, Span, SpanRelativeTo};
use hitchserve::services::{Chromium, MariaDb, Memcached, Nginx, Postgres, RabbitMq, Redis, Smtp};
use hitchserve::{Bundle, Ready, Restart, Service};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub bundle: BundleConfig,
    #[serde(default)]
    pub services: BTreeMap<Text, ServiceConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    #[serde(default, deserialize_with = "checked_duration")]
    pub startup_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "checked_duration")]
    pub shutdown_timeout: Option<Duration>,
    #[serde(default)]
    pub without_time_travel: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// A ready-made service: one of `KINDS`.
    #[serde(default, deserialize_with = "checked_kind")]
    pub kind: Option<String>,
    /// Cron: how often (of fake time) to run `command`, e.g. `5m`.
    #[serde(default, deserialize_with = "checked_duration")]
    pub every: Option<Duration>,
    pub command: Option<Vec<Text>>,
    pub ready: Option<ReadyConfig>,
    pub directory: Option<Text>,
    #[serde(default)]
    pub env: BTreeMap<EnvKey, Text>,
    #[serde(default)]
    pub needs: Vec<Text>,
    #[serde(default)]
    pub needs_started: Vec<Text>,
    #[serde(default)]
    pub needs_completed: Vec<Text>,
    #[serde(default)]
    pub no_libfaketime: bool,
    #[serde(default)]
    pub ports: Vec<Text>,
    pub user: Option<Text>,
    #[serde(default, deserialize_with = "checked_signal")]
    pub stop_signal: Option<String>,
    /// Postgres, MariaDB, RabbitMQ: users to create.
    #[serde(default)]
    pub users: Vec<PgUser>,
    /// RabbitMQ: vhosts to create (besides `/`).
    #[serde(default)]
    pub vhosts: Vec<Text>,
    /// Postgres, MariaDB: databases to create.
    #[serde(default)]
    pub databases: Vec<PgDatabase>,
    /// MariaDB: the installation to use (default `/usr`).
    pub basedir: Option<Text>,
    /// Postgres: where `initdb`, `postgres` and `psql` are.
    pub bin_dir: Option<Text>,
    /// Redis, memcached, nginx, smtp: the server's binary.
    pub program: Option<Text>,
    /// Memcached: memory for items, in megabytes.
    pub memory_mb: Option<u32>,
    /// Nginx: a reverse proxy to this service's port.
    pub proxy: Option<ProxyTarget>,
    /// Nginx: `server` blocks of your own (a template), inside the generated `http` block.
    pub servers: Option<Text>,
    /// Nginx: a whole `nginx.conf` template of your own (a file, from the project directory).
    pub config_file: Option<Text>,
    /// Chromium: the chromedriver to run (default `/usr/bin/chromedriver`).
    pub driver: Option<Text>,
    /// Chromium: the browser sessions start (default `/usr/bin/chromium`).
    pub browser: Option<Text>,
    /// Chromium: more flags for every session's browser.
    #[serde(default)]
    pub browser_args: Vec<Text>,
    /// What to do when it exits unasked (default `never`).
    pub restart: Option<Spanned<RestartPolicy>>,
    /// `on-failure`, `always`: how many restarts at most.
    pub max_restarts: Option<Spanned<u32>>,
    /// `on-failure`, `always`: the first wait before a restart.
    pub restart_backoff: Option<Spanned<Backoff>>,
}

/// `restart = "never" | "on-failure" | "always"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// A `restart_backoff`: a duration as the file's others are written.
#[derive(Debug, Clone, Copy)]
pub struct Backoff(Duration);

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Backoff, D::Error> {
        let d = checked_duration(d)?.ok_or_else(|| serde::de::Error::custom("no duration"))?;
        Ok(Backoff(d))
    }
}

impl ServiceConfig {
    /// Whether it is started again when it exits unasked.
    pub fn restarts(&self) -> bool {
        self.restart
            .as_ref()
            .is_some_and(|p| *p.get_ref() != RestartPolicy::Never)
    }
}

/// A service's restart policy, checked: an error says what is wrong and where (the byte
/// offset of the key's value in the file, for its line and column).
fn restart_policy(name: &str, s: &ServiceConfig) -> Result<Restart, (String, usize)> {
    let policy = s.restart.as_ref().map(|p| (*p.get_ref(), p.span().start));
    let max = s
        .max_restarts
        .as_ref()
        .map(|m| (*m.get_ref(), m.span().start));
    let backoff = s
        .restart_backoff
        .as_ref()
        .map(|b| (b.get_ref().0, b.span().start));
    let (policy, at) = match policy {
        Some((p @ (RestartPolicy::OnFailure | RestartPolicy::Always), at)) => (p, at),
        other => {
            // Options of a policy that restarts, given without one: a mistake, not a no-op.
            let without = match other {
                Some(_) => "`restart = \"never\"`".to_owned(),
                None => "a service without `restart`".to_owned(),
            };
            let stray = match (max, backoff) {
                (Some((_, at)), _) => Some(("max_restarts", at)),
                (None, Some((_, at))) => Some(("restart_backoff", at)),
                (None, None) => None,
            };
            return match stray {
                Some((key, at)) => Err((
                    format!(
                        "service `{name}`: `{key}` is an option of `restart = \"on-failure\"` \
                         or `\"always\"`, not of {without}"
                    ),
                    at,
                )),
                None => Ok(Restart::Never),
            };
        }
    };
    let max = match max {
        Some((0, at)) => {
            return Err((
                format!(
                    "service `{name}`: `max_restarts` must be 1 or more (`restart = \"never\"` \
                     restarts nothing)"
                ),
                at,
            ))
        }
        Some((n, _)) => n,
        None => {
            return Err((
                format!(
                    "service `{name}`: `restart = \"{}\"` needs `max_restarts`, how many \
                     restarts at most (e.g. `max_restarts = 3`)",
                    policy.name()
                ),
                at,
            ))
        }
    };
    let mut restart = match policy {
        RestartPolicy::Always => Restart::always(max),
        _ => Restart::on_failure(max),
    };
    if let Some((first, _)) = backoff {
        restart = restart.backoff(first);
    }
    Ok(restart)
}

/// Where an nginx service proxies to: `{ service = "App", port = "http" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTarget {
    pub service: Text,
    #[serde(default = "http_port")]
    pub port: Text,
}

fn http_port() -> Text {
    Text("http".to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUser {
    pub name: Text,
    pub password: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDatabase {
    pub name: Text,
    pub owner: Text,
    pub dump: Option<Text>,
}

/// How a service from the file tells it is ready; several keys mean all of them.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadyConfig {
    pub line_contains: Option<Text>,
    pub line_regex: Option<Text>,
    /// `field=value` on a JSON log line, or just `field` (present).
    #[serde(default, deserialize_with = "checked_json_match")]
    pub json: Option<Text>,
    pub tcp: Option<Text>,
    pub http: Option<Text>,
    pub exec: Option<Vec<Text>>,
    pub file: Option<Text>,
}

// Values are checked while parsing, so that a bad one is reported at its line and column,
// and before anything starts.

/// A string from the file. None may hold a NUL byte: no command line, path or environment
/// can carry one, and the OS would refuse it only once other services had started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        let text = String::deserialize(d)?;
        if text.contains('\0') {
            return Err(serde::de::Error::custom(format!(
                "{:?} holds a NUL byte (\\u0000), which no command, path or environment \
                 variable can carry: remove it",
                text
            )));
        }
        Ok(Text(text))
    }
}

/// An environment variable's name: not empty, no `=` (it would end the name), no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvKey(Text);

impl<'de> Deserialize<'de> for EnvKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EnvKey, D::Error> {
        let key = Text::deserialize(d)?;
        if key.0.is_empty() || key.0.contains('=') {
            return Err(serde::de::Error::custom(format!(
                "`{key}` can't be an environment variable's name: a name is not empty and \
                 has no `=`"
            )));
        }
        Ok(EnvKey(key))
    }
}

pub fn strings(texts: &[Text]) -> Vec<String> {
    texts.iter().map(|t| t.0.clone()).collect()
}

/// A string that [`duration`] accepts.
/// A duration as written in the file: a string (`"15s"`), or a bare number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Text(Text),
    Int(i64),
    Float(f64),
}

fn checked_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = match DurationValue::deserialize(d)? {
        DurationValue::Text(text) => text.0,
        DurationValue::Int(n) => n.to_string(),
        DurationValue::Float(f) => f.to_string(),
    };
    duration(&text).map(Some).map_err(serde::de::Error::custom)
}

fn checked_json_match<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Text>, D::Error> {
    let text = Text::deserialize(d)?;
    JsonMatch::parse(text.as_str()).map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

/// The kinds of ready-made service.
const KINDS: [&str; 9] = [
    "postgres",
    "mariadb",
    "rabbitmq",
    "redis",
    "smtp",
    "cron",
    "memcached",
    "nginx",
    "chromium",
];

/// `a, b or c`, for messages.
fn kinds_list() -> String {
    let (last, rest) = KINDS.split_last().unwrap_or((&"", &[]));
    format!("{} or {last}", rest.join(", "))
}

fn checked_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    if !KINDS.contains(&text.as_str()) {
        return Err(serde::de::Error::custom(format!(
            "unknown kind `{text}` ({})",
            kinds_list()
        )));
    }
    Ok(Some(text))
}

fn checked_signal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<hitchserve::Signal>()
        .map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

/// Read and parse a config file; errors carry the file, line and column.
pub fn load(path: &Path) -> Result<Config, String> {
    if path.is_dir() {
        return Err(format!(
            "`{}` is a directory, not a file: give --file the bundle's TOML file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        format!(
            "{}:{line}:{col}: {}",
            path.display(),
            e.message().trim_end()
        )
    })?;
    // Checks across keys, placed as a parse error is.
    for (name, s) in &config.services {
        if let Err((why, at)) = restart_policy(name.as_str(), s) {
            let (line, col) = line_col(&text, at);
            return Err(format!("{}:{line}:{col}: {why}", path.display()));
        }
    }
    Ok(config)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The longest duration accepted anywhere: past it, a timeout or an interval is a typo.
const LONGEST_DAYS: i64 = 36_500;

/// What a duration may look like, for error messages.
const ACCEPTED: &str = "a number and a unit, such as 500ms, 15s, 2m, 1h30m, 2d, 1w or \
                        \"5 minutes\" (a bare number is seconds)";

/// A timeout or an interval: more than zero, at most 100 years. `15s`, `500ms`, `2m`,
/// `1h30m`, `1.5h`, `2d`, `5 minutes`, or a bare number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = signed_duration(text)?;
    if d.is_negative() || d.is_zero() {
        return Err(format!(
            "`{text}` is not a duration: it must be more than 0"
        ));
    }
    Duration::try_from(d).map_err(|e| format!("`{text}` is not a duration: {e}"))
}

/// A length of time that may point back (`-3h`, `3h ago`), as time travel takes; at most
/// 100 years either way.
pub fn signed_duration(text: &str) -> Result<SignedDuration, String> {
    let t = text.trim();
    let bad = |why: &str| format!("`{text}` is not a duration{why}: write {ACCEPTED}");
    // Jiff's friendly format wants a unit; ours has always taken plain seconds.
    let seconds;
    let t = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        seconds = format!("{t}s");
        seconds.as_str()
    } else {
        t
    };
    // Jiff's own words name units (years) and formats (ISO 8601) we don't take here.
    let span: Span = t.parse().map_err(|_: jiff::Error| bad(""))?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(bad(" (months and years have no fixed length)"));
    }
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(&format!(" ({e})")))?;
    if d.abs() > SignedDuration::from_hours(24 * LONGEST_DAYS) {
        return Err(format!(
            "`{text}` is too long: at most {LONGEST_DAYS}d (100 years)"
        ));
    }
    Ok(d)
}

/// A number of seconds from a control request, held to [`signed_duration`]'s bounds.
pub fn from_seconds(secs: f64) -> Result<SignedDuration, String> {
    let longest = SignedDuration::from_hours(24 * LONGEST_DAYS);
    match SignedDuration::try_from_secs_f64(secs) {
        Ok(d) if d.abs() <= longest => Ok(d),
        _ => Err(format!(
            "{secs} s is not a usable length of time: at most {} s either way",
            longest.as_secs()
        )),
    }
}

fn ready(name: &str, r: &ReadyConfig) -> Result<Ready, String> {
    let mut all = Vec::new();
    if let Some(s) = &r.line_contains {
        all.push(Ready::line_contains(s.as_str()));
    }
    if let Some(p) = &r.line_regex {
        all.push(Ready::line_regex(p.as_str()).map_err(|e| format!("service `{name}`: {e}"))?);
    }
    if let Some(j) = &r.json {
        let matcher = JsonMatch::parse(j.as_str()).map_err(|e| format!("service `{name}`: {e}"))?;
        all.push(Ready::json(move |v| matcher.matches(v)));
    }
    if let Some(t) = &r.tcp {
        let addr = if t.as_str().contains(':') {
            t.to_string()
        } else {
            format!("127.0.0.1:{t}")
        };
        all.push(Ready::tcp_addr(addr));
    }
    if let Some(u) = &r.http {
        all.push(Ready::http(u.to_string()));
    }
    if let Some(argv) = &r.exec {
        all.push(Ready::exec(strings(argv)));
    }
    if let Some(f) = &r.file {
        all.push(Ready::file(f.to_path()));
    }
    Ok(match all.len() {
        0 => Ready::started(),
        1 => all.remove(0),
        _ => Ready::all(all),
    })
}

/// `field=value` (the field, a dotted path or a JSON pointer, equals the value: a string,
/// or any JSON) or just `field` (it is present): how the file and `logs --until-json` pick
/// a JSON line.
pub struct JsonMatch {
    pointer: String,
    want: Option<String>,
}

impl JsonMatch {
    pub fn parse(expr: &str) -> Result<JsonMatch, String> {
        let (field, want) = match expr.split_once('=') {
            Some((f, v)) => (f.trim(), Some(v.trim().to_owned())),
            None => (expr.trim(), None),
        };
        // A pointer may name any key; a dotted path can't have an empty step.
        let usable = if field.starts_with('/') {
            true
        } else {
            !field.is_empty() && field.split('.').all(|step| !step.is_empty())
        };
        if !usable {
            return Err(format!(
                "`{expr}` is not a JSON match: write `field=value` or `field`, where the field \
                 is a dotted path (`user.name`) or a JSON pointer (`/user/name`)"
            ));
        }
        Ok(JsonMatch {
            pointer: pointer(field),
            want,
        })
    }

    pub fn matches(&self, v: &serde_json::Value) -> bool {
        match (&self.want, v.pointer(&self.pointer)) {
            (None, found) => found.is_some(),
            (Some(want), Some(serde_json::Value::String(s))) => s == want,
            (Some(want), Some(other)) => {
                serde_json::from_str::<serde_json::Value>(want).is_ok_and(|w| w == *other)
            }
            (Some(_), None) => false,
        }
    }
}

/// `a.b` or `/a/b` as a JSON pointer.
pub fn pointer(field: &str) -> String {
    if field.starts_with('/') {
        field.to_owned()
    } else {
        format!("/{}", field.replace('.', "/"))
    }
}

/// A program given in the file: a path (relative to the project) if it has a `/`, else a
/// name looked up on the service's `PATH`.
fn program(project: &Path, p: &Text) -> PathBuf {
    if p.as_str().contains('/') {
        project.join(p.as_str())
    } else {
        p.to_path()
    }
}

/// Options of one kind of ready-made service given to another are mistakes: say so rather
/// than ignore them.
fn kind_options(name: &str, s: &ServiceConfig) -> Result<(), String> {
    let kind = s.kind.as_deref().unwrap_or("");
    let given: [(&str, bool, &[&str]); 13] = [
        ("bin_dir", s.bin_dir.is_some(), &["postgres"]),
        (
            "users",
            !s.users.is_empty(),
            &["postgres", "mariadb", "rabbitmq"],
        ),
        (
            "databases",
            !s.databases.is_empty(),
            &["postgres", "mariadb"],
        ),
        ("vhosts", !s.vhosts.is_empty(), &["rabbitmq"]),
        ("basedir", s.basedir.is_some(), &["mariadb"]),
        ("driver", s.driver.is_some(), &["chromium"]),
        ("browser", s.browser.is_some(), &["chromium"]),
        ("browser_args", !s.browser_args.is_empty(), &["chromium"]),
        (
            "program",
            s.program.is_some(),
            &["redis", "memcached", "nginx", "smtp"],
        ),
        ("memory_mb", s.memory_mb.is_some(), &["memcached"]),
        ("proxy", s.proxy.is_some(), &["nginx"]),
        ("servers", s.servers.is_some(), &["nginx"]),
        ("config_file", s.config_file.is_some(), &["nginx"]),
    ];
    for (key, present, kinds) in given {
        if present && !kinds.contains(&kind) {
            return Err(format!(
                "service `{name}`: `{key}` is an option of kind {}, not of {}",
                kinds
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                if kind.is_empty() {
                    "a service without a kind".to_owned()
                } else {
                    format!("`{kind}`")
                }
            ));
        }
    }
    Ok(())
}

/// The bundle the file describes, for the project directory `project`.
pub fn bundle(config: &Config, project: &Path) -> Result<Bundle, String> {
    let mut b = Bundle::new(project);
    if let Some(t) = config.bundle.startup_timeout {
        b = b.startup_timeout(t);
    }
    if let Some(t) = config.bundle.shutdown_timeout {
        b = b.shutdown_timeout(t);
    }
    if config.bundle.without_time_travel {
        b = b.without_time_travel();
    }
    for (name, s) in &config.services {
        kind_options(name.as_str(), s)?;
        let mut svc = match s.kind.as_deref() {
            Some("postgres") => {
                let mut pg = Postgres::new();
                for u in &s.users {
                    pg = pg.user(u.name.as_str(), u.password.as_str());
                }
                for d in &s.databases {
                    let (db, owner) = (d.name.as_str(), d.owner.as_str());
                    pg = match &d.dump {
                        Some(dump) => pg.database_from_dump(db, owner, dump.to_path()),
                        None => pg.database(db, owner),
                    };
                }
                if let Some(dir) = &s.bin_dir {
                    pg = pg.bin_dir(project.join(dir.as_str()));
                }
                pg.service().map_err(|e| format!("service `{name}`: {e}"))?
            }
            Some("rabbitmq") => {
                let mut rabbit = RabbitMq::new();
                for v in &s.vhosts {
                    rabbit = rabbit.vhost(v.as_str());
                }
                for u in &s.users {
                    rabbit = rabbit.user(u.name.as_str(), u.password.as_str());
                }
                rabbit
                    .service()
                    .map_err(|e| format!("service `{name}`: {e}"))?
            }
            Some("mariadb") => {
                let mut db = MariaDb::new();
                if let Some(dir) = &s.basedir {
                    db = db.basedir(project.join(dir.as_str()));
                }
                for u in &s.users {
                    db = db.user(u.name.as_str(), u.password.as_str());
                }
                for d in &s.databases {
                    let (name, owner) = (d.name.as_str(), d.owner.as_str());
                    db = match &d.dump {
                        Some(dump) => db.database_from_dump(name, owner, dump.to_path()),
                        None => db.database(name, owner),
                    };
                }
                db.service().map_err(|e| format!("service `{name}`: {e}"))?
            }
            Some("redis") => match &s.program {
                Some(p) => Redis::new().program(program(project, p)),
                None => Redis::new(),
            }
            .service(),
            Some("smtp") => match &s.program {
                Some(p) => Smtp::new().program(program(project, p)),
                None => Smtp::new(),
            }
            .service(),
            Some("memcached") => {
                let mut m = Memcached::new();
                if let Some(p) = &s.program {
                    m = m.program(program(project, p));
                }
                if let Some(mb) = s.memory_mb {
                    m = m.memory_mb(mb);
                }
                m.service()
            }
            Some("nginx") => {
                let mut n = match (&s.proxy, &s.servers, &s.config_file) {
                    (Some(to), None, None) => Nginx::proxy(to.service.as_str(), to.port.as_str()),
                    (None, Some(servers), None) => Nginx::servers(servers.as_str()),
                    (None, None, Some(file)) => {
                        let path = project.join(file.as_str());
                        let text = std::fs::read_to_string(&path).map_err(|e| {
                            format!(
                                "service `{name}`: can't read its `config_file` `{}`: {e}",
                                path.display()
                            )
                        })?;
                        Nginx::config(text)
                    }
                    _ => {
                        return Err(format!(
                            "service `{name}`: an nginx needs one of `proxy` (e.g. \
                             {{ service = \"App\", port = \"http\" }}), `servers` or `config_file`"
                        ))
                    }
                };
                if let Some(p) = &s.program {
                    n = n.program(program(project, p));
                }
                n.service()
            }
            Some("chromium") => {
                let mut c = Chromium::new();
                if let Some(driver) = &s.driver {
                    c = c.driver(program(project, driver));
                }
                if let Some(browser) = &s.browser {
                    c = c.browser(program(project, browser));
                }
                for flag in &s.browser_args {
                    c = c.arg(flag.as_str());
                }
                c.service()
            }
            Some("cron") => {
                let every = s.every.ok_or_else(|| {
                    format!("service `{name}`: a cron needs `every` (e.g. \"5m\")")
                })?;
                let command = s
                    .command
                    .as_deref()
                    .map(strings)
                    .ok_or_else(|| format!("service `{name}`: a cron needs a `command`"))?;
                hitchserve::services::Cron::every(every, command).service()
            }
            Some(other) => {
                return Err(format!(
                    "service `{name}`: unknown kind `{other}` ({})",
                    kinds_list()
                ))
            }
            None => {
                let command = s.command.as_deref().map(strings).ok_or_else(|| {
                    format!("service `{name}` has no `command` (or a `kind` of ready-made service)")
                })?;
                Service::new(command)
            }
        };
        if let Some(r) = &s.ready {
            svc = svc.ready(ready(name.as_str(), r)?);
        }
        if let Some(d) = &s.directory {
            svc = svc.directory(d.to_path());
        }
        svc = svc
            .envs(s.env.iter().map(|(k, v)| (k.0.as_str(), v.as_str())))
            .needs(strings(&s.needs))
            .needs_started(strings(&s.needs_started))
            .needs_completed(strings(&s.needs_completed));
        for p in &s.ports {
            svc = svc.port(p.to_string());
        }
        if s.no_libfaketime {
            svc = svc.no_libfaketime();
        }
        if let Some(u) = &s.user {
            svc = svc.user(u.to_string());
        }
        if let Some(sig) = &s.stop_signal {
            svc = svc.stop_signal(sig.parse().map_err(|e| format!("service `{name}`: {e}"))?);
        }
        svc = svc.restart(restart_policy(name.as_str(), s).map_err(|(why, _)| why)?);
        b.add(name.to_string(), svc).map_err(|e| e.to_string())?;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(duration("1w").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(duration("5 minutes").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("+30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(duration("5m3").is_err());
        let err = duration("3 fortnights").unwrap_err();
        assert!(
            err.contains("not a duration") && err.contains("15s"),
            "{err}"
        );
    }

    #[test]
    fn absurd_durations_are_errors_that_say_what_is_accepted() {
        for text in [
            "inf",
            "1e300",
            "",
            " ",
            "-5",
            "+",
            "+nan",
            "nan",
            "-3h",
            "0",
            "0s",
            "1 month",
            "2 years",
            "1.5d",
            "99999999999h",
            "100000d",
            "1..2",
            "10000000000000000000s",
        ] {
            let err = duration(text).unwrap_err();
            assert!(err.contains(&format!("`{text}`")), "{text:?}: {err}");
            assert!(
                err.contains("e.g.")
                    || err.contains("such as")
                    || err.contains("more than 0")
                    || err.contains("at most"),
                "{text:?}: {err}"
            );
        }
        // Time travel may go back, and no further than a timeout may.
        assert_eq!(
            signed_duration("-3h").unwrap(),
            SignedDuration::from_hours(-3)
        );
        assert_eq!(
            signed_duration("3h ago").unwrap(),
            SignedDuration::from_hours(-3)
        );
        for text in ["inf", "1e300", "", "-5", "+", "+nan", "-", "-100000d"] {
            assert!(signed_duration(text).is_err(), "{text:?}");
        }
        for secs in [f64::INFINITY, f64::NAN, -1e300, 1e300, 4e9] {
            assert!(from_seconds(secs).is_err(), "{secs}");
        }
        assert_eq!(
            from_seconds(-1.5).unwrap(),
            SignedDuration::from_millis(-1500)
        );
    }

    #[test]
    fn options_of_the_new_kinds_given_to_another_are_errors() {
        for (toml, key) in [
            ("[services.C]\nkind = \"memcached\"\nusers = [{ name = \"a\", password = \"b\" }]\n", "users"),
            ("[services.C]\nkind = \"redis\"\nvhosts = [\"v\"]\n", "vhosts"),
            ("[services.C]\nkind = \"postgres\"\ndriver = \"x\"\n", "driver"),
            ("[services.C]\ncommand = [\"true\"]\nbasedir = \"/usr\"\n", "basedir"),
        ] {
            let cfg: Config = toml::from_str(toml).unwrap();
            let (name, svc) = cfg.services.iter().next().unwrap();
            let err = kind_options(name.as_str(), svc).unwrap_err();
            assert!(err.contains(&format!("`{key}` is an option of kind")), "{err}");
        }
    }

    #[test]
    fn a_bare_number_in_the_file_is_seconds() {
        for (toml, secs) in [("15", 15.0), ("2.5", 2.5), ("\"15\"", 15.0)] {
            let cfg: Config =
                toml::from_str(&format!("[bundle]\nstartup_timeout = {toml}\n")).unwrap();
            assert_eq!(
                cfg.bundle.startup_timeout,
                Some(Duration::from_secs_f64(secs))
            );
        }
        for bad in ["0", "-5", "1e300", "nan", "inf"] {
            let err = toml::from_str::<Config>(&format!("[bundle]\nstartup_timeout = {bad}\n"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn json_matches_need_a_field() {
        for bad in ["", "=", "=x", "a..b", ".a", "a.", "  "] {
            let err = JsonMatch::parse(bad).err().unwrap_or_default();
            assert!(err.contains("not a JSON match"), "{bad:?}: {err}");
        }
        let m = JsonMatch::parse("user.name=ann").unwrap();
        assert!(m.matches(&serde_json::json!({"user": {"name": "ann"}})));
        assert!(
            JsonMatch::parse("/a/").is_ok(),
            "a pointer may name an empty key"
        );
    }

    #[test]
    fn rabbitmq_kind_takes_users_and_vhosts() {
        let dir = std::env::temp_dir().join(format!("hs-cfg-rmq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hitchserve.toml");
        std::fs::write(
            &f,
            "[services.Rabbit]\nkind = \"rabbitmq\"\nvhosts = [\"orders\"]\n\
             [[services.Rabbit.users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let config = load(&f).unwrap();
        let rabbit = &config.services.values().next().unwrap();
        assert_eq!(rabbit.vhosts.len(), 1);
        assert_eq!(rabbit.users.len(), 1);
        // Built, not started (needs rabbitmq-server installed, as CI has it).
        let bundle = bundle(&config, &dir).unwrap();
        assert_eq!(bundle.service_names(), ["Rabbit"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_line_and_column() {
        let dir = std::env::temp_dir().join(format!("hs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hitchserve.toml");
        std::fs::write(&f, "[services.App]\ncommand = [\"true\"]\nneeds = 3\n").unwrap();
        let e = load(&f).unwrap_err();
        assert!(e.contains("hitchserve.toml:3:9"), "{e}");
        std::fs::write(&f, "[services.App]\ncomand = [\"true\"]\n").unwrap();
        let e = load(&f).unwrap_err();
        assert!(e.contains(":2:1") && e.contains("comand"), "{e}");
        // Bad values, not only bad types, are placed.
        for (toml, place, words) in [
            (
                "[bundle]\nstartup_timeout = \"soon\"\n",
                ":2:19",
                "not a duration",
            ),
            (
                "[services.C]\nkind = \"cron\"\nevery = \"5 fortnights\"\n",
                ":3:9",
                "`5 fortnights` is not a duration: write a number and a unit",
            ),
            (
                "[services.D]\nkind = \"mysql\"\n",
                ":2:8",
                "unknown kind `mysql`",
            ),
            (
                "[services.A]\ncommand = [\"true\"]\nstop_signal = \"SIGFOO\"\n",
                ":3:15",
                "SIGFOO",
            ),
        ] {
            std::fs::write(&f, toml).unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.contains(place) && e.contains(words), "{toml}: {e}");
        }
    }

    #[test]
    fn restart_policies_and_their_mistakes_name_line_and_column() {
        let dir = std::env::temp_dir().join(format!("hs-cfg-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hitchserve.toml");
        let head = "[services.W]\ncommand = [\"true\"]\n";
        for (keys, policy) in [
            ("", Restart::Never),
            ("restart = \"never\"\n", Restart::Never),
            (
                "restart = \"on-failure\"\nmax_restarts = 3\nrestart_backoff = \"200ms\"\n",
                Restart::on_failure(3).backoff(Duration::from_millis(200)),
            ),
            (
                "restart = \"always\"\nmax_restarts = 2\n",
                Restart::always(2),
            ),
            (
                "restart = \"always\"\nmax_restarts = 1\nrestart_backoff = 2\n",
                Restart::always(1).backoff(Duration::from_secs(2)),
            ),
        ] {
            std::fs::write(&f, format!("{head}{keys}")).unwrap();
            let config = load(&f).unwrap_or_else(|e| panic!("{keys}: {e}"));
            let (name, svc) = config.services.iter().next().unwrap();
            assert_eq!(
                restart_policy(name.as_str(), svc).unwrap(),
                policy,
                "{keys}"
            );
            bundle(&config, &dir).unwrap();
        }
        for (keys, place, words) in [
            (
                "restart = \"sometimes\"\n",
                ":3:11",
                "unknown variant `sometimes`",
            ),
            (
                "max_restarts = 3\n",
                ":3:16",
                "not of a service without `restart`",
            ),
            (
                "restart = \"never\"\nrestart_backoff = \"1s\"\n",
                ":4:19",
                "`restart_backoff` is an option of `restart = \"on-failure\"`",
            ),
            (
                "restart = \"on-failure\"\n",
                ":3:11",
                "`restart = \"on-failure\"` needs `max_restarts`",
            ),
            (
                "restart = \"always\"\nmax_restarts = 0\n",
                ":4:16",
                "must be 1 or more",
            ),
            ("restart = \"always\"\nmax_restarts = -1\n", ":4:16", ""),
            (
                "restart = \"always\"\nmax_restarts = 3\nrestart_backoff = \"soon\"\n",
                ":5:19",
                "`soon` is not a duration",
            ),
        ] {
            std::fs::write(&f, format!("{head}{keys}")).unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.contains(place) && e.contains(words), "{keys}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_chromium_kind_takes_its_driver_browser_and_flags() {
        let dir = std::env::temp_dir().join(format!("hs-cfg-chromium-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hitchserve.toml");
        std::fs::write(
            &f,
            "[services.Browser]\nkind = \"chromium\"\ndriver = \"/usr/bin/chromedriver\"\n\
             browser = \"/usr/lib/chromium/chromium\"\nbrowser_args = [\"--window-size=800,600\"]\n",
        )
        .unwrap();
        let config = load(&f).unwrap();
        let b = bundle(&config, &dir).unwrap();
        assert_eq!(b.service_names(), ["Browser"]);
        std::fs::write(
            &f,
            "[services.B]\nkind = \"chromium\"\nbrowser_args = \"--x\"\n",
        )
        .unwrap();
        let e = load(&f).unwrap_err();
        assert!(e.contains(":3:16"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod kinds {
    use super::*;

    fn parse(toml: &str) -> Result<Bundle, String> {
        let cfg: Config = toml::from_str(toml).map_err(|e| e.to_string())?;
        bundle(&cfg, &std::env::temp_dir())
    }

    #[test]
    fn memcached_and_nginx_kinds_take_their_options() {
        let b = parse(
            "[services.App]\ncommand = [\"true\"]\nports = [\"web\"]\n\
             [services.Cache]\nkind = \"memcached\"\nmemory_mb = 8\nprogram = \"/usr/bin/memcached\"\n\
             [services.Proxy]\nkind = \"nginx\"\nproxy = { service = \"App\", port = \"web\" }\n\
             [services.Own]\nkind = \"nginx\"\nservers = \"server { listen 127.0.0.1:{port.http}; }\"\n\
             [services.Pg]\nkind = \"postgres\"\nbin_dir = \"/usr/lib/postgresql/15/bin\"\n\
             [services.Redis]\nkind = \"redis\"\nprogram = \"redis-server\"\n",
        )
        .unwrap();
        assert_eq!(
            b.service_names(),
            vec!["App", "Cache", "Own", "Pg", "Proxy", "Redis"]
        );
    }

    #[test]
    fn options_of_another_kind_and_a_bare_nginx_are_errors() {
        for (toml, words) in [
            (
                "[services.R]\nkind = \"redis\"\nbin_dir = \"/x\"\n",
                "`bin_dir` is an option of kind `postgres`, not of `redis`",
            ),
            (
                "[services.A]\ncommand = [\"true\"]\nprogram = \"x\"\n",
                "not of a service without a kind",
            ),
            (
                "[services.N]\nkind = \"nginx\"\n",
                "an nginx needs one of `proxy`",
            ),
            (
                "[services.N]\nkind = \"nginx\"\nservers = \"\"\nconfig_file = \"n.conf\"\n",
                "an nginx needs one of `proxy`",
            ),
            (
                "[services.N]\nkind = \"nginx\"\nconfig_file = \"no-such-nginx.conf\"\n",
                "can't read its `config_file`",
            ),
        ] {
            let e = parse(toml).unwrap_err();
            assert!(e.contains(words), "{toml}: {e}");
        }
        let e: String = toml::from_str::<Config>("[services.D]\nkind = \"mysql\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memcached") && e.contains("nginx"), "{e}");
    }
}

#[cfg(test)]
mod readme {
    /// The README's `hitchserve.toml` example must parse and describe a valid bundle.
    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let end = start + readme[start..].find("```").expect("its end");
        let cfg: super::Config = toml::from_str(&readme[start..end]).unwrap();
        assert_eq!(cfg.services.len(), 2);
        let dir = std::env::temp_dir();
        let bundle = super::bundle(&cfg, &dir).unwrap();
        assert_eq!(bundle.service_names(), vec!["App", "Postgres"]);
    }
}
