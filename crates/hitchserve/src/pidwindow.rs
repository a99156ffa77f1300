//! Which pids can belong to processes made since a moment. The kernel hands pids out in a
//! cycle — each above the last one handed out, back to the bottom (300) past `pid_max` — so
//! until the cycle has come round, every process made since the moment has a pid in the
//! window from the last pid then (excluded) to the last pid now.
//!
//! Owns reading the kernel's counters (`/proc/sys/kernel/ns_last_pid`, `processes` in
//! `/proc/stat`, the task count in `/proc/loadavg`) and deciding whether the window still
//! holds. It holds while fewer pids can have been passed since than the cycle is long: a pid
//! is passed when handed out (at most the forks since, counted over all pid namespaces and
//! threads included) or skipped because in use (at most the tasks alive at the moment; one
//! made since was counted when handed out). Anything unreadable or out of bounds: no window,
//! and the caller looks at every process. Not counted: a fork that fails once its pid is
//! handed out (a pids cgroup at its limit) moves the pid on and counts no fork, nor do pids
//! set by hand (`ns_last_pid`, `clone3`'s `set_tid`: root). A full cycle of those during a
//! run shrinks the window: the sweep is a net under the process groups and the run's cgroup
//! (which no pid count fools), not the only one.
//!
//! Why: the marker sweep at shutdown reads the environment of every process on the machine
//! (an open, a read of another process's memory, a close: about 350 µs for 70 processes here,
//! an eighth of stopping 20 services), when only processes made since the run began can
//! carry its marker.

/// Pids passed that the window is kept short of the cycle by, for whatever the counters
/// miss between their reads.
const SLACK: u64 = 1024;
/// The lowest pid handed out once the cycle comes round (`RESERVED_PIDS`).
const FIRST_AFTER_WRAP: u32 = 300;

/// The kernel's pid counters at a moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PidMark {
    last: u32,
    forks: u64,
    tasks: u64,
}

/// The pids processes made since a `PidMark` can have: `from` (excluded) to `to`, across
/// the wrap if `to < from`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PidWindow {
    from: u32,
    to: u32,
    max: u32,
}

impl PidMark {
    /// The counters now; `None` where they can't be read, or where `/proc` is not of our
    /// pid namespace (it names us by another pid than ours): its pids are not the ones
    /// `ns_last_pid` counts.
    pub(crate) fn now() -> Option<PidMark> {
        let me = std::fs::read_link("/proc/self").ok()?;
        if me.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
        let tasks = std::fs::read_to_string("/proc/loadavg")
            .ok()?
            .split_whitespace()
            .nth(3)?
            .split_once('/')?
            .1
            .parse()
            .ok()?;
        Some(PidMark {
            last: last_pid()?,
            forks: forks()?,
            tasks,
        })
    }

    /// The window of pids made since this mark, if it still holds.
    pub(crate) fn window(&self) -> Option<PidWindow> {
        let max: u32 = read_number("/proc/sys/kernel/pid_max")?;
        // Read after the last pid: forks counted since cover every pid handed out before.
        let to = last_pid()?;
        let forks = forks()?;
        let passed = forks
            .checked_sub(self.forks)?
            .saturating_add(self.tasks)
            .saturating_add(SLACK);
        let cycle = u64::from(max.checked_sub(FIRST_AFTER_WRAP)?);
        (passed < cycle && self.last < max && to < max).then_some(PidWindow {
            from: self.last,
            to,
            max,
        })
    }
}

impl PidWindow {
    /// Whether `pid` is in the window.
    pub(crate) fn contains(&self, pid: u32) -> bool {
        if self.from <= self.to {
            self.from < pid && pid <= self.to
        } else {
            (self.from < pid && pid < self.max) || (FIRST_AFTER_WRAP <= pid && pid <= self.to)
        }
    }

    /// How many pids it spans.
    pub(crate) fn len(&self) -> u32 {
        if self.from <= self.to {
            self.to - self.from
        } else {
            (self.max - 1 - self.from) + (self.to + 1).saturating_sub(FIRST_AFTER_WRAP)
        }
    }

    /// Every pid in it, oldest first.
    pub(crate) fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        let (first, wrapped) = if self.from <= self.to {
            (self.from + 1..=self.to, None)
        } else {
            (
                self.from + 1..=self.max - 1,
                Some(FIRST_AFTER_WRAP..=self.to),
            )
        };
        first.chain(wrapped.into_iter().flatten())
    }
}

fn last_pid() -> Option<u32> {
    read_number("/proc/sys/kernel/ns_last_pid")
}

/// Tasks made since boot (`processes` in `/proc/stat`).
fn forks() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("processes "))?
        .trim()
        .parse()
        .ok()
}

fn read_number<T: std::str::FromStr>(path: &str) -> Option<T> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_made_after_the_mark_is_in_its_window_and_one_before_is_not() {
        let mut before = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let mark = PidMark::now().expect("the counters are readable here");
        let mut after = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let window = mark.window().expect("no wrap in a moment");
        let (b, a) = (before.id(), after.id());
        for child in [&mut before, &mut after] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(window.contains(a), "{window:?} {a}");
        assert!(!window.contains(b), "{window:?} {b}");
        assert!(window.pids().any(|p| p == a));
        assert_eq!(window.pids().count(), window.len() as usize);
    }

    #[test]
    fn a_window_across_the_wrap() {
        let w = PidWindow {
            from: 32760,
            to: 305,
            max: 32768,
        };
        assert!(w.contains(32761) && w.contains(32767) && w.contains(300) && w.contains(305));
        assert!(!w.contains(32760) && !w.contains(306) && !w.contains(299) && !w.contains(1));
        let all: Vec<u32> = w.pids().collect();
        assert_eq!(all.len(), w.len() as usize);
        assert_eq!(all.first(), Some(&32761));
        assert_eq!(all.last(), Some(&305));
        // More pids passed since than the cycle holds: no window.
        let mark = PidMark {
            last: 1000,
            forks: 0,
            tasks: u64::MAX,
        };
        assert!(mark.window().is_none());
    }
}
