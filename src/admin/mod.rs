//! The admin endpoint: runtime mirror targets, metrics and health, on its
//! own listener, apart from the traffic listeners.
//!
//! `PUT|GET|DELETE /targets` follows trafficmirror's usage (repeated `url`
//! parameters, plain text lists); `GET /metrics` is Prometheus text;
//! `GET /healthz` answers 200 while serving. With users configured, every
//! request needs HTTP Basic credentials (`/healthz` too, unless
//! `healthz_public`).

pub mod auth;
pub mod control;
mod guard;
pub mod prometheus;
pub mod state;
mod targets;
pub mod throttle;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::AdminConfig;
use crate::handlers::Published;
use auth::Login;
pub use control::{AdminControl, Applied, Prepared, Settings};
use prometheus::LoginCounts;

pub type AdminResponse = http::Response<Full<Bytes>>;

/// The most connections the endpoint serves at once: each holds a file
/// descriptor the proxy needs too, and may buffer a head of up to
/// 512 KiB. Past it, clients wait in the backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its first request head, and over
/// HTTP/1.1 each later one (time idle between requests included).
const READ_HEADER_TIMEOUT: Duration = guard::READ_TIMEOUT;

/// Ends once [`READ_HEADER_TIMEOUT`] has passed with no request started
/// on the connection; never, once one has.
async fn first_request_late(started: &AtomicBool) {
    tokio::time::sleep(READ_HEADER_TIMEOUT).await;
    if started.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Re-reads the site file and swaps it in, as the server that runs this
/// endpoint does it.
pub trait Reload: Send + Sync {
    fn reload(&self) -> crate::handlers::BoxFuture<'_, Result<Reloaded, String>>;
}

/// A reload that was carried out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Warnings the new file has (`teebox validate` shows them).
    pub warnings: usize,
    /// What the file changes that needs a restart, one line each.
    pub not_applied: Vec<String>,
    /// Runtime targets the reloaded `allow_target` refuses, which no
    /// longer receive copies: one line each, with why.
    pub dropped: Vec<String>,
}

pub struct Admin {
    reload: Arc<dyn Reload>,
    throttle: throttle::Throttle,
    logins: LoginCounts,
    metrics: crate::counters::MetricsRegistry,
    settings: Arc<ArcSwap<Settings>>,
    fixed: control::Fixed,
    mirrors: Published,
    state: Option<state::StateFile>,
}

/// Why the admin endpoint could not start, or take a reloaded admin block.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin endpoint: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin endpoint: {0}")]
    Users(String),
    #[error("admin endpoint: {0}")]
    State(String),
}

impl Admin {
    pub fn new(
        config: &AdminConfig,
        base_dir: &std::path::Path,
        mirrors: Published,
        metrics: crate::counters::MetricsRegistry,
        reload: Arc<dyn Reload>,
    ) -> Result<Admin, AdminError> {
        let settings = Settings::load(config)?;
        let fixed = control::Fixed::of(config, base_dir);
        let state = fixed.state_file.clone().map(state::StateFile::new);
        state::restore(&config.saved_state, &mirrors, &settings.allow);
        Ok(Admin {
            reload,
            throttle: throttle::Throttle::default(),
            logins: LoginCounts::default(),
            metrics,
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            fixed,
            mirrors,
            state,
        })
    }

    /// The handle that applies the admin block of a reloaded site file.
    pub fn control(&self) -> AdminControl {
        AdminControl::new(self.settings.clone(), self.fixed.clone())
    }

