//! The startup timeline: data, text chart and SVG, in the order of the DAG.

use hitchserve::Service;

use crate::common::{sh, Project};

#[test]
fn the_timeline_follows_the_dag_and_is_drawn() {
    let p = Project::new("timeline");
    let mut b = p.bundle();
    b.add(
        "Db",
        sh("sleep 0.1; echo READY; exec sleep 1000").setup(|ctx| {
            ctx.run(["sleep", "0.1"])?;
            Ok(())
        }),
    )
    .unwrap();
    b.add(
        "Cache",
        sh("echo READY; exec sleep 1000").poststart(|ctx| {
            ctx.run(["sleep", "0.1"])?;
            Ok(())
        }),
    )
    .unwrap();
    b.add(
        "App",
        sh("echo READY; exec sleep 1000").needs(["Db", "Cache"]),
    )
    .unwrap();
    b.add("Worker", Service::new(["sleep", "1000"]).needs(["App"]))
        .unwrap();
    b.startup().unwrap();
    let t = b.timeline().unwrap();
    let get = |n: &str| t.services.iter().find(|s| s.name == n).unwrap().clone();
    let (db, cache, app, worker) = (get("Db"), get("Cache"), get("App"), get("Worker"));
    // Each service's own steps are in order...
    for s in [&db, &cache, &app, &worker] {
        assert!(s.started <= s.process_started && s.process_started <= s.check_passed);
        assert!(s.check_passed <= s.ready && s.ready.is_some(), "{s:?}");
    }
    let (setup_from, setup_to) = db.setup.unwrap();
    assert!(db.started <= Some(setup_from) && Some(setup_to) <= db.process_started);
    assert!(cache.check_passed < cache.ready, "poststart takes time");
    // ... and the DAG's order holds across services.
    assert!(app.started >= db.ready && app.started >= cache.ready);
    assert!(worker.started >= app.ready);
    assert_eq!(app.needs, vec!["Db", "Cache"]);

    let text = t.to_string();
    assert!(
        text.lines().count() == 5 && text.contains("Worker |"),
        "{text}"
    );
    // Drawn when the bundle stops, not before startup() returns: until then the file is
    // empty (made in advance, off the critical path) or not made yet.
    let svg_path = b.run_dir().unwrap().join("timeline.svg");
    assert!(std::fs::read(&svg_path).map_or(true, |svg| svg.is_empty()));
    b.shutdown().unwrap();
    let svg = std::fs::read_to_string(svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">Worker<"), "{svg}");
    let path = p.path("mine.svg");
    t.save_svg(&path).unwrap();
    assert!(std::fs::read_to_string(path).unwrap().contains("setup"));
    println!("{text}");
}
