//! `site { … }`: addresses, hosts, TLS, access log and routes. The options
//! of `site` and `tls` are declared here once (see
//! [`crate::config::options`]); each `route` is read by [`super::route`].

use std::borrow::Cow;
use std::path::PathBuf;

use kdl::{KdlEntry, KdlNode};

use crate::config::diag::Problem;
use crate::config::handler::Registry;
use crate::config::matchers::HostPattern;
use crate::config::model::*;

use super::Unfinished;
use crate::config::options::{self as o, Spec, Table, Unset, Value};
use crate::config::reader::{name_span, Reader};
use crate::config::value::{self, Spanned};

/// What `site` takes, in the order its diagnostics list it.
pub static OPTIONS: &Table = &[&ADDRESSES, &HOST, &TLS, &ACCESS_LOG, &HTTP_REDIRECT, &ROUTE];

static ADDRESSES: Spec<o::ListenAddress> = Spec::arguments(
    "addresses",
    o::ListenAddress {
        expects: "one or more listen addresses, such as \"127.0.0.1:8080\"",
    },
    Unset::Required,
    "Where the site listens, each address once.",
);

static HOST: Spec<HostNames> = Spec::once(
    "host",
    HostNames,
    Unset::Means("any host"),
    "The Host names this site answers: \"example.com\", \"*.example.com\".",
);

static TLS: Spec<o::Nested> = Spec::once(
    "tls",
    o::Nested(TLS_OPTIONS),
    Unset::Means("plain HTTP"),
    "HTTPS on the site's addresses, with a certificate and its key.",
);

static ACCESS_LOG: Spec<AccessLog> = Spec::once(
    "access_log",
    AccessLog,
    Unset::Means("none"),
    "One line per request, to stdout, stderr or a file (appended to).",
);

static HTTP_REDIRECT: Spec<o::ListenAddress> = Spec::once(
    "http_redirect",
    o::ListenAddress {
        expects: "a plain listen address, such as \":80\"",
    },
    Unset::Means("none"),
    "A plain address answering 308 to this TLS site's https:// URL.",
);

static ROUTE: Spec<RouteBlock> = Spec::many(
    "route",
    RouteBlock,
    Unset::Required,
    "A path pattern and the handlers of the requests it matches; the first match wins.",
);

/// What `tls` takes: properties of its node.
pub static TLS_OPTIONS: &Table = &[&CERT, &KEY, &DEFAULT];

static CERT: Spec<PemFile> = Spec::property(
    "cert",
    PemFile,
    Unset::Required,
    "The PEM certificate chain.",
);

static KEY: Spec<PemFile> = Spec::property(
    "key",
    PemFile,
    Unset::Required,
    "The certificate's PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).",
);

static DEFAULT: Spec<o::Flag> = Spec::property(
    "default",
    o::Flag,
    Unset::Default("#false"),
    "Answer clients whose SNI names no site on the address.",
);

pub(super) fn site(
    node: &KdlNode,
    r: &mut Reader,
    base_dir: &std::path::Path,
    registry: Registry,
    unfinished: &mut Vec<Unfinished>,
) -> Option<Site> {
    r.no_properties(node);
    let addresses = r
        .some_args(node, &ADDRESSES.expects())
        .and_then(|args| ADDRESSES.read_list(&args, r));
    if node.children().is_none() {
        r.push(
            Problem::error(
                name_span(node),
                "`site` needs a block with at least one `route`",
            )
            .label("no block")
            .help("site \"127.0.0.1:8080\" { route \"/*\" { respond 200 } }"),
        );
        return None;
    }
    let opts = o::read(node, OPTIONS, r);
    let hosts = opts
        .maybe(r, &HOST)
        .map(|hosts| hosts.map_or_else(Vec::new, |h| h.value));
    let tls = opts.node(&TLS).map(|n| tls(n, r, base_dir));
    let http_redirect = opts
        .maybe(r, &HTTP_REDIRECT)
        .map(|given| given.map(|addr| addr.value));
    if let (Some(Some(_)), Some(n), None) =
        (&http_redirect, opts.node(&HTTP_REDIRECT), opts.node(&TLS))
    {
        r.push(
            Problem::error(name_span(n), "`http_redirect` sends clients to this site's https:// URL, but the site has no `tls`")
                .label("nothing to redirect to")
                .help("add tls cert=\"...\" key=\"...\" to the site"),
        );
    }
    let access_log = opts.maybe(r, &ACCESS_LOG);
    let route_nodes = opts.nodes(&ROUTE);
    if route_nodes.is_empty() {
        r.push(
            Problem::error(name_span(node), "this site has no `route`")
                .label("no routes")
                .help("add route \"/*\" { ... } to answer requests"),
        );
    }
    let routes: Vec<Option<Route>> = route_nodes
        .iter()
        .map(|n| super::route::route(n, r, registry, unfinished))
        .collect();
    let complete = addresses.is_some()
        && hosts.is_some()
        && !matches!(tls, Some(None))
        && access_log.is_some()
        && http_redirect.is_some()
        && routes.iter().all(Option::is_some);
    if !complete {
        // Their handlers are still checked (see `Unfinished`).
        unfinished.extend(routes.into_iter().flatten().map(Route::into_handlers));
        return None;
    }
    let routes: Option<Vec<Route>> = routes.into_iter().collect();
    Some(Site {
        addresses: addresses?,
        hosts: hosts?,
        tls: match tls {
            Some(t) => Some(t?),
            None => None,
        },
        access_log: access_log?.map(|a| a.value),
        http_redirect: http_redirect?,
        routes: routes?,
        span: node.span(),
    })
}

