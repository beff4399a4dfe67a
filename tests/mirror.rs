//! The `mirror` handler: faithful copies, isolation from production, the
//! bounded backlog, the breaker, alerts, sampling and shutdown.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault::{refused_url, FaultServer};
use common::metrics::{self, Metrics};
use common::{
    base_url, client, random_bytes, start, within, Admin, Backend, Chain, Client, Gate, Mirror,
    Reply, Site, Target,
};
use http::Method;
use teebox::server::Running;

/// teebox with one route, `/*`, running `chain`, and an admin endpoint to
/// read the mirror's counters from.
async fn start_route(chain: Chain) -> Running {
    start(&Site::new().admin(Admin::open()).route("/*", chain).to_kdl()).await
}

/// Headers as the backend saw them, without those that differ by design
/// between primary and copy (`host`, and the loop marker copies carry).
fn comparable_headers(rec: &common::Recorded) -> Vec<(String, String)> {
    rec.header_pairs()
        .into_iter()
        .filter(|(name, _)| name != "host" && name != "teebox-shadow")
        .collect()
}

#[tokio::test]
async fn shadow_receives_what_the_primary_receives() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(Chain::new().mirror(Mirror::to(&shadow)).proxy(&primary)).await;
    let client = Client::http1();
    let base = base_url(&running);

    let cases: Vec<(Method, &str, Vec<u8>)> = vec![
        (Method::GET, "/items?id=7&q=a%20b", Vec::new()),
        (Method::POST, "/upload", random_bytes(1024, 1)),
        (Method::PUT, "/big/file", random_bytes(1 << 20, 2)),
        (Method::DELETE, "/items/7", Vec::new()),
        (Method::POST, "/empty-post", Vec::new()),
    ];
    for (i, (method, path, body)) in cases.iter().enumerate() {
        let req = client::req(method.as_str(), &format!("{base}{path}"))
            .header("x-custom", format!("value-{i}"))
            .header("content-type", "application/octet-stream")
            .body(client::full(body.clone()))
            .unwrap();
        let resp = client.send(req).await.expect("request");
        assert_eq!(resp.status, 200);
        let got = primary.wait_for(i + 1).await;
        let copies = shadow.wait_for(i + 1).await;
        let (p, c) = (&got[i], &copies[i]);
        assert_eq!(c.method, *method);
        assert_eq!(c.path_and_query(), *path);
        assert_eq!(p.path_and_query(), *path);
        assert_eq!(
            c.body.as_ref(),
            body.as_slice(),
            "copy body of {method} {path}"
        );
        assert_eq!(
            p.body.as_ref(),
            body.as_slice(),
            "primary body of {method} {path}"
        );
        assert_eq!(
            comparable_headers(c),
            comparable_headers(p),
            "headers of {method} {path}"
        );
        assert_eq!(
            c.header("host"),
            Some(shadow.authority().as_str()),
            "a copy carries the target's Host"
        );
        assert_eq!(c.header("teebox-shadow"), Some("1"), "copies are marked");
        assert_eq!(p.header("teebox-shadow"), None, "the primary is not");
    }
}

#[tokio::test]
async fn chunked_body_is_copied_whole_and_stays_chunked() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(Chain::new().mirror(Mirror::to(&shadow)).proxy(&primary)).await;
    let pieces: Vec<Bytes> = (0..20)
        .map(|i| Bytes::from(random_bytes(3000 + i, i as u64)))
        .collect();
    let whole: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
    let req = client::req("POST", &format!("{}/stream", base_url(&running)))
        .body(client::chunks(pieces))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("request");
    assert_eq!(resp.status, 200);
    let p = primary.wait_for(1).await.remove(0);
    let c = shadow.wait_for(1).await.remove(0);
    assert_eq!(p.body.as_ref(), whole.as_slice());
    assert_eq!(c.body.as_ref(), whole.as_slice());
    assert_eq!(c.header("transfer-encoding"), p.header("transfer-encoding"));
    assert_eq!(c.header("content-length"), None);
}

