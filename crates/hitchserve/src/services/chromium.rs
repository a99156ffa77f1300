//! Chromium driven through WebDriver (Debian's `chromium` and `chromium-driver`):
//! `chromedriver` on a free port on the loopback interface, ready when its `/status` says
//! so; each WebDriver session starts a headless Chromium with a fresh profile in
//! `<run>/<Name>/`. The handle gives the WebDriver URL, the capabilities to start a
//! session with, and a small W3C WebDriver client (go to a page, read or click an element)
//! over std's `TcpStream` — enough for a test's "click" steps without an HTTP client crate.
//!
//! Who may connect: WebDriver has no authentication, and chromedriver starts whatever
//! `binary` a client names, as its own user. It listens on 127.0.0.1 and ::1 only and
//! refuses requests whose `Host` or `Origin` is not local: that is its default, and the
//! tightest it has (`--allowed-ips` would make it listen on every interface;
//! `--allowed-origins` only adds origins to the local ones), so neither is passed. Every
//! local user can still reach the port, so under root it runs as `nobody` (see
//! [`Chromium::os_user`]): a hostile local user who connects gets nobody's rights, not
//! root's. Run as an ordinary user, it is that user's browser: don't run it on a machine
//! shared with users you don't trust.
//!
//! Processes: Chromium forks a zygote, renderers, a GPU and utility processes — all in
//! chromedriver's process group, so stopping the service's group stops them; the crash
//! handler (`chrome_crashpad_handler`), which would leave the group and the session, is
//! not started (`--disable-crashpad-for-testing`). The bundle's cgroup and environment
//! marker catch anything that leaves anyway.
//!
//! Time: it keeps real time (see [`Chromium::service`]).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::readiness::http;
use crate::readiness::Ready;
use crate::service::Service;

/// The name of chromedriver's port (see [`Service::port`]).
pub const PORT: &str = "webdriver";

/// Where Debian's packages put them.
const DRIVER: &str = "/usr/bin/chromedriver";
const BROWSER: &str = "/usr/bin/chromium";

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Flags every session's Chromium gets. The network is closed here: without the
/// background-networking ones Chromium keeps opening connections (updates, sync, metrics)
/// that are refused many at a time; crashpad would leave chromedriver's process group.
/// The network service runs inside the browser process: as a process of its own it crashes
/// here as it starts ("FD ownership violation"), over and over, and page loads hang.
const FLAGS: &[&str] = &[
    "--enable-features=NetworkServiceInProcess2",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-crashpad-for-testing",
];

/// Chromium under chromedriver, to add to a bundle.
///
/// ```no_run
/// use hitchserve::{services::Chromium, Bundle};
/// # fn main() -> hitchserve::Result<()> {
/// let mut bundle = Bundle::new(".");
/// bundle.add("Chromium", Chromium::new().service())?;
/// bundle.startup()?;
/// let chromium = Chromium::handle(&bundle, "Chromium")?;
/// let session = chromium.new_session()?;
/// session.goto("http://127.0.0.1:8000/")?;
/// session.click("#sign-in")?;
/// assert_eq!(session.text("h1")?, "Welcome");
/// session.delete()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Chromium {
    driver: Option<PathBuf>,
    browser: Option<PathBuf>,
    args: Vec<String>,
    os_user: Option<String>,
    no_sandbox: bool,
}

impl Chromium {
    /// chromedriver and Chromium from Debian's packages, headless, on a free port.
    pub fn new() -> Chromium {
        Chromium::default()
    }

    /// Use this chromedriver (default `/usr/bin/chromedriver`).
    pub fn driver(mut self, path: impl Into<PathBuf>) -> Chromium {
        self.driver = Some(path.into());
        self
    }

    /// Use this browser binary in sessions (default `/usr/bin/chromium`).
    pub fn browser(mut self, path: impl Into<PathBuf>) -> Chromium {
        self.browser = Some(path.into());
        self
    }

    /// Give every session's Chromium this flag too, e.g. `--window-size=1280,800`.
    pub fn arg(mut self, flag: impl Into<String>) -> Chromium {
        self.args.push(flag.into());
        self
    }

