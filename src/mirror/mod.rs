//! The mirror engine behind the `mirror` handler: sampling, the copy of each
//! request, and per-target backlogs and worker pools that live apart from
//! the client's request.
//!
//! The request path does three cheap things: decide (sampling), tee the body
//! (reference-counted chunks, no copying), and offer the finished copy to
//! each target with a non-blocking send. Everything slow happens in the
//! targets' workers, so a slow, hanging or dead shadow changes nothing for
//! the client.

pub mod breaker;
pub mod compare;
pub mod copy;
mod copy_bytes;
mod copy_conn;
pub mod copy_edits;
pub mod gate;
pub mod grpc;
pub mod lending;
pub mod policy;
pub mod runtime;
pub mod stats;
pub mod target;
pub mod tee;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, Uri};

use crate::message::header_ops::HeaderOps;
use crate::message::placeholders::RequestVars;
use crate::message::ConnInfo;
use crate::upstream::pool::PoolSettings;
use crate::upstream::url::UpstreamUrl;
use copy::{CopyExtras, CopyRequest};
use stats::{bump, Counts};
use target::{CopyClient, Target, TargetSettings, TargetSpec};
use tee::Abandon;

/// Everything a `mirror` block says, checked.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub name: Option<String>,
    pub max_body: u64,
    pub alert_interval: Duration,
    pub header_up: HeaderOps,
    /// Path, query and body edits made to copies only.
    pub edits: Arc<copy_edits::CopyEdits>,
    /// `compare { … }`: targets' responses against the primary's.
    pub compare: Option<compare::CompareConfig>,
    /// `methods` and `marker`: which requests are copied at all.
    pub policy: policy::Policy,
    /// `sample_by`: sampling sticky by a key of the request.
    pub sample_by: Option<policy::SampleKey>,
    /// `host_suffix`: copies' Host is the client's host name plus this.
    pub host_suffix: Option<String>,
    /// `primary_status`: copies wait for the primary's head and go out
    /// only when its status is one of these.
    pub primary_status: Option<Arc<policy::StatusFilter>>,
    /// Every target's defaults, and all a runtime target gets. Its `sample`
    /// is the mirror's: no target is sent a request the mirror left out.
    pub targets: TargetSettings,
    /// For `https://` targets.
    pub tls: crate::upstream::tls_connector::UpstreamTls,
}

/// The live targets of one mirror. Swapped whole on every change, so the
/// request path reads it without a lock.
pub struct TargetSet {
    targets: ArcSwap<Vec<Arc<Target>>>,
    /// Serialises changes (adds and removes), not reads.
    changes: Mutex<()>,
}

impl TargetSet {
    pub fn current(&self) -> Arc<Vec<Arc<Target>>> {
        self.targets.load_full()
    }

    /// Takes a target out; its queued copies are dropped and counted.
    pub fn remove(&self, url: &UpstreamUrl) -> bool {
        self.remove_where(|t| t.url() == url)
    }

    /// Takes out this very target, if it is still in: not another added
    /// since under the same URL.
    pub fn remove_exact(&self, state: &Arc<target::TargetState>) -> bool {
        self.remove_where(|t| Arc::ptr_eq(t.state(), state))
    }

    fn remove_where(&self, is_it: impl Fn(&Target) -> bool) -> bool {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.targets.load_full();
        let Some(index) = current.iter().position(|t| is_it(t)) else {
            return false;
        };
        current[index].mark_removed();
        let mut next = current.as_ref().clone();
        next.remove(index);
        self.targets.store(Arc::new(next));
        true
    }

    fn add(&self, target: Target) -> Result<(), Target> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.targets.load_full();
        if current.iter().any(|t| t.url() == target.url()) {
            return Err(target);
        }
        let mut next = current.as_ref().clone();
        next.push(Arc::new(target));
        self.targets.store(Arc::new(next));
        Ok(())
    }
}

