//! Read-only views of a running bundle for people: its process tree (`pstree`) and its
//! startup timeline (`timeline`).
//!
//! Owns the public snapshot types and how they are drawn. It only reads the runtime (plans
//! and states) and `/proc`; it changes nothing.

pub(crate) mod timeline;

use std::time::Duration;

use crate::process::Process;
use crate::runtime::Runtime;

/// Every service's processes, from [`Bundle::pstree`](crate::Bundle::pstree).
#[derive(Debug, Clone)]
pub struct ProcessTree {
    /// One entry per service, in definition order.
    pub services: Vec<TreeService>,
}

/// A service in a [`ProcessTree`].
#[derive(Debug, Clone)]
pub struct TreeService {
    /// Its name.
    pub name: String,
    /// Its main process first, then its descendants depth first; empty if it isn't running.
    pub processes: Vec<TreeProcess>,
}

/// A process in a [`ProcessTree`].
#[derive(Debug, Clone)]
pub struct TreeProcess {
    /// 0 for the service's main process, 1 for its children, ...
    pub depth: usize,
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Resident memory, bytes.
    pub rss: u64,
    /// CPU time used so far.
    pub cpu: Duration,
}

/// The process tree of every service of `runtime`.
pub(crate) fn pstree(runtime: &Runtime) -> ProcessTree {
    let mut services = Vec::new();
    for (idx, plan) in runtime.services().iter().enumerate() {
        let pid = runtime.read(idx, |st| st.pid());
        let mut processes = Vec::new();
        if let Some(root) = pid.and_then(|p| Process::new(p).ok()) {
            let mut all = vec![(0, root.clone())];
            let mut stack = vec![(root, 0usize)];
            while let Some((p, depth)) = stack.pop() {
                let kids = p.children(false).unwrap_or_default();
                for kid in kids.into_iter().rev() {
                    stack.push((kid.clone(), depth + 1));
                }
                if depth > 0 {
                    all.push((depth, p));
                }
            }
            for (depth, p) in all {
                let Ok(mem) = p.memory_info() else { continue };
                let cpu = p.cpu_times().map(|c| c.user + c.system).unwrap_or_default();
                processes.push(TreeProcess {
                    depth,
                    pid: p.pid(),
                    command: p.cmdline().unwrap_or_default().join(" "),
                    rss: mem.rss,
                    cpu,
                });
            }
        }
        services.push(TreeService {
            name: plan.name.clone(),
            processes,
        });
    }
    ProcessTree { services }
}

impl std::fmt::Display for ProcessTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for svc in &self.services {
            if svc.processes.is_empty() {
                writeln!(f, "{} (not running)", svc.name)?;
                continue;
            }
            writeln!(f, "{}", svc.name)?;
            for p in &svc.processes {
                writeln!(
                    f,
                    "  {:indent$}{} {} (rss {:.1} MiB, cpu {:.2} s)",
                    "",
                    p.pid,
                    p.command,
                    p.rss as f64 / (1024.0 * 1024.0),
                    p.cpu.as_secs_f64(),
                    indent = p.depth * 2
                )?;
            }
        }
        Ok(())
    }
}
