//! PostgreSQL (Debian's `postgresql-15`, found through `pg_config` or known paths): a fresh
//! cluster per run in the run directory (initdb in the setup hook), on a free port, with
//! users and databases created (and dumps loaded) in the poststart hook.
//!
//! PostgreSQL refuses to run as root: run as root, the service runs as the `postgres` user
//! (it must exist: Debian's server package creates it); otherwise as the current user.
//! It works with time travel: `select now()` follows the bundle's clock.
//!
//! Who may connect: the superuser only through the server's Unix socket, in a directory
//! private to the server's OS user (0700, under a random name in our per-user temporary
//! directory: short enough for a socket path), so only that user and root can; over TCP on
//! 127.0.0.1, which every local user can reach, only users with a password (scram-sha-256).

use std::path::{Path, PathBuf};

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::Service;
use crate::signal::Signal;
use crate::subcommand::Subcommand;

/// The name of PostgreSQL's port (see [`Service::port`]).
pub const PORT: &str = "postgres";

/// The superuser of the cluster (reachable only through the server's private Unix socket).
pub const SUPERUSER: &str = "postgres";

/// A PostgreSQL server to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::Postgres, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("Postgres", Postgres::new()
///     .user("app", "secret")
///     .database("app", "app")
///     .service()?)?;
/// bundle.startup()?;
/// let pg = Postgres::handle(&bundle, "Postgres")?;
/// pg.psql("app", "CREATE TABLE t (x int)").run()?;
/// // The application connects over TCP as the user made above:
/// println!("DATABASE_URL=postgresql://app:secret@127.0.0.1:{}/app", pg.port());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Postgres {
    users: Vec<(String, String)>,
    databases: Vec<(String, String, Option<PathBuf>)>,
    bin_dir: Option<PathBuf>,
    os_user: Option<String>,
    fresh: bool,
}

impl Postgres {
    /// A cluster with only the `postgres` superuser.
    pub fn new() -> Postgres {
        Postgres::default()
    }

