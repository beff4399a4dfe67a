//! Reloading: the new file is read, checked and built on a blocking
//! thread, then swapped in at once. Handler state is carried over, the
//! admin block applied, and the replaced routers freed off the serving
//! threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::build::{build, Built};
use super::router::AddressRouter;
use super::{bind, point_redirects, spawn_listener, ReloadError, Shared, StartError, State};
use crate::counters::MetricsRegistry;
use crate::handlers::HandlerState;

impl Shared {
    /// Re-reads the site file and takes it over. Reading, checking and
    /// building run on a blocking thread, so accept loops and requests go
    /// on at full speed however large or wrong the file is; only the swap
    /// itself runs here. Nothing changes if any step fails.
    pub(super) async fn reload_file(&self) -> Result<crate::admin::Reloaded, ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        // One reload at a time, from reading the file to the swap, so an
        // older read never lands after a newer one. The listeners' state is
        // locked only for the swap: a shutdown does not wait for a build.
        let _turn = self.reloading.lock().await;
        tracing::info!(file = %path.display(), "reloading the site file");
        let metrics = self.metrics.clone();
        let admin = self.admin.get().cloned();
        let prepared = tokio::task::spawn_blocking(move || prepare(&path, &metrics, admin))
            .await
            .map_err(|e| ReloadError::from(StartError::Build(format!("the reload stopped: {e}"))))
            .and_then(|prepared| prepared);
        let result = match prepared {
            Ok(prepared) => {
                let mut state = self.state.lock().await;
                self.swap_in(&mut state, prepared).await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = &result {
            const REFUSED: &str = "reload refused; the running config stays";
            match err {
                ReloadError::Invalid(invalid) => crate::logging::problems(
                    tracing::Level::ERROR,
                    REFUSED,
                    &invalid.file,
                    &invalid.problems,
                ),
                other => tracing::error!(error = %other, "{REFUSED}"),
            }
        }
        result
    }

    /// Takes over a prepared config: each address's router in one atomic
    /// store, so a request sees the old config or the new one, never a mix.
    /// In-flight requests finish on the old one, and the old handlers
    /// finish what they have queued. Each handler's state takes over what
    /// its predecessor of the same key had (targets added at runtime).
    /// New addresses are bound first: if one fails, nothing has changed.
    async fn swap_in(
        &self,
        state: &mut State,
        prepared: Prepared,
    ) -> Result<crate::admin::Reloaded, ReloadError> {
        let Prepared {
            loaded,
            built,
            admin,
        } = prepared;
        let config = &loaded.config;
        let mut fresh = Vec::new();
        for (addr, _) in &built.routers {
            if !state.listeners.iter().any(|l| l.bound.configured == *addr) {
                fresh.push((*addr, bind(*addr).await?));
            }
        }
        let graceful = self
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(graceful) = graceful else {
            return Err(StartError::Build("the server is shutting down".into()).into());
        };
        built.published.carry_over_from(&self.published);
        // Carried over under the old allow_target: the new one decides
        // whether copies still go there.
        let dropped = match &admin {
            Some(admin) => admin.drop_refused_targets(&built.published),
            None => Vec::new(),
        };
        let limits = self.limits.load().reloaded(config.global.limits);
        self.limits.store(limits);
        let keep: Vec<SocketAddr> = built.routers.iter().map(|(a, _)| *a).collect();
        let mut retired = Vec::new();
        for (addr, router) in built.routers {
            match state.listeners.iter().find(|l| l.bound.configured == addr) {
                Some(existing) => retired.push(existing.router.swap(Arc::new(router))),
                None => {
                    let Some(index) = fresh.iter().position(|(a, _)| *a == addr) else {
                        continue;
                    };
                    let (_, tcp) = fresh.swap_remove(index);
                    let handle = spawn_listener(
                        &mut state.accept_loops,
                        addr,
                        tcp,
                        router,
                        &graceful,
                        &self.limits,
                    )?;
                    state.listeners.push(handle);
                }
            }
        }
        point_redirects(&built.redirect_ports, &state.listeners);
        state.listeners.retain(|l| {
            let kept = keep.contains(&l.bound.configured);
            if !kept {
                tracing::info!(address = %l.bound.local, "no longer in the site file; stopped listening");
                let _ = l.stop.send(true);
                retired.push(l.router.load_full());
            }
            kept
        });
        let replaced = self.published.all();
        self.published.replace(&built.published);
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) =
            state.listeners.iter().map(|l| l.bound).collect();
        self.set_grace_period(config.global.grace_period);
        crate::logging::apply(&config.global.log);
        let applied = match admin {
            Some(prepared) => prepared.commit(),
            None => crate::admin::Applied::without_endpoint(config.global.admin.as_ref()),
        };
        for item in &applied.not_applied {
            tracing::warn!("reload: not applied: {item}");
        }
        for item in &dropped {
            tracing::warn!("reload: dropped: {item}");
        }
        tracing::info!(warnings = loaded.warnings.len(), "site file reloaded");
        crate::logging::problems(
            tracing::Level::WARN,
            "the reloaded site file has warnings",
            &config.source,
            &loaded.warnings,
        );
        retire(retired, replaced);
        Ok(crate::admin::Reloaded {
            warnings: loaded.warnings.len(),
            not_applied: applied.not_applied,
            dropped,
        })
    }
}

/// A reloaded site file, checked and built, ready to swap in.
struct Prepared {
    loaded: crate::config::Loaded,
    built: Built,
    /// The admin block's new settings (users checked when the file was
    /// read; the bcrypt decoy made), when the server runs an admin endpoint.
    admin: Option<crate::admin::Prepared>,
}

/// The slow part of a reload, for a blocking thread: reading, checking and
/// building.
fn prepare(
    path: &std::path::Path,
    metrics: &MetricsRegistry,
    admin: Option<crate::admin::AdminControl>,
) -> Result<Prepared, ReloadError> {
    let loaded = crate::config::load(path, crate::handlers::REGISTRY).map_err(|err| match err {
        crate::config::LoadError::Invalid(err) => ReloadError::Invalid(err),
        other => ReloadError::Unreadable(other.to_string()),
    })?;
    let config = &loaded.config;
    let admin = match admin {
        Some(control) => Some(
            control
                .prepare(config.global.admin.as_ref(), &config.base_dir)
                .map_err(|e| ReloadError::Admin(e.to_string()))?,
        ),
        None => None,
    };
    let built = build(config, metrics)?;
    Ok(Prepared {
        loaded,
        built,
        admin,
    })
}

/// Drops the routers a reload replaced on a blocking thread, once the
/// requests still using them are done: a large config's routes take time
/// to free, which no serving thread should spend. Requests that outlast
/// the wait drop their copy wherever they finish.
pub(super) fn retire(routers: Vec<Arc<AddressRouter>>, states: Vec<Arc<dyn HandlerState>>) {
    if routers.is_empty() && states.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let deadline = Instant::now() + RETIRE_WAIT;
        while Instant::now() < deadline && routers.iter().any(|r| Arc::strong_count(r) > 1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::spawn_blocking(move || {
            drop(routers);
            states.iter().for_each(|state| state.clean_up());
        });
    });
}

/// How long replaced routers wait for their last requests (see [`retire`]).
const RETIRE_WAIT: Duration = Duration::from_secs(60);
