//! Accepts TCP connections on one address and serves HTTP/1.1 and HTTP/2
//! (prior knowledge, h2c) on each, with upgrades, until told to stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use arc_swap::ArcSwap;

use super::body_timeout::ReadTimeout;
use super::drain::{Drain, Entered};
use super::framing;
use super::limits::{ConnLimits, ConnState, Slot, TimedIo};
use super::router::AddressRouter;
use crate::accept_backoff::{accept_next, AcceptBackoff};
use crate::config::Limits;
use crate::message::body::Guarded;
use crate::message::{body, ConnInfo};

/// HTTP/2 streams a client may reset before its response starts (the
/// "rapid reset" attack, CVE-2023-44487), and streams teebox itself may
/// reset for a client's protocol errors, before the connection is closed.
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_ERROR_RESETS: usize = 1024;

/// hyper's HTTP/1.1 options, the same for a connection served by the
/// HTTP/1.1 builder and by the auto builder's HTTP/1.1 side.
macro_rules! http1_options {
    ($builder:expr) => {
        $builder
            .timer(TokioTimer::new())
            // TimedIo times request heads and idle connections; hyper's own
            // timer would also close idle keep-alive connections early.
            .header_read_timeout(None)
            // A response head and a small body go out in one write from one
            // buffer rather than a writev of queued buffers (cheaper for the
            // usual small response; a large body is copied once more on its
            // way). Upstream connections keep hyper's queue: request bodies
            // (uploads, copied POSTs) are not copied again.
            .writev(false)
    };
}

/// How connections on one address are served.
pub struct Builders {
    /// A plain connection that cannot be HTTP/2 (see [`sniff`]).
    http1: http1::Builder,
    /// Everything else: HTTP/1.1 or HTTP/2, told apart by the preface.
    auto: auto::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(limits: &Limits) -> Self {
        body::note_read_buffer(limits.read_buffer_at_most());
        let mut http1 = http1::Builder::new();
        http1_options!(http1)
            // The head's size is checked once it is parsed, so the read
            // buffer can be larger than a head may be.
            .max_buf_size(limits.read_buffer_at_most())
            .max_header_size(limits.max_header_size);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        // hyper-util's auto builder cannot check a parsed head's size: its
        // buffer limit is the head's limit, and it reads no more at once.
        http1_options!(auto.http1()).max_buf_size(limits.max_header_size);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_size as u32)
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_ERROR_RESETS);
        Builders { http1, auto }
    }
}

pub struct Listener {
    pub tcp: TcpListener,
    /// Swapped whole by a reload; each request reads it once.
    pub router: Arc<ArcSwap<AddressRouter>>,
    /// Swapped by a reload; a connection keeps the limits it was accepted
    /// under.
    pub limits: Arc<ArcSwap<ConnLimits>>,
}

impl Listener {
    /// Accepts until `stop` turns true; each connection is watched by the
    /// graceful shutdown's `drain`.
    pub async fn serve(self, mut stop: watch::Receiver<bool>, drain: Arc<Drain>) {
        let local = match self.tcp.local_addr() {
            Ok(addr) => addr,
            Err(err) => {
                tracing::error!(error = %err, "listener has no local address");
                return;
            }
        };
        let mut limits = self.limits.load_full();
        let mut builders = Arc::new(Builders::new(&limits.limits));
        let mut backoff = AcceptBackoff::default();
        loop {
            // At max_connections, wait for one to close before accepting.
            // (Every version of the limits counts the same connections.)
            let permit = tokio::select! {
                permit = limits.admit() => permit,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let Some((stream, peer)) =
                accept_next(&self.tcp, &mut backoff, &mut stop, ("listener", local)).await
            else {
                break;
            };
            // The limits in force when the connection came: a reload may
            // have replaced them while accept waited.
            let current = self.limits.load_full();
            if !Arc::ptr_eq(&current, &limits) {
                builders = Arc::new(Builders::new(&current.limits));
                limits = current;
            }
            let conn = ConnInfo::new(peer, local, false);
            serve_connection(
                stream,
                conn,
                Served {
                    router: self.router.clone(),
                    builders: builders.clone(),
                    limits: limits.clone(),
                    entered: drain.enter(),
                    permit,
                },
            );
        }
        tracing::debug!(%local, "stopped accepting");
    }
}

/// What serving one connection needs besides the socket.
struct Served {
    router: Arc<ArcSwap<AddressRouter>>,
    builders: Arc<Builders>,
    limits: Arc<ConnLimits>,
    /// Counts the connection as open for graceful shutdown.
    entered: Entered,
    /// Counts the connection against max_connections until it closes.
    permit: OwnedSemaphorePermit,
}

fn serve_connection(stream: TcpStream, conn: ConnInfo, served: Served) {
    let _ = stream.set_nodelay(true);
    let client = conn.client;
    crate::workers::Workers::get().serve(stream, client, move |stream| async move {
        let tls = served.router.load().tls.clone();
        match tls {
            None => {
                // The wait for the first bytes counts towards the head's
                // `read_header_timeout`: a client cannot have it twice.
                let waiting_since = Instant::now();
                let protocol = tokio::select! {
                    sniffed = sniff(&stream, served.limits.limits.read_header_timeout) => sniffed,
                    () = served.entered.stopping() => return,
                };
                if let Some(protocol) = protocol {
                    serve_http(stream, conn, served, protocol, waiting_since).await;
                }
            }
            Some(acceptor) => {
                // A client still silent or shaking hands has nothing to
                // finish: the server's stop ends the wait, as for plain ones.
                let tls = tokio::select! {
                    tls = starts_with_tls(&stream) => tls,
                    () = served.entered.stopping() => return,
                };
                if !tls {
                    refuse_plain_http(stream).await;
                    return;
                }
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
                    () = served.entered.stopping() => return,
                };
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        let conn = conn.over_tls();
                        // A client that agreed on HTTP/1.1 by ALPN speaks it;
                        // without ALPN it may still be HTTP/2.
                        let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                            Some(b"http/1.1") => Protocol::Http1,
                            _ => Protocol::Sniffed,
                        };
                        serve_http(tls_stream, conn, served, protocol, Instant::now()).await
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(client = %conn.client, error = %err, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(client = %conn.client, "TLS handshake timed out"),
                }
            }
        }
    });
}

