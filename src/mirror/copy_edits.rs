//! Edits a `mirror` makes to its copies only: `rewrite` of the path,
//! `query_set` / `query_remove`, and `replace_body`. (`header_up` and
//! `host` are the mirror's other copy-only edits.) The primary always gets
//! the request as the client sent it.
//!
//! Path and query edits are made on the request path when the copy is
//! taken (they are cheap); body replacements are made once per copy by the
//! first worker that sends it, so a regex over a large body never runs on a
//! serving thread.

use std::borrow::Cow;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::Uri;
use kdl::KdlNode;
use regex::bytes::{NoExpand, Regex};

use crate::config::reader::{arguments, name_span, properties, Reader};
use crate::config::value;
use crate::config::Problem;
use crate::handlers::rewrite::decode_rewrite;
use crate::message::path_rewrite::Rewrite;

#[derive(Debug, Clone)]
enum QueryOp {
    /// Replace the parameter's value (every occurrence), or add it.
    Set(String, String),
    Remove(String),
}

/// `replace_body "from" "to"` (literal) or
/// `replace_body regex=#"..."# replace="..."` (`$1` for captures).
#[derive(Debug, Clone)]
struct BodyReplace {
    regex: Regex,
    replace: Vec<u8>,
    literal: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CopyRewrite {
    paths: Vec<Rewrite>,
    query: Vec<QueryOp>,
    body: Vec<BodyReplace>,
}

const QUERY_SET_USAGE: &str = "write query_set \"name\" \"value\"";
const REPLACE_BODY_USAGE: &str =
    "write replace_body \"old\" \"new\", or replace_body regex=#\"\"id\":(\\d+)\"# replace=#\"\"id\":\"s-$1\"\"#";

impl CopyRewrite {
    /// Reads the mirror's `rewrite`, `query_set`, `query_remove` and
    /// `replace_body` lines, in file order within each kind.
    pub fn decode(
        r: &mut Reader,
        rewrites: &[&KdlNode],
        query_sets: &[&KdlNode],
        query_removes: &[&KdlNode],
        replace_bodies: &[&KdlNode],
    ) -> Option<CopyRewrite> {
        let paths: Vec<Option<Rewrite>> = rewrites.iter().map(|n| decode_rewrite(n, r)).collect();
        let mut query = Vec::new();
        let mut ok = true;
        // Kinds apply in a fixed order (path, query, body), so within the
        // query edits only file order matters: sets and removes are merged
        // back by their place in the file.
        let mut query_nodes: Vec<&KdlNode> =
            query_sets.iter().chain(query_removes).copied().collect();
        query_nodes.sort_by_key(|n| n.span().offset());
        for node in query_nodes {
            match decode_query_op(node, r) {
                Some(mut ops) => query.append(&mut ops),
                None => ok = false,
            }
        }
        let body: Vec<Option<BodyReplace>> = replace_bodies
            .iter()
            .map(|n| decode_replace_body(n, r))
            .collect();
        let paths: Option<Vec<Rewrite>> = paths.into_iter().collect();
        let body: Option<Vec<BodyReplace>> = body.into_iter().collect();
        ok.then_some(CopyRewrite {
            paths: paths?,
            query,
            body: body?,
        })
    }

    /// Whether copies need their body rewritten.
    pub fn rewrites_body(&self) -> bool {
        !self.body.is_empty()
    }

    /// The copy's path and query (origin form) after the path and query
    /// edits; `None` if a regex made something that is no URI.
    pub fn uri(&self, uri: &Uri) -> Option<Uri> {
        let mut uri = Cow::Borrowed(uri);
        for path in &self.paths {
            uri = Cow::Owned(path.rewrite(&uri)?);
        }
        if self.query.is_empty() {
            return Some(uri.into_owned());
        }
        let query = edit_query(uri.query(), &self.query);
        let path_and_query = match query {
            Some(q) => format!("{}?{q}", uri.path()),
            None => uri.path().to_string(),
        };
        let mut parts = uri.into_owned().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
        Uri::from_parts(parts).ok()
    }