pub struct Mirror {
    options: MirrorOptions,
    /// Names the mirror in logs: its `name`, or its route.
    label: String,
    set: Arc<TargetSet>,
    /// The targets the site file lists, for telling runtime changes apart.
    configured: Vec<UpstreamUrl>,
    client: CopyClient,
    comparer: Option<Arc<compare::Comparer>>,
    /// The lowest `sample` of any target the file lists (or the mirror's):
    /// at 1, no request needs a ticket drawn.
    lowest_sample: f64,
    /// Whether some target samples less than the mirror: only then is the
    /// list of targets narrowed per request.
    narrower: bool,
    /// Whether some target has its own `header_up`, and whether one of
    /// those has placeholders: only then does a copy carry what they need.
    targets_edit_headers: bool,
    targets_need_vars: bool,
    /// Upgrade requests (WebSocket) are never copied: a copy could not
    /// take part in the conversation.
    skipped_upgrade: AtomicU64,
    /// Copies holding a connection's read buffer rather than their own.
    lending: Arc<lending::Lending>,
}

impl Mirror {
    /// Starts the targets' workers and the alert task on the current runtime.
    pub fn start(
        options: MirrorOptions,
        specs: &[TargetSpec],
        label: String,
        base_dir: &std::path::Path,
        metrics: &crate::counters::MetricsRegistry,
    ) -> Result<Arc<Mirror>, String> {
        let defaults = &options.targets;
        let all = || std::iter::once(defaults).chain(specs.iter().map(|s| &s.settings));
        // Shared by every target: each worker's own timeout bounds its copy.
        let timeout = all().map(|s| s.timeout).max().unwrap_or(defaults.timeout);
        let idle = all()
            .map(|s| s.concurrency)
            .max()
            .unwrap_or(defaults.concurrency);
        let client = CopyClient {
            connector: options.tls.connector(timeout, true)?,
            settings: PoolSettings {
                max_idle: idle,
                ..PoolSettings::default()
            },
            metrics: metrics.clone(),
            mirror: label.clone(),
        };
        let lowest_sample = all().map(|s| s.sample).fold(defaults.sample, f64::min);
        let narrower = specs.iter().any(|s| s.settings.sample < defaults.sample);
        let targets_edit_headers = specs.iter().any(|s| !s.settings.header_up.is_empty());
        let targets_need_vars = specs.iter().any(|s| s.settings.header_up.needs_vars());
        let comparer = match &options.compare {
            Some(config) => Some(Arc::new(compare::Comparer::start(
                config,
                options.max_body,
                label.clone(),
                base_dir,
            )?)),
            None => None,
        };
        let set = Arc::new(TargetSet {
            targets: ArcSwap::from_pointee(Vec::new()),
            changes: Mutex::new(()),
        });
        for spec in specs {
            // URLs were checked for duplicates when the file was read.
            let _ = set.add(Target::start(
                spec.url.clone(),
                &spec.settings,
                &client,
                &set,
            ));
        }
        tokio::spawn(alerts(
            Arc::downgrade(&set),
            options.alert_interval,
            label.clone(),
        ));
        Ok(Arc::new(Mirror {
            options,
            label,
            set,
            configured: specs.iter().map(|s| s.url.clone()).collect(),
            client,
            comparer,
            lowest_sample,
            narrower,
            targets_edit_headers,
            targets_need_vars,
            skipped_upgrade: AtomicU64::new(0),
            lending: Arc::default(),
        }))
    }

    pub fn name(&self) -> Option<&str> {
        self.options.name.as_deref()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.set.current()
    }

    /// Adds a target at runtime, with the mirror's options. `false` if it
    /// is already there.
    pub fn add_target(&self, url: UpstreamUrl) -> bool {
        let target = Target::start(url, &self.options.targets, &self.client, &self.set);
        match self.set.add(target) {
            Ok(()) => true,
            Err(target) => {
                target.abort();
                false
            }
        }
    }

    /// Targets added at runtime, and site-file targets removed at runtime.
    pub fn runtime_changes(&self) -> (Vec<UpstreamUrl>, Vec<UpstreamUrl>) {
        let current: Vec<UpstreamUrl> = self.targets().iter().map(|t| t.url().clone()).collect();
        let added = current
            .iter()
            .filter(|u| !self.configured.contains(u))
            .cloned()
            .collect();
        let removed = self
            .configured
            .iter()
            .filter(|u| !current.contains(u))
            .cloned()
            .collect();
        (added, removed)
    }

