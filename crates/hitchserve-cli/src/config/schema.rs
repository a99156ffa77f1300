//! The shape of `hitchserve.toml`: the serde types a file parses into, with each value
//! checked as it is parsed (durations, kinds, signals, JSON matches, strings).
//!
//! Owns what a file may say, one key at a time; checks across keys are in `check`, reading
//! and placing errors in `load`. Invariant: unknown keys are errors (`deny_unknown_fields`
//! on every table), so that a misspelt key is never silently ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::checked_duration;
use super::json_match::JsonMatch;
use super::kinds::checked_kind;
use super::text::{EnvKey, Text};

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
    #[serde(default, deserialize_with = "ready_table")]
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
    pub(super) fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// A `restart_backoff`: a duration as the file's others are written.
#[derive(Debug, Clone, Copy)]
pub struct Backoff(pub(super) Duration);

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Backoff, D::Error> {
        let d = checked_duration(d)?.ok_or_else(|| serde::de::Error::custom("no duration"))?;
        Ok(Backoff(d))
    }
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
    #[serde(default, deserialize_with = "checked_regex")]
    pub line_regex: Option<Text>,
    /// `field=value` on a JSON log line, or just `field` (present).
    #[serde(default, deserialize_with = "checked_json_match")]
    pub json: Option<Text>,
    #[serde(default, deserialize_with = "checked_tcp")]
    pub tcp: Option<Text>,
    pub http: Option<Text>,
    pub exec: Option<Vec<Text>>,
    pub file: Option<Text>,
}

/// Why `ready = { tcp = .. }` can never be connected to, if it can't: a port, or
/// host:port, the port a number or a template (anything else waited out the startup
/// timeout).
pub fn tcp_problem(t: &str) -> Option<String> {
    let port = t.rsplit(':').next().unwrap_or_default();
    (!port.contains('{') && !port.parse::<u16>().is_ok_and(|p| p > 0)).then(|| {
        format!(
            "`ready = {{ tcp = \"{t}\" }}` is not a port: give a port number, \"{{port.NAME}}\", \
             or host:port"
        )
    })
}

/// `ready` is a table; a plain value (`ready = "READY"`) is refused with what to write.
fn ready_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ReadyConfig>, D::Error> {
    struct Table;
    impl<'de> serde::de::Visitor<'de> for Table {
        type Value = ReadyConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of checks")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ReadyConfig, A::Error> {
            ReadyConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ReadyConfig, E> {
            Err(E::custom(format!(
                "`ready` is a table of checks: write `ready = {{ line_contains = {text:?} }}` \
                 (or line_regex, json, tcp, http, exec, file)"
            )))
        }
    }
    d.deserialize_any(Table).map(Some)
}

fn checked_tcp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Text>, D::Error> {
    /// A port as a number (`tcp = 5432`) or any text (`"5432"`, `"{port.db}"`, host:port).
    struct PortOrText;
    impl serde::de::Visitor<'_> for PortOrText {
        type Value = Text;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a port number, \"{port.NAME}\" or \"host:port\"")
        }
        fn visit_i64<E: serde::de::Error>(self, port: i64) -> Result<Text, E> {
            Ok(Text(port.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, port: u64) -> Result<Text, E> {
            Ok(Text(port.to_string()))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text, E> {
            Text::checked(text.to_owned()).map_err(E::custom)
        }
    }
    let text = d.deserialize_any(PortOrText)?;
    match tcp_problem(text.as_str()) {
        Some(problem) => Err(serde::de::Error::custom(problem)),
        None => Ok(Some(text)),
    }
}

fn checked_regex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Text>, D::Error> {
    let text = Text::deserialize(d)?;
    regex_lite::Regex::new(text.as_str()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`line_regex = {:?}` is not a regex: {e}",
            text.as_str()
        ))
    })?;
    Ok(Some(text))
}

fn checked_json_match<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Text>, D::Error> {
    let text = Text::deserialize(d)?;
    JsonMatch::parse(text.as_str()).map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

fn checked_signal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<hitchserve::Signal>()
        .map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
