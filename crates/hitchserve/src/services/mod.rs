//! Ready-made services: real servers in a few lines, built on the generic API.
//!
//! Each is a function returning a configured [`Service`](crate::Service) (so it can still be
//! adjusted with the builder) and a handle type for what a test does with the running
//! server. Ports are reserved with [`Service::port`](crate::Service::port), so parallel
//! tests never collide.

pub mod chromium;
pub mod cron;
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

/// The service called `name`, if the ready-made `kind` made it: what each kind's `handle`
/// stands on (a handle of another service would ask it what it can't answer).
fn service_of_kind(
    bundle: &crate::Bundle,
    name: &str,
    kind: &'static str,
) -> crate::Result<crate::ServiceHandle> {
    let service = bundle.service(name)?;
    match service.kind() == Some(kind) {
        true => Ok(service),
        false => Err(crate::Error::NotAService {
            service: name.to_owned(),
            kind: kind.to_owned(),
        }),
    }
}
