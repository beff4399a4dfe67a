//! The request body as the primary reads it, with a copy kept on the side.
//!
//! Frames pass through untouched and in step with the primary: the tee
//! never waits for the whole body. A body that comes whole in one chunk is
//! kept as that chunk (see [`super::lending`] for when it is copied after
//! all). Otherwise data is copied as it passes into the copy's own buffer
//! (sized from `Content-Length` when there is one), up to `max_body`; past
//! that the copy is abandoned and the primary goes on unaffected. Keeping
//! many chunks would pin as many of hyper's read buffers until the body
//! ends, so that every read needs a fresh one. This is the one copy such a
//! body needs, made as the chunks pass instead of all at once at the end.
//! If the primary stops reading early (a `respond` that never
//! looks at the body, an upstream that answers before the upload ends), the
//! tee finishes reading in a task of its own so the copy is still whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Notify;

use super::grpc::{Framing, NotUnary, Protocol};
use super::lending::CollectedBody;
use super::PendingCopy;
use crate::message::body::BodyRefusal;
use crate::message::{Body, BoxError};

/// Why a copy was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// The body grew past `max_body`.
    TooLarge,
    /// The client's body ended in an error (an abort): a truncated copy
    /// would lie about what the client sent.
    Incomplete,
    /// A gRPC call whose body is not exactly one message: a streaming call
    /// cannot be replayed as one request.
    Streaming(NotUnary),
    /// A later `request_body` refused the request for its size: what
    /// production turned away is not sent to a shadow.
    Refused,
}

/// The most a copy's buffer is given before its body has come.
const PREALLOCATE_AT_MOST: u64 = 8 << 20;

/// What a copy holds of the body so far.
enum Collected {
    Nothing,
    /// The whole body, which came in one chunk.
    Whole(Bytes),
    /// Copied chunk by chunk.
    Copied(BytesMut),
}

/// The copy being collected.
pub struct Capture {
    pending: PendingCopy,
    body: Collected,
    /// What the body says of its length, to keep a whole one as it is or to
    /// size the copy's buffer.
    expected: Option<u64>,
    len: u64,
    trailers: Option<HeaderMap>,
    /// For a gRPC call: its message framing, checked as the body goes past.
    framing: Option<Framing>,
    refusal: BodyRefusal,
}

impl Capture {
    /// `size`: what the body says of its length, to size the buffer;
    /// `refusal`: what a later `request_body` sets when it refuses it.
    pub fn new(pending: PendingCopy, size: &SizeHint, refusal: BodyRefusal) -> Self {
        let framing = (pending.protocol() == Protocol::Grpc).then(Framing::default);
        Capture {
            pending,
            body: Collected::Nothing,
            expected: size.exact(),
            len: 0,
            trailers: None,
            framing,
            refusal,
        }
    }

