//! Kept-alive connections to one upstream, one idle list per serving worker.
//!
//! hyper-util's legacy client solves the general problem: any host, a
//! lock-guarded map of pools keyed by scheme and authority, and a task
//! spawned per response to put the connection back once it is ready again.
//! A `reverse_proxy` knows its upstreams when it is built, and each request
//! runs on one worker, so the pool here is a short list per worker:
//! checkout pops the most recently used connection, and the connection goes
//! back when its response body has been read to the end. Connections are
//! opened with the shared [`Connector`] (plain TCP or TLS with ALPN), and
//! speak HTTP/2 when ALPN picks it or `h2c` is set.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::tls_connector::Connector;
use crate::lazy_timer::{self, LazyTimer};
use crate::message::{error_chain, BoxError};

/// How a pool treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Reuse connections at all (`keepalive #false`: one per request).
    pub keepalive: bool,
    /// Speak HTTP/2 with prior knowledge on plain connections.
    pub h2c: bool,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Idle connections kept per worker; more are closed. A pool holds no
    /// more idle than were busy at once, so this only bounds what a burst
    /// leaves behind; set below the usual number of requests in flight, it
    /// closes connections that the next moment opens again.
    pub max_idle: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            keepalive: true,
            h2c: false,
            idle_timeout: Duration::from_secs(90),
            // As many as Envoy's default connection limit per upstream.
            // At 256, 1024 busy clients made about 4 new upstream
            // connections per 100 requests (0.7 at 1024): some 800 a
            // second, each closed one left in TIME_WAIT for a minute,
            // which nears the kernel's range of local ports.
            max_idle: 1024,
        }
    }
}

/// An idle connection older than this may be closed by the upstream just
/// as a request goes out on it (a common keep-alive timeout is 5 s).
const RACY_IDLE: Duration = Duration::from_secs(1);

/// HTTP/2 keep-alive pings on upstream connections.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    #[error("cannot connect: {}", error_chain(.0.as_ref()))]
    Connect(BoxError),
    /// The connection broke, or the upstream answered with something that
    /// is not HTTP.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// The request is marked HTTP/2 (gRPC) and the upstream speaks only
    /// HTTP/1.1 (ALPN chose it, and there is no `h2c`).
    #[error("the upstream speaks HTTP/1.1; this request needs HTTP/2")]
    NotHttp2,
    /// No response head by the deadline `send_within` was given (or the
    /// request body made no progress for that long).
    #[error("no response head in time")]
    Timeout,
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// Connections to one upstream (`scheme://authority`).
pub struct UpstreamPool<B> {
    /// What the connector is asked to connect to.
    origin: Uri,
    connector: Connector,
    settings: PoolSettings,
    /// One per serving worker, used only by its own thread, so its locks
    /// are never contended there. Other threads (the mirror's) share the
    /// first.
    workers: Box<[WorkerPool<B>]>,
}

/// One serving worker's share of a pool.
struct WorkerPool<B> {
    idle: Arc<Mutex<Idle<B>>>,
    /// Over HTTP/2 (`h2c`, or an upstream whose last connection picked h2
    /// by ALPN), one connection is opened at a time: requests that find
    /// none wait for it and share it, instead of each opening its own.
    connecting: tokio::sync::Mutex<()>,
}

struct Idle<B> {
    /// Oldest first: checkout takes from the back (the warmest), expiry
    /// trims the front.
    h1: VecDeque<(H1Conn<B>, Instant)>,
    /// HTTP/2 multiplexes: one connection serves every request.
    h2: Option<http2::SendRequest<B>>,
    /// The last connection opened picked h2 by ALPN. Until one has, a
    /// TLS upstream's protocol is unknown and concurrent requests each
    /// connect; from then on they wait for one connection, as with `h2c`,
    /// so a lost HTTP/2 connection is not followed by a burst of
    /// handshakes.
    alpn_h2: bool,
    /// When a connection last failed to open, and why: requests that
    /// waited their turn for it fail with it instead of each trying again.
    connect_failed: Option<(Instant, String)>,
}