/// While the shadow keeps up, a copy keeps the chunks the body came in
/// (small ones in its middle copied, and a body in more than 32 copied
/// whole): every mix reaches the shadow byte for byte.
#[tokio::test]
async fn bodies_in_large_and_small_chunks_reach_the_shadow_whole() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(Chain::new().mirror(Mirror::to(&shadow)).proxy(&primary)).await;
    let client = Client::http1();
    let url = format!("{}/upload", base_url(&running));
    warm_up(&client, &url, &shadow).await;
    let sizes: [&[usize]; 3] = [
        &[40_000, 7, 70_000, 3, 20_000, 1],
        &[16_384, 16_383, 16_385, 0, 50_000],
        &[17_000; 40],
    ];
    for (i, sizes) in sizes.iter().enumerate() {
        let pieces: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(j, len)| Bytes::from(random_bytes(*len, (i * 100 + j) as u64)))
            .collect();
        let whole: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
        let req = client::req("POST", &url)
            .body(client::chunks(pieces))
            .unwrap();
        let what = format!("case {i}");
        both_receive(&client, req, (&primary, &shadow), i + 1, &whole, &what).await;
    }
}

/// A first copy answered, so that the next ones may keep their chunks.
async fn warm_up(client: &Client, url: &str, shadow: &Backend) {
    let warm_up = client::req("GET", url).body(client::full("")).unwrap();
    client.send(warm_up).await.expect("request");
    shadow.wait_for(1).await;
}

/// Sends `req`, answered 200, and checks that the primary and the shadow
/// each got `body` whole as their request number `nth` (from 0).
async fn both_receive(
    client: &Client,
    req: http::Request<teebox::message::Body>,
    (primary, shadow): (&Backend, &Backend),
    nth: usize,
    body: &[u8],
    what: &str,
) {
    assert_eq!(client.send(req).await.expect("request").status, 200);
    let p = primary.wait_for(nth + 1).await.remove(nth);
    let c = shadow.wait_for(nth + 1).await.remove(nth);
    assert_eq!(p.body.as_ref(), body, "primary, {what}");
    assert_eq!(c.body.as_ref(), body, "copy, {what}");
}

/// With `limits { read_buffer "256KiB" }` a connection reads larger
/// chunks of an upload; the copies that keep them (counted as whole
/// grown 256 KiB buffers) and the primary still get every byte, in order.
#[tokio::test]
async fn a_larger_read_buffer_passes_uploads_whole_to_primary_and_shadow() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let site = Site::new().limits(r#"read_buffer "256KiB""#).route(
        "/*",
        Chain::new().mirror(Mirror::to(&shadow)).proxy(&primary),
    );
    let running = start(&site.to_kdl()).await;
    let client = Client::http1();
    let url = format!("{}/upload", base_url(&running));
    warm_up(&client, &url, &shadow).await;
    // Noted by the listener before it served a connection with them.
    assert!(
        teebox::message::body::read_buffer_at_most() >= 256 << 10,
        "kept chunks are counted against the larger buffers"
    );
    let bodies = [
        random_bytes(1 << 20, 11),
        random_bytes(300_000, 12),
        random_bytes(65_536, 13),
        random_bytes(700_001, 14),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let req = client::req("PUT", &url)
            .body(client::full(body.clone()))
            .unwrap();
        let what = format!("body {i}");
        both_receive(&client, req, (&primary, &shadow), i + 1, body, &what).await;
    }
}

