//! Site files built the way a test reads: what listens, what each route
//! does, what the admin endpoint allows. The builder writes KDL v2 text;
//! every name, path and URL it is given as a Rust string goes out as a KDL
//! string, escaped ([`kdl_string`]). Options are KDL written out by the
//! test (`"timeout \"300ms\""`), placed inside the node they belong to.
//!
//! ```ignore
//! let kdl = Site::new()
//!     .limits("max_connections 4")
//!     .admin(Admin::open())
//!     .route(
//!         "/*",
//!         Chain::new()
//!             .mirror(Mirror::to(&shadow).opt("sample 0.5"))
//!             .proxy(&primary),
//!     )
//!     .to_kdl();
//! ```
//!
//! gives
//!
//! ```kdl
//! global {
//!     limits {
//!         max_connections 4
//!     }
//!     admin "127.0.0.1:0"
//! }
//! site "127.0.0.1:0" {
//!     route "/*" {
//!         mirror "http://127.0.0.1:41234" {
//!             sample 0.5
//!         }
//!         reverse_proxy "http://127.0.0.1:41233"
//!     }
//! }
//! ```

use std::fmt::{self, Write};

use super::Backend;

/// `text` as a KDL v2 quoted string: `"` and `\` escaped, and every code
/// point KDL does not allow literally in a one-line string (newlines,
/// other control characters, direction marks, the byte order mark)
/// written as an escape.
pub fn kdl_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{feff}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Anything a site file can name as an upstream or a mirror target. A
/// [`Backend`] is named by reference only: handing one over by value would
/// drop it, and stop it, while the site still names it.
pub trait AsUrl {
    fn as_url(&self) -> String;
}

impl AsUrl for str {
    fn as_url(&self) -> String {
        self.to_string()
    }
}

impl AsUrl for String {
    fn as_url(&self) -> String {
        self.clone()
    }
}

impl AsUrl for &Backend {
    fn as_url(&self) -> String {
        self.url()
    }
}

impl<T: AsUrl + ?Sized> AsUrl for &T {
    fn as_url(&self) -> String {
        (**self).as_url()
    }
}

/// Node arguments: each URL as a KDL string, space-separated.
fn arguments<T: AsUrl>(urls: &[T]) -> String {
    urls.iter()
        .map(|u| kdl_string(&u.as_url()))
        .collect::<Vec<_>>()
        .join(" ")
}

const INDENT: &str = "    ";

/// `head`, then `children` (KDL text, one node each) in a block when there
/// are any, each child's lines indented one step. (Indenting every line of
/// a multi-line string alike leaves its value as it was: KDL v2 strips the
/// closing line's indentation from each.)
fn node(head: &str, children: &[String]) -> String {
    if children.is_empty() {
        head.to_string()
    } else {
        block(head, children)
    }
}

/// `head { children }`, braces even when there are no children.
fn block(head: &str, children: &[String]) -> String {
    let mut out = format!("{head} {{\n");
    for child in children {
        let _ = writeln!(
            out,
            "{INDENT}{}",
            child.replace('\n', &format!("\n{INDENT}"))
        );
    }
    out.push('}');
    out
}

/// A whole site file: `global` settings, an optional admin endpoint, and
/// one or more `site` blocks. [`Site::new`] starts the first site, on
/// `127.0.0.1:0`; site lines and routes go to the site started last.
#[derive(Clone, Debug)]
pub struct Site {
    global: Vec<String>,
    admin: Option<Admin>,
    sites: Vec<SiteBlock>,
}

#[derive(Clone, Debug)]
struct SiteBlock {
    address: String,
    lines: Vec<String>,
    routes: Vec<(String, Chain)>,
}

