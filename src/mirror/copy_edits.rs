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
use regex::bytes::{NoExpand, Regex};

use crate::message::path_rewrite::Rewrite;

#[derive(Debug, Clone)]
pub enum QueryOp {
    /// Replace the parameter's value (every occurrence), or add it.
    Set(String, String),
    Remove(String),
}

/// `replace_body "from" "to"` (literal) or
/// `replace_body regex=#"..."# replace="..."` (`$1` for captures).
#[derive(Debug, Clone)]
pub struct BodyReplace {
    regex: Regex,
    replace: Vec<u8>,
    literal: bool,
}

impl BodyReplace {
    /// Every `from`, as written, becomes `to`, as written.
    pub fn literal(from: &str, to: String) -> Result<BodyReplace, regex::Error> {
        Ok(BodyReplace {
            regex: Regex::new(&regex::escape(from))?,
            replace: to.into_bytes(),
            literal: true,
        })
    }

    /// Every match of `regex` becomes `replace`, where `$1` stands for the
    /// first capture.
    pub fn regex(regex: Regex, replace: String) -> BodyReplace {
        BodyReplace {
            regex,
            replace: replace.into_bytes(),
            literal: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CopyEdits {
    paths: Vec<Rewrite>,
    query: Vec<QueryOp>,
    body: Vec<BodyReplace>,
}

impl CopyEdits {
    /// Applied a kind at a time: the paths, then the query, then the
    /// body; within a kind, in the order given.
    pub fn new(paths: Vec<Rewrite>, query: Vec<QueryOp>, body: Vec<BodyReplace>) -> CopyEdits {
        CopyEdits { paths, query, body }
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

    /// The copy's body after every `replace_body`, in order.
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
        let edits = CopyEdits {
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
            edits.body(&body),
            Bytes::from_static(br#"{"id":"s-7","price":"$2","ids":[{"id":"s-8"}]}"#)
        );
        let untouched = Bytes::from_static(b"no ids here");
        assert_eq!(edits.body(&untouched), untouched);
    }
}
