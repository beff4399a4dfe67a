//! A WebSocket echo server (tokio-tungstenite) on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::TIMEOUT;

/// Echoes every text and binary message back on the same connection.
pub struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tokio::time::timeout(TIMEOUT, async {
                        while let Some(Ok(msg)) = ws.next().await {
                            if msg.is_close() {
                                break;
                            }
                            let echo = msg.is_text() || msg.is_binary();
                            if echo && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                });
            }
        });
        EchoServer {
            addr,
            handshakes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Completed WebSocket handshakes.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}
