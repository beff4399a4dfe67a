//! The threads that send copies.
//!
//! Copies are sent from a runtime of their own, so that a shadow's traffic
//! never queues behind the serving threads' work (and the reverse): a copy's
//! response is handled as soon as it arrives instead of after every ready
//! client connection, which is what lets a few workers keep up with a busy
//! route. The runtime lives as long as the process and is shared by every
//! mirror, so adding targets at runtime never adds threads.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// One thread for every four cores: sending a copy costs less than serving
/// the request it came from.
fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.div_ceil(4)
}

/// The copy runtime, or the caller's runtime if the threads could not be
/// started (copies then share the serving threads, which still works).
pub fn handle() -> Handle {
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(threads())
            .thread_name("teebox-mirror")
            .enable_all()
            .build()
            .inspect_err(|err| tracing::warn!(error = %err, "cannot start the mirror threads; copies share the serving threads"))
            .ok()
    });
    match runtime {
        Some(runtime) => runtime.handle().clone(),
        None => Handle::current(),
    }
}
