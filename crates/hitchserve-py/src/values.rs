//! Python values as the engine's and back: seconds as a `Duration`, a signal's name as a
//! `Signal`, a JSON value as Python's dict, list, str, number, bool or `None`.
//!
//! Pure conversions: nothing here waits, locks or knows a class of this module. A value
//! Python passed that the engine cannot take raises `ValueError`.

use std::time::Duration;

use hitchserve::Signal;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString};
use serde_json::Value;

/// Seconds from Python as a `Duration`; a negative, infinite or NaN one raises `ValueError`.
pub(crate) fn secs(s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("not a duration in seconds: {s}")))
}

/// A line's text as the value Python's `json.loads` gives (its key order, integers of any
/// size), or `None` if the line is not JSON (as the engine decides: `NaN` is not).
pub(crate) fn json_line_to_py<'py>(
    py: Python<'py>,
    text: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return Ok(None);
    }
    py.import("json")?
        .getattr("loads")?
        .call1((text,))
        .map(Some)
}

/// A JSON value as a Python value: as `json.loads` would give it but for key order (the
/// engine's is sorted) and integers past 64 bits (floats here); see `json_line_to_py`.
pub(crate) fn json_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A signal by name, with or without `SIG`, in any case (`"term"`, `"SIGTERM"`).
pub(crate) fn signal(name: &str) -> PyResult<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") || upper.parse::<i32>().is_ok() {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}
