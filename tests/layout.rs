//! The house rule of `src/`: no import cycles, neither between the stage folders nor between the
//! files of one folder, so each stage only ever uses the stages below it (docs/layout.md).
//!
//! `cargo test --test layout -- --nocapture` prints the stages and what each one uses.
//!
//! The check reads the source the way a reviewer does: every `crate::…`, `super::…` and `self::…`
//! path in code (doc comments, comments and `#[cfg(test)]` items left out), resolved to the file
//! that defines it, re-exports followed. A folder's `mod.rs` counts as a node of its own ("mod")
//! among the folder's files; its `mod x;` and `pub use self::…` lines are the folder's interface,
//! not a use of the files below.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A module path from the crate root: `["delivery", "sink", "pool"]`.
type ModPath = Vec<String>;

/// Every module of the crate by its path: its code (as the check reads it), and whether it is a
/// folder's `mod.rs` (or `lib.rs`).
#[derive(Debug, Default)]
struct Tree {
    modules: BTreeMap<ModPath, Module>,
}

#[derive(Debug)]
struct Module {
    code: String,
    is_folder: bool,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut tree = Tree::default();
        walk(src, src, &mut tree);
        tree
    }

    fn from_files(files: &[(&str, &str)]) -> Tree {
        let mut tree = Tree::default();
        for (file, text) in files {
            tree.insert(file, text);
        }
        tree
    }

    fn insert(&mut self, file: &str, text: &str) {
        let mut path: ModPath = file
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_owned)
            .collect();
        let is_folder = matches!(path.last().map(String::as_str), Some("mod" | "lib"));
        if is_folder {
            path.pop();
        }
        self.modules.insert(
            path,
            Module {
                code: code_of(text),
                is_folder,
            },
        );
    }

    /// The module a path names: the longest prefix that is a module, then through the
    /// re-exports of a folder's `mod.rs` to the file that defines the item.
    fn resolve(&self, path: &[String], depth: usize) -> Option<ModPath> {
        let len = (0..=path.len())
            .rev()
            .find(|len| self.modules.contains_key(&path[..*len]))?;
        let module = path[..len].to_vec();
        let Some(item) = path.get(len) else {
            return Some(module);
        };
        if depth < 8 && self.modules[&module].is_folder {
            for (target, name) in reexports(&self.modules[&module].code) {
                if &name == item {
                    let mut full = module.clone();
                    full.extend(target);
                    if let Some(found) = self.resolve(&full, depth + 1) {
                        if found != module {
                            return Some(found);
                        }
                    }
                }
            }
        }
        Some(module)
    }

    /// Which module uses which.
    fn edges(&self) -> BTreeSet<(ModPath, ModPath)> {
        let mut edges = BTreeSet::new();
        for (from, module) in &self.modules {
            let children: BTreeSet<String> = self
                .modules
                .keys()
                .filter(|p| p.len() == from.len() + 1 && p[..from.len()] == from[..])
                .map(|p| p[from.len()].clone())
                .collect();
            for path in paths(&module.code, from, module.is_folder, &children) {
                if let Some(to) = self.resolve(&path, 0) {
                    if &to != from && !to.is_empty() {
                        edges.insert((from.clone(), to));
                    }
                }
            }
        }
        edges
    }

    /// Every import cycle: for each folder, among its direct children (files and sub-folders,
    /// "mod" for its own `mod.rs`), a cycle of uses, as the folder and the nodes around it.
    fn cycles(&self) -> Vec<String> {
        let edges = self.edges();
        let folders: BTreeSet<ModPath> = self
            .modules
            .iter()
            .filter(|(_, m)| m.is_folder)
            .map(|(p, _)| p.clone())
            .collect();
        let mut found = Vec::new();
        for folder in &folders {
            let node = |path: &ModPath| -> Option<String> {
                if path.len() < folder.len() || path[..folder.len()] != folder[..] {
                    return None;
                }
                Some(
                    path.get(folder.len())
                        .cloned()
                        .unwrap_or_else(|| "mod".into()),
                )
            };
            let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (from, to) in &edges {
                if let (Some(a), Some(b)) = (node(from), node(to)) {
                    if a != b {
                        graph.entry(a).or_default().insert(b);
                    }
                }
            }
            if let Some(cycle) = find_cycle(&graph) {
                let at = if folder.is_empty() {
                    "src/".to_owned()
                } else {
                    format!("src/{}/", folder.join("/"))
                };
                found.push(format!("{at}: {}", cycle.join(" -> ")));
            }
        }
        found
    }
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            // The binaries are crates of their own.
            if relative != "bin" {
                walk(root, &path, tree);
            }
        } else if relative.ends_with(".rs") {
            tree.insert(&relative, &fs::read_to_string(&path).unwrap());
        }
    }
}

