//! The module graph of `src/` against the layers of the redesign (issue 22).
//!
//! `cargo test --test layers -- --nocapture` prints the graph of top-level
//! modules, the graph of files, and every cycle at both levels. The test fails
//! on an import that goes up a layer, on a cycle between top-level modules, on
//! a file cycle across top-level modules, and on a file cycle inside one that
//! is more than Rust's parent/child re-export pattern.
//!
//! References are read from the source text by a small tokenizer (std only,
//! so it needs no parser crate): `use` trees, `crate::`, `self::` and
//! `super::` paths, child modules and modules named by a `use`, and the
//! `teebox::` paths of `main.rs`. Comments and literals are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The target layout: (layer, name, top-level modules). A module may import
/// only from its own layer or a lower one. Every top-level module of `src/`
/// must be listed; names not in `src/` yet are the redesign's new names.
#[rustfmt::skip]
const LAYERS: &[(u8, &str, &[&str])] = &[
    (0, "base", &[
        "message", "certs", "workers", "accept_backoff", "bounded_read", "safe_write", "fnv", "lazy_timer",
        "lines", "counters", "chain", "passwords", "allocator", "diff", "suggest",
    ]),
    (1, "engines", &["upstream", "mirror", "state_file"]),
    (2, "config", &["config"]),
    (3, "handlers", &["handlers"]),
    (4, "admin", &["admin"]),
    (5, "server", &["server", "logging"]),
    (6, "cli", &["replay", "main"]),
];

type Modules = BTreeSet<String>;
type Graph = BTreeMap<String, Modules>;

/// The crate's files by module (`mirror::tee`; `main` for the binary) and
/// their imports: (from file, to module) -> lines of the references.
struct Crate {
    paths: BTreeMap<String, String>,
    edges: BTreeMap<(String, String), BTreeSet<usize>>,
}

#[test]
fn modules_respect_layers() {
    let krate = read_crate();
    let tops = krate.graph(top, |_, _| true);
    let files = krate.graph(|m| m, |_, _| true);
    print_graph("top-level modules", &tops);
    print_graph("files", &files);

    let mut failures = missing_from_table(&tops);
    let up = krate.list(|f, t| goes_up(top(f), top(t)));
    failures.extend((!up.is_empty()).then(|| format!("imports going up a layer:{up}")));
    failures.extend(top_level_cycles(&krate, &tops));
    failures.extend(file_cycles(&krate, &files));
    let report = failures.join("\n");
    assert!(failures.is_empty(), "layering problems:\n{report}");
}

fn missing_from_table(tops: &Graph) -> Vec<String> {
    let listed = LAYERS.iter().flat_map(|layer| layer.2);
    let not_yet: Vec<_> = listed.filter(|m| !tops.contains_key(**m)).collect();
    println!("\n(in the layer table, not in src/ yet: {})", join(not_yet));
    let missing = tops.keys().filter(|m| layer_of(m).is_none());
    let message = |m| format!("top-level module `{m}` is missing from LAYERS in tests/layers.rs");
    missing.map(message).collect()
}

/// Every cycle has an edge that does not go down a layer: those are listed,
/// as the ones to cut.
fn top_level_cycles(krate: &Crate, tops: &Graph) -> Vec<String> {
    println!("\n== cycles between top-level modules ==");
    let mut failures = vec![];
    for cycle in cycles(tops) {
        let names = join(&cycle);
        println!("{names}");
        let inside = |m: &str| cycle.contains(top(m));
        let closing = |f: &str, t: &str| top(f) != top(t) && !goes_down(top(f), top(t));
        let edges = krate.list(|f, t| inside(f) && inside(t) && closing(f, t));
        failures.push(format!(
            "top-level cycle {names}; edges not going down:{edges}"
        ));
    }
    failures
}

