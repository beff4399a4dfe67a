//! Graceful shutdown of served connections: told to stop, each connection
//! finishes the request it is serving (HTTP/1.1) or its open streams (a
//! GOAWAY on HTTP/2) and closes; [`Drain::shutdown`] waits for the last.
//!
//! hyper-util's `GracefulShutdown` does the same through a
//! `tokio::sync::watch` channel, whose change future takes a lock on every
//! poll of every connection: several times per request. Here a poll costs
//! an atomic load; the lock is taken when a connection is first polled,
//! when it ends, and once at shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hyper::body::{Body, Incoming};
use hyper::service::HttpService;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    /// Connections accepted and not yet closed.
    open: AtomicUsize,
    /// Signalled when `open` drops to zero.
    closed: Notify,
    /// Signalled when the server starts to stop, for connections that are
    /// not served yet (see [`Entered::stopping`]).
    stop: Notify,
    wakers: Mutex<Wakers>,
}

/// The waker of each connection that has been polled, by slot.
#[derive(Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Drain {
    pub fn new() -> Self {
        Drain::default()
    }

    /// Counts a connection as open from its accept until the returned
    /// value (or the connection it watches) is dropped.
    pub fn enter(&self) -> Entered {
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        Entered {
            shared: self.shared.clone(),
        }
    }

    /// Connections still open.
    pub fn count(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Tells every connection to finish and close, and waits until the last
    /// has (connections accepted after this stop at their first poll).
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
        for waker in self.shared.lock().slots.iter().flatten() {
            waker.wake_by_ref();
        }
        loop {
            let notified = self.shared.closed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Wakers> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// An accepted connection, counted as open.
pub struct Entered {
    shared: Arc<Shared>,
}

impl Entered {
    /// Resolves once the server starts to stop: for a connection that is
    /// still waiting for its first bytes, before it has anything to finish.
    pub async fn stopping(&self) {
        loop {
            let notified = self.shared.stop.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.shared.stopping() {
                return;
            }
            notified.await;
        }
    }

    /// The connection, served until it ends or, once the server stops,
    /// until it has shut down gracefully.
    pub fn watch<C: Graceful>(self, conn: C) -> Watched<C> {
        Watched {
            // Boxed once per connection, so the wrapper needs no pin
            // projection.
            conn: Box::pin(conn),
            entered: self,
            slot: None,
            registered: None,
            shutting_down: false,
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.shared.leave();
    }
}

impl Entered {
    /// A second count for the same connection, for what may outlive its
    /// served part: the socket itself, which an upgrade (WebSocket) hands
    /// on to a tunnel. Shutdown waits for it too.
    pub fn hold(&self) -> Open {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Open(self.shared.clone())
    }
}

/// See [`Entered::hold`].
pub struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Shared {
    fn leave(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed.notify_waiters();
        }
    }
}

pub struct Watched<C> {
    conn: Pin<Box<C>>,
    entered: Entered,
    /// Where its waker is kept for [`Drain::shutdown`].
    slot: Option<usize>,
    /// The waker kept there: a task's waker does not change between polls,
    /// so it is registered once.
    registered: Option<Waker>,
    shutting_down: bool,
}

impl<C> Watched<C> {
    fn register(&mut self, waker: &Waker) {
        let mut wakers = self.entered.shared.lock();
        let slot = match self.slot {
            Some(slot) => slot,
            None => match wakers.free.pop() {
                Some(slot) => slot,
                None => {
                    wakers.slots.push(None);
                    wakers.slots.len() - 1
                }
            },
        };
        if let Some(kept) = wakers.slots.get_mut(slot) {
            *kept = Some(waker.clone());
        }
        self.slot = Some(slot);
        self.registered = Some(waker.clone());
    }
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if !this.shutting_down {
            let mut stopping = this.entered.shared.stopping();
            if !stopping
                && !this
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                this.register(cx.waker());
                // The server may have stopped before the waker was there
                // to be woken.
                stopping = this.entered.shared.stopping();
            }
            if stopping {
                this.shutting_down = true;
                this.conn.as_mut().begin_shutdown();
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let mut wakers = self.entered.shared.lock();
            if let Some(kept) = wakers.slots.get_mut(slot) {
                *kept = None;
                wakers.free.push(slot);
            }
        }
    }
}

/// A served connection that can be told to finish what it is doing and
/// close: what [`Watched`] needs of it. (hyper-util's own trait for this
/// is sealed, and leaves out hyper's HTTP/1.1 connection with upgrades.)
pub trait Graceful: Future {
    fn begin_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
