//! One mirror target: its bounded backlog, its fixed pool of workers, its
//! breaker and its counters.
//!
//! The request path only ever calls [`Target::offer`], a non-blocking send
//! into the backlog. Workers are tasks that take copies from the backlog one
//! at a time each, or, for copies without a body that may be sent again,
//! those waiting with it as one pipeline ([`PIPELINE_AT_MOST`]): the target
//! is answering at most `concurrency` copies at once.
//! A copy keeps its place in the backlog until its worker is done with it:
//! queued and in flight together, a target holds at most `backlog` copies.
//! A target owns the only sender of its backlog: when it is dropped, its
//! workers send what is queued and exit (or, if it was removed, drop it).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::upstream::pool::{self, PoolSettings, UpstreamPool};
use http::{header, HeaderValue, Request, Uri, Version};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Mutex};
use tokio::task::AbortHandle;

use super::breaker::{Admit, Breaker, BreakerConfig, Transition};
use super::compare::Shadow;
use super::copy::{CopyBody, CopyRequest};
use super::copy_conn::{Answer, CopyConn, CopyHead, ExchangeError};
use super::grpc::Protocol;
use super::policy::RateLimit;
use super::stats::{bump, TargetStats};
use super::TargetSet;
use crate::lazy_timer::LazyTimer;
use crate::message::error_chain;
use crate::message::header_ops::HeaderOps;
use crate::upstream::url::UpstreamUrl;

/// How a mirror's targets are reached: each target keeps its own pool of
/// connections, opened with the mirror's connector and these settings
/// (but `h2c`, which is the target's own).
pub struct CopyClient {
    pub connector: crate::upstream::tls_connector::Connector,
    pub settings: PoolSettings,
    /// Where each target's counters are kept across reloads, and under
    /// which mirror.
    pub metrics: crate::counters::MetricsRegistry,
    pub mirror: String,
}

type CopyPool = UpstreamPool<CopyBody>;

/// A copy answered within this is not held up by its target: if copies
/// pile up meanwhile, the copy thread is what is slow (see
/// [`super::runtime::keep_pace`]).
const QUICK_ANSWER: Duration = Duration::from_millis(10);

/// A shadow's response body is read (so the connection can be reused) up to
/// this much, then dropped: an endless response costs nothing more.
const DRAIN_CAP: usize = 1 << 20;

/// Copies a worker sends on its connection before their answers come, at
/// most: those already waiting when it takes one, and only bodyless copies
/// with safe methods (see [`CopyConn::exchange_pipelined`]).
/// A copy thread that shares a core with the serving threads runs in
/// turns; a worker that sent one copy per turn (16 workers: 16 copies) left
/// the rest waiting for the next turn, and the thread then preempted the
/// serving thread at every answer (a third of a context switch per
/// mirrored GET) to keep up.
const PIPELINE_AT_MOST: usize = 8;

/// How one target is run. The mirror's options are every target's
/// defaults (and all a runtime target gets); a `target` node changes some.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// `sample`: the share of all matching requests this target is sent.
    pub sample: f64,
    pub concurrency: usize,
    pub backlog: usize,
    pub timeout: Duration,
    pub breaker: BreakerConfig,
    /// `host`: the Host of copies; default the target's own authority.
    pub host: Option<HeaderValue>,
    /// `max_rps`: copies a second at most; over it they are dropped.
    pub max_rps: Option<u32>,
    /// `h2c`: the target speaks HTTP/2 with prior knowledge, even over
    /// `http://`; without it only an `https://` target can get HTTP/2
    /// (ALPN).
    pub h2c: bool,
    /// A `target` node's own `header_up`, made after the mirror's (which
    /// every copy already carries); empty for the mirror's defaults.
    pub header_up: HeaderOps,
}

/// A target the site file lists, with how it is run.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub url: UpstreamUrl,
    pub settings: TargetSettings,
}

struct Job {
    copy: Arc<CopyRequest>,
    probe: bool,
    /// Given back when the job is dropped, or, in a pipeline, when its
    /// answer comes.
    place: Option<Place>,
}

/// A copy's place in its target's backlog, given back when the job is
/// dropped: sent, skipped, or thrown away with the backlog.
struct Place(Arc<TargetState>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Release);
    }
}

