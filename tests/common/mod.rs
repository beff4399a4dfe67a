//! The integration-test harness: teebox started in-process from a KDL
//! string, recording backends, fault servers, clients, and bounded waits.
//!
//! Rules every helper keeps: only 127.0.0.1 and port 0; every wait is bounded
//! by [`TIMEOUT`] (or a deadline the caller gives), so a failing test fails
//! instead of hanging; nothing asserts that something was fast.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod fault;
pub mod metrics;
pub mod raw;
pub mod site;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend::{Backend, Gate, Recorded, Reply};
#[allow(unused_imports)]
pub use client::{Client, Resp};
#[allow(unused_imports)]
pub use site::{Admin, Chain, Mirror, Proxy, Site, Target};
pub use teebox::server::Running;

/// The bound on every wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts teebox from site-file text. Panics with the rendered diagnostics
/// if the text is not a valid site file. Relative paths in it resolve against
/// the system temp dir; a test that writes files uses [`start_in`] with its
/// own [`TempDir`].
pub async fn start(kdl: &str) -> Running {
    start_in(kdl, &std::env::temp_dir()).await
}

/// Starts teebox from site-file text, resolving relative paths (such as an
/// `access_log` file) against `base_dir`.
pub async fn start_in(kdl: &str, base_dir: &Path) -> Running {
    init_tracing();
    let loaded = match teebox::config::parse(
        "test.kdl",
        kdl,
        base_dir.to_path_buf(),
        teebox::handlers::REGISTRY,
    ) {
        Ok(loaded) => loaded,
        Err(err) => panic!(
            "the test's site file is invalid:\n{}\n--- site file ---\n{kdl}",
            err.render(teebox::config::Style::Plain)
        ),
    };
    within("teebox to start", teebox::server::start(&loaded.config))
        .await
        .unwrap_or_else(|err| panic!("teebox did not start: {err}\n--- site file ---\n{kdl}"))
}

/// A one-site file on 127.0.0.1:0 whose only route proxies everything to
/// `upstreams`, with `options` (KDL lines) inside the `reverse_proxy` block.
pub fn proxy_site(upstreams: &[String], options: &str) -> String {
    let mut proxy = Proxy::to_all(upstreams);
    if !options.trim().is_empty() {
        proxy = proxy.opt(options);
    }
    Site::new().route("/*", Chain::new().proxy(proxy)).to_kdl()
}

/// Starts teebox proxying everything to `upstreams` (see [`proxy_site`]).
pub async fn start_proxy(upstreams: &[String], options: &str) -> Running {
    start(&proxy_site(upstreams, options)).await
}

/// The warnings `validate` gives a valid site file named `file`: how many,
/// and as they are printed (without colour).
pub fn warnings(file: &str, kdl: &str) -> (usize, String) {
    let loaded = teebox::config::parse(file, kdl, std::env::temp_dir(), teebox::handlers::REGISTRY)
        .expect("valid");
    let rendered = loaded.render_warnings(teebox::config::Style::Plain);
    (loaded.warnings.len(), rendered)
}

/// `http://ADDR` for teebox's first address.
pub fn base_url(running: &Running) -> String {
    format!("http://{}", running.addr())
}

/// Runs `fut`, panicking if it takes longer than [`TIMEOUT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(TIMEOUT, what, fut).await
}

/// Runs `fut`, panicking if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every few milliseconds until it returns true; panics after
/// [`TIMEOUT`] with `what` in the message.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if check() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): reproducible, and
/// no two seeds give the same stream.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A directory under the system temp dir, unique to this process and call,
/// removed (with its contents) when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "teebox-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sends teebox's logs to the test's captured output (shown for failing
/// tests), and keeps them for [`LogCapture::global`]; `RUST_LOG` picks the
/// level, default `warn`.
pub fn init_tracing() -> &'static LogCapture {
    static GLOBAL: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| {
        use tracing_subscriber::fmt::writer::MakeWriterExt;
        let capture = LogCapture::default();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(tracing_subscriber::fmt::TestWriter::default().and(capture.clone()))
            .try_init();
        capture
    })
}

/// What tracing writes at WARN and above on this thread, for checking log
/// lines: on a current-thread test runtime, every task's (teebox's too).
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Starts capturing; it stops when the guard is dropped.
    pub fn start() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// What every thread of the test process logs (teebox's serving
    /// threads too), as [`init_tracing`] keeps it. A test picks its own
    /// lines out by something only it has, such as its upstream's address.
    pub fn global() -> &'static LogCapture {
        init_tracing()
    }

    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}
