//! Picks the site (by address and host: an exact name, then a wildcard,
//! then the catch-all) and the route (first match in file order, on the
//! normalised path) for a request, and runs the route's chain.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, StatusCode};

use super::access_log::{AccessLog, Entry};
use crate::config::matchers::{normalize_path, HostPattern, RouteMatch};
use crate::handlers::Chain;
use crate::message::{body, ConnInfo, Request, Response};

pub struct RouteRuntime {
    pub matcher: RouteMatch,
    pub chain: Chain,
    pub stats: Arc<crate::counters::RouteStats>,
}

pub struct SiteRuntime {
    pub hosts: Vec<HostPattern>,
    pub routes: Vec<RouteRuntime>,
    pub access_log: Option<AccessLog>,
}

impl SiteRuntime {
    /// Picks the route and starts its chain now; the future only waits for
    /// it (and stays small, where an `async fn` would hold the request).
    fn handle<'a>(
        &'a self,
        req: Request,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = Response> + Send + 'a {
        let route = {
            // Routes see the normalised path (as nginx's locations see
            // `$uri`), so `/public/../admin` or `/%61dmin` cannot slip past
            // the route meant for `/admin`. The request goes on unchanged.
            let path = normalize_path(req.uri().path());
            self.routes
                .iter()
                .find(|r| r.matcher.matches(req.method(), &path, req.headers()))
        };
        let running = route.map(|route| (route, route.chain.run(req, conn)));
        async move {
            match running {
                Some((route, chain)) => {
                    let response = chain.await;
                    route.stats.record(response.status());
                    response
                }
                None => plain(StatusCode::NOT_FOUND, "404 Not Found\n"),
            }
        }
    }
}

/// The sites on one listen address.
pub struct AddressRouter {
    /// Every `host` pattern of every site, the most specific first (exact
    /// names, then wildcards), in file order within each kind: the first
    /// pattern that matches picks the site, whatever order the file lists
    /// the sites in.
    hosts: Vec<(HostPattern, Arc<SiteRuntime>)>,
    /// The site without `host`, if any: it answers every other name.
    catch_all: Option<Arc<SiteRuntime>>,
    /// Set when the address serves HTTPS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl AddressRouter {
    pub fn new(sites: Vec<Arc<SiteRuntime>>) -> Self {
        let mut hosts = Vec::new();
        let mut catch_all = None;
        for site in sites {
            if site.hosts.is_empty() {
                catch_all.get_or_insert(site);
            } else {
                hosts.extend(site.hosts.iter().map(|p| (p.clone(), site.clone())));
            }
        }
        // Stable: file order within the same precedence.
        hosts.sort_by_key(|(pattern, _)| pattern.precedence());
        AddressRouter {
            hosts,
            catch_all,
            tls: None,
        }
    }

    pub fn with_tls(mut self, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        self.tls = tls;
        self
    }

    fn site_for(&self, req: &Request) -> Option<&Arc<SiteRuntime>> {
        // Reading the host costs an allocation; skip it when no site has one.
        if self.hosts.is_empty() {
            return self.catch_all.as_ref();
        }
        request_host(req)
            .and_then(|host| {
                self.hosts
                    .iter()
                    .find(|(pattern, _)| pattern.matches(&host))
                    .map(|(_, site)| site)
            })
            .or(self.catch_all.as_ref())
    }

    /// Answers what needs no site at once and starts the site's handling
    /// otherwise, so that the future holds only what it waits on.
    pub fn handle<'a>(
        &'a self,
        req: Request,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = Response> + Send + 'a {
        let started = self.start(req, conn);
        async move {
            match started {
                Started::Answered(response) => response,
                Started::Site(handling) => handling.await,
                Started::Logged(log, entry, handling) => log.wrap(*entry, handling.await),
            }
        }
    }

    fn start<'a>(
        &'a self,
        req: Request,
        conn: &'a ConnInfo,
    ) -> Started<'a, impl Future<Output = Response> + Send + 'a> {
        if let Err((status, why)) = check_request(&req) {
            let mut response = plain(status, why);
            // The request was malformed: do not trust the rest of the stream.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Started::Answered(response);
        }
        if req.method() == http::Method::OPTIONS && req.uri() == "*" {
            // Asterisk-form asks about the server itself (RFC 9110 §9.3.7).
            let mut response = plain(StatusCode::OK, "");
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Started::Answered(response);
        }
        let Some(site) = self.site_for(&req) else {
            return Started::Answered(plain(
                StatusCode::NOT_FOUND,
                "404 Not Found: no site for this host\n",
            ));
        };
        match &site.access_log {
            None => Started::Site(site.handle(req, conn)),
            Some(log) => {
                let entry = Box::new(Entry::begin(&req, conn, Instant::now()));
                Started::Logged(log, entry, site.handle(req, conn))
            }
        }
    }
}

/// How [`AddressRouter::handle`] goes on with a request.
enum Started<'a, F> {
    /// Refused, or answered without a site.
    Answered(Response),
    Site(F),
    /// With the site's access log and the request's entry in it (boxed:
    /// most sites log nothing, and this is in every request's future).
    Logged(&'a AccessLog, Box<Entry>, F),
}

