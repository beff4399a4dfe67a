//! The contract between the site file, the handlers and the server: every
//! handler, stateless or not, goes through the same steps, and neither the
//! site-file reader nor the server knows which handler it holds.
//!
//! 1. **decode**: a [`HandlerKind`]'s `decode` turns its KDL node into a
//!    typed config, every problem spanned and collected;
//! 2. **check**: [`HandlerConfig::check`] makes the file-wide checks the
//!    handler owns (a target that loops back to the file's own address),
//!    given a read-only
//!    [`FileView`];
//! 3. **build**: `build` makes the runtime from the config and a
//!    [`BuildContext`], which has no handler-specific field; a handler with
//!    state that outlives a request publishes a [`HandlerState`] there;
//! 4. **carry over**: on reload, the server hands each new state the old
//!    one of the same handler and [`HandlerState::key`];
//! 5. **serve**: [`crate::chain`]'s `handle(req, next)` / `serve(req)`;
//! 6. **drain** at shutdown and **clean up** after a reload replaced it.
//!
//! Steps a handler does not need have defaults. The models are Caddy's
//! module lifecycle (Provision, Validate, ServeHTTP, Cleanup) and pingora's
//! request phases as methods with defaults.

use std::any::Any;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kdl::KdlNode;

use super::diag::Problem;
use super::options::Table;
use super::reader::Reader;
use super::value::Spanned;
use crate::chain::{BoxFuture, Middleware, Terminal};
use crate::counters::{MetricsRegistry, RouteKey};

/// Decodes a handler's node; `None` when it has errors (already pushed).
pub type Decode<T> = fn(&KdlNode, &mut Reader) -> Option<Box<T>>;

/// A handler's name, role, decoder and declared options (see
/// [`super::options`]): one registration line each.
pub enum HandlerKind {
    Middleware {
        name: &'static str,
        decode: Decode<dyn MiddlewareConfig>,
        options: &'static Table,
    },
    Terminal {
        name: &'static str,
        decode: Decode<dyn TerminalConfig>,
        options: &'static Table,
    },
}

impl HandlerKind {
    pub fn name(&self) -> &'static str {
        match self {
            HandlerKind::Middleware { name, .. } | HandlerKind::Terminal { name, .. } => name,
        }
    }

    /// What the handler takes (see [`super::options`]).
    pub fn options(&self) -> &'static Table {
        match self {
            HandlerKind::Middleware { options, .. } | HandlerKind::Terminal { options, .. } => {
                options
            }
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, HandlerKind::Terminal { .. })
    }
}

/// Every handler a site file may name. The site-file reader is handed one
/// rather than importing the handlers, which sit above it.
#[derive(Clone, Copy)]
pub struct Registry(&'static [&'static HandlerKind]);

impl Registry {
    pub const fn new(kinds: &'static [&'static HandlerKind]) -> Self {
        Registry(kinds)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static HandlerKind> + Clone {
        self.0.iter().copied()
    }

    pub fn find(&self, name: &str) -> Option<&'static HandlerKind> {
        self.0.iter().copied().find(|k| k.name() == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + Clone + '_ {
        self.0.iter().map(|k| k.name())
    }

    pub fn terminal_names(&self) -> Vec<&'static str> {
        self.0
            .iter()
            .filter(|k| k.is_terminal())
            .map(|k| k.name())
            .collect()
    }
}

impl IntoIterator for Registry {
    type Item = &'static HandlerKind;
    type IntoIter = std::iter::Copied<std::slice::Iter<'static, &'static HandlerKind>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().copied()
    }
}

impl Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// What a handler's file-wide check may look at.
pub struct FileView<'a> {
    /// Every site's listen addresses, in file order.
    pub listen: &'a [Spanned<SocketAddr>],
    /// This handler's node name in the file.
    pub at: miette::SourceSpan,
    /// The handlers before this one in its route, in file order.
    pub earlier: &'a [Earlier<'a>],
}