    /// Binds the admin address and serves until `stop` turns true.
    pub async fn start(
        self,
        addr: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) -> Result<SocketAddr, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        tracing::info!(address = %local, "admin endpoint listening");
        let admin = Arc::new(self);
        let origins = Arc::new(guard::Origins::new(local));
        tokio::spawn(async move {
            use crate::accept_backoff::{accept_next, AcceptBackoff};
            let mut backoff = AcceptBackoff::default();
            let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            loop {
                // At the cap, clients wait in the kernel's backlog.
                let permit = tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    _ = stop.wait_for(|stop| *stop) => return,
                };
                let Some((stream, peer)) = accept_next(
                    &listener,
                    &mut backoff,
                    &mut stop,
                    ("admin endpoint", local),
                )
                .await
                else {
                    return;
                };
                let admin = admin.clone();
                let origins = origins.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let started = Arc::new(AtomicBool::new(false));
                    let service = service_fn({
                        let started = started.clone();
                        move |req: http::Request<Incoming>| {
                            started.store(true, Ordering::Relaxed);
                            let admin = admin.clone();
                            let origins = origins.clone();
                            async move {
                                Ok::<_, Infallible>(admin.handle(req, peer.ip(), &origins).await)
                            }
                        }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(READ_HEADER_TIMEOUT)
                        .max_buf_size(guard::MAX_HEAD_BUFFER);
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    // hyper-util waits for the bytes that tell HTTP/1.1 from
                    // HTTP/2 without a timer, and HTTP/2 has no head timer:
                    // the first request must start in time either way.
                    let served = async {
                        tokio::select! {
                            _ = connection => {}
                            () = first_request_late(&started) => {
                                tracing::debug!(client = %peer, "admin endpoint: no request head in time; closing");
                            }
                        }
                    };
                    // Keep-alive included: no connection holds a slot for ever.
                    let _ = tokio::time::timeout(guard::CONNECTION_LIFETIME, served).await;
                });
            }
        });
        Ok(local)
    }

    async fn reload_for(&self, user: Option<&str>, client: IpAddr) -> Result<Reloaded, String> {
        tracing::info!(user = user.unwrap_or("-"), %client, action = "reload", "admin change");
        self.reload.reload().await
    }

    async fn handle(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        client: IpAddr,
        origins: &guard::Origins,
    ) -> AdminResponse {
        if guard::uri_too_long(req.uri()) {
            return text(
                StatusCode::URI_TOO_LONG,
                format!(
                    "the admin endpoint takes URIs of at most {} KiB\n",
                    guard::MAX_URI / 1024
                ),
            );
        }
        if let Err(why) = origins.check(req.method(), req.headers()) {
            tracing::warn!(%client, method = %req.method(), path = req.uri().path(), "admin call refused: {}", why.trim_end());
            return text(StatusCode::FORBIDDEN, why);
        }
        if let Some(status) = guard::body_too_large(req.headers()) {
            return body_refused(status);
        }
        // One load per request: it is answered wholly under the settings
        // it started with, even if a reload swaps them meanwhile.
        let settings = self.settings.load_full();
        let public = settings.healthz_public
            && req.uri().path() == "/healthz"
            && matches!(*req.method(), Method::GET | Method::HEAD);
        let mut user = None;
        if !settings.users.is_empty() && !public {
            match self.authenticate(&settings, req.headers(), client).await {
                Ok(name) => user = Some(name),
                Err(response) => return response,
            }
        }
        let (parts, body) = req.into_parts();
        if let Err(status) = guard::read_body(body).await {
            return body_refused(status);
        }
        self.dispatch(&parts, &settings, user.as_deref(), client)
            .await
    }

    /// The user the request's credentials name: remembered, or checked
    /// with bcrypt in the client's turn. `Err` is the answer to give.
    async fn authenticate(
        &self,
        settings: &Arc<Settings>,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<String, AdminResponse> {
        let Some(authorization) = headers.get(header::AUTHORIZATION) else {
            tracing::debug!(%client, "admin call without credentials");
            return Err(challenge());
        };
        if let Some(name) = settings.remembered.user(authorization.as_bytes()) {
            LoginCounts::count(&self.logins.cached);
            return Ok(name);
        }
        let turn = match self.throttle.reserve(client) {
            Ok(turn) => turn,
            Err(busy) => {
                LoginCounts::count(&self.logins.throttled);
                tracing::warn!(%client, "admin login refused: too many logins waiting");
                return Err(too_many_logins(busy));
            }
        };
        let Some(slot) = turn.begin().await else {
            return Err(challenge());
        };
        let check = settings.clone();
        let owned = headers.clone();
        // bcrypt is slow on purpose: keep it off the async threads, and
        // hold the check slot until it is done, even if the client leaves.
        let login = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            check.users.login(&owned)
        })
        .await
        .unwrap_or(Login::Refused);
        match login {
            Login::User(name) => {
                turn.succeeded();
                LoginCounts::count(&self.logins.verified);
                settings
                    .remembered
                    .remember(authorization.as_bytes(), &name);
                Ok(name)
            }
            Login::Anonymous | Login::Refused => {
                turn.failed();
                LoginCounts::count(&self.logins.refused);
                tracing::warn!(%client, "admin login failed");
                Err(challenge())
            }
        }
    }

    async fn dispatch(
        &self,
        req: &http::request::Parts,
        settings: &Settings,
        user: Option<&str>,
        client: IpAddr,
    ) -> AdminResponse {
        let query = req.uri.query().unwrap_or("");
        match (req.uri.path(), &req.method) {
            ("/healthz", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok\n"),
            ("/metrics", &Method::GET | &Method::HEAD) => {
                let mut body = prometheus::render(&self.mirrors, &self.metrics);
                self.logins.render(&mut body, self.throttle.waiting());
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            ("/targets", method) => {
                let wants_json = req
                    .headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/json"));
                let who = targets::Caller {
                    user: user.unwrap_or("-"),
                    client,
                };
                let (response, changed) = targets::handle(
                    &self.mirrors,
                    &settings.allow,
                    method,
                    query,
                    wants_json,
                    &who,
                )
                .await;
                match (&self.state, changed) {
                    (Some(state), true) => match state.save(&self.mirrors) {
                        Ok(()) => response,
                        Err(err) => {
                            tracing::error!(error = %err, "cannot save state_file");
                            text(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!("the change is live but could not be saved to state_file: {err}\n"),
                            )
                        }
                    },
                    _ => response,
                }
            }
            ("/reload", &Method::POST) => match self.reload_for(user, client).await {
                Ok(reloaded) => text(StatusCode::OK, reload_answer(&reloaded)),
                // The reload logs its own outcome and diagnostics.
                Err(why) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload refused; the running config stays\n{why}"),
                ),
            },
            ("/reload", _) => not_allowed("POST"),
            ("/healthz" | "/metrics", _) => not_allowed("GET, HEAD"),
            _ => text(
                StatusCode::NOT_FOUND,
                "no such admin resource; try /targets, /metrics or /healthz\n",
            ),
        }
    }
}