type Refusal = (StatusCode, &'static str);

/// What hyper accepts but a reverse proxy must not pass on. Checked before
/// any handler sees the request, so neither an upstream nor a shadow gets
/// one that fails.
fn check_request(req: &Request) -> Result<(), Refusal> {
    let bad = |why| Err((StatusCode::BAD_REQUEST, why));
    // Authority-form (`CONNECT host:port`, or `GET x` read as one) names
    // no resource here: teebox is no forward proxy.
    if req.uri().scheme().is_none() && req.uri().authority().is_some() {
        return match *req.method() {
            http::Method::CONNECT => Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: CONNECT is not served here\n",
            )),
            _ => bad("400 Bad Request: the request target must start with /\n"),
        };
    }
    // One pass for the two headers checked below, which most requests
    // have once (Host) or not at all (Transfer-Encoding).
    let mut hosts = 0;
    let mut host = None;
    let mut transfer_coding = false;
    for (name, value) in req.headers() {
        if name == header::HOST {
            hosts += 1;
            host.get_or_insert(value);
        } else if name == header::TRANSFER_ENCODING {
            transfer_coding = true;
        }
    }
    if transfer_coding {
        check_transfer_coding(req)?;
    }
    check_host(req, hosts, host).or_else(bad)
}

/// hyper decodes the final `chunked` and passes any other coding on without
/// decoding it; teebox implements none, so it says so (RFC 9112 §6.1: 501).
/// `chunked` twice is malformed (§7.1).
fn check_transfer_coding(req: &Request) -> Result<(), Refusal> {
    let mut codings = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let Some(first) = codings.next() else {
        return Ok(());
    };
    let mut chunked = usize::from(first.eq_ignore_ascii_case("chunked"));
    let mut other = chunked == 0;
    for coding in codings {
        if coding.eq_ignore_ascii_case("chunked") {
            chunked += 1;
        } else {
            other = true;
        }
    }
    match (chunked, other) {
        (1, false) => Ok(()),
        (0 | 1, true) => Err((
            StatusCode::NOT_IMPLEMENTED,
            "501 Not Implemented: only the chunked transfer coding is supported\n",
        )),
        _ => Err((
            StatusCode::BAD_REQUEST,
            "400 Bad Request: chunked applied more than once\n",
        )),
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, unless
/// its target is in absolute form (whose authority then wins); and a `Host`
/// must be a valid authority.
fn check_host(
    req: &Request,
    hosts: usize,
    first: Option<&HeaderValue>,
) -> Result<(), &'static str> {
    if hosts > 1 {
        return Err("400 Bad Request: more than one Host header\n");
    }
    match first {
        // Empty is allowed: a target with no authority (RFC 9112 §3.2).
        Some(host) if host.is_empty() => {}
        Some(host) => {
            let valid = plain_host_port(host.as_bytes())
                || std::str::from_utf8(host.as_bytes())
                    .ok()
                    .filter(|h| !h.contains('@'))
                    .and_then(|h| h.parse::<http::uri::Authority>().ok())
                    .is_some();
            if !valid {
                return Err("400 Bad Request: the Host header is not a host[:port]\n");
            }
        }
        None if req.version() == http::Version::HTTP_11 && req.uri().authority().is_none() => {
            return Err("400 Bad Request: an HTTP/1.1 request needs a Host header\n");
        }
        None => {}
    }
    Ok(())
}

/// Whether `host` is a name or IPv4 address with an optional port, the
/// usual case: always a valid authority, and checked without the
/// allocation that parsing an `Authority` costs. Anything else (IPv6,
/// odd bytes) goes through the parser.
fn plain_host_port(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    name_ok && port_ok
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
    let name = crate::message::host_without_port(raw);
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

    fn site(hosts: &[&str]) -> Arc<SiteRuntime> {
        let hosts = hosts
            .iter()
            .map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
                None => HostPattern::Exact(h.to_string()),
            })
            .collect();
        Arc::new(SiteRuntime {
            hosts,
            routes: Vec::new(),
            access_log: None,
        })
    }

    fn picks(router: &AddressRouter, host: &str) -> Option<*const SiteRuntime> {
        let req = http::Request::builder()
            .header("host", host)
            .body(body::empty())
            .unwrap();
        router.site_for(&req).map(Arc::as_ptr)
    }

    #[test]
    fn an_exact_host_beats_a_wildcard_listed_before_it() {
        let wild = site(&["*.example.com"]);
        let both = site(&["*.b.example.com", "www.example.com"]);
        let api = site(&["api.example.com"]);
        let rest = site(&[]);
        let router =
            AddressRouter::new(vec![wild.clone(), both.clone(), rest.clone(), api.clone()]);
        for (host, expected) in [
            ("api.example.com", &api),
            ("www.example.com", &both),
            ("x.b.example.com", &both),
            ("other.example.com", &wild),
            ("b.example.com", &wild),
            ("example.com", &rest),
            ("x.y.b.example.com", &rest),
        ] {
            assert_eq!(picks(&router, host), Some(Arc::as_ptr(expected)), "{host}");
        }
    }

    #[test]
    fn without_a_catch_all_an_unclaimed_host_has_no_site() {
        let router = AddressRouter::new(vec![site(&["*.example.com"]), site(&["a.test"])]);
        assert_eq!(picks(&router, "other.test"), None);
    }

    #[test]
    fn host_without_port() {
        assert_eq!(host_of("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(host_of("example.com.").as_deref(), Some("example.com"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_of("[::1]").as_deref(), Some("[::1]"));
    }

    #[test]
    fn the_fast_host_check_only_passes_what_the_parser_would() {
        for host in ["example.com", "a.b-c_d:8080", "127.0.0.1", "x:", "h:65535"] {
            assert!(plain_host_port(host.as_bytes()), "{host}");
            assert!(host.parse::<http::uri::Authority>().is_ok(), "{host}");
        }
        // Left to the parser: IPv6, user-info, spaces, bad ports, empty.
        for host in ["[::1]:80", "u@h", "a b", "h:80x", "h:123456", "", ":80"] {
            assert!(!plain_host_port(host.as_bytes()), "{host}");
        }
    }
}
