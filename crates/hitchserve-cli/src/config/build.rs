//! Turning a parsed, checked file into a `hitchserve::Bundle`: each service from its
//! command or its kind, with its readiness, environment, dependencies, ports, user, stop
//! signal and restart policy.
//!
//! Owns the mapping from the file's keys to the library's builders, and nothing else: it
//! starts nothing. Invariant: everything the file says is given to the bundle, or is an
//! error here, before any service starts.

use std::path::{Path, PathBuf};

use hitchserve::services::{Chromium, MariaDb, Memcached, Nginx, Postgres, RabbitMq, Redis, Smtp};
use hitchserve::{Bundle, Ready, Service};

use super::check::{kind_options, restart_policy};
use super::json_match::JsonMatch;
use super::kinds::kinds_list;
use super::schema::{Config, ReadyConfig};
use super::text::{strings, Text};

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
        // (Checked as the file is read; a config built another way is checked here.)
        if let Some(problem) = super::schema::tcp_problem(t.as_str()) {
            return Err(format!("service `{name}`: {problem}"));
        }
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

/// A program given in the file: a path (relative to the project) if it has a `/`, else a
/// name looked up on the service's `PATH`.
fn program(project: &Path, p: &Text) -> PathBuf {
    if p.as_str().contains('/') {
        project.join(p.as_str())
    } else {
        p.to_path()
    }
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
                pg.service().map_err(|e| made_as(name.as_str(), e))?
            }
            Some("rabbitmq") => {
                let mut rabbit = RabbitMq::new();
                for v in &s.vhosts {
                    rabbit = rabbit.vhost(v.as_str());
                }
                for u in &s.users {
                    rabbit = rabbit.user(u.name.as_str(), u.password.as_str());
                }
                rabbit.service().map_err(|e| made_as(name.as_str(), e))?
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
                db.service().map_err(|e| made_as(name.as_str(), e))?
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
                            "service `{name}`: an nginx needs exactly one of `proxy` (e.g. \
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
        for (i, p) in s.ports.iter().enumerate() {
            // Twice in one list is a slip (a copied line): said, not silently one port.
            if s.ports[..i].iter().any(|q| q.as_str() == p.as_str()) {
                return Err(format!(
                    "service `{name}`: port `{p}` is listed twice in `ports`: name each port once"
                ));
            }
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

/// An error of a ready-made kind's builder, said of service `name`: the builder doesn't know
/// the name yet and says the kind's (`service `mariadb`: ...`), which goes.
fn made_as(name: &str, e: hitchserve::Error) -> String {
    let text = e.to_string();
    let said = text
        .strip_prefix("service `")
        .and_then(|rest| rest.split_once("`: "))
        .map_or(text.as_str(), |(_, said)| said);
    format!("service `{name}`: {said}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load;

    #[test]
    fn rabbitmq_kind_takes_users_and_vhosts() {
        let dir = crate::config::test_dir("rmq");
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

    /// A `tcp` that is no port and a `line_regex` that is no regex are said at their line
    /// and column, as the file is read (they were said after it, naming the service only).
    #[test]
    fn bad_ready_values_are_said_at_their_line_and_column() {
        let dir = crate::config::test_dir("ready-values");
        let f = dir.join("hitchserve.toml");
        for (ready, said) in [
            (
                "{ tcp = \"notaport\" }",
                ":3:17: `ready = { tcp = \"notaport\" }` is not a port",
            ),
            (
                "{ line_regex = \"(\" }",
                ":3:24: `line_regex = \"(\"` is not a regex",
            ),
            (
                "{ tcp = 70000 }",
                ":3:17: `ready = { tcp = \"70000\" }` is not a port",
            ),
            ("{ tcp = true }", "expected a port number"),
            // Not a table: what to write instead.
            (
                "\"READY\"",
                ":3:9: `ready` is a table of checks: write `ready = { line_contains = \"READY\" }`",
            ),
            ("5", "expected a table of checks"),
        ] {
            std::fs::write(
                &f,
                format!("[services.A]\ncommand = [\"true\"]\nready = {ready}\n"),
            )
            .unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.contains(said), "{e}");
        }
        // A port is also a number, as the error asks for.
        std::fs::write(
            &f,
            "[services.A]\ncommand = [\"true\"]\nready = { tcp = 18765 }\n",
        )
        .unwrap();
        let config = load(&f).unwrap();
        assert!(bundle(&config, &dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `user` on a kind whose data belongs to the user it is made for is refused, in the
    /// file's terms; a builder's error names the service once, by its name in the file.
    #[test]
    fn user_on_a_postgres_or_mariadb_kind_is_refused_in_the_files_terms() {
        let dir = crate::config::test_dir("kind-user");
        let f = dir.join("hitchserve.toml");
        for kind in ["postgres", "mariadb"] {
            std::fs::write(
                &f,
                format!("[services.Db]\nkind = \"{kind}\"\nuser = \"nobody\"\n"),
            )
            .unwrap();
            let e = crate::in_file_terms(&bundle(&load(&f).unwrap(), &dir).unwrap_err());
            assert!(
                e.starts_with("service `Db`: ") && e.ends_with("remove its `user`"),
                "{e}"
            );
        }
        std::fs::write(
            &f,
            "[services.Db]\nkind = \"mariadb\"\nbasedir = \"/nonexistent\"\n",
        )
        .unwrap();
        let e = crate::in_file_terms(&bundle(&load(&f).unwrap(), &dir).unwrap_err());
        assert!(
            e.starts_with("service `Db`: `mariadbd` is not installed"),
            "{e}"
        );
        assert!(e.contains("its `basedir`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_chromium_kind_takes_its_driver_browser_and_flags() {
        let dir = crate::config::test_dir("chromium");
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
        bundle(&cfg, &crate::config::test_dir("parse"))
    }

    #[test]
    fn a_port_listed_twice_is_an_error() {
        let e = parse("[services.App]\ncommand = [\"true\"]\nports = [\"http\", \"http\"]\n")
            .unwrap_err();
        assert!(e.contains("port `http` is listed twice"), "{e}");
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
                "an nginx needs exactly one of `proxy`",
            ),
            // (They were accepted, and waited out the startup timeout.)
            (
                "[services.A]\ncommand = [\"true\"]\nready = { tcp = \"abc\" }\n",
                "`ready = { tcp = \"abc\" }` is not a port",
            ),
            (
                "[services.A]\ncommand = [\"true\"]\nready = { tcp = \"localhost:0\" }\n",
                "is not a port",
            ),
            (
                "[services.N]\nkind = \"nginx\"\nservers = \"\"\nconfig_file = \"n.conf\"\n",
                "an nginx needs exactly one of `proxy`",
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
        let readme = include_str!("../../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let end = start + readme[start..].find("```").expect("its end");
        let cfg: super::Config = toml::from_str(&readme[start..end]).unwrap();
        assert_eq!(cfg.services.len(), 2);
        let dir = crate::config::test_dir("readme");
        let bundle = super::bundle(&cfg, &dir).unwrap();
        assert_eq!(bundle.service_names(), vec!["App", "Postgres"]);
    }
}
