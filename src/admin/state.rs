//! `state_file`: runtime target changes that survive a restart.
//!
//! The file records, per named mirror, the targets added at runtime and the
//! site-file targets removed at runtime. It is rewritten whole after every
//! change (a fresh temporary file, fsync, rename; see
//! [`crate::safe_write`]), so a crash leaves the old or the new file,
//! never half of one. A file that cannot be read back is an error at start:
//! silently starting without the operator's changes would be worse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::value::UpstreamUrl;
use crate::mirror::MirrorRegistry;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot encode the state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Write(#[from] crate::safe_write::ReplaceError),
}

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// One mirror's runtime changes.
#[derive(Debug, Clone, Default, PartialEq)]
struct Changes {
    added: Vec<UpstreamUrl>,
    removed: Vec<UpstreamUrl>,
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

    /// Applies the saved changes to the mirrors (by name). A saved target
    /// that `allow` now refuses (the file's `allow_target` changed since)
    /// is dropped with a warning.
    pub fn restore(&self, mirrors: &MirrorRegistry, allow: &super::targets::TargetPatterns) {
        let all = mirrors.all();
        for (name, changes) in &self.0 {
            let Some(mirror) = all.iter().find(|m| m.name() == Some(name.as_str())) else {
                tracing::warn!(mirror = %name, "state_file names a mirror the site file no longer has; its changes are dropped");
                continue;
            };
            for url in &changes.removed {
                mirror.remove_target(url);
            }
            for url in changes.added.iter().cloned() {
                match allow.refuses(&url) {
                    Some(why) => {
                        tracing::warn!(mirror = %name, target_url = %url, "state_file target dropped: {why}")
                    }
                    None => {
                        mirror.add_target(url);
                    }
                }
            }
        }
    }
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        StateFile { path }
    }

    /// Writes every named mirror's runtime changes.
    pub fn save(&self, mirrors: &MirrorRegistry) -> Result<(), SaveError> {
        let mut out = serde_json::Map::new();
        for mirror in mirrors.all() {
            let Some(name) = mirror.name() else { continue };
            let (added, removed) = mirror.runtime_changes();
            let urls =
                |list: Vec<UpstreamUrl>| list.iter().map(|u| u.to_string()).collect::<Vec<_>>();
            out.insert(
                name.to_string(),
                json!({ "added": urls(added), "removed": urls(removed) }),
            );
        }
        let text = serde_json::to_string_pretty(&json!({ "version": 1, "mirrors": out }))? + "\n";
        Ok(crate::safe_write::replace(&self.path, text.as_bytes())?)
    }
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