/// What workers share with the target, without the backlog's sender.
pub struct TargetState {
    pub url: UpstreamUrl,
    /// Kept across reloads (see [`crate::counters::MetricsRegistry`]).
    pub stats: Arc<TargetStats>,
    /// What `stats` held when this target started: the alerts report
    /// what came after.
    pub counts_at_start: super::stats::Counts,
    pub breaker: Breaker,
    sample: f64,
    /// `host`, the target's or the mirror's.
    host: Option<HeaderValue>,
    /// The target URL's host and port, the Host when nothing else sets it.
    authority: HeaderValue,
    header_up: HeaderOps,
    rate: Option<RateLimit>,
    removed: AtomicBool,
    in_flight: AtomicU64,
    /// Copies queued or in flight, at most `backlog`.
    held: AtomicUsize,
    /// Whether the last copy a worker finished was answered: false until
    /// one is, and again once one fails or times out.
    answering: AtomicBool,
    backlog: usize,
    /// Whether copies can reach it over HTTP/2: `h2c`, or `https://` (if
    /// the target picks h2 by ALPN; a gRPC copy fails if it picks HTTP/1.1).
    http2: bool,
}

pub struct Target {
    state: Arc<TargetState>,
    tx: mpsc::Sender<Job>,
    workers: Vec<AbortHandle>,
}

impl Target {
    /// Starts the target's workers on the copy runtime.
    pub fn start(
        url: UpstreamUrl,
        settings: &TargetSettings,
        client: &CopyClient,
        set: &Arc<TargetSet>,
    ) -> Target {
        let http2 = settings.h2c || url.scheme == http::uri::Scheme::HTTPS;
        let authority = HeaderValue::from_str(url.authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        // A URL holds no space: the key names one (URL, mirror) pair.
        let stats = client
            .metrics
            .kept::<TargetStats>(&format!("{url} {}", client.mirror));
        let state = Arc::new(TargetState {
            http2,
            url,
            counts_at_start: stats.counts(),
            stats,
            breaker: Breaker::new(settings.breaker),
            sample: settings.sample,
            host: settings.host.clone(),
            authority,
            header_up: settings.header_up.clone(),
            rate: settings.max_rps.map(RateLimit::new),
            removed: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            answering: AtomicBool::new(false),
            backlog: settings.backlog.max(1),
        });
        // A plain HTTP/1.1 target gets a connection per worker, spoken to
        // without hyper's client (see `copy_conn`); the others a pool
        // (the copy runtime's threads are not serving workers: one idle
        // list).
        let own_connections = state.url.scheme == http::uri::Scheme::HTTP && !settings.h2c;
        let pool = (!own_connections).then(|| {
            Arc::new(CopyPool::new(
                state.url.origin(),
                client.connector.clone(),
                PoolSettings {
                    h2c: settings.h2c,
                    ..client.settings
                },
                1,
            ))
        });
        // Never full: a copy needs a place (see `held`) before it is sent.
        let (tx, rx) = mpsc::channel(state.backlog);
        let rx = Arc::new(Mutex::new(rx));
        let runtime = super::runtime::handle();
        let workers = (0..settings.concurrency.max(1))
            .map(|_| {
                let transport = match &pool {
                    Some(pool) => Transport::Pool(pool.clone()),
                    None => Transport::Own(CopyConn::new(
                        state.url.origin(),
                        client.connector.clone(),
                        client.settings,
                    )),
                };
                // A round: what the workers can take at once.
                let round = settings.concurrency.max(1)
                    * match transport {
                        Transport::Own(_) => PIPELINE_AT_MOST,
                        Transport::Pool(_) => 1,
                    };
                let worker = Worker {
                    state: state.clone(),
                    rx: rx.clone(),
                    transport,
                    behind: (round * 4).min(state.backlog / 2).max(1),
                    timeout: settings.timeout,
                    set: Arc::downgrade(set),
                };
                runtime.spawn(worker.run()).abort_handle()
            })
            .collect();
        Target { state, tx, workers }
    }

    pub fn state(&self) -> &Arc<TargetState> {
        &self.state
    }

    pub fn url(&self) -> &UpstreamUrl {
        &self.state.url
    }

    /// Copies waiting in the backlog.
    pub fn backlog_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Workers, each with at most one copy (and connection) at a time.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Copies that hold a place: queued, just taken by a worker, or being
    /// sent. Unlike the two above, never misses one between them.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::Acquire)
    }

