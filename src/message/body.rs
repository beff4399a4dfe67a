//! The one body type handlers pass around: boxed, streamed, never buffered
//! unless a handler decides to.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an HTTP/1.1 connection reads at most at once unless `limits {
/// read_buffer }` says otherwise (hyper starts at 8 KiB and doubles while
/// reads fill its buffer, up to this): room for a 64 KiB body and a head of
/// up to 16 KiB, so such a request is read and forwarded whole (with
/// 64 KiB, the last hundred bytes of a 64 KiB upload took a read, a write
/// upstream and a wake-up of their own). Not more by default: a connection
/// keeps its buffer while it is open, and hyper's doubling would give a
/// connection carrying 64 KiB uploads 128 KiB buffers (README, Performance).
pub const DEFAULT_READ_BUFFER: usize = 80 * 1024;

/// The largest read buffer any connection of this process may have: the
/// largest [`Limits::read_buffer_at_most`] any listener was built with. It
/// only grows: after a reload that lowers it, connections opened before
/// keep their buffers. A body chunk is a slice of such a buffer, and keeps
/// it whole while it lives, so what kept chunks may hold is counted with it
/// (see `mirror::lending`).
///
/// [`Limits::read_buffer_at_most`]: crate::config::model::Limits::read_buffer_at_most
static READ_BUFFER_AT_MOST: AtomicUsize = AtomicUsize::new(DEFAULT_READ_BUFFER);

/// See [`READ_BUFFER_AT_MOST`].
pub fn read_buffer_at_most() -> usize {
    READ_BUFFER_AT_MOST.load(Ordering::Relaxed)
}

/// A listener is about to serve connections that read up to `bytes` at once.
pub fn note_read_buffer(bytes: usize) {
    READ_BUFFER_AT_MOST.fetch_max(bytes, Ordering::Relaxed);
}

/// A request body passed the `request_body` limit.
#[derive(Debug, thiserror::Error)]
#[error("request body too large")]
pub struct BodyTooLarge;

/// The client's request body failed: malformed framing, or the client
/// went away mid-body. Not an upstream's fault.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The client sent nothing more of its request body for
/// `read_body_timeout` while teebox was waiting for it.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no more of its request body for {0:?}")]
pub struct BodyReadTimeout(pub std::time::Duration);

/// Whether `err` (or any error under it) is a [`BodyReadTimeout`].
pub fn is_read_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyReadTimeout>(err)
}

/// Whether `err` (or any error under it) is a [`BodyTooLarge`].
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyTooLarge>(err)
}

/// Whether `err` (or any error under it) is a [`ClientBodyError`].
pub fn is_client_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<ClientBodyError>(err)
}

fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A streamed body. `Unsync` because hyper only needs `Send`, and it lets a
/// handler wrap a body that is not `Sync` (such as a tee).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors can be boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that holds a value (a guard, a log record) until the body is
    /// finished or dropped, whichever comes first.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Guarded {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body, G> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a body wrapper does with the frames going past it untouched: the
/// access log counts them, `record` and `compare` keep them.
pub trait Observe: Send + Unpin + 'static {
    fn data(&mut self, _data: &Bytes) {}

    fn trailers(&mut self, _trailers: &http::HeaderMap) {}

    /// Called once: the body ended (`true`), or it failed or was dropped
    /// before its end (`false`).
    fn done(&mut self, complete: bool);
}

/// A body passed on as it is, shown to an [`Observe`] on the way.
pub struct Observed<O: Observe> {
    inner: Body,
    observer: O,
    done: bool,
}

impl<O: Observe> Observed<O> {
    pub fn new(inner: Body, observer: O) -> Self {
        Observed {
            inner,
            observer,
            done: false,
        }
    }

    fn finish(&mut self, complete: bool) {
        if !self.done {
            self.done = true;
            self.observer.done(complete);
        }
    }
}

impl<O: Observe> http_body::Body for Observed<O> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.data(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.observer.trailers(trailers);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<O: Observe> Drop for Observed<O> {
    fn drop(&mut self) {
        // hyper may drop a body it knows has ended without polling it to
        // the end (an exact length fully read, or an empty body).
        let complete = http_body::Body::is_end_stream(&self.inner);
        self.finish(complete);
    }
}

/// Set when `request_body` refuses a request for its body. A `mirror`
/// earlier in the chain puts one in the request's extensions before it
/// tees the body: a request teebox refused must not reach a shadow, even
/// though the mirror saw (or would read on for) its body.
#[derive(Debug, Clone, Default)]
pub struct BodyRefusal(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl BodyRefusal {
    pub fn is_refused(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn refuse(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}
