//! What the server knows about the connection a request came in on. Every
//! handler is given it beside the request (see `handlers::Next::conn`):
//! passed, not put in the request's extensions, whose map would cost two
//! allocations and a hash lookup per request.

use std::net::SocketAddr;

use http::HeaderValue;

use super::forwarded::ElementMemo;

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
        let text = super::forwarded::IpText::of(client.ip().to_canonical());
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
