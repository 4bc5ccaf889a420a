//! The import graph runs one way (ARCHITECTURE.md §8): each module imports only modules on a
//! lower floor, no two source files import each other (no cycle at all, in fact), and the
//! domain modules never touch a wire format. Read from the source files themselves, so a new
//! import that breaks the layering fails here.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Floors from the bottom: a module may import only modules on a lower floor.
const FLOORS: &[&[&str]] = &[
    &["config", "shutdown"],
    &["telemetry"],
    &["engine"],
    &["schema"],
    &["preprocess"],
    &["bundle"],
    &["runner", "validate", "access"],
    &["rollout"],
    &["registry"],
    &["predict"],
    &["pb"],
    &["service"],
    &["app"],
    &["clients"],
    &["<bin>"],
];

/// Modules that know nothing of any protocol.
const PROTOCOL_FREE: &[&str] =
    &["schema", "preprocess", "engine", "bundle", "registry", "runner", "predict", "access", "rollout"];

/// A source file's module path: `src/registry/reload.rs` -> [registry, reload]; the binary's
/// files (main.rs, cli.rs) sit under `<bin>`.
fn module_of(file: &Path, src: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "main.rs" | "cli.rs" if parts.is_empty() => return vec!["<bin>".into(), last.trim_end_matches(".rs").into()],
        "mod.rs" | "lib.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").into()),
    }
    parts
}

/// The file that defines module `path` (or its nearest ancestor with a file of its own).
fn file_of(path: &[String], src: &Path) -> PathBuf {
    if path.first().map(String::as_str) == Some("<bin>") {
        return src.join(format!("{}.rs", path.get(1).map_or("main", String::as_str)));
    }
    let mut dir = src.to_path_buf();
    let mut found = src.join("lib.rs");
    for seg in path {
        if dir.join(format!("{seg}.rs")).is_file() {
            found = dir.join(format!("{seg}.rs"));
        } else if dir.join(seg).join("mod.rs").is_file() {
            found = dir.join(seg).join("mod.rs");
        } else {
            break;
        }
        dir = dir.join(seg);
    }
    found
}

/// The source without comments and without the trailing `#[cfg(test)] mod tests` block, whose
/// `super` means the file itself and whose imports are not the module's.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every path a `use` tree names, flattened: `a::{b, c::{d}}` -> a::b, a::c::d.
fn flatten_use(tree: &str) -> Vec<Vec<String>> {
    fn walk(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head: Vec<String> = split_path(&tree[..open]);
            let inner = &tree[open + 1..tree.rfind('}').unwrap()];
            let prefix: Vec<String> = prefix.iter().cloned().chain(head).collect();
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        walk(&inner[start..i], &prefix, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            walk(&inner[start..], &prefix, out);
        } else if !tree.is_empty() {
            let path = tree.split(" as ").next().unwrap();
            out.push(prefix.iter().cloned().chain(split_path(path)).collect());
        }
    }
    let mut out = Vec::new();
    walk(tree, &[], &mut out);
    out
}

