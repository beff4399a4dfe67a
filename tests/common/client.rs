//! A small HTTP client over hyper-util's legacy client: HTTP/1.1, or HTTP/2
//! with prior knowledge (h2c). Every exchange is bounded by [`TIMEOUT`].

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use teebox::message::{body, Body, BoxError};

use super::TIMEOUT;

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A body of these bytes, with a known length (`Content-Length`).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    body::full(bytes)
}

/// A body streamed in these pieces with no known length: hyper sends it
/// chunked over HTTP/1.1.
pub fn chunks(pieces: Vec<Bytes>) -> Body {
    let stream = futures_util::stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(p))),
    );
    body::boxed(StreamBody::new(stream))
}

#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Body>,
}

impl Client {
    /// HTTP/1.1, connections kept alive between requests.
    pub fn http1() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(HttpConnector::new()),
        }
    }

    /// HTTP/2 with prior knowledge over plain TCP (h2c).
    pub fn h2c() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(HttpConnector::new()),
        }
    }

    /// Sends `req` and returns the response head with its body unread.
    pub async fn send_streaming(
        &self,
        req: Request<Body>,
    ) -> Result<http::Response<Incoming>, String> {
        match tokio::time::timeout(TIMEOUT, self.inner.request(req)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(teebox::message::error_chain(&err)),
            Err(_) => Err(format!("no response head within {TIMEOUT:?}")),
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<Body>) -> Result<Resp, String> {
        let response = self.send_streaming(req).await?;
        let (parts, incoming) = response.into_parts();
        let body = read_body(incoming).await?;
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// `GET url`; panics on any transport error.
    pub async fn get(&self, url: &str) -> Resp {
        self.request(Method::GET, url, body::empty()).await
    }

    /// `METHOD url` with `body`; panics on any transport error.
    pub async fn request(&self, method: Method, url: &str, body: Body) -> Resp {
        let req = Request::builder()
            .method(method.clone())
            .uri(url)
            .body(body)
            .expect("request");
        self.send(req)
            .await
            .unwrap_or_else(|err| panic!("{method} {url} failed: {err}"))
    }
}

/// Reads a response body whole; an error if it breaks off or stalls.
pub async fn read_body(incoming: Incoming) -> Result<Bytes, String> {
    match tokio::time::timeout(TIMEOUT, incoming.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) => Err(teebox::message::error_chain(&err)),
        Err(_) => Err(format!("body not finished within {TIMEOUT:?}")),
    }
}

/// `GET url` over a fresh HTTP/1.1 client; panics on transport errors.
pub async fn get(url: &str) -> Resp {
    Client::http1().get(url).await
}

/// A request builder for `METHOD url`.
pub fn req(method: &str, url: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(url)
}
