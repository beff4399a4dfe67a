//! Shadow tooling: edits a `mirror` makes to its copies only (path, query,
//! headers with placeholders, body), while the primary gets the request as
//! the client sent it.

mod common;

use common::{
    base_url, client, metrics, start, Admin, Backend, Chain, Client, Mirror, Proxy, Site,
};

/// A site whose only route runs `mirror` and proxies to `primary`, with an
/// admin endpoint for the mirror's counters.
fn site(mirror: Mirror, primary: &Backend) -> String {
    one_route(Chain::new().mirror(mirror).proxy(primary))
}

/// A site whose only route, `/*`, runs `chain`, with an admin endpoint.
fn one_route(chain: Chain) -> String {
    Site::new().admin(Admin::open()).route("/*", chain).to_kdl()
}

#[tokio::test]
async fn path_rewrites_apply_to_copies_only() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt(r#"rewrite strip_prefix="/v1" add_prefix="/v2""#)
        .opt(r##"rewrite regex=#"^/v2/users/(\d+)"# replace="/v2/people/$1""##);
    let running = start(&site(mirror, &primary)).await;
    let base = base_url(&running);
    let client = Client::http1();
    client
        .get(&format!("{base}/v1/users/42/orders?sort=asc"))
        .await;
    client.get(&format!("{base}/v1")).await;
    client.get(&format!("{base}/v1x/keep")).await;

    let primaries = primary.wait_for(3).await;
    // Copies are sent by several workers: their order is not fixed.
    let mut copies: Vec<String> = shadow
        .wait_for(3)
        .await
        .iter()
        .map(|c| c.path_and_query().to_string())
        .collect();
    copies.sort();
    assert_eq!(
        primaries[0].path_and_query(),
        "/v1/users/42/orders?sort=asc"
    );
    assert_eq!(primaries[2].path_and_query(), "/v1x/keep");
    // strip_prefix strips whole segments only: /v1x keeps its name.
    assert_eq!(
        copies,
        ["/v2", "/v2/people/42/orders?sort=asc", "/v2/v1x/keep"]
    );
}

#[tokio::test]
async fn query_edits_apply_to_copies_only() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt(r#"query_set "debug" "1""#)
        .opt(r#"query_remove "token" "session""#)
        .opt(r#"query_set "who" "shadow copy""#);
    let running = start(&site(mirror, &primary)).await;
    let path = "/search?q=a%20b&token=s3cret&debug=0&session=9&keep=%E2%9C%93";
    Client::http1()
        .get(&format!("{}{path}", base_url(&running)))
        .await;
    assert_eq!(primary.wait_for(1).await[0].path_and_query(), path);
    assert_eq!(
        shadow.wait_for(1).await[0].path_and_query(),
        "/search?q=a%20b&debug=1&keep=%E2%9C%93&who=shadow+copy"
    );
}

#[tokio::test]
async fn header_placeholders_fill_in_per_request() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt(r#"header_up "X-Request-Id" "{request.id}""#)
        .opt(r#"header_up "X-Client" "ip={client.ip}""#)
        .opt(r#"header_up "X-Original-Host" "{request.host}""#)
        .opt(r#"header_up "X-Sent-At" "{time.unix_ms}""#)
        .opt(r#"header_up "X-Json" "{\"literal\":true}""#);
    let running = start(&site(mirror, &primary)).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let client = Client::http1();
    for _ in 0..2 {
        let req = client::req("GET", &format!("{}/p", base_url(&running)))
            .header("host", "shop.example:8443")
            .body(client::full(""))
            .unwrap();
        client.send(req).await.expect("request");
    }
    let copies = shadow.wait_for(2).await;
    let c = &copies[0];
    let id = c.header("x-request-id").expect("request id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_ne!(
        copies[1].header("x-request-id"),
        Some(id),
        "one id per request"
    );
    assert_eq!(c.header("x-client"), Some("ip=127.0.0.1"));
    assert_eq!(c.header("x-original-host"), Some("shop.example:8443"));
    assert_eq!(c.header("x-json"), Some(r#"{"literal":true}"#));
    let sent: u64 = c.header("x-sent-at").unwrap().parse().unwrap();
    assert!(sent >= before, "{sent} is the request's time");
    let p = &primary.wait_for(2).await[0];
    assert_eq!(p.header("x-request-id"), None);
}

#[tokio::test]
async fn primary_and_copy_share_the_request_id() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let chain = Chain::new()
        .mirror(Mirror::to(&shadow).opt(r#"header_up "X-Request-Id" "{request.id}""#))
        .proxy(
            Proxy::to(&primary)
                .opt(r#"header_up "X-Request-Id" "{request.id}""#)
                .opt(r#"header_down "X-Request-Id" "{request.id}""#),
        );
    let running = start(&one_route(chain)).await;
    let resp = Client::http1()
        .get(&format!("{}/same", base_url(&running)))
        .await;
    let c = shadow.wait_for(1).await.remove(0);
    let p = primary.wait_for(1).await.remove(0);
    let id = c
        .header("x-request-id")
        .expect("copy has an id")
        .to_string();
    assert_eq!(p.header("x-request-id"), Some(id.as_str()));
    assert_eq!(resp.header("x-request-id"), Some(id.as_str()));
}

#[tokio::test]
async fn replace_body_rewrites_copies_and_fixes_their_length() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt(r##"replace_body regex=#""id":(\d+)"# replace=#""id":"staging-$1""#"##)
        .opt(r#"replace_body "prod-db" "staging-db""#);
    let running = start(&site(mirror, &primary)).await;
    let base = base_url(&running);
    let client = Client::http1();
    let original = r#"{"id":7,"db":"prod-db","items":[{"id":8}]}"#;
    let req = client::req("POST", &format!("{base}/orders"))
        .header("content-type", "application/json")
        .body(client::full(original))
        .unwrap();
    client.send(req).await.expect("request");
    // Chunked: the copy stays chunked, with the rewritten body.
    let req = client::req("POST", &format!("{base}/orders"))
        .body(client::chunks(vec![
            bytes::Bytes::from_static(br#"{"id":1"#),
            bytes::Bytes::from_static(br#"2,"db":"prod-db"}"#),
        ]))
        .unwrap();
    client.send(req).await.expect("chunked request");

    let primaries = primary.wait_for(2).await;
    let mut copies = shadow.wait_for(2).await;
    // Copies are sent by several workers: their order is not fixed.
    copies.sort_by_key(|c| c.header("content-length").is_none());
    assert_eq!(primaries[0].body.as_ref(), original.as_bytes());
    let expected = r#"{"id":"staging-7","db":"staging-db","items":[{"id":"staging-8"}]}"#;
    assert_eq!(copies[0].body.as_ref(), expected.as_bytes());
    assert_eq!(
        copies[0].header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(
        copies[1].body.as_ref(),
        br#"{"id":"staging-12","db":"staging-db"}"#
    );
    assert_eq!(copies[1].header("content-length"), None);
    assert_eq!(primaries[1].body.as_ref(), br#"{"id":12,"db":"prod-db"}"#);
}

#[tokio::test]
async fn replace_body_leaves_a_compressed_body_as_it_came() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let running = start(&site(
        Mirror::to(&shadow).opt(r#"replace_body "a" "b""#),
        &primary,
    ))
    .await;
    // Bytes that hold the pattern, as any gzip stream may.
    let gzipped: &[u8] = b"\x1f\x8b\x08\x00abc\x00\xffa";
    let req = client::req("POST", &format!("{}/gz", base_url(&running)))
        .header("content-encoding", "gzip")
        .body(client::full(bytes::Bytes::from_static(gzipped)))
        .unwrap();
    Client::http1().send(req).await.expect("request");
    let copy = shadow.wait_for(1).await.remove(0);
    assert_eq!(copy.body.as_ref(), gzipped);
    assert_eq!(copy.header("content-encoding"), Some("gzip"));
    assert_eq!(
        copy.header("content-length"),
        Some(gzipped.len().to_string().as_str())
    );
}

#[tokio::test]
async fn several_targets_get_the_same_rewritten_copy() {
    let primary = Backend::ok().await;
    let one = Backend::ok().await;
    let two = Backend::ok().await;
    let mirror = Mirror::to_all(&[&one, &two])
        .opt(r#"replace_body "a" "b""#)
        .opt(r#"rewrite add_prefix="/shadow""#);
    let running = start(&site(mirror, &primary)).await;
    let req = client::req("PUT", &format!("{}/x", base_url(&running)))
        .body(client::full("banana"))
        .unwrap();
    Client::http1().send(req).await.expect("request");
    for target in [&one, &two] {
        let c = target.wait_for(1).await.remove(0);
        assert_eq!(c.path_and_query(), "/shadow/x");
        assert_eq!(c.body.as_ref(), b"bbnbnb");
    }
    assert_eq!(primary.wait_for(1).await[0].body.as_ref(), b"banana");
}

// ---- record ---------------------------------------------------------------------------------

/// The JSON lines of a record file, once it has `n` of them.
async fn record_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect::<Vec<_>>()
    };
    common::eventually(&format!("{n} record lines"), || read().len() >= n).await;
    read()
}

/// A recorded body, decoded as its `body_encoding` says.
fn recorded_body(part: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    let text = part["body"].as_str().expect("body");
    match part["body_encoding"].as_str() {
        Some("utf-8") => text.as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64"),
        other => panic!("unknown body_encoding {other:?}"),
    }
}

fn recorded_header<'a>(part: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    part["headers"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
}

#[tokio::test]
async fn record_round_trips_requests_and_responses_byte_exact() {
    let dir = common::TempDir::new("record");
    let primary = Backend::with(|rec| {
        common::Reply::ok(format!("answer to {}", rec.path_and_query())).header("x-answer", "yes")
    })
    .await;
    let kdl = one_route(
        Chain::new()
            .handler(r#"record "traffic.jsonl" { responses #true; }"#)
            .proxy(&primary),
    );
    let running = common::start_in(&kdl, dir.path()).await;
    let base = base_url(&running);
    let client = Client::http1();
    let binary = common::random_bytes(4096, 7);
    let json = br#"{"id":7,"name":"caf\u00e9"}"#.to_vec();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("GET", "/items?id=7&q=a%20b", Vec::new()),
        ("POST", "/json", json.clone()),
        ("PUT", "/blob", binary.clone()),
    ];
    for (method, path, body) in &cases {
        let req = client::req(method, &format!("{base}{path}"))
            .header("x-custom", "v")
            .body(client::full(body.clone()))
            .unwrap();
        let resp = client.send(req).await.expect("request");
        assert_eq!(resp.status, 200);
    }
    let mut lines = record_lines(&dir.join("traffic.jsonl"), 3).await;
    // Lines are written as requests finish: order them as sent.
    lines.sort_by_key(|l| cases.iter().position(|c| l["uri"] == c.1));
    for ((method, path, body), line) in cases.iter().zip(&lines) {
        assert_eq!(line["method"], *method);
        assert_eq!(line["uri"], *path);
        assert_eq!(line["version"], "HTTP/1.1");
        assert_eq!(recorded_header(line, "x-custom"), Some("v"));
        assert_eq!(recorded_body(line).as_slice(), body.as_slice(), "{path}");
        assert_eq!(line["body_truncated"], false);
        assert_eq!(line["id"].as_str().map(str::len), Some(36));
        assert!(line["ts_ms"].as_u64().is_some());
        let response = &line["response"];
        assert_eq!(response["status"], 200);
        assert_eq!(recorded_header(response, "x-answer"), Some("yes"));
        assert_eq!(
            recorded_body(response),
            format!("answer to {path}").into_bytes()
        );
    }
    assert_eq!(lines[2]["body_encoding"], "base64");
    assert_eq!(lines[1]["body_encoding"], "utf-8");
    // What the primary got is untouched.
    let got = primary.wait_for(3).await;
    assert_eq!(got[2].body.as_ref(), binary.as_slice());
}

#[tokio::test]
async fn record_cuts_bodies_at_max_body_and_says_so() {
    let dir = common::TempDir::new("record-cut");
    let primary = Backend::ok().await;
    let kdl = one_route(
        Chain::new()
            .handler(r#"record "t.jsonl" { max_body 10; }"#)
            .proxy(&primary),
    );
    let running = common::start_in(&kdl, dir.path()).await;
    let req = client::req("POST", &format!("{}/up", base_url(&running)))
        .body(client::chunks(vec![
            bytes::Bytes::from_static(b"0123456"),
            bytes::Bytes::from_static(b"789abcdef"),
        ]))
        .unwrap();
    Client::http1().send(req).await.expect("request");
    let line = record_lines(&dir.join("t.jsonl"), 1).await.remove(0);
    assert_eq!(recorded_body(&line), b"0123456789");
    assert_eq!(line["body_bytes"], 16);
    assert_eq!(line["body_truncated"], true);
    assert!(line.get("response").is_none(), "responses default to off");
    assert_eq!(
        primary.wait_for(1).await[0].body.as_ref(),
        b"0123456789abcdef"
    );
}

#[tokio::test]
async fn record_rolls_over_at_roll_size_keeping_roll_keep_files() {
    let dir = common::TempDir::new("record-roll");
    let kdl = one_route(
        Chain::new()
            .handler(r#"record "r.jsonl" { roll_size 600; roll_keep 2; }"#)
            .respond_with(200, "ok"),
    );
    let running = common::start_in(&kdl, dir.path()).await;
    let base = base_url(&running);
    let client = Client::http1();
    for i in 0..30 {
        client.get(&format!("{base}/n/{i}")).await;
    }
    let all_lines = || {
        ["r.jsonl.2", "r.jsonl.1", "r.jsonl"]
            .iter()
            .flat_map(|name| {
                std::fs::read_to_string(dir.join(name))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("whole JSON line"))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    common::eventually("the last request recorded", || {
        all_lines()
            .last()
            .map(|l| l["uri"] == "/n/29")
            .unwrap_or(false)
    })
    .await;
    assert!(!dir.join("r.jsonl.3").exists(), "only roll_keep old files");
    for name in ["r.jsonl", "r.jsonl.1", "r.jsonl.2"] {
        let size = std::fs::metadata(dir.join(name)).unwrap().len();
        assert!(size <= 600, "{name} is {size} bytes");
    }
    // The newest requests are kept, in order, with none missing between.
    let uris: Vec<String> = all_lines()
        .iter()
        .map(|l| l["uri"].as_str().unwrap().to_string())
        .collect();
    let first: usize = uris[0].trim_start_matches("/n/").parse().unwrap();
    let expected: Vec<String> = (first..30).map(|i| format!("/n/{i}")).collect();
    assert_eq!(uris, expected);
    assert!(first > 0, "older lines rolled away");
}

// ---- replay ---------------------------------------------------------------------------------

/// Records `cases` through teebox (with responses) into `dir/traffic.jsonl`
/// and returns the path once every line is written.
async fn record_traffic(
    dir: &common::TempDir,
    answer: impl Fn(&common::Recorded) -> common::Reply + Send + Sync + 'static,
    cases: &[(&str, &str, Vec<u8>)],
) -> std::path::PathBuf {
    let recorded_primary = Backend::with(answer).await;
    let kdl = one_route(
        Chain::new()
            .handler(r#"record "traffic.jsonl" { responses #true; }"#)
            .proxy(&recorded_primary),
    );
    let running = common::start_in(&kdl, dir.path()).await;
    let base = base_url(&running);
    let client = Client::http1();
    for (method, path, body) in cases {
        let req = client::req(method, &format!("{base}{path}"))
            .header("host", "shop.example")
            .header("x-trace", *path)
            .body(client::full(body.clone()))
            .unwrap();
        client.send(req).await.expect("request");
    }
    let path = dir.join("traffic.jsonl");
    record_lines(&path, cases.len()).await;
    path
}

fn replay_options(file: std::path::PathBuf, target: &Backend) -> teebox::replay::ReplayOptions {
    teebox::replay::ReplayOptions {
        files: vec![file],
        target: teebox::config::value::UpstreamUrl::parse(&target.url()).unwrap(),
        pace: teebox::replay::Pace::AsFastAsPossible,
        concurrency: 1,
        timeout: std::time::Duration::from_secs(5),
        compare: None,
    }
}

#[tokio::test]
async fn replay_reproduces_recorded_requests_and_counts_statuses() {
    let dir = common::TempDir::new("replay");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("GET", "/a?x=1", Vec::new()),
        ("POST", "/b", common::random_bytes(3000, 3)),
        ("PUT", "/c", b"{\"k\":\"v\"}".to_vec()),
        ("DELETE", "/missing", Vec::new()),
    ];
    let file = record_traffic(&dir, |_| common::Reply::ok("recorded"), &cases).await;
    let target = Backend::with(|rec| match rec.path_and_query() {
        "/missing" => common::Reply::ok("no").status(404),
        _ => common::Reply::ok("fine"),
    })
    .await;
    let summary = teebox::replay::replay(&replay_options(file, &target), || {})
        .await
        .expect("replay");
    let got = target.wait_for(cases.len()).await;
    for (method, path, body) in &cases {
        let rec = got
            .iter()
            .find(|r| r.path_and_query() == *path)
            .unwrap_or_else(|| panic!("{path} not replayed"));
        assert_eq!(rec.method.as_str(), *method);
        assert_eq!(rec.path_and_query(), *path);
        assert_eq!(rec.body.as_ref(), body.as_slice(), "{path}");
        assert_eq!(
            rec.header("host"),
            Some("shop.example"),
            "the recorded Host"
        );
        assert_eq!(rec.header("x-trace"), Some(*path));
    }
    assert_eq!(summary.sent, 4);
    assert_eq!(summary.statuses.get(&200), Some(&3));
    assert_eq!(summary.statuses.get(&404), Some(&1));
    assert_eq!(summary.errors_total(), 0);
    assert!(summary.percentile(99.0).is_some());
    assert!(summary.compare.is_none());

    // Paced by the recording's own clock, a hundred times faster, and by rate.
    for pace in [
        teebox::replay::Pace::Speed(100.0),
        teebox::replay::Pace::Rate(500.0),
    ] {
        let mut options = replay_options(dir.join("traffic.jsonl"), &target);
        options.pace = pace;
        options.concurrency = 4;
        let summary = teebox::replay::replay(&options, || {})
            .await
            .expect("replay");
        assert_eq!(summary.sent, 4, "{pace:?}");
        assert_eq!(summary.errors_total(), 0, "{pace:?}");
    }
}

#[tokio::test]
async fn replay_compare_finds_each_kind_of_difference() {
    let dir = common::TempDir::new("replay-compare");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("GET", "/same", Vec::new()),
        ("GET", "/status", Vec::new()),
        ("GET", "/header", Vec::new()),
        ("GET", "/body", Vec::new()),
        ("GET", "/json-ts", Vec::new()),
    ];
    let json = |ts: u64| format!("{{\"id\":1,\"ts\":{ts}}}");
    let file = record_traffic(
        &dir,
        move |_| {
            common::Reply::ok(json(1))
                .header("content-type", "application/json")
                .header("x-version", "1")
        },
        &cases,
    )
    .await;
    let target = Backend::with(move |rec| {
        let reply = |status: u16, version: &str, body: String| {
            common::Reply::ok(body)
                .status(status)
                .header("content-type", "application/json")
                .header("x-version", version)
        };
        match rec.path_and_query() {
            "/status" => reply(500, "1", json(1)),
            "/header" => reply(200, "2", json(1)),
            "/body" => reply(200, "1", "{\"id\":2,\"ts\":1}".into()),
            "/json-ts" => reply(200, "1", json(999)),
            _ => reply(200, "1", json(1)),
        }
    })
    .await;
    let mut options = replay_options(file, &target);
    options.compare = Some(teebox::diff::CompareRules {
        headers: vec![http::HeaderName::from_static("x-version")],
        ignore: vec![teebox::diff::JsonPath::parse("$.ts").unwrap()],
    });
    let summary = teebox::replay::replay(&options, || {})
        .await
        .expect("replay");
    let counts = summary.compare.expect("compare counts");
    assert_eq!(counts.matched, 2, "/same and /json-ts (ts ignored)");
    assert_eq!(counts.status_differs, 1);
    assert_eq!(counts.headers_differ, 1);
    assert_eq!(counts.body_differs, 1);
}

#[tokio::test]
async fn replay_command_prints_a_summary_and_fails_on_mismatch() {
    let dir = common::TempDir::new("replay-cli");
    let cases: Vec<(&str, &str, Vec<u8>)> =
        vec![("GET", "/x", Vec::new()), ("GET", "/y", Vec::new())];
    let file = record_traffic(&dir, |_| common::Reply::ok("v1"), &cases).await;
    std::fs::write(dir.join("junk.jsonl"), "this is not a record line\n").unwrap();
    let target = Backend::with(|rec| match rec.path_and_query() {
        "/y" => common::Reply::ok("v2"),
        _ => common::Reply::ok("v1"),
    })
    .await;
    let (target_url, first, junk) = (target.url(), file.clone(), dir.join("junk.jsonl"));
    let plain = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_teebox"))
            .arg("replay")
            .arg(first)
            .arg(junk)
            .args(["--target", &target_url, "--rate", "200"])
            .output()
            .expect("teebox runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(stdout.contains("sent 2 requests"), "{stdout}");
    assert!(stdout.contains("  200: 2"), "{stdout}");
    assert!(stdout.contains("skipped (not JSON"), "{stdout}");
    assert!(stdout.contains("latency ms: p50"), "{stdout}");
    assert_eq!(plain.status.code(), Some(0), "{stdout}");

    let target_url = target.url();
    let file2 = dir.join("traffic.jsonl");
    let compared = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_teebox"))
            .arg("replay")
            .arg(file2)
            .args(["--target", &target_url, "--compare"])
            .output()
            .expect("teebox runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&compared.stdout);
    assert!(
        stdout.contains("compare: 1 match, 0 status differs, 0 headers differ, 1 body differs"),
        "{stdout}"
    );
    assert_eq!(compared.status.code(), Some(1));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_teebox"))
        .args(["replay", "nope.jsonl", "--target", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--target"));
}

#[tokio::test]
async fn record_and_replay_keep_header_bytes_that_are_not_utf8() {
    let dir = common::TempDir::new("replay-obs-text");
    let kdl = one_route(
        Chain::new()
            .handler(r#"record "traffic.jsonl""#)
            .respond_with(200, "ok"),
    );
    let running = common::start_in(&kdl, dir.path()).await;
    // obs-text: every byte from 0x80 to 0xff, which is not UTF-8; and a
    // value that is UTF-8 but not ASCII.
    let obs_text: Vec<u8> = (0x80..=0xff).collect();
    let utf8 = "café ✓".as_bytes();
    let mut request = b"GET /obs HTTP/1.1\r\nHost: shop.example\r\nX-Obs: ".to_vec();
    request.extend_from_slice(&obs_text);
    request.extend_from_slice(b"\r\nX-Utf8: ");
    request.extend_from_slice(utf8);
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let outcome = common::raw::exchange(running.addr(), &request).await;
    assert_eq!(outcome.status(), Some(200), "{}", outcome.text());
    let file = dir.join("traffic.jsonl");
    let line = record_lines(&file, 1).await.remove(0);
    let obs = line["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "x-obs")
        .expect("x-obs recorded");
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(obs[1]["base64"].as_str().expect("{\"base64\": …}"))
            .unwrap(),
        obs_text
    );
    assert_eq!(recorded_header(&line, "x-utf8"), Some("café ✓"));

    let target = Backend::ok().await;
    let summary = teebox::replay::replay(&replay_options(file, &target), || {})
        .await
        .expect("replay");
    assert_eq!(summary.sent, 1, "{summary}");
    let got = target.wait_for(1).await.remove(0);
    assert_eq!(got.path_and_query(), "/obs");
    assert_eq!(got.headers["x-obs"].as_bytes(), obs_text.as_slice());
    assert_eq!(got.headers["x-utf8"].as_bytes(), utf8);
    assert_eq!(got.headers["host"].as_bytes(), b"shop.example");
}

/// A record line as `record` writes it, for a GET of `uri` at `ts_ms`.
fn record_line(ts_ms: u64, uri: &str) -> String {
    format!(
        "{{\"ts_ms\":{ts_ms},\"method\":\"GET\",\"uri\":\"{uri}\",\"headers\":[[\"host\",\"shop.example\"]],\"body\":\"\",\"body_encoding\":\"utf-8\",\"body_bytes\":0,\"body_truncated\":false}}\n"
    )
}

#[tokio::test]
async fn replay_skips_a_request_due_beyond_any_clock_without_panicking() {
    let dir = common::TempDir::new("replay-far-ahead");
    let file = dir.join("traffic.jsonl");
    std::fs::write(
        &file,
        record_line(0, "/first") + &record_line(u64::MAX, "/last"),
    )
    .unwrap();
    let target = Backend::with(|_| common::Reply::ok("ok")).await;
    // A slow --speed puts the crafted last line past what a Duration holds;
    // a tiny --rate puts the second request there too.
    for pace in [
        teebox::replay::Pace::Speed(1e-6),
        teebox::replay::Pace::Rate(1e-300),
    ] {
        let mut options = replay_options(file.clone(), &target);
        options.pace = pace;
        let summary = common::within("the replay", teebox::replay::replay(&options, || {}))
            .await
            .expect("replay");
        assert_eq!(summary.sent, 1, "{pace:?}: {summary}");
        assert_eq!(
            summary.skipped.get(teebox::replay::TOO_FAR_AHEAD),
            Some(&1),
            "{pace:?}: {summary}"
        );
    }
}

#[tokio::test]
async fn replay_skips_a_line_with_more_headers_than_a_request_holds() {
    let dir = common::TempDir::new("replay-many-headers");
    let pairs: Vec<String> = (0..40_000).map(|i| format!("[\"x-{i}\",\"v\"]")).collect();
    let crafted = format!(
        "{{\"method\":\"GET\",\"uri\":\"/many\",\"headers\":[{}],\"body\":\"\",\"body_encoding\":\"utf-8\",\"body_bytes\":0,\"body_truncated\":false}}\n",
        pairs.join(",")
    );
    let file = dir.join("traffic.jsonl");
    std::fs::write(&file, crafted + &record_line(0, "/fine")).unwrap();
    let target = Backend::with(|_| common::Reply::ok("ok")).await;
    let summary = common::within(
        "the replay",
        teebox::replay::replay(&replay_options(file, &target), || {}),
    )
    .await
    .expect("replay");
    assert_eq!(summary.sent, 1, "{summary}");
    assert_eq!(
        summary.skipped.get("no valid headers"),
        Some(&1),
        "{summary}"
    );
    assert_eq!(target.wait_for(1).await[0].path_and_query(), "/fine");
}

#[test]
fn replay_refuses_a_target_port_outside_1_to_65535() {
    for port in ["84631", "0"] {
        let url = format!("http://127.0.0.1:{port}");
        let bad = std::process::Command::new(env!("CARGO_BIN_EXE_teebox"))
            .args(["replay", "nope.jsonl", "--target", &url])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&bad.stderr),
            format!(
                "teebox replay: --target \"{url}\": port `{port}` is out of range: valid ports are 1-65535\n"
            )
        );
    }
}

// ---- compare --------------------------------------------------------------------------------

fn json_reply(status: u16, version: &str, body: String) -> common::Reply {
    common::Reply::ok(body)
        .status(status)
        .header("content-type", "application/json")
        .header("x-version", version)
}

#[tokio::test]
async fn compare_counts_each_kind_of_difference_and_logs_it() {
    let dir = common::TempDir::new("compare");
    let ts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tick = ts.clone();
    let primary = Backend::with(move |_| {
        let now = tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        json_reply(
            200,
            "1",
            format!("{{\"id\":1,\"ts\":{now},\"items\":[{{\"id\":9,\"v\":\"a\"}}]}}"),
        )
    })
    .await;
    let shadow = Backend::with(|rec| {
        let body =
            |id: u32| format!("{{\"id\":{id},\"ts\":12345,\"items\":[{{\"id\":77,\"v\":\"a\"}}]}}");
        match rec.path_and_query() {
            "/status" => json_reply(503, "1", body(1)),
            "/header" => json_reply(200, "2", body(1)),
            "/body" => json_reply(200, "1", body(2)),
            _ => json_reply(200, "1", body(1)),
        }
    })
    .await;
    let compare = r#"compare {
    headers "X-Version"
    ignore "$.ts" "$.items[*].id"
    diff_log "diffs.jsonl"
    log_rate 100
}"#;
    let kdl = site(Mirror::to(&shadow).opt(compare), &primary);
    let running = common::start_in(&kdl, dir.path()).await;
    let base = base_url(&running);
    let client = Client::http1();
    for path in ["/same", "/status", "/header", "/body", "/same-again"] {
        let resp = client.get(&format!("{base}{path}")).await;
        assert_eq!(
            resp.status, 200,
            "the client always gets the primary's answer"
        );
    }
    metrics::target_until(&running, &shadow.url(), "five comparisons", |c| {
        c.compare_match + c.compare_status + c.compare_headers + c.compare_body >= 5
    })
    .await;
    let c = metrics::target(&running, &shadow.url()).await;
    assert_eq!(c.compare_match, 2, "ts and item ids are ignored: {c:?}");
    assert_eq!(
        (c.compare_status, c.compare_headers, c.compare_body),
        (1, 1, 1)
    );
    assert_eq!(c.compare_skipped, 0);

    let lines = record_lines(&dir.join("diffs.jsonl"), 3).await;
    assert_eq!(lines.len(), 3);
    let by_uri = |uri: &str| {
        lines
            .iter()
            .find(|l| l["uri"] == uri)
            .unwrap_or_else(|| panic!("no diff line for {uri}"))
    };
    let status = by_uri("/status");
    assert_eq!(status["differs"], serde_json::json!(["status"]));
    assert_eq!(status["primary"]["status"], 200);
    assert_eq!(status["shadow"]["status"], 503);
    assert_eq!(status["method"], "GET");
    assert_eq!(status["target"], shadow.url());
    assert_eq!(status["id"].as_str().map(str::len), Some(36));
    let header = by_uri("/header");
    assert_eq!(header["differs"], serde_json::json!(["headers"]));
    assert_eq!(header["headers_differ"], serde_json::json!(["x-version"]));
    let body = by_uri("/body");
    assert_eq!(body["differs"], serde_json::json!(["body"]));
    assert!(body["shadow"]["body"]
        .as_str()
        .unwrap()
        .contains("\"id\":2"));
    assert!(body["primary"]["body"]
        .as_str()
        .unwrap()
        .starts_with("{\"id\":1"));
}

#[tokio::test]
async fn compare_on_bytes_when_not_json_and_respects_log_rate() {
    let dir = common::TempDir::new("compare-rate");
    let primary = Backend::with(|_| common::Reply::ok("plain text")).await;
    let shadow = Backend::with(|_| common::Reply::ok("plain text!")).await;
    let mirror = Mirror::to(&shadow).opt(r#"compare { diff_log "d.jsonl"; log_rate 1; }"#);
    let running = common::start_in(&site(mirror, &primary), dir.path()).await;
    let base = base_url(&running);
    let client = Client::http1();
    let started = std::time::Instant::now();
    for i in 0..20 {
        client.get(&format!("{base}/r/{i}")).await;
    }
    metrics::target_until(&running, &shadow.url(), "twenty comparisons", |c| {
        c.compare_body >= 20
    })
    .await;
    let seconds = started.elapsed().as_secs() + 1;
    let lines = record_lines(&dir.join("d.jsonl"), 1).await;
    assert!(
        lines.len() as u64 <= seconds + 1,
        "{} diff lines in about {seconds}s at log_rate 1",
        lines.len()
    );
    assert_eq!(
        metrics::target(&running, &shadow.url()).await.compare_match,
        0
    );
}

#[tokio::test]
async fn compare_never_holds_the_client() {
    // The shadow answers only when the gate opens; the client's responses
    // come first, and the comparisons happen afterwards.
    let gate = common::Gate::new();
    let primary = Backend::ok().await;
    let shadow = Backend::start(common::Reply::ok("ok").hold(&gate)).await;
    let mirror = Mirror::to(&shadow).opt("compare").opt(r#"timeout "10s""#);
    let running = start(&site(mirror, &primary)).await;
    let base = base_url(&running);
    let client = Client::http1();
    for i in 0..3 {
        let resp =
            common::within("the primary's answer", client.get(&format!("{base}/g/{i}"))).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(
        metrics::target(&running, &shadow.url()).await.compare_match,
        0,
        "nothing compared while the shadow is held"
    );
    gate.open();
    metrics::target_until(&running, &shadow.url(), "the held copies compared", |c| {
        c.compare_match == 3
    })
    .await;
}
