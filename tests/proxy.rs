//! `reverse_proxy`: what the upstream receives and what the client gets back,
//! byte for byte.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::client::{chunks, full, req};
use common::fault::{refused_url, FaultServer};
use common::ws::EchoServer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode, Version};
use teebox::message::body;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1024 * 1024;

fn url(teebox: &Running, path_and_query: &str) -> String {
    format!("{}{path_and_query}", base_url(teebox))
}

// ---------------------------------------------------------------------------
// Methods, paths, bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_method_is_proxied_with_path_and_query_exactly_as_sent() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let client = Client::http1();
    // Percent-encoding (upper and lower case), an encoded slash, a matrix
    // parameter, `+`, an empty value and a bare key: none may be decoded,
    // normalised or reordered on the way.
    let target = "/p/a%20b/c%2Fd/%e2%9c%93;v=1/x?q=a%20b&r=%2B+plus&s=%26&empty=&flag&u=%7Euser";
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    for method in methods {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client
            .request(method, &url(&teebox, target), body::empty())
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.body, "ok");
    }
    let got = backend.wait_for(methods.len()).await;
    assert_eq!(got.len(), methods.len());
    for (recorded, method) in got.iter().zip(methods) {
        assert_eq!(recorded.method, method);
        assert_eq!(recorded.path_and_query(), target);
        assert_eq!(recorded.version, Version::HTTP_11);
        assert!(recorded.body.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_of_0_b_1_kib_and_10_mib_arrive_byte_for_byte() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let client = Client::http1();
    let sizes = [0, 1024, 10 * MIB];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| random_bytes(size, i as u64 + 1))
        .collect();
    for (size, data) in sizes.iter().zip(&bodies) {
        let resp = client
            .request(
                Method::POST,
                &url(&teebox, &format!("/upload/{size}")),
                full(data.clone()),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "upload of {size} bytes");
    }
    let got = backend.wait_for(sizes.len()).await;
    for ((recorded, size), data) in got.iter().zip(sizes).zip(&bodies) {
        assert_eq!(recorded.path_and_query(), format!("/upload/{size}"));
        assert_eq!(recorded.body_error, None);
        assert_eq!(recorded.body.len(), size);
        assert!(recorded.body[..] == data[..], "{size}-byte body differs");
        match recorded.header("content-length") {
            Some(len) => assert_eq!(len, size.to_string()),
            None => assert_eq!(size, 0, "a body of known length lost its Content-Length"),
        }
        assert_eq!(recorded.header("transfer-encoding"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_request_body_without_length_arrives_whole() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let sizes = [1, 100, 16 * 1024, 70_000, 3];
    let pieces: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from(random_bytes(n, 100 + i as u64)))
        .collect();
    let whole: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let resp = Client::http1()
        .request(Method::PUT, &url(&teebox, "/stream"), chunks(pieces))
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.body_error, None);
    assert_eq!(recorded.body.len(), whole.len());
    assert!(recorded.body[..] == whole[..], "chunked body differs");
    assert_eq!(recorded.header("content-length"), None);
    assert_eq!(recorded.header("transfer-encoding"), Some("chunked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_10_mib_response_body_streams_back_intact() {
    let data = random_bytes(10 * MIB, 7);
    let backend = Backend::start(Reply::ok(data.clone())).await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let resp = Client::http1().get(&url(&teebox, "/big")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-length"), Some("10485760"));
    assert_eq!(resp.body.len(), data.len());
    assert!(resp.body[..] == data[..], "10 MiB response differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_response_arrives_whole() {
    let data = random_bytes(200 * 1024, 8);
    let backend = Backend::start(
        Reply::ok(data.clone())
            .chunked(7000)
            .chunk_delay(Duration::from_millis(1)),
    )
    .await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let resp = Client::http1().get(&url(&teebox, "/chunked")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(resp.body[..] == data[..], "chunked response differs");
}

// ---------------------------------------------------------------------------
// Headers

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let backend = Backend::start(
        Reply::ok("ok")
            .header("Connection", "X-Backend-Secret")
            .header("X-Backend-Secret", "s")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Connection", "keep-alive")
            .header("Proxy-Authenticate", "Basic realm=\"x\"")
            .header("Trailer", "X-Checksum")
            .header("Upgrade", "h2c")
            .header("X-Kept-Down", "kept"),
    )
    .await;
    let teebox = start_proxy(&[backend.url()], "").await;
    // Raw bytes, so that no client library adds, drops or reacts to any of
    // these. `Upgrade` without `upgrade` in `Connection` is not an upgrade.
    let request = "GET /hop HTTP/1.1\r\n\
        Host: hop.test\r\n\
        Connection: close, X-Custom\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Trailer: X-Checksum\r\n\
        Upgrade: h2c\r\n\
        Proxy-Authorization: Basic c2VjcmV0\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Custom: must-not-pass\r\n\
        X-Kept: kept\r\n\
        \r\n";
    let outcome = raw::exchange(teebox.addr(), request.as_bytes()).await;
    let resp = outcome.response();

    let recorded = backend.wait_for(1).await.remove(0);
    let expected: Vec<(String, String)> = [
        ("forwarded", "for=127.0.0.1;host=\"hop.test\";proto=http"),
        ("host", "hop.test"),
        // The client takes trailers, and so does teebox on its behalf.
        ("te", "trailers"),
        ("trailer", "X-Checksum"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-host", "hop.test"),
        ("x-forwarded-proto", "http"),
        ("x-kept", "kept"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(recorded.header_pairs(), expected);

    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"ok");
    assert_eq!(resp.header("x-kept-down"), Some("kept"));
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "upgrade",
        "te",
        "x-backend-secret",
    ] {
        assert!(!resp.has(name), "{name} reached the client: {resp:?}");
    }
    // teebox's own `Connection: close` (the client asked for it) is fine;
    // the backend's `Connection` value is not.
    if let Some(connection) = resp.header("connection") {
        assert_eq!(connection, "close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_headers_append_the_client_and_describe_this_hop() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let request = req("GET", &url(&teebox, "/fwd"))
        .header("host", "app.example:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("forwarded", "for=203.0.113.9")
        .body(body::empty())
        .unwrap();
    let resp = Client::http1().send(request).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(
        recorded.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(recorded.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        recorded.header("x-forwarded-host"),
        Some("app.example:8443")
    );
    assert_eq!(
        recorded.header("forwarded"),
        Some("for=203.0.113.9, for=127.0.0.1;host=\"app.example:8443\";proto=http")
    );
    assert_eq!(
        recorded.headers.get_all("x-forwarded-for").iter().count(),
        1
    );
    assert_eq!(recorded.headers.get_all("forwarded").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_false_sends_no_forwarding_headers() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "forwarded #false").await;
    let resp = Client::http1().get(&url(&teebox, "/nofwd")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let recorded = backend.wait_for(1).await.remove(0);
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert_eq!(recorded.header(name), None, "{name} was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preserve_host_by_default_passes_the_clients_host() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let request = req("GET", &url(&teebox, "/host"))
        .header("host", "front.example:8080")
        .body(body::empty())
        .unwrap();
    Client::http1().send(request).await.unwrap();
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.header("host"), Some("front.example:8080"));
    assert_eq!(recorded.headers.get_all("host").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preserve_host_false_sends_the_upstreams_host_and_port() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "preserve_host #false").await;
    let request = req("GET", &url(&teebox, "/host"))
        .header("host", "front.example:8080")
        .body(body::empty())
        .unwrap();
    Client::http1().send(request).await.unwrap();
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.header("host"), Some(backend.authority().as_str()));
    assert_eq!(recorded.headers.get_all("host").iter().count(), 1);
    // The client's name is still passed on, where it belongs.
    assert_eq!(
        recorded.header("x-forwarded-host"),
        Some("front.example:8080")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_up_host_wins_over_preserve_host_false() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(
        &[backend.url()],
        "preserve_host #false\nheader_up \"Host\" \"app.internal\"",
    )
    .await;
    let request = req("GET", &url(&teebox, "/host"))
        .header("host", "front.example:8080")
        .body(body::empty())
        .unwrap();
    Client::http1().send(request).await.unwrap();
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.header("host"), Some("app.internal"));
    assert_eq!(recorded.headers.get_all("host").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_trailers_reach_the_upstream() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let request = "POST /t HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
        5\r\nhello\r\n0\r\nX-Checksum: abc123\r\n\r\n";
    let outcome = raw::exchange(teebox.addr(), request.as_bytes()).await;
    assert_eq!(outcome.response().status, 200);
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.body.as_ref(), b"hello");
    let trailers = recorded.trailers.expect("trailers arrive");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
}

/// RFC 9112 §3.2.2: an absolute-form target's host replaces the `Host`
/// header; upstream, the request goes in origin form.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absolute_form_target_is_forwarded_with_its_own_host() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let outcome = raw::exchange(
        teebox.addr(),
        b"GET http://abs.example:8080/abs?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(outcome.response().status, 200, "{}", outcome.text());
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.uri.to_string(), "/abs?q=1");
    assert_eq!(recorded.header("host"), Some("abs.example:8080"));
    assert_eq!(
        recorded.header("x-forwarded-host"),
        Some("abs.example:8080")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_up_and_header_down_set_add_and_remove() {
    let backend = Backend::start(
        Reply::ok("ok")
            .header("Server", "backend/1.0")
            .header("X-Served-By", "backend")
            .header("X-Untouched", "1"),
    )
    .await;
    let teebox = start_proxy(
        &[backend.url()],
        r#"header_up "X-Env" "prod"
           header_up "-X-Secret"
           header_up "+X-Tag" "proxy"
           header_down "X-Served-By" "teebox"
           header_down "-Server""#,
    )
    .await;
    let request = req("GET", &url(&teebox, "/headers"))
        .header("x-env", "dev")
        .header("x-secret", "hunter2")
        .header("x-tag", "client")
        .header("x-other", "kept")
        .body(body::empty())
        .unwrap();
    let resp = Client::http1().send(request).await.unwrap();
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.header("x-env"), Some("prod"));
    assert_eq!(recorded.headers.get_all("x-env").iter().count(), 1);
    assert_eq!(recorded.header("x-secret"), None);
    let tags: Vec<_> = recorded.headers.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["client", "proxy"]);
    assert_eq!(recorded.header("x-other"), Some("kept"));

    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("server"), None);
    assert_eq!(resp.header("x-served-by"), Some("teebox"));
    assert_eq!(resp.headers.get_all("x-served-by").iter().count(), 1);
    assert_eq!(resp.header("x-untouched"), Some("1"));
}

// ---------------------------------------------------------------------------
// Upstream connections

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_by_default_reuses_one_upstream_connection() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let client = Client::http1();
    for i in 0..5 {
        let resp = client.get(&url(&teebox, &format!("/ka/{i}"))).await;
        assert_eq!(resp.status, StatusCode::OK);
        // The upstream connection goes back to teebox's pool a moment after
        // the response ends; give it that moment, so the next request finds
        // it idle instead of racing a fresh connect.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = backend.wait_for(5).await;
    assert_eq!(backend.connections(), 1, "requests: {got:#?}");
    assert!(got.iter().all(|r| r.conn == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_false_opens_a_new_upstream_connection_per_request() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "keepalive #false").await;
    let client = Client::http1();
    for i in 0..5 {
        let resp = client.get(&url(&teebox, &format!("/noka/{i}"))).await;
        assert_eq!(resp.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = backend.wait_for(5).await;
    assert_eq!(backend.connections(), 5);
    let mut conns: Vec<usize> = got.iter().map(|r| r.conn).collect();
    conns.dedup();
    assert_eq!(conns, [0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_closes_after_every_answer_never_costs_a_request() {
    // One says so (`Connection: close`), the other just closes its idle
    // connection: either way the pool must not send on a dead connection.
    for response in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
    ] {
        let upstream = FaultServer::raw_reply(response.to_vec()).await;
        let teebox = start_proxy(&[upstream.url()], "").await;
        let client = Client::http1();
        for i in 0..5 {
            let resp = client.get(&url(&teebox, &format!("/close/{i}"))).await;
            assert_eq!(resp.status, StatusCode::OK, "request {i}");
            assert_eq!(resp.body, Bytes::from_static(b"ok"));
            // Time for the close to reach teebox before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(upstream.accepted(), 5);
    }
}

/// An upstream that answers `200 ok` to every request line at once,
/// without waiting for a body (discarding it as it comes, as nginx does
/// for a `return` or an early 401), and keeps the connection; with
/// `answers`, it closes a connection, unanswered, when the request after
/// that many arrives (its idle timeout firing just as teebox reuses it).
async fn answering_upstream(answers: Option<usize>) -> FaultServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    FaultServer::start(move |mut stream| async move {
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        let mut requests = 0;
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            // Body bytes never look like a request line here.
            while let Some(at) = find(&seen, b"HTTP/1.1\r\n") {
                seen.drain(..at + 10);
                requests += 1;
                if answers.is_some_and(|answers| requests > answers) {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_still_sending_an_upload_is_not_reused_before_it_is_done() {
    use tokio::io::AsyncWriteExt;
    let upstream = answering_upstream(None).await;
    let teebox = start_proxy(&[upstream.url()], "").await;
    // A starts a chunked upload, gets its answer early, and holds the rest
    // of its body back.
    let mut a = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    a.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    within("A's early answer", async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while find(&head, b"\r\n\r\nok").is_none() {
            let n = a.read(&mut buf).await.unwrap();
            assert!(n > 0, "teebox closed A's connection");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    // Meanwhile GETs on fresh connections (they land on every serving
    // thread in turn, A's among them) must not wait for A's upload.
    for i in 0..4 {
        // Idle connections in between shift which thread the next one
        // gets, so some GET shares A's.
        for _ in 0..i {
            drop(tokio::net::TcpStream::connect(teebox.addr()).await.unwrap());
        }
        // A new client each time: a new connection.
        let client = Client::http1();
        let target = url(&teebox, &format!("/get/{i}"));
        let resp = within("a GET during the upload", client.get(&target)).await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    a.write_all(b"0\r\n\r\n").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_whose_kept_alive_connection_dies_under_it_is_sent_again_a_post_is_not() {
    let upstream = answering_upstream(Some(1)).await;
    let teebox = start_proxy(&[upstream.url()], "").await;
    let client = Client::http1();
    let first = client.get(&url(&teebox, "/first")).await;
    assert_eq!(first.status, StatusCode::OK);
    // Long enough idle for the race to be possible at all.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = client.get(&url(&teebox, "/again")).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the GET went again on a new connection"
    );
    assert_eq!(again.body, Bytes::from_static(b"ok"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The POST's connection is the GET's new one: it dies the same way,
    // and a POST is not sent twice.
    let post = client
        .request(Method::POST, &url(&teebox, "/post"), full("x"))
        .await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
}

// ---------------------------------------------------------------------------
// Load balancing

/// Two backends that answer "a" and "b".
async fn two_backends() -> (Backend, Backend) {
    (
        Backend::start(Reply::ok("a")).await,
        Backend::start(Reply::ok("b")).await,
    )
}

/// Sends `n` sequential GETs and returns which backend answered each.
async fn answers(teebox: &Running, n: usize) -> Vec<String> {
    let client = Client::http1();
    let mut out = Vec::new();
    for i in 0..n {
        let resp = client.get(&url(teebox, &format!("/lb/{i}"))).await;
        assert_eq!(resp.status, StatusCode::OK);
        out.push(resp.text());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_alternates_between_upstreams() {
    let (a, b) = two_backends().await;
    let teebox = start_proxy(&[a.url(), b.url()], r#"lb_policy "round_robin""#).await;
    let got = answers(&teebox, 6).await;
    for pair in got.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {got:?}");
    }
    assert_eq!((a.count(), b.count()), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_is_the_default_policy() {
    let (a, b) = two_backends().await;
    let teebox = start_proxy(&[a.url(), b.url()], "").await;
    let got = answers(&teebox, 4).await;
    for pair in got.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_always_uses_the_first_upstream() {
    let (a, b) = two_backends().await;
    let teebox = start_proxy(&[a.url(), b.url()], r#"lb_policy "first""#).await;
    let got = answers(&teebox, 5).await;
    assert_eq!(got, ["a"; 5]);
    assert_eq!(b.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_to_a_dead_first_upstream_is_retried_on_the_next() {
    let b = Backend::start(Reply::ok("b")).await;
    let teebox = start_proxy(&[refused_url(), b.url()], r#"lb_policy "first""#).await;
    let got = answers(&teebox, 3).await;
    assert_eq!(got, ["b"; 3]);
    assert_eq!(b.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_conn_prefers_the_idle_upstream_while_the_other_is_busy() {
    let gate = Gate::new();
    let a = Backend::start(Reply::ok("a").hold(&gate)).await;
    let b = Backend::start(Reply::ok("b")).await;
    let teebox = start_proxy(&[a.url(), b.url()], r#"lb_policy "least_conn""#).await;
    // Both idle: the first upstream takes it, and holds it.
    let slow_url = url(&teebox, "/slow");
    let slow = tokio::spawn(async move { Client::http1().get(&slow_url).await });
    a.wait_for(1).await;
    // While `a` holds one request, every new one goes to idle `b`.
    let got = answers(&teebox, 4).await;
    assert_eq!(got, ["b"; 4]);
    gate.open();
    let slow = within("the held request", slow).await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.body, "a");
    assert_eq!((a.count(), b.count()), (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reaches_every_upstream() {
    let (a, b) = two_backends().await;
    let teebox = start_proxy(&[a.url(), b.url()], r#"lb_policy "random""#).await;
    // The chance that 50 fair picks all land on one side is 2^-49.
    let got = answers(&teebox, 50).await;
    assert!(a.count() > 0 && b.count() > 0, "{got:?}");
    assert_eq!(a.count() + b.count(), 50);
}

// ---------------------------------------------------------------------------
// Failures

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_refusing_connections_gives_502() {
    let teebox = start_proxy(&[refused_url()], "").await;
    let resp = Client::http1().get(&url(&teebox, "/down")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(resp.body, "502 Bad Gateway\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_never_answers_gives_504_after_timeout() {
    let silent = FaultServer::silent().await;
    let teebox = start_proxy(&[silent.url()], r#"timeout "500ms""#).await;
    let resp = Client::http1().get(&url(&teebox, "/hang")).await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(resp.body, "504 Gateway Timeout\n");
    assert_eq!(silent.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_longer_than_timeout_that_keeps_moving_is_not_cut() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], r#"timeout "500ms""#).await;
    // Six pieces, 250 ms apart: three times `timeout` in all, never
    // `timeout` without progress.
    let pieces: Vec<Bytes> = (0..6u8)
        .map(|i| Bytes::from(vec![b'a' + i; 1000]))
        .collect();
    let stream = futures_util::stream::unfold(pieces.clone().into_iter(), |mut rest| async move {
        let piece = rest.next()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        Some((
            Ok::<_, teebox::message::BoxError>(http_body::Frame::data(piece)),
            rest,
        ))
    });
    let body = body::boxed(http_body_util::StreamBody::new(stream));
    let resp = Client::http1()
        .send(req("POST", &url(&teebox, "/upload")).body(body).unwrap())
        .await
        .expect("a response");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(backend.only().body, pieces.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_stops_taking_an_upload_gives_504() {
    // Accepts, never reads: once the socket buffers are full, the body
    // cannot move, and `timeout` runs from its last step.
    let silent = FaultServer::silent().await;
    let teebox = start_proxy(&[silent.url()], r#"timeout "500ms""#).await;
    let big = full(vec![b'x'; 64 << 20]);
    let resp = Client::http1()
        .send(req("POST", &url(&teebox, "/stuck")).body(big).unwrap())
        .await
        .expect("a response");
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_closing_mid_body_never_looks_complete_to_the_client() {
    let faulty = FaultServer::truncated_body(100_000, 1000).await;
    let teebox = start_proxy(&[faulty.url()], "").await;
    let request = req("GET", &url(&teebox, "/cut"))
        .body(body::empty())
        .unwrap();
    match Client::http1().send_streaming(request).await {
        // teebox may not even pass the head on...
        Err(_) => {}
        Ok(response) => {
            // ...but if it does, the body must break off, not end cleanly.
            let status = response.status();
            let body = common::client::read_body(response.into_body()).await;
            if let Ok(bytes) = body {
                panic!(
                    "client saw a clean {status} with {} bytes from a truncated upstream",
                    bytes.len()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Protocols

/// An h2c upstream that answers `ok` and counts its connections.
async fn h2c_upstream() -> (String, Arc<AtomicUsize>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_to_an_h2c_upstream_share_one_new_connection() {
    let (upstream, connections) = h2c_upstream().await;
    let teebox = start_proxy(&[upstream], "h2c #true").await;
    // One client connection: its requests are served by one thread, whose
    // pool is empty when they all arrive at once.
    let client = Client::h2c();
    let target = url(&teebox, "/together");
    let answers = futures_util::future::join_all((0..32).map(|_| client.get(&target))).await;
    assert!(answers.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_h2c_client_reaches_an_http1_backend() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let client = Client::h2c();

    let resp = client.get(&url(&teebox, "/h2/get?x=1")).await;
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "ok");

    let data = random_bytes(MIB + 17, 21);
    let resp = client
        .request(Method::POST, &url(&teebox, "/h2/post"), full(data.clone()))
        .await;
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.status, StatusCode::OK);

    let got = backend.wait_for(2).await;
    assert_eq!(got[0].method, Method::GET);
    assert_eq!(got[0].version, Version::HTTP_11);
    assert_eq!(got[0].path_and_query(), "/h2/get?x=1");
    assert_eq!(
        got[0].header("host"),
        Some(teebox.addr().to_string().as_str())
    );
    assert_eq!(got[1].method, Method::POST);
    assert_eq!(got[1].version, Version::HTTP_11);
    assert_eq!(got[1].path_and_query(), "/h2/post");
    assert_eq!(got[1].body_error, None);
    assert!(got[1].body[..] == data[..], "h2 POST body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_messages_echo_through_the_proxy() {
    let echo = EchoServer::start().await;
    let teebox = start_proxy(&[echo.url()], "").await;
    let (mut ws, response) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", teebox.addr())),
    )
    .await
    .expect("WebSocket handshake through teebox");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("héllo ✓"),
        Message::binary(random_bytes(64 * 1024, 5)),
        Message::text(""),
    ];
    for message in messages {
        within("sending a message", ws.send(message.clone()))
            .await
            .unwrap();
        let echoed = within("the echo", ws.next())
            .await
            .expect("connection open")
            .expect("a message");
        assert_eq!(echoed, message);
    }
    within("closing", ws.close(None)).await.unwrap();
    assert_eq!(echo.handshakes(), 1);
}

// ---------------------------------------------------------------------------
// Framing and upgrades under attack

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_never_removes_host_framing_forwarding_or_the_shadow_marker() {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let request = "POST /named HTTP/1.1\r\n\
        Host: front.example\r\n\
        Connection: close, Host, Content-Length, Forwarded, X-Forwarded-For, \
        X-Forwarded-Host, X-Forwarded-Proto, Teebox-Shadow, X-Custom\r\n\
        Content-Length: 5\r\n\
        Forwarded: for=203.0.113.9\r\n\
        X-Forwarded-For: 203.0.113.9\r\n\
        Teebox-Shadow: 1\r\n\
        X-Custom: must-not-pass\r\n\
        \r\n\
        hello";
    let outcome = raw::exchange(teebox.addr(), request.as_bytes()).await;
    assert_eq!(outcome.response().status, 200, "{}", outcome.text());

    let recorded = backend.wait_for(1).await.remove(0);
    let expected: Vec<(String, String)> = [
        ("content-length", "5"),
        (
            "forwarded",
            "for=203.0.113.9, for=127.0.0.1;host=\"front.example\";proto=http",
        ),
        ("host", "front.example"),
        ("teebox-shadow", "1"),
        ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
        ("x-forwarded-host", "front.example"),
        ("x-forwarded-proto", "http"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(recorded.header_pairs(), expected);
    assert_eq!(recorded.body, Bytes::from_static(b"hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answer_with_both_content_length_and_chunked_is_framed_by_its_chunks() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, which a
    // proxy must remove; kept, it would frame `hello` as `hel`.
    let upstream = FaultServer::raw_reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    let teebox = start_proxy(&[upstream.url()], "").await;
    let outcome = raw::exchange(
        teebox.addr(),
        b"GET /both HTTP/1.1\r\nHost: both.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(outcome.closed, "{}", outcome.text());
    let resp = outcome.response();
    assert_eq!(resp.status, 200, "{}", outcome.text());
    assert_eq!(resp.header("content-length"), None, "{}", outcome.text());
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body, b"hello");
    // Nothing after the last chunk.
    assert!(
        outcome.bytes.ends_with(b"\r\n0\r\n\r\n"),
        "{}",
        outcome.text()
    );
}

/// An upstream that answers an upgrade request it is offered with `101`
/// (switching to `switch_to`, or to what it was offered) and then answers
/// whatever comes through the tunnel as HTTP/1.1 `200 tunnelled`; any
/// other request gets `200 plain`. Every request head it reads is kept,
/// lower-cased.
async fn switching_upstream(
    switch_to: Option<&'static str>,
) -> (FaultServer, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    let server = FaultServer::start(move |mut stream| {
        let seen = seen.clone();
        async move {
            let mut buf = vec![0u8; 65536];
            let mut pending = Vec::new();
            let mut tunnelled = false;
            while let Ok(Ok(n)) = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = find(&pending, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                    pending.drain(..end + 4);
                    let offered = head
                        .lines()
                        .find_map(|l| l.strip_prefix("upgrade:"))
                        .map(|v| v.trim().to_string());
                    let answer = match (&offered, tunnelled) {
                        (_, true) => "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntunnelled".to_string(),
                        (Some(offered), false) => {
                            tunnelled = true;
                            let protocol = switch_to.unwrap_or(offered);
                            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n")
                        }
                        (None, false) => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain".to_string(),
                    };
                    seen.lock().unwrap().push(head);
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    (server, heads)
}

/// Reads one whole response from `stream` (bounded by [`TIMEOUT`]).
async fn read_response(stream: &mut tokio::net::TcpStream) -> raw::RawResponse {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    within("a response", async {
        loop {
            if let Some(resp) = raw::parse_response(&bytes) {
                return resp;
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// A site where `/admin` is refused by a route and everything else goes to
/// `upstream`.
/// `option`, unless empty, goes inside the `reverse_proxy` block.
fn guarded_site(upstream: &str, option: &str) -> String {
    let proxy = match option {
        "" => Proxy::to(upstream),
        option => Proxy::to(upstream).opt(option),
    };
    Site::new()
        .route("/admin", Chain::new().respond_with(403, "forbidden\n"))
        .route("/*", Chain::new().proxy(proxy))
        .to_kdl()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_h2c_upgrade_is_sent_as_a_plain_request_and_the_routes_still_see_what_follows() {
    use tokio::io::AsyncWriteExt;
    let (upstream, heads) = switching_upstream(None).await;
    // Even with every other protocol allowed by name.
    for options in ["", r#"upgrades "websocket" "foo""#] {
        heads.lock().unwrap().clear();
        let teebox = start(&guarded_site(&upstream.url(), options)).await;
        let mut client = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
        client
            .write_all(
                b"GET /api/x HTTP/1.1\r\nHost: h2c.test\r\n\
                Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            )
            .await
            .unwrap();
        let first = read_response(&mut client).await;
        assert_eq!(first.status, 200, "{options}: {first:?}");
        assert_eq!(first.body, b"plain", "{options}");
        assert!(!first.has("upgrade"), "{options}: {first:?}");

        client
            .write_all(b"GET /admin HTTP/1.1\r\nHost: h2c.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let second = raw::read_to_close(&mut client).await;
        let second = second.response();
        assert_eq!(second.status, 403, "{options}: {second:?}");
        assert_eq!(second.body, b"forbidden\n");

        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "{options}: {heads:?}");
        assert!(heads[0].starts_with("get /api/x http/1.1\r\n"), "{heads:?}");
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !heads[0].lines().any(|l| l.starts_with(&format!("{name}:"))),
                "{options}: {name} reached the upstream: {heads:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_websocket_is_tunnelled_unless_upgrades_names_more() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, heads) = switching_upstream(None).await;
    let ask = b"GET /api/foo HTTP/1.1\r\nHost: foo.test\r\nConnection: upgrade\r\nUpgrade: h2c, foo/2\r\n\r\n";

    // By default `foo` is not tunnelled: a plain request, a plain answer.
    let teebox = start(&guarded_site(&upstream.url(), "")).await;
    let mut client = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    client.write_all(ask).await.unwrap();
    let resp = read_response(&mut client).await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"plain"[..]));
    let head = heads.lock().unwrap().remove(0);
    assert!(!head.contains("upgrade"), "{head}");

    // Named, it is, and only it is offered.
    let teebox = start(&guarded_site(
        &upstream.url(),
        r#"upgrades "websocket" "foo""#,
    ))
    .await;
    let mut client = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    client.write_all(ask).await.unwrap();
    let resp = read_response(&mut client).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header("upgrade"), Some("foo/2"));
    let head = heads.lock().unwrap().remove(0);
    assert!(head.lines().any(|l| l == "upgrade: foo/2"), "{head}");
    assert!(head.lines().any(|l| l == "connection: upgrade"), "{head}");
    // The tunnel carries bytes to the upstream as they are.
    client
        .write_all(b"GET /admin HTTP/1.1\r\nHost: foo.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 256];
    let mut got = Vec::new();
    within("the tunnelled answer", async {
        while !got.ends_with(b"tunnelled") {
            let n = client.read(&mut answer).await.unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&answer[..n]);
        }
    })
    .await;
    assert_eq!(
        got,
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntunnelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_switching_to_a_protocol_not_offered_gives_502() {
    use tokio::io::AsyncWriteExt;
    let (upstream, _heads) = switching_upstream(Some("h2c")).await;
    let teebox = start(&guarded_site(&upstream.url(), "")).await;
    let mut client = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    client
        .write_all(b"GET /api/ws HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut client).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}