    /// Whether copies offered now will be sent before long: the target
    /// answered the last copy it was sent, and holds few.
    pub fn keeping_up(&self) -> bool {
        self.state.answering.load(Ordering::Relaxed)
            && self.held() < super::lending::SHALLOW_BACKLOG
    }

    /// Whether a copy offered now could be taken: the target is not paused
    /// (or a probe is due) and its backlog has room. Without a place for
    /// it, a copy is not worth collecting: counted as `offer` would.
    pub fn takes_copies(&self) -> bool {
        let state = &self.state;
        if state.breaker.is_paused() && !state.breaker.probe_due(Instant::now()) {
            bump(&state.stats.skipped_paused);
            return false;
        }
        if state.held.load(Ordering::Acquire) >= state.backlog {
            bump(&state.stats.dropped);
            return false;
        }
        true
    }

    /// Takes a place in the backlog, if one is free.
    fn place(&self) -> Option<Place> {
        let state = &self.state;
        state
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < state.backlog).then_some(held + 1)
            })
            .ok()
            .map(|_| Place(state.clone()))
    }

    /// The share of all matching requests this target is sent.
    pub fn sample(&self) -> f64 {
        self.state.sample
    }

    /// Hands a copy to the backlog without waiting. Full: dropped, counted.
    pub fn offer(&self, copy: &Arc<CopyRequest>) {
        let stats = &self.state.stats;
        let probe = match self.state.breaker.admit(Instant::now()) {
            Admit::Send => false,
            Admit::Probe => true,
            Admit::Skip => return bump(&stats.skipped_paused),
        };
        if let Some(rate) = &self.state.rate {
            if !rate.admit(Instant::now()) {
                if probe {
                    self.state.breaker.probe_lost();
                }
                return bump(&stats.rate_limited);
            }
        }
        let sent = self.place().is_some_and(|place| {
            let job = Job {
                copy: copy.clone(),
                probe,
                place: Some(place),
            };
            self.tx.try_send(job).is_ok()
        });
        if !sent {
            bump(&stats.dropped);
            if probe {
                self.state.breaker.probe_lost();
            }
        }
    }

    /// Taken out of its mirror: workers drop (and count) what is still queued.
    pub fn mark_removed(&self) {
        self.state.removed.store(true, Ordering::Relaxed);
    }

    /// Stops the workers; what was queued or in flight is counted dropped.
    pub fn abort(&self) {
        let left = self.held() as u64;
        self.state.stats.dropped.fetch_add(left, Ordering::Relaxed);
        self.state.removed.store(true, Ordering::Relaxed);
        for worker in &self.workers {
            worker.abort();
        }
    }
}

struct Worker {
    state: Arc<TargetState>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    transport: Transport,
    /// Copies waiting past which the target is behind: four rounds of its
    /// workers (of full pipelines, on their own connections), or half its
    /// backlog if that is less (and at least one). A thread that runs in
    /// turns leaves many copies waiting between them, and each preemption
    /// it makes once it stops yielding costs more than the turn it saves
    /// (16 KiB POSTs: 40 → 32 µs of CPU per request with the higher mark).
    behind: usize,
    timeout: Duration,
    /// To take the target out of its mirror when the breaker says so.
    set: std::sync::Weak<TargetSet>,
}

/// How a worker reaches its target.
#[allow(
    clippy::large_enum_variant,
    reason = "one per worker, made once and never moved after"
)]
enum Transport {
    /// A plain `http://` target: the worker's own connection.
    Own(CopyConn),
    /// Over TLS or HTTP/2: hyper's client, on connections the target's
    /// workers share.
    Pool(Arc<CopyPool>),
}

/// How one copy went.
enum Outcome {
    Succeeded,
    Failed(String),
    TimedOut,
}

