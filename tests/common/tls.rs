//! TLS for test servers: a self-signed certificate made at test time, and
//! a rustls server config around it.

use std::path::Path;
use std::sync::Arc;

/// A server config for a self-signed certificate naming `name`, offering
/// the `alpn` protocols. The certificate is written to `dir/ca.pem`, for a
/// site file's `tls_ca`.
pub fn self_signed_server(dir: &Path, name: &str, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), made.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
