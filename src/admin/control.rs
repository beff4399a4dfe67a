//! What a reload changes in the running admin endpoint.
//!
//! The settings a reload may change (users, `allow_target`,
//! `healthz_public`) live in one [`Settings`] value that every request
//! loads once, so a request sees the old settings or the new ones, never a
//! mix. Verified credentials are remembered per `Settings`: new users start
//! with nothing remembered. The listen address and the `state_file` are
//! fixed while the endpoint runs; a reload that changes them says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::auth::{CredentialCache, Users};
use super::targets::TargetPatterns;
use super::AdminError;
use crate::config::AdminConfig;

/// The admin settings a reload swaps in whole.
pub struct Settings {
    pub users: Users,
    pub remembered: CredentialCache,
    pub allow: TargetPatterns,
    pub healthz_public: bool,
}

impl Settings {
    /// Settings from an admin block whose users were read and checked with
    /// the site file. Slow (it makes a bcrypt decoy at the users' cost),
    /// so run it off the async threads.
    pub fn load(config: &AdminConfig) -> Result<Settings, AdminError> {
        let users = Users::load(&config.users).map_err(AdminError::Users)?;
        Ok(Settings {
            users,
            remembered: CredentialCache::new().map_err(AdminError::Users)?,
            allow: TargetPatterns::new(&config.allow_target),
            healthz_public: config.healthz_public,
        })
    }
}

/// What the endpoint was started with and keeps until a restart.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// The address as the file wrote it (port 0 included).
    pub address: SocketAddr,
    pub state_file: Option<PathBuf>,
}

impl Fixed {
    pub fn of(config: &AdminConfig, base_dir: &Path) -> Fixed {
        Fixed {
            address: config.address.value,
            state_file: config.state_file.as_ref().map(|f| base_dir.join(f)),
        }
    }

    /// What `config` changes that cannot change while the endpoint runs.
    fn unchangeable(&self, config: &AdminConfig, base_dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        if config.address.value != self.address {
            out.push(format!(
                "admin address: still {} until a restart (the file now says {})",
                self.address, config.address.value
            ));
        }
        let state_file = config.state_file.as_ref().map(|f| base_dir.join(f));
        if state_file != self.state_file {
            let name = |f: &Option<PathBuf>| match f {
                Some(f) => format!("{}", f.display()),
                None => "none".to_string(),
            };
            out.push(format!(
                "admin state_file: still {} until a restart (the file now says {})",
                name(&self.state_file),
                name(&state_file)
            ));
        }
        out
    }
}

/// The running endpoint's handle for reloads.
#[derive(Clone)]
pub struct AdminControl {
    settings: Arc<ArcSwap<Settings>>,
    fixed: Arc<Fixed>,
}

/// What a reload could not change without a restart, one line each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub not_applied: Vec<String>,
}

impl Applied {
    /// A reload of a server that runs no admin endpoint.
    pub fn without_endpoint(config: Option<&AdminConfig>) -> Applied {
        Applied {
            not_applied: config
                .map(|c| {
                    format!(
                        "admin block: the endpoint on {} starts at the next restart",
                        c.address.value
                    )
                })
                .into_iter()
                .collect(),
        }
    }
}

/// New settings loaded and checked, not yet in use.
#[must_use = "nothing changes until it is committed"]
pub struct Prepared {
    settings: Arc<ArcSwap<Settings>>,
    new: Option<Settings>,
    not_applied: Vec<String>,
}

impl AdminControl {
    pub(super) fn new(settings: Arc<ArcSwap<Settings>>, fixed: Fixed) -> Self {
        AdminControl {
            settings,
            fixed: Arc::new(fixed),
        }
    }

    /// Loads the settings of the reloaded file's admin block (`None`: it
    /// has none, and the endpoint keeps running as it is). Slow, like
    /// [`Settings::load`]; nothing changes until [`Prepared::commit`], so
    /// a reload that fails later leaves the endpoint as it was.
    pub fn prepare(
        &self,
        config: Option<&AdminConfig>,
        base_dir: &Path,
    ) -> Result<Prepared, AdminError> {
        let Some(config) = config else {
            return Ok(Prepared {
                settings: self.settings.clone(),
                new: None,
                not_applied: vec![
                    "admin block removed: the endpoint runs until a restart".to_string()
                ],
            });
        };
        Ok(Prepared {
            settings: self.settings.clone(),
            new: Some(Settings::load(config)?),
            not_applied: self.fixed.unchangeable(config, base_dir),
        })
    }
}

impl Prepared {
    /// Removes the runtime targets carried over the reload that the
    /// settings this reload brings refuse (see [`TargetPatterns::refuses`]);
    /// one line for each, to report.
    pub fn drop_refused_targets(&self, published: &crate::handlers::Published) -> Vec<String> {
        let current = self.settings.load();
        let allow = match &self.new {
            Some(new) => &new.allow,
            None => &current.allow,
        };
        let mut dropped = Vec::new();
        for mirror in crate::handlers::mirror::mirrors(published) {
            let Some(name) = mirror.name() else { continue };
            let (added, _) = mirror.runtime_changes();
            for url in added {
                if let Some(why) = allow.refuses(&url) {
                    mirror.remove_target(&url);
                    dropped.push(format!("target {url} of mirror {name}: {why}"));
                }
            }
        }
        dropped
    }

    /// Swaps the new settings in: the next request sees them, and no
    /// credentials verified under the old users are remembered.
    pub fn commit(self) -> Applied {
        if let Some(new) = self.new {
            self.settings.store(Arc::new(new));
        }
        Applied {
            not_applied: self.not_applied,
        }
    }
}
