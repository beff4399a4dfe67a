//! Which requests a mirror copies at all, decided before sampling:
//! `methods` (copy only these) and the loop `marker` (every copy carries
//! it; a request that arrives with it is served but never copied again, so
//! teebox mirroring to itself, directly or through other proxies, cannot
//! loop). Per-target pacing (`max_rps`) is in [`super::target`].

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use kdl::KdlNode;

use crate::config::reader::{arguments, Reader};
use crate::config::value;
use crate::config::Problem;

/// The header every copy carries unless `marker #false`.
pub const DEFAULT_MARKER: HeaderName = HeaderName::from_static("teebox-shadow");

#[derive(Debug, Clone)]
pub struct Policy {
    /// `None`: every method.
    methods: Option<Vec<Method>>,
    marker: Option<HeaderName>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            methods: None,
            marker: Some(DEFAULT_MARKER),
        }
    }
}

/// Why a request is not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Method,
    /// It is itself a copy (it carries the marker).
    Loop,
}

impl Policy {
    pub fn decode(
        methods: Option<&KdlNode>,
        marker: Option<&KdlNode>,
        r: &mut Reader,
    ) -> Option<Policy> {
        let methods = match methods {
            None => Some(None),
            Some(node) => {
                r.no_children(node);
                r.no_properties(node);
                let args = arguments(node);
                if args.is_empty() {
                    r.push(
                        Problem::error(node.name().span(), "`methods` needs one or more methods")
                            .label("missing argument")
                            .help("write methods \"GET\" \"HEAD\""),
                    );
                    None
                } else {
                    r.each(&args, value::method).map(Some)
                }
            }
        };
        let marker = match marker {
            None => Some(Some(DEFAULT_MARKER)),
            Some(node) => r.value(
                node,
                "a header name, or #false for none",
                |entry| match entry.value() {
                    kdl::KdlValue::Bool(false) => Ok(None),
                    _ => value::header_name(entry).map(Some),
                },
            ),
        };
        Some(Policy {
            methods: methods?,
            marker: marker?,
        })
    }

    /// Whether the request is left uncopied, and why.
    pub fn skips(&self, method: &Method, headers: &HeaderMap) -> Option<Skip> {
        if let Some(marker) = &self.marker {
            if headers.contains_key(marker) {
                return Some(Skip::Loop);
            }
        }
        match &self.methods {
            Some(methods) if !methods.contains(method) => Some(Skip::Method),
            _ => None,
        }
    }

    /// Marks a copy's headers.
    pub fn mark(&self, headers: &mut HeaderMap) {
        if let Some(marker) = &self.marker {
            headers.insert(marker.clone(), HeaderValue::from_static("1"));
        }
    }
}

/// A token bucket for one target's copies: `rate` a second, with a burst of
/// a tenth of a second's worth, so a burst cannot spend more than that
/// ahead of the rate.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        let burst = (rate / 10.0).max(1.0);
        RateLimit {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, std::time::Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn admit(&self, now: std::time::Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let refilled = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now);
            true
        } else {
            *state = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rate_limit_lets_through_the_rate_plus_a_small_burst() {
        let limit = RateLimit::new(50);
        let start = Instant::now();
        // 1000 offers spread over two simulated seconds.
        let admitted = (0..1000)
            .filter(|i| limit.admit(start + Duration::from_millis(i * 2)))
            .count();
        assert!((100..=106).contains(&admitted), "{admitted}");
    }

    #[test]
    fn marker_and_methods() {
        let policy = Policy {
            methods: Some(vec![Method::GET]),
            marker: Some(DEFAULT_MARKER),
        };
        let mut marked = HeaderMap::new();
        policy.mark(&mut marked);
        assert_eq!(policy.skips(&Method::GET, &marked), Some(Skip::Loop));
        assert_eq!(
            policy.skips(&Method::POST, &HeaderMap::new()),
            Some(Skip::Method)
        );
        assert_eq!(policy.skips(&Method::GET, &HeaderMap::new()), None);
    }
}
