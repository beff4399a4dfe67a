//! The mirror's `rewrite`, `query_set`, `query_remove` and `replace_body`
//! lines: declared here, and read into the engine's [`CopyEdits`].

use std::borrow::Cow;

use kdl::KdlNode;
use regex::bytes::Regex;

use super::every;
use crate::config::options::{Block, Spec, Unset, Value};
use crate::config::reader::{arguments, name_span, properties, Reader};
use crate::config::value;
use crate::config::Problem;
use crate::handlers::rewrite::decode_rewrite;
use crate::message::path_rewrite::Rewrite;
use crate::mirror::copy_edits::{BodyReplace, CopyEdits, QueryOp};

pub static REWRITE: Spec<PathRewrite> = Spec::many(
    "rewrite",
    PathRewrite,
    Unset::Means("none"),
    "Rewrites the path of copies only, as the rewrite handler does, in file order.",
);

pub static QUERY_SET: Spec<QueryEdit> = Spec::many(
    "query_set",
    QueryEdit("\"name\" \"value\""),
    Unset::Means("none"),
    "Sets a query parameter on copies (every occurrence replaced, or added).",
);

pub static QUERY_REMOVE: Spec<QueryEdit> = Spec::many(
    "query_remove",
    QueryEdit("parameter names"),
    Unset::Means("none"),
    "Removes query parameters from copies.",
);

pub static REPLACE_BODY: Spec<BodyEdit> = Spec::many(
    "replace_body",
    BodyEdit,
    Unset::Means("none"),
    "Rewrites the body of copies, in file order.",
);

const QUERY_SET_USAGE: &str = "write query_set \"name\" \"value\"";
const REPLACE_BODY_USAGE: &str =
    "write replace_body \"old\" \"new\", or replace_body regex=#\"\"id\":(\\d+)\"# replace=#\"\"id\":\"s-$1\"\"#";

/// Each kind's lines in file order.
pub fn decode(opts: &Block, r: &mut Reader) -> Option<CopyEdits> {
    let paths = every(opts, r, &REWRITE);
    // Kinds apply in a fixed order (path, query, body), so within the
    // query edits only file order matters: sets and removes are merged
    // back by their place in the file.
    let sets = opts.nodes(&QUERY_SET).into_iter().map(|n| (n, &QUERY_SET));
    let removes = opts
        .nodes(&QUERY_REMOVE)
        .into_iter()
        .map(|n| (n, &QUERY_REMOVE));
    let mut query_nodes: Vec<_> = sets.chain(removes).collect();
    query_nodes.sort_by_key(|(n, _)| n.span().offset());
    let mut query = Vec::new();
    let mut ok = true;
    for (node, spec) in query_nodes {
        match spec.read_node(node, r) {
            Some(mut ops) => query.append(&mut ops),
            None => ok = false,
        }
    }
    let body = every(opts, r, &REPLACE_BODY);
    ok.then_some(CopyEdits::new(paths?, query, body?))
}

/// A `rewrite` line: the `rewrite` handler's node, applied to copies.
#[derive(Debug)]
pub struct PathRewrite;

impl Value for PathRewrite {
    type Out = Rewrite;
    fn describe(&self) -> Cow<'static, str> {
        "as the rewrite handler".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a new path, or strip_prefix=, regex= and replace=, add_prefix=".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Rewrite> {
        decode_rewrite(node, r)
    }
}

/// A `query_set` or `query_remove` line; the string describes its
/// arguments.
#[derive(Debug)]
pub struct QueryEdit(&'static str);

impl Value for QueryEdit {
    type Out = Vec<QueryOp>;
    fn describe(&self) -> Cow<'static, str> {
        self.0.into()
    }
    fn expects(&self) -> Cow<'static, str> {
        self.0.into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Vec<QueryOp>> {
        query_op(node, r)
    }
}

/// A `replace_body` line.
#[derive(Debug)]
pub struct BodyEdit;

impl Value for BodyEdit {
    type Out = BodyReplace;
    fn describe(&self) -> Cow<'static, str> {
        "two strings (literal), or regex= and replace=".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "two strings, or regex= and replace=".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<BodyReplace> {
        replace_body(node, r)
    }
}

fn query_op(node: &KdlNode, r: &mut Reader) -> Option<Vec<QueryOp>> {
    r.no_children(node);
    r.no_properties(node);
    let args = arguments(node);
    match node.name().value() {
        "query_set" => match args.as_slice() {
            [name, value] => {
                let name = r.check(value::non_empty_string(name));
                let value = r.check(value::string(value));
                Some(vec![QueryOp::Set(name?, value?)])
            }
            _ => {
                r.push(
                    Problem::error(name_span(node), "`query_set` takes a name and a value")
                        .label(format!("{} argument(s) given", args.len()))
                        .help(QUERY_SET_USAGE),
                );
                None
            }
        },
        _ => {
            if args.is_empty() {
                r.push(
                    Problem::error(name_span(node), "`query_remove` needs a parameter name")
                        .label("missing argument")
                        .help("write query_remove \"token\" (several names may follow)"),
                );
                return None;
            }
            let names: Vec<Option<String>> = args
                .iter()
                .map(|a| r.check(value::non_empty_string(a)))
                .collect();
            names.into_iter().map(|n| n.map(QueryOp::Remove)).collect()
        }
    }
}

fn replace_body(node: &KdlNode, r: &mut Reader) -> Option<BodyReplace> {
    r.no_children(node);
    r.known_properties(node, &["regex", "replace"]);
    let args = arguments(node);
    match (args.as_slice(), node.entry("regex"), node.entry("replace")) {
        ([from, to], None, None) => {
            let from = r.check(value::non_empty_string(from));
            let to = r.check(value::string(to));
            BodyReplace::literal(&from?, to?).ok()
        }
        ([], Some(re), Some(replace)) => {
            let regex = r.check(value::regex(re, Regex::new));
            let replace = r.check(value::string(replace));
            Some(BodyReplace::regex(regex?, replace?))
        }
        _ => {
            let span = properties(node)
                .first()
                .map(|e| e.span())
                .unwrap_or_else(|| name_span(node));
            r.push(
                Problem::error(
                    span,
                    "`replace_body` takes two strings (literal), or regex= and replace=",
                )
                .label("incomplete or mixed")
                .help(REPLACE_BODY_USAGE),
            );
            None
        }
    }
}
