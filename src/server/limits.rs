//! `global { limits { … } }` on every connection: how many connections are
//! served at once, how long a client may take to send a request head
//! (slowloris), and how long a keep-alive connection may sit idle.
//!
//! hyper's own header timer also runs while a keep-alive connection waits
//! for its next request, so it would make `read_header_timeout` the idle
//! timeout too. Instead, each connection's I/O goes through [`TimedIo`],
//! which knows from the service whether a request is being served:
//!
//! - no request in flight and no bytes of a new one: idle, closed after
//!   `idle_timeout` without reads or writes;
//! - the first bytes of a new HTTP/1 request arrived but its head is not
//!   complete: closed with a 408 after `read_header_timeout`;
//! - an HTTP/2 client has not sent its whole opening (preface and first
//!   SETTINGS frame, see `h2_opening`): closed after `read_header_timeout`
//!   (with a 408 while it might still be HTTP/1);
//! - a request being served (until its response body is done), an HTTP/2
//!   stream open, or an upgraded connection (WebSocket): no timer here
//!   (a request body that stalls has its own, see `body_timeout`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use super::framing::FramingScan;
use super::h2_opening::Opening;
use crate::config::Limits;

/// The limits, and the connection count they cap, shared by every listener.
/// A reload puts new limits in place ([`ConnLimits::reloaded`]); each
/// connection keeps the ones it was accepted under, and the count of open
/// connections carries over.
pub struct ConnLimits {
    pub limits: Limits,
    connections: Arc<ConnCount>,
}

impl ConnLimits {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(ConnLimits {
            limits,
            connections: Arc::new(ConnCount {
                open: Arc::new(Semaphore::new(limits.max_connections)),
                max: std::sync::Mutex::new(limits.max_connections),
                owed: AtomicUsize::new(0),
            }),
        })
    }

    /// New limits over the same open connections: a lower
    /// `max_connections` takes effect as connections close.
    pub fn reloaded(&self, limits: Limits) -> Arc<Self> {
        self.connections.resize(limits.max_connections);
        Arc::new(ConnLimits {
            limits,
            connections: self.connections.clone(),
        })
    }

    /// Waits for room for one more connection: at the limit the listener
    /// stops accepting (clients wait in the kernel's backlog) until one
    /// closes.
    pub async fn admit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.connections.admit().await
    }
}

/// Open connections under `max_connections`, which a reload may change
/// while connections hold their places.
struct ConnCount {
    open: Arc<Semaphore>,
    max: std::sync::Mutex<usize>,
    /// Places a lowered limit took away that were in use: each is given up
    /// when a connection hands it back, instead of admitting another.
    owed: AtomicUsize,
}

impl ConnCount {
    fn resize(&self, new: usize) {
        let mut max = self.max.lock().unwrap_or_else(|e| e.into_inner());
        if new > *max {
            let mut grow = new - *max;
            let repaid = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    Some(owed - owed.min(grow))
                })
                .map_or(0, |owed| owed.min(grow));
            grow -= repaid;
            self.open.add_permits(grow);
        } else {
            let shrink = *max - new;
            let taken = self.open.forget_permits(shrink);
            self.owed.fetch_add(shrink - taken, Ordering::AcqRel);
        }
        *max = new;
    }

    async fn admit(&self) -> tokio::sync::OwnedSemaphorePermit {
        loop {
            let permit = self
                .open
                .clone()
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed");
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    owed.checked_sub(1)
                });
            match owed {
                Ok(_) => permit.forget(),
                Err(_) => return permit,
            }
        }
    }
}

/// What the service tells the connection's I/O about requests.
#[derive(Default)]
pub struct ConnState {
    /// Requests started on this connection, ever.
    started: AtomicU64,
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// The connection was handed over (101 Switching Protocols).
    upgraded: AtomicBool,
    /// A header block with both Content-Length and Transfer-Encoding came
    /// in (see `framing`).
    cl_and_te: AtomicBool,
}

