//! A recording backend: an HTTP/1.1 server (hyper) on 127.0.0.1:0 that keeps
//! every request it receives (method, URI, version, headers, whole body) and
//! answers with a configurable [`Reply`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use teebox::message::{body, Body};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TIMEOUT;

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// In the order hyper parsed them (per name; values of one name stay
    /// together).
    pub headers: HeaderMap,
    /// The whole body, or as much as arrived before `body_error`.
    pub body: Bytes,
    /// Set when reading the body failed (the sender gave up mid-body).
    pub body_error: Option<String>,
    /// Trailer fields that followed a chunked body.
    pub trailers: Option<HeaderMap>,
    /// Which accepted TCP connection (0, 1, ...) carried the request.
    pub conn: usize,
    pub peer: SocketAddr,
}

impl Recorded {
    /// The value of a header as text, if present (the first, if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }

    /// Every header as `(name, value)` text pairs, sorted: for comparing the
    /// whole set regardless of order.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        header_pairs(&self.headers)
    }

    /// The path and query as received.
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("", |p| p.as_str())
    }
}

/// Every header as sorted `(name, value)` text pairs.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

/// A latch a test opens to release the replies that wait on it.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until opened; gives up (and lets the reply go) after
    /// [`TIMEOUT`], so a test that forgets to open it still ends.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(TIMEOUT, rx.wait_for(|open| *open)).await;
    }
}

/// What the backend answers.
#[derive(Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Stream the body in pieces of this size with no `Content-Length`
    /// (hyper then sends it chunked).
    pub chunk_size: Option<usize>,
    /// Pause between streamed pieces.
    pub chunk_delay: Duration,
    /// Pause before the response head.
    pub delay: Duration,
    /// Hold the response head until this gate opens.
    pub gate: Option<Gate>,
}

impl Reply {
    /// 200 with this body (and its `Content-Length`).
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: body.into(),
            chunk_size: None,
            chunk_delay: Duration::ZERO,
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).expect("valid status");
        self
    }

    /// Adds a header line (several lines of one name are kept).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        ));
        self
    }

    /// Streams the body in `size`-byte pieces, chunked.
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk_size = Some(size.max(1));
        self
    }

    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn hold(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    async fn into_response(self) -> http::Response<Body> {
        if let Some(gate) = &self.gate {
            gate.wait().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let body = match self.chunk_size {
            None => body::full(self.body),
            Some(size) => {
                let pieces: Vec<Bytes> = self
                    .body
                    .chunks(size)
                    .map(|c| self.body.slice_ref(c))
                    .collect();
                let delay = self.chunk_delay;
                let stream = futures_util::stream::iter(pieces).then(move |piece| async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(Frame::data(piece))
                });
                body::boxed(StreamBody::new(stream))
            }
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// The number of recorded requests, for waiting.
    count: watch::Sender<usize>,
    connections: AtomicUsize,
    /// Requests whose response has not been handed to hyper yet.
    in_flight: AtomicUsize,
    responder: Mutex<Responder>,
}

/// A recording backend; stops accepting when dropped.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Backend {
    /// A backend that answers every request with `reply`.
    pub async fn start(reply: Reply) -> Self {
        Self::with(move |_| reply.clone()).await
    }

    /// A backend that answers `200 ok`.
    pub async fn ok() -> Self {
        Self::start(Reply::ok("ok")).await
    }

    /// A backend whose answer depends on the request.
    pub async fn with(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            responder: Mutex::new(Arc::new(responder)),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Backend {
            addr,
            shared,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as an upstream in a site file.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as the backend's own Host.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Answers every later request with `reply`.
    pub fn set_reply(&self, reply: Reply) {
        *self.shared.responder.lock().unwrap() = Arc::new(move |_| reply.clone());
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// The only request recorded; panics unless there is exactly one.
    pub fn only(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one request at the backend, got {requests:#?}"
        );
        requests.into_iter().next().unwrap()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests received whose response head has not gone out yet.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have been recorded and returns them
    /// all; panics after [`TIMEOUT`].
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        self.wait_for_within(n, TIMEOUT).await
    }

    /// Waits until at least `n` requests have been recorded and returns them
    /// all; panics after `limit`.
    pub async fn wait_for_within(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        let mut rx = self.shared.count.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|count| *count >= n))
            .await
            .is_err()
        {
            panic!(
                "backend {} got {} request(s) within {limit:?}, expected {n}: {:#?}",
                self.addr,
                self.count(),
                self.requests()
            );
        }
        self.requests()
    }

    /// Waits for `quiet` and then asserts that exactly `n` requests have
    /// been recorded: for checking that nothing *more* arrives (a bounded
    /// observation window, not a timing assertion).
    pub async fn assert_stays_at(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        assert_eq!(
            self.count(),
            n,
            "backend {} got unexpected requests: {:#?}",
            self.addr,
            self.requests()
        );
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors, say: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, conn, peer, shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    req: http::Request<Incoming>,
    conn: usize,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> http::Response<Body> {
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    let (parts, mut incoming) = req.into_parts();
    let mut body = Vec::new();
    let mut body_error = None;
    let mut trailers = None;
    loop {
        match tokio::time::timeout(TIMEOUT, incoming.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
                if let Some(fields) = frame.trailers_ref() {
                    trailers = Some(fields.clone());
                }
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                body_error = Some(err.to_string());
                break;
            }
            Err(_) => {
                body_error = Some(format!("body not finished within {TIMEOUT:?}"));
                break;
            }
        }
    }
    let recorded = Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::from(body),
        body_error,
        trailers,
        conn,
        peer,
    };
    let responder = shared.responder.lock().unwrap().clone();
    let reply = responder(&recorded);
    shared.requests.lock().unwrap().push(recorded);
    shared.count.send_modify(|n| *n += 1);
    let response = reply.into_response().await;
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}
