//! `reverse_proxy "http://app-1:8080" ... { options }`: forwards the request
//! to an upstream and streams its response back.
//!
//! Bodies stream in both directions; nothing is buffered whole. Upstream
//! connections are pooled and kept alive (unless `keepalive #false`).
//! `Upgrade` requests for an allowed protocol (WebSocket, unless `upgrades`
//! says more) are tunnelled once the upstream answers 101; others go on as
//! plain requests.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{StatusCode, Version};
use hyper_util::rt::TokioIo;
use kdl::KdlNode;

use super::upstream_options as up;
use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Terminal, TerminalConfig,
};
use crate::config::options::{self as o, Spec, Table, Unset};
use crate::config::reader::Reader;
use crate::message::body::{self, Guarded};
use crate::message::header_ops::HeaderOps;
use crate::message::placeholders::RequestVars;
use crate::message::{ConnInfo, Request, Response};
use crate::upstream::hop_by_hop;
use crate::upstream::pool::{
    self, PoolSettings, PooledBody, SendError, Upload, Uploading, UpstreamPool,
};
use crate::upstream::tls_connector::UpstreamTls;
use crate::upstream::upgrades::Upgrades;
use crate::upstream::url::UpstreamUrl;

pub static KIND: HandlerKind = HandlerKind::Terminal {
    name: "reverse_proxy",
    decode,
    options: OPTIONS,
};

/// What `reverse_proxy` takes, in the order its diagnostics list it.
pub static OPTIONS: &Table = &[
    &UPSTREAMS,
    &LB_POLICY,
    &CONNECT_TIMEOUT,
    &TIMEOUT,
    &up::HEADER_UP,
    &HEADER_DOWN,
    &PRESERVE_HOST,
    &FORWARDED,
    &KEEPALIVE,
    &up::TLS_CA,
    &up::TLS_SERVER_NAME,
    &up::TLS_INSECURE_SKIP_VERIFY,
    &up::H2C,
    &up::UPGRADES,
];

static UPSTREAMS: Spec<o::Url> = Spec::arguments(
    "upstreams",
    o::Url {
        expects: "one or more upstream URLs, such as \"http://127.0.0.1:9000\"",
    },
    Unset::Required,
    "Where requests go; the policy picks one per request.",
);

static LB_POLICY: Spec<o::OneOf> = Spec::once(
    "lb_policy",
    o::OneOf(&["round_robin", "random", "least_conn", "first"]),
    Unset::Default("round_robin"),
    "Which upstream is tried first.",
);

static CONNECT_TIMEOUT: Spec<o::Duration> = Spec::once(
    "connect_timeout",
    o::Duration::POSITIVE,
    Unset::Default("5s"),
    "Could not connect in time: 502.",
);

static TIMEOUT: Spec<o::Duration> = Spec::once(
    "timeout",
    o::Duration::POSITIVE,
    Unset::Default("60s"),
    "No response head in time (connecting included): 504.",
);

static HEADER_DOWN: Spec<o::HeaderEdit> = Spec::many(
    "header_down",
    o::HeaderEdit,
    Unset::Means("none"),
    "Edits the response sent to the client, in file order.",
);

static PRESERVE_HOST: Spec<o::Flag> = Spec::once(
    "preserve_host",
    o::Flag,
    Unset::Default("#true"),
    "Send the client's Host; #false sends the upstream URL's.",
);

static FORWARDED: Spec<o::Flag> = Spec::once(
    "forwarded",
    o::Flag,
    Unset::Default("#true"),
    "Add X-Forwarded-For, -Proto, -Host and Forwarded.",
);

static KEEPALIVE: Spec<o::Flag> = Spec::once(
    "keepalive",
    o::Flag,
    Unset::Default("#true"),
    "Pool and reuse upstream connections.",
);

/// How long an upstream that refused a connection is passed over, as
/// nginx's `max_fails=1 fail_timeout=10s`.
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    LeastConn,
    First,
}

