//! Reading KDL nodes: argument counts, option blocks, duplicates and unknown
//! names. Handlers decode their nodes with these helpers so that every
//! handler reports mistakes the same way.

use std::path::{Path, PathBuf};

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::diag::{Problem, Problems};
use super::value::{self, Parsed};
use crate::message::header_ops::{HeaderOp, HeaderOps, HeaderText};
use crate::message::placeholders::Template;

/// Whether an option may be given more than once in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Once,
    Many,
}

/// The span of a node's name, which is where most node-level errors point.
pub fn name_span(node: &KdlNode) -> SourceSpan {
    node.name().span()
}

pub fn arguments(node: &KdlNode) -> Vec<&KdlEntry> {
    node.entries()
        .iter()
        .filter(|e| e.name().is_none())
        .collect()
}

pub fn properties(node: &KdlNode) -> Vec<&KdlEntry> {
    node.entries()
        .iter()
        .filter(|e| e.name().is_some())
        .collect()
}

/// The children of a node, or none.
pub fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map(|d| d.nodes()).unwrap_or(&[])
}

/// Records problems while decoding. Methods return `None` after recording a
/// problem, so callers carry on decoding and report everything at once.
pub struct Reader<'p> {
    problems: &'p mut Problems,
    /// Where relative paths in the file start: files that must exist are
    /// read, and the directories of files teebox will write are looked at,
    /// while the file is checked.
    base_dir: PathBuf,
    /// Names that must be unique in the whole file (by kind of name),
    /// with where each was first given.
    names: Vec<(&'static str, String, SourceSpan)>,
}

impl<'p> Reader<'p> {
    pub fn new(problems: &'p mut Problems, base_dir: PathBuf) -> Self {
        Reader {
            problems,
            base_dir,
            names: Vec::new(),
        }
    }

    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Claims a name of some kind (a handler's own) for the whole file; a second
    /// claim of the same name is reported at its place.
    pub fn claim_name(&mut self, kind: &'static str, name: &str, span: SourceSpan) -> bool {
        if let Some((_, _, first)) = self.names.iter().find(|(k, n, _)| *k == kind && n == name) {
            let first = *first;
            self.push(
                Problem::error(span, format!("two {kind}s are named `{name}`"))
                    .label("second")
                    .also(first, "first")
                    .help(format!(
                        "the admin endpoint picks a {kind} by its name: give each its own"
                    )),
            );
            return false;
        }
        self.names.push((kind, name.to_string(), span));
        true
    }

    /// A relative path from the site file, made absolute (or relative to
    /// where teebox runs, as the file's own path is).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// A file teebox creates or appends to when it runs (`what`, such as
    /// "access_log"): its directory must exist and it must not be a
    /// directory itself. Nothing is created here: `teebox validate` changes
    /// nothing on disk. Returns the path as written.
    pub fn file_to_write(&mut self, entry: &KdlEntry, what: &str) -> Option<PathBuf> {
        let written = PathBuf::from(self.check(value::non_empty_string(entry))?);
        let span = value::value_span(entry);
        let full = self.resolve(&written);
        let problem = |message: String| {
            Problem::error(span, message)
                .label(format!("the {what} is written here"))
                .help("create the directory, or give a path in one that exists; a relative path starts at the site file's directory")
        };
        if full.is_dir() {
            self.push(
                Problem::error(span, format!("{} is a directory", full.display()))
                    .label(format!("the {what} is written here"))
                    .help("give the path of a file"),
            );
            return None;
        }
        let dir = match full.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Some(written),
            Ok(_) => {
                self.push(problem(format!("{} is not a directory", dir.display())));
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.push(problem(format!(
                    "the directory {} does not exist",
                    dir.display()
                )));
                None
            }
            Err(e) => {
                self.push(problem(format!(
                    "cannot look at the directory {}: {e}",
                    dir.display()
                )));
                None
            }
        }
    }