/// A file cycle across top-level modules fails. Inside one, a `mod.rs`
/// re-exports its children and they use its shared types: that loop is how
/// Rust modules are built, so only the cycles left without it fail.
fn file_cycles(krate: &Crate, files: &Graph) -> Vec<String> {
    println!("\n== file cycles ==");
    let pruned = krate.graph(|m| m, |f, t| !parent_and_child(f, t));
    let breaking: Vec<_> = cycles(&pruned).into_iter().filter(one_top).collect();
    let mut failures = vec![];
    for cycle in cycles(files) {
        let names = join(&cycle);
        if one_top(&cycle) {
            let allowed = !breaking.iter().any(|b| b.is_subset(&cycle));
            let verdict = if allowed { "allowed" } else { "see below" };
            println!("{names} (inside one module, {verdict})");
            continue;
        }
        println!("{names} (across top-level modules)");
        let inside = |f: &str, t: &str| cycle.contains(f) && cycle.contains(t);
        let closing = |f: &str, t: &str| top(f) != top(t) && !goes_down(top(f), top(t));
        let edges = krate.list(|f, t| inside(f, t) && closing(f, t));
        failures.push(format!("file cycle {names}; edges not going down:{edges}"));
    }
    for cycle in &breaking {
        let names = join(cycle);
        println!("{names} (inside one module, not only a mod.rs and its children)");
        let inside = |f: &str, t: &str| cycle.contains(f) && cycle.contains(t);
        let edges = krate.list(|f, t| inside(f, t) && !parent_and_child(f, t));
        failures.push(format!(
            "file cycle {names}, not a mod.rs and its children:{edges}"
        ));
    }
    failures
}

impl Crate {
    /// The graph at one level (top-level modules or files) of the edges that
    /// `keep` keeps, without self-loops: a module using itself is no cycle.
    fn graph(&self, level: fn(&str) -> &str, keep: impl Fn(&str, &str) -> bool) -> Graph {
        let nodes = self.paths.keys().map(|m| level(m).to_string());
        let mut graph: Graph = nodes.map(|m| (m, Modules::new())).collect();
        for (f, t) in self.edges.keys().filter(|(f, t)| keep(f, t)) {
            let (from, to) = (level(f), level(t));
            if from != to {
                graph.get_mut(from).unwrap().insert(to.into());
            }
        }
        graph
    }

    /// The edges `keep` keeps, one a line with the file and lines they are on:
    /// `config::decode -> handlers: src/config/decode.rs:17, 736`.
    fn list(&self, keep: impl Fn(&str, &str) -> bool) -> String {
        let kept = self.edges.iter().filter(|((f, t), _)| keep(f, t));
        let line = |((f, t), lines): (&(String, String), _)| {
            format!("\n    {f} -> {t}: {}:{}", self.paths[f], join(lines))
        };
        kept.map(line).collect()
    }
}

/// Every file of `src/` and the modules of the crate it refers to.
fn read_crate() -> Crate {
    let files = source_files();
    let modules: Modules = files.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, (_, text)) in &files {
        // `main.rs` is the binary's crate root: its `self` is the root.
        let root = module == "main";
        let scope = if root { vec![] } else { segments(module) };
        // A file naming its own module (`use super::*` in its tests) is no edge.
        let others = references(text, &scope, &modules)
            .into_iter()
            .filter(|r| r.0 != *module);
        for (to, line) in others {
            let lines: &mut BTreeSet<usize> = edges.entry((module.clone(), to)).or_default();
            lines.insert(line);
        }
    }
    let paths = files.into_iter().map(|(m, (path, _))| (m, path)).collect();
    Crate { paths, edges }
}