    /// Create this user (login, with this password) once the server is ready; a user that
    /// exists already (the `postgres` superuser) gets this password, for logins over TCP.
    pub fn user(mut self, name: &str, password: &str) -> Postgres {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Create this database, owned by `owner`, once the users exist.
    pub fn database(mut self, name: &str, owner: &str) -> Postgres {
        self.databases
            .push((name.to_owned(), owner.to_owned(), None));
        self
    }

    /// Create this database and load an SQL dump into it (as its owner).
    pub fn database_from_dump(
        mut self,
        name: &str,
        owner: &str,
        dump: impl Into<PathBuf>,
    ) -> Postgres {
        self.databases
            .push((name.to_owned(), owner.to_owned(), Some(dump.into())));
        self
    }

    /// Where `initdb`, `postgres` and `psql` are (default: `pg_config --bindir`, then
    /// `/usr/lib/postgresql/<newest>/bin`).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Postgres {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Run `initdb` for every run instead of copying a template cluster (made once per
    /// PostgreSQL installation and user, with `initdb`) — slower, but nothing is shared.
    pub fn fresh_initdb(mut self) -> Postgres {
        self.fresh = true;
        self
    }

    /// The operating-system user to run as (default: `postgres` when run as root).
    pub fn os_user(mut self, name: &str) -> Postgres {
        self.os_user = Some(name.to_owned());
        self
    }

    /// The service to add to a bundle. An error if PostgreSQL's programs can't be found.
    pub fn service(self) -> Result<Service> {
        self.unmarked().map(|s| s.made_by("Postgres"))
    }

    /// What PostgreSQL can't take among the users and databases asked for, said without
    /// any password.
    fn bad_names(&self) -> Option<String> {
        if let Some(twice) = super::accounts::given_twice(
            self.users.iter().map(|(n, _)| n.as_str()),
            self.databases.iter().map(|(n, _, _)| n.as_str()),
        ) {
            return Some(twice);
        }
        let nul = |text: &str| text.contains('\0');
        for (name, password) in &self.users {
            if nul(name) {
                return Some(format!(
                    "user name `{}` holds a NUL byte, which PostgreSQL can't take: remove it",
                    name.escape_debug()
                ));
            }
            if nul(password) {
                return Some(format!(
                    "the password of user `{name}` holds a NUL byte, which PostgreSQL can't \
                     take: remove it"
                ));
            }
        }
        for (name, owner, _) in &self.databases {
            if let Some(bad) = [name, owner].into_iter().find(|t| nul(t)) {
                return Some(format!(
                    "database `{}` (owner `{}`): `{}` holds a NUL byte, which PostgreSQL \
                     can't take: remove it",
                    name.escape_debug(),
                    owner.escape_debug(),
                    bad.escape_debug()
                ));
            }
        }
        None
    }

    /// `service`, before it is marked as a Postgres (for `handle`).
    fn unmarked(self) -> Result<Service> {
        if let Some(problem) = self.bad_names() {
            return Err(Error::InvalidSetting {
                service: "postgres".into(),
                problem,
            });
        }
        let bin = match self.bin_dir.clone() {
            Some(dir) => dir,
            None => find_bin_dir().ok_or_else(|| Error::CommandNotFound {
                service: "postgres".into(),
                program: "postgres".into(),
                searched: "through pg_config or in /usr/lib/postgresql/*/bin: install postgresql, or use Postgres::bin_dir".into(),
            })?,
        };
        let tool = |name: &str| bin.join(name).to_string_lossy().into_owned();
        let data = "{run}/{service}/data".to_owned();
        let postgres = tool("postgres");
        // The superuser connects only through a Unix socket in a directory private to the
        // server's user (so only that user and root can: trust is safe there); over TCP,
        // which every local user can reach, only users with a password (scram-sha-256). The
        // directory is short (a socket path must fit in 107 bytes): in our per-user
        // temporary directory, under a random name, made by the setup hook.
        let sockets = crate::safepath::user_subdir_path("pg-sock");
        let socket_dir = sockets.join(crate::safepath::random_name());
        let socket_dir_text = socket_dir.to_string_lossy().into_owned();
        if socket_dir_text.len() + "/.s.PGSQL.65535".len() > 107 {
            return Err(Error::Io {
                context: format!(
                    "PostgreSQL's socket directory `{socket_dir_text}` is too long for a Unix \
                     socket path (107 bytes): set TMPDIR to a shorter directory"
                ),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let socket_option = format!("unix_socket_directories={socket_dir_text}");
        let mut svc = Service::new([
            postgres.as_str(),
            "-D",
            &data,
            "-p",
            "{port.postgres}",
            "-c",
            &socket_option,
            "-c",
            "listen_addresses=127.0.0.1",
            // Speed without losing a commit to a crash of the server's processes (what a
            // test's `kill` is): a commit still writes its WAL to the kernel before it
            // returns, which a killed server recovers from; only a crash of the machine
            // could lose it. (`synchronous_commit=off` lost the commits of the last ~0.2 s
            // before a kill.)
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ])
        .port(PORT)
        .env("PGHOST", &socket_dir_text)
        .env("PGPORT", "{port.postgres}")
        // So that `psql` in its environment (`hitchserve exec Pg -- psql`, a sub-command)
        // is the superuser whatever user runs it (it took the caller's name for the role).
        .env("PGUSER", SUPERUSER)
        .ready(Ready::all([
            Ready::line_contains("database system is ready to accept connections"),
            Ready::tcp_addr("127.0.0.1:{port.postgres}"),
        ]))
        // PostgreSQL's "fast shutdown": roll back and stop at once.
        .stop_signal(Signal::SIGINT);
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        let run_as = self
            .os_user
            .clone()
            .or_else(|| root.then(|| "postgres".into()));
        if let Some(user) = &run_as {
            svc = svc.user(user.clone());
        }
        // Templates belong to the user the clusters run as.
        let owner = run_as.unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions.
            unsafe { libc::getuid() }.to_string()
        });
        let initdb = tool("initdb");
        let psql = tool("psql");
        let users = self.users;
        let databases = self.databases;
        let fresh = self.fresh;
        Ok(svc
            .setup(move |ctx| {
                crate::safepath::user_subdir("pg-sock", 0o711)?;
                super::socket_dirs::prune(&sockets);
                crate::safepath::make_dir_for(&socket_dir, 0o700, ctx.run_as())?;
                let dir = ctx.run_dir().join(ctx.service());
                ctx.make_dir(&dir)?;
                let data = dir.join("data");
                super::data_dir::clear_old_data(ctx, &data)?;
                let run_initdb = |target: &Path| {
                    ctx.run([
                        initdb.as_str(),
                        "-D",
                        &target.to_string_lossy(),
                        "-U",
                        SUPERUSER,
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--no-sync",
                        "--no-instructions",
                    ])
                };
                if fresh {
                    run_initdb(&data)?;
                    return Ok(());
                }
                // One template cluster per installation (and user), made once with initdb
                // and copied for each run: copying takes a fraction of initdb's time.
                // In our private per-user directory: a shared path under /tmp could be a
                // symlink planted by another user, and we hand this directory to `owner`.
                let templates = crate::safepath::user_subdir("pg-templates", 0o711)?.join(&owner);
                ctx.make_dir(&templates)?;
                let template = templates.join(template_name(&initdb));
                if !template.join("PG_VERSION").exists() {
                    // Made under a name of our own, then renamed: parallel runs may race.
                    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let tmp = templates.join(format!("tmp-{}-{n}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&tmp);
                    run_initdb(&tmp)?;
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
                ctx.log(&format!(
                    "copied the template cluster {}",
                    template.display()
                ));
                Ok(())
            })
            .poststart(move |ctx| {
                // Statements go to psql's stdin, never its command line (visible to every
                // user in /proc while it runs), and the server is told not to log a failing
                // statement: a password must not reach a log, an error or argv.
                let sql = |db: &str, statement: &str| {
                    ctx.subcommand([
                        psql.as_str(),
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-v",
                        "VERBOSITY=terse",
                        "-U",
                        SUPERUSER,
                        "-d",
                        db,
                    ])
                    .stdin(format!(
                        "SET log_min_error_statement TO panic;\n{statement};\n"
                    ))
                };
                // Once per data directory: a restart (the setup hook, and so initdb or the
                // template copy, not run again) finds them made, and a dump is not loaded
                // twice. Asked with the name as a literal in the statement psql reads.
                let exists = |catalog: &str, column: &str, name: &str| -> Result<bool> {
                    let query = format!(
                        "SELECT 1 FROM {catalog} WHERE {column} = '{}'",
                        name.replace('\'', "''")
                    );
                    let out = ctx
                        .subcommand([
                            psql.as_str(),
                            "-X",
                            "-q",
                            "-t",
                            "-A",
                            "-v",
                            "ON_ERROR_STOP=1",
                            "-U",
                            SUPERUSER,
                            "-d",
                            "postgres",
                        ])
                        .stdin(format!("{query};\n"))
                        .checked_output()?;
                    Ok(out.stdout_text().trim() == "1")
                };
                for (name, password) in &users {
                    // One that exists (the superuser, or made by the last start) gets the
                    // password asked for.
                    let verb = match exists("pg_roles", "rolname", name)? {
                        true => "ALTER",
                        false => "CREATE",
                    };
                    let statement = format!(
                        "{verb} USER {} PASSWORD '{}'",
                        ident(name),
                        password.replace('\'', "''")
                    );
                    ctx.run_command(sql("postgres", &statement))?;
                }
                for (name, owner, dump) in &databases {
                    if exists("pg_database", "datname", name)? {
                        continue;
                    }
                    let statement =
                        format!("CREATE DATABASE {} OWNER {}", ident(name), ident(owner));
                    ctx.run_command(sql("postgres", &statement))?;
                    if let Some(dump) = dump {
                        let dump = ctx.directory().join(dump);
                        ctx.run_command(ctx.subcommand([
                            psql.as_str(),
                            "-v",
                            "ON_ERROR_STOP=1",
                            "-q",
                            "-U",
                            owner,
                            "-d",
                            name,
                            "-f",
                            &dump.to_string_lossy(),
                        ]))?;
                    }
                }
                ctx.log("users and databases created");
                Ok(())
            }))
    }

    /// What a test uses of the running PostgreSQL named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<PostgresHandle> {
        let service = super::kind::service_of_kind(bundle, name, "Postgres")?;
        let argv0 = service
            .process()
            .ok()
            .and_then(|p| p.exe().ok())
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let socket_dir = service
            .env_var("PGHOST")
            .map(PathBuf::from)
            .unwrap_or_default();
        Ok(PostgresHandle {
            port: bundle.port(name, PORT)?,
            bin: argv0.unwrap_or_default(),
            socket_dir,
            service,
        })
    }
}

/// The template's name: which initdb made it (different installations, different clusters).
fn template_name(initdb: &str) -> String {
    let hash = initdb.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    // v2: trust only on the private socket (v1 clusters trusted every TCP connection).
    format!("cluster-v2-{hash:016x}")
}

/// A double-quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn find_bin_dir() -> Option<PathBuf> {
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.join("postgres").is_file() && p.join("initdb").is_file());
    from_pg_config.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// A running PostgreSQL, from [`Postgres::handle`].
#[derive(Debug, Clone)]
pub struct PostgresHandle {
    port: u16,
    bin: PathBuf,
    socket_dir: PathBuf,
    service: ServiceHandle,
}

impl PostgresHandle {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's URL, through the server's private Unix socket:
    /// `postgresql://postgres@/DB?host=SOCKET_DIR&port=PORT`. Only the server's OS user and
    /// root may use it; an application connects over TCP as a user made with
    /// [`Postgres::user`]: `postgresql://USER:PASSWORD@127.0.0.1:PORT/DB`.
    pub fn connection_url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@/{database}?host={}&port={}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// `psql` running `sql` against `database`, as the superuser. The SQL goes on its
    /// standard input, never its command line: every local user can read a process's
    /// arguments, and SQL may hold a password (`CREATE USER ... PASSWORD`). So it runs as a
    /// script: each statement commits as it runs (wrap them in `BEGIN; ... COMMIT;` for all
    /// or nothing), the first error stops it (exit code 3), psql's variables are expanded,
    /// and data for `COPY ... FROM STDIN` follows the statement in `sql`, ended by a line
    /// `\.` (its stdin is the SQL: don't set another).
    pub fn psql(&self, database: &str, sql: &str) -> Subcommand {
        self.psql_base(database).stdin(sql.as_bytes().to_vec())
    }

    /// `psql -f FILE` against `database`, as the superuser (stops at the first error).
    pub fn psql_file(&self, database: &str, file: impl AsRef<Path>) -> Subcommand {
        self.psql_base(database)
            .arg("-f")
            .arg(file.as_ref().as_os_str())
    }

    fn psql_base(&self, database: &str) -> Subcommand {
        self.service
            .subcommand([self.bin.join("psql").as_os_str()])
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}