    pub fn remove_target(&self, url: &UpstreamUrl) -> bool {
        self.set.remove(url)
    }

    /// How long one copy may take; also the most a response waits for the
    /// rest of a body only the copy needs.
    pub fn copy_timeout(&self) -> Duration {
        self.options.targets.timeout
    }

    /// Whether the mirror has a `compare` block.
    pub fn compares(&self) -> bool {
        self.comparer.is_some()
    }

    pub fn skipped_upgrade(&self) -> u64 {
        self.skipped_upgrade.load(Ordering::Relaxed)
    }

    pub fn count_upgrade(&self) {
        bump(&self.skipped_upgrade);
    }

    /// Whether the mirror's policy leaves this request uncopied (counted
    /// per target when it does).
    pub fn skips(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        targets: &[Arc<Target>],
    ) -> bool {
        let Some(skip) = self.options.policy.skips(method, headers) else {
            return false;
        };
        for target in targets {
            let stats = &target.state().stats;
            bump(match skip {
                policy::Skip::Method => &stats.skipped_method,
                policy::Skip::Loop => &stats.skipped_loop,
            });
        }
        true
    }

    /// Decides, once per request, which targets are sent a copy: the
    /// mirror's `sample` first, then each target's own, all with the same
    /// [`policy::Ticket`]; then only targets that can take a copy now (not
    /// paused, room in the backlog), so that no body is collected only to
    /// be dropped. Counts the request per target left out; `None` when no
    /// target takes it.
    pub fn choose(
        &self,
        head: &http::request::Parts,
        conn: &ConnInfo,
        targets: Arc<Vec<Arc<Target>>>,
    ) -> Option<Arc<Vec<Arc<Target>>>> {
        let targets = self.sampled(head, conn, targets)?;
        let Some(first_out) = targets.iter().position(|t| !t.takes_copies()) else {
            return Some(targets);
        };
        let mut kept = targets[..first_out].to_vec();
        kept.extend(
            targets[first_out + 1..]
                .iter()
                .filter(|t| t.takes_copies())
                .cloned(),
        );
        (!kept.is_empty()).then(|| Arc::new(kept))
    }

    fn sampled(
        &self,
        head: &http::request::Parts,
        conn: &ConnInfo,
        targets: Arc<Vec<Arc<Target>>>,
    ) -> Option<Arc<Vec<Arc<Target>>>> {
        if self.lowest_sample >= 1.0 {
            return Some(targets);
        }
        let ticket = self.ticket(head, conn);
        if !ticket.admits(self.options.targets.sample) {
            for target in targets.iter() {
                bump(&target.state().stats.sampled_out);
            }
            return None;
        }
        if !self.narrower {
            return Some(targets);
        }
        let (taken, left): (Vec<_>, Vec<_>) = targets
            .iter()
            .cloned()
            .partition(|t| ticket.admits(t.sample()));
        for target in &left {
            bump(&target.state().stats.sampled_out);
        }
        match (taken.is_empty(), left.is_empty()) {
            (true, _) => None,
            (false, true) => Some(targets),
            (false, false) => Some(Arc::new(taken)),
        }
    }

    /// The request's sampling ticket: from its `sample_by` key when it has
    /// one (the same key is in or out everywhere: a user's whole session),
    /// else at random.
    fn ticket(&self, head: &http::request::Parts, conn: &ConnInfo) -> policy::Ticket {
        match self
            .options
            .sample_by
            .as_ref()
            .and_then(|by| by.value(head, conn))
        {
            Some(key) => policy::sticky_ticket(key.as_bytes()),
            None => policy::Ticket::random(),
        }
    }

