//! Property tests (proptest) for robustness against hostile input:
//!
//! - randomly edited copies of every `testdata/valid/*.kdl` are accepted or
//!   refused by `config::parse` without a panic, and rendering the
//!   diagnostics of a refusal does not panic either;
//! - randomly mutated raw HTTP/1.1 requests sent to a running teebox (a
//!   `mirror` then a `reverse_proxy`) never make it panic or stop serving,
//!   never get an answer that does not start with an HTTP/1.x status line,
//!   and never reach the primary or the shadow backend malformed (a method
//!   that is not a token, a path not starting with `/`, a body that does not
//!   match its `Content-Length`, both framings at once).
//!
//! Failing inputs are shrunk and printed; nothing is persisted to disk. Set
//! `PROPTEST_RNG_SEED` to replay one run, `PROPTEST_CASES` to change the
//! number of cases.

mod common;

use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use common::{raw, Backend, Recorded, Running};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use teebox::config::Style;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Proptest settings shared by both properties: `cases` (unless
/// `PROPTEST_CASES` says otherwise), no regression files, bounded shrinking.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Site files

const VALID_DIR: &str = "testdata/valid";

/// Where relative paths in the valid files (the TLS certificates) resolve.
fn valid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(VALID_DIR)
}

/// Every `testdata/valid/*.kdl` as (file name, text), sorted by name, read
/// once.
fn corpus() -> &'static [(String, String)] {
    static CORPUS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = valid_dir();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let mut files: Vec<(String, String)> = entries
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|x| x == "kdl"))
            .map(|path| {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, text)
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .kdl files in {}", dir.display());
        files
    })
}

/// Text the site-file edits insert: KDL punctuation and keywords, values of
/// the kinds the site file uses, and characters that are awkward to parse.
const KDL_FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "\"",
    "#",
    ";",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "\\",
    "\\\n",
    "=",
    "(",
    ")",
    "(t)",
    "/*",
    "*/",
    "//",
    "/-",
    "\"\"\"",
    "#\"",
    "\"#",
    "##\"",
    "#true",
    "#false",
    "#null",
    "#inf",
    "#-inf",
    "#nan",
    "true",
    "false",
    "null",
    "0",
    "-1",
    "0xC8",
    "0b2",
    "1_000",
    "1.5e3",
    "1e999",
    "18446744073709551616",
    "-9223372036854775809",
    "é",
    "日本語",
    "🦀",
    "\u{feff}",
    "\u{200b}",
    "\u{2028}",
    "\u{0}",
    "\u{7f}",
    "site",
    "route",
    "global",
    "admin",
    "mirror",
    "reverse_proxy",
    "respond",
    "header",
    "header_up",
    "rewrite",
    "tls",
    "access_log",
    "sample",
    "name",
    "max_body",
    "timeout",
    "*",
    "/*",
    "127.0.0.1:0",
    ":0",
    ":99999",
    "[::1]:0",
    "http://",
    "https://127.0.0.1:1",
    "1MiB",
    "2s",
    "0s",
    "0.25",
    "-0.5",
    "$2b$12$",
];

/// A short piece of text: a fragment, digits, or arbitrary characters.
fn kdl_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(KDL_FRAGMENTS).prop_map(str::to_owned),
        1 => "[0-9]{1,24}",
        1 => "[-+.0-9a-fA-FxXeE_]{1,12}",
        2 => "(?s).{0,16}",
    ]
}

/// One edit of a site file's bytes.
#[derive(Debug, Clone)]
enum KdlEdit {
    Delete {
        at: Index,
        len: usize,
    },
    Duplicate {
        from: Index,
        len: usize,
        to: Index,
    },
    Insert {
        at: Index,
        text: String,
    },
    SwapLines {
        a: Index,
        b: Index,
    },
    /// Replaces the contents of one `"..."` literal.
    ReplaceString {
        which: Index,
        text: String,
    },
}

fn kdl_edit() -> impl Strategy<Value = KdlEdit> {
    prop_oneof![
        1 => (any::<Index>(), 1usize..48).prop_map(|(at, len)| KdlEdit::Delete { at, len }),
        1 => (any::<Index>(), 1usize..48, any::<Index>())
            .prop_map(|(from, len, to)| KdlEdit::Duplicate { from, len, to }),
        2 => (any::<Index>(), kdl_text()).prop_map(|(at, text)| KdlEdit::Insert { at, text }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| KdlEdit::SwapLines { a, b }),
        2 => (any::<Index>(), kdl_text())
            .prop_map(|(which, text)| KdlEdit::ReplaceString { which, text }),
    ]
}