impl ConnState {
    /// A request reached the service; [`ConnState::end`] once its response
    /// is finished (the caller's guard).
    pub fn begin(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A response is finished. No wake-up for the reader: its timer is
    /// still armed, no later than the idle deadline this end of a request
    /// starts (see `TimedIo::poll_read`).
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// A request body being read: the connection is not waiting for a
    /// head while it lasts, even once the response is done (an upstream
    /// that answered an upload early). Counted until the body is finished
    /// or dropped.
    pub fn reading_body(self: &Arc<Self>) -> ReadingBody {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ReadingBody(self.clone())
    }

    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    pub fn cl_and_te_seen(&self) -> bool {
        self.cl_and_te.load(Ordering::Relaxed)
    }
}

/// See [`ConnState::reading_body`].
pub struct ReadingBody(Arc<ConnState>);

impl Drop for ReadingBody {
    fn drop(&mut self) {
        self.0.end();
    }
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What a connection holds for as long as its socket is open, upgraded
/// (a WebSocket tunnel) or not: its place under `max_connections`, and its
/// count in the shutdown drain.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: super::drain::Open,
}

impl Slot {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit, open: super::drain::Open) -> Slot {
        Slot {
            _permit: permit,
            _open: open,
        }
    }
}

/// Why a connection's timer closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head (or what may yet be one) not complete in time: a 408.
    SlowHead,
    /// The HTTP/2 preface came but not the SETTINGS frame after it: the
    /// client speaks HTTP/2, so no HTTP/1.1 408.
    SlowH2Opening,
    Idle,
}

/// A connection's I/O with the idle and request-head timers.
pub struct TimedIo<I> {
    inner: I,
    /// Given back when the socket is dropped, not when hyper's connection
    /// ends: an upgraded socket lives on in its tunnel.
    _slot: Slot,
    state: Arc<ConnState>,
    read_header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether the timer was polled since it was last set, so that it
    /// will wake the reader.
    timer_polled: bool,
    last_activity: Instant,
    /// Whether the client speaks HTTP/2: known once its first bytes
    /// either differ from the preface or are its whole opening.
    opening: Opening,
    /// When the first bytes of a request head came, and how many requests
    /// had started then: the head is pending while no new one started.
    head: Option<(Instant, u64)>,
    framing: FramingScan,
}