/// A handler before the one being checked, in the same route.
#[derive(Clone, Copy)]
pub struct Earlier<'a> {
    /// Its node name, as written.
    pub name: &'a str,
    /// Where that name is in the file.
    pub span: miette::SourceSpan,
    pub config: &'a dyn HandlerConfig,
}

/// What every decoded handler can do before it is built.
pub trait HandlerConfig: Debug + Send + Sync {
    /// File-wide checks this handler owns; problems go to `problems`.
    /// Every handler that decoded is checked, also in a route or site that
    /// has errors elsewhere; a handler whose own node has errors is not.
    fn check(&self, _file: &FileView<'_>, _problems: &mut Vec<Problem>) {}

    /// Reads the request body before the rest of the chain runs (copying
    /// it): a body limit placed after it comes too late.
    fn reads_body_ahead(&self) -> bool {
        false
    }
}

/// A decoded middleware node, ready to be built.
pub trait MiddlewareConfig: HandlerConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError>;
}

/// A decoded terminal node, ready to be built.
pub trait TerminalConfig: HandlerConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Terminal>, BuildError>;
}

/// A handler could not be built from a valid config (a file that cannot be
/// opened, say). Shown against the handler's node.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// What building a handler may need to know about where it sits.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Names the route in logs, e.g. `127.0.0.1:8080 /api/*`.
    pub route: String,
    /// Where relative paths in the site file are resolved from.
    pub base_dir: std::path::PathBuf,
    /// The route's site and pattern, naming its counters.
    pub route_key: RouteKey,
    /// Counters that outlive a reload.
    pub metrics: MetricsRegistry,
    /// Where built handlers make their state known, for reloads, shutdown
    /// and the admin endpoint.
    pub published: Published,
}

/// A handler's state beyond a single request (queues, workers, targets
/// added at runtime): what the server drives without knowing it.
pub trait HandlerState: Send + Sync + 'static {
    /// Names this state across reloads (a `name` option): a reloaded
    /// config's state of the same type and key gets [`Self::carry_over`].
    fn key(&self) -> Option<&str> {
        None
    }

    /// Takes over what must survive a reload from the state it replaces,
    /// which has the same type and key. Called before the new config
    /// serves its first request.
    fn carry_over(&self, _old: &dyn HandlerState) {}

    /// At shutdown: finishes queued work by `deadline`.
    fn drain(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// After a reload replaced it: once the last request on the old
    /// config finished, or at the latest a minute after the swap (a request
    /// still running then may yet use it).
    fn clean_up(&self) {}

    /// Connections it may hold open on its own (its workers'), counted
    /// against the open-files limit.
    fn connections(&self) -> usize {
        0
    }

    /// For [`Published::of`] and for `carry_over`'s downcast.
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// The states one built config published, in build order. Cloning shares
/// it: the server and the admin endpoint see the same list, which a
/// reload replaces whole.
#[derive(Clone, Default)]
pub struct Published(Arc<Mutex<Vec<Arc<dyn HandlerState>>>>);

impl Published {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn HandlerState>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn publish(&self, state: Arc<dyn HandlerState>) {
        self.lock().push(state);
    }

    pub fn all(&self) -> Vec<Arc<dyn HandlerState>> {
        self.lock().clone()
    }

    /// Every published state of one type, in build order.
    pub fn of<T: HandlerState>(&self) -> Vec<Arc<T>> {
        self.all()
            .into_iter()
            .filter_map(|state| state.into_any().downcast::<T>().ok())
            .collect()
    }

    /// Takes another build's states as its own (a reload's swap).
    pub fn replace(&self, with: &Published) {
        let states = with.all();
        *self.lock() = states;
    }

    /// Hands each state the one of the same type and key in `old`.
    pub fn carry_over_from(&self, old: &Published) {
        let old = old.all();
        for state in self.all() {
            let Some(key) = state.key() else { continue };
            let found = old
                .iter()
                .find(|o| o.as_any().type_id() == state.as_any().type_id() && o.key() == Some(key));
            if let Some(old) = found {
                state.carry_over(old.as_ref());
            }
        }
    }
}

impl Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("states", &self.lock().len())
            .finish()
    }
}