#[derive(Debug, Clone)]
pub struct ReverseProxyConfig {
    pub upstreams: Vec<UpstreamUrl>,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub header_up: HeaderOps,
    pub header_down: HeaderOps,
    pub preserve_host: bool,
    pub forwarded: bool,
    pub keepalive: bool,
    /// For `https://` upstreams.
    pub tls: UpstreamTls,
    /// Speak HTTP/2 without TLS (prior knowledge) to every upstream.
    pub h2c: bool,
    /// The `Upgrade` protocols tunnelled.
    pub upgrades: Upgrades,
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn TerminalConfig>> {
    r.no_properties(node);
    let upstreams = r
        .some_args(node, &UPSTREAMS.expects())
        .and_then(|args| UPSTREAMS.read_list(&args, r));
    let opts = o::read(node, OPTIONS, r);
    let lb_policy = opts.get(r, &LB_POLICY).map(|name| match name {
        "random" => LbPolicy::Random,
        "least_conn" => LbPolicy::LeastConn,
        "first" => LbPolicy::First,
        _ => LbPolicy::RoundRobin,
    });
    let connect_timeout = opts.get(r, &CONNECT_TIMEOUT);
    let timeout = opts.get(r, &TIMEOUT);
    let header_up = up::header_up(&opts, r);
    let header_down = HeaderOps::new(opts.every(r, &HEADER_DOWN));
    let preserve_host = opts.get(r, &PRESERVE_HOST);
    let forwarded = opts.get(r, &FORWARDED);
    let keepalive = opts.get(r, &KEEPALIVE);
    let tls = up::tls(&opts, r);
    let h2c = opts.get(r, &up::H2C);
    let upgrades = opts.get(r, &up::UPGRADES);
    Some(Box::new(ReverseProxyConfig {
        upstreams: upstreams?,
        lb_policy: lb_policy?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        header_up,
        header_down,
        preserve_host: preserve_host?,
        forwarded: forwarded?,
        keepalive: keepalive?,
        tls: tls?,
        h2c: h2c?,
        upgrades: upgrades?,
    }))
}

impl HandlerConfig for ReverseProxyConfig {}

impl TerminalConfig for ReverseProxyConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Terminal>, BuildError> {
        Ok(Arc::new(ReverseProxy::new(self.clone(), cx)?))
    }
}

/// One upstream and what the balancer knows of it.
struct Upstream {
    url: UpstreamUrl,
    /// Requests in flight, for `least_conn`.
    active: crate::counters::Gauge,
    /// Milliseconds since `ReverseProxy::epoch` until which it is passed over.
    down_until_ms: AtomicU64,
    /// Time to the response head.
    latency: Arc<crate::counters::Histogram>,
    /// Its kept-alive connections, per serving worker.
    pool: UpstreamPool<body::Body>,
    /// The `Host` a request without one gets: the upstream's authority.
    host: Option<HeaderValue>,
}

pub struct ReverseProxy {
    config: ReverseProxyConfig,
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
    epoch: Instant,
    route: String,
}

/// The request as it goes upstream, before an upstream is picked.
struct Prepared {
    parts: http::request::Parts,
    /// Taken by the first attempt.
    body: Option<body::Body>,
    /// An `Upgrade` request (its `Upgrade` header is back in `parts`).
    upgrade: bool,
    /// The client takes trailers (`TE: trailers`): likely gRPC, which
    /// needs HTTP/2. Only read when the exchange fails, for a hint.
    accepts_trailers: bool,
    /// For placeholders in `header_up` / `header_down`, when they have
    /// any. Boxed: rare, and every request's future would hold its room.
    vars: Option<Box<RequestVars>>,
}

/// Why no upstream answered.
enum Failure {
    /// Nothing could be reached, or the upstream broke the exchange: 502.
    BadGateway,
    /// No response head within `timeout`: 504.
    Timeout,
}