#[tokio::test]
async fn header_up_and_host_apply_to_copies_only() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt(r#"header_up "X-Shadow" "1""#)
        .opt(r#"header_up "-X-Secret""#)
        .opt(r#"host "staging.internal""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let req = client::req("GET", &format!("{}/x", base_url(&running)))
        .header("x-secret", "s3cret")
        .header("host", "example.com")
        .body(client::full(""))
        .unwrap();
    Client::http1().send(req).await.expect("request");
    let p = primary.wait_for(1).await.remove(0);
    let c = shadow.wait_for(1).await.remove(0);
    assert_eq!(c.header("x-shadow"), Some("1"));
    assert_eq!(c.header("x-secret"), None);
    assert_eq!(c.header("host"), Some("staging.internal"));
    assert_eq!(p.header("x-shadow"), None);
    assert_eq!(p.header("x-secret"), Some("s3cret"));
    assert_eq!(p.header("host"), Some("example.com"));
}

/// `{env.NAME}`, as in Caddy: read when the file is loaded, alone or
/// beside per-request placeholders.
#[tokio::test]
async fn header_up_fills_in_environment_variables() {
    // Cargo sets it for every test it runs.
    let name = std::env::var("CARGO_PKG_NAME").expect("CARGO_PKG_NAME");
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt(r#"header_up "X-Env" "{env.CARGO_PKG_NAME}""#)
        .opt(r#"header_up "X-Both" "{env.CARGO_PKG_NAME}@{client.ip}""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let req = client::req("GET", &format!("{}/env", base_url(&running)))
        .body(client::full(""))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().status, 200);
    let c = shadow.wait_for(1).await.remove(0);
    assert_eq!(c.header("x-env"), Some(name.as_str()));
    assert_eq!(
        c.header("x-both"),
        Some(format!("{name}@127.0.0.1").as_str())
    );
}

/// A value with a letter outside ASCII still has its placeholders filled
/// in (they once went out as the literal text in braces).
#[tokio::test]
async fn placeholders_are_filled_in_beside_non_ascii_text() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow).opt(r#"header_up "X-Accent" "café {client.ip}""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    Client::http1()
        .get(&format!("{}/accent", base_url(&running)))
        .await;
    let c = shadow.wait_for(1).await.remove(0);
    assert_eq!(
        c.headers["x-accent"].as_bytes(),
        "café 127.0.0.1".as_bytes()
    );
}

#[tokio::test]
async fn a_mirror_header_up_host_is_kept() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&shadow).opt(r#"header_up "Host" "shadow.internal""#))
            .proxy(&primary),
    )
    .await;
    Client::http1()
        .get(&format!("{}/h", base_url(&running)))
        .await;
    assert_eq!(
        shadow.wait_for(1).await[0].header("host"),
        Some("shadow.internal")
    );
}

#[tokio::test]
async fn trailers_are_copied() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(Chain::new().mirror(Mirror::to(&shadow)).proxy(&primary)).await;
    let request = "POST /t HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n";
    let outcome = common::raw::exchange(running.addr(), request.as_bytes()).await;
    assert_eq!(outcome.response().status, 200);
    for rec in [
        primary.wait_for(1).await.remove(0),
        shadow.wait_for(1).await.remove(0),
    ] {
        assert_eq!(rec.body.as_ref(), b"hello world");
        assert_eq!(
            rec.trailers.expect("trailers").get("x-checksum").unwrap(),
            "abc123"
        );
    }
}

#[tokio::test]
async fn upgrade_requests_are_not_mirrored() {
    let echo = common::ws::EchoServer::start().await;
    let shadow = Backend::ok().await;
    let running = start_route(Chain::new().mirror(Mirror::to(&shadow)).proxy(echo.url())).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", running.addr()))
        .await
        .expect("websocket handshake through teebox");
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echoed = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hi");
    let metrics = metrics::scrape(&running).await;
    assert_eq!(metrics.skipped_upgrade("127.0.0.1:0 /*"), 1);
    assert_eq!(metrics.target(&shadow.url()).sampled_out, 0);
    shadow.assert_stays_at(0, Duration::from_millis(100)).await;
}

/// Sends `n` requests one after another and checks each got the primary's
/// answer. With a shadow that hangs for longer than the whole test may take,
/// this finishing at all shows the client never waits for a copy.
async fn all_answered_by_primary(running: &Running, n: usize) {
    let client = Client::http1();
    let base = base_url(running);
    within("every client request to be answered", async {
        for i in 0..n {
            let req = client::req("POST", &format!("{base}/r/{i}"))
                .body(client::full(random_bytes(2048, i as u64)))
                .unwrap();
            let resp = client.send(req).await.expect("request");
            assert_eq!(resp.status, 200);
            assert_eq!(resp.text(), "primary");
        }
    })
    .await;
}

