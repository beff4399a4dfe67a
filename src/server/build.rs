//! Building: a checked config into routers (per listen address, in file
//! order) and the states its handlers publish. Runs off the serving
//! threads on a reload; nothing here binds or serves.

use std::net::SocketAddr;
use std::sync::Arc;

use super::access_log::AccessLog;
use super::router::{AddressRouter, RouteRuntime, SiteRuntime};
use super::StartError;
use crate::config::{Config, LogFormat};
use crate::counters::MetricsRegistry;
use crate::handlers::{BuildContext, Chain, Published};

/// A config built into routers (per listen address, in file order) and
/// what its handlers published, not yet serving.
pub(super) struct Built {
    pub(super) routers: Vec<(SocketAddr, AddressRouter)>,
    pub(super) published: Published,
    /// `http_redirect` targets: the TLS address whose bound port they name.
    pub(super) redirect_ports: Vec<(SocketAddr, Arc<std::sync::atomic::AtomicU16>)>,
}

pub(super) fn build(config: &Config, metrics: &MetricsRegistry) -> Result<Built, StartError> {
    let format = config.global.log.format;
    let published = Published::default();
    // Addresses in the order the file first names them.
    let mut by_addr: Vec<(SocketAddr, Vec<Arc<SiteRuntime>>)> = Vec::new();
    for site in &config.sites {
        let runtime = Arc::new(build_site(config, site, format, &published, metrics)?);
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
        let key = crate::counters::RouteKey {
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
                chain: Chain::new(
                    Vec::new(),
                    Arc::new(super::redirect::HttpsRedirect { port }),
                ),
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
        published,
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
    let resolver = super::sni::SniResolver::new(names, default.or(catch_all), addr.to_string());
    let config = super::sni::server_config(resolver).map_err(StartError::Build)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
}

fn build_site(
    config: &Config,
    site: &crate::config::Site,
    format: LogFormat,
    published: &Published,
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
        let route_key = crate::counters::RouteKey {
            site: name.clone(),
            route: route.matcher.path.to_string(),
        };
        let cx = BuildContext {
            route: format!("{name} {}", route.matcher.path),
            base_dir: config.base_dir.clone(),
            published: published.clone(),
            route_key: route_key.clone(),
            metrics: metrics.clone(),
        };
        let fail = |e: crate::handlers::BuildError| StartError::Build(format!("{}: {e}", cx.route));
        let middleware = route
            .middleware
            .iter()
            .map(|m| m.config.build(&cx).map_err(fail))
            .collect::<Result<Vec<_>, _>>()?;
        let terminal = route.terminal.config.build(&cx).map_err(fail)?;
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
