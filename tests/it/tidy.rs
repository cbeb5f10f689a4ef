//! Tidy checks: the architecture invariants of ARCHITECTURE.md, enforced by
//! reading the source tree.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn uses_crate(source: &str, name: &str) -> bool {
    source.lines().any(|line| {
        let line = line.trim_start();
        !line.starts_with("//")
            && (line.contains(&format!("use {name}::"))
                || line.contains(&format!("{name}::"))
                    && !line.contains(&format!("_{name}::"))
                    && !line.contains(&format!("msgd::{name}")))
    })
}

#[test]
fn only_the_storage_layer_talks_to_databases_and_object_stores() {
    for path in rust_files(Path::new("src")).into_iter().chain(rust_files(Path::new("cli"))) {
        if path.starts_with("src/store") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for name in ["sqlx", "redis", "object_store"] {
            assert!(!uses_crate(&source, name), "{} uses {name}; only src/store may", path.display());
        }
    }
}

#[test]
fn nothing_below_the_cli_reads_the_environment() {
    for path in rust_files(Path::new("src")) {
        let source = std::fs::read_to_string(&path).unwrap();
        for call in ["std::env::var", "env::var(", "env::vars("] {
            assert!(
                !source.contains(call),
                "{} reads the environment ({call}); pass config in instead",
                path.display()
            );
        }
    }
}

#[test]
fn the_cli_does_not_hold_domain_rules() {
    for path in rust_files(Path::new("cli")) {
        let source = std::fs::read_to_string(&path).unwrap();
        for word in ["Sha256", "getrandom", "crc32"] {
            assert!(!source.contains(word), "{} does key work ({word}); it belongs in src/keys.rs", path.display());
        }
    }
}

#[test]
fn every_module_opens_with_a_doc_paragraph() {
    for path in rust_files(Path::new("src"))
        .into_iter()
        .chain(rust_files(Path::new("cli")))
        .chain(rust_files(Path::new("tests")))
    {
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(source.starts_with("//!"), "{} must open with a `//!` paragraph saying what it owns", path.display());
    }
}

#[test]
fn the_openapi_document_lists_every_route() {
    let router = std::fs::read_to_string("src/http/mod.rs").unwrap();
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("src/http/openapi.json").unwrap()).unwrap();
    let paths = document["paths"].as_object().expect("paths");
    let mut routes = 0;
    for line in router.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
        let path = line.split('"').nth(1).unwrap();
        routes += 1;
        let documented = paths.get(path).unwrap_or_else(|| panic!("{path} is routed but not in openapi.json"));
        for method in ["get", "post", "put", "patch", "delete"] {
            let routed = line.contains(&format!("{method}(")) || line.contains(&format!(".{method}("));
            assert_eq!(routed, documented.get(method).is_some(), "{method} {path}: router and openapi.json disagree");
        }
    }
    assert_eq!(routes, paths.len(), "openapi.json documents routes the router does not serve");
}

/// The layers of `src/`, lowest first (ARCHITECTURE.md, "Layers"). A module
/// may use modules of its own layer or below, never above, and no two
/// modules may use each other, directly or through others.
const LAYERS: &[(&str, &[&str])] = &[
    ("pure", &["clock", "config", "error", "ids", "logging", "mac", "ratelimit", "segment", "telemetry", "worker"]),
    ("storage", &["store"]),
    (
        "domain primitives",
        &["keys", "auth", "envelope", "idempotency", "timeline", "membership", "activity", "context"],
    ),
    (
        "use cases",
        &[
            "conversations",
            "messages",
            "edits",
            "reactions",
            "history",
            "receipts",
            "typing",
            "presence",
            "subscriptions",
            "flush",
            "retention",
            "backup",
            "attachments",
            "inspect",
        ],
    ),
    ("edges", &["readiness", "http", "server", "stats"]),
    // The load generator drives msgd over HTTP like any client: it imports
    // no library module at all (checked below), so it sits with the edges.
    ("tools", &["load"]),
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
        .unwrap_or_else(|| panic!("src/{module} is in no layer: add it to LAYERS in tests/it/tidy.rs"))
}

/// The top-level module a file of `root` belongs to (`src/store/live.rs` → `store`).
fn module_of(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Every `prefix` path a source names, by its first segment: `use
/// crate::a::B`, `crate::b::f()`, `use crate::{c, d::E}`. Comments are skipped.
fn names_after(source: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let after = &rest[at + prefix.len()..];
            let preceded_by_word =
                rest[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if !preceded_by_word {
                if let Some(group) = after.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or_default();
                    found.extend(group.split(',').filter_map(|item| first_segment(item.trim())));
                } else if let Some(name) = first_segment(after) {
                    found.push(name);
                }
            }
            rest = after;
        }
    }
    found
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// The graph of `src/` modules: module → the modules it uses.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let root = Path::new("src");
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for path in rust_files(root) {
        let Some(module) = module_of(root, &path) else { continue };
        let source = std::fs::read_to_string(&path).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(names_after(&source, "crate::").into_iter().filter(|used| *used != module));
    }
    graph
}