impl Worker {
    async fn run(mut self) {
        // One timer for all its copies, moved only when it must be.
        let mut timer = LazyTimer::default();
        let mut batch = Vec::with_capacity(PIPELINE_AT_MOST);
        // A copy taken while filling a batch that cannot join it: it goes
        // next, after the pipeline (a few milliseconds with a healthy
        // target, at most `timeout`).
        let mut held_over = None;
        loop {
            let job = match held_over.take() {
                Some(job) => job,
                None => {
                    let mut rx = self.rx.lock().await;
                    let Some(job) = rx.recv().await else { return };
                    if self.pipelines(&job) {
                        batch.push(job);
                        held_over = self.take_waiting(&mut rx, &mut batch);
                        drop(rx);
                        self.send_batch(&mut batch, &mut timer).await;
                        continue;
                    }
                    job
                }
            };
            if self.admit(&job) {
                self.send_one(job, &mut timer).await;
            }
        }
    }

    /// Whether `job` may go in a pipeline: a copy without a body whose
    /// method is safe (sent again, it changes nothing), not a breaker's
    /// probe, not compared (its latency
    /// would include the copies ahead of it), on a worker's own
    /// connection that still pipelines.
    fn pipelines(&self, job: &Job) -> bool {
        let Transport::Own(conn) = &self.transport else {
            return false;
        };
        conn.pipelines()
            && !job.probe
            && job.copy.comparison().is_none()
            && job.copy.method.is_safe()
            && job.copy.has_no_body()
    }

    /// Adds the copies already waiting that can join `batch`, so one turn
    /// of this thread sends many (see [`PIPELINE_AT_MOST`]); the first that
    /// cannot, if it took one.
    fn take_waiting(&self, rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) -> Option<Job> {
        while batch.len() < PIPELINE_AT_MOST {
            match rx.try_recv() {
                Ok(job) if self.pipelines(&job) => batch.push(job),
                Ok(job) => return Some(job),
                Err(_) => break,
            }
        }
        None
    }

    /// Sends the copies of `batch` still to be sent, one alone or as a
    /// pipeline, and empties it.
    async fn send_batch(&mut self, batch: &mut Vec<Job>, timer: &mut LazyTimer) {
        batch.retain(|job| self.admit(job));
        match batch.len() {
            0 => {}
            1 => {
                let job = batch.pop().expect("one job");
                self.send_one(job, timer).await;
            }
            _ => self.send_pipelined(batch, timer).await,
        }
        batch.clear();
    }

    /// Whether `job` is to be sent; if not, counted.
    fn admit(&self, job: &Job) -> bool {
        let stats = &self.state.stats;
        if self.state.removed.load(Ordering::Relaxed) {
            bump(&stats.dropped);
            return false;
        }
        // Copies queued before the target was paused are not sent.
        if !job.probe && self.state.breaker.is_paused() {
            bump(&stats.skipped_paused);
            return false;
        }
        true
    }

    async fn send_one(&mut self, job: Job, timer: &mut LazyTimer) {
        bump(&self.state.stats.sent);
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.timeout;
        let outcome = {
            let sending = std::pin::pin!(send(&self.state, &mut self.transport, &job.copy));
            timer.within(deadline, || deadline, sending).await
        };
        let took = started.elapsed();
        settle(
            &self.state,
            &self.set,
            job.probe,
            outcome.unwrap_or(Outcome::TimedOut),
            took,
        );
        self.keep_pace(took);
    }

