//! Counters kept per mirror target, cheap enough for the request path
//! (relaxed atomics), read by alerts and by the admin endpoint's /metrics.

pub use crate::counters::{Histogram, HistogramSnapshot, LATENCY_BUCKETS_MS};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct TargetStats {
    /// Copies handed to the target (a worker started sending them).
    pub sent: AtomicU64,
    /// The target answered below 500.
    pub succeeded: AtomicU64,
    /// Connect error, broken exchange or 5xx.
    pub failed: AtomicU64,
    /// No full answer within `timeout`.
    pub timed_out: AtomicU64,
    /// The backlog was full (or the server stopped before the copy was sent).
    pub dropped: AtomicU64,
    /// The request body was over `max_body`, or a later `request_body`
    /// refused it.
    pub skipped_too_large: AtomicU64,
    /// The target was paused by its breaker.
    pub skipped_paused: AtomicU64,
    /// The client's body ended in an error (abort): never sent truncated.
    pub incomplete: AtomicU64,
    /// Not chosen by `sample`.
    pub sampled_out: AtomicU64,
    /// Not one of the mirror's `methods`.
    pub skipped_method: AtomicU64,
    /// The request was itself a copy (it carried the `marker`).
    pub skipped_loop: AtomicU64,
    /// Over the target's `max_rps`.
    pub rate_limited: AtomicU64,
    /// A gRPC call whose request body was not exactly one message
    /// (client-streaming or bidirectional, or malformed).
    pub skipped_streaming: AtomicU64,
    /// A gRPC call for a target that can only be reached over HTTP/1.1
    /// (`http://` without `h2c`): gRPC needs HTTP/2.
    pub skipped_no_http2: AtomicU64,
    /// With `primary_status`: the primary answered another status, or
    /// never answered (its upstream failed, the client left).
    pub primary_filtered: AtomicU64,
    /// Times the breaker paused the target.
    pub paused: AtomicU64,
    /// With `compare`: the response matched the primary's.
    pub compare_match: AtomicU64,
    /// With `compare`: the status, a named header, or the body differed
    /// (a response may count in several).
    pub compare_status: AtomicU64,
    pub compare_headers: AtomicU64,
    pub compare_body: AtomicU64,
    /// With `compare`: no comparison possible (the primary's response
    /// never completed, or the shadow's was too long to read).
    pub compare_skipped: AtomicU64,
    pub latency: Histogram,
}

/// A point-in-time copy of a target's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub dropped: u64,
    pub skipped_too_large: u64,
    pub skipped_paused: u64,
    pub incomplete: u64,
    pub sampled_out: u64,
    pub skipped_method: u64,
    pub skipped_loop: u64,
    pub rate_limited: u64,
    pub skipped_streaming: u64,
    pub skipped_no_http2: u64,
    pub primary_filtered: u64,
    pub paused: u64,
    pub compare_match: u64,
    pub compare_status: u64,
    pub compare_headers: u64,
    pub compare_body: u64,
    pub compare_skipped: u64,
}

impl TargetStats {
    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            sent: get(&self.sent),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            timed_out: get(&self.timed_out),
            dropped: get(&self.dropped),
            skipped_too_large: get(&self.skipped_too_large),
            skipped_paused: get(&self.skipped_paused),
            incomplete: get(&self.incomplete),
            sampled_out: get(&self.sampled_out),
            skipped_method: get(&self.skipped_method),
            skipped_loop: get(&self.skipped_loop),
            rate_limited: get(&self.rate_limited),
            skipped_streaming: get(&self.skipped_streaming),
            skipped_no_http2: get(&self.skipped_no_http2),
            primary_filtered: get(&self.primary_filtered),
            paused: get(&self.paused),
            compare_match: get(&self.compare_match),
            compare_status: get(&self.compare_status),
            compare_headers: get(&self.compare_headers),
            compare_body: get(&self.compare_body),
            compare_skipped: get(&self.compare_skipped),
        }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
