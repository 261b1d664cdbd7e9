//! The layering rules of `src/`, checked on the source text: dependencies between top-level
//! modules point one way (no cycle), the bottom layers (`proto`, `net`) depend on nothing else in
//! the crate, and `unsafe` appears only in `net`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Top-level module of a file under `src/` (`shard/conn.rs` -> `shard`, `config.rs` -> `config`).
fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments, string contents and its `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Top-level crate modules named in `code` (`crate::x`, and the heads of `use crate::{...}`).
fn crate_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(tree) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in tree.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.insert(head(&item));
        } else {
            found.insert(head(rest));
        }
    }
    found.remove("");
    found
}

fn head(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = top_module(rel);
        let code = code_of(&fs::read_to_string(&file).unwrap());
        let entry = deps.entry(module.clone()).or_default();
        entry.extend(crate_modules(&code).into_iter().filter(|m| *m != module));
    }
    deps
}

#[test]
fn the_parser_finds_nested_use_trees() {
    let code = code_of(
        "use crate::{a::b, c::{d, e}, f};\nlet x = crate::g::h(); // crate::comment\n\"crate::s\"",
    );
    let found: Vec<String> = crate_modules(&code).into_iter().collect();
    assert_eq!(found, ["a", "c", "f", "g"]);
}

#[test]
fn bottom_layers_depend_on_nothing_in_the_crate() {
    let deps = graph();
    for bottom in ["proto", "net", "clock"] {
        assert_eq!(
            deps.get(bottom).map(BTreeSet::len),
            Some(0),
            "{bottom} must not depend on the rest of the crate: {:?}",
            deps.get(bottom)
        );
    }
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let deps = graph();
    // Depth-first search for a back edge; lib.rs (the map and re-exports) is not a layer.
    fn visit(
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == node) {
            panic!("import cycle: {} -> {node}", path[i..].join(" -> "));
        }
        path.push(node.to_string());
        for next in deps.get(node).into_iter().flatten() {
            if next != "lib" {
                visit(next, deps, path, done);
            }
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in deps.keys().filter(|k| *k != "lib") {
        visit(node, &deps, &mut Vec::new(), &mut done);
    }
}

#[test]
fn unsafe_code_lives_only_in_net() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let code = code_of(&fs::read_to_string(&file).unwrap());
        let has_unsafe = code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == "unsafe");
        let allowed =
            top_module(rel) == "net" || rel == Path::new("lib.rs") || rel == Path::new("main.rs");
        assert!(
            !has_unsafe || allowed,
            "{} uses unsafe outside net/",
            rel.display()
        );
    }
}