    /// Takes what the copy needs from the request head, as `reverse_proxy`
    /// would send it upstream, plus the mirror's own edits (`rewrite`,
    /// `query_set`, `query_remove`, `header_up`). `None` when an edit
    /// cannot be made (a regex that yields no URI), or for a gRPC call
    /// when no target speaks HTTP/2: nothing is copied.
    pub fn pending(
        self: &Arc<Self>,
        head: &mut http::request::Parts,
        conn: &ConnInfo,
        mut targets: Arc<Vec<Arc<Target>>>,
    ) -> Option<PendingCopy> {
        let protocol = grpc::Protocol::of(&head.headers);
        if protocol == grpc::Protocol::Grpc {
            targets = target::over_http2(targets)?;
        }
        let vars = (self.options.header_up.needs_vars() || self.targets_need_vars)
            .then(|| RequestVars::of(head, conn));
        // A queued copy may wait long: it must not pin hyper's read buffer.
        // With room for the four forwarding headers and the loop marker
        // (less the Host that goes): the map is not grown for them.
        let room = 5 - usize::from(head.headers.contains_key(http::header::HOST));
        let mut headers = crate::message::detached(&head.headers, room);
        let had_length = headers.contains_key(http::header::CONTENT_LENGTH);
        let original_host =
            crate::upstream::upstream_headers(&mut headers, &head.uri, conn, true, false)
                .original_host;
        // Kept apart from the headers: a target's own `host` wins over it.
        let suffixed_host = match (&self.options.host_suffix, original_host) {
            (Some(suffix), Some(host)) => with_suffix(&host, suffix),
            _ => None,
        };
        self.options.header_up.apply(&mut headers, vars.as_ref());
        self.options.policy.mark(&mut headers);
        let origin = head
            .uri
            .path_and_query()
            .and_then(|pq| Uri::try_from(pq.as_str()).ok())
            .unwrap_or_else(|| Uri::from_static("/"));
        let Some(uri) = self.options.edits.uri(&origin) else {
            // Counted as failed, so the alert line reports it; no line per request.
            tracing::debug!(mirror = %self.label, uri = %origin, "the mirror's rewrite made an invalid URI; not copied");
            for target in targets.iter() {
                bump(&target.state().stats.failed);
            }
            return None;
        };
        let comparison = self.comparer.as_ref().map(|c| c.comparison(head, conn));
        let gate = self.options.primary_status.clone().map(gate::Gate::new);
        Some(PendingCopy {
            mirror: self.clone(),
            comparison,
            gate,
            suffixed_host,
            vars: vars.filter(|_| self.targets_need_vars),
            targets,
            method: head.method.clone(),
            uri,
            headers,
            had_length,
            protocol,
        })
    }

    /// Gives queued copies until `deadline` to be sent, then stops every
    /// worker and counts what was left as dropped.
    pub async fn drain(&self, deadline: Instant) {
        let targets = self.targets();
        let busy = || targets.iter().any(|t| t.held() > 0);
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if busy() {
            tracing::warn!(mirror = %self.label, "grace period over; dropping queued copies");
        }
        for target in targets.iter() {
            target.abort();
        }
    }
}

/// `api.example.com:8080` with suffix `-shadow` is
/// `api.example.com-shadow:8080`: the name changes, the port stays.
fn with_suffix(host: &http::HeaderValue, suffix: &str) -> Option<http::HeaderValue> {
    let text = host.to_str().ok()?;
    let name = crate::message::host_without_port(text);
    let port = &text[name.len()..];
    http::HeaderValue::from_str(&format!("{name}{suffix}{port}")).ok()
}

/// The copy of one request, waiting for the body to end.
pub struct PendingCopy {
    mirror: Arc<Mirror>,
    comparison: Option<Arc<compare::Comparison>>,
    /// With `primary_status`: where the copy waits for the primary's head.
    gate: Option<Arc<gate::Gate>>,
    suffixed_host: Option<http::HeaderValue>,
    /// For targets' own `header_up` placeholders.
    vars: Option<RequestVars>,
    /// The targets when the request arrived: a copy goes where the request
    /// was meant to be mirrored, even if the set changes meanwhile.
    targets: Arc<Vec<Arc<Target>>>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    had_length: bool,
    protocol: grpc::Protocol,
}

impl PendingCopy {
    pub fn protocol(&self) -> grpc::Protocol {
        self.protocol
    }

    /// With `compare`: where the primary's response is to be given.
    pub fn comparison(&self) -> Option<Arc<compare::Comparison>> {
        self.comparison.clone()
    }

    /// With `primary_status`: what the handler gives the primary's
    /// response head to, to let the copy go or discard it.
    pub fn verdict(&self) -> Option<gate::Verdict> {
        self.gate.clone().map(gate::Verdict::new)
    }

