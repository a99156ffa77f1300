//! MariaDB (Debian's `mariadb-server`, or another installation given by its base directory):
//! a fresh data directory per run, copied from a template made once with
//! `mariadb-install-db`, on a free port, with users, databases and SQL files created in the
//! poststart hook. Trimmed for tests: no name resolution, a small buffer pool, no
//! performance schema, no binary log, no durability (`flush_log_at_trx_commit=0`).
//!
//! Run as root, the server runs as the `mysql` user (Debian's server package creates it);
//! otherwise as the current user. It works with time travel: `select now()` follows the
//! bundle's clock.
//!
//! Who may connect: the admin (a MariaDB account named after the server's OS user,
//! authenticated by `unix_socket`: only that OS user may log in as it; likewise `root` for the
//! OS root) only through the server's Unix socket, in a directory private to that OS user
//! (0700, under a random name in our per-user temporary directory, short enough for a socket
//! path); over TCP on 127.0.0.1, which every local user can reach, only the users made with
//! [`MariaDb::user`], which have passwords. Passwords go to the client's stdin, never its
//! command line, and a failing statement is not echoed by the client nor logged by the server.

use std::path::{Path, PathBuf};

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::Service;
use crate::subcommand::Subcommand;

/// The name of MariaDB's port (see [`Service::port`]).
pub const PORT: &str = "mariadb";

/// Where the service keeps the admin's name, for [`MariaDb::handle`].
const ADMIN_VAR: &str = "HITCHSERVE_MARIADB_ADMIN";
/// Where the service keeps the client's path, for [`MariaDb::handle`].
const CLIENT_VAR: &str = "HITCHSERVE_MARIADB_CLIENT";

/// Server options for a disposable test server; the template is made with the same ones, so
/// that no file has to be resized when a copy starts.
const TRIMMED: [&str; 13] = [
    "--skip-name-resolve",
    // Fewer tables kept open: less memory, and no warning about the open files limit.
    "--table-open-cache=400",
    "--performance-schema=OFF",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
    // Each commit's log reaches the kernel (flushed to disk once a second): a commit
    // survives a kill of the server (a test's crash), as it does a real one (0 lost the last
    // second of commits to a kill).
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    // Many servers at once would run out of the kernel's AIO contexts; tests don't need it.
    "--innodb-use-native-aio=0",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
];

/// A MariaDB server to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::MariaDb, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("MariaDb", MariaDb::new()
///     .user("app", "secret")
///     .database("app", "app")
///     .service()?)?;
/// bundle.startup()?;
/// let db = MariaDb::handle(&bundle, "MariaDb")?;
/// db.mysql("app", "CREATE TABLE t (x int)").run()?;
/// println!("DATABASE_URL={}", db.connection_url("app", "secret", "app"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MariaDb {
    users: Vec<(String, String)>,
    databases: Vec<(String, String, Option<PathBuf>)>,
    basedir: Option<PathBuf>,
    os_user: Option<String>,
    options: Vec<String>,
    fresh: bool,
}

impl MariaDb {
    /// A server with only its admin account.
    pub fn new() -> MariaDb {
        MariaDb::default()
    }

