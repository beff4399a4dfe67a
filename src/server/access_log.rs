//! One line per request, written when the response body is finished (or
//! abandoned), so the line has the real byte count and duration.
//!
//! Lines go through a bounded queue to a writer thread: a slow disk never
//! holds a request. When the queue is full the line is dropped and counted.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header;

use crate::config::{AccessLogTarget, LogFormat};
use crate::lines::{Destination, LineSink};
use crate::message::{body, ConnInfo, Request, Response};

const QUEUE: usize = 16 * 1024;

#[derive(Clone)]
pub struct AccessLog {
    sink: LineSink,
    format: LogFormat,
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget, base_dir: &Path, format: LogFormat) -> io::Result<Self> {
        let destination = match target {
            AccessLogTarget::Stdout => Destination::Stdout,
            AccessLogTarget::Stderr => Destination::Stderr,
            AccessLogTarget::File(path) => Destination::File {
                path: base_dir.join(path),
                roll: None,
            },
        };
        Ok(AccessLog {
            sink: LineSink::open(destination, QUEUE, "access log")?,
            format,
        })
    }

    /// Returns the response with a body that logs the request when done.
    pub fn wrap(&self, entry: Entry, response: Response) -> Response {
        let (parts, inner) = response.into_parts();
        let record = Record {
            log: self.clone(),
            entry,
            status: parts.status.as_u16(),
            bytes: 0,
        };
        Response::from_parts(parts, body::boxed(body::Observed::new(inner, record)))
    }
}

/// What is known of a request before the chain runs.
pub struct Entry {
    time: SystemTime,
    start: Instant,
    client: SocketAddr,
    method: String,
    uri: String,
    version: http::Version,
    /// The host (with port, if given) the client addressed.
    host: String,
    referer: String,
    user_agent: String,
}

impl Entry {
    pub fn begin(req: &Request, conn: &ConnInfo, start: Instant) -> Self {
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Entry {
            time: SystemTime::now(),
            start,
            client: conn.client,
            method: req.method().to_string(),
            uri: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: req.version(),
            // HTTP/2 has no `Host`, only `:authority`; an absolute-form
            // target's host overrides `Host` too (RFC 9112 §3.2.2).
            host: crate::message::original_host(req.uri(), req.headers())
                .and_then(|v| v.to_str().ok().map(str::to_string))
                .unwrap_or_default(),
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
        }
    }
}

struct Record {
    log: AccessLog,
    entry: Entry,
    status: u16,
    bytes: u64,
}

impl Record {
    fn line(&self) -> String {
        let e = &self.entry;
        let seconds = e.start.elapsed().as_secs_f64();
        let time = humantime::format_rfc3339_millis(e.time);
        match self.log.format {
            LogFormat::Json => {
                let mut line = serde_json::json!({
                    "ts": time.to_string(),
                    "client": e.client.to_string(),
                    "method": e.method,
                    "uri": e.uri,
                    "proto": format!("{:?}", e.version),
                    "host": e.host,
                    "status": self.status,
                    "bytes": self.bytes,
                    "duration_s": seconds,
                    "referer": e.referer,
                    "user_agent": e.user_agent,
                })
                .to_string();
                line.push('\n');
                line
            }
            // The combined log format, with an RFC 3339 time and the
            // duration in seconds at the end.
            LogFormat::Text => format!(
                "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" {:.6}\n",
                e.client.ip(),
                time,
                e.method,
                escape(&e.uri),
                e.version,
                self.status,
                self.bytes,
                escape(&e.referer),
                escape(&e.user_agent),
                seconds
            ),
        }
    }
}

/// Keeps quotes and control bytes from breaking a text log line; an empty
/// field is `-`, as in the combined log format.
fn escape(text: &str) -> String {
    if text.is_empty() {
        return "-".into();
    }
    text.chars()
        .flat_map(|c| match c {
            '"' => "\\\"".chars().collect::<Vec<_>>(),
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect()
}

impl Drop for Record {
    fn drop(&mut self) {
        self.log.sink.write(self.line());
    }
}

/// Counts the response's bytes; the line is written when the record is
/// dropped with the body, finished or abandoned.
impl body::Observe for Record {
    fn data(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
    }

    fn done(&mut self, _complete: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(req: http::request::Builder) -> String {
        let conn = ConnInfo::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            false,
        );
        Entry::begin(&req.body(body::empty()).unwrap(), &conn, Instant::now()).host
    }

    #[test]
    fn host_is_the_authority_when_there_is_one_else_the_host_header() {
        // HTTP/2: `:authority`, no `Host`.
        let h2 = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("http://h2.test:8443/x");
        assert_eq!(host_of(h2), "h2.test:8443");
        // HTTP/1.1 origin form: `Host`.
        let h1 = http::Request::builder().uri("/x").header("host", "h1.test");
        assert_eq!(host_of(h1), "h1.test");
        // An absolute-form target overrides `Host`.
        let absolute = http::Request::builder()
            .uri("http://target.test/x")
            .header("host", "other.test");
        assert_eq!(host_of(absolute), "target.test");
        assert_eq!(host_of(http::Request::builder().uri("/x")), "");
    }
}
