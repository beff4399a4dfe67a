//! `compare { … }` inside `mirror`: each target's response is compared with
//! the primary's, by [`crate::diff`]'s rules, and the outcome counted per
//! target; mismatches are written (rate-limited) to a diff log.
//!
//! The primary's response is kept as it streams to the client (up to the
//! mirror's `max_body`, hashed beyond), so the client is never held. The
//! two responses meet in a [`Comparison`]: whichever arrives second
//! triggers the judgement, on the mirror threads, never on a thread
//! serving clients.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::policy::RateLimit;
use super::stats::bump;
use super::stats::TargetStats;
use crate::diff::{BodyCollector, CompareRules, Observed};
use crate::lines::{Destination, LineSink};
use crate::message::json;
use crate::message::placeholders::RequestVars;
use crate::message::{body, Response};
use crate::upstream::url::UpstreamUrl;

/// What a mirror's `compare` block says.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub rules: CompareRules,
    /// Relative to the site file.
    pub diff_log: Option<PathBuf>,
    /// Diff lines a second at most.
    pub log_rate: u32,
}

/// A mirror's running comparison: its rules, body cap and diff log.
pub struct Comparer {
    rules: CompareRules,
    max_body: u64,
    mirror: String,
    diff_log: Option<LineSink>,
    limit: RateLimit,
}

/// Lines waiting for the diff log's writer.
const DIFF_QUEUE: usize = 1024;