impl<B> Idle<B> {
    /// Closes idle connections older than `idle_timeout`: the list is in
    /// the order they went idle, so only its front needs looking at.
    fn expire(&mut self, now: Instant, idle_timeout: Duration) {
        if let Some(oldest_kept) = now.checked_sub(idle_timeout) {
            while self
                .h1
                .front()
                .is_some_and(|(_, since)| *since < oldest_kept)
            {
                self.h1.pop_front();
            }
        }
    }

    /// The warmest idle connection the upstream has not closed, and since
    /// when it has been idle.
    fn take_h1(&mut self) -> Option<(H1Conn<B>, Instant)> {
        while let Some((conn, since)) = self.h1.pop_back() {
            if !conn.send.is_closed() {
                return Some((conn, since));
            }
        }
        None
    }
}

impl<B> Default for Idle<B> {
    fn default() -> Self {
        Idle {
            h1: VecDeque::new(),
            h2: None,
            alpn_h2: false,
            connect_failed: None,
        }
    }
}

type Req<B> = http::Request<B>;

impl<B> UpstreamPool<B>
where
    B: http_body::Body<Data = Bytes> + Default + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(origin: Uri, connector: Connector, settings: PoolSettings, workers: usize) -> Self {
        UpstreamPool {
            origin,
            connector,
            settings,
            workers: (0..workers.max(1))
                .map(|_| WorkerPool {
                    idle: Arc::default(),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
        }
    }

    fn worker(&self) -> &WorkerPool<B> {
        &self.workers[crate::workers::current() % self.workers.len()]
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, or
    /// a new one. A request that an idle connection closed on before it was
    /// written goes out again on the next one, as hyper-util's client does.
    pub fn send(
        &self,
        req: Req<B>,
    ) -> impl Future<Output = Result<http::Response<PooledBody<B>>, SendError>> + Send + '_ {
        self.send_until(req, Instant::now(), None)
    }

    /// [`send`](Self::send), failing with [`SendError::Timeout`] if no
    /// response head has come `limit` after `now` (connecting included)
    /// or, for a request whose body goes out through `upload`, `limit`
    /// after the body last went forward. `now` is the caller's: a clock
    /// read less per request.
    pub fn send_within(
        &self,
        req: Req<B>,
        now: Instant,
        limit: Duration,
        upload: Option<Arc<Upload>>,
    ) -> impl Future<Output = Result<http::Response<PooledBody<B>>, SendError>> + Send + '_ {
        let first = tokio::time::Instant::from_std(now + limit);
        self.send_until(req, now, Some(Deadline { first, upload }))
    }

    /// Every request waits in this future, and the future is moved (and
    /// boxed by the handler) whole: so it is written to stay small. It is
    /// an `async` block rather than an `async fn`, which would hold `req`
    /// twice; only a reused HTTP/1.1 connection is served here, the rest is
    /// boxed ([`send_elsewhere`](Self::send_elsewhere)); no value that a
    /// `match` looks at is held over a wait; and the request is pinned
    /// where it is sent.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    fn send_until(
        &self,
        mut req: Req<B>,
        mut now: Instant,
        deadline: Option<Deadline>,
    ) -> impl Future<Output = Result<http::Response<PooledBody<B>>, SendError>> + Send + '_ {
        async move {
            let shared_h2 = 'reuse: loop {
                let needs_h2 = req.version() == http::Version::HTTP_2;
                // Only a connection idle for a while can meet the upstream's
                // idle timeout (`racy`); copying the request for the others
                // would cost every request.
                let (mut conn, racy) = match self.checkout(&self.worker().idle, needs_h2, now) {
                    Some(Checkout::H1(conn, idle_for)) => (conn, idle_for >= RACY_IDLE),
                    Some(Checkout::NotHttp2) => return Err(SendError::NotHttp2),
                    Some(Checkout::H2(conn)) => break 'reuse Some(conn),
                    None => break 'reuse None,
                };
                if !conn.send.is_ready() {
                    let ready = Box::pin(within(deadline.as_ref(), async {
                        Ok(conn.send.ready().await)
                    }));
                    if ready.await?.is_err() {
                        now = Instant::now();
                        continue;
                    }
                }
                let again = match racy {
                    true => replayable(&req).map(Box::new),
                    false => None,
                };
                let sent = std::pin::pin!(conn.send.try_send_request(req));
                match on_timer(&mut conn.head_timer, deadline.as_ref(), sent).await? {
                    Ok(response) => {
                        return Ok(self.pooled(response, conn, &self.worker().idle, now))
                    }
                    Err(mut err) => match (err.take_message(), again) {
                        (Some(unsent), _) => {
                            req = unsent;
                            now = Instant::now();
                        }
                        // The upstream closed the kept-alive connection as
                        // the request went out (its idle timeout raced
                        // ours): no answer came, and a bodyless idempotent
                        // request may go again, as nginx, Go and Caddy send
                        // it.
                        (None, Some(again)) if err.error().is_incomplete_message() => {
                            tracing::debug!(upstream = %self.origin, "kept-alive connection closed under a request; sending it again");
                            req = *again;
                            now = Instant::now();
                        }
                        (None, _) => return Err(err.into_error().into()),
                    },
                }
            };
            Box::pin(within(
                deadline.as_ref(),
                self.send_elsewhere(shared_h2, req),
            ))
            .await
        }
    }

    /// Every way to send but a reused HTTP/1.1 connection: the shared
    /// HTTP/2 connection, or a new one (connecting, with its TLS state and
    /// handshakes, makes a large future). A request the HTTP/2 connection
    /// hands back unsent goes on a new connection.
    async fn send_elsewhere(
        &self,
        shared_h2: Option<http2::SendRequest<B>>,
        req: Req<B>,
    ) -> Result<http::Response<PooledBody<B>>, SendError> {
        let worker = self.worker();
        let req = match shared_h2 {
            Some(conn) => match self.send_h2(conn, req, &worker.idle).await? {
                Ok(response) => return Ok(response),
                Err(unsent) => unsent,
            },
            None => req,
        };
        let one_connection = self.settings.h2c
            || (self.settings.keepalive
                && worker
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .alpn_h2);
        match one_connection {
            true => self.send_on_shared_h2(req, worker).await,
            false => self.send_on_new(req, &worker.idle).await,
        }
    }

    /// Sends on the shared HTTP/2 connection. A request it hands back
    /// unsent (GOAWAY, or its task ended) comes back for another, and the
    /// connection is forgotten.
    async fn send_h2(
        &self,
        mut conn: http2::SendRequest<B>,
        req: Req<B>,
        list: &Mutex<Idle<B>>,
    ) -> Result<Result<http::Response<PooledBody<B>>, Req<B>>, SendError> {
        match conn.try_send_request(self.absolute(req)).await {
            Ok(response) => Ok(Ok(response.map(|body| PooledBody::new(body, None)))),
            Err(mut err) => match err.take_message() {
                Some(unsent) => {
                    Self::forget_h2(list);
                    Ok(Err(unsent))
                }
                None => Err(err.into_error().into()),
            },
        }
    }

    /// Drops the shared HTTP/2 connection after it handed a request back
    /// unsent, so the next attempt opens a new one. (Had another request
    /// just put a fresh one there, that one keeps serving its own streams
    /// and is merely not shared.)
    fn forget_h2(list: &Mutex<Idle<B>>) {
        list.lock().unwrap_or_else(|e| e.into_inner()).h2 = None;
    }

    fn checkout(&self, list: &Mutex<Idle<B>>, needs_h2: bool, now: Instant) -> Option<Checkout<B>> {
        let mut idle = list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h2) = &idle.h2 {
            if !h2.is_closed() {
                return Some(Checkout::H2(h2.clone()));
            }
            idle.h2 = None;
        }
        idle.expire(now, self.settings.idle_timeout);
        if needs_h2 {
            // A live idle HTTP/1.1 connection says what the upstream speaks,
            // without opening another to hear it again; once those are
            // gone (expired, closed), a new connection asks again.
            idle.h1.retain(|(conn, _)| !conn.send.is_closed());
            return (!idle.h1.is_empty()).then_some(Checkout::NotHttp2);
        }
        idle.take_h1()
            .map(|(conn, since)| Checkout::H1(conn, now.saturating_duration_since(since)))
    }

    /// Over HTTP/2: waits its turn to open the list's HTTP/2 connection,
    /// and uses the one another request opened meanwhile if there is one.
    /// The turn covers connecting only, not the exchange. Should the
    /// connection opened meanwhile have failed, this request fails with it
    /// (an unreachable upstream costs the waiting requests one connect
    /// timeout, not one each in turn); should it have turned out HTTP/1.1,
    /// ALPN having changed its mind, the request connects without waiting.
    async fn send_on_shared_h2(
        &self,
        req: Req<B>,
        worker: &WorkerPool<B>,
    ) -> Result<http::Response<PooledBody<B>>, SendError> {
        let list = &worker.idle;
        let asked = Instant::now();
        let opened = {
            let turn = worker.connecting.lock().await;
            let (shared, alpn_h2, failed) = {
                let idle = list.lock().unwrap_or_else(|e| e.into_inner());
                let failed = idle
                    .connect_failed
                    .as_ref()
                    .filter(|(at, _)| *at >= asked)
                    .map(|(_, why)| why.clone());
                (idle.h2.clone(), idle.alpn_h2, failed)
            };
            if let Some(conn) = shared.filter(|h2| !h2.is_closed()) {
                Opened::H2(conn)
            } else if let Some(why) = failed {
                return Err(SendError::Connect(why.into()));
            } else if !self.settings.h2c && !alpn_h2 {
                drop(turn);
                return self.send_on_new(req, list).await;
            } else {
                self.open(list).await?
            }
        };
        let Opened::H2(conn) = opened else {
            return self.send_opened(opened, req, list).await;
        };
        match self.send_h2(conn, req, list).await? {
            Ok(response) => Ok(response),
            // Going away already: a connection of its own, without waiting.
            Err(unsent) => self.send_on_new(unsent, list).await,
        }
    }

    async fn send_on_new(
        &self,
        req: Req<B>,
        list: &Arc<Mutex<Idle<B>>>,
    ) -> Result<http::Response<PooledBody<B>>, SendError> {
        let opened = self.open(list).await?;
        self.send_opened(opened, req, list).await
    }

    /// A new connection, HTTP/2 when `h2c` or ALPN says so; an HTTP/2 one
    /// is shared through `list` from then on.
    async fn open(&self, list: &Arc<Mutex<Idle<B>>>) -> Result<Opened<B>, SendError> {
        let io = match self.connector.clone().call(self.origin.clone()).await {
            Ok(io) => io,
            Err(err) => {
                let why = error_chain(err.as_ref());
                list.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .connect_failed = Some((Instant::now(), why));
                return Err(SendError::Connect(err));
            }
        };
        let alpn_h2 = io.connected().is_negotiated_h2();
        // Only TLS has ALPN: a plain upstream's flag stays false.
        if !self.settings.h2c && self.origin.scheme() == Some(&http::uri::Scheme::HTTPS) {
            list.lock().unwrap_or_else(|e| e.into_inner()).alpn_h2 = alpn_h2;
        }
        if self.settings.h2c || alpn_h2 {
            let (conn, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // A connection that died silently is noticed, not waited on.
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "upstream HTTP/2 connection ended");
                }
            });
            if self.settings.keepalive {
                list.lock().unwrap_or_else(|e| e.into_inner()).h2 = Some(conn.clone());
            }
            return Ok(Opened::H2(conn));
        }
        let (conn, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection ended");
            }
        });
        Ok(Opened::H1(H1Conn {
            send: conn,
            head_timer: LazyTimer::default(),
        }))
    }

    async fn send_opened(
        &self,
        opened: Opened<B>,
        req: Req<B>,
        list: &Arc<Mutex<Idle<B>>>,
    ) -> Result<http::Response<PooledBody<B>>, SendError> {
        match opened {
            Opened::H2(mut conn) => {
                let response = conn.send_request(self.absolute(req)).await?;
                Ok(response.map(|body| PooledBody::new(body, None)))
            }
            Opened::H1(conn) if req.version() == http::Version::HTTP_2 => {
                // Kept, so the next such request is refused without connecting.
                if self.settings.keepalive {
                    self.checkin(conn, list, Instant::now()).put_back();
                }
                Err(SendError::NotHttp2)
            }
            Opened::H1(mut conn) => {
                let response = conn.send.send_request(req).await?;
                Ok(self.pooled(response, conn, list, Instant::now()))
            }
        }
    }

    /// HTTP/2 carries the scheme and authority as pseudo-headers, taken
    /// from an absolute URI.
    fn absolute(&self, mut req: Req<B>) -> Req<B> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.origin.scheme().cloned();
        parts.authority = self.origin.authority().cloned();
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        req
    }

    /// The response, with its connection going back to `list` once the
    /// body has been read to the end.
    /// `since`: when the request went out, which stands in for when its
    /// response ended (an earlier time: the connection counts as idle a
    /// little sooner, and no clock is read per request).
    fn pooled(
        &self,
        response: http::Response<Incoming>,
        conn: H1Conn<B>,
        list: &Arc<Mutex<Idle<B>>>,
        since: Instant,
    ) -> http::Response<PooledBody<B>> {
        // After 101 the connection belongs to the upgrade.
        let reusable =
            self.settings.keepalive && response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let checkin = reusable.then(|| self.checkin(conn, list, since));
        response.map(|body| PooledBody::new(body, checkin))
    }

    fn checkin(&self, conn: H1Conn<B>, list: &Arc<Mutex<Idle<B>>>, since: Instant) -> Checkin<B> {
        Checkin {
            conn,
            list: list.clone(),
            settings: self.settings,
            since,
        }
    }
}

