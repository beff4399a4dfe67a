//! TLS termination: certificates made at test time with rcgen, real
//! handshakes from a rustls client, HTTP/1.1 and HTTP/2 over TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{metrics, Admin, Backend, Chain, Mirror, Site, TempDir};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use teebox::server::Running;
use tokio::net::TcpStream;

struct Cert {
    der: CertificateDer<'static>,
}

/// A self-signed certificate for `name`, written as `NAME.pem` and
/// `NAME-key.pem` into `dir`.
fn make_cert(dir: &Path, name: &str) -> Cert {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), made.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}-key.pem")),
        made.key_pair.serialize_pem(),
    )
    .unwrap();
    Cert {
        der: made.cert.der().clone(),
    }
}

fn client_config(trusted: &[&Cert], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.der.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` asking for `sni`; the server's certificate
/// and the negotiated ALPN protocol come back with it.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// One request over an established TLS stream, in HTTP/2 if ALPN chose it.
async fn request(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> (u16, http::Version, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let status = response.status().as_u16();
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// Two TLS sites on one address, `a.test` and `b.test`, each answering
/// with its name; `a.test` is the default site for other names if
/// `a_is_default`.
fn two_sites(a_is_default: bool) -> String {
    let tls_a = match a_is_default {
        true => r#"tls cert="a.test.pem" key="a.test-key.pem" default=#true"#,
        false => r#"tls cert="a.test.pem" key="a.test-key.pem""#,
    };
    Site::new()
        .host("a.test")
        .line(tls_a)
        .route("/*", Chain::new().respond_with(200, "site a"))
        .another_site()
        .host("b.test")
        .line(r#"tls cert="b.test.pem" key="b.test-key.pem""#)
        .route("/*", Chain::new().respond_with(200, "site b"))
        .to_kdl()
}

async fn start_in(dir: &TempDir, site: &str) -> Running {
    common::start_in(site, dir.path()).await
}

#[tokio::test]
async fn http1_and_http2_over_tls() {
    let dir = TempDir::new("tls-basic");
    let a = make_cert(dir.path(), "a.test");
    make_cert(dir.path(), "b.test");
    let running = start_in(&dir, &two_sites(false)).await;
    let h1 = connect(
        running.addr(),
        "a.test",
        client_config(&[&a], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (status, version, body) = request(h1, "GET", "https://a.test/x", Vec::new()).await;
    assert_eq!(
        (status, version, body.as_str()),
        (200, http::Version::HTTP_11, "site a")
    );
    let h2 = connect(
        running.addr(),
        "a.test",
        client_config(&[&a], &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = request(h2, "GET", "https://a.test/x", Vec::new()).await;
    assert_eq!(
        (status, version, body.as_str()),
        (200, http::Version::HTTP_2, "site a")
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_silent_client_of_a_tls_site() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new("tls-silent");
    let a = make_cert(dir.path(), "a.test");
    make_cert(dir.path(), "b.test");
    let running = start_in(&dir, &two_sites(false)).await;
    // Connected, but not a byte sent: the server waits to see a handshake.
    let mut silent = TcpStream::connect(running.addr()).await.unwrap();
    // Another connection's answer shows the first has been accepted too.
    let tls = connect(
        running.addr(),
        "a.test",
        client_config(&[&a], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (status, _, _) = request(tls, "GET", "https://a.test/x", Vec::new()).await;
    assert_eq!(status, 200);
    // Far within the 10 s the server gives a client to start its handshake.
    let finished = common::within_for(
        std::time::Duration::from_secs(5),
        "shutdown",
        running.shutdown(std::time::Duration::from_secs(60)),
    )
    .await;
    assert!(finished, "shutdown reported unfinished connections");
    let mut rest = Vec::new();
    common::within(
        "the silent connection to close",
        silent.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
}

#[tokio::test]
async fn sni_picks_each_sites_certificate() {
    let dir = TempDir::new("tls-sni");
    let a = make_cert(dir.path(), "a.test");
    let b = make_cert(dir.path(), "b.test");
    let running = start_in(&dir, &two_sites(false)).await;
    for (name, cert, answer) in [("a.test", &a, "site a"), ("b.test", &b, "site b")] {
        let tls = connect(
            running.addr(),
            name,
            client_config(&[&a, &b], &[b"http/1.1"]),
        )
        .await
        .unwrap();
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(served, cert.der, "certificate for {name}");
        let (_, _, body) = request(tls, "GET", &format!("https://{name}/"), Vec::new()).await;
        assert_eq!(body, answer);
    }
}

#[tokio::test]
async fn an_unknown_name_gets_the_default_site_or_no_handshake() {
    let dir = TempDir::new("tls-default");
    let a = make_cert(dir.path(), "a.test");
    let b = make_cert(dir.path(), "b.test");
    let without_default = start_in(&dir, &two_sites(false)).await;
    let refused = connect(
        without_default.addr(),
        "c.test",
        client_config(&[&a, &b], &[]),
    )
    .await;
    assert!(refused.is_err(), "no default site: the handshake fails");

    let with_default = start_in(&dir, &two_sites(true)).await;
    // The client trusts a.test's certificate for c.test only if the server
    // sends it; check what it sent instead of trusting it.
    let mut config = (*client_config(&[&a, &b], &[])).clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAny));
    let tls = connect(with_default.addr(), "c.test", Arc::new(config))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], a.der);
}

#[tokio::test]
async fn plain_http_on_a_tls_port_gets_a_400_with_a_hint() {
    let dir = TempDir::new("tls-plain");
    make_cert(dir.path(), "a.test");
    make_cert(dir.path(), "b.test");
    let running = start_in(&dir, &two_sites(false)).await;
    let outcome =
        common::raw::exchange(running.addr(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let response = outcome.response();
    assert_eq!(response.status, 400);
    assert!(String::from_utf8_lossy(&response.body).contains("HTTP request to an HTTPS server"));
}

#[tokio::test]
async fn a_shadow_gets_the_copy_of_a_request_that_came_over_h2() {
    let dir = TempDir::new("tls-mirror");
    let a = make_cert(dir.path(), "a.test");
    let shadow = Backend::ok().await;
    let site = format!(
        "site \"127.0.0.1:0\" {{\n  tls cert=\"a.test.pem\" key=\"a.test-key.pem\"\n  route \"/*\" {{\n    mirror {:?}\n    respond 202 \"queued\"\n  }}\n}}\n",
        shadow.url()
    );
    let running = start_in(&dir, &site).await;
    let tls = connect(running.addr(), "a.test", client_config(&[&a], &[b"h2"]))
        .await
        .unwrap();
    let body = common::random_bytes(20_000, 5);
    let (status, version, _) =
        request(tls, "POST", "https://a.test/events?n=1", body.clone()).await;
    assert_eq!((status, version), (202, http::Version::HTTP_2));
    let copy = shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.method, http::Method::POST);
    assert_eq!(copy.path_and_query(), "/events?n=1");
    assert_eq!(copy.body.as_ref(), body.as_slice());
    assert_eq!(copy.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn a_reload_serves_a_new_certificate_to_new_connections() {
    let dir = TempDir::new("tls-reload");
    let old = make_cert(dir.path(), "a.test");
    let site = "global { admin \"127.0.0.1:0\" }\nsite \"127.0.0.1:0\" {\n  tls cert=\"a.test.pem\" key=\"a.test-key.pem\"\n  route \"/*\" { respond 200 \"a\" }\n}\n";
    let file = dir.join("site.kdl");
    std::fs::write(&file, site).unwrap();
    let running = teebox::server::start(
        &teebox::config::load(&file, teebox::handlers::REGISTRY)
            .unwrap()
            .config,
    )
    .await
    .unwrap();
    let before = connect(running.addr(), "a.test", client_config(&[&old], &[]))
        .await
        .unwrap();
    assert_eq!(before.get_ref().1.peer_certificates().unwrap()[0], old.der);

    let new = make_cert(dir.path(), "a.test");
    let admin = format!("http://{}/reload", running.admin_addr().unwrap());
    let reply = common::Client::http1()
        .send(
            common::client::req("POST", &admin)
                .body(common::client::full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let after = connect(running.addr(), "a.test", client_config(&[&new], &[]))
        .await
        .unwrap();
    assert_eq!(after.get_ref().1.peer_certificates().unwrap()[0], new.der);
    // The connection made before the reload still works.
    let (status, _, body) = request(before, "GET", "https://a.test/", Vec::new()).await;
    assert_eq!((status, body.as_str()), (200, "a"));
}

#[test]
fn validate_checks_the_certificate_and_key() {
    let dir = TempDir::new("tls-validate");
    make_cert(dir.path(), "a.test");
    make_cert(dir.path(), "b.test");
    let check = |tls: &str| {
        let site =
            format!("site \"127.0.0.1:0\" {{\n  {tls}\n  route \"/*\" {{ respond 200 }}\n}}\n");
        match teebox::config::parse(
            "tls.kdl",
            &site,
            dir.path().to_path_buf(),
            teebox::handlers::REGISTRY,
        ) {
            Ok(_) => String::new(),
            Err(err) => err.render(teebox::config::Style::Plain),
        }
    };
    assert_eq!(check("tls cert=\"a.test.pem\" key=\"a.test-key.pem\""), "");
    let mismatch = check("tls cert=\"a.test.pem\" key=\"b.test-key.pem\"");
    assert!(
        mismatch.contains("does not belong to the certificate"),
        "{mismatch}"
    );
    assert!(
        mismatch.contains("tls.kdl:2:"),
        "points at the tls node: {mismatch}"
    );
    let missing = check("tls cert=\"nope.pem\" key=\"a.test-key.pem\"");
    assert!(missing.contains("cannot read certificate"), "{missing}");
    let not_a_key = check("tls cert=\"a.test.pem\" key=\"a.test.pem\"");
    assert!(not_a_key.contains("private key"), "{not_a_key}");
}

/// Accepts any server certificate: only for checking which one was sent.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn http_redirect_answers_308_to_the_https_url() {
    let dir = TempDir::new("tls-redirect");
    make_cert(dir.path(), "a.test");
    // A free port for teebox's redirect listener: bound, then let go.
    let plain = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let site = format!(
        "site \"127.0.0.1:0\" {{\n  tls cert=\"a.test.pem\" key=\"a.test-key.pem\"\n  http_redirect \"{plain}\"\n  route \"/*\" {{ respond 200 }}\n}}\n"
    );
    let running = start_in(&dir, &site).await;
    let tls_port = running.addr().port();
    let request = b"GET /path?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n";
    let response = common::raw::exchange(plain, request).await.response();
    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some(format!("https://a.test:{tls_port}/path?q=1").as_str())
    );
}

#[test]
fn http_redirect_needs_tls_and_an_address_of_its_own() {
    let check = |site: &str| match teebox::config::parse(
        "r.kdl",
        site,
        std::env::temp_dir(),
        teebox::handlers::REGISTRY,
    ) {
        Ok(_) => String::new(),
        Err(err) => err.render(teebox::config::Style::Plain),
    };
    let no_tls = check("site \"127.0.0.1:8443\" {\n  http_redirect \"127.0.0.1:8080\"\n  route \"/*\" { respond 200 }\n}\n");
    assert!(no_tls.contains("the site has no `tls`"), "{no_tls}");
    let taken = check(
        "site \"127.0.0.1:8080\" { route \"/*\" { respond 200 } }\nsite \"127.0.0.1:8443\" {\n  http_redirect \"127.0.0.1:8080\"\n  route \"/*\" { respond 200 }\n}\n",
    );
    assert!(taken.contains("already a site's listen address"), "{taken}");
}

/// An HTTPS backend whose certificate (for `upstream.test`) a private CA
/// signed; the CA's certificate is written to `ca.pem` in `dir`. Counts the
/// requests it answers.
async fn https_backend(dir: &Path) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["upstream.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from("secure"),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_needs_tls_ca() {
    let dir = TempDir::new("tls-upstream");
    let (addr, served) = https_backend(dir.path()).await;
    let site = |options: &str| {
        format!("site \"127.0.0.1:0\" {{ route \"/*\" {{ reverse_proxy \"https://{addr}\" {{ {options} }} }} }}")
    };
    let trusted = common::start_in(
        &site("tls_ca \"ca.pem\"; tls_server_name \"upstream.test\""),
        dir.path(),
    )
    .await;
    let ok = common::Client::http1()
        .get(&format!("{}/x", common::base_url(&trusted)))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "secure");

    let untrusted = common::start_in(&site("tls_server_name \"upstream.test\""), dir.path()).await;
    let refused = common::Client::http1()
        .get(&format!("{}/x", common::base_url(&untrusted)))
        .await;
    assert_eq!(
        refused.status, 502,
        "a certificate from an unknown CA is refused"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_https_mirror_target_gets_copies() {
    let dir = TempDir::new("tls-mirror-target");
    let (addr, served) = https_backend(dir.path()).await;
    let target = format!("https://{addr}");
    let mirror = Mirror::to(&target)
        .opt(r#"tls_ca "ca.pem""#)
        .opt(r#"tls_server_name "upstream.test""#);
    let site = Site::new()
        .admin(Admin::open())
        .route(
            "/*",
            Chain::new().mirror(mirror).respond_with(200, "primary"),
        )
        .to_kdl();
    let running = common::start_in(&site, dir.path()).await;
    let resp = common::Client::http1()
        .get(&format!("{}/copied", common::base_url(&running)))
        .await;
    assert_eq!(resp.text(), "primary");
    common::eventually("the copy over TLS", || {
        served.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    metrics::target_until(&running, &target, "the copy to count as succeeded", |c| {
        c.succeeded == 1
    })
    .await;
}

#[test]
fn validate_warns_about_skipping_verification() {
    let site = "site \"127.0.0.1:0\" { route \"/*\" { reverse_proxy \"https://127.0.0.1:9443\" { tls_insecure_skip_verify #true } } }";
    let loaded = teebox::config::parse(
        "w.kdl",
        site,
        std::env::temp_dir(),
        teebox::handlers::REGISTRY,
    )
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message().contains("not verified"));
}

/// A backend that answers with the HTTP version it received the request in;
/// over TLS (with ALPN h2 and http/1.1) when `tls` is given, else h2c only.
async fn version_backend(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(version),
                        )))
                    },
                );
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .http2_only()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn h2c_upstreams_get_http2() {
    let addr = version_backend(None).await;
    let site = format!("site \"127.0.0.1:0\" {{ route \"/*\" {{ reverse_proxy \"http://{addr}\" {{ h2c #true }} }} }}");
    let running = common::start(&site).await;
    let resp = common::Client::http1()
        .get(&format!("{}/v", common::base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "HTTP/2.0");
}

#[tokio::test]
async fn an_https_upstream_offering_h2_gets_http2() {
    let dir = TempDir::new("tls-alpn-upstream");
    let config =
        common::tls::self_signed_server(dir.path(), "upstream.test", &[b"h2", b"http/1.1"]);
    let addr = version_backend(Some(config)).await;
    let site = format!(
        "site \"127.0.0.1:0\" {{ route \"/*\" {{ reverse_proxy \"https://{addr}\" {{ tls_ca \"ca.pem\"; tls_server_name \"upstream.test\"; }} }} }}"
    );
    let running = common::start_in(&site, dir.path()).await;
    let resp = common::Client::http1()
        .get(&format!("{}/v", common::base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "HTTP/2.0");
}

#[test]
fn validate_warns_about_an_expired_certificate() {
    let dir = TempDir::new("tls-expired");
    let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("old.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("old-key.pem"), key.serialize_pem()).unwrap();
    let site = "site \"127.0.0.1:0\" {\n  tls cert=\"old.pem\" key=\"old-key.pem\"\n  route \"/*\" { respond 200 }\n}\n";
    let loaded = teebox::config::parse(
        "old.kdl",
        site,
        dir.path().to_path_buf(),
        teebox::handlers::REGISTRY,
    )
    .expect("a warning, not an error");
    let text = loaded.render_warnings(teebox::config::Style::Plain);
    assert!(
        text.contains("the certificate expired on 2001-01-01"),
        "{text}"
    );
}

/// An HTTPS upstream offering only h2 (certificate for `upstream.test`,
/// self-signed into `dir/ca.pem`) that answers `ok`. It counts the
/// connections it accepts, and drops them all when `close` is sent. With
/// `broken` set, it drops each new connection half a second after
/// accepting it, without a handshake.
struct H2Upstream {
    addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    close: tokio::sync::watch::Sender<()>,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl H2Upstream {
    async fn start(dir: &Path) -> Self {
        use std::sync::atomic::Ordering;
        let config = common::tls::self_signed_server(dir, "upstream.test", &[b"h2"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (close, closing) = tokio::sync::watch::channel(());
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (accepts, closes, is_broken) = (accepted.clone(), closed.clone(), broken.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepts.fetch_add(1, Ordering::SeqCst);
                if is_broken.load(Ordering::SeqCst) {
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        drop(tcp);
                    });
                    continue;
                }
                let (acceptor, closes, mut closing) =
                    (acceptor.clone(), closes.clone(), closing.clone());
                closing.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from("ok"),
                        )))
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = closing.changed() => {}
                    }
                    closes.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        H2Upstream {
            addr,
            accepted,
            closed,
            close,
            broken,
        }
    }

    /// Drops its connections, and waits until it has.
    async fn close_connections(&self, expected: usize) {
        self.close.send(()).expect("the upstream listens");
        common::eventually("the upstream dropped its connection", || {
            self.closed.load(std::sync::atomic::Ordering::SeqCst) == expected
        })
        .await;
        // Let teebox read the end of the connection: a burst sent before it
        // has would find the connection still there, which is another case.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    /// A site proxying to it, and an h2c client: one client connection, so
    /// its requests are served by one thread, whose pool learns from the
    /// first that the upstream speaks h2.
    async fn proxied(&self, dir: &TempDir) -> (Running, common::Client, String) {
        let site = format!(
            "site \"127.0.0.1:0\" {{ route \"/*\" {{ reverse_proxy \"https://{}\" {{ tls_ca \"ca.pem\"; tls_server_name \"upstream.test\"; }} }} }}",
            self.addr
        );
        let running = common::start_in(&site, dir.path()).await;
        let target = format!("{}/burst", common::base_url(&running));
        (running, common::Client::h2c(), target)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_an_https_upstream_picked_h2_a_burst_after_losing_it_opens_one_connection() {
    let dir = TempDir::new("tls-alpn-burst");
    let upstream = H2Upstream::start(dir.path()).await;
    let (_running, client, target) = upstream.proxied(&dir).await;
    assert_eq!(client.get(&target).await.status, 200);
    assert_eq!(upstream.accepted(), 1);
    upstream.close_connections(1).await;

    let answers = futures_util::future::join_all((0..32).map(|_| client.get(&target))).await;
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert_eq!(upstream.accepted(), 2, "one new connection for the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_waiting_for_a_new_h2_connection_that_fails_fail_with_it() {
    let dir = TempDir::new("tls-alpn-broken");
    let upstream = H2Upstream::start(dir.path()).await;
    let (_running, client, target) = upstream.proxied(&dir).await;
    assert_eq!(client.get(&target).await.status, 200);
    upstream.close_connections(1).await;
    upstream
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // One of them tries to connect; the others wait for it, and fail with
    // it rather than try again one after another.
    let answers = futures_util::future::join_all((0..8).map(|_| client.get(&target))).await;
    assert!(answers.iter().all(|r| r.status == 502), "{answers:?}");
    assert_eq!(upstream.accepted(), 2, "one connection tried for the burst");
}
