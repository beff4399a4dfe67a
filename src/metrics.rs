//! Counters shared by the request path and `/metrics`: cheap relaxed
//! atomics, looked up by name once when a config is built and kept across
//! reloads, so a reload does not reset what Prometheus sees.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in milliseconds
/// (Prometheus' default buckets, which suit request latencies).
pub const LATENCY_BUCKETS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

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

/// Requests a route answered, by status class (1xx to 5xx).
#[derive(Debug, Default)]
pub struct RouteStats {
    classes: [AtomicU64; 5],
}

impl RouteStats {
    pub fn record(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts for `1xx` to `5xx`.
    pub fn classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed))
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
}