/// The request's target in origin form (`/path?query`), which the pool
/// sends on HTTP/1.1 request lines (and makes absolute for HTTP/2);
/// `None` for a target that has no path (an authority-form CONNECT).
pub fn origin_form(uri: &Uri) -> Option<Uri> {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.path_and_query().map(|_| uri.clone());
    }
    uri.path_and_query().cloned().map(Uri::from)
}

/// [`origin_form`] of a target that is not needed afterwards: one already
/// in origin form (the usual request line) is moved, not copied.
pub fn into_origin_form(uri: Uri) -> Option<Uri> {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.path_and_query().is_some().then_some(uri);
    }
    origin_form(&uri)
}

/// A copy of a request with no body and an idempotent method (RFC 9110
/// §9.2.2), which may be sent again when a kept-alive connection dies
/// under it; `None` for any other.
fn replayable<B: http_body::Body + Default>(req: &Req<B>) -> Option<Req<B>> {
    if !req.method().is_idempotent() || !req.body().is_end_stream() {
        return None;
    }
    let mut again = http::Request::new(B::default());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// Waits for `future` until `deadline`, if there is one.
async fn within<T>(
    deadline: Option<&Deadline>,
    future: impl Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    let Some(deadline) = deadline else {
        return future.await;
    };
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline.first));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        lazy_timer::poll_until(timer.as_mut(), cx, || deadline.due())
            .map(|()| Err(SendError::Timeout))
    })
    .await
}

