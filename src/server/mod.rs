//! Serving a config: bind every listen address, route requests to sites and
//! their chains, and stop gracefully.

pub mod access_log;
mod body_timeout;
mod build;
mod drain;
pub mod fd_limit;
mod framing;
mod h2_opening;
mod limits;
mod listener;
pub mod redirect;
mod reload;
pub mod router;
pub mod sni;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::counters::MetricsRegistry;
use crate::handlers::Published;
use build::build;
use drain::Drain;
use listener::Listener;
use router::AddressRouter;

/// Why a valid config could not be served.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Build(String),
}

/// A listen address as written in the site file, and where it was bound
/// (they differ when the file says port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub configured: SocketAddr,
    pub local: SocketAddr,
}

/// One listen address: its socket's accept loop and the router it serves,
/// which a reload swaps.
struct ListenerHandle {
    bound: Bound,
    router: Arc<ArcSwap<AddressRouter>>,
    stop: watch::Sender<bool>,
}

/// What reloads change, behind one lock so that two reloads never interleave.
struct State {
    listeners: Vec<ListenerHandle>,
    accept_loops: JoinSet<()>,
}

struct Shared {
    state: tokio::sync::Mutex<State>,
    /// Held by a reload from reading the file to the swap.
    reloading: tokio::sync::Mutex<()>,
    /// Watches every connection; taken at shutdown.
    graceful: std::sync::Mutex<Option<Arc<Drain>>>,
    /// The listen addresses now bound, readable without waiting for a reload.
    bound: std::sync::Mutex<Vec<Bound>>,
    /// What the current config's handlers published (see
    /// [`crate::config::handler`]); a reload replaces it.
    published: Published,
    /// Route and upstream counters, kept across reloads.
    metrics: MetricsRegistry,
    /// Stops the admin endpoint.
    stop_admin: watch::Sender<bool>,
    /// Applies a reloaded file's admin block; set once the endpoint runs.
    admin: std::sync::OnceLock<crate::admin::AdminControl>,
    /// The site file, for reloads.
    path: Option<std::path::PathBuf>,
    /// `global { limits }`, shared by every listener; a reload swaps them.
    limits: Arc<ArcSwap<limits::ConnLimits>>,
    /// `global { grace_period }`, as the file last said.
    grace_period: std::sync::Mutex<Duration>,
}

/// A server that is accepting connections.
pub struct Running {
    shared: Arc<Shared>,
    admin: Option<SocketAddr>,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this server was not started from a site file")]
    NoFile,
    #[error("{}", .0.render(crate::config::Style::Plain))]
    Invalid(crate::config::ConfigError),
    #[error("cannot read the site file: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Admin(String),
}

