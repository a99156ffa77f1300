//! RabbitMQ (Debian's `rabbitmq-server`, an Erlang node): a fresh node per run, its data,
//! config, logs and Erlang cookie in `<run>/<Name>/`, the AMQP port on 127.0.0.1, users and
//! vhosts declared at boot, and `rabbitmqctl` pointed at this node only.
//!
//! Run as root, it runs as the `rabbitmq` user (Debian's package creates it); otherwise as
//! the current user. It is ready when it says "Server startup complete" and accepts
//! connections on its AMQP port.
//!
//! epmd: an Erlang node registers with `epmd`, which the VM normally starts as a daemon that
//! outlives it (and is shared by every node of the machine on port 4369). Here each run has
//! its own `epmd`, on a free port (`ERL_EPMD_PORT`) on 127.0.0.1, started by the service's
//! command in the service's own process group — so it stops with the node — and
//! `-start_epmd false` (in `ERL_FLAGS`, which the server, RabbitMQ's own epmd check and
//! every `rabbitmqctl` read) so no Erlang program of the run starts a daemon of its own. The
//! node's name is unique per run too (it carries the run's AMQP port, which no two running
//! bundles share, and a random part), and its distribution port (`RABBITMQ_DIST_PORT`) is
//! a free one on 127.0.0.1.
//!
//! Who may connect: no default user (`guest`) exists — users and vhosts come from a
//! definitions file loaded at boot (0600, in the service's private directory, removed once
//! the node is ready), so there is no moment when a well-known password lets a local user
//! in. `rabbitmqctl` reaches the node through Erlang distribution with a cookie made for the
//! run (`<run>/<Name>/.erlang.cookie`, 0400, the server's user's), never shared.
//!
//! Time travel does not reach it (checked with Erlang/OTP 25 and libfaketime 0.9.10): with
//! every clock faked the VM aborts at once ("OS monotonic time stepped backwards"); with
//! hitchserve's clock (wall clock faked, monotonic real) it boots and `os:system_time`
//! jumps, but `erlang:system_time` — the clock Erlang code and RabbitMQ itself use — does
//! not follow a jump, even with `+C multi_time_warp`. A node with two clocks that disagree
//! would be worse than one on real time, so it keeps real time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::Service;
use crate::subcommand::Subcommand;

/// The name of the AMQP port (see [`Service::port`]).
pub const PORT: &str = "amqp";

/// The name of the Erlang distribution port (`rabbitmqctl` talks to the node through it).
pub const DIST_PORT: &str = "dist";

/// The name of the run's own `epmd` port.
pub const EPMD_PORT: &str = "epmd";

/// The name of the management plugin's HTTP port (see [`RabbitMq::management`]).
pub const MANAGEMENT_PORT: &str = "management";

/// Where Debian's package keeps the real scripts (`/usr/sbin`'s wrappers `su` to
/// `rabbitmq` and send the server's output to `/var/log`).
const DEBIAN_BIN: &str = "/usr/lib/rabbitmq/bin";

/// Environment variables of the service that its handle reads back.
const HOME_VAR: &str = "HITCHSERVE_RABBITMQ_HOME";
const BIN_VAR: &str = "HITCHSERVE_RABBITMQ_BIN";

/// Starts the run's own epmd in the service's process group, waits (bounded) until it
/// answers — RabbitMQ checks epmd early in its boot and fails without one — then becomes
/// the server. `HOME` is where Erlang looks for the cookie (also set in the service's
/// environment, for commands run in it).
const START: &str = r#"epmd &
i=0
until epmd -names >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 400 ]; then
        echo "epmd did not answer on 127.0.0.1:$ERL_EPMD_PORT" >&2
        exit 1
    fi
    sleep 0.05
done
export HOME="$HITCHSERVE_RABBITMQ_HOME"
exec "$HITCHSERVE_RABBITMQ_BIN/rabbitmq-server"
"#;

/// A RabbitMQ server to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::RabbitMq, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("RabbitMq", RabbitMq::new()
///     .vhost("app")
///     .user("app", "secret")
///     .service()?)?;
/// bundle.startup()?;
/// let rabbit = RabbitMq::handle(&bundle, "RabbitMq")?;
/// rabbit.rabbitmqctl(["list_queues", "-p", "app"]).run()?;
/// println!("AMQP_URL={}", rabbit.amqp_url("app", "secret", "app"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RabbitMq {
    users: Vec<User>,
    vhosts: Vec<String>,
    bin_dir: Option<PathBuf>,
    os_user: Option<String>,
    management: bool,
}

