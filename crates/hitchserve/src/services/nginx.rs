//! nginx (Debian's `nginx-light` 1.22 or `nginx`) as a reverse proxy in front of an app
//! service, or serving a configuration of your own, on a free port on 127.0.0.1.
//!
//! Owns the configuration it generates: a template (with `{port.http}`,
//! `{App.port.http}`, `{run}`, `{service}`) filled in by the bundle and written by the
//! setup hook to `<run>/<Name>/nginx.conf`. nginx runs in the foreground (`daemon off`) with
//! `<run>/<Name>/` as its prefix (`-p`): its pid file, temporary directories and access log
//! are there, its error log is its stderr (`-e stderr`), so nothing goes to `/var/lib/nginx`,
//! `/run` or `/var/log`. Run as root, it runs as `www-data` (a proxy on a high port needs no
//! root master process); it stops on SIGTERM, nginx's fast shutdown (a test bundle has no
//! client worth waiting for; SIGQUIT would wait for open requests).
//!
//! Invariant: the template reaches the setup hook through the service's environment
//! (`HITCHSERVE_NGINX_CONF`), the one place the bundle fills in port templates; the file
//! is created anew (never through a link someone planted).
//!
//! nginx runs with fake time: its `Date` headers and logs follow the bundle's clock. Its
//! timeouts run on the monotonic clock, which time travel never moves.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::Service;

/// The name of nginx's port (see [`Service::port`]).
pub const PORT: &str = "http";

/// The environment variable that carries the filled-in configuration to the setup hook.
pub const CONF_ENV: &str = "HITCHSERVE_NGINX_CONF";

/// What goes in the main context of every configuration nginx is given here, except a
/// whole one of your own ([`Nginx::config`]), which must say the same: in the foreground,
/// its pid file and temporary directories relative to the prefix (the run directory).
pub const MAIN_DIRECTIVES: &str = "daemon off;
pid nginx.pid;
error_log stderr notice;
worker_processes 1;
events { worker_connections 256; }
";

/// Directives for the `http` block of every configuration nginx is given here, except a
/// whole one of your own.
pub const HTTP_DIRECTIVES: &str = "access_log access.log;
client_body_temp_path client_body_temp;
proxy_temp_path proxy_temp;
fastcgi_temp_path fastcgi_temp;
uwsgi_temp_path uwsgi_temp;
scgi_temp_path scgi_temp;
";

/// An nginx to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::Nginx, Bundle, Ready, Service};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("App", Service::new(["python3", "-m", "http.server", "{port.http}"])
///     .port("http")
///     .ready(Ready::tcp_addr("127.0.0.1:{port.http}")))?;
/// bundle.add("Proxy", Nginx::proxy("App", "http").service())?;
/// bundle.startup()?;
/// let proxy = Nginx::handle(&bundle, "Proxy")?;
/// println!("the app behind nginx: {}", proxy.url());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Nginx {
    program: PathBuf,
    config: Config,
    needs: Vec<String>,
    os_user: Option<String>,
}

#[derive(Debug, Clone)]
enum Config {
    /// `server` (and `upstream`, `map`, ...) blocks inside our `http` block.
    Servers(String),
    /// A whole `nginx.conf`.
    Whole(String),
}

