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
        for method in ["get", "post", "put", "delete"] {
            let routed = line.contains(&format!("{method}(")) || line.contains(&format!(".{method}("));
            assert_eq!(routed, documented.get(method).is_some(), "{method} {path}: router and openapi.json disagree");
        }
    }
    assert_eq!(routes, paths.len(), "openapi.json documents routes the router does not serve");
}
