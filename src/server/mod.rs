//! Serving a config: bind every listen address, route requests to sites and
//! their chains, and stop gracefully.

pub mod access_log;
mod body_timeout;
mod drain;
pub mod fd_limit;
mod framing;
mod h2_opening;
mod limits;
mod listener;
pub mod redirect;
pub mod router;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, LogFormat};
use crate::handlers::{BuildContext, Chain};
use crate::metrics::MetricsRegistry;
use crate::mirror::{Mirror, MirrorRegistry};
use access_log::AccessLog;
use drain::Drain;
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
    /// The current config's mirrors; a reload replaces them.
    mirrors: MirrorRegistry,
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

    /// The mirrors this server runs, for inspection (tests, admin).
    pub fn mirrors(&self) -> Vec<Arc<Mirror>> {
        self.shared.mirrors.all()
    }

    /// Renders, on each call, the route and mirror metrics of the admin
    /// endpoint's `GET /metrics` (without its admin login lines), whether
    /// or not the file has an admin block. It keeps working after
    /// [`Running::shutdown`], so what a shutdown counted can be read.
    pub fn metrics_renderer(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || crate::admin::metrics::render(&shared.mirrors.all(), &shared.metrics)
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
        // Copies queued by the last requests get their own grace period.
        let deadline = Instant::now() + grace;
        for mirror in self.shared.mirrors.all() {
            mirror.drain(deadline).await;
        }
        finished
    }
}

impl Shared {
    /// Re-reads the site file and takes it over. Reading, checking and
    /// building run on a blocking thread, so accept loops and requests go
    /// on at full speed however large or wrong the file is; only the swap
    /// itself runs here. Nothing changes if any step fails.
    async fn reload_file(&self) -> Result<crate::admin::Reloaded, ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        // One reload at a time, from reading the file to the swap, so an
        // older read never lands after a newer one. The listeners' state is
        // locked only for the swap: a shutdown does not wait for a build.
        let _turn = self.reloading.lock().await;
        tracing::info!(file = %path.display(), "reloading the site file");
        let metrics = self.metrics.clone();
        let admin = self.admin.get().cloned();
        let prepared = tokio::task::spawn_blocking(move || prepare(&path, &metrics, admin))
            .await
            .map_err(|e| ReloadError::from(StartError::Build(format!("the reload stopped: {e}"))))
            .and_then(|prepared| prepared);
        let result = match prepared {
            Ok(prepared) => {
                let mut state = self.state.lock().await;
                self.swap_in(&mut state, prepared).await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = &result {
            const REFUSED: &str = "reload refused; the running config stays";
            match err {
                ReloadError::Invalid(invalid) => crate::logging::problems(
                    tracing::Level::ERROR,
                    REFUSED,
                    &invalid.file,
                    &invalid.problems,
                ),
                other => tracing::error!(error = %other, "{REFUSED}"),
            }
        }
        result
    }

    /// Takes over a prepared config: each address's router in one atomic
    /// store, so a request sees the old config or the new one, never a mix.
    /// In-flight requests finish on the old one, and the old mirrors send
    /// what they have queued. Mirrors keep their runtime targets by name.
    /// New addresses are bound first: if one fails, nothing has changed.
    async fn swap_in(
        &self,
        state: &mut State,
        prepared: Prepared,
    ) -> Result<crate::admin::Reloaded, ReloadError> {
        let Prepared {
            loaded,
            built,
            admin,
        } = prepared;
        let config = &loaded.config;
        let mut fresh = Vec::new();
        for (addr, _) in &built.routers {
            if !state.listeners.iter().any(|l| l.bound.configured == *addr) {
                fresh.push((*addr, bind(*addr).await?));
            }
        }
        let graceful = self
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(graceful) = graceful else {
            return Err(StartError::Build("the server is shutting down".into()).into());
        };
        let old_mirrors = self.mirrors.all();
        let mut dropped = Vec::new();
        for mirror in built.mirrors.all() {
            let Some(name) = mirror.name() else { continue };
            if let Some(old) = old_mirrors.iter().find(|m| m.name() == Some(name)) {
                let (added, removed) = old.runtime_changes();
                removed.iter().for_each(|url| {
                    mirror.remove_target(url);
                });
                for url in added {
                    // Added under the old allow_target: the new one decides
                    // whether copies still go there.
                    match admin.as_ref().and_then(|a| a.refuses_target(&url)) {
                        Some(why) => dropped.push(format!("target {url} of mirror {name}: {why}")),
                        None => {
                            mirror.add_target(url);
                        }
                    }
                }
            }
        }
        let limits = self.limits.load().reloaded(config.global.limits);
        self.limits.store(limits);
        let keep: Vec<SocketAddr> = built.routers.iter().map(|(a, _)| *a).collect();
        let mut retired = Vec::new();
        for (addr, router) in built.routers {
            match state.listeners.iter().find(|l| l.bound.configured == addr) {
                Some(existing) => retired.push(existing.router.swap(Arc::new(router))),
                None => {
                    let Some(index) = fresh.iter().position(|(a, _)| *a == addr) else {
                        continue;
                    };
                    let (_, tcp) = fresh.swap_remove(index);
                    let handle = spawn_listener(
                        &mut state.accept_loops,
                        addr,
                        tcp,
                        router,
                        &graceful,
                        &self.limits,
                    )?;
                    state.listeners.push(handle);
                }
            }
        }
        point_redirects(&built.redirect_ports, &state.listeners);
        state.listeners.retain(|l| {
            let kept = keep.contains(&l.bound.configured);
            if !kept {
                tracing::info!(address = %l.bound.local, "no longer in the site file; stopped listening");
                let _ = l.stop.send(true);
                retired.push(l.router.load_full());
            }
            kept
        });
        self.mirrors.replace(built.mirrors.all());
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) =
            state.listeners.iter().map(|l| l.bound).collect();
        self.set_grace_period(config.global.grace_period);
        crate::logging::apply(&config.global.log);
        let applied = match admin {
            Some(prepared) => prepared.commit(),
            None => crate::admin::Applied::without_endpoint(config.global.admin.as_ref()),
        };
        for item in &applied.not_applied {
            tracing::warn!("reload: not applied: {item}");
        }
        for item in &dropped {
            tracing::warn!("reload: dropped: {item}");
        }
        tracing::info!(warnings = loaded.warnings.len(), "site file reloaded");
        crate::logging::problems(
            tracing::Level::WARN,
            "the reloaded site file has warnings",
            &config.source,
            &loaded.warnings,
        );
        retire(retired);
        Ok(crate::admin::Reloaded {
            warnings: loaded.warnings.len(),
            not_applied: applied.not_applied,
            dropped,
        })
    }

