//! The codebase's shape, checked: no import circles between modules of a
//! crate. A module's file or folder is a node, a `crate::` or `super::`
//! path to another module an edge; a circle is found at every depth of the
//! tree (two folders that import each other, two files of one folder).
//! Unit-test modules are left out. A module and its ancestors are not edges (a folder's `mod.rs` re-exports
//! its files and they use what it declares), and paths through such a
//! re-export are not followed to where the item lives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules must not import in circles.
const CRATES: [&str; 3] = ["control-plane/src", "sidecar/src", "proto/src"];
/// How deep module paths are compared (`service::webhooks::dispatch` is 3).
const DEEPEST: usize = 5;

type Module = Vec<String>;

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `service/webhooks/mod.rs` → `service::webhooks`; `lib.rs` → the root.
fn module_of(root: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(root).expect("under the root").with_extension("");
    let mut segments: Module = relative.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if matches!(segments.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        segments.pop();
    }
    segments
}

/// The module paths a file names after `crate::` or `super::`, resolved
/// to absolute paths (not yet to modules).
fn named_paths(here: &Module, source: &str) -> Vec<Module> {
    let mut named = Vec::new();
    for line in source.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        for (start, _) in line.match_indices("crate::").chain(line.match_indices("super::")) {
            let preceded =
                line[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if preceded {
                continue;
            }
            let mut rest = &line[start..];
            let mut base: Module = Vec::new();
            if let Some(after) = rest.strip_prefix("crate::") {
                rest = after;
            } else {
                base = here[..here.len().saturating_sub(1)].to_vec();
                rest = &rest["super::".len()..];
                while let Some(after) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = after;
                }
            }
            // `a::b::{c, d::e}`: the segments before the group, then each item's.
            let (head, group) = match rest.split_once('{') {
                Some((head, group)) if !head.contains([' ', ';', '(', ',']) => {
                    (head, group.split('}').next().unwrap_or_default().split(',').collect())
                }
                _ => ("", vec![rest]),
            };
            base.extend(segments(head));
            for item in group {
                let path = segments(item);
                if !path.is_empty() {
                    named.push([base.clone(), path].concat());
                }
            }
        }
    }
    named
}

/// The leading `name::name::…` of `text`.
fn segments(text: &str) -> Module {
    text.trim()
        .split("::")
        .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .take_while(|s| !s.is_empty())
        .collect()
}

/// Edges between modules: each path resolved to the longest module it starts with.
fn imports(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let sources: BTreeMap<Module, String> = files
        .iter()
        .map(|file| {
            let source = std::fs::read_to_string(file).expect("read a source file");
            // Unit tests may use whatever they test against.
            let code = source.split("\n#[cfg(test)]\nmod tests").next().unwrap_or_default().to_owned();
            (module_of(root, file), code)
        })
        .collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (here, source) in &sources {
        for path in named_paths(here, source) {
            let target = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| sources.contains_key(m));
            // A module and its ancestors see each other by nature (a folder's
            // `mod.rs` re-exports its files, which use what it declares).
            if let Some(target) = target.filter(|t| !t.starts_with(here) && !here.starts_with(t)) {
                edges.entry(here.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// A circle among `edges` with modules cut to `depth` segments, if any.
fn circle(edges: &BTreeMap<Module, BTreeSet<Module>>, depth: usize) -> Option<Vec<Module>> {
    let cut = |m: &Module| m[..m.len().min(depth)].to_vec();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, targets) in edges {
        for to in targets {
            let (a, b) = (cut(from), cut(to));
            if a != b {
                graph.entry(a).or_default().insert(b);
            }
        }
    }
    // Depth-first search; a node met again on the current path closes a circle.
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|m| m == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, &graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_do_not_import_in_circles() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    for krate in CRATES {
        let edges = imports(&workspace.join(krate));
        assert!(!edges.is_empty(), "{krate}: no imports were read");
        for depth in 1..=DEEPEST {
            if let Some(found) = circle(&edges, depth) {
                let names: Vec<String> = found.iter().map(|m| m.join("::")).collect();
                panic!("{krate}: modules import each other in a circle: {}", names.join(" → "));
            }
        }
    }
}

/// The check finds what it is for: two folders importing each other.
#[test]
fn a_circle_is_found() {
    let here: Module = vec!["service".into(), "outbox".into()];
    let named = named_paths(&here, "use super::dispatch::queue::Leased;\nuse crate::store::{self, events};");
    assert_eq!(
        named,
        [vec!["service", "dispatch", "queue", "Leased"], vec!["store", "self"], vec!["store", "events"],]
            .map(|m| m.into_iter().map(String::from).collect::<Module>())
    );
    let module = |s: &str| s.split("::").map(String::from).collect::<Module>();
    let edges = BTreeMap::from([
        (module("service::outbox"), BTreeSet::from([module("service::dispatch::queue")])),
        (module("service::dispatch::health"), BTreeSet::from([module("service::outbox")])),
    ]);
    assert_eq!(circle(&edges, 1), None, "one folder");
    let found = circle(&edges, 2).expect("outbox ↔ dispatch");
    assert_eq!(found.len(), 2);
    assert_eq!(circle(&edges, 3), None, "queue.rs itself imports nothing back");
}
