//! How `record` lines and compare diff lines write HTTP messages as JSON,
//! one format for both (documented in the README, "Recording and replay").

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;

use serde_json::Value;

/// Appends `text` as a JSON string, quoted and escaped.
pub fn push_str(out: &mut String, text: &str) {
    out.push('"');
    let plain = |c: char| c != '"' && c != '\\' && c >= ' ';
    if text.chars().all(plain) {
        out.push_str(text);
    } else {
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c < ' ' => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Appends `"key":` to an object being written.
pub fn push_key(out: &mut String, key: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

/// Appends `"headers":[[name, value], …]`: in order, repeated names kept.
/// A value that is not UTF-8 (obs-text, such as Latin-1) is written as
/// `{"base64":"…"}` so that its bytes come back exactly; as text it would
/// have to lose them.
pub fn push_headers(out: &mut String, key: &str, headers: &HeaderMap) {
    push_key(out, key);
    out.push('[');
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_str(out, name.as_str());
        out.push(',');
        match std::str::from_utf8(value.as_bytes()) {
            Ok(text) => push_str(out, text),
            Err(_) => {
                out.push_str("{\"base64\":\"");
                base64::engine::general_purpose::STANDARD.encode_string(value.as_bytes(), out);
                out.push_str("\"}");
            }
        }
        out.push(']');
    }
    out.push(']');
}

/// Appends `"body"` (UTF-8 text when it is, else base64, as
/// `"body_encoding"` says), `"body_bytes"` (the whole body's size) and
/// `"body_truncated"`. `kept` is the part of the body that was kept.
pub fn push_body(out: &mut String, kept: &[u8], whole_len: u64, truncated: bool) {
    push_key(out, "body");
    let encoding = match std::str::from_utf8(kept) {
        Ok(text) => {
            push_str(out, text);
            "utf-8"
        }
        Err(_) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(kept, out);
            out.push('"');
            "base64"
        }
    };
    let _ = write!(
        out,
        ",\"body_encoding\":\"{encoding}\",\"body_bytes\":{whole_len},\"body_truncated\":{truncated}"
    );
}

/// The headers [`push_headers`] wrote; `None` if any pair is not a header.
pub fn headers_from_pairs(value: &Value) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for pair in value.as_array()? {
        let name = HeaderName::from_bytes(pair.get(0)?.as_str()?.as_bytes()).ok()?;
        // From bytes, not `from_str`: that takes visible ASCII only, and a
        // UTF-8 value such as `café` is as valid on the wire as it was
        // when recorded.
        let bytes = match pair.get(1)? {
            Value::String(text) => text.as_bytes().to_vec(),
            encoded => base64::engine::general_purpose::STANDARD
                .decode(encoded.get("base64")?.as_str()?)
                .ok()?,
        };
        // `append` panics past the map's 32,768 entries; a crafted line
        // may hold more pairs than any real request could.
        headers
            .try_append(name, HeaderValue::from_bytes(&bytes).ok()?)
            .ok()?;
    }
    Some(headers)
}

/// The (kept part of the) body [`push_body`] wrote.
pub fn body_from_fields(value: &Value) -> Option<Bytes> {
    let text = value["body"].as_str()?;
    match value["body_encoding"].as_str()? {
        "utf-8" => Some(Bytes::from(text.to_string())),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .map(Bytes::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_json_parses_back() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "two \"quoted\"".parse().unwrap());
        for body in [&b"plain \"text\"\n\x01\\"[..], &[0xff, 0x00, 0x80][..]] {
            let mut out = String::from("{");
            push_headers(&mut out, "headers", &headers);
            out.push(',');
            push_body(&mut out, body, 99, true);
            out.push('}');
            let value: Value = serde_json::from_str(&out).expect(&out);
            assert_eq!(headers_from_pairs(&value["headers"]).unwrap(), headers);
            assert_eq!(body_from_fields(&value).unwrap(), body);
            assert_eq!(value["body_bytes"], 99);
            assert_eq!(value["body_truncated"], true);
        }
    }

    #[test]
    fn header_bytes_that_are_not_utf8_round_trip_exactly() {
        let obs_text: Vec<u8> = (0x80..=0xff).collect();
        let mut headers = HeaderMap::new();
        headers.append("x-obs", HeaderValue::from_bytes(&obs_text).unwrap());
        headers.append(
            "x-utf8",
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        );
        headers.append("x-obs", HeaderValue::from_bytes(b"a\xe9b").unwrap());
        let mut out = String::from("{");
        push_headers(&mut out, "headers", &headers);
        out.push('}');
        let value: Value = serde_json::from_str(&out).expect(&out);
        // A HeaderMap keeps the values of one name together.
        assert_eq!(value["headers"][1][1]["base64"], "Yeli");
        assert_eq!(value["headers"][2][1], "café");
        let back = headers_from_pairs(&value["headers"]).unwrap();
        let bytes = |h: &HeaderMap, name: &str| -> Vec<Vec<u8>> {
            h.get_all(name)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect()
        };
        assert_eq!(bytes(&back, "x-obs"), [obs_text, b"a\xe9b".to_vec()]);
        assert_eq!(bytes(&back, "x-utf8"), ["café".as_bytes().to_vec()]);
        // Files written before: plain strings, U+FFFD where a byte was lost.
        let old = serde_json::json!([["x-old", "a\u{fffd}b"], ["x-plain", "v"]]);
        let back = headers_from_pairs(&old).unwrap();
        assert_eq!(back["x-old"].as_bytes(), "a\u{fffd}b".as_bytes());
        assert_eq!(back["x-plain"], "v");
        assert!(headers_from_pairs(&serde_json::json!([["x", {"base64": "!"}]])).is_none());
        assert!(headers_from_pairs(&serde_json::json!([["x", 7]])).is_none());
    }

    #[test]
    fn more_pairs_than_a_header_map_holds_are_refused_not_a_panic() {
        let pairs: Vec<Value> = (0..40_000)
            .map(|i| serde_json::json!([format!("x-{i}"), "v"]))
            .collect();
        assert!(headers_from_pairs(&Value::Array(pairs)).is_none());
    }
}
