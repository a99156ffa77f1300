//! `hitchserve.toml`: a bundle defined in a file, for tests in any language.
//!
//! Owns parsing (serde + toml; unknown keys are errors, and every error names the file,
//! line and column) and turning the file into a `hitchserve::Bundle`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hitchserve::services::{Postgres, Redis, Smtp};
use hitchserve::{Bundle, Ready, Service};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub bundle: BundleConfig,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    #[serde(default, deserialize_with = "checked_duration")]
    pub startup_timeout: Option<String>,
    #[serde(default, deserialize_with = "checked_duration")]
    pub shutdown_timeout: Option<String>,
    #[serde(default)]
    pub without_time_travel: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// A ready-made service: `postgres`, `redis`, `smtp` or `cron`.
    #[serde(default, deserialize_with = "checked_kind")]
    pub kind: Option<String>,
    /// Cron: how often (of fake time) to run `command`, e.g. `5m`.
    #[serde(default, deserialize_with = "checked_duration")]
    pub every: Option<String>,
    pub command: Option<Vec<String>>,
    pub ready: Option<ReadyConfig>,
    pub directory: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub needs_started: Vec<String>,
    #[serde(default)]
    pub needs_completed: Vec<String>,
    #[serde(default)]
    pub no_libfaketime: bool,
    #[serde(default)]
    pub ports: Vec<String>,
    pub user: Option<String>,
    #[serde(default, deserialize_with = "checked_signal")]
    pub stop_signal: Option<String>,
    /// Postgres: users to create.
    #[serde(default)]
    pub users: Vec<PgUser>,
    /// Postgres: databases to create.
    #[serde(default)]
    pub databases: Vec<PgDatabase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUser {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDatabase {
    pub name: String,
    pub owner: String,
    pub dump: Option<PathBuf>,
}

/// How a service from the file tells it is ready; several keys mean all of them.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadyConfig {
    pub line_contains: Option<String>,
    pub line_regex: Option<String>,
    /// `field=value` on a JSON log line, or just `field` (present).
    pub json: Option<String>,
    pub tcp: Option<String>,
    pub http: Option<String>,
    pub exec: Option<Vec<String>>,
    pub file: Option<PathBuf>,
}

// Values are checked while parsing, so that a bad one is reported at its line and column.

/// A string that [`duration`] accepts.
fn checked_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    duration(&text).map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

/// The kinds of ready-made service.
const KINDS: [&str; 4] = ["postgres", "redis", "smtp", "cron"];

fn checked_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    if !KINDS.contains(&text.as_str()) {
        return Err(serde::de::Error::custom(format!(
            "unknown kind `{text}` (postgres, redis, smtp or cron)"
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
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        format!(
            "{}:{line}:{col}: {}",
            path.display(),
            e.message().trim_end()
        )
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `15s`, `500ms`, `2m`, `1h30m`, or a bare number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Ok(Duration::from_secs_f64(secs.max(0.0)));
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (try 15s, 500ms, 2m, 1h30m, 2d)"))?;
        number.clear();
        total += n * match unit.as_str() {
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h, d)")),
        };
    }
    if !number.is_empty() {
        return Err(format!("`{text}`: a number without a unit at the end"));
    }
    Ok(Duration::from_secs_f64(total))
}

fn ready(name: &str, r: &ReadyConfig) -> Result<Ready, String> {
    let mut all = Vec::new();
    if let Some(s) = &r.line_contains {
        all.push(Ready::line_contains(s.clone()));
    }
    if let Some(p) = &r.line_regex {
        all.push(Ready::line_regex(p).map_err(|e| format!("service `{name}`: {e}"))?);
    }
    if let Some(j) = &r.json {
        let matcher = JsonMatch::parse(j);
        all.push(Ready::json(move |v| matcher.matches(v)));
    }
    if let Some(t) = &r.tcp {
        let addr = if t.contains(':') {
            t.clone()
        } else {
            format!("127.0.0.1:{t}")
        };
        all.push(Ready::tcp_addr(addr));
    }
    if let Some(u) = &r.http {
        all.push(Ready::http(u.clone()));
    }
    if let Some(argv) = &r.exec {
        all.push(Ready::exec(argv.clone()));
    }
    if let Some(f) = &r.file {
        all.push(Ready::file(f.clone()));
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
    pub fn parse(expr: &str) -> JsonMatch {
        match expr.split_once('=') {
            Some((f, v)) => JsonMatch {
                pointer: pointer(f.trim()),
                want: Some(v.trim().to_owned()),
            },
            None => JsonMatch {
                pointer: pointer(expr.trim()),
                want: None,
            },
        }
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

/// The bundle the file describes, for the project directory `project`.
pub fn bundle(config: &Config, project: &Path) -> Result<Bundle, String> {
    let mut b = Bundle::new(project);
    if let Some(t) = &config.bundle.startup_timeout {
        b = b.startup_timeout(duration(t)?);
    }
    if let Some(t) = &config.bundle.shutdown_timeout {
        b = b.shutdown_timeout(duration(t)?);
    }
    if config.bundle.without_time_travel {
        b = b.without_time_travel();
    }
    for (name, s) in &config.services {
        let mut svc = match s.kind.as_deref() {
            Some("postgres") => {
                let mut pg = Postgres::new();
                for u in &s.users {
                    pg = pg.user(&u.name, &u.password);
                }
                for d in &s.databases {
                    pg = match &d.dump {
                        Some(dump) => pg.database_from_dump(&d.name, &d.owner, dump.clone()),
                        None => pg.database(&d.name, &d.owner),
                    };
                }
                pg.service().map_err(|e| format!("service `{name}`: {e}"))?
            }
            Some("redis") => Redis::new().service(),
            Some("smtp") => Smtp::new().service(),
            Some("cron") => {
                let every = s.every.as_deref().ok_or_else(|| {
                    format!("service `{name}`: a cron needs `every` (e.g. \"5m\")")
                })?;
                let command = s
                    .command
                    .clone()
                    .ok_or_else(|| format!("service `{name}`: a cron needs a `command`"))?;
                hitchserve::services::Cron::every(duration(every)?, command).service()
            }
            Some(other) => {
                return Err(format!(
                    "service `{name}`: unknown kind `{other}` (postgres, redis, smtp or cron)"
                ))
            }
            None => {
                let command = s.command.clone().ok_or_else(|| {
                    format!("service `{name}` has no `command` (or a `kind` of ready-made service)")
                })?;
                Service::new(command)
            }
        };
        if let Some(r) = &s.ready {
            svc = svc.ready(ready(name, r)?);
        }
        if let Some(d) = &s.directory {
            svc = svc.directory(d.clone());
        }
        svc = svc
            .envs(s.env.clone())
            .needs(s.needs.clone())
            .needs_started(s.needs_started.clone())
            .needs_completed(s.needs_completed.clone());
        for p in &s.ports {
            svc = svc.port(p.clone());
        }
        if s.no_libfaketime {
            svc = svc.no_libfaketime();
        }
        if let Some(u) = &s.user {
            svc = svc.user(u.clone());
        }
        if let Some(sig) = &s.stop_signal {
            svc = svc.stop_signal(sig.parse().map_err(|e| format!("service `{name}`: {e}"))?);
        }
        b.add(name.clone(), svc).map_err(|e| e.to_string())?;
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
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("5 minutes").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        let err = duration("3 weeks").unwrap_err();
        assert!(err.contains("unknown unit `weeks`"), "{err}");
        assert!(duration("5m3").is_err());
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
                "unknown unit `fortnights`",
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
