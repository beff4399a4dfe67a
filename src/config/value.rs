//! Typed values read from KDL entries: strings, numbers, durations, sizes,
//! addresses and URLs. Each reader explains what it expected when it fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use kdl::{KdlEntry, KdlValue};
use miette::SourceSpan;

use super::diag::Problem;
pub use crate::suggest::suggest;
pub use crate::upstream::url::UpstreamUrl;

/// A value and the place in the site file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: SourceSpan,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: SourceSpan) -> Self {
        Spanned { value, span }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

pub type Parsed<T> = Result<T, Problem>;

/// The span of an entry's value, leaving out `key=` for properties.
pub fn value_span(entry: &KdlEntry) -> SourceSpan {
    let whole = entry.span();
    match entry.name() {
        Some(name) => {
            let skip = name.span().len() + 1;
            SourceSpan::new(
                (whole.offset() + skip).into(),
                whole.len().saturating_sub(skip),
            )
        }
        None => whole,
    }
}

fn kind(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn wrong_type(entry: &KdlEntry, expected: &str) -> Problem {
    Problem::error(
        value_span(entry),
        format!("expected {expected}, found {}", kind(entry.value())),
    )
    .label(format!("expected {expected}"))
}

pub fn string(entry: &KdlEntry) -> Parsed<String> {
    match entry.value() {
        KdlValue::String(s) => Ok(s.clone()),
        _ => Err(wrong_type(entry, "a string")),
    }
}

pub fn non_empty_string(entry: &KdlEntry) -> Parsed<String> {
    let s = string(entry)?;
    if s.is_empty() {
        return Err(Problem::error(value_span(entry), "this may not be empty").label("empty"));
    }
    Ok(s)
}

/// A regular expression, compiled by `compile` (`regex::Regex::new` for
/// text, `regex::bytes::Regex::new` for bodies).
pub fn regex<R>(
    entry: &KdlEntry,
    compile: impl FnOnce(&str) -> Result<R, regex::Error>,
) -> Parsed<R> {
    let pattern = non_empty_string(entry)?;
    compile(&pattern).map_err(|e| {
        let why = e.to_string();
        Problem::error(value_span(entry), "invalid regular expression")
            .label(why.lines().last().unwrap_or("invalid").to_string())
    })
}

pub fn boolean(entry: &KdlEntry) -> Parsed<bool> {
    match entry.value() {
        KdlValue::Bool(b) => Ok(*b),
        KdlValue::String(s) if s == "true" || s == "false" => Err(wrong_type(entry, "a boolean")
            .help(format!(
                "KDL v2 spells booleans #true and #false: write #{s}"
            ))),
        _ => Err(wrong_type(entry, "a boolean").help("write #true or #false")),
    }
}

/// An integer within `min..=max`.
pub fn integer(entry: &KdlEntry, min: i128, max: i128) -> Parsed<i128> {
    let Some(n) = entry.value().as_integer() else {
        return Err(wrong_type(entry, "an integer"));
    };
    if n < min || n > max {
        return Err(Problem::error(
            value_span(entry),
            format!("{n} is out of range: expected {min} to {max}"),
        )
        .label("out of range"));
    }
    Ok(n)
}

/// A fraction between 0 and 1 inclusive, as used by `sample`.
pub fn fraction(entry: &KdlEntry) -> Parsed<f64> {
    let f = match entry.value() {
        KdlValue::Float(f) => *f,
        KdlValue::Integer(i) => *i as f64,
        _ => return Err(wrong_type(entry, "a number between 0 and 1")),
    };
    if !(0.0..=1.0).contains(&f) {
        return Err(Problem::error(
            value_span(entry),
            format!("{f} is out of range: expected a fraction from 0 to 1"),
        )
        .label("out of range")
        .help("0.25 copies a quarter of the requests; 1 copies all of them"));
    }
    Ok(f)
}

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"` (and sums such as `"1m30s"`).
pub fn duration(entry: &KdlEntry) -> Parsed<Duration> {
    let bad = || {
        Problem::error(value_span(entry), "invalid duration")
            .label("not a duration")
            .help("write a number with a unit: \"500ms\", \"2s\", \"1m\" or \"1h\"")
    };
    let text = match entry.value() {
        KdlValue::String(s) => s.as_str(),
        KdlValue::Integer(_) | KdlValue::Float(_) => {
            return Err(Problem::error(value_span(entry), "a duration needs a unit")
                .label("no unit")
                .help("write it as a string with a unit, such as \"2s\" or \"500ms\""))
        }
        _ => return Err(bad()),
    };
    let d = parse_duration(text).ok_or_else(bad)?;
    if d > MAX_DURATION {
        return Err(Problem::error(
            value_span(entry),
            format!("this duration is over the limit of {MAX_DURATION_TEXT}"),
        )
        .label("too long")
        .help(format!(
            "durations in the site file are at most {MAX_DURATION_TEXT}; a timer set further out cannot be kept"
        )));
    }
    Ok(d)
}

/// The longest duration the site file takes. Timers are set at "now plus
/// the duration", which overflows the clock (and panicked every
/// connection) for a duration of centuries; no timeout or interval needs
/// more than a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_DURATION_TEXT: &str = "8760h (365 days)";

/// A duration that must be more than zero (timeouts, intervals).
pub fn positive_duration(entry: &KdlEntry) -> Parsed<Duration> {
    let d = duration(entry)?;
    if d.is_zero() {
        return Err(
            Problem::error(value_span(entry), "this duration must be more than zero").label("zero"),
        );
    }
    Ok(d)
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60)?),
            "h" => Duration::from_secs(number.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A byte size: an integer, or a string such as `"64KiB"`, `"1MiB"`, `"10MB"`.
pub fn size(entry: &KdlEntry) -> Parsed<u64> {
    let bad = || {
        Problem::error(value_span(entry), "invalid size")
            .label("not a size")
            .help("write bytes as an integer, or a string with a unit: \"64KiB\", \"1MiB\", \"1GiB\", \"10MB\"")
    };
    match entry.value() {
        KdlValue::Integer(n) => u64::try_from(*n).map_err(|_| bad()),
        KdlValue::String(s) => parse_size(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let number: u64 = text[..digits].parse().ok()?;
    let multiplier: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// A final HTTP status code, 200 to 599: what a handler answers with.
/// A 1xx is interim (RFC 9110 §15.2): hyper sends `100 Continue` itself,
/// and neither a bare 1xx nor a 101 without a protocol to switch to ends
/// an exchange, so it is refused here with its own message.
pub fn final_status(entry: &KdlEntry) -> Parsed<StatusCode> {
    if let Some(n @ 100..=199) = entry.value().as_integer() {
        return Err(Problem::error(
            value_span(entry),
            format!("{n} is an informational (1xx) status, not a final answer"),
        )
        .label("informational status")
        .help("answer with a final status, 200 to 599"));
    }
    let n = integer(entry, 200, 599)?;
    StatusCode::from_u16(n as u16).map_err(|_| wrong_type(entry, "an HTTP status code"))
}

pub fn method(entry: &KdlEntry) -> Parsed<Method> {
    let s = non_empty_string(entry)?;
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(
            Problem::error(value_span(entry), "HTTP methods are case-sensitive")
                .label("lower case")
                .help(format!("write \"{}\"", s.to_ascii_uppercase())),
        );
    }
    Method::from_bytes(s.as_bytes()).map_err(|_| {
        Problem::error(
            value_span(entry),
            format!("`{s}` is not a valid HTTP method"),
        )
        .label("not a method")
    })
}

pub fn header_name(entry: &KdlEntry) -> Parsed<HeaderName> {
    let s = non_empty_string(entry)?;
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| bad_header_name(value_span(entry), &s))
}

pub fn bad_header_name(span: SourceSpan, name: &str) -> Problem {
    Problem::error(span, format!("`{name}` is not a valid header name"))
        .label("not a header name")
        .help("header names are tokens: letters, digits and !#$%&'*+-.^_`|~")
}

pub fn header_value(entry: &KdlEntry) -> Parsed<HeaderValue> {
    let s = string(entry)?;
    HeaderValue::from_str(&s).map_err(|_| {
        Problem::error(
            value_span(entry),
            "header values may not hold control characters",
        )
        .label("not a header value")
    })
}

/// A `Host` header value: a name or address, with an optional port.
pub fn host_header(entry: &KdlEntry) -> Parsed<HeaderValue> {
    let s = non_empty_string(entry)?;
    match s.parse::<http::uri::Authority>() {
        Ok(authority) if !s.contains('@') && !authority.host().is_empty() => {
            HeaderValue::from_str(&s).map_err(|_| wrong_type(entry, "a host name"))
        }
        _ => Err(Problem::error(value_span(entry), format!("`{s}` is not a host name"))
            .label("not a host")
            .help("write a name with an optional port, such as \"staging.internal\" or \"staging:8080\"")),
    }
}

/// A listen address: `"127.0.0.1:8080"`, `"[::1]:8080"`, `"localhost:8080"`
/// or `":8080"` (every IPv4 interface).
pub fn listen_address(entry: &KdlEntry) -> Parsed<SocketAddr> {
    let text = non_empty_string(entry)?;
    let bad = |why: &str| {
        Problem::error(
            value_span(entry),
            format!("invalid listen address `{text}`: {why}"),
        )
        .label("not an address")
        .help("write an IP address and port: \"127.0.0.1:8080\", \"[::1]:8080\" or \":8080\"")
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => return Err(bad("the host must be an IP address")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// An upstream or target URL in the site file (see [`UpstreamUrl::parse`]).
pub fn upstream_url(entry: &KdlEntry) -> Parsed<UpstreamUrl> {
    let text = non_empty_string(entry)?;
    if text.ends_with(':')
        && text[..text.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphabetic())
    {
        return Err(Problem::error(
            value_span(entry),
            "this URL is cut short: `//` starts a comment in KDL",
        )
        .label("the rest became a comment")
        .help("quote the URL: \"http://host:port\""));
    }
    UpstreamUrl::parse(&text).map_err(|err| {
        let p = Problem::error(
            value_span(entry),
            format!("invalid upstream URL `{text}`: {}", err.why),
        )
        .label("bad URL");
        match err.help {
            Some(help) => p.help(help),
            None => p,
        }
    })
}

/// `again` names the place `first` already names, perhaps spelled
/// otherwise (`http://a:80` and `http://a`): the message says both.
pub fn listed_twice(
    again: &UpstreamUrl,
    span: SourceSpan,
    first: &UpstreamUrl,
    first_span: SourceSpan,
    help: &str,
) -> Problem {
    let message = match again.to_string() == first.to_string() {
        true => format!("{again} is listed twice"),
        false => format!("{again} is listed twice: it is {first} written another way"),
    };
    Problem::error(span, message)
        .label("again")
        .also(first_span, "first listed here")
        .help(help.to_string())
}

/// One of a fixed set of words, e.g. `lb_policy`.
pub fn one_of(entry: &KdlEntry, choices: &[&'static str]) -> Parsed<&'static str> {
    let s = string(entry)?;
    choices.iter().find(|c| **c == s).copied().ok_or_else(|| {
        let list = choices.join(", ");
        let p = Problem::error(value_span(entry), format!("unknown value `{s}`"))
            .label(format!("expected one of: {list}"));
        match suggest(&s, choices.iter().copied()) {
            Some(near) => p.help(format!("did you mean `{near}`?")),
            None => p,
        }
    })
}

/// A `{name}` in a value that teebox cannot fill in.
pub fn bad_placeholder(
    entry: &KdlEntry,
    bad: &crate::message::placeholders::BadPlaceholder,
) -> Problem {
    use crate::message::placeholders::{Why, NAMES};
    match &bad.why {
        Why::Unknown { near } => {
            let list = NAMES.map(|(n, _)| format!("{{{n}}}")).join(" ");
            let p = Problem::error(
                value_span(entry),
                format!("unknown placeholder `{{{}}}`", bad.name),
            )
            .label(format!("placeholders are: {list} {{env.NAME}}"));
            match near {
                Some(near) => p.help(format!("did you mean `{{{near}}}`?")),
                None => p,
            }
        }
        Why::UnsetEnv => {
            let var = bad.name.strip_prefix("env.").unwrap_or(&bad.name);
            Problem::error(
                value_span(entry),
                format!(
                    "`{{{}}}`: the environment variable {var} is not set",
                    bad.name
                ),
            )
            .label("read from teebox's environment when the site file is loaded")
            .help(format!(
                "set {var} where teebox (and `teebox validate`) runs, or write the value itself"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("2 weeks"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn durations_stop_at_a_year() {
        let entry = |text: &str| KdlEntry::new(KdlValue::String(text.into()));
        assert_eq!(duration(&entry("8760h")).ok(), Some(MAX_DURATION));
        for text in ["8761h", "8760h1ms", "18000000000000000000s"] {
            assert!(duration(&entry(text)).is_err(), "{text}");
        }
    }

    #[test]
    fn upstream_urls_compare_by_place_not_spelling() {
        let url = |s: &str| UpstreamUrl::parse(s).unwrap();
        let same = [
            ("http://127.0.0.1", "http://127.0.0.1:80"),
            ("http://127.0.0.1:80/", "HTTP://127.0.0.1"),
            ("https://Example.COM", "https://example.com:443/"),
            ("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080"),
            ("http://staging:8080", "http://staging:08080"),
        ];
        for (a, b) in same {
            assert_eq!(url(a), url(b), "{a} and {b}");
        }
        let different = [
            ("http://127.0.0.1", "https://127.0.0.1"),
            ("http://127.0.0.1:443", "https://127.0.0.1"),
            ("http://127.0.0.1", "http://127.0.0.2"),
            ("http://127.0.0.1", "http://localhost"),
            ("http://a:80", "http://a:8080"),
        ];
        for (a, b) in different {
            assert_ne!(url(a), url(b), "{a} and {b}");
        }
    }

    #[test]
    fn upstream_ports_must_be_1_to_65535() {
        for (url, port) in [
            ("http://127.0.0.1:1", 1),
            ("http://127.0.0.1:65535", 65535),
            ("http://[::1]:8080", 8080),
            ("https://a.internal", 443),
            ("http://[::1]", 80),
        ] {
            assert_eq!(UpstreamUrl::parse(url).map(|u| u.port()), Ok(port), "{url}");
        }
        for (url, written) in [
            ("http://127.0.0.1:84631", "84631"),
            ("http://127.0.0.1:0", "0"),
            ("http://127.0.0.1:65536", "65536"),
            ("http://[::1]:99999", "99999"),
            ("http://a.internal:", ""),
            ("http://a.internal:00000000080000", "00000000080000"),
        ] {
            let err = UpstreamUrl::parse(url).expect_err(url);
            assert_eq!(
                err.why,
                format!("port `{written}` is out of range: valid ports are 1-65535"),
                "{url}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("99999999999GiB"), None);
    }
}
