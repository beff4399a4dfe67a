//! A finished copy of a request, shared by every target of a mirror, and the
//! body that replays it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body::{Frame, SizeHint};

/// What every target of one mirror is sent for one request. The body is the
/// client's own chunks (reference-counted, not copied).
#[derive(Debug)]
pub struct CopyRequest {
    pub method: Method,
    /// Path and query (origin form); each target adds its own authority.
    pub uri: Uri,
    /// After hop-by-hop treatment, forwarded headers and the mirror's
    /// `header_up`; `Host` is set per target.
    pub headers: HeaderMap,
    pub chunks: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// Whether the client sent a `Content-Length`; if not, the copy is sent
    /// chunked as well, so the target sees the framing the primary saw.
    pub had_length: bool,
}

impl CopyRequest {
    pub fn body_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    pub fn body(&self) -> CopyBody {
        CopyBody {
            chunks: self.chunks.iter().cloned().collect(),
            trailers: self.trailers.clone(),
            remaining: self.had_length.then(|| self.body_len()),
        }
    }
}

/// Replays a copy's chunks and trailers.
pub struct CopyBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// Bytes still to send, announced when the original announced a length.
    remaining: Option<u64>,
}

impl http_body::Body for CopyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            if let Some(n) = &mut self.remaining {
                *n -= chunk.len() as u64;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