    /// Keeps a parsed value, or records why it could not be parsed.
    pub fn check<T>(&mut self, parsed: Parsed<T>) -> Option<T> {
        parsed.map_err(|p| self.push(p)).ok()
    }

    pub fn has_errors(&self) -> bool {
        self.problems.has_errors()
    }

    /// A node that takes no children: reports a block if there is one.
    pub fn no_children(&mut self, node: &KdlNode) {
        if let Some(doc) = node.children() {
            self.push(
                Problem::error(
                    doc.span(),
                    format!("`{}` takes no block", node.name().value()),
                )
                .label("unexpected block"),
            );
        }
    }

    /// Reports every property on a node that takes none.
    pub fn no_properties(&mut self, node: &KdlNode) {
        for entry in properties(node) {
            self.push(
                Problem::error(
                    entry.span(),
                    format!("`{}` takes no properties", node.name().value()),
                )
                .label("unexpected property"),
            );
        }
    }

    /// Reports properties other than `allowed`, and duplicated ones.
    pub fn known_properties(&mut self, node: &KdlNode, allowed: &[&str]) {
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for entry in properties(node) {
            let key = entry.name().map(|n| n.value()).unwrap_or_default();
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                self.push(
                    Problem::error(entry.span(), format!("duplicate property `{key}`"))
                        .label("set again here")
                        .also(*first, "first set here"),
                );
            } else if !allowed.contains(&key) {
                let mut p = Problem::error(
                    entry.span(),
                    format!("unknown property `{key}` on `{}`", node.name().value()),
                )
                .label("unknown property");
                p = match value::suggest(key, allowed.iter().copied()) {
                    Some(near) => p.help(format!("did you mean `{near}`?")),
                    None if allowed.is_empty() => p.help("this node takes no properties"),
                    None => p.help(format!("expected one of: {}", allowed.join(", "))),
                };
                self.push(p);
            }
            seen.push((key, entry.span()));
        }
    }

    /// Exactly `count` arguments described by `what`, no properties, no block.
    pub fn args<'n>(
        &mut self,
        node: &'n KdlNode,
        count: usize,
        what: &str,
    ) -> Option<Vec<&'n KdlEntry>> {
        self.no_children(node);
        self.no_properties(node);
        self.args_only(node, count, what)
    }

    /// Exactly `count` arguments; properties and block are the caller's business.
    pub fn args_only<'n>(
        &mut self,
        node: &'n KdlNode,
        count: usize,
        what: &str,
    ) -> Option<Vec<&'n KdlEntry>> {
        let args = arguments(node);
        let name = node.name().value();
        if args.len() < count {
            self.push(
                Problem::error(name_span(node), format!("`{name}` needs {what}"))
                    .label("missing argument"),
            );
            return None;
        }
        if args.len() > count {
            let message = match count {
                0 => format!("`{name}` takes no arguments"),
                _ => format!("`{name}` takes only {what}"),
            };
            for extra in &args[count..] {
                let p = Problem::error(extra.span(), message.clone()).label("unexpected argument");
                self.push(match count {
                    0 => p.help(what.to_string()),
                    _ => p,
                });
            }
            return None;
        }
        Some(args)
    }

    /// At least one argument, e.g. a list of upstreams.
    pub fn some_args<'n>(&mut self, node: &'n KdlNode, what: &str) -> Option<Vec<&'n KdlEntry>> {
        let args = arguments(node);
        if args.is_empty() {
            self.push(
                Problem::error(
                    name_span(node),
                    format!("`{}` needs {what}", node.name().value()),
                )
                .label("missing argument"),
            );
            return None;
        }
        Some(args)
    }

    /// The single value of an option node such as `sample 0.25`.
    pub fn value<T>(
        &mut self,
        node: &KdlNode,
        what: &str,
        parse: impl FnOnce(&KdlEntry) -> Parsed<T>,
    ) -> Option<T> {
        let args = self.args(node, 1, what)?;
        self.check(parse(args[0]))
    }

    /// Each argument parsed by `parse`; `None` if any fails (all are reported).
    pub fn each<T>(
        &mut self,
        args: &[&KdlEntry],
        parse: impl Fn(&KdlEntry) -> Parsed<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(args.len());
        let mut ok = true;
        for entry in args {
            match parse(entry) {
                Ok(v) => out.push(v),
                Err(p) => {
                    ok = false;
                    self.push(p);
                }
            }
        }
        ok.then_some(out)
    }

    /// Upstream or target URLs, each given once.
    pub fn urls(&mut self, args: &[&KdlEntry]) -> Option<Vec<value::UpstreamUrl>> {
        let mut urls: Vec<value::UpstreamUrl> = Vec::new();
        let mut spans = Vec::new();
        let mut ok = true;
        for entry in args {
            let Some(url) = self.check(value::upstream_url(entry)) else {
                ok = false;
                continue;
            };
            let span = value::value_span(entry);
            if let Some(at) = urls.iter().position(|u| *u == url) {
                self.push(value::listed_twice(
                    &url,
                    span,
                    &urls[at],
                    spans[at],
                    "list each URL once",
                ));
                ok = false;
                continue;
            }
            urls.push(url);
            spans.push(span);
        }
        ok.then_some(urls)
    }

    /// A header operation: `"Name" "value"` sets, `"-Name"` removes,
    /// `"+Name" "value"` adds another value.
    pub fn header_op(&mut self, node: &KdlNode) -> Option<HeaderOp> {
        self.no_children(node);
        self.no_properties(node);
        let args = arguments(node);
        let option = node.name().value();
        let usage = || {
            format!("write `{option} \"Name\" \"value\"` to set a header or `{option} \"-Name\"` to remove it")
        };
        let Some(first) = args.first() else {
            self.push(
                Problem::error(name_span(node), format!("`{option}` needs a header name"))
                    .label("missing argument")
                    .help(usage()),
            );
            return None;
        };
        let name = self.check(value::non_empty_string(first))?;
        self.header_op_from(&name, first.span(), &args[1..], usage())
    }

    /// A header value, which may hold placeholders such as `{request.id}`.
    pub fn header_text(&mut self, entry: &KdlEntry) -> Option<HeaderText> {
        let fixed = self.check(value::header_value(entry))?;
        // Its bytes are the site file's UTF-8 text (`to_str` would refuse a
        // value with any non-ASCII letter, and its placeholders would go
        // out as literal text).
        let text = std::str::from_utf8(fixed.as_bytes()).unwrap_or_default();
        let template = match Template::parse(text) {
            Ok(None) => return Some(HeaderText::Fixed(fixed)),
            Ok(Some(template)) => template,
            Err(bad) => {
                self.push(value::bad_placeholder(entry, &bad));
                return None;
            }
        };
        // `{env.NAME}` is filled in now: its value must fit a header too.
        if let Some(bad) = template
            .text()
            .find(|t| http::HeaderValue::from_str(t).is_err())
        {
            self.push(
                Problem::error(
                    value::value_span(entry),
                    "an environment variable here holds characters a header value may not",
                )
                .label(format!(
                    "not a header value once filled in ({} bytes)",
                    bad.len()
                ))
                .help("header values may not hold control characters such as newlines"),
            );
            return None;
        }
        match template.fixed().map(http::HeaderValue::from_str) {
            Some(Ok(value)) => Some(HeaderText::Fixed(value)),
            _ => Some(HeaderText::Template(template)),
        }
    }

    /// Builds a header operation from a name (with its `-`/`+` prefix) and
    /// the entries after it.
    pub fn header_op_from(
        &mut self,
        name: &str,
        span: SourceSpan,
        rest: &[&KdlEntry],
        usage: String,
    ) -> Option<HeaderOp> {
        let (prefix, bare) = match name.as_bytes().first() {
            Some(&c @ (b'-' | b'+')) => (Some(c), &name[1..]),
            _ => (None, name),
        };
        let Ok(header) = http::HeaderName::from_bytes(bare.as_bytes()) else {
            self.push(value::bad_header_name(span, bare));
            return None;
        };
        match (prefix, rest) {
            (Some(b'-'), []) => Some(HeaderOp::Remove(header)),
            (Some(b'-'), [extra, ..]) => {
                self.push(
                    Problem::error(extra.span(), "a header removal takes no value")
                        .label("unexpected value")
                        .help(usage),
                );
                None
            }
            (_, [value]) => {
                let text = self.header_text(value)?;
                Some(match prefix {
                    Some(_) => HeaderOp::Add(header, text),
                    None => HeaderOp::Set(header, text),
                })
            }
            (_, []) => {
                self.push(
                    Problem::error(span, format!("header `{bare}` needs a value"))
                        .label("missing value")
                        .help(usage),
                );
                None
            }
            (_, [_, extra, ..]) => {
                self.push(
                    Problem::error(extra.span(), "a header takes one value")
                        .label("unexpected argument")
                        .help(usage),
                );
                None
            }
        }
    }

    /// Sorts a block's children by option name, reporting unknown names and
    /// options given twice that may be given once.
    pub fn options<'n>(
        &mut self,
        node: &'n KdlNode,
        known: &[(&'static str, Repeat)],
    ) -> Options<'n> {
        let mut found: Vec<(&'static str, &'n KdlNode)> = Vec::new();
        let block = node.name().value();
        for child in children(node) {
            let name = child.name().value();
            let Some(&(key, repeat)) = known.iter().find(|(k, _)| *k == name) else {
                let names = known.iter().map(|(k, _)| *k);
                let mut p = Problem::error(
                    name_span(child),
                    format!("unknown option `{name}` in `{block}`"),
                )
                .label("unknown option");
                p = match value::suggest(name, names.clone()) {
                    Some(near) => p.help(format!("did you mean `{near}`?")),
                    None if known.is_empty() => p.help(format!("`{block}` takes no options")),
                    None => p.help(format!(
                        "`{block}` takes: {}",
                        names.collect::<Vec<_>>().join(", ")
                    )),
                };
                self.push(p);
                continue;
            };
            if repeat == Repeat::Once {
                if let Some((_, first)) = found.iter().find(|(k, _)| *k == key) {
                    self.push(
                        Problem::error(
                            name_span(child),
                            format!("duplicate option `{name}` in `{block}`"),
                        )
                        .label("set again here")
                        .also(name_span(first), "first set here")
                        .help("give each option once"),
                    );
                    continue;
                }
            }
            found.push((key, child));
        }
        Options { node, found }
    }

    /// Decodes every `header_up`-style node of an option block.
    pub fn header_ops(&mut self, nodes: &[&KdlNode]) -> HeaderOps {
        HeaderOps::new(nodes.iter().filter_map(|n| self.header_op(n)).collect())
    }
}

/// The options of a block, by name, in file order.
pub struct Options<'n> {
    /// The node whose block they are.
    node: &'n KdlNode,
    found: Vec<(&'static str, &'n KdlNode)>,
}

impl<'n> Options<'n> {
    /// None of `node`'s children: for a node whose block holds no named
    /// options, when its properties are looked up (`config::options`).
    pub fn none(node: &'n KdlNode) -> Self {
        Options {
            node,
            found: Vec::new(),
        }
    }

    /// The node whose options these are.
    pub fn node(&self) -> &'n KdlNode {
        self.node
    }

    /// The node for an option given at most once.
    pub fn one(&self, name: &str) -> Option<&'n KdlNode> {
        self.found.iter().find(|(k, _)| *k == name).map(|(_, n)| *n)
    }

    /// Every node for a repeatable option.
    pub fn all(&self, name: &str) -> Vec<&'n KdlNode> {
        self.found
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, n)| *n)
            .collect()
    }
}
