//! teebox's counters read the way an operator reads them: `GET /metrics`
//! on the admin endpoint (Prometheus text, parsed), and `GET /targets`
//! for a mirror's targets. A test whose site has no admin endpoint gets
//! one from the builder: `Site::new().admin(Admin::open())`.

use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

use super::{client, Client, Running, TIMEOUT};

/// One scrape of `/metrics`.
pub struct Metrics {
    text: String,
    scrape: Scrape,
}

fn admin_url(running: &Running, path_and_query: &str) -> String {
    let admin = running.admin_addr().expect(
        "no admin endpoint to read counters from: give the site one with .admin(Admin::open())",
    );
    format!("http://{admin}{path_and_query}")
}

/// `GET /metrics` on `running`'s admin endpoint (which must need no
/// credentials), parsed.
pub async fn scrape(running: &Running) -> Metrics {
    let resp = Client::http1().get(&admin_url(running, "/metrics")).await;
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
    Metrics::parse(&resp.text())
}

/// Scrapes until `done` holds for a scrape, and returns that scrape;
/// panics with the last one after [`TIMEOUT`].
pub async fn until(
    running: &Running,
    what: &str,
    mut done: impl FnMut(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = scrape(running).await;
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}; the last scrape:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The counters of the only target at `url`, in whichever mirror it is
/// (see [`Metrics::target`]), scraped now.
pub async fn target(running: &Running, url: &str) -> TargetCounts {
    scrape(running).await.target(url)
}

/// Waits until the counters of the target at `url` satisfy `done`, and
/// returns them.
pub async fn target_until(
    running: &Running,
    url: &str,
    what: &str,
    mut done: impl FnMut(&TargetCounts) -> bool,
) -> TargetCounts {
    until(running, what, |m| done(&m.target(url)))
        .await
        .target(url)
}

/// The URLs `GET /targets` lists for `mirror` (by name; `None` when the
/// file has exactly one mirror), in order.
pub async fn targets(running: &Running, mirror: Option<&str>) -> Vec<String> {
    let query = mirror.map(|m| format!("?mirror={m}")).unwrap_or_default();
    let req = client::req("GET", &admin_url(running, &format!("/targets{query}")))
        .body(client::full(""))
        .unwrap();
    let resp = Client::http1().send(req).await.expect("GET /targets");
    assert_eq!(resp.status, 200, "GET /targets: {}", resp.text());
    resp.text().lines().map(str::to_string).collect()
}

impl Metrics {
    /// Prometheus text as `/metrics` answers it (from anywhere: a scrape,
    /// or [`Running::metrics_renderer`] after a shutdown).
    pub fn parse(text: &str) -> Metrics {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
        Metrics {
            text: text.to_string(),
            scrape,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of the only sample of `name` carrying every label of
    /// `labels` (and maybe others); panics if there is none or several.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} {labels:?} is not a number: {other:?}"),
            })
            .collect();
        match found.as_slice() {
            [one] => *one,
            [] => panic!("no {name} {labels:?} in:\n{}", self.text),
            _ => panic!(
                "{} samples of {name} {labels:?}: name more labels; in:\n{}",
                found.len(),
                self.text
            ),
        }
    }

    /// [`Metrics::value`] of a counter or a gauge that counts.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self.value(name, labels);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{name} {labels:?} is {value}, not a count"
        );
        value as u64
    }

    /// The mirrors (their labels: `name`, or `SITE ROUTE`) that have a
    /// target at `url`.
    pub fn mirrors_with(&self, url: &str) -> Vec<String> {
        let mut mirrors: Vec<String> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == "teebox_mirror_pauses_total")
            .filter(|s| s.labels.get("target") == Some(url))
            .filter_map(|s| s.labels.get("mirror").map(str::to_string))
            .collect();
        mirrors.dedup();
        mirrors
    }

    /// The counters of the target at `url`, which must be in exactly one
    /// mirror (else name the mirror with [`Metrics::target_of`]).
    pub fn target(&self, url: &str) -> TargetCounts {
        match self.mirrors_with(url).as_slice() {
            [mirror] => self.target_of(mirror, url),
            [] => panic!("no mirror target {url} in:\n{}", self.text),
            several => panic!("{url} is a target of {several:?}: name the mirror"),
        }
    }

    /// The counters of the target at `url` of the mirror labelled `mirror`.
    pub fn target_of(&self, mirror: &str, url: &str) -> TargetCounts {
        let labels = [("mirror", mirror), ("target", url)];
        let copies = |outcome: &str| {
            self.count(
                "teebox_mirror_copies_total",
                &[labels[0], labels[1], ("outcome", outcome)],
            )
        };
        let compares = self.scrape.samples.iter().any(|s| {
            s.metric == "teebox_mirror_compare_total"
                && s.labels.get("mirror") == Some(mirror)
                && s.labels.get("target") == Some(url)
        });
        let compare = |result: &str| {
            if compares {
                self.count(
                    "teebox_mirror_compare_total",
                    &[labels[0], labels[1], ("result", result)],
                )
            } else {
                0
            }
        };
        TargetCounts {
            sent: copies("sent"),
            succeeded: copies("succeeded"),
            failed: copies("failed"),
            timed_out: copies("timed_out"),
            dropped: copies("dropped"),
            skipped_too_large: copies("skipped_too_large"),
            skipped_paused: copies("skipped_paused"),
            incomplete: copies("incomplete"),
            sampled_out: copies("sampled_out"),
            skipped_method: copies("skipped_method"),
            skipped_loop: copies("skipped_loop"),
            rate_limited: copies("rate_limited"),
            skipped_streaming: copies("skipped_streaming"),
            skipped_no_http2: copies("skipped_no_http2"),
            primary_filtered: copies("primary_filtered"),
            pauses: self.count("teebox_mirror_pauses_total", &labels),
            compare_match: compare("match"),
            compare_status: compare("status_differs"),
            compare_headers: compare("headers_differ"),
            compare_body: compare("body_differs"),
            compare_skipped: compare("skipped"),
            paused_now: self.count("teebox_mirror_paused", &labels) == 1,
            backlog: self.count("teebox_mirror_backlog", &labels),
            in_flight: self.count("teebox_mirror_in_flight", &labels),
        }
    }

    /// `teebox_mirror_skipped_upgrade_total` of the mirror labelled `mirror`.
    pub fn skipped_upgrade(&self, mirror: &str) -> u64 {
        self.count("teebox_mirror_skipped_upgrade_total", &[("mirror", mirror)])
    }
}

/// One mirror target's line of each mirror metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetCounts {
    /// `teebox_mirror_copies_total`, by `outcome`.
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
    /// `teebox_mirror_pauses_total`: times the breaker paused the target.
    pub pauses: u64,
    /// `teebox_mirror_compare_total`, by `result` (0 for a mirror without
    /// `compare`, which has no such lines).
    pub compare_match: u64,
    pub compare_status: u64,
    pub compare_headers: u64,
    pub compare_body: u64,
    pub compare_skipped: u64,
    /// `teebox_mirror_paused`: the breaker holds the target now.
    pub paused_now: bool,
    /// `teebox_mirror_backlog`: copies waiting.
    pub backlog: u64,
    /// `teebox_mirror_in_flight`: copies being sent.
    pub in_flight: u64,
}
