//! The guardian: a tiny process per bundle that kills the bundle's services if the process
//! owning the bundle dies without shutting down (SIGKILL, abort, a crashed test binary).
//!
//! It is `/bin/sh` running a short script, because the library lives inside other people's
//! test binaries and can't rely on their `main`; forking without exec in a threaded process
//! is unsafe. It reads commands on stdin: `+PGID` to watch a process group, `-PGID` to forget
//! one, `q` to exit quietly. End of file on stdin means the bundle's process is gone: it then
//! SIGKILLs every watched group and sweeps `/proc/*/environ` for the run's marker, which finds
//! processes that left their group (setsid, double fork). Invariant: the write end of its stdin
//! is held only by the bundle's process (it is close-on-exec), so EOF means exactly that.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use crate::supervise::MARKER_VAR;

const SCRIPT: &str = r#"
trap '' HUP INT PIPE
run=$1
groups=' '
while IFS= read -r cmd; do
  case $cmd in
    +*) groups="$groups${cmd#+} " ;;
    -*) g=${cmd#-}; kept=' '
        for x in $groups; do [ "$x" = "$g" ] || kept="$kept$x "; done
        groups=$kept ;;
    q) exit 0 ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  found=$(grep -lsxzF "HITCHSERVE_RUN=$run" /proc/[0-9]*/environ)
  [ -n "$found" ] || break
  for f in $found; do p=${f#/proc/}; kill -s KILL "${p%/environ}" 2>/dev/null; done
  i=$((i+1))
done
"#;

pub(crate) struct Guardian {
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
}

impl Guardian {
    pub(crate) fn start(run_id: &str) -> std::io::Result<Guardian> {
        debug_assert_eq!(MARKER_VAR, "HITCHSERVE_RUN");
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("hitchserve-guardian")
            .arg(run_id)
            .env_remove(MARKER_VAR)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so a Ctrl-C meant for the test doesn't reach it first.
            .process_group(0)
            .current_dir("/")
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Guardian {
            child,
            stdin: Mutex::new(stdin),
        })
    }

    fn send(&self, line: &str) {
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stdin) = guard.as_mut() {
            // A dead guardian can't be helped here; shutdown still kills everything itself.
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    pub(crate) fn watch(&self, pgid: u32) {
        self.send(&format!("+{pgid}\n"));
    }

    pub(crate) fn forget(&self, pgid: u32) {
        self.send(&format!("-{pgid}\n"));
    }

    /// Tell the guardian to exit without sweeping (the bundle has stopped everything itself).
    pub(crate) fn quit(mut self) {
        self.send("q\n");
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = self.child.wait();
    }
}