/// A slow or silent TLS client is dropped after this long (slowloris).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which hyper connection serves a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1: the client's first bytes are no HTTP/2 preface, or it
    /// agreed on HTTP/1.1 by ALPN.
    Http1,
    /// HTTP/1.1 or HTTP/2, as hyper-util's auto builder tells from the
    /// preface. Every request's reads pass through its rewind buffer and
    /// state, which the plain HTTP/1.1 connection goes without.
    Sniffed,
}

/// The HTTP/2 preface starts `PRI `; no HTTP/1.1 request does (`PRI` is no
/// method a server has to accept).
const H2_PREFACE_START: &[u8] = super::h2_opening::PREFACE.split_at(4).0;

/// Waits for a plain connection's first bytes (without reading them) and
/// tells whether they can start HTTP/2 prior knowledge. `None`: the client
/// closed, or sent nothing within `read_header_timeout`.
async fn sniff(stream: &TcpStream, read_header_timeout: Duration) -> Option<Protocol> {
    let mut first = [0u8; H2_PREFACE_START.len()];
    let peeked = tokio::time::timeout(read_header_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(0)) | Err(_) => None,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "cannot read from the client");
            None
        }
        // A few bytes that agree with the preface so far: hyper-util reads
        // on until it knows.
        Ok(Ok(n)) if H2_PREFACE_START.starts_with(&first[..n]) => Some(Protocol::Sniffed),
        Ok(Ok(_)) => Some(Protocol::Http1),
    }
}

async fn serve_http<I>(
    io: I,
    conn: ConnInfo,
    served: Served,
    protocol: Protocol,
    waiting_since: Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        router,
        builders,
        limits,
        entered,
        permit,
    } = served;
    let state = Arc::new(ConnState::default());
    let slot = Slot::new(permit, entered.hold());
    let io = TimedIo::new(io, state.clone(), &limits.limits, waiting_since, slot);
    let client = conn.client;
    // One reference count per request for all of it, rather than one each.
    let shared = Arc::new(PerConnection {
        router,
        conn,
        state,
        read_body_timeout: limits.limits.read_body_timeout,
    });
    let service = service_fn(move |req: http::Request<Incoming>| {
        let in_flight = InFlight::begin(shared.clone());
        async move {
            let PerConnection {
                router,
                conn,
                state,
                read_body_timeout,
            } = &*in_flight.0;
            // One config for the whole request, even if a reload
            // lands meanwhile.
            let router = router.load_full();
            // The request goes straight into the router's future: a local
            // of its own would take room in this one.
            let response = match framing::conflicts(&req, state.cl_and_te_seen()) {
                true => framing::refusal(conn.client),
                false => {
                    router
                        .handle(
                            req.map(|b| timed_request_body(b, *read_body_timeout, state)),
                            conn,
                        )
                        .await
                }
            };
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                state.upgraded();
            }
            // The request counts as in flight until its body is sent.
            Ok::<_, Infallible>(response.map(|b| Guarded::new(b, in_flight)))
        }
    });
    let io = TokioIo::new(io);
    let served = match protocol {
        Protocol::Http1 => {
            let connection = builders.http1.serve_connection(io, service).with_upgrades();
            entered.watch(connection).await.map_err(Into::into)
        }
        Protocol::Sniffed => {
            let connection = builders.auto.serve_connection_with_upgrades(io, service);
            entered.watch(connection.into_owned()).await
        }
    };
    if let Err(err) = served {
        tracing::debug!(%client, error = %err, "connection ended with an error");
    }
}

/// A request being served, counted in its connection's state until its
/// response body is done; it also keeps what the request needs.
struct InFlight(Arc<PerConnection>);

impl InFlight {
    fn begin(shared: Arc<PerConnection>) -> Self {
        shared.state.begin();
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.end();
    }
}

/// What each request on a connection needs.
struct PerConnection {
    router: Arc<ArcSwap<AddressRouter>>,
    conn: ConnInfo,
    state: Arc<ConnState>,
    read_body_timeout: Duration,
}

/// The client's request body as handlers see it; one that is not over
/// before it starts is timed between reads (`read_body_timeout`), and
/// counts as in flight on its connection until it is finished.
fn timed_request_body(
    incoming: Incoming,
    read_body_timeout: Duration,
    state: &Arc<ConnState>,
) -> body::Body {
    // Most requests have no body: the empty one costs no allocation.
    if http_body::Body::is_end_stream(&incoming) {
        return body::empty();
    }
    let incoming = incoming.map_err(body::ClientBodyError);
    body::boxed(Guarded::new(
        ReadTimeout::new(incoming, read_body_timeout),
        state.reading_body(),
    ))
}

/// Whether the client's first byte is a TLS handshake record (0x16).
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    matches!(peeked, Ok(Ok(n)) if n > 0) && first[0] == 0x16
}

/// Plain HTTP on an HTTPS port gets a 400 that says so, as Go and Caddy do,
/// instead of an unreadable handshake failure.
async fn refuse_plain_http(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "Client sent an HTTP request to an HTTPS server.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
