//! Ready-made services: real servers in a few lines, built on the generic API.
//!
//! Each is a function returning a configured [`Service`](crate::Service) (so it can still be
//! adjusted with the builder) and a handle type for what a test does with the running
//! server. Ports are reserved with [`Service::port`](crate::Service::port), so parallel
//! tests never collide.

mod accounts;
pub mod chromium;
pub mod cron;
mod data_dir;
mod kind;
pub mod mariadb;
pub mod memcached;
pub mod nginx;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod smtp;
mod socket_dirs;

pub use chromium::{Chromium, ChromiumHandle, ChromiumSession};
pub use cron::Cron;
pub use mariadb::{MariaDb, MariaDbHandle};
pub use memcached::{Memcached, MemcachedClient, MemcachedHandle};
pub use nginx::{Nginx, NginxHandle};
pub use postgres::{Postgres, PostgresHandle};
pub use rabbitmq::{RabbitMq, RabbitMqHandle};
pub use redis::{Redis, RedisHandle};
pub use smtp::{Smtp, SmtpHandle};
