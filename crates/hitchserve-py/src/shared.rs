//! `NativeShared`: a lease on a bundle shared by many processes (the engine's
//! `SharedBundle`), and `cli_main`, the `hitchserve` command run in this process (what
//! `python -m hitchserve.cli` is, and what the shared bundle's daemon is started as).
//!
//! Its services are asked by name on each call (the engine's `SharedService` borrows the
//! bundle, which a Python object can't), and a tail is a position the Python object keeps.
//! Every call waits on the bundle's socket, so each releases the GIL; the ones that can wait
//! long (attaching, which may start the bundle; a tail's wait; a command) run on a thread of
//! their own while this one answers Ctrl-C. Invariant: one lease per `NativeShared`, ended
//! by `release` or when it is collected (the engine's `Drop`), never with the GIL held.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hitchserve::{SharedBundle, SharedLine};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{py_err, OrRaise};
use crate::values::{json_line_to_py, json_to_py, secs};
use crate::wait::{interruptible, lock};

/// A shared bundle's log line for Python: `(service, text, console form, seq, incarnation)`.
type Line = (String, String, String, u64, u32);

fn line(l: SharedLine) -> Line {
    (l.service, l.text, l.console, l.seq, l.incarnation)
}

/// Run the `hitchserve` command with `argv` (without the program's name) in this process;
/// its exit code. `relaunch` is how to run it again (as the shared bundle's daemon): the
/// program and its first arguments. The GIL is released: the command never calls Python.
#[pyfunction]
pub(crate) fn cli_main(py: Python<'_>, relaunch: Vec<OsString>, argv: Vec<OsString>) -> i32 {
    // The command sets SIGPIPE to its default for its client commands (a `logs | head` ends
    // quietly); run inside a Python process, it must leave Python's (ignored) as it was.
    // SAFETY: reading and then restoring one signal's action, with structs we own.
    let mut saved: libc::sigaction = unsafe { std::mem::zeroed() };
    let had = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut saved) } == 0;
    let code = py.detach(move || i32::from(hitchserve_cli::run(relaunch, argv).code()));
    if had {
        // SAFETY: as above.
        unsafe { libc::sigaction(libc::SIGPIPE, &saved, std::ptr::null_mut()) };
    }
    code
}

/// A lease on a shared bundle (the engine's `SharedBundle`).
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct NativeShared {
    /// `None` once released. An `Arc` so that a wait on a thread of its own can use it.
    bundle: Mutex<Option<Arc<SharedBundle>>>,
    /// The bundle's file, for errors of our own.
    file: PathBuf,
    /// What it said when it attached (kept for after the release).
    all_log: Option<PathBuf>,
    project: PathBuf,
    lease: u64,
    started: bool,
}

impl NativeShared {
    /// The bundle, while the lease is held.
    fn get(&self) -> PyResult<Arc<SharedBundle>> {
        lock(&self.bundle).clone().ok_or_else(|| {
            py_err(hitchserve::Error::Shared {
                file: self.file.clone(),
                message: "this lease was released: attach again (SharedBundle(...))".into(),
            })
        })
    }

    /// Run `f` on the bundle with the GIL released.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&SharedBundle) -> hitchserve::Result<R> + Send,
    ) -> PyResult<R> {
        let bundle = self.get()?;
        py.detach(|| f(&bundle)).or_raise()
    }

    /// Run `f` on the bundle on a thread of its own, Ctrl-C answered meanwhile.
    fn waiting<R: Send + 'static>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl FnOnce(&SharedBundle) -> hitchserve::Result<R> + Send + 'static,
    ) -> PyResult<R> {
        let bundle = self.get()?;
        interruptible(py, what, move || f(&bundle))?.or_raise()
    }
}