    /// Create this user (with this password, from any host) once the server is ready.
    pub fn user(mut self, name: &str, password: &str) -> MariaDb {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Create this database, with every privilege on it granted to `owner`, once the users
    /// exist.
    pub fn database(mut self, name: &str, owner: &str) -> MariaDb {
        self.databases
            .push((name.to_owned(), owner.to_owned(), None));
        self
    }

    /// Create this database (as [`MariaDb::database`]) and run an SQL file in it, as the
    /// admin (views and routines it defines have the admin as their definer).
    pub fn database_from_dump(
        mut self,
        name: &str,
        owner: &str,
        dump: impl Into<PathBuf>,
    ) -> MariaDb {
        self.databases
            .push((name.to_owned(), owner.to_owned(), Some(dump.into())));
        self
    }

    /// The installation to use (default `/usr`, Debian's): `mariadbd` is looked for in its
    /// `sbin` and `bin`, `mariadb-install-db` in `bin` and `scripts`, `mariadb` in `bin`.
    pub fn basedir(mut self, dir: impl Into<PathBuf>) -> MariaDb {
        self.basedir = Some(dir.into());
        self
    }

    /// Pass a server option, e.g. `.option("max_connections", "20")`.
    pub fn option(mut self, key: &str, value: &str) -> MariaDb {
        self.options.push(format!("--{key}={value}"));
        self
    }

    /// Run `mariadb-install-db` for every run instead of copying a template (made once per
    /// installation and user) — slower, but nothing is shared.
    pub fn fresh_install_db(mut self) -> MariaDb {
        self.fresh = true;
        self
    }

    /// The operating-system user to run as (default: `mysql` when run as root).
    pub fn os_user(mut self, name: &str) -> MariaDb {
        self.os_user = Some(name.to_owned());
        self
    }

    /// The service to add to a bundle. An error if MariaDB's programs can't be found.
    pub fn service(self) -> Result<Service> {
        self.unmarked().map(|s| s.made_by("MariaDb"))
    }

    /// `service`, before it is marked as a MariaDb (for `handle`).
    fn unmarked(self) -> Result<Service> {
        if let Some(problem) = super::accounts::given_twice(
            self.users.iter().map(|(n, _)| n.as_str()),
            self.databases.iter().map(|(n, _, _)| n.as_str()),
        ) {
            return Err(Error::InvalidSetting {
                service: "mariadb".into(),
                problem,
            });
        }
        let basedir = self
            .basedir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr"));
        let mariadbd = find_tool(&basedir, &["sbin", "bin"], &["mariadbd", "mysqld"])?;
        let install_db = find_tool(
            &basedir,
            &["bin", "scripts"],
            &["mariadb-install-db", "mysql_install_db"],
        )?;
        let client = find_tool(&basedir, &["bin"], &["mariadb", "mysql"])?;
        // The socket lives in a short directory private to the server's user: a socket path
        // must fit in 107 bytes, and only that user (and root) may use it.
        let sockets = crate::safepath::user_subdir_path("mariadb-sock");
        let socket_dir = sockets.join(crate::safepath::random_name());
        let socket = socket_dir.join("mysqld.sock");
        let socket_text = socket.to_string_lossy().into_owned();
        if socket_text.len() > 107 {
            return Err(Error::Io {
                context: format!(
                    "MariaDB's socket `{socket_text}` is too long for a Unix socket path \
                     (107 bytes): set TMPDIR to a shorter directory"
                ),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let run_as = self
            .os_user
            .clone()
            .or_else(|| (uid == 0).then(|| "mysql".into()));
        // The admin account is named after the OS user the server (and its sub-commands)
        // run as: `unix_socket` lets only that OS user in as it.
        let admin = match &run_as {
            Some(user) => user.clone(),
            None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .ok_or_else(|| Error::Io {
                    context: format!(
                        "MariaDB's admin is named after the OS user, but uid {uid} has no \
                         name in the user database: run as a named user, or use \
                         MariaDb::os_user"
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?,
        };
        let mariadbd_text = mariadbd.to_string_lossy().into_owned();
        let mut argv: Vec<String> = vec![
            mariadbd_text.clone(),
            // First, or it is ignored: /etc/mysql's settings are for the system's server.
            "--no-defaults".into(),
            "--datadir={run}/{service}/data".into(),
            "--tmpdir={run}/{service}/tmp".into(),
            "--pid-file={run}/{service}/mariadbd.pid".into(),
            "--port={port.mariadb}".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={socket_text}"),
        ];
        argv.extend(TRIMMED.iter().map(|s| (*s).to_owned()));
        // The data directory is made with the same options (some, such as the page size,
        // shape its files), and a template is kept per set of options.
        let options = self.options.clone();
        argv.extend(self.options);
        let mut svc = Service::new(argv)
            .port(PORT)
            .env("MYSQL_UNIX_PORT", &socket_text)
            .env("MYSQL_TCP_PORT", "{port.mariadb}")
            // A client run in its environment (`hitchserve exec MariaDb -- mariadb`) reads
            // `$MARIADB_HOME/my.cnf` after the machine's files: there, this server's socket.
            .env("MARIADB_HOME", "{run}/{service}")
            .env("MYSQL_HOME", "{run}/{service}")
            .env(ADMIN_VAR, &admin)
            .env(CLIENT_VAR, &client)
            .ready(Ready::all([
                Ready::line_contains("ready for connections"),
                Ready::tcp_addr("127.0.0.1:{port.mariadb}"),
            ]));
        if let Some(user) = &run_as {
            svc = svc.user(user.clone());
        }
        // Templates belong to the user the servers run as.
        let owner = run_as.unwrap_or_else(|| uid.to_string());
        let users = self.users;
        let databases = self.databases;
        let fresh = self.fresh;
        let setup_admin = admin.clone();
        let socket_text_for_client = socket_text.clone();
        Ok(svc
            .setup(move |ctx| {
                crate::safepath::user_subdir("mariadb-sock", 0o711)?;
                super::socket_dirs::prune(&sockets);
                crate::safepath::make_dir_for(&socket_dir, 0o700, ctx.run_as())?;
                let dir = ctx.run_dir().join(ctx.service());
                ctx.make_dir(&dir)?;
                ctx.make_dir(&dir.join("tmp"))?;
                client_options(&dir.join("my.cnf"), &socket_text_for_client, ctx)?;
                let data = dir.join("data");
                super::data_dir::clear_old_data(ctx, &data)?;
                let install = |target: &Path| {
                    let mut argv = vec![
                        install_db.to_string_lossy().into_owned(),
                        "--no-defaults".into(),
                        format!("--basedir={}", basedir.display()),
                        format!("--datadir={}", target.display()),
                        "--auth-root-authentication-method=socket".into(),
                        format!("--auth-root-socket-user={setup_admin}"),
                        "--skip-test-db".into(),
                        // No host name in the grant tables (the server resolves none) and
                        // no banner: the template is the same on every machine.
                        "--cross-bootstrap".into(),
                    ];
                    argv.extend(TRIMMED.iter().map(|s| (*s).to_owned()));
                    argv.extend(options.iter().cloned());
                    // Without a bootstrap server of its own choosing: the one we run.
                    ctx.run_command(ctx.subcommand(argv).env("MYSQLD_BOOTSTRAP", &mariadbd))
                };
                if fresh {
                    install(&data)?;
                    return Ok(());
                }
                // One template per installation (and user), made once and copied for each
                // run: copying takes a fraction of mariadb-install-db's time. In our private
                // per-user directory: a shared path under /tmp could be a link planted by
                // another user, and we hand this directory to `owner`.
                let templates =
                    crate::safepath::user_subdir("mariadb-templates", 0o711)?.join(&owner);
                ctx.make_dir(&templates)?;
                let template = templates.join(template_name(&mariadbd, &setup_admin, &options));
                if !template.is_dir() {
                    // Made under a name of our own, then renamed (only a complete template
                    // ever has the final name): parallel runs may race.
                    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let tmp = templates.join(format!("tmp-{}-{n}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&tmp);
                    install(&tmp)?;
                    if std::fs::rename(&tmp, &template).is_err() {
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                }
                ctx.run([
                    "cp",
                    "-a",
                    &template.to_string_lossy(),
                    &data.to_string_lossy(),
                ])?;
                ctx.log(&format!("copied the template {}", template.display()));
                Ok(())
            })
            .poststart(move |ctx| {
                let admin_sql = |database: Option<&str>, sql: Vec<u8>| {
                    let mut sub = ctx.subcommand(admin_client(&client, &socket, &admin));
                    if let Some(db) = database {
                        sub = sub.args(["-D", db]);
                    }
                    sub.stdin(sql)
                };
                // One script, on the client's stdin (never its command line, which every
                // user sees in /proc): the client stops at the first error and names the
                // statement's line, not its text.
                // Once per data directory: a restart (the setup hook, and so the install or
                // the template copy, not run again) finds them made, and a dump is not
                // loaded twice.
                let existing: Vec<String> = ctx
                    .subcommand(admin_client(&client, &socket, &admin))
                    .stdin("SELECT schema_name FROM information_schema.schemata;\n")
                    .checked_output()?
                    .stdout_text()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                let made = |name: &str| existing.iter().any(|e| e == name);
                let mut script = String::new();
                for (name, password) in &users {
                    script.push_str(&format!(
                        "CREATE USER IF NOT EXISTS {}@'%' IDENTIFIED BY {};\n",
                        literal(name),
                        literal(password)
                    ));
                }
                for (name, owner, _) in databases.iter().filter(|(name, ..)| !made(name)) {
                    script.push_str(&format!(
                        "CREATE DATABASE {};\nGRANT ALL PRIVILEGES ON {}.* TO {}@'%';\n",
                        ident(name),
                        ident(&grant_pattern(name)),
                        literal(owner)
                    ));
                }
                if !script.is_empty() {
                    ctx.run_command(admin_sql(None, script.into_bytes()))?;
                }
                for (name, _, dump) in databases.iter().filter(|(name, ..)| !made(name)) {
                    if let Some(dump) = dump {
                        let path = ctx.directory().join(dump);
                        let sql = std::fs::read(&path).map_err(|source| Error::Io {
                            context: format!(
                                "service `{}`: could not read the SQL file `{}` for \
                                 database `{name}`",
                                ctx.service(),
                                path.display()
                            ),
                            source,
                        })?;
                        ctx.run_command(admin_sql(Some(name), sql))?;
                    }
                }
                ctx.log("users and databases created");
                Ok(())
            }))
    }

    /// What a test uses of the running MariaDB named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<MariaDbHandle> {
        let service = super::kind::service_of_kind(bundle, name, "MariaDb")?;
        let var = |key: &str| service.env_var(key).unwrap_or_default();
        Ok(MariaDbHandle {
            port: bundle.port(name, PORT)?,
            socket: PathBuf::from(var("MYSQL_UNIX_PORT")),
            admin: var(ADMIN_VAR),
            client: PathBuf::from(var(CLIENT_VAR)),
            service,
        })
    }
}

/// The client as the admin, through the socket, in batch mode without column names (plain
/// values, tab-separated), stopping at the first error, which names the line, not the text.
fn admin_client(client: &Path, socket: &Path, admin: &str) -> Vec<std::ffi::OsString> {
    vec![
        client.into(),
        "--no-defaults".into(),
        "--protocol=socket".into(),
        format!("--socket={}", socket.display()).into(),
        "-u".into(),
        admin.into(),
        "--batch".into(),
        "--skip-column-names".into(),
        // In batch mode the client prints a failing statement, password and all.
        "--skip-print-query-on-error".into(),
    ]
}

/// The first of `names` in the first of `dirs` under `basedir` that holds one.
fn find_tool(basedir: &Path, dirs: &[&str], names: &[&str]) -> Result<PathBuf> {
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| basedir.join(d).join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotInstalled {
            service: "mariadb".into(),
            program: names[0].into(),
            searched: format!("in {}/{{{}}}", basedir.display(), dirs.join(",")),
            install: "apt-get install mariadb-server mariadb-client (or MariaDb::basedir)".into(),
        })
}

/// The template's name: which server made it (its path, size and time, so an upgrade makes
/// a new one), for which admin.
fn template_name(mariadbd: &Path, admin: &str, options: &[String]) -> String {
    let stamp = std::fs::metadata(mariadbd)
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}", m.size(), m.mtime())
        })
        .unwrap_or_default();
    let key = format!(
        "{}\0{stamp}\0{admin}\0{}\0{}",
        mariadbd.display(),
        TRIMMED.join(" "),
        options.join(" ")
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("datadir-v2-{hash:016x}")
}

/// A quoted SQL string (backslashes are escapes in MariaDB's default SQL mode).
fn literal(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('\0', "\\0");
    format!("'{escaped}'")
}

/// A back-quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A database name as GRANT takes it: `_` and `%` are wildcards there.
fn grant_pattern(name: &str) -> String {
    name.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

/// Percent-encoding for a URL's user, password or path segment.
fn url_part(text: &str) -> String {
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

/// A running MariaDB, from [`MariaDb::handle`].
#[derive(Debug, Clone)]
pub struct MariaDbHandle {
    port: u16,
    socket: PathBuf,
    admin: String,
    client: PathBuf,
    service: ServiceHandle,
}

impl MariaDbHandle {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's Unix socket (usable only by the server's OS user and root).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The admin account's name (the server's OS user; through the socket only).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// An application's URL over TCP, for a user made with [`MariaDb::user`]:
    /// `mysql://USER:PASSWORD@127.0.0.1:PORT/DATABASE` (user and password percent-encoded).
    pub fn connection_url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "mysql://{}:{}@127.0.0.1:{}/{}",
            url_part(user),
            url_part(password),
            self.port,
            url_part(database)
        )
    }

    /// The `mariadb` client running `sql` (on its stdin) in `database`, as the admin: plain
    /// tab-separated values without column names; stops at the first error.
    pub fn mysql(&self, database: &str, sql: &str) -> Subcommand {
        self.client(database).stdin(sql)
    }

    /// The `mariadb` client in `database`, as the admin, for more arguments or your own
    /// stdin (e.g. an SQL file's content).
    pub fn client(&self, database: &str) -> Subcommand {
        self.service
            .subcommand(admin_client(&self.client, &self.socket, &self.admin))
            .args(["-D", database])
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}

/// `my.cnf` for clients run in the server's environment (see `MARIADB_HOME`): its socket and
/// port, read after the machine's `/etc/mysql` (whose socket is the system server's). Made
/// anew (never through a link: the directory is the server user's), readable by that user.
fn client_options(path: &Path, socket: &str, ctx: &crate::hooks::HookContext<'_>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| crate::error::Error::Io {
        context: format!("writing `{}`", path.display()),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let port = ctx
        .port(PORT)
        .map_or_else(String::new, |p| format!("port = {p}\n"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("[client]\nsocket = {socket}\n{port}").as_bytes())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_sql_and_urls_intact() {
        assert_eq!(literal(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(grant_pattern("app_test%"), r"app\_test\%");
        assert_eq!(url_part("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