    /// The operating-system user to run as (default: `nobody` when run as root, see the
    /// module's documentation; otherwise the current user).
    pub fn os_user(mut self, name: &str) -> Chromium {
        self.os_user = Some(name.to_owned());
        self
    }

    /// Start Chromium with `--no-sandbox` even when it does not run as root (where the
    /// kernel lets no unprivileged process make the namespaces its sandbox needs).
    pub fn no_sandbox(mut self) -> Chromium {
        self.no_sandbox = true;
        self
    }

    /// The service to add to a bundle.
    pub fn service(self) -> Service {
        self.unmarked().made_by("Chromium")
    }

    /// `service`, before it is marked as a Chromium (for `handle`).
    fn unmarked(self) -> Service {
        let driver = self.driver.unwrap_or_else(|| DRIVER.into());
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        let run_as = self.os_user.or_else(|| root.then(|| "nobody".to_owned()));
        // Chromium's singleton socket goes in TMPDIR, and a socket path must fit in 107
        // bytes: the run directory can be too deep, so TMPDIR is a short directory private
        // to the service's user, under a random name in our per-user temporary directory.
        let temps = crate::safepath::user_subdir_path("chromium-tmp");
        // Named after the process that owns the bundle: pruning leaves a live one alone.
        let tmp = temps.join(format!(
            "{}-{}",
            std::process::id(),
            crate::safepath::random_name()
        ));
        let mut svc = Service::new([
            driver.into_os_string(),
            "--port={port.webdriver}".into(),
            // Chromium's own messages: without them chromedriver only says "Chrome
            // instance exited" when a browser fails to start.
            "--enable-chrome-logs".into(),
        ])
        .port(PORT)
        // Chromium keeps its caches, config and temporary files out of the user's home
        // and out of the shared /tmp (chromedriver's fallback profile included).
        .env("HOME", "{run}/{service}/home")
        .env("XDG_CONFIG_HOME", "{run}/{service}/home/.config")
        .env("XDG_CACHE_HOME", "{run}/{service}/home/.cache")
        .env("XDG_DATA_HOME", "{run}/{service}/home/.local/share")
        .env("TMPDIR", &tmp)
        .ready(
            Ready::http("http://127.0.0.1:{port.webdriver}/status")
                .status(|s| s == 200)
                .body(|body| {
                    serde_json::from_str::<Value>(body)
                        .is_ok_and(|v| v["value"]["ready"] == Value::Bool(true))
                }),
        )
        // Chromium keeps real time. Under libfaketime (checked with 0.9.10) chromedriver
        // starts, but a new session never answers: the browser's child processes never
        // connect back to it ("Terminating current process after 15 seconds with no
        // connection") and the zygote dies. A page's clock can be moved from the test
        // instead (a clock in the app, or CDP's virtual time) without faking the browser's
        // own timers, which its scheduler and IPC depend on.
        .no_libfaketime()
        .setup(move |ctx| {
            crate::safepath::user_subdir("chromium-tmp", 0o711)?;
            prune_dead_dirs(&temps);
            crate::safepath::make_dir_for(&tmp, 0o700, ctx.run_as())?;
            let dir = ctx.run_dir().join(ctx.service());
            for sub in ["home", "profiles"] {
                ctx.make_dir(&dir.join(sub))?;
            }
            Ok(())
        });
        // What sessions are started with, for the handle (which only sees the running
        // service): in the service's environment, where `{port.NAME}` templates in the
        // flags are filled in too.
        let mut args: Vec<String> = FLAGS.iter().map(|f| (*f).to_owned()).collect();
        let as_root = match &run_as {
            Some(user) => user == "root",
            None => root,
        };
        if as_root || self.no_sandbox {
            // Chromium refuses to start as root with its sandbox on.
            args.push("--no-sandbox".to_owned());
        }
        args.extend(self.args);
        let browser = self.browser.unwrap_or_else(|| BROWSER.into());
        let options = json!({ "binary": browser.to_string_lossy(), "args": args });
        svc = svc.env(OPTIONS_VAR, options.to_string());
        if let Some(user) = run_as {
            svc = svc.user(user);
        }
        svc
    }