/// The content ranges (inside the quotes) of the `"..."` literals in
/// `bytes`, found by a simple scan that knows `\` escapes.
fn string_literals(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < bytes.len() && bytes[j] != b'"' {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        if j >= bytes.len() {
            break;
        }
        spans.push((start, j));
        i = j + 1;
    }
    spans
}

/// Applies `edits` in order to `text`'s bytes; a cut through a UTF-8
/// sequence becomes U+FFFD.
fn apply_kdl(text: &str, edits: &[KdlEdit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        let n = bytes.len();
        match edit {
            KdlEdit::Delete { at, len } if n > 0 => {
                let start = at.index(n);
                bytes.drain(start..(start + len).min(n));
            }
            KdlEdit::Duplicate { from, len, to } if n > 0 => {
                let start = from.index(n);
                let piece = bytes[start..(start + len).min(n)].to_vec();
                let at = to.index(n + 1);
                bytes.splice(at..at, piece);
            }
            KdlEdit::Insert { at, text } => {
                let at = at.index(n + 1);
                bytes.splice(at..at, text.bytes());
            }
            KdlEdit::SwapLines { a, b } => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let count = lines.len();
                lines.swap(a.index(count), b.index(count));
                bytes = lines.join(&b'\n');
            }
            KdlEdit::ReplaceString { which, text } => {
                let spans = string_literals(&bytes);
                if !spans.is_empty() {
                    let (start, end) = spans[which.index(spans.len())];
                    bytes.splice(start..end, text.bytes());
                }
            }
            KdlEdit::Delete { .. } | KdlEdit::Duplicate { .. } => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The starting point of the property: the files parse as they are (so the
/// base directory is right and every edit starts from a valid file).
#[test]
fn every_valid_site_file_parses_unedited() {
    for (name, text) in corpus() {
        if let Err(err) = teebox::config::parse(name, text, valid_dir(), teebox::handlers::REGISTRY)
        {
            panic!("{name} is refused:\n{}", err.render(Style::Plain));
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn edited_site_files_are_accepted_or_refused_without_panicking(
        file in 0..corpus().len(),
        edits in vec(kdl_edit(), 1..6),
    ) {
        let (name, original) = &corpus()[file];
        let text = apply_kdl(original, &edits);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            match teebox::config::parse("test.kdl", &text, valid_dir(), teebox::handlers::REGISTRY) {
                Ok(_) => None,
                Err(err) => Some(err.render(Style::Plain)),
            }
        }));
        match outcome {
            Ok(Some(rendered)) => prop_assert!(
                !rendered.trim().is_empty(),
                "{name} edited: refused with empty diagnostics:\n{text}"
            ),
            Ok(None) => {}
            Err(_) => prop_assert!(
                false,
                "parse or render panicked on {name} edited to:\n{text}\n--- escaped ---\n{text:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Requests

/// Well-formed requests the mutations start from; each asks to close.
const REQUESTS: &[&[u8]] = &[
    b"GET /get/path?q=1&r=two HTTP/1.1\r\nHost: a.test\r\nUser-Agent: props\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    b"POST /post HTTP/1.1\r\nHost: a.test\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
];

/// Bytes the request mutations insert.
const REQUEST_FRAGMENTS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\0",
    b" ",
    b"  ",
    b"\t",
    b":",
    b": ",
    b";",
    b",",
    b"/",
    b"?",
    b"#",
    b"%",
    b"%00",
    b"0",
    b"-1",
    b"ffffffffffffffffff",
    b"99999999999999999999",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\xc3\xa9",
    b"chunked",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 3, 4\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: keep-alive\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"Host: other.test\r\n",
    b" folded\r\n",
    b"GET /second HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"HTTP/1.0",
    b"http://a.test",
    b"*",
];

/// One edit of a request's bytes.
#[derive(Debug, Clone)]
enum RequestEdit {
    Flip {
        at: Index,
        mask: u8,
    },
    Set {
        at: Index,
        byte: u8,
    },
    Insert {
        at: Index,
        bytes: &'static [u8],
    },
    Delete {
        at: Index,
        len: usize,
    },
    /// Repeats one line of the head (request line or header field).
    DuplicateLine {
        which: Index,
    },
    Truncate {
        at: Index,
    },
}

fn request_edit() -> impl Strategy<Value = RequestEdit> {
    prop_oneof![
        1 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| RequestEdit::Flip { at, mask }),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| RequestEdit::Set { at, byte }),
        3 => (any::<Index>(), select(REQUEST_FRAGMENTS))
            .prop_map(|(at, bytes)| RequestEdit::Insert { at, bytes }),
        1 => (any::<Index>(), 1usize..24).prop_map(|(at, len)| RequestEdit::Delete { at, len }),
        2 => any::<Index>().prop_map(|which| RequestEdit::DuplicateLine { which }),
        1 => any::<Index>().prop_map(|at| RequestEdit::Truncate { at }),
    ]
}

/// A mutated request: which base request, and the edits applied in order.
#[derive(Clone)]
struct RequestCase {
    base: usize,
    edits: Vec<RequestEdit>,
}

impl RequestCase {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = REQUESTS[self.base].to_vec();
        for edit in &self.edits {
            let n = bytes.len();
            match edit {
                RequestEdit::Flip { at, mask } if n > 0 => bytes[at.index(n)] ^= mask,
                RequestEdit::Set { at, byte } if n > 0 => bytes[at.index(n)] = *byte,
                RequestEdit::Insert { at, bytes: piece } => {
                    let at = at.index(n + 1);
                    bytes.splice(at..at, piece.iter().copied());
                }
                RequestEdit::Delete { at, len } if n > 0 => {
                    let start = at.index(n);
                    bytes.drain(start..(start + len).min(n));
                }
                RequestEdit::DuplicateLine { which } => {
                    let lines = head_lines(&bytes);
                    if !lines.is_empty() {
                        let (start, end) = lines[which.index(lines.len())];
                        let line = bytes[start..end].to_vec();
                        bytes.splice(end..end, line);
                    }
                }
                RequestEdit::Truncate { at } => bytes.truncate(at.index(n + 1)),
                RequestEdit::Flip { .. } | RequestEdit::Set { .. } | RequestEdit::Delete { .. } => {
                }
            }
        }
        bytes
    }
}

impl fmt::Debug for RequestCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestCase")
            .field("base", &self.base)
            .field("edits", &self.edits)
            .field("bytes", &self.bytes().escape_ascii().to_string())
            .finish()
    }
}

