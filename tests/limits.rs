//! `global { limits { … } }`: the request-head timer (slowloris), the idle
//! timer, the connection cap and the head size, each on real connections.

mod common;

use std::future::Future as _;
use std::time::Duration;

use common::ws::EchoServer;
use common::{base_url, raw, start, within, Backend, Chain, Client, Mirror, Reply, Site};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A site proxying to `upstream`, with `limits` inside `global { limits }`.
fn site(limits: &str, upstream: &str) -> String {
    Site::new()
        .limits(limits)
        .route("/*", Chain::new().proxy(upstream))
        .to_kdl()
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

/// An upstream that answers each request as soon as its head is in (`ok`),
/// then reads its body, as one that refuses an upload early might.
async fn answers_before_the_body() -> common::fault::FaultServer {
    common::fault::FaultServer::start(|mut stream| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            buf.drain(..end);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
            while buf.len() < length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..length);
        }
    })
    .await
}

#[tokio::test]
async fn an_upload_going_on_after_an_early_answer_is_no_slow_head() {
    let upstream = answers_before_the_body().await;
    let running = start(&site("read_header_timeout \"500ms\"", &upstream.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream
        .write_all(b"POST /early HTTP/1.1\r\nHost: limits.test\r\nContent-Length: 6000\r\n\r\n")
        .await
        .unwrap();
    // The answer comes before the body...
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = within("the early answer", stream.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // ... which goes on for longer than `read_header_timeout`: those bytes
    // are a body, not a slow head, and get no 408.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&[b'x'; 1000]).await.unwrap();
    }
    let after = request_on(&mut stream, "/after").await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
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

/// The start every HTTP/2 preface shares is no reason to wait for
/// `idle_timeout`: the client is still sending its "head".
#[tokio::test]
async fn a_client_sending_only_pri_star_http_2_0_is_closed_at_read_header_timeout() {
    let backend = Backend::ok().await;
    let limits = "read_header_timeout \"300ms\"\nidle_timeout \"1h\"";
    let running = start(&site(limits, &backend.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0").await.unwrap();
    let got = until_closed(&mut stream).await;
    // It might still have been HTTP/1.1, which is told why.
    assert_eq!(
        raw::status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn an_h2_preface_without_its_settings_frame_is_closed_at_read_header_timeout() {
    let backend = Backend::ok().await;
    let limits = "read_header_timeout \"300ms\"\nidle_timeout \"1h\"";
    let running = start(&site(limits, &backend.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    // Half of a SETTINGS frame header.
    stream
        .write_all(&[0, 0, 6, raw_h2::SETTINGS])
        .await
        .unwrap();
    let got = until_closed(&mut stream).await;
    // An HTTP/2 client gets no HTTP/1.1 answer.
    assert!(
        !got.windows(4).any(|w| w == b"HTTP"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn an_h2_connection_whose_opening_is_complete_outlives_read_header_timeout() {
    let backend = Backend::ok().await;
    let limits = "read_header_timeout \"200ms\"\nidle_timeout \"1h\"";
    let running = start(&site(limits, &backend.url())).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    // SETTINGS_MAX_CONCURRENT_STREAMS 100, in two pieces.
    let settings = raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    stream.write_all(&settings[..11]).await.unwrap();
    stream.write_all(&settings[11..]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(&raw_h2::get_headers(1)).await.unwrap();
    let status = within("the response's HEADERS", async {
        loop {
            let (kind, _, id, payload) = raw_h2::read_frame(&mut stream).await;
            if kind == raw_h2::HEADERS && id == 1 {
                break payload[0];
            }
        }
    })
    .await;
    // HPACK static table entry 8: `:status 200`.
    assert_eq!(status, 0x88);
    assert_eq!(backend.count(), 1);
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
    // The idle timer, which came due while the upstream was answering,
    // still closes a kept-alive connection once it is idle.
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    assert!(request_on(&mut stream, "/slow-again")
        .await
        .starts_with("HTTP/1.1 200"));
    let got = until_closed(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn a_websocket_is_not_cut_by_the_idle_or_body_timers() {
    let echo = EchoServer::start().await;
    let limits =
        "read_header_timeout \"200ms\"\nread_body_timeout \"300ms\"\nidle_timeout \"300ms\"";
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

/// A WebSocket through teebox to the echo server, one message there and
/// back, so the tunnel is surely up.
async fn open_tunnel(
    running: &teebox::server::Running,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (mut ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", running.addr())),
    )
    .await
    .expect("handshake");
    within("sending", ws.send(Message::text("hi")))
        .await
        .unwrap();
    within("the echo", ws.next())
        .await
        .expect("open")
        .expect("message");
    ws
}

#[tokio::test]
async fn a_websocket_tunnel_keeps_its_connection_slot_until_it_closes() {
    let echo = EchoServer::start().await;
    let running = start(&site("max_connections 1", &echo.url())).await;
    let mut ws = open_tunnel(&running).await;
    // The tunnel holds the one slot: a new connection is not served.
    let mut other = TcpStream::connect(running.addr()).await.unwrap();
    other
        .write_all(b"GET /other HTTP/1.1\r\nHost: limits.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), other.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "served beside an open tunnel at max_connections 1"
    );
    // The tunnel closes: its slot goes to the waiting connection.
    within("closing", ws.close(None)).await.unwrap();
    drop(ws);
    let n = within("the other response", other.read(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
}

#[tokio::test]
async fn shutdown_counts_an_open_websocket_tunnel() {
    let echo = EchoServer::start().await;
    let running = start(&site("", &echo.url())).await;
    let _ws = open_tunnel(&running).await;
    let finished = within("shutdown", running.shutdown(Duration::from_millis(300))).await;
    assert!(!finished, "shutdown overlooked the open tunnel");
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
    let chain = Chain::new()
        .request_body(max_size)
        .mirror(Mirror::to(shadow))
        .proxy(primary);
    Site::new().route("/*", chain).to_kdl()
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

/// A site that mirrors to `shadow`, then proxies to `primary`.
fn mirrored_site(limits: &str, shadow: &Backend, primary: &Backend) -> String {
    let chain = Chain::new().mirror(Mirror::to(shadow)).proxy(primary);
    Site::new().limits(limits).route("/*", chain).to_kdl()
}

/// A complete head, part of its body, then nothing (slowloris on the body):
/// 408 and a closed connection; the primary sees the body fail, the shadow
/// gets no copy.
async fn stall_mid_body(head_and_part: &[u8]) {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start(&mirrored_site(
        "read_body_timeout \"300ms\"",
        &shadow,
        &primary,
    ))
    .await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream.write_all(head_and_part).await.unwrap();
    let got = until_closed(&mut stream).await;
    assert_eq!(
        raw::status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let seen = primary.wait_for(1).await;
    assert!(
        seen[0].body_error.is_some(),
        "the primary saw a complete-looking body: {seen:#?}"
    );
    shadow.assert_stays_at(0, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_the_upstream_sees_it_aborted() {
    let mut request =
        b"POST /slow-body HTTP/1.1\r\nHost: limits.test\r\nContent-Length: 100\r\n\r\n".to_vec();
    request.extend(vec![b'x'; 50]);
    stall_mid_body(&request).await;
}

#[tokio::test]
async fn a_chunked_body_that_stalls_gets_408_and_the_upstream_sees_it_aborted() {
    let request = b"POST /slow-chunks HTTP/1.1\r\nHost: limits.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nhalf";
    stall_mid_body(request).await;
}

#[tokio::test]
async fn a_complete_body_is_not_cut_by_read_body_timeout_while_the_upstream_is_slow_or_streams() {
    // The head comes after the timeout, the body streams for longer than it.
    let reply = Reply::ok(vec![b'z'; 4096])
        .delay(Duration::from_millis(500))
        .chunked(1024)
        .chunk_delay(Duration::from_millis(200));
    let backend = Backend::start(reply).await;
    let running = start(&site("read_body_timeout \"300ms\"", &backend.url())).await;
    let req = common::client::req("POST", &format!("{}/upload", base_url(&running)))
        .body(common::client::full("a whole body"))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 4096);
    assert_eq!(backend.only().body.as_ref(), b"a whole body");
}

// ---------------------------------------------------------------------------
// HTTP/2 (h2c): stream concurrency and rapid reset, with the `h2` crate as a
// raw client so that settings, resets and GOAWAY reasons are visible.

type H2Connection = h2::client::Connection<TcpStream, bytes::Bytes>;

/// An h2c connection to teebox whose SETTINGS have been received.
async fn h2_connect(
    running: &common::Running,
) -> (h2::client::SendRequest<bytes::Bytes>, H2Connection) {
    let tcp = TcpStream::connect(running.addr()).await.expect("connect");
    let (send, mut conn) = within("the HTTP/2 handshake", h2::client::handshake(tcp))
        .await
        .expect("handshake");
    // Until the server's SETTINGS arrive, the client assumes no stream
    // limit (usize::MAX); drive the connection until they are applied.
    within(
        "the server's SETTINGS",
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(ended) = std::pin::Pin::new(&mut conn).poll(cx) {
                panic!("the connection ended during the handshake: {ended:?}");
            }
            match conn.max_concurrent_send_streams() {
                usize::MAX => std::task::Poll::Pending,
                _ => std::task::Poll::Ready(()),
            }
        }),
    )
    .await;
    (send, conn)
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://limits.test{path}"))
        .body(())
        .expect("request")
}

/// Sends one GET on `send` and returns its status.
async fn h2_status(
    send: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> Result<u16, h2::Error> {
    let mut send = send.clone().ready().await?;
    let (response, _) = send.send_request(h2_get(path), true)?;
    Ok(response.await?.status().as_u16())
}

#[tokio::test]
async fn h2_max_concurrent_streams_is_advertised_and_a_third_stream_waits() {
    let gate = common::Gate::new();
    let backend = Backend::start(Reply::ok("ok").hold(&gate)).await;
    let running = start(&site("h2_max_concurrent_streams 2", &backend.url())).await;
    let (send, conn) = h2_connect(&running).await;
    assert_eq!(conn.max_concurrent_send_streams(), 2);
    tokio::spawn(conn);
    let requests: Vec<_> = (0..3)
        .map(|i| {
            let send = send.clone();
            tokio::spawn(async move { h2_status(&send, &format!("/held/{i}")).await })
        })
        .collect();
    // Two streams reach the backend and are held there; the third is not
    // opened while they are (the client queues it, as h2 must).
    backend.wait_for(2).await;
    backend.assert_stays_at(2, Duration::from_millis(300)).await;
    assert_eq!(backend.in_flight(), 2);
    gate.open();
    for request in requests {
        let status = within("a held response", request).await.expect("task");
        assert_eq!(status.expect("response"), 200);
    }
    assert_eq!(backend.count(), 3);
}

/// A client that ignores the advertised limit has its extra stream refused
/// by the server (RST_STREAM REFUSED_STREAM), not queued or served: shown
/// with frames written by hand, since the `h2` client always obeys.
#[tokio::test]
async fn h2_a_stream_over_the_limit_is_refused() {
    let gate = common::Gate::new();
    let backend = Backend::start(Reply::ok("ok").hold(&gate)).await;
    let running = start(&site("h2_max_concurrent_streams 2", &backend.url())).await;
    let mut tcp = TcpStream::connect(running.addr()).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[]));
    for stream in [1, 3, 5] {
        out.extend(raw_h2::get_headers(stream));
    }
    tcp.write_all(&out).await.expect("write");
    let refused = within("RST_STREAM for stream 5", async {
        loop {
            let (kind, _, stream, payload) = raw_h2::read_frame(&mut tcp).await;
            if kind == raw_h2::RST_STREAM {
                break (stream, payload);
            }
        }
    })
    .await;
    assert_eq!(refused, (5, raw_h2::REFUSED_STREAM.to_vec()));
    backend.wait_for(2).await;
    gate.open();
    backend.assert_stays_at(2, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn h2_rapid_reset_gets_goaway_enhance_your_calm_and_new_connections_are_served() {
    let backend = Backend::ok().await;
    let running = start(&site("", &backend.url())).await;
    let (send, conn) = h2_connect(&running).await;
    // Far more streams opened and reset at once than the 20 the server lets
    // a client reset before it has accepted them (CVE-2023-44487). On this
    // single-threaded runtime nothing is sent until the loop ends, so every
    // HEADERS and its RST_STREAM reach the server together.
    let mut send = within("room for a stream", send.ready())
        .await
        .expect("ready");
    for i in 0..100 {
        let (_response, mut stream) = send
            .send_request(h2_get(&format!("/reset/{i}")), true)
            .expect("send_request");
        stream.send_reset(h2::Reason::CANCEL);
    }
    let ended = within("the server to end the connection", conn).await;
    let err = ended.expect_err("the server should have closed the connection");
    assert!(err.is_go_away() && err.is_remote(), "{err:?}");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    // The server goes on serving new connections, HTTP/2 and HTTP/1.1.
    let (send, conn) = h2_connect(&running).await;
    tokio::spawn(conn);
    let status = within("an HTTP/2 request", h2_status(&send, "/after")).await;
    assert_eq!(status.expect("response"), 200);
    let resp = Client::http1()
        .get(&format!("{}/after", base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn h2_a_few_resets_leave_the_connection_open() {
    let backend = Backend::ok().await;
    let running = start(&site("", &backend.url())).await;
    let (send, conn) = h2_connect(&running).await;
    let task = tokio::spawn(conn);
    let mut ready = within("room for a stream", send.clone().ready())
        .await
        .expect("ready");
    for i in 0..10 {
        let (_response, mut stream) = ready
            .send_request(h2_get(&format!("/reset/{i}")), true)
            .expect("send_request");
        stream.send_reset(h2::Reason::CANCEL);
    }
    let status = within("a request after the resets", h2_status(&send, "/after")).await;
    assert_eq!(status.expect("response"), 200);
    assert!(!task.is_finished());
}

#[tokio::test]
async fn h2_a_stalled_stream_body_gets_408_while_other_streams_go_on() {
    let backend = Backend::with(|req| match req.path_and_query() {
        "/slow" => Reply::ok("slow").delay(Duration::from_millis(700)),
        _ => Reply::ok("ok"),
    })
    .await;
    let running = start(&site("read_body_timeout \"300ms\"", &backend.url())).await;
    let (send, conn) = h2_connect(&running).await;
    let task = tokio::spawn(conn);
    // A stream whose body is complete, waiting on a slow upstream for
    // longer than the timeout.
    let slow = {
        let send = send.clone();
        tokio::spawn(async move { h2_status(&send, "/slow").await })
    };
    // A stream that sends half a body and then nothing.
    let mut ready = within("room for a stream", send.clone().ready())
        .await
        .expect("ready");
    let post = http::Request::post("http://limits.test/stalled")
        .body(())
        .unwrap();
    let (response, mut body) = ready.send_request(post, false).expect("send_request");
    body.send_data(bytes::Bytes::from_static(b"half"), false)
        .expect("data");
    let status = within("the stalled stream's answer", response)
        .await
        .expect("response");
    assert_eq!(status.status(), 408);
    let slow = within("the slow stream's answer", slow)
        .await
        .expect("task");
    assert_eq!(slow.expect("response"), 200);
    // The connection itself is fine.
    let after = within("a request after the 408", h2_status(&send, "/after")).await;
    assert_eq!(after.expect("response"), 200);
    assert!(!task.is_finished());
    drop(body);
}

/// Just enough HTTP/2 framing (RFC 9113 §4) to send what a well-behaved
/// client never would.
mod raw_h2 {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const REFUSED_STREAM: [u8; 4] = [0, 0, 0, 0x7];
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend((stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// `GET http://a.test/` as one HEADERS frame, HPACK without the dynamic
    /// table: static :method GET, :scheme http, :path /, then :authority as
    /// a literal not indexed (RFC 7541 §6.2.2).
    pub fn get_headers(stream: u32) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 6];
        block.extend_from_slice(b"a.test");
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    }

    /// The next frame: type, flags, stream and payload.
    pub async fn read_frame(tcp: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await.expect("a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.expect("a frame payload");
        (head[3], head[4], stream, payload)
    }
}

/// `teebox run FILE` as a child process with at most `open_files` file
/// descriptors (soft and hard limit, so teebox cannot raise it), its log
/// kept as it comes; killed when dropped.
struct LimitedTeebox {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl LimitedTeebox {
    fn start(file: &std::path::Path, open_files: u32) -> LimitedTeebox {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\" run \"$1\""))
            .arg(env!("CARGO_BIN_EXE_teebox"))
            .arg(file)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        LimitedTeebox { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn lines_with(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_owned)
            .collect()
    }

    /// The address from the `listening` line.
    async fn addr(&self) -> std::net::SocketAddr {
        common::eventually("teebox to listen", || {
            !self.lines_with(" listening ").is_empty()
        })
        .await;
        let line = &self.lines_with(" listening ")[0];
        let addr = line.split("address=").nth(1).expect("an address");
        addr.split_whitespace()
            .next()
            .unwrap()
            .parse()
            .expect("ip:port")
    }
}

impl Drop for LimitedTeebox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number in `key=N` in a log line.
fn log_field(line: &str, key: &str) -> u64 {
    let value = line.split(&format!("{key}=")).nth(1).expect(key);
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn out_of_open_files_accepting_backs_off_logs_once_a_second_and_recovers() {
    let backend = Backend::ok().await;
    let dir = common::TempDir::new("open-files");
    let file = dir.join("site.kdl");
    std::fs::write(&file, site("read_header_timeout \"1m\"", &backend.url())).unwrap();
    let teebox = LimitedTeebox::start(&file, 64);
    let addr = teebox.addr().await;
    // Once, with the numbers: the default max_connections cannot fit.
    let warned = teebox.lines_with("RLIMIT_NOFILE");
    assert_eq!(warned.len(), 1, "{}", teebox.log());
    assert!(
        warned[0].contains(
            "the open files limit (RLIMIT_NOFILE) is 64, below the 20064 teebox may need: \
             2 x max_connections 10000 + 0 handler connections + 64 for listeners and files"
        ),
        "{}",
        warned[0]
    );

    let mut connected = TcpStream::connect(addr).await.unwrap();
    assert!(request_on(&mut connected, "/before")
        .await
        .starts_with("HTTP/1.1 200"));
    // More connections than descriptors: the rest wait in the backlog.
    let mut others = Vec::new();
    for _ in 0..100 {
        others.push(TcpStream::connect(addr).await.unwrap());
    }
    // A line that tells of failures it did not log: rate-limited, not one
    // line per failure.
    common::eventually("a rate-limited accept failure line", || {
        teebox
            .lines_with("accept failed")
            .iter()
            .any(|l| log_field(l, "unlogged") > 0)
    })
    .await;
    let failed = teebox.lines_with("accept failed");
    assert!(
        failed.iter().all(|l| l.contains("Too many open files")),
        "{failed:#?}"
    );
    drop(others);
    let after = request_on(&mut connected, "/after").await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    // And new clients are served again.
    let mut fresh = within("a new connection", TcpStream::connect(addr))
        .await
        .unwrap();
    assert!(request_on(&mut fresh, "/fresh")
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(backend.count(), 3);
}
