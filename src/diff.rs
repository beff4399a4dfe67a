//! Comparing two responses to the same request, as a built-in Diffy: the
//! primary's with a shadow's (`mirror { compare { … } }`), or a recorded
//! one with a replayed one (`teebox replay --compare`).
//!
//! Status codes are compared, then the headers the rules name, then the
//! body: structurally when the primary's says it is JSON (both parse, and
//! the `ignore` paths are left out), else byte for byte. Bodies are kept up
//! to a cap; past it, the whole body's length and hash decide.

use std::hash::Hasher;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value;

use crate::fnv::Fnv64;

/// What to compare, from the site file (or the replay command line).
#[derive(Debug, Clone, Default)]
pub struct CompareRules {
    /// Headers whose values must match (all values, in order).
    pub headers: Vec<HeaderName>,
    /// JSON paths left out of a JSON body comparison.
    pub ignore: Vec<JsonPath>,
}

/// A response as far as comparison needs it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, up to the cap.
    pub body: Bytes,
    /// The whole body's length.
    pub body_len: u64,
    /// A hash of the part past the cap (0 when there is none): only what
    /// is not kept is hashed, so bodies under the cap cost no hashing.
    pub body_hash: u64,
}

impl Observed {
    /// The response of a body seen whole (a recording, a test).
    pub fn whole(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        let mut collector = BodyCollector::new(u64::MAX);
        collector.push(&body);
        collector.finish(status, headers)
    }

    pub fn body_truncated(&self) -> bool {
        self.body_len > self.body.len() as u64
    }
}

/// Keeps a body's first `cap` bytes and hashes the rest, as it streams.
pub struct BodyCollector {
    kept: BytesMut,
    cap: u64,
    len: u64,
    hasher: Fnv64,
    hashed: bool,
}

impl BodyCollector {
    pub fn new(cap: u64) -> Self {
        BodyCollector {
            kept: BytesMut::new(),
            cap,
            len: 0,
            hasher: Fnv64::default(),
            hashed: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len() as u64) as usize;
        let (kept, rest) = data.split_at(data.len().min(room));
        self.kept.extend_from_slice(kept);
        if !rest.is_empty() {
            self.hasher.write(rest);
            self.hashed = true;
        }
        self.len += data.len() as u64;
    }

    pub fn finish(self, status: StatusCode, headers: HeaderMap) -> Observed {
        Observed {
            status,
            headers,
            body: self.kept.freeze(),
            body_len: self.len,
            body_hash: if self.hashed { self.hasher.finish() } else { 0 },
        }
    }
}

/// How two responses differ; all `false` is a match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    /// The named headers that differ.
    pub headers: Vec<HeaderName>,
    pub body: bool,
}

impl Verdict {
    pub fn matches(&self) -> bool {
        !self.status && self.headers.is_empty() && !self.body
    }

    /// `["status", "headers", "body"]`, the parts that differ.
    pub fn differs(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.status {
            out.push("status");
        }
        if !self.headers.is_empty() {
            out.push("headers");
        }
        if self.body {
            out.push("body");
        }
        out
    }
}

impl CompareRules {
    pub fn compare(&self, primary: &Observed, shadow: &Observed) -> Verdict {
        let headers = self
            .headers
            .iter()
            .filter(|name| {
                !primary
                    .headers
                    .get_all(*name)
                    .iter()
                    .eq(shadow.headers.get_all(*name).iter())
            })
            .cloned()
            .collect();
        Verdict {
            status: primary.status != shadow.status,
            headers,
            body: !self.same_body(primary, shadow),
        }
    }

    fn same_body(&self, primary: &Observed, shadow: &Observed) -> bool {
        if is_json(&primary.headers) && !primary.body_truncated() && !shadow.body_truncated() {
            if let (Ok(mut a), Ok(mut b)) = (
                serde_json::from_slice::<Value>(&primary.body),
                serde_json::from_slice::<Value>(&shadow.body),
            ) {
                for path in &self.ignore {
                    path.remove(&mut a);
                    path.remove(&mut b);
                }
                return a == b;
            }
        }
        primary.body_len == shadow.body_len
            && primary.body == shadow.body
            && primary.body_hash == shadow.body_hash
    }
}

/// `application/json` or any `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        })
        .unwrap_or(false)
}

/// A JSON path to leave out: `$.a.b`, `$.items[0].id`, `$.items[*].id`,
/// `$["odd key"]`, `$.*.ts`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    /// Every member of an object or element of an array.
    Any,
}

