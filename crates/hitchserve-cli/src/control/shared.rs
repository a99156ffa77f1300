//! A shared bundle from the holders' side: `up --shared` (start the bundle unless it runs,
//! then take a lease), `attach` (take a lease on the running one) and `release`.
//!
//! Owns the start-or-attach decision, made under the project's `shared.lock` so that racing
//! first users start exactly one bundle, and what happens when the running bundle was started
//! from another definition: replaced if nobody holds it, else an error that says what changed
//! and who holds it. Invariant: a command that succeeds has taken a lease for its holder (by
//! default the process that ran it: the shell, the test) on a bundle that runs the file's
//! definition.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use std::time::Duration;

use serde_json::{json, Value};

use super::client::{down, request_patiently};
use super::leases::{definition, Definition};
use super::state_dir::{closed_to_us, open_state_file, up_is_running, RunningUp};
use super::up::detach_up;
use crate::config;
use crate::ExitCode;

/// Who holds a lease: the given pid, else the process that ran us — unless that one has
/// exited already (we were handed to init): nobody would ever release it.
fn holder(pid: Option<i32>) -> Result<i32, String> {
    match pid {
        Some(pid) => Ok(pid),
        None => match nix::unistd::getppid().as_raw() {
            1 => Err(
                "the process that ran `hitchserve` has exited, so it can't hold the lease: \
                      give the process that should hold it with --pid"
                    .to_owned(),
            ),
            ppid => Ok(ppid),
        },
    }
}

/// `--idle`: `0` (stop as soon as the last lease ends) or a duration (`10s`, `2m`).
pub fn idle_time(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" | "0ms" => Ok(Duration::ZERO),
        other => config::duration(other).map_err(|e| format!("--idle: {e}")),
    }
}

/// The file's definition, for the running bundle to compare with its own.
fn file_definition(file: &Path) -> Result<Definition, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
    definition(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// The project's start-or-attach lock, held while one holder decides (and starts). The
/// file also counts the starts that failed, with the last one's error: racing first users
/// who waited for a start that failed hear its error rather than each try again in turn
/// (each waiting out a startup timeout).
struct SharedLock {
    held: File,
    /// The error of a start that failed while this holder waited for the lock, and how
    /// many had failed by then.
    failed_meanwhile: Option<String>,
    failures: u64,
}

/// The lock file's count of failed starts and the last one's error.
fn failed_starts(file: &File) -> (u64, String) {
    let mut buf = vec![0u8; 64 * 1024];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let (count, why) = text.split_once('\n').unwrap_or((&text, ""));
    (count.trim().parse().unwrap_or(0), why.to_owned())
}

impl SharedLock {
    /// Note that the start this holder made failed, with `why`, for those waiting.
    fn note_failed_start(&self, why: &str) {
        // Its end: what went wrong is said last (an error may carry a whole log before it).
        let mut from = why.len().saturating_sub(4096);
        while !why.is_char_boundary(from) {
            from += 1;
        }
        let text = format!("{}\n{}", self.failures + 1, &why[from..]);
        let _ = self.held.set_len(0);
        let _ = std::os::unix::fs::FileExt::write_all_at(&self.held, text.as_bytes(), 0);
    }

    fn take(project: &Path) -> Result<SharedLock, String> {
        let dir = hitchserve::state_dir(project).map_err(|e| e.to_string())?;
        let path = dir.join("shared.lock");
        let file = open_state_file(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600),
            project,
            "shared.lock",
        )?;
        let (before, _) = failed_starts(&file);
        // Blocking: another holder is starting the bundle (bounded by its startup timeout).
        // SAFETY: a valid descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock `{}`: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let (failures, why) = failed_starts(&file);
        Ok(SharedLock {
            held: file,
            failed_meanwhile: (failures > before).then_some(why),
            failures,
        })
    }
}

/// How long a holder waits for a stopping bundle to end before it gives up: the stop is
/// bounded by each service's shutdown timeout, so this is a last resort.
const STOP_PATIENCE: Duration = Duration::from_secs(600);

/// Wait until the `up` of the project that runs now has ended (not for its lock: the next
/// `up` may take it at once).
fn wait_up_ended(project: &Path) -> Result<(), String> {
    let Some(up) = RunningUp::of(project) else {
        return Ok(());
    };
    match up.wait(STOP_PATIENCE) {
        true => Ok(()),
        false => Err(format!(
            "the shared bundle did not finish stopping within {} s: see `.hitchserve/up.log`",
            STOP_PATIENCE.as_secs()
        )),
    }
}

/// Why a lease was refused, as the server said it.
enum Refused {
    /// Started from another definition, or a service of it has crashed; `holders` hold it.
    Changed {
        holders: usize,
        why: String,
    },
    /// Stopping for want of a lease: start it again once it has stopped.
    Stopping,
    /// Not running (any more).
    Gone,
    Other(String),
}

