//! `/targets`: list, add and remove a mirror's targets at runtime.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Method, StatusCode};

use super::{not_allowed, text, AdminResponse};
use crate::handlers::mirror::mirrors as running_mirrors;
use crate::handlers::Published;
use crate::mirror::Mirror;
use crate::upstream::target_guard;
use crate::upstream::url::UpstreamUrl;

/// `allow_target` patterns: `*` stands for any run of characters, matched
/// against `scheme://host:port`. No patterns: any `http://` or `https://`
/// URL.
pub struct TargetPatterns(Vec<String>);

impl TargetPatterns {
    pub fn new(patterns: &[String]) -> Self {
        TargetPatterns(patterns.to_vec())
    }

    fn allows(&self, url: &UpstreamUrl) -> bool {
        let text = format!("{}://{}", url.scheme, url.host_port());
        self.0.is_empty() || self.0.iter().any(|p| glob(p, &text))
    }

    /// Why a target added earlier may no longer receive copies under these
    /// patterns, if it may not: it matches none, or its host is an address
    /// the guard refuses that no pattern names. (A name is checked again
    /// each time copies resolve it.)
    pub fn refuses(&self, url: &UpstreamUrl) -> Option<String> {
        if !self.allows(url) {
            return Some("it matches no allow_target pattern".into());
        }
        let ip = url.ip_literal()?;
        let why = target_guard::refused_ip(ip)?;
        (!self.names_address(ip))
            .then(|| format!("{ip} is {why}, and no allow_target pattern names it"))
    }

    /// Whether a pattern names `ip` itself (no wildcard in its host), which
    /// is what lets a target reach an address the guard refuses.
    fn names_address(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|pattern| {
            let rest = pattern
                .split_once("://")
                .map_or(pattern.as_str(), |(_, r)| r);
            let host = match rest.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
            };
            !host.contains('*') && host.parse::<IpAddr>().ok() == Some(ip)
        })
    }
}

/// The most targets one mirror may have.
pub const MAX_TARGETS: usize = 1000;

/// Checks where a new target would send copies: its host's form, and every
/// address it resolves to now (copies check names again when connecting).
async fn check_destination(url: &UpstreamUrl, allow: &TargetPatterns) -> Result<(), Refusal> {
    let host = url.authority.host();
    target_guard::check_host_form(host)
        .map_err(|why| refuse(StatusCode::BAD_REQUEST, format!("{why}\n")))?;
    let addrs: Vec<IpAddr> = match url.ip_literal() {
        Some(ip) => vec![ip],
        None => tokio::net::lookup_host((host, url.port()))
            .await
            .map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot resolve {host}: {e}\n"),
                )
            })?
            .map(|a| a.ip())
            .collect(),
    };
    for ip in addrs {
        if let Some(why) = target_guard::refused_ip(ip) {
            if !allow.names_address(ip) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{url} goes to {ip}, {why}; only an allow_target pattern naming {ip} itself allows that\n"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// A refused call: its status and one-line reason.
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn into_response(self) -> AdminResponse {
        text(self.status, self.reason)
    }
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

struct Params {
    urls: Vec<String>,
    mirror: Option<String>,
}

fn params(query: &str) -> Result<Params, String> {
    let mut out = Params {
        urls: Vec::new(),
        mirror: None,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "url" => out.urls.push(value.into_owned()),
            "mirror" if out.mirror.is_none() => out.mirror = Some(value.into_owned()),
            "mirror" => return Err("give mirror= once".into()),
            other => return Err(format!("unknown parameter `{other}`; use url= and mirror=")),
        }
    }
    Ok(out)
}

fn select(mirrors: &[Arc<Mirror>], name: Option<&str>) -> Result<Arc<Mirror>, Refusal> {
    match name {
        Some(name) => mirrors
            .iter()
            .find(|m| m.name() == Some(name))
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = mirrors.iter().filter_map(|m| m.name()).collect();
                refuse(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no mirror named `{name}`; named mirrors: {}\n",
                        list_or_none(&names)
                    ),
                )
            }),
        None => match mirrors {
            [] => Err(refuse(
                StatusCode::NOT_FOUND,
                "the site file has no mirror\n",
            )),
            [only] => Ok(only.clone()),
            _ => {
                let names: Vec<&str> = mirrors.iter().filter_map(|m| m.name()).collect();
                Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the site file has {} mirrors; choose one with mirror=NAME ({})\n",
                        mirrors.len(),
                        list_or_none(&names)
                    ),
                ))
            }
        },
    }
}

fn list_or_none(names: &[&str]) -> String {
    match names {
        [] => "none has a name".into(),
        _ => names.join(", "),
    }
}

/// Who is calling, for the log line every change writes.
pub struct Caller<'a> {
    pub user: &'a str,
    pub client: IpAddr,
}

