//! `request_body max_size="10MiB"`: caps the request body. A request whose
//! `Content-Length` is over the limit gets 413 at once, before anything is
//! read or sent on; a body without a length is cut off when it passes the
//! limit, and `reverse_proxy` answers that with 413 too.

use std::pin::Pin;
use std::sync::Arc;

use crate::message::body::BodyRefusal;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, StatusCode};
use http_body::{Frame, SizeHint};
use kdl::KdlNode;

use super::{
    BoxFuture, BuildContext, BuildError, FileView, HandlerConfig, HandlerKind, Middleware,
    MiddlewareConfig, Next,
};
use crate::config::options::{self as o, Spec, Table, Unset};
use crate::config::reader::{name_span, Reader};
use crate::config::Problem;
use crate::message::body::BodyTooLarge;
use crate::message::{body, BoxError, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "request_body",
    decode,
    options: OPTIONS,
};

/// What `request_body` takes: its one property.
pub static OPTIONS: &Table = &[&MAX_SIZE];

static MAX_SIZE: Spec<o::Size> = Spec::property(
    "max_size",
    o::Size,
    Unset::Required,
    "The largest request body: over it, 413.",
);

#[derive(Debug, Clone)]
pub struct RequestBody {
    max_size: u64,
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    r.no_children(node);
    o::check_properties(node, OPTIONS, r);
    r.args_only(node, 0, "max_size=, as in request_body max_size=\"10MiB\"")?;
    let Some(max_size) = o::on(node, OPTIONS).maybe(r, &MAX_SIZE)? else {
        r.push(
            Problem::error(name_span(node), "`request_body` needs max_size=")
                .label("no limit given")
                .help("write request_body max_size=\"10MiB\""),
        );
        return None;
    };
    Some(Box::new(RequestBody {
        max_size: max_size.value,
    }))
}

impl HandlerConfig for RequestBody {
    /// A limit after a handler that reads the body ahead (a mirror) still
    /// works, as a refused request is not copied, but the body is read and
    /// buffered before the limit is checked; a second limit is one too many.
    fn check(&self, file: &FileView<'_>, problems: &mut Vec<Problem>) {
        if let Some(first) = file.earlier.iter().find(|h| h.name == KIND.name()) {
            problems.push(
                Problem::warning(file.at, "a second `request_body` in this route")
                    .label("another limit")
                    .also(first.span, "the first")
                    .help("keep one: the smaller max_size is the one that holds"),
            );
            return;
        }
        if let Some(reader) = file.earlier.iter().find(|h| h.config.reads_body_ahead()) {
            let name = reader.name;
            problems.push(
                Problem::warning(file.at, format!("`request_body` comes after `{name}`"))
                    .label(format!("checked after the {name} has started copying the body"))
                    .also(reader.span, format!("the {name}"))
                    .help(format!("move `request_body` before `{name}`: a body over the limit is then refused before any of it is read for a copy")),
            );
        }
    }
}

impl MiddlewareConfig for RequestBody {
    fn build(&self, _: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        Ok(Arc::new(self.clone()))
    }
}

impl Middleware for RequestBody {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let refusal = req.extensions().get::<BodyRefusal>().cloned();
        if declared.is_some_and(|len| len > self.max_size) {
            if let Some(refusal) = refusal {
                refusal.refuse();
            }
            return Box::pin(std::future::ready(too_large()));
        }
        let req = req.map(|inner| {
            body::boxed(Limited {
                inner,
                left: self.max_size,
                refusal,
            })
        });
        next.run(req)
    }
}

pub fn too_large() -> Response {
    let mut response = Response::new(body::full("request body too large\n"));
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The rest of the body is not read: the connection cannot be reused.
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// A body that fails with [`BodyTooLarge`] once it passes the limit.
struct Limited {
    inner: body::Body,
    left: u64,
    refusal: Option<BodyRefusal>,
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                match self.left.checked_sub(data.len() as u64) {
                    Some(left) => self.left = left,
                    None => {
                        // Before the error goes up: a mirror's tee below
                        // saw this frame, and must know before it is dropped.
                        if let Some(refusal) = &self.refusal {
                            refusal.refuse();
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
