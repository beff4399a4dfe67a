//! The threads that send copies.
//!
//! Copies are sent from a runtime of their own, so that a shadow's traffic
//! never queues behind the serving threads' work (and the reverse): a copy's
//! response is handled as soon as it arrives instead of after every ready
//! client connection, which is what lets a few workers keep up with a busy
//! route. The runtime lives as long as the process and is shared by every
//! mirror, so adding targets at runtime never adds threads.

use std::sync::OnceLock;
use std::time::Duration;

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
        give_back_freed_memory();
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

/// How often memory the process has freed is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// A backlog fills and empties all at once, with copies allocated on the
/// serving threads and freed on the mirror threads. glibc's malloc keeps
/// such freed memory in its arenas for good (measured after a backlog of
/// 64 KiB copies drained: 84 MB of arena for 3.5 MB in use), so every so
/// often a thread of its own asks it to give back what is free. Memory in
/// use is untouched; the serving threads never wait on this but for the
/// arena lock while it runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_freed_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    let trim = || loop {
        std::thread::sleep(TRIM_EVERY);
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim has no preconditions; it only returns free
        // pages of the allocator's own to the system.
        let released = unsafe { malloc_trim(0) } != 0;
        tracing::trace!(released, took = ?started.elapsed(), "malloc_trim");
    };
    if let Err(err) = std::thread::Builder::new()
        .name("teebox-trim".into())
        .spawn(trim)
    {
        tracing::debug!(error = %err, "cannot start the thread that gives back freed memory");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_freed_memory() {}
