//! `teebox replay FILE… --target URL`: sends requests a `record` handler
//! wrote to another server, and sums up what came back.
//!
//! Each recorded request goes out with its method, path and query, headers
//! (the recorded `Host` kept as a header; the target's address is only
//! where to connect) and body. Pacing: as fast as `concurrency` allows, or
//! `rate` requests a second, or the recording's own pace sped up by
//! `speed`. With `compare`, each response is compared with the recorded one
//! by the same rules as `mirror { compare }`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::config::value::UpstreamUrl;
use crate::diff::{BodyCollector, CompareRules, Observed};
use crate::message::json::{body_from_fields, headers_from_pairs};
use crate::upstream::hop_by_hop;
use crate::upstream::tls_connector::{Connector, UpstreamTls};

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub files: Vec<PathBuf>,
    pub target: UpstreamUrl,
    pub pace: Pace,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Per request: connect, send and the whole response.
    pub timeout: Duration,
    /// Compare responses with the recorded ones, by these rules.
    pub compare: Option<CompareRules>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    AsFastAsPossible,
    /// Requests a second.
    Rate(f64),
    /// The recording's pace, this many times faster.
    Speed(f64),
}

/// What a replay did, printed at the end.
#[derive(Debug, Default)]
pub struct Summary {
    pub sent: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Recorded requests not sent, by reason (malformed line, cut body).
    pub skipped: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
    pub compare: Option<CompareCounts>,
    pub elapsed: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompareCounts {
    pub matched: u64,
    pub status_differs: u64,
    pub headers_differ: u64,
    pub body_differs: u64,
    /// The recording has no response to compare with (`responses` off).
    pub no_recorded_response: u64,
}

impl CompareCounts {
    pub fn mismatches(&self) -> u64 {
        self.status_differs + self.headers_differ + self.body_differs
    }
}

impl Summary {
    /// The `p`th percentile (0–100) of response times, in milliseconds.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "sent {} requests in {:.2}s ({:.1}/s)",
            self.sent,
            secs,
            if secs > 0.0 {
                self.sent as f64 / secs
            } else {
                0.0
            }
        )?;
        for (status, n) in &self.statuses {
            writeln!(f, "  {status}: {n}")?;
        }
        for (why, n) in &self.errors {
            writeln!(f, "  error ({why}): {n}")?;
        }
        for (why, n) in &self.skipped {
            writeln!(f, "skipped ({why}): {n}")?;
        }
        if let (Some(p50), Some(p90), Some(p99), Some(max)) = (
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.percentile(100.0),
        ) {
            writeln!(
                f,
                "latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}"
            )?;
        }
        if let Some(c) = &self.compare {
            writeln!(
                f,
                "compare: {} match, {} status differs, {} headers differ, {} body differs, {} without a recorded response",
                c.matched, c.status_differs, c.headers_differ, c.body_differs, c.no_recorded_response
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the target: {0}")]
    Client(String),
}

/// One recorded request, ready to send.
struct Recorded {
    ts_ms: Option<u64>,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    response: Option<RecordedResponse>,
}

/// A recorded response; when the recording cut its body, only that first
/// part is compared, and the whole lengths.
struct RecordedResponse {
    observed: Observed,
    /// The whole body's length, when the recording kept only part of it.
    cut_from: Option<u64>,
}

impl RecordedResponse {
    fn compare(&self, rules: &CompareRules, replayed: &Observed) -> crate::diff::Verdict {
        match self.cut_from {
            None => rules.compare(&self.observed, replayed),
            Some(whole) => {
                let kept = self.observed.body.len().min(replayed.body.len());
                let prefix = Observed::whole(
                    replayed.status,
                    replayed.headers.clone(),
                    replayed.body.slice(..kept),
                );
                let mut verdict = rules.compare(&self.observed, &prefix);
                verdict.body |= replayed.body_len != whole;
                verdict
            }
        }
    }
}

/// Why a request is skipped whose turn no clock can wait for.
pub const TOO_FAR_AHEAD: &str = "due further ahead than any wait at this pace";

/// Counts the recorded requests in the files (for the progress bar).
pub fn count(files: &[PathBuf]) -> Result<u64, ReplayError> {
    let mut n = 0;
    for path in files {
        let file = std::fs::File::open(path).map_err(|source| ReplayError::Unreadable {
            path: path.clone(),
            source,
        })?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| ReplayError::Unreadable {
                path: path.clone(),
                source,
            })?;
            n += u64::from(!line.trim().is_empty());
        }
    }
    Ok(n)
}

