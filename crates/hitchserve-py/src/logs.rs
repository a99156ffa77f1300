//! The logs classes: `Logs`, a view of stored log lines, and `Tail`, a cursor over one that
//! waits for lines; and the tuple a log line is for Python (`Entry`), with the console's
//! label width that its console form is padded to.
//!
//! The engine owns the store, the filters and the matching; this module only converts and
//! waits. A wait runs in slices with the GIL released and Python's signal handlers between;
//! a predicate is called with the GIL, so the cursor it advances is a copy: no lock of ours is
//! held while Python runs. An exception a predicate raised ends the wait with it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hitchserve::{Error, LogLine, Stream};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::errors::py_err;
use crate::values::{json_line_to_py, secs};
use crate::wait::{lock, SLICE};

/// A log line for Python: `(text, service, stream, part, seq, unix time, console form,
/// incarnation)`.
type Entry = (
    String,
    String,
    &'static str,
    &'static str,
    u64,
    f64,
    String,
    u32,
    &'static str,
);

/// The console's label width for a bundle with these services: room for "Err NAME" (the
/// console widens it further for services with hooks, whose labels are longer).
pub(crate) fn console_width(names: &[String]) -> usize {
    names
        .iter()
        .map(|n| "Err ".len() + n.len())
        .fold("Hitch".len(), usize::max)
}

/// The length of a line's label (`[label] text`; labels never contain `]`).
fn label_len(line: &LogLine) -> usize {
    line.to_string().find(']').map_or(0, |end| end - 1)
}

/// `width`: the label width of the console form (see `console_width`).
fn entry(line: &LogLine, width: usize) -> Entry {
    let stream = match line.stream() {
        Stream::Stdout => "stdout",
        _ => "stderr",
    };
    let part = match line.part() {
        hitchserve::Part::Setup => "setup",
        hitchserve::Part::Poststart => "poststart",
        _ => "main",
    };
    let time = line
        .time()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    (
        line.text().into_owned(),
        line.service().to_owned(),
        stream,
        part,
        line.seq(),
        time,
        format!("{line:width$}"),
        line.incarnation(),
        // What a tail handed out: a whole line, the start of one not ended yet, or its rest.
        match (line.is_partial(), line.is_rest()) {
            (true, _) => "partial",
            (_, true) => "rest",
            _ => "whole",
        },
    )
}

/// A view of stored log lines (the engine's `Logs`).
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct Logs {
    pub(crate) logs: hitchserve::Logs,
    /// The console's label width (see `console_width`).
    pub(crate) width: usize,
}

#[pymethods]
impl Logs {
    fn out(&self) -> Logs {
        Logs {
            logs: self.logs.out(),
            width: self.width,
        }
    }

    fn err(&self) -> Logs {
        Logs {
            logs: self.logs.err(),
            width: self.width,
        }
    }

    fn setup(&self) -> Logs {
        Logs {
            logs: self.logs.setup(),
            width: self.width,
        }
    }

    fn poststart(&self) -> Logs {
        Logs {
            logs: self.logs.poststart(),
            width: self.width,
        }
    }

    fn main(&self) -> Logs {
        Logs {
            logs: self.logs.main(),
            width: self.width,
        }
    }

    fn lines(&self, py: Python<'_>) -> Vec<String> {
        let logs = self.logs.clone();
        py.detach(move || logs.lines())
    }

    fn entries(&self, py: Python<'_>) -> Vec<Entry> {
        let logs = self.logs.clone();
        let width = self.width;
        py.detach(move || logs.entries().iter().map(|l| entry(l, width)).collect())
    }

    fn last(&self, py: Python<'_>, n: usize) -> Vec<Entry> {
        let logs = self.logs.clone();
        let width = self.width;
        py.detach(move || logs.last(n).iter().map(|l| entry(l, width)).collect())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        let logs = self.logs.clone();
        py.detach(move || logs.len())
    }

    /// Every line in the console format, labels padded as the console pads them.
    fn console(&self, py: Python<'_>) -> String {
        let logs = self.logs.clone();
        let width = self.width;
        py.detach(move || {
            let entries = logs.entries();
            let width = entries.iter().map(label_len).fold(width, usize::max);
            entries.iter().map(|l| format!("{l:width$}\n")).collect()
        })
    }

    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let logs = self.logs.clone();
        let texts: Vec<String> = py.detach(move || {
            logs.entries()
                .iter()
                .map(|l| l.text().into_owned())
                .collect()
        });
        let list = PyList::empty(py);
        for text in &texts {
            if let Some(value) = json_line_to_py(py, text)? {
                list.append(value)?;
            }
        }
        Ok(list)
    }

    /// A cursor starting now, or `lines_back` matching lines earlier.
    #[pyo3(signature = (lines_back=0))]
    fn tail(&self, lines_back: usize) -> Tail {
        Tail {
            tail: Mutex::new(self.logs.tail().lines_back(lines_back)),
            width: self.width,
        }
    }
}

