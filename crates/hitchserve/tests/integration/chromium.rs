//! The ready-made Chromium, for real: chromedriver drives a headless Chromium against an
//! app (Python's http.server) through the W3C WebDriver HTTP API, and none of Chromium's
//! processes outlives the bundle.

use std::time::Instant;

use hitchserve::services::Chromium;
use hitchserve::{Bundle, Ready, Service};

use crate::common::{is_alive, marked_pids, run_id, stat_field, wait_for, Project, PATIENCE};

const PAGE: &str = r#"<!doctype html>
<html><head><title>The app</title></head>
<body>
  <h1 id="greeting">Hello from the app</h1>
  <button id="go" onclick="document.getElementById('result').textContent = 'clicked'">Go</button>
  <p id="result">not yet</p>
</body></html>
"#;

/// The app and Chromium in one bundle (not started).
fn app_and_browser(p: &Project) -> Bundle {
    p.write("site/index.html", PAGE);
    let mut b = p.bundle();
    b.add(
        "App",
        Service::new([
            "python3",
            "-m",
            "http.server",
            "{port.http}",
            "--bind",
            "127.0.0.1",
        ])
        .directory("site")
        .port("http")
        .ready(Ready::http("http://127.0.0.1:{port.http}/").status(|s| s == 200)),
    )
    .unwrap();
    b.add("Chromium", Chromium::new().service()).unwrap();
    b
}

/// Pids of the live processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_field(pid, 5) == Some(i64::from(pgid)) && is_alive(pid))
        .collect()
}

fn is_chromium(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.starts_with("/usr/lib/chromium/"))
}

#[test]
fn a_browser_loads_the_apps_page_and_clicks_and_nothing_outlives_shutdown() {
    let p = Project::new("chromium");
    let mut b = app_and_browser(&p);
    b.startup().unwrap();
    let app = format!("http://127.0.0.1:{}/", b.port("App", "http").unwrap());
    let chromium = Chromium::handle(&b, "Chromium").unwrap();
    assert_eq!(
        chromium.url(),
        format!("http://127.0.0.1:{}", chromium.port())
    );
    let driver = chromium.service().pid().unwrap();

    // Only the loopback interface, and (run as root) not as root.
    let process = chromium.service().process().unwrap();
    let listening: Vec<_> = process
        .connections()
        .unwrap()
        .into_iter()
        .filter(|c| c.state == "LISTEN")
        .filter_map(|c| c.local)
        .collect();
    assert!(!listening.is_empty());
    assert!(
        listening
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == chromium.port()),
        "{listening:?}"
    );
    // SAFETY: a plain syscall without arguments.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(process.username().unwrap(), "nobody");
    }

    let session = chromium.new_session().unwrap();
    session.goto(&app).unwrap();
    assert_eq!(session.title().unwrap(), "The app");
    assert_eq!(session.text("#greeting").unwrap(), "Hello from the app");
    session.click("#go").unwrap();
    assert_eq!(session.text("#result").unwrap(), "clicked");
    // Chromium keeps real time: a day's jump of the bundle's clock doesn't reach the page.
    let uses_libfaketime = chromium
        .service()
        .env_var("LD_PRELOAD")
        .is_some_and(|p| p.contains("faketime"));
    assert!(!uses_libfaketime);
    b.time_travel(std::time::Duration::from_secs(86_400))
        .unwrap();
    let page_now = session
        .command(
            "POST",
            "execute/sync",
            Some(&serde_json::json!({ "script": "return Date.now()", "args": [] })),
        )
        .unwrap()
        .as_f64()
        .unwrap();
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert!(
        (page_now - real_now).abs() < 3_600_000.0,
        "the page's clock moved: {page_now} vs {real_now}"
    );
    // The profile is fresh, in the service's run directory.
    let caps = chromium.capabilities();
    let args = caps["capabilities"]["alwaysMatch"]["goog:chromeOptions"]["args"]
        .as_array()
        .unwrap();
    let profile = args
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--user-data-dir="))
        .next()
        .unwrap();
    assert!(
        profile.starts_with(&*chromium.directory().to_string_lossy()),
        "{profile}"
    );
    session.delete().unwrap();

    // A browser left open at shutdown: its processes (zygotes, renderers, GPU) stay in
    // chromedriver's process group and die with it.
    let open = chromium.new_session().unwrap();
    open.goto(&app).unwrap();
    let browser = group_members(driver);
    assert!(
        browser.iter().filter(|&&pid| is_chromium(pid)).count() >= 3,
        "Chromium's processes are not in chromedriver's group: {browser:?}"
    );
    let marked = marked_pids(&run_id(&b));
    assert!(
        marked
            .iter()
            .filter(|&&pid| is_chromium(pid))
            .all(|pid| browser.contains(pid)),
        "a Chromium process left chromedriver's group: {marked:?} vs {browser:?}"
    );
    let id = run_id(&b);
    b.shutdown().unwrap();
    assert!(
        wait_for(PATIENCE, || browser.iter().all(|&pid| !is_alive(pid))),
        "left alive: {:?}",
        browser
            .iter()
            .filter(|&&pid| is_alive(pid))
            .collect::<Vec<_>>()
    );
    assert!(marked_pids(&id).is_empty());
    assert!(group_members(driver).is_empty());
    // Deleting a session after shutdown says what went wrong (no hang, no panic).
    let err = open.delete().unwrap_err().to_string();
    assert!(err.contains("WebDriver command `DELETE /session/"), "{err}");
}

