//! The raw-request corpus in `testdata/requests/`: each `NAME.http` is one
//! connection's bytes, sent as is over TCP to a teebox whose only route is
//! `mirror "<shadow>"` then `reverse_proxy "<primary>"` (both recording
//! backends); `NAME.expected` says what must happen.
//!
//! `NAME.expected` is one directive a line; `#` starts a comment line, blank
//! lines are ignored:
//!
//! ```text
//! status 400            first response's status; `200|400` lists alternatives
//! closed yes|no|any     whether teebox closed the connection after answering
//! responses 2           how many responses came back (default 1)
//! upstream none|one|two|any
//!                       complete requests that reach the primary AND the
//!                       shadow when teebox accepts (answers < 400); after a
//!                       reject (>= 400, or no answer) both must get none,
//!                       whatever this says; all-reject files say `none`
//! upstream_method get   \
//! upstream_path /x?y=1   } the primary's first request, and one of the
//!                          shadow's (copies come in any order); optional
//! upstream_body hello   /  rest of the line; `\r` `\n` `\t` `\\` escapes;
//!                          nothing after the keyword = empty body
//! ```
//!
//! A request an upstream saw cut off mid-body (teebox streamed it and then
//! abandoned it) is not counted as reaching it, only reported.
//!
//! Files whose expectation teebox does not meet yet are listed in
//! [`KNOWN_GAPS`]: reported, not failed; and a listed file that passes fails
//! the test, so the list stays honest. Run with `--nocapture` to see every
//! file's outcome.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, TIMEOUT};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DIR: &str = "testdata/requests";

/// Corpus files whose `.expected` teebox does not meet yet (see the report
/// the test prints for what it does instead).
const KNOWN_GAPS: &[&str] = &[
    // httparse knows only HTTP/1.0 and HTTP/1.1, so hyper answers 400 to an
    // HTTP/1.2 request (RFC 9110 §2.5 asks for it to be served as 1.1).
    "http_1_2_version",
];

/// After a complete response, how long the connection may stay silent before
/// it counts as left open.
const OPEN_QUIET: Duration = Duration::from_millis(500);

/// How long to watch an upstream for requests that should not come (or for
/// more than expected).
const UPSTREAM_QUIET: Duration = Duration::from_millis(200);

/// How many files run at once, each with its own teebox and backends.
const PARALLEL: usize = 8;

// ---------------------------------------------------------------------------
// The `.expected` format

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Yes,
    No,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Count(usize),
    Any,
}

#[derive(Debug)]
struct Spec {
    status: Vec<u16>,
    closed: Closed,
    responses: usize,
    upstream: Upstream,
    method: Option<String>,
    path: Option<String>,
    body: Option<Vec<u8>>,
}

fn parse_spec(text: &str) -> Result<Spec, String> {
    let (mut status, mut closed, mut upstream) = (None, None, None);
    let mut spec_responses = 1;
    let (mut method, mut path, mut body) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let bad = || format!("line {}: bad value in {line:?}", i + 1);
        match key {
            "status" => {
                let codes: Result<Vec<u16>, _> = value.split('|').map(str::parse).collect();
                status = Some(codes.map_err(|_| bad())?);
            }
            "closed" => {
                closed = Some(match value {
                    "yes" => Closed::Yes,
                    "no" => Closed::No,
                    "any" => Closed::Any,
                    _ => return Err(bad()),
                })
            }
            "responses" => spec_responses = value.parse().map_err(|_| bad())?,
            "upstream" => {
                upstream = Some(match value {
                    "none" => Upstream::Count(0),
                    "one" => Upstream::Count(1),
                    "two" => Upstream::Count(2),
                    "any" => Upstream::Any,
                    _ => return Err(bad()),
                })
            }
            "upstream_method" => method = Some(value.to_string()),
            "upstream_path" => path = Some(value.to_string()),
            "upstream_body" => body = Some(unescape(value).ok_or_else(bad)?),
            _ => return Err(format!("line {}: unknown directive {key:?}", i + 1)),
        }
    }
    let status = status.ok_or("no `status` line")?;
    let spec = Spec {
        closed: closed.ok_or("no `closed` line")?,
        upstream: upstream.ok_or("no `upstream` line")?,
        responses: spec_responses,
        status,
        method,
        path,
        body,
    };
    if spec.status.iter().all(|&s| s >= 400) && spec.upstream != Upstream::Count(0) {
        return Err("every status is a reject, so `upstream` must be `none`".into());
    }
    Ok(spec)
}

fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        out.push(match chars.next()? {
            'r' => b'\r',
            'n' => b'\n',
            't' => b'\t',
            '\\' => b'\\',
            _ => return None,
        });
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// The client side

struct Outcome {
    bytes: Vec<u8>,
    closed: bool,
    error: Option<String>,
}

/// Writes `request` and reads until the server closes the connection, or,
/// once a whole response has arrived, until it stays silent for
/// [`OPEN_QUIET`] (the connection then counts as open); [`TIMEOUT`] bounds
/// the whole exchange.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Outcome {
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        other => {
            return Outcome {
                bytes: Vec::new(),
                closed: false,
                error: Some(format!("connect failed: {other:?}")),
            }
        }
    };
    // teebox may answer and close before reading everything (an oversized
    // head): a failed write is not the end of the story.
    let write_error = match tokio::time::timeout(TIMEOUT, stream.write_all(request)).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(format!("write: {err}")),
        Err(_) => Some("write timed out".to_string()),
    };
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let mut wait = deadline.saturating_duration_since(now);
        if !split_responses(&bytes).is_empty() {
            wait = wait.min(OPEN_QUIET);
        }
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) => {
                return Outcome {
                    bytes,
                    closed: true,
                    error: write_error,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(err)) => {
                return Outcome {
                    bytes,
                    closed: true,
                    error: Some(format!("read: {err}")),
                }
            }
            Err(_) => {
                return Outcome {
                    bytes,
                    closed: false,
                    error: write_error,
                }
            }
        }
    }
}

/// The statuses of the complete responses at the start of `bytes`, in order
/// (a response framed by neither length nor chunks runs to the end).
fn split_responses(mut bytes: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    while let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let Some(status) = common::raw::status_of(bytes) else {
            break;
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
        let field = |name: &str| {
            head.split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let rest = &bytes[head_end + 4..];
        let body_len = if (100..200).contains(&status) || status == 204 || status == 304 {
            Some(0)
        } else if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            chunked_len(rest)
        } else if let Some(len) = field("content-length") {
            len.parse::<usize>().ok().filter(|&len| len <= rest.len())
        } else {
            Some(rest.len())
        };
        let Some(body_len) = body_len else {
            break;
        };
        statuses.push(status);
        bytes = &rest[body_len..];
    }
    statuses
}

/// The length of the complete chunked body (trailers included) at the start
/// of `bytes`, if it is all there.
fn chunked_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > bytes.len() {
            return None;
        }
    }
}

// ---------------------------------------------------------------------------
// One file

/// The requests an upstream received whole, and how many it saw cut off.
fn received(backend: &Backend) -> (Vec<common::Recorded>, usize) {
    let (whole, cut): (Vec<_>, Vec<_>) = backend
        .requests()
        .into_iter()
        .partition(|r| r.body_error.is_none());
    (whole, cut.len())
}

/// Polls until `backend` has received at least `n` whole requests or
/// `limit` passes.
async fn wait_whole(backend: &Backend, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while received(backend).0.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn describe(backend: &Backend) -> String {
    let (whole, cut) = received(backend);
    let mut text = whole.len().to_string();
    if cut > 0 {
        let _ = write!(text, " (+{cut} cut off)");
    }
    if let Some(first) = whole.first() {
        let _ = write!(
            text,
            " [{} {} body {:?}]",
            first.method,
            first.path_and_query(),
            String::from_utf8_lossy(&first.body)
        );
    }
    text
}

/// Where `request` differs from the `upstream_*` lines of `spec`.
fn mismatches(spec: &Spec, request: &common::Recorded) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(method) = &spec.method {
        if request.method.as_str() != method {
            out.push(format!(
                "method {:?}, expected {method:?}",
                request.method.as_str()
            ));
        }
    }
    if let Some(path) = &spec.path {
        if request.path_and_query() != path {
            out.push(format!(
                "path {:?}, expected {path:?}",
                request.path_and_query()
            ));
        }
    }
    if let Some(body) = &spec.body {
        if request.body.as_ref() != body.as_slice() {
            out.push(format!(
                "body {:?}, expected {:?}",
                String::from_utf8_lossy(&request.body),
                String::from_utf8_lossy(body)
            ));
        }
    }
    out
}

