//! The upstream client: what `reverse_proxy` and the mirror's copies share
//! to reach a backend. A connection pool per upstream, the TLS connector,
//! hop-by-hop header handling, the forwarding headers, the guard on where a
//! target may point, and protocol upgrades. Takes plain settings; knows
//! neither the site file nor any handler.

pub mod forwarded;
pub mod hop_by_hop;
pub mod pool;
pub mod target_guard;
pub mod tls_connector;
pub mod upgrades;
pub mod url;

use crate::message::{original_host, ConnInfo};

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
