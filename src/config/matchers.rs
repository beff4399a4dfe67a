//! Matchers that pick a site (by host) and a route (by path, method and
//! headers), as written in the site file.

use http::{HeaderMap, HeaderName, Method};

use super::diag::Problem;
use super::value::{self, Parsed};

/// A route's path pattern: `"/x"` matches exactly, `"/x/*"` matches
/// everything under `/x/`, and `"/*"` matches every path.
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
            None => Ok(PathPattern::Exact(text)),
            Some(i) if i == text.len() - 1 => Ok(PathPattern::Prefix(text[..i].to_string())),
            Some(_) => Err(bad("`*` may only end the pattern")),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
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
}
