//! `GET /metrics`: the route, upstream, mirror and admin login counters in
//! the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::{Histogram, MetricsRegistry};
use crate::mirror::stats::LATENCY_BUCKETS_MS;
use crate::mirror::Mirror;

/// Label values escape backslash, double quote and newline.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The route, upstream and mirror lines of `/metrics` (the admin login
/// lines are the endpoint's own), for what `published` holds.
pub fn render(published: &crate::handlers::Published, registry: &MetricsRegistry) -> String {
    let mirrors = crate::handlers::mirror::mirrors(published);
    let mirrors = mirrors.as_slice();
    let mut out = String::new();
    render_routes(&mut out, registry);
    let targets: Vec<_> = mirrors
        .iter()
        .flat_map(|m| {
            m.targets()
                .iter()
                .map(|t| (m.clone(), t.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let labels = |m: &Mirror, t: &crate::mirror::target::Target| {
        format!(
            "mirror=\"{}\",target=\"{}\"",
            label(m.label()),
            label(&t.url().to_string())
        )
    };

    out.push_str(
        "# HELP teebox_mirror_copies_total Copies per mirror target, by what became of them.\n",
    );
    out.push_str("# TYPE teebox_mirror_copies_total counter\n");
    for (m, t) in &targets {
        let c = t.state().stats.counts();
        for (outcome, n) in [
            ("sent", c.sent),
            ("succeeded", c.succeeded),
            ("failed", c.failed),
            ("timed_out", c.timed_out),
            ("dropped", c.dropped),
            ("skipped_too_large", c.skipped_too_large),
            ("skipped_paused", c.skipped_paused),
            ("incomplete", c.incomplete),
            ("sampled_out", c.sampled_out),
            ("skipped_method", c.skipped_method),
            ("skipped_loop", c.skipped_loop),
            ("rate_limited", c.rate_limited),
            ("skipped_streaming", c.skipped_streaming),
            ("skipped_no_http2", c.skipped_no_http2),
            ("primary_filtered", c.primary_filtered),
        ] {
            let _ = writeln!(
                out,
                "teebox_mirror_copies_total{{{},outcome=\"{outcome}\"}} {n}",
                labels(m, t)
            );
        }
    }
    out.push_str(
        "# HELP teebox_mirror_compare_total With compare: target responses against the primary's (a response may differ in several ways).\n",
    );
    out.push_str("# TYPE teebox_mirror_compare_total counter\n");
    for (m, t) in &targets {
        if !m.compares() {
            continue;
        }
        let c = t.state().stats.counts();
        for (result, n) in [
            ("match", c.compare_match),
            ("status_differs", c.compare_status),
            ("headers_differ", c.compare_headers),
            ("body_differs", c.compare_body),
            ("skipped", c.compare_skipped),
        ] {
            let _ = writeln!(
                out,
                "teebox_mirror_compare_total{{{},result=\"{result}\"}} {n}",
                labels(m, t)
            );
        }
    }
    out.push_str("# HELP teebox_mirror_pauses_total Times the breaker paused a target.\n");
    out.push_str("# TYPE teebox_mirror_pauses_total counter\n");
    for (m, t) in &targets {
        let _ = writeln!(
            out,
            "teebox_mirror_pauses_total{{{}}} {}",
            labels(m, t),
            t.state().stats.counts().paused
        );
    }
    out.push_str("# HELP teebox_mirror_paused Whether a target is paused by its breaker.\n");
    out.push_str("# TYPE teebox_mirror_paused gauge\n");
    for (m, t) in &targets {
        let _ = writeln!(
            out,
            "teebox_mirror_paused{{{}}} {}",
            labels(m, t),
            u8::from(t.state().breaker.is_paused())
        );
    }
    out.push_str("# HELP teebox_mirror_backlog Copies waiting in a target's backlog.\n");
    out.push_str("# TYPE teebox_mirror_backlog gauge\n");
    for (m, t) in &targets {
        let _ = writeln!(
            out,
            "teebox_mirror_backlog{{{}}} {}",
            labels(m, t),
            t.backlog_depth()
        );
    }
    out.push_str("# HELP teebox_mirror_in_flight Copies being sent to a target.\n");
    out.push_str("# TYPE teebox_mirror_in_flight gauge\n");
    for (m, t) in &targets {
        let _ = writeln!(
            out,
            "teebox_mirror_in_flight{{{}}} {}",
            labels(m, t),
            t.in_flight()
        );
    }
    out.push_str("# HELP teebox_mirror_copy_duration_seconds How long sending a copy took, response included.\n");
    out.push_str("# TYPE teebox_mirror_copy_duration_seconds histogram\n");
    for (m, t) in &targets {
        histogram(
            &mut out,
            "teebox_mirror_copy_duration_seconds",
            &labels(m, t),
            &t.state().stats.latency,
        );
    }
    out.push_str(
        "# HELP teebox_mirror_skipped_upgrade_total Upgrade requests (WebSocket) not copied.\n",
    );
    out.push_str("# TYPE teebox_mirror_skipped_upgrade_total counter\n");
    for m in mirrors {
        let _ = writeln!(
            out,
            "teebox_mirror_skipped_upgrade_total{{mirror=\"{}\"}} {}",
            label(m.label()),
            m.skipped_upgrade()
        );
    }
    out
}

fn render_routes(out: &mut String, registry: &MetricsRegistry) {
    out.push_str("# HELP teebox_requests_total Requests each route answered, by status class.\n");
    out.push_str("# TYPE teebox_requests_total counter\n");
    for (key, stats) in registry.routes() {
        for (i, n) in stats.classes().iter().enumerate() {
            let _ = writeln!(
                out,
                "teebox_requests_total{{site=\"{}\",route=\"{}\",class=\"{}xx\"}} {n}",
                label(&key.site),
                label(&key.route),
                i + 1
            );
        }
    }
    out.push_str("# HELP teebox_upstream_response_seconds Time from sending a request upstream to its response head.\n");
    out.push_str("# TYPE teebox_upstream_response_seconds histogram\n");
    for (key, upstream, h) in registry.upstreams() {
        let labels = format!(
            "site=\"{}\",route=\"{}\",upstream=\"{}\"",
            label(&key.site),
            label(&key.route),
            label(&upstream)
        );
        histogram(out, "teebox_upstream_response_seconds", &labels, &h);
    }
}

/// A histogram's buckets (cumulative, in seconds), sum and count.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let h = h.snapshot();
    for (bound, count) in LATENCY_BUCKETS_MS.iter().zip(&h.cumulative) {
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    let total = h.cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Logins that carried credentials, by how they ended; `verified` and
/// `refused` each cost a bcrypt check, the others none.
#[derive(Debug, Default)]
pub struct LoginCounts {
    pub cached: AtomicU64,
    pub verified: AtomicU64,
    pub refused: AtomicU64,
    pub throttled: AtomicU64,
}

impl LoginCounts {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, and `waiting` logins as a gauge.
    pub fn render(&self, out: &mut String, waiting: u64) {
        out.push_str("# HELP teebox_admin_logins_total Admin calls with credentials, by result: cached (remembered, no check), verified, refused, throttled (429, no check).\n");
        out.push_str("# TYPE teebox_admin_logins_total counter\n");
        for (result, n) in [
            ("cached", &self.cached),
            ("verified", &self.verified),
            ("refused", &self.refused),
            ("throttled", &self.throttled),
        ] {
            let _ = writeln!(
                out,
                "teebox_admin_logins_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP teebox_admin_logins_waiting Admin logins waiting for their turn (login throttling) or being checked.\n");
        out.push_str("# TYPE teebox_admin_logins_waiting gauge\n");
        let _ = writeln!(out, "teebox_admin_logins_waiting {waiting}");
    }
}