    fn set_grace_period(&self, grace: Duration) {
        *self.grace_period.lock().unwrap_or_else(|e| e.into_inner()) = grace;
    }
}

/// A reloaded site file, checked and built, ready to swap in.
struct Prepared {
    loaded: crate::config::Loaded,
    built: Built,
    /// The admin block's new settings (users checked when the file was
    /// read; the bcrypt decoy made), when the server runs an admin endpoint.
    admin: Option<crate::admin::Prepared>,
}

/// The slow part of a reload, for a blocking thread: reading, checking and
/// building.
fn prepare(
    path: &std::path::Path,
    metrics: &MetricsRegistry,
    admin: Option<crate::admin::AdminControl>,
) -> Result<Prepared, ReloadError> {
    let loaded = crate::config::load(path).map_err(|err| match err {
        crate::config::LoadError::Invalid(err) => ReloadError::Invalid(err),
        other => ReloadError::Unreadable(other.to_string()),
    })?;
    let config = &loaded.config;
    let admin = match admin {
        Some(control) => Some(
            control
                .prepare(config.global.admin.as_ref(), &config.base_dir)
                .map_err(|e| ReloadError::Admin(e.to_string()))?,
        ),
        None => None,
    };
    let built = build(config, metrics)?;
    Ok(Prepared {
        loaded,
        built,
        admin,
    })
}

/// Drops the routers a reload replaced on a blocking thread, once the
/// requests still using them are done: a large config's routes take time
/// to free, which no serving thread should spend. Requests that outlast
/// the wait drop their copy wherever they finish.
fn retire(routers: Vec<Arc<AddressRouter>>) {
    if routers.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let deadline = Instant::now() + RETIRE_WAIT;
        while Instant::now() < deadline && routers.iter().any(|r| Arc::strong_count(r) > 1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::spawn_blocking(move || drop(routers));
    });
}

/// How long replaced routers wait for their last requests (see [`retire`]).
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// A config built into routers (per listen address, in file order) and
/// running mirrors, not yet serving.
struct Built {
    routers: Vec<(SocketAddr, AddressRouter)>,
    mirrors: MirrorRegistry,
    /// `http_redirect` targets: the TLS address whose bound port they name.
    redirect_ports: Vec<(SocketAddr, Arc<std::sync::atomic::AtomicU16>)>,
}

