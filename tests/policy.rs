//! Mirror traffic policy: which requests are copied (`methods`), how many
//! (`max_rps`), and the loop `marker` that keeps teebox from copying its
//! own copies.

mod common;

use std::time::{Duration, Instant};

use common::{base_url, client, eventually, start, Backend, Client};
use teebox::server::Running;

fn counts(running: &Running) -> teebox::mirror::stats::Counts {
    running.mirrors()[0].targets()[0].state().stats.counts()
}

fn site(shadow: &Backend, options: &str) -> String {
    format!(
        "site \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    mirror {:?} {{\n{options}\n    }}\n    respond 200 \"ok\"\n  }}\n}}\n",
        shadow.url()
    )
}

#[tokio::test]
async fn methods_limits_what_is_copied() {
    let shadow = Backend::ok().await;
    let running = start(&site(&shadow, "methods \"GET\" \"HEAD\"")).await;
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
    eventually("two requests counted as skipped", || {
        counts(&running).skipped_method == 2
    })
    .await;
    shadow.assert_stays_at(3, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn the_marker_stops_teebox_from_mirroring_to_itself() {
    // One teebox whose mirror's only target, added at runtime, is itself.
    let kdl = "global {\n  admin \"127.0.0.1:0\"\n}\nsite \"127.0.0.1:0\" {\n  route \"/*\" {\n    mirror { name \"self\"; }\n    respond 200 \"ok\"\n  }\n}\n";
    let running = start(kdl).await;
    let admin = running.admin_addr().expect("admin endpoint");
    let put = client::req(
        "PUT",
        &format!(
            "http://{admin}/targets?mirror=self&url=http://{}",
            running.addr()
        ),
    )
    .body(client::full(""))
    .unwrap();
    assert_eq!(Client::http1().send(put).await.unwrap().status, 200);
    let resp = Client::http1()
        .get(&format!("{}/loop", base_url(&running)))
        .await;
    assert_eq!(resp.status, 200);
    // The copy arrives marked, is answered, and is not copied again.
    eventually("the copy arrives and is not copied again", || {
        let c = counts(&running);
        c.succeeded == 1 && c.skipped_loop == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = counts(&running);
    assert_eq!((c.sent, c.skipped_loop), (1, 1), "{c:?}");
}

#[tokio::test]
async fn marker_false_sends_unmarked_copies_and_a_custom_marker_is_used() {
    let shadow = Backend::ok().await;
    let running = start(&site(&shadow, "marker #false")).await;
    Client::http1()
        .get(&format!("{}/a", base_url(&running)))
        .await;
    assert_eq!(shadow.wait_for(1).await[0].header("teebox-shadow"), None);

    let shadow = Backend::ok().await;
    let running = start(&site(&shadow, "marker \"X-Is-Copy\"")).await;
    let client = Client::http1();
    client.get(&format!("{}/b", base_url(&running))).await;
    assert_eq!(shadow.wait_for(1).await[0].header("x-is-copy"), Some("1"));
    // A request already carrying it is served and not copied.
    let req = client::req("GET", &format!("{}/c", base_url(&running)))
        .header("x-is-copy", "1")
        .body(client::full(""))
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 200);
    eventually("the marked request counted", || {
        counts(&running).skipped_loop == 1
    })
    .await;
    assert_eq!(shadow.count(), 1);
}

#[tokio::test]
async fn max_rps_drops_and_counts_what_is_over_the_rate() {
    let shadow = Backend::ok().await;
    let running = start(&site(&shadow, "max_rps 50\nbacklog 10000\nconcurrency 16")).await;
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
    eventually("every copy accounted for", || {
        let c = counts(&running);
        c.succeeded + c.rate_limited == 1000
    })
    .await;
    let c = counts(&running);
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
    let options = "sample 0.2\nsample_by \"header:X-User-Id\"\nbacklog 20000";
    let shadow_a = Backend::ok().await;
    let a = start(&site(&shadow_a, options)).await;
    send_users(&a, 1000, 10).await;
    let copies = || counts(&a);
    eventually("every copy delivered", || {
        let c = copies();
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
    let b = start(&site(&shadow_b, options)).await;
    send_users(&b, 1000, 1).await;
    eventually("every copy delivered", || {
        let c = counts(&b);
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
    let running = start(&site(&shadow, "sample 0.5\nsample_by \"cookie:session\"")).await;
    let client = Client::http1();
    for i in 0..400 {
        client.get(&format!("{}/n/{i}", base_url(&running))).await;
    }
    eventually("all decided", || {
        let c = counts(&running);
        c.succeeded + c.sampled_out == 400
    })
    .await;
    // Random at 0.5: sd = 10; both outcomes happen.
    let c = counts(&running);
    assert!((120..=280).contains(&c.succeeded), "{c:?}");
    // With the cookie, one session is all in or all out.
    let mut decided = Vec::new();
    for _ in 0..20 {
        let before = counts(&running).sampled_out;
        let req = client::req("GET", &format!("{}/s", base_url(&running)))
            .header("cookie", "theme=dark; session=abc123")
            .body(client::full(""))
            .unwrap();
        client.send(req).await.unwrap();
        decided.push(counts(&running).sampled_out == before);
    }
    assert!(decided.iter().all(|d| *d == decided[0]), "{decided:?}");
}

#[tokio::test]
async fn host_suffix_names_the_copies_after_the_client_host() {
    let shadow = Backend::ok().await;
    let running = start(&site(&shadow, "host_suffix \"-shadow\"")).await;
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
    let loaded = teebox::config::parse("self.kdl", kdl, std::env::temp_dir()).expect("valid");
    let rendered = loaded.render_warnings(teebox::config::Style::Plain);
    assert_eq!(loaded.warnings.len(), 1, "{rendered}");
    assert!(
        rendered.contains("one of this file's own listen addresses"),
        "{rendered}"
    );
    assert!(rendered.contains("localhost:18555"), "{rendered}");
}
