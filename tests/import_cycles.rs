//! No import circle among the files of `src/` (issue 10, `docs/architecture.md`).
//!
//! Reads every library file under `src/` (not `src/main.rs`, a crate of its own), drops
//! comments and everything from the first column-0 `#[cfg(test)]` on (test modules may reach
//! back), and takes the module paths each file names: the trees of its `use` declarations
//! (`crate::`, `super::`, `self::`, or a child module's name) and the `crate::`/`super::` paths
//! written inline in code. Each path goes to the longest prefix that is a module file
//! (`crate::server::conn::Conn` -> `src/server/conn.rs`; an item of `server/mod.rs` -> that
//! file). The test fails on every strongly connected component of more than one file and lists
//! the edges inside it with the line that makes each.
//!
//! Run alone: `cargo test -p tether --test import_cycles`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// A module's path below the crate root (`[]` is `lib.rs`).
type ModPath = Vec<String>;

/// One import edge: the importing file's module, the imported module, the line number.
#[derive(Debug, Clone)]
struct Edge {
    from: ModPath,
    to: ModPath,
    line: usize,
}

/// The module files of a crate rooted at `src`, keyed by module path.
fn module_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut segs: ModPath = rel
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            let last = segs.last().cloned().unwrap_or_default();
            if segs.len() == 1 && (last == "main" || last == "lib") {
                if last == "main" {
                    continue;
                }
                segs.clear();
            } else if last == "mod" {
                segs.pop();
            }
            out.insert(segs, path);
        }
    }
    out
}

