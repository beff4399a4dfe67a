//! Placeholders in site-file values (`header_up "X-Request-Id" "{request.id}"`),
//! filled in per request.
//!
//! A `{name}` whose name looks like a placeholder (lower-case words joined
//! by `.` or `_`) must be a known one: a typo is a diagnostic, not a header
//! that silently carries the braces. Anything else in braces, such as a
//! JSON value, is plain text.

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

/// A `{name}` that is not a known placeholder: where it is in the text
/// (bytes, braces included) and its name.
#[derive(Debug, PartialEq)]
pub struct UnknownPlaceholder {
    pub start: usize,
    pub len: usize,
    pub name: String,
}

impl Template {
    /// `Ok(None)` when the text has no placeholders.
    pub fn parse(text: &str) -> Result<Option<Template>, UnknownPlaceholder> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                break;
            };
            let name = &rest[open + 1..close];
            if !looks_like_placeholder(name) {
                // Plain text; a placeholder may still start inside it.
                literal.push_str(&rest[..=open]);
                offset += open + 1;
                rest = &rest[open + 1..];
                continue;
            }
            let Some((_, var)) = NAMES.iter().find(|(n, _)| *n == name) else {
                return Err(UnknownPlaceholder {
                    start: offset + open,
                    len: close - open + 1,
                    name: name.to_string(),
                });
            };
            literal.push_str(&rest[..open]);
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Var(*var));
            offset += close + 1;
            rest = &rest[close + 1..];
        }
        literal.push_str(rest);
        if pieces.is_empty() {
            return Ok(None);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Some(Template(pieces)))
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

fn looks_like_placeholder(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase()
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

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, new_request_id());
    }
}
