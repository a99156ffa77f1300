//! The ready-made Redis, for real: SET and GET through redis-cli.

use hitchserve::services::Redis;

use crate::common::Project;

#[test]
fn set_and_get_through_the_cli() {
    let p = Project::new("redis");
    let mut b = p.bundle();
    b.add("Redis", Redis::new().config("maxmemory", "10mb").service())
        .unwrap();
    b.add("Cache2", Redis::new().service()).unwrap();
    b.startup().unwrap();
    let redis = Redis::handle(&b, "Redis").unwrap();
    let other = Redis::handle(&b, "Cache2").unwrap();
    assert_ne!(redis.port(), other.port());
    redis.cli(["SET", "greeting", "hello"]).run().unwrap();
    let got = redis.cli(["GET", "greeting"]).checked_output().unwrap();
    assert_eq!(got.stdout_text().trim(), "hello");
    // The other server is a different one.
    let none = other.cli(["GET", "greeting"]).checked_output().unwrap();
    assert_eq!(none.stdout_text().trim(), "");
    let cfg = redis
        .cli(["CONFIG", "GET", "maxmemory"])
        .checked_output()
        .unwrap();
    assert!(
        cfg.stdout_text().contains("10485760"),
        "{}",
        cfg.stdout_text()
    );
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    let listening = redis
        .service()
        .process()
        .unwrap()
        .connections()
        .unwrap()
        .iter()
        .any(|c| c.state == "LISTEN" && c.local.map(|a| a.port()) == Some(redis.port()));
    assert!(listening);
}

#[test]
fn redis_runs_the_program_it_is_given() {
    let installed = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .expect("redis-server on PATH");
    let p = Project::new("redis-program");
    let mut b = p.bundle();
    b.add("Redis", Redis::new().program(&installed).service())
        .unwrap();
    b.startup().unwrap();
    let redis = Redis::handle(&b, "Redis").unwrap();
    let pong = redis.cli(["PING"]).checked_output().unwrap();
    assert_eq!(pong.stdout_text().trim(), "PONG");
    b.shutdown().unwrap();

    let mut b = p.bundle();
    b.add(
        "Redis",
        Redis::new().program("/nonexistent/redis-server").service(),
    )
    .unwrap();
    let err = b.startup().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/redis-server"), "{err}");
}

#[test]
fn a_keys_ttl_runs_out_when_the_bundle_travels_in_time() {
    let p = Project::new("redis-ttl");
    let mut b = p.bundle();
    b.add("Redis", Redis::new().service()).unwrap();
    b.startup().unwrap();
    let redis = Redis::handle(&b, "Redis").unwrap();
    let unix_time = |redis: &hitchserve::services::redis::RedisHandle| -> i64 {
        let out = redis.cli(["TIME"]).checked_output().unwrap();
        out.stdout_text()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    redis
        .cli(["SET", "session", "alive", "EX", "3600"])
        .run()
        .unwrap();
    let before = unix_time(&redis);
    b.time_travel(std::time::Duration::from_secs(2 * 3600))
        .unwrap();
    // Redis's own clock moved with the bundle's...
    let after = unix_time(&redis);
    assert!(
        after - before >= 2 * 3600,
        "TIME went from {before} to {after}"
    );
    // ... so the key's hour is over.
    let got = redis.cli(["GET", "session"]).checked_output().unwrap();
    assert_eq!(got.stdout_text().trim(), "", "the key outlived its TTL");
}

/// Under root, `os_user("redis")` keeps Redis (which any local user can reach on its port)
/// from running as root, and a `SAVE` writes in its own directory, not in the project. So
/// does a `user` given to its service (the bundle file's `user = "redis"`): its directory,
/// made for that user, was refused as another user's.
#[test]
fn redis_as_its_own_user_saves_in_its_own_directory() {
    if !crate::common::is_root() {
        eprintln!("skipped: only root runs services as another user");
        return;
    }
    for (how, svc) in [
        ("os_user", Redis::new().os_user("redis").service()),
        ("user", Redis::new().service().user("redis")),
    ] {
        let p = Project::new(&format!("redis-{how}"));
        let mut b = p.bundle();
        b.add("Redis", svc).unwrap();
        b.startup().unwrap_or_else(|e| panic!("{how}: {e}"));
        let redis = Redis::handle(&b, "Redis").unwrap();
        let user = redis.service().process().unwrap().username().unwrap();
        assert_eq!(user, "redis", "{how}");
        redis.cli(["SAVE"]).checked_output().unwrap();
        let own = b.run_dir().unwrap().join("Redis").join("dump.rdb");
        assert!(own.exists(), "{how}: no {}", own.display());
        assert!(!p.path("dump.rdb").exists());
        b.shutdown().unwrap();
    }
}

/// A `SAVE` asked of a Redis run as the test's own user (root, in CI) — by anyone who can
/// reach its port — writes in its private directory, never into the project.
#[test]
fn redis_saves_in_a_private_directory_of_its_own() {
    let p = Project::new("redis-save");
    let mut b = p.bundle();
    b.add("Redis", Redis::new().service()).unwrap();
    b.startup().unwrap();
    let redis = Redis::handle(&b, "Redis").unwrap();
    redis.cli(["SAVE"]).checked_output().unwrap();
    let own = b.run_dir().unwrap().join("Redis");
    assert!(
        own.join("dump.rdb").exists(),
        "no dump in {}",
        own.display()
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&own).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert!(!p.path("dump.rdb").exists());
    b.shutdown().unwrap();
}

/// A `config("dir", ..)` of one's own is kept with `os_user` (ours overrode it).
#[test]
fn redis_as_its_own_user_keeps_a_dir_of_ones_own() {
    if !crate::common::is_root() {
        eprintln!("skipped: only root runs services as another user");
        return;
    }
    let p = Project::new("redis-own-dir");
    let dir = p.path("redis-data");
    std::fs::create_dir(&dir).unwrap();
    let redis_user = nix::unistd::User::from_name("redis").unwrap().unwrap();
    std::os::unix::fs::chown(&dir, Some(redis_user.uid.as_raw()), None).unwrap();
    let mut b = p.bundle();
    b.add(
        "Redis",
        Redis::new()
            .os_user("redis")
            .config("dir", &dir.to_string_lossy())
            .service(),
    )
    .unwrap();
    b.startup().unwrap();
    let redis = Redis::handle(&b, "Redis").unwrap();
    let got = redis
        .cli(["CONFIG", "GET", "dir"])
        .checked_output()
        .unwrap()
        .stdout_text();
    let real = std::fs::canonicalize(&dir).unwrap();
    assert!(got.contains(&*real.to_string_lossy()), "{got}");
    b.shutdown().unwrap();
}

/// A setup of the test's own on the ready-made Redis runs after Redis's own (which makes
/// its private directory): given again, a hook runs after the one before.
#[test]
fn a_setup_of_ones_own_on_a_ready_made_service_runs_after_its_own() {
    let p = Project::new("redis-own-setup");
    let mut b = p.bundle();
    b.add(
        "Redis",
        Redis::new().service().setup(|ctx| {
            let own = ctx.run_dir().join(ctx.service());
            assert!(own.is_dir(), "Redis's own setup had not run");
            ctx.log("mine ran");
            Ok(())
        }),
    )
    .unwrap();
    b.startup().unwrap();
    assert!(b.logs().lines().iter().any(|l| l == "mine ran"));
    b.shutdown().unwrap();
}
