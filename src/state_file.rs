//! The `state_file`'s contents: per named mirror, the targets added at
//! runtime and the site-file targets removed at runtime. Read and checked
//! with the site file (so `validate` refuses a file `run` could not
//! restore); written by the admin endpoint after every change.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::upstream::url::UpstreamUrl;

/// One mirror's runtime changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub added: Vec<UpstreamUrl>,
    pub removed: Vec<UpstreamUrl>,
}

/// What a `state_file` held when the site file was read: read and checked
/// then, so that `teebox validate` refuses a file `run` could not restore.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved(BTreeMap<String, Changes>);

impl Saved {
    /// Reads a state file. No file yet: nothing saved.
    pub fn read(path: &Path) -> Result<Saved, String> {
        let read = crate::bounded_read::read_text(
            path,
            crate::bounded_read::MAX_NAMED_FILE,
            crate::bounded_read::Kind::Regular,
        );
        let text = match read {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
            Err(e) => return Err(format!("cannot read state_file {}: {e}", path.display())),
        };
        parse(&text).map(Saved).map_err(|why| {
            format!(
                "state_file {} is corrupt ({why}); fix or remove it to start without the runtime changes",
                path.display()
            )
        })
    }

    /// Each mirror's saved changes, by name.
    pub fn mirrors(&self) -> impl Iterator<Item = (&str, &Changes)> {
        self.0
            .iter()
            .map(|(name, changes)| (name.as_str(), changes))
    }
}

/// The file's text for these mirrors' changes: `(name, added, removed)`.
pub fn encode<'a>(
    mirrors: impl IntoIterator<Item = (&'a str, Vec<UpstreamUrl>, Vec<UpstreamUrl>)>,
) -> Result<String, serde_json::Error> {
    let urls = |list: Vec<UpstreamUrl>| list.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    let mut out = serde_json::Map::new();
    for (name, added, removed) in mirrors {
        out.insert(
            name.to_string(),
            json!({ "added": urls(added), "removed": urls(removed) }),
        );
    }
    Ok(serde_json::to_string_pretty(&json!({ "version": 1, "mirrors": out }))? + "\n")
}

fn parse(text: &str) -> Result<BTreeMap<String, Changes>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if value.get("version").and_then(Value::as_u64) != Some(1) {
        return Err("unknown version".into());
    }
    let mirrors = value
        .get("mirrors")
        .and_then(Value::as_object)
        .ok_or("no mirrors object")?;
    let mut out = BTreeMap::new();
    for (name, entry) in mirrors {
        let list = |key: &str| -> Result<Vec<UpstreamUrl>, String> {
            let Some(items) = entry.get(key) else {
                return Ok(Vec::new());
            };
            let items = items
                .as_array()
                .ok_or(format!("{name}.{key} is not a list"))?;
            items
                .iter()
                .map(|item| {
                    let text = item
                        .as_str()
                        .ok_or(format!("{name}.{key} holds a non-string"))?;
                    UpstreamUrl::parse(text).map_err(|e| format!("{name}.{key}: `{text}`: {e}"))
                })
                .collect()
        };
        out.insert(
            name.clone(),
            Changes {
                added: list("added")?,
                removed: list("removed")?,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let ok = parse(r#"{"version":1,"mirrors":{"s":{"added":["http://a:1"],"removed":[]}}}"#)
            .unwrap();
        assert_eq!(ok["s"].added.len(), 1);
        assert!(parse("{").is_err());
        assert!(parse(r#"{"version":2,"mirrors":{}}"#).is_err());
        assert!(parse(r#"{"version":1,"mirrors":{"s":{"added":["ftp://x"]}}}"#).is_err());
    }
}
