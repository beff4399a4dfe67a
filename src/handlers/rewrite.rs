//! `rewrite`: changes the request path before the rest of the chain sees it.
//!
//! - `rewrite "/new/path"` replaces the path (and the query, if the new
//!   value has one);
//! - `rewrite strip_prefix="/api" add_prefix="/v2" regex=#"..."# replace="..."`
//!   edits it: the prefix is stripped, then the regex applied, then the new
//!   prefix added. Any subset of these may be given. `strip_prefix` strips
//!   whole segments only: `/api` comes off `/api` and `/api/x`, but not off
//!   `/apiary`.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{StatusCode, Uri};
use kdl::{KdlEntry, KdlNode};
use regex::Regex;

use super::{BoxFuture, BuildContext, BuildError, HandlerKind, Middleware, MiddlewareConfig, Next};
use crate::config::options::{self as o, Spec, Table, Unset, Value};
use crate::config::reader::{arguments, name_span, properties, Reader};
use crate::config::value::{self, value_span};
use crate::config::Problem;
use crate::message::{body, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "rewrite",
    decode,
    options: Some(OPTIONS),
};

/// What `rewrite` takes: one new path, or edit properties.
pub static OPTIONS: &Table = &[&PATH, &STRIP_PREFIX, &ADD_PREFIX, &REGEX, &REPLACE];

static PATH: Spec<NewPath> = Spec::argument(
    "path",
    NewPath,
    Unset::Means("none"),
    "Replaces the path, and the query when it has one; not with the properties.",
);

static STRIP_PREFIX: Spec<Prefix> = Spec::property(
    "strip_prefix",
    Prefix,
    Unset::Means("none"),
    "Removes this leading path, whole segments only.",
);

static ADD_PREFIX: Spec<Prefix> = Spec::property(
    "add_prefix",
    Prefix,
    Unset::Means("none"),
    "Prepends this path, after the other edits.",
);

static REGEX: Spec<o::Regex> = Spec::property(
    "regex",
    o::Regex,
    Unset::Means("none"),
    "Its first match in the path is replaced by `replace` (the two go together).",
);

static REPLACE: Spec<o::Text> = Spec::property(
    "replace",
    o::Text::ANY,
    Unset::Means("none"),
    "What replaces `regex`'s match; $1… are its capture groups.",
);

/// A new path: it starts with `/`, and may carry a query.
#[derive(Debug)]
struct NewPath;

impl Value for NewPath {
    type Out = (String, Option<String>);
    fn describe(&self) -> Cow<'static, str> {
        "path starting with /, with an optional ?query".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a path".into()
    }
    fn entry(&self, _: &'static str, target: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        let text = r.check(value::string(target))?;
        if !text.starts_with('/') {
            r.push(
                Problem::error(value_span(target), "a rewritten path must start with /")
                    .label("no leading /")
                    .help(USAGE),
            );
            return None;
        }
        let (path, query) = match text.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (text, None),
        };
        if PathAndQuery::try_from(path.as_str()).is_err() {
            r.push(
                Problem::error(value_span(target), "not a valid URI path").label("invalid path"),
            );
            return None;
        }
        Some((path, query))
    }
}

/// A path prefix: it starts with `/`.
#[derive(Debug)]
struct Prefix;

impl Value for Prefix {
    type Out = String;
    fn describe(&self) -> Cow<'static, str> {
        "path starting with /".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a path".into()
    }
    fn entry(&self, key: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<String> {
        let s = r.check(value::non_empty_string(entry))?;
        if !s.starts_with('/') {
            r.push(
                Problem::error(value_span(entry), format!("`{key}` must start with /"))
                    .label("no leading /"),
            );
            return None;
        }
        Some(s)
    }
}

#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Replace the path, and the query when `Some`.
    Replace {
        path: String,
        query: Option<String>,
    },
    Edit(PathEdit),
}

#[derive(Debug, Clone, Default)]
pub struct PathEdit {
    strip_prefix: Option<String>,
    regex: Option<(Regex, String)>,
    add_prefix: Option<String>,
}

impl PathEdit {
    pub fn apply(&self, path: &str) -> String {
        let mut out = path;
        if let Some(prefix) = &self.strip_prefix {
            out = strip_path_prefix(out, prefix).unwrap_or(out);
        }
        let mut out = match &self.regex {
            Some((re, replace)) => re.replace(out, replace.as_str()).into_owned(),
            None => out.to_string(),
        };
        if let Some(prefix) = &self.add_prefix {
            out.insert_str(0, prefix);
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        out
    }
}

/// `path` without `prefix`, when `prefix` covers whole segments of it: the
/// path is the prefix, or goes on with `/` right after it (`/api` strips
/// from `/api` and `/api/x`, not from `/apiary`). A prefix that ends with
/// `/` ends on a segment boundary by itself and strips as written.
fn strip_path_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

const USAGE: &str = "write rewrite \"/new/path\", or rewrite strip_prefix=\"/api\" add_prefix=\"/v2\" regex=#\"^/a/(\\d+)\"# replace=\"/b/$1\"";

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    decode_rewrite(node, r).map(|rewrite| Box::new(rewrite) as Box<dyn MiddlewareConfig>)
}

