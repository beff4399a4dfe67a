//! Matchers that pick a site (by host) and a route (by path, method and
//! headers), as written in the site file.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, Method};

use super::diag::Problem;
use super::value::{self, Parsed};

/// A route's path pattern: `"/x"` matches exactly, `"/x/*"` matches
/// everything under `/x/`, and `"/*"` matches every path.
///
/// Patterns are compared with [`normalize_path`]'s output, so their own
/// percent-escapes are decoded the same way when they are parsed (`"/%61pi/*"`
/// is `"/api/*"`); otherwise such a pattern could never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl PathPattern {
    pub fn parse(entry: &kdl::KdlEntry) -> Parsed<PathPattern> {
        let text = value::string(entry)?;
        let bad = |why: &str| {
            Problem::error(
                value::value_span(entry),
                format!("invalid path pattern `{text}`: {why}"),
            )
            .label("bad pattern")
            .help("write an exact path \"/health\", a prefix \"/api/*\", or \"/*\" for every path")
        };
        if !text.starts_with('/') {
            return Err(bad("it must start with /"));
        }
        match text.find('*') {
            None => Ok(PathPattern::Exact(decode_escapes(&text).into_owned())),
            Some(i) if i == text.len() - 1 => {
                Ok(PathPattern::Prefix(decode_escapes(&text[..i]).into_owned()))
            }
            Some(_) => Err(bad("`*` may only end the pattern")),
        }
    }

    /// `path` is the request's path after [`normalize_path`].
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// The path that routes are matched against, normalised the way nginx
/// normalises `$uri` before matching locations, so that `/public/../admin`,
/// `/%61dmin` and `//admin` all meet the routes as `/admin`:
///
/// 1. `%XX` escapes are decoded, except `%2F` (`/`) and `%25` (`%`), which stay
///    encoded (with upper-case hex) so that decoding changes neither the
///    segments nor what a literal percent sign means; an invalid escape (`%zz`,
///    a lone `%`) stays as it is, and so do escapes whose bytes are not UTF-8
///    (`%FF`);
/// 2. repeated slashes are merged and dot segments removed (RFC 3986
///    §5.2.4), as nginx does in one pass: empty segments are dropped before a
///    `..` is applied, so `/a//../b` is `/b`, and `..` never climbs above `/`.
///    A trailing slash is kept (`/a/b/..` is `/a/`).
///
/// A path that needs none of this, the usual case, is returned borrowed.
/// Only the match uses this: the request itself is not changed.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    // The usual path has no escape, `//` or `/.`: nothing below would
    // change it.
    let bytes = path.as_bytes();
    let plain = !bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'.'))));
    if plain {
        return Cow::Borrowed(path);
    }
    let decoded = decode_escapes(path);
    if !decoded.starts_with('/') || !has_dot_or_empty_segments(&decoded) {
        return decoded;
    }
    let mut out = String::with_capacity(decoded.len());
    let mut trailing_slash = false;
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                // `out` is "" or "/seg/seg...": drop the last "/seg".
                out.truncate(out.rfind('/').unwrap_or(0));
                trailing_slash = last;
            }
            _ => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether the path (after its leading `/`) has an empty segment other than
/// a trailing one (`//`), or a `.` or `..` segment.
fn has_dot_or_empty_segments(path: &str) -> bool {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return true,
            "" if segments.peek().is_some() => return true,
            _ => {}
        }
    }
    false
}

/// Step 1 of [`normalize_path`]: decodes `%XX` escapes but `%2F` and `%25`
/// (whose hex is upper-cased), and leaves invalid escapes and escapes of
/// bytes that are not UTF-8 as they are (upper-cased).
fn decode_escapes(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let escape_at = |i: usize| -> Option<u8> {
        let hi = hex_value(*bytes.get(i + 1)?)?;
        let lo = hex_value(*bytes.get(i + 2)?)?;
        Some(hi << 4 | lo)
    };
    // The usual case: nothing to decode, and the escapes kept are already
    // upper case.
    let changes = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && escape_at(i)
                .is_some_and(|v| !matches!(v, b'/' | b'%') || bytes[i + 1..i + 3] != hex_pair(v))
    });
    if !changes {
        return Cow::Borrowed(path);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = if bytes[i] == b'%' { escape_at(i) } else { None };
        match escape {
            Some(v @ (b'/' | b'%')) => {
                decoded.push(b'%');
                decoded.extend_from_slice(&hex_pair(v));
                i += 3;
            }
            Some(v) => {
                decoded.push(v);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for chunk in decoded.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    Cow::Owned(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The two upper-case hex digits of `v`.
fn hex_pair(v: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    [DIGITS[usize::from(v >> 4)], DIGITS[usize::from(v & 0xF)]]
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(path) => f.write_str(path),
            PathPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// A `host` name: exact (`example.com`) or one-label wildcard (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*`, starting with a dot.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(entry: &kdl::KdlEntry) -> Parsed<HostPattern> {
        let text = value::non_empty_string(entry)?.to_ascii_lowercase();
        let bad = |why: &str| {
            Problem::error(
                value::value_span(entry),
                format!("invalid host `{text}`: {why}"),
            )
            .label("bad host")
            .help(
                "write a name such as \"example.com\" or \"*.example.com\", without scheme or port",
            )
        };
        let name = match text.strip_prefix("*.") {
            Some(rest) => rest,
            None => text.as_str(),
        };
        if name.contains('*') {
            return Err(bad(
                "`*` may only stand for the first label, as in *.example.com",
            ));
        }
        if name.contains(['/', ':', '@', ' ']) {
            return Err(bad("a host is a bare name"));
        }
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(bad("empty label"));
        }
        Ok(match text.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
            None => HostPattern::Exact(text),
        })
    }

    /// A sort key that puts the more specific of two patterns first, the
    /// way Caddy picks among sites: an exact name before any wildcard, and a
    /// wildcard with a longer suffix before one with a shorter suffix.
    pub fn precedence(&self) -> (bool, Reverse<usize>) {
        match self {
            HostPattern::Exact(_) => (false, Reverse(0)),
            HostPattern::Wildcard(suffix) => (true, Reverse(suffix.len())),
        }
    }

    /// `host` is lower case, without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// `header "Name"` (present) or `header "Name" "a" "b"` (equal to any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub values: Vec<String>,
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut present = headers.get_all(&self.name).iter().peekable();
        if self.values.is_empty() {
            return present.peek().is_some();
        }
        present.any(|v| {
            self.values
                .iter()
                .any(|want| v.as_bytes() == want.as_bytes())
        })
    }
}

