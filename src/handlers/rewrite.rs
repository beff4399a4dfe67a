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

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::StatusCode;
use kdl::KdlNode;
use regex::Regex;

use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Middleware, MiddlewareConfig,
    Next,
};
use crate::config::reader::{arguments, name_span, properties, Reader};
use crate::config::value::{self, value_span};
use crate::config::Problem;
use crate::message::path_rewrite::{PathEdit, Rewrite};
use crate::message::{body, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "rewrite",
    decode,
};

const USAGE: &str = "write rewrite \"/new/path\", or rewrite strip_prefix=\"/api\" add_prefix=\"/v2\" regex=#\"^/a/(\\d+)\"# replace=\"/b/$1\"";

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    decode_rewrite(node, r).map(|rewrite| Box::new(rewrite) as Box<dyn MiddlewareConfig>)
}

/// A `rewrite` node, as a handler or inside a `mirror` (where it edits
/// copies only).
pub fn decode_rewrite(node: &KdlNode, r: &mut Reader) -> Option<Rewrite> {
    r.no_children(node);
    r.known_properties(node, &["strip_prefix", "add_prefix", "regex", "replace"]);
    let args = arguments(node);
    let props = properties(node);
    match (args.as_slice(), props.is_empty()) {
        ([target], true) => {
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
                    Problem::error(value_span(target), "not a valid URI path")
                        .label("invalid path"),
                );
                return None;
            }
            Some(Rewrite::Replace { path, query })
        }
        ([], false) => {
            let prefix = |r: &mut Reader, key: &str| -> Option<Option<String>> {
                match node.entry(key) {
                    None => Some(None),
                    Some(entry) => {
                        let s = r.check(value::non_empty_string(entry))?;
                        if !s.starts_with('/') {
                            r.push(
                                Problem::error(
                                    value_span(entry),
                                    format!("`{key}` must start with /"),
                                )
                                .label("no leading /"),
                            );
                            return None;
                        }
                        Some(Some(s))
                    }
                }
            };
            let strip_prefix = prefix(r, "strip_prefix");
            let add_prefix = prefix(r, "add_prefix");
            let regex = match (node.entry("regex"), node.entry("replace")) {
                (None, None) => Some(None),
                (Some(re), Some(replace)) => {
                    let compiled = r.check(value::regex(re, Regex::new));
                    let replace = r.check(value::string(replace));
                    Some(Some((compiled?, replace?)))
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
                strip_prefix?,
                regex?,
                add_prefix?,
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
