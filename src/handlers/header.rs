//! `header { "Name" "value"; "-Name"; "+Name" "value" }`: edits the
//! response's headers on its way back to the client.
//!
//! Written with a block so that it cannot be mistaken for the `header`
//! request matcher (`header "X-Canary" "1"`).

use std::borrow::Cow;
use std::sync::Arc;

use kdl::KdlNode;

use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Middleware, MiddlewareConfig,
    Next,
};
use crate::config::options::{Spec, Table, Unset, Value};
use crate::config::reader::{arguments, children, name_span, Reader};
use crate::config::Problem;
use crate::message::header_ops::{HeaderOp, HeaderOps};
use crate::message::placeholders::RequestVars;
use crate::message::{Request, Response};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "header",
    decode,
    options: OPTIONS,
};

/// What `header` takes: a block of edits, each named by its header.
pub static OPTIONS: &Table = &[&EDITS];

static EDITS: Spec<Edit> = Spec::children(
    "edits",
    Edit,
    Unset::Required,
    "Edits of the response's headers, applied in file order.",
);

/// One edit in the block: `"Name" "value"`, `"+Name" "value"`, `"-Name"`.
#[derive(Debug)]
struct Edit;

impl Value for Edit {
    type Out = HeaderOp;
    fn describe(&self) -> Cow<'static, str> {
        "\"Name\" \"v\" set, \"+Name\" \"v\" add, \"-Name\" remove".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a header name".into()
    }
    fn node(&self, _: &'static str, child: &KdlNode, r: &mut Reader) -> Option<HeaderOp> {
        r.no_children(child);
        r.no_properties(child);
        r.header_op_from(
            child.name().value(),
            name_span(child),
            &arguments(child),
            USAGE.to_string(),
        )
    }
}

const USAGE: &str = "inside `header`, write \"Name\" \"value\" to set, \"+Name\" \"value\" to add, \"-Name\" to remove";

#[derive(Debug, Clone)]
pub struct Header {
    ops: HeaderOps,
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    r.no_properties(node);
    r.args_only(
        node,
        0,
        "a block of header edits, e.g. header { \"-Server\" }",
    )?;
    let mut ops = Vec::new();
    let mut ok = true;
    for child in children(node) {
        match EDITS.read_node(child, r) {
            Some(op) => ops.push(op),
            None => ok = false,
        }
    }
    if ok && ops.is_empty() {
        r.push(
            Problem::error(name_span(node), "`header` has no edits")
                .label("empty")
                .help("write header { \"X-Frame-Options\" \"DENY\"; \"-Server\" }"),
        );
        return None;
    }
    ok.then(|| {
        Box::new(Header {
            ops: HeaderOps::new(ops),
        }) as Box<dyn MiddlewareConfig>
    })
}

impl HandlerConfig for Header {}

impl MiddlewareConfig for Header {
    fn build(&self, _: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        Ok(Arc::new(self.clone()))
    }
}

impl Middleware for Header {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        let (mut parts, body) = req.into_parts();
        let vars = self
            .ops
            .needs_vars()
            .then(|| RequestVars::of(&mut parts, next.conn()));
        let req = Request::from_parts(parts, body);
        Box::pin(async move {
            let mut response = next.run(req).await;
            self.ops.apply(response.headers_mut(), vars.as_ref());
            response
        })
    }
}
