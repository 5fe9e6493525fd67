//! A test of the layering (storage → db → query → feed → model, `value` and `error` at the
//! bottom): no source file of a lower layer names a higher one, directly (`crate::feed::..`)
//! or through the crate root's re-exports (`crate::{Changes, ..}`), outside comments and
//! tests. The layers form a chain, so no import cycle can span two of them.

use std::collections::HashMap;
use std::path::Path;

/// A layer's rank: a file may name its own layer and those of a lower rank.
fn rank(layer: &str) -> Option<u8> {
    Some(match layer {
        "value" | "error" => 0,
        "storage" => 1,
        "db" => 2,
        "query" => 3,
        "feed" => 4,
        "model" => 5,
        "postgres" => 6,
        _ => return None,
    })
}

/// The layer of each name the crate root re-exports (`pub use db::{Database, ..}`).
fn reexports(lib: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !item.is_empty() {
                names.insert(item.to_string(), module.to_string());
            }
        }
    }
    names
}

/// The code of a file without comments and without its `#[cfg(test)]` part.
fn code(src: &str) -> String {
    let src = src.split("#[cfg(test)]").next().unwrap_or_default();
    src.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `(file, name, layer)` where a file names a layer above its own.
fn upward_imports(root: &Path) -> Vec<(String, String, String)> {
    let names = reexports(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
    let mut bad = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let layer = rel.split(['/', '.']).next().unwrap_or_default();
            let Some(own) = rank(layer) else { continue };
            let src = code(&std::fs::read_to_string(&path).unwrap());
            for (i, _) in src.match_indices("crate::") {
                let after = &src[i + "crate::".len()..];
                let group = match after.strip_prefix('{') {
                    Some(g) => &g[..g.find('}').unwrap_or(g.len())],
                    None => after,
                };
                let idents = group.split(|c: char| !(c.is_alphanumeric() || c == '_'));
                let idents: Vec<&str> = if after.starts_with('{') {
                    idents.filter(|s| !s.is_empty()).collect()
                } else {
                    idents.take(1).collect()
                };
                for ident in idents {
                    let target = if rank(ident).is_some() {
                        Some(ident.to_string())
                    } else {
                        names.get(ident).cloned()
                    };
                    if let Some(t) = target.filter(|t| rank(t).is_some_and(|r| r > own)) {
                        bad.push((rel.clone(), ident.to_string(), t));
                    }
                }
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn no_layer_names_a_higher_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = upward_imports(&root);
    assert!(
        bad.is_empty(),
        "upward imports (file, name, layer): {bad:#?}"
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("remodel-layers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub use feed::{Changes, Feed};").unwrap();
    std::fs::write(
        dir.join("db/x.rs"),
        "use crate::{Changes};\n// crate::model\n",
    )
    .unwrap();
    let bad = upward_imports(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad, [("db/x.rs".into(), "Changes".into(), "feed".into())]);
}
