//! The ready-made services of a started bundle as Python classes: `PostgresHandle` (its port,
//! connection URLs, `psql`), `RedisHandle` (its port, URL, `redis-cli`) and `SmtpHandle` (its
//! port). Their definitions are `ServiceDef`'s constructors; the engine owns what they do.
//!
//! Nothing here waits: the commands they build are `Subcommand`s, run by their caller.

use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::prelude::*;

use crate::subcommand::Subcommand;

/// The ready-made PostgreSQL of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct PostgresHandle {
    pub(crate) handle: hitchserve::services::PostgresHandle,
}

#[pymethods]
impl PostgresHandle {
    fn port(&self) -> u16 {
        self.handle.port()
    }

    fn connection_url(&self, database: &str) -> String {
        self.handle.connection_url(database)
    }

    fn psql(&self, database: &str, sql: &str) -> Subcommand {
        Subcommand {
            sub: self.handle.psql(database, sql),
        }
    }

    fn psql_file(&self, database: &str, file: PathBuf) -> Subcommand {
        Subcommand {
            sub: self.handle.psql_file(database, file),
        }
    }
}

/// The ready-made Redis of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct RedisHandle {
    pub(crate) handle: hitchserve::services::RedisHandle,
}

#[pymethods]
impl RedisHandle {
    fn port(&self) -> u16 {
        self.handle.port()
    }

    fn url(&self) -> String {
        self.handle.url()
    }

    fn cli(&self, args: Vec<OsString>) -> Subcommand {
        Subcommand {
            sub: self.handle.cli(args),
        }
    }
}

/// The ready-made mock SMTP server of a started bundle.
#[pyclass(module = "hitchserve._native", frozen)]
pub(crate) struct SmtpHandle {
    pub(crate) handle: hitchserve::services::SmtpHandle,
}

#[pymethods]
impl SmtpHandle {
    fn port(&self) -> u16 {
        self.handle.port()
    }
}
