//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and
//! must not be forwarded by a proxy, nor may any header the `Connection`
//! header names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are hop-by-hop whether or not `Connection` names them.
/// `Keep-Alive` and `Proxy-Connection` are not standard but are sent by old
/// clients; forwarding them confuses upstreams.
///
/// `Trailer` is not among them (RFC 9110 §6.6.2 makes it end to end), and
/// hyper only sends trailer fields that it announces.
const ALWAYS_LEN: usize = 7;
static ALWAYS: [HeaderName; ALWAYS_LEN] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// The protocol a client asks to switch to, if this is an `Upgrade` request
/// (`Connection: upgrade` plus an `Upgrade` header).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Whether the client's `TE` says it takes trailer fields. `TE` is
/// hop-by-hop, but teebox passes trailers on in both directions, so it may
/// say `TE: trailers` upstream for such a client (RFC 9110 §10.1.4): gRPC
/// servers expect it, and HTTP/1.1 servers send trailers only when told.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let coding = t.split(';').next().unwrap_or_default().trim();
            coding.eq_ignore_ascii_case("trailers")
        })
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Connection options that name no end-to-end header: `close`, or headers
/// removed anyway. Most requests and responses carry only these, so the
/// common case needs no lookups by name.
const IMPLIED: [&str; 3] = ["close", "keep-alive", "upgrade"];

/// Where `name` is in `ALWAYS`, or `ALWAYS_LEN` for `Upgrade`.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match ALWAYS.iter().position(|always| always == name) {
        Some(i) => Some(i),
        None => (name == header::UPGRADE).then_some(ALWAYS_LEN),
    }
}

/// Removes hop-by-hop headers and those named in `Connection`. `Upgrade` is
/// removed too; a proxy that passes an upgrade through puts it back.
///
/// This runs on every proxied request and response, so it looks before it
/// removes: one pass over the names, and removals only of what is there.
pub fn strip(headers: &mut HeaderMap) {
    let names_others = connection_tokens(headers).any(|t| {
        !IMPLIED
            .iter()
            .any(|implied| t.eq_ignore_ascii_case(implied))
    });
    if names_others {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // Usually only `Connection` is there: remove just what is.
    let mut present = [false; ALWAYS_LEN + 1];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
        }
    }
    if any {
        for (i, name) in ALWAYS.iter().chain([&header::UPGRADE]).enumerate() {
            if present[i] {
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn trailers_in_te() {
        let te = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("te", value.parse().unwrap());
            accepts_trailers(&h)
        };
        assert!(te("trailers"));
        assert!(te("gzip;q=0.5, Trailers"));
        assert!(!te("gzip, deflate"));
        assert!(!te("trailersx"));
        assert!(!accepts_trailers(&HeaderMap::new()));
    }

    #[test]
    fn detects_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        h.remove("connection");
        assert!(upgrade_protocol(&h).is_none());
    }

    #[test]
    fn implied_options_do_not_hide_a_named_header() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Keep-Alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn nothing_to_strip_leaves_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert("host", "a".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 2);
    }
}