impl JsonPath {
    /// Parses a path; the error says what is wrong.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or("a JSON path starts with $, as in $.id")?;
        let mut steps = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                match key {
                    "" => return Err("a `.` must be followed by a key".into()),
                    "*" => steps.push(Step::Any),
                    _ => steps.push(Step::Key(key.to_string())),
                }
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or("a `[` is not closed")?;
                let inner = after[..end].trim();
                if inner == "*" {
                    steps.push(Step::Any);
                } else if let Some(quoted) = inner
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .or_else(|| inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                {
                    steps.push(Step::Key(quoted.to_string()));
                } else {
                    let index = inner
                        .parse()
                        .map_err(|_| format!("`[{inner}]` is not an index, * or a quoted key"))?;
                    steps.push(Step::Index(index));
                }
                rest = &after[end + 1..];
            } else {
                return Err(format!("unexpected `{rest}`: use .key or [index]"));
            }
        }
        if steps.is_empty() {
            return Err("`$` alone would ignore the whole body".into());
        }
        Ok(JsonPath(steps))
    }

    /// Removes what the path names from `value` (nothing if it is absent).
    pub fn remove(&self, value: &mut Value) {
        remove_at(value, &self.0);
    }
}

fn remove_at(value: &mut Value, steps: &[Step]) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    if rest.is_empty() {
        match (step, value) {
            (Step::Key(key), Value::Object(map)) => {
                map.remove(key);
            }
            (Step::Index(i), Value::Array(items)) if *i < items.len() => {
                items.remove(*i);
            }
            (Step::Any, Value::Object(map)) => map.clear(),
            (Step::Any, Value::Array(items)) => items.clear(),
            _ => {}
        }
        return;
    }
    match (step, value) {
        (Step::Key(key), Value::Object(map)) => {
            if let Some(child) = map.get_mut(key) {
                remove_at(child, rest);
            }
        }
        (Step::Index(i), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*i) {
                remove_at(child, rest);
            }
        }
        (Step::Any, Value::Object(map)) => map.values_mut().for_each(|c| remove_at(c, rest)),
        (Step::Any, Value::Array(items)) => items.iter_mut().for_each(|c| remove_at(c, rest)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Observed {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        Observed::whole(StatusCode::OK, headers, Bytes::from(body.to_string()))
    }

    fn rules(ignore: &[&str]) -> CompareRules {
        CompareRules {
            headers: Vec::new(),
            ignore: ignore.iter().map(|p| JsonPath::parse(p).unwrap()).collect(),
        }
    }

    #[test]
    fn json_is_compared_structurally_minus_ignored_paths() {
        let a = json(r#"{"id":1,"ts":100,"items":[{"id":5,"v":"x"}],"meta":{"rid":"a"}}"#);
        let b = json(r#"{ "ts":200, "id":1, "items":[{"v":"x","id":6}], "meta":{"rid":"b"} }"#);
        assert!(rules(&[]).compare(&a, &b).body);
        let r = rules(&["$.ts", "$.items[*].id", "$.meta.rid"]);
        assert!(r.compare(&a, &b).matches());
        let c = json(r#"{"id":2,"ts":1,"items":[{"v":"x"}],"meta":{}}"#);
        assert_eq!(r.compare(&a, &c).differs(), vec!["body"]);
    }

    #[test]
    fn other_bodies_are_compared_as_bytes() {
        let text =
            |s: &str| Observed::whole(StatusCode::OK, HeaderMap::new(), Bytes::from(s.to_string()));
        assert!(rules(&[])
            .compare(&text("{\"a\":1}"), &text("{\"a\":1}"))
            .matches());
        assert!(
            rules(&[])
                .compare(&text("{\"a\":1}"), &text("{ \"a\":1}"))
                .body
        );
    }

    #[test]
    fn truncated_bodies_fall_back_to_length_and_hash() {
        let mut one = BodyCollector::new(4);
        let mut two = BodyCollector::new(4);
        one.push(b"abcdef-1");
        two.push(b"abcdef-2");
        let (one, two) = (
            one.finish(StatusCode::OK, HeaderMap::new()),
            two.finish(StatusCode::OK, HeaderMap::new()),
        );
        assert_eq!(one.body, Bytes::from_static(b"abcd"));
        assert!(rules(&[]).compare(&one, &two).body);
    }

    #[test]
    fn status_and_named_headers() {
        let mut a = json("{}");
        let mut b = json("{}");
        b.status = StatusCode::NOT_FOUND;
        a.headers.insert("x-v", "1".parse().unwrap());
        b.headers.insert("x-v", "2".parse().unwrap());
        b.headers.insert("x-other", "ignored".parse().unwrap());
        let r = CompareRules {
            headers: vec![
                HeaderName::from_static("x-v"),
                HeaderName::from_static("content-type"),
            ],
            ignore: Vec::new(),
        };
        let verdict = r.compare(&a, &b);
        assert!(verdict.status);
        assert_eq!(verdict.headers, vec![HeaderName::from_static("x-v")]);
        assert!(!verdict.body);
    }

    #[test]
    fn paths_parse_or_say_why() {
        assert!(JsonPath::parse("$.a.b[2][*][\"odd key\"].*").is_ok());
        assert!(JsonPath::parse("a.b").is_err());
        assert!(JsonPath::parse("$").is_err());
        assert!(JsonPath::parse("$.a[x]").is_err());
        assert!(JsonPath::parse("$.a[1").is_err());
        assert!(JsonPath::parse("$..a").is_err());
    }
}
