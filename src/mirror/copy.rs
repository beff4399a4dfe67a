//! A finished copy of a request, shared by every target of a mirror, and the
//! body that replays it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body::{Frame, SizeHint};

/// What every target of one mirror is sent for one request, shared by all
/// of them.
#[derive(Debug)]
pub struct CopyRequest {
    pub method: Method,
    /// Path and query (origin form); each target adds its own authority.
    pub uri: Uri,
    /// After hop-by-hop treatment, forwarded headers and the mirror's
    /// `header_up`; `Host` is set per target.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// Whether the client sent a `Content-Length`; if not, the copy is sent
    /// chunked as well, so the target sees the framing the primary saw.
    pub had_length: bool,
}

impl CopyRequest {
    pub fn body(&self) -> CopyBody {
        CopyBody {
            data: (!self.body.is_empty()).then(|| self.body.clone()),
            trailers: self.trailers.clone(),
            announce_length: self.had_length,
        }
    }
}

/// Replays a copy's body and trailers.
pub struct CopyBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    /// Whether to announce the length, as the original did.
    announce_length: bool,
}

impl http_body::Body for CopyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.announce_length {
            true => SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64)),
            false => SizeHint::default(),
        }
    }
}
