//! A finished copy of a request, shared by every target of a mirror, and the
//! body that replays it.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body::{Frame, SizeHint};

use super::compare::Comparison;
pub use super::copy_bytes::CopyBytes;
use super::copy_edits::CopyEdits;
use super::grpc::Protocol;
use crate::message::header_ops::HeaderOps;
use crate::message::placeholders::RequestVars;

/// What every target of one mirror is sent for one request, shared by all
/// of them.
#[derive(Debug)]
pub struct CopyRequest {
    extras: CopyExtras,
    rewritten: OnceLock<CopyBytes>,
    pub method: Method,
    /// Path and query (origin form); each target adds its own authority.
    pub uri: Uri,
    /// After hop-by-hop treatment, forwarded headers and the mirror's
    /// `header_up`; `Host` is set per target.
    pub headers: HeaderMap,
    pub body: CopyBytes,
    pub trailers: Option<HeaderMap>,
    /// Whether the client sent a `Content-Length`; if not, the copy is sent
    /// chunked as well, so the target sees the framing the primary saw.
    pub had_length: bool,
}

impl CopyRequest {
    pub fn new(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: CopyBytes,
        trailers: Option<HeaderMap>,
        had_length: bool,
        extras: CopyExtras,
    ) -> Self {
        CopyRequest {
            extras,
            rewritten: OnceLock::new(),
            method,
            uri,
            headers,
            body,
            trailers,
            had_length,
        }
    }

    /// The body the targets get: the client's, or the `replace_body` result.
    pub fn sent_body(&self) -> &CopyBytes {
        match &self.extras.body_rewrite {
            None => &self.body,
            Some(rewrite) => self
                .rewritten
                .get_or_init(|| CopyBytes::One(rewrite.body(&self.body.joined()))),
        }
    }

    /// The headers the targets get: a rewritten body gets its new length.
    fn sent_headers(&self) -> Cow<'_, HeaderMap> {
        if self.extras.body_rewrite.is_none() || !self.had_length {
            return Cow::Borrowed(&self.headers);
        }
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.sent_body().len()));
        Cow::Owned(headers)
    }

    /// The headers one target gets: [`sent_headers`] with the target's own
    /// `header_up` made last. The loop marker is put back afterwards, so no
    /// target's edits can send an unmarked copy. Without edits to make,
    /// the copy's own headers, not a copy of them.
    ///
    /// [`sent_headers`]: CopyRequest::sent_headers
    pub fn headers_for(&self, target_ops: &HeaderOps) -> Cow<'_, HeaderMap> {
        let headers = self.sent_headers();
        if target_ops.is_empty() {
            return headers;
        }
        let mut headers = headers.into_owned();
        target_ops.apply(&mut headers, self.extras.vars.as_ref());
        if let Some(marker) = &self.extras.marker {
            headers.insert(marker.clone(), HeaderValue::from_static("1"));
        }
        Cow::Owned(headers)
    }

    /// With `host_suffix`: the client's host with the suffix, the copies'
    /// Host unless a target says otherwise.
    pub fn suffixed_host(&self) -> Option<&HeaderValue> {
        self.extras.suffixed_host.as_ref()
    }

    /// Where the targets' responses meet the primary's, with `compare`.
    pub fn comparison(&self) -> Option<&Arc<Comparison>> {
        self.extras.comparison.as_ref()
    }

    /// Whether the copy is a gRPC call, which only HTTP/2 can carry.
    pub fn protocol(&self) -> Protocol {
        self.extras.protocol
    }

    /// Whether the copy goes without a body: no data, no trailers.
    pub fn has_no_body(&self) -> bool {
        self.sent_body().is_empty() && self.trailers.is_none()
    }

    pub fn body(&self) -> CopyBody {
        CopyBody {
            data: self.sent_body().clone(),
            next: 0,
            trailers: self.trailers.clone(),
            announce_length: self.had_length,
        }
    }
}

/// What a copy carries besides the request, when the mirror asks for it.
#[derive(Default)]
pub struct CopyExtras {
    /// The mirror's `replace_body` rules, applied once, by the first worker
    /// that sends the copy.
    pub body_rewrite: Option<Arc<CopyEdits>>,
    pub comparison: Option<Arc<Comparison>>,
    pub protocol: Protocol,
    pub suffixed_host: Option<HeaderValue>,
    /// The request's placeholder values, when a target's own `header_up`
    /// needs them (the mirror's was applied when the copy was taken).
    pub vars: Option<RequestVars>,
    /// The loop marker, put back after a target's own `header_up`.
    pub marker: Option<HeaderName>,
    /// Held while the body is a slice of a connection's read buffer.
    pub lent: Option<super::lending::Lent>,
}

impl std::fmt::Debug for CopyExtras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyExtras")
            .field("body_rewrite", &self.body_rewrite.is_some())
            .field("comparison", &self.comparison.is_some())
            .field("protocol", &self.protocol)
            .field("suffixed_host", &self.suffixed_host)
            .field("vars", &self.vars.is_some())
            .field("marker", &self.marker)
            .field("lent", &self.lent.is_some())
            .finish()
    }
}

/// Replays a copy's body and then its trailers, if the client sent any
/// (gRPC clients may; over HTTP/2 they go out as a trailing HEADERS frame).
/// The default is no body at all.
#[derive(Default)]
pub struct CopyBody {
    data: CopyBytes,
    /// The next chunk of `data` to send.
    next: usize,
    trailers: Option<HeaderMap>,
    /// Whether to announce the length, as the original did.
    announce_length: bool,
}

impl CopyBody {
    /// The chunks with bytes in them, in order, as they are kept.
    pub fn data_chunks(&self) -> impl Iterator<Item = &Bytes> {
        (0..)
            .map_while(|index| self.data.chunk(index))
            .filter(|chunk| !chunk.is_empty())
    }

    /// Whether there is no byte to send (trailers aside).
    pub fn has_no_data(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes to send.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Whether the client gave the body's length, which the copy then gives.
    pub fn announces_length(&self) -> bool {
        self.announce_length
    }

    /// The client's trailers, sent only with a chunked body.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// The next chunk with bytes in it, and where it is, if one is left.
    fn next_with_data(&self) -> Option<(usize, &Bytes)> {
        (self.next..)
            .map_while(|index| self.data.chunk(index).map(|chunk| (index, chunk)))
            .find(|(_, chunk)| !chunk.is_empty())
    }
}

impl http_body::Body for CopyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some((index, data)) = self.next_with_data() {
            let data = data.clone();
            self.next = index + 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.next_with_data().is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.announce_length {
            true => SizeHint::with_exact(self.data.len() as u64),
            false => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn replay(data: CopyBytes, announce_length: bool) -> CopyBody {
        CopyBody {
            data,
            next: 0,
            trailers: None,
            announce_length,
        }
    }

    #[tokio::test]
    async fn chunks_are_replayed_in_order_and_as_they_are() {
        let chunks: Arc<[Bytes]> = vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"de"),
        ]
        .into();
        let mut body = replay(CopyBytes::Chunks(chunks.clone()), true);
        assert_eq!(body.size_hint().exact(), Some(5));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.as_ptr(), chunks[0].as_ptr(), "the chunk itself");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"de");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_empty_body_is_over_before_it_starts() {
        let body = replay(CopyBytes::default(), true);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let chunks = replay(CopyBytes::Chunks(vec![Bytes::new()].into()), false);
        assert!(chunks.is_end_stream());
    }
}
