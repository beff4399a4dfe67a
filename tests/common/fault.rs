//! Servers that misbehave on purpose: nothing listening, never answering,
//! answering with a body cut short.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::TIMEOUT;

/// An address with nothing listening: a socket bound to it but never
/// listening, so connecting is refused. The socket is kept open until the
/// test process ends: a port merely freed could be handed to another
/// test's server (the kernel picks a free port at random) and then answer.
pub fn refused_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = socket.local_addr().expect("address");
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    addr
}

/// `http://ADDR` for [`refused_addr`].
pub fn refused_url() -> String {
    format!("http://{}", refused_addr())
}

/// A server that runs `script` on every accepted connection; stops
/// accepting when dropped.
pub struct FaultServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    pub async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(stream));
            }
        });
        FaultServer {
            addr,
            accepted,
            task,
        }
    }

    /// Accepts, reads whatever comes, and never answers (the connection is
    /// held open for [`TIMEOUT`]).
    pub async fn silent() -> Self {
        Self::start(|mut stream| async move {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(TIMEOUT, async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        // The peer closed; keep our side open anyway.
                        std::future::pending::<()>().await;
                    }
                }
            })
            .await;
        })
        .await
    }

    /// Reads a request head, writes `response` as raw bytes, then closes.
    pub async fn raw_reply(response: Vec<u8>) -> Self {
        Self::reply_then_close(response, false).await
    }

    /// Answers `200` with `Content-Length: declared` but sends only `sent`
    /// bytes of body, then closes the connection.
    pub async fn truncated_body(declared: usize, sent: usize) -> Self {
        assert!(sent < declared);
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n")
                .into_bytes();
        response.extend(vec![b'x'; sent]);
        Self::raw_reply(response).await
    }

    /// Reads a request head, writes `response` as raw bytes, then resets
    /// the connection (RST, not a clean close).
    pub async fn raw_reply_then_reset(response: Vec<u8>) -> Self {
        Self::reply_then_close(response, true).await
    }

    async fn reply_then_close(response: Vec<u8>, reset: bool) -> Self {
        let response = Arc::new(response);
        Self::start(move |mut stream| {
            let response = response.clone();
            async move {
                if read_head(&mut stream).await.is_some() {
                    let _ = stream.write_all(&response).await;
                    let _ = stream.flush().await;
                }
                if reset {
                    // A zero linger sends RST on drop without blocking; the
                    // deprecation warns about non-zero lingers.
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
                }
                // Dropping the stream closes the connection.
            }
        })
        .await
    }

    /// Answers every request with a chunked body that never ends (until the
    /// peer goes away or [`TIMEOUT`] passes).
    pub async fn endless() -> Self {
        Self::start(|mut stream| async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "e".repeat(0x4000));
            let _ = tokio::time::timeout(TIMEOUT, async {
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            })
            .await;
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads up to the end of a request head (`\r\n\r\n`); `None` if the peer
/// closes or nothing complete arrives within [`TIMEOUT`].
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(head);
            }
        }
    })
    .await
    .ok()
    .flatten()
}