/// Answers a `/targets` call; `true` when the target set changed.
pub async fn handle(
    registry: &Published,
    allow: &TargetPatterns,
    method: &Method,
    query: &str,
    json: bool,
    who: &Caller<'_>,
) -> (AdminResponse, bool) {
    let params = match params(query) {
        Ok(p) => p,
        Err(why) => return (text(StatusCode::BAD_REQUEST, why + "\n"), false),
    };
    let mirror = match select(&running_mirrors(registry), params.mirror.as_deref()) {
        Ok(m) => m,
        Err(refusal) => return (refusal.into_response(), false),
    };
    let changed = match *method {
        Method::GET | Method::HEAD => return (list(&mirror, json), false),
        Method::PUT | Method::POST => add(&mirror, allow, &params.urls, who).await,
        Method::DELETE => remove(&mirror, &params.urls, who),
        _ => return (not_allowed("GET, PUT, DELETE"), false),
    };
    match changed {
        Ok(response) => (response, true),
        Err(refusal) => (refusal.into_response(), false),
    }
}

fn list(mirror: &Mirror, json: bool) -> AdminResponse {
    let targets = mirror.targets();
    if !json {
        let lines: String = targets.iter().map(|t| format!("{}\n", t.url())).collect();
        return text(StatusCode::OK, lines);
    }
    let entries: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| {
            let c = t.state().stats.counts();
            serde_json::json!({
                "mirror": mirror.label(),
                "url": t.url().to_string(),
                "state": if t.state().breaker.is_paused() { "paused" } else { "active" },
                "backlog": t.backlog_depth(),
                "in_flight": t.in_flight(),
                "counters": {
                    "sent": c.sent, "succeeded": c.succeeded, "failed": c.failed,
                    "timed_out": c.timed_out, "dropped": c.dropped,
                    "skipped_too_large": c.skipped_too_large, "skipped_paused": c.skipped_paused,
                    "incomplete": c.incomplete, "sampled_out": c.sampled_out, "paused": c.paused,
                    "skipped_method": c.skipped_method, "skipped_loop": c.skipped_loop,
                    "rate_limited": c.rate_limited,
                    "skipped_streaming": c.skipped_streaming,
                    "skipped_no_http2": c.skipped_no_http2,
                    "primary_filtered": c.primary_filtered,
                },
                "compare": mirror.compares().then(|| serde_json::json!({
                    "match": c.compare_match, "status_differs": c.compare_status,
                    "headers_differ": c.compare_headers, "body_differs": c.compare_body,
                    "skipped": c.compare_skipped,
                })),
            })
        })
        .collect();
    let mut response = text(
        StatusCode::OK,
        serde_json::Value::Array(entries).to_string() + "\n",
    );
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Checks every URL first: one bad URL changes nothing.
fn parse_all(urls: &[String]) -> Result<Vec<UpstreamUrl>, Refusal> {
    if urls.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "give one or more url= parameters\n",
        ));
    }
    let mut parsed: Vec<UpstreamUrl> = Vec::new();
    for raw in urls {
        let url = UpstreamUrl::parse(raw).map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("invalid target URL `{raw}`: {e}\n"),
            )
        })?;
        if parsed.contains(&url) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("{url} is given twice\n"),
            ));
        }
        parsed.push(url);
    }
    Ok(parsed)
}

async fn add(
    mirror: &Mirror,
    allow: &TargetPatterns,
    urls: &[String],
    who: &Caller<'_>,
) -> Result<AdminResponse, Refusal> {
    let urls = parse_all(urls)?;
    let current = mirror.targets();
    if current.len() + urls.len() > MAX_TARGETS {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "{} has {} targets; a mirror has at most {MAX_TARGETS}\n",
                mirror.label(),
                current.len()
            ),
        ));
    }
    for url in &urls {
        if !allow.allows(url) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("{url} matches no allow_target pattern\n"),
            ));
        }
        check_destination(url, allow).await?;
        if current.iter().any(|t| t.url() == url) {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("{url} is already a target of {}\n", mirror.label()),
            ));
        }
    }
    let mut body = String::new();
    for url in urls {
        let shown = url.to_string();
        if mirror.add_target(url) {
            tracing::info!(user = who.user, client = %who.client, action = "add", mirror = %mirror.label(), target_url = %shown, "admin change: target added");
            body.push_str(&format!("added {shown}\n"));
        }
    }
    Ok(text(StatusCode::OK, body))
}

fn remove(mirror: &Mirror, urls: &[String], who: &Caller<'_>) -> Result<AdminResponse, Refusal> {
    let urls = parse_all(urls)?;
    let current = mirror.targets();
    if let Some(missing) = urls.iter().find(|u| !current.iter().any(|t| t.url() == *u)) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("{missing} is not a target of {}\n", mirror.label()),
        ));
    }
    let mut body = String::new();
    for url in urls {
        if mirror.remove_target(&url) {
            tracing::info!(user = who.user, client = %who.client, action = "remove", mirror = %mirror.label(), target_url = %url, "admin change: target removed");
            body.push_str(&format!("removed {url}\n"));
        }
    }
    Ok(text(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("http://127.0.0.1:*", "http://127.0.0.1:9000"));
        assert!(glob(
            "http://*.staging.internal:*",
            "http://a.staging.internal:80"
        ));
        assert!(!glob("http://*.staging.internal:*", "http://evil.com:80"));
        assert!(!glob("http://127.0.0.1:*", "http://127.0.0.10.evil:1"));
        assert!(glob("http://a:80", "http://a:80"));
        assert!(!glob("http://a:80", "http://a:8080"));
    }
}
