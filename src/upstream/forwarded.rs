//! `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239) on requests a
//! proxy sends upstream.
//!
//! Like nginx's `$proxy_add_x_forwarded_for`, the client's address is
//! appended to any `X-Forwarded-For` and `Forwarded` the request already had,
//! so a chain of proxies is kept; `X-Forwarded-Proto` and `-Host` describe
//! this hop and replace what the client sent.

use std::net::IpAddr;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, FORWARDED};

use crate::message::ConnInfo;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Runs on every proxied request and copy, so the values are built by hand
/// (`format!` cost more than the rest of the request's header work put
/// together), and the `Forwarded` element, which only changes with the
/// host, is made once per connection and host (see [`ElementMemo`]).
///
/// `earlier`: the request may already carry forwarding headers (see
/// `hop_by_hop::Scan::has_forwarding`). Without them, the four are
/// appended, which costs less than inserting over what might be there.
pub fn add(headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&HeaderValue>, earlier: bool) {
    // Room for the four, so the map is not regrown (and rehashed) midway.
    headers.reserve(4);
    let node = conn.client_ip_value();
    let element = conn.forwarded_memo().element(host, || element(conn, host));
    if !earlier {
        headers.append(X_FORWARDED_FOR, node.clone());
        headers.append(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme()));
        if let Some(host) = host {
            headers.append(X_FORWARDED_HOST, host.clone());
        }
        headers.append(FORWARDED, element);
        return;
    }
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(node.clone());
        }
        Entry::Occupied(slot) => append_to(slot, node.as_bytes()),
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme()));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    match headers.entry(FORWARDED) {
        Entry::Vacant(slot) => {
            slot.insert(element);
        }
        Entry::Occupied(slot) => append_to(slot, element.as_bytes()),
    }
}

/// This hop's `Forwarded` element: `for=...;host="...";proto=...`.
fn element(conn: &ConnInfo, host: Option<&HeaderValue>) -> HeaderValue {
    let node = conn.client_ip_value().as_bytes();
    let host = host.and_then(|h| h.to_str().ok());
    let mut element = Vec::with_capacity(64);
    element.extend_from_slice(b"for=");
    // RFC 7239 §6: IPv6 addresses are bracketed, and then must be quoted.
    match conn.client.ip().to_canonical() {
        IpAddr::V4(_) => element.extend_from_slice(node),
        IpAddr::V6(_) => {
            element.extend_from_slice(b"\"[");
            element.extend_from_slice(node);
            element.extend_from_slice(b"]\"");
        }
    }
    if let Some(host) = host {
        element.extend_from_slice(b";host=");
        push_quoted(&mut element, host);
    }
    element.extend_from_slice(b";proto=");
    element.extend_from_slice(conn.scheme().as_bytes());
    HeaderValue::from_bytes(&element).expect("made of a valid address and a valid header value")
}

fn push_quoted(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for &b in value.as_bytes() {
        if b == b'\\' || b == b'"' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends to a comma-separated header, joining several lines into one.
fn append_to(mut slot: http::header::OccupiedEntry<'_, HeaderValue>, item: &[u8]) {
    let mut joined = Vec::new();
    for old in slot.iter().filter(|v| v.to_str().is_ok()) {
        joined.extend_from_slice(old.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(item);
    // An old value that was not valid text: the list starts afresh.
    if let Ok(value) = HeaderValue::from_bytes(&joined).or_else(|_| HeaderValue::from_bytes(item)) {
        slot.insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo::new(
            format!("{ip}:1234").parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            false,
        )
    }

    #[test]
    fn appends_to_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        add(
            &mut h,
            &conn("192.0.2.7"),
            Some(&HeaderValue::from_static("example.com")),
            true,
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 192.0.2.7");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "example.com");
        assert_eq!(
            h[FORWARDED],
            "for=192.0.2.7;host=\"example.com\";proto=http"
        );
    }

    #[test]
    fn formats_every_octet_width() {
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "192.0.2.7"] {
            let mut h = HeaderMap::new();
            add(&mut h, &conn(ip), None, false);
            assert_eq!(h[X_FORWARDED_FOR], ip);
        }
    }

    #[test]
    fn host_is_quoted_and_escaped() {
        let mut h = HeaderMap::new();
        add(
            &mut h,
            &conn("192.0.2.7"),
            Some(&HeaderValue::from_static("a\\b\"c")),
            false,
        );
        assert_eq!(
            h[FORWARDED],
            "for=192.0.2.7;host=\"a\\\\b\\\"c\";proto=http"
        );
    }

    #[test]
    fn appending_to_a_fresh_block_gives_what_inserting_does() {
        let host = HeaderValue::from_static("example.com");
        for host in [Some(&host), None] {
            let (mut appended, mut inserted) = (HeaderMap::new(), HeaderMap::new());
            add(&mut appended, &conn("192.0.2.7"), host, false);
            add(&mut inserted, &conn("192.0.2.7"), host, true);
            assert_eq!(appended, inserted);
        }
    }

    #[test]
    fn ipv6_is_quoted() {
        let mut h = HeaderMap::new();
        add(&mut h, &conn("[::1]"), None, false);
        assert_eq!(h[FORWARDED], "for=\"[::1]\";proto=http");
    }
}