    pub fn max_body(&self) -> u64 {
        self.mirror.options.max_body
    }

    /// Whether every target answered the last copy it was sent and holds
    /// few copies: one for them may keep the chunks its body is read in.
    pub fn targets_keeping_up(&self) -> bool {
        self.targets.iter().all(|t| t.keeping_up())
    }

    /// `body`: the copy's own in an allocation of its size, or the chunks
    /// it came in, kept while the targets keep up and the mirror may lend
    /// their read buffers (see [`lending`]).
    pub fn dispatch(self, body: lending::CollectedBody, trailers: Option<HeaderMap>) {
        let as_read = matches!(body, lending::CollectedBody::Read(_));
        let (body, lent) = self.mirror.lending.keep(body, || self.targets_keeping_up());
        tracing::trace!(mirror = %self.mirror.label, uri = %self.uri, bytes = body.len(), as_read, lent = lent.is_some(), "copy complete");
        let edits = self.mirror.options.edits.clone();
        // `replace_body` would break a gRPC message's length prefix (and
        // protobuf's own), and a compressed body's bytes are no text to
        // edit: such copies are sent as they came.
        let body_rewrite = (edits.rewrites_body()
            && self.protocol == grpc::Protocol::Http
            && !encoded(&self.headers))
        .then_some(edits);
        let copy = Arc::new(CopyRequest::new(
            self.method,
            self.uri,
            self.headers,
            body,
            trailers,
            self.had_length,
            CopyExtras {
                body_rewrite,
                comparison: self.comparison,
                protocol: self.protocol,
                suffixed_host: self.suffixed_host,
                vars: self.vars,
                marker: self
                    .mirror
                    .targets_edit_headers
                    .then(|| self.mirror.options.policy.marker().cloned())
                    .flatten(),
                lent,
            },
        ));
        match self.gate {
            Some(gate) => gate.copy_ready(copy, self.targets),
            None => self.targets.iter().for_each(|t| t.offer(&copy)),
        }
    }

    pub fn abandon(self, why: Abandon) {
        tracing::debug!(mirror = %self.mirror.label, uri = %self.uri, reason = ?why, "copy abandoned");
        for target in self.targets.iter() {
            let stats = &target.state().stats;
            match why {
                Abandon::TooLarge | Abandon::Refused => bump(&stats.skipped_too_large),
                Abandon::Incomplete => bump(&stats.incomplete),
                Abandon::Streaming(_) => bump(&stats.skipped_streaming),
            }
        }
    }
}

/// At most one warning per target per interval, summing up what went wrong
/// since the last one: never a line per failed copy.
async fn alerts(set: std::sync::Weak<TargetSet>, interval: Duration, label: String) {
    let mut last: HashMap<String, Counts> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(set) = set.upgrade() else { return };
        let mut seen = HashMap::new();
        for target in set.current().iter() {
            let url = target.url().to_string();
            let now = target.state().stats.counts();
            // A target new since the last tick: news since it started
            // (its counters outlive a reload or a remove and re-add).
            let before = last
                .get(&url)
                .copied()
                .unwrap_or(target.state().counts_at_start);
            let delta = |f: fn(&Counts) -> u64| f(&now).saturating_sub(f(&before));
            let dropped = delta(|c| c.dropped);
            let failed = delta(|c| c.failed);
            let timed_out = delta(|c| c.timed_out);
            let skipped = delta(|c| c.skipped_paused + c.skipped_too_large + c.incomplete);
            let paused = delta(|c| c.paused);
            if dropped + failed + timed_out + skipped + paused > 0 {
                tracing::warn!(
                    mirror = %label,
                    target_url = %url,
                    dropped, failed, timed_out, skipped, paused,
                    succeeded = delta(|c| c.succeeded),
                    paused_now = target.state().breaker.is_paused(),
                    "mirror target trouble in the last {}",
                    humantime::format_duration(interval),
                );
            }
            seen.insert(url, now);
        }
        last = seen;
    }
}

/// The body is in a `Content-Encoding` (gzip, br, ...): its bytes are not
/// the text `replace_body` patterns describe.
fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}
