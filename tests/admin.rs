//! The admin endpoint: runtime targets, authentication, metrics, health.

mod common;

use std::time::Duration;

use base64::Engine;
use common::site::kdl_string;
use common::{
    base_url, client, metrics, start, Admin, Backend, Chain, Client, Mirror, Proxy, Resp, Site,
};
use teebox::server::Running;

/// A site file with the admin endpoint `admin` and one route, `/*`, whose
/// chain is `chain`.
fn admin_site(admin: Admin, chain: Chain) -> String {
    Site::new().admin(admin).route("/*", chain).to_kdl()
}

/// A mirror without targets, named `name`, then `respond 200`.
fn named_mirror(name: &str) -> Chain {
    Chain::new().mirror(Mirror::named(name)).respond(200)
}

/// `respond 200`.
fn ok() -> Chain {
    Chain::new().respond(200)
}

fn admin_url(running: &Running, path_and_query: &str) -> String {
    format!(
        "http://{}{path_and_query}",
        running.admin_addr().expect("admin endpoint")
    )
}

async fn call(
    running: &Running,
    method: &str,
    path_and_query: &str,
    auth: Option<(&str, &str)>,
    json: bool,
) -> Resp {
    let mut builder = client::req(method, &admin_url(running, path_and_query));
    if let Some((user, password)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        builder = builder.header("authorization", format!("Basic {token}"));
    }
    if json {
        builder = builder.header("accept", "application/json");
    }
    Client::http1()
        .send(builder.body(client::full("")).unwrap())
        .await
        .expect("admin request")
}

async fn put(running: &Running, query: &str) -> Resp {
    call(running, "PUT", &format!("/targets?{query}"), None, false).await
}

#[tokio::test]
async fn targets_are_added_listed_and_removed() {
    let running = start(&admin_site(Admin::open(), named_mirror("staging"))).await;
    let resp = put(
        &running,
        "url=http://127.0.0.1:9001&url=http://127.0.0.1:9002",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.text(),
        "added http://127.0.0.1:9001\nadded http://127.0.0.1:9002\n"
    );

    let list = call(&running, "GET", "/targets", None, false).await;
    assert_eq!(
        list.text(),
        "http://127.0.0.1:9001\nhttp://127.0.0.1:9002\n"
    );

    let json = call(&running, "GET", "/targets", None, true).await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    let parsed: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let entries = parsed.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["url"], "http://127.0.0.1:9001");
    assert_eq!(entries[0]["mirror"], "staging");
    assert_eq!(entries[0]["state"], "active");
    assert_eq!(entries[0]["counters"]["sent"], 0);

    let removed = call(
        &running,
        "DELETE",
        "/targets?url=http://127.0.0.1:9001",
        None,
        false,
    )
    .await;
    assert_eq!(removed.status, 200);
    assert_eq!(removed.text(), "removed http://127.0.0.1:9001\n");
    let list = call(&running, "GET", "/targets?mirror=staging", None, false).await;
    assert_eq!(list.text(), "http://127.0.0.1:9002\n");
}

#[tokio::test]
async fn a_runtime_target_receives_copies() {
    let shadow = Backend::ok().await;
    let running = start(&admin_site(
        Admin::open(),
        Chain::new()
            .mirror(Mirror::named("staging"))
            .respond_with(200, "primary"),
    ))
    .await;
    assert_eq!(
        put(&running, &format!("url={}", shadow.url())).await.status,
        200
    );
    let body = common::random_bytes(4096, 11);
    let req = client::req("POST", &format!("{}/after-add?x=1", base_url(&running)))
        .body(client::full(body.clone()))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().text(), "primary");
    let copy = shadow
        .wait_for_within(1, Duration::from_secs(1))
        .await
        .remove(0);
    assert_eq!(copy.path_and_query(), "/after-add?x=1");
    assert_eq!(copy.body.as_ref(), body.as_slice());
}

/// Every refusal is a 4xx with a one-line reason, and changes nothing.
#[tokio::test]
async fn bad_calls_get_a_reason_and_change_nothing() {
    let site = admin_site(
        Admin::open().allow_target(&["http://127.0.0.1:*"]),
        Chain::new()
            .mirror(Mirror::to("http://127.0.0.1:9001").name("staging"))
            .mirror(Mirror::named("canary"))
            .respond(200),
    );
    let running = start(&site).await;
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "PUT",
            "/targets?mirror=staging&url=http://127.0.0.1:9001",
            409,
            "already a target",
        ),
        (
            "PUT",
            "/targets?mirror=staging&url=http://127.0.0.1:9005&url=http://127.0.0.1:9001",
            409,
            "already a target",
        ),
        (
            "DELETE",
            "/targets?mirror=staging&url=http://127.0.0.1:9999",
            404,
            "not a target",
        ),
        (
            "PUT",
            "/targets?mirror=staging&url=not-a-url",
            400,
            "invalid target URL",
        ),
        (
            "PUT",
            "/targets?mirror=staging&url=ftp://127.0.0.1:21",
            400,
            "scheme",
        ),
        (
            "PUT",
            "/targets?mirror=staging&url=http://10.1.2.3:80",
            403,
            "allow_target",
        ),
        (
            "PUT",
            "/targets?mirror=nope&url=http://127.0.0.1:9005",
            404,
            "no mirror named",
        ),
        (
            "PUT",
            "/targets?url=http://127.0.0.1:9005",
            400,
            "choose one with mirror=NAME",
        ),
        ("PUT", "/targets?mirror=staging", 400, "url="),
        (
            "PUT",
            "/targets?mirror=staging&target=x",
            400,
            "unknown parameter",
        ),
        (
            "PATCH",
            "/targets?mirror=staging",
            405,
            "method not allowed",
        ),
        ("GET", "/nothing", 404, "no such admin resource"),
    ];
    for (method, path, status, reason) in cases {
        let resp = call(&running, method, path, None, false).await;
        assert_eq!(resp.status, *status, "{method} {path}: {}", resp.text());
        let text = resp.text();
        assert!(text.contains(reason), "{method} {path}: {text}");
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    }
    let staging = call(&running, "GET", "/targets?mirror=staging", None, false).await;
    assert_eq!(staging.text(), "http://127.0.0.1:9001\n", "nothing changed");
    let canary = call(&running, "GET", "/targets?mirror=canary", None, false).await;
    assert_eq!(canary.text(), "");
}

