//! The site-file corpus in `testdata/`: every `invalid/NAME.kdl` must be
//! refused by `teebox validate` with exactly the diagnostics in
//! `invalid/NAME.expected`, and every `valid/NAME.kdl` must be accepted.
//!
//! After an intended change to the diagnostics, regenerate the `.expected`
//! files with `TEEBOX_BLESS=1 cargo test --test testdata` and review the diff.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

#[test]
fn diff_marks_changed_lines() {
    let d = diff("a\nb\nc\n", "a\nx\nc\n");
    assert_eq!(d, "  a\n- b\n+ x\n  c\n");
}