#[test]
fn a_missing_element_is_a_webdriver_error_naming_it() {
    let p = Project::new("chromium-missing");
    let mut b = app_and_browser(&p);
    b.startup().unwrap();
    let app = format!("http://127.0.0.1:{}/", b.port("App", "http").unwrap());
    let chromium = Chromium::handle(&b, "Chromium").unwrap();
    let session = chromium.new_session().unwrap();
    session.goto(&app).unwrap();
    let err = session.text("#nowhere").unwrap_err().to_string();
    assert!(
        err.contains("service `Chromium`") && err.contains("no such element"),
        "{err}"
    );
    session.delete().unwrap();
    let err = Chromium::handle(&b, "App").unwrap_err().to_string();
    assert!(err.contains("not a Chromium service"), "{err}");
}

/// Startup-to-ready and the first page load, median of 3 (run with `--ignored --nocapture`).
#[test]
#[ignore = "a benchmark: prints figures, asserts nothing about speed"]
fn bench_chromium_startup_and_first_page_load() {
    let mut ready = Vec::new();
    let mut session = Vec::new();
    let mut load = Vec::new();
    for _ in 0..3 {
        let p = Project::new("chromium-bench");
        let mut app = Bundle::new(&p.dir);
        p.write("site/index.html", PAGE);
        app.add(
            "App",
            Service::new([
                "python3",
                "-m",
                "http.server",
                "{port.http}",
                "--bind",
                "127.0.0.1",
            ])
            .directory("site")
            .port("http")
            .ready(Ready::http("http://127.0.0.1:{port.http}/")),
        )
        .unwrap();
        app.startup().unwrap();
        let url = format!("http://127.0.0.1:{}/", app.port("App", "http").unwrap());
        let mut b = p.bundle();
        b.add("Chromium", Chromium::new().service()).unwrap();
        let t = Instant::now();
        b.startup().unwrap();
        ready.push(t.elapsed());
        let chromium = Chromium::handle(&b, "Chromium").unwrap();
        let t = Instant::now();
        let s = chromium.new_session().unwrap();
        session.push(t.elapsed());
        let t = Instant::now();
        s.goto(&url).unwrap();
        assert_eq!(s.text("#greeting").unwrap(), "Hello from the app");
        load.push(t.elapsed());
        s.delete().unwrap();
        b.shutdown().unwrap();
        app.shutdown().unwrap();
    }
    for (what, v) in [
        ("startup to ready", &mut ready),
        ("new session (browser start)", &mut session),
        ("first page load + text", &mut load),
    ] {
        v.sort();
        println!("chromium {what}: median {:?} of {v:?}", v[1]);
    }
}