fn split_path(path: &str) -> Vec<String> {
    path.split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Paths written inline (`crate::x::y`, `super::z`, `child::f`) outside `use` statements.
fn inline_paths(code: &str, roots: &BTreeSet<String>) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let mut j = i;
            while j < bytes.len() && (ident(bytes[j]) || (bytes[j] == b':' && bytes.get(j + 1) == Some(&b':'))) {
                j += if bytes[j] == b':' { 2 } else { 1 };
            }
            let path = split_path(&code[i..j]);
            if path.len() > 1 && roots.contains(&path[0]) {
                out.push(path);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Resolves a path written in the module `here` to the module path it names.
fn absolute(path: &[String], here: &[String], children: &BTreeSet<String>, bin: bool) -> Option<Vec<String>> {
    let mut base: Vec<String> = here.to_vec();
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "modeld" if bin => {
            base.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        child if children.contains(child) => {}
        _ => return None,
    }
    Some(base.into_iter().chain(rest.iter().cloned()).collect())
}

#[test]
fn imports_run_one_way_and_domain_modules_know_no_wire() {
    let src = common::repo().join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    let floor = |module: &str| FLOORS.iter().position(|f| f.contains(&module));

    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        if file.ends_with("src/lib.rs") {
            continue; // the crate root declares every module and imports none
        }
        let here = module_of(file, &src);
        let bin = here[0] == "<bin>";
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let children: BTreeSet<String> = code
            .lines()
            .filter_map(|l| l.trim().trim_start_matches("pub ").strip_prefix("mod ")?.strip_suffix(';'))
            .map(str::to_owned)
            .collect();
        // In a file other than mod.rs, `self` is the file's own module and children live below it.
        let scope: Vec<String> = if bin { vec!["<bin>".into()] } else { here.clone() };
        let mut roots: BTreeSet<String> = ["crate", "self", "super"].map(str::to_owned).into();
        roots.extend(children.iter().cloned());
        if bin {
            roots.insert("modeld".into());
        }

        let mut paths = Vec::new();
        for statement in code.split(';') {
            // A `use` may follow other code in the same chunk (a function body's first line).
            let at = statement
                .match_indices("use ")
                .map(|(i, _)| i)
                .find(|&i| i == 0 || statement[..i].ends_with(|c: char| c.is_whitespace() || c == '{'));
            match at {
                Some(i) => {
                    paths.extend(inline_paths(&statement[..i], &roots));
                    paths.extend(flatten_use(&statement[i + 4..]).into_iter().filter(|p| roots.contains(&p[0])));
                }
                None => paths.extend(inline_paths(statement, &roots)),
            }
        }
        for path in paths {
            let Some(target) = absolute(&path, &scope, &children, bin) else { continue };
            let target_file = file_of(&target, &src);
            if &target_file == file || target_file.ends_with("src/lib.rs") {
                continue;
            }
            edges.entry(file.clone()).or_default().insert(target_file.clone());
            let (from, to) = (&here[0], module_of(&target_file, &src)[0].clone());
            if *from != to {
                match (floor(from), floor(&to)) {
                    (Some(a), Some(b)) if a > b => {}
                    (a, b) => problems.push(format!(
                        "{} (floor {a:?}) imports {} (floor {b:?}) via {}",
                        file.display(),
                        target_file.display(),
                        path.join("::")
                    )),
                }
            }
        }
        if PROTOCOL_FREE.contains(&here[0].as_str()) && (code.contains("tonic") || code.contains("crate::pb")) {
            problems.push(format!("{} is a domain module but names tonic or the generated pb types", file.display()));
        }
    }

    // No cycle, of any length, among files.
    fn visit(
        file: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        path: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        problems: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == file) {
            let cycle: Vec<_> = path[at..].iter().chain([file]).map(|p| p.display().to_string()).collect();
            problems.push(format!("import cycle: {}", cycle.join(" -> ")));
            return;
        }
        if !done.insert(file.clone()) {
            return;
        }
        path.push(file.clone());
        for next in edges.get(file).into_iter().flatten() {
            visit(next, edges, path, done, problems);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for file in edges.keys() {
        visit(file, &edges, &mut Vec::new(), &mut done, &mut problems);
    }

    assert!(edges.len() > 20, "the scan found too few imports to be reading the source: {edges:?}");
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_scanner_sees_imports_of_every_form() {
    let flat = flatten_use("crate::{bundle::{Bundle, Scored}, pb::{self, value::Kind as K}}");
    let names: Vec<String> = flat.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["crate::bundle::Bundle", "crate::bundle::Scored", "crate::pb::self", "crate::pb::value::Kind"]);
    let roots: BTreeSet<String> = ["crate", "stream"].map(str::to_owned).into();
    let inline = inline_paths("let x = crate::schema::Value::Text(s); stream::spawn(a)", &roots);
    assert_eq!(inline.len(), 2);
    let here = vec!["registry".to_owned(), "reload".to_owned()];
    let up = absolute(&split_path("super::Registry"), &here, &BTreeSet::new(), false).unwrap();
    assert_eq!(up, ["registry", "Registry"]);
    let src = common::repo().join("src");
    assert!(file_of(&up, &src).ends_with("src/registry/mod.rs"));
    assert!(file_of(&split_path("registry::watch::Reload"), &src).ends_with("src/registry/watch.rs"));
}
