//! TLS for pgw's cluster (gRPC) port, shared by the node and pgwctl.
//!
//! Contract:
//! - Files are PEM: a certificate chain (leaf first), a private key (PKCS#8, PKCS#1 or SEC1),
//!   and the CA certificate(s) of the cluster's private CA. Bad or missing files give a
//!   [`TlsError`] that names the file and what is wrong; nothing panics.
//! - Trust is the cluster CA plus certificate *names*, not addresses: a server certificate is
//!   accepted when it chains to the CA and is valid now; its names are not compared with the
//!   address that was dialed (members are dialed by `host:port` as configured, often an IP).
//!   When a list of allowed server names is given (the node's `--cluster.tls.peer-names`),
//!   the server certificate must carry one of them. Use a CA dedicated to the cluster.
//! - Names are the DNS subject alternative names and the subject common name
//!   ([`cert_names`]).
//! - [`ReloadableTls`] re-reads the files on demand ([`ReloadableTls::reload`]); new
//!   connections use the new material, established connections keep theirs, and a bad new
//!   file keeps the old material and returns the error.
//! - Crypto is rustls with the `ring` provider only. Both sides offer ALPN `h2`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub mod names;

pub use names::cert_names;
pub use rustls;
pub use tokio_rustls;

/// A TLS file or configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file (e.g. "--cluster.tls.cert-file").
        what: String,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The files are readable but do not make a valid configuration (key does not match
    /// the certificate, certificate not signed by the CA, expired, ...).
    #[error("{0}")]
    Invalid(String),
}

