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

pub use chromium::{Chromium, ChromiumHandle, ChromiumSession};
pub use cron::Cron;
pub use mariadb::{MariaDb, MariaDbHandle};
pub use memcached::{Memcached, MemcachedClient, MemcachedHandle};
pub use nginx::{Nginx, NginxHandle};
pub use postgres::{Postgres, PostgresHandle};
pub use rabbitmq::{RabbitMq, RabbitMqHandle};
pub use redis::{Redis, RedisHandle};
pub use smtp::{Smtp, SmtpHandle};

/// Remove socket directories of servers long gone: empty (a live server keeps its socket
/// and lock file there) and older than a minute (not one a starting server is about to use).
pub(crate) fn prune_socket_dirs(sockets: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(sockets) else {
        return;
    };
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < old);
        if stale {
            // Fails, as it should, on a directory that isn't empty.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}