fn tls(node: &KdlNode, r: &mut Reader, base_dir: &std::path::Path) -> Option<Spanned<TlsConfig>> {
    r.no_children(node);
    o::check_properties(node, TLS_OPTIONS, r);
    // Arguments here are most likely the cert and key written without
    // their names: "needs cert=" after that would only say it again.
    r.args_only(node, 0, "write tls cert=\"site.pem\" key=\"site-key.pem\"")?;
    let opts = o::on(node, TLS_OPTIONS);
    let mut path = |spec: &Spec<PemFile>| match opts.maybe(r, spec)? {
        Some(given) => Some(given),
        None => {
            let key = spec.name;
            r.push(
                Problem::error(name_span(node), format!("`tls` needs {key}=\"...\""))
                    .label(format!("no {key}"))
                    .help("write tls cert=\"site.pem\" key=\"site-key.pem\""),
            );
            None
        }
    };
    let cert = path(&CERT);
    let key = path(&KEY);
    let default = opts.get(r, &DEFAULT);
    let (cert, key) = (cert?, key?);
    // Relative paths resolve against the site file's directory.
    let certified = match crate::certs::load_certified_key(
        &base_dir.join(&cert.value),
        &base_dir.join(&key.value),
    ) {
        Ok(certified) => certified,
        Err(why) => {
            r.push(
                Problem::error(cert.span, why)
                    .label("unusable certificate or key")
                    .help(
                        "give a PEM certificate chain and the PEM private key that belongs to it",
                    ),
            );
            return None;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Some(expiry) = crate::certs::not_after(&certified).filter(|t| *t < now) {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expiry.max(0) as u64);
        r.push(
            Problem::warning(
                cert.span,
                format!(
                    "the certificate expired on {}",
                    humantime::format_rfc3339_seconds(when)
                ),
            )
            .label("expired")
            .help("clients will refuse it: renew it, then reload"),
        );
    }
    Some(Spanned::new(
        TlsConfig {
            cert: cert.value,
            key: key.value,
            default: default?,
            certified,
        },
        node.span(),
    ))
}

/// `host NAME…`: one or more host names, each with its span.
#[derive(Debug)]
struct HostNames;

impl Value for HostNames {
    type Out = Vec<Spanned<HostPattern>>;
    fn describe(&self) -> Cow<'static, str> {
        "names: \"example.com\", \"*.example.com\"".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "one or more host names".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Self::Out> {
        r.no_children(node);
        r.no_properties(node);
        r.some_args(node, &self.expects()).and_then(|args| {
            r.each(&args, |e| {
                HostPattern::parse(e).map(|h| Spanned::new(h, value::value_span(e)))
            })
        })
    }
}

/// `access_log TARGET`: `stdout`, `stderr` or a file teebox appends to.
#[derive(Debug)]
struct AccessLog;

impl Value for AccessLog {
    type Out = AccessLogTarget;
    fn describe(&self) -> Cow<'static, str> {
        "\"stdout\", \"stderr\" or a file path".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "\"stdout\", \"stderr\" or a file path".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        match r.check(value::non_empty_string(entry))?.as_str() {
            "stdout" => Some(AccessLogTarget::Stdout),
            "stderr" => Some(AccessLogTarget::Stderr),
            _ => r
                .file_to_write(entry, "access log")
                .map(AccessLogTarget::File),
        }
    }
}

/// `route PATTERN { … }`: declared for the reference and the "did you
/// mean" of `site`'s options; read by [`super::route`], which needs the
/// handler registry a value type is not given.
#[derive(Debug)]
struct RouteBlock;

impl Value for RouteBlock {
    type Out = ();
    fn describe(&self) -> Cow<'static, str> {
        "path pattern, block of handlers".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "one path pattern, such as \"/api/*\" or \"/*\"".into()
    }
    fn node(&self, _: &'static str, _: &KdlNode, _: &mut Reader) -> Option<()> {
        Some(())
    }
}

/// A PEM file's path as written, relative to the site file; the
/// certificate and key are read together, once both are known.
#[derive(Debug)]
struct PemFile;

impl Value for PemFile {
    type Out = PathBuf;
    fn describe(&self) -> Cow<'static, str> {
        "PEM file path, relative to the site file".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a file path".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<PathBuf> {
        r.check(value::non_empty_string(entry)).map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_sound() {
        o::check_table(OPTIONS).unwrap();
    }
}
