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
/// request's header work put together, and with one allocation per value.
pub fn add(headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&HeaderValue>) {
    // Room for the four, so the map is not regrown (and rehashed) midway.
    headers.reserve(4);
    let ip = conn.client.ip().to_canonical();
    let node = conn.client_ip_value();
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(node.clone());
        }
        Entry::Occupied(slot) => append_to(slot, node.as_bytes().to_vec()),
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme()));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let host = host.and_then(|h| h.to_str().ok());
    // Sized exactly, so that the value takes the buffer as it is.
    let quoted_host = host.map_or(0, |h| b";host=".len() + quoted_len(h));
    let bracketed = if ip.is_ipv6() { 4 } else { 0 };
    let mut element = Vec::with_capacity(
        b"for=".len()
            + bracketed
            + node.len()
            + quoted_host
            + b";proto=".len()
            + conn.scheme().len(),
    );
    element.extend_from_slice(b"for=");
    // RFC 7239 §6: IPv6 addresses are bracketed, and then must be quoted.
    match ip {
        IpAddr::V4(_) => element.extend_from_slice(node.as_bytes()),
        IpAddr::V6(_) => {
            element.extend_from_slice(b"\"[");
            element.extend_from_slice(node.as_bytes());
            element.extend_from_slice(b"]\"");
        }
    }
    if let Some(host) = host {
        element.extend_from_slice(b";host=");
        push_quoted(&mut element, host);
    }
    element.extend_from_slice(b";proto=");
    element.extend_from_slice(conn.scheme().as_bytes());
    debug_assert_eq!(element.len(), element.capacity());
    append_list(headers, FORWARDED, element);
}

/// An address as text, on the stack (the longest IPv6 form is 45 bytes),
/// an IPv4 one written without the formatter.
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub fn of(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    text.push_u8(octet);
                }
            }
            // Rare enough on this path that the formatter's cost does not matter.
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut rest = &mut text.buf[..];
                let before = rest.len();
                let _ = write!(rest, "{v6}");
                text.len = before - rest.len();
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn push_u8(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn quoted_len(value: &str) -> usize {
    let escapes = value.bytes().filter(|&b| b == b'\\' || b == b'"').count();
    value.len() + escapes + 2
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
/// One lookup by name, whether the header is there or not.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: Vec<u8>) {
    match headers.entry(name) {
        Entry::Vacant(slot) => {
            if let Ok(value) = header_value(item) {
                slot.insert(value);
            }
        }
        Entry::Occupied(slot) => append_to(slot, item),
    }
}

fn append_to(mut slot: http::header::OccupiedEntry<'_, HeaderValue>, item: Vec<u8>) {
    let mut joined = Vec::new();
    for old in slot.iter().filter(|v| v.to_str().is_ok()) {
        joined.extend_from_slice(old.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(&item);
    // An old value that was not valid text: the list starts afresh.
    if let Ok(value) = header_value(joined).or_else(|_| header_value(item)) {
        slot.insert(value);
    }
}

/// A value that takes over `bytes` (no copy when it is exactly full).
fn header_value(bytes: Vec<u8>) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes))
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
