//! The startup timeline: when each service reached each step, as data, a text Gantt chart
//! and an SVG picture, so a user sees at a glance which service makes startup slow.
//!
//! Owns turning the instants the runtime records (`state::Steps`) into offsets from the
//! start of startup, and drawing them. It records nothing itself.

use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::runtime::Runtime;

/// Every service's startup steps, from [`Bundle::timeline`](crate::Bundle::timeline).
#[derive(Clone, Debug)]
pub struct Timeline {
    /// One per service, in definition order.
    pub services: Vec<ServiceTimeline>,
}

/// One service's steps, as offsets from the start of startup.
#[derive(Clone, Debug, Default)]
pub struct ServiceTimeline {
    /// The service.
    pub name: String,
    /// What it needed (by name).
    pub needs: Vec<String>,
    /// When its start began (its needs were met).
    pub started: Option<Duration>,
    /// Its setup hook ran from .. to.
    pub setup: Option<(Duration, Duration)>,
    /// When its process was started.
    pub process_started: Option<Duration>,
    /// When its readiness check passed.
    pub check_passed: Option<Duration>,
    /// Its poststart hook ran from .. to.
    pub poststart: Option<(Duration, Duration)>,
    /// When it was ready for its dependents (after its poststart hook, if any).
    pub ready: Option<Duration>,
}

pub(crate) fn of(runtime: &Runtime) -> Timeline {
    let states = runtime.lock();
    let t0 = runtime.t0;
    let since = |i: Option<Instant>| i.map(|i| i.saturating_duration_since(t0));
    let services = runtime.services();
    Timeline {
        services: services
            .iter()
            .zip(states.iter())
            .map(|(plan, st)| {
                let steps = st.startup_steps.unwrap_or(st.steps);
                ServiceTimeline {
                    name: plan.name.clone(),
                    needs: plan
                        .needs
                        .iter()
                        .map(|&(n, _)| services[n].name.clone())
                        .collect(),
                    started: since(steps.started),
                    setup: steps.setup.map(|(a, b)| {
                        (
                            a.saturating_duration_since(t0),
                            b.saturating_duration_since(t0),
                        )
                    }),
                    process_started: since(steps.spawned),
                    check_passed: since(steps.checked),
                    poststart: plan
                        .poststart
                        .as_ref()
                        .and(since(steps.checked).zip(since(steps.ready))),
                    ready: since(steps.ready),
                }
            })
            .collect(),
    }
}

impl Timeline {
    /// The latest moment in it.
    pub fn total(&self) -> Duration {
        self.services
            .iter()
            .flat_map(|s| {
                [
                    s.started,
                    s.setup.map(|x| x.1),
                    s.process_started,
                    s.check_passed,
                    s.ready,
                ]
            })
            .flatten()
            .max()
            .unwrap_or_default()
    }

