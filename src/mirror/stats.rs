//! Counters kept per mirror target, cheap enough for the request path
//! (relaxed atomics), read by alerts now and by the admin endpoint later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the copy-latency histogram buckets, in milliseconds
/// (Prometheus' default buckets, which suit request latencies).
pub const LATENCY_BUCKETS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

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
    /// The request body was over `max_body`.
    pub skipped_too_large: AtomicU64,
    /// The target was paused by its breaker.
    pub skipped_paused: AtomicU64,
    /// The client's body ended in an error (abort): never sent truncated.
    pub incomplete: AtomicU64,
    /// Not chosen by `sample`.
    pub sampled_out: AtomicU64,
    /// Times the breaker paused the target.
    pub paused: AtomicU64,
    pub latency: Histogram,
}

#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket of [`LATENCY_BUCKETS_MS`], plus one for above them.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let ms = elapsed.as_millis() as u64;
        let index = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (the last is +Inf), total seconds
    /// and count: what a Prometheus histogram shows.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut running = 0;
        for bucket in &self.buckets {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
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
    pub paused: u64,
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
            paused: get(&self.paused),
        }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(30));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[3], 2);
        assert_eq!(*s.cumulative.last().unwrap(), 3);
        assert_eq!(s.count, 3);
    }
}