impl Nginx {
    /// A reverse proxy on its own free port (`{port.http}`) to the port `port` of the
    /// service `service` (which it needs: it starts once that one is ready), passing the
    /// request's `Host` and the usual `X-Forwarded-*` headers.
    pub fn proxy(service: &str, port: &str) -> Nginx {
        let servers = format!(
            "server {{
    listen 127.0.0.1:{{port.http}};
    location / {{
        proxy_pass http://127.0.0.1:{{{service}.port.{port}}};
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
    }}
}}
"
        );
        Nginx {
            needs: vec![service.to_owned()],
            ..Nginx::servers(servers)
        }
    }

    /// Your own `server` blocks (and `upstream`s, `map`s, ...), placed in an `http` block
    /// that already has [`HTTP_DIRECTIVES`]: a template, so listen on
    /// `127.0.0.1:{port.http}` and reach other services at `{Other.port.NAME}`. Add what it
    /// proxies to with [`Nginx::needs`].
    pub fn servers(template: impl Into<String>) -> Nginx {
        Nginx {
            program: PathBuf::from("nginx"),
            config: Config::Servers(template.into()),
            needs: Vec::new(),
            os_user: None,
        }
    }

    /// A whole `nginx.conf` of your own, a template like [`Nginx::servers`]'. nginx is
    /// still started with `<run>/<Name>/` as its prefix, so relative paths land there; it
    /// must have [`MAIN_DIRECTIVES`] (or the same in its own words: `daemon off;`, a pid
    /// file and temporary paths nginx's user may write) and listen on `{port.http}`.
    pub fn config(template: impl Into<String>) -> Nginx {
        Nginx {
            config: Config::Whole(template.into()),
            ..Nginx::servers("")
        }
    }

    /// Start only once these services are ready (those a custom configuration proxies to).
    pub fn needs<I, S>(mut self, names: I) -> Nginx
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.needs.extend(names.into_iter().map(Into::into));
        self
    }

    /// The `nginx` binary to run (default: `nginx` on the service's `PATH`; Debian has it
    /// in `/usr/sbin`).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Nginx {
        self.program = path.into();
        self
    }

    /// The operating-system user to run as (default when run as root: `www-data`).
    pub fn os_user(mut self, name: &str) -> Nginx {
        self.os_user = Some(name.to_owned());
        self
    }

    /// The configuration template this nginx will be given (before the bundle fills in
    /// its ports).
    pub fn template(&self) -> String {
        match &self.config {
            Config::Whole(text) => text.clone(),
            Config::Servers(servers) => {
                format!("{MAIN_DIRECTIVES}http {{\n{HTTP_DIRECTIVES}\n{servers}\n}}\n")
            }
        }
    }

    /// The service to add to a bundle.
    pub fn service(self) -> Service {
        self.unmarked().made_by("Nginx")
    }

    /// `service`, before it is marked as a Nginx (for `handle`).
    fn unmarked(self) -> Service {
        let template = self.template();
        let mut svc = Service::new([
            self.program.into_os_string(),
            "-p".into(),
            "{run}/{service}/".into(),
            "-e".into(),
            "stderr".into(),
            "-c".into(),
            "{run}/{service}/nginx.conf".into(),
        ])
        .port(PORT)
        .env(CONF_ENV, template)
        .needs(self.needs)
        .ready(Ready::tcp_addr("127.0.0.1:{port.http}"))
        .setup(|ctx| {
            let dir = ctx.run_dir().join(ctx.service());
            ctx.make_dir(&dir)?;
            let conf = ctx.env_var(CONF_ENV).unwrap_or_default();
            let path = dir.join("nginx.conf");
            // The last start's (a restart with its setup hook) goes first: unlinked, never
            // followed. create_new: O_EXCL, so a link planted at this path meanwhile is an
            // error, not followed.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
            })
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|source| Error::Io {
                context: format!(
                    "service `{}`: writing nginx's configuration `{}`",
                    ctx.service(),
                    path.display()
                ),
                source,
            })?;
            Ok(())
        });
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        if let Some(user) = self.os_user.or_else(|| root.then(|| "www-data".to_owned())) {
            svc = svc.user(user);
        }
        svc
    }

    /// What a test uses of the running nginx named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<NginxHandle> {
        let service = super::kind::service_of_kind(bundle, name, "Nginx")?;
        Ok(NginxHandle {
            port: bundle.port(name, PORT)?,
            service,
        })
    }
}

/// A running nginx, from [`Nginx::handle`].
#[derive(Debug, Clone)]
pub struct NginxHandle {
    port: u16,
    service: ServiceHandle,
}

impl NginxHandle {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}
