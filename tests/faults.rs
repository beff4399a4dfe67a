//! Faulty peers: each way an upstream or a shadow can misbehave, and what
//! the client sees (502/504 or an aborted response for the primary; only
//! counters for a shadow). Also `Expect: 100-continue` through a chain with
//! a mirror.

mod common;

use std::time::Duration;

use common::fault::{refused_url, FaultServer};
use common::{
    base_url, client, metrics, start, within, Admin, Backend, Chain, Client, Mirror, Reply, Site,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The ways a peer can fail, each as a running server.
async fn faulty(kind: &str) -> String {
    let server = match kind {
        "refuses" => return refused_url(),
        "hangs" => FaultServer::silent().await,
        "resets_mid_head" => {
            FaultServer::raw_reply_then_reset(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()).await
        }
        "malformed" => FaultServer::raw_reply(b"this is not HTTP\r\n\r\n".to_vec()).await,
        "closes_without_answer" => FaultServer::raw_reply(Vec::new()).await,
        other => panic!("unknown fault {other}"),
    };
    let url = server.url();
    // The server lives as long as the test process: leak it on purpose.
    std::mem::forget(server);
    url
}

const BEFORE_THE_HEAD: &[(&str, u16)] = &[
    ("refuses", 502),
    ("hangs", 504),
    ("resets_mid_head", 502),
    ("malformed", 502),
    ("closes_without_answer", 502),
];

#[tokio::test]
async fn an_upstream_failing_before_its_head_gives_502_or_504() {
    for (kind, status) in BEFORE_THE_HEAD {
        let upstream = faulty(kind).await;
        let running = common::start_proxy(&[upstream], "timeout \"300ms\"").await;
        let resp = Client::http1()
            .get(&format!("{}/fault", base_url(&running)))
            .await;
        assert_eq!(resp.status, *status, "upstream that {kind}");
    }
}

#[tokio::test]
async fn an_upstream_failing_mid_body_aborts_the_response() {
    for upstream in [
        FaultServer::truncated_body(100_000, 10_000).await,
        FaultServer::raw_reply_then_reset(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nonly a little".to_vec(),
        )
        .await,
    ] {
        let running = common::start_proxy(&[upstream.url()], "").await;
        let req = client::req("GET", &format!("{}/cut", base_url(&running)))
            .body(client::full(""))
            .unwrap();
        // The head came, so the status is 200; the body must fail rather
        // than end early as if it were complete.
        let result = Client::http1().send(req).await;
        assert!(
            result.is_err(),
            "a truncated body read as complete: {:?}",
            result.map(|r| r.status)
        );
    }
}

#[tokio::test]
async fn an_endless_upstream_response_streams_and_costs_nothing_after_the_client_leaves() {
    let upstream = FaultServer::endless().await;
    let running = common::start_proxy(&[upstream.url()], "").await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream
        .write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1 << 20 {
        let n = within("streamed bytes", stream.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0);
        got += n;
    }
    drop(stream);
    // teebox keeps serving: a new request gets its head at once.
    let mut again = TcpStream::connect(running.addr()).await.unwrap();
    again
        .write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let n = within("a second response", again.read(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// A site mirroring to `shadow` and proxying to a healthy primary, with an
/// admin endpoint for the mirror's counters.
fn mirror_site(shadow: &str, primary: &Backend) -> String {
    let mirror = Mirror::to(shadow)
        .opt(r#"timeout "300ms""#)
        .opt("max_failures 1000");
    Site::new()
        .admin(Admin::open())
        .route("/*", Chain::new().mirror(mirror).proxy(primary))
        .to_kdl()
}

#[tokio::test]
async fn a_faulty_shadow_only_moves_counters() {
    let kinds = [
        "refuses",
        "hangs",
        "resets_mid_head",
        "malformed",
        "closes_without_answer",
    ];
    for kind in kinds {
        let primary = Backend::ok().await;
        let shadow = faulty(kind).await;
        let running = start(&mirror_site(&shadow, &primary)).await;
        let client = Client::http1();
        for i in 0..3 {
            let resp = client.get(&format!("{}/s/{i}", base_url(&running))).await;
            assert_eq!(resp.status, 200, "shadow that {kind}");
            assert_eq!(resp.body.as_ref(), b"ok");
        }
        let what = format!("three failed copies to a shadow that {kind}");
        metrics::target_until(&running, &shadow, &what, |c| c.failed + c.timed_out == 3).await;
        assert_eq!(
            metrics::target(&running, &shadow).await.succeeded,
            0,
            "shadow that {kind}"
        );
    }
}

#[tokio::test]
async fn an_endless_shadow_response_is_drained_to_a_cap_and_dropped() {
    let primary = Backend::ok().await;
    let shadow = FaultServer::endless().await;
    let running = start(&mirror_site(&shadow.url(), &primary)).await;
    let client = Client::http1();
    for i in 0..3 {
        let resp = client.get(&format!("{}/e/{i}", base_url(&running))).await;
        assert_eq!(resp.status, 200);
    }
    // Each copy ends (drained to its cap, or timed out) and frees its
    // worker; none is stuck on the endless body.
    metrics::target_until(&running, &shadow.url(), "three copies finished", |c| {
        c.succeeded + c.failed + c.timed_out == 3
    })
    .await;
    assert_eq!(metrics::target(&running, &shadow.url()).await.in_flight, 0);
}

#[tokio::test]
async fn expect_100_continue_works_through_a_mirror_and_a_proxy() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start(&mirror_site(&shadow.url(), &primary)).await;
    let mut stream = TcpStream::connect(running.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within("100 Continue", stream.read(&mut buf)).await.unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello world").await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"ok") {
        let n = within("the response", stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert_eq!(primary.wait_for(1).await[0].body.as_ref(), b"hello world");
    assert_eq!(shadow.wait_for(1).await[0].body.as_ref(), b"hello world");
}

#[tokio::test]
async fn a_slow_upstream_within_timeout_answers_and_one_past_it_gets_504() {
    let slow = Backend::start(Reply::ok("late").delay(Duration::from_millis(400))).await;
    let patient = common::start_proxy(&[slow.url()], "timeout \"5s\"").await;
    let resp = Client::http1().get(&base_url(&patient)).await;
    assert_eq!(
        (resp.status.as_u16(), resp.body.as_ref()),
        (200, &b"late"[..])
    );
    let hasty = common::start_proxy(&[slow.url()], "timeout \"100ms\"").await;
    assert_eq!(Client::http1().get(&base_url(&hasty)).await.status, 504);
}

#[tokio::test]
async fn the_timeout_holds_on_a_kept_alive_upstream_connection_and_resets_after() {
    // Fast answers except on /slow: the slow one comes on a connection the
    // fast ones kept alive, and the fast ones after it are not cut short.
    let backend = Backend::with(|req| match req.path_and_query() {
        "/slow" => Reply::ok("late").delay(Duration::from_millis(800)),
        _ => Reply::ok("quick"),
    })
    .await;
    let teebox = common::start_proxy(&[backend.url()], "timeout \"300ms\"").await;
    let get = |path: &'static str| {
        let url = format!("{}{path}", base_url(&teebox));
        async move { Client::http1().get(&url).await }
    };
    for _ in 0..3 {
        assert_eq!(get("/fast").await.body.as_ref(), b"quick");
    }
    assert_eq!(get("/slow").await.status, 504);
    for _ in 0..3 {
        assert_eq!(get("/fast").await.body.as_ref(), b"quick");
    }
    // Longer than the timeout in all, each within it: none is cut.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(get("/fast").await.status, 200);
    }
}