#[tokio::test]
async fn blackhole_shadow_changes_nothing_for_the_client() {
    let primary = Backend::start(Reply::ok("primary")).await;
    let blackhole = FaultServer::silent().await;
    let mirror = Mirror::to(blackhole.url())
        .opt("concurrency 2")
        .opt("backlog 4")
        .opt(r#"timeout "30s""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    all_answered_by_primary(&running, 40).await;
    assert_eq!(primary.count(), 40);
    // The backlog holds four copies, the two hanging in the workers
    // included: two are in flight, two wait, the rest were dropped and
    // counted.
    let target = blackhole.url();
    metrics::target_until(&running, &target, "two copies in flight", |c| {
        c.in_flight == 2
    })
    .await;
    let c = metrics::target(&running, &target).await;
    assert_eq!(c.sent, 2, "{c:?}");
    assert_eq!(c.dropped, 40 - 4, "{c:?}");
    assert_eq!(c.backlog, 2);
}

#[tokio::test]
async fn a_request_arriving_at_a_full_backlog_is_not_collected() {
    let primary = Backend::start(Reply::ok("primary")).await;
    let blackhole = FaultServer::silent().await;
    // One place in the backlog, taken by the first copy while it hangs in
    // the worker.
    let mirror = Mirror::to(blackhole.url())
        .opt("concurrency 1")
        .opt("backlog 1")
        .opt(r#"timeout "30s""#)
        .opt(r#"max_body "1KiB""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let target = blackhole.url();
    let client = Client::http1();
    client.get(&format!("{}/first", base_url(&running))).await;
    metrics::target_until(&running, &target, "the first copy in flight", |c| {
        c.in_flight == 1
    })
    .await;
    // Over `max_body`: had its body been teed, it would count as too large.
    let req = client::req("POST", &format!("{}/big", base_url(&running)))
        .body(client::full(random_bytes(4096, 1)))
        .unwrap();
    let resp = client.send(req).await.expect("request");
    assert_eq!(resp.text(), "primary");
    let c = metrics::target(&running, &target).await;
    assert_eq!(c.dropped, 1, "{c:?}");
    assert_eq!(c.skipped_too_large, 0, "{c:?}");
    assert_eq!(c.backlog, 0);
}

#[tokio::test]
async fn refusing_shadow_changes_nothing_for_the_client() {
    let primary = Backend::start(Reply::ok("primary")).await;
    let refused = refused_url();
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&refused).opt("max_failures 1000"))
            .proxy(&primary),
    )
    .await;
    all_answered_by_primary(&running, 30).await;
    metrics::target_until(&running, &refused, "30 failed copies", |c| c.failed == 30).await;
}

#[tokio::test]
async fn slow_shadow_changes_nothing_for_the_client() {
    let primary = Backend::start(Reply::ok("primary")).await;
    let slow = Backend::start(Reply::ok("slow").delay(Duration::from_secs(2))).await;
    let mirror = Mirror::to(&slow)
        .opt("concurrency 1")
        .opt("backlog 100")
        .opt(r#"timeout "10s""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    // 20 copies at 2 s each would take 40 s if the client waited for them.
    all_answered_by_primary(&running, 20).await;
    assert_eq!(primary.count(), 20);
}

#[tokio::test]
async fn one_slow_target_does_not_starve_another() {
    let primary = Backend::start(Reply::ok("primary")).await;
    let blackhole = FaultServer::silent().await;
    let healthy = Backend::ok().await;
    // The blackhole's one worker hangs and its backlog of 50 fills up; the
    // healthy target, with its own worker and backlog, gets every copy.
    // Its backlog holds them all: the copies need not keep pace with the
    // client for none to be dropped.
    let mirror = Mirror::to(blackhole.url())
        .opt("concurrency 1")
        .opt("backlog 50")
        .opt(r#"timeout "30s""#)
        .target(Target::new(&healthy).opt("backlog 100"));
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    all_answered_by_primary(&running, 80).await;
    healthy.wait_for(80).await;
    let metrics = metrics::scrape(&running).await;
    assert_eq!(metrics.target(&healthy.url()).dropped, 0);
    assert!(metrics.target(&blackhole.url()).dropped > 0);
}

#[tokio::test]
async fn several_mirrors_in_one_chain_each_copy() {
    let primary = Backend::ok().await;
    let a = Backend::ok().await;
    let b = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&a))
            .mirror(Mirror::to(&b).opt(r#"header_up "X-Second" "1""#))
            .proxy(&primary),
    )
    .await;
    let body = random_bytes(5000, 9);
    let req = client::req("PUT", &format!("{}/both", base_url(&running)))
        .body(client::full(body.clone()))
        .unwrap();
    Client::http1().send(req).await.expect("request");
    let ra = a.wait_for(1).await.remove(0);
    let rb = b.wait_for(1).await.remove(0);
    assert_eq!(ra.body.as_ref(), body.as_slice());
    assert_eq!(rb.body.as_ref(), body.as_slice());
    assert_eq!(ra.header("x-second"), None);
    assert_eq!(rb.header("x-second"), Some("1"));
}

#[tokio::test]
async fn respond_and_relay_answers_at_once_and_relays_the_whole_body() {
    let backend = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&backend))
            .respond_with(202, "accepted\n"),
    )
    .await;
    let body = random_bytes(1 << 20, 3);
    let req = client::req("POST", &format!("{}/events?x=1", base_url(&running)))
        .body(client::full(body.clone()))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("request");
    assert_eq!(resp.status, 202);
    assert_eq!(resp.text(), "accepted\n");
    let relayed = backend.wait_for(1).await.remove(0);
    assert_eq!(relayed.path_and_query(), "/events?x=1");
    assert_eq!(relayed.body.len(), body.len());
    assert_eq!(relayed.body.as_ref(), body.as_slice());
}

