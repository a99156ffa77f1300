//! Checks across a service's keys, which no single value's parse can make: its restart
//! policy with its options, and options of one kind of ready-made service given to another.
//!
//! Owns the rules and their words; `load` places a restart policy's error at its line and
//! column, `build` runs both before it builds a service. Invariant: an option that would be
//! ignored is an error, never a no-op.

use hitchserve::Restart;

use super::schema::{RestartPolicy, ServiceConfig};

/// A service's restart policy, checked: an error says what is wrong and where (the byte
/// offset of the key's value in the file, for its line and column).
pub(super) fn restart_policy(name: &str, s: &ServiceConfig) -> Result<Restart, (String, usize)> {
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

/// Options of one kind of ready-made service given to another are mistakes: say so rather
/// than ignore them.
pub(super) fn kind_options(name: &str, s: &ServiceConfig) -> Result<(), String> {
    let kind = s.kind.as_deref().unwrap_or("");
    // A ready-made server runs its own program; only a cron runs the command it is given.
    if s.command.is_some() && !kind.is_empty() && kind != "cron" {
        return Err(format!(
            "service `{name}`: `command` is not an option of kind `{kind}`, which runs its \
             own server: remove `command`, or remove `kind` to run your own command"
        ));
    }
    let given: [(&str, bool, &[&str]); 14] = [
        ("every", s.every.is_some(), &["cron"]),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::build::bundle;
    use crate::config::load::load;
    use crate::config::schema::Config;

    #[test]
    fn options_of_the_new_kinds_given_to_another_are_errors() {
        for (toml, key) in [
            ("[services.C]\nkind = \"memcached\"\nusers = [{ name = \"a\", password = \"b\" }]\n", "users"),
            ("[services.C]\nkind = \"redis\"\nvhosts = [\"v\"]\n", "vhosts"),
            ("[services.C]\nkind = \"postgres\"\ndriver = \"x\"\n", "driver"),
            ("[services.C]\ncommand = [\"true\"]\nbasedir = \"/usr\"\n", "basedir"),
            // (It was ignored: a service with an `every` ran once.)
            ("[services.C]\ncommand = [\"true\"]\nevery = \"5m\"\n", "every"),
            ("[services.C]\nkind = \"redis\"\nevery = \"5m\"\n", "every"),
        ] {
            let cfg: Config = toml::from_str(toml).unwrap();
            let (name, svc) = cfg.services.iter().next().unwrap();
            let err = kind_options(name.as_str(), svc).unwrap_err();
            assert!(err.contains(&format!("`{key}` is an option of kind")), "{err}");
        }
    }

    #[test]
    fn a_command_given_to_a_ready_made_server_is_an_error() {
        let cfg: Config =
            toml::from_str("[services.R]\nkind = \"redis\"\ncommand = [\"sleep\", \"100\"]\n")
                .unwrap();
        let (name, svc) = cfg.services.iter().next().unwrap();
        let err = kind_options(name.as_str(), svc).unwrap_err();
        assert!(
            err.contains("`command` is not an option of kind `redis`"),
            "{err}"
        );
        let cron: Config =
            toml::from_str("[services.C]\nkind = \"cron\"\nevery = \"1h\"\ncommand = [\"true\"]\n")
                .unwrap();
        let (name, svc) = cron.services.iter().next().unwrap();
        assert!(kind_options(name.as_str(), svc).is_ok());
    }

    #[test]
    fn restart_policies_and_their_mistakes_name_line_and_column() {
        let dir = crate::config::test_dir("restart");
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
}
