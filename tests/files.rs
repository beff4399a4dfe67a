//! Files teebox replaces whole (`fmt --overwrite`, `state_file`): a symlink
//! planted where a temporary file might go is never followed, the file's
//! mode (and, as root, owner) is kept, and a symlinked file is written
//! through its link, which stays a link.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{client, Admin, Chain, Client, Mirror, Site};

/// Valid KDL that `fmt` re-indents.
const MESSY: &str =
    "site \"127.0.0.1:8080\" {\n        route \"/*\" {\n   respond 200 \"ok\"\n }\n\n}\n";

fn teebox(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teebox"))
        .args(args)
        .arg(file)
        .output()
        .expect("teebox runs")
}

/// What `fmt` prints for [`MESSY`], checked to differ from it.
fn formatted(dir: &common::TempDir) -> String {
    let scratch = dir.join("scratch.kdl");
    std::fs::write(&scratch, MESSY).unwrap();
    let out = teebox(&["fmt"], &scratch);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::remove_file(&scratch).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_ne!(text, MESSY, "the test needs a file fmt changes");
    text
}

fn overwrite(file: &Path) {
    let out = teebox(&["fmt", "--overwrite"], file);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

/// Plants symlinks to `victim` at every name a temporary file for `name`
/// was or might be given: the fixed names older versions used and a few
/// hundred random ones of the shape used now (`.NAME.XXXXXX.tmp`).
fn plant(dir: &Path, name: &str, victim: &Path) -> Vec<PathBuf> {
    let mut names = vec![
        format!("{name}.tmp"),
        format!("{name}.teebox-fmt.tmp"),
        format!(".{name}.tmp"),
    ];
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let random = common::random_bytes(300 * 6, name.len() as u64);
    for chunk in random.chunks(6) {
        let suffix: String = chunk
            .iter()
            .map(|b| alphabet[*b as usize % alphabet.len()] as char)
            .collect();
        names.push(format!(".{name}.{suffix}.tmp"));
    }
    names
        .into_iter()
        .map(|n| {
            let link = dir.join(n);
            symlink(victim, &link).unwrap();
            link
        })
        .collect()
}

fn assert_untouched(victim: &Path, links: &[PathBuf]) {
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "precious\n");
    for link in links {
        assert!(is_symlink(link), "{} was replaced", link.display());
        assert_eq!(std::fs::read_link(link).unwrap(), victim);
    }
}

#[test]
fn fmt_overwrite_never_follows_a_planted_symlink() {
    let dir = common::TempDir::new("fmt-planted");
    let want = formatted(&dir);
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let file = dir.join("site.kdl");
    std::fs::write(&file, MESSY).unwrap();
    let links = plant(dir.path(), "site.kdl", &victim);
    overwrite(&file);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), want);
    assert!(!is_symlink(&file));
    assert_untouched(&victim, &links);
}

#[test]
fn fmt_overwrite_keeps_the_mode_and_the_owner() {
    let dir = common::TempDir::new("fmt-mode");
    let want = formatted(&dir);
    let file = dir.join("site.kdl");
    for wanted in [0o600, 0o640] {
        std::fs::write(&file, MESSY).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(wanted)).unwrap();
        overwrite(&file);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), want);
        assert_eq!(mode(&file), wanted, "mode {wanted:o}");
    }
    // Only root can give a file away, so only root can keep an owner that
    // is not itself.
    if std::fs::metadata(&file).unwrap().uid() == 0 {
        std::fs::write(&file, MESSY).unwrap();
        std::os::unix::fs::chown(&file, Some(4242), Some(4343)).unwrap();
        overwrite(&file);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), want);
    }
}

