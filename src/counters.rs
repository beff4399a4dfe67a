//! Counters shared by the request path and `/metrics`, looked up by name
//! once when a config is built and kept across reloads, so a reload does
//! not reset what Prometheus sees.
//!
//! Each serving thread counts in a shard of its own (see [`Shards`]), so a
//! request adds to its counters without a locked instruction; `/metrics`
//! sums the shards.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `N` counters, one copy per serving thread plus one for every other
/// thread. A serving thread is the only writer of its copy, so it adds
/// with a relaxed load and store (a locked read-modify-write, once per
/// counter per request, cost more than the rest of the bookkeeping); the
/// other threads share the last copy and add atomically.
#[derive(Debug)]
pub struct Shards<const N: usize> {
    shards: Box<[Shard<N>]>,
}

/// A cache line (two, on CPUs that fetch them in pairs) to itself, so
/// threads do not write to each other's lines.
#[derive(Debug)]
#[repr(align(128))]
struct Shard<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for Shards<N> {
    fn default() -> Self {
        let shards = (0..=crate::workers::count_hint())
            .map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Shards { shards }
    }
}

impl<const N: usize> Shards<N> {
    /// Adds `n` (wrapping: a gauge adds `u64::MAX` to take one away).
    pub fn add(&self, counter: usize, n: u64) {
        let shared = self.shards.len() - 1;
        match crate::workers::index() {
            Some(worker) if worker < shared => {
                let cell = &self.shards[worker].0[counter];
                cell.store(
                    cell.load(Ordering::Relaxed).wrapping_add(n),
                    Ordering::Relaxed,
                );
            }
            _ => {
                self.shards[shared].0[counter].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The counter's total over all threads.
    pub fn sum(&self, counter: usize) -> u64 {
        self.shards.iter().fold(0, |sum, shard| {
            sum.wrapping_add(shard.0[counter].load(Ordering::Relaxed))
        })
    }
}

/// Requests in flight (to an upstream, say), over all threads.
#[derive(Debug, Default)]
pub struct Gauge(Shards<1>);

impl Gauge {
    pub fn inc(&self) {
        self.0.add(0, 1);
    }

    /// Taken away on whichever thread the request ends: only the total
    /// over the shards means anything.
    pub fn dec(&self) {
        self.0.add(0, u64::MAX);
    }

    pub fn get(&self) -> u64 {
        self.0.sum(0)
    }
}

/// Upper bounds of the latency histogram buckets, in milliseconds
/// (Prometheus' default buckets, which suit request latencies).
pub const LATENCY_BUCKETS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Counts per bucket of [`LATENCY_BUCKETS_MS`] and one for above them,
/// then the sum of the latencies in microseconds, then their count.
const BUCKETS: usize = LATENCY_BUCKETS_MS.len() + 1;
const SUM_MICROS: usize = BUCKETS;
const COUNT: usize = BUCKETS + 1;

#[derive(Debug, Default)]
pub struct Histogram(Shards<{ BUCKETS + 2 }>);

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let ms = elapsed.as_millis() as u64;
        let index = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.0.add(index, 1);
        self.0.add(SUM_MICROS, elapsed.as_micros() as u64);
        self.0.add(COUNT, 1);
    }

    /// Cumulative counts per bucket bound (the last is +Inf), total seconds
    /// and count: what a Prometheus histogram shows.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(BUCKETS);
        let mut running = 0;
        for bucket in 0..BUCKETS {
            running += self.0.sum(bucket);
            cumulative.push(running);
        }
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.0.sum(SUM_MICROS) as f64 / 1e6,
            count: self.0.sum(COUNT),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// Requests a route answered, by status class (1xx to 5xx).
#[derive(Debug, Default)]
pub struct RouteStats(Shards<5>);

impl RouteStats {
    pub fn record(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0.add(class, 1);
    }

    /// Counts for `1xx` to `5xx`.
    pub fn classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0.sum(i))
    }
}

/// A route, by its site's addresses and its path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub site: String,
    pub route: String,
}

/// Every route's and upstream's counters, across reloads.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    routes: HashMap<RouteKey, Arc<RouteStats>>,
    upstreams: HashMap<(RouteKey, String), Arc<Histogram>>,
    /// Counters another layer keeps here under a key of its own, by type.
    kept: HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>,
}

impl MetricsRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn route(&self, key: &RouteKey) -> Arc<RouteStats> {
        self.lock().routes.entry(key.clone()).or_default().clone()
    }

    /// Time to the response head from one upstream of a route.
    pub fn upstream(&self, key: &RouteKey, upstream: &str) -> Arc<Histogram> {
        self.lock()
            .upstreams
            .entry((key.clone(), upstream.to_string()))
            .or_default()
            .clone()
    }

    /// Counters of some kind `T` under `key` (a mirror target's, by mirror
    /// and URL): the same after a reload, and for a target removed and
    /// added again, so that none goes backwards. The registry stores them
    /// without knowing what they are, so the layers that count need not be
    /// known here.
    pub fn kept<T: Default + Send + Sync + 'static>(&self, key: &str) -> Arc<T> {
        let mut inner = self.lock();
        let slot = inner
            .kept
            .entry((TypeId::of::<T>(), key.to_string()))
            .or_insert_with(|| Arc::new(T::default()));
        // The map is keyed by type, so the downcast holds; a fresh set of
        // counters is the harmless answer if it ever did not.
        slot.clone()
            .downcast::<T>()
            .unwrap_or_else(|_| Arc::new(T::default()))
    }

    pub fn routes(&self) -> Vec<(RouteKey, Arc<RouteStats>)> {
        let mut out: Vec<_> = self
            .lock()
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn upstreams(&self) -> Vec<(RouteKey, String, Arc<Histogram>)> {
        let mut out: Vec<_> = self
            .lock()
            .upstreams
            .iter()
            .map(|((k, u), h)| (k.clone(), u.clone(), h.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
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

    #[test]
    fn shards_sum_what_every_thread_added() {
        let gauge = Arc::new(Gauge::default());
        gauge.inc();
        gauge.inc();
        // Taken away elsewhere than added: only the total counts.
        let other = gauge.clone();
        std::thread::spawn(move || other.dec()).join().unwrap();
        assert_eq!(gauge.get(), 1);
        let stats = RouteStats::default();
        stats.record(http::StatusCode::OK);
        stats.record(http::StatusCode::BAD_GATEWAY);
        stats.record(http::StatusCode::NO_CONTENT);
        assert_eq!(stats.classes(), [0, 2, 0, 0, 1]);
    }
}
