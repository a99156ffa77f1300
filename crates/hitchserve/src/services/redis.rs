//! Redis (`redis-server` from Debian's `redis-server` package): on a free port, in memory
//! only, ready when it says so and answers on its port. Time travel reaches it: `TIME` moves
//! with the bundle's clock, and a key's TTL runs out on a jump.

use std::path::PathBuf;

use crate::bundle::Bundle;
use crate::error::Result;
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::Service;
use crate::subcommand::Subcommand;

/// The name of Redis's port (see [`Service::port`]).
pub const PORT: &str = "redis";

/// A Redis server to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::Redis, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("Redis", Redis::new().service())?;
/// bundle.startup()?;
/// let redis = Redis::handle(&bundle, "Redis")?;
/// redis.cli(["SET", "greeting", "hello"]).run()?;
/// assert_eq!(redis.cli(["GET", "greeting"]).output()?.stdout_text().trim(), "hello");
/// println!("connect with {}", redis.url());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Redis {
    program: PathBuf,
    args: Vec<String>,
    os_user: Option<String>,
}

impl Default for Redis {
    fn default() -> Redis {
        Redis {
            program: PathBuf::from("redis-server"),
            args: Vec::new(),
            os_user: None,
        }
    }
}

impl Redis {
    /// Redis with its defaults: a free port on 127.0.0.1, no persistence.
    pub fn new() -> Redis {
        Redis::default()
    }

    /// The `redis-server` binary to run (default: `redis-server` on the service's `PATH`),
    /// e.g. another version's.
    pub fn program(mut self, path: impl Into<PathBuf>) -> Redis {
        self.program = path.into();
        self
    }

    /// Pass a configuration directive, e.g. `.config("maxmemory", "10mb")`.
    pub fn config(mut self, key: &str, value: &str) -> Redis {
        self.args.push(format!("--{key}"));
        self.args.push(value.to_owned());
        self
    }

    /// The operating-system user to run as (default: the test's own). Under root, `redis`
    /// keeps a server any local user can reach on its port from running as root; it must
    /// then be able to reach the project directory (not one in a private home such as
    /// `/root`). Either way it works in its own private `<run>/<Name>/` (a `SAVE` writes
    /// there; relative paths of `config(..)` are inside it) unless `config("dir", ..)`
    /// names another.
    pub fn os_user(mut self, name: &str) -> Redis {
        self.os_user = Some(name.to_owned());
        self
    }

    /// The service to add to a bundle.
    pub fn service(self) -> Service {
        self.unmarked().made_by("Redis")
    }

    /// `service`, before it is marked as a Redis (for `handle`).
    fn unmarked(self) -> Service {
        // Not another user by default: that user would need to reach the project, which a
        // project in `/root` doesn't let it (a review found the switch broke those).
        let run_as = self.os_user;
        let mut argv: Vec<std::ffi::OsString> = vec![self.program.into_os_string()];
        argv.extend(
            [
                "--port",
                "{port.redis}",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]
            .iter()
            .map(Into::into),
        );
        let own_dir = self.args.iter().any(|a| a == "--dir");
        argv.extend(self.args.into_iter().map(Into::into));
        if !own_dir {
            // Redis works in a directory of its own, private to the user it runs as: a
            // `SAVE` (or `BGSAVE`, `CONFIG REWRITE`) asked of it — by anyone who can reach
            // its port, as any local user can — writes there, never into the project
            // (under root, a root-owned `dump.rdb` of their making). Relative paths in
            // `config(..)` are inside it.
            argv.extend(["--dir", "{run}/{service}"].iter().map(Into::into));
        }
        let mut svc = Service::new(argv).port(PORT).ready(Ready::all([
            Ready::line_contains("Ready to accept connections"),
            Ready::tcp_addr("127.0.0.1:{port.redis}"),
        ]));
        if !own_dir {
            // Private to the user it runs as: one run as another user (`os_user`, or a
            // `user` given to the service) has it already, made for that user.
            svc = svc.setup(|ctx| {
                let dir = ctx.run_dir().join(ctx.service());
                crate::safepath::make_dir_for(&dir, 0o700, ctx.run_as())?;
                Ok(())
            });
        }
        // Time travel reaches it (our shim: libfaketime, used before, made Debian's
        // jemalloc-built server fail or hang): a key's TTL runs out on a jump.
        match run_as {
            Some(user) => svc.user(user),
            None => svc,
        }
    }

    /// What a test uses of the running Redis named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<RedisHandle> {
        let service = super::kind::service_of_kind(bundle, name, "Redis")?;
        Ok(RedisHandle {
            port: bundle.port(name, PORT)?,
            service,
        })
    }
}

/// A running Redis, from [`Redis::handle`].
#[derive(Debug, Clone)]
pub struct RedisHandle {
    port: u16,
    service: ServiceHandle,
}

impl RedisHandle {
    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against it, as a sub-command (run it, or take its output).
    pub fn cli<I, S>(&self, args: I) -> Subcommand
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.service
            .subcommand(["redis-cli", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}