    /// The copy's body after every `replace_body`, in file order.
    pub fn body(&self, body: &Bytes) -> Bytes {
        let mut out = Cow::Borrowed(body.as_ref());
        for rule in &self.body {
            let replaced = match rule.literal {
                true => rule.regex.replace_all(&out, NoExpand(&rule.replace)),
                false => rule.regex.replace_all(&out, rule.replace.as_slice()),
            };
            if let Cow::Owned(new) = replaced {
                out = Cow::Owned(new);
            }
        }
        match out {
            Cow::Borrowed(_) => body.clone(),
            Cow::Owned(new) => Bytes::from(new),
        }
    }
}

fn decode_query_op(node: &KdlNode, r: &mut Reader) -> Option<Vec<QueryOp>> {
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

fn decode_replace_body(node: &KdlNode, r: &mut Reader) -> Option<BodyReplace> {
    r.no_children(node);
    r.known_properties(node, &["regex", "replace"]);
    let args = arguments(node);
    match (args.as_slice(), node.entry("regex"), node.entry("replace")) {
        ([from, to], None, None) => {
            let from = r.check(value::non_empty_string(from));
            let to = r.check(value::string(to));
            Some(BodyReplace {
                regex: Regex::new(&regex::escape(&from?)).ok()?,
                replace: to?.into_bytes(),
                literal: true,
            })
        }
        ([], Some(re), Some(replace)) => {
            let regex = r.check(value::regex(re, Regex::new));
            let replace = r.check(value::string(replace));
            Some(BodyReplace {
                regex: regex?,
                replace: replace?.into_bytes(),
                literal: false,
            })
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

/// The query after the edits, keeping untouched parameters byte for byte
/// (a decode and re-encode would change how the client spelled them).
fn edit_query(query: Option<&str>, ops: &[QueryOp]) -> Option<String> {
    let mut pairs: Vec<Cow<str>> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(Cow::Borrowed)
        .collect();
    for op in ops {
        match op {
            QueryOp::Remove(name) => pairs.retain(|p| key_of(p) != *name),
            QueryOp::Set(name, value) => {
                let pair: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair(name, value)
                    .finish();
                match pairs.iter().position(|p| key_of(p) == *name) {
                    Some(first) => {
                        pairs[first] = Cow::Owned(pair);
                        let mut i = 0;
                        pairs.retain(|p| {
                            i += 1;
                            i - 1 == first || key_of(p) != *name
                        });
                    }
                    None => pairs.push(Cow::Owned(pair)),
                }
            }
        }
    }
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

/// A `name=value` pair's name, decoded as a form would decode it.
fn key_of(pair: &str) -> Cow<'_, str> {
    let raw = pair.split('=').next().unwrap_or_default();
    match form_urlencoded::parse(raw.as_bytes()).next() {
        Some((key, _)) => Cow::Owned(key.into_owned()),
        None => Cow::Borrowed(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str, v: &str) -> QueryOp {
        QueryOp::Set(n.into(), v.into())
    }

    #[test]
    fn query_edits_keep_other_parameters_as_spelled() {
        let ops = [set("debug", "1"), QueryOp::Remove("token".into())];
        assert_eq!(
            edit_query(Some("a=b%20c&token=x&debug=0&debug=2&z"), &ops).as_deref(),
            Some("a=b%20c&debug=1&z")
        );
        assert_eq!(edit_query(None, &ops).as_deref(), Some("debug=1"));
        assert_eq!(edit_query(Some("token=1"), &ops[1..]), None);
        assert_eq!(
            edit_query(Some("q=1"), &[set("name", "a b&c")]).as_deref(),
            Some("q=1&name=a+b%26c")
        );
        // A parameter named with an escape is still the same parameter.
        assert_eq!(
            edit_query(Some("to%6Ben=1&x=2"), &[QueryOp::Remove("token".into())]).as_deref(),
            Some("x=2")
        );
    }

    #[test]
    fn body_rules_apply_in_order() {
        let rewrite = CopyRewrite {
            body: vec![
                BodyReplace {
                    regex: Regex::new(r#""id":(\d+)"#).unwrap(),
                    replace: br#""id":"s-$1""#.to_vec(),
                    literal: false,
                },
                BodyReplace {
                    regex: Regex::new(&regex::escape("$1")).unwrap(),
                    replace: b"$2".to_vec(),
                    literal: true,
                },
            ],
            ..Default::default()
        };
        let body = Bytes::from_static(br#"{"id":7,"price":"$1","ids":[{"id":8}]}"#);
        assert_eq!(
            rewrite.body(&body),
            Bytes::from_static(br#"{"id":"s-7","price":"$2","ids":[{"id":"s-8"}]}"#)
        );
        let untouched = Bytes::from_static(b"no ids here");
        assert_eq!(rewrite.body(&untouched), untouched);
    }
}
