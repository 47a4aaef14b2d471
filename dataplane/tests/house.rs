//! The dataplane's imports run the way `docs/architecture.md` says ("The
//! house"): a module imports nothing that the table lists above it, and the
//! rows that say `leaf` import nothing of the dataplane but `metrics.rs`,
//! `worker.rs` and `heap/`. Every module of `src/` has a row, and every row
//! a module, so the table and the code cannot drift apart unseen.
//!
//! Read from the sources as text (no crate parses Rust imports without
//! compiling): `crate::NAME` in code, outside comments and test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What a leaf may import besides itself.
const LEAF_MAY_USE: [&str; 3] = ["metrics", "worker", "heap"];

/// One row of the house's table: the modules it names, whether they are
/// leaves, and its line in the document.
struct Row {
    modules: Vec<String>,
    leaf: bool,
    line: usize,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows of "### The house", top first.
fn house() -> Vec<Row> {
    let path = root().join("../docs/architecture.md");
    let text = fs::read_to_string(&path).expect("docs/architecture.md");
    let mut rows = Vec::new();
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("### The house") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if line.starts_with('#') {
            break;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| a | b | c |" splits into "", a, b, c, "".
        assert_eq!(
            cells.len(),
            5,
            "docs/architecture.md:{}: three cells",
            i + 1
        );
        let modules = cells[1]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|name| {
                name.trim_end_matches('/')
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        rows.push(Row {
            modules,
            leaf: cells[3] == "leaf",
            line: i + 1,
        });
    }
    assert!(
        rows.len() > 10,
        "the house's table is in docs/architecture.md"
    );
    rows
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module of `src/` a file belongs to: `src/x.rs` and `src/x/...` are `x`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// The names that follow `crate::` in `file`'s code: comments, and test
/// modules (`#[cfg(test)] mod ... { ... }`), left out.
fn crate_uses(file: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(file).expect("source");
    let mut uses = Vec::new();
    let mut test_attr = false;
    let mut skipping: Option<i64> = None;
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("").trim();
        if let Some(depth) = &mut skipping {
            *depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        if code == "#[cfg(test)]" {
            test_attr = true;
            continue;
        }
        if test_attr && (code.starts_with("mod ") || code.starts_with("pub mod ")) {
            test_attr = false;
            let depth = code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if depth > 0 {
                skipping = Some(depth);
            }
            continue;
        }
        test_attr = false;
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                // `crate::{a, b::c}`: each item's first name.
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![
                    rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or(""),
                ],
            };
            uses.extend(
                names
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .map(|n| (i + 1, n.to_string())),
            );
        }
    }
    uses
}

#[test]
fn imports_run_down_the_house_that_the_docs_draw() {
    let rows = house();
    let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        for m in &row.modules {
            assert!(
                rank.insert(m.as_str(), r).is_none(),
                "docs/architecture.md:{}: `{m}` has two rows",
                row.line
            );
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    for m in &modules {
        assert!(
            rank.contains_key(m.as_str()),
            "src/{m}: no row in docs/architecture.md's house"
        );
    }
    for m in rank.keys() {
        assert!(
            modules.contains(*m),
            "docs/architecture.md's house names `{m}`, which src/ does not hold"
        );
    }
    let mut wrong = Vec::new();
    for file in &files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let from = module_of(&src, file);
        let row = &rows[rank[from.as_str()]];
        for (line, name) in crate_uses(file) {
            // Items of the crate's root (`crate::Options`) are lib.rs's.
            let to = if modules.contains(&name) {
                name
            } else {
                "lib".to_string()
            };
            if to == from {
                continue;
            }
            let shown = file
                .strip_prefix(root())
                .unwrap_or(file)
                .display()
                .to_string();
            if rank[to.as_str()] < rank[from.as_str()] {
                wrong.push(format!(
                    "{shown}:{line}: `{from}` imports `{to}`, which the house lists above it (docs/architecture.md:{} and :{})",
                    rows[rank[to.as_str()]].line, row.line
                ));
            } else if row.leaf && !LEAF_MAY_USE.contains(&to.as_str()) {
                wrong.push(format!(
                    "{shown}:{line}: `{from}` is a leaf (docs/architecture.md:{}) but imports `{to}`",
                    row.line
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run the wrong way:\n{}",
        wrong.join("\n")
    );
}
