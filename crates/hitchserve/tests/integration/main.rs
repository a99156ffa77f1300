//! Integration tests of hitchserve, one module per capability, linked as one binary.
//!
//! Every test runs real processes (shells, Python, sleep); none waits by sleeping.

mod common;

#[cfg(feature = "tokio")]
mod async_api;

mod chromium;
mod conditions;
mod console;
mod crash_after_ready;
mod cron;
mod definitions;
mod fault_injection;
mod fault_races;
mod fault_review3;
mod hooks;
mod kernel;
mod layers;
mod log_index_memory;
mod log_losses;
mod log_queries;
mod log_store;
mod mariadb;
mod memcached;
mod nginx;
mod orphans;
mod parallel_bundles;
mod ports;
mod postgres;
mod private_run_dir;
mod process_api;
mod rabbitmq;
mod readiness;
mod redis;
mod reminders;
mod review16_logs;
mod review16b_logs;
mod review17_logs;
mod review17_spawn;
mod review5_guardian;
mod review5_tails;
mod review5_writer_wake;
mod review5b_pool;
mod review6_fork;
mod review6b_clone;
mod review_misc;
mod review_tt;
mod run_as_user;
mod shutdown;
mod signal_mask;
mod smtp;
mod startup;
mod startup_failures;
mod subcommands;
mod time_travel;
mod timeline;