impl<I> TimedIo<I> {
    /// `waiting_since`: when the connection began to wait for its first
    /// request head, which must be complete `read_header_timeout` later.
    pub fn new(
        inner: I,
        state: Arc<ConnState>,
        limits: &Limits,
        waiting_since: Instant,
        slot: Slot,
    ) -> Self {
        TimedIo {
            inner,
            _slot: slot,
            state,
            read_header_timeout: limits.read_header_timeout,
            idle_timeout: limits.idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(
                waiting_since + limits.read_header_timeout,
            )),
            timer_polled: false,
            last_activity: Instant::now(),
            opening: Opening::default(),
            head: Some((waiting_since, 0)),
            framing: FramingScan::default(),
        }
    }

    fn saw_bytes(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        self.last_activity = now;
        // A read may bring only the start of the preface ("P"): which
        // protocol this is waits for a byte that differs or for the whole
        // opening. The bytes that agreed with the preface until then are
        // scanned with this read's, so the framing scan misses nothing.
        let earlier = self.opening.feed(bytes);
        if matches!(self.opening, Opening::Http1) && !self.state.upgraded.load(Ordering::Relaxed) {
            let found_earlier = earlier.is_some_and(|earlier| self.framing.scan(earlier));
            if self.framing.scan(bytes) || found_earlier {
                self.state.cl_and_te.store(true, Ordering::Relaxed);
            }
        }
        let started = self.state.started.load(Ordering::Relaxed);
        let idle = self.state.in_flight.load(Ordering::Acquire) == 0;
        let head_pending = matches!(self.head, Some((_, at)) if at == started);
        if idle && !head_pending && matches!(self.opening, Opening::Http1) {
            self.head = Some((now, started));
        }
    }

    /// When the connection is to be closed, and why.
    fn deadline(&mut self) -> Option<(Instant, Expiry)> {
        if self.state.upgraded.load(Ordering::Relaxed)
            || self.state.in_flight.load(Ordering::Acquire) > 0
        {
            return None;
        }
        let started = self.state.started.load(Ordering::Relaxed);
        match self.head {
            Some((since, at)) if at == started && !matches!(self.opening, Opening::Http2) => {
                let why = match self.opening.preface_complete() {
                    false => Expiry::SlowHead,
                    true => Expiry::SlowH2Opening,
                };
                Some((since + self.read_header_timeout, why))
            }
            _ => {
                self.head = None;
                Some((self.last_activity + self.idle_timeout, Expiry::Idle))
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                this.saw_bytes(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => self.poll_timer(cx),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> TimedIo<I> {
    /// The reader waits: closes the connection if its deadline has passed,
    /// else makes sure the timer will wake it by then.
    ///
    /// The timer is lazy, so a busy connection costs no timer work per
    /// request: it stays armed at a deadline that is never later than the
    /// real one, and when it fires early the real deadline is worked out
    /// again and the timer moved to it. Deadlines only move later (activity
    /// pushes the idle one out) except when a new request head starts,
    /// which is earlier and moves the timer at once.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let due = self.deadline();
        if !self.timer.is_elapsed() {
            match due {
                Some((deadline, _)) if deadline < self.timer.deadline() => self.rearm(deadline),
                // Armed no later than needed, and already polled.
                _ if self.timer_polled => return Poll::Pending,
                _ => {}
            }
        } else {
            let now = Instant::now();
            match due {
                Some((deadline, why)) if deadline <= now => return self.expire(cx, why),
                Some((deadline, _)) => self.rearm(deadline),
                // Serving a request: look again an idle period from now,
                // which is never later than the idle deadline its end
                // starts.
                None => self.rearm(now + self.idle_timeout),
            }
        }
        self.timer_polled = true;
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            // Moved to a deadline that has just passed: look again.
            Poll::Ready(()) => self.poll_timer(cx),
        }
    }

    fn rearm(&mut self, deadline: Instant) {
        self.timer.as_mut().reset(deadline);
        self.timer_polled = false;
    }

    fn expire(&mut self, cx: &mut Context<'_>, why: Expiry) -> Poll<io::Result<()>> {
        match why {
            Expiry::SlowHead => {
                // Best effort: the client is slow by assumption, so a
                // full socket buffer just means no 408.
                let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
                tracing::debug!("request head not complete in time; closing with 408");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete in time",
                )))
            }
            Expiry::SlowH2Opening => {
                tracing::debug!("HTTP/2 preface and SETTINGS not complete in time; closing");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP/2 opening not complete in time",
                )))
            }
            Expiry::Idle => {
                tracing::debug!("keep-alive connection idle; closing");
                // End of stream: hyper closes an idle connection quietly.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.last_activity = Instant::now();
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.last_activity = Instant::now();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            ..Limits::default()
        }
    }

    /// Whether a connection would be admitted now (time is paused: the
    /// timeout passes at once when nothing can be admitted).
    async fn admits(conns: &ConnLimits) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(Duration::from_secs(1), conns.admit())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_max_connections_takes_effect_as_connections_close() {
        let first = ConnLimits::new(limits(2));
        let a = admits(&first).await.expect("room for a");
        let b = admits(&first).await.expect("room for b");
        let lowered = first.reloaded(limits(1));
        assert!(admits(&lowered).await.is_none(), "two open, one allowed");
        drop(a);
        assert!(admits(&lowered).await.is_none(), "still one open");
        drop(b);
        let c = admits(&lowered).await.expect("none open, one allowed");
        assert!(admits(&lowered).await.is_none());
        let raised = lowered.reloaded(limits(3));
        let _d = admits(&raised).await.expect("one open, three allowed");
        let _e = admits(&raised).await.expect("two open, three allowed");
        assert!(admits(&raised).await.is_none());
        drop(c);
        assert!(
            admits(&first).await.is_some(),
            "every version counts the same"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_limit_first_pays_back_what_a_lowering_still_owes() {
        let first = ConnLimits::new(limits(2));
        let a = admits(&first).await.expect("a");
        let b = admits(&first).await.expect("b");
        // Two in use, limit 0: two owed. Back to 1: one owed.
        let lowered = first.reloaded(limits(0)).reloaded(limits(1));
        drop(a);
        assert!(admits(&lowered).await.is_none(), "b open, limit 1");
        drop(b);
        assert!(admits(&lowered).await.is_some());
    }
}
