//! Reading certificates: a site's chain and key, and when it expires.
//!
//! Here, below the site file and the server, because both need it: the
//! site file's checks read each pair (so `validate` refuses a missing or
//! mismatched one), and the server's TLS acceptor serves what was read.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a PEM certificate chain and its private key (PKCS#8, PKCS#1 RSA or
/// SEC1 EC) and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let read = |path: &Path, what: &str| {
        crate::bounded_read::read(
            path,
            crate::bounded_read::MAX_NAMED_FILE,
            crate::bounded_read::Kind::Regular,
        )
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert, "certificate")?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot parse certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key, "a private key from")?)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("unusable private key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "the key {} does not belong to the certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// When the first certificate of a chain stops being valid, as seconds
/// since the Unix epoch (`None` if it cannot be read).
pub fn not_after(certified: &CertifiedKey) -> Option<i64> {
    let leaf = certified.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}
