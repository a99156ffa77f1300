//! Not a test of its own: the suite `scripts/bench-shared.sh` runs under nextest to measure a
//! bundle per test against one shared bundle — 20 tests that each need PostgreSQL and an app
//! service, and run a query. Each test is ignored, and does nothing unless that script set
//! `HITCHSERVE_PG_SUITE` (`per-test` or `shared`) and `HITCHSERVE_PG_SUITE_DIR`.

use std::process::Command;
use std::time::Duration;

use hitchserve::services::postgres::{self, Postgres};
use hitchserve::{Bundle, Service, SharedBundle};

const BIN: &str = env!("CARGO_BIN_EXE_hitchserve");

fn app() -> Service {
    Service::new(["sh", "-c", "echo READY; exec sleep 1000"])
        .ready_when(|l| l == "READY")
        .needs(["Postgres"])
}

/// `SELECT 1` as the app's user, over TCP.
fn query(port: u16) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-tAc",
            "SELECT 1",
            "app",
        ])
        .env("PGPASSWORD", "secret")
        .output()
        .expect("psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
}

fn run() {
    let (Ok(mode), Ok(dir)) = (
        std::env::var("HITCHSERVE_PG_SUITE"),
        std::env::var("HITCHSERVE_PG_SUITE_DIR"),
    ) else {
        return;
    };
    match mode.as_str() {
        "per-test" => {
            let mut b = Bundle::new(&dir).startup_timeout(Duration::from_secs(120));
            let pg = Postgres::new().user("app", "secret").database("app", "app");
            b.add("Postgres", pg.service().unwrap()).unwrap();
            b.add("App", app()).unwrap();
            b.startup().unwrap();
            query(b.port("Postgres", postgres::PORT).unwrap());
            b.shutdown().unwrap();
        }
        "shared" => {
            let shared = SharedBundle::builder(format!("{dir}/hitchserve.toml"))
                .program(BIN)
                .attach()
                .unwrap();
            query(
                shared
                    .service("Postgres")
                    .unwrap()
                    .port(postgres::PORT)
                    .unwrap(),
            );
        }
        other => panic!("HITCHSERVE_PG_SUITE: `{other}`: per-test or shared"),
    }
}

macro_rules! suite {
    ($($name:ident),*) => {
        $(
            #[test]
            #[ignore = "run by scripts/bench-shared.sh"]
            fn $name() {
                run()
            }
        )*
    };
}

suite!(
    t01, t02, t03, t04, t05, t06, t07, t08, t09, t10, t11, t12, t13, t14, t15, t16, t17, t18, t19,
    t20
);