    /// What a test uses of the running chromedriver named `name`.
    pub fn handle(bundle: &Bundle, name: &str) -> Result<ChromiumHandle> {
        let service = super::kind::service_of_kind(bundle, name, "Chromium")?;
        let options = service
            .env_var(OPTIONS_VAR)
            .and_then(|o| serde_json::from_str::<Value>(&o).ok())
            .ok_or_else(|| Error::NotAService {
                service: name.to_owned(),
                kind: "Chromium".to_owned(),
            })?;
        let run_dir = bundle.run_dir().ok_or(Error::NotRunning)?;
        Ok(ChromiumHandle {
            port: bundle.port(name, PORT)?,
            dir: run_dir.join(name),
            options,
            service,
        })
    }
}

/// Remove the temporary directories of earlier runs whose owning process is gone (a
/// browser leaves its singleton and scoped directories behind): `<pid>-<random>`; a live
/// owner's directory is left alone, even when it is empty between two sessions.
fn prune_dead_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(owner) = owner else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            // Never follows a link inside (std's remove_dir_all works through descriptors).
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The environment variable that carries the sessions' `goog:chromeOptions` to the handle.
const OPTIONS_VAR: &str = "HITCHSERVE_CHROMIUM_OPTIONS";

/// A running chromedriver, from [`Chromium::handle`].
#[derive(Debug, Clone)]
pub struct ChromiumHandle {
    port: u16,
    dir: PathBuf,
    /// `goog:chromeOptions` without the profile: `binary` and `args`.
    options: Value,
    service: ServiceHandle,
}

impl ChromiumHandle {
    /// chromedriver's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WebDriver endpoint, `http://127.0.0.1:PORT`, for any WebDriver client.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The body of a W3C "New Session" request (`POST /session`): headless Chromium with
    /// the flags this machine needs and a fresh profile directory in `<run>/<Name>/profiles/`
    /// (a new one on every call).
    pub fn capabilities(&self) -> Value {
        static N: AtomicU64 = AtomicU64::new(0);
        let profile = self
            .dir
            .join("profiles")
            .join(N.fetch_add(1, Ordering::Relaxed).to_string());
        let mut options = self.options.clone();
        if let Some(args) = options["args"].as_array_mut() {
            args.push(format!("--user-data-dir={}", profile.display()).into());
        }
        json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": options,
                }
            }
        })
    }

    /// Start a browser: a WebDriver session with [`ChromiumHandle::capabilities`].
    pub fn new_session(&self) -> Result<ChromiumSession> {
        self.new_session_with(&self.capabilities())
    }

    /// Start a session with these capabilities (a whole "New Session" body).
    pub fn new_session_with(&self, capabilities: &Value) -> Result<ChromiumSession> {
        let client = Client {
            service: self.service.name().to_owned(),
            port: self.port,
            timeout: Duration::from_secs(60),
        };
        let value = client.call("POST", "/session", Some(capabilities))?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| client.error("POST /session", format!("no sessionId in {value}")))?
            .to_owned();
        Ok(ChromiumSession {
            client,
            id,
            deleted: false,
        })
    }

    /// The service itself (logs, process, ...).
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }

    /// The service's run directory, where the profiles are.
    pub fn directory(&self) -> &Path {
        &self.dir
    }
}

/// One browser, from [`ChromiumHandle::new_session`]; deleted (the browser closed) by
/// [`ChromiumSession::delete`] or when dropped.
#[derive(Debug)]
pub struct ChromiumSession {
    client: Client,
    id: String,
    deleted: bool,
}

