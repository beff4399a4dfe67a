//! What the admin endpoint checks before it authenticates anyone:
//!
//! - `Host` must name the endpoint itself (its address, or `localhost` on
//!   a loopback address): a page that rebinds its own DNS name to
//!   127.0.0.1 (DNS rebinding) sends its own name and is refused;
//! - a state-changing call (PUT, POST, DELETE) from a browser page of
//!   another origin (`Origin` not the endpoint's) is refused, so no page
//!   can drive the endpoint through a visitor's browser;
//! - URIs and bodies are capped (the endpoint takes its parameters in the
//!   query, and never needs a body).
//!
//! Logins are slowed down in [`super::throttle`].

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Admin calls carry their parameters in the query; a body is never needed.
pub const MAX_BODY: u64 = 64 * 1024;
/// The longest path and query taken: room for a mirror's 1000 targets in
/// one call, and under the 64 KiB over which hyper answers 414 itself
/// (without a reason).
pub const MAX_URI: usize = 60 * 1024;
/// How much of a request head the connection buffers, well over
/// [`MAX_URI`], so that a long URI is read whole and answered with 414
/// rather than cut off.
pub const MAX_HEAD_BUFFER: usize = 512 * 1024;

/// The `host:port` spellings that name the endpoint.
pub struct Origins {
    hosts: Vec<String>,
}

impl Origins {
    pub fn new(local: SocketAddr) -> Self {
        let port = local.port();
        let mut hosts = vec![match local.ip() {
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        }];
        if local.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
            hosts.push(format!("127.0.0.1:{port}"));
            hosts.push(format!("[::1]:{port}"));
        }
        Origins { hosts }
    }

    fn names_us(&self, host_port: &str) -> bool {
        let host_port = host_port.to_ascii_lowercase();
        self.hosts.contains(&host_port)
    }

    /// `Err` with the reason when the request must be refused with 403.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), &'static str> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or_default();
            if !self.names_us(host) {
                return Err("the Host header does not name the admin endpoint\n");
            }
        }
        let changes = matches!(
            *method,
            Method::PUT | Method::POST | Method::DELETE | Method::PATCH
        );
        if let (true, Some(origin)) = (changes, headers.get(header::ORIGIN)) {
            let origin = origin.to_str().unwrap_or_default();
            let same = origin
                .strip_prefix("http://")
                .is_some_and(|host_port| self.names_us(host_port));
            if !same {
                return Err("a state-changing call from another origin is refused\n");
            }
        }
        Ok(())
    }
}

/// Whether the request's path and query are over [`MAX_URI`].
pub fn uri_too_long(uri: &Uri) -> bool {
    uri.path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI
}

/// How long a client may take to send a request head, and then its body.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long one admin connection may stay open, keep-alive included.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads the whole body, refusing it with 413 as soon as more than
/// [`MAX_BODY`] bytes arrive, whatever the request declared, and with 408
/// when it takes longer than [`READ_TIMEOUT`].
pub async fn read_body<B>(body: B) -> Result<Bytes, StatusCode>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        Limited::new(body, MAX_BODY as usize).collect(),
    );
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// The status for a body over [`MAX_BODY`], when the request declares one.
pub fn body_too_large(headers: &HeaderMap) -> Option<StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY => Some(StatusCode::PAYLOAD_TOO_LARGE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn host_and_origin() {
        let o = Origins::new("127.0.0.1:2019".parse().unwrap());
        assert!(o
            .check(&Method::GET, &headers(&[("host", "127.0.0.1:2019")]))
            .is_ok());
        assert!(o
            .check(&Method::GET, &headers(&[("host", "LOCALHOST:2019")]))
            .is_ok());
        assert!(o.check(&Method::GET, &headers(&[])).is_ok());
        assert!(o
            .check(&Method::GET, &headers(&[("host", "evil.test:2019")]))
            .is_err());
        let put = |origin| {
            o.check(
                &Method::PUT,
                &headers(&[("host", "127.0.0.1:2019"), ("origin", origin)]),
            )
        };
        assert!(put("http://127.0.0.1:2019").is_ok());
        assert!(put("http://evil.test").is_err());
        assert!(put("null").is_err());
        // Reading is fine from anywhere the Host allows.
        assert!(o
            .check(
                &Method::GET,
                &headers(&[("host", "127.0.0.1:2019"), ("origin", "http://evil.test")])
            )
            .is_ok());
    }

    #[tokio::test]
    async fn bodies_are_limited_by_what_arrives() {
        use futures_util::stream;
        use http_body_util::StreamBody;
        let chunks = |n: usize| {
            StreamBody::new(stream::iter((0..n).map(|_| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                    b'x';
                    8 * 1024
                ])))
            })))
        };
        assert_eq!(read_body(chunks(8)).await.unwrap().len(), 64 * 1024);
        assert_eq!(
            read_body(chunks(9)).await.unwrap_err(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