/// The crypto provider used everywhere: rustls' `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what: what.to_string(),
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads every PEM certificate of `path` (`what` names the flag in errors).
///
/// # Errors
/// Unreadable file, bad PEM, or no certificate in it.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            what,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Reads the first PEM private key of `path`.
///
/// # Errors
/// Unreadable file or no private key in it.
pub fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
        file_error(
            what,
            path,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

/// Reads the CA certificates of `path` into a root store.
///
/// # Errors
/// Unreadable file, no certificate, or a certificate that cannot be a trust anchor.
pub fn load_roots(path: &Path, what: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots
            .add(cert)
            .map_err(|e| file_error(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Checks a server certificate against the cluster CA (chain and validity) and, when given,
/// against a list of allowed names; the dialed address is not compared with its names.
#[derive(Debug)]
struct CaVerifier {
    inner: Arc<WebPkiServerVerifier>,
    allowed: Option<Arc<BTreeSet<String>>>,
    provider: Arc<CryptoProvider>,
}

impl CaVerifier {
    fn new(
        roots: Arc<RootCertStore>,
        allowed: Option<Arc<BTreeSet<String>>>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Invalid(format!("cannot use the CA certificates: {e}")))?;
        Ok(CaVerifier {
            inner,
            allowed,
            provider,
        })
    }
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // rustls checks the chain first and the name last: a name mismatch means the chain
        // and validity are good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        if let Some(allowed) = &self.allowed {
            let names = cert_names(end_entity.as_ref());
            if !names.iter().any(|n| allowed.contains(n)) {
                return Err(rustls::Error::General(format!(
                    "the server certificate names {names:?}, none of which is in \
                     --cluster.tls.peer-names"
                )));
            }
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration trusting `roots` (see the crate docs for how), presenting
/// `identity` (certificate chain and key) when given, requiring the server certificate to
/// carry one of `server_names` when given.
///
/// # Errors
/// The CA or the identity cannot be used (e.g. the key does not match the certificate).
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    server_names: Option<Arc<BTreeSet<String>>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(CaVerifier::new(roots, server_names)?);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            TlsError::Invalid(format!(
                "the certificate and key cannot be used together: {e}"
            ))
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration presenting `chain`/`key` and requiring a client certificate that
/// chains to `roots`.
///
/// # Errors
/// The CA or the identity cannot be used.
pub fn server_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Invalid(format!("cannot use the CA certificates: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::Invalid(format!(
                "the certificate and key cannot be used together: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Where a node's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cluster.tls.cert-file`: the node's certificate chain (served, and presented when
    /// dialing peers).
    pub cert: PathBuf,
    /// `--cluster.tls.key-file`.
    pub key: PathBuf,
    /// `--cluster.tls.ca-file`: the cluster CA.
    pub ca: PathBuf,
}

/// One reading of a node's files.
#[derive(Debug)]
pub struct Material {
    /// What the node serves with.
    pub server: Arc<ServerConfig>,
    /// What the node dials peers with.
    pub client: Arc<ClientConfig>,
    /// The names of the node's own certificate.
    pub names: Vec<String>,
}

impl Material {
    /// Reads and checks `files`: the key must match the certificate, and the certificate
    /// must chain to the CA and be valid now (so a node never serves a certificate its peers
    /// would refuse). `server_names` as in [`client_config`].
    ///
    /// # Errors
    /// Any file unusable; the message names it.
    pub fn load(
        files: &TlsFiles,
        server_names: Option<Arc<BTreeSet<String>>>,
    ) -> Result<Material, TlsError> {
        let roots = load_roots(&files.ca, "--cluster.tls.ca-file")?;
        let chain = load_certs(&files.cert, "--cluster.tls.cert-file")?;
        let key = load_key(&files.key, "--cluster.tls.key-file")?;
        let own = CaVerifier::new(roots.clone(), None)?;
        let name =
            ServerName::try_from("pgw.invalid").map_err(|e| TlsError::Invalid(e.to_string()))?;
        own.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map_err(|e| {
                TlsError::Invalid(format!(
                    "--cluster.tls.cert-file {} is not usable with --cluster.tls.ca-file {}: {e}",
                    files.cert.display(),
                    files.ca.display()
                ))
            })?;
        let names = cert_names(chain[0].as_ref());
        let server = server_config(roots.clone(), chain.clone(), key.clone_key())?;
        let client = client_config(roots, Some((chain, key)), server_names)?;
        Ok(Material {
            server,
            client,
            names,
        })
    }
}

/// A node's TLS material, re-read on demand.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    server_names: Option<Arc<BTreeSet<String>>>,
    current: RwLock<Arc<Material>>,
    generation: AtomicU64,
}

impl ReloadableTls {
    /// Reads `files` (see [`Material::load`]).
    ///
    /// # Errors
    /// As [`Material::load`].
    pub fn load(
        files: TlsFiles,
        server_names: Option<BTreeSet<String>>,
    ) -> Result<ReloadableTls, TlsError> {
        let server_names = server_names.map(Arc::new);
        let material = Material::load(&files, server_names.clone())?;
        Ok(ReloadableTls {
            files,
            server_names,
            current: RwLock::new(Arc::new(material)),
            generation: AtomicU64::new(1),
        })
    }

    /// Re-reads the files. On success new connections (both ways) use the new material and
    /// the names of the new certificate are returned; on error the old material stays.
    ///
    /// # Errors
    /// As [`Material::load`].
    pub fn reload(&self) -> Result<Vec<String>, TlsError> {
        let material = Material::load(&self.files, self.server_names.clone())?;
        let names = material.names.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(names)
    }

    /// The material new connections use.
    pub fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many times the material was (successfully) read, starting at 1.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The files this reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Dials `host:port` of a URI over TCP and TLS, for tonic's
/// `Endpoint::connect_with_connector`: the client configuration is taken anew for every
/// connection, so a reload applies to the next connection.
#[derive(Clone)]
pub struct Connector {
    config: Arc<dyn Fn() -> Arc<ClientConfig> + Send + Sync>,
    timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Connector {
    /// A connector always using `config`.
    pub fn fixed(config: Arc<ClientConfig>, timeout: Duration) -> Self {
        Connector {
            config: Arc::new(move || config.clone()),
            timeout,
        }
    }

    /// A connector using the current client material of `tls`.
    pub fn reloadable(tls: Arc<ReloadableTls>, timeout: Duration) -> Self {
        Connector {
            config: Arc::new(move || tls.current().client.clone()),
            timeout,
        }
    }
}

/// The IO a [`Connector`] yields.
pub type ClientStream =
    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = ClientStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<ClientStream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = (self.config)();
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            // The name is sent as SNI only; certificates are checked by CA and names (see
            // the crate docs), not against it.
            let name = ServerName::try_from(host.clone())
                .or_else(|_| ServerName::try_from("pgw.invalid".to_string()))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let dial = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
            };
            match tokio::time::timeout(timeout, dial).await {
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TLS connection to {host}:{port} timed out after {timeout:?}"),
                )),
                Ok(Err(e)) => Err(std::io::Error::new(
                    e.kind(),
                    format!("TLS connection to {host}:{port} failed: {e}"),
                )),
                Ok(Ok(s)) => Ok(hyper_util::rt::TokioIo::new(s)),
            }
        })
    }
}
