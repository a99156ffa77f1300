//! The async versions of the waiting calls (feature `tokio`) never block the runtime's
//! thread: on a current-thread runtime (what `#[tokio::test]` makes), another task must run
//! while they wait — here that task is what makes the awaited line happen, so a blocked
//! thread would turn into a timeout.

use hitchserve::Error;

use crate::common::{sh, Project, PATIENCE};

/// A service that is ready at once and says `went` once the file `go` exists.
fn waiter() -> hitchserve::Service {
    sh("echo READY; until [ -e go ]; do sleep 0.01; done; echo went; exec sleep 1000")
}

#[tokio::test]
async fn an_async_wait_for_a_line_leaves_the_runtime_thread_free() {
    let p = Project::new("async-until");
    let mut b = p.bundle();
    b.add("Waiter", waiter()).unwrap();
    b.startup_async().await.unwrap();
    let mut tail = b.service("Waiter").unwrap().logs().tail();
    let go = p.path("go");
    let maker = tokio::spawn(async move { std::fs::write(go, "").unwrap() });
    let line = tail.until_async(|l| l == "went", PATIENCE).await.unwrap();
    assert_eq!(line.text(), "went");
    maker.await.unwrap();
    b.shutdown_async().await.unwrap();
}

#[tokio::test]
async fn an_async_startup_leaves_the_runtime_thread_free() {
    let p = Project::new("async-startup");
    let mut b = p.bundle();
    b.add(
        "Gated",
        sh("until [ -e go ]; do sleep 0.01; done; echo READY; exec sleep 1000"),
    )
    .unwrap();
    let go = p.path("go");
    let maker = tokio::spawn(async move { std::fs::write(go, "").unwrap() });
    b.startup_async().await.unwrap();
    maker.await.unwrap();
    assert!(b.service("Gated").unwrap().is_ready());
    b.shutdown_async().await.unwrap();
}

#[tokio::test]
async fn an_async_startup_failure_is_the_usual_error_and_leaves_nothing_running() {
    let p = Project::new("async-fail");
    let mut b = p.bundle();
    b.add("Quitter", sh("echo bye; exit 4")).unwrap();
    match b.startup_async().await {
        Err(Error::ExitedBeforeReady { service, .. }) => assert_eq!(service, "Quitter"),
        other => panic!("expected the usual startup error, got {other:?}"),
    }
    // It has stopped: a bundle runs once.
    assert!(matches!(b.startup_async().await, Err(Error::ShutDown)));
}

#[tokio::test]
async fn an_async_follow_yields_lines_as_they_come_and_ends_with_the_service() {
    let p = Project::new("async-follow");
    let mut b = p.bundle();
    b.add(
        "Talker",
        sh("echo READY; until [ -e go ]; do sleep 0.01; done; echo one; echo two; exit 0"),
    )
    .unwrap();
    b.startup_async().await.unwrap();
    let talker = b.service("Talker").unwrap();
    let mut lines = talker.logs().out().tail().follow_async();
    std::fs::write(p.path("go"), "").unwrap();
    let mut seen = Vec::new();
    while let Some(line) = lines.next().await {
        seen.push(line.text().into_owned());
    }
    assert_eq!(seen, ["one", "two"]);
    let _ = b.shutdown_async().await;
}