    /// Keeps what a frame holds, or says why the copy must be given up.
    fn observe(&mut self, frame: &Frame<Bytes>) -> Result<(), Abandon> {
        if let Some(data) = frame.data_ref() {
            self.len += data.len() as u64;
            if let Some(framing) = self.framing.as_mut() {
                framing.push(data).map_err(Abandon::Streaming)?;
            }
            if self.len > self.pending.max_body() {
                return Err(Abandon::TooLarge);
            }
            self.keep(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            // Like the headers, not slices of the connection's buffers.
            self.trailers = Some(crate::message::detached(trailers, 0));
        }
        Ok(())
    }

    /// Adds `data` (already counted in `len`) to the copy.
    fn keep(&mut self, data: &Bytes) {
        match &mut self.body {
            Collected::Nothing if self.expected == Some(data.len() as u64) => {
                self.body = Collected::Whole(data.clone());
            }
            Collected::Nothing => {
                // A body that says it is over `max_body` never gets here
                // (the mirror handler gives it up first). A large body's
                // room is made as it comes, not on the client's word.
                let room = self.expected.unwrap_or(0).min(PREALLOCATE_AT_MOST) as usize;
                let mut copied = BytesMut::with_capacity(room.max(data.len()));
                copied.extend_from_slice(data);
                self.body = Collected::Copied(copied);
            }
            // More than the length said: hyper and h2 refuse such a body,
            // but the copy stays whole if some reader does not.
            Collected::Whole(whole) => {
                let mut copied = BytesMut::with_capacity(whole.len() + data.len());
                copied.extend_from_slice(whole);
                copied.extend_from_slice(data);
                self.body = Collected::Copied(copied);
            }
            Collected::Copied(copied) => copied.extend_from_slice(data),
        }
    }

    /// The body has ended: the copy is sent, unless it is a gRPC call that
    /// turned out not to be unary, or a request refused for its body.
    pub fn finish(self) {
        if self.refusal.is_refused() {
            return self.abandon(Abandon::Refused);
        }
        if let Some(Err(why)) = self.framing.as_ref().map(Framing::finish) {
            return self.pending.abandon(Abandon::Streaming(why));
        }
        let body = match self.body {
            Collected::Nothing => CollectedBody::Own(Bytes::new()),
            Collected::Whole(whole) => CollectedBody::Read(whole),
            Collected::Copied(copied) => CollectedBody::Own(exact(copied)),
        };
        self.pending.dispatch(body, self.trailers)
    }

    fn abandon(self, why: Abandon) {
        self.pending.abandon(why);
    }
}

/// The body in an allocation of its size: one grown chunk by chunk (no
/// `Content-Length`) may have up to twice the room it needs, kept for as
/// long as the copy is queued.
fn exact(body: BytesMut) -> Bytes {
    if body.capacity() - body.len() <= body.len() / 16 {
        return body.freeze();
    }
    Bytes::copy_from_slice(&body)
}

pub struct Tee {
    inner: Option<Body>,
    capture: Option<Capture>,
    rest: Arc<RestOfBody>,
}

/// Whether the tee had to read the rest of the body for the copy alone,
/// and when it has.
#[derive(Default)]
pub struct RestOfBody {
    reading: AtomicBool,
    done: Notify,
}

impl RestOfBody {
    /// Waits (up to `limit`) for the rest of the body if the primary
    /// dropped it unread.
    ///
    /// A client that gets a complete response stops uploading (hyper's
    /// client does), so a handler that answers without reading the body,
    /// as `respond` does in the respond-and-relay pattern, would lose the
    /// copy. Holding that response until the client's own upload is in
    /// waits for the client only, never for a shadow.
    pub async fn wait_if_reading(&self, limit: Duration) {
        if self.reading.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(limit, self.done.notified()).await;
        }
    }
}

impl Tee {
    pub fn new(inner: Body, capture: Capture) -> (Self, Arc<RestOfBody>) {
        let rest = Arc::new(RestOfBody::default());
        let tee = Tee {
            inner: Some(inner),
            capture: Some(capture),
            rest: rest.clone(),
        };
        (tee, rest)
    }

    fn see(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>) {
        let outcome = match polled {
            Poll::Ready(Some(Ok(frame))) => match self.capture.as_mut().map(|c| c.observe(frame)) {
                Some(Err(why)) => Some(Err(why)),
                _ => None,
            },
            Poll::Ready(Some(Err(_))) => Some(Err(Abandon::Incomplete)),
            Poll::Ready(None) => Some(Ok(())),
            Poll::Pending => None,
        };
        let Some(outcome) = outcome else { return };
        if let Some(capture) = self.capture.take() {
            match outcome {
                Ok(()) => capture.finish(),
                Err(why) => capture.abandon(why),
            }
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        self.see(&polled);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Refused: no copy, so nothing more to read for one (and the
        // response is not held for the client's upload).
        if capture.refusal.is_refused() {
            capture.abandon(Abandon::Refused);
            return;
        }
        // Readers such as hyper stop at `is_end_stream` without polling
        // for the end: the copy is complete.
        if inner.is_end_stream() {
            capture.finish();
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.rest.reading.store(true, Ordering::Release);
                runtime.spawn(read_rest(inner, capture, self.rest.clone()));
            }
            Err(_) => capture.abandon(Abandon::Incomplete),
        }
    }
}

/// Reads what the primary left unread, for the copy alone.
async fn read_rest(mut body: Body, mut capture: Capture, rest: Arc<RestOfBody>) {
    let outcome = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Err(why) = capture.observe(&frame) {
                    break Err(why);
                }
            }
            Some(Err(_)) => break Err(Abandon::Incomplete),
            None => break Ok(()),
        }
    };
    match outcome {
        Ok(()) => capture.finish(),
        Err(why) => capture.abandon(why),
    }
    // The body first: when it is an outer mirror's tee, dropping it is
    // what tells that mirror the rest is being read, and the handler woken
    // next must not answer before that mirror knows.
    drop(body);
    rest.done.notify_one();
}
