//! The guardian: one tiny process per test process that kills every service of every bundle
//! if the test process dies without shutting them down (SIGKILL, abort, a crashed binary).
//!
//! It is `/bin/sh` running a short script, because the library lives inside other people's
//! test binaries and can't rely on their `main`, and forking without exec in a threaded
//! process is unsafe. It reads commands on stdin: `+g PGID` / `-g PGID` to watch or forget a
//! service's process group, `+r RUN` / `-r RUN` for a run whose marker it should sweep.
//! End of file on stdin means our process is gone: it then SIGKILLs every watched group and
//! kills every process whose `/proc/*/environ` carries a watched run's marker, which finds
//! processes that left their group (setsid, double fork).
//!
//! Invariant: the write end of its stdin is held only by our process (it is close-on-exec),
//! so end of file means exactly that. One guardian serves all bundles of the process, so
//! its start-up cost is paid once; if it dies, the next command starts a new one and
//! replays what it must watch.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::supervise::MARKER_VAR;

const SCRIPT: &str = r#"
trap '' HUP INT PIPE
groups=' '
runs=' '
while IFS= read -r cmd; do
  case $cmd in
    '+g '*) groups="$groups${cmd#+g } " ;;
    '-g '*) g=${cmd#-g }; kept=' '
            for x in $groups; do [ "$x" = "$g" ] || kept="$kept$x "; done
            groups=$kept ;;
    '+r '*) runs="$runs${cmd#+r } " ;;
    '-r '*) r=${cmd#-r }; kept=' '
            for x in $runs; do [ "$x" = "$r" ] || kept="$kept$x "; done
            runs=$kept ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
set --
for r in $runs; do set -- "$@" -e "HITCHSERVE_RUN=$r"; done
[ $# -gt 0 ] || exit 0
i=0
while [ $i -lt 50 ]; do
  found=$(grep -lsxzF "$@" /proc/[0-9]*/environ)
  [ -n "$found" ] || break
  for f in $found; do p=${f#/proc/}; kill -s KILL "${p%/environ}" 2>/dev/null; done
  i=$((i+1))
done
"#;

struct Guardian {
    child: Option<(Child, ChildStdin)>,
    groups: BTreeSet<u32>,
    runs: BTreeSet<String>,
}

static GUARDIAN: Mutex<Guardian> = Mutex::new(Guardian {
    child: None,
    groups: BTreeSet::new(),
    runs: BTreeSet::new(),
});

fn lock() -> MutexGuard<'static, Guardian> {
    GUARDIAN.lock().unwrap_or_else(|e| e.into_inner())
}

impl Guardian {
    fn spawn() -> std::io::Result<(Child, ChildStdin)> {
        debug_assert!(SCRIPT.contains(MARKER_VAR));
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("hitchserve-guardian")
            .env_remove(MARKER_VAR)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so a Ctrl-C meant for the test doesn't reach it first.
            .process_group(0)
            .current_dir("/")
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin pipe to the guardian"))?;
        Ok((child, stdin))
    }

    /// Send one command, (re)starting the guardian and replaying its state if needed.
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        if let Some((_, stdin)) = self.child.as_mut() {
            if stdin.write_all(line.as_bytes()).is_ok() {
                return Ok(());
            }
        }
        // Not started yet, or it died: start afresh and tell it everything.
        if let Some((mut old, _)) = self.child.take() {
            let _ = old.wait();
        }
        let (child, mut stdin) = Self::spawn()?;
        let mut replay = String::new();
        for g in &self.groups {
            replay.push_str(&format!("+g {g}\n"));
        }
        for r in &self.runs {
            replay.push_str(&format!("+r {r}\n"));
        }
        replay.push_str(line);
        stdin.write_all(replay.as_bytes())?;
        self.child = Some((child, stdin));
        Ok(())
    }
}

/// Watch a run's marker. Fails only if the guardian can't be started at all.
pub(crate) fn add_run(run_id: &str) -> std::io::Result<()> {
    let mut g = lock();
    g.runs.insert(run_id.to_owned());
    g.send(&format!("+r {run_id}\n"))
}

/// The run has stopped everything itself.
pub(crate) fn remove_run(run_id: &str) {
    let mut g = lock();
    g.runs.remove(run_id);
    let _ = g.send(&format!("-r {run_id}\n"));
}

/// Watch a service's process group.
pub(crate) fn watch(pgid: u32) {
    let mut g = lock();
    g.groups.insert(pgid);
    // If even a restart fails, the run's marker sweep at shutdown still finds it.
    let _ = g.send(&format!("+g {pgid}\n"));
}

/// The group's leader is about to be reaped: its pgid may be reused, so stop watching.
pub(crate) fn forget(pgid: u32) {
    let mut g = lock();
    g.groups.remove(&pgid);
    let _ = g.send(&format!("-g {pgid}\n"));
}
