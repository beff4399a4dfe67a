//! What the server knows about the connection a request came in on. The
//! server puts a [`ConnInfo`] in every request's extensions.

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