/// Everything a route checks before its handlers run.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathPattern,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|h| h.matches(headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_wildcard_is_one_label() {
        let w = HostPattern::Wildcard(".example.com".into());
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
    }

    #[test]
    fn path_patterns() {
        let p = PathPattern::Prefix("/api/".into());
        assert!(p.matches("/api/x"));
        assert!(!p.matches("/api"));
        assert!(PathPattern::Prefix("/".into()).matches("/anything"));
        assert!(PathPattern::Exact("/a".into()).matches("/a"));
        assert!(!PathPattern::Exact("/a".into()).matches("/a/"));
    }

    fn normal(path: &str) -> String {
        normalize_path(path).into_owned()
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for path in [
            "/",
            "/api/users/7",
            "/dir/",
            "/a.b/.c/..d/...",
            "/a%2Fb/%25/%zz/%",
            "/caf\u{e9}",
            "*",
            "",
        ] {
            assert!(
                matches!(normalize_path(path), Cow::Borrowed(p) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn percent_escapes_are_decoded_but_slash_and_percent() {
        assert_eq!(normal("/%61dmin"), "/admin");
        assert_eq!(normal("/%41%42%43"), "/ABC");
        assert_eq!(normal("/caf%C3%A9/%e2%82%ac"), "/caf\u{e9}/\u{20ac}");
        // `%2F` is not a separator and `%25` not the start of an escape.
        assert_eq!(normal("/a%2Fb"), "/a%2Fb");
        assert_eq!(normal("/a%2fb"), "/a%2Fb");
        assert_eq!(normal("/%2561dmin"), "/%2561dmin");
        assert_eq!(normal("/%2561%62"), "/%2561b");
        // Invalid escapes, and bytes that are not UTF-8, stay as they are.
        assert_eq!(normal("/%zz/%4/%/%61"), "/%zz/%4/%/a");
        assert_eq!(normal("/%ff%61"), "/%FFa");
        assert_eq!(normal("/%C3%61"), "/%C3a");
        // A path that is not a path ("*") is only decoded.
        assert_eq!(normal("%2A"), "*");
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(normal("/public/../admin"), "/admin");
        assert_eq!(normal("/a/./b"), "/a/b");
        assert_eq!(normal("/a/b/../../c"), "/c");
        assert_eq!(normal("/a/b/.."), "/a/");
        assert_eq!(normal("/a/b/."), "/a/b/");
        assert_eq!(normal("/a/.."), "/");
        assert_eq!(normal("/.."), "/");
        assert_eq!(normal("/."), "/");
        assert_eq!(normal("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(normal("/a/../../../b/"), "/b/");
        // Decoded dots count; a dot inside a segment is no dot segment.
        assert_eq!(normal("/public/%2e%2E/admin"), "/admin");
        assert_eq!(normal("/public/.%2e/admin"), "/admin");
        assert_eq!(normal("/public/..%2Fadmin"), "/public/..%2Fadmin");
        assert_eq!(normal("/a/..b/.c/"), "/a/..b/.c/");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(normal("//admin"), "/admin");
        assert_eq!(normal("/a///b//"), "/a/b/");
        assert_eq!(normal("//"), "/");
        // As in nginx: the empty segment goes before `..` is applied.
        assert_eq!(normal("/a//../b"), "/b");
        assert_eq!(normal("/public//..//admin"), "/admin");
    }

    #[test]
    fn pattern_escapes_are_decoded_like_paths() {
        let entry = |text: &str| kdl::KdlEntry::new(text);
        assert_eq!(
            PathPattern::parse(&entry("/%61pi/*")).unwrap(),
            PathPattern::Prefix("/api/".into())
        );
        assert_eq!(
            PathPattern::parse(&entry("/a%2fb")).unwrap(),
            PathPattern::Exact("/a%2Fb".into())
        );
        assert!(PathPattern::parse(&entry("/a%2fb"))
            .unwrap()
            .matches(&normalize_path("/a%2fb")));
    }

    #[test]
    fn exact_hosts_come_before_wildcards() {
        let mut patterns = [
            HostPattern::Wildcard(".example.com".into()),
            HostPattern::Exact("api.example.com".into()),
            HostPattern::Wildcard(".b.example.com".into()),
            HostPattern::Exact("example.com".into()),
        ];
        patterns.sort_by_key(HostPattern::precedence);
        let order: Vec<String> = patterns.iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "api.example.com",
                "example.com",
                "*.b.example.com",
                "*.example.com"
            ]
        );
    }
}