/// Every `src/**/*.rs` but `lib.rs`, by module: (path for messages, text).
fn source_files() -> BTreeMap<String, (String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut pending, mut files) = (vec![root.join("src")], BTreeMap::new());
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_string_lossy();
            let relative = relative.replace('\\', "/");
            if path.is_dir() {
                pending.push(path);
            } else if let Some(module) = module_of(&relative) {
                files.insert(module, (relative, fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

/// `src/mirror/mod.rs` -> `mirror`, `src/mirror/tee.rs` -> `mirror::tee`,
/// `src/main.rs` -> `main`; `src/lib.rs`, the crate root, -> none.
fn module_of(relative: &str) -> Option<String> {
    let path = relative.strip_prefix("src/")?.strip_suffix(".rs")?;
    let path = path.strip_suffix("/mod").unwrap_or(path);
    (path != "lib").then(|| path.replace('/', "::"))
}

fn segments(module: &str) -> Vec<String> {
    module.split("::").map(String::from).collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<_> = items.into_iter().map(|i| i.to_string()).collect();
    items.join(", ")
}

fn layer_of(top: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|layer| layer.2.contains(&top))
        .map(|layer| layer.0)
}

/// Between two known layers (an unknown one is reported as missing).
fn goes_up(from: &str, to: &str) -> bool {
    matches!((layer_of(from), layer_of(to)), (Some(f), Some(t)) if t > f)
}

fn goes_down(from: &str, to: &str) -> bool {
    matches!((layer_of(from), layer_of(to)), (Some(f), Some(t)) if t < f)
}

fn parent_and_child(a: &str, b: &str) -> bool {
    let parent = |m: &str| m.rsplit_once("::").map(|(parent, _)| parent.to_string());
    parent(a).as_deref() == Some(b) || parent(b).as_deref() == Some(a)
}

fn one_top(cycle: &Modules) -> bool {
    cycle.iter().all(|m| top(m) == top(cycle.first().unwrap()))
}

fn print_graph(title: &str, graph: &Graph) {
    println!("\n== {title} ==");
    for (from, to) in graph {
        let to = if to.is_empty() { "-".into() } else { join(to) };
        println!("{from} -> {to}");
    }
}

/// The strongly connected components of two nodes or more. The graphs are
/// small, so mutual reachability is plainer than Tarjan's algorithm.
fn cycles(graph: &Graph) -> Vec<Modules> {
    let reach: BTreeMap<_, _> = graph.keys().map(|n| (n, reachable(graph, n))).collect();
    let mut found: Vec<Modules> = Vec::new();
    for (node, reached) in &reach {
        let back = reached.iter().filter(|m| reach[m].contains(*node));
        let component: Modules = back.cloned().collect();
        if component.len() > 1 && !found.contains(&component) {
            found.push(component);
        }
    }
    found
}

/// The nodes reachable from `start` by one edge or more.
fn reachable(graph: &Graph, start: &String) -> Modules {
    let (mut seen, mut pending) = (Modules::new(), vec![start]);
    while let Some(node) = pending.pop() {
        for next in &graph[node] {
            if seen.insert(next.clone()) {
                pending.push(next);
            }
        }
    }
    seen
}

// ---- the reference extractor ----

/// A token's text and line.
type Token = (String, usize);
/// Names a path may start with (child modules, modules named by a `use`).
type Aliases = BTreeMap<String, Vec<String>>;

/// The modules of the crate that `source` refers to, each with the line of
/// the reference, as the longest module path that exists. `scope` is the
/// file's own module (empty for `main.rs`).
fn references(source: &str, scope: &[String], modules: &Modules) -> Vec<(String, usize)> {
    let tokens = tokenize(source);
    let mut reader = Reader {
        tokens: &tokens,
        ..Reader::default()
    };
    reader.read(scope);
    let (paths, declared) = (reader.paths, reader.declared);
    // A parent names its children bare (`tee::Tee` in `mirror/mod.rs`);
    // `main.rs` declares its own with `mod allocator;`.
    let own = format!("{}::", scope.join("::"));
    let children = modules.iter().filter_map(|m| m.strip_prefix(&own));
    let children = children.filter(|child| !child.contains("::"));
    let mut aliases = Aliases::new();
    for child in declared.iter().map(String::as_str).chain(children) {
        aliases.insert(child.into(), [scope, &[child.into()]].concat());
    }
    // After `use crate::config::value;`, `value::x` is a path into `config::value`.
    for path in &paths {
        if let (Some(alias), Some(to)) = (&path.alias, absolute(path, &aliases)) {
            if modules.contains(&to.join("::")) {
                aliases.insert(alias.clone(), to);
            }
        }
    }
    let longest = |p: Vec<String>| {
        let mut prefixes = (1..=p.len()).rev().map(|n| p[..n].join("::"));
        prefixes.find(|m| modules.contains(m))
    };
    let resolved = |p: &RawPath| Some((longest(absolute(p, &aliases)?)?, p.line));
    paths.iter().filter_map(resolved).collect()
}

/// The path from the crate root, if `path` starts inside the crate. The
/// library is `teebox` to the binary (and cannot be inside itself).
fn absolute(path: &RawPath, aliases: &Aliases) -> Option<Vec<String>> {
    let supers = path.segments.iter().take_while(|s| *s == "super").count();
    let kept = path.scope.len().checked_sub(supers)?;
    let (base, rest) = match path.segments.first()?.as_str() {
        "crate" | "teebox" => (vec![], 1),
        "self" => (path.scope.clone(), 1),
        "super" => (path.scope[..kept].to_vec(), supers),
        alias => (aliases.get(alias)?.clone(), 1),
    };
    Some([base, path.segments[rest..].to_vec()].concat())
}

/// A path as written, before it is resolved.
struct RawPath {
    segments: Vec<String>,
    /// The module it is written in, inline `mod tests { }` blocks included.
    scope: Vec<String>,
    line: usize,
    /// The name a `use` leaf binds (its last segment or its `as` name).
    alias: Option<String>,
}

/// Reads the paths of a file's tokens.
#[derive(Default)]
struct Reader<'a> {
    tokens: &'a [Token],
    paths: Vec<RawPath>,
    /// Names declared by `mod x;` (a declaration, not an import).
    declared: Vec<String>,
}

impl Reader<'_> {
    fn text(&self, i: usize) -> &str {
        self.tokens.get(i).map_or("", |t| t.0.as_str())
    }

    fn push(&mut self, segments: Vec<String>, scope: &[String], i: usize, alias: Option<String>) {
        let (scope, line) = (scope.to_vec(), self.tokens[i].1);
        self.paths.push(RawPath {
            segments,
            scope,
            line,
            alias,
        });
    }

    /// Every path of two segments or more and every `use` leaf, with the
    /// module it is written in: inline `mod tests { }` blocks change it.
    fn read(&mut self, file_scope: &[String]) {
        let (mut inline, mut depth, mut i) = (Vec::<(String, usize)>::new(), 0, 0);
        while i < self.tokens.len() {
            let inline_names = inline.iter().map(|m| &m.0);
            let scope: Vec<String> = file_scope.iter().chain(inline_names).cloned().collect();
            let next = |k: usize| self.text(i + k).to_string();
            let starts_path = i == 0 || self.text(i - 1) != "::";
            match self.text(i) {
                "use" => {
                    i = self.use_tree(i + 1, &[], &scope);
                    continue;
                }
                "mod" if next(2) == "{" => inline.push((next(1), depth)),
                "mod" if next(2) == ";" => self.declared.push(next(1)),
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    if inline.last().is_some_and(|m| m.1 == depth) {
                        inline.pop();
                    }
                }
                // The start of a path (not a segment in the middle of one).
                word if is_ident(word) && next(1) == "::" && starts_path => {
                    let mut segments = vec![word.to_string()];
                    while self.text(i + 1) == "::" && is_ident(self.text(i + 2)) {
                        segments.push(self.text(i + 2).into());
                        i += 2;
                    }
                    self.push(segments, &scope, i, None);
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// Reads the use tree at `i` under `prefix` (nested groups, `self`, `as`,
    /// globs) into one path per leaf; returns the index after the tree.
    fn use_tree(&mut self, mut i: usize, prefix: &[String], scope: &[String]) -> usize {
        let mut segments = prefix.to_vec();
        loop {
            match self.text(i) {
                "{" => {
                    i += 1;
                    while i < self.tokens.len() && self.text(i) != "}" {
                        i = self.use_tree(i, &segments, scope);
                        i += usize::from(self.text(i) == ",");
                    }
                    return i + 1;
                }
                "*" => {
                    self.push(segments, scope, i, None);
                    return i + 1;
                }
                word if is_ident(word) && self.text(i + 1) == "::" => {
                    segments.push(word.into());
                    i += 2;
                }
                word if is_ident(word) => {
                    if word != "self" {
                        segments.push(word.into());
                    }
                    let renamed = (self.text(i + 1) == "as").then(|| self.text(i + 2).to_string());
                    let alias = renamed.clone().or_else(|| segments.last().cloned());
                    self.push(segments, scope, i, alias);
                    return if renamed.is_some() { i + 3 } else { i + 1 };
                }
                // Also a leading `::`, which names another crate.
                _ => return i,
            }
        }
    }
}

fn is_ident(word: &str) -> bool {
    word.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

/// Identifiers and punctuation (`::` as one token), with their lines.
/// Comments, string and char literals and lifetimes are dropped, so that a
/// `crate::` in a doc comment or a message is never taken for an import.
fn tokenize(source: &str) -> Vec<Token> {
    let c: Vec<char> = source.chars().collect();
    let (mut tokens, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let start = i;
        i = match (c[i], c.get(i + 1).copied().unwrap_or(' ')) {
            ('/', '/') => (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len()),
            ('/', '*') => skip_block_comment(&c, i),
            ('"', _) => skip_string(&c, i + 1, None),
            ('\'', _) => skip_char_or_lifetime(&c, i),
            (':', ':') => {
                tokens.push(("::".into(), line));
                i + 2
            }
            (ch, _) if is_word(ch) => {
                let (end, word) = word_or_literal(&c, i);
                tokens.extend(word.map(|word| (word, line)));
                end
            }
            (ch, _) => {
                tokens.extend((!ch.is_whitespace()).then(|| (ch.into(), line)));
                i + 1
            }
        };
        line += c[start..i].iter().filter(|&&ch| ch == '\n').count();
    }
    tokens
}

/// An identifier (or number), or the literal it prefixes: `r#"…"#`, `b"…"`,
/// `b'x'`, and `r#type`, whose identifier is then read on its own.
fn word_or_literal(c: &[char], i: usize) -> (usize, Option<String>) {
    let end = word_end(c, i);
    let word: String = c[i..end].iter().collect();
    let hashes = c[end..].iter().take_while(|&&ch| ch == '#').count();
    match (word.as_str(), c.get(end + hashes)) {
        ("r" | "br" | "cr", Some('"')) => (skip_string(c, end + hashes + 1, Some(hashes)), None),
        ("b" | "c", Some('"')) => (skip_string(c, end + 1, None), None),
        ("b", Some('\'')) => (skip_char_or_lifetime(c, end), None),
        ("r", _) if hashes == 1 => (end + 1, None),
        _ => (end, Some(word)),
    }
}

fn word_end(c: &[char], i: usize) -> usize {
    (i..c.len()).find(|&k| !is_word(c[k])).unwrap_or(c.len())
}

fn is_word(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Skips a `/* */` comment (they nest), from its opening.
fn skip_block_comment(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match (c[i], c.get(i + 1)) {
            ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
            ('*', Some('/')) => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
        if depth == 0 {
            return i;
        }
    }
    c.len()
}

/// Skips a string body from after its opening quote; `raw` is the number of
/// `#` of a raw string (which has no escapes), `None` for an ordinary one.
fn skip_string(c: &[char], mut i: usize, raw: Option<usize>) -> usize {
    let hashes = raw.unwrap_or(0);
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += if c[i] == '\\' && raw.is_none() { 2 } else { 1 };
    }
    c.len()
}

/// Skips `'x'`, `'\n'`, `'\u{..}'` or a lifetime `'a`, from the quote.
fn skip_char_or_lifetime(c: &[char], i: usize) -> usize {
    let closing = (i + 3..c.len()).find(|&k| c[k] == '\'');
    match (c.get(i + 1), c.get(i + 2)) {
        (Some('\\'), _) => closing.map_or(c.len(), |k| k + 1),
        (_, Some('\'')) => i + 3,
        _ => word_end(c, i + 1),
    }
}

#[test]
fn extractor_reads_use_trees_and_paths_but_not_comments_or_strings() {
    let names = ["a", "a::b", "a::c", "x", "x::y", "x::y::z", "w"];
    let modules: Modules = names.map(String::from).into();
    let source = r##"
        use crate::a::{b::{self, Thing as Other}, c::*};
        // crate::w::in_a_comment
        /* crate::w /* nested */ crate::w */
        /// see crate::w
        fn f<'a>(s: &'a str) -> String {
            let _ = super::super::Root;
            let _ = b::call('"', "crate::w \" crate::w", r#"crate::w "# );
            format!("{}", '{')
        }
        mod tests {
            use super::*;
            use super::super::Sibling;
        }
    "##;
    let found = |source, scope: &[String]| {
        let refs = references(source, scope, &modules);
        join(refs.iter().map(|(m, line)| format!("{m}:{line}")))
    };
    let expected = "a::b:2, a::b:2, a::c:2, x:7, a::b:8, x::y::z:12, x::y:13";
    assert_eq!(found(source, &segments("x::y::z")), expected);

    // The binary reaches the library by its crate name; `http` is another crate.
    let main = "use teebox::x::y::{self, z};\nfn main() { teebox::a::c::run(); http::get(); }";
    assert_eq!(found(main, &[]), "x::y:1, x::y::z:1, a::c:2");
}
