//! `respond STATUS ["body"]`: answers at once, without an upstream.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use kdl::KdlNode;

use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Terminal, TerminalConfig,
};
use crate::config::options::{self as o, Spec, Table, Unset};
use crate::config::reader::{arguments, Reader};
use crate::message::{body, ConnInfo, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Terminal {
    name: "respond",
    decode,
    options: OPTIONS,
};

/// What `respond` takes: its two arguments.
pub static OPTIONS: &Table = &[&STATUS, &BODY];

static STATUS: Spec<o::Status> = Spec::argument(
    "status",
    o::Status,
    Unset::Required,
    "The final status answered (a 1xx is not an answer).",
);

static BODY: Spec<o::Text> = Spec::argument(
    "body",
    o::Text::ANY,
    Unset::Means("empty"),
    "The body; a non-empty one goes as text/plain; charset=utf-8.",
);

#[derive(Debug, Clone)]
pub struct Respond {
    status: StatusCode,
    body: Bytes,
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn TerminalConfig>> {
    r.no_children(node);
    r.no_properties(node);
    let args = arguments(node);
    let usage = "write respond 200 \"body\" (the body is optional)";
    let (status, body) = match args.as_slice() {
        [status] => (status, None),
        [status, body] => (status, Some(body)),
        [] => {
            r.push(
                crate::config::Problem::error(node.name().span(), "`respond` needs a status code")
                    .label("missing status")
                    .help(usage),
            );
            return None;
        }
        [_, _, extra, ..] => {
            r.push(
                crate::config::Problem::error(extra.span(), "`respond` takes a status and a body")
                    .label("unexpected argument")
                    .help(usage),
            );
            return None;
        }
    };
    let status = STATUS.read_entry(status, r);
    let body = match body {
        Some(b) => BODY.read_entry(b, r).map(Bytes::from),
        None => Some(Bytes::new()),
    };
    Some(Box::new(Respond {
        status: status?,
        body: body?,
    }))
}

impl HandlerConfig for Respond {}

impl TerminalConfig for Respond {
    fn build(&self, _: &BuildContext) -> Result<Arc<dyn Terminal>, BuildError> {
        Ok(Arc::new(self.clone()))
    }
}

impl Terminal for Respond {
    fn serve<'a>(&'a self, _req: Request, _: &'a ConnInfo) -> BoxFuture<'a, Response> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        if !self.body.is_empty() {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        Box::pin(std::future::ready(response))
    }
}
