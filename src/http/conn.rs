//! What the server knows about the connection a request came in on. Every
//! handler is given it beside the request (see `handlers::Next::conn`):
//! passed, not put in the request's extensions, whose map would cost two
//! allocations and a hash lookup per request.

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address (the TCP peer).
    pub client: SocketAddr,
    /// The local address the request arrived on.
    pub local: SocketAddr,
    /// Whether the connection is TLS (`https`).
    pub tls: bool,
}

impl ConnInfo {
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}
