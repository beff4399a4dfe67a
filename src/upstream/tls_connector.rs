//! Connections to `https://` upstreams and mirror targets: verified against
//! the system's roots, or a private CA (`tls_ca`), with an optional
//! `tls_server_name`, or, for tests and emergencies only, not verified at
//! all (`tls_insecure_skip_verify`, which `validate` warns about).

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
use crate::config::reader::{Options, Reader};
use crate::config::{value, Problem};

pub type Connector = HttpsConnector<HttpConnector<Resolver>>;

#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// `tls_ca`, read with the site file: the roots trusted instead of
    /// the system's.
    pub ca: Option<Arc<rustls::RootCertStore>>,
    pub server_name: Option<ServerName<'static>>,
    pub insecure: bool,
}

impl UpstreamTls {
    /// The TLS options of a block; `tls_ca` is read and parsed here, so
    /// that `teebox validate` refuses a bundle `run` could not use.
    pub fn decode(opts: &Options, r: &mut Reader) -> Option<UpstreamTls> {
        let ca = match opts.one("tls_ca") {
            Some(n) => r
                .args(n, 1, "a PEM file of CA certificates")
                .and_then(|args| {
                    let entry = args[0];
                    let written = r.check(value::non_empty_string(entry))?;
                    let path = r.resolve(Path::new(&written));
                    match read_ca(&path) {
                        Ok(roots) => Some(Some(Arc::new(roots))),
                        Err(why) => {
                            r.push(
                                Problem::error(value::value_span(entry), why)
                                    .label("unusable CA bundle")
                                    .help("give a PEM file of the CA certificates that signed the upstream's certificate"),
                            );
                            None
                        }
                    }
                }),
            None => Some(None),
        };
        let server_name = match opts.one("tls_server_name") {
            Some(n) => r
                .value(n, "a host name", |entry| {
                    let name = value::non_empty_string(entry)?;
                    ServerName::try_from(name.clone()).map_err(|_| {
                        Problem::error(
                            value::value_span(entry),
                            format!("tls_server_name `{name}` is not a DNS name or IP address"),
                        )
                        .label("not a server name")
                    })
                })
                .map(Some),
            None => Some(None),
        };
        let insecure = match opts.one("tls_insecure_skip_verify") {
            Some(n) => {
                let on = r.value(n, "#true or #false", value::boolean);
                if on == Some(true) {
                    r.push(
                        Problem::warning(n.span(), "upstream certificates are not verified")
                            .label("anyone on the path can pose as the upstream")
                            .help("give the upstream's CA with tls_ca instead"),
                    );
                }
                on
            }
            None => Some(false),
        };
        Some(UpstreamTls {
            ca: ca?,
            server_name: server_name?,
            insecure: insecure?,
        })
    }

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