/// The code the check reads: without comments, doc comments and `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            let indent = line.len() - trimmed.len();
            // Attributes after it belong to the same item.
            while lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("#["))
            {
                lines.next();
            }
            let Some(item) = lines.next() else { break };
            if item.trim_end().ends_with(';') || item.trim_end().ends_with('}') {
                continue;
            }
            // rustfmt closes an item at its own indentation.
            for rest in lines.by_ref() {
                let body = rest.trim_start();
                if rest.len() - body.len() == indent && body.starts_with('}') {
                    break;
                }
            }
            continue;
        }
        let code = match line.find(" //") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path the code names from `crate`, `super` or `self`, made absolute. In a folder's
/// `mod.rs`, `use self::…` is the folder's interface and is left out.
fn paths(
    code: &str,
    module: &ModPath,
    is_folder: bool,
    children: &BTreeSet<String>,
) -> Vec<ModPath> {
    let mut found = Vec::new();
    let statements = code.split(';');
    for statement in statements {
        let text = without_attributes(statement);
        let reexport = is_folder
            && (text.starts_with("pub use self::")
                || text.starts_with("pub(crate) use self::")
                || text.starts_with("use self::"));
        if reexport {
            continue;
        }
        for (at, _) in statement.match_indices("::") {
            let before = &statement[..at];
            let start = before
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let root = &before[start..];
            // Only the first `::` of a path starts it.
            if start >= 2 && &statement[start - 2..start] == "::" {
                continue;
            }
            let base: ModPath = match root {
                "crate" => Vec::new(),
                "super" => {
                    let mut base = module.clone();
                    base.pop();
                    base
                }
                "self" => module.clone(),
                // A folder names its own files without `self::` too.
                child if is_folder && children.contains(child) => module.clone(),
                _ => continue,
            };
            let from = if matches!(root, "crate" | "super" | "self") {
                at + 2
            } else {
                start
            };
            for path in expand(&statement[from..]) {
                // `super::super::x` climbs once more per `super`.
                let mut full = base.clone();
                let mut segments = path.into_iter().peekable();
                while segments.peek().is_some_and(|s| s == "super") {
                    segments.next();
                    full.pop();
                }
                full.extend(segments);
                found.push(full);
            }
        }
    }
    found
}

/// A statement without the attributes before it (`#[cfg(feature = "…")]`).
fn without_attributes(statement: &str) -> &str {
    let mut text = statement.trim_start();
    while text.starts_with("#[") {
        text = text
            .split_once('\n')
            .map_or("", |(_, rest)| rest)
            .trim_start();
    }
    text
}

/// The paths a use tree names: `a::b`, `a::{b, c::{d, e}}`.
fn expand(text: &str) -> Vec<ModPath> {
    let text = text.trim_start();
    let mut prefix = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            prefix.push(rest[..end].to_owned());
        }
        rest = &rest[end..];
        let after = match rest.strip_prefix("::") {
            Some(next) => Some(next.trim_start()),
            // A group at the very start: `super::{a, b}` handed on as `{a, b}`.
            None if end == 0 && prefix.is_empty() && rest.starts_with('{') => Some(rest),
            None => None,
        };
        if let Some(next) = after {
            rest = next;
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut items = Vec::new();
                let mut item_start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                items.push(&group[item_start..i]);
                                break;
                            }
                        }
                        ',' if depth == 1 => {
                            items.push(&group[item_start..i]);
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
                let mut all = Vec::new();
                for item in items {
                    let item = item.trim();
                    if item.is_empty() {
                        continue;
                    }
                    for tail in expand(item) {
                        let mut full = prefix.clone();
                        if tail.first().map(String::as_str) != Some("self") {
                            full.extend(tail);
                        }
                        all.push(full);
                    }
                }
                return all;
            }
            continue;
        }
        return vec![prefix];
    }
}

