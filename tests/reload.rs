//! Reloads as the control plane must do them: off the threads that accept
//! and serve, with every global setting applied, and in the log's format.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::site::kdl_string;
use common::{within, within_for, Admin, Chain, Site, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A site whose every request is answered `200 BODY`.
fn answering(body: &str) -> Site {
    Site::new().route("/*", Chain::new().respond_with(200, body))
}

/// [`answering`]'s text.
fn site(body: &str) -> String {
    answering(body).to_kdl()
}

async fn start_from(file: &Path) -> teebox::server::Running {
    common::init_tracing();
    let loaded = teebox::config::load(file, teebox::handlers::REGISTRY).expect("valid site file");
    within("teebox to start", teebox::server::start(&loaded.config))
        .await
        .expect("teebox starts")
}

/// A reload whose site file cannot even be read yet (a FIFO nobody writes
/// to) must leave the server accepting and answering: the test runs on one
/// thread, the same one the accept loop runs on.
#[tokio::test(flavor = "current_thread")]
async fn requests_are_served_while_a_reload_reads_and_builds() {
    let dir = TempDir::new("reload-off-thread");
    let file = dir.join("site.kdl");
    std::fs::write(&file, site("one")).unwrap();
    let running = Arc::new(start_from(&file).await);
    let url = common::base_url(&running);

    std::fs::remove_file(&file).unwrap();
    let made = Command::new("mkfifo").arg(&file).status().expect("mkfifo");
    assert!(made.success());
    let reload = tokio::spawn({
        let running = running.clone();
        async move { running.reload().await.map(|r| r.warnings) }
    });
    // The reload is now blocked reading the FIFO.
    for _ in 0..5 {
        let resp = within("a request during the reload", common::client::get(&url)).await;
        assert_eq!((resp.status.as_u16(), resp.text().as_str()), (200, "one"));
    }
    assert!(
        !reload.is_finished(),
        "the reload cannot end before the file is written"
    );

    let writer = std::thread::spawn({
        let file = file.clone();
        move || std::fs::write(file, site("two"))
    });
    let reloaded = within("the reload", reload).await.unwrap();
    assert_eq!(reloaded.map_err(|e| e.to_string()), Ok(0));
    writer.join().unwrap().unwrap();
    let resp = within("a request after the reload", common::client::get(&url)).await;
    assert_eq!(resp.text(), "two");
}

/// Writes `text` as the site file and reloads: refused with `refusal` in
/// its diagnostics, and the running config (answering "kept") stays.
async fn refused_and_kept(
    running: &teebox::server::Running,
    file: &Path,
    text: &str,
    refusal: &str,
) {
    std::fs::write(file, text).unwrap();
    let err = running.reload().await.expect_err("refused").to_string();
    assert!(err.contains(refusal), "{refusal}: {err}");
    let resp = within("a request", common::client::get(&common::base_url(running))).await;
    assert_eq!(resp.text(), "kept");
}

/// A file nested deep enough to overflow the KDL parser's stack, plainly or
/// in disguise: after a line comment ended by a newline other than LF, a
/// string or comment left open, or as a chain of slashdashes. Each reload
/// is refused with its own diagnostic, and the running config stays.
#[tokio::test]
async fn a_reload_of_a_deep_file_plain_or_disguised_is_refused_and_the_server_stays() {
    let dir = TempDir::new("reload-deep-disguised");
    let file = dir.join("site.kdl");
    std::fs::write(&file, site("kept")).unwrap();
    let running = start_from(&file).await;
    let deep = format!("x {}{}\n", "{ a ".repeat(1500), "}".repeat(1500));
    for (tail, refusal) in [
        (deep.clone(), "blocks nested deeper than 16 levels"),
        (
            format!("// c\r{deep}"),
            "blocks nested deeper than 16 levels",
        ),
        (
            format!("// c\u{2028}{deep}"),
            "blocks nested deeper than 16 levels",
        ),
        (format!("a \"open\n{deep}"), "unclosed string"),
        (format!("a #\"open\n{deep}"), "unclosed raw string"),
        (format!("a /* open\n{deep}"), "unclosed block comment"),
        (
            format!("x {}1\n", "/- ".repeat(2000)),
            "more than 16 slashdashes (`/-`) in a row",
        ),
    ] {
        let text = format!("{}{tail}", site("never"));
        refused_and_kept(&running, &file, &text, refusal).await;
    }
}

/// kdl's parser recursed once per error it recovered from, and once per
/// star in a block comment: a file of stray closers, or a valid one with a
/// long banner comment, overflowed the reload thread's stack.
#[tokio::test]
async fn a_reload_survives_thousands_of_errors_and_a_long_comment() {
    let dir = TempDir::new("reload-parser-recursion");
    let file = dir.join("site.kdl");
    std::fs::write(&file, site("kept")).unwrap();
    let running = start_from(&file).await;
    let url = common::base_url(&running);
    for junk in ["}", "a=", ")"] {
        let tail = format!("x {}\n", junk.repeat(20_000));
        let text = format!("{}{tail}", site("never"));
        refused_and_kept(&running, &file, &text, "1 error").await;
    }
    let banner = format!("/* {} */\n{}", "*".repeat(20_000), site("banner"));
    std::fs::write(&file, banner).unwrap();
    let reloaded = running.reload().await.map(|r| r.warnings);
    assert_eq!(reloaded.map_err(|e| e.to_string()), Ok(0));
    let resp = within("a request", common::client::get(&url)).await;
    assert_eq!(resp.text(), "banner");
}

/// `limits` and `grace_period` are global options a reload applies; new
/// connections get the new limits.
#[tokio::test]
async fn a_reload_applies_limits_and_grace_period() {
    let dir = TempDir::new("reload-globals");
    let file = dir.join("site.kdl");
    let globals = |grace_period: &str, read_header_timeout: &str| {
        answering("ok")
            .global(&format!("grace_period {}", kdl_string(grace_period)))
            .limits(&format!(
                "read_header_timeout {}",
                kdl_string(read_header_timeout)
            ))
            .to_kdl()
    };
    std::fs::write(&file, globals("7s", "1h")).unwrap();
    let running = start_from(&file).await;
    assert_eq!(running.grace_period(), Duration::from_secs(7));

    std::fs::write(&file, globals("3s", "200ms")).unwrap();
    running.reload().await.expect("reloaded");
    assert_eq!(running.grace_period(), Duration::from_secs(3));

    // Half a request head: under the old limit it would wait an hour.
    let mut stream = tokio::net::TcpStream::connect(running.addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within_for(
        Duration::from_secs(30),
        "the 408 under the reloaded read_header_timeout",
        stream.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// teebox run as a child, its stderr read line by line.
struct Teebox {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Teebox {
    fn start(file: &Path) -> Teebox {
        let mut child = Command::new(env!("CARGO_BIN_EXE_teebox"))
            .arg("run")
            .arg(file)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("teebox runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Teebox { child, lines }
    }

    /// Lines up to and including the first that contains `needle`.
    fn until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?}; saw:\n{}", seen.join("\n"));
    }

    fn hangup(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child's pid");
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP sent");
    }
}

impl Drop for Teebox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM stops the server while a SIGHUP reload is still under way:
/// here one that never ends, as the site file has become a FIFO that is
/// open for writing but never written (what `teebox run <(…)` leaves, or a
/// hung network mount). The stop waited for the reload before.
#[test]
fn a_stop_signal_does_not_wait_for_a_reload() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new("reload-then-stop");
    let file = dir.join("site.kdl");
    std::fs::write(&file, site("one")).unwrap();
    let mut teebox = Teebox::start(&file);
    teebox.until("teebox serving");
    std::fs::remove_file(&file).unwrap();
    let made = Command::new("mkfifo").arg(&file).status().expect("mkfifo");
    assert!(made.success());
    teebox.hangup();
    // Opening a FIFO to write without blocking succeeds only once a reader
    // has it open: the reload is then reading it, and waits on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let _writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&file)
        {
            Ok(writer) => break writer,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(err) => panic!("the reload never opened the site file: {err}"),
        }
    };
    let pid = rustix::process::Pid::from_raw(teebox.child.id() as i32).expect("a child's pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM sent");
    teebox.until("shutting down");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        match teebox.child.try_wait().expect("the child's status") {
            Some(status) => break status,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            None => panic!("teebox did not exit after SIGTERM while a reload was reading"),
        }
    };
    assert!(status.success(), "{status}");
}

fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"))
        })
        .collect()
}

