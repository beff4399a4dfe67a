//! The options about reaching an upstream that `reverse_proxy` and `mirror`
//! share, declared once: the TLS settings for `https://` upstreams, `h2c`
//! and `header_up`. Each handler lists these `Spec`s in its own table, where
//! its diagnostics name them, and reads them here into the plain settings
//! the upstream client takes ([`UpstreamTls`], [`HeaderOps`], [`Upgrades`]).
//!
//! `timeout` is not one of them: `reverse_proxy`'s waits for the response
//! head (60s), a mirror's bounds the whole copy, connecting included (5s).
//! `upgrades` is `reverse_proxy`'s alone (copies are never upgraded), but an
//! upstream client setting all the same, so it is read here too.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use kdl::{KdlEntry, KdlNode, KdlValue};
use rustls::pki_types::ServerName;

use crate::config::options::{Block, Flag, HeaderEdit, Spec, Unset, Value};
use crate::config::reader::Reader;
use crate::config::{value, Problem};
use crate::message::header_ops::HeaderOps;
use crate::upstream::tls_connector::{self, UpstreamTls};
use crate::upstream::upgrades::{BadProtocol, Protocol, Upgrades};

pub static TLS_CA: Spec<CaBundle> = Spec::once(
    "tls_ca",
    CaBundle,
    Unset::Means("system roots"),
    "A PEM file of the CAs trusted for https:// upstreams or targets, instead of the system's roots.",
);

pub static TLS_SERVER_NAME: Spec<TlsServerName> = Spec::once(
    "tls_server_name",
    TlsServerName,
    Unset::Means("the URL's host"),
    "The name sent by SNI and checked against an https:// upstream's or target's certificate.",
);

pub static TLS_INSECURE_SKIP_VERIFY: Spec<Flag> = Spec::once(
    "tls_insecure_skip_verify",
    Flag,
    Unset::Default("#false"),
    "Accept any certificate from https:// upstreams or targets (tests only: validate warns).",
);

pub static H2C: Spec<Flag> = Spec::once(
    "h2c",
    Flag,
    Unset::Default("#false"),
    "Speak HTTP/2 with prior knowledge to http:// upstreams or targets (https:// ones choose by ALPN).",
);

pub static HEADER_UP: Spec<HeaderEdit> = Spec::many(
    "header_up",
    HeaderEdit,
    Unset::Means("none"),
    "Edits the request sent upstream (a mirror's: its copies), in file order.",
);

pub static UPGRADES: Spec<UpgradeList> = Spec::once(
    "upgrades",
    UpgradeList,
    Unset::Default("websocket"),
    "The Upgrade protocols tunnelled (the list replaces the default); #false for none.",
);

/// The TLS options of a block; `tls_ca` is read and parsed here, so that
/// `teebox validate` refuses a bundle `run` could not use.
pub fn tls(opts: &Block, r: &mut Reader) -> Option<UpstreamTls> {
    let ca = opts.maybe(r, &TLS_CA);
    let server_name = opts.maybe(r, &TLS_SERVER_NAME);
    let insecure = opts.maybe(r, &TLS_INSECURE_SKIP_VERIFY);
    if let Some(Some(on)) = &insecure {
        if on.value {
            r.push(
                Problem::warning(on.span, "upstream certificates are not verified")
                    .label("anyone on the path can pose as the upstream")
                    .help("give the upstream's CA with tls_ca instead"),
            );
        }
    }
    let insecure = match insecure? {
        Some(given) => Some(given.value),
        None => opts.get(r, &TLS_INSECURE_SKIP_VERIFY),
    };
    Some(UpstreamTls {
        ca: ca?.map(|ca| ca.value),
        server_name: server_name?.map(|name| name.value),
        insecure: insecure?,
    })
}

/// Every `header_up` of a block, in file order.
pub fn header_up(opts: &Block, r: &mut Reader) -> HeaderOps {
    HeaderOps::new(opts.every(r, &HEADER_UP))
}

/// `tls_ca`: a PEM file of CA certificates, read with the site file.
#[derive(Debug)]
pub struct CaBundle;

impl Value for CaBundle {
    type Out = Arc<rustls::RootCertStore>;
    fn describe(&self) -> Cow<'static, str> {
        "PEM file path".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a PEM file of CA certificates".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        let written = r.check(value::non_empty_string(entry))?;
        let path = r.resolve(Path::new(&written));
        match tls_connector::read_ca(&path) {
            Ok(roots) => Some(Arc::new(roots)),
            Err(why) => {
                r.push(
                    Problem::error(value::value_span(entry), why)
                        .label("unusable CA bundle")
                        .help("give a PEM file of the CA certificates that signed the upstream's certificate"),
                );
                None
            }
        }
    }
}

/// `tls_server_name`: a DNS name or an IP address.
#[derive(Debug)]
pub struct TlsServerName;

impl Value for TlsServerName {
    type Out = ServerName<'static>;
    fn describe(&self) -> Cow<'static, str> {
        "host name or IP address".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a host name".into()
    }
    fn entry(&self, name: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        let written = r.check(value::non_empty_string(entry))?;
        match ServerName::try_from(written.clone()) {
            Ok(server_name) => Some(server_name),
            Err(_) => {
                r.push(
                    Problem::error(
                        value::value_span(entry),
                        format!("{name} `{written}` is not a DNS name or IP address"),
                    )
                    .label("not a server name"),
                );
                None
            }
        }
    }
}

/// `upgrades "websocket" "foo"`, or `upgrades #false` for none.
#[derive(Debug)]
pub struct UpgradeList;

impl Value for UpgradeList {
    type Out = Upgrades;
    fn describe(&self) -> Cow<'static, str> {
        "protocol names, or #false".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "one or more protocol names, such as \"websocket\", or #false for none".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Upgrades> {
        r.no_children(node);
        r.no_properties(node);
        let args = r.some_args(node, &self.expects())?;
        if let [only] = args.as_slice() {
            if matches!(only.value(), KdlValue::Bool(false)) {
                return Some(Upgrades::allowing(Vec::new()));
            }
        }
        let mut protocols = Vec::with_capacity(args.len());
        let mut ok = true;
        for entry in args {
            match protocol(entry, r) {
                Some(p) => protocols.push(p),
                None => ok = false,
            }
        }
        ok.then(|| Upgrades::allowing(protocols))
    }
}

/// One name in `upgrades`.
fn protocol(entry: &KdlEntry, r: &mut Reader) -> Option<Protocol> {
    let name = r.check(value::non_empty_string(entry))?;
    match Protocol::new(&name) {
        Ok(protocol) => Some(protocol),
        Err(BadProtocol::H2c) => {
            r.push(
                Problem::error(
                    value::value_span(entry),
                    "`h2c` upgrades are never tunnelled",
                )
                .label("not allowed")
                .help(
                    "an h2c tunnel would carry later requests past the routes; \
                         for HTTP/2 upstream, set `h2c #true`",
                ),
            );
            None
        }
        Err(BadProtocol::NotAToken) => {
            r.push(
                Problem::error(
                    value::value_span(entry),
                    format!("`{name}` is not a protocol name"),
                )
                .label("not a protocol name")
                .help("write the name alone, such as \"websocket\": a token, without a version"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::options::check_table;

    #[test]
    fn the_shared_options_are_sound() {
        check_table(&[
            &TLS_CA,
            &TLS_SERVER_NAME,
            &TLS_INSECURE_SKIP_VERIFY,
            &H2C,
            &HEADER_UP,
            &UPGRADES,
        ])
        .unwrap();
    }
}
