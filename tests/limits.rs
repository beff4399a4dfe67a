//! `global { limits { … } }`: the request-head timer (slowloris), the idle
//! timer, the connection cap and the head size, each on real connections.

mod common;

use std::time::Duration;

use common::ws::EchoServer;
use common::{base_url, raw, start, within, Backend, Client, Reply};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A site proxying to `upstream`, with `limits` inside `global { limits }`.
fn site(limits: &str, upstream: &str) -> String {
    format!(
        "global {{\n  limits {{\n{limits}\n  }}\n}}\nsite \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    reverse_proxy {upstream:?}\n  }}\n}}\n"
    )
}

/// Sends one request on an open connection and reads its whole response
/// (the backend answers `ok` with a Content-Length).
async fn request_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: limits.test\r\n\r\n");
    within("writing a request", stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = within("the response", stream.read(&mut buf))
            .await
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the server closes the connection; returns what came.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    within("the server to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

#[tokio::test]
async fn a_head_sent_too_slowly_gets_408_and_a_closed_connection() {
    let backend = Backend::ok().await;
    let running = start(&site("read_header_timeout \"300ms\"", &backend.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    // Part of a head, then nothing: the slowloris pattern.
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: limits.test\r\nX-A: 1\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut stream).await;
    assert_eq!(
        raw::status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn a_connection_that_never_sends_a_head_is_closed() {
    let backend = Backend::ok().await;
    let running = start(&site("read_header_timeout \"200ms\"", &backend.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    until_closed(&mut stream).await;
}

#[tokio::test]
async fn keep_alive_outlives_the_head_timer_and_ends_at_idle_timeout() {
    let backend = Backend::ok().await;
    let limits = "read_header_timeout \"200ms\"\nidle_timeout \"1s\"";
    let running = start(&site(limits, &backend.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    assert!(request_on(&mut stream, "/one")
        .await
        .starts_with("HTTP/1.1 200"));
    // Idle for longer than the head timer: the connection is still there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(request_on(&mut stream, "/two")
        .await
        .starts_with("HTTP/1.1 200"));
    // Then idle past idle_timeout: closed quietly, with no 408.
    let got = until_closed(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(backend.count(), 2);
}

#[tokio::test]
async fn a_slow_upstream_is_not_cut_by_the_connection_timers() {
    let backend = Backend::start(Reply::ok("ok").delay(Duration::from_millis(700))).await;
    let limits = "read_header_timeout \"200ms\"\nidle_timeout \"300ms\"";
    let running = start(&site(limits, &backend.url())).await;
    let resp = Client::http1()
        .get(&format!("{}/slow-upstream", base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn a_websocket_is_not_cut_by_the_idle_timer() {
    let echo = EchoServer::start().await;
    let limits = "read_header_timeout \"200ms\"\nidle_timeout \"300ms\"";
    let running = start(&site(limits, &echo.url())).await;
    let (mut ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", running.addr())),
    )
    .await
    .expect("handshake");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        within("sending", ws.send(Message::text("still here")))
            .await
            .unwrap();
        let echoed = within("the echo", ws.next())
            .await
            .expect("open")
            .expect("message");
        assert_eq!(echoed, Message::text("still here"));
    }
}

#[tokio::test]
async fn at_max_connections_the_next_one_waits_for_a_free_slot() {
    let backend = Backend::ok().await;
    let running = start(&site("max_connections 2", &backend.url())).await;
    let mut first = TcpStream::connect(running.addr()).await.unwrap();
    let mut second = TcpStream::connect(running.addr()).await.unwrap();
    request_on(&mut first, "/1").await;
    request_on(&mut second, "/2").await;
    // The third connection is accepted by the kernel but not served.
    let mut third = TcpStream::connect(running.addr()).await.unwrap();
    third
        .write_all(b"GET /3 HTTP/1.1\r\nHost: limits.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    assert_eq!(backend.count(), 2);
    // A slot frees up: the waiting request is served.
    drop(first);
    let n = within("the third response", third.read(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn max_header_size_sets_the_431_threshold() {
    let backend = Backend::ok().await;
    let running = start(&site("max_header_size \"8KiB\"", &backend.url())).await;
    let mut request = b"GET /big HTTP/1.1\r\nHost: limits.test\r\nX-Big: ".to_vec();
    request.extend(vec![b'a'; 10 * 1024]);
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let outcome = raw::exchange(running.addr(), &request).await;
    assert_eq!(outcome.status(), Some(431), "{}", outcome.text());
    assert_eq!(backend.count(), 0);
    // Under the limit is fine.
    let mut request = b"GET /ok HTTP/1.1\r\nHost: limits.test\r\nX-Big: ".to_vec();
    request.extend(vec![b'a'; 6 * 1024]);
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let outcome = raw::exchange(running.addr(), &request).await;
    assert_eq!(outcome.status(), Some(200), "{}", outcome.text());
}

/// A site whose route caps the body, then mirrors, then proxies.
fn capped_site(max_size: &str, shadow: &Backend, primary: &Backend) -> String {
    format!(
        "site \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    request_body max_size={max_size:?}\n    mirror {:?}\n    reverse_proxy {:?}\n  }}\n}}\n",
        shadow.url(),
        primary.url()
    )
}

#[tokio::test]
async fn request_body_over_max_size_gets_413_early_when_the_length_says_so() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start(&capped_site("1KiB", &shadow, &primary)).await;
    let req = common::client::req("POST", &format!("{}/up", base_url(&running)))
        .body(common::client::full(vec![b'x'; 2048]))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("response");
    assert_eq!(resp.status, 413);
    assert_eq!(primary.count(), 0);
    shadow.assert_stays_at(0, Duration::from_millis(100)).await;
    // At the limit is fine, byte for byte.
    let body = common::random_bytes(1024, 9);
    let req = common::client::req("POST", &format!("{}/up", base_url(&running)))
        .body(common::client::full(body.clone()))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(primary.wait_for(1).await[0].body.as_ref(), body.as_slice());
    assert_eq!(shadow.wait_for(1).await[0].body.as_ref(), body.as_slice());
}

#[tokio::test]
async fn a_chunked_body_passing_max_size_gets_413_and_no_copy() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start(&capped_site("1KiB", &shadow, &primary)).await;
    let pieces = (0..4)
        .map(|_| bytes::Bytes::from(vec![b'y'; 512]))
        .collect();
    let req = common::client::req("POST", &format!("{}/stream", base_url(&running)))
        .body(common::client::chunks(pieces))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("response");
    assert_eq!(resp.status, 413);
    // No complete request reached either side.
    shadow.assert_stays_at(0, Duration::from_millis(100)).await;
    assert!(primary.requests().iter().all(|r| r.body.len() <= 1024));
}