/// With `format="json"` every line teebox writes is one JSON object: the
/// start's warnings and a refused reload's diagnostics included, each
/// drawing in a `diagnostic` field. A reload that switches the format to
/// text takes effect at once.
#[test]
fn json_logs_hold_every_diagnostic_and_a_reload_changes_the_format() {
    let dir = TempDir::new("reload-json-logs");
    let file = dir.join("site.kdl");
    // `method` after a handler: a warning.
    let with_warning = |format: &str| {
        format!(
            "global {{\n    log level=\"info\" format=\"{format}\"\n}}\nsite \"127.0.0.1:0\" {{\n    route \"/*\" {{\n        respond 200 \"ok\"\n        method \"GET\"\n    }}\n}}\n"
        )
    };
    std::fs::write(&file, with_warning("json")).unwrap();
    let teebox = Teebox::start(&file);
    let started = json_lines(&teebox.until("teebox serving"));
    let warning = started
        .iter()
        .find(|l| l["fields"]["severity"] == "warning")
        .expect("the warning, as an object");
    assert!(warning["fields"]["diagnostic"]
        .as_str()
        .unwrap()
        .contains("a matcher among the handlers"));

    std::fs::write(&file, with_warning("json") + "bogus 1\n").unwrap();
    teebox.hangup();
    // One object per problem, in file order: the warning the file still
    // has, then the error.
    let first = json_lines(&teebox.until("reload refused"));
    let second = json_lines(&teebox.until("reload refused"));
    let (warning, error) = (first.last().unwrap(), second.last().unwrap());
    assert_eq!(warning["fields"]["severity"], "warning");
    assert_eq!(error["fields"]["severity"], "error");
    assert_eq!(error["level"], "ERROR");
    assert_eq!(error["fields"]["problem"], "unknown top-level node `bogus`");
    assert!(error["fields"]["diagnostic"]
        .as_str()
        .unwrap()
        .contains("bogus 1"));

    std::fs::write(&file, with_warning("text")).unwrap();
    teebox.hangup();
    teebox.until("site file reloaded");
    let next = teebox.until("the reloaded site file has warnings");
    let last = next.last().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(last).is_err() && last.contains(" WARN "),
        "a text line after the switch: {last}"
    );
}

