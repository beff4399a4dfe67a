//! The serving threads: one single-threaded runtime per core.
//!
//! Each accepted connection is handed to one worker and lives there, with
//! every request on it and the upstream connections it uses (see
//! `reverse_proxy`, which keeps a connection pool per worker). Nothing on a
//! request's path crosses threads, and a single-threaded runtime skips the
//! work-stealing scheduler's bookkeeping. The acceptors stay on the caller's
//! runtime; handing a connection over costs one wake-up per connection, not
//! per request.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// Task polls between two looks at the sockets and timers (tokio's
/// `event_interval`, 61 by default) for a runtime that serves connections.
/// A request's tasks poll briefly and then wait on a socket, so looking
/// less often costs no responsiveness and gathers more ready sockets per
/// look: side by side on one core, 128 and 256 both served ~5% more
/// proxied requests per second than 61 (256 a little more, with the same
/// p99). A runtime with nothing ready looks at once, whatever the interval.
pub const EVENT_INTERVAL: u32 = 256;

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// The process's serving workers, started on first use. With one core,
    /// or if no thread can be started, connections stay on the caller's
    /// runtime.
    pub fn get() -> &'static Workers {
        WORKERS.get_or_init(|| {
            if count_hint() == 1 {
                // One core: the caller's thread serves. A second thread
                // would only share the core, and a process that never
                // started one pays less for every socket call (glibc skips
                // its cancellation bookkeeping, the kernel its file
                // reference counts).
                WORKER_INDEX.set(Some(0));
                return Workers {
                    handles: Vec::new(),
                    next: AtomicUsize::new(0),
                };
            }
            let handles = (0..count_hint())
                .filter_map(start_worker)
                .collect::<Vec<_>>();
            if handles.is_empty() {
                tracing::warn!("cannot start serving threads; serving on the main runtime");
            }
            Workers {
                handles,
                next: AtomicUsize::new(0),
            }
        })
    }

    /// How many workers there are (at least one, counting the fallback).
    pub fn count(&self) -> usize {
        self.handles.len().max(1)
    }

    /// Serves an accepted connection on the next worker, round robin.
    /// A tokio socket belongs to the reactor that registered it, so one
    /// handed to a worker is registered again there (or every readiness
    /// event would cross threads); one served on the caller's runtime (one
    /// core, or no worker could start) stays registered where it is.
    /// `client` names the connection in the logs.
    pub fn serve<F, Fut>(&self, stream: TcpStream, client: SocketAddr, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(serve(stream));
            return;
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%client, error = %err, "cannot hand the connection to a worker");
                return;
            }
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => {
                    tracing::warn!(%client, error = %err, "cannot register the connection");
                }
            }
        });
    }
}

fn start_worker(index: usize) -> Option<Handle> {
    let runtime = Builder::new_current_thread()
        .event_interval(EVENT_INTERVAL)
        .enable_all()
        .build()
        .inspect_err(|err| tracing::warn!(error = %err, "cannot start a serving runtime"))
        .ok()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("teebox-worker-{index}"))
        .spawn(move || {
            WORKER_INDEX.set(Some(index));
            runtime.block_on(std::future::pending::<()>());
        })
        .inspect_err(|err| tracing::warn!(error = %err, "cannot start a serving thread"))
        .ok()?;
    Some(handle)
}

/// The index of the worker this code runs on, if it runs on one.
pub fn index() -> Option<usize> {
    WORKER_INDEX.get()
}

/// The index of the worker this code runs on (0 elsewhere): for per-worker
/// state such as upstream connection pools.
pub fn current() -> usize {
    index().unwrap_or(0)
}

/// How many workers there are or will be (without starting them): one per
/// core. Asked of the system once (it reads the CPU affinity and cgroup
/// limits), so that the workers and every metric's shards agree on it.
pub fn count_hint() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
