//! gRPC through teebox: a unary call is proxied (body and trailers both
//! ways) and mirrored over HTTP/2, h2c or https with ALPN h2, with its
//! request trailers; streaming calls and targets that only speak HTTP/1.1
//! are skipped and counted.
//!
//! The servers and most calls here are raw hyper HTTP/2, so a test can
//! send request trailers (tonic's client never does) and see exactly what
//! arrived; one call is made by tonic's client (without its transport, over
//! hyper-util) for realism.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{
    base_url, metrics, within, Admin, Backend, Chain, Client, Mirror, Proxy, Site, Target, TempDir,
    TIMEOUT,
};
use http::{HeaderMap, HeaderValue, Request, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One length-prefixed gRPC message (uncompressed).
fn message(payload: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A protobuf message whose field 1 is the string `text` (under 128
/// bytes): what [`Text`] decodes.
fn text_message(text: &str) -> Vec<u8> {
    let mut out = vec![0x0a, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// `message Text { string text = 1; }`, for tonic's client.
#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_static(value));
    }
    map
}

/// A call as a gRPC server received it.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// A gRPC server on 127.0.0.1:0 speaking HTTP/2 only (h2c, or TLS with
/// ALPN h2). It keeps every call and answers each with one message naming
/// itself, then `grpc-status: 0` in trailers.
struct GrpcServer {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Sender<usize>,
    accept: JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl GrpcServer {
    async fn h2c(name: &'static str) -> Self {
        Self::start(name, None).await
    }

    async fn start(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let count = watch::channel(0).0;
        let accept = tokio::spawn(accept_loop(
            listener,
            name,
            tls,
            calls.clone(),
            count.clone(),
        ));
        GrpcServer {
            addr,
            calls,
            count,
            accept,
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits for `n` calls and returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Call> {
        let mut rx = self.count.subscribe();
        if tokio::time::timeout(TIMEOUT, rx.wait_for(|c| *c >= n))
            .await
            .is_err()
        {
            panic!("expected {n} call(s), got {:#?}", self.calls());
        }
        self.calls()
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    tls: Option<Arc<rustls::ServerConfig>>,
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Sender<usize>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (tls, calls, count) = (tls.clone(), calls.clone(), count.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (calls, count) = (calls.clone(), count.clone());
                async move {
                    let call = record(req).await;
                    let reply = format!("{name} got {} bytes", call.body.len());
                    calls.lock().unwrap().push(call);
                    count.send_modify(|n| *n += 1);
                    Ok::<_, Infallible>(grpc_reply(&text_message(&reply)))
                }
            });
            let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = h2.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(config) => {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                    else {
                        return;
                    };
                    let _ = h2.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn record(req: Request<Incoming>) -> Call {
    let (parts, body) = req.into_parts();
    let collected = within("the call's body", body.collect())
        .await
        .expect("the call's body");
    Call {
        path: parts.uri.path().to_string(),
        version: parts.version,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(data: Vec<Bytes>, trailers: Option<HeaderMap>) -> Frames {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = data
        .into_iter()
        .map(Frame::data)
        .chain(trailers.map(Frame::trailers))
        .map(Ok)
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

fn grpc_reply(payload: &[u8]) -> http::Response<Frames> {
    let body = frames(
        vec![message(payload)],
        Some(trailers(&[("grpc-status", "0"), ("grpc-message", "")])),
    );
    let mut response = http::Response::new(body);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// What the client got back.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// One call to teebox over h2c (prior knowledge): each of `messages` in a
/// DATA frame of its own, then `trailers` if given.
async fn call(
    teebox: SocketAddr,
    path: &str,
    messages: Vec<Bytes>,
    request_trailers: Option<HeaderMap>,
) -> Reply {
    let tcp = TcpStream::connect(teebox).await.expect("connect to teebox");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{teebox}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .body(frames(messages, request_trailers))
        .expect("request");
    let response = within("the response head", sender.send_request(req))
        .await
        .expect("a response");
    let (parts, body) = response.into_parts();
    let collected = within("the response body", body.collect())
        .await
        .expect("the response body");
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

/// `mirror` in front of `reverse_proxy PRIMARY { h2c #true }`, with an
/// admin endpoint.
fn site(mirror: Mirror, primary: &GrpcServer) -> String {
    Site::new()
        .admin(Admin::open())
        .route(
            "/*",
            Chain::new()
                .mirror(mirror)
                .proxy(Proxy::to(primary.url("http")).opt("h2c #true")),
        )
        .to_kdl()
}

/// A mirror to `url` over h2c.
fn h2c(url: String) -> Mirror {
    Mirror::to(url).opt("h2c #true")
}

fn assert_grpc_ok(reply: &Reply, from: &str, sent: usize) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.headers.get("content-type").map(HeaderValue::as_bytes),
        Some(&b"application/grpc"[..])
    );
    let expected = message(&text_message(&format!("{from} got {sent} bytes")));
    assert_eq!(reply.body, expected, "the primary's message");
    let trailers = reply.trailers.as_ref().expect("response trailers");
    assert_eq!(
        trailers.get("grpc-status").map(HeaderValue::as_bytes),
        Some(&b"0"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_is_proxied_and_mirrored_over_h2c_with_its_trailers() {
    let primary = GrpcServer::h2c("primary").await;
    let shadow = GrpcServer::h2c("shadow").await;
    let running = common::start(&site(h2c(shadow.url("http")), &primary)).await;
    let body = message(b"\x0a\x05hello");
    let sent_trailers = trailers(&[("x-checksum", "c0ffee")]);

    let reply = call(
        running.addr(),
        "/echo.Echo/Say",
        vec![body.clone()],
        Some(sent_trailers.clone()),
    )
    .await;
    assert_grpc_ok(&reply, "primary", body.len());

    let at_primary = primary.wait_for(1).await.remove(0);
    assert_eq!(at_primary.version, Version::HTTP_2);
    assert_eq!(at_primary.body, body);
    assert_eq!(at_primary.trailers.as_ref(), Some(&sent_trailers));
    assert_eq!(
        at_primary.headers.get("te").map(HeaderValue::as_bytes),
        Some(&b"trailers"[..])
    );

    let copy = shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.path, "/echo.Echo/Say");
    assert_eq!(copy.version, Version::HTTP_2);
    assert_eq!(copy.body, body, "the copy's body is the request's");
    assert_eq!(
        copy.trailers.as_ref(),
        Some(&sent_trailers),
        "and so are its trailers"
    );
    for (name, value) in [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "5S"),
        ("teebox-shadow", "1"),
    ] {
        assert_eq!(
            copy.headers.get(name).map(HeaderValue::as_bytes),
            Some(value.as_bytes()),
            "{name} on the copy: {copy:?}"
        );
    }
    metrics::target_until(
        &running,
        &shadow.url("http"),
        "the copy counted as succeeded",
        |c| c.succeeded == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_without_trailers_is_mirrored_without_any() {
    let primary = GrpcServer::h2c("primary").await;
    let shadow = GrpcServer::h2c("shadow").await;
    let running = common::start(&site(h2c(shadow.url("http")), &primary)).await;
    let body = message(&common::random_bytes(40_000, 7));
    let reply = call(running.addr(), "/big.Svc/Put", vec![body.clone()], None).await;
    assert_grpc_ok(&reply, "primary", body.len());
    let copy = shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.body, body);
    assert_eq!(copy.trailers, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_call_is_proxied_but_not_mirrored() {
    let primary = GrpcServer::h2c("primary").await;
    let shadow = GrpcServer::h2c("shadow").await;
    let running = common::start(&site(h2c(shadow.url("http")), &primary)).await;
    let stream: Vec<Bytes> = ["one", "two", "three"]
        .iter()
        .map(|m| message(m.as_bytes()))
        .collect();
    let sent: usize = stream.iter().map(Bytes::len).sum();
    let reply = call(running.addr(), "/up.Load/Stream", stream.clone(), None).await;
    assert_grpc_ok(&reply, "primary", sent);
    assert_eq!(primary.wait_for(1).await[0].body, stream.concat());
    metrics::target_until(
        &running,
        &shadow.url("http"),
        "the streaming call counted",
        |c| c.skipped_streaming == 1,
    )
    .await;

    // A unary call after it is copied, and is the only copy.
    let unary = message(b"after");
    call(running.addr(), "/up.Load/One", vec![unary.clone()], None).await;
    let copies = shadow.wait_for(1).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_eq!(copies[0].body, unary);

    let admin = running.admin_addr().expect("admin endpoint");
    let metrics = Client::http1()
        .get(&format!("http://{admin}/metrics"))
        .await
        .text();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("outcome=\"skipped_streaming\"") && l.ends_with(" 1")),
        "{metrics}"
    );
    let targets = common::client::req("GET", &format!("http://{admin}/targets"))
        .header("accept", "application/json")
        .body(common::client::full(""))
        .unwrap();
    let json = Client::http1().send(targets).await.unwrap().text();
    assert!(json.contains("\"skipped_streaming\":1"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_body_that_is_not_one_whole_message_is_not_mirrored() {
    let primary = GrpcServer::h2c("primary").await;
    let shadow = GrpcServer::h2c("shadow").await;
    let running = common::start(&site(h2c(shadow.url("http")), &primary)).await;
    // The prefix says 100 bytes; 3 follow. The primary sees what was sent.
    let broken = Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2, 3]);
    call(running.addr(), "/x.Y/Broken", vec![broken], None).await;
    // No messages at all.
    call(running.addr(), "/x.Y/Empty", Vec::new(), None).await;
    metrics::target_until(&running, &shadow.url("http"), "both counted", |c| {
        c.skipped_streaming == 2
    })
    .await;
    call(running.addr(), "/x.Y/Fine", vec![message(b"ok")], None).await;
    let copies = shadow.wait_for(1).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_eq!(copies[0].path, "/x.Y/Fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_not_copied_to_a_target_that_only_speaks_http1() {
    let primary = GrpcServer::h2c("primary").await;
    let shadow = Backend::ok().await;
    // No h2c: an http:// target is HTTP/1.1, where gRPC cannot work.
    let running = common::start(&site(Mirror::to(&shadow), &primary)).await;
    let reply = call(running.addr(), "/echo.Echo/Say", vec![message(b"hi")], None).await;
    assert_grpc_ok(&reply, "primary", 7);
    metrics::target_until(&running, &shadow.url(), "counted", |c| {
        c.skipped_no_http2 == 1
    })
    .await;
    // Other requests still reach it: the first request it sees is this one.
    let resp = Client::http1()
        .get(&format!("{}/plain", base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
    let got = shadow.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path_and_query(), "/plain");
    assert_eq!(
        metrics::target(&running, &shadow.url())
            .await
            .skipped_no_http2,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_one_target_sends_it_grpc_while_an_http1_target_skips_it() {
    let primary = GrpcServer::h2c("primary").await;
    let plain = Backend::ok().await;
    let grpc_shadow = GrpcServer::h2c("shadow").await;
    // The mirror's own target speaks HTTP/1.1; the `target` node alone has h2c.
    let mirror = Mirror::to(&plain).target(Target::new(grpc_shadow.url("http")).opt("h2c #true"));
    let running = common::start(&site(mirror, &primary)).await;
    let body = message(b"to the h2c target");
    let reply = call(running.addr(), "/echo.Echo/Say", vec![body.clone()], None).await;
    assert_grpc_ok(&reply, "primary", body.len());

    let copy = grpc_shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.version, Version::HTTP_2);
    assert_eq!(copy.path, "/echo.Echo/Say");
    assert_eq!(copy.body, body);
    let targets = metrics::targets(&running, None).await;
    assert_eq!(targets, [plain.url(), grpc_shadow.url("http")]);
    metrics::target_until(
        &running,
        &plain.url(),
        "the HTTP/1.1 target counted the skip",
        |c| c.skipped_no_http2 == 1,
    )
    .await;
    metrics::target_until(
        &running,
        &grpc_shadow.url("http"),
        "the h2c target counted the copy",
        |c| c.succeeded == 1,
    )
    .await;

    // A plain request still reaches the HTTP/1.1 target, over HTTP/1.1.
    let resp = Client::http1()
        .get(&format!("{}/plain", base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
    let got = plain.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].path_and_query(), "/plain");
    assert_eq!(
        metrics::target(&running, &plain.url())
            .await
            .skipped_no_http2,
        1
    );
}

/// A self-signed certificate for `shadow.test` in `dir/ca.pem`, and a
/// server config offering only `alpn`.
fn tls_config(dir: &TempDir, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    common::tls::self_signed_server(dir.path(), "shadow.test", alpn)
}

/// A mirror to `url` trusting `tls_config`'s certificate.
fn over_tls(url: String) -> Mirror {
    Mirror::to(url)
        .opt(r#"tls_ca "ca.pem""#)
        .opt(r#"tls_server_name "shadow.test""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_is_mirrored_to_an_https_target_over_h2_by_alpn() {
    let dir = TempDir::new("grpc-alpn");
    let primary = GrpcServer::h2c("primary").await;
    let shadow = GrpcServer::start("shadow", Some(tls_config(&dir, &[b"h2", b"http/1.1"]))).await;
    let site = site(over_tls(shadow.url("https")), &primary);
    let running = common::start_in(&site, dir.path()).await;
    let body = message(b"over tls");
    let sent_trailers = trailers(&[("x-checksum", "1")]);
    call(
        running.addr(),
        "/t.T/Call",
        vec![body.clone()],
        Some(sent_trailers.clone()),
    )
    .await;
    let copy = shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.version, Version::HTTP_2);
    assert_eq!(copy.body, body);
    assert_eq!(copy.trailers, Some(sent_trailers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_copy_fails_rather_than_go_over_http1_when_alpn_picks_it() {
    let dir = TempDir::new("grpc-alpn-h1");
    let config = tls_config(&dir, &[b"http/1.1"]);
    // An HTTP/1.1-only TLS server that counts the requests it gets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, seen) = (config.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(http::Response::new(
                            http_body_util::Empty::<Bytes>::new(),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let primary = GrpcServer::h2c("primary").await;
    let target = format!("https://{addr}");
    let site = site(over_tls(target.clone()), &primary);
    let running = common::start_in(&site, dir.path()).await;
    let reply = call(running.addr(), "/t.T/Call", vec![message(b"x")], None).await;
    assert_grpc_ok(&reply, "primary", 6);
    metrics::target_until(&running, &target, "the copy counted as failed", |c| {
        c.failed == 1
    })
    .await;
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_call_is_answered_by_the_primary_and_copied() {
    let primary = GrpcServer::h2c("primary").await;
    let shadow = GrpcServer::h2c("shadow").await;
    let running = common::start(&site(h2c(shadow.url("http")), &primary)).await;
    let channel = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let origin: http::Uri = base_url(&running).parse().unwrap();
    let mut client = tonic::client::Grpc::with_origin(channel, origin);
    within("the client to be ready", client.ready())
        .await
        .expect("ready");
    let request = Text {
        text: "from tonic".into(),
    };
    let sent = prost::Message::encode_to_vec(&request);
    let reply = within(
        "the call",
        client.unary(
            tonic::Request::new(request),
            http::uri::PathAndQuery::from_static("/echo.Echo/Say"),
            tonic::codec::ProstCodec::<Text, Text>::default(),
        ),
    )
    .await
    .expect("an OK call");
    // 5 bytes of prefix and the message.
    let expected = format!("primary got {} bytes", sent.len() + 5);
    assert_eq!(reply.into_inner().text, expected);
    let copy = shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.body, message(&sent));
    assert_eq!(copy.path, "/echo.Echo/Say");
    assert_eq!(
        copy.headers.get("te").map(HeaderValue::as_bytes),
        Some(&b"trailers"[..])
    );
}

#[tokio::test]
async fn a_grpc_call_to_a_plain_http1_upstream_fails_with_a_hint_to_use_h2c() {
    let logs = common::LogCapture::global();
    let primary = GrpcServer::h2c("primary").await;
    let site = Site::new()
        .route("/*", Chain::new().proxy(primary.url("http")))
        .to_kdl();
    let running = common::start(&site).await;
    let reply = call(running.addr(), "/echo.Echo/Say", vec![message(b"hi")], None).await;
    assert_eq!(reply.status, 502, "{reply:?}");
    let upstream = format!("upstream={}", primary.url("http"));
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains(&upstream))
        .unwrap_or_else(|| panic!("no log line names {upstream}:\n{text}"));
    assert!(line.contains("upstream failed before answering"), "{line}");
    assert!(line.contains("set `h2c #true`"), "{line}");
}