struct FileResult {
    name: String,
    /// What teebox did, on one line.
    actual: String,
    /// Where that differs from `.expected`; empty if it does not.
    problems: Vec<String>,
}

async fn run_file(name: String) -> FileResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let mut problems = Vec::new();
    let spec = std::fs::read_to_string(root.join(format!("{name}.expected")))
        .map_err(|e| format!("cannot read {name}.expected: {e}"))
        .and_then(|text| parse_spec(&text).map_err(|e| format!("{name}.expected: {e}")));
    let request = std::fs::read(root.join(format!("{name}.http")));
    let (spec, request) = match (spec, request) {
        (Ok(spec), Ok(request)) => (spec, request),
        (spec, request) => {
            problems.extend(spec.err());
            problems.extend(
                request
                    .err()
                    .map(|e| format!("cannot read {name}.http: {e}")),
            );
            return FileResult {
                name,
                actual: "not run".into(),
                problems,
            };
        }
    };

    let primary = Backend::ok().await;
    let shadow = Backend::ok().await;
    let teebox = common::start(&format!(
        "site \"127.0.0.1:0\" {{\n    route \"/*\" {{\n        mirror {:?}\n        reverse_proxy {:?}\n    }}\n}}\n",
        shadow.url(),
        primary.url()
    ))
    .await;

    let outcome = exchange(teebox.addr(), &request).await;
    let statuses = split_responses(&outcome.bytes);
    let status = common::raw::status_of(&outcome.bytes);
    match status {
        Some(s) if spec.status.contains(&s) => {}
        _ => problems.push(format!(
            "status: expected {:?}, got {status:?}",
            spec.status
        )),
    }
    let closed_ok = match spec.closed {
        Closed::Yes => outcome.closed,
        Closed::No => !outcome.closed,
        Closed::Any => true,
    };
    if !closed_ok {
        problems.push(format!(
            "closed: expected {:?}, got {}",
            spec.closed,
            if outcome.closed { "yes" } else { "no" }
        ));
    }
    if statuses.len() != spec.responses {
        problems.push(format!(
            "responses: expected {}, got {} complete ({statuses:?})",
            spec.responses,
            statuses.len()
        ));
    }

    // A reject (or no answer at all) must not reach either upstream.
    let accepted = status.is_some_and(|s| s < 400);
    let want = if accepted {
        spec.upstream
    } else {
        Upstream::Count(0)
    };
    if let Upstream::Count(n) = want {
        if n > 0 {
            wait_whole(&primary, n, TIMEOUT).await;
            wait_whole(&shadow, n, TIMEOUT).await;
        }
        // Give a late (or smuggled) request the chance to show up.
        tokio::time::sleep(UPSTREAM_QUIET).await;
        for (which, backend) in [("primary", &primary), ("shadow", &shadow)] {
            let (whole, _) = received(backend);
            if whole.len() != n {
                problems.push(format!(
                    "{which}: expected {n} whole request(s), got {}",
                    describe(backend)
                ));
                continue;
            }
            if whole.is_empty() {
                continue;
            }
            // Copies reach the shadow in no particular order: the primary's
            // first request is checked, and at the shadow any one may match.
            let candidates = if which == "primary" {
                &whole[..1]
            } else {
                &whole[..]
            };
            let mismatches: Vec<Vec<String>> = candidates
                .iter()
                .map(|request| mismatches(&spec, request))
                .collect();
            if !mismatches.iter().any(Vec::is_empty) {
                for mismatch in &mismatches[0] {
                    problems.push(format!("{which}: {mismatch}"));
                }
            }
        }
    }

    let mut actual = format!(
        "status {}, closed {}, responses {:?}, primary {}, shadow {}",
        status.map_or("none".to_string(), |s| s.to_string()),
        if outcome.closed { "yes" } else { "no" },
        statuses,
        describe(&primary),
        describe(&shadow),
    );
    if let Some(error) = &outcome.error {
        let _ = write!(actual, ", error {error:?}");
    }
    if !problems.is_empty() {
        let head: String = String::from_utf8_lossy(&outcome.bytes)
            .chars()
            .take(200)
            .collect();
        let _ = write!(actual, "\n    response: {head:?}");
    }
    drop(teebox);
    FileResult {
        name,
        actual,
        problems,
    }
}

