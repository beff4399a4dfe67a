//! Picks the site (by address and host) and the route (first match in file
//! order) for a request, and runs the route's chain.

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, StatusCode};

use super::access_log::{AccessLog, Entry};
use crate::config::matchers::{HostPattern, RouteMatch};
use crate::handlers::Chain;
use crate::http::{body, ConnInfo, Request, Response};

pub struct RouteRuntime {
    pub matcher: RouteMatch,
    pub chain: Chain,
}

pub struct SiteRuntime {
    pub hosts: Vec<HostPattern>,
    pub routes: Vec<RouteRuntime>,
    pub access_log: Option<AccessLog>,
}

impl SiteRuntime {
    async fn handle(&self, req: Request) -> Response {
        let route = self.routes.iter().find(|r| {
            r.matcher
                .matches(req.method(), req.uri().path(), req.headers())
        });
        match route {
            Some(route) => route.chain.run(req).await,
            None => plain(StatusCode::NOT_FOUND, "404 Not Found\n"),
        }
    }
}

/// The sites on one listen address.
pub struct AddressRouter {
    /// Sites with `host`, in file order.
    named: Vec<Arc<SiteRuntime>>,
    /// The site without `host`, if any: it answers every other name.
    catch_all: Option<Arc<SiteRuntime>>,
}

impl AddressRouter {
    pub fn new(sites: Vec<Arc<SiteRuntime>>) -> Self {
        let (named, rest): (Vec<_>, Vec<_>) = sites.into_iter().partition(|s| !s.hosts.is_empty());
        AddressRouter {
            named,
            catch_all: rest.into_iter().next(),
        }
    }

    fn site_for(&self, req: &Request) -> Option<&Arc<SiteRuntime>> {
        // Reading the host costs an allocation; skip it when no site has one.
        if self.named.is_empty() {
            return self.catch_all.as_ref();
        }
        request_host(req)
            .and_then(|host| {
                self.named
                    .iter()
                    .find(|s| s.hosts.iter().any(|p| p.matches(&host)))
            })
            .or(self.catch_all.as_ref())
    }

    pub async fn handle(&self, mut req: Request, conn: ConnInfo) -> Response {
        let Some(site) = self.site_for(&req) else {
            return plain(
                StatusCode::NOT_FOUND,
                "404 Not Found: no site for this host\n",
            );
        };
        req.extensions_mut().insert(conn);
        let Some(log) = &site.access_log else {
            return site.handle(req).await;
        };
        let entry = Entry::begin(&req, conn, Instant::now());
        let response = site.handle(req).await;
        log.wrap(entry, response)
    }
}

/// The request's host name, lower case, without port: from the URI's
/// authority (HTTP/2, or an absolute-form target, which overrides `Host` per
/// RFC 9112 §3.2.2), else from `Host`.
fn request_host(req: &Request) -> Option<String> {
    let raw = req.uri().authority().map(|a| a.host()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })?;
    let name = match raw.strip_prefix('[') {
        // An IPv6 literal: keep it bracketed, drop the port.
        Some(rest) => &raw[..rest.find(']').map_or(raw.len(), |i| i + 2)],
        None => raw.rsplit_once(':').map_or(raw, |(name, _)| name),
    };
    Some(name.trim_end_matches('.').to_ascii_lowercase())
}

pub fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(value: &str) -> Option<String> {
        let req = http::Request::builder()
            .header("host", value)
            .body(body::empty())
            .unwrap();
        request_host(&req)
    }

    #[test]
    fn host_without_port() {
        assert_eq!(host_of("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(host_of("example.com.").as_deref(), Some("example.com"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_of("[::1]").as_deref(), Some("[::1]"));
    }
}
