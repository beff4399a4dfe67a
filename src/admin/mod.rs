//! The admin endpoint: runtime mirror targets, metrics and health, on its
//! own listener, apart from the traffic listeners.
//!
//! `PUT|GET|DELETE /targets` follows trafficmirror's usage (repeated `url`
//! parameters, plain text lists); `GET /metrics` is Prometheus text;
//! `GET /healthz` answers 200 while serving. With users configured, every
//! request needs HTTP Basic credentials.

pub mod auth;
mod guard;
pub mod metrics;
pub mod state;
mod targets;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AdminConfig;
use crate::mirror::MirrorRegistry;
use auth::{Login, Users};
use targets::TargetPatterns;

pub type AdminResponse = http::Response<Full<Bytes>>;

/// Re-reads the site file and swaps it in, as the server that runs this
/// endpoint does it. `Ok` holds the number of warnings.
pub trait Reload: Send + Sync {
    fn reload(&self) -> crate::handlers::BoxFuture<'_, Result<usize, String>>;
}

pub struct Admin {
    reload: Arc<dyn Reload>,
    throttle: guard::Throttle,
    metrics: crate::metrics::MetricsRegistry,
    users: Users,
    allow: TargetPatterns,
    mirrors: MirrorRegistry,
    state: Option<state::StateFile>,
}

/// Why the admin endpoint could not start.
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
        mirrors: MirrorRegistry,
        metrics: crate::metrics::MetricsRegistry,
        reload: Arc<dyn Reload>,
    ) -> Result<Admin, AdminError> {
        let file = config.users_file.as_ref().map(|f| base_dir.join(f));
        let users = Users::load(&config.users, file.as_deref()).map_err(AdminError::Users)?;
        let state = config
            .state_file
            .as_ref()
            .map(|f| state::StateFile::new(base_dir.join(f)));
        if let Some(state) = &state {
            state.restore(&mirrors).map_err(AdminError::State)?;
        }
        Ok(Admin {
            reload,
            throttle: guard::Throttle::default(),
            metrics,
            users,
            allow: TargetPatterns::new(&config.allow_target),
            mirrors,
            state,
        })
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
            use crate::server::accept_backoff::{only_this_connection, AcceptBackoff};
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.wait_for(|stop| *stop) => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => {
                        backoff.succeeded(tokio::time::Instant::now());
                        accepted
                    }
                    Err(err) if only_this_connection(&err) => continue,
                    Err(err) => {
                        // Out of file descriptors, as a listener's loop.
                        let failed = backoff.failed(tokio::time::Instant::now());
                        if let Some(unlogged) = failed.log {
                            tracing::warn!(address = %local, error = %err, retry_in = ?failed.wait, unlogged, "admin endpoint: accept failed");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(failed.wait) => continue,
                            _ = stop.wait_for(|stop| *stop) => return,
                        }
                    }
                };
                let admin = admin.clone();
                let origins = origins.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let admin = admin.clone();
                        let origins = origins.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req, peer.ip(), &origins).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(local)
    }

    async fn reload_for(
        &self,
        user: Option<&str>,
        client: std::net::IpAddr,
    ) -> Result<usize, String> {
        tracing::info!(user = user.unwrap_or("-"), %client, action = "reload", "admin change");
        self.reload.reload().await
    }

    async fn handle(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        client: std::net::IpAddr,
        origins: &guard::Origins,
    ) -> AdminResponse {
        if let Err(why) = origins.check(req.method(), req.headers()) {
            tracing::warn!(%client, method = %req.method(), path = req.uri().path(), "admin call refused: {}", why.trim_end());
            return text(StatusCode::FORBIDDEN, why);
        }
        if let Some(status) = guard::body_too_large(req.headers()) {
            return text(status, "admin calls take no body over 64 KiB\n");
        }
        let mut user = None;
        if !self.users.is_empty() {
            let delay = self.throttle.delay(client);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let admin = self.clone();
            let headers = req.headers().clone();
            // bcrypt is slow on purpose: keep it off the async threads.
            let login = tokio::task::spawn_blocking(move || admin.users.login(&headers))
                .await
                .unwrap_or(Login::Refused);
            match login {
                Login::User(name) => {
                    self.throttle.succeeded(client);
                    user = Some(name);
                }
                Login::Anonymous => {
                    tracing::debug!(%client, path = req.uri().path(), "admin call without credentials");
                }
                Login::Refused => {
                    self.throttle.failed(client);
                    tracing::warn!(%client, "admin login failed");
                }
            }
            if user.is_none() {
                let mut response = text(StatusCode::UNAUTHORIZED, "credentials required\n");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"teebox admin\", charset=\"UTF-8\""),
                );
                return response;
            }
        }
        let query = req.uri().query().unwrap_or("").to_string();
        match (req.uri().path(), req.method()) {
            ("/healthz", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok\n"),
            ("/metrics", &Method::GET | &Method::HEAD) => {
                let mut response = text(
                    StatusCode::OK,
                    metrics::render(&self.mirrors.all(), &self.metrics),
                );
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            ("/targets", method) => {
                let wants_json = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/json"));
                let who = targets::Caller {
                    user: user.as_deref().unwrap_or("-"),
                    client,
                };
                let (response, changed) =
                    targets::handle(&self.mirrors, &self.allow, method, &query, wants_json, &who)
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
            ("/reload", &Method::POST) => match self.reload_for(user.as_deref(), client).await {
                Ok(0) => text(StatusCode::OK, "reloaded\n"),
                Ok(n) => text(
                    StatusCode::OK,
                    format!("reloaded, with {n} warning(s); see teebox validate\n"),
                ),
                Err(why) => {
                    tracing::warn!("reload refused; the running config stays");
                    text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("reload refused; the running config stays\n{why}"),
                    )
                }
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