#[tokio::test]
async fn body_over_max_body_is_not_copied_and_is_counted() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&shadow).opt(r#"max_body "1KiB""#))
            .proxy(&primary),
    )
    .await;
    let client = Client::http1();
    let base = base_url(&running);
    let big = random_bytes(4096, 4);
    let req = client::req("POST", &format!("{base}/big"))
        .body(client::full(big.clone()))
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 200);
    let small = random_bytes(1024, 5);
    let req = client::req("POST", &format!("{base}/small"))
        .body(client::full(small.clone()))
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 200);
    let copies = shadow.wait_for(1).await;
    assert_eq!(
        copies[0].path_and_query(),
        "/small",
        "only the small body is copied"
    );
    assert_eq!(
        primary.wait_for(2).await[0].body.as_ref(),
        big.as_slice(),
        "the primary gets the big body whole"
    );
    assert_eq!(
        metrics::target(&running, &shadow.url())
            .await
            .skipped_too_large,
        1
    );
    shadow.assert_stays_at(1, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_declared_length_over_max_body_does_not_hold_up_a_respond() {
    use tokio::io::AsyncWriteExt;
    let shadow = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(
                Mirror::to(&shadow)
                    .opt(r#"max_body "1KiB""#)
                    .opt(r#"timeout "60s""#),
            )
            .respond(202),
    )
    .await;
    // The head says a megabyte is coming; a few bytes come, then nothing.
    // No copy can be made of it, so nothing waits to read it for one.
    let mut stream = tokio::net::TcpStream::connect(running.addr())
        .await
        .unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nfirst bytes")
        .await
        .unwrap();
    let mut head = Vec::new();
    within("the 202", async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before an answer");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(head.starts_with(b"HTTP/1.1 202"), "{head:?}");
    assert_eq!(
        metrics::target(&running, &shadow.url())
            .await
            .skipped_too_large,
        1
    );
    shadow.assert_stays_at(0, Duration::from_millis(100)).await;
}

/// `request_body` after `mirror`: production refuses the body with 413,
/// so the shadow must not get it either, whether the length said so at
/// once or a chunked body passed the limit on its way to the upstream.
#[tokio::test]
async fn a_body_refused_by_a_later_request_body_is_not_copied() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&shadow))
            .request_body("1KiB")
            .proxy(&primary),
    )
    .await;
    let base = base_url(&running);
    let big = random_bytes(5 * 1024, 21);
    let req = client::req("POST", &format!("{base}/declared"))
        .body(client::full(big.clone()))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().status, 413);
    let pieces: Vec<Bytes> = big.chunks(512).map(Bytes::copy_from_slice).collect();
    let req = client::req("POST", &format!("{base}/chunked"))
        .body(client::chunks(pieces))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().status, 413);
    // The mirror works: a body within the limit is copied, and is the
    // only request the shadow ever gets.
    let small = random_bytes(1024, 22);
    let req = client::req("POST", &format!("{base}/small"))
        .body(client::full(small.clone()))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().status, 200);
    let copies = shadow.wait_for(1).await;
    assert_eq!(copies[0].path_and_query(), "/small");
    assert_eq!(copies[0].body.as_ref(), small.as_slice());
    shadow.assert_stays_at(1, Duration::from_millis(200)).await;
    assert_eq!(
        metrics::target(&running, &shadow.url())
            .await
            .skipped_too_large,
        2
    );
}