/// A cursor over a log view that waits for lines (the engine's `Tail`).
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct Tail {
    tail: Mutex<hitchserve::Tail>,
    /// The console's label width (see `console_width`).
    width: usize,
}

impl Tail {
    /// Wait in slices for `found` to return a value: between slices Python's signal handlers
    /// run (Ctrl-C), and an exception a predicate raised ends the wait with it.
    fn wait<T: Send>(
        &self,
        py: Python<'_>,
        timeout: f64,
        raised: &Mutex<Option<PyErr>>,
        attempt: impl Fn(&mut hitchserve::Tail, Duration) -> hitchserve::Result<T> + Sync,
    ) -> PyResult<T> {
        let full = secs(timeout)?;
        let deadline = Instant::now() + full;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(SLICE);
            // Work on a copy: the predicate takes the GIL, so no lock may be held meanwhile.
            let mut cursor = py.detach(|| lock(&self.tail).clone());
            let result = py.detach(|| attempt(&mut cursor, slice));
            py.detach(|| *lock(&self.tail) = cursor);
            if let Some(err) = lock(raised).take() {
                return Err(err);
            }
            match result {
                Ok(v) => return Ok(v),
                Err(Error::WaitTimeout {
                    what,
                    last_lines,
                    log,
                    ..
                }) => {
                    py.check_signals()?;
                    if Instant::now() >= deadline {
                        return Err(py_err(Error::WaitTimeout {
                            what,
                            timeout: full,
                            last_lines,
                            log,
                        }));
                    }
                }
                Err(e) => return Err(py_err(e)),
            }
        }
    }
}

/// Call a Python predicate; an exception is kept (and ends the wait) instead of answered.
fn ask(
    pred: &Py<PyAny>,
    raised: &Mutex<Option<PyErr>>,
    arg: impl FnOnce(Python<'_>) -> PyResult<Bound<'_, PyAny>>,
) -> bool {
    Python::attach(|py| {
        let answer = arg(py)
            .and_then(|a| pred.call1(py, (a,)))
            .and_then(|r| r.is_truthy(py));
        answer.unwrap_or_else(|err| {
            *lock(raised) = Some(err);
            true
        })
    })
}

#[pymethods]
impl Tail {
    /// Wait up to `timeout` seconds for a line making `pred(line)` true.
    fn until(&self, py: Python<'_>, pred: Py<PyAny>, timeout: f64) -> PyResult<Entry> {
        let raised = Mutex::new(None);
        let line = self.wait(py, timeout, &raised, |tail, slice| {
            tail.until(
                |text| ask(&pred, &raised, |py| Ok(PyString::new(py, text).into_any())),
                slice,
            )
        })?;
        Ok(entry(&line, self.width))
    }

    /// Wait up to `timeout` seconds for a JSON line making `pred(value)` true; the value,
    /// as `json.loads` gives it.
    fn until_json(&self, py: Python<'_>, pred: Py<PyAny>, timeout: f64) -> PyResult<Py<PyAny>> {
        let raised = Mutex::new(None);
        let found = self.wait(py, timeout, &raised, |tail, slice| {
            tail.until(
                |text| {
                    Python::attach(|py| {
                        let answer = json_line_to_py(py, text).and_then(|value| match value {
                            // Not JSON: skipped.
                            None => Ok(false),
                            Some(v) => pred.call1(py, (v,))?.is_truthy(py),
                        });
                        answer.unwrap_or_else(|err| {
                            *lock(&raised) = Some(err);
                            true
                        })
                    })
                },
                slice,
            )
        })?;
        Ok(json_line_to_py(py, &found.text())?.map_or_else(|| py.None(), Bound::unbind))
    }

    /// Move the cursor `n` matching lines back.
    fn back(&self, py: Python<'_>, n: usize) {
        py.detach(|| {
            let mut tail = lock(&self.tail);
            *tail = tail.clone().lines_back(n);
        })
    }

    /// The next line, waiting for it (Ctrl-C answered); `None` once the output has ended.
    fn next_line(&self, py: Python<'_>) -> PyResult<Option<Entry>> {
        loop {
            let mut cursor = py.detach(|| lock(&self.tail).clone());
            let result = py.detach(|| {
                cursor
                    .next_line(SLICE)
                    .map(|l| (entry(&l, self.width), cursor))
            });
            match result {
                Ok((line, cursor)) => {
                    py.detach(|| *lock(&self.tail) = cursor);
                    return Ok(Some(line));
                }
                Err(Error::WaitTimeout { .. }) => py.check_signals()?,
                Err(Error::EndedWhileWaiting { .. }) => return Ok(None),
                Err(e) => return Err(py_err(e)),
            }
        }
    }
}
