//! The request body as the primary reads it, with a copy kept on the side.
//!
//! Frames pass through untouched and in step with the primary: the tee
//! never waits for the whole body. While the targets keep up, a body that
//! comes in up to [`KEPT_CHUNKS_AT_MOST`] chunks is kept as those chunks
//! (see [`super::lending`] for when it is copied after all), but for a
//! small one in its middle (under [`KEPT_CHUNK_AT_LEAST`]), which is
//! copied: it would keep a read buffer many times its size. A body for
//! targets falling behind, or in more chunks, is copied into the copy's
//! own buffer (sized from `Content-Length` when there is one) as it
//! passes. Past `max_body` the copy is abandoned and the primary goes on
//! unaffected. If the primary stops reading early (a `respond` that never
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

use super::copy_bytes::CopyBytes;
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

/// The smallest chunk a copy keeps as it came, unless it ends the body
/// (the usual body, in one chunk): with the default `read_buffer`
/// ([`DEFAULT_READ_BUFFER`](crate::message::body::DEFAULT_READ_BUFFER),
/// in a buffer that can grow to twice that), it keeps a read buffer of at
/// most ten times its size. (A larger `read_buffer` is counted whole
/// against the lending bound all the same.)
pub const KEPT_CHUNK_AT_LEAST: usize = 16 << 10;

/// The most chunks a copy keeps as they came (a 1 MiB upload comes in 13
/// of 80 KiB); a body in more is copied.
pub const KEPT_CHUNKS_AT_MOST: usize = 32;

/// What a copy holds of the body so far.
enum Collected {
    Nothing,
    /// The chunk the body came in so far.
    Read(Bytes),
    /// The chunks the body came in so far (small ones copied).
    ReadMany(Vec<Bytes>),
    /// Copied chunk by chunk.
    Copied(BytesMut),
}

/// The copy's body so far.
struct Collecting {
    body: Collected,
    /// What the body says of its length, to tell its last chunk or to size
    /// the copy's buffer.
    expected: Option<u64>,
    len: u64,
    /// Whether the chunks may be kept as they came: the targets kept up
    /// when the body started. If not, no read buffer is held even while
    /// the body comes, and the copy is made as it passes, as it will be
    /// sent from its own allocation anyway.
    keep_read: bool,
}

/// The copy being collected.
pub struct Capture {
    pending: PendingCopy,
    collecting: Collecting,
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
        let keep_read = size.exact() != Some(0) && pending.targets_keeping_up();
        Capture {
            pending,
            collecting: Collecting::new(size.exact(), keep_read),
            trailers: None,
            framing,
            refusal,
        }
    }

    /// Keeps what a frame holds, or says why the copy must be given up.
    fn observe(&mut self, frame: &Frame<Bytes>) -> Result<(), Abandon> {
        if let Some(data) = frame.data_ref() {
            if let Some(framing) = self.framing.as_mut() {
                framing.push(data).map_err(Abandon::Streaming)?;
            }
            if self.collecting.len + data.len() as u64 > self.pending.max_body() {
                return Err(Abandon::TooLarge);
            }
            self.collecting.keep(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            // Like the headers, not slices of the connection's buffers.
            self.trailers = Some(crate::message::detached(trailers, 0));
        }
        Ok(())
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
        self.pending
            .dispatch(self.collecting.finish(), self.trailers)
    }

    fn abandon(self, why: Abandon) {
        self.pending.abandon(why);
    }
}

impl Collecting {
    fn new(expected: Option<u64>, keep_read: bool) -> Self {
        Collecting {
            body: Collected::Nothing,
            expected,
            len: 0,
            keep_read,
        }
    }

    /// Adds `data` to the copy.
    fn keep(&mut self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len() as u64;
        // A small chunk in the middle of a body gets an allocation of its
        // own size rather than keep a whole read buffer.
        let last = self.expected == Some(self.len);
        let chunk = || match data.len() >= KEPT_CHUNK_AT_LEAST || last {
            true => data.clone(),
            false => Bytes::copy_from_slice(data),
        };
        self.body = match std::mem::replace(&mut self.body, Collected::Nothing) {
            Collected::Copied(mut copied) => {
                copied.extend_from_slice(data);
                Collected::Copied(copied)
            }
            Collected::Nothing if !self.keep_read => {
                let mut copied = self.copy_buffer();
                copied.extend_from_slice(data);
                Collected::Copied(copied)
            }
            Collected::Nothing => Collected::Read(chunk()),
            Collected::Read(first) => Collected::ReadMany(vec![first, chunk()]),
            Collected::ReadMany(mut chunks) if chunks.len() < KEPT_CHUNKS_AT_MOST => {
                chunks.push(chunk());
                Collected::ReadMany(chunks)
            }
            Collected::ReadMany(chunks) => {
                let mut copied = self.copy_buffer();
                chunks.iter().for_each(|c| copied.extend_from_slice(c));
                copied.extend_from_slice(data);
                Collected::Copied(copied)
            }
        };
    }