#[test]
fn validate_warns_about_request_body_after_mirror_and_twice() {
    let kdl = "site \"127.0.0.1:8080\" {\n  route \"/*\" {\n    mirror \"http://127.0.0.1:9001\"\n    request_body max_size=\"1KiB\"\n    request_body max_size=\"2KiB\"\n    reverse_proxy \"http://127.0.0.1:9000\"\n  }\n}\n";
    let (count, rendered) = common::warnings("b.kdl", kdl);
    assert_eq!(count, 2, "{rendered}");
    let want = [
        r#"  ⚠ `request_body` comes after `mirror`"#,
        r#"   ╭─[b.kdl:4:5]"#,
        r#" 2 │   route "/*" {"#,
        r#" 3 │     mirror "http://127.0.0.1:9001""#,
        r#"   ·     ───┬──"#,
        r#"   ·        ╰── the mirror"#,
        r#" 4 │     request_body max_size="1KiB""#,
        r#"   ·     ──────┬─────"#,
        r#"   ·           ╰── checked after the mirror has started copying the body"#,
        r#" 5 │     request_body max_size="2KiB""#,
        r#"   ╰────"#,
        r#"  help: move `request_body` before `mirror`: a body over the limit is then refused before any of it is read for a copy"#,
        r#"  ⚠ a second `request_body` in this route"#,
        r#"   ╭─[b.kdl:5:5]"#,
        r#" 3 │     mirror "http://127.0.0.1:9001""#,
        r#" 4 │     request_body max_size="1KiB""#,
        r#"   ·     ──────┬─────"#,
        r#"   ·           ╰── the first"#,
        r#" 5 │     request_body max_size="2KiB""#,
        r#"   ·     ──────┬─────"#,
        r#"   ·           ╰── another limit"#,
        r#" 6 │     reverse_proxy "http://127.0.0.1:9000""#,
        r#"   ╰────"#,
        r#"  help: keep one: the smaller max_size is the one that holds"#,
    ]
    .map(|line| format!("{line}\n"))
    .concat();
    assert_eq!(rendered, want);
    // Before the mirror, one limit: nothing to say.
    let kdl = "site \"127.0.0.1:8080\" {\n  route \"/*\" {\n    request_body max_size=\"1KiB\"\n    mirror \"http://127.0.0.1:9001\"\n    reverse_proxy \"http://127.0.0.1:9000\"\n  }\n}\n";
    let (count, rendered) = common::warnings("a.kdl", kdl);
    assert_eq!(count, 0, "{rendered}");
}

#[tokio::test]
async fn client_abort_mid_body_sends_no_truncated_copy() {
    use tokio::io::AsyncWriteExt;
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(Chain::new().mirror(Mirror::to(&shadow)).proxy(&primary)).await;
    let mut stream = tokio::net::TcpStream::connect(running.addr())
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /abort HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly-part-of-it",
        )
        .await
        .unwrap();
    // Wait until the primary has started receiving, then vanish.
    common::eventually("the primary to see the request", || {
        primary.count() == 1 || primary.in_flight() == 1
    })
    .await;
    drop(stream);
    metrics::target_until(
        &running,
        &shadow.url(),
        "the copy to be counted incomplete",
        |c| c.incomplete == 1,
    )
    .await;
    shadow.assert_stays_at(0, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn copies_reuse_pooled_connections() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&shadow).opt("concurrency 2"))
            .proxy(&primary),
    )
    .await;
    let client = Client::http1();
    for i in 0..30 {
        client.get(&format!("{}/n/{i}", base_url(&running))).await;
        metrics::target_until(&running, &shadow.url(), "the copy to complete", |c| {
            c.succeeded == i as u64 + 1
        })
        .await;
    }
    // hyper returns a connection to its pool a moment after the response
    // ends, so a copy may now and then open one more; without pooling
    // there would be 30.
    assert!(
        shadow.connections() <= 5,
        "{} connections for 30 sequential copies",
        shadow.connections()
    );
}