/// A `rewrite` node, as a handler or inside a `mirror` (where it edits
/// copies only).
pub fn decode_rewrite(node: &KdlNode, r: &mut Reader) -> Option<Rewrite> {
    r.no_children(node);
    o::check_properties(node, OPTIONS, r);
    let args = arguments(node);
    let props = properties(node);
    match (args.as_slice(), props.is_empty()) {
        ([target], true) => {
            let (path, query) = PATH.read_entry(target, r)?;
            Some(Rewrite::Replace { path, query })
        }
        ([], false) => {
            let opts = o::on(node, OPTIONS);
            let strip_prefix = opts.maybe(r, &STRIP_PREFIX);
            let add_prefix = opts.maybe(r, &ADD_PREFIX);
            let regex = match (node.entry(REGEX.name), node.entry(REPLACE.name)) {
                (None, None) => Some(None),
                (Some(_), Some(_)) => {
                    let compiled = opts.maybe(r, &REGEX);
                    let replace = opts.maybe(r, &REPLACE);
                    match (compiled.flatten(), replace.flatten()) {
                        (Some(re), Some(replace)) => Some(Some((re.value, replace.value))),
                        _ => None,
                    }
                }
                (Some(entry), None) | (None, Some(entry)) => {
                    r.push(
                        Problem::error(entry.span(), "`regex` and `replace` go together")
                            .label("needs its partner")
                            .help(USAGE),
                    );
                    None
                }
            };
            Some(Rewrite::Edit(PathEdit {
                strip_prefix: strip_prefix?.map(|s| s.value),
                regex: regex?,
                add_prefix: add_prefix?.map(|s| s.value),
            }))
        }
        _ => {
            r.push(
                Problem::error(
                    name_span(node),
                    "`rewrite` takes either one new path or edit properties",
                )
                .label("ambiguous rewrite")
                .help(USAGE),
            );
            None
        }
    }
}

impl MiddlewareConfig for Rewrite {
    fn build(&self, _: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        Ok(Arc::new(self.clone()))
    }
}

impl Rewrite {
    /// The URI with its path rewritten; `None` if a regex replacement made
    /// something that is not a path.
    pub fn rewrite(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = match self {
            Rewrite::Replace { path, query } => match query.as_deref().or(uri.query()) {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            },
            Rewrite::Edit(edit) => {
                let path = edit.apply(uri.path());
                match uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                }
            }
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
        Uri::from_parts(parts).ok()
    }
}

impl Middleware for Rewrite {
    fn handle<'a>(&'a self, mut req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        match self.rewrite(req.uri()) {
            Some(uri) => {
                *req.uri_mut() = uri;
                next.run(req)
            }
            None => {
                // Only a regex replacement can produce this; the client's
                // request was fine, so it is our error.
                tracing::error!(uri = %req.uri(), "rewrite produced an invalid URI");
                let mut response = Response::new(body::full("rewrite produced an invalid URI\n"));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                Box::pin(std::future::ready(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_in_order() {
        let edit = PathEdit {
            strip_prefix: Some("/api".into()),
            regex: Some((Regex::new(r"^/users/(\d+)").unwrap(), "/people/$1".into())),
            add_prefix: Some("/v2".into()),
        };
        assert_eq!(edit.apply("/api/users/7/x"), "/v2/people/7/x");
        assert_eq!(edit.apply("/other"), "/v2/other");
        let strip = PathEdit {
            strip_prefix: Some("/api".into()),
            ..Default::default()
        };
        assert_eq!(strip.apply("/api"), "/");
        assert_eq!(strip.apply("/api/"), "/");
        assert_eq!(strip.apply("/api/x/y"), "/x/y");
    }

    #[test]
    fn strip_prefix_strips_whole_segments_only() {
        let strip = |prefix: &str, path: &str| {
            PathEdit {
                strip_prefix: Some(prefix.into()),
                ..Default::default()
            }
            .apply(path)
        };
        assert_eq!(strip("/api", "/apiary"), "/apiary");
        assert_eq!(strip("/api", "/api-v2/x"), "/api-v2/x");
        assert_eq!(strip("/api", "/ap"), "/ap");
        assert_eq!(strip("/api", "/api/x"), "/x");
        assert_eq!(strip("/a/b", "/a/bc"), "/a/bc");
        assert_eq!(strip("/a/b", "/a/b/c"), "/c");
        // A prefix ending with `/` strips as written.
        assert_eq!(strip("/api/", "/api/x"), "/x");
        assert_eq!(strip("/api/", "/api"), "/api");
        assert_eq!(strip("/", "/x"), "/x");
    }
}