/// `reloaded`, the warnings, and a line per change that waits for a restart.
fn reload_answer(reloaded: &Reloaded) -> String {
    let mut out = match reloaded.warnings {
        0 => "reloaded\n".to_string(),
        n => format!("reloaded, with {n} warning(s); see teebox validate\n"),
    };
    for item in &reloaded.not_applied {
        out.push_str(&format!("not applied: {item}\n"));
    }
    for item in &reloaded.dropped {
        out.push_str(&format!("dropped: {item}\n"));
    }
    out
}

fn challenge() -> AdminResponse {
    let mut response = text(StatusCode::UNAUTHORIZED, "credentials required\n");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"teebox admin\", charset=\"UTF-8\""),
    );
    response
}

fn too_many_logins(busy: throttle::Busy) -> AdminResponse {
    let mut response = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many logins waiting from this address (at most {}); try again later\n",
            throttle::MAX_WAITING
        ),
    );
    let seconds = busy.retry_after.as_secs() + u64::from(busy.retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

fn body_refused(status: StatusCode) -> AdminResponse {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => text(
            status,
            format!(
                "admin calls take no body over {} KiB\n",
                guard::MAX_BODY / 1024
            ),
        ),
        _ => text(status, "the request body could not be read\n"),
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut response = http::Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn not_allowed(allow: &'static str) -> AdminResponse {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