fn build(config: &Config, metrics: &MetricsRegistry) -> Result<Built, StartError> {
    let format = config.global.log.format;
    let mirrors = MirrorRegistry::default();
    // Addresses in the order the file first names them.
    let mut by_addr: Vec<(SocketAddr, Vec<Arc<SiteRuntime>>)> = Vec::new();
    for site in &config.sites {
        let runtime = Arc::new(build_site(config, site, format, &mirrors, metrics)?);
        for addr in &site.addresses {
            match by_addr.iter_mut().find(|(a, _)| *a == addr.value) {
                Some((_, sites)) => sites.push(runtime.clone()),
                None => by_addr.push((addr.value, vec![runtime.clone()])),
            }
        }
    }
    let mut routers = Vec::new();
    for (addr, sites) in by_addr {
        let tls = tls_for(config, addr)?;
        routers.push((addr, AddressRouter::new(sites).with_tls(tls)));
    }
    let mut redirects: Vec<(SocketAddr, Vec<Arc<SiteRuntime>>)> = Vec::new();
    let mut redirect_ports = Vec::new();
    for site in &config.sites {
        let (Some(from), Some(to)) = (&site.http_redirect, site.addresses.first()) else {
            continue;
        };
        let port = Arc::new(std::sync::atomic::AtomicU16::new(to.value.port()));
        redirect_ports.push((to.value, port.clone()));
        let key = crate::metrics::RouteKey {
            site: from.value.to_string(),
            route: "http_redirect".into(),
        };
        let runtime = Arc::new(SiteRuntime {
            hosts: site.hosts.iter().map(|h| h.value.clone()).collect(),
            routes: vec![RouteRuntime {
                matcher: crate::config::matchers::RouteMatch {
                    path: crate::config::matchers::PathPattern::Prefix("/".into()),
                    methods: Vec::new(),
                    headers: Vec::new(),
                },
                chain: Chain::new(Vec::new(), Arc::new(redirect::HttpsRedirect { port })),
                stats: metrics.route(&key),
            }],
            access_log: None,
        });
        match redirects.iter_mut().find(|(a, _)| *a == from.value) {
            Some((_, sites)) => sites.push(runtime),
            None => redirects.push((from.value, vec![runtime])),
        }
    }
    routers.extend(
        redirects
            .into_iter()
            .map(|(addr, sites)| (addr, AddressRouter::new(sites))),
    );
    Ok(Built {
        routers,
        mirrors,
        redirect_ports,
    })
}

/// The TLS acceptor for an address whose sites have `tls` (validation makes
/// sure they all do, or none): certificates by SNI, the `default` site's (or
/// the catch-all's) for any other name.
fn tls_for(
    config: &Config,
    addr: SocketAddr,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    let sites: Vec<_> = config
        .sites
        .iter()
        .filter(|s| s.addresses.iter().any(|a| a.value == addr))
        .filter_map(|s| s.tls.as_ref().map(|t| (s, t)))
        .collect();
    if sites.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::new();
    let mut default = None;
    let mut catch_all = None;
    for (site, tls) in &sites {
        for host in &site.hosts {
            names.push((host.value.clone(), tls.certified.clone()));
        }
        if tls.default && default.is_none() {
            default = Some(tls.certified.clone());
        }
        if site.hosts.is_empty() {
            catch_all = Some(tls.certified.clone());
        }
    }
    let resolver = tls::SniResolver::new(names, default.or(catch_all), addr.to_string());
    let config = tls::server_config(resolver).map_err(StartError::Build)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
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
                built.mirrors.clone(),
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
        mirrors: built.mirrors,
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

fn build_site(
    config: &Config,
    site: &crate::config::Site,
    format: LogFormat,
    mirrors: &MirrorRegistry,
    metrics: &MetricsRegistry,
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
        let route_key = crate::metrics::RouteKey {
            site: name.clone(),
            route: route.matcher.path.to_string(),
        };
        let cx = BuildContext {
            route: format!("{name} {}", route.matcher.path),
            base_dir: config.base_dir.clone(),
            mirrors: mirrors.clone(),
            route_key: route_key.clone(),
            metrics: metrics.clone(),
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
            stats: metrics.route(&route_key),
        });
    }
    Ok(SiteRuntime {
        hosts: site.hosts.iter().map(|h| h.value.clone()).collect(),
        routes,
        access_log,
    })
}
