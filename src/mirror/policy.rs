//! Which requests a mirror copies at all, decided before sampling:
//! `methods` (copy only these) and the loop `marker` (every copy carries
//! it; a request that arrives with it is served but never copied again, so
//! teebox mirroring to itself, directly or through other proxies, cannot
//! loop). Per-target pacing (`max_rps`) is in [`super::target`].
//! `primary_status` is decided later, on the primary's response head: see
//! [`super::gate`].

use std::hash::Hasher;
use std::ops::RangeInclusive;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The header every copy carries unless `marker #false`.
pub const DEFAULT_MARKER: HeaderName = crate::message::SHADOW_MARKER;

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
    /// `methods`: `None` for every method. `marker`: the header copies
    /// carry and copied requests are known by; `None` for none.
    pub fn new(methods: Option<Vec<Method>>, marker: Option<HeaderName>) -> Policy {
        Policy { methods, marker }
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

    /// The header copies carry, if any.
    pub fn marker(&self) -> Option<&HeaderName> {
        self.marker.as_ref()
    }

    /// Marks a copy's headers.
    pub fn mark(&self, headers: &mut HeaderMap) {
        if let Some(marker) = &self.marker {
            headers.insert(marker.clone(), HeaderValue::from_static("1"));
        }
    }
}

/// `sample_by`: what makes a request's sampling sticky.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleKey {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

impl SampleKey {
    /// The key's value in this request, if the request has one.
    pub fn value(
        &self,
        parts: &http::request::Parts,
        conn: &crate::message::ConnInfo,
    ) -> Option<String> {
        match self {
            SampleKey::Header(name) => parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            SampleKey::Cookie(name) => parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string()),
            SampleKey::Query(name) => parts.uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            }),
            SampleKey::ClientIp => Some(conn.client.ip().to_canonical().to_string()),
        }
    }
}

/// Whether a key is in the sampled `fraction`: the same answer for the same
/// key on every instance, platform and version. The key's bytes are hashed
/// with 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime
/// 0x100000001b3), then mixed with the SplitMix64 finalizer; the key is in
/// when the result is below `fraction × 2^64`.
pub fn sticky_in(key: &[u8], fraction: f64) -> bool {
    sticky_ticket(key).admits(fraction)
}

/// A request's place in `[0, 1)` for sampling: drawn once per request, then
/// compared with the mirror's `sample` and with each target's own. One
/// ticket for all of them makes the cohorts nest: a target sampling 0.01
/// gets a subset of what a target sampling 0.1 gets, user by user.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ticket(f64);

impl Ticket {
    pub fn random() -> Ticket {
        Ticket(rand::random::<f64>())
    }

    /// Whether a `sample` of `fraction` takes the request.
    pub fn admits(self, fraction: f64) -> bool {
        self.0 < fraction
    }
}

/// The ticket of a sampling key (see [`sticky_in`]). Dividing by 2^64 is
/// exact in floating point, so `ticket < fraction` is `h < fraction × 2^64`.
pub fn sticky_ticket(key: &[u8]) -> Ticket {
    let mut fnv = crate::fnv::Fnv64::default();
    fnv.write(key);
    let mut h = fnv.finish();
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    Ticket(h as f64 / 18_446_744_073_709_551_616.0)
}

/// `primary_status`: the statuses (100 to 599) whose copies are sent, one
/// bit each, so a class and an exact code are the same kind of thing and a
/// check is one shift.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusFilter {
    bits: [u64; 8],
}

impl StatusFilter {
    /// The statuses in `ranges`; any outside 100 to 599 are left out, as no
    /// response has them.
    pub fn new(ranges: impl IntoIterator<Item = RangeInclusive<u16>>) -> StatusFilter {
        let mut filter = StatusFilter { bits: [0; 8] };
        for range in ranges {
            for code in range.filter(|c| STATUSES.contains(c)) {
                let i = usize::from(code - 100);
                filter.bits[i / 64] |= 1 << (i % 64);
            }
        }
        filter
    }

    pub fn matches(&self, status: http::StatusCode) -> bool {
        let code = status.as_u16();
        if !STATUSES.contains(&code) {
            return false;
        }
        let i = usize::from(code - 100);
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
}

/// What a filter can hold.
const STATUSES: std::ops::Range<u16> = 100..600;

impl std::fmt::Debug for StatusFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes: Vec<u16> = (100..600)
            .filter(|&c| http::StatusCode::from_u16(c).is_ok_and(|s| self.matches(s)))
            .collect();
        f.debug_struct("StatusFilter")
            .field("codes", &codes)
            .finish()
    }
}

/// A token bucket: `rate` a second, and at most `burst` at once. A target's
/// `max_rps` uses a tenth of a second's worth as its burst, so a burst of
/// requests cannot spend more than that ahead of the rate; the compare
/// diff log allows a second's worth.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    /// For `max_rps`.
    pub fn new(rate: u32) -> Self {
        Self::with_burst(rate, (f64::from(rate) / 10.0).max(1.0))
    }

    pub fn with_burst(rate: u32, burst: f64) -> Self {
        let rate = f64::from(rate);
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

    /// What `sticky_in` says for user-1 … user-5 at 0.5; pinned so a
    /// change to the hash cannot go unnoticed.
    const STABLE: [bool; 5] = [false, true, true, true, true];
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
    fn sticky_sampling_is_stable_and_even() {
        // Fixed answers: the algorithm is part of the contract.
        let sample: Vec<bool> = ["user-1", "user-2", "user-3", "user-4", "user-5"]
            .iter()
            .map(|k| sticky_in(k.as_bytes(), 0.5))
            .collect();
        assert_eq!(sample, STABLE);
        let inside = (0..10_000)
            .filter(|i| sticky_in(format!("user-{i}").as_bytes(), 0.2))
            .count();
        // Binomial: sd = sqrt(10000 * 0.2 * 0.8) = 40; 5 sd either way.
        assert!((1800..=2200).contains(&inside), "{inside}");
        assert!(!sticky_in(b"anyone", 0.0));
        assert!(sticky_in(b"anyone", 1.0));
    }

    #[test]
    fn status_filter_holds_what_it_is_given_within_100_to_599() {
        let f = StatusFilter::new([200..=299, 304..=304, 418..=418, 0..=99, 600..=u16::MAX]);
        let ok = |c: u16| f.matches(http::StatusCode::from_u16(c).unwrap());
        assert!(ok(200) && ok(204) && ok(299) && ok(304) && ok(418));
        assert!(!ok(100) && !ok(199) && !ok(300) && !ok(305) && !ok(404) && !ok(599));
        let all = StatusFilter::new([100..=599]);
        assert!((100..600).all(|c| all.matches(http::StatusCode::from_u16(c).unwrap())));
    }

    #[test]
    fn tickets_agree_with_sticky_in() {
        for i in 0..1000 {
            let key = format!("k{i}");
            for f in [0.0, 0.01, 0.2, 0.5, 0.99, 1.0] {
                assert_eq!(
                    sticky_in(key.as_bytes(), f),
                    sticky_ticket(key.as_bytes()).admits(f)
                );
            }
        }
        // Nested: whoever is in at 0.01 is in at 0.1.
        let key = (0..)
            .map(|i| format!("u{i}"))
            .find(|k| sticky_in(k.as_bytes(), 0.01))
            .unwrap();
        assert!(sticky_in(key.as_bytes(), 0.1));
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
