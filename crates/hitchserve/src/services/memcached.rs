//! Memcached (Debian's `memcached` 1.6): on a free port on 127.0.0.1 (no UDP), ready when
//! its port accepts connections and it answers `version`, with a small client for the text
//! protocol (`set`, `get`, `delete`, `stats`, `version`) on std's `TcpStream`.
//!
//! Memcached refuses to run as root without `-u`: run as root, the service runs as the
//! `memcache` user (Debian's package creates it), or `nobody` where there is none.
//! It runs on real time (no libfaketime): memcached measures expiry on `CLOCK_MONOTONIC`
//! (its clock thread counts seconds since it started), which hitchserve never fakes, so
//! time travel could not expire an item anyway; on real time its `stats` agree with that
//! clock. An item set to expire in 60 s is still there after travelling two minutes.
//!
//! Memcached has no users or passwords here: every local user can reach its port and read,
//! write or flush the cache (as with the Redis service). `shutdown` stays disabled (no `-A`).
//! Keep secrets out of a test cache on a shared machine.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::readiness::Ready;
use crate::service::Service;

/// The name of memcached's port (see [`Service::port`]).
pub const PORT: &str = "memcached";

/// The environment variable, in the service's environment, holding its `host:port`.
pub const SERVERS_ENV: &str = "MEMCACHED_SERVERS";

/// How long one client operation may take before it is an error (never a hang).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A memcached server to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::Memcached, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("Cache", Memcached::new().memory_mb(16).service())?;
/// bundle.startup()?;
/// let cache = Memcached::handle(&bundle, "Cache")?;
/// let mut client = cache.client()?;
/// client.set("greeting", b"hello", 0)?;
/// assert_eq!(client.get("greeting")?.as_deref(), Some(&b"hello"[..]));
/// println!("point the app at {}", cache.address());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Memcached {
    program: PathBuf,
    memory_mb: Option<u32>,
    args: Vec<String>,
    os_user: Option<String>,
}

impl Default for Memcached {
    fn default() -> Memcached {
        Memcached {
            program: PathBuf::from("memcached"),
            memory_mb: None,
            args: Vec::new(),
            os_user: None,
        }
    }
}

impl Memcached {
    /// Memcached with its defaults (64 MB of memory), on a free port on 127.0.0.1.
    pub fn new() -> Memcached {
        Memcached::default()
    }

    /// The `memcached` binary to run (default: `memcached` on the service's `PATH`).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Memcached {
        self.program = path.into();
        self
    }

    /// Memory for items, in megabytes (`-m`).
    pub fn memory_mb(mut self, megabytes: u32) -> Memcached {
        self.memory_mb = Some(megabytes);
        self
    }

    /// Pass another command-line argument, e.g. `.arg("-vv")` to log every command.
    pub fn arg(mut self, arg: impl Into<String>) -> Memcached {
        self.args.push(arg.into());
        self
    }

    /// The operating-system user to run as (default when run as root: `memcache`, or
    /// `nobody` where there is no `memcache` user).
    pub fn os_user(mut self, name: &str) -> Memcached {
        self.os_user = Some(name.to_owned());
        self
    }

    /// The service to add to a bundle.
    pub fn service(self) -> Service {
        self.unmarked().made_by("Memcached")
    }

    /// `service`, before it is marked as a Memcached (for `handle`).
    fn unmarked(self) -> Service {
        let mut argv: Vec<std::ffi::OsString> = vec![
            self.program.into_os_string(),
            "--listen=127.0.0.1".into(),
            "--port={port.memcached}".into(),
            "--udp-port=0".into(),
        ];
        if let Some(mb) = self.memory_mb {
            argv.push(format!("--memory-limit={mb}").into());
        }
        argv.extend(self.args.into_iter().map(Into::into));
        let mut svc = Service::new(argv)
            .port(PORT)
            .env(SERVERS_ENV, "127.0.0.1:{port.memcached}")
            .ready(Ready::tcp_addr("127.0.0.1:{port.memcached}"))
            // Expiry runs on the monotonic clock, which is never faked (see the module's
            // documentation): faking the wall clock would only make `stats` disagree.
            .no_libfaketime()
            // An open port is not yet an answering server: ask it for its version before
            // anything that needs it starts.
            .poststart(|ctx| {
                let address = ctx.env_var(SERVERS_ENV).unwrap_or_default();
                let mut client = MemcachedClient::connect(ctx.service(), &address)?;
                let version = client.version()?;
                ctx.log(&format!("memcached {version} answers on {address}"));
                Ok(())
            });
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        let run_as = self.os_user.or_else(|| {
            root.then(|| {
                let has_memcache = nix::unistd::User::from_name("memcache")
                    .ok()
                    .flatten()
                    .is_some();
                if has_memcache { "memcache" } else { "nobody" }.to_owned()
            })
        });
        if let Some(user) = run_as {
            svc = svc.user(user);
        }
        svc
    }

    /// What a test uses of the running memcached named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<MemcachedHandle> {
        let service = super::kind::service_of_kind(bundle, name, "Memcached")?;
        Ok(MemcachedHandle {
            port: bundle.port(name, PORT)?,
            service,
        })
    }
}

/// A running memcached, from [`Memcached::handle`].
#[derive(Debug, Clone)]
pub struct MemcachedHandle {
    port: u16,
    service: ServiceHandle,
}

