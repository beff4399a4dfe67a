//! Handlers: the steps of a route's chain, one file (or folder) each.
//!
//! Each implements the lifecycle in [`crate::config::handler`]: a `decode`
//! for its node, a config that may `check` the whole file and `build` the
//! runtime, and, when it keeps state beyond a request, a published
//! [`HandlerState`] the server carries over reloads and drains at shutdown.
//! The runtime implements [`Middleware`] or [`Terminal`] from
//! [`crate::chain`].
//!
//! Adding a handler: write its file here with a `KIND`, declare the module
//! and add its `KIND` to [`REGISTRY`] below. Nothing else in the crate
//! names it.

pub use crate::chain::{BoxFuture, Chain, Middleware, Next, Terminal};
pub use crate::config::handler::{
    BuildContext, BuildError, Decode, FileView, HandlerConfig, HandlerKind, HandlerState,
    MiddlewareConfig, Published, Registry, TerminalConfig,
};

// Declared one by one, not by a macro, so that rustfmt sees their files.
pub mod header;
pub mod mirror;
pub mod record;
pub mod request_body;
pub mod respond;
pub mod reverse_proxy;
pub mod rewrite;
/// The options `reverse_proxy` and `mirror` share, declared once.
pub mod upstream_options;

/// Every handler the site file knows: its registration line.
pub static REGISTRY: Registry = Registry::new(&[
    &respond::KIND,
    &reverse_proxy::KIND,
    &header::KIND,
    &rewrite::KIND,
    &mirror::KIND,
    &record::KIND,
    &request_body::KIND,
]);
