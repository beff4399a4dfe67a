//! What the server knows about the connection a request came in on. Every
//! handler is given it beside the request (see `handlers::Next::conn`):
//! passed, not put in the request's extensions, whose map would cost two
//! allocations and a hash lookup per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use http::HeaderValue;

#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (the TCP peer).
    pub client: SocketAddr,
    /// The local address the request arrived on.
    pub local: SocketAddr,
    /// Whether the connection is TLS (`https`).
    pub tls: bool,
    /// The client's IP address as text, made once per connection: every
    /// proxied request's `X-Forwarded-For` names it.
    client_ip: HeaderValue,
    forwarded: ElementMemo,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        let text = IpText::of(client.ip().to_canonical());
        ConnInfo {
            client,
            local,
            tls,
            client_ip: HeaderValue::from_bytes(text.as_bytes())
                .expect("an IP address is a valid header value"),
            forwarded: ElementMemo::default(),
        }
    }

    /// The same connection, after its TLS handshake.
    pub fn over_tls(self) -> Self {
        ConnInfo {
            tls: true,
            forwarded: ElementMemo::default(),
            ..self
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The client's IP address (IPv4-mapped IPv6 as IPv4) as a header value.
    pub fn client_ip_value(&self) -> &HeaderValue {
        &self.client_ip
    }

    /// The `Forwarded` element last made for a request on this connection.
    pub fn forwarded_memo(&self) -> &ElementMemo {
        &self.forwarded
    }
}

/// A connection's last `Forwarded` element and the host it was made for.
/// Every request on a connection usually names the same host, so the
/// element is made once and shared (a reference count) after that.
#[derive(Default)]
pub struct ElementMemo(Mutex<Option<(Option<HeaderValue>, HeaderValue)>>);

/// A copy of a `ConnInfo` starts with an empty memo of its own.
impl Clone for ElementMemo {
    fn clone(&self) -> Self {
        ElementMemo::default()
    }
}

impl ElementMemo {
    pub fn element(
        &self,
        host: Option<&HeaderValue>,
        make: impl FnOnce() -> HeaderValue,
    ) -> HeaderValue {
        // Concurrent HTTP/2 streams do not wait on each other for it.
        let Ok(mut memo) = self.0.try_lock() else {
            return make();
        };
        if let Some((for_host, element)) = &*memo {
            if for_host.as_ref().map(HeaderValue::as_bytes) == host.map(HeaderValue::as_bytes) {
                return element.clone();
            }
        }
        let element = make();
        // Owned bytes: the request's host is a slice of hyper's read
        // buffer, which a connection-long memo must not hold on to.
        let host =
            host.map(|h| HeaderValue::from_bytes(h.as_bytes()).unwrap_or_else(|_| h.clone()));
        *memo = Some((host, element.clone()));
        element
    }
}

impl std::fmt::Debug for ElementMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ElementMemo")
    }
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
