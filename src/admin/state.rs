//! `state_file`: runtime target changes that survive a restart.
//!
//! The file records, per named mirror, the targets added at runtime and the
//! site-file targets removed at runtime. It is rewritten whole after every
//! change (a fresh temporary file, fsync, rename; see
//! [`crate::safe_write`]), so a crash leaves the old or the new file,
//! never half of one. A file that cannot be read back is an error at start:
//! silently starting without the operator's changes would be worse.

use std::path::PathBuf;

use crate::handlers::mirror::mirrors as running_mirrors;
use crate::handlers::Published;
use crate::state_file::{encode, Saved};

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

/// Applies the saved changes to the mirrors (by name). A saved target
/// that `allow` now refuses (the file's `allow_target` changed since)
/// is dropped with a warning.
pub fn restore(saved: &Saved, mirrors: &Published, allow: &super::targets::TargetPatterns) {
    let all = running_mirrors(mirrors);
    for (name, changes) in saved.mirrors() {
        let Some(mirror) = all.iter().find(|m| m.name() == Some(name)) else {
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

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        StateFile { path }
    }

    /// Writes every named mirror's runtime changes.
    pub fn save(&self, mirrors: &Published) -> Result<(), SaveError> {
        let all = running_mirrors(mirrors);
        let text = encode(all.iter().filter_map(|mirror| {
            let name = mirror.name()?;
            let (added, removed) = mirror.runtime_changes();
            Some((name, added, removed))
        }))?;
        Ok(crate::safe_write::replace(&self.path, text.as_bytes())?)
    }
}