/// A target written another way (default port, trailing slash, host
/// case) is the same target: adding it again would send every copy there
/// twice.
#[tokio::test]
async fn a_target_spelled_otherwise_is_already_there() {
    let site = admin_site(
        Admin::open().allow_target(&["http://127.0.0.1:*", "http://localhost:*"]),
        Chain::new()
            .mirror(Mirror::to_all(&["http://127.0.0.1", "http://LocalHost:9001"]).name("staging"))
            .respond(200),
    );
    let running = start(&site).await;
    for url in [
        "http://127.0.0.1:80",
        "http://127.0.0.1/",
        "HTTP://127.0.0.1:80/",
        "http://localhost:9001",
    ] {
        let resp = put(&running, &format!("mirror=staging&url={url}")).await;
        assert_eq!(resp.status, 409, "{url}: {}", resp.text());
        assert!(
            resp.text().contains("is already a target of staging"),
            "{url}: {}",
            resp.text()
        );
    }
    let twice = put(
        &running,
        "mirror=staging&url=http://127.0.0.1:9005&url=http://127.0.0.1:9005/",
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.text());
    assert_eq!(twice.text(), "http://127.0.0.1:9005 is given twice\n");
    let list = call(&running, "GET", "/targets?mirror=staging", None, false).await;
    assert_eq!(
        list.text(),
        "http://127.0.0.1\nhttp://LocalHost:9001\n",
        "nothing added"
    );
}

#[tokio::test]
async fn with_users_every_request_needs_credentials() {
    // Cost 4 keeps the test quick; real hashes use 12.
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let site = admin_site(
        Admin::open().user("ops", &hash).healthz_public(false),
        named_mirror("m"),
    );
    let running = start(&site).await;
    for path in ["/targets", "/metrics", "/healthz"] {
        let anonymous = call(&running, "GET", path, None, false).await;
        assert_eq!(anonymous.status, 401, "{path}");
        assert!(anonymous
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic realm="));
        assert_eq!(
            call(&running, "GET", path, Some(("ops", "wrong")), false)
                .await
                .status,
            401
        );
        assert_eq!(
            call(&running, "GET", path, Some(("eve", "s3cret")), false)
                .await
                .status,
            401
        );
        assert_eq!(
            call(&running, "GET", path, Some(("ops", "s3cret")), false)
                .await
                .status,
            200
        );
    }
    let refused = call(
        &running,
        "PUT",
        "/targets?url=http://127.0.0.1:9001",
        Some(("ops", "nope")),
        false,
    )
    .await;
    assert_eq!(refused.status, 401);
    let list = call(&running, "GET", "/targets", Some(("ops", "s3cret")), false).await;
    assert_eq!(list.text(), "", "a refused call changes nothing");
}

#[tokio::test]
async fn users_file_holds_htpasswd_bcrypt_lines() {
    let dir = common::TempDir::new("admin-users");
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(
        dir.join("admin.htpasswd"),
        format!("# operators\nalice:{hash}\n\n"),
    )
    .unwrap();
    let site = admin_site(
        Admin::open()
            .users_file("admin.htpasswd")
            .healthz_public(false),
        ok(),
    );
    let running = common::start_in(&site, dir.path()).await;
    assert_eq!(
        call(&running, "GET", "/healthz", Some(("alice", "pw")), false)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&running, "GET", "/healthz", None, false).await.status,
        401
    );
}

#[tokio::test]
async fn without_users_a_loopback_endpoint_is_open() {
    let running = start(&admin_site(Admin::open(), ok())).await;
    let health = call(&running, "GET", "/healthz", None, false).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
}