    /// Write the timeline as an SVG picture.
    pub fn save_svg(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_svg())
    }

    /// The timeline as an SVG picture: a row per service; bars for waiting on needs,
    /// setup, starting until ready, and poststart.
    pub fn to_svg(&self) -> String {
        const LABEL: f64 = 150.0;
        const CHART: f64 = 640.0;
        const ROW: f64 = 26.0;
        const TOP: f64 = 44.0;
        let total = self.total().as_secs_f64().max(0.001);
        let x = |d: Duration| LABEL + CHART * d.as_secs_f64() / total;
        let height = TOP + ROW * self.services.len() as f64 + 40.0;
        let width = LABEL + CHART + 70.0;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="20" font-size="14" font-weight="bold">Startup timeline ({} s)</text>
"##,
            Fixed(total, 2)
        );
        // Time axis: five ticks.
        for i in 0..=5 {
            let t = total * f64::from(i) / 5.0;
            let tx = Fixed(LABEL + CHART * f64::from(i) / 5.0, 1);
            let _ = write!(
                svg,
                r##"<line x1="{tx}" y1="{TOP}" x2="{tx}" y2="{}" stroke="#dddddd"/>
<text x="{tx}" y="{}" text-anchor="middle" fill="#555555">{} s</text>
"##,
                Fixed(height - 30.0, 1),
                Fixed(height - 14.0, 1),
                Fixed(t, 2),
            );
        }
        for (row, s) in self.services.iter().enumerate() {
            let y = TOP + ROW * row as f64 + 4.0;
            let h = ROW - 8.0;
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="end">{}</text>"##,
                Fixed(LABEL - 8.0, 1),
                Fixed(y + h - 4.0, 1),
                escape(&s.name)
            );
            let mut bar = |from: Option<Duration>,
                           to: Option<Duration>,
                           colour: &str,
                           what: &str| {
                if let (Some(a), Some(b)) = (from, to) {
                    let w = (x(b) - x(a)).max(1.0);
                    let _ = writeln!(
                        svg,
                        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="{colour}"><title>{} {what}: {} s to {} s</title></rect>"##,
                        Fixed(x(a), 1),
                        Fixed(y, 1),
                        Fixed(w, 1),
                        Fixed(h, 1),
                        escape(&s.name),
                        Fixed(a.as_secs_f64(), 3),
                        Fixed(b.as_secs_f64(), 3)
                    );
                }
            };
            bar(
                Some(Duration::ZERO),
                s.started,
                "#e8e8e8",
                "waiting for its needs",
            );
            bar(
                s.setup.map(|x| x.0),
                s.setup.map(|x| x.1),
                "#f0a040",
                "setup",
            );
            bar(s.process_started, s.check_passed, "#4a90d9", "starting");
            bar(
                s.poststart.map(|x| x.0),
                s.poststart.map(|x| x.1),
                "#9b59b6",
                "poststart",
            );
            if let Some(r) = s.ready {
                let _ = writeln!(
                    svg,
                    r##"<text x="{}" y="{}" fill="#333333">{} s</text>"##,
                    Fixed(x(r) + 4.0, 1),
                    Fixed(y + h - 4.0, 1),
                    Fixed(r.as_secs_f64(), 2)
                );
            }
        }
        let ly = Fixed(height - 2.0, 1);
        let _ = write!(
            svg,
            r##"<text x="10" y="{ly}" fill="#555555">grey: waiting for needs · orange: setup · blue: starting until ready · purple: poststart</text>
</svg>
"##
        );
        svg
    }
}

/// `value` with `decimals` (at most 3) digits after the point, as `{:.N}` writes it for the
/// values drawn here, through integers: the picture has hundreds of numbers, and float
/// formatting made drawing it take ~70 µs of a shutdown for 20 services.
struct Fixed(f64, u32);

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10_i64.pow(self.1);
        let scaled = (self.0 * scale as f64).round() as i64;
        let sign = if scaled < 0 { "-" } else { "" };
        let (whole, frac) = (
            scaled.unsigned_abs() / scale as u64,
            scaled.unsigned_abs() % scale as u64,
        );
        match self.1 {
            0 => write!(f, "{sign}{whole}"),
            d => write!(f, "{sign}{whole}.{frac:0width$}", width = d as usize),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl fmt::Display for Timeline {
    /// A compact Gantt chart: `.` waiting for needs, `s` setup, `=` starting, `p` poststart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const COLS: usize = 50;
        let total = self.total().as_secs_f64().max(0.001);
        let col = |d: Duration| ((d.as_secs_f64() / total) * COLS as f64).round() as usize;
        let width = self
            .services
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        writeln!(f, "startup timeline, {total:.2} s")?;
        for s in &self.services {
            let mut row = vec![' '; COLS + 1];
            let mut paint = |from: Option<Duration>, to: Option<Duration>, c: char| {
                if let (Some(a), Some(b)) = (from, to) {
                    for cell in row
                        .iter_mut()
                        .take(col(b).max(col(a) + 1).min(COLS + 1))
                        .skip(col(a))
                    {
                        *cell = c;
                    }
                }
            };
            paint(Some(Duration::ZERO), s.started, '.');
            paint(s.setup.map(|x| x.0), s.setup.map(|x| x.1), 's');
            paint(s.process_started, s.check_passed, '=');
            paint(s.poststart.map(|x| x.0), s.poststart.map(|x| x.1), 'p');
            let row: String = row.into_iter().collect();
            let done = s.ready.map_or_else(
                || "not ready".to_owned(),
                |r| format!("{:.2} s", r.as_secs_f64()),
            );
            writeln!(f, "  {:>width$} |{}| {done}", s.name, row.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Fixed;

    #[test]
    fn fixed_writes_what_float_formatting_writes() {
        for v in [
            0.0,
            0.04,
            1.26,
            142.0,
            789.96,
            12.3456,
            0.1234,
            3.0e4 + 0.07,
            -2.5004,
        ] {
            assert_eq!(Fixed(v, 1).to_string(), format!("{v:.1}"), "{v}");
            assert_eq!(Fixed(v, 2).to_string(), format!("{v:.2}"), "{v}");
            assert_eq!(Fixed(v, 3).to_string(), format!("{v:.3}"), "{v}");
        }
    }
}
