//! The layering of a crate's modules, checked from its source: each top-level module has a layer,
//! and may use (through `crate::` paths) only modules of lower layers; modules of one folder may
//! use each other but not in a cycle. A module's own folder (`mod.rs`: the folder's shared
//! handles) is always usable by its children, and the folder may name its children.
//!
//! It reads `use crate::…` statements (brace groups expanded) and inline `crate::…` paths, tests
//! included, comments excluded. A top-level module that is not in the table fails too, so a new
//! module has to be given its place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A crate's layer table: `(top-level module, layer)`, lower layers first.
pub type Table<'a> = &'a [(&'a str, u32)];

/// The layers of `kapsule-daemon` (see `crates/kapsule-daemon/src/lib.rs` and
/// `docs/ARCHITECTURE.md`).
pub const DAEMON: Table<'static> = &[
    ("error", 0),
    ("host", 1),
    ("identity", 2),
    ("operation", 3),
    ("container", 4),
    ("image", 4),
    ("pipeline", 5),
    ("dbus", 6),
    ("service", 7),
];

/// The layers of the `kapsule` CLI.
pub const CLI: Table<'static> = &[
    ("cli", 0),
    ("daemon", 0),
    ("manifest", 0),
    ("follow", 1),
    ("exports", 1),
    ("info", 1),
    ("enter", 2),
    ("commands", 3),
];

/// One module's file and its path below the crate root (`["container", "meta"]`).
#[derive(Debug)]
struct Module {
    file: PathBuf,
    path: Vec<String>,
}

/// Every `.rs` file below `src`, sorted.
fn rust_files(src: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let file = entry?.path();
            if file.is_dir() {
                dirs.push(file);
            } else if file.extension().is_some_and(|e| e == "rs") {
                found.push(file);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every module file of the crate whose source root is `src` (the crate root and `main.rs`, which
/// only use the library, are left out).
fn modules(src: &Path) -> Result<Vec<Module>> {
    let mut found = Vec::new();
    for file in rust_files(src)? {
        let relative = file.strip_prefix(src).expect("below src");
        let mut path: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|last| last == "mod") {
            path.pop();
        }
        if path == ["lib"] || path == ["main"] {
            continue;
        }
        found.push(Module { file, path });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// `text` without `//` comments (a `//` inside a string literal cuts the rest of its line, which
/// at worst hides a path from the check, never invents one).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::` path `text` uses, as its segments after `crate` (`["container", "meta",
/// "validate_name"]`); `use crate::{a, b::{c, d}}` gives each leaf.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let text = without_comments(text);
    let mut paths = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        // `crate` must be a path's start, not the end of another word.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = path_end(rest);
        expand("", &rest[..end], &mut paths);
        rest = &rest[end..];
    }
    paths
}

/// Where the path starting `text` ends: at the first character outside a path, unless braces
/// (a `use` group) are open.
fn path_end(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            c if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' => {}
            _ => return i,
        }
    }
    text.len()
}

/// Expands `tree` (`a::b`, `a::{b, c::d}`) below `prefix` into `paths`.
fn expand(prefix: &str, tree: &str, paths: &mut Vec<Vec<String>>) {
    let tree = tree.trim().trim_end_matches("::");
    let joined = |rest: &str| {
        if prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{prefix}::{rest}")
        }
    };
    match tree.find('{') {
        None => {
            let full = joined(tree);
            let segments: Vec<String> = full
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "self")
                .map(|s| s.split_whitespace().next().unwrap_or(s).to_owned())
                .collect();
            if !segments.is_empty() {
                paths.push(segments);
            }
        }
        Some(open) => {
            let head = joined(tree[..open].trim_end_matches("::"));
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            for item in split_top_level(inner) {
                expand(&head, item, paths);
            }
        }
    }
}

/// `a, b::{c, d}, e` split at the commas outside braces.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Checks the crate at `src` against `table`; returns every violation, one line each.
pub fn violations(src: &Path, table: Table<'_>) -> Result<Vec<String>> {
    let modules = modules(src)?;
    let layer_of = |top: &str| table.iter().find(|(name, _)| *name == top).map(|(_, layer)| *layer);
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut problems = Vec::new();
    // Edges between the children of one folder: folder -> (child -> children used).
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for module in &modules {
        let top = module.path[0].as_str();
        let Some(layer) = layer_of(top) else {
            problems.push(format!(
                "{}: module `{top}` has no layer (add it to the table in xtask/src/layers.rs)",
                module.file.display()
            ));
            continue;
        };
        let text =
            std::fs::read_to_string(&module.file).with_context(|| format!("reading {}", module.file.display()))?;
        for used in crate_paths(&text) {
            let used_top = used[0].as_str();
            if used_top == top {
                // Within the folder: a child of it, or the folder's own items.
                if module.path.len() >= 2 && used.len() >= 2 && known.contains(&used[..2]) && used[1] != module.path[1]
                {
                    siblings
                        .entry(top.to_owned())
                        .or_default()
                        .entry(module.path[1].clone())
                        .or_default()
                        .insert(used[1].clone());
                }
                continue;
            }
            match layer_of(used_top) {
                Some(used_layer) if used_layer < layer => {}
                Some(used_layer) => problems.push(format!(
                    "{}: uses `crate::{}`: layer {layer} ({top}) may only use lower layers, and `{used_top}` is layer {used_layer}",
                    module.file.display(),
                    used.join("::")
                )),
                None => problems.push(format!(
                    "{}: uses `crate::{}`, which is not a module with a layer",
                    module.file.display(),
                    used.join("::")
                )),
            }
        }
    }
    for (folder, graph) in &siblings {
        for cycle in cycles(graph) {
            problems.push(format!("import cycle in {folder}/: {}", cycle.join(" -> ")));
        }
    }
    Ok(problems)
}

