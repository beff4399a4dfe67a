//! The mirror's `rewrite`, `query_set`, `query_remove` and `replace_body`
//! lines, read into the engine's [`CopyEdits`].

use kdl::KdlNode;
use regex::bytes::Regex;

use crate::config::reader::{arguments, name_span, properties, Reader};
use crate::config::value;
use crate::config::Problem;
use crate::handlers::rewrite::decode_rewrite;
use crate::message::path_rewrite::Rewrite;
use crate::mirror::copy_edits::{BodyReplace, CopyEdits, QueryOp};

const QUERY_SET_USAGE: &str = "write query_set \"name\" \"value\"";
const REPLACE_BODY_USAGE: &str =
    "write replace_body \"old\" \"new\", or replace_body regex=#\"\"id\":(\\d+)\"# replace=#\"\"id\":\"s-$1\"\"#";

/// Each kind's lines in file order.
pub fn decode(
    r: &mut Reader,
    rewrites: &[&KdlNode],
    query_sets: &[&KdlNode],
    query_removes: &[&KdlNode],
    replace_bodies: &[&KdlNode],
) -> Option<CopyEdits> {
    let paths: Vec<Option<Rewrite>> = rewrites.iter().map(|n| decode_rewrite(n, r)).collect();
    let mut query = Vec::new();
    let mut ok = true;
    // Kinds apply in a fixed order (path, query, body), so within the
    // query edits only file order matters: sets and removes are merged
    // back by their place in the file.
    let mut query_nodes: Vec<&KdlNode> = query_sets.iter().chain(query_removes).copied().collect();
    query_nodes.sort_by_key(|n| n.span().offset());
    for node in query_nodes {
        match query_op(node, r) {
            Some(mut ops) => query.append(&mut ops),
            None => ok = false,
        }
    }
    let body: Vec<Option<BodyReplace>> =
        replace_bodies.iter().map(|n| replace_body(n, r)).collect();
    let paths: Option<Vec<Rewrite>> = paths.into_iter().collect();
    let body: Option<Vec<BodyReplace>> = body.into_iter().collect();
    ok.then_some(CopyEdits::new(paths?, query, body?))
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