#[tokio::test]
async fn sampling_copies_the_configured_fraction() {
    const N: usize = 10_000;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt("sample 0.25")
        .opt("backlog 100000")
        .opt("concurrency 8");
    let running = start_route(Chain::new().mirror(mirror).respond(200)).await;
    let base = base_url(&running);
    let client = Client::http1();
    within("10,000 requests", async {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let (client, base) = (client.clone(), base.clone());
            tasks.spawn(async move {
                for i in (worker..N).step_by(8) {
                    assert_eq!(client.get(&format!("{base}/s/{i}")).await.status, 200);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await;
    let sampled_out = metrics::target(&running, &shadow.url()).await.sampled_out as usize;
    let copied = N - sampled_out;
    shadow.wait_for(copied).await;
    // Binomial(10,000, 0.25) has a standard deviation of 43.3 copies; a
    // tolerance of ±250 (5.8 sigma) fails a correct sampler about once in
    // a hundred million runs.
    let fraction = copied as f64 / N as f64;
    assert!(
        (0.225..=0.275).contains(&fraction),
        "copied {copied} of {N}: {fraction}"
    );
}

#[tokio::test]
async fn breaker_pauses_probes_and_resumes() {
    let primary = Backend::ok().await;
    let shadow = Backend::start(Reply::ok("down").status(503)).await;
    let mirror = Mirror::to(&shadow)
        .opt("max_failures 3")
        .opt(r#"retry_after "300ms""#)
        .opt(r#"fail_after "1h""#)
        .opt("concurrency 1");
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let client = Client::http1();
    let base = base_url(&running);
    let url = shadow.url();
    for i in 0..3 {
        client.get(&format!("{base}/fail/{i}")).await;
        metrics::target_until(&running, &url, "the failure to be counted", |c| {
            c.failed == i + 1
        })
        .await;
    }
    assert_eq!(metrics::target(&running, &url).await.pauses, 1);
    // Paused: copies are skipped, not sent.
    for i in 0..5 {
        client.get(&format!("{base}/skipped/{i}")).await;
    }
    assert_eq!(metrics::target(&running, &url).await.skipped_paused, 5);
    assert_eq!(shadow.count(), 3);
    // The target recovers; after retry_after one probe goes through and
    // resumes it.
    shadow.set_reply(Reply::ok("up"));
    let mut probes = 0;
    within("a probe to resume the target", async {
        while metrics::target(&running, &url).await.succeeded == 0 {
            client.get(&format!("{base}/probe/{probes}")).await;
            probes += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let probe = shadow.wait_for(4).await.remove(3);
    assert!(probe.path_and_query().starts_with("/probe/"), "{probe:?}");
    client.get(&format!("{base}/after")).await;
    let after = shadow.wait_for(5).await.remove(4);
    assert_eq!(after.path_and_query(), "/after");
    assert!(!metrics::target(&running, &url).await.paused_now);
}

#[tokio::test]
async fn failing_target_is_removed_after_fail_after() {
    let primary = Backend::ok().await;
    let shadow = Backend::start(Reply::ok("down").status(500)).await;
    let mirror = Mirror::to(&shadow)
        .opt("max_failures 1")
        .opt(r#"retry_after "50ms""#)
        .opt(r#"fail_after "400ms""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let client = Client::http1();
    let base = base_url(&running);
    within("the failing target to be removed", async {
        let mut i = 0;
        while !metrics::targets(&running, None).await.is_empty() {
            let resp = client.get(&format!("{base}/r/{i}")).await;
            assert_eq!(resp.status, 200, "production is unaffected");
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let before = shadow.count();
    client.get(&format!("{base}/after-removal")).await;
    shadow
        .assert_stays_at(before, Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn alerts_summarise_at_most_once_per_interval() {
    // The test runtime has one thread, so a thread-local subscriber sees
    // every task's logs.
    let (capture, _guard) = common::LogCapture::start();

    let primary = Backend::ok().await;
    let dead = refused_url();
    let mirror = Mirror::to(&dead)
        .opt(r#"alert_interval "300ms""#)
        .opt("max_failures 100000")
        .opt("backlog 100000")
        .opt("concurrency 16");
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let client = Client::http1();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1300) {
        client
            .get(&format!("{}/a/{sent}", base_url(&running)))
            .await;
        sent += 1;
    }
    metrics::target_until(&running, &dead, "the last failures to be counted", |c| {
        c.failed == sent
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let elapsed = started.elapsed();
    let text = capture.text();
    let alerts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("mirror target trouble"))
        .collect();
    let intervals = (elapsed.as_millis() / 300) as usize + 1;
    assert!(!alerts.is_empty(), "no alert in:\n{text}");
    assert!(
        alerts.len() <= intervals,
        "{} alerts in {intervals} intervals:\n{text}",
        alerts.len()
    );
    assert!(
        sent as usize > alerts.len() * 2,
        "not one line per failure: {sent} failures, {} alerts",
        alerts.len()
    );
    let total: u64 = alerts
        .iter()
        .map(|l| {
            l.split("failed=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, sent, "the alerts add up to every failure:\n{text}");
    assert!(alerts.iter().all(|l| l.contains(&dead)));
}

#[tokio::test]
async fn shutdown_drains_queued_copies() {
    let primary = Backend::ok().await;
    let shadow = Backend::start(Reply::ok("slow").delay(Duration::from_millis(100))).await;
    let running = start_route(
        Chain::new()
            .mirror(Mirror::to(&shadow).opt("concurrency 1").opt("backlog 100"))
            .proxy(&primary),
    )
    .await;
    let client = Client::http1();
    for i in 0..8 {
        client.get(&format!("{}/q/{i}", base_url(&running))).await;
    }
    // The admin endpoint stops with the server: what shutdown counted is
    // read from the metrics renderer, which outlives it.
    let metrics_after = running.metrics_renderer();
    within("shutdown", running.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        shadow.count(),
        8,
        "every queued copy was sent before shutdown ended"
    );
    let after = Metrics::parse(&metrics_after());
    assert_eq!(after.target(&shadow.url()).dropped, 0);
}

#[tokio::test]
async fn shutdown_drops_and_counts_what_cannot_drain() {
    let primary = Backend::ok().await;
    let gate = Gate::new();
    let shadow = Backend::start(Reply::ok("held").hold(&gate)).await;
    let mirror = Mirror::to(&shadow)
        .opt("concurrency 1")
        .opt("backlog 100")
        .opt(r#"timeout "1h""#);
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let client = Client::http1();
    for i in 0..5 {
        client.get(&format!("{}/q/{i}", base_url(&running))).await;
    }
    let metrics_after = running.metrics_renderer();
    within("shutdown", running.shutdown(Duration::from_millis(300))).await;
    // One copy was in flight and four queued: all five counted dropped.
    let after = Metrics::parse(&metrics_after());
    assert_eq!(after.target(&shadow.url()).dropped, 5);
    gate.open();
}

#[tokio::test]
async fn copies_waiting_behind_a_slow_one_go_out_together_each_in_order_and_counted() {
    let primary = Backend::ok().await;
    let gate = Gate::new();
    let held = gate.clone();
    let shadow = Backend::with(move |req| match req.path_and_query() {
        "/0" => Reply::ok("slow").hold(&held),
        _ => Reply::ok("quick"),
    })
    .await;
    let mirror = Mirror::to(&shadow).opt("concurrency 1").opt("backlog 100");
    let running = start_route(Chain::new().mirror(mirror).proxy(&primary)).await;
    let client = Client::http1();
    client.get(&format!("{}/0", base_url(&running))).await;
    shadow.wait_for(1).await;
    // Twenty copies wait while the only worker waits for the first answer;
    // then they go out on its connection, eight at a time, before their
    // answers come.
    for i in 1..=20 {
        client
            .get(&format!("{}/{i}?n={i}", base_url(&running)))
            .await;
    }
    let target = shadow.url();
    metrics::target_until(&running, &target, "twenty copies waiting", |c| {
        c.backlog == 20
    })
    .await;
    gate.open();
    let seen = shadow.wait_for(21).await;
    let paths: Vec<_> = seen
        .iter()
        .map(|r| r.path_and_query().to_string())
        .collect();
    let expected: Vec<_> = std::iter::once("/0".to_string())
        .chain((1..=20).map(|i| format!("/{i}?n={i}")))
        .collect();
    assert_eq!(paths, expected);
    assert!(seen.iter().all(|r| r.conn == 0), "one connection");
    assert!(seen
        .iter()
        .all(|r| r.body.is_empty() && r.method == Method::GET));
    metrics::target_until(&running, &target, "every copy answered", |c| {
        c.succeeded == 21
    })
    .await;
    let c = metrics::target(&running, &target).await;
    assert_eq!(
        (c.sent, c.failed, c.timed_out, c.dropped),
        (21, 0, 0, 0),
        "{c:?}"
    );
}
