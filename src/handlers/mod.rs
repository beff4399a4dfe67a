//! Handlers: the steps of a route's chain, one file (or folder) each.
//!
//! Each implements the lifecycle in [`crate::config::handler`]: a `decode`
//! for its node, a config that may `check` the whole file and `build` the
//! runtime, and, when it keeps state beyond a request, a published
//! [`HandlerState`] the server carries over reloads and drains at shutdown.
//! The runtime implements [`Middleware`] or [`Terminal`] from
//! [`crate::chain`].
//!
//! Adding a handler: write its file here with a `KIND`, then add its name
//! to the `handlers!` list below. Nothing else in the crate names it.

pub use crate::chain::{BoxFuture, Chain, Middleware, Next, Terminal};
pub use crate::config::handler::{
    BuildContext, BuildError, Decode, FileView, HandlerConfig, HandlerKind, HandlerState,
    MiddlewareConfig, Published, Registry, TerminalConfig,
};

macro_rules! handlers {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Every handler the site file knows, by node name.
        pub static REGISTRY: Registry = Registry::new(&[$(&$module::KIND),*]);
    };
}

handlers![
    respond,
    reverse_proxy,
    header,
    rewrite,
    mirror,
    record,
    request_body
];
