//! The ready-made MariaDB, for real: the template, users, databases, an SQL file, the client
//! as the admin and as an app user over TCP, fake time, shutdown.

use std::time::{Duration, Instant};

use hitchserve::services::MariaDb;

use crate::common::{is_alive, marked_pids, run_id, wait_gone, Project, PATIENCE};

/// `mariadb` over TCP as `user`, the password in the client's environment (not its argv).
fn over_tcp(
    db: &hitchserve::services::MariaDbHandle,
    user: &str,
    password: Option<&str>,
) -> hitchserve::Output {
    let mut sub = db
        .service()
        .subcommand([
            "mariadb",
            "--no-defaults",
            "--protocol=tcp",
            "-h",
            "127.0.0.1",
            "-P",
            &db.port().to_string(),
            "-u",
            user,
            "--batch",
            "--skip-column-names",
            "-D",
            "app",
        ])
        .stdin("SELECT current_user(); SELECT note FROM notes ORDER BY id;");
    if let Some(pw) = password {
        sub = sub.env("MYSQL_PWD", pw);
    }
    sub.output().unwrap()
}

#[test]
fn mariadb_serves_an_app_user_over_tcp_follows_time_travel_and_leaves_nothing() {
    let p = Project::new("mariadb");
    p.write(
        "seed.sql",
        "CREATE TABLE notes (id int PRIMARY KEY, note text);\n\
         INSERT INTO notes VALUES (1, 'call mum'), (2, 'pay rent');\n",
    );
    let mut b = p.bundle();
    b.add(
        "MariaDb",
        MariaDb::new()
            .user("app", "s3cret'pw")
            .database_from_dump("app", "app", "seed.sql")
            .service()
            .unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let db = MariaDb::handle(&b, "MariaDb").unwrap();
    let svc = db.service();
    assert!(svc.is_ready());
    assert!(svc
        .logs()
        .poststart()
        .lines()
        .contains(&"users and databases created".to_owned()));

    // The admin, through the private socket.
    let count = db
        .mysql("app", "SELECT count(*) FROM notes")
        .checked_output()
        .unwrap();
    assert_eq!(count.stdout_text().trim(), "2");
    let meta = std::fs::metadata(db.socket().parent().unwrap()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o700
    );

    // The app user over TCP, with its password: a write and a read back.
    let app = over_tcp(&db, "app", Some("s3cret'pw"));
    assert!(app.status.success(), "{}", app.stderr_text());
    assert_eq!(app.stdout_text(), "app@%\ncall mum\npay rent\n");
    let write = db
        .service()
        .subcommand([
            "mariadb",
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &db.port().to_string(),
            "-u",
            "app",
            "-D",
            "app",
        ])
        .env("MYSQL_PWD", "s3cret'pw")
        .stdin("INSERT INTO notes VALUES (3, 'water plants');")
        .checked_output();
    assert!(write.is_ok(), "{write:?}");
    let three = db
        .mysql("app", "SELECT note FROM notes WHERE id = 3")
        .checked_output()
        .unwrap();
    assert_eq!(three.stdout_text().trim(), "water plants");
    assert_eq!(
        db.connection_url("app", "s3cret'pw", "app"),
        format!("mysql://app:s3cret%27pw@127.0.0.1:{}/app", db.port())
    );

    // Over TCP, which every local user can reach: never the admin or root without a
    // password, never a wrong password.
    for user in [db.admin(), "root"] {
        let out = over_tcp(&db, user, None);
        assert!(
            !out.status.success(),
            "{user} got in over TCP without a password"
        );
    }
    assert!(!over_tcp(&db, "app", Some("wrong")).status.success());

    // Not root, even when the test runs as root.
    let server = svc.process().unwrap();
    assert_ne!(server.uids().unwrap().real, 0);

    b.time_travel(Duration::from_secs(30 * 86_400)).unwrap();
    let now = db
        .mysql("app", "SELECT unix_timestamp(now(6))")
        .checked_output()
        .unwrap();
    let db_now: f64 = now.stdout_text().trim().parse().unwrap();
    let bundle_now = b.now().as_nanosecond() as f64 / 1e9;
    assert!(
        (db_now - bundle_now).abs() < 5.0,
        "db {db_now}, bundle {bundle_now}"
    );

    let run = run_id(&b);
    let pid = server.pid();
    b.shutdown().unwrap();
    assert!(wait_gone(pid, PATIENCE), "mariadbd {pid} outlived shutdown");
    assert!(!is_alive(pid));
    assert_eq!(marked_pids(&run), Vec::<u32>::new());
}

#[test]
fn a_fresh_mariadb_install_db_works_too() {
    let p = Project::new("mariadb-fresh");
    let mut b = p.bundle();
    b.add("Db", MariaDb::new().fresh_install_db().service().unwrap())
        .unwrap();
    b.startup().unwrap();
    let db = MariaDb::handle(&b, "Db").unwrap();
    let one = db.mysql("mysql", "SELECT 1").checked_output().unwrap();
    assert_eq!(one.stdout_text().trim(), "1");
    assert!(db
        .service()
        .logs()
        .setup()
        .lines()
        .iter()
        .all(|l| !l.contains("copied the template")));
}

/// Startup-to-ready of MariaDB with its template and with `mariadb-install-db` each run
/// (median of 3). Run with `cargo test --release -p hitchserve --test integration
/// mariadb_startup_figures -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test: run by hand"]
fn mariadb_startup_figures() {
    let once = |fresh: bool| {
        let p = Project::new("mariadb-bench");
        let mut b = p.bundle();
        let m = MariaDb::new().user("app", "pw").database("app", "app");
        let m = if fresh { m.fresh_install_db() } else { m };
        b.add("Db", m.service().unwrap()).unwrap();
        let t = Instant::now();
        b.startup().unwrap();
        let took = t.elapsed();
        b.shutdown().unwrap();
        took
    };
    let time = |fresh: bool| {
        let mut runs: Vec<Duration> = (0..3).map(|_| once(fresh)).collect();
        runs.sort();
        runs[1]
    };
    // The first run makes the template if there is none yet: not counted.
    let _ = once(false);
    let template = time(false);
    let fresh = time(true);
    println!("mariadb startup-to-ready: template {template:?}, mariadb-install-db {fresh:?}");
}

/// A restarted MariaDB keeps its data directory (its setup is not run again): the users
/// and databases it was made with are there already, the restart succeeds and the SQL file
/// is not loaded a second time (its INSERT would fail on the primary key).
#[test]
fn a_restarted_mariadb_keeps_its_users_databases_and_data() {
    let p = Project::new("mariadb-restart");
    p.write(
        "seed.sql",
        "CREATE TABLE notes (id int PRIMARY KEY, note text);\n\
         INSERT INTO notes VALUES (1, 'call mum');\n",
    );
    let mut b = p.bundle();
    b.add(
        "MariaDb",
        MariaDb::new()
            .user("app", "s3cret")
            .database_from_dump("app", "app", "seed.sql")
            .service()
            .unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let count = |b: &hitchserve::Bundle| {
        MariaDb::handle(b, "MariaDb")
            .unwrap()
            .mysql("app", "SELECT count(*) FROM notes")
            .checked_output()
            .unwrap()
            .stdout_text()
            .trim()
            .to_owned()
    };
    MariaDb::handle(&b, "MariaDb")
        .unwrap()
        .mysql("app", "INSERT INTO notes VALUES (2, 'pay rent')")
        .checked_output()
        .unwrap();
    assert_eq!(count(&b), "2");
    b.service("MariaDb").unwrap().restart().unwrap();
    assert_eq!(
        count(&b),
        "2",
        "the data survives, the SQL file is not loaded again"
    );
    // Its setup hook run again makes a fresh data directory: the SQL file's data alone.
    b.service("MariaDb").unwrap().restart_with_setup().unwrap();
    assert_eq!(count(&b), "1", "restart with setup kept the old data");
    b.shutdown().unwrap();
}

/// A commit survives a kill of the server right after it (a crash test's case): with the
/// log flushed once a second, the last second of commits was lost to a kill.
#[test]
fn a_committed_row_survives_a_kill_of_mariadb_right_after_it() {
    let p = Project::new("mariadb-kill");
    let mut b = p.bundle();
    b.add(
        "MariaDb",
        MariaDb::new()
            .user("app", "s3cret")
            .database("app", "app")
            .service()
            .unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let db = MariaDb::handle(&b, "MariaDb").unwrap();
    let sql = |statement: &str| {
        let out = db.mysql("app", statement).checked_output().unwrap();
        out.stdout_text().trim().to_owned()
    };
    sql("CREATE TABLE t (round int) ENGINE=InnoDB");
    for round in 0..3 {
        sql(&format!("INSERT INTO t VALUES ({round})"));
        db.service().kill(hitchserve::Signal::SIGKILL).unwrap();
        db.service().start().unwrap();
        assert_eq!(
            sql(&format!("SELECT count(*) FROM t WHERE round = {round}")),
            "1",
            "round {round}: the committed row was lost"
        );
    }
    b.shutdown().unwrap();
}

/// A client run in the server's environment (`hitchserve exec MariaDb -- mariadb ...`)
/// reaches this server, not the machine's (`/etc/mysql` names the system's socket, and it
/// was read before our `MYSQL_UNIX_PORT`).
#[test]
fn a_client_in_its_environment_reaches_this_server() {
    let p = Project::new("mariadb-exec");
    let mut b = p.bundle();
    b.add("Db", MariaDb::new().service().unwrap()).unwrap();
    b.startup().unwrap();
    let svc = b.service("Db").unwrap();
    let out = svc
        .subcommand(["mariadb", "-N", "-e", "select @@port"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert_eq!(
        out.stdout_text().trim(),
        b.port("Db", "mariadb").unwrap().to_string()
    );
    b.shutdown().unwrap();
}
