//! The ready-made PostgreSQL, for real: initdb, users, databases, a dump, psql, fake time.

use std::time::Duration;

use hitchserve::services::{Postgres, PostgresHandle};
use hitchserve::Output;

use crate::common::Project;

/// `SELECT current_user` over TCP (which every local user can reach) as `user`.
fn psql_over_tcp(pg: &PostgresHandle, user: &str, password: &str, database: &str) -> Output {
    pg.service()
        .subcommand(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", user])
        .args(["-d", database, "-c", "SELECT current_user"])
        .env("PGPASSWORD", password)
        .output()
        .unwrap()
}

#[test]
fn postgres_starts_with_users_databases_and_a_dump_and_follows_time_travel() {
    let p = Project::new("postgres");
    p.write(
        "dump.sql",
        "CREATE TABLE reminders (id int, note text);\nINSERT INTO reminders VALUES (1, 'call mum'), (2, 'pay rent');\n",
    );
    let mut b = p.bundle();
    b.add(
        "Postgres",
        Postgres::new()
            .user("app", "s3cret")
            .database("app", "app")
            .database_from_dump("seeded", "app", "dump.sql")
            .service()
            .unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let pg = Postgres::handle(&b, "Postgres").unwrap();
    let count = pg
        .psql("seeded", "SELECT count(*) FROM reminders")
        .checked_output()
        .unwrap();
    assert_eq!(count.stdout_text().trim(), "2");
    // `psql` in its environment, whoever runs it, is the superuser (not the caller's name).
    assert!(
        pg.service()
            .environment()
            .iter()
            .any(|(k, v)| k == "PGUSER" && v == "postgres"),
        "{:?}",
        pg.service().environment()
    );
    let owner = pg
        .psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'",
        )
        .checked_output()
        .unwrap();
    assert_eq!(owner.stdout_text().trim(), "app");
    assert_eq!(
        pg.connection_url("app"),
        format!(
            "postgresql://postgres@/app?host={}&port={}",
            pg.socket_dir().display(),
            pg.port()
        )
    );
    // Over TCP, which every local user can reach: a password, never trust.
    let psql = |user: &str, password: &str| psql_over_tcp(&pg, user, password, "app");
    let superuser = psql("postgres", "");
    assert!(!superuser.status.success(), "the superuser got in over TCP");
    assert!(!psql("app", "wrong").status.success());
    let app = psql("app", "s3cret");
    assert!(app.status.success(), "{}", app.stderr_text());
    assert_eq!(app.stdout_text().trim(), "app");
    // The socket's directory is the server's own.
    let meta = std::fs::metadata(pg.socket_dir()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o700
    );
    let svc = pg.service();
    assert!(
        !svc.logs().setup().is_empty(),
        "initdb's output is labelled as setup"
    );
    assert!(svc
        .logs()
        .poststart()
        .lines()
        .contains(&"users and databases created".to_owned()));
    // Not root, even when the test runs as root.
    assert_ne!(svc.process().unwrap().uids().unwrap().real, 0);

    b.time_travel(Duration::from_secs(30 * 86_400)).unwrap();
    let now = pg
        .psql("postgres", "SELECT extract(epoch from now())")
        .checked_output()
        .unwrap();
    let db_now: f64 = now.stdout_text().trim().parse().unwrap();
    let bundle_now = b.now().as_nanosecond() as f64 / 1e9;
    assert!(
        (db_now - bundle_now).abs() < 5.0,
        "db {db_now}, bundle {bundle_now}"
    );
    b.shutdown().unwrap();
}

#[test]
fn a_fresh_initdb_cluster_works_too() {
    let p = Project::new("postgres-fresh");
    let mut b = p.bundle();
    b.add("Db", Postgres::new().fresh_initdb().service().unwrap())
        .unwrap();
    b.startup().unwrap();
    let pg = Postgres::handle(&b, "Db").unwrap();
    let one = pg.psql("postgres", "SELECT 1").checked_output().unwrap();
    assert_eq!(one.stdout_text().trim(), "1");
    assert!(pg
        .service()
        .logs()
        .setup()
        .lines()
        .iter()
        .any(|l| l.contains("initdb") || l.contains("database cluster")));
}

/// A restarted PostgreSQL keeps its data directory (its setup is not run again), so the
/// users and databases it was made with are there already: the restart succeeds, and a
/// dump is not loaded a second time. (Failed before the fix with `role "app" already
/// exists`, the service left starting.)
#[test]
fn a_restarted_postgres_keeps_its_users_databases_and_data() {
    let p = Project::new("postgres-restart");
    p.write(
        "dump.sql",
        "CREATE TABLE reminders (id int, note text);\nINSERT INTO reminders VALUES (1, 'call mum');\n",
    );
    let mut b = p.bundle();
    b.add(
        "Postgres",
        Postgres::new()
            .user("app", "s3cret")
            .database_from_dump("seeded", "app", "dump.sql")
            .service()
            .unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let count = |b: &hitchserve::Bundle| {
        let pg = Postgres::handle(b, "Postgres").unwrap();
        pg.psql("seeded", "SELECT count(*) FROM reminders")
            .checked_output()
            .unwrap()
            .stdout_text()
            .trim()
            .to_owned()
    };
    Postgres::handle(&b, "Postgres")
        .unwrap()
        .psql("seeded", "INSERT INTO reminders VALUES (2, 'pay rent')")
        .checked_output()
        .unwrap();
    assert_eq!(count(&b), "2");
    b.service("Postgres").unwrap().restart().unwrap();
    assert_eq!(
        count(&b),
        "2",
        "the data survives, the dump is not loaded again"
    );
    // Its setup hook run again makes a fresh cluster, as it says: the dump's data alone
    // (a copy went inside the old data directory, whose data stayed).
    b.service("Postgres").unwrap().restart_with_setup().unwrap();
    assert_eq!(count(&b), "1", "restart with setup kept the old data");
    let data = b.run_dir().unwrap().join("Postgres").join("data");
    let nested: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cluster-"))
        .collect();
    assert!(
        nested.is_empty(),
        "a cluster copied inside the data directory"
    );
    b.shutdown().unwrap();
}

/// `psql`'s SQL goes on its standard input: every local user can read a process's command
/// line, and SQL may hold a password (it was `psql -c SQL`).
#[test]
fn psqls_sql_is_never_on_its_command_line() {
    let p = Project::new("postgres-argv");
    let mut b = p.bundle();
    b.add("Postgres", Postgres::new().service().unwrap())
        .unwrap();
    b.startup().unwrap();
    let pg = Postgres::handle(&b, "Postgres").unwrap();
    let running = pg.psql("postgres", "SELECT 'hidden-marker', pg_sleep(3)");
    let client = std::thread::spawn(move || running.checked_output().unwrap());
    let cmdlines = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .collect()
    };
    // Looked at while it runs (it sleeps 3 s in the server).
    assert!(crate::common::wait_for(crate::common::PATIENCE, || {
        cmdlines()
            .iter()
            .any(|c| c.contains("psql") && c.contains("ON_ERROR_STOP"))
    }));
    let shown: Vec<String> = cmdlines()
        .into_iter()
        .filter(|c| c.contains("hidden-marker"))
        .collect();
    assert!(shown.is_empty(), "{shown:?}");
    let out = client.join().unwrap();
    assert!(
        out.stdout_text().contains("hidden-marker"),
        "{}",
        out.stdout_text()
    );
    b.shutdown().unwrap();
}

/// Asking for the superuser sets its password (it was skipped without a word: it exists, and
/// a login over TCP then failed); a NUL byte in a name or password is refused before
/// anything runs (it reached psql, whose error quoted the password into the log); a `user`
/// other than the one it was made for is refused (its templates belong to that one: the
/// setup hook took it for another user's attack).
#[test]
fn the_superusers_password_can_be_set_and_what_postgres_cant_take_is_refused() {
    let secret = "TOPSECRETa\0b";
    let nul = Postgres::new().user("app", secret).service().unwrap_err();
    assert!(
        matches!(nul, hitchserve::Error::InvalidSetting { .. }),
        "{nul:?}"
    );
    let said = nul.to_string();
    assert!(
        said.contains("NUL") && !said.contains("TOPSECRET"),
        "{said}"
    );
    // A user or database given twice (the later password silently won), in both kinds.
    let twice = Postgres::new()
        .user("app", "one")
        .user("app", "two")
        .service()
        .unwrap_err()
        .to_string();
    assert!(twice.contains("user `app` is given twice"), "{twice}");
    let twice = hitchserve::services::MariaDb::new()
        .user("app", "one")
        .database("shop", "app")
        .database("shop", "app")
        .service()
        .unwrap_err()
        .to_string();
    assert!(twice.contains("database `shop` is given twice"), "{twice}");
    let other_user = Postgres::new().service().unwrap().user("nobody");
    let p = Project::new("postgres-superuser");
    let mut b = p.bundle();
    let refused = b.add("Other", other_user).unwrap_err().to_string();
    assert!(refused.contains("os_user"), "{refused}");

    b.add(
        "Postgres",
        Postgres::new().user("postgres", "sup3r").service().unwrap(),
    )
    .unwrap();
    b.startup().unwrap();
    let pg = Postgres::handle(&b, "Postgres").unwrap();
    let over_tcp = psql_over_tcp(&pg, "postgres", "sup3r", "postgres");
    assert!(over_tcp.status.success(), "{}", over_tcp.stderr_text());
    assert_eq!(over_tcp.stdout_text().trim(), "postgres");
    b.shutdown().unwrap();
}

/// A commit survives a kill of the server right after it (a crash test's case): with
/// `synchronous_commit=off` the commits of the last ~0.2 s before a kill were lost (13 of
/// 14 kills within 0.1 s of a commit).
#[test]
fn a_committed_row_survives_a_kill_right_after_it() {
    let p = Project::new("postgres-kill");
    let mut b = p.bundle();
    b.add("Postgres", Postgres::new().service().unwrap())
        .unwrap();
    b.startup().unwrap();
    let pg = Postgres::handle(&b, "Postgres").unwrap();
    let sql = |statement: &str| {
        let out = pg.psql("postgres", statement).checked_output().unwrap();
        out.stdout_text().trim().to_owned()
    };
    sql("CREATE TABLE t (round int)");
    for round in 0..3 {
        sql(&format!("INSERT INTO t VALUES ({round})"));
        pg.service().kill(hitchserve::Signal::SIGKILL).unwrap();
        pg.service().start().unwrap();
        assert_eq!(
            sql(&format!("SELECT count(*) FROM t WHERE round = {round}")),
            "1",
            "round {round}: the committed row was lost"
        );
    }
    b.shutdown().unwrap();
}
