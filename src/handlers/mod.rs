//! Handlers: the steps of a route's chain.
//!
//! A route runs its [`Middleware`] in file order, each deciding whether and
//! how to call the rest of the chain through [`Next`], and ends in exactly
//! one [`Terminal`] handler that produces the response (the shape of Caddy's
//! `ServeHTTP(w, r, next)`). The split into two traits means a chain that
//! does not end in a terminal handler cannot be built.
//!
//! Adding a handler: write one file in this folder that defines its config
//! (decoded from its KDL node), its runtime, and a `KIND`, then add its name
//! to the `handlers!` list below.

use std::fmt::Debug;
use std::sync::Arc;

use kdl::KdlNode;

pub use crate::chain::{BoxFuture, Chain, Middleware, Next, Terminal};
use crate::config::options::Table;
use crate::config::reader::Reader;

macro_rules! handlers {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Every handler the site file knows, by node name.
        pub static REGISTRY: &[&HandlerKind] = &[$(&$module::KIND),*];
    };
}

pub mod upstream_options;

handlers![
    respond,
    reverse_proxy,
    header,
    rewrite,
    mirror,
    record,
    request_body
];

/// What building a handler may need to know about where it sits.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Names the route in logs, e.g. `127.0.0.1:8080 /api/*`.
    pub route: String,
    /// Where relative paths in the site file are resolved from.
    pub base_dir: std::path::PathBuf,
    /// Where mirrors make themselves known, for shutdown and the admin API.
    pub mirrors: crate::mirror::MirrorRegistry,
    /// The route's site and pattern, naming its counters.
    pub route_key: crate::counters::RouteKey,
    /// Counters that outlive a reload.
    pub metrics: crate::counters::MetricsRegistry,
}

/// A handler could not be built from a valid config (a file that cannot be
/// opened, say). Shown against the handler's node.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// A decoded middleware node, ready to be built.
pub trait MiddlewareConfig: Debug + Send + Sync {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError>;
}

/// A decoded terminal node, ready to be built.
pub trait TerminalConfig: Debug + Send + Sync {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Terminal>, BuildError>;
}

pub type Decode<T> = fn(&KdlNode, &mut Reader) -> Option<Box<T>>;

/// A handler's name, role, decoder and declared options, as registered
/// above. `options` is `None` for a handler whose options are not declared
/// yet (`mirror`): `validate --explain` then points to the README.
pub enum HandlerKind {
    Middleware {
        name: &'static str,
        decode: Decode<dyn MiddlewareConfig>,
        options: Option<&'static Table>,
    },
    Terminal {
        name: &'static str,
        decode: Decode<dyn TerminalConfig>,
        options: Option<&'static Table>,
    },
}

impl HandlerKind {
    pub fn name(&self) -> &'static str {
        match self {
            HandlerKind::Middleware { name, .. } | HandlerKind::Terminal { name, .. } => name,
        }
    }

    /// What the handler takes, when declared (see [`crate::config::options`]).
    pub fn options(&self) -> Option<&'static Table> {
        match self {
            HandlerKind::Middleware { options, .. } | HandlerKind::Terminal { options, .. } => {
                *options
            }
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, HandlerKind::Terminal { .. })
    }
}

pub fn find(name: &str) -> Option<&'static HandlerKind> {
    REGISTRY.iter().copied().find(|k| k.name() == name)
}

pub fn terminal_names() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|k| k.is_terminal())
        .map(|k| k.name())
        .collect()
}
