//! Checks across the whole file, after every part has been read: shared
//! addresses, the admin address, and the checks each handler owns.

use std::collections::HashMap;
use std::net::SocketAddr;

use miette::SourceSpan;

use crate::config::diag::Problem;
use crate::config::handler::{Earlier, FileView};

use super::Unfinished;
use crate::config::matchers::HostPattern;
use crate::config::model::*;
use crate::config::reader::Reader;
use crate::config::value::Spanned;

/// The file-wide checks each handler owns (see [`HandlerConfig::check`]),
/// in file order, each handler seeing the ones before it in its route.
pub(super) fn handler_checks(sites: &[Site], unfinished: &[Unfinished], r: &mut Reader) {
    let listen: Vec<Spanned<SocketAddr>> = sites
        .iter()
        .flat_map(|s| s.addresses.iter().cloned())
        .collect();
    let finished = sites.iter().flat_map(|s| &s.routes).map(|route| {
        let middleware = route.middleware.iter().map(|m| Earlier {
            name: &m.name,
            span: m.span,
            config: &*m.config,
        });
        let terminal = Earlier {
            name: &route.terminal.name,
            span: route.terminal.span,
            config: &*route.terminal.config,
        };
        middleware
            .chain(std::iter::once(terminal))
            .collect::<Vec<_>>()
    });
    let unfinished = unfinished.iter().map(|handlers| {
        handlers
            .iter()
            .map(|h| Earlier {
                name: &h.name,
                span: h.span,
                config: &*h.config,
            })
            .collect::<Vec<_>>()
    });
    let mut found = Vec::new();
    for route in finished.chain(unfinished) {
        for (i, handler) in route.iter().enumerate() {
            let file = FileView {
                at: handler.span,
                listen: &listen,
                earlier: &route[..i],
            };
            handler.config.check(&file, &mut found);
        }
    }
    found.into_iter().for_each(|p| r.push(p));
}

/// The admin endpoint needs an address of its own: `run` could not bind it
/// beside a site (or `http_redirect`) on the same one.
pub(super) fn admin_address(admin: &Spanned<SocketAddr>, sites: &[Site], r: &mut Reader) {
    let taken = sites
        .iter()
        .flat_map(|site| site.addresses.iter().chain(&site.http_redirect))
        .find(|addr| same_port_binding(admin.value, addr.value));
    if let Some(addr) = taken {
        r.push(
            Problem::error(
                admin.span,
                format!(
                    "the admin endpoint's {} takes the port of {}, which a site listens on",
                    admin.value, addr.value
                ),
            )
            .label("cannot be bound as well")
            .also(addr.span, "a site listens here")
            .help("give the admin endpoint a port of its own, such as \"127.0.0.1:2019\""),
        );
    }
}

/// Whether two listeners could not both be bound: one port, and the same
/// address or a wildcard that covers the other.
fn same_port_binding(a: SocketAddr, b: SocketAddr) -> bool {
    (a.port() != 0 && a == b) || covers(a, b) || covers(b, a)
}

/// Whether `wild` is a wildcard address that takes `other`'s port on every
/// interface (`[::]` takes IPv4 too): `other` could not be bound beside it.
fn covers(wild: SocketAddr, other: SocketAddr) -> bool {
    wild.ip().is_unspecified()
        && wild.port() == other.port()
        && other.port() != 0
        && (wild.is_ipv6() || other.is_ipv4())
}

/// Sites may share an address only when `host` tells them apart; one site
/// per address may leave `host` out and catches every other name.
pub(super) fn shared_addresses(sites: &[Site], r: &mut Reader) {
    let mut by_addr: HashMap<SocketAddr, Vec<(&Site, SourceSpan)>> = HashMap::new();
    for site in sites {
        for addr in &site.addresses {
            by_addr
                .entry(addr.value)
                .or_default()
                .push((site, addr.span));
        }
    }
    for site in sites {
        if let Some(redirect) = &site.http_redirect {
            if let Some((_, span)) = by_addr.get(&redirect.value).and_then(|s| s.first()) {
                r.push(
                    Problem::error(
                        redirect.span,
                        format!("{} is already a site's listen address", redirect.value),
                    )
                    .label("cannot also redirect")
                    .also(*span, "served here")
                    .help("give http_redirect an address of its own, such as \":80\""),
                );
            }
        }
    }
    let mut addrs: Vec<_> = by_addr.into_iter().collect();
    addrs.sort_by_key(|(_, sites)| sites[0].1.offset());
    // A wildcard address takes its port on every interface: a specific
    // address with the same port could not be bound beside it.
    for (wild, sharing) in addrs.iter().filter(|(a, _)| a.ip().is_unspecified()) {
        for (other, other_sites) in addrs.iter().filter(|(a, _)| a != wild) {
            if covers(*wild, *other) {
                r.push(
                    Problem::error(other_sites[0].1, format!("{other} overlaps {wild}, which already takes port {} on every interface", wild.port()))
                        .label("cannot be bound as well")
                        .also(sharing[0].1, "every interface")
                        .help(format!("list the sites on {wild} and tell them apart with `host`, or use a specific address for both")),
                );
            }
        }
    }
    for (addr, sharing) in &addrs {
        let with_tls: Vec<_> = sharing.iter().filter(|(s, _)| s.tls.is_some()).collect();
        if !with_tls.is_empty() && with_tls.len() < sharing.len() {
            let plain = sharing
                .iter()
                .find(|(s, _)| s.tls.is_none())
                .map(|(_, span)| *span);
            if let Some(plain) = plain {
                r.push(
                    Problem::error(plain, format!("{addr} serves HTTPS for another site, but this one has no `tls`"))
                        .label("plain HTTP on a TLS address")
                        .also(with_tls[0].1, "this site has `tls`")
                        .help("give every site on the address `tls`, or listen on another address for plain HTTP"),
                );
            }
        }
        let defaults: Vec<_> = with_tls
            .iter()
            .filter(|(s, _)| s.tls.as_ref().is_some_and(|t| t.default))
            .collect();
        if defaults.len() > 1 {
            r.push(
                Problem::error(
                    defaults[1].1,
                    format!("two sites on {addr} are the TLS default"),
                )
                .label("second default")
                .also(defaults[0].1, "first default")
                .help("mark one site per address with default=#true"),
            );
        }
    }
    for (addr, sharing) in addrs {
        let mut catch_all: Option<SourceSpan> = None;
        let mut names: Vec<&Spanned<HostPattern>> = Vec::new();
        for (site, span) in sharing {
            if site.hosts.is_empty() {
                match catch_all {
                    Some(first) => r.push(
                        Problem::error(span, format!("two sites listen on {addr} and neither has `host`"))
                            .label("second site without host")
                            .also(first, "first site without host")
                            .help("give each site on a shared address a `host`, e.g. host \"api.example.com\""),
                    ),
                    None => catch_all = Some(span),
                }
                continue;
            }
            for host in &site.hosts {
                if let Some(first) = names.iter().find(|h| h.value == host.value) {
                    r.push(
                        Problem::error(host.span, format!("host `{}` is served twice on {addr}", host.value))
                            .label("second site for this host")
                            .also(first.span, "first site for this host")
                            .help("each name may belong to one site per address; merge the two sites' routes"),
                    );
                } else {
                    names.push(host);
                }
            }
        }
    }
}
