//! The floor under teebox's proxy: the least a reverse proxy built on hyper 1
//! and tokio does per request, for measuring what teebox's own layers cost.
//!
//! One current-thread runtime, hyper's HTTP/1.1 server and client, a pool of
//! kept upstream connections, bodies streamed both ways, teebox's allocator;
//! no routes, timeouts, limits, counters or forwarding headers. It takes the
//! command line teebox takes from `../shared/bench/run` (`run SITE.kdl`) and
//! reads the first `site` address and `reverse_proxy` URL from that file, so
//! the bench runs it in teebox's place:
//!
//! ```text
//! cargo build --release --example bare_hyper_proxy
//! ../shared/bench/run --teebox target/release/examples/bare_hyper_proxy \
//!     --systems nginx-proxy,teebox-proxy --repeat 3 --scenarios healthy
//! ```
//!
//! The README's Performance section has what it measured.

#[path = "../src/allocator.rs"]
mod allocator;

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Kept connections to the one upstream.
#[derive(Clone)]
struct Pool {
    idle: Arc<Mutex<Vec<SendRequest<Body>>>>,
    upstream: Arc<str>,
}

impl Pool {
    async fn checkout(&self) -> Result<SendRequest<Body>, Error> {
        loop {
            let kept = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(mut send) = kept else { break };
            if send.ready().await.is_ok() {
                return Ok(send);
            }
        }
        let stream = TcpStream::connect(&*self.upstream).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// Puts `send` back once its exchange is over.
    fn check_in(&self, mut send: SendRequest<Body>) {
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if send.ready().await.is_ok() {
                idle.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(send);
            }
        });
    }

    /// Errors as `io::Error`, a type hyper's service bound takes as is.
    async fn forward(
        &self,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Body>, std::io::Error> {
        let (mut parts, body) = req.into_parts();
        if let Some(origin_form) = parts.uri.path_and_query() {
            parts.uri = origin_form
                .as_str()
                .parse()
                .map_err(std::io::Error::other)?;
        }
        let mut send = self.checkout().await.map_err(std::io::Error::other)?;
        let sent = send
            .send_request(hyper::Request::from_parts(parts, body.boxed_unsync()))
            .await;
        self.check_in(send);
        Ok(sent
            .map_err(std::io::Error::other)?
            .map(BodyExt::boxed_unsync))
    }
}

/// The first quoted value after `key "` in `text`.
fn quoted_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

fn addresses(args: &[String]) -> Result<(String, String), Error> {
    let [_, verb, file] = args else {
        return Err("usage: bare_hyper_proxy run SITE.kdl".into());
    };
    if verb != "run" {
        return Err(
            format!("unknown command {verb:?}; usage: bare_hyper_proxy run SITE.kdl").into(),
        );
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    // What the bench adds for its other rows, which this proxy does not do.
    for unsupported in ["tls", "mirror"] {
        if text
            .lines()
            .any(|line| line.trim_start().starts_with(unsupported))
        {
            return Err(
                format!("{file}: `{unsupported}` is not supported, only plain proxying").into(),
            );
        }
    }
    let listen = quoted_after(&text, "site \"").ok_or("no `site \"ADDRESS\"` in the file")?;
    let upstream = quoted_after(&text, "reverse_proxy \"http://")
        .ok_or("no `reverse_proxy \"http://ADDRESS\"` in the file")?;
    Ok((listen.to_string(), upstream.to_string()))
}

async fn serve(listen: String, upstream: String) -> Result<(), Error> {
    let pool = Pool {
        idle: Arc::default(),
        upstream: upstream.into(),
    };
    let listener = TcpListener::bind(&listen).await?;
    loop {
        // A client gone before it was accepted, or no file descriptor left
        // for now, ends that connection, not the proxy.
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                eprintln!("bare_hyper_proxy: accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let pool = pool.clone();
                async move { pool.forward(req).await }
            });
            // teebox's settings for a plain HTTP/1.1 connection: one write per
            // response, reads of at most 80 KiB.
            let _ = hyper::server::conn::http1::Builder::new()
                .writev(false)
                .max_buf_size(80 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let run = addresses(&args).and_then(|(listen, upstream)| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(serve(listen, upstream))
    });
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bare_hyper_proxy: {err}");
            std::process::ExitCode::from(2)
        }
    }
}
