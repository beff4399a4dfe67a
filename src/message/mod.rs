//! HTTP pieces shared by the server and the handlers: the body type every
//! handler speaks, per-connection facts, header treatment, and path rewrites.

pub mod body;
pub mod conn;
pub mod header_ops;
pub mod json;
pub mod path_rewrite;
pub mod placeholders;

pub use body::{Body, BoxError};
pub use conn::ConnInfo;

/// The header a mirror's copies carry by default (`marker` in the site
/// file), so that a teebox in front of the shadow does not copy them again.
/// Here rather than in the mirror engine: hop-by-hop handling must never
/// let a `Connection` header remove it.
pub const SHADOW_MARKER: http::HeaderName = http::HeaderName::from_static("teebox-shadow");

/// A response teebox made itself because its upstream failed (could not be
/// reached, broke the exchange, did not answer in time): the primary gave
/// no answer of its own, whatever the status says.
#[derive(Debug, Clone, Copy)]
pub struct NoUpstreamAnswer;

pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;

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
