//! Connections to `https://` upstreams and mirror targets: verified against
//! the system's roots, or a private CA (`tls_ca`), with an optional
//! `tls_server_name`, or, for tests and emergencies only, not verified at
//! all (`tls_insecure_skip_verify`, which `validate` warns about). The
//! settings come decoded from the site file by the handlers that take them;
//! the CA bundle is read with the site file, by [`read_ca`], so that
//! `validate` refuses one `run` could not use.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use super::target_guard::Resolver;

pub type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// How `https://` upstreams are verified.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// `tls_ca`, read with the site file: the roots trusted instead of
    /// the system's.
    pub ca: Option<Arc<rustls::RootCertStore>>,
    pub server_name: Option<ServerName<'static>>,
    pub insecure: bool,
}

impl UpstreamTls {
    /// A connector that speaks plain HTTP to `http://` and TLS to
    /// `https://` URLs; over TLS it offers HTTP/2 and HTTP/1.1 by ALPN and
    /// the client follows the upstream's choice.
    /// With `guard`, names are resolved without the addresses copies may
    /// not go to (see [`super::target_guard`]).
    pub fn connector(&self, connect_timeout: Duration, guard: bool) -> Result<Connector, String> {
        let mut http = HttpConnector::new_with_resolver(Resolver::new(guard));
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            let roots = match &self.ca {
                Some(ca) => ca.as_ref().clone(),
                None => {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                    roots
                }
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let connector = match &self.server_name {
            Some(name) => connector.with_server_name_resolver(
                hyper_rustls::FixedServerNameResolver::new(name.clone()),
            ),
            None => connector,
        };
        Ok(connector.enable_all_versions().wrap_connector(http))
    }
}

/// The CA certificates of a PEM file, at least one of them usable.
pub fn read_ca(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = crate::bounded_read::read(
        path,
        crate::bounded_read::MAX_NAMED_FILE,
        crate::bounded_read::Kind::Regular,
    )
    .map_err(|e| format!("cannot read tls_ca {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse tls_ca {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("no CA certificate in tls_ca {}", path.display()));
    }
    Ok(roots)
}

/// Accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
