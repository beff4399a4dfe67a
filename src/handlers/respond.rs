//! `respond STATUS ["body"]`: answers at once, without an upstream.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use kdl::KdlNode;

use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Terminal, TerminalConfig,
};
use crate::config::reader::{arguments, Reader};
use crate::config::value;
use crate::message::{body, ConnInfo, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Terminal {
    name: "respond",
    decode,
};

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
    let status = r.check(value::final_status(status));
    let body = match body {
        Some(b) => r.check(value::string(b)).map(Bytes::from),
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