impl RabbitMq {
    /// A node with the vhost `/` and no user at all (not even `guest`).
    pub fn new() -> RabbitMq {
        RabbitMq::default()
    }

    /// Create this user (with this password) at boot, with every permission on every vhost.
    pub fn user(mut self, name: &str, password: &str) -> RabbitMq {
        self.users.push(User {
            name: name.to_owned(),
            password: password.to_owned(),
            administrator: false,
        });
        self
    }

    /// Like [`RabbitMq::user`], tagged `administrator` (what the management API asks for).
    pub fn administrator(mut self, name: &str, password: &str) -> RabbitMq {
        self.users.push(User {
            name: name.to_owned(),
            password: password.to_owned(),
            administrator: true,
        });
        self
    }

    /// Create this vhost at boot (`/` always exists).
    pub fn vhost(mut self, name: &str) -> RabbitMq {
        if name != "/" && !self.vhosts.iter().any(|v| v == name) {
            self.vhosts.push(name.to_owned());
        }
        self
    }

    /// Also run the management plugin (its HTTP API and UI) on a free port on 127.0.0.1,
    /// [`MANAGEMENT_PORT`]; log in as a user made with [`RabbitMq::administrator`]. It adds
    /// little to startup but about 5 s to a graceful stop (the plugin's own wait, measured
    /// with epmd alive or not): give the bundle a `shutdown_timeout` above that, or the node
    /// is killed at the default 5 s (harmless here: its data belongs to the run) with a warning.
    pub fn management(mut self) -> RabbitMq {
        self.management = true;
        self
    }