impl ChromiumSession {
    /// The WebDriver session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long one command may take (default 60 s); a page load counts as one.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.client.timeout = timeout;
    }

    /// Load `url` and wait for it (the page load strategy's "normal": its load event).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.command("POST", "url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The current page's URL.
    pub fn current_url(&self) -> Result<String> {
        self.string("GET", "url", None)
    }

    /// The current page's title.
    pub fn title(&self) -> Result<String> {
        self.string("GET", "title", None)
    }

    /// The id of the first element matching the CSS `selector` (an error if there is none).
    pub fn find(&self, selector: &str) -> Result<String> {
        let value = self.command(
            "POST",
            "element",
            Some(&json!({ "using": "css selector", "value": selector })),
        )?;
        value[ELEMENT].as_str().map(str::to_owned).ok_or_else(|| {
            self.client
                .error("POST element", format!("no element reference in {value}"))
        })
    }

    /// The rendered text of the first element matching `selector`.
    pub fn text(&self, selector: &str) -> Result<String> {
        let element = self.find(selector)?;
        self.string("GET", &format!("element/{element}/text"), None)
    }

    /// Click the first element matching `selector`.
    pub fn click(&self, selector: &str) -> Result<()> {
        let element = self.find(selector)?;
        self.command(
            "POST",
            &format!("element/{element}/click"),
            Some(&json!({})),
        )
        .map(drop)
    }

    /// Type `text` into the first element matching `selector`.
    pub fn send_keys(&self, selector: &str, text: &str) -> Result<()> {
        let element = self.find(selector)?;
        self.command(
            "POST",
            &format!("element/{element}/value"),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    /// Any other W3C WebDriver command of this session: `method` on
    /// `/session/{id}/{path}`, with a JSON body for `POST`. Returns the response's `value`.
    pub fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let path = format!("/session/{}/{}", self.id, path.trim_start_matches('/'));
        // chromedriver refuses a POST without a body.
        let empty = json!({});
        let body = body.or((method == "POST").then_some(&empty));
        self.client.call(method, &path, body)
    }

    fn string(&self, method: &str, path: &str, body: Option<&Value>) -> Result<String> {
        let value = self.command(method, path, body)?;
        value.as_str().map(str::to_owned).ok_or_else(|| {
            self.client.error(
                &format!("{method} {path}"),
                format!("not a string: {value}"),
            )
        })
    }

    /// Close the browser.
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        self.client
            .call("DELETE", &format!("/session/{}", self.id), None)
            .map(drop)
    }
}

impl Drop for ChromiumSession {
    fn drop(&mut self) {
        if !self.deleted {
            // Best effort: shutting the bundle down closes the browser anyway.
            let _ = self
                .client
                .call("DELETE", &format!("/session/{}", self.id), None);
        }
    }
}

/// One chromedriver's address and the patience for each command.
#[derive(Debug, Clone)]
struct Client {
    service: String,
    port: u16,
    timeout: Duration,
}

impl Client {
    /// One request; the `value` of a successful answer, or an error with WebDriver's own
    /// `error` and `message`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let what = format!("{method} {path}");
        let deadline = Instant::now() + self.timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| self.error(&what, format!("can't connect to {addr}: {e}")))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| self.error(&what, e.to_string()))?;
        let json = body.map(|b| b.to_string().into_bytes());
        let host = format!("127.0.0.1:{}", self.port);
        let response = http::request(
            &mut stream,
            method,
            &host,
            path,
            "",
            json.as_deref(),
            true,
            deadline,
            self.timeout,
        )
        .map_err(|e| self.error(&what, e))?;
        let body = response.body.unwrap_or_default();
        let parsed: Value = serde_json::from_slice(&body).map_err(|_| {
            self.error(
                &what,
                format!(
                    "status {} with a body that is not JSON: {}",
                    response.status,
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                ),
            )
        })?;
        let value = parsed.get("value").cloned().unwrap_or(Value::Null);
        if response.status == 200 {
            return Ok(value);
        }
        let error = value["error"].as_str().unwrap_or("unknown error");
        let message = value["message"].as_str().unwrap_or("");
        // chromedriver's messages carry a long native stack trace after the first line.
        let message = message.lines().next().unwrap_or("");
        Err(self.error(
            &what,
            format!("status {}: {error}: {message}", response.status),
        ))
    }

    fn error(&self, command: &str, message: String) -> Error {
        Error::WebDriver {
            service: self.service.clone(),
            command: command.to_owned(),
            message,
        }
    }
}
