//! `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239) on requests a
//! proxy sends upstream.
//!
//! Like nginx's `$proxy_add_x_forwarded_for`, the client's address is
//! appended to any `X-Forwarded-For` and `Forwarded` the request already had,
//! so a chain of proxies is kept; `X-Forwarded-Proto` and `-Host` describe
//! this hop and replace what the client sent.

use std::net::IpAddr;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, FORWARDED};

use super::ConnInfo;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Runs on every proxied request and copy, so it builds the values by hand
/// rather than through `format!`, which cost more than the rest of the
/// request's header work put together.
pub fn add(headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&HeaderValue>) {
    // Room for the four, so the map is not regrown (and rehashed) midway.
    headers.reserve(4);
    let ip = conn.client.ip().to_canonical();
    let mut node = String::with_capacity(48);
    push_ip(&mut node, ip);
    append_list(headers, X_FORWARDED_FOR, &node);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme()));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let mut element = String::with_capacity(64);
    element.push_str("for=");
    // RFC 7239 §6: IPv6 addresses are bracketed, and then must be quoted.
    match ip {
        IpAddr::V4(_) => element.push_str(&node),
        IpAddr::V6(_) => {
            element.push_str("\"[");
            element.push_str(&node);
            element.push_str("]\"");
        }
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        push_quoted(&mut element, host);
    }
    element.push_str(";proto=");
    element.push_str(conn.scheme());
    append_list(headers, FORWARDED, &element);
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u8(out, octet);
            }
        }
        // Rare enough on this path that the formatter's cost does not matter.
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_u8(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + n / 10 % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Appends to a comma-separated header, joining several lines into one.
/// One lookup by name, whether the header is there or not.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut slot = match headers.entry(name) {
        Entry::Vacant(slot) => {
            if let Ok(value) = HeaderValue::from_str(item) {
                slot.insert(value);
            }
            return;
        }
        Entry::Occupied(slot) => slot,
    };
    let mut joined = slot
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(item);
    // An old value that was not valid text: the list starts afresh.
    if let Ok(value) = HeaderValue::from_str(&joined).or_else(|_| HeaderValue::from_str(item)) {
        slot.insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo {
            client: format!("{ip}:1234").parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            tls: false,
        }
    }

    #[test]
    fn appends_to_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        add(
            &mut h,
            &conn("192.0.2.7"),
            Some(&HeaderValue::from_static("example.com")),
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
            add(&mut h, &conn(ip), None);
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
        );
        assert_eq!(
            h[FORWARDED],
            "for=192.0.2.7;host=\"a\\\\b\\\"c\";proto=http"
        );
    }

    #[test]
    fn ipv6_is_quoted() {
        let mut h = HeaderMap::new();
        add(&mut h, &conn("[::1]"), None);
        assert_eq!(h[FORWARDED], "for=\"[::1]\";proto=http");
    }
}
