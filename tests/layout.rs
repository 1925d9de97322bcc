//! Architecture invariants that a test can check by reading the source tree.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn only_the_store_mentions_the_database_drivers() {
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(path, text)| {
            !path.starts_with("src/store/")
                && (text.contains("rusqlite") || text.contains("postgres::"))
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        offenders.is_empty(),
        "SQL belongs in src/store/ only: {offenders:?}"
    );
}

#[test]
fn no_source_file_is_over_700_lines_and_main_stays_wiring() {
    for (path, text) in sources() {
        let lines = text.lines().count();
        let limit = if path == "src/main.rs" { 350 } else { 700 };
        assert!(
            lines <= limit,
            "{path} has {lines} lines (limit {limit}): split it by concept"
        );
    }
}

#[test]
fn the_tracker_types_are_not_serializable() {
    // Stored formats are the store's own row types; a serde derive on the state machine would
    // let a new field break every stored row.
    let (_, tracker) = sources()
        .into_iter()
        .find(|(path, _)| path == "src/tracker.rs")
        .unwrap();
    assert!(
        !tracker.contains("Serialize"),
        "src/tracker.rs derives serde"
    );
    assert!(!tracker.contains("serde"), "src/tracker.rs uses serde");
}