impl Running {
    /// Every bound address, in the order the file first names them.
    pub fn bound(&self) -> Vec<Bound> {
        self.shared
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The local address of the first listen address in the file.
    pub fn addr(&self) -> SocketAddr {
        self.bound()[0].local
    }

    /// Where the admin endpoint listens, if the file configures one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Connections the handlers hold open on their own (their workers'),
    /// for the open-files check.
    pub fn handler_connections(&self) -> usize {
        self.shared
            .published
            .all()
            .iter()
            .map(|state| state.connections())
            .sum()
    }

    /// Renders, on each call, the route and handler metrics of the admin
    /// endpoint's `GET /metrics` (without its admin login lines), whether
    /// or not the file has an admin block. It keeps working after
    /// [`Running::shutdown`], so what a shutdown counted can be read.
    pub fn metrics_renderer(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || crate::admin::prometheus::render(&shared.published, &shared.metrics)
    }

    /// How long shutdown waits for open connections: `grace_period` as
    /// the site file last said (a reload changes it).
    pub fn grace_period(&self) -> Duration {
        *self
            .shared
            .grace_period
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a reload and returns at once (SIGHUP): whatever the reload
    /// waits on, the caller goes on, to a SIGTERM say. The reload logs its
    /// own outcome; reloads take their turns.
    pub fn reload_in_background(&self) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _ = shared.reload_file().await;
        });
    }

    /// Re-reads the site file and takes it over (see [`Shared::reload_file`]).
    pub async fn reload(&self) -> Result<crate::admin::Reloaded, ReloadError> {
        self.shared.reload_file().await
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`,
    /// then drops whatever is left. Returns whether everything finished.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.shared.stop_admin.send(true);
        let graceful = {
            let mut state = self.shared.state.lock().await;
            for listener in &state.listeners {
                let _ = listener.stop.send(true);
            }
            while state.accept_loops.join_next().await.is_some() {}
            // Taken under the state lock: a reload that swaps in after
            // this sees the server stopping and starts no listener.
            self.shared
                .graceful
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        };
        // The accept loops have ended and dropped their clones.
        let Some(graceful) = graceful.and_then(Arc::into_inner) else {
            return false;
        };
        let open = graceful.count();
        if open > 0 {
            tracing::info!(connections = open, grace = ?grace, "waiting for open connections");
        }
        let finished = tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(grace = ?grace, "grace period over; closing remaining connections");
        }
        // Work the handlers queued for the last requests (copies to
        // send) gets its own grace period.
        let deadline = Instant::now() + grace;
        for state in self.shared.published.all() {
            state.drain(deadline).await;
        }
        finished
    }
}

impl Shared {
    fn set_grace_period(&self, grace: Duration) {
        *self.grace_period.lock().unwrap_or_else(|e| e.into_inner()) = grace;
    }
}

fn spawn_listener(
    accept_loops: &mut JoinSet<()>,
    configured: SocketAddr,
    tcp: tokio::net::TcpListener,
    router: AddressRouter,
    graceful: &Arc<Drain>,
    limits: &Arc<ArcSwap<limits::ConnLimits>>,
) -> Result<ListenerHandle, StartError> {
    let local = tcp.local_addr().map_err(|source| StartError::Bind {
        addr: configured,
        source,
    })?;
    tracing::info!(address = %local, "listening");
    let router = Arc::new(ArcSwap::from_pointee(router));
    let (stop, stop_rx) = watch::channel(false);
    let listener = Listener {
        tcp,
        router: router.clone(),
        limits: limits.clone(),
    };
    let graceful = graceful.clone();
    accept_loops.spawn(async move { listener.serve(stop_rx, graceful).await });
    Ok(ListenerHandle {
        bound: Bound { configured, local },
        router,
        stop,
    })
}

/// Tells each `http_redirect` the port its TLS address was bound to.
fn point_redirects(
    ports: &[(SocketAddr, Arc<std::sync::atomic::AtomicU16>)],
    listeners: &[ListenerHandle],
) {
    for (tls_addr, port) in ports {
        if let Some(listener) = listeners.iter().find(|l| l.bound.configured == *tls_addr) {
            port.store(
                listener.bound.local.port(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    listener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Builds every site and handler, binds every address, and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let metrics = MetricsRegistry::default();
    let built = build(config, &metrics)?;
    // The admin endpoint is made, and its saved state restored, before any
    // address is bound: what can refuse the file is settled first, so that
    // only binding can fail after a socket is taken (and copies of the
    // first requests already go to the restored targets).
    let reloader = Arc::new(Reloader(std::sync::OnceLock::new()));
    let admin_endpoint = match &config.global.admin {
        Some(admin) => Some(
            crate::admin::Admin::new(
                admin,
                &config.base_dir,
                built.published.clone(),
                metrics.clone(),
                reloader.clone(),
            )
            .map_err(|e| StartError::Build(e.to_string()))?,
        ),
        None => None,
    };
    let mut bound_sockets = Vec::new();
    for (addr, _) in &built.routers {
        bound_sockets.push(bind(*addr).await?);
    }
    let graceful = Arc::new(Drain::new());
    let mut accept_loops = JoinSet::new();
    let mut listeners = Vec::new();
    let redirect_ports = built.redirect_ports;
    let limits = Arc::new(ArcSwap::new(limits::ConnLimits::new(config.global.limits)));
    for ((addr, router), tcp) in built.routers.into_iter().zip(bound_sockets) {
        listeners.push(spawn_listener(
            &mut accept_loops,
            addr,
            tcp,
            router,
            &graceful,
            &limits,
        )?);
    }
    point_redirects(&redirect_ports, &listeners);
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let bound = listeners.iter().map(|l| l.bound).collect();
    let shared = Arc::new(Shared {
        bound: std::sync::Mutex::new(bound),
        state: tokio::sync::Mutex::new(State {
            listeners,
            accept_loops,
        }),
        reloading: tokio::sync::Mutex::new(()),
        graceful: std::sync::Mutex::new(Some(graceful)),
        published: built.published,
        metrics: metrics.clone(),
        stop_admin,
        admin: std::sync::OnceLock::new(),
        path: config.path.clone(),
        limits,
        grace_period: std::sync::Mutex::new(config.global.grace_period),
    });
    let _ = reloader.0.set(Arc::downgrade(&shared));
    let admin = match (&config.global.admin, admin_endpoint) {
        (Some(admin), Some(endpoint)) => {
            let _ = shared.admin.set(endpoint.control());
            Some(
                endpoint
                    .start(admin.address.value, stop_admin_rx)
                    .await
                    .map_err(|e| StartError::Build(e.to_string()))?,
            )
        }
        _ => None,
    };
    Ok(Running { shared, admin })
}

/// Lets the admin endpoint reload the server that runs it; set once the
/// server exists, which is after the endpoint is made.
struct Reloader(std::sync::OnceLock<std::sync::Weak<Shared>>);

impl crate::admin::Reload for Reloader {
    fn reload(&self) -> crate::handlers::BoxFuture<'_, Result<crate::admin::Reloaded, String>> {
        Box::pin(async move {
            let shared = self
                .0
                .get()
                .and_then(std::sync::Weak::upgrade)
                .ok_or("the server is shutting down")?;
            shared.reload_file().await.map_err(|e| e.to_string())
        })
    }
}
