//! Ready-made services: real servers in a few lines, built on the generic API.
//!
//! Each is a function returning a configured [`Service`](crate::Service) (so it can still be
//! adjusted with the builder) and a handle type for what a test does with the running
//! server. Ports are reserved with [`Service::port`](crate::Service::port), so parallel
//! tests never collide.

pub mod chromium;
pub mod cron;
pub mod postgres;
pub mod redis;
pub mod smtp;

pub use chromium::{Chromium, ChromiumHandle, ChromiumSession};
pub use cron::Cron;
pub use postgres::{Postgres, PostgresHandle};
pub use redis::{Redis, RedisHandle};
pub use smtp::{Smtp, SmtpHandle};