    /// Sends `jobs` one after the other on the worker's connection before
    /// their answers come; each is settled as its answer comes, and those
    /// unanswered at the first one's deadline time out.
    async fn send_pipelined(&mut self, jobs: &mut [Job], timer: &mut LazyTimer) {
        let Transport::Own(conn) = &mut self.transport else {
            return;
        };
        let state = &self.state;
        state
            .stats
            .sent
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        state
            .in_flight
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        // Each copy's place in the backlog is given back as it is settled.
        let mut places: Vec<_> = jobs.iter_mut().map(|job| job.place.take()).collect();
        let parts: Vec<_> = jobs
            .iter()
            .map(|job| head_parts(state, &job.copy))
            .collect();
        let copies: Vec<_> = jobs
            .iter()
            .zip(&parts)
            .map(|(job, (headers, host))| {
                (CopyHead::of(&job.copy, headers, *host), job.copy.body())
            })
            .collect();
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.timeout;
        let mut answered = 0;
        let set = &self.set;
        let finished = {
            let mut on_answer = |index: usize, result: Result<Answer, ExchangeError>| {
                match result {
                    Ok(answer) => settle(
                        state,
                        set,
                        false,
                        outcome_of(answer.status),
                        started.elapsed(),
                    ),
                    // The copy ahead failed with the breaker: one failure,
                    // as if they had gone one at a time.
                    Err(err @ ExchangeError::Pipeline(_)) => {
                        tracing::debug!(target_url = %state.url, error = %err, "copy failed");
                        count(state, &state.stats.failed, started.elapsed());
                    }
                    Err(err) => settle(
                        state,
                        set,
                        false,
                        Outcome::Failed(err.to_string()),
                        started.elapsed(),
                    ),
                }
                places[index] = None;
                answered = index + 1;
            };
            let sending =
                std::pin::pin!(conn.exchange_pipelined(&copies, DRAIN_CAP, &mut on_answer));
            timer.within(deadline, || deadline, sending).await
        };
        let took = started.elapsed();
        if finished.is_none() {
            // An answer, then silence: perhaps a target that drops what it
            // reads past one request. Copies go one at a time from now on.
            if answered > 0 {
                conn.stop_pipelining();
            }
            // The copy the target did not answer in time fails once with
            // the breaker; those behind it never had their turn, and are
            // only counted.
            for (index, place) in places.iter_mut().enumerate().skip(answered) {
                match index == answered {
                    true => settle(state, set, false, Outcome::TimedOut, took),
                    false => count(state, &state.stats.timed_out, took),
                }
                *place = None;
            }
        }
        self.keep_pace(took);
    }

    /// Behind: copies are waiting (besides those in flight) while the
    /// target answers quickly, so the wait is this thread's, not the
    /// target's.
    fn keep_pace(&self, took: Duration) {
        let waiting = self
            .state
            .held
            .load(Ordering::Relaxed)
            .saturating_sub(self.state.in_flight.load(Ordering::Relaxed) as usize + 1);
        super::runtime::keep_pace(waiting > self.behind && took < QUICK_ANSWER);
    }
}

/// Counts how a copy went and tells the breaker.
fn settle(
    state: &Arc<TargetState>,
    set: &std::sync::Weak<TargetSet>,
    probe: bool,
    outcome: Outcome,
    took: Duration,
) {
    let stats = &state.stats;
    let success = matches!(outcome, Outcome::Succeeded);
    state.answering.store(success, Ordering::Relaxed);
    let counter = match &outcome {
        Outcome::Succeeded => &stats.succeeded,
        Outcome::Failed(why) => {
            tracing::debug!(target_url = %state.url, error = %why, probe, "copy failed");
            &stats.failed
        }
        Outcome::TimedOut => {
            tracing::debug!(target_url = %state.url, probe, "copy timed out");
            &stats.timed_out
        }
    };
    count(state, counter, took);
    let url = &state.url;
    match state.breaker.record(success, probe, Instant::now()) {
        Transition::None => {}
        Transition::Paused => {
            bump(&stats.paused);
            tracing::debug!(target_url = %url, "target paused after consecutive failures");
        }
        Transition::Resumed => {
            tracing::info!(target_url = %url, "target answers again; copies resumed")
        }
        Transition::Remove => {
            if let Some(set) = set.upgrade() {
                // This target, not one added again under its URL
                // while its last probe was out.
                if set.remove_exact(state) {
                    tracing::warn!(target_url = %url, "target removed: it has been failing for too long");
                }
            }
        }
    }
}

/// Counts a copy done, as `counter` says, with its latency. Alone, for a
/// copy a pipeline left unanswered behind one that failed (which told the
/// breaker).
fn count(state: &TargetState, counter: &AtomicU64, took: Duration) {
    state.stats.latency.record(took);
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    bump(counter);
}

/// A target answering with a server error failed the copy.
fn outcome_of(status: http::StatusCode) -> Outcome {
    if status.is_server_error() {
        Outcome::Failed(format!("status {status}"))
    } else {
        Outcome::Succeeded
    }
}