impl ReverseProxy {
    fn new(config: ReverseProxyConfig, cx: &BuildContext) -> Result<Self, BuildError> {
        let connector = config
            .tls
            .connector(config.connect_timeout, false)
            .map_err(BuildError)?;
        let settings = PoolSettings {
            keepalive: config.keepalive,
            h2c: config.h2c,
            ..PoolSettings::default()
        };
        let workers = crate::workers::Workers::get().count();
        let upstreams = config
            .upstreams
            .iter()
            .map(|url| {
                Arc::new(Upstream {
                    url: url.clone(),
                    active: crate::counters::Gauge::default(),
                    down_until_ms: AtomicU64::new(0),
                    latency: cx.metrics.upstream(&cx.route_key, &url.to_string()),
                    pool: UpstreamPool::new(url.origin(), connector.clone(), settings, workers),
                    host: HeaderValue::from_str(url.authority.as_str()).ok(),
                })
            })
            .collect();
        Ok(ReverseProxy {
            config,
            upstreams,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            route: cx.route.clone(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request with a body has it report its progress, so that `timeout`
    /// counts from its last step forward rather than cutting a long upload.
    fn track_upload(&self, req: Request, started: Instant) -> (Request, Option<Arc<Upload>>) {
        if http_body::Body::is_end_stream(req.body()) {
            return (req, None);
        }
        let upload = Upload::new(started, self.config.timeout);
        let req = req.map(|b| body::boxed(Uploading::new(b, upload.clone())));
        (req, Some(upload))
    }

    /// Requests go to `upstream` as HTTP/1.1 whatever they are: a plain
    /// `http://` upstream without `h2c`. (Over `https://`, ALPN decides.)
    fn speaks_http1_to(&self, upstream: &Upstream) -> bool {
        !self.config.h2c && upstream.url.scheme == http::uri::Scheme::HTTP
    }

    /// Upstreams in the order to try them: the policy's pick first, those
    /// recently refusing connections last.
    fn candidates(&self) -> Box<[Arc<Upstream>]> {
        let n = self.upstreams.len();
        let start = match self.config.lb_policy {
            LbPolicy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            LbPolicy::Random => rand::random_range(0..n),
            LbPolicy::First | LbPolicy::LeastConn => 0,
        };
        let mut order: Vec<Arc<Upstream>> = (0..n)
            .map(|i| self.upstreams[(start + i) % n].clone())
            .collect();
        if self.config.lb_policy == LbPolicy::LeastConn {
            order.sort_by_key(|u| u.active.get());
        }
        let now = self.now_ms();
        // A stable sort keeps the policy's order among the healthy ones.
        order.sort_by_key(|u| u.down_until_ms.load(Ordering::Relaxed) > now);
        order.into_boxed_slice()
    }

    /// The request as the upstream should see it (headers, version), minus
    /// the URI's authority, which depends on the upstream picked.
    fn prepare(&self, req: Request, conn: &ConnInfo) -> Prepared {
        let (mut parts, body) = req.into_parts();
        // Placeholders describe the request as the client sent it, so the
        // values are taken before the headers are changed.
        let vars = (self.config.header_up.needs_vars() || self.config.header_down.needs_vars())
            .then(|| Box::new(RequestVars::of(&mut parts, conn)));
        let forwarding = crate::upstream::upstream_headers(
            &mut parts.headers,
            &parts.uri,
            conn,
            self.config.forwarded,
            self.config.preserve_host,
        );
        let upgrade = match (parts.version, forwarding.upgrade) {
            (Version::HTTP_11, Some(offered)) => {
                let allowed = self.config.upgrades.offer(&offered);
                if allowed.is_none() {
                    tracing::debug!(route = %self.route, upgrade = ?offered, "upgrade not allowed: passed on as a plain request");
                }
                allowed
            }
            _ => None,
        };
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        self.config
            .header_up
            .apply(&mut parts.headers, vars.as_deref());
        parts.version = Version::HTTP_11;
        Prepared {
            parts,
            body: Some(body),
            upgrade: upgrade.is_some(),
            accepts_trailers: forwarding.accepts_trailers,
            vars,
        }
    }

    /// Sends the prepared request to the upstreams in turn until one
    /// answers. The future is boxed for every request, so it holds only what
    /// it needs across the wait: an `async` block that uses `prepared` in
    /// place (an `async fn` would hold a second copy), and each attempt's
    /// request made in a block of its own.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice"
    )]
    fn forward(
        &self,
        mut prepared: Prepared,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> impl Future<Output = Response> + Send + '_ {
        async move {
            // Without a body the request can be sent again, so an upstream
            // that refuses the connection is skipped for the next one.
            let replayable = prepared
                .body
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream);
            let mut failure = Failure::BadGateway;
            // One upstream needs no ordering (nor the allocation it costs).
            let order = (self.upstreams.len() > 1).then(|| self.candidates());
            // Counted by hand, and the upstream reached through `active`
            // after the wait: fewer locals held across it.
            let mut attempt = 0;
            while attempt < self.upstreams.len() {
                let upstream = match &order {
                    Some(order) => &order[attempt],
                    None => &self.upstreams[attempt],
                };
                attempt += 1;
                let is_last = attempt == self.upstreams.len();
                let active = ActiveGuard::new(upstream);
                // The request is moved into the exchange within this match,
                // so the future keeps no room for it.
                let exchange = match self.attempt(&mut prepared, upstream, replayable, is_last) {
                    Some(Ok(req)) => {
                        let (req, upload) = self.track_upload(req, active.started);
                        upstream
                            .pool
                            .send_within(req, active.started, self.config.timeout, upload)
                    }
                    Some(Err(())) => return error_response(StatusCode::BAD_REQUEST),
                    None => break,
                };
                let sent = exchange.await;
                let upstream = &active.upstream;
                match sent {
                    Ok(response) => {
                        upstream.latency.record(active.started.elapsed());
                        return self.respond(
                            response,
                            active,
                            client_upgrade,
                            prepared.vars.as_deref(),
                        );
                    }
                    Err(SendError::Timeout) => {
                        tracing::warn!(route = %self.route, upstream = %upstream.url, timeout = ?self.config.timeout, "upstream did not answer in time");
                        failure = Failure::Timeout;
                        break;
                    }
                    Err(err) if err.is_connect() => {
                        upstream.down_until_ms.store(
                            self.now_ms() + FAIL_TIMEOUT.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                        tracing::warn!(route = %self.route, upstream = %upstream.url, error = %crate::message::error_chain(&err), "upstream unreachable");
                        failure = Failure::BadGateway;
                    }
                    Err(err) if body::is_too_large(&err) => {
                        return super::request_body::too_large();
                    }
                    Err(err) if body::is_read_timeout(&err) => {
                        let mut response = error_response(StatusCode::REQUEST_TIMEOUT);
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return response;
                    }
                    Err(err) if body::is_client_body_error(&err) => {
                        tracing::debug!(route = %self.route, error = %crate::message::error_chain(&err), "the client's body failed");
                        let mut response = error_response(StatusCode::BAD_REQUEST);
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return response;
                    }
                    Err(err) => {
                        let error = crate::message::error_chain(&err);
                        match prepared.accepts_trailers && self.speaks_http1_to(upstream) {
                            // What an HTTP/2-only server (gRPC) does to an
                            // HTTP/1.1 request rarely says so itself.
                            true => {
                                tracing::warn!(route = %self.route, upstream = %upstream.url, %error, hint = "the request takes trailers (gRPC?): if the upstream speaks only HTTP/2, set `h2c #true`", "upstream failed before answering")
                            }
                            false => {
                                tracing::warn!(route = %self.route, upstream = %upstream.url, %error, "upstream failed before answering")
                            }
                        }
                        failure = Failure::BadGateway;
                        break;
                    }
                }
            }
            let mut response = match failure {
                Failure::BadGateway => error_response(StatusCode::BAD_GATEWAY),
                Failure::Timeout => error_response(StatusCode::GATEWAY_TIMEOUT),
            };
            // A mirror's `primary_status` must not take this for an answer.
            response
                .extensions_mut()
                .insert(crate::message::NoUpstreamAnswer);
            response
        }
    }

    /// The request for one attempt on `upstream`. A `replayable` request
    /// (no body) may go to the next upstream too, so unless this is the
    /// last, its headers are copied. `None` when the body went with an
    /// earlier attempt; `Err` for a target without a path.
    fn attempt(
        &self,
        prepared: &mut Prepared,
        upstream: &Upstream,
        replayable: bool,
        is_last: bool,
    ) -> Option<Result<Request, ()>> {
        let body = match prepared.body.take() {
            Some(body) => body,
            None if replayable => body::empty(),
            None => return None,
        };
        let keep_for_retry = replayable && !is_last;
        let uri = match keep_for_retry {
            true => pool::origin_form(&prepared.parts.uri),
            false => pool::into_origin_form(std::mem::take(&mut prepared.parts.uri)),
        };
        let Some(uri) = uri else {
            return Some(Err(()));
        };
        let headers = match keep_for_retry {
            true => prepared.parts.headers.clone(),
            false => std::mem::take(&mut prepared.parts.headers),
        };
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = prepared.parts.method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = prepared.parts.version;
        *upstream_req.headers_mut() = headers;
        // Without preserve_host (or a client Host), the upstream's own
        // name, unless header_up set one.
        if let Some(host) = &upstream.host {
            if !upstream_req.headers().contains_key(header::HOST) {
                upstream_req
                    .headers_mut()
                    .insert(header::HOST, host.clone());
            }
        }
        Some(Ok(upstream_req))
    }

    fn respond(
        &self,
        mut response: http::Response<PooledBody<body::Body>>,
        guard: ActiveGuard,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        vars: Option<&RequestVars>,
    ) -> Response {
        let mut guard = Some(guard);
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade_to = switching
            .then(|| response.headers().get(header::UPGRADE).cloned())
            .flatten();
        if switching {
            // Only what was offered was allowed, so a switch to anything
            // else is the upstream's doing, and must not open a tunnel.
            let allowed = upgrade_to
                .as_ref()
                .is_some_and(|p| self.config.upgrades.allows(p));
            if let (Some(client_upgrade), true) = (client_upgrade, allowed) {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let route = self.route.clone();
                let guard = guard.take();
                tokio::spawn(async move {
                    let _guard = guard;
                    tunnel(client_upgrade, upstream_upgrade, &route).await;
                });
            } else {
                tracing::warn!(route = %self.route, upgrade = ?upgrade_to, "upstream switched protocols without being asked, or to one not offered");
                return error_response(StatusCode::BAD_GATEWAY);
            }
        }
        let (mut parts, incoming) = response.into_parts();
        hop_by_hop::strip(&mut parts.headers);
        if let Some(protocol) = upgrade_to {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
        }
        self.config.header_down.apply(&mut parts.headers, vars);
        let body = if switching {
            body::empty()
        } else {
            body::boxed(Guarded::new(incoming, guard))
        };
        Response::from_parts(parts, body)
    }
}

impl Terminal for ReverseProxy {
    fn serve<'a>(&'a self, req: Request, conn: &'a ConnInfo) -> BoxFuture<'a, Response> {
        let mut prepared = self.prepare(req, conn);
        // Only an upgrade request has a connection to hand over (and the
        // lookup is not free).
        let client_upgrade = match prepared.upgrade {
            true => prepared
                .parts
                .extensions
                .remove::<hyper::upgrade::OnUpgrade>(),
            false => None,
        };
        Box::pin(self.forward(prepared, client_upgrade))
    }
}

/// Keeps an upstream's in-flight count up until the response is done, and
/// when the request went to it.
struct ActiveGuard {
    upstream: Arc<Upstream>,
    started: Instant,
}

impl ActiveGuard {
    fn new(upstream: &Arc<Upstream>) -> Self {
        upstream.active.inc();
        ActiveGuard {
            upstream: upstream.clone(),
            started: Instant::now(),
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.upstream.active.dec();
    }
}

async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: &str,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(%route, error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%route, error = %err, "upgraded connection ended with an error");
    }
}

fn error_response(status: StatusCode) -> Response {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