/// The names in `DIR` ending in `.ext`, without the extension.
fn stems(ext: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|x| x == ext))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_raw_request_gets_its_expected_outcome() {
    let requests = stems("http");
    let expected = stems("expected");
    assert!(
        requests.len() >= 32,
        "only {} files in {DIR}",
        requests.len()
    );
    let mut failures = Vec::new();
    for stem in requests.symmetric_difference(&expected) {
        failures.push(format!(
            "{DIR}/{stem}: needs both {stem}.http and {stem}.expected"
        ));
    }
    for gap in KNOWN_GAPS {
        if !requests.contains(*gap) {
            failures.push(format!(
                "KNOWN_GAPS names {gap:?}, which is not a file in {DIR}"
            ));
        }
    }

    let mut results: Vec<FileResult> = futures_util::stream::iter(requests.clone())
        .map(run_file)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.sort_by(|a, b| a.name.cmp(&b.name));

    let mut report = String::new();
    for result in &results {
        let gap = KNOWN_GAPS.contains(&result.name.as_str());
        let verdict = match (result.problems.is_empty(), gap) {
            (true, false) => "ok",
            (false, true) => "KNOWN GAP",
            (true, true) => "FIXED (remove from KNOWN_GAPS)",
            (false, false) => "FAIL",
        };
        let _ = writeln!(report, "{}: {verdict}: {}", result.name, result.actual);
        for problem in &result.problems {
            let _ = writeln!(report, "    - {problem}");
        }
        match (result.problems.is_empty(), gap) {
            (false, false) => failures.push(format!(
                "{DIR}/{}.http:\n    {}\n    {}",
                result.name,
                result.problems.join("\n    "),
                result.actual
            )),
            (true, true) => failures.push(format!(
                "{DIR}/{}.http now meets its expectation: remove it from KNOWN_GAPS",
                result.name
            )),
            _ => {}
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "\n{} problem(s) with the raw-request corpus:\n\n{}\n",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// The runner's own parsing

#[test]
fn split_responses_counts_only_complete_ones() {
    let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\n\r\n";
    assert_eq!(split_responses(two), vec![200, 404]);
    assert_eq!(split_responses(&two[..two.len() - 2]), vec![200]);
    assert_eq!(
        split_responses(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok"),
        Vec::<u16>::new()
    );
    assert_eq!(split_responses(b"HTTP/1.1 400 Bad"), Vec::<u16>::new());
}

#[test]
fn spec_lines_parse_and_reject_contradictions() {
    let spec = parse_spec(
        "# c\n\nstatus 200|400\nclosed any\nupstream two\nresponses 2\nupstream_body a\\r\\n\\\\\n",
    )
    .unwrap();
    assert_eq!(spec.status, vec![200, 400]);
    assert_eq!(spec.closed, Closed::Any);
    assert_eq!(spec.upstream, Upstream::Count(2));
    assert_eq!(spec.responses, 2);
    assert_eq!(spec.body.as_deref(), Some(&b"a\r\n\\"[..]));
    let empty = parse_spec("status 200\nclosed no\nupstream one\nupstream_body\n").unwrap();
    assert_eq!(empty.body.as_deref(), Some(&b""[..]));
    assert!(parse_spec("status 400\nclosed yes\nupstream one\n").is_err());
    assert!(parse_spec("status 400\nclosed yes\n").is_err());
    assert!(parse_spec("status 400\nclosed maybe\nupstream none\n").is_err());
    assert!(parse_spec("status 400\nclosed yes\nupstream none\nbogus 1\n").is_err());
}
