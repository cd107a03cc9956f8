//! The shape of the code, checked: leak-user's folders are layers, top to bottom
//!
//!   main → cli → modes → {probe, collect, symbols, analyze, export} → {sys, model}
//!
//! and imports point down only: a module never imports one above it nor a sibling stage
//! (what two stages share lives in `model` or `sys`), and no crate of the workspace has an
//! import cycle between its modules. Files stay under 800 lines and functions under 120
//! (tests aside): a function longer than a screen is two functions. See docs/architecture.md.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

const MAX_FILE_LINES: usize = 800;
const MAX_FUNCTION_LINES: usize = 120;

/// Each top-level module of leak-user and its layer: a module may import only from layers
/// below its own (and from itself).
fn layer(top: &str) -> Option<u8> {
    Some(match top {
        "main" => 5,
        "cli" => 4,
        "modes" => 3,
        "probe" | "collect" | "symbols" | "analyze" | "export" => 2,
        "sys" => 1,
        "model" => 0,
        _ => return None,
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Every .rs file under `src`, by module path ("modes::watch::gear1"; "main", "lib").
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut parts: Vec<String> = relative
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|last| last == "mod") {
                    parts.pop();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// A file's text without its unit tests: each `#[cfg(test)]` module (`mod tests`, or test
/// fixtures) left out.
fn without_tests(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let test_module = line.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.starts_with("mod ") || next.starts_with("pub mod "));
        if !test_module {
            kept.push_str(line);
            kept.push('\n');
            continue;
        }
        let opening = lines.next().unwrap_or_default();
        if opening.trim_end().ends_with('{') {
            for inner in lines.by_ref() {
                if inner == "}" {
                    break;
                }
            }
        }
    }
    kept
}

/// The paths a file names after `crate::` (or `prefix::`), with `{…}` groups expanded:
/// `crate::{a::b, c::{d, e}}` gives a::b, c::d, c::e.
fn crate_paths(text: &str, prefix: &str) -> Vec<String> {
    fn expand(group: &str, base: &str, out: &mut Vec<String>) {
        let mut depth = 0;
        let mut item = String::new();
        let mut items = Vec::new();
        for ch in group.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if ch == ',' && depth == 0 {
                items.push(std::mem::take(&mut item));
            } else {
                item.push(ch);
            }
        }
        items.push(item);
        for item in items {
            let item = item.trim();
            if item.is_empty() || item == "self" {
                if item == "self" {
                    out.push(base.trim_end_matches("::").to_string());
                }
                continue;
            }
            if let Some(open) = item.find("::{") {
                let inner = &item[open + 3..item.rfind('}').unwrap_or(item.len())];
                expand(inner, &format!("{base}{}::", &item[..open]), out);
            } else {
                let item = item.split(" as ").next().unwrap_or(item);
                out.push(format!("{base}{item}"));
            }
        }
    }
    let needle = format!("{prefix}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(&needle) {
        let start = from + found;
        let after = start + needle.len();
        from = after;
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[after..];
        if rest.starts_with('{') {
            let mut depth = 0;
            let mut end = 0;
            for (index, ch) in rest.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = index;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            expand(&rest[1..end], "", &mut out);
        } else {
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

/// Module → the modules it imports (the longest known module prefix of each path),
/// outside unit tests.
fn imports(src: &Path, prefixes: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let mut graph = BTreeMap::new();
    for (module, path) in &modules {
        let text = fs::read_to_string(path).expect("read a module");
        let mut used = BTreeSet::new();
        for prefix in prefixes {
            for imported in crate_paths(&without_tests(&text), prefix) {
                let parts: Vec<&str> = imported.split("::").collect();
                let known = (1..=parts.len())
                    .rev()
                    .map(|n| parts[..n].join("::"))
                    .find(|candidate| modules.contains_key(candidate));
                if let Some(known) = known
                    && known != *module
                    && !module.starts_with(&format!("{known}::"))
                {
                    used.insert(known);
                }
            }
        }
        graph.insert(module.clone(), used);
    }
    graph
}

/// A cycle in `graph`, as the modules on it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str())
            && let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn leak_user_imports_point_down_only() {
    let src = workspace().join("leak-user/src");
    let graph = imports(&src, &["crate", "leaktrace"]);
    assert!(graph.len() > 40, "the modules were not found under {src:?}");
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let top = module.split("::").next().unwrap_or(module);
        if top == "lib" {
            continue;
        }
        let Some(own) = layer(top) else {
            wrong.push(format!("{module}: a top-level module outside the layers"));
            continue;
        };
        for imported in used {
            let their_top = imported.split("::").next().unwrap_or(imported);
            if their_top == top {
                continue;
            }
            if layer(their_top).is_none_or(|theirs| theirs >= own) {
                wrong.push(format!("{module} imports {imported}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_crate_has_an_import_cycle() {
    for (crate_src, prefixes) in [
        ("leak-user/src", &["crate", "leaktrace"][..]),
        ("leak-ebpf/src", &["crate"][..]),
        ("xtask/src", &["crate"][..]),
    ] {
        let graph = imports(&workspace().join(crate_src), prefixes);
        assert!(!graph.is_empty(), "no modules under {crate_src}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{crate_src}: an import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn files_and_functions_stay_short() {
    let mut long = Vec::new();
    for crate_src in [
        "leak-user/src",
        "leak-ebpf/src",
        "leak-common/src",
        "xtask/src",
    ] {
        for (module, path) in modules(&workspace().join(crate_src)) {
            let text = fs::read_to_string(&path).expect("read a module");
            let code = without_tests(&text);
            let lines: Vec<&str> = code.lines().collect();
            if lines.len() > MAX_FILE_LINES {
                long.push(format!("{crate_src} {module}: {} lines", lines.len()));
            }
            for (start, line) in lines.iter().enumerate() {
                let trimmed = line.trim_start();
                let indent = &line[..line.len() - trimmed.len()];
                let signature = trimmed
                    .trim_start_matches("pub ")
                    .trim_start_matches("pub(crate) ")
                    .trim_start_matches("pub(super) ")
                    .trim_start_matches("const ")
                    .trim_start_matches("async ")
                    .trim_start_matches("unsafe ");
                let Some(name) = signature.strip_prefix("fn ") else {
                    continue;
                };
                let closing = format!("{indent}}}");
                let Some(length) = lines[start..].iter().position(|l| *l == closing) else {
                    continue;
                };
                if length + 1 > MAX_FUNCTION_LINES {
                    let name = name.split(['(', '<']).next().unwrap_or(name);
                    long.push(format!(
                        "{crate_src} {module}::{name}: {} lines",
                        length + 1
                    ));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines a file or {MAX_FUNCTION_LINES} a function:\n{}",
        long.join("\n")
    );
}

#[test]
fn paths_are_read_as_written() {
    let text = "use crate::{a::b, c::{d, e as f}, g};\nlet x = crate::h::i(1);\n";
    assert_eq!(
        crate_paths(text, "crate"),
        ["a::b", "c::d", "c::e", "g", "h::i"]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