fn request_case() -> impl Strategy<Value = RequestCase> {
    (0..REQUESTS.len(), vec(request_edit(), 1..4))
        .prop_map(|(base, edits)| RequestCase { base, edits })
}

/// The byte ranges of the head's lines, each with its CRLF (or up to the end
/// if the head is unfinished).
fn head_lines(bytes: &[u8]) -> Vec<(usize, usize)> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 2);
    let mut lines = Vec::new();
    let mut start = 0;
    while start < head_end {
        let end = bytes[start..head_end]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(head_end, |p| start + p + 2);
        lines.push((start, end));
        start = end;
    }
    lines
}

/// How long a case waits for more bytes before half-closing its side.
const QUIET: Duration = Duration::from_millis(150);
/// The bound on one case's connection.
const CASE_LIMIT: Duration = Duration::from_secs(5);

/// What came back on one connection.
struct Exchange {
    bytes: Vec<u8>,
    /// The server ended the connection within [`CASE_LIMIT`].
    closed: bool,
}

/// Writes `request` on a fresh connection and reads what comes back. A
/// mutated request may leave the server waiting for more (a truncated head,
/// a short body, keep-alive): after [`QUIET`] without a byte the client
/// half-closes, which ends any such wait, and reads on until the server
/// closes or [`CASE_LIMIT`] passes. (`raw::exchange` waits its full
/// `TIMEOUT` for those, too long for hundreds of cases.)
async fn send(addr: SocketAddr, request: &[u8]) -> Exchange {
    let deadline = Instant::now() + CASE_LIMIT;
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    // The server may answer and close before reading everything.
    let _ = tokio::time::timeout_at(deadline, stream.write_all(request)).await;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut half_closed = false;
    loop {
        let until = if half_closed {
            deadline
        } else {
            (Instant::now() + QUIET).min(deadline)
        };
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) if half_closed || Instant::now() >= deadline => {
                return Exchange {
                    bytes,
                    closed: false,
                }
            }
            Err(_) => {
                half_closed = true;
                let _ = stream.shutdown().await;
            }
        }
    }
}