    /// Where `rabbitmq-server` and `rabbitmqctl` are (default: Debian's
    /// `/usr/lib/rabbitmq/bin`).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> RabbitMq {
        self.bin_dir = Some(dir.into());
        self
    }

    /// The operating-system user to run as (default: `rabbitmq` when run as root).
    pub fn os_user(mut self, name: &str) -> RabbitMq {
        self.os_user = Some(name.to_owned());
        self
    }

    /// The service to add to a bundle. An error if RabbitMQ's scripts can't be found.
    pub fn service(self) -> Result<Service> {
        self.unmarked().map(|s| s.made_by("RabbitMq"))
    }

    /// `service`, before it is marked as a RabbitMq (for `handle`).
    fn unmarked(self) -> Result<Service> {
        let bin = self.bin_dir.clone().unwrap_or_else(|| DEBIAN_BIN.into());
        if !bin.join("rabbitmq-server").is_file() || !bin.join("rabbitmqctl").is_file() {
            return Err(Error::CommandNotFound {
                service: "rabbitmq".into(),
                program: "rabbitmq-server".into(),
                searched: format!(
                    "in `{}`: install rabbitmq-server, or use RabbitMq::bin_dir",
                    bin.display()
                ),
            });
        }
        let dir = "{run}/{service}";
        let node = format!(
            "hitchserve-{{port.amqp}}-{}@localhost",
            crate::safepath::random_name()
        );
        // Distribution (rabbitmqctl's way in) on 127.0.0.1 only.
        let mut erl_args = String::from("-kernel inet_dist_use_interface {127,0,0,1}");
        let mut svc = Service::new(["sh", "-c", START, "rabbitmq-server"])
            .port(PORT)
            .port(DIST_PORT)
            .port(EPMD_PORT)
            .env(HOME_VAR, dir)
            // Where Erlang finds the cookie: for the server, and for a command run in its
            // environment (`hitchserve exec Rabbit -- rabbitmqctl ...`), whose `rabbitmqctl`
            // is the server's own (first on `PATH`; the node is `RABBITMQ_NODENAME`).
            .env("HOME", dir)
            .env("PATH", on_path_first(&bin))
            .env(BIN_VAR, bin.as_os_str())
            .env("RABBITMQ_NODENAME", node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", "{port.amqp}")
            .env("RABBITMQ_DIST_PORT", "{port.dist}")
            .env("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{dir}/log"))
            .env("RABBITMQ_CONFIG_FILE", format!("{dir}/rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                format!("{dir}/advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{dir}/enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", format!("{dir}/rabbitmq.pid"))
            // Not in the project's directory (the service's working directory).
            .env("ERL_CRASH_DUMP", format!("{dir}/erl_crash.dump"))
            // Not a regular file: the machine's /etc/rabbitmq/rabbitmq-env.conf is not read.
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            // rabbitmqctl: connect out only; listening would take a port of a fixed range.
            .env("RABBITMQ_CTL_ERL_ARGS", "-dist_listen false")
            .env("ERL_EPMD_PORT", "{port.epmd}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-start_epmd false");
        if self.management {
            svc = svc.port(MANAGEMENT_PORT);
            erl_args.push_str(
                " -rabbitmq_management tcp_config [{ip,\"127.0.0.1\"},{port,{port.management}}]",
            );
        }
        svc = svc
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", erl_args)
            .ready(Ready::all([
                Ready::line_contains("Server startup complete"),
                Ready::tcp_addr("127.0.0.1:{port.amqp}"),
            ]))
            // Erlang's own clock does not follow time travel (see the module header).
            .no_libfaketime();
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        if let Some(user) = self
            .os_user
            .clone()
            .or_else(|| root.then(|| "rabbitmq".into()))
        {
            svc = svc.user(user);
        }
        let definitions = definitions(&self.users, &self.vhosts);
        let plugins = if self.management {
            "[rabbitmq_management].\n"
        } else {
            "[].\n"
        };
        Ok(svc
            .setup(move |ctx| {
                let dir = ctx.run_dir().join(ctx.service());
                // Run again (`start(setup)`): a fresh node, as at first (its files are made
                // anew, never over old ones).
                if std::fs::symlink_metadata(&dir).is_ok() {
                    std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                        context: format!("removing the old `{}`", dir.display()),
                        source,
                    })?;
                }
                crate::safepath::make_dir_for(&dir, 0o700, ctx.run_as())?;
                let owner = ctx.run_as();
                // A cookie for this run only: whoever holds it controls the node.
                let cookie = format!(
                    "{}{}{}{}",
                    crate::safepath::random_name(),
                    crate::safepath::random_name(),
                    crate::safepath::random_name(),
                    crate::safepath::random_name()
                );
                write_private(&dir.join(".erlang.cookie"), cookie.as_bytes(), 0o400, owner)?;
                let defs_path = dir.join("definitions.json");
                write_private(&defs_path, definitions.as_bytes(), 0o600, owner)?;
                let conf = format!("{CONF}load_definitions = {}\n", defs_path.display());
                write_private(&dir.join("rabbitmq.conf"), conf.as_bytes(), 0o600, owner)?;
                write_private(
                    &dir.join("enabled_plugins"),
                    plugins.as_bytes(),
                    0o600,
                    owner,
                )?;
                Ok(())
            })
            .poststart(|ctx| {
                let dir = ctx.run_dir().join(ctx.service());
                let defs = dir.join("definitions.json");
                if std::fs::symlink_metadata(&defs).is_err() {
                    // A start again without setup: its node keeps them.
                    return Ok(());
                }
                // Loaded at boot, and kept by the node: the passwords need not stay on disk,
                // and a start again must not look for them (its boot failed).
                let conf = dir.join("rabbitmq.conf");
                let fresh = dir.join("rabbitmq.conf.new");
                write_private(&fresh, CONF.as_bytes(), 0o600, ctx.run_as())?;
                std::fs::rename(&fresh, &conf).map_err(|source| Error::Io {
                    context: format!("replacing `{}`", conf.display()),
                    source,
                })?;
                std::fs::remove_file(&defs).map_err(|source| Error::Io {
                    context: format!("removing `{}`", defs.display()),
                    source,
                })?;
                ctx.log("users and vhosts loaded at boot");
                Ok(())
            }))
    }

    /// What a test uses of the running RabbitMQ named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<RabbitMqHandle> {
        let service = super::kind::service_of_kind(bundle, name, "RabbitMq")?;
        let var = |key: &str| service.env_var(key).unwrap_or_default();
        Ok(RabbitMqHandle {
            port: bundle.port(name, PORT)?,
            management_port: bundle.port(name, MANAGEMENT_PORT).ok(),
            node: var("RABBITMQ_NODENAME"),
            home: PathBuf::from(var(HOME_VAR)),
            bin: PathBuf::from(var(BIN_VAR)),
            service,
        })
    }
}