/// [`within`] on a connection's kept timer.
async fn on_timer<F: Future>(
    timer: &mut LazyTimer,
    deadline: Option<&Deadline>,
    future: Pin<&mut F>,
) -> Result<F::Output, SendError> {
    match deadline {
        None => Ok(future.await),
        Some(deadline) => timer
            .within(deadline.first, || deadline.due(), future)
            .await
            .ok_or(SendError::Timeout),
    }
}

/// When an exchange that has no response head yet fails with
/// [`SendError::Timeout`]: `limit` after it began or, when its request
/// body goes out through an [`Upload`], `limit` after the body last went
/// forward (its end included). A long upload that keeps moving is not cut;
/// an upstream that stops taking it, or does not answer once it has it all,
/// is.
pub struct Deadline {
    /// The earliest it can be: `limit` after the exchange began.
    first: tokio::time::Instant,
    upload: Option<Arc<Upload>>,
}

impl Deadline {
    fn due(&self) -> tokio::time::Instant {
        match &self.upload {
            None => self.first,
            Some(upload) => upload.due(),
        }
    }
}

/// How far a request body has gone out, as its [`Uploading`] body tells.
pub struct Upload {
    began: tokio::time::Instant,
    limit: Duration,
    /// Milliseconds from `began` to the body's last step forward.
    moved_ms: std::sync::atomic::AtomicU64,
}

