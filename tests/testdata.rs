//! The site-file corpus in `testdata/`: every `invalid/NAME.kdl` must be
//! refused by `teebox validate` with exactly the diagnostics in
//! `invalid/NAME.expected`, and every `valid/NAME.kdl` must be accepted.
//!
//! After an intended change to the diagnostics, regenerate the `.expected`
//! files with `TEEBOX_BLESS=1 cargo test --test testdata` and review the diff.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const INVALID_DIR: &str = "testdata/invalid";
const VALID_DIR: &str = "testdata/valid";

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn blessing() -> bool {
    std::env::var_os("TEEBOX_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Runs `teebox validate PATH` from the crate root, so that diagnostics name
/// the file as `testdata/...`, whatever directory the test runs in.
fn validate(path: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teebox"))
        .arg("validate")
        .arg(path)
        .current_dir(crate_root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run teebox validate {path}: {e}"))
}

/// The file names in `dir` (relative to the crate root) ending in `.ext`,
/// without the extension, sorted.
fn stems(dir: &str, ext: &str) -> Vec<String> {
    let entries = std::fs::read_dir(crate_root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"));
    let mut stems: Vec<String> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
                .path()
        })
        .filter(|path| path.extension().is_some_and(|x| x == ext))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    stems.sort();
    stems
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A line diff (longest common subsequence) of `expected` against `actual`:
/// ` ` both, `-` only expected, `+` only actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(the two differ in the final newline)\n");
    }
    out
}

#[test]
fn every_invalid_file_has_expected_output() {
    let kdl = stems(INVALID_DIR, "kdl");
    let expected = stems(INVALID_DIR, "expected");
    assert!(!kdl.is_empty(), "no .kdl files in {INVALID_DIR}");
    let mut problems = Vec::new();
    if !blessing() {
        for stem in kdl.iter().filter(|s| !expected.contains(s)) {
            problems.push(format!(
                "{INVALID_DIR}/{stem}.kdl has no {stem}.expected (run with TEEBOX_BLESS=1 to write it)"
            ));
        }
    }
    for stem in expected.iter().filter(|s| !kdl.contains(s)) {
        problems.push(format!(
            "{INVALID_DIR}/{stem}.expected has no {stem}.kdl (remove it)"
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn invalid_files_give_expected_diagnostics() {
    let stems = stems(INVALID_DIR, "kdl");
    assert!(!stems.is_empty(), "no .kdl files in {INVALID_DIR}");
    let bless = blessing();
    let mut failures = Vec::new();
    for stem in &stems {
        let path = format!("{INVALID_DIR}/{stem}.kdl");
        let expected_path: PathBuf = crate_root().join(format!("{INVALID_DIR}/{stem}.expected"));
        let output = validate(&path);
        let stderr = text(&output.stderr);
        let stdout = text(&output.stdout);
        if output.status.code() != Some(1) {
            failures.push(format!(
                "{path}: expected exit status 1 (invalid), got {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                output.status.code()
            ));
            continue;
        }
        if !stdout.is_empty() {
            failures.push(format!(
                "{path}: expected nothing on stdout, got:\n{stdout}"
            ));
        }
        if bless {
            std::fs::write(&expected_path, &stderr)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", expected_path.display()));
            continue;
        }
        let expected = match std::fs::read_to_string(&expected_path) {
            Ok(expected) => expected,
            Err(e) => {
                failures.push(format!(
                    "{path}: cannot read {stem}.expected ({e}); run with TEEBOX_BLESS=1 to write it"
                ));
                continue;
            }
        };
        if stderr != expected {
            failures.push(format!(
                "{path}: stderr differs from {stem}.expected (- expected, + actual):\n{}",
                diff(&expected, &stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "\n{} of {} invalid files failed (TEEBOX_BLESS=1 regenerates the .expected files):\n\n{}",
        failures.len(),
        stems.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_files_are_valid() {
    let stems = stems(VALID_DIR, "kdl");
    assert!(!stems.is_empty(), "no .kdl files in {VALID_DIR}");
    let mut failures = Vec::new();
    for stem in &stems {
        let path = format!("{VALID_DIR}/{stem}.kdl");
        let output = validate(&path);
        let stdout = text(&output.stdout);
        let stderr = text(&output.stderr);
        let want = format!("{path}: valid\n");
        if output.status.code() != Some(0) || stdout != want || !stderr.is_empty() {
            failures.push(format!(
                "{path}: expected exit status 0 and stdout {want:?} with nothing on stderr, \
                 got {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                output.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn unreadable_file_exits_2() {
    for path in ["testdata/no-such-file.kdl", "testdata"] {
        let output = validate(path);
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{path}: expected exit status 2 (unreadable); stderr:\n{stderr}"
        );
        assert!(
            stderr.starts_with(&format!("teebox: cannot read {path}: ")),
            "{path}: unexpected stderr:\n{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{path}: expected nothing on stdout"
        );
    }
}

/// Copies `from` into `to`, recursively (the corpus is a few small files).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for entry in
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()))
    {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", entry.path().display()));
        }
    }
}

/// The file with every listen address (sites, `http_redirect`, the admin
/// endpoint) moved to 127.0.0.1: each address to a port of its own, one
/// the system just handed out (port 0 stays 0), so that addresses the file
/// tells apart stay apart. Text that is not KDL is left as it is.
fn on_loopback(text: &str) -> String {
    // teebox's own reading first: it refuses nesting kdl could not survive.
    if teebox::config::format("f.kdl", text).is_err() {
        return text.to_string();
    }
    let Ok(doc) = text.parse::<kdl::KdlDocument>() else {
        return text.to_string();
    };
    let args = |node: &kdl::KdlNode| -> Vec<kdl::KdlEntry> {
        node.entries()
            .iter()
            .filter(|e| e.name().is_none())
            .cloned()
            .collect()
    };
    let children = |node: &kdl::KdlNode| -> Vec<kdl::KdlNode> {
        node.children()
            .map(|d| d.nodes().to_vec())
            .unwrap_or_default()
    };
    let mut entries = Vec::new();
    for node in doc.nodes() {
        match node.name().value() {
            "site" => {
                entries.extend(args(node));
                for child in children(node) {
                    if child.name().value() == "http_redirect" {
                        entries.extend(args(&child));
                    }
                }
            }
            "global" => {
                for child in children(node) {
                    if child.name().value() == "admin" {
                        entries.extend(args(&child).into_iter().take(1));
                    }
                }
            }
            _ => {}
        }
    }
    let mut ports: Vec<(std::net::SocketAddr, u16)> = Vec::new();
    let mut edits = Vec::new();
    for entry in &entries {
        let Ok(addr) = teebox::config::value::listen_address(entry) else {
            continue;
        };
        let port = match ports.iter().find(|(a, _)| *a == addr) {
            _ if addr.port() == 0 => 0,
            Some((_, port)) => *port,
            None => {
                let free = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port on 127.0.0.1")
                    .port();
                ports.push((addr, free));
                free
            }
        };
        edits.push((
            teebox::config::value::value_span(entry),
            format!("\"127.0.0.1:{port}\""),
        ));
    }
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.offset()));
    let mut out = text.to_string();
    for (span, with) in edits {
        out.replace_range(span.offset()..span.offset() + span.len(), &with);
    }
    out
}

/// How `teebox run` ended up with a site file.
enum Ran {
    /// It logged that it serves (and was then stopped).
    Served { stderr: String },
    /// It exited; `stderr` is all it wrote.
    Exited { code: Option<i32>, stderr: String },
    /// Neither within the wait.
    Hung { stderr: String },
}

/// Runs `teebox run PATH` from `dir` until it serves or exits, within a
/// bounded wait, and stops it if it serves.
fn run(dir: &Path, path: &str) -> Ran {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_teebox"))
        .arg("run")
        .arg(path)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        // "teebox serving" is an info line, whatever level the file asks for.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run teebox run {path}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut reader = std::io::BufReader::new(stderr);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            if line.contains("teebox serving") {
                let _ = tx.send(None);
            }
            all.push_str(&line);
            line.clear();
        }
        let _ = tx.send(Some(all));
    });
    let mut served = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(None) => {
                served = true;
                let _ = child.kill();
            }
            Ok(Some(stderr)) => {
                let status = child.wait().expect("teebox run ends once killed or done");
                return match served {
                    true => Ran::Served { stderr },
                    false => Ran::Exited {
                        code: status.code(),
                        stderr,
                    },
                };
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = rx
                    .recv_timeout(Duration::from_secs(5))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                return Ran::Hung { stderr };
            }
        }
    }
}

/// `teebox validate` and `teebox run` judge every file in testdata/ alike:
/// what validate refuses, run refuses with the very same diagnostics and
/// status before it binds anything; what validate accepts, run serves.
/// The one difference allowed is an address run cannot bind ("cannot
/// listen"). Both read a copy of the corpus whose listen addresses are
/// moved to ports of 127.0.0.1 (see [`on_loopback`]), so that run never
/// takes a fixed port or another interface, and writes its logs and
/// records in the copy.
#[test]
fn run_refuses_exactly_what_validate_refuses() {
    let copy = common::TempDir::new("verdict");
    let mut files = Vec::new();
    for dir in [VALID_DIR, INVALID_DIR] {
        let name = Path::new(dir)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("dir name");
        copy_tree(&crate_root().join(dir), &copy.join(name));
        for stem in stems(dir, "kdl") {
            let path = format!("{name}/{stem}.kdl");
            let text = std::fs::read_to_string(copy.join(&path)).expect("copied");
            std::fs::write(copy.join(&path), on_loopback(&text)).expect("rewritten");
            files.push(path);
        }
    }
    let mut failures = Vec::new();
    for path in &files {
        let checked = Command::new(env!("CARGO_BIN_EXE_teebox"))
            .arg("validate")
            .arg(path)
            .current_dir(copy.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run teebox validate {path}: {e}"));
        let said = text(&checked.stderr);
        let ran = run(copy.path(), path);
        let agree = match (checked.status.code(), &ran) {
            (Some(0), Ran::Served { stderr }) => stderr.starts_with(&said),
            (Some(0), Ran::Exited { stderr, .. }) => {
                stderr.starts_with(&said) && stderr.contains("cannot listen")
            }
            (Some(1), Ran::Exited { code, stderr }) => *code == Some(1) && *stderr == said,
            _ => false,
        };
        if !agree {
            let ran = match ran {
                Ran::Served { stderr } => format!("served, with stderr:\n{stderr}"),
                Ran::Exited { code, stderr } => format!("exited {code:?}, with stderr:\n{stderr}"),
                Ran::Hung { stderr } => {
                    format!("neither served nor exited, with stderr:\n{stderr}")
                }
            };
            failures.push(format!(
                "{path}: validate exited {:?}, with stderr:\n{said}\nrun {ran}",
                checked.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "\n{} of {} files judged differently:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn diff_marks_changed_lines() {
    let d = diff("a\nb\nc\n", "a\nx\nc\n");
    assert_eq!(d, "  a\n- b\n+ x\n  c\n");
}

// ---- the tests' own site files ------------------------------------------------------------------

/// The builder the other tests write their site files with writes what its
/// calls say, in KDL that teebox takes.
#[test]
fn the_site_builder_writes_the_file_its_calls_describe() {
    use common::{Admin, Chain, Mirror, Proxy, Site, Target};
    let kdl = Site::new()
        .limits("max_connections 4\nidle_timeout \"1m\"")
        .admin(Admin::open().allow_target(&["http://127.0.0.1:*"]))
        .route(
            "/api/*",
            Chain::new()
                .mirror(
                    Mirror::to("http://127.0.0.1:9001")
                        .name("staging")
                        .opt("sample 0.5")
                        .target(Target::new("http://127.0.0.1:9002").opt("sample 0.1")),
                )
                .proxy(Proxy::to("http://127.0.0.1:9000").opt("h2c #true")),
        )
        .route("/*", Chain::new().respond_with(404, "no \"such\" page\n"))
        .another_site_at("127.0.0.1:0")
        .host("b.test")
        .route("/*", Chain::new().proxy("http://127.0.0.1:9003"))
        .to_kdl();
    let want = r#"global {
    limits {
        max_connections 4
        idle_timeout "1m"
    }
    admin "127.0.0.1:0" {
        allow_target "http://127.0.0.1:*"
    }
}
site "127.0.0.1:0" {
    route "/api/*" {
        mirror "http://127.0.0.1:9001" {
            name "staging"
            sample 0.5
            target "http://127.0.0.1:9002" {
                sample 0.1
            }
        }
        reverse_proxy "http://127.0.0.1:9000" {
            h2c #true
        }
    }
    route "/*" {
        respond 404 "no \"such\" page\n"
    }
}
site "127.0.0.1:0" {
    host "b.test"
    route "/*" {
        reverse_proxy "http://127.0.0.1:9003"
    }
}
"#;
    assert_eq!(kdl, want);
    if let Err(err) = teebox::config::parse(
        "built.kdl",
        &kdl,
        std::env::temp_dir(),
        teebox::handlers::REGISTRY,
    ) {
        panic!("{}", err.render(teebox::config::Style::Plain));
    }
}

/// Whatever a test names, the builder's strings read back as it.
#[test]
fn the_site_builder_escapes_every_string_it_writes() {
    for text in [
        "plain",
        "quote \" and backslash \\ and {env.HOME}",
        "line\nbreak\r\ttab",
        "control \u{0} \u{7} \u{8} \u{c} \u{1b} \u{7f}",
        "separators \u{85} \u{2028} \u{2029}",
        "marks \u{200e}\u{202e}\u{2066} bom \u{feff}",
        "café ✓ #\"raw\"# /* not a comment */ // nor this",
    ] {
        let quoted = common::site::kdl_string(text);
        let doc: kdl::KdlDocument = format!("node {quoted}\n")
            .parse()
            .unwrap_or_else(|e| panic!("{quoted} is not KDL: {e:?}"));
        let value = doc.nodes()[0].entries()[0].value();
        assert_eq!(value.as_string(), Some(text), "{quoted}");
    }
}
