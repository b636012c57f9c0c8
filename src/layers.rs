//! The floors of the crate, checked: every `crate::` path in `src/` may name only modules on a
//! lower floor (or its own floor, as long as no two modules name each other), and no two files of
//! one folder name each other in a circle. `cargo test` fails when a change breaks either, so
//! nobody has to remember the picture in `lib.rs` and `docs/architecture.md`: it is this list.
//!
//! Paths are read as text, comments left out (an intra-doc link is not an import).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The floors, lowest first. A module may use the modules of every floor below its own.
const FLOORS: &[&[&str]] = &[
    &["model"],
    &[
        "config",
        "registration",
        "telemetry",
        "metrics",
        "ratelimit",
        "supervise",
    ],
    &["matrix"],
    &["db"],
    &["keys", "crypto", "links"],
    &["puppet"],
    &["events"],
    &["bridge"],
    &["runs"],
    &["export"],
    &["server"],
    &["appservice", "api"],
    &["leadership"],
    &["app"],
    &["cli"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// Strips `//` comments (doc comments included).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments named after each `prefix` in `text`, groups (`prefix{a::x, b}`)
/// included.
fn named_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() {
                            names.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Every `.rs` file below `dir`, by path relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(
                rel,
                code(&std::fs::read_to_string(&path).unwrap_or_default()),
            );
        }
    }
}

/// What breaks the floors in `sources` (path relative to `src/` → code): imports that go up a
/// floor, modules of one floor that name each other, and circles among the files of a folder.
fn violations(sources: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    let top = |rel: &str| {
        let first = rel.split('/').next().unwrap_or(rel);
        first.strip_suffix(".rs").unwrap_or(first).to_owned()
    };
    // Module → modules it names, with one file that does.
    let mut uses: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (rel, text) in sources {
        let from = top(rel);
        if from == "lib" || from == "main" || from == "layers" {
            continue;
        }
        for to in named_after(text, "crate::") {
            if to != from && floor(&to).is_some() {
                uses.entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| rel.clone());
            }
        }
    }
    for (from, targets) in &uses {
        let Some(own) = floor(from) else {
            found.push(format!(
                "{from} is on no floor: add it to FLOORS in src/layers.rs"
            ));
            continue;
        };
        for (to, file) in targets {
            let other = floor(to).unwrap_or(0);
            if other > own {
                found.push(format!("{file}: {from} uses {to}, a floor above it"));
            } else if other == own && uses.get(to).is_some_and(|t| t.contains_key(from)) {
                found.push(format!("{file}: {from} and {to} use each other"));
            }
        }
    }
    // Circles among the files of one folder (`super::x` and `crate::folder::x`).
    let mut folders: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (rel, text) in sources {
        let Some((folder, file)) = rel.rsplit_once('/') else {
            continue;
        };
        let name = file.strip_suffix(".rs").unwrap_or(file);
        if name == "mod" {
            continue;
        }
        let mut named = named_after(text, "super::");
        named.extend(named_after(
            text,
            &format!("crate::{}::", folder.replace('/', "::")),
        ));
        named.remove(name);
        folders
            .entry(folder.to_owned())
            .or_default()
            .insert(name.to_owned(), named);
    }
    for (folder, graph) in &folders {
        let siblings: BTreeSet<&String> = graph.keys().collect();
        for start in graph.keys() {
            // A path back to `start` from what it names.
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = graph[start]
                .iter()
                .filter(|n| siblings.contains(n))
                .collect();
            while let Some(next) = stack.pop() {
                if next == start {
                    found.push(format!("src/{folder}: {start} is in a circle of imports"));
                    break;
                }
                if seen.insert(next) {
                    stack.extend(graph[next].iter().filter(|n| siblings.contains(n)));
                }
            }
        }
    }
    found
}

#[test]
fn no_import_runs_up_a_floor_and_no_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    files(&root, &root, &mut sources);
    assert!(sources.len() > 50, "read {} files", sources.len());
    let found = violations(&sources);
    assert!(
        found.is_empty(),
        "the floors are broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_must() {
    let sources: BTreeMap<String, String> = [
        ("db/a.rs", "use crate::{model::Ts, bridge::agents::X};"),
        ("db/b.rs", "use super::c::Y;"),
        (
            "db/c.rs",
            "use crate::db::b::Z;\n// crate::api is only a comment",
        ),
        ("model/x.rs", "fn f() { crate::model::Ts::now(); }"),
        ("keys.rs", "use crate::crypto::K;"),
        ("crypto/mod.rs", "use crate::keys::Q;"),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_owned(), code(t)))
    .collect();
    let found = violations(&sources);
    assert!(
        found.iter().any(|v| v.contains("db uses bridge")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("src/db: b is in a circle")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.contains("keys and crypto use each other")),
        "{found:?}"
    );
    assert!(!found.iter().any(|v| v.contains("api")), "{found:?}");
    assert!(!found.iter().any(|v| v.contains("model uses")), "{found:?}");
}