#[test]
fn fmt_overwrite_formats_a_symlinked_file_and_keeps_the_link() {
    let dir = common::TempDir::new("fmt-link");
    let want = formatted(&dir);
    std::fs::create_dir(dir.join("conf")).unwrap();
    let real = dir.join("conf/real.kdl");
    std::fs::write(&real, MESSY).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.join("site.kdl");
    symlink("conf/real.kdl", &link).unwrap();
    overwrite(&link);
    assert!(is_symlink(&link), "the link was replaced by a file");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("conf/real.kdl")
    );
    assert_eq!(std::fs::read_to_string(&real).unwrap(), want);
    assert_eq!(mode(&real), 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.join("conf"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["real.kdl"], "no temporary file left behind");
}

// ---- state_file -----------------------------------------------------------------------------

/// An admin endpoint saving to `state_file`, and a mirror, `staging`, for
/// runtime targets.
fn state_site(state_file: &str) -> String {
    Site::new()
        .admin(Admin::open().state_file(state_file))
        .route(
            "/*",
            Chain::new().mirror(Mirror::named("staging")).respond(200),
        )
        .to_kdl()
}

/// Adds a target at runtime, which makes teebox save its state file.
async fn add_target(running: &common::Running, url: &str) {
    let admin = running.admin_addr().expect("admin endpoint");
    let req = client::req("PUT", &format!("http://{admin}/targets?url={url}"))
        .body(client::full(""))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("admin request");
    assert_eq!(resp.status, 200, "{}", resp.text());
}

fn saved_added(path: &Path) -> serde_json::Value {
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    saved["mirrors"]["staging"]["added"].clone()
}

#[tokio::test]
async fn state_file_never_follows_a_planted_symlink_and_keeps_its_mode() {
    let dir = common::TempDir::new("state-planted");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let state = dir.join("targets.json");
    std::fs::write(&state, "{\"version\": 1, \"mirrors\": {}}\n").unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
    let links = plant(dir.path(), "targets.json", &victim);
    let running = common::start_in(&state_site("targets.json"), dir.path()).await;
    add_target(&running, "http://127.0.0.1:9002").await;
    add_target(&running, "http://127.0.0.1:9003").await;
    assert_untouched(&victim, &links);
    assert_eq!(
        saved_added(&state),
        serde_json::json!(["http://127.0.0.1:9002", "http://127.0.0.1:9003"])
    );
    assert!(!is_symlink(&state));
    assert_eq!(mode(&state), 0o600);
}

#[tokio::test]
async fn state_file_is_written_through_its_symlink() {
    let dir = common::TempDir::new("state-link");
    std::fs::create_dir(dir.join("var")).unwrap();
    let real = dir.join("var/targets.json");
    std::fs::write(&real, "{\"version\": 1, \"mirrors\": {}}\n").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    symlink("var/targets.json", dir.join("targets.json")).unwrap();
    let running = common::start_in(&state_site("targets.json"), dir.path()).await;
    add_target(&running, "http://127.0.0.1:9002").await;
    assert!(is_symlink(&dir.join("targets.json")));
    assert_eq!(
        saved_added(&real),
        serde_json::json!(["http://127.0.0.1:9002"])
    );
    assert_eq!(mode(&real), 0o640);
}

/// A state_file that is a dangling symlink could never be saved (the save
/// writes only through a link to a file that exists): validate, and run
/// before it serves, refuse it rather than answer every change with 500.
#[test]
fn a_state_file_linked_to_nothing_is_refused_before_serving() {
    let dir = common::TempDir::new("state-dangling");
    std::fs::create_dir(dir.join("var")).unwrap();
    symlink("var/targets.json", dir.join("targets.json")).unwrap();
    let site = dir.join("site.kdl");
    std::fs::write(&site, state_site("targets.json")).unwrap();
    for command in ["validate", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_teebox"))
            .arg(command)
            .arg(&site)
            .env("NO_COLOR", "1")
            .output()
            .expect("teebox runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("targets.json is a symlink to a file that does not exist"),
            "{command}: {stderr}"
        );
    }
    assert!(!dir.join("var/targets.json").exists());
}