impl Upload {
    pub fn new(began: Instant, limit: Duration) -> Arc<Upload> {
        Arc::new(Upload {
            began: tokio::time::Instant::from_std(began),
            limit,
            moved_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn moved(&self) {
        let ms = self.began.elapsed().as_millis() as u64;
        self.moved_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn due(&self) -> tokio::time::Instant {
        let moved = self.moved_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.began + Duration::from_millis(moved) + self.limit
    }
}

pin_project_lite::pin_project! {
    /// A request body that tells its [`Upload`] each time the connection
    /// takes a frame of it, and when it ends.
    pub struct Uploading<B> {
        #[pin]
        inner: B,
        upload: Arc<Upload>,
    }
}

impl<B> Uploading<B> {
    pub fn new(inner: B, upload: Arc<Upload>) -> Self {
        Uploading { inner, upload }
    }
}

impl<B: http_body::Body> http_body::Body for Uploading<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_)) | None) = &polled {
            this.upload.moved();
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

/// An HTTP/1.1 connection and the timer its exchanges wait on.
struct H1Conn<B> {
    send: http1::SendRequest<B>,
    /// Times the response heads of the connection's exchanges, kept from
    /// one exchange to the next (see [`LazyTimer`]).
    head_timer: LazyTimer,
}

/// A connection just opened.
enum Opened<B> {
    H1(H1Conn<B>),
    H2(http2::SendRequest<B>),
}

enum Checkout<B> {
    /// With how long it had been idle.
    H1(H1Conn<B>, Duration),
    H2(http2::SendRequest<B>),
    /// Only HTTP/1.1 connections, for a request that needs HTTP/2.
    NotHttp2,
}

/// An HTTP/1 connection waiting for its response body to end.
struct Checkin<B> {
    conn: H1Conn<B>,
    list: Arc<Mutex<Idle<B>>>,
    settings: PoolSettings,
    /// When its last request went out.
    since: Instant,
}

impl<B: Send + 'static> Checkin<B> {
    /// Puts the connection back once it can take the next request. The
    /// response may end before the request's body has been sent (an
    /// upstream that answers an upload early): until then the connection
    /// is busy, and the next request must not queue behind it.
    fn put_back(mut self) {
        if self.settings.max_idle == 0 || self.conn.send.is_closed() {
            return;
        }
        if self.conn.send.is_ready() {
            return self.idle_now();
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                if self.conn.send.ready().await.is_ok() {
                    self.idle_now();
                }
            });
        }
    }

    /// Expired connections are closed at the next checkout, which looks
    /// at the list anyway.
    fn idle_now(self) {
        let mut idle = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if idle.h1.len() >= self.settings.max_idle {
            idle.h1.pop_front();
        }
        // The list stays in order for `expire`: a long request that started
        // before the last one checked in counts as idle since then.
        let since = idle
            .h1
            .back()
            .map_or(self.since, |(_, last)| self.since.max(*last));
        idle.h1.push_back((self.conn, since));
    }
}

/// An upstream's response body. Its connection is reused only if the body
/// was read to the end; dropped earlier, the connection closes.
pub struct PooledBody<B: Send + 'static> {
    inner: Incoming,
    checkin: Option<Checkin<B>>,
    /// The body ended (a chunked body never says so in `is_end_stream`).
    ended: bool,
}

impl<B: Send + 'static> PooledBody<B> {
    fn new(inner: Incoming, checkin: Option<Checkin<B>>) -> Self {
        PooledBody {
            inner,
            checkin,
            ended: false,
        }
    }
}

impl<B: Send + 'static> Drop for PooledBody<B> {
    fn drop(&mut self) {
        if let Some(checkin) = self.checkin.take() {
            if self.ended || http_body::Body::is_end_stream(&self.inner) {
                checkin.put_back();
            }
        }
    }
}

impl<B: Send + Unpin + 'static> http_body::Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // Trailers come last: hyper's server stops polling after them.
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.ended = true,
            _ => {}
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