impl SiteBlock {
    fn at(address: &str) -> Self {
        SiteBlock {
            address: address.to_string(),
            lines: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

impl Site {
    /// A file with one site on `127.0.0.1:0`.
    pub fn new() -> Self {
        Site::at("127.0.0.1:0")
    }

    /// A file with one site on `address`.
    pub fn at(address: &str) -> Self {
        Site {
            global: Vec::new(),
            admin: None,
            sites: vec![SiteBlock::at(address)],
        }
    }

    /// A node of the `global` block, as written (`grace_period "1s"`).
    pub fn global(mut self, kdl: &str) -> Self {
        self.global.push(kdl.to_string());
        self
    }

    /// `global { limits { KDL } }`; `kdl` may hold several nodes, one a line.
    pub fn limits(self, kdl: &str) -> Self {
        let children: Vec<String> = kdl
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        self.global(&block("limits", &children))
    }

    /// The admin endpoint (in `global`).
    pub fn admin(mut self, admin: Admin) -> Self {
        self.admin = Some(admin);
        self
    }

    /// A node of the current `site` block other than a route, as written
    /// (`tls cert="a.pem" key="a-key.pem"`).
    pub fn line(mut self, kdl: &str) -> Self {
        self.current().lines.push(kdl.to_string());
        self
    }

    /// `host "NAME"` in the current site.
    pub fn host(self, name: &str) -> Self {
        let line = format!("host {}", kdl_string(name));
        self.line(&line)
    }

    /// `route "PATH" { CHAIN }` in the current site, after its other routes.
    pub fn route(mut self, path: &str, chain: Chain) -> Self {
        self.current().routes.push((path.to_string(), chain));
        self
    }

    /// Starts another `site` block, on `127.0.0.1:0`.
    pub fn another_site(self) -> Self {
        self.another_site_at("127.0.0.1:0")
    }

    /// Starts another `site` block, on `address`.
    pub fn another_site_at(mut self, address: &str) -> Self {
        self.sites.push(SiteBlock::at(address));
        self
    }

    fn current(&mut self) -> &mut SiteBlock {
        self.sites.last_mut().expect("a site file has a site")
    }

    /// The site file's text.
    pub fn to_kdl(&self) -> String {
        let mut out = String::new();
        let mut global = self.global.clone();
        if let Some(admin) = &self.admin {
            global.push(admin.to_kdl());
        }
        if !global.is_empty() {
            out.push_str(&block("global", &global));
            out.push('\n');
        }
        for site in &self.sites {
            let mut children = site.lines.clone();
            for (path, chain) in &site.routes {
                children.push(block(
                    &format!("route {}", kdl_string(path)),
                    &chain.nodes(),
                ));
            }
            out.push_str(&block(
                &format!("site {}", kdl_string(&site.address)),
                &children,
            ));
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_kdl())
    }
}

/// The `admin` node of `global`: an address (`127.0.0.1:0` unless told)
/// and its options.
#[derive(Clone, Debug)]
pub struct Admin {
    address: String,
    options: Vec<String>,
}

impl Admin {
    /// On `127.0.0.1:0`, without users: anyone on loopback may call it.
    pub fn open() -> Self {
        Admin::at("127.0.0.1:0")
    }

    pub fn at(address: &str) -> Self {
        Admin {
            address: address.to_string(),
            options: Vec::new(),
        }
    }

    /// An option as written.
    pub fn opt(mut self, kdl: &str) -> Self {
        self.options.push(kdl.to_string());
        self
    }

    /// `user "NAME" "HASH"`.
    pub fn user(self, name: &str, bcrypt_hash: &str) -> Self {
        let line = format!("user {} {}", kdl_string(name), kdl_string(bcrypt_hash));
        self.opt(&line)
    }

    /// `users_file "PATH"`.
    pub fn users_file(self, path: &str) -> Self {
        let line = format!("users_file {}", kdl_string(path));
        self.opt(&line)
    }

    /// `state_file "PATH"`.
    pub fn state_file(self, path: &str) -> Self {
        let line = format!("state_file {}", kdl_string(path));
        self.opt(&line)
    }

    /// `allow_target "PATTERN" ...`.
    pub fn allow_target(self, patterns: &[&str]) -> Self {
        let line = format!("allow_target {}", arguments(patterns));
        self.opt(&line)
    }

    /// `healthz_public #false` (or `#true`).
    pub fn healthz_public(self, public: bool) -> Self {
        let line = format!("healthz_public #{public}");
        self.opt(&line)
    }

    fn to_kdl(&self) -> String {
        node(
            &format!("admin {}", kdl_string(&self.address)),
            &self.options,
        )
    }
}

/// A route's handler chain, in order.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    handlers: Vec<Handler>,
}

#[derive(Clone, Debug)]
enum Handler {
    Mirror(Mirror),
    Proxy(Proxy),
    Written(String),
}

impl Chain {
    pub fn new() -> Self {
        Chain::default()
    }

    /// A `mirror` handler.
    pub fn mirror(mut self, mirror: Mirror) -> Self {
        self.handlers.push(Handler::Mirror(mirror));
        self
    }

    /// A `reverse_proxy` handler: to a URL or a backend as it is, or a
    /// [`Proxy`] with options.
    pub fn proxy(mut self, proxy: impl IntoProxy) -> Self {
        self.handlers.push(Handler::Proxy(proxy.into_proxy()));
        self
    }

    /// `respond STATUS`.
    pub fn respond(self, status: u16) -> Self {
        self.handler(&format!("respond {status}"))
    }

    /// `respond STATUS "BODY"`.
    pub fn respond_with(self, status: u16, body: &str) -> Self {
        self.handler(&format!("respond {status} {}", kdl_string(body)))
    }

    /// `request_body max_size="SIZE"`.
    pub fn request_body(self, max_size: &str) -> Self {
        self.handler(&format!("request_body max_size={}", kdl_string(max_size)))
    }

    /// Any other handler, as written (`header { "X-Version" "1" }`).
    pub fn handler(mut self, kdl: &str) -> Self {
        self.handlers.push(Handler::Written(kdl.to_string()));
        self
    }

    fn nodes(&self) -> Vec<String> {
        self.handlers
            .iter()
            .map(|h| match h {
                Handler::Mirror(m) => m.to_kdl(),
                Handler::Proxy(p) => p.to_kdl(),
                Handler::Written(kdl) => kdl.clone(),
            })
            .collect()
    }
}

/// A `mirror` handler: its targets, options, and `target` nodes.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    targets: Vec<String>,
    options: Vec<String>,
}

impl Mirror {
    /// Mirroring to one target.
    pub fn to(target: impl AsUrl) -> Self {
        Mirror {
            targets: vec![target.as_url()],
            options: Vec::new(),
        }
    }

