//! The server around the handlers: `respond`, `header`, `rewrite`, route and
//! site selection, the access log, malformed requests, graceful shutdown.

mod common;

use std::time::Duration;

use common::client::{full, req};
use common::*;
use http::{Method, StatusCode};
use teebox::message::body;

fn url(teebox: &Running, path_and_query: &str) -> String {
    format!("{}{path_and_query}", base_url(teebox))
}

/// `GET url` with a `Host` header.
async fn get_with_host(teebox: &Running, path: &str, host: &str) -> Resp {
    let request = req("GET", &url(teebox, path))
        .header("host", host)
        .body(body::empty())
        .unwrap();
    Client::http1().send(request).await.unwrap()
}

// ---------------------------------------------------------------------------
// respond, header

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn respond_answers_with_its_status_body_and_a_text_content_type() {
    let teebox = start(
        r#"
        site "127.0.0.1:0" {
            route "/made" { respond 201 "made\n"; }
            route "/empty" { respond 204; }
        }
        "#,
    )
    .await;
    let client = Client::http1();
    let made = client.get(&url(&teebox, "/made")).await;
    assert_eq!(made.status, StatusCode::CREATED);
    assert_eq!(made.body, "made\n");
    assert_eq!(
        made.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(made.header("content-length"), Some("5"));

    let empty = client.get(&url(&teebox, "/empty")).await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert!(empty.body.is_empty());
    assert_eq!(empty.header("content-type"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_handler_sets_adds_and_removes_response_headers() {
    let backend = Backend::start(
        Reply::ok("ok")
            .header("Server", "backend/1.0")
            .header("X-Frame-Options", "SAMEORIGIN")
            .header("X-Multi", "one")
            .header("X-Untouched", "1"),
    )
    .await;
    let teebox = start(&format!(
        r#"
        site "127.0.0.1:0" {{
            route "/proxied/*" {{
                header {{
                    "X-Frame-Options" "DENY"
                    "-Server"
                    "+X-Multi" "two"
                }}
                reverse_proxy "{}"
            }}
            route "/local" {{
                header {{ "X-Local" "yes"; }}
                respond 200 "local"
            }}
        }}
        "#,
        backend.url()
    ))
    .await;
    let client = Client::http1();
    let resp = client.get(&url(&teebox, "/proxied/x")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "ok");
    let frame: Vec<_> = resp.headers.get_all("x-frame-options").iter().collect();
    assert_eq!(frame, ["DENY"]);
    assert_eq!(resp.header("server"), None);
    let multi: Vec<_> = resp.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(resp.header("x-untouched"), Some("1"));
    // Response headers only: the request went up unchanged.
    let recorded = backend.wait_for(1).await.remove(0);
    assert_eq!(recorded.header("x-frame-options"), None);

    let local = client.get(&url(&teebox, "/local")).await;
    assert_eq!(local.body, "local");
    assert_eq!(local.header("x-local"), Some("yes"));
}

// ---------------------------------------------------------------------------
// rewrite

/// A site whose routes each rewrite differently before proxying to `backend`.
async fn rewrite_site(backend: &Backend) -> Running {
    start(&format!(
        r##"
        site "127.0.0.1:0" {{
            route "/replace/*" {{
                rewrite "/new/path"
                reverse_proxy "{u}"
            }}
            route "/replace-query/*" {{
                rewrite "/new?b=2"
                reverse_proxy "{u}"
            }}
            route "/api/*" {{
                rewrite strip_prefix="/api"
                reverse_proxy "{u}"
            }}
            route "/add/*" {{
                rewrite add_prefix="/v2"
                reverse_proxy "{u}"
            }}
            route "/users/*" {{
                rewrite regex=#"^/users/(\d+)"# replace="/people/$1"
                reverse_proxy "{u}"
            }}
            route "/combo/*" {{
                rewrite strip_prefix="/combo" regex=#"^/users/(\d+)"# replace="/people/$1" add_prefix="/v2"
                reverse_proxy "{u}"
            }}
            route "/seg*" {{
                rewrite strip_prefix="/seg"
                reverse_proxy "{u}"
            }}
        }}
        "##,
        u = backend.url()
    ))
    .await
}

/// What the backend receives when the client asks for `path_and_query`.
async fn rewritten(path_and_query: &str) -> String {
    let backend = Backend::ok().await;
    let teebox = rewrite_site(&backend).await;
    let resp = Client::http1().get(&url(&teebox, path_and_query)).await;
    assert_eq!(resp.status, StatusCode::OK);
    backend.only().path_and_query().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_to_a_path_replaces_the_path_and_keeps_the_query() {
    assert_eq!(
        rewritten("/replace/old?a=1&b=%20").await,
        "/new/path?a=1&b=%20"
    );
    assert_eq!(rewritten("/replace/old").await, "/new/path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_to_a_path_with_a_query_replaces_the_query_too() {
    assert_eq!(rewritten("/replace-query/x?a=1").await, "/new?b=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_strip_prefix_removes_the_prefix() {
    assert_eq!(rewritten("/api/users/7?x=1").await, "/users/7?x=1");
}

/// `strip_prefix="/seg"` takes whole segments: `/seg` and `/seg/...`, never
/// the start of `/segment`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_strip_prefix_strips_whole_segments_only() {
    assert_eq!(rewritten("/segment/x?q=1").await, "/segment/x?q=1");
    assert_eq!(rewritten("/seg-2").await, "/seg-2");
    assert_eq!(rewritten("/seg/x?q=1").await, "/x?q=1");
    assert_eq!(rewritten("/seg?q=1").await, "/?q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_add_prefix_prepends_the_prefix() {
    assert_eq!(rewritten("/add/thing?y=2").await, "/v2/add/thing?y=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_regex_replaces_with_captures() {
    assert_eq!(
        rewritten("/users/42/posts?z=3").await,
        "/people/42/posts?z=3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_edits_strip_then_apply_the_regex_then_add() {
    assert_eq!(rewritten("/combo/users/9/x").await, "/v2/people/9/x");
}

// ---------------------------------------------------------------------------
// Routes

async fn routing_site() -> Running {
    start(
        r#"
        site "127.0.0.1:0" {
            route "/exact" { respond 200 "exact"; }
            route "/dir/*" { respond 200 "dir"; }
            route "/dir/special" { respond 200 "later route"; }
            route "/m/*" {
                method "POST" "PUT"
                respond 200 "write"
            }
            route "/m/*" { respond 200 "read"; }
            route "/h/*" {
                header "X-Canary" "1"
                respond 200 "canary"
            }
            route "/h/*" {
                header "X-Any"
                respond 200 "has x-any"
            }
            route "/h/*" { respond 200 "plain"; }
        }
        "#,
    )
    .await
}

#[test]
fn validate_warns_about_a_matcher_written_among_the_handlers() {
    // Most likely a response header meant to be set, written without its
    // block: as a matcher it quietly keeps the route from ever running.
    let kdl = "site \"127.0.0.1:8080\" {\n  route \"/api/*\" {\n    method \"GET\"\n    mirror \"http://127.0.0.1:9001\"\n    header \"X-A\" \"1\"\n    reverse_proxy \"http://127.0.0.1:9000\"\n  }\n}\n";
    let (count, rendered) = common::warnings("m.kdl", kdl);
    assert_eq!(count, 1, "{rendered}");
    assert!(
        rendered.contains("`header` here is a request matcher"),
        "{rendered}"
    );
    assert!(
        rendered.contains("give it a block: header { \"X-A\" \"1\" }"),
        "{rendered}"
    );
    assert!(rendered.contains("m.kdl:5:5"), "{rendered}");

    // A presence matcher has no block form to suggest.
    let kdl = "site \"127.0.0.1:8080\" {\n  route \"/*\" {\n    header { \"X-B\" \"2\"; }\n    header \"Authorization\"\n    respond 200\n  }\n}\n";
    let (count, rendered) = common::warnings("p.kdl", kdl);
    assert_eq!(count, 1, "{rendered}");
    assert!(rendered.contains("move it above `header`"), "{rendered}");
    assert!(!rendered.contains("give it a block"), "{rendered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_matching_route_wins() {
    let teebox = routing_site().await;
    let resp = Client::http1().get(&url(&teebox, "/dir/special")).await;
    assert_eq!(resp.body, "dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_pattern_matches_only_that_path() {
    let teebox = routing_site().await;
    let client = Client::http1();
    let resp = client.get(&url(&teebox, "/exact?q=1")).await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "exact")
    );
    for path in ["/exact/", "/exact/x", "/exactly"] {
        let resp = client.get(&url(&teebox, path)).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_pattern_matches_everything_under_it() {
    let teebox = routing_site().await;
    let client = Client::http1();
    for path in ["/dir/", "/dir/a", "/dir/a/b/c?d=e"] {
        let resp = client.get(&url(&teebox, path)).await;
        assert_eq!(resp.body, "dir", "{path}");
    }
    let resp = client.get(&url(&teebox, "/dir")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_method_matcher_admits_only_its_methods() {
    let teebox = routing_site().await;
    let client = Client::http1();
    for (method, expected) in [
        (Method::POST, "write"),
        (Method::PUT, "write"),
        (Method::GET, "read"),
        (Method::DELETE, "read"),
    ] {
        let resp = client
            .request(method.clone(), &url(&teebox, "/m/x"), body::empty())
            .await;
        assert_eq!(resp.body, expected, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_matcher_checks_the_value_or_presence() {
    let teebox = routing_site().await;
    let client = Client::http1();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("x-canary", "1")], "canary"),
        (&[("x-canary", "0")], "plain"),
        (&[("x-any", "whatever")], "has x-any"),
        (&[], "plain"),
    ];
    for (headers, expected) in cases {
        let mut request = req("GET", &url(&teebox, "/h/x"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let resp = client
            .send(request.body(body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.body, expected, "{headers:?}");
    }
}

/// `GET path` (sent as written: hyper neither resolves dot segments nor
/// decodes escapes); returns the status and the body as text.
async fn status_and_body(teebox: &Running, path: &str) -> (StatusCode, String) {
    let resp = Client::http1().get(&url(teebox, path)).await;
    (resp.status, resp.text())
}

/// The `curl --path-as-is http://H/public/../admin` hole: routes match the
/// normalised path, so dot segments (plain or percent-encoded) cannot climb
/// out of a prefix route into what a later route guards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dot_segments_cannot_climb_out_of_a_prefix_route() {
    let backend = Backend::ok().await;
    let teebox = start(&format!(
        r#"
        site "127.0.0.1:0" {{
            route "/public/*" {{ reverse_proxy "{}"; }}
            route "/*" {{ respond 403 "denied\n"; }}
        }}
        "#,
        backend.url()
    ))
    .await;
    for path in [
        "/public/../admin",
        "/public/./../admin",
        "/public/a/../../admin?x=1",
        "/public/%2e%2e/admin",
        "/public/.%2E/admin",
        "/public/../../../../admin",
        "/public//../admin",
    ] {
        assert_eq!(
            status_and_body(&teebox, path).await,
            (StatusCode::FORBIDDEN, "denied\n".to_string()),
            "{path}"
        );
    }
    assert_eq!(backend.count(), 0, "{:#?}", backend.requests());
}

/// The normalised path only picks the route: what goes upstream is the
/// request target exactly as the client sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backend_receives_the_raw_path_of_a_normalised_match() {
    let backend = Backend::ok().await;
    let teebox = start(&format!(
        r#"
        site "127.0.0.1:0" {{
            route "/public/*" {{ reverse_proxy "{}"; }}
            route "/*" {{ respond 403 "denied\n"; }}
        }}
        "#,
        backend.url()
    ))
    .await;
    let paths = [
        "/public/a/../b?q=%2e%2e",
        "/public/./x",
        "/public//x",
        "/%70ublic/x",
        "/public/%2E%2E%2Fadmin",
        "/public/..%2Fadmin",
    ];
    for path in paths {
        assert_eq!(
            status_and_body(&teebox, path).await,
            (StatusCode::OK, "ok".to_string()),
            "{path}"
        );
    }
    let got: Vec<String> = backend
        .wait_for(paths.len())
        .await
        .iter()
        .map(|r| r.path_and_query().to_string())
        .collect();
    assert_eq!(got, paths);
}

/// The `/%61dmin` hole: escapes are decoded and repeated slashes merged
/// before matching, so they cannot dodge an exact route; `%2F` and `%25`
/// stay encoded, so they neither split a segment nor decode twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn escapes_and_repeated_slashes_cannot_dodge_an_exact_route() {
    let backend = Backend::ok().await;
    let teebox = start(&format!(
        r#"
        site "127.0.0.1:0" {{
            route "/admin" {{ respond 403 "admin is closed\n"; }}
            route "/*" {{ reverse_proxy "{}"; }}
        }}
        "#,
        backend.url()
    ))
    .await;
    for path in [
        "/admin",
        "/%61dmin",
        "/%61%64%6D%69%6E?x=1",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/x/%2e%2e//admin",
    ] {
        assert_eq!(
            status_and_body(&teebox, path).await,
            (StatusCode::FORBIDDEN, "admin is closed\n".to_string()),
            "{path}"
        );
    }
    assert_eq!(backend.count(), 0, "{:#?}", backend.requests());

    // Not `/admin` once normalised: proxied, as sent.
    let others = [
        "/%2561dmin",
        "/admin%2F",
        "/adm%2Fin",
        "/admin/",
        "/%zzadmin",
    ];
    for path in others {
        assert_eq!(
            status_and_body(&teebox, path).await,
            (StatusCode::OK, "ok".to_string()),
            "{path}"
        );
    }
    let got: Vec<String> = backend
        .wait_for(others.len())
        .await
        .iter()
        .map(|r| r.path_and_query().to_string())
        .collect();
    assert_eq!(got, others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_matching_route_gives_404() {
    let teebox = routing_site().await;
    let resp = Client::http1().get(&url(&teebox, "/nothing/here")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.body, "404 Not Found\n");
}

// ---------------------------------------------------------------------------
// Sites

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_host_header_picks_the_site_on_a_shared_address() {
    let teebox = start(
        r#"
        site "127.0.0.1:0" {
            host "a.test"
            route "/*" { respond 200 "site a"; }
        }
        site "127.0.0.1:0" {
            host "*.b.test"
            route "/*" { respond 200 "site b"; }
        }
        site "127.0.0.1:0" {
            route "/*" { respond 200 "catch-all"; }
        }
        "#,
    )
    .await;
    assert_eq!(
        teebox.bound().len(),
        1,
        "the three sites share one listener"
    );
    for (host, expected) in [
        ("a.test", "site a"),
        ("A.Test:8080", "site a"),
        ("a.test.", "site a"),
        ("x.b.test", "site b"),
        ("x.b.test:1234", "site b"),
        ("b.test", "catch-all"),
        ("x.y.b.test", "catch-all"),
        ("other.test", "catch-all"),
        ("127.0.0.1", "catch-all"),
    ] {
        let resp = get_with_host(&teebox, "/", host).await;
        assert_eq!(resp.body, expected, "Host: {host}");
    }
}

/// Caddy's rule: the most specific host wins, not the first site in the
/// file. An exact name beats a wildcard listed before it; a wildcard beats
/// the catch-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_host_wins_over_a_wildcard_listed_before_it() {
    let teebox = start(
        r#"
        site "127.0.0.1:0" {
            route "/*" { respond 200 "catch-all"; }
        }
        site "127.0.0.1:0" {
            host "*.example.test"
            route "/*" { respond 200 "wildcard"; }
        }
        site "127.0.0.1:0" {
            host "other.test" "api.example.test"
            route "/*" { respond 200 "api"; }
        }
        "#,
    )
    .await;
    for (host, expected) in [
        ("api.example.test", "api"),
        ("API.Example.Test:8080", "api"),
        ("api.example.test.", "api"),
        ("other.test", "api"),
        ("www.example.test", "wildcard"),
        ("apix.example.test", "wildcard"),
        ("example.test", "catch-all"),
        ("x.api.example.test", "catch-all"),
    ] {
        let resp = get_with_host(&teebox, "/", host).await;
        assert_eq!(resp.body, expected, "Host: {host}");
    }
}

/// RFC 9112 §3.2.2: with an absolute-form request target, the target's
/// host counts and the `Host` header is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absolute_form_target_picks_the_site_by_its_own_host() {
    let teebox = start(
        r#"
        site "127.0.0.1:0" {
            host "a.test"
            route "/*" { respond 200 "site a"; }
        }
        site "127.0.0.1:0" {
            route "/*" { respond 200 "catch-all"; }
        }
        "#,
    )
    .await;
    let outcome = raw::exchange(
        teebox.addr(),
        b"GET http://a.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(outcome.response().body, b"site a", "{}", outcome.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_no_site_claims_gets_404_without_a_catch_all() {
    let teebox = start(
        r#"
        site "127.0.0.1:0" {
            host "a.test"
            route "/*" { respond 200 "site a"; }
        }
        "#,
    )
    .await;
    let resp = get_with_host(&teebox, "/", "a.test").await;
    assert_eq!(resp.body, "site a");
    let resp = get_with_host(&teebox, "/", "other.test").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_log_writes_one_line_per_request_with_status_and_bytes() {
    let dir = TempDir::new("access-log");
    let teebox = start_in(
        r#"
        site "127.0.0.1:0" {
            access_log "access.log"
            route "/hello" { respond 200 "hello\n"; }
            route "/teapot" { respond 418 "short and stout\n"; }
        }
        "#,
        dir.path(),
    )
    .await;
    let client = Client::http1();
    let hello = client.get(&url(&teebox, "/hello?x=1")).await;
    assert_eq!(hello.status, StatusCode::OK);
    let posted = client
        .request(Method::POST, &url(&teebox, "/hello"), full("ignored"))
        .await;
    assert_eq!(posted.status, StatusCode::OK);
    let teapot = client.get(&url(&teebox, "/teapot")).await;
    assert_eq!(teapot.status.as_u16(), 418);
    let missing = client.get(&url(&teebox, "/missing")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let path = dir.join("access.log");
    let read_lines = || -> Vec<String> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    eventually("four access log lines", || read_lines().len() >= 4).await;
    let lines = read_lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for expected in [
        "\"GET /hello?x=1 HTTP/1.1\" 200 6 ",
        "\"POST /hello HTTP/1.1\" 200 6 ",
        "\"GET /teapot HTTP/1.1\" 418 16 ",
        "\"GET /missing HTTP/1.1\" 404 14 ",
    ] {
        let matching = lines.iter().filter(|l| l.contains(expected)).count();
        assert_eq!(
            matching, 1,
            "expected one line with {expected:?} in {lines:#?}"
        );
    }
    for line in &lines {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    }
}

/// HTTP/2 has no `Host` header, only `:authority`: the access log's host is
/// the request's authority when it has one, else `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_log_host_is_the_authority_over_http2_and_host_over_http1() {
    let dir = TempDir::new("access-log-h2");
    let teebox = start_in(
        r#"
        global { log format="json"; }
        site "127.0.0.1:0" {
            access_log "access.log"
            route "/h2" { respond 200 "over h2\n"; }
            route "/h1" { respond 200 "over h1\n"; }
        }
        "#,
        dir.path(),
    )
    .await;
    let h2 = Client::h2c().get(&url(&teebox, "/h2?x=1")).await;
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert_eq!(
        (h2.status, h2.text().as_str()),
        (StatusCode::OK, "over h2\n")
    );
    let h1 = get_with_host(&teebox, "/h1", "named.test:8080").await;
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!(h1.body, "over h1\n");

    let path = dir.join("access.log");
    let read_lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    eventually("two access log lines", || read_lines().len() >= 2).await;
    let lines = read_lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let line = |uri: &str| {
        lines
            .iter()
            .find(|l| l["uri"] == uri)
            .unwrap_or_else(|| panic!("no line for {uri} in {lines:#?}"))
    };
    let h2_line = line("/h2?x=1");
    assert_eq!(h2_line["proto"], "HTTP/2.0");
    assert_eq!(h2_line["host"], teebox.addr().to_string());
    assert_eq!(h2_line["status"], 200);
    assert_eq!(h2_line["bytes"], 8);
    let h1_line = line("/h1");
    assert_eq!(h1_line["proto"], "HTTP/1.1");
    assert_eq!(h1_line["host"], "named.test:8080");
}

// ---------------------------------------------------------------------------
// Malformed requests

/// A proxy to a recording backend, for checking that bad requests never
/// reach it.
async fn guarded_backend() -> (Backend, Running) {
    let backend = Backend::ok().await;
    let teebox = start_proxy(&[backend.url()], "").await;
    (backend, teebox)
}

/// A well-formed request on a new connection still gets through.
async fn assert_still_serves(teebox: &Running, backend: &Backend, before: usize) {
    let outcome = raw::exchange(
        teebox.addr(),
        b"GET /after HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let resp = outcome.response();
    assert_eq!(resp.status, 200, "{}", outcome.text());
    assert_eq!(resp.body, b"ok");
    let got = backend.wait_for(before + 1).await;
    assert_eq!(got.len(), before + 1);
    assert_eq!(got[before].path_and_query(), "/after");
}

/// Sends `request` raw; asserts `status` comes back, the connection is
/// closed, and the backend saw nothing; then that a good request works.
async fn assert_rejected(request: &[u8], status: u16) {
    let (backend, teebox) = guarded_backend().await;
    let outcome = raw::exchange(teebox.addr(), request).await;
    assert_eq!(
        outcome.status(),
        Some(status),
        "response: {:?}, error: {:?}",
        outcome.text(),
        outcome.error
    );
    assert!(outcome.closed, "connection left open after {status}");
    assert_eq!(outcome.responses(), 1);
    assert_eq!(backend.count(), 0, "{:#?}", backend.requests());
    assert_still_serves(&teebox, &backend, 0).await;
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_line_without_a_colon_gets_400_and_never_reaches_the_backend() {
    assert_rejected(
        b"GET /bad HTTP/1.1\r\nHost: x.test\r\nThisLineHasNoColon\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nul_byte_in_a_header_gets_400_and_never_reaches_the_backend() {
    assert_rejected(
        b"GET /bad HTTP/1.1\r\nHost: x.test\r\nX-Evil: a\0b\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_block_over_64_kib_gets_431_and_never_reaches_the_backend() {
    let mut request = b"GET /big HTTP/1.1\r\nHost: x.test\r\n".to_vec();
    for i in 0..2 {
        request.extend_from_slice(format!("X-Big-{i}: ").as_bytes());
        request.extend(vec![b'a'; 40 * 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    assert_rejected(&request, 431).await;
}

/// `Content-Length` plus `Transfer-Encoding: chunked` gets 400 and a closed
/// connection (RFC 9112 §6.1), although hyper would frame it by
/// `Transfer-Encoding` alone and hide `Content-Length` (teebox finds it in
/// the raw bytes, see `server::framing`): no upstream has to agree with
/// teebox on the framing, the bytes after the chunked body (a "smuggled"
/// request if framed by `Content-Length`) are never served, and the backend
/// gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_length_with_chunked_cannot_smuggle_a_request() {
    let (backend, teebox) = guarded_backend().await;
    let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x.test\r\n\r\n";
    let request = format!(
        "POST /cl-te HTTP/1.1\r\nHost: x.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let outcome = raw::exchange(teebox.addr(), request.as_bytes()).await;
    assert!(outcome.closed, "connection left open: {:?}", outcome.text());
    assert_eq!(outcome.responses(), 1, "{:?}", outcome.text());
    assert_eq!(outcome.status(), Some(400), "{:?}", outcome.text());
    // Give a smuggled request every chance to show up before counting.
    backend.assert_stays_at(0, Duration::from_millis(200)).await;
    assert_still_serves(&teebox, &backend, 0).await;
}

/// The same, when the request's first byte comes alone: "P" could start
/// the HTTP/2 preface, and the rest ("OST ...") must still be checked as
/// HTTP/1.1, its head timed, and the smuggled request never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_length_with_chunked_is_refused_after_a_lone_first_byte() {
    use tokio::io::AsyncWriteExt;
    let (backend, teebox) = guarded_backend().await;
    let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x.test\r\n\r\n";
    let rest = format!(
        "OST /cl-te HTTP/1.1\r\nHost: x.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"P").await.unwrap();
    // Two segments: give teebox the time to read the first on its own.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    let outcome = raw::read_to_close(&mut stream).await;
    assert!(outcome.closed, "connection left open: {:?}", outcome.text());
    assert_eq!(outcome.status(), Some(400), "{:?}", outcome.text());
    backend.assert_stays_at(0, Duration::from_millis(200)).await;
    assert_still_serves(&teebox, &backend, 0).await;
}

// ---------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    // The backend holds its answer until the test opens the gate: the
    // request is in flight for as long as the test needs, with no timing
    // guesswork.
    let gate = Gate::new();
    let backend = Backend::start(Reply::ok("slow but complete").hold(&gate)).await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let addr = teebox.addr();
    let slow_url = url(&teebox, "/slow");
    let in_flight = tokio::spawn(async move { Client::http1().get(&slow_url).await });
    backend.wait_for(1).await;

    let shutdown = tokio::spawn(teebox.shutdown(Duration::from_secs(5)));
    within("new connections to be refused", async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                // Queued before the listener closed: try again.
                Ok(stream) => drop(stream),
                // The handshake raced the listener's closing: try again.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(err) => panic!("connecting during shutdown: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!in_flight.is_finished(), "the held request ended early");
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request"
    );

    gate.open();
    let resp = within("the in-flight request", in_flight).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "slow but complete");
    let finished = within("shutdown", shutdown).await.unwrap();
    assert!(finished, "shutdown reported unfinished connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start(Reply::ok("hello")).await;
    let teebox = start_proxy(&[backend.url()], "").await;
    let mut stream = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    within("the response", async {
        while !seen.ends_with(b"hello") {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the response was complete");
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    // The connection is now idle and kept alive. Told to stop, it closes
    // without waiting out its idle timeout or the grace period.
    shutdown_closes_at_once(teebox, stream, "the idle connection to close").await;
}

/// Stops `teebox` with a long grace period and checks that `stream` is
/// closed well before it, without a byte sent.
async fn shutdown_closes_at_once(teebox: Running, mut stream: tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let finished = within("shutdown", teebox.shutdown(Duration::from_secs(60))).await;
    assert!(finished, "shutdown reported unfinished connections");
    let mut rest = Vec::new();
    within(what, stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
}

#[tokio::test]
async fn graceful_shutdown_closes_a_connection_that_has_sent_nothing_at_once() {
    let backend = Backend::start(Reply::ok("hello")).await;
    let teebox = start_proxy(&[backend.url()], "").await;
    // Connected, but not a byte sent: the server is still waiting to see
    // which protocol it speaks.
    let stream = tokio::net::TcpStream::connect(teebox.addr()).await.unwrap();
    // Served only once the connection was handed over: a request on a
    // second connection shows the first has been accepted too.
    let resp = Client::http1().get(&url(&teebox, "/")).await;
    assert_eq!(resp.status, 200);
    shutdown_closes_at_once(teebox, stream, "the silent connection to close").await;
}
