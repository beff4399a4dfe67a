//! Mirror traffic policy: which requests are copied (`methods`,
//! `primary_status`), how many (`sample`, `max_rps`), where (`target`
//! nodes with options of their own), and the loop `marker` that keeps
//! teebox from copying its own copies.

mod common;

use std::time::{Duration, Instant};

use common::metrics::{self, TargetCounts};
use common::{
    base_url, client, fault, random_bytes, start, Admin, Backend, Chain, Client, Mirror, Reply,
    Site, Target,
};
use teebox::server::Running;

/// The counters of the mirror target at `url`, scraped now.
async fn counts(running: &Running, url: &str) -> TargetCounts {
    metrics::target(running, url).await
}

/// A file with an admin endpoint and one route, `/*`, whose chain is `chain`.
fn admin_site(chain: Chain) -> String {
    Site::new().admin(Admin::open()).route("/*", chain).to_kdl()
}

async fn admin_get(running: &Running, path: &str, json: bool) -> String {
    let url = format!(
        "http://{}{path}",
        running.admin_addr().expect("admin endpoint")
    );
    let mut req = client::req("GET", &url);
    if json {
        req = req.header("accept", "application/json");
    }
    let resp = Client::http1()
        .send(req.body(client::full("")).unwrap())
        .await
        .expect("admin request");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

async fn send(client: &Client, method: &str, url: &str, body: &[u8]) -> u16 {
    let req = client::req(method, url)
        .body(client::full(body.to_vec()))
        .unwrap();
    client.send(req).await.expect("request").status.as_u16()
}

/// `mirror` (to `shadow`, its options set by the test) then `respond 200 "ok"`.
fn site(mirror: Mirror) -> String {
    admin_site(Chain::new().mirror(mirror).respond_with(200, "ok"))
}

#[tokio::test]
async fn methods_limits_what_is_copied() {
    let shadow = Backend::ok().await;
    let running = start(&site(Mirror::to(&shadow).opt(r#"methods "GET" "HEAD""#))).await;
    let base = base_url(&running);
    let client = Client::http1();
    for method in ["GET", "POST", "HEAD", "DELETE", "GET"] {
        let req = client::req(method, &format!("{base}/m/{method}"))
            .body(client::full(""))
            .unwrap();
        assert_eq!(client.send(req).await.unwrap().status, 200);
    }
    let got = shadow.wait_for(3).await;
    let mut methods: Vec<&str> = got.iter().map(|r| r.method.as_str()).collect();
    methods.sort();
    assert_eq!(methods, ["GET", "GET", "HEAD"]);
    metrics::target_until(
        &running,
        &shadow.url(),
        "two requests counted as skipped",
        |c| c.skipped_method == 2,
    )
    .await;
    shadow.assert_stays_at(3, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn the_marker_stops_teebox_from_mirroring_to_itself() {
    // One teebox whose mirror's only target, added at runtime, is itself.
    let running = start(&site(Mirror::named("self"))).await;
    let admin = running.admin_addr().expect("admin endpoint");
    let itself = format!("http://{}", running.addr());
    let put = client::req(
        "PUT",
        &format!("http://{admin}/targets?mirror=self&url={itself}"),
    )
    .body(client::full(""))
    .unwrap();
    assert_eq!(Client::http1().send(put).await.unwrap().status, 200);
    let resp = Client::http1()
        .get(&format!("{}/loop", base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
    // The copy arrives marked, is answered, and is not copied again.
    metrics::target_until(
        &running,
        &itself,
        "the copy arrives and is not copied again",
        |c| c.succeeded == 1 && c.skipped_loop == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = counts(&running, &itself).await;
    assert_eq!((c.sent, c.skipped_loop), (1, 1), "{c:?}");
}

#[tokio::test]
async fn marker_false_sends_unmarked_copies_and_a_custom_marker_is_used() {
    let shadow = Backend::ok().await;
    let running = start(&site(Mirror::to(&shadow).opt("marker #false"))).await;
    Client::http1()
        .get(&format!("{}/a", base_url(&running)))
        .await;
    assert_eq!(shadow.wait_for(1).await[0].header("teebox-shadow"), None);

    let shadow = Backend::ok().await;
    let running = start(&site(Mirror::to(&shadow).opt(r#"marker "X-Is-Copy""#))).await;
    let client = Client::http1();
    client.get(&format!("{}/b", base_url(&running))).await;
    assert_eq!(shadow.wait_for(1).await[0].header("x-is-copy"), Some("1"));
    // A request already carrying it is served and not copied.
    let req = client::req("GET", &format!("{}/c", base_url(&running)))
        .header("x-is-copy", "1")
        .body(client::full(""))
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 200);
    metrics::target_until(&running, &shadow.url(), "the marked request counted", |c| {
        c.skipped_loop == 1
    })
    .await;
    assert_eq!(shadow.count(), 1);
}

#[tokio::test]
async fn max_rps_drops_and_counts_what_is_over_the_rate() {
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt("max_rps 50")
        .opt("backlog 10000")
        .opt("concurrency 16");
    let running = start(&site(mirror)).await;
    let base = base_url(&running);
    let client = Client::http1();
    // 1000 requests spread over about two seconds.
    let started = Instant::now();
    for i in 0..1000u64 {
        let due = started + Duration::from_millis(i * 2);
        tokio::time::sleep_until(due.into()).await;
        client.get(&format!("{base}/r/{i}")).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    metrics::target_until(&running, &shadow.url(), "every copy accounted for", |c| {
        c.succeeded + c.rate_limited == 1000
    })
    .await;
    let c = counts(&running, &shadow.url()).await;
    // A burst of a tenth of a second's worth, then 50 a second.
    let most = 5.0 + 50.0 * seconds + 1.0;
    assert!(
        c.succeeded as f64 <= most,
        "{} copies in {seconds:.2}s",
        c.succeeded
    );
    assert!(c.succeeded >= 50, "{} copies in {seconds:.2}s", c.succeeded);
    assert_eq!(c.rate_limited, 1000 - c.succeeded);
}

/// Sends one GET per (user, n) with `X-User-Id`, eight at a time.
async fn send_users(running: &Running, users: u32, per_user: u32) {
    let base = base_url(running);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u32 {
        let base = base.clone();
        tasks.spawn(async move {
            let client = Client::http1();
            for i in (worker..users * per_user).step_by(8) {
                let req = client::req("GET", &format!("{base}/u/{i}"))
                    .header("x-user-id", format!("user-{}", i % users))
                    .body(client::full(""))
                    .unwrap();
                client.send(req).await.expect("request");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// The users whose copies reached `shadow`, with how many each.
fn users_in(shadow: &Backend) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for rec in shadow.requests() {
        *seen
            .entry(rec.header("x-user-id").unwrap().to_string())
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sample_by_keeps_each_user_all_in_or_all_out_on_every_instance() {
    let mirror = |shadow: &Backend| {
        Mirror::to(shadow)
            .opt("sample 0.2")
            .opt(r#"sample_by "header:X-User-Id""#)
            .opt("backlog 20000")
    };
    let shadow_a = Backend::ok().await;
    let a = start(&site(mirror(&shadow_a))).await;
    send_users(&a, 1000, 10).await;
    metrics::target_until(&a, &shadow_a.url(), "every copy delivered", |c| {
        c.succeeded + c.sampled_out == 10_000
    })
    .await;
    let in_a = users_in(&shadow_a);
    // All in or all out: a user's ten requests are all copied, or none.
    assert!(in_a.values().all(|n| *n == 10), "{in_a:?}");
    // About a fifth of the users: binomial sd = sqrt(1000 * 0.2 * 0.8) ≈ 12.6;
    // 150..=250 is about four sd either way.
    assert!((150..=250).contains(&in_a.len()), "{} users in", in_a.len());

    // A second instance, fed each user once, agrees user by user.
    let shadow_b = Backend::ok().await;
    let b = start(&site(mirror(&shadow_b))).await;
    send_users(&b, 1000, 1).await;
    metrics::target_until(&b, &shadow_b.url(), "every copy delivered", |c| {
        c.succeeded + c.sampled_out == 1000
    })
    .await;
    let in_b: Vec<String> = users_in(&shadow_b).into_keys().collect();
    let in_a: Vec<String> = in_a.into_keys().collect();
    assert_eq!(in_a, in_b);
}

#[tokio::test]
async fn without_the_key_sampling_falls_back_to_random() {
    let shadow = Backend::ok().await;
    let mirror = Mirror::to(&shadow)
        .opt("sample 0.5")
        .opt(r#"sample_by "cookie:session""#);
    let running = start(&site(mirror)).await;
    let url = shadow.url();
    let client = Client::http1();
    for i in 0..400 {
        client.get(&format!("{}/n/{i}", base_url(&running))).await;
    }
    metrics::target_until(&running, &url, "all decided", |c| {
        c.succeeded + c.sampled_out == 400
    })
    .await;
    // Random at 0.5: sd = 10; both outcomes happen.
    let c = counts(&running, &url).await;
    assert!((120..=280).contains(&c.succeeded), "{c:?}");
    // With the cookie, one session is all in or all out.
    let mut decided = Vec::new();
    for _ in 0..20 {
        let before = counts(&running, &url).await.sampled_out;
        let req = client::req("GET", &format!("{}/s", base_url(&running)))
            .header("cookie", "theme=dark; session=abc123")
            .body(client::full(""))
            .unwrap();
        client.send(req).await.unwrap();
        decided.push(counts(&running, &url).await.sampled_out == before);
    }
    assert!(decided.iter().all(|d| *d == decided[0]), "{decided:?}");
}

#[tokio::test]
async fn host_suffix_names_the_copies_after_the_client_host() {
    let shadow = Backend::ok().await;
    let running = start(&site(Mirror::to(&shadow).opt(r#"host_suffix "-shadow""#))).await;
    let client = Client::http1();
    for host in ["api.example.com:8080", "plain.test"] {
        let req = client::req("GET", &format!("{}/h", base_url(&running)))
            .header("host", host)
            .body(client::full(""))
            .unwrap();
        client.send(req).await.unwrap();
    }
    let mut hosts: Vec<String> = shadow
        .wait_for(2)
        .await
        .iter()
        .map(|r| r.header("host").unwrap().to_string())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["api.example.com-shadow:8080", "plain.test-shadow"]);
}

#[test]
fn validate_warns_about_a_mirror_target_that_is_the_file_itself() {
    let kdl = "site \"127.0.0.1:18555\" {\n  route \"/*\" {\n    mirror \"http://localhost:18555\" \"http://127.0.0.1:18556\"\n    respond 200\n  }\n}\n";
    let (count, rendered) = common::warnings("self.kdl", kdl);
    assert_eq!(count, 1, "{rendered}");
    assert!(
        rendered.contains("one of this file's own listen addresses"),
        "{rendered}"
    );
    assert!(rendered.contains("localhost:18555"), "{rendered}");
}

/// The primary answers by path: `/ok…` 200, `/missing…` 404, `/broken…` 500.
async fn primary_by_path() -> Backend {
    Backend::with(|rec| {
        let path = rec.uri.path();
        let status = match () {
            _ if path.starts_with("/missing") => 404,
            _ if path.starts_with("/broken") => 500,
            _ => 200,
        };
        Reply::ok(format!("primary {path}")).status(status)
    })
    .await
}

#[tokio::test]
async fn primary_status_sends_copies_of_wanted_answers_only() {
    let primary = primary_by_path().await;
    let shadow = Backend::ok().await;
    let chain = Chain::new()
        .mirror(Mirror::to(&shadow).opt(r#"primary_status "2xx""#))
        .proxy(&primary);
    let running = start(&admin_site(chain)).await;
    let base = base_url(&running);
    let client = Client::http1();
    let upload = random_bytes(64 * 1024, 9);
    let sent = [
        ("GET", "/ok/1", &b""[..], 200),
        ("GET", "/missing/1", b"", 404),
        ("POST", "/broken/1", b"lost", 500),
        ("POST", "/ok/2", &upload[..], 200),
        ("POST", "/missing/2", b"also lost", 404),
        ("GET", "/ok/3", b"", 200),
    ];
    for (method, path, body, status) in sent {
        assert_eq!(
            send(&client, method, &format!("{base}{path}"), body).await,
            status
        );
    }
    // Every request reached the primary, whatever became of its copy.
    assert_eq!(primary.count(), 6);
    metrics::target_until(&running, &shadow.url(), "three copies withheld", |c| {
        c.primary_filtered == 3
    })
    .await;
    let mut got = shadow.wait_for(3).await;
    got.sort_by(|a, b| a.uri.path().cmp(b.uri.path()));
    let paths: Vec<&str> = got.iter().map(|r| r.uri.path()).collect();
    assert_eq!(paths, ["/ok/1", "/ok/2", "/ok/3"]);
    assert_eq!(got[1].method, "POST");
    assert_eq!(got[1].body, upload, "the held copy's body, byte for byte");
    shadow.assert_stays_at(3, Duration::from_millis(100)).await;
    let c = counts(&running, &shadow.url()).await;
    assert_eq!(
        (c.succeeded, c.primary_filtered, c.dropped),
        (3, 3, 0),
        "{c:?}"
    );

    let metrics = admin_get(&running, "/metrics", false).await;
    let line = metrics
        .lines()
        .find(|l| l.contains("outcome=\"primary_filtered\""))
        .unwrap_or_else(|| panic!("no primary_filtered in\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
    let json = admin_get(&running, "/targets", true).await;
    let targets: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(targets[0]["counters"]["primary_filtered"], 3, "{json}");
}

#[tokio::test]
async fn primary_status_withholds_the_copy_of_a_primary_that_never_answered() {
    let shadow = Backend::ok().await;
    // "5xx" would take teebox's own 502 for an answer if it could: the
    // primary gave none, so the copy is still withheld.
    let chain = Chain::new()
        .mirror(Mirror::to(&shadow).opt(r#"primary_status "5xx""#))
        .proxy(fault::refused_url());
    let running = start(&admin_site(chain)).await;
    let client = Client::http1();
    let base = base_url(&running);
    assert_eq!(
        send(&client, "GET", &format!("{base}/down"), b"").await,
        502
    );
    assert_eq!(
        send(&client, "POST", &format!("{base}/down"), b"body").await,
        502
    );
    metrics::target_until(&running, &shadow.url(), "both copies withheld", |c| {
        c.primary_filtered == 2
    })
    .await;
    shadow.assert_stays_at(0, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn primary_status_matches_exact_codes_and_answers_given_before_the_body_ends() {
    // `respond` answers without reading the body: the verdict comes first
    // and the copy follows once the tee has the whole body.
    let shadow = Backend::ok().await;
    let kdl = Site::new()
        .admin(Admin::open())
        .route(
            "/accepted/*",
            Chain::new()
                .mirror(Mirror::to(&shadow).opt(r#"primary_status "202""#))
                .respond_with(202, "queued"),
        )
        .route(
            "/*",
            Chain::new()
                .mirror(Mirror::to(&shadow).opt(r#"primary_status 202 "3xx""#))
                .respond_with(201, "made"),
        )
        .to_kdl();
    let running = start(&kdl).await;
    let base = base_url(&running);
    let client = Client::http1();
    let upload = random_bytes(200 * 1024, 3);
    assert_eq!(
        send(&client, "POST", &format!("{base}/accepted/1"), &upload).await,
        202
    );
    assert_eq!(
        send(&client, "POST", &format!("{base}/other"), b"not copied").await,
        201
    );
    let got = shadow.wait_for(1).await;
    assert_eq!(got[0].uri.path(), "/accepted/1");
    assert_eq!(got[0].body, upload, "byte for byte");
    // The second route's mirror, labelled by its site and route.
    let (other, url) = ("127.0.0.1:0 /*", shadow.url());
    metrics::until(&running, "the 201 withheld", |m| {
        m.target_of(other, &url).primary_filtered == 1
    })
    .await;
    let c = metrics::scrape(&running).await.target_of(other, &url);
    assert_eq!(c.sent, 0, "{c:?}");
    shadow.assert_stays_at(1, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_target_node_has_its_own_headers_and_host_and_runtime_targets_do_not() {
    let plain = Backend::ok().await;
    let canary = Backend::ok().await;
    let runtime = Backend::ok().await;
    let mirror = Mirror::to(&plain)
        .name("m")
        .opt(r#"header_up "X-Shadow" "1""#)
        .target(
            Target::new(&canary)
                .opt(r#"header_up "X-Canary" "{request.id}""#)
                .opt(r#"header_up "-Teebox-Shadow""#)
                .opt(r#"host "canary.internal""#),
        );
    let running = start(&site(mirror)).await;
    let admin = running.admin_addr().expect("admin endpoint");
    let put = client::req(
        "PUT",
        &format!("http://{admin}/targets?mirror=m&url={}", runtime.url()),
    )
    .body(client::full(""))
    .unwrap();
    assert_eq!(Client::http1().send(put).await.unwrap().status, 200);

    let body = random_bytes(10_000, 5);
    let client = Client::http1();
    assert_eq!(
        send(
            &client,
            "PUT",
            &format!("{}/doc", base_url(&running)),
            &body
        )
        .await,
        200
    );
    let (p, c, r) = (
        plain.wait_for(1).await.remove(0),
        canary.wait_for(1).await.remove(0),
        runtime.wait_for(1).await.remove(0),
    );
    for copy in [&p, &c, &r] {
        assert_eq!(copy.body, body, "byte for byte");
        assert_eq!(copy.header("x-shadow"), Some("1"), "the mirror's header_up");
        assert_eq!(copy.header("teebox-shadow"), Some("1"), "the marker stays");
    }
    let id = c.header("x-canary").expect("the target's own header_up");
    assert_eq!(id.len(), 36, "a request id: {id}");
    assert_eq!(p.header("x-canary"), None);
    assert_eq!(
        r.header("x-canary"),
        None,
        "runtime targets get the mirror's settings"
    );
    assert_eq!(c.header("host"), Some("canary.internal"));
    assert_eq!(p.header("host"), Some(plain.authority().as_str()));
    assert_eq!(r.header("host"), Some(runtime.authority().as_str()));
}

#[tokio::test]
async fn a_target_node_with_sample_zero_gets_nothing_while_the_other_gets_everything() {
    let all = Backend::ok().await;
    let none = Backend::ok().await;
    let mirror = Mirror::to(&all).target(Target::new(&none).opt("sample 0"));
    let running = start(&site(mirror)).await;
    let client = Client::http1();
    for i in 0..50 {
        client.get(&format!("{}/s/{i}", base_url(&running))).await;
    }
    all.wait_for(50).await;
    metrics::target_until(
        &running,
        &none.url(),
        "every request left out of the sample-0 target",
        |c| c.sampled_out == 50,
    )
    .await;
    none.assert_stays_at(0, Duration::from_millis(100)).await;
    let c = counts(&running, &all.url()).await;
    assert_eq!((c.sampled_out, c.succeeded), (0, 50), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_sample_is_a_cohort_inside_the_mirror_cohort() {
    let staging = Backend::ok().await;
    let canary = Backend::ok().await;
    let mirror = Mirror::to(&staging)
        .opt("sample 0.5")
        .opt(r#"sample_by "header:X-User-Id""#)
        .opt("backlog 4000")
        .target(Target::new(&canary).opt("sample 0.1").opt("backlog 4000"));
    let running = start(&site(mirror)).await;
    send_users(&running, 500, 4).await;
    metrics::until(&running, "every request decided for both targets", |m| {
        let (s, c) = (m.target(&staging.url()), m.target(&canary.url()));
        s.succeeded + s.sampled_out == 2000 && c.succeeded + c.sampled_out == 2000
    })
    .await;
    let (in_staging, in_canary) = (users_in(&staging), users_in(&canary));
    assert!(in_staging.values().all(|n| *n == 4), "{in_staging:?}");
    assert!(in_canary.values().all(|n| *n == 4), "{in_canary:?}");
    // The keys are fixed, so these are fixed too; the ranges say what the
    // fractions mean: a share of all users, the canary's inside staging's.
    assert!(
        (200..=300).contains(&in_staging.len()),
        "{}",
        in_staging.len()
    );
    assert!((25..=75).contains(&in_canary.len()), "{}", in_canary.len());
    let outside: Vec<&String> = in_canary
        .keys()
        .filter(|u| !in_staging.contains_key(*u))
        .collect();
    assert!(
        outside.is_empty(),
        "canary users not in staging: {outside:?}"
    );
}

#[tokio::test]
async fn a_target_node_has_its_own_breaker_and_the_others_keep_the_mirror_s() {
    // Both refuse connections; only the target node pauses after one failure.
    let lenient = fault::refused_url();
    let strict = format!("http://127.0.0.1:{}", fault::refused_addr().port());
    let mirror = Mirror::to(&lenient)
        .opt("max_failures 100")
        .target(Target::new(&strict).opt("max_failures 1"));
    let running = start(&site(mirror)).await;
    let client = Client::http1();
    client.get(&format!("{}/1", base_url(&running))).await;
    metrics::until(&running, "the first copies failed", |m| {
        m.target(&strict).failed == 1 && m.target(&lenient).failed == 1
    })
    .await;
    client.get(&format!("{}/2", base_url(&running))).await;
    metrics::target_until(
        &running,
        &lenient,
        "the second copy tried on the lenient target",
        |c| c.failed == 2,
    )
    .await;
    let m = metrics::scrape(&running).await;
    let (s, l) = (m.target(&strict), m.target(&lenient));
    assert_eq!((s.pauses, s.skipped_paused, s.sent), (1, 1, 1), "{s:?}");
    assert_eq!((l.pauses, l.skipped_paused, l.sent), (0, 0, 2), "{l:?}");
}

#[test]
fn validate_warns_about_a_target_node_that_is_the_file_itself() {
    let kdl = "site \"127.0.0.1:18557\" {\n  route \"/*\" {\n    mirror \"http://127.0.0.1:18558\" {\n      target \"http://127.0.0.1:18557\" { sample 0.5; }\n    }\n    respond 200\n  }\n}\n";
    let (count, rendered) = common::warnings("self.kdl", kdl);
    assert_eq!(count, 1, "{rendered}");
    assert!(rendered.contains("127.0.0.1:18557\" {"), "{rendered}");
}

#[tokio::test]
async fn primary_status_withholds_the_copy_when_the_client_leaves_before_the_answer() {
    let held = common::Gate::new();
    let primary = Backend::start(Reply::ok("late").hold(&held)).await;
    let shadow = Backend::ok().await;
    let chain = Chain::new()
        .mirror(Mirror::to(&shadow).opt(r#"primary_status "2xx""#))
        .proxy(&primary);
    let running = start(&admin_site(chain)).await;
    let url = format!("{}/gone", base_url(&running));
    let client = tokio::spawn(async move { Client::http1().get(&url).await });
    primary.wait_for(1).await;
    // The client hangs up while the primary is still working on it.
    client.abort();
    metrics::target_until(&running, &shadow.url(), "the copy withheld", |c| {
        c.primary_filtered == 1
    })
    .await;
    held.open();
    shadow.assert_stays_at(0, Duration::from_millis(100)).await;
}