/// Replays every file in order; `progress` is called once per request
/// done (sent or skipped).
pub async fn replay(
    options: &ReplayOptions,
    progress: impl Fn() + Send + Sync + 'static,
) -> Result<Summary, ReplayError> {
    let connector = UpstreamTls::default()
        .connector(options.timeout, false)
        .map_err(ReplayError::Client)?;
    let client: Client<Connector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let summary = Arc::new(Mutex::new(Summary {
        compare: options.compare.as_ref().map(|_| CompareCounts::default()),
        ..Summary::default()
    }));
    let progress = Arc::new(progress);
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    let mut index: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for path in &options.files {
        let file = std::fs::File::open(path).map_err(|source| ReplayError::Unreadable {
            path: path.clone(),
            source,
        })?;
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| ReplayError::Unreadable {
                path: path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let recorded = match parse_line(&line) {
                Ok(recorded) => recorded,
                Err(why) => {
                    tracing::warn!(file = %path.display(), line = number + 1, "{why}; skipped");
                    skip(&summary, why);
                    progress();
                    continue;
                }
            };
            // Pacing: wait for the request's turn, in seconds from the start.
            let due = match options.pace {
                Pace::AsFastAsPossible => None,
                Pace::Rate(rate) => Some(index as f64 / rate),
                Pace::Speed(speed) => recorded.ts_ms.map(|ts| {
                    let first = *first_ts.get_or_insert(ts);
                    ts.saturating_sub(first) as f64 / 1000.0 / speed
                }),
            };
            index += 1;
            if let Some(due) = due {
                // A crafted `ts_ms`, or a tiny --rate or --speed, can put a
                // request past any time the clock can name.
                let Some(at) = Duration::try_from_secs_f64(due)
                    .ok()
                    .and_then(|due| started.checked_add(due))
                else {
                    skip(&summary, TOO_FAR_AHEAD.to_string());
                    progress();
                    continue;
                };
                tokio::time::sleep_until(at.into()).await;
            }
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let client = client.clone();
            let summary = summary.clone();
            let progress = progress.clone();
            let target = options.target.clone();
            let timeout = options.timeout;
            let rules = options.compare.clone();
            tasks.spawn(async move {
                // Keep enough of the response to compare it: what the
                // recording cut, or room for a JSON body whose ignored
                // fields grew.
                let cap = match (&rules, &recorded.response) {
                    (Some(_), Some(r)) => match r.cut_from {
                        Some(_) => r.observed.body.len() as u64,
                        None => (r.observed.body.len() as u64 + 1).max(1 << 20),
                    },
                    _ => 0,
                };
                let outcome = send(&client, &target, &recorded, timeout, cap).await;
                record_outcome(
                    &summary,
                    outcome,
                    recorded.response.as_ref(),
                    rules.as_ref(),
                );
                progress();
                drop(permit);
            });
            // Keep finished tasks from piling up on a long replay.
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
    let mut summary = std::mem::take(&mut *summary.lock().unwrap_or_else(|e| e.into_inner()));
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn skip(summary: &Mutex<Summary>, why: String) {
    let mut summary = summary.lock().unwrap_or_else(|e| e.into_inner());
    *summary.skipped.entry(why).or_default() += 1;
}

/// What sending one request gave.
enum Outcome {
    Response {
        observed: Observed,
        elapsed: Duration,
    },
    Error(String),
}

async fn send(
    client: &Client<Connector, Full<Bytes>>,
    target: &UpstreamUrl,
    recorded: &Recorded,
    timeout: Duration,
    cap: u64,
) -> Outcome {
    let uri = match Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(recorded.path_and_query.as_str())
        .build()
    {
        Ok(uri) => uri,
        Err(_) => return Outcome::Error("bad recorded URI".into()),
    };
    let mut req = Request::new(Full::new(recorded.body.clone()));
    *req.method_mut() = recorded.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = recorded.headers.clone();
    let started = Instant::now();
    let exchange = async {
        let response = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connect".to_string()
            } else {
                "broken exchange".to_string()
            }
        })?;
        let (parts, mut body) = response.into_parts();
        let mut collector = BodyCollector::new(cap);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| "response body".to_string())?;
            if let Some(data) = frame.data_ref() {
                collector.push(data);
            }
        }
        Ok::<_, String>(collector.finish(parts.status, parts.headers))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(observed)) => Outcome::Response {
            observed,
            elapsed: started.elapsed(),
        },
        Ok(Err(why)) => Outcome::Error(why),
        Err(_) => Outcome::Error("timeout".into()),
    }
}

