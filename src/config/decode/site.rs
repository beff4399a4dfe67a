//! `site { … }`: addresses, hosts, TLS, access log and routes.

use std::net::SocketAddr;
use std::path::PathBuf;

use kdl::KdlNode;

use crate::config::diag::Problem;
use crate::config::handler::Registry;
use crate::config::matchers::HostPattern;
use crate::config::model::*;
use crate::config::reader::{name_span, Reader, Repeat};
use crate::config::value::{self, Spanned};

pub(super) fn site(
    node: &KdlNode,
    r: &mut Reader,
    base_dir: &std::path::Path,
    registry: Registry,
) -> Option<Site> {
    r.no_properties(node);
    let addresses = match r.some_args(
        node,
        "one or more listen addresses, such as \"127.0.0.1:8080\"",
    ) {
        Some(args) => {
            let mut seen: Vec<Spanned<SocketAddr>> = Vec::new();
            for entry in args {
                let Some(addr) = r.check(value::listen_address(entry)) else {
                    continue;
                };
                let span = value::value_span(entry);
                if let Some(first) = seen.iter().find(|a| a.value == addr) {
                    r.push(
                        Problem::error(span, format!("address {addr} is listed twice"))
                            .label("again")
                            .also(first.span, "first here"),
                    );
                    continue;
                }
                seen.push(Spanned::new(addr, span));
            }
            Some(seen)
        }
        None => None,
    };
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
    let opts = r.options(
        node,
        &[
            ("host", Repeat::Once),
            ("tls", Repeat::Once),
            ("access_log", Repeat::Once),
            ("http_redirect", Repeat::Once),
            ("route", Repeat::Many),
        ],
    );
    let hosts = match opts.one("host") {
        Some(n) => {
            r.no_children(n);
            r.no_properties(n);
            r.some_args(n, "one or more host names").and_then(|args| {
                r.each(&args, |e| {
                    HostPattern::parse(e).map(|h| Spanned::new(h, value::value_span(e)))
                })
            })
        }
        None => Some(Vec::new()),
    };
    let tls = opts.one("tls").map(|n| tls(n, r, base_dir));
    let http_redirect = match opts.one("http_redirect") {
        Some(n) => {
            let addr = r.value(n, "a plain listen address, such as \":80\"", |e| {
                value::listen_address(e).map(|a| Spanned::new(a, value::value_span(e)))
            });
            if addr.is_some() && opts.one("tls").is_none() {
                r.push(
                    Problem::error(name_span(n), "`http_redirect` sends clients to this site's https:// URL, but the site has no `tls`")
                        .label("nothing to redirect to")
                        .help("add tls cert=\"...\" key=\"...\" to the site"),
                );
            }
            addr.map(Some)
        }
        None => Some(None),
    };
    let access_log = opts.one("access_log").map(|n| {
        let entry = r
            .args(n, 1, "\"stdout\", \"stderr\" or a file path")?
            .first()
            .copied()?;
        match r.check(value::non_empty_string(entry))?.as_str() {
            "stdout" => Some(AccessLogTarget::Stdout),
            "stderr" => Some(AccessLogTarget::Stderr),
            _ => r
                .file_to_write(entry, "access log")
                .map(AccessLogTarget::File),
        }
    });
    let route_nodes = opts.all("route");
    if route_nodes.is_empty() {
        r.push(
            Problem::error(name_span(node), "this site has no `route`")
                .label("no routes")
                .help("add route \"/*\" { ... } to answer requests"),
        );
    }
    let routes: Vec<Option<Route>> = route_nodes
        .iter()
        .map(|n| super::route::route(n, r, registry))
        .collect();
    let routes: Option<Vec<Route>> = routes.into_iter().collect();
    Some(Site {
        addresses: addresses?,
        hosts: hosts?,
        tls: match tls {
            Some(t) => Some(t?),
            None => None,
        },
        access_log: match access_log {
            Some(a) => Some(a?),
            None => None,
        },
        http_redirect: http_redirect?,
        routes: routes?,
        span: node.span(),
    })
}

fn tls(node: &KdlNode, r: &mut Reader, base_dir: &std::path::Path) -> Option<Spanned<TlsConfig>> {
    r.no_children(node);
    r.known_properties(node, &["cert", "key", "default"]);
    // Arguments here are most likely the cert and key written without
    // their names: "needs cert=" after that would only say it again.
    r.args_only(node, 0, "write tls cert=\"site.pem\" key=\"site-key.pem\"")?;
    let mut path = |key: &str| match node.entry(key) {
        Some(entry) => r
            .check(value::non_empty_string(entry))
            .map(|p| (PathBuf::from(p), value::value_span(entry))),
        None => {
            r.push(
                Problem::error(name_span(node), format!("`tls` needs {key}=\"...\""))
                    .label(format!("no {key}"))
                    .help("write tls cert=\"site.pem\" key=\"site-key.pem\""),
            );
            None
        }
    };
    let cert = path("cert");
    let key = path("key");
    let default = match node.entry("default") {
        Some(entry) => r.check(value::boolean(entry)),
        None => Some(false),
    };
    let ((cert, cert_span), (key, _)) = (cert?, key?);
    // Relative paths resolve against the site file's directory.
    let certified =
        match crate::certs::load_certified_key(&base_dir.join(&cert), &base_dir.join(&key)) {
            Ok(certified) => certified,
            Err(why) => {
                r.push(
                Problem::error(cert_span, why)
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
                cert_span,
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
            cert,
            key,
            default: default?,
            certified,
        },
        node.span(),
    ))
}