/// A file refused at start, in JSON, when its `log` node asks for it.
#[test]
fn an_invalid_file_at_start_is_reported_in_the_format_it_asks_for() {
    let dir = TempDir::new("start-json-invalid");
    let file = dir.join("site.kdl");
    std::fs::write(
        &file,
        answering("ok").global(r#"log format="json""#).to_kdl() + "bogus 1\nbogus 2\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teebox"))
        .arg("run")
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
    let objects = json_lines(&lines);
    assert_eq!(objects.len(), 2, "{stderr}");
    for object in objects {
        assert_eq!(object["fields"]["severity"], "error");
    }
}

/// A file the site file names that never ends (a device) or never opens (a
/// FIFO nobody writes to) is refused, not waited for or read without end:
/// at start and so on every reload.
#[test]
fn named_files_that_are_fifos_or_devices_are_refused_not_waited_for() {
    let dir = TempDir::new("named-fifo");
    let fifo = dir.join("users.htpasswd");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let file = dir.join("site.kdl");
    for (node, named) in [
        ("users_file", fifo.display().to_string()),
        ("state_file", "/dev/zero".to_string()),
    ] {
        std::fs::write(
            &file,
            answering("ok")
                .admin(Admin::open().opt(&format!("{node} {}", kdl_string(&named))))
                .to_kdl(),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_teebox"))
            .arg("validate")
            .arg(&file)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("validate still waits on {node} {named}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not a regular file"), "{node}: {stderr}");
    }
}
