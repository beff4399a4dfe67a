//! `rewrite`: changes the request path before the rest of the chain sees it.
//!
//! - `rewrite "/new/path"` replaces the path (and the query, if the new
//!   value has one);
//! - `rewrite strip_prefix="/api" add_prefix="/v2" regex=#"..."# replace="..."`
//!   edits it: the prefix is stripped, then the regex applied, then the new
//!   prefix added. Any subset of these may be given. `strip_prefix` strips
//!   whole segments only: `/api` comes off `/api` and `/api/x`, but not off
//!   `/apiary`.
//!
//! The edit itself is [`crate::message::path_rewrite`]; here it is decoded
//! (for a `mirror`'s copy edits too) and run as a step of the chain.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::StatusCode;
use kdl::{KdlEntry, KdlNode};

use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Middleware, MiddlewareConfig,
    Next,
};
use crate::config::options::{self as o, Spec, Table, Unset, Value};
use crate::config::reader::{arguments, name_span, properties, Reader};
use crate::config::value::{self, value_span};
use crate::config::Problem;
use crate::message::path_rewrite::{PathEdit, Rewrite};
use crate::message::{body, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "rewrite",
    decode,
    options: OPTIONS,
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
            Some(Rewrite::Edit(PathEdit::new(
                strip_prefix?.map(|s| s.value),
                regex?,
                add_prefix?.map(|s| s.value),
            )))
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

impl HandlerConfig for Rewrite {}

impl MiddlewareConfig for Rewrite {
    fn build(&self, _: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        Ok(Arc::new(self.clone()))
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
