//! `read_body_timeout`: the longest teebox waits for the client between two
//! reads of a request body (nginx's `client_body_timeout`), so a client
//! that sends a complete head and then trickles or stalls its body
//! (slowloris on the body) cannot hold a connection, a handler and an
//! upstream request open for ever.
//!
//! A wrapper on each request body rather than a timer in `TimedIo`: it is
//! per request, so it works the same for an HTTP/1.1 connection and for
//! each HTTP/2 stream, and it only runs while someone is reading the body.
//! The clock starts when a read finds nothing buffered and stops at the
//! next frame, so time spent waiting on a slow upstream (nobody reading)
//! never counts against the client. On expiry the body fails with
//! [`BodyReadTimeout`]: the upstream request is aborted (never a complete
//! looking, truncated body), an incomplete copy of it is dropped, and a
//! proxying handler answers 408 if its response has not started.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::message::body::{BodyReadTimeout, BoxError};

pin_project_lite::pin_project! {
    /// A request body that fails if the client sends nothing for `timeout`
    /// while it is being read.
    pub struct ReadTimeout<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // Made on the first wait only: most bodies arrive with their head.
        timer: Option<Pin<Box<Sleep>>>,
        // Whether the timer runs for the current wait.
        waiting: bool,
        timed_out: bool,
    }
}

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        ReadTimeout {
            inner,
            timeout,
            timer: None,
            waiting: false,
            timed_out: false,
        }
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.timed_out {
            // Stay failed: a consumer that polls again must not see an end.
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout(*this.timeout)))));
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = Instant::now() + *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !*this.waiting {
            *this.waiting = true;
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.timed_out = true;
        tracing::debug!(timeout = ?this.timeout, "request body stalled; giving up on it");
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout(*this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        !self.timed_out && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    /// A body whose frames are what the test sends, for as long as it
    /// keeps the sender.
    fn channel_body() -> (
        mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = BoxError>,
    ) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|data| data.map(|d| Ok::<_, BoxError>(Frame::data(d))))
        });
        (tx, StreamBody::new(frames))
    }

    async fn data(body: &mut (impl Body<Data = Bytes, Error = BoxError> + Unpin)) -> Bytes {
        let frame = body.frame().await.expect("a frame").expect("no error");
        frame.into_data().expect("data")
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout_and_stays_failed() {
        let (tx, inner) = channel_body();
        tx.try_send(Bytes::from_static(b"half")).expect("room");
        let mut body = ReadTimeout::new(inner, Duration::from_secs(60));
        assert_eq!(data(&mut body).await, "half");
        let err = body
            .frame()
            .await
            .expect("an error")
            .expect_err("timed out");
        assert!(crate::message::body::is_read_timeout(err.as_ref()));
        assert!(body.frame().await.expect("still an error").is_err());
        assert!(!body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_clock() {
        let (tx, inner) = channel_body();
        let mut body = ReadTimeout::new(inner, Duration::from_secs(60));
        tokio::spawn(async move {
            for _ in 0..3 {
                // Each gap is under the timeout; together they are over it.
                tokio::time::sleep(Duration::from_secs(40)).await;
                if tx.send(Bytes::from_static(b"more")).await.is_err() {
                    return;
                }
            }
        });
        for _ in 0..3 {
            assert_eq!(data(&mut body).await, "more");
        }
        assert!(body.frame().await.is_none(), "the sender is gone: the end");
    }
}
