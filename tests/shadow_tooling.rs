//! Shadow tooling: edits a `mirror` makes to its copies only (path, query,
//! headers with placeholders, body), while the primary gets the request as
//! the client sent it.

mod common;

use common::{base_url, client, start, Backend, Client};

/// A site whose only route mirrors to `shadow` (with `options` in the
/// mirror block) and proxies to `primary`.
fn site(shadow: &Backend, options: &str, primary: &Backend) -> String {
    format!(
        "site \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    mirror {:?} {{\n{options}\n    }}\n    reverse_proxy {:?}\n  }}\n}}\n",
        shadow.url(),
        primary.url()
    )
}

#[tokio::test]
async fn path_rewrites_apply_to_copies_only() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let options = r##"
        rewrite strip_prefix="/v1" add_prefix="/v2"
        rewrite regex=#"^/v2/users/(\d+)"# replace="/v2/people/$1"
    "##;
    let running = start(&site(&shadow, options, &primary)).await;
    let base = base_url(&running);
    let client = Client::http1();
    client
        .get(&format!("{base}/v1/users/42/orders?sort=asc"))
        .await;
    client.get(&format!("{base}/v1")).await;
    client.get(&format!("{base}/v1x/keep")).await;

    let primaries = primary.wait_for(3).await;
    let copies = shadow.wait_for(3).await;
    assert_eq!(
        primaries[0].path_and_query(),
        "/v1/users/42/orders?sort=asc"
    );
    assert_eq!(copies[0].path_and_query(), "/v2/people/42/orders?sort=asc");
    assert_eq!(copies[1].path_and_query(), "/v2");
    // strip_prefix strips whole segments only.
    assert_eq!(copies[2].path_and_query(), "/v2/v1x/keep");
    assert_eq!(primaries[2].path_and_query(), "/v1x/keep");
}

#[tokio::test]
async fn query_edits_apply_to_copies_only() {
    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let options = r#"
        query_set "debug" "1"
        query_remove "token" "session"
        query_set "who" "shadow copy"
    "#;
    let running = start(&site(&shadow, options, &primary)).await;
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
    let options = r#"
        header_up "X-Request-Id" "{request.id}"
        header_up "X-Client" "ip={client.ip}"
        header_up "X-Original-Host" "{request.host}"
        header_up "X-Sent-At" "{time.unix_ms}"
        header_up "X-Json" "{\"literal\":true}"
    "#;
    let running = start(&site(&shadow, options, &primary)).await;
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
    let kdl = format!(
        "site \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    mirror {:?} {{ header_up \"X-Request-Id\" \"{{request.id}}\"; }}\n    reverse_proxy {:?} {{ header_up \"X-Request-Id\" \"{{request.id}}\"; header_down \"X-Request-Id\" \"{{request.id}}\"; }}\n  }}\n}}\n",
        shadow.url(),
        primary.url()
    );
    let running = start(&kdl).await;
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
    let options = r##"
        replace_body regex=#""id":(\d+)"# replace=#""id":"staging-$1""#
        replace_body "prod-db" "staging-db"
    "##;
    let running = start(&site(&shadow, options, &primary)).await;
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
    let copies = shadow.wait_for(2).await;
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
async fn several_targets_get_the_same_rewritten_copy() {
    let primary = Backend::ok().await;
    let one = Backend::ok().await;
    let two = Backend::ok().await;
    let kdl = format!(
        "site \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    mirror {:?} {:?} {{ replace_body \"a\" \"b\"; rewrite add_prefix=\"/shadow\"; }}\n    reverse_proxy {:?}\n  }}\n}}\n",
        one.url(),
        two.url(),
        primary.url()
    );
    let running = start(&kdl).await;
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