    /// A buffer for the body copied: its length when it says one (up to
    /// [`PREALLOCATE_AT_MOST`]: a large body's room is made as it comes,
    /// not on the client's word), and room for what came so far. A body
    /// that says it is over `max_body` never gets here (the mirror handler
    /// gives it up first).
    fn copy_buffer(&self) -> BytesMut {
        let room = self.expected.unwrap_or(0).min(PREALLOCATE_AT_MOST);
        BytesMut::with_capacity(room.max(self.len) as usize)
    }

    fn finish(self) -> CollectedBody {
        match self.body {
            Collected::Nothing => CollectedBody::Own(Bytes::new()),
            Collected::Read(whole) => CollectedBody::Read(CopyBytes::One(whole)),
            Collected::ReadMany(chunks) => CollectedBody::Read(CopyBytes::Chunks(chunks.into())),
            Collected::Copied(copied) => CollectedBody::Own(exact(copied)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(expected: Option<u64>, chunks: &[&Bytes]) -> CollectedBody {
        collect_if(true, expected, chunks)
    }

    fn collect_if(keep_read: bool, expected: Option<u64>, chunks: &[&Bytes]) -> CollectedBody {
        let mut collecting = Collecting::new(expected, keep_read);
        chunks.iter().for_each(|chunk| collecting.keep(chunk));
        collecting.finish()
    }

    fn read(len: usize, byte: u8) -> Bytes {
        // A slice of a larger buffer, as a connection's reads are.
        Bytes::from(vec![byte; len + 100]).slice(50..50 + len)
    }

    fn chunks(body: &CollectedBody) -> Vec<(*const u8, Bytes)> {
        match body {
            CollectedBody::Read(CopyBytes::One(one)) => vec![(one.as_ptr(), one.clone())],
            CollectedBody::Read(CopyBytes::Chunks(chunks)) => {
                chunks.iter().map(|c| (c.as_ptr(), c.clone())).collect()
            }
            CollectedBody::Own(own) => panic!("copied: {} bytes", own.len()),
        }
    }

    #[test]
    fn a_body_in_one_chunk_is_kept_as_it_came_whatever_its_size() {
        let small = read(10, b'a');
        let kept = chunks(&collect(Some(10), &[&small]));
        assert_eq!(kept, vec![(small.as_ptr(), small.clone())]);
    }

    #[test]
    fn large_chunks_are_kept_and_a_small_one_in_the_middle_is_copied() {
        let (big, small, last) = (
            read(KEPT_CHUNK_AT_LEAST, b'a'),
            read(5, b'b'),
            read(3, b'c'),
        );
        let expected = (big.len() + small.len() + big.len() + last.len()) as u64;
        let kept = chunks(&collect(Some(expected), &[&big, &small, &big, &last]));
        let pointers: Vec<_> = kept.iter().map(|(p, _)| *p).collect();
        assert_eq!(pointers[0], big.as_ptr());
        assert_ne!(
            pointers[1],
            small.as_ptr(),
            "a small chunk gets its own copy"
        );
        assert_eq!(pointers[2], big.as_ptr());
        assert_eq!(pointers[3], last.as_ptr(), "the last one is kept");
        let bytes: Vec<u8> = kept.iter().flat_map(|(_, c)| c.to_vec()).collect();
        assert_eq!(bytes, [&big[..], &small[..], &big[..], &last[..]].concat());
    }

    #[test]
    fn a_body_in_many_chunks_is_copied_into_one_buffer() {
        let chunk = read(KEPT_CHUNK_AT_LEAST, b'x');
        let many = vec![&chunk; KEPT_CHUNKS_AT_MOST + 1];
        let expected = (chunk.len() * many.len()) as u64;
        match collect(Some(expected), &many) {
            CollectedBody::Own(own) => {
                assert_eq!(own.len() as u64, expected);
                assert!(own.iter().all(|b| *b == b'x'));
            }
            CollectedBody::Read(_) => panic!("{} chunks kept", many.len()),
        }
    }

    #[test]
    fn for_targets_falling_behind_the_body_is_copied_as_it_passes() {
        let chunk = read(KEPT_CHUNK_AT_LEAST, b'y');
        match collect_if(false, Some(chunk.len() as u64 * 2), &[&chunk, &chunk]) {
            CollectedBody::Own(own) => assert_eq!(own, [&chunk[..], &chunk[..]].concat()),
            CollectedBody::Read(_) => panic!("read buffers kept for targets falling behind"),
        }
    }

    #[test]
    fn no_body_is_an_empty_one_of_its_own() {
        let empty = Bytes::new();
        assert!(matches!(collect(None, &[&empty]), CollectedBody::Own(b) if b.is_empty()));
    }
}
