//! Serving a config: bind every listen address, route requests to sites and
//! their chains, and stop gracefully.

pub mod access_log;
mod listener;
pub mod router;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, LogFormat};
use crate::handlers::{BuildContext, Chain};
use crate::mirror::{Mirror, MirrorRegistry};
use access_log::AccessLog;
use listener::Listener;
use router::{AddressRouter, RouteRuntime, SiteRuntime};

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

/// A server that is accepting connections.
pub struct Running {
    bound: Vec<Bound>,
    stop: watch::Sender<bool>,
    accept_loops: JoinSet<()>,
    /// Shared with the accept loops, which make a watcher per connection.
    graceful: Arc<GracefulShutdown>,
    mirrors: MirrorRegistry,
    admin: Option<SocketAddr>,
}

impl Running {
    /// Every bound address, in the order the file first names them.
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    /// The local address of the first listen address in the file.
    pub fn addr(&self) -> SocketAddr {
        self.bound[0].local
    }

    /// Where the admin endpoint listens, if the file configures one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`,
    /// then drops whatever is left. Returns whether everything finished.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let _ = self.stop.send(true);
        while self.accept_loops.join_next().await.is_some() {}
        // The accept loops have ended and dropped their clones.
        let Some(graceful) = Arc::into_inner(self.graceful) else {
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
        // Copies queued by the last requests get their own grace period.
        let deadline = Instant::now() + grace;
        for mirror in self.mirrors.all() {
            mirror.drain(deadline).await;
        }
        finished
    }

    /// The mirrors this server runs, for inspection (tests, admin).
    pub fn mirrors(&self) -> Vec<Arc<Mirror>> {
        self.mirrors.all()
    }
}

/// Builds every site and handler, binds every address, and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let format = config.global.log.format;
    let mirrors = MirrorRegistry::default();
    // Addresses in the order the file first names them.
    let mut by_addr: Vec<(SocketAddr, Vec<Arc<SiteRuntime>>)> = Vec::new();
    for site in &config.sites {
        if site.tls.is_some() {
            return Err(StartError::Build(
                "TLS termination (`tls`) is not available in this version of teebox yet".into(),
            ));
        }
        let runtime = Arc::new(build_site(config, site, format, &mirrors)?);
        for addr in &site.addresses {
            match by_addr.iter_mut().find(|(a, _)| *a == addr.value) {
                Some((_, sites)) => sites.push(runtime.clone()),
                None => by_addr.push((addr.value, vec![runtime.clone()])),
            }
        }
    }

    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for (addr, sites) in by_addr {
        let tcp = listener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        tracing::info!(address = %local, "listening");
        bound.push(Bound {
            configured: addr,
            local,
        });
        listeners.push(Listener {
            tcp,
            router: Arc::new(AddressRouter::new(sites)),
        });
    }

    let (stop, stop_rx) = watch::channel(false);
    let admin = match &config.global.admin {
        Some(admin) => {
            let endpoint = crate::admin::Admin::new(admin, &config.base_dir, mirrors.clone())
                .map_err(|e| StartError::Build(e.to_string()))?;
            Some(
                endpoint
                    .start(admin.address.value, stop_rx.clone())
                    .await
                    .map_err(|e| StartError::Build(e.to_string()))?,
            )
        }
        None => None,
    };
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        let graceful = graceful.clone();
        let stop_rx = stop_rx.clone();
        accept_loops
            .spawn(async move { listener.serve(stop_rx, move || graceful.watcher()).await });
    }
    Ok(Running {
        bound,
        stop,
        accept_loops,
        graceful,
        mirrors,
        admin,
    })
}

fn build_site(
    config: &Config,
    site: &crate::config::Site,
    format: LogFormat,
    mirrors: &MirrorRegistry,
) -> Result<SiteRuntime, StartError> {
    let name = site
        .addresses
        .iter()
        .map(|a| a.value.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let access_log = match &site.access_log {
        Some(target) => Some(
            AccessLog::open(target, &config.base_dir, format)
                .map_err(|e| StartError::Build(e.to_string()))?,
        ),
        None => None,
    };
    let mut routes = Vec::new();
    for route in &site.routes {
        let cx = BuildContext {
            route: format!("{name} {}", route.matcher.path),
            base_dir: config.base_dir.clone(),
            mirrors: mirrors.clone(),
        };
        let fail = |e: crate::handlers::BuildError| StartError::Build(format!("{}: {e}", cx.route));
        let middleware = route
            .middleware
            .iter()
            .map(|m| m.build(&cx).map_err(fail))
            .collect::<Result<Vec<_>, _>>()?;
        let terminal = route.terminal.build(&cx).map_err(fail)?;
        routes.push(RouteRuntime {
            matcher: route.matcher.clone(),
            chain: Chain::new(middleware, terminal),
        });
    }
    Ok(SiteRuntime {
        hosts: site.hosts.iter().map(|h| h.value.clone()).collect(),
        routes,
        access_log,
    })
}