/// A user to create at boot.
#[derive(Debug, Clone)]
struct User {
    name: String,
    password: String,
    administrator: bool,
}

/// The definitions file: vhosts, users, and every user's permissions on every vhost.
fn definitions(users: &[User], vhosts: &[String]) -> String {
    let vhosts: Vec<&str> = std::iter::once("/")
        .chain(vhosts.iter().map(String::as_str))
        .collect();
    let permissions: Vec<serde_json::Value> = users
        .iter()
        .flat_map(|user| {
            vhosts.iter().map(move |vhost| {
                serde_json::json!({
                    "user": user.name, "vhost": vhost,
                    "configure": ".*", "write": ".*", "read": ".*",
                })
            })
        })
        .collect();
    serde_json::json!({
        "vhosts": vhosts.iter().map(|v| serde_json::json!({"name": v})).collect::<Vec<_>>(),
        "users": users
            .iter()
            .map(|u| {
                let tags = if u.administrator { "administrator" } else { "" };
                serde_json::json!({"name": u.name, "password": u.password, "tags": tags})
            })
            .collect::<Vec<_>>(),
        "permissions": permissions,
    })
    .to_string()
}

/// `PATH` (the test's) with `dir` first.
fn on_path_first(dir: &Path) -> std::ffi::OsString {
    let mut path = dir.as_os_str().to_owned();
    if let Some(rest) = std::env::var_os("PATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(rest);
    }
    path
}

/// The server's configuration, but for where its first boot loads users and vhosts from.
const CONF: &str = "log.console = true\nlog.console.level = info\n\
                    log.console.use_colors = off\nlog.file = false\n";

/// Create `path` (never through a symlink, never an existing file) with `mode`, owned by
/// the server's user.
fn write_private(path: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let io = |source| Error::Io {
        context: format!("writing `{}`", path.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(())
}

/// Percent-encode a URL component (everything but RFC 3986's unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A running RabbitMQ, from [`RabbitMq::handle`].
#[derive(Debug, Clone)]
pub struct RabbitMqHandle {
    port: u16,
    management_port: Option<u16>,
    node: String,
    home: PathBuf,
    bin: PathBuf,
    service: ServiceHandle,
}

impl RabbitMqHandle {
    /// Its AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The management plugin's HTTP port, if [`RabbitMq::management`] asked for it.
    pub fn management_port(&self) -> Option<u16> {
        self.management_port
    }

    /// The Erlang node's name (`hitchserve-PORT-RANDOM@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `amqp://127.0.0.1:PORT` (no user: add one with [`RabbitMqHandle::amqp_url`]).
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// `amqp://USER:PASSWORD@127.0.0.1:PORT/VHOST`, each part percent-encoded (the vhost
    /// `/` is `%2F`).
    pub fn amqp_url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{}",
            encode(user),
            encode(password),
            self.port,
            encode(vhost)
        )
    }

    /// `rabbitmqctl -n NODE ARGS` against this node, as a sub-command (it runs as the
    /// server's user, with the run's cookie).
    pub fn rabbitmqctl<I, S>(&self, args: I) -> Subcommand
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.service
            .subcommand([self.bin.join("rabbitmqctl").as_os_str()])
            .env("HOME", self.home.as_os_str())
            .args(["-n", self.node.as_str()])
            .args(args)
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_users_passwords_and_vhosts() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("a b:c@d"), "a%20b%3Ac%40d");
        assert_eq!(encode("plain-1.2_x~"), "plain-1.2_x~");
    }

    #[test]
    fn every_user_gets_every_vhost_and_slash_always_exists() {
        let app = RabbitMq::new()
            .user("app", "p\"w")
            .administrator("boss", "x");
        let defs: serde_json::Value =
            serde_json::from_str(&definitions(&app.users, &["v1".into()])).unwrap();
        assert_eq!(defs["vhosts"].as_array().unwrap().len(), 2);
        assert_eq!(defs["users"][0]["password"], "p\"w");
        assert_eq!(defs["users"][0]["tags"], "");
        assert_eq!(defs["users"][1]["tags"], "administrator");
        assert_eq!(defs["permissions"].as_array().unwrap().len(), 4);
    }
}
