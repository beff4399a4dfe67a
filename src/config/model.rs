//! The typed site file. Every value here has been checked; spans are kept
//! where a later step (building, reload) may need to point back at the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use miette::SourceSpan;

use super::diag::Source;
use super::handler::{HandlerConfig, MiddlewareConfig, TerminalConfig};
use super::matchers::{HostPattern, RouteMatch};
use super::value::Spanned;
use crate::passwords::BcryptHash;
use crate::state_file::Saved;

#[derive(Debug)]
pub struct Config {
    pub source: Source,
    /// The file it was read from, for reloads (`None` when parsed from text).
    pub path: Option<PathBuf>,
    /// Relative paths in the file (access logs, certificates) start here.
    pub base_dir: PathBuf,
    pub global: Global,
    pub sites: Vec<Site>,
}

#[derive(Debug)]
pub struct Global {
    pub log: LogConfig,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub grace_period: Duration,
    pub admin: Option<AdminConfig>,
    pub limits: Limits,
}

/// `global { limits { … } }`: applied to every listener. What a file
/// without `limits` gets is the declared defaults (`config::limits`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Request line plus headers; larger: 431.
    pub max_header_size: usize,
    /// The most an HTTP/1.1 connection reads at once (at least
    /// `max_header_size`: see [`Limits::read_buffer_at_most`]).
    pub read_buffer: usize,
    /// A request head not complete this long after its first byte: 408,
    /// closed (slowloris).
    pub read_header_timeout: Duration,
    /// The longest wait for the client between two reads of a request
    /// body (nginx's client_body_timeout): over it, 408 and closed.
    pub read_body_timeout: Duration,
    /// A keep-alive connection without a request this long: closed.
    pub idle_timeout: Duration,
    /// Connections served at once; at the limit, accepting pauses.
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Limits {
    /// The most an HTTP/1.1 connection reads at once: `read_buffer`, or
    /// `max_header_size` when that is larger (hyper's buffer must hold a
    /// whole head).
    pub fn read_buffer_at_most(&self) -> usize {
        self.read_buffer.max(self.max_header_size)
    }
}

/// `global { log … }`; a file without it gets the declared defaults.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `RUST_LOG` overrides this.
    pub level: &'static str,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `global { admin ... }`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: Spanned<SocketAddr>,
    /// Every user, read and checked with the file: the `user` nodes, then
    /// the `users_file`'s lines (a later entry for a name wins).
    pub users: Vec<(String, BcryptHash)>,
    /// Already read into `users`; kept to name it.
    pub users_file: Option<PathBuf>,
    pub allow_target: Vec<String>,
    pub state_file: Option<PathBuf>,
    /// What `state_file` held when the file was read (nothing if it did
    /// not exist yet); restored when the endpoint starts.
    pub saved_state: Saved,
    /// `GET /healthz` answers without credentials (load-balancer probes).
    pub healthz_public: bool,
}

#[derive(Debug)]
pub struct Site {
    pub addresses: Vec<Spanned<SocketAddr>>,
    /// Empty: this site answers any host on its addresses.
    pub hosts: Vec<Spanned<HostPattern>>,
    pub tls: Option<Spanned<TlsConfig>>,
    pub access_log: Option<AccessLogTarget>,
    /// A plain address that answers 308 to this site's `https://` URL.
    pub http_redirect: Option<Spanned<SocketAddr>>,
    pub routes: Vec<Route>,
    pub span: SourceSpan,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Answers a client whose SNI names no site on the address.
    pub default: bool,
    /// The certificate chain and key, read and matched while checking.
    pub certified: std::sync::Arc<rustls::sign::CertifiedKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug)]
pub struct Route {
    pub matcher: RouteMatch,
    /// The non-terminal handlers, in file order.
    pub middleware: Vec<Placed<dyn MiddlewareConfig>>,
    /// The handler that answers; always last.
    pub terminal: Placed<dyn TerminalConfig>,
    pub span: SourceSpan,
}

/// A decoded handler, and the node it was written as.
#[derive(Debug)]
pub struct Placed<T: ?Sized> {
    /// The node's name: the handler's.
    pub name: String,
    /// The node's name in the file.
    pub span: SourceSpan,
    pub config: Box<T>,
}

impl Placed<dyn MiddlewareConfig> {
    pub fn upcast(self) -> Placed<dyn HandlerConfig> {
        Placed {
            name: self.name,
            span: self.span,
            config: self.config,
        }
    }
}

impl Placed<dyn TerminalConfig> {
    pub fn upcast(self) -> Placed<dyn HandlerConfig> {
        Placed {
            name: self.name,
            span: self.span,
            config: self.config,
        }
    }
}

impl Route {
    /// Its handlers in chain order, as every handler is: for the checks.
    pub fn into_handlers(self) -> Vec<Placed<dyn HandlerConfig>> {
        let mut handlers: Vec<_> = self.middleware.into_iter().map(|p| p.upcast()).collect();
        handlers.push(self.terminal.upcast());
        handlers
    }
}

impl<T: ?Sized> Placed<T> {
    pub fn at(node: &kdl::KdlNode, config: Box<T>) -> Self {
        Placed {
            name: node.name().value().to_string(),
            span: super::reader::name_span(node),
            config,
        }
    }
}