fn record_outcome(
    summary: &Mutex<Summary>,
    outcome: Outcome,
    recorded: Option<&RecordedResponse>,
    rules: Option<&CompareRules>,
) {
    let mut summary = summary.lock().unwrap_or_else(|e| e.into_inner());
    summary.sent += 1;
    match outcome {
        Outcome::Error(why) => *summary.errors.entry(why).or_default() += 1,
        Outcome::Response { observed, elapsed } => {
            *summary
                .statuses
                .entry(observed.status.as_u16())
                .or_default() += 1;
            summary.latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
            if let (Some(rules), Some(counts)) = (rules, summary.compare.as_mut()) {
                match recorded {
                    None => counts.no_recorded_response += 1,
                    Some(recorded) => {
                        let verdict = recorded.compare(rules, &observed);
                        counts.matched += u64::from(verdict.matches());
                        counts.status_differs += u64::from(verdict.status);
                        counts.headers_differ += u64::from(!verdict.headers.is_empty());
                        counts.body_differs += u64::from(verdict.body);
                    }
                }
            }
        }
    }
}

/// A `record` line, as documented in the README ("Recording").
fn parse_line(line: &str) -> Result<Recorded, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let method = value["method"]
        .as_str()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or("no valid method")?;
    let uri: Uri = value["uri"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .ok_or("no valid uri")?;
    let mut headers = headers_from_pairs(&value["headers"]).ok_or("no valid headers")?;
    if value["body_truncated"].as_bool() == Some(true) {
        return Err("request body cut in the recording".into());
    }
    let body = body_from_fields(&value).ok_or("no valid body")?;
    // An HTTP/2 or absolute-form request named its host in the URI.
    if let (false, Some(authority)) = (headers.contains_key(http::header::HOST), uri.authority()) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(http::header::HOST, host);
        }
    }
    hop_by_hop::strip(&mut headers);
    // The body is sent whole, so its length is known again.
    headers.remove(http::header::CONTENT_LENGTH);
    let response = match &value["response"] {
        Value::Object(_) => {
            let response = &value["response"];
            let status = response["status"]
                .as_u64()
                // Not `as u16`: a crafted 65736 would wrap around to 200.
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or("no valid response status")?;
            let headers =
                headers_from_pairs(&response["headers"]).ok_or("no valid response headers")?;
            let body = body_from_fields(response).ok_or("no valid response body")?;
            let cut = (response["body_truncated"].as_bool() == Some(true))
                .then(|| response["body_bytes"].as_u64())
                .flatten();
            Some(RecordedResponse {
                observed: Observed::whole(status, headers, body),
                cut_from: cut,
            })
        }
        _ => None,
    };
    Ok(Recorded {
        ts_ms: value["ts_ms"].as_u64(),
        method,
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.to_string()),
        headers,
        body,
        response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_recorded_line() {
        let line = r#"{"ts_ms":5,"id":"x","method":"POST","uri":"http://shop.example/a?b=1","version":"HTTP/2.0",
            "headers":[["content-type","text/plain"],["content-length","2"],["connection","close"]],
            "body":"aGk=","body_encoding":"base64","body_bytes":2,"body_truncated":false,
            "response":{"status":201,"headers":[],"body":"ok","body_encoding":"utf-8","body_bytes":2,"body_truncated":false}}"#
            .replace('\n', "");
        let r = parse_line(&line).unwrap();
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.path_and_query, "/a?b=1");
        assert_eq!(r.headers["host"], "shop.example");
        assert!(!r.headers.contains_key("connection"));
        assert!(!r.headers.contains_key("content-length"));
        assert_eq!(r.body, Bytes::from_static(b"hi"));
        assert_eq!(r.response.unwrap().observed.status, StatusCode::CREATED);
    }

    #[test]
    fn refuses_cut_bodies_and_junk() {
        assert!(parse_line("not json").is_err());
        assert!(parse_line(r#"{"method":"GET"}"#).is_err());
        let cut = r#"{"method":"GET","uri":"/","headers":[],"body":"","body_encoding":"utf-8","body_truncated":true}"#;
        assert_eq!(
            parse_line(cut).err().unwrap(),
            "request body cut in the recording"
        );
    }

    #[test]
    fn a_response_status_past_u16_is_refused_not_wrapped() {
        let line = |status: u64| {
            format!(
                r#"{{"method":"GET","uri":"/","headers":[],"body":"","body_encoding":"utf-8","body_bytes":0,"body_truncated":false,"response":{{"status":{status},"headers":[],"body":"","body_encoding":"utf-8","body_bytes":0,"body_truncated":false}}}}"#
            )
        };
        let ok = parse_line(&line(200)).unwrap();
        assert_eq!(ok.response.unwrap().observed.status, StatusCode::OK);
        assert_eq!(
            parse_line(&line(65536 + 200)).err().unwrap(),
            "no valid response status"
        );
    }

    #[test]
    fn percentiles() {
        let summary = Summary {
            latencies_ms: (1..=100).map(f64::from).collect(),
            ..Summary::default()
        };
        assert_eq!(summary.percentile(50.0), Some(50.0));
        assert_eq!(summary.percentile(99.0), Some(99.0));
        assert_eq!(summary.percentile(100.0), Some(100.0));
    }
}
