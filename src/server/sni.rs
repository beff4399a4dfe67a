//! TLS termination with rustls: each site's certificate, chosen by SNI.
//!
//! Certificates are read when the site file is checked (`crate::certs`,
//! so `validate` catches a missing, unreadable or mismatched pair) and
//! again on every reload, which is how a renewed certificate reaches new
//! connections without dropping open ones.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::matchers::HostPattern;

/// Picks a certificate by the name the client asked for: an exact name,
/// then a wildcard, then the default site's.
#[derive(Debug)]
pub struct SniResolver {
    names: Vec<(HostPattern, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
    address: String,
}

impl SniResolver {
    pub fn new(
        mut names: Vec<(HostPattern, Arc<CertifiedKey>)>,
        default: Option<Arc<CertifiedKey>>,
        address: String,
    ) -> Self {
        names.sort_by_key(|(pattern, _)| pattern.precedence());
        SniResolver {
            names,
            default,
            address,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let named = asked
            .as_deref()
            .and_then(|name| self.names.iter().find(|(p, _)| p.matches(name)))
            .map(|(_, key)| key.clone());
        let chosen = named.or_else(|| self.default.clone());
        if chosen.is_none() {
            tracing::warn!(
                address = %self.address,
                server_name = asked.as_deref().unwrap_or("(none)"),
                "TLS handshake refused: no site for this name and no default site"
            );
        }
        chosen
    }
}

/// The rustls configuration for one listen address: TLS 1.2 and 1.3, ALPN
/// `h2` and `http/1.1`.
pub fn server_config(resolver: SniResolver) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
