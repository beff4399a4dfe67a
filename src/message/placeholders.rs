//! Placeholders in site-file values (`header_up "X-Request-Id" "{request.id}"`),
//! filled in per request.
//!
//! A `{name}` that looks like a placeholder must be a known one: a typo is
//! a diagnostic, not a header that silently carries the braces. It looks
//! like one when it is lower-case words joined by `.` or `_`, or, in any
//! case and with `-` too, when it is close to a known name or starts with a
//! known namespace (`{Client.IP}`, `{request-id}`, `{http.request.host}`).
//! Anything else in braces, such as a JSON value, is plain text.
//!
//! `{env.NAME}`, as in Caddy, is the environment variable NAME, read once
//! when the site file is loaded (and again on each reload).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;

use super::ConnInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// A UUID (version 4) made for the request: the same in the primary's
    /// headers, every copy's and the request's `record` line.
    RequestId,
    /// The client's address (the TCP peer), without port.
    ClientIp,
    /// The host the client addressed, with port if it gave one.
    RequestHost,
    /// When the request arrived, in milliseconds since the Unix epoch.
    TimeUnixMs,
}

pub const NAMES: [(&str, Placeholder); 4] = [
    ("request.id", Placeholder::RequestId),
    ("client.ip", Placeholder::ClientIp),
    ("request.host", Placeholder::RequestHost),
    ("time.unix_ms", Placeholder::TimeUnixMs),
];

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(Placeholder),
}

/// A value with placeholders in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Piece>);

/// A `{name}` that cannot be filled in: where it is in the text (bytes,
/// braces included), its name, and why.
#[derive(Debug, PartialEq)]
pub struct BadPlaceholder {
    pub start: usize,
    pub len: usize,
    pub name: String,
    pub why: Why,
}

#[derive(Debug, PartialEq)]
pub enum Why {
    /// No placeholder has this name; `near` is the one likely meant.
    Unknown { near: Option<String> },
    /// `{env.NAME}` for a variable that is not set (or not Unicode).
    UnsetEnv,
}

/// Namespaces of placeholders, teebox's and Caddy's (`http.`): a name in
/// one of them is meant as a placeholder, whatever its case.
const NAMESPACES: [&str; 5] = ["request.", "client.", "time.", "env.", "http."];

impl Template {
    /// `Ok(None)` when the text has no placeholders.
    pub fn parse(text: &str) -> Result<Option<Template>, BadPlaceholder> {
        let mut pieces = Vec::new();
        let mut has_placeholder = false;
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                break;
            };
            let name = &rest[open + 1..close];
            let bad = |why| BadPlaceholder {
                start: offset + open,
                len: close - open + 1,
                name: name.to_string(),
                why,
            };
            let piece = match meaning(name) {
                Meaning::Text => {
                    // Plain text; a placeholder may still start inside it.
                    literal.push_str(&rest[..=open]);
                    offset += open + 1;
                    rest = &rest[open + 1..];
                    continue;
                }
                Meaning::Var(var) => Piece::Var(var),
                Meaning::Env(var) => match std::env::var(var) {
                    Ok(value) => Piece::Text(value),
                    Err(_) => return Err(bad(Why::UnsetEnv)),
                },
                Meaning::Unknown(near) => return Err(bad(Why::Unknown { near })),
            };
            literal.push_str(&rest[..open]);
            match piece {
                Piece::Text(value) => literal.push_str(&value),
                var => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(var);
                }
            }
            has_placeholder = true;
            offset += close + 1;
            rest = &rest[close + 1..];
        }
        literal.push_str(rest);
        if !has_placeholder {
            return Ok(None);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Some(Template(pieces)))
    }

    /// The text, when it has no per-request placeholders (only
    /// `{env.NAME}`, already filled in).
    pub fn fixed(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Piece::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// Every piece of text the template holds, placeholders left out: what
    /// must be valid wherever the rendered value goes.
    pub fn text(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|piece| match piece {
            Piece::Text(text) => Some(text.as_str()),
            Piece::Var(_) => None,
        })
    }

    pub fn render(&self, vars: &RequestVars) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(var) => vars.push(&mut out, *var),
            }
        }
        out
    }
}

/// What a `{name}` stands for.
enum Meaning<'a> {
    /// Not a placeholder: the braces and all are text.
    Text,
    Var(Placeholder),
    /// `{env.NAME}`: the variable NAME.
    Env(&'a str),
    /// Meant as a placeholder, but none: the one likely meant, if any.
    Unknown(Option<String>),
}

fn meaning(name: &str) -> Meaning<'_> {
    if let Some((_, var)) = NAMES.iter().find(|(n, _)| *n == name) {
        return Meaning::Var(*var);
    }
    if let Some(var) = name.strip_prefix("env.").filter(|v| is_env_name(v)) {
        return Meaning::Env(var);
    }
    // Caddyfile's `{$NAME}`, which is ours `{env.NAME}`.
    if let Some(var) = name.strip_prefix('$').filter(|v| is_env_name(v)) {
        return Meaning::Unknown(Some(format!("env.{var}")));
    }
    let word_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !word_chars || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Meaning::Text;
    }
    let lower = name.to_ascii_lowercase();
    // Caddy's names for the same values: {http.request.host} is ours.
    let bare = lower.strip_prefix("http.").unwrap_or(&lower);
    let known = NAMES.map(|(n, _)| n);
    let near = match known.iter().find(|n| **n == bare) {
        Some(exact) => Some(exact.to_string()),
        None => match lower.strip_prefix("env.") {
            Some(_) if is_env_name(&name[4..]) => Some(format!("env.{}", &name[4..])),
            Some(var) => Some(format!(
                "env.{}",
                var.to_ascii_uppercase().replace(['.', '-'], "_")
            )),
            None => crate::suggest::suggest(bare, known).map(str::to_string),
        },
    };
    let lower_case_words = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    let in_namespace = NAMESPACES.iter().any(|ns| lower.starts_with(ns));
    match lower_case_words || in_namespace || near.is_some() {
        true => Meaning::Unknown(near),
        false => Meaning::Text,
    }
}

