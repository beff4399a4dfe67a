//! `http_redirect`: a plain-HTTP address whose every answer is a 308 to the
//! same URL over HTTPS, as Caddy's automatic redirects.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, StatusCode};

use crate::handlers::{BoxFuture, Terminal};
use crate::message::{body, ConnInfo, Request, Response};

pub struct HttpsRedirect {
    /// The HTTPS port, known once the TLS address is bound (it may be 0 in
    /// the file).
    pub port: Arc<AtomicU16>,
}

impl Terminal for HttpsRedirect {
    fn serve<'a>(&'a self, req: Request, _: &'a ConnInfo) -> BoxFuture<'a, Response> {
        let host = crate::message::original_host(req.uri(), req.headers())
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_default();
        // The name without its port: the redirect names the HTTPS port.
        let name = crate::message::host_without_port(&host);
        let port = match self.port.load(Ordering::Relaxed) {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{name}{port}{path}");
        let mut response = Response::new(body::empty());
        match HeaderValue::from_str(&location) {
            Ok(location) if !name.is_empty() => {
                *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
                response.headers_mut().insert(header::LOCATION, location);
            }
            _ => *response.status_mut() = StatusCode::BAD_REQUEST,
        }
        Box::pin(std::future::ready(response))
    }
}