/// Whether `bytes` (a non-empty answer) starts with `HTTP/1.1 NNN ` (or
/// `HTTP/1.0`, which hyper answers an HTTP/1.0 request with).
fn valid_status_line(bytes: &[u8], request: &[u8]) -> bool {
    let http10 = request.windows(8).any(|w| w == b"HTTP/1.0");
    let version_ok = bytes.starts_with(b"HTTP/1.1 ") || (http10 && bytes.starts_with(b"HTTP/1.0 "));
    version_ok
        && bytes.len() >= 13
        && (b'1'..=b'5').contains(&bytes[9])
        && bytes[10..12].iter().all(u8::is_ascii_digit)
        && matches!(bytes[12], b' ' | b'\r')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a request that reached a backend is well-formed. `whole` demands
/// that its body arrived complete; without it (the primary, to which
/// teebox streams the body) an aborted body is allowed, but never one longer
/// than its `Content-Length`.
fn check_recorded(r: &Recorded, whole: bool) -> Result<(), String> {
    let method = r.method.as_str();
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(format!("method {method:?} is not a token"));
    }
    if !r.path_and_query().starts_with('/') {
        return Err(format!(
            "path {:?} does not start with /",
            r.path_and_query()
        ));
    }
    let lengths: Vec<&[u8]> = r
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !lengths.is_empty() && r.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if whole {
        if let Some(err) = &r.body_error {
            return Err(format!("body incomplete: {err}"));
        }
    }
    if let Some(first) = lengths.first() {
        if lengths.iter().any(|v| v != first) {
            return Err(format!("conflicting Content-Length values {lengths:?}"));
        }
        let declared: u64 = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "Content-Length {:?} is not a number",
                    first.escape_ascii().to_string()
                )
            })?;
        let got = r.body.len() as u64;
        let fits = if r.body_error.is_none() {
            got == declared
        } else {
            got < declared
        };
        if !fits {
            return Err(format!("body of {got} bytes, Content-Length {declared}"));
        }
    }
    Ok(())
}

/// The checks above reject what they are meant to (so a green run means
/// something).
#[test]
fn the_request_checks_reject_what_they_should() {
    let recorded = |method: &str, uri: &str, headers: &[(&str, &str)], body: &str| Recorded {
        method: http::Method::from_bytes(method.as_bytes()).unwrap(),
        uri: uri.parse().unwrap(),
        version: http::Version::HTTP_11,
        headers: headers
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect(),
        body: body.to_owned().into(),
        body_error: None,
        trailers: None,
        conn: 0,
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
    };
    let good = recorded("POST", "/p?q", &[("content-length", "2")], "ok");
    assert_eq!(check_recorded(&good, true), Ok(()));
    let short = recorded("POST", "/p", &[("content-length", "3")], "ok");
    assert!(check_recorded(&short, false).is_err());
    let mut aborted = short.clone();
    aborted.body_error = Some("aborted".into());
    assert_eq!(check_recorded(&aborted, false), Ok(()));
    assert!(check_recorded(&aborted, true).is_err());
    let both = recorded(
        "POST",
        "/p",
        &[("content-length", "2"), ("transfer-encoding", "chunked")],
        "ok",
    );
    assert!(check_recorded(&both, false).is_err());
    assert!(check_recorded(&recorded("GET", "*", &[], ""), false).is_err());

    let get = REQUESTS[0];
    assert!(valid_status_line(b"HTTP/1.1 200 OK\r\n", get));
    assert!(valid_status_line(b"HTTP/1.1 400\r\n", get));
    assert!(!valid_status_line(b"HTTP/1.0 200 OK\r\n", get));
    assert!(valid_status_line(
        b"HTTP/1.0 200 OK\r\n",
        b"GET / HTTP/1.0\r\n\r\n"
    ));
    assert!(!valid_status_line(b"HTTP/1.1 2000 OK\r\n", get));
    assert!(!valid_status_line(b"HTTP/1.1 20", get));
    assert!(!valid_status_line(b"garbage", get));
}