/// How long a lease's asker waits for any word from the bundle before it says that the
/// bundle may be stopped or stuck.
const SILENCE: Duration = Duration::from_secs(10);

/// How long `up --shared` waits for another process's time travel to end before its lease
/// is refused (see `Leases::take`); `attach` doesn't wait.
const CLOCK_PATIENCE: Duration = Duration::from_secs(600);

fn lease(
    project: &Path,
    pid: i32,
    def: Option<&Definition>,
    wait: Duration,
) -> Result<Value, Refused> {
    let req = json!({"cmd": "lease", "pid": pid, "definition": def, "wait": wait.as_secs_f64(), "progress": true});
    // No socket while its `up` runs: it is in its last moments (the socket goes just before
    // the lock), so wait for the end as for a stop.
    // A stopped bundle (a debugger, a SIGSTOP) is waited for, said after a while (below):
    // every holder of a shared bundle would fail at once for a pause.
    let mut r =
        request_patiently(project, &req, None).map_err(|_| match up_is_running(project) {
            true => Refused::Stopping,
            false => Refused::Gone,
        })?;
    let mut line = String::new();
    // A lease waits while another holder's time travel runs (up to CLOCK_PATIENCE): the
    // bundle says so in a line before its answer. A bundle that says nothing at all for a
    // while may be stopped (SIGSTOP) or stuck: said once, then waited for on.
    let answered = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    {
        let answered = std::sync::Arc::clone(&answered);
        let pid = super::state_dir::up_pid(project);
        std::thread::spawn(move || {
            let (done, cv) = &*answered;
            let guard = done.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = cv
                .wait_timeout_while(guard, SILENCE, |d| !*d)
                .unwrap_or_else(|e| e.into_inner());
            if !*guard {
                let who = pid.map_or_else(
                    || "the bundle".to_owned(),
                    |p| format!("the bundle (pid {p})"),
                );
                eprintln!(
                    "hitchserve: {who} has not answered in {} s: it may be stopped (`kill -CONT`) \
                     or stuck; still waiting",
                    SILENCE.as_secs()
                );
            }
        });
    }
    loop {
        line.clear();
        let _ = std::io::BufRead::read_line(&mut r, &mut line);
        {
            let (done, cv) = &*answered;
            *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["for"] == "crash" => eprintln!(
                "hitchserve: waiting for the shared bundle: {} (another holder may start it \
                 again)",
                crate::in_file_terms(v["waiting"].as_str().unwrap_or("a service has crashed"))
            ),
            Ok(v) if !v["waiting"].is_null() => eprintln!(
                "hitchserve: waiting for the shared bundle: the time travel of process {} must \
                 end first",
                v["waiting"].as_str().unwrap_or("?")
            ),
            _ => break,
        }
    }
    let v: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(_) if !up_is_running(project) => return Err(Refused::Gone),
        Err(_) => return Err(Refused::Other("no answer from the bundle".to_owned())),
    };
    if v["ok"] == true {
        return Ok(v);
    }
    let why = v["error"].as_str().unwrap_or("failed").to_owned();
    Err(match v["kind"].as_str() {
        Some("changed" | "crashed") => Refused::Changed {
            holders: v["holders"].as_array().map_or(0, Vec::len),
            why,
        },
        Some("stopping") => Refused::Stopping,
        _ => Refused::Other(why),
    })
}

fn said(v: &Value, pid: i32, json_out: bool, started: bool) -> ExitCode {
    if json_out {
        let mut v = v.clone();
        v["started"] = json!(started);
        v["pid"] = json!(pid);
        if let Some(o) = v.as_object_mut() {
            o.remove("ok");
        }
        println!("{v}");
    } else {
        let holders = v["holders"].as_array().map_or(1, Vec::len);
        println!(
            "READY ({} shared bundle; lease {} held by pid {pid}, {holders} lease(s) in all; \
             `hitchserve release` ends it)",
            if started {
                "started the"
            } else {
                "attached to the"
            },
            v["lease"]
        );
    }
    ExitCode::SUCCESS
}