impl Comparer {
    pub fn start(
        config: &CompareConfig,
        max_body: u64,
        mirror: String,
        base_dir: &std::path::Path,
    ) -> Result<Comparer, String> {
        let diff_log = match &config.diff_log {
            Some(path) => Some(
                LineSink::open(
                    Destination::File {
                        path: base_dir.join(path),
                        roll: None,
                    },
                    DIFF_QUEUE,
                    "compare diff log",
                )
                .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        Ok(Comparer {
            rules: config.rules.clone(),
            max_body,
            mirror,
            diff_log,
            // A second's worth at once, then log_rate a second.
            limit: RateLimit::with_burst(config.log_rate, f64::from(config.log_rate)),
        })
    }

    /// Where one request's primary and shadow responses will meet.
    pub fn comparison(
        self: &Arc<Self>,
        head: &mut http::request::Parts,
        conn: &crate::message::ConnInfo,
    ) -> Arc<Comparison> {
        let vars = RequestVars::of(head, conn);
        // `{"ts_ms":…,"id":…,"method":…,"uri":…` for the diff line.
        let mut request = String::with_capacity(128);
        let _ = write!(request, "{{\"ts_ms\":{},\"id\":", vars.unix_ms);
        json::push_str(&mut request, &vars.id);
        request.push_str(",\"method\":");
        json::push_str(&mut request, head.method.as_str());
        request.push_str(",\"uri\":");
        json::push_str(&mut request, &head.uri.to_string());
        Arc::new(Comparison {
            comparer: self.clone(),
            request,
            state: Mutex::new(State::default()),
        })
    }

    fn judge(&self, request: &str, target: &Shadow, primary: &Observed, shadow: &Observed) {
        let verdict = self.rules.compare(primary, shadow);
        let stats = &target.stats;
        if verdict.matches() {
            bump(&stats.compare_match);
            return;
        }
        if verdict.status {
            bump(&stats.compare_status);
        }
        if !verdict.headers.is_empty() {
            bump(&stats.compare_headers);
        }
        if verdict.body {
            bump(&stats.compare_body);
        }
        let Some(log) = &self.diff_log else { return };
        if !self.limit.admit(std::time::Instant::now()) {
            return;
        }
        let mut line = String::with_capacity(1024);
        line.push_str(request);
        line.push_str(",\"mirror\":");
        json::push_str(&mut line, &self.mirror);
        line.push_str(",\"target\":");
        json::push_str(&mut line, &target.url.to_string());
        line.push_str(",\"differs\":");
        line.push_str(&serde_json::Value::from(verdict.differs()).to_string());
        line.push_str(",\"headers_differ\":");
        let names: Vec<&str> = verdict.headers.iter().map(|h| h.as_str()).collect();
        line.push_str(&serde_json::Value::from(names).to_string());
        line.push_str(",\"primary\":");
        push_observed(&mut line, primary);
        line.push_str(",\"shadow\":");
        push_observed(&mut line, shadow);
        line.push_str("}\n");
        log.write(line);
    }
}

fn push_observed(out: &mut String, observed: &Observed) {
    let _ = write!(out, "{{\"status\":{},", observed.status.as_u16());
    json::push_headers(out, "headers", &observed.headers);
    out.push(',');
    json::push_body(
        out,
        &observed.body,
        observed.body_len,
        observed.body_truncated(),
    );
    out.push('}');
}

/// The target a response came from, as a comparison counts and logs it.
#[derive(Clone)]
pub struct Shadow {
    pub url: UpstreamUrl,
    pub stats: Arc<TargetStats>,
}

/// One request's responses meeting: the primary's, and each target's.
pub struct Comparison {
    comparer: Arc<Comparer>,
    /// The request's fields of a diff line.
    request: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    primary: Primary,
    /// Targets that answered before the primary's response was complete.
    waiting: Vec<(Shadow, Observed)>,
}

#[derive(Default)]
enum Primary {
    #[default]
    Pending,
    Done(Arc<Observed>),
    /// The primary's response never completed (the client left, the
    /// upstream broke): there is nothing to compare with.
    Lost,
}

impl Comparison {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The primary's response, with a body that keeps what the comparison
    /// needs as it streams to the client.
    pub fn watch(self: Arc<Self>, response: Response) -> Response {
        let (parts, inner) = response.into_parts();
        let watched = Watched {
            collector: Some(BodyCollector::new(self.comparer.max_body)),
            // Kept until every target answered: must not pin hyper's buffer.
            head: Some((parts.status, crate::message::detached(&parts.headers, 0))),
            comparison: self,
        };
        Response::from_parts(parts, body::boxed(body::Observed::new(inner, watched)))
    }

    /// A collector for a target's response body.
    pub fn collector(&self) -> BodyCollector {
        BodyCollector::new(self.comparer.max_body)
    }

    /// A target's complete response.
    pub fn shadow_done(&self, target: &Shadow, observed: Observed) {
        let primary = {
            let mut state = self.lock();
            match &state.primary {
                Primary::Pending => {
                    state.waiting.push((target.clone(), observed));
                    return;
                }
                Primary::Lost => None,
                Primary::Done(primary) => Some(primary.clone()),
            }
        };
        match primary {
            Some(primary) => self
                .comparer
                .judge(&self.request, target, &primary, &observed),
            None => bump(&target.stats.compare_skipped),
        }
    }

    /// A target's response that cannot be compared (its body was longer
    /// than a shadow's response may be read).
    pub fn shadow_unreadable(&self, stats: &TargetStats) {
        bump(&stats.compare_skipped);
    }

    fn primary_done(self: &Arc<Self>, primary: Option<Observed>) {
        let waiting = {
            let mut state = self.lock();
            if !matches!(state.primary, Primary::Pending) {
                return;
            }
            state.primary = match primary {
                Some(observed) => Primary::Done(Arc::new(observed)),
                None => Primary::Lost,
            };
            std::mem::take(&mut state.waiting)
        };
        if waiting.is_empty() {
            return;
        }
        // Judging parses bodies: never on the thread serving the client.
        let this = self.clone();
        super::runtime::handle().spawn(async move {
            let primary = match &this.lock().primary {
                Primary::Done(primary) => Some(primary.clone()),
                _ => None,
            };
            for (target, observed) in waiting {
                match &primary {
                    Some(primary) => {
                        this.comparer
                            .judge(&this.request, &target, primary, &observed)
                    }
                    None => bump(&target.stats.compare_skipped),
                }
            }
        });
    }
}

/// Keeps what the comparison needs of the primary's response body on its
/// way to the client.
struct Watched {
    collector: Option<BodyCollector>,
    head: Option<(http::StatusCode, http::HeaderMap)>,
    comparison: Arc<Comparison>,
}

impl body::Observe for Watched {
    fn data(&mut self, data: &Bytes) {
        if let Some(collector) = self.collector.as_mut() {
            collector.push(data);
        }
    }

    fn done(&mut self, complete: bool) {
        let (Some(collector), Some((status, headers))) = (self.collector.take(), self.head.take())
        else {
            return;
        };
        let observed = complete.then(|| collector.finish(status, headers));
        self.comparison.primary_done(observed);
    }
}