#[pymethods]
impl NativeShared {
    /// Start the bundle of `file` unless it runs, then take a lease for this process.
    /// `program` and `args`: how to run the `hitchserve` command (`python -m hitchserve.cli`).
    #[new]
    #[pyo3(signature = (file, program, args, idle=None))]
    fn new(
        py: Python<'_>,
        file: PathBuf,
        program: PathBuf,
        args: Vec<OsString>,
        idle: Option<f64>,
    ) -> PyResult<NativeShared> {
        let mut builder = SharedBundle::builder(&file).program_with_args(program, args);
        if let Some(idle) = idle {
            builder = builder.idle(secs(idle)?);
        }
        let attached = interruptible(py, "attach", move || builder.attach())?;
        // Ctrl-C also reaches the `hitchserve` command, which may answer first ("startup was
        // interrupted"): the user's Ctrl-C is the news.
        py.check_signals()?;
        let bundle = attached.or_raise()?;
        Ok(NativeShared {
            file,
            all_log: bundle.all_log().map(PathBuf::from),
            project: bundle.project_dir().to_path_buf(),
            lease: bundle.lease(),
            started: bundle.started_it(),
            bundle: Mutex::new(Some(Arc::new(bundle))),
        })
    }

    /// Another lease on the same bundle, over its socket: a test's own view.
    fn view(&self, py: Python<'_>) -> PyResult<NativeShared> {
        let view = self.with(py, |b| b.view())?;
        Ok(NativeShared {
            file: self.file.clone(),
            all_log: view.all_log().map(PathBuf::from),
            project: view.project_dir().to_path_buf(),
            lease: view.lease(),
            started: false,
            bundle: Mutex::new(Some(Arc::new(view))),
        })
    }

    #[getter]
    fn all_log(&self) -> Option<PathBuf> {
        self.all_log.clone()
    }

    #[getter]
    fn project_dir(&self) -> PathBuf {
        self.project.clone()
    }

    #[getter]
    fn lease(&self) -> u64 {
        self.lease
    }

    #[getter]
    fn started_it(&self) -> bool {
        self.started
    }

    fn released(&self) -> bool {
        lock(&self.bundle).is_none()
    }

    fn holders(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        self.with(py, SharedBundle::holders)
    }