/// The headers a copy goes to `state`'s target with, and the Host to add.
/// The copy has no Host unless a header_up set one; then `host` (the
/// target's or the mirror's), the mirror's `host_suffix`, and last the
/// target's own name.
fn head_parts<'a>(
    state: &'a TargetState,
    copy: &'a CopyRequest,
) -> (
    std::borrow::Cow<'a, http::HeaderMap>,
    Option<&'a HeaderValue>,
) {
    let headers = copy.headers_for(&state.header_up);
    let host = (!headers.contains_key(header::HOST)).then(|| {
        state
            .host
            .as_ref()
            .or(copy.suffixed_host())
            .unwrap_or(&state.authority)
    });
    (headers, host)
}

/// Sends one copy to the target and reads its answer.
async fn send(state: &TargetState, transport: &mut Transport, copy: &CopyRequest) -> Outcome {
    let (headers, host) = head_parts(state, copy);
    let comparison = copy.comparison();
    let mut collector = comparison.map(|c| c.collector());
    let answered = match transport {
        Transport::Own(conn) => {
            let head = CopyHead::of(copy, &headers, host);
            let mut collect = |data: &[u8]| {
                if let Some(collector) = collector.as_mut() {
                    collector.push(data);
                }
            };
            conn.exchange(
                &head,
                &copy.body(),
                comparison.is_some(),
                DRAIN_CAP,
                &mut collect,
            )
            .await
            .map(|answer| (answer.status, answer.headers, answer.whole))
            .map_err(|err| err.to_string())
        }
        Transport::Pool(pool) => {
            let mut req = Request::new(copy.body());
            *req.method_mut() = copy.method.clone();
            *req.uri_mut() = pool::origin_form(&copy.uri).unwrap_or_else(|| Uri::from_static("/"));
            *req.headers_mut() = headers.into_owned();
            if let Some(host) = host {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            if copy.protocol() == Protocol::Grpc {
                // The client then refuses a connection that ALPN made
                // HTTP/1.1 rather than send gRPC where it cannot work.
                *req.version_mut() = Version::HTTP_2;
            }
            send_pooled(pool, req, copy.protocol(), collector.as_mut()).await
        }
    };
    let (status, headers, whole) = match answered {
        Ok(answered) => answered,
        Err(why) => return Outcome::Failed(why),
    };
    if let (Some(comparison), Some(collector)) = (comparison, collector) {
        match whole {
            true => comparison.shadow_done(
                &Shadow {
                    url: state.url.clone(),
                    stats: state.stats.clone(),
                },
                collector.finish(status, headers),
            ),
            false => comparison.shadow_unreadable(&state.stats),
        }
    }
    outcome_of(status)
}

/// Sends a copy with hyper's client and reads the answer's body (up to
/// [`DRAIN_CAP`], into `collector` with `compare`): its status, headers and
/// whether the body was read whole, or why there is no answer.
async fn send_pooled(
    pool: &CopyPool,
    req: Request<CopyBody>,
    protocol: Protocol,
    mut collector: Option<&mut crate::diff::BodyCollector>,
) -> Result<(http::StatusCode, http::HeaderMap, bool), String> {
    let response = match pool.send(req).await {
        Ok(response) => response,
        Err(err) if protocol == Protocol::Grpc => {
            return Err(format!(
                "{} (a gRPC copy; it needs HTTP/2)",
                error_chain(&err)
            ))
        }
        Err(err) => return Err(error_chain(&err)),
    };
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    let mut read = 0;
    while read <= DRAIN_CAP {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                    if let Some(collector) = collector.as_mut() {
                        collector.push(data);
                    }
                }
            }
            Some(Err(err)) => return Err(format!("response body: {err}")),
            None => return Ok((status, parts.headers, true)),
        }
    }
    Ok((status, parts.headers, false))
}

/// The targets a gRPC call can be copied to: those reached over HTTP/2.
/// The others count it `skipped_no_http2`; `None` when none is left.
pub fn over_http2(targets: Arc<Vec<Arc<Target>>>) -> Option<Arc<Vec<Arc<Target>>>> {
    if targets.iter().all(|t| t.state.http2) {
        return Some(targets);
    }
    let mut kept = Vec::with_capacity(targets.len());
    for target in targets.iter() {
        match target.state.http2 {
            true => kept.push(target.clone()),
            false => bump(&target.state.stats.skipped_no_http2),
        }
    }
    (!kept.is_empty()).then(|| Arc::new(kept))
}