#[test]
fn validate_refuses_an_open_endpoint_on_other_interfaces() {
    let site = "global { admin \"0.0.0.0:2019\" }\nsite \"127.0.0.1:0\" { route \"/*\" { respond 200 } }\n";
    let err = teebox::config::parse(
        "open.kdl",
        site,
        std::env::temp_dir(),
        teebox::handlers::REGISTRY,
    )
    .unwrap_err();
    let text = err.render(teebox::config::Style::Plain);
    assert!(
        text.contains("the admin endpoint on 0.0.0.0:2019 has no users"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let shadow = Backend::ok().await;
    let site = admin_site(
        Admin::open(),
        Chain::new()
            .mirror(Mirror::to(&shadow).name("staging"))
            .respond(200),
    );
    let running = start(&site).await;
    let client = Client::http1();
    for i in 0..3 {
        client.get(&format!("{}/m/{i}", base_url(&running))).await;
    }
    shadow.wait_for(3).await;
    metrics::target_until(&running, &shadow.url(), "three copies counted", |c| {
        c.succeeded == 3
    })
    .await;
    let resp = call(&running, "GET", "/metrics", None, false).await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let sample = |name: &str, outcome: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("target") == Some(shadow.url().as_str())
                    && outcome.is_none_or(|o| s.labels.get("outcome") == Some(o))
            })
            .unwrap_or_else(|| panic!("no {name} {outcome:?} in:\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value;
    assert_eq!(
        sample("teebox_mirror_copies_total", Some("succeeded")),
        Value::Counter(3.0)
    );
    assert_eq!(
        sample("teebox_mirror_copies_total", Some("dropped")),
        Value::Counter(0.0)
    );
    assert_eq!(sample("teebox_mirror_backlog", None), Value::Gauge(0.0));
    match sample("teebox_mirror_copy_duration_seconds", None) {
        Value::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 3.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn runtime_changes_survive_a_restart_through_the_state_file() {
    let dir = common::TempDir::new("admin-state");
    let site = admin_site(
        Admin::open().state_file("targets.json"),
        Chain::new()
            .mirror(Mirror::to("http://127.0.0.1:9001").name("staging"))
            .respond(200),
    );
    let first = common::start_in(&site, dir.path()).await;
    assert_eq!(put(&first, "url=http://127.0.0.1:9002").await.status, 200);
    let removed = call(
        &first,
        "DELETE",
        "/targets?url=http://127.0.0.1:9001",
        None,
        false,
    )
    .await;
    assert_eq!(removed.status, 200);
    common::within("shutdown", first.shutdown(Duration::from_secs(1))).await;

    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("targets.json")).unwrap()).unwrap();
    assert_eq!(
        saved["mirrors"]["staging"]["added"][0],
        "http://127.0.0.1:9002"
    );
    assert_eq!(
        saved["mirrors"]["staging"]["removed"][0],
        "http://127.0.0.1:9001"
    );

    let second = common::start_in(&site, dir.path()).await;
    let list = call(&second, "GET", "/targets", None, false).await;
    assert_eq!(list.text(), "http://127.0.0.1:9002\n");
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start() {
    let dir = common::TempDir::new("admin-corrupt");
    std::fs::write(
        dir.join("targets.json"),
        "{\"version\": 1, \"mirrors\": {\"staging\": {\"added\": [42]}}}",
    )
    .unwrap();
    let site = admin_site(
        Admin::open().state_file("targets.json"),
        named_mirror("staging"),
    );
    // Refused where the file is read, so `teebox validate` refuses it too
    // and `run` stops before it binds anything.
    let err = match teebox::config::parse(
        "test.kdl",
        &site,
        dir.path().to_path_buf(),
        teebox::handlers::REGISTRY,
    ) {
        Ok(_) => panic!("accepted a corrupt state file"),
        Err(err) => err.render(teebox::config::Style::Plain),
    };
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("targets.json"), "{err}");
}

/// A site file whose every answer carries its version twice: in a header
/// added by one handler and in the body from another, so a response from a
/// half-applied config would show two versions.
/// A site at `version`: its mirror named `staging`, every answer and
/// header saying which version it is, and a second route.
fn versioned(version: &str) -> Site {
    let chain = Chain::new()
        .mirror(Mirror::named("staging"))
        .handler(&format!(
            "header {{ \"X-Version\" {} }}",
            kdl_string(version)
        ))
        .respond_with(200, version);
    Site::new()
        .admin(Admin::open())
        .route("/*", chain)
        .route("/unused", Chain::new().respond(404))
}

fn versioned_site(version: &str) -> String {
    versioned(version).to_kdl()
}

/// teebox started from `versioned_site("1")` in a file of its own (so that
/// it can be reloaded), with a runtime target, the returned backend, on
/// its mirror.
async fn reloadable(name: &str) -> (common::TempDir, std::path::PathBuf, Running, Backend) {
    let dir = common::TempDir::new(name);
    let file = dir.join("site.kdl");
    std::fs::write(&file, versioned_site("1")).unwrap();
    let loaded = teebox::config::load(&file, teebox::handlers::REGISTRY).unwrap();
    let running = teebox::server::start(&loaded.config).await.unwrap();
    let shadow = Backend::ok().await;
    assert_eq!(
        put(&running, &format!("url={}", shadow.url())).await.status,
        200
    );
    (dir, file, running, shadow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_config_under_load_without_failing_a_request() {
    let (_dir, file, running, shadow) = reloadable("admin-reload").await;

    let base = base_url(&running);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (base, stop) = (base.clone(), stop.clone());
        load.spawn(async move {
            let client = Client::http1();
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = client.get(&format!("{base}/w{worker}/{i}")).await;
                assert_eq!(resp.status, 200, "request {i} of worker {worker}");
                let header = resp.header("x-version").unwrap_or("none").to_string();
                assert_eq!(header, resp.text(), "one config per response");
                seen.push(header);
                i += 1;
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // An invalid file is refused with its diagnostics; version 1 stays.
    std::fs::write(
        &file,
        "site \"127.0.0.1:0\" { route \"/*\" { respond 200 true } }",
    )
    .unwrap();
    let refused = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.text().contains("bare `true` is not a KDL v2 value"),
        "{}",
        refused.text()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&file, versioned_site("2")).unwrap();
    let reloaded = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = Vec::new();
    while let Some(seen) = load.join_next().await {
        versions.extend(seen.unwrap());
    }
    let first_two = versions.iter().position(|v| v == "2");
    assert!(first_two.is_some(), "the new config answered");
    assert!(
        versions.iter().all(|v| v == "1" || v == "2"),
        "{versions:?}"
    );

    // The runtime target moved to the new config's mirror of that name.
    let list = call(&running, "GET", "/targets", None, false).await;
    assert_eq!(list.text(), format!("{}\n", shadow.url()));
    Client::http1().get(&format!("{base}/after-reload")).await;
    common::eventually("the copy of a request made after the reload", || {
        shadow
            .requests()
            .iter()
            .any(|c| c.path_and_query() == "/after-reload")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_mirror_counters() {
    let (_dir, file, running, shadow) = reloadable("admin-reload-counters").await;
    let base = base_url(&running);
    for i in 0..3 {
        Client::http1().get(&format!("{base}/before/{i}")).await;
    }
    let shadow = shadow.url();
    metrics::target_until(&running, &shadow, "three copies", |c| c.succeeded == 3).await;

    std::fs::write(&file, versioned_site("2")).unwrap();
    let reloaded = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    Client::http1().get(&format!("{base}/after")).await;
    metrics::target_until(&running, &shadow, "four copies, counted on", |c| {
        c.succeeded == 4
    })
    .await;
    let metrics = call(&running, "GET", "/metrics", None, false).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("teebox_mirror_copies_total")
                && l.contains("outcome=\"succeeded\"")
                && l.ends_with(" 4")),
        "{metrics}"
    );
}

#[tokio::test]
async fn reload_without_a_file_is_refused() {
    let running = start(&admin_site(Admin::open(), ok())).await;
    let resp = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(resp.status, 422);
    assert!(
        resp.text().contains("not started from a site file"),
        "{}",
        resp.text()
    );
}

#[tokio::test]
async fn metrics_count_requests_by_status_class_and_time_upstreams() {
    let backend = Backend::ok().await;
    let site = format!(
        "global {{ admin \"127.0.0.1:0\" }}\nsite \"127.0.0.1:0\" {{\n  route \"/api/*\" {{ reverse_proxy {:?} }}\n  route \"/*\" {{ respond 404 }}\n}}\n",
        backend.url()
    );
    let running = start(&site).await;
    let client = Client::http1();
    for i in 0..3 {
        assert_eq!(
            client
                .get(&format!("{}/api/{i}", base_url(&running)))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        client
            .get(&format!("{}/missing", base_url(&running)))
            .await
            .status,
        404
    );
    let text = call(&running, "GET", "/metrics", None, false).await.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text");
    let find = |name: &str, route: &str, class: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("route") == Some(route)
                    && class.is_none_or(|c| s.labels.get("class") == Some(c))
            })
            .unwrap_or_else(|| panic!("no {name} {route} {class:?} in:\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value;
    assert_eq!(
        find("teebox_requests_total", "/api/*", Some("2xx")),
        Value::Counter(3.0)
    );
    assert_eq!(
        find("teebox_requests_total", "/api/*", Some("5xx")),
        Value::Counter(0.0)
    );
    assert_eq!(
        find("teebox_requests_total", "/*", Some("4xx")),
        Value::Counter(1.0)
    );
    match find("teebox_upstream_response_seconds", "/api/*", None) {
        Value::Histogram(buckets) => assert_eq!(buckets.last().unwrap().count, 3.0),
        other => panic!("not a histogram: {other:?}"),
    }
}

#[test]
fn hash_password_prints_a_bcrypt_hash_of_stdin() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_teebox"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(
        bcrypt::verify("correct horse", hash.trim()).unwrap(),
        "{hash}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_reload_finishes_on_the_old_config() {
    let gate = common::Gate::new();
    let old_backend = Backend::start(common::Reply::ok("old").hold(&gate)).await;
    let new_backend = Backend::start(common::Reply::ok("new")).await;
    let dir = common::TempDir::new("admin-inflight");
    let file = dir.join("site.kdl");
    let site = |backend: &Backend| {
        admin_site(
            Admin::open(),
            Chain::new().proxy(Proxy::to(backend).opt(r#"timeout "30s""#)),
        )
    };
    std::fs::write(&file, site(&old_backend)).unwrap();
    let running = teebox::server::start(
        &teebox::config::load(&file, teebox::handlers::REGISTRY)
            .unwrap()
            .config,
    )
    .await
    .unwrap();
    let url = format!("{}/slow", base_url(&running));
    let in_flight = tokio::spawn(async move { Client::http1().get(&url).await });
    common::eventually("the old backend to hold the request", || {
        old_backend.in_flight() == 1
    })
    .await;

    std::fs::write(&file, site(&new_backend)).unwrap();
    assert_eq!(
        call(&running, "POST", "/reload", None, false).await.status,
        200
    );
    let fresh = Client::http1()
        .get(&format!("{}/fresh", base_url(&running)))
        .await;
    assert_eq!(fresh.text(), "new", "new requests get the new config");

    gate.open();
    let held = common::within("the in-flight request", in_flight)
        .await
        .unwrap();
    assert_eq!(held.status, 200);
    assert_eq!(
        held.text(),
        "old",
        "the in-flight request finished on the old config"
    );
}

#[tokio::test]
async fn compare_results_are_published() {
    let primary = Backend::ok().await;
    let shadow = Backend::with(|rec| match rec.path_and_query() {
        "/differs" => common::Reply::ok("other"),
        _ => common::Reply::ok("ok"),
    })
    .await;
    let site = admin_site(
        Admin::open(),
        Chain::new()
            .mirror(Mirror::to(&shadow).name("cmp").opt("compare"))
            .proxy(&primary),
    );
    let running = start(&site).await;
    let client = Client::http1();
    for path in ["/same", "/differs", "/same"] {
        client.get(&format!("{}{path}", base_url(&running))).await;
    }
    metrics::target_until(&running, &shadow.url(), "three comparisons", |c| {
        c.compare_match + c.compare_body == 3
    })
    .await;
    let text = call(&running, "GET", "/metrics", None, false).await.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text");
    let result = |r: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "teebox_mirror_compare_total" && s.labels.get("result") == Some(r)
            })
            .unwrap_or_else(|| panic!("no compare result {r} in:\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value;
    assert_eq!(result("match"), Value::Counter(2.0));
    assert_eq!(result("body_differs"), Value::Counter(1.0));
    assert_eq!(result("status_differs"), Value::Counter(0.0));
    let listed = call(&running, "GET", "/targets", None, true).await.text();
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(listed[0]["compare"]["match"], 2);
    assert_eq!(listed[0]["compare"]["body_differs"], 1);
}

#[tokio::test]
async fn runtime_targets_cannot_point_at_internal_or_odd_addresses() {
    // No allow_target: any http(s) URL passes the patterns, so only the
    // destination guard stands between a caller and these addresses.
    let site = admin_site(Admin::open(), named_mirror("m"));
    let running = start(&site).await;
    let cases: &[(&str, u16, &str)] = &[
        ("http://2130706433:80", 400, "numeric host"),
        ("http://0177.0.0.1:80", 400, "numeric host"),
        ("http://0x7f.1:80", 400, "numeric host"),
        ("http://127.1:80", 400, "numeric host"),
        ("http://user:pw@127.0.0.1:80", 400, "user information"),
        ("gopher://127.0.0.1:70", 400, "scheme"),
        ("http://169.254.169.254:80", 403, "metadata"),
        ("http://[fd00:ec2::254]:80", 403, "metadata"),
        ("http://169.254.10.1:80", 403, "link-local"),
        ("http://[fe80::1]:80", 403, "link-local"),
        ("http://0.0.0.0:80", 403, "unspecified"),
        ("http://[::]:80", 403, "unspecified"),
        ("http://224.0.0.1:80", 403, "multicast"),
        ("http://255.255.255.255:80", 403, "broadcast"),
    ];
    let mut failures = Vec::new();
    for (url, status, reason) in cases {
        let resp = put(&running, &format!("mirror=m&url={url}")).await;
        if resp.status != *status || !resp.text().contains(reason) {
            failures.push(format!("{url}: {} {:?}", resp.status, resp.text()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(metrics::targets(&running, Some("m")).await.is_empty());
    // A plain address still works.
    assert_eq!(
        put(&running, "mirror=m&url=http://127.0.0.1:9")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn runtime_target_ports_outside_1_to_65535_are_refused() {
    let site = admin_site(Admin::open(), named_mirror("m"));
    let running = start(&site).await;
    for (url, written) in [
        ("http://127.0.0.1:84631", "84631"),
        ("http://127.0.0.1:0", "0"),
        ("http://127.0.0.1:65536", "65536"),
    ] {
        let resp = put(&running, &format!("mirror=m&url={url}")).await;
        assert_eq!(resp.status, 400, "{url}: {}", resp.text());
        assert_eq!(
            resp.text(),
            format!(
                "invalid target URL `{url}`: port `{written}` is out of range: valid ports are 1-65535\n"
            )
        );
    }
    assert!(metrics::targets(&running, Some("m")).await.is_empty());
    let resp = put(&running, "mirror=m&url=http://127.0.0.1:65535").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn runtime_targets_carrying_a_refused_ipv4_address_are_refused() {
    let site = admin_site(Admin::open(), named_mirror("m"));
    let running = start(&site).await;
    let cases = [
        (
            "[::169.254.169.254]",
            "169.254.169.254 inside an IPv4-compatible address",
        ),
        (
            "[64:ff9b::a9fe:a9fe]",
            "169.254.169.254 inside a NAT64 address",
        ),
        (
            "[2002:a9fe:a9fe::1]",
            "169.254.169.254 inside a 6to4 address",
        ),
        (
            "[2001:0:4136:e378:8000:63bf:5601:5601]",
            "169.254.169.254 inside a Teredo address",
        ),
        (
            "[::ffff:0:a9fe:a9fe]",
            "169.254.169.254 inside an IPv4-translated address",
        ),
        (
            "[2001:db8::5efe:a9fe:a9fe]",
            "169.254.169.254 inside an ISATAP address",
        ),
        (
            "[2001:db8::200:5efe:a9fe:a9fe]",
            "169.254.169.254 inside an ISATAP address",
        ),
        ("100.100.100.200", "a cloud metadata address;"),
        ("[fd00:ec2::254]", "a cloud metadata address;"),
    ];
    let mut failures = Vec::new();
    for (host, reason) in cases {
        let url = format!("http://{host}:80");
        let query = url.replace('[', "%5B").replace(']', "%5D");
        let resp = put(&running, &format!("mirror=m&url={query}")).await;
        let text = resp.text();
        if resp.status != 403
            || !text.starts_with(&format!("{url} goes to "))
            || !text.contains(reason)
        {
            failures.push(format!("{url}: {} {text:?}", resp.status));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(metrics::targets(&running, Some("m")).await.is_empty());
    // An IPv4 address that is allowed is allowed inside IPv6 too.
    let resp = put(&running, "mirror=m&url=http://%5B2002:a0a:a0a::1%5D:80").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn an_allow_target_naming_the_address_lets_it_through() {
    let site = admin_site(
        Admin::open().allow_target(&["http://169.254.169.254:*", "http://127.0.0.1:*"]),
        named_mirror("m"),
    );
    let running = start(&site).await;
    assert_eq!(
        put(&running, "mirror=m&url=http://169.254.169.254:80")
            .await
            .status,
        200
    );
    assert_eq!(
        put(&running, "mirror=m&url=http://169.254.169.253:80")
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn a_mirror_takes_at_most_1000_targets() {
    let site = admin_site(Admin::open(), named_mirror("m"));
    let running = start(&site).await;
    let query: String = (0..1001)
        .map(|i| format!("&url=http://127.0.0.1:{}", 10_000 + i))
        .collect();
    let resp = put(&running, &format!("mirror=m{query}")).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert!(resp.text().contains("at most 1000"));
    assert!(metrics::targets(&running, Some("m")).await.is_empty());
}

#[tokio::test]
async fn foreign_hosts_origins_and_bodies_are_refused() {
    let site = admin_site(Admin::open(), named_mirror("m"));
    let running = start(&site).await;
    let client = Client::http1();
    let send = |method: &str, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut builder = client::req(
            method,
            &admin_url(&running, "/targets?mirror=m&url=http://127.0.0.1:9"),
        );
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        client.send(builder.body(client::full(body)).unwrap())
    };
    // DNS rebinding: the page's own name in Host.
    let resp = send("GET", &[("host", "attacker.example:2019")], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status, 403);
    // A state change from another origin's page.
    let resp = send("PUT", &[("origin", "http://attacker.example")], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status, 403);
    assert!(metrics::targets(&running, Some("m")).await.is_empty());
    // A body the endpoint never needs.
    let resp = send("PUT", &[], vec![b'x'; 100 * 1024]).await.unwrap();
    assert_eq!(resp.status, 413);
    assert!(metrics::targets(&running, Some("m")).await.is_empty());
    // The same call, properly made, works.
    let resp = send("PUT", &[], Vec::new()).await.unwrap();
    assert_eq!(resp.status, 200);
}

/// A request as raw HTTP/1.1 bytes to the admin endpoint, its first
/// `Host: HOST` naming the endpoint.
async fn raw_admin(running: &Running, request: &[u8]) -> common::raw::RawOutcome {
    let addr = running.admin_addr().expect("admin endpoint");
    let at = request
        .windows(10)
        .position(|w| w == b"Host: HOST")
        .expect("a Host: HOST line");
    let mut bytes = request[..at].to_vec();
    bytes.extend_from_slice(format!("Host: {addr}").as_bytes());
    bytes.extend_from_slice(&request[at + 10..]);
    common::raw::exchange(addr, &bytes).await
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_before_anything_runs() {
    let (_dir, file, running, _shadow) = reloadable("admin-chunked-body").await;
    // Were the reload to run, the next answer would say 2.
    std::fs::write(&file, versioned_site("2")).unwrap();
    let chunk = vec![b'x'; 8 * 1024];
    let mut request =
        b"POST /reload HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..16 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let outcome = raw_admin(&running, &request).await;
    let response = outcome.response();
    assert_eq!(response.status, 413, "{}", outcome.text());
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "admin calls take no body over 64 KiB\n"
    );
    let answer = Client::http1().get(&base_url(&running)).await;
    assert_eq!(answer.text(), "1", "the reload did not run");
}

#[tokio::test]
async fn a_body_within_the_limit_is_read_and_the_call_runs() {
    let running = start(&admin_site(Admin::open(), named_mirror("m"))).await;
    let request = format!(
        "PUT /targets?url=http://127.0.0.1:9 HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n400\r\n{}\r\n0\r\n\r\n",
        "y".repeat(1024)
    );
    let outcome = raw_admin(&running, request.as_bytes()).await;
    let response = outcome.response();
    assert_eq!(response.status, 200, "{}", outcome.text());
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "added http://127.0.0.1:9\n"
    );
}

#[tokio::test]
async fn a_uri_over_60_kib_gets_414() {
    let running = start(&admin_site(Admin::open(), named_mirror("m"))).await;
    let request = |len: usize| {
        format!(
            "GET /targets?x={} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            "a".repeat(len)
        )
    };
    let outcome = raw_admin(&running, request(61 * 1024).as_bytes()).await;
    let response = outcome.response();
    assert_eq!(response.status, 414, "{:?}", outcome.error);
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "the admin endpoint takes URIs of at most 60 KiB\n"
    );
    // Far over it, hyper answers before the endpoint sees the request; the
    // client still gets the status line, not a closed connection.
    let outcome = raw_admin(&running, request(300 * 1000).as_bytes()).await;
    assert!(
        outcome.text().starts_with("HTTP/1.1 414 URI Too Long\r\n"),
        "{:?} {:?}",
        outcome.text(),
        outcome.error
    );
    // Just under the limit is an ordinary call.
    let outcome = raw_admin(&running, request(60 * 1024 - 20).as_bytes()).await;
    assert_eq!(outcome.response().status, 400, "{}", outcome.text());
    assert!(
        String::from_utf8_lossy(&outcome.response().body).contains("unknown parameter `x`"),
        "{}",
        outcome.text()
    );
}

/// Cost 4 keeps the tests quick; real hashes use 12.
fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

/// One sample of `teebox_admin_logins_total` (or, for "waiting", the
/// `teebox_admin_logins_waiting` gauge) from a `/metrics` answer.
fn logins(metrics: &str, result: &str) -> u64 {
    let prefix = match result {
        "waiting" => "teebox_admin_logins_waiting ".to_string(),
        _ => format!("teebox_admin_logins_total{{result=\"{result}\"}} "),
    };
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// `/metrics` as `ops` (password `s3cret`), scraped until `done` holds;
/// panics after [`common::TIMEOUT`].
async fn scrape_until(running: &Running, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let resp = call(running, "GET", "/metrics", Some(("ops", "s3cret")), false).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let text = resp.text();
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn healthz_answers_probes_without_credentials_unless_told_not_to() {
    let users = Admin::open().user("ops", &hash("s3cret"));
    let open = start(&admin_site(users.clone(), ok())).await;
    let health = call(&open, "GET", "/healthz", None, false).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    let head = call(&open, "HEAD", "/healthz", None, false).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        call(&open, "GET", "/metrics", None, false).await.status,
        401
    );
    assert_eq!(
        call(&open, "POST", "/healthz", None, false).await.status,
        401
    );

    let closed = start(&admin_site(users.clone().healthz_public(false), ok())).await;
    let health = call(&closed, "GET", "/healthz", None, false).await;
    assert_eq!(health.status, 401);
    assert_eq!(health.text(), "credentials required\n");
    let health = call(&closed, "GET", "/healthz", Some(("ops", "s3cret")), false).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn repeated_calls_with_the_same_credentials_are_checked_once() {
    let users = Admin::open().user("ops", &hash("s3cret"));
    let running = start(&admin_site(users.clone(), ok())).await;
    for _ in 0..3 {
        let resp = call(&running, "GET", "/metrics", Some(("ops", "s3cret")), false).await;
        assert_eq!(resp.status, 200);
    }
    let wrong = call(&running, "GET", "/metrics", Some(("ops", "s3cre")), false).await;
    assert_eq!(wrong.status, 401, "a remembered user is no open door");
    let metrics = call(&running, "GET", "/metrics", Some(("ops", "s3cret")), false)
        .await
        .text();
    assert_eq!(logins(&metrics, "verified"), 1, "{metrics}");
    assert_eq!(logins(&metrics, "cached"), 3, "{metrics}");
    assert_eq!(logins(&metrics, "refused"), 1, "{metrics}");
    assert_eq!(logins(&metrics, "throttled"), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_logins_wait_their_turn_and_a_full_queue_gets_429() {
    let users = Admin::open().user("ops", &hash("s3cret"));
    let running = std::sync::Arc::new(start(&admin_site(users.clone(), ok())).await);
    scrape_until(&running, "the scraper's login", |_| true).await;
    // Eight failures one after another: from now on every try of this
    // address waits 4 s and more.
    for i in 0..8 {
        let password = format!("first-{i}");
        let resp = call(&running, "GET", "/targets", Some(("ops", &password)), false).await;
        assert_eq!(resp.status, 401);
    }
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..8 {
        let running = running.clone();
        guesses.spawn(async move {
            let password = format!("guess-{i}");
            call(&running, "GET", "/targets", Some(("ops", &password)), false).await
        });
    }
    // Eight guesses sent at once all wait, none checked yet.
    let metrics = scrape_until(&running, "eight logins waiting", |m| {
        logins(m, "waiting") == 8
    })
    .await;
    assert_eq!(logins(&metrics, "refused"), 8, "{metrics}");
    // The ninth is refused at once, with no check.
    let ninth = call(&running, "GET", "/targets", Some(("ops", "ninth")), false).await;
    assert_eq!(ninth.status, 429);
    assert_eq!(
        ninth.text(),
        "too many logins waiting from this address (at most 8); try again later\n"
    );
    let retry: u64 = ninth.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    // Clients that give up leave the queue, and their guesses were never
    // checked.
    guesses.abort_all();
    let metrics = scrape_until(&running, "the queue to empty", |m| {
        logins(m, "waiting") == 0
    })
    .await;
    assert_eq!(logins(&metrics, "refused"), 8, "{metrics}");
    assert_eq!(logins(&metrics, "throttled"), 1, "{metrics}");
    assert_eq!(logins(&metrics, "verified"), 1, "{metrics}");
}

/// teebox started from `text`, written to `site.kdl` in a directory of its
/// own, so that the test can change the file and reload it.
async fn start_file(name: &str, text: &str) -> (common::TempDir, std::path::PathBuf, Running) {
    let dir = common::TempDir::new(name);
    let file = dir.join("site.kdl");
    std::fs::write(&file, text).unwrap();
    let loaded = teebox::config::load(&file, teebox::handlers::REGISTRY).unwrap();
    let running = teebox::server::start(&loaded.config).await.unwrap();
    (dir, file, running)
}

#[tokio::test]
async fn a_reload_applies_the_admin_users_and_clears_remembered_logins() {
    let (ops, dev) = (hash("s3cret"), hash("devpw"));
    let with_dev = admin_site(
        Admin::open()
            .user("ops", &ops)
            .user("dev", &dev)
            .healthz_public(false),
        ok(),
    );
    let (_dir, file, running) = start_file("admin-reload-users", &with_dev).await;
    // dev's login is remembered from here on.
    for _ in 0..2 {
        let resp = call(&running, "GET", "/healthz", Some(("dev", "devpw")), false).await;
        assert_eq!(resp.status, 200);
    }
    std::fs::write(&file, admin_site(Admin::open().user("ops", &ops), ok())).unwrap();
    let reloaded = call(&running, "POST", "/reload", Some(("ops", "s3cret")), false).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(reloaded.text(), "reloaded\n");
    let dev = call(&running, "GET", "/targets", Some(("dev", "devpw")), false).await;
    assert_eq!(dev.status, 401, "a removed user is out, remembered or not");
    let ops = call(&running, "GET", "/metrics", Some(("ops", "s3cret")), false).await;
    assert_eq!(ops.status, 200);
    // dev, ops for the reload, and ops again: what the old users' logins
    // remembered is gone.
    assert_eq!(logins(&ops.text(), "verified"), 3, "{}", ops.text());
    assert_eq!(logins(&ops.text(), "refused"), 1, "{}", ops.text());
    // The new file leaves healthz_public at its default.
    let probe = call(&running, "GET", "/healthz", None, false).await;
    assert_eq!(probe.status, 200);
}

#[tokio::test]
async fn a_reload_applies_allow_target() {
    let site =
        |pattern: &str| admin_site(Admin::open().allow_target(&[pattern]), named_mirror("m"));
    let (_dir, file, running) =
        start_file("admin-reload-allow", &site("http://127.0.0.1:1*")).await;
    let refused = put(&running, "url=http://127.0.0.1:2000").await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    std::fs::write(&file, site("http://127.0.0.1:2*")).unwrap();
    let reloaded = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(reloaded.text(), "reloaded\n");
    let accepted = put(&running, "url=http://127.0.0.1:2000").await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.text(), "added http://127.0.0.1:2000\n");
    let now_refused = put(&running, "url=http://127.0.0.1:1000").await;
    assert_eq!(now_refused.status, 403, "{}", now_refused.text());
}

#[tokio::test]
async fn a_reload_names_the_admin_settings_it_cannot_apply() {
    let (_dir, file, running) = start_file(
        "admin-reload-fixed",
        &admin_site(Admin::open().state_file("a.json"), ok()),
    )
    .await;
    let moved = admin_site(Admin::at("127.0.0.1:1").state_file("b.json"), ok());
    std::fs::write(&file, moved).unwrap();
    let reloaded = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let dir = file.parent().unwrap();
    assert_eq!(
        reloaded.text(),
        format!(
            "reloaded\nnot applied: admin address: still 127.0.0.1:0 until a restart (the file now says 127.0.0.1:1)\nnot applied: admin state_file: still {} until a restart (the file now says {})\n",
            dir.join("a.json").display(),
            dir.join("b.json").display()
        )
    );
    // The endpoint goes on where it was.
    let health = call(&running, "GET", "/healthz", None, false).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn a_reload_whose_users_file_cannot_be_read_changes_nothing() {
    let (_dir, file, running) = start_file("admin-reload-unreadable", &versioned_site("1")).await;
    let broken = versioned("2")
        .admin(Admin::open().users_file("missing.htpasswd"))
        .to_kdl();
    assert_ne!(broken, versioned_site("2"));
    std::fs::write(&file, broken).unwrap();
    let refused = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.text().contains("cannot read users_file")
            && refused.text().contains("missing.htpasswd"),
        "{}",
        refused.text()
    );
    let answer = Client::http1().get(&base_url(&running)).await;
    assert_eq!(answer.text(), "1", "the site config stayed too");
    let still_open = call(&running, "GET", "/healthz", None, false).await;
    assert_eq!(still_open.status, 200);
}

/// A client that sends half a body to the admin endpoint does not hold its
/// connection: the body has a read timeout of its own (heads: below).
#[tokio::test]
async fn half_a_body_to_the_admin_endpoint_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let running = start(&admin_site(Admin::open(), ok())).await;
    let admin = running.admin_addr().unwrap();
    let mut body = tokio::net::TcpStream::connect(admin).await.unwrap();
    let host = format!("Host: {admin}\r\n");
    body.write_all(
        format!(
            "POST /targets?url=http://127.0.0.1:9 HTTP/1.1\r\n{host}Content-Length: 10\r\n\r\nabc"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    common::within_for(
        Duration::from_secs(30),
        "the 408",
        body.read_to_end(&mut got),
    )
    .await
    .unwrap();
    assert_eq!(
        common::raw::status_of(&got),
        Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// A client that never finishes a request head, or sends nothing at all,
/// does not keep its admin connection: each one held a descriptor and up
/// to 512 KiB of buffer for ever, so enough of them took every descriptor
/// from the proxy too.
#[tokio::test]
async fn an_admin_client_that_never_sends_a_whole_head_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let running = start(&admin_site(Admin::open(), ok())).await;
    let admin = running.admin_addr().expect("admin endpoint");
    let mut partial = tokio::net::TcpStream::connect(admin).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    for (what, stream) in [("a partial head", &mut partial), ("nothing", &mut silent)] {
        let mut rest = Vec::new();
        common::within_for(
            Duration::from_secs(30),
            &format!("the endpoint to close a connection that sent {what}"),
            stream.read_to_end(&mut rest),
        )
        .await
        .ok();
    }
}

/// The endpoint serves at most 64 connections at once; the next waits in
/// the backlog until one closes.
#[tokio::test]
async fn the_admin_endpoint_serves_at_most_64_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let running = start(&admin_site(Admin::open(), ok())).await;
    let admin = running.admin_addr().expect("admin endpoint");
    let probe = format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    let probe = probe.as_bytes();
    async fn answered(stream: &mut tokio::net::TcpStream) -> bool {
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap_or(0);
        buf[..n].starts_with(b"HTTP/1.1 200")
    }
    let mut open = Vec::new();
    for _ in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        stream.write_all(probe).await.unwrap();
        assert!(common::within("an answer", answered(&mut stream)).await);
        open.push(stream);
    }
    let mut next = tokio::net::TcpStream::connect(admin).await.unwrap();
    next.write_all(probe).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), next.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond 64 admin connections");
    drop(open.pop());
    assert!(common::within("the waiting answer", answered(&mut next)).await);
}

/// Runtime targets added under an `allow_target` that a reload narrows
/// are dropped, and the answer says so: copies kept going to them,
/// 169.254.169.254 included once the pattern naming it was gone.
#[tokio::test]
async fn a_reload_drops_runtime_targets_the_new_allow_target_refuses() {
    let site =
        |patterns: &[&str]| admin_site(Admin::open().allow_target(patterns), named_mirror("m"));
    let (_dir, file, running) = start_file(
        "admin-reload-drops",
        &site(&["http://127.0.0.1:*", "http://169.254.169.254:80"]),
    )
    .await;
    for url in [
        "http://127.0.0.1:1000",
        "http://127.0.0.1:2000",
        "http://169.254.169.254:80",
    ] {
        let added = put(&running, &format!("url={url}")).await;
        assert_eq!(added.status, 200, "{}", added.text());
    }
    std::fs::write(&file, site(&["http://127.0.0.1:2*"])).unwrap();
    let reloaded = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(
        reloaded.text(),
        "reloaded\n\
         dropped: target http://127.0.0.1:1000 of mirror m: it matches no allow_target pattern\n\
         dropped: target http://169.254.169.254:80 of mirror m: it matches no allow_target pattern\n"
    );
    let list = call(&running, "GET", "/targets", None, false).await;
    assert_eq!(list.text(), "http://127.0.0.1:2000\n");

    // A pattern with a wildcard lets the address match, but only a pattern
    // naming it lets copies go to an address the guard refuses.
    std::fs::write(&file, site(&["http://169.254.169.254:80", "http://*"])).unwrap();
    call(&running, "POST", "/reload", None, false).await;
    let added = put(&running, "url=http://169.254.169.254:80").await;
    assert_eq!(added.status, 200, "{}", added.text());
    std::fs::write(&file, site(&["http://*"])).unwrap();
    let reloaded = call(&running, "POST", "/reload", None, false).await;
    assert_eq!(
        reloaded.text(),
        "reloaded\n\
         dropped: target http://169.254.169.254:80 of mirror m: 169.254.169.254 is a cloud metadata address, and no allow_target pattern names it\n"
    );
}

/// A target saved in the state file that the `allow_target` of the next
/// start refuses is not restored.
#[tokio::test]
async fn a_restart_drops_saved_targets_the_new_allow_target_refuses() {
    let dir = common::TempDir::new("admin-state-narrowed");
    let site = |pattern: &str| {
        admin_site(
            Admin::open()
                .state_file("targets.json")
                .allow_target(&[pattern]),
            named_mirror("staging"),
        )
    };
    let first = common::start_in(&site("http://127.0.0.1:*"), dir.path()).await;
    for url in ["http://127.0.0.1:1000", "http://127.0.0.1:2000"] {
        assert_eq!(put(&first, &format!("url={url}")).await.status, 200);
    }
    common::within("shutdown", first.shutdown(Duration::from_secs(1))).await;
    let second = common::start_in(&site("http://127.0.0.1:2*"), dir.path()).await;
    let list = call(&second, "GET", "/targets", None, false).await;
    assert_eq!(list.text(), "http://127.0.0.1:2000\n");
}
