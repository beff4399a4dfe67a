//! What the admin endpoint checks before it authenticates anyone:
//!
//! - `Host` must name the endpoint itself (its address, or `localhost` on
//!   a loopback address): a page that rebinds its own DNS name to
//!   127.0.0.1 (DNS rebinding) sends its own name and is refused;
//! - a state-changing call (PUT, POST, DELETE) from a browser page of
//!   another origin (`Origin` not the endpoint's) is refused, so no page
//!   can drive the endpoint through a visitor's browser;
//! - bodies are capped (the endpoint takes its parameters in the query);
//! - a client address that keeps failing to log in waits longer and
//!   longer before each answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{header, HeaderMap, Method, StatusCode};

/// Admin calls carry their parameters in the query; a body is never needed.
pub const MAX_BODY: u64 = 64 * 1024;

/// The `host:port` spellings that name the endpoint.
pub struct Origins {
    hosts: Vec<String>,
}

impl Origins {
    pub fn new(local: SocketAddr) -> Self {
        let port = local.port();
        let mut hosts = vec![match local.ip() {
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        }];
        if local.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
            hosts.push(format!("127.0.0.1:{port}"));
            hosts.push(format!("[::1]:{port}"));
        }
        Origins { hosts }
    }

    fn names_us(&self, host_port: &str) -> bool {
        let host_port = host_port.to_ascii_lowercase();
        self.hosts.contains(&host_port)
    }

    /// `Err` with the reason when the request must be refused with 403.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), &'static str> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or_default();
            if !self.names_us(host) {
                return Err("the Host header does not name the admin endpoint\n");
            }
        }
        let changes = matches!(
            *method,
            Method::PUT | Method::POST | Method::DELETE | Method::PATCH
        );
        if let (true, Some(origin)) = (changes, headers.get(header::ORIGIN)) {
            let origin = origin.to_str().unwrap_or_default();
            let same = origin
                .strip_prefix("http://")
                .is_some_and(|host_port| self.names_us(host_port));
            if !same {
                return Err("a state-changing call from another origin is refused\n");
            }
        }
        Ok(())
    }
}

/// The status for a body over [`MAX_BODY`], when the request declares one.
pub fn body_too_large(headers: &HeaderMap) -> Option<StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY => Some(StatusCode::PAYLOAD_TOO_LARGE),
        _ => None,
    }
}

/// Failed logins per client address, for slowing repeated guessing.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Free tries before answers slow down; the slowest answer; how long a
/// quiet address is remembered.
const FREE_FAILURES: u32 = 3;
const MAX_DELAY: Duration = Duration::from_secs(10);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most, so the table cannot grow without bound.
const MAX_TRACKED: usize = 10_000;

impl Throttle {
    /// How long to wait before answering this address: nothing for the
    /// first few failures, then doubling from 250 ms up to 10 s.
    pub fn delay(&self, client: IpAddr) -> Duration {
        let failures = self.lock();
        match failures.get(&client) {
            Some(&(n, _)) if n > FREE_FAILURES => {
                let steps = (n - FREE_FAILURES - 1).min(10);
                (Duration::from_millis(250) * 2u32.pow(steps)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, client: IpAddr) {
        let mut failures = self.lock();
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        if failures.len() < MAX_TRACKED || failures.contains_key(&client) {
            let entry = failures.entry(client).or_insert((0, now));
            *entry = (entry.0.saturating_add(1), now);
        }
    }

    pub fn succeeded(&self, client: IpAddr) {
        self.lock().remove(&client);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn host_and_origin() {
        let o = Origins::new("127.0.0.1:2019".parse().unwrap());
        assert!(o
            .check(&Method::GET, &headers(&[("host", "127.0.0.1:2019")]))
            .is_ok());
        assert!(o
            .check(&Method::GET, &headers(&[("host", "LOCALHOST:2019")]))
            .is_ok());
        assert!(o.check(&Method::GET, &headers(&[])).is_ok());
        assert!(o
            .check(&Method::GET, &headers(&[("host", "evil.test:2019")]))
            .is_err());
        let put = |origin| {
            o.check(
                &Method::PUT,
                &headers(&[("host", "127.0.0.1:2019"), ("origin", origin)]),
            )
        };
        assert!(put("http://127.0.0.1:2019").is_ok());
        assert!(put("http://evil.test").is_err());
        assert!(put("null").is_err());
        // Reading is fine from anywhere the Host allows.
        assert!(o
            .check(
                &Method::GET,
                &headers(&[("host", "127.0.0.1:2019"), ("origin", "http://evil.test")])
            )
            .is_ok());
    }

    #[test]
    fn throttle_doubles_after_free_tries_and_resets() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<Duration> = (0..7)
            .map(|_| {
                t.failed(ip);
                t.delay(ip)
            })
            .collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3], Duration::from_millis(250));
        assert_eq!(delays[4], Duration::from_millis(500));
        t.succeeded(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
    }
}