/// Panics on teebox's threads (its serving and mirror workers) and on the
/// test's runtime threads, which run the backends and any task teebox
/// spawns there; tokio would otherwise swallow them.
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_for_server_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if name.starts_with("teebox-") || name.starts_with("props-rt") {
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("thread {name}: {info}"));
            }
            previous(info);
        }));
    });
}

fn take_server_panics() -> Vec<String> {
    std::mem::take(&mut *SERVER_PANICS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A proxy that mirrors everything, with a recording backend on each side.
struct Rig {
    teebox: Running,
    primary: Backend,
    shadow: Backend,
}

impl Rig {
    async fn start() -> Self {
        let primary = Backend::ok().await;
        let shadow = Backend::ok().await;
        let site = format!(
            "site \"127.0.0.1:0\" {{\n    route \"/*\" {{\n        mirror {:?}\n        reverse_proxy {:?}\n    }}\n}}\n",
            shadow.url(),
            primary.url()
        );
        let teebox = common::start(&site).await;
        Rig {
            teebox,
            primary,
            shadow,
        }
    }

    /// A well-formed request on a new connection gets the backend's answer.
    async fn still_serves(&self) -> Result<(), String> {
        let outcome = raw::exchange(
            self.teebox.addr(),
            b"GET /alive HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        match raw::parse_response(&outcome.bytes) {
            Some(resp) if resp.status == 200 && resp.body == b"ok" => Ok(()),
            _ => Err(format!(
                "a valid request was not served: {:?} (error: {:?})",
                outcome.text(),
                outcome.error
            )),
        }
    }
}

/// Checks the requests `backend` recorded from `*seen` on, and moves
/// `*seen` past them.
fn check_new(backend: &Backend, which: &str, whole: bool, seen: &mut usize) -> Result<(), String> {
    let requests = backend.requests();
    let new = requests.get(*seen..).unwrap_or_default();
    *seen = requests.len();
    for r in new {
        check_recorded(r, whole)
            .map_err(|why| format!("malformed request reached the {which}: {why}\n{r:#?}"))?;
    }
    Ok(())
}

/// How often (in cases) the run checks that a valid request still works.
const LIVENESS_EVERY: u32 = 25;

#[test]
fn mutated_requests_never_crash_the_server_or_reach_a_backend_malformed() {
    watch_for_server_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("props-rt")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rig = rt.block_on(Rig::start());
    let seen = Mutex::new((0usize, 0usize, 0u32, 0u32));

    let mut runner = TestRunner::new(config(300));
    let result = runner.run(&request_case(), |case| {
        let request = case.bytes();
        let exchange = rt.block_on(send(rig.teebox.addr(), &request));
        let mut seen = seen.lock().unwrap();
        let (primary_seen, shadow_seen, cases, unclosed) = &mut *seen;
        *cases += 1;
        *unclosed += u32::from(!exchange.closed);
        let panics = take_server_panics();
        prop_assert!(panics.is_empty(), "the server panicked: {panics:#?}");
        prop_assert!(
            exchange.bytes.is_empty() || valid_status_line(&exchange.bytes, &request),
            "answer does not start with a status line: {:?}",
            exchange.bytes.escape_ascii().to_string()
        );
        check_new(&rig.primary, "primary", false, primary_seen).map_err(TestCaseError::fail)?;
        check_new(&rig.shadow, "shadow", true, shadow_seen).map_err(TestCaseError::fail)?;
        if *cases % LIVENESS_EVERY == 0 {
            rt.block_on(rig.still_serves())
                .map_err(TestCaseError::fail)?;
        }
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => panic!("{why}\nminimal failing input: {case:#?}"),
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }

    // Whatever is still on its way (mirror copies) gets checked too.
    rt.block_on(async {
        rig.still_serves().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let (mut primary_seen, mut shadow_seen, cases, unclosed) = *seen.lock().unwrap();
    check_new(&rig.primary, "primary", false, &mut primary_seen).unwrap();
    check_new(&rig.shadow, "shadow", true, &mut shadow_seen).unwrap();
    let panics = take_server_panics();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
    eprintln!(
        "{cases} cases; {} reached the primary, {} the shadow; {unclosed} connection(s) still open after {CASE_LIMIT:?}",
        rig.primary.count(),
        rig.shadow.count()
    );
    rt.block_on(async move { drop(rig) });
}