/// An environment variable's name as shells write them.
fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What the placeholders stand for in one request. Made on first use and
/// kept in the request's extensions, so every handler of the chain (and
/// every copy) sees the same id and time.
#[derive(Debug, Clone)]
pub struct RequestVars {
    pub id: Arc<str>,
    pub client_ip: IpAddr,
    /// As the client wrote it (`Host`, `:authority` or an absolute URI).
    pub host: Option<String>,
    pub unix_ms: u64,
}

impl RequestVars {
    /// The request's values, made now if no handler needed them before.
    pub fn of(parts: &mut Parts, conn: &ConnInfo) -> RequestVars {
        if let Some(vars) = parts.extensions.get::<RequestVars>() {
            return vars.clone();
        }
        let vars = RequestVars {
            id: new_request_id().into(),
            client_ip: conn.client.ip().to_canonical(),
            host: super::original_host(&parts.uri, &parts.headers)
                .and_then(|h| h.to_str().ok().map(str::to_string)),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        parts.extensions.insert(vars.clone());
        vars
    }

    fn push(&self, out: &mut String, var: Placeholder) {
        match var {
            Placeholder::RequestId => out.push_str(&self.id),
            Placeholder::ClientIp => {
                let _ = write!(out, "{}", self.client_ip);
            }
            Placeholder::RequestHost => out.push_str(self.host.as_deref().unwrap_or_default()),
            Placeholder::TimeUnixMs => {
                let _ = write!(out, "{}", self.unix_ms);
            }
        }
    }
}

/// A random (version 4) UUID in its usual text form.
fn new_request_id() -> String {
    let mut bits: u128 = rand::random();
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        let nibble = (bits >> (124 - 4 * i)) & 0xf;
        out.push(char::from(HEX[nibble as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> RequestVars {
        RequestVars {
            id: "id-1".into(),
            client_ip: "192.0.2.7".parse().unwrap(),
            host: Some("example.com:8080".into()),
            unix_ms: 1700000000123,
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = Template::parse("{request.id} {client.ip} {request.host} {time.unix_ms}!")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.render(&vars()),
            "id-1 192.0.2.7 example.com:8080 1700000000123!"
        );
    }

    #[test]
    fn plain_text_and_json_are_not_placeholders() {
        assert_eq!(Template::parse("plain").unwrap(), None);
        assert_eq!(Template::parse(r#"{"a":1}"#).unwrap(), None);
        assert_eq!(Template::parse("{ spaced }").unwrap(), None);
        let t = Template::parse(r#"{"a":"{request.id}"}"#).unwrap().unwrap();
        assert_eq!(t.render(&vars()), r#"{"a":"id-1"}"#);
    }

    #[test]
    fn unknown_placeholder_is_located() {
        let err = Template::parse("x-{request.uuid}").unwrap_err();
        assert_eq!(err.name, "request.uuid");
        assert_eq!((err.start, err.len), (2, 14));
    }

    fn near_miss(text: &str) -> Option<String> {
        match Template::parse(text) {
            Err(BadPlaceholder {
                why: Why::Unknown { near },
                ..
            }) => near,
            other => panic!("{text}: not an unknown placeholder: {other:?}"),
        }
    }

    #[test]
    fn near_misses_in_any_case_are_unknown_with_the_right_name() {
        let cases = [
            ("{client.IP}", "client.ip"),
            ("{Request.Id}", "request.id"),
            ("x {REQUEST.HOST} y", "request.host"),
            ("{request-id}", "request.id"),
            ("{http.request.host}", "request.host"),
            ("{ENV.HOME}", "env.HOME"),
            ("{Env.home-dir}", "env.HOME_DIR"),
            ("{$HOME}", "env.HOME"),
            ("{time.unix_MS}", "time.unix_ms"),
        ];
        for (text, want) in cases {
            assert_eq!(near_miss(text).as_deref(), Some(want), "{text}");
        }
        // Lower-case words, or a known namespace: a placeholder meant,
        // even with nothing close to suggest.
        assert_eq!(near_miss("{foo}"), None);
        near_miss("{Client.Port.Number}");
        near_miss("{HTTP.Vars.X}");
    }

    #[test]
    fn other_braces_stay_text() {
        for text in [
            "{X-Foo}",
            "{Bar}",
            "{a-b}",
            "{1.0}",
            "{}",
            "{$}",
            "{ request.id }",
        ] {
            assert_eq!(Template::parse(text).unwrap(), None, "{text}");
        }
    }

    #[test]
    fn env_is_read_when_parsed() {
        // Cargo sets it for every test it runs.
        let name = std::env::var("CARGO_PKG_NAME").unwrap();
        let t = Template::parse("{env.CARGO_PKG_NAME}/{request.id}")
            .unwrap()
            .unwrap();
        assert_eq!(t.render(&vars()), format!("{name}/id-1"));
        let t = Template::parse("v={env.CARGO_PKG_NAME}").unwrap().unwrap();
        assert_eq!(t.fixed(), Some(format!("v={name}").as_str()));
        let err = Template::parse("{env.TEEBOX_TEST_SURELY_UNSET_1b7e}").unwrap_err();
        assert_eq!(err.why, Why::UnsetEnv);
        assert_eq!(err.name, "env.TEEBOX_TEST_SURELY_UNSET_1b7e");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, new_request_id());
    }
}