    /// The services' time, in microseconds since the Unix epoch.
    fn now(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, |b| b.now().map(|t| t.as_microsecond()))
    }

    fn time_travel_by(&self, py: Python<'_>, micros: i64) -> PyResult<()> {
        let by = hitchserve::jiff::SignedDuration::from_micros(micros);
        self.with(py, |b| b.time_travel_by(by))
    }

    fn time_travel_to(&self, py: Python<'_>, micros: i64) -> PyResult<()> {
        let moment = hitchserve::jiff::Timestamp::from_microsecond(micros)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.with(py, |b| b.time_travel_to(moment))
    }

    /// This holder's lines (since it attached); of one service if `service` is given.
    #[pyo3(signature = (service=None))]
    fn logs(&self, py: Python<'_>, service: Option<String>) -> PyResult<Vec<Line>> {
        let lines = self.with(py, |b| match &service {
            Some(name) => b.service(name)?.logs(),
            None => b.logs(),
        })?;
        Ok(lines.into_iter().map(line).collect())
    }

    fn report(&self, py: Python<'_>, n: usize) -> PyResult<String> {
        let bundle = self.get()?;
        Ok(py.detach(|| bundle.report(n)))
    }

    /// End the lease now (a second call does nothing).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let taken = lock(&self.bundle).take();
        py.detach(|| match taken.map(Arc::try_unwrap) {
            Some(Ok(bundle)) => bundle.release(),
            // A wait still runs on its own thread (interrupted by Ctrl-C): the lease ends
            // when it does, by the engine's `Drop`.
            Some(Err(shared)) => {
                drop(shared);
                Ok(())
            }
            None => Ok(()),
        })
        .or_raise()
    }

    /// Raise `NoSuchService` unless the bundle has a service `name`.
    fn check_service(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.with(py, |b| b.service(name).map(drop))
    }

    fn pid(&self, py: Python<'_>, name: &str) -> PyResult<Option<u32>> {
        self.with(py, |b| b.service(name)?.pid())
    }

    fn state(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |b| b.service(name)?.state())
    }

    fn port(&self, py: Python<'_>, name: &str, port: &str) -> PyResult<u16> {
        self.with(py, |b| b.service(name)?.port(port))
    }

    fn environment(&self, py: Python<'_>, name: &str) -> PyResult<Vec<(String, String)>> {
        self.with(py, |b| b.service(name)?.environment())
    }

    /// Run `args` in the service's environment, directory and fake time, as its user:
    /// `(returncode, stdout, stderr)`: the returncode as `subprocess` has it (minus the signal
    /// that ended it).
    fn run(
        &self,
        py: Python<'_>,
        name: String,
        args: Vec<OsString>,
        input: Option<Vec<u8>>,
    ) -> PyResult<(i32, Vec<u8>, Vec<u8>)> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| PyValueError::new_err("run() needs a command"))?;
        let (program, rest) = (program.clone(), rest.to_vec());
        let (what, file) = (format!("run-{name}"), self.file.clone());
        self.waiting(py, &what, move |b| {
            let mut cmd = b.service(&name)?.command(&program)?;
            cmd.args(&rest);
            let failed = |e: std::io::Error| hitchserve::Error::Shared {
                file,
                message: format!(
                    "service `{name}`: cannot run `{}`: {e}",
                    program.to_string_lossy()
                ),
            };
            let out = match input {
                None => cmd.stdin(std::process::Stdio::null()).output(),
                Some(data) => feed(cmd, data),
            }
            .map_err(failed)?;
            // As `subprocess` has it: minus the signal that ended it.
            let returncode = {
                use std::os::unix::process::ExitStatusExt;
                out.status
                    .code()
                    .or(out.status.signal().map(|s| -s))
                    .unwrap_or(-1)
            };
            Ok((returncode, out.stdout, out.stderr))
        })
    }

    /// Wait up to `timeout` seconds for a line of `name` after line `after` matching the
    /// regular expression `pattern`.
    fn until(
        &self,
        py: Python<'_>,
        name: String,
        after: u64,
        pattern: String,
        timeout: f64,
    ) -> PyResult<Line> {
        let timeout = secs(timeout)?;
        self.waiting(py, "tail", move |b| {
            let found = b
                .service(&name)?
                .tail()
                .from_position(after)
                .until(&pattern, timeout)?;
            Ok(line(found))
        })
    }

    /// As `until`, for a JSON line matching `expr` (`field=value`, or `field`); the value
    /// and the position after it.
    fn until_json(
        &self,
        py: Python<'_>,
        name: String,
        after: u64,
        expr: String,
        timeout: f64,
    ) -> PyResult<(Py<PyAny>, u64)> {
        let timeout = secs(timeout)?;
        let (value, position) = self.waiting(py, "tail", move |b| {
            let mut tail = b.service(&name)?.tail().from_position(after);
            let value = tail.until_json_line(&expr, timeout)?;
            Ok((value, tail.position()))
        })?;
        // From the line's text, as `json.loads` reads it (keys in its order, big integers),
        // like a bundle's own tail; the engine's value if the text didn't come.
        let (value, text) = value;
        let from_text = match text {
            Some(text) => json_line_to_py(py, &text)?,
            None => None,
        };
        let value = match from_text {
            Some(v) => v.unbind(),
            None => json_to_py(py, &value)?.unbind(),
        };
        Ok((value, position))
    }

    /// Where a tail of `name` starts: just after the last line written before this holder
    /// attached.
    fn start_position(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        self.with(py, |b| Ok(b.service(name)?.tail().position()))
    }
}

/// Run `cmd` with `data` on its stdin (written from a thread: a command that writes before
/// it reads must not deadlock against us).
fn feed(mut cmd: std::process::Command, data: Vec<u8>) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&data);
        }
    });
    let out = child.wait_with_output();
    let _ = writer.join();
    out
}
