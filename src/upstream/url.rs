//! Where an upstream or mirror target lives, as written in the site file
//! or sent to the admin API: a URL with a scheme and an authority only.

use std::net::IpAddr;

use http::uri::{Authority, Scheme};

/// Where an upstream or mirror target lives: scheme and authority only.
///
/// Two URLs are equal when they reach the same place, however written:
/// `http://127.0.0.1` and `http://127.0.0.1:80/` are one target, and
/// listing both would send every request (or copy) there twice.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl PartialEq for UpstreamUrl {
    fn eq(&self, other: &Self) -> bool {
        self.place() == other.place()
    }
}

impl Eq for UpstreamUrl {}

impl UpstreamUrl {
    /// The port, the scheme's default if none is written.
    pub fn port(&self) -> u16 {
        match self.authority.port_u16() {
            Some(port) => port,
            None if self.scheme == Scheme::HTTPS => 443,
            None => 80,
        }
    }

    /// `scheme://authority/`, what a connector is asked to reach.
    pub fn origin(&self) -> http::Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        http::Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }

    /// The authority with the default port written out (`host:port`).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.authority.host(), self.port())
    }

    /// What tells targets apart: TLS or not, the host (case folded, an
    /// address in its one canonical form) and the port, default or not.
    fn place(&self) -> (bool, Host, u16) {
        let host = match self.ip_literal() {
            Some(ip) => Host::Ip(ip.to_canonical()),
            None => Host::Name(self.authority.host().to_ascii_lowercase()),
        };
        (self.scheme == Scheme::HTTPS, host, self.port())
    }

    /// The host, when it is an address written literally (an IPv6 one
    /// without its brackets).
    pub fn ip_literal(&self) -> Option<std::net::IpAddr> {
        let host = self.authority.host();
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

#[derive(PartialEq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Why text is not an upstream URL, and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    pub why: String,
    pub help: Option<String>,
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl UpstreamUrl {
    /// `"http://host:port"` or `"https://host:port"`. The path must be
    /// empty: paths are changed with `rewrite`, as in Caddy. Shared by the
    /// site file and the admin API.
    pub fn parse(text: &str) -> Result<UpstreamUrl, UrlError> {
        let bad = |why: &str, help: Option<String>| UrlError {
            why: why.to_string(),
            help,
        };
        let uri: http::Uri = text
            .parse()
            .map_err(|_| bad("not a URL", Some("write it as \"http://host:port\"".into())))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("no scheme", Some(format!("write \"http://{text}\""))))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("the scheme must be http:// or https://", None));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("no host", Some("write it as \"http://host:port\"".into())))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user information is not allowed in upstream URLs",
                None,
            ));
        }
        if authority.host().is_empty() {
            return Err(bad("no host", None));
        }
        check_port(&authority).map_err(|why| bad(&why, None))?;
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            return Err(bad(
                "an upstream URL has no path or query",
                Some("use `rewrite` before the handler to change the path".into()),
            ));
        }
        Ok(UpstreamUrl { scheme, authority })
    }
}

/// The valid TCP ports to connect to; port 0 means "any" only to `bind`.
const PORTS: std::ops::RangeInclusive<u16> = 1..=u16::MAX;

/// An authority's written port, if it has one, must be a connectable port:
/// `http`'s parser takes `:84631` as "no port" (so the scheme's default
/// would be used) and `:0` as port 0.
fn check_port(authority: &Authority) -> Result<(), String> {
    // After the host (an IPv6 one has its colons inside brackets).
    let Some(written) = authority.as_str()[authority.host().len()..].strip_prefix(':') else {
        return Ok(());
    };
    match written.parse::<u16>() {
        Ok(port) if PORTS.contains(&port) => Ok(()),
        _ => Err(format!(
            "port `{written}` is out of range: valid ports are {}-{}",
            PORTS.start(),
            PORTS.end()
        )),
    }
}