    /// Mirroring to each of `targets`, in order.
    pub fn to_all<T: AsUrl>(targets: &[T]) -> Self {
        Mirror {
            targets: targets.iter().map(AsUrl::as_url).collect(),
            options: Vec::new(),
        }
    }

    /// `mirror { name "NAME" }`: no targets until some are added at runtime.
    pub fn named(name: &str) -> Self {
        Mirror::default().name(name)
    }

    /// `name "NAME"`.
    pub fn name(self, name: &str) -> Self {
        let line = format!("name {}", kdl_string(name));
        self.opt(&line)
    }

    /// An option as written (`timeout "300ms"`, `compare { ... }`).
    pub fn opt(mut self, kdl: &str) -> Self {
        self.options.push(kdl.to_string());
        self
    }

    /// A `target` node with options of its own.
    pub fn target(self, target: Target) -> Self {
        let kdl = target.to_kdl();
        self.opt(&kdl)
    }

    fn to_kdl(&self) -> String {
        let mut head = "mirror".to_string();
        if !self.targets.is_empty() {
            head.push(' ');
            head.push_str(&arguments(&self.targets));
        }
        node(&head, &self.options)
    }
}

/// A mirror's `target "URL" { ... }` node.
#[derive(Clone, Debug)]
pub struct Target {
    url: String,
    options: Vec<String>,
}

impl Target {
    pub fn new(url: impl AsUrl) -> Self {
        Target {
            url: url.as_url(),
            options: Vec::new(),
        }
    }

    /// An option as written (`sample 0.1`).
    pub fn opt(mut self, kdl: &str) -> Self {
        self.options.push(kdl.to_string());
        self
    }

    fn to_kdl(&self) -> String {
        node(&format!("target {}", kdl_string(&self.url)), &self.options)
    }
}

/// A `reverse_proxy` handler: its upstreams and options.
#[derive(Clone, Debug)]
pub struct Proxy {
    upstreams: Vec<String>,
    options: Vec<String>,
}

impl Proxy {
    pub fn to(upstream: impl AsUrl) -> Self {
        Proxy {
            upstreams: vec![upstream.as_url()],
            options: Vec::new(),
        }
    }

    pub fn to_all<T: AsUrl>(upstreams: &[T]) -> Self {
        Proxy {
            upstreams: upstreams.iter().map(AsUrl::as_url).collect(),
            options: Vec::new(),
        }
    }

    /// An option as written (`timeout "300ms"`, `h2c #true`).
    pub fn opt(mut self, kdl: &str) -> Self {
        self.options.push(kdl.to_string());
        self
    }

    fn to_kdl(&self) -> String {
        node(
            &format!("reverse_proxy {}", arguments(&self.upstreams)),
            &self.options,
        )
    }
}

/// What [`Chain::proxy`] takes: a [`Proxy`], or an upstream as it is.
pub trait IntoProxy {
    fn into_proxy(self) -> Proxy;
}

impl IntoProxy for Proxy {
    fn into_proxy(self) -> Proxy {
        self
    }
}

impl<T: AsUrl> IntoProxy for T {
    fn into_proxy(self) -> Proxy {
        Proxy::to(self)
    }
}