/// A cycle through `start`, if the graph has one, as the path around it.
fn cycle_from(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    start: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![start.to_string()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn modules_form_no_import_cycle() {
    let graph = module_graph();
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle between src/ modules: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn every_import_points_down_the_layers() {
    let graph = module_graph();
    assert!(graph["load"].is_empty(), "src/load/ drives msgd over HTTP; it imports no library module");
    for (module, uses) in graph {
        for used in uses {
            assert!(
                layer_of(&used) <= layer_of(&module),
                "src/{module} ({}) uses src/{used} ({}), a layer above it",
                LAYERS[layer_of(&module)].0,
                LAYERS[layer_of(&used)].0,
            );
        }
    }
}

#[test]
fn sibling_files_of_a_module_form_no_cycle() {
    for dir in std::fs::read_dir("src").unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
        for path in rust_files(&dir) {
            let Some(file) = module_of(&dir, &path).filter(|f| f != "mod") else { continue };
            let source = std::fs::read_to_string(&path).unwrap();
            let module = dir.file_name().unwrap().to_str().unwrap();
            let siblings = names_after(&source, "super::")
                .into_iter()
                .chain(names_after(&source, &format!("crate::{module}::")))
                .filter(|name| *name != file && dir.join(format!("{name}.rs")).exists())
                .collect::<Vec<_>>();
            graph.entry(file).or_default().extend(siblings);
        }
        for file in graph.keys() {
            if let Some(cycle) = cycle_from(&graph, file) {
                panic!("import cycle inside {}: {}", dir.display(), cycle.join(" → "));
            }
        }
    }
}

#[test]
fn the_import_scanner_sees_every_form_of_use() {
    let source = "use crate::a::B;\nuse crate::{b, c::D};\n// crate::commented\nlet x = crate::e::f();\nmsgd::crate::g";
    assert_eq!(names_after(source, "crate::"), ["a", "b", "c", "e"]);
    let graph = [("x", &["y"][..]), ("y", &["z"]), ("z", &["x"])]
        .into_iter()
        .map(|(from, to)| (from.to_string(), to.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(cycle_from(&graph, "x").unwrap(), ["x", "y", "z", "x"]);
}

/// The part of `text` after `start`, up to `end`.
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let rest = text.split_once(start).unwrap_or_else(|| panic!("no {start:?}")).1;
    rest.split_once(end).map_or(rest, |(inside, _)| inside)
}

/// Error codes are one vocabulary, `msgd::error::Code`: each is documented
/// (the README's list, openapi.json), known to `msgd load` (which may not
/// import the library, so it keeps its own copy), and errors are built from a
/// `Code`, never from a string or a kind picked at the call site.
#[test]
fn every_error_code_is_documented_and_built_from_the_vocabulary() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let readme_list = section(&readme, "Error codes:", "\n\n");
    let openapi = std::fs::read_to_string("src/http/openapi.json").unwrap();
    let load = std::fs::read_to_string("src/load/mod.rs").unwrap();
    let known_to_load = section(&load, "const KNOWN_CODES", "];");
    for code in msgd::error::Code::ALL.iter().map(|code| code.as_str()) {
        assert!(readme_list.contains(&format!("`{code}`")), "`{code}` is missing from README.md's error codes");
        assert!(openapi.contains(&format!("`{code}`")), "`{code}` is documented nowhere in src/http/openapi.json");
        assert!(
            known_to_load.contains(&format!("\"{code}\"")),
            "`{code}` is missing from KNOWN_CODES in src/load/mod.rs"
        );
    }
    for path in rust_files(Path::new("src")) {
        let source: String = std::fs::read_to_string(&path).unwrap().split_whitespace().collect();
        for stringly in ["Error::new(Kind::", "Error::new(crate::error::Kind::", "Error::new(\"", "Error::invalid("] {
            // `Error::` itself, not the tail of another type's name (`ConfigError::new("…")`).
            let own_error = source
                .match_indices(stringly)
                .any(|(at, _)| !source[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            assert!(!own_error, "{} builds an error with `{stringly}`; pass a Code", path.display());
        }
    }
}

/// rustfmt keeps lines within 120 columns but cannot break inside macros
/// (`tracing::info!`, `json!`) or long string literals; this catches those.
#[test]
fn no_line_is_wider_than_120_columns() {
    let mut too_wide = Vec::new();
    for path in rust_files(Path::new("src")).into_iter().chain(rust_files(Path::new("cli"))) {
        let source = std::fs::read_to_string(&path).unwrap();
        for (index, line) in source.lines().enumerate() {
            let width = line.chars().count();
            if width > 120 {
                too_wide.push(format!("{}:{} is {width} columns", path.display(), index + 1));
            }
        }
    }
    assert!(too_wide.is_empty(), "lines over 120 columns:\n{}", too_wide.join("\n"));
}
