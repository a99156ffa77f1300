//! The library's modules import only downwards: a test that reads its `use crate::` lines
//! (and `super::` and `crate::a::b` paths) against the layer order `lib.rs` states, and finds
//! no import cycle between its files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top; a module may import from its own layer or below, never above.
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "signal",
        "safepath",
        "perprocess",
        "cgroup",
        "process",
        "pidwindow",
        "rundir",
        "ports",
        "timetravel",
        "exec",
        "guardian",
    ],
    &["logs", "subcommand"],
    &["service", "readiness", "hooks"],
    &["plan"],
    &["runtime"],
    &["inspect"],
    &["bundle", "handle", "interrupt", "observer", "asynch"],
    &["kernel", "services", "shared"],
];

fn layer(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("module `{top}` has no layer: add it to LAYERS (and lib.rs)"))
}

/// Every `.rs` file under `dir` with its module path (`runtime/state.rs` → `runtime::state`).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The longest known module that `path` (a `::` path from the crate root) names.
fn resolve(path: &[&str], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// The modules `module` (in `text`) refers to, by `crate::`, `super::` and (in a `mod.rs`)
/// its children's names. Comments and doc comments are skipped (links there are not
/// imports), and so is an inline `#[cfg(test)]` module at the end.
fn references(module: &str, text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let own: Vec<&str> = module.split("::").collect();
    let mut out = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            // Inline test modules come last; their `super` is this module, and what they
            // use is not what the module imports. (Test files of their own are scanned.)
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        let mut rest = code;
        while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let start = &rest[i..];
            let end = start
                .find(|c: char| !(ident(c) || c == ':'))
                .unwrap_or(start.len());
            let word = &start[..end];
            rest = &start[end..];
            let parts: Vec<&str> = word.split("::").filter(|p| !p.is_empty()).collect();
            let absolute: Vec<&str> = match parts.first() {
                Some(&"crate") => parts[1..].to_vec(),
                // (`pub(super)` is a visibility, not a path.)
                Some(&"super") if parts.len() > 1 || word.ends_with("::") => {
                    let mut base = own.clone();
                    let mut tail = &parts[..];
                    while tail.first() == Some(&"super") {
                        base.pop();
                        tail = &tail[1..];
                    }
                    base.extend_from_slice(tail);
                    base
                }
                Some(&first) if parts.len() > 1 || word.ends_with("::") => {
                    // A child of this module named relatively (`use state::Event`,
                    // `pub(crate) use read::{..}` in a mod.rs).
                    let mut child = own.clone();
                    child.push(first);
                    let is_use = code.starts_with("use ")
                        || (code.starts_with("pub") && code.contains(" use "));
                    if known.contains_key(&child.join("::")) && is_use {
                        child.extend_from_slice(&parts[1..]);
                        child
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            if let Some(target) = resolve(&absolute, known) {
                if target != module {
                    out.insert(target);
                }
            }
        }
    }
    out
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    known
        .iter()
        .map(|(module, path)| {
            let text = std::fs::read_to_string(path).expect("read a source file");
            (module.clone(), references(module, &text, &known))
        })
        .collect()
}

#[test]
fn modules_import_only_from_their_layer_or_below() {
    let mut upward = Vec::new();
    for (module, refs) in graph() {
        let top = module.split("::").next().unwrap_or_default().to_owned();
        for r in refs {
            let target = r.split("::").next().unwrap_or_default();
            if target != top && layer(target) > layer(&top) {
                upward.push(format!("{module} -> {r}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that go up a layer: {upward:#?}");
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, refs) in graph() {
        let top = module.split("::").next().unwrap_or_default().to_owned();
        let entry = tops.entry(top.clone()).or_default();
        for r in refs {
            let target = r.split("::").next().unwrap_or_default().to_owned();
            if target != top {
                entry.insert(target);
            }
        }
    }
    assert_eq!(find_cycle(&tops), None, "a cycle between top-level modules");
}

#[test]
fn no_import_cycle_between_files() {
    assert_eq!(find_cycle(&graph()), None, "a cycle between source files");
}

#[test]
fn the_layer_test_sees_imports() {
    // The scanner must find what it checks, or the tests above pass vacuously.
    let g = graph();
    let runtime = &g["runtime::spawn"];
    assert!(runtime.contains("runtime"), "{runtime:?}");
    assert!(runtime.contains("runtime::supervisor"), "{runtime:?}");
    assert!(g["bundle"].contains("runtime"), "{:?}", g["bundle"]);
    assert!(
        g["runtime"].contains("runtime::state"),
        "{:?}",
        g["runtime"]
    );
    assert!(g["runtime::state::tests"].contains("runtime::state"));
    // `pub(crate) use child::{..}` and `use child::{..}` forms are seen too.
    let parent = "use crate::x;\npub(crate) use read::{Batch, Other};\nuse write::{a, b};\n";
    let known: BTreeMap<String, PathBuf> =
        ["logs::store", "logs::store::read", "logs::store::write"]
            .iter()
            .map(|m| ((*m).to_owned(), PathBuf::new()))
            .collect();
    let refs = references("logs::store", parent, &known);
    assert!(refs.contains("logs::store::read"), "{refs:?}");
    assert!(refs.contains("logs::store::write"), "{refs:?}");
}