/// `up --shared`: start the bundle unless it runs, then take a lease.
pub fn up_shared(
    file: &Path,
    project: &Path,
    pid: Option<i32>,
    idle: Duration,
    timeline: bool,
    json_out: bool,
    relaunch: &[OsString],
) -> Result<ExitCode, String> {
    let pid = holder(pid)?;
    // Before anything starts for it: a process that can't hold the lease left a bundle
    // running that nobody held.
    super::leases::holder_pidfd(pid)?;
    // Checked before waiting on anyone: a broken file is the asker's to hear about (with
    // its line and column: read first for that).
    config::load(file)?;
    let def = file_definition(file)?;
    let decide = SharedLock::take(project)?;
    // (Unless a bundle runs by now: another process, come later, took the lock first and
    // started one.)
    if let Some(why) = decide
        .failed_meanwhile
        .as_ref()
        .filter(|_| !up_is_running(project))
    {
        return Err(format!(
            "the shared bundle could not be started (another process started it while this \
             one waited, and it failed): {why}"
        ));
    }
    // A few rounds: a bundle may stop for want of a lease (or be replaced) meanwhile.
    for _ in 0..4 {
        if up_is_running(project) {
            match lease(project, pid, Some(&def), CLOCK_PATIENCE) {
                Ok(v) => return Ok(said(&v, pid, json_out, false)),
                Err(Refused::Changed { holders: 0, .. }) => {
                    // Nobody holds the old one (another definition's, or one with a crashed
                    // service): replace it. Once it has stopped, the crash it reports as it
                    // stops was the old bundle's (said in its logs).
                    if let Err(why) = down(project) {
                        if up_is_running(project) {
                            return Err(why);
                        }
                    }
                    continue;
                }
                Err(Refused::Changed { why, .. }) => return Err(why),
                Err(Refused::Stopping | Refused::Gone) => {
                    wait_up_ended(project)?;
                    continue;
                }
                Err(Refused::Other(why)) => return Err(why),
            }
        }
        let started = match detach_up(file, project, timeline, Some(idle), relaunch) {
            Ok(started) => started,
            Err(why) => {
                decide.note_failed_start(&why);
                return Err(why);
            }
        };
        if started != ExitCode::SUCCESS {
            // Stopped by a signal while it started (Ctrl-C): not a bundle to start again.
            return Ok(started);
        }
        match lease(project, pid, Some(&def), CLOCK_PATIENCE) {
            Ok(v) => return Ok(said(&v, pid, json_out, true)),
            Err(Refused::Stopping | Refused::Gone) => wait_up_ended(project)?,
            Err(Refused::Changed { why, .. } | Refused::Other(why)) => return Err(why),
        }
    }
    Err(
        "the shared bundle kept stopping while a lease was asked for: see `.hitchserve/up.log`"
            .into(),
    )
}

/// `attach`: a lease on the running shared bundle (started from the same file).
pub fn attach(
    file: &Path,
    project: &Path,
    pid: Option<i32>,
    json_out: bool,
) -> Result<ExitCode, String> {
    let pid = holder(pid)?;
    // A broken file said with its line and column (as `up` says it).
    config::load(file)?;
    let def = file_definition(file)?;
    let _decide = SharedLock::take(project)?;
    match lease(project, pid, Some(&def), Duration::ZERO) {
        Ok(v) => Ok(said(&v, pid, json_out, false)),
        Err(Refused::Changed { holders: 0, why }) => Err(format!(
            "{why}; nobody holds it: `hitchserve up --shared` replaces it"
        )),
        Err(Refused::Changed { why, .. } | Refused::Other(why)) => Err(why),
        Err(Refused::Stopping) => Err(
            "the shared bundle is stopping: `hitchserve up --shared` starts a new one".to_owned(),
        ),
        Err(Refused::Gone) => Err(format!(
            "no shared bundle is running in `{}`: start one with `hitchserve up --shared`",
            project.display()
        )),
    }
}

/// `release`: end a lease (by id), or every lease of a process (by default, ours).
pub fn release(project: &Path, pid: Option<i32>, lease: Option<u64>) -> Result<ExitCode, String> {
    if !up_is_running(project) {
        if let Some(why) = closed_to_us(project) {
            return Err(why);
        }
        println!(
            "no bundle is running in `{}`: nothing to release",
            project.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let req = match lease {
        Some(id) => json!({"cmd": "release", "lease": id}),
        None => json!({"cmd": "release", "pid": holder(pid)?}),
    };
    let v = super::client::one_reply(project, &req)?;
    let released = v["released"].as_u64().unwrap_or(0);
    match (lease, pid) {
        // A mistyped id would leave the real lease held, and the bundle running, unseen.
        (Some(id), _) if released == 0 => Err(format!(
            "no lease {id} is held on the shared bundle in `{}`: `hitchserve status` lists the leases and their ids",
            project.display()
        )),
        (None, _) if released == 0 => {
            println!(
                "process {} holds no lease on the shared bundle: nothing released",
                holder(pid)?
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            println!(
                "released {released} lease{}",
                if released == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_takes_zero_and_durations() {
        assert_eq!(idle_time("0").unwrap(), Duration::ZERO);
        assert_eq!(idle_time("10s").unwrap(), Duration::from_secs(10));
        assert!(idle_time("soon").unwrap_err().contains("--idle"));
    }
}