#[tokio::test]
async fn an_async_restart_waits_until_the_service_is_ready_again() {
    let p = Project::new("async-restart");
    let mut b = p.bundle();
    b.add("Svc", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup_async().await.unwrap();
    let svc = b.service("Svc").unwrap();
    let first = svc.pid();
    svc.restart_async().await.unwrap();
    assert!(svc.is_ready());
    assert_ne!(svc.pid(), first);
    svc.stop_async().await.unwrap();
    svc.start_async().await.unwrap();
    svc.wait_until_ready_async().await.unwrap();
    assert_eq!(svc.incarnation(), 3);
    b.shutdown_async().await.unwrap();
}

/// Dropping `startup_async`'s future (a `tokio::time::timeout`, a `select!`) cancels the
/// startup, as Ctrl-C does a blocking one: what it started is stopped without waiting for
/// the startup timeout, and a shutdown afterwards has nothing left to do (its wait ran on
/// until the timeout, holding the runtime's teardown, and a failure meanwhile was lost).
#[tokio::test]
async fn dropping_an_async_startup_cancels_it_and_stops_what_it_started() {
    let p = Project::new("async-cancel");
    let mut b = p
        .bundle()
        .startup_timeout(std::time::Duration::from_secs(600));
    b.add("Up", sh("echo READY; echo PID $$; exec sleep 1000"))
        .unwrap();
    b.add(
        "Never",
        sh("echo PID $$; exec sleep 1000").needs_started(["Up"]),
    )
    .unwrap();
    let mut tail = b.logs().tail();
    let mut pids = Vec::new();
    {
        let startup = b.startup_async();
        tokio::pin!(startup);
        // Cancelled once both services have started (the second never becomes ready).
        while pids.len() < 2 {
            tokio::select! {
                r = &mut startup => panic!("startup ended: {r:?}"),
                line = tail.until_async(|l| l.starts_with("PID "), PATIENCE) => {
                    let line = line.unwrap();
                    pids.push(line.text()[4..].parse::<u32>().unwrap());
                }
            }
        }
    }
    for pid in &pids {
        assert!(
            crate::common::wait_gone(*pid, PATIENCE),
            "pid {pid} still runs after its startup was cancelled"
        );
    }
    b.shutdown_async().await.unwrap();
    assert!(b.check().is_ok());
    let logged = b.logs().lines().join("\n");
    assert!(logged.contains("Stopping"), "{logged}");
}

/// A tail's async wait dropped mid-way (a `select!` against a timer) leaves no wait behind
/// for the runtime's end to wait out (with a bundle kept for the whole test process, a
/// `#[tokio::test]` ended only once the dropped wait's own timeout had passed), and leaves
/// the tail where it was.
#[test]
fn a_dropped_async_tail_wait_holds_up_no_runtime() {
    let p = Project::new("async-dropped");
    let mut b = p.bundle();
    b.add("Quiet", sh("echo READY; exec sleep 1000")).unwrap();
    b.startup().unwrap();
    let mut tail = b.service("Quiet").unwrap().logs().tail().lines_back(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Polled first (its wait begins on the blocking pool), then dropped.
        tokio::select! {
            biased;
            r = tail.until_async(|l| l == "never", std::time::Duration::from_secs(3600)) => {
                panic!("{r:?}")
            }
            () = std::future::ready(()) => {}
        }
    });
    // Dropped elsewhere: waited for here, generously (the wait it left was an hour).
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = done.send(());
    });
    assert!(
        dropped.recv_timeout(PATIENCE).is_ok(),
        "the runtime's end waited for the dropped wait"
    );
    // The tail did not move: its one line back is still ahead of it.
    assert_eq!(tail.next_line(PATIENCE).unwrap().text(), "READY");
    b.shutdown().unwrap();
}

/// An async wait looks at a partial line once until it changes, as a blocking one does
/// (each 100 ms piece of the wait showed the prompt to the predicate again: a predicate
/// counting lines returned the partial).
#[tokio::test]
async fn an_async_wait_looks_at_a_partial_line_once() {
    let p = Project::new("async-partial");
    let mut b = p.bundle();
    // Its prompt stays unfinished across a few pieces of the wait.
    b.add(
        "Prompt",
        sh("printf 'prompt> '; sleep 0.35; echo done; exec sleep 1000")
            .ready(hitchserve::Ready::started()),
    )
    .unwrap();
    b.startup_async().await.unwrap();
    let mut tail = b.service("Prompt").unwrap().logs().tail();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let looked = std::sync::Arc::clone(&seen);
    let line = tail
        .until_async(
            move |l| {
                let mut looked = looked.lock().unwrap();
                looked.push(l.to_owned());
                looked.len() == 2
            },
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["prompt> ", "prompt> done"]);
    assert_eq!(line.text(), "prompt> done");
    b.shutdown_async().await.unwrap();
}
