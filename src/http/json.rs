//! How `record` lines and compare diff lines write HTTP messages as JSON,
//! one format for both (documented in the README, "Recording and replay").

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

/// Headers in order, repeated names kept, as `[name, value]` pairs.
pub fn header_pairs(headers: &HeaderMap) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(name, value)| json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())]))
            .collect(),
    )
}

/// Sets `body` (UTF-8 text when it is, else base64, as `body_encoding`
/// says), `body_bytes` (the whole body's size) and `body_truncated` on
/// `out`. `kept` is the part of the body that was kept.
pub fn body_fields(out: &mut Value, kept: &[u8], whole_len: u64, truncated: bool) {
    let (text, encoding) = match std::str::from_utf8(kept) {
        Ok(text) => (text.to_string(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(kept),
            "base64",
        ),
    };
    out["body"] = json!(text);
    out["body_encoding"] = json!(encoding);
    out["body_bytes"] = json!(whole_len);
    out["body_truncated"] = json!(truncated);
}

/// The headers [`header_pairs`] wrote; `None` if any pair is not a header.
pub fn headers_from_pairs(value: &Value) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for pair in value.as_array()? {
        let name = HeaderName::from_bytes(pair.get(0)?.as_str()?.as_bytes()).ok()?;
        let value = HeaderValue::from_str(pair.get(1)?.as_str()?).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

/// The (kept part of the) body [`body_fields`] wrote.
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