/// The names a folder's `mod.rs` re-exports with `pub use self::…` (or `pub(crate) use`), each
/// with the path it comes from.
fn reexports(code: &str) -> Vec<(ModPath, String)> {
    let mut found = Vec::new();
    for statement in code.split(';') {
        let text = without_attributes(statement);
        let Some(tree) = text
            .strip_prefix("pub use self::")
            .or_else(|| text.strip_prefix("pub(crate) use self::"))
        else {
            continue;
        };
        for path in expand(tree) {
            if let Some(name) = path.last() {
                found.push((path.clone(), name.clone()));
            }
        }
    }
    found
}

/// A cycle in `graph`, if there is one, as the nodes around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), false);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(false) => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(true) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), true);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            if let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_import_cycles_between_stages_or_between_files_of_a_stage() {
    let tree = Tree::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        tree.modules.len() > 40,
        "read only {} modules",
        tree.modules.len()
    );
    // What each stage uses, for `--nocapture`.
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in tree.edges() {
        let (Some(a), Some(b)) = (from.first(), to.first()) else {
            continue;
        };
        uses.entry(a.clone()).or_default();
        if a != b {
            uses.entry(a.clone()).or_default().insert(b.clone());
        }
    }
    for (stage, used) in &uses {
        let used: Vec<_> = used.iter().map(String::as_str).collect();
        println!("{stage:>10} uses {}", used.join(", "));
    }
    let cycles = tree.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles in src/ (a stage may only use the stages below it):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_check_finds_a_cycle_between_stages_and_between_files() {
    // Two stages that use each other, one through a re-export of the folder's mod.rs.
    let tree = Tree::from_files(&[
        ("lib.rs", "mod low;\nmod high;\n"),
        (
            "low/mod.rs",
            "mod ids;\npub(crate) use self::ids::EventId;\n",
        ),
        (
            "low/ids.rs",
            "use crate::high::Layer;\npub struct EventId;\n",
        ),
        ("high/mod.rs", "mod layer;\npub use self::layer::Layer;\n"),
        (
            "high/layer.rs",
            "use crate::low::EventId;\npub struct Layer;\n",
        ),
    ]);
    assert_eq!(tree.cycles(), ["src/: high -> low -> high"]);

    // Two files of one folder, through super:: and a grouped use; a test module's use and a
    // doc comment's path do not count.
    let tree = Tree::from_files(&[
        ("lib.rs", "mod event;\n"),
        ("event/mod.rs", "mod job;\nmod dispatch;\n"),
        (
            "event/job.rs",
            "/// [`x`](crate::event::dispatch)\nuse super::{dispatch::run, other};\nfn a() {}\n",
        ),
        (
            "event/dispatch.rs",
            "fn run() { crate::event::job::a() }\n#[cfg(test)]\nmod tests {\n    use crate::event::job;\n}\n",
        ),
    ]);
    assert_eq!(tree.cycles(), ["src/event/: dispatch -> job -> dispatch"]);

    // A folder's mod.rs that calls a file by its bare name, and the file that uses an item
    // defined in the mod.rs.
    let tree = Tree::from_files(&[
        ("lib.rs", "mod metrics;\n"),
        (
            "metrics/mod.rs",
            "mod facade;\npub(crate) use self::facade::refused;\npub(crate) enum Counter {}\nfn f() { facade::record() }\n",
        ),
        ("metrics/facade.rs", "use super::Counter;\npub(crate) fn record() {}\n"),
    ]);
    assert_eq!(tree.cycles(), ["src/metrics/: facade -> mod -> facade"]);

    // Without the way back, no cycle.
    let tree = Tree::from_files(&[
        ("lib.rs", "mod event;\n"),
        ("event/mod.rs", "mod job;\nmod dispatch;\n"),
        ("event/job.rs", "fn a() {}\n"),
        ("event/dispatch.rs", "fn run() { crate::event::job::a() }\n#[cfg(test)]\nmod tests {\n    use crate::event::job;\n}\n"),
    ]);
    assert!(tree.cycles().is_empty(), "{:?}", tree.cycles());
}