/// Source without comments and string contents, cut at the first column-0 `#[cfg(test)]`.
/// Newlines are kept so offsets still give line numbers.
fn code_of(text: &str) -> String {
    let text = match text.find("\n#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal such as '"' or '\n' (lifetimes have no closing quote there).
            let end = b[i + 1..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(b.len(), |p| i + 2 + p);
            out.push_str("' '");
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn line_at(code: &str, offset: usize) -> usize {
    code[..offset].bytes().filter(|&c| c == b'\n').count() + 1
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a use tree (`a::{b, c::{d, e as f}, self}`) into its paths.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    // Drop the `as name` renames, then all whitespace.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut kept = String::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" {
            i += 2;
            // The renamed name may carry the `,` or `}` that follows it.
            if let Some(w) = words.get(i - 1) {
                kept.extend(w.chars().filter(|c| !is_ident(*c)));
            }
            continue;
        }
        kept.push_str(words[i]);
        i += 1;
    }
    let mut out = Vec::new();
    expand_into(&kept, &mut Vec::new(), &mut out);
    out
}

fn expand_into(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for item in split_top_level(tree) {
        let depth_before = prefix.len();
        if let Some(brace) = item.find('{') {
            let head = item[..brace].trim_end_matches("::");
            prefix.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
            let inner = item[brace + 1..]
                .strip_suffix('}')
                .unwrap_or(&item[brace + 1..]);
            expand_into(inner, prefix, out);
        } else {
            let mut path = prefix.clone();
            path.extend(item.split("::").filter(|s| !s.is_empty()).map(String::from));
            if path.last().is_some_and(|s| s == "self") {
                path.pop();
            }
            out.push(path);
        }
        prefix.truncate(depth_before);
    }
}

/// Splits `a, b::{c, d}, e` at the commas outside braces.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Where a path written in module `here` leads: the longest module-file prefix, or `None`
/// for paths outside the crate (std, dependencies).
fn resolve(
    here: &ModPath,
    path: &[String],
    modules: &BTreeMap<ModPath, PathBuf>,
) -> Option<ModPath> {
    let (mut base, rest): (ModPath, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (here.clone(), &path[1..]),
        Some("super") => {
            let mut base = here.clone();
            let mut i = 0;
            while path.get(i).is_some_and(|s| s == "super") {
                base.pop();
                i += 1;
            }
            (base, &path[i..])
        }
        Some(first) => {
            let mut child = here.clone();
            child.push(first.to_string());
            if !modules.contains_key(&child) {
                return None;
            }
            (here.clone(), path)
        }
        None => return None,
    };
    for seg in rest {
        base.push(seg.clone());
        if !modules.contains_key(&base) {
            base.pop();
            break;
        }
    }
    Some(base)
}

/// Every import edge of one file (self-edges dropped).
fn edges_of(here: &ModPath, text: &str, modules: &BTreeMap<ModPath, PathBuf>) -> Vec<Edge> {
    let code = code_of(text);
    let mut edges = Vec::new();
    let push = |path: &[String], offset: usize, edges: &mut Vec<Edge>| {
        if let Some(to) = resolve(here, path, modules) {
            if &to != here {
                edges.push(Edge {
                    from: here.clone(),
                    to,
                    line: line_at(&code, offset),
                });
            }
        }
    };
    // `use` declarations; their text is blanked so the inline scan below skips them.
    let mut rest = code.clone();
    let mut search_from = 0;
    while let Some(rel) = rest[search_from..].find("use ") {
        let at = search_from + rel;
        let before = rest[..at].chars().next_back();
        if before.is_some_and(is_ident) {
            search_from = at + 4;
            continue;
        }
        let Some(end_rel) = rest[at..].find(';') else {
            break;
        };
        let end = at + end_rel;
        let tree = rest[at + 4..end].to_string();
        for path in expand_use_tree(&tree) {
            push(&path, at, &mut edges);
        }
        let blank: String = rest[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        rest.replace_range(at..end, &blank);
        search_from = end;
    }
    // Inline paths: `crate::a::b` and `super::a` in code.
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(rel) = rest[from..].find(start) {
            let at = from + rel;
            from = at + start.len();
            if rest[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let len = rest[at..]
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len() - at);
            let path: Vec<String> = rest[at..at + len]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            push(&path, at, &mut edges);
        }
    }
    edges
}

/// Tarjan's strongly connected components over the module graph.
fn strongly_connected(nodes: &[ModPath], edges: &[Edge]) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        adj: BTreeMap<&'a ModPath, BTreeSet<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        on_stack: BTreeSet<&'a ModPath>,
        stack: Vec<&'a ModPath>,
        next: usize,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(v: &'a ModPath, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let succ: Vec<&ModPath> = s.adj.get(v).into_iter().flatten().copied().collect();
        for w in succ {
            if !s.index.contains_key(w) {
                visit(w, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let mut s = State {
        adj: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for e in edges {
        s.adj.entry(&e.from).or_default().insert(&e.to);
    }
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(v, &mut s);
        }
    }
    s.out.into_iter().filter(|c| c.len() > 1).collect()
}

/// The import circles of the crate at `src`, one description per circle (empty: none).
fn import_cycles(src: &Path) -> Vec<String> {
    let modules = module_files(src);
    let mut edges = Vec::new();
    for (m, path) in &modules {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        edges.extend(edges_of(m, &text, &modules));
    }
    let nodes: Vec<ModPath> = modules.keys().cloned().collect();
    let name = |m: &ModPath| {
        modules[m]
            .strip_prefix(src.parent().unwrap_or(src))
            .unwrap_or(&modules[m])
            .display()
            .to_string()
    };
    strongly_connected(&nodes, &edges)
        .into_iter()
        .map(|comp| {
            let members: BTreeSet<&ModPath> = comp.iter().collect();
            let mut lines: BTreeSet<String> = BTreeSet::new();
            for e in &edges {
                if members.contains(&e.from) && members.contains(&e.to) {
                    lines.insert(format!("  {}:{} -> {}", name(&e.from), e.line, name(&e.to)));
                }
            }
            let files: Vec<String> = comp.iter().map(name).collect();
            format!(
                "circle among {}:\n{}",
                files.join(", "),
                lines.into_iter().collect::<Vec<_>>().join("\n")
            )
        })
        .collect()
}

#[test]
fn no_import_circle_among_the_files_of_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let cycles = import_cycles(&src);
    assert!(
        cycles.is_empty(),
        "import circles in src/ (see docs/architecture.md for the floors):\n{}",
        cycles.join("\n")
    );
}

/// The checker itself: a planted circle through a grouped `use super::{..}`, an inline
/// `crate::` path and a child named without prefix is found; the same tree without the
/// back edge (and with the back edge only in a comment or a test module) is clean.
#[test]
fn the_checker_finds_a_planted_circle_and_only_that() {
    let dir = std::env::temp_dir().join(format!("tether-import-cycles-{}", std::process::id()));
    let src = dir.join("src");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(src.join("server")).unwrap();
    let write = |p: &str, s: &str| fs::write(src.join(p), s).unwrap();
    write("lib.rs", "pub mod server;\npub mod ws;\n");
    write("ws.rs", "//! codec\nuse std::io;\npub struct Frame;\n");
    write(
        "server/mod.rs",
        "pub mod conn;\npub mod shard;\nuse shard::Ctx;\npub use conn::Conn;\n",
    );
    write(
        "server/conn.rs",
        "use super::{\n    shard::{self, Ctx},\n};\nuse crate::ws::Frame;\npub struct Conn;\n",
    );
    let clean_shard = "use crate::ws;\n// crate::server::conn::Conn in a comment\n\
                       pub struct Ctx;\n#[cfg(test)]\nmod tests { use super::super::conn::Conn; }\n";
    write("server/shard.rs", clean_shard);
    assert_eq!(import_cycles(&src), Vec::<String>::new());

    write(
        "server/shard.rs",
        "pub struct Ctx { c: std::rc::Rc<crate::server::conn::Conn> }\n",
    );
    let found = import_cycles(&src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("src/server/conn.rs:1 -> src/server/shard.rs"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("src/server/shard.rs:1 -> src/server/conn.rs"),
        "{}",
        found[0]
    );
    let _ = fs::remove_dir_all(&dir);
}