/// The cycles of `graph`, one per strongly connected component of more than one node (or a node
/// using itself), each as its nodes in order with the first repeated at the end.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    reported.extend(path.iter().cloned());
                    found.push(cycle);
                    stack.clear();
                    break;
                }
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    found
}

/// Every source file of the crate at `src`, as `docs/ARCHITECTURE.md` names them (`container/meta.rs`).
pub fn module_files(src: &Path) -> Result<Vec<String>> {
    Ok(rust_files(src)?
        .into_iter()
        .map(|f| f.strip_prefix(src).expect("below src").display().to_string())
        .collect())
}

/// Fails with every violation in the crates' sources below `root`, and with every module file the
/// architecture document's module map does not name (or names but does not exist).
pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (src, table) in [("crates/kapsule-daemon/src", DAEMON), ("crates/kapsule/src", CLI)] {
        problems.extend(violations(&root.join(src), table)?);
    }
    let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).context("reading docs/ARCHITECTURE.md")?;
    let src = root.join("crates/kapsule-daemon/src");
    let files = module_files(&src)?;
    for file in &files {
        if !map.contains(&format!("`{file}`")) {
            problems.push(format!(
                "docs/ARCHITECTURE.md: the module map does not name `{file}` (crates/kapsule-daemon/src/{file})"
            ));
        }
    }
    for named in map_entries(&map) {
        if !files.contains(&named) {
            problems.push(format!(
                "docs/ARCHITECTURE.md: the module map names `{named}`, which crates/kapsule-daemon/src does not have"
            ));
        }
    }
    if !problems.is_empty() {
        let prefix = format!("{}/", root.display());
        let problems: Vec<String> = problems.iter().map(|p| p.replace(&prefix, "")).collect();
        bail!("the layering is broken:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// The files the module map names: the first column of the table under "## Module map".
fn map_entries(map: &str) -> Vec<String> {
    let Some(start) = map.find("## Module map") else {
        return Vec::new();
    };
    map[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(file, _)| file.to_owned())
        .filter(|f| f.ends_with(".rs"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const TABLE: Table<'static> = &[("low", 0), ("mid", 1), ("side", 1), ("high", 2)];

    #[test]
    fn paths_are_read_from_uses_groups_and_code_but_not_comments() {
        let text = "use crate::a::{b, c::{d, e as f}};\nuse crate::g;\n// crate::hidden\nfn x() { crate::h::i(); my_crate::j(); }";
        let paths: Vec<String> = crate_paths(text).into_iter().map(|p| p.join("::")).collect();
        assert_eq!(paths, ["a::b", "a::c::d", "a::c::e", "g", "h::i"]);
    }

    #[test]
    fn a_downward_import_passes_and_an_upward_or_sideways_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        write(src, "lib.rs", "mod low; mod mid; mod side; mod high;");
        write(src, "low.rs", "");
        write(
            src,
            "mid/mod.rs",
            "use crate::low::X;\npub(crate) mod a;\npub(crate) mod b;",
        );
        write(src, "mid/a.rs", "use crate::mid::b::Y;\nuse crate::mid::Z;");
        write(src, "mid/b.rs", "use crate::low;");
        write(src, "side.rs", "");
        write(src, "high.rs", "use crate::{mid::a, side};");
        assert_eq!(violations(src, TABLE).unwrap(), Vec::<String>::new());

        write(src, "low.rs", "use crate::high::Thing;");
        write(src, "side.rs", "fn f() { crate::mid::a::g(); }");
        let problems = violations(src, TABLE).unwrap();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].contains("low.rs: uses `crate::high::Thing`"),
            "{problems:#?}"
        );
        assert!(
            problems[1].contains("side.rs: uses `crate::mid::a::g`"),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_cycle_between_modules_of_a_folder_fails_and_unknown_modules_fail() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        write(src, "mid/mod.rs", "");
        write(src, "mid/a.rs", "use crate::mid::b::B;");
        write(src, "mid/b.rs", "use crate::mid::c::C;");
        write(src, "mid/c.rs", "use crate::mid::a::A;");
        write(src, "stray.rs", "");
        let problems = violations(src, TABLE).unwrap();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("module `stray` has no layer"), "{problems:#?}");
        assert_eq!(problems[1], "import cycle in mid/: a -> b -> c -> a");
    }

    #[test]
    fn the_module_map_is_its_first_column() {
        let map = "# A\n## Module map\n| file | what |\n| --- | --- |\n| `host/config.rs` | x |\n| `lib.rs` | y |\n## Next\n| `other.rs` | z |\n";
        assert_eq!(map_entries(map), ["host/config.rs", "lib.rs"]);
    }
}
