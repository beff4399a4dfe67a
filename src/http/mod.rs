//! HTTP pieces shared by the server and the handlers: the body type every
//! handler speaks, per-connection facts, and header treatment.

pub mod body;
pub mod conn;
pub mod forwarded;
pub mod header_ops;
pub mod hop_by_hop;
pub mod json;
pub mod placeholders;
pub mod target_guard;
pub mod upgrades;
pub mod upstream_pool;
pub mod upstream_tls;

pub use body::{Body, BoxError};
pub use conn::ConnInfo;

/// The header a mirror's copies carry by default (`marker` in the site
/// file), so that a teebox in front of the shadow does not copy them again.
/// Here rather than in the mirror engine: hop-by-hop handling must never
/// let a `Connection` header remove it.
pub const SHADOW_MARKER: http::HeaderName = http::HeaderName::from_static("teebox-shadow");

pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;

/// What [`upstream_headers`] found out while it worked.
pub struct Forwarding {
    /// The host (and port) the client addressed.
    pub original_host: Option<http::HeaderValue>,
    /// The protocols an `Upgrade` request offers, read before `Upgrade`
    /// went.
    pub upgrade: Option<http::HeaderValue>,
    /// The client said `TE: trailers`, as every gRPC client does.
    pub accepts_trailers: bool,
}

/// The headers a proxy sends upstream: hop-by-hop ones removed (but see
/// [`hop_by_hop::Scan::accepts_trailers`]), the forwarding headers added
/// (when `forwarded`), and `Host` either kept as the client addressed it
/// (`keep_host`) or removed for the caller to set. `reverse_proxy` and
/// mirror copies both go through here, so a copy carries the headers the
/// primary got.
pub fn upstream_headers(
    headers: &mut http::HeaderMap,
    uri: &http::Uri,
    conn: &ConnInfo,
    forwarded: bool,
    keep_host: bool,
) -> Forwarding {
    let host = original_host(uri, headers);
    let hop_by_hop = hop_by_hop::Scan::of(headers);
    let upgrade = hop_by_hop.upgrade_protocol(headers);
    hop_by_hop.strip(headers);
    if hop_by_hop.accepts_trailers() {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    match (keep_host, &host) {
        // An absolute-form target or HTTP/2's `:authority` named it.
        (true, Some(host)) if uri.authority().is_some() => {
            headers.insert(http::header::HOST, host.clone());
        }
        (true, _) => {}
        // Before the forwarding headers go in: a map sized for them then
        // does not grow.
        (false, _) => {
            headers.remove(http::header::HOST);
        }
    }
    if forwarded {
        forwarded::add(headers, conn, host.as_ref(), hop_by_hop.has_forwarding());
    }
    Forwarding {
        original_host: host,
        upgrade,
        accepts_trailers: hop_by_hop.accepts_trailers(),
    }
}

/// The same headers, each value in an allocation of its own. hyper's
/// header values are slices of the connection's read buffer, which holds
/// the request's body too: a map kept for long (a queued mirror copy)
/// would pin that whole buffer, doubling what the copy costs. `room`: for
/// headers to be added after.
pub fn detached(headers: &http::HeaderMap, room: usize) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len() + room);
    for (name, value) in headers {
        let mut owned =
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        owned.set_sensitive(value.is_sensitive());
        out.append(name.clone(), owned);
    }
    out
}

/// A `host[:port]` value without its port; an IPv6 literal keeps its
/// brackets (`[::1]:8080` gives `[::1]`).
pub fn host_without_port(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => &host[..rest.find(']').map_or(host.len(), |i| i + 2)],
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

/// The host (with port, if given) the client addressed: an absolute-form
/// target or HTTP/2's `:authority` names it, else `Host` does (RFC 9112
/// §3.2.2). Any `user@` part is left out.
pub fn original_host(uri: &http::Uri, headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    uri.authority()
        .and_then(|a| {
            let host_port = a.as_str().rsplit('@').next().unwrap_or_default();
            http::HeaderValue::from_str(host_port).ok()
        })
        .or_else(|| headers.get(http::header::HOST).cloned())
}

/// An error and its causes on one line: hyper's top-level messages alone
/// ("client error (Connect)") do not say what went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
