//! `GET /metrics`: the mirror counters in the Prometheus text exposition
//! format (version 0.0.4).

use std::fmt::Write;

use crate::mirror::stats::LATENCY_BUCKETS_MS;
use crate::mirror::Mirror;

/// Label values escape backslash, double quote and newline.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(mirrors: &[std::sync::Arc<Mirror>]) -> String {
    let mut out = String::new();
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
        ] {
            let _ = writeln!(
                out,
                "teebox_mirror_copies_total{{{},outcome=\"{outcome}\"}} {n}",
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
        let h = t.state().stats.latency.snapshot();
        let l = labels(m, t);
        for (bound, count) in LATENCY_BUCKETS_MS.iter().zip(&h.cumulative) {
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(
                out,
                "teebox_mirror_copy_duration_seconds_bucket{{{l},le=\"{le}\"}} {count}"
            );
        }
        let total = h.cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "teebox_mirror_copy_duration_seconds_bucket{{{l},le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "teebox_mirror_copy_duration_seconds_sum{{{l}}} {}",
            h.sum_seconds
        );
        let _ = writeln!(
            out,
            "teebox_mirror_copy_duration_seconds_count{{{l}}} {}",
            h.count
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