impl MemcachedHandle {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the form most memcached clients take.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `memcached://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("memcached://127.0.0.1:{}", self.port)
    }

    /// A new connection to it.
    pub fn client(&self) -> Result<MemcachedClient> {
        MemcachedClient::connect(self.service.name(), &self.address())
    }

    /// Its `stats` (a new connection each time).
    pub fn stats(&self) -> Result<BTreeMap<String, String>> {
        self.client()?.stats()
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}

/// One connection to memcached, speaking its text protocol. Every operation times out
/// (30 s) rather than hang; errors name the service and the command.
#[derive(Debug)]
pub struct MemcachedClient {
    service: String,
    reader: BufReader<TcpStream>,
}

impl MemcachedClient {
    /// Connect to `address` (`host:port`); `service` names the server in errors.
    pub fn connect(service: &str, address: &str) -> Result<MemcachedClient> {
        let io = |source| Error::Io {
            context: format!("service `{service}`: connecting to memcached at `{address}`"),
            source,
        };
        let stream = TcpStream::connect(address).map_err(io)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        Ok(MemcachedClient {
            service: service.to_owned(),
            reader: BufReader::new(stream),
        })
    }

    /// `version`: the server's version, e.g. `1.6.18`.
    pub fn version(&mut self) -> Result<String> {
        let line = self.command("version", b"version\r\n")?;
        match line.strip_prefix("VERSION ") {
            Some(v) => Ok(v.to_owned()),
            None => Err(self.unexpected("version", &line)),
        }
    }

    /// `set`: store `value` under `key`, expiring after `expiry_seconds` (0: never; more
    /// than 30 days: a Unix time, as memcached reads it).
    pub fn set(&mut self, key: &str, value: &[u8], expiry_seconds: u32) -> Result<()> {
        let what = format!("set {key}");
        self.check_key(&what, key)?;
        let mut request = format!("set {key} 0 {expiry_seconds} {}\r\n", value.len()).into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        let line = self.command(&what, &request)?;
        if line == "STORED" {
            Ok(())
        } else {
            Err(self.unexpected(&what, &line))
        }
    }

    /// `get`: the value under `key`, or `None` when there is none (or it expired).
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        let what = format!("get {key}");
        self.check_key(&what, key)?;
        let line = self.command(&what, format!("get {key}\r\n").as_bytes())?;
        if line == "END" {
            return Ok(None);
        }
        // VALUE <key> <flags> <bytes>
        let len = match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["VALUE", k, _flags, bytes] if *k == key => bytes.parse::<usize>().ok(),
            _ => None,
        };
        let Some(len) = len else {
            return Err(self.unexpected(&what, &line));
        };
        let mut data = vec![0; len + 2];
        self.reader
            .read_exact(&mut data)
            .map_err(|e| self.io(&what, e))?;
        if !data.ends_with(b"\r\n") {
            return Err(self.unexpected(&what, "a value not ended by CRLF"));
        }
        data.truncate(len);
        let end = self.read_line(&what)?;
        if end != "END" {
            return Err(self.unexpected(&what, &end));
        }
        Ok(Some(data))
    }

    /// `delete`: true if there was an item to delete.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        let what = format!("delete {key}");
        self.check_key(&what, key)?;
        let line = self.command(&what, format!("delete {key}\r\n").as_bytes())?;
        match line.as_str() {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            _ => Err(self.unexpected(&what, &line)),
        }
    }

    /// `stats`: the general statistics, by name (`curr_items`, `time`, `uptime`, ...).
    pub fn stats(&mut self) -> Result<BTreeMap<String, String>> {
        let mut line = self.command("stats", b"stats\r\n")?;
        let mut stats = BTreeMap::new();
        while line != "END" {
            let Some((name, value)) = line
                .strip_prefix("STAT ")
                .and_then(|rest| rest.split_once(' '))
            else {
                return Err(self.unexpected("stats", &line));
            };
            stats.insert(name.to_owned(), value.to_owned());
            line = self.read_line("stats")?;
        }
        Ok(stats)
    }

    /// Send a request; its first reply line.
    fn command(&mut self, what: &str, request: &[u8]) -> Result<String> {
        self.reader
            .get_mut()
            .write_all(request)
            .map_err(|e| self.io(what, e))?;
        self.read_line(what)
    }

    fn read_line(&mut self, what: &str) -> Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io(what, e))?;
        if n == 0 || !line.ends_with(b"\r\n") {
            return Err(self.io(
                what,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection ended in the middle of a reply",
                ),
            ));
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Keys go on the command line of the protocol: a space or line break would make
    /// another command of the rest.
    fn check_key(&self, what: &str, key: &str) -> Result<()> {
        if key.is_empty() || key.len() > 250 || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(self.io(
                what,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a memcached key is 1 to 250 bytes without spaces or control characters",
                ),
            ));
        }
        Ok(())
    }

    fn unexpected(&self, what: &str, reply: &str) -> Error {
        self.io(
            what,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected reply `{reply}`"),
            ),
        )
    }

    fn io(&self, what: &str, source: std::io::Error) -> Error {
        Error::Io {
            context: format!("service `{}`: memcached `{what}`", self.service),
            source,
        }
    }
}
