//! `--web.config.file`: the Prometheus exporter-toolkit web configuration (the version the
//! reference Pushgateway 1.5.1 links, v0.8.2), plus pgw's own `pgw_authorization` section.
//!
//! The file has the upstream sections
//!
//! - `tls_server_config`: `cert_file`, `key_file`, `client_auth_type` (`NoClientCert`,
//!   `RequestClientCert`, `RequireAnyClientCert`, `VerifyClientCertIfGiven`,
//!   `RequireAndVerifyClientCert`), `client_ca_file`, `min_version`, `max_version`,
//!   `cipher_suites`, `curve_preferences`, `prefer_server_cipher_suites`;
//! - `http_server_config`: `http2`, `headers` (the five security headers upstream allows);
//! - `basic_auth_users`: user name → bcrypt hash;
//!
//! and pgw's own (the reference refuses a file that has it)
//!
//! - `pgw_authorization.users`: user name → `{scope: read}`, `{scope: push, jobs: REGEX}` or
//!   `{scope: admin}`.
//!
//! Parsing is strict, as upstream's `yaml.UnmarshalStrict`: an unknown field is an error
//! that names it. Relative paths are relative to the file's directory. Where rustls cannot
//! do what Go's `crypto/tls` does the file is either refused with a message saying so
//! (nothing the operator asked for could be served) or accepted with a warning (the
//! operator asked for something weaker than what is served): see `docs/security.md`.
//!
//! Upstream re-reads the file on every connection and request. pgw reads it at start and on
//! [`WebConfigHandle::reload`] (the binary calls it on SIGHUP); a file that does not load
//! keeps the previous configuration, is logged, and sets
//! `pgw_web_config_last_reload_successful` to 0.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Deserialize;

/// A web configuration file that cannot be used. `Display` is the message for the operator;
/// it names the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("web config file {path}: {msg}")]
pub struct WebConfigError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub msg: String,
}

/// The access a basic-auth user has (pgw's `pgw_authorization` section).
#[derive(Clone, Debug)]
pub enum Scope {
    /// `GET`, `HEAD` and `OPTIONS` only.
    Read,
    /// Read, plus `PUT`/`POST`/`DELETE` of groups whose job name matches the pattern (fully
    /// anchored); no wipe, no `/-/quit`.
    Push {
        /// The anchored pattern.
        jobs: Regex,
        /// The pattern as written, for messages.
        pattern: String,
    },
    /// Everything.
    Admin,
}

/// A loaded, validated web configuration.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// TLS, if `tls_server_config` has any of cert, key, client auth or client CA.
    pub tls: Option<Arc<ServerConfig>>,
    /// `http_server_config.http2` (default true; only meaningful with TLS, as upstream).
    pub http2: bool,
    /// `http_server_config.headers`, set on every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `basic_auth_users`: user → bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// `pgw_authorization.users`, if the section is present.
    pub scopes: Option<BTreeMap<String, Scope>>,
    /// Accepted settings that pgw serves differently from Go (logged at load).
    pub warnings: Vec<String>,
}

impl WebConfig {
    /// The configuration without a file: plain HTTP, no authentication.
    pub fn plain() -> WebConfig {
        WebConfig {
            http2: true,
            ..WebConfig::default()
        }
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, is not valid YAML, has an unknown field or a bad value, or
    /// names certificate, key or CA files that cannot be loaded.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let err = |msg: String| WebConfigError {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        build(file, dir).map_err(err)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tls_server_config: FileTls,
    #[serde(default)]
    http_server_config: FileHttp,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pgw_authorization: Option<FileAuthz>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileTls {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    client_auth_type: String,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAuthz {
    #[serde(default)]
    users: BTreeMap<String, FileScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScope {
    scope: String,
    #[serde(default)]
    jobs: Option<String>,
}

/// Upstream's `extraHTTPHeaders`: the headers that may be set, and their allowed values
/// (empty: any).
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn join_dir(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() || p.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn build(f: FileConfig, dir: &Path) -> Result<WebConfig, String> {
    let mut warnings = Vec::new();
    // Headers (upstream validateHeaderConfig, same messages).
    let mut headers = Vec::new();
    for (k, v) in &f.http_server_config.headers {
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| n == k) else {
            return Err(format!(
                "http_server_config.headers: HTTP header {k:?} can not be configured"
            ));
        };
        if !allowed.is_empty() && !allowed.contains(&v.as_str()) {
            return Err(format!(
                "http_server_config.headers: invalid value for {k}. Expected one of: {allowed:?}, but got: {v:?}"
            ));
        }
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("http_server_config.headers: invalid value for {k}: {v:?}"))?;
        headers.push((name, value));
    }
    // Users (upstream validateUsers: every hash must be a bcrypt hash).
    let users = f.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        if let Err(e) = hash.parse::<bcrypt::HashParts>() {
            return Err(format!(
                "basic_auth_users: the password of user {user:?} is not a bcrypt hash ({e}); \
                 make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
            ));
        }
    }
    let scopes = match f.pgw_authorization {
        None => None,
        Some(a) => Some(build_scopes(a, &users)?),
    };
    let http2 = f.http_server_config.http2.unwrap_or(true);
    let tls = build_tls(&f.tls_server_config, dir, http2, &mut warnings)?;
    Ok(WebConfig {
        tls,
        http2,
        headers,
        users,
        scopes,
        warnings,
    })
}

fn build_scopes(
    a: FileAuthz,
    users: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Scope>, String> {
    if users.is_empty() {
        return Err(
            "pgw_authorization: needs basic_auth_users (scopes are given to basic-auth users)"
                .into(),
        );
    }
    let mut out = BTreeMap::new();
    for (user, s) in a.users {
        if !users.contains_key(&user) {
            return Err(format!(
                "pgw_authorization.users: user {user:?} is not in basic_auth_users"
            ));
        }
        let scope = match (s.scope.as_str(), s.jobs) {
            ("read", None) => Scope::Read,
            ("admin", None) => Scope::Admin,
            ("push", Some(pattern)) => {
                let jobs = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        format!(
                            "pgw_authorization.users.{user}.jobs: invalid regex {pattern:?}: {e}"
                        )
                    })?;
                Scope::Push { jobs, pattern }
            }
            ("push", None) => {
                return Err(format!(
                    "pgw_authorization.users.{user}: scope push needs `jobs: REGEX` (the job names the user may push to)"
                ));
            }
            ("read" | "admin", Some(_)) => {
                return Err(format!(
                    "pgw_authorization.users.{user}.jobs: only scope push takes jobs"
                ));
            }
            (other, _) => {
                return Err(format!(
                    "pgw_authorization.users.{user}.scope: unknown scope {other:?}, expected read, push or admin"
                ));
            }
        };
        out.insert(user, scope);
    }
    Ok(out)
}

/// Go's `tls.CipherSuites()` names (the ones the toolkit accepts), and the rustls suite for
/// each where rustls (ring) has one. TLS 1.3 suites are accepted and, as in Go, not
/// configurable.
const GO_CIPHERS: &[(&str, Option<rustls::CipherSuite>)] = {
    use rustls::CipherSuite as C;
    &[
        ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
        ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
        ("TLS_AES_128_GCM_SHA256", Some(C::TLS13_AES_128_GCM_SHA256)),
        ("TLS_AES_256_GCM_SHA384", Some(C::TLS13_AES_256_GCM_SHA384)),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            Some(C::TLS13_CHACHA20_POLY1305_SHA256),
        ),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Some(C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Some(C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Some(C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            Some(C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            Some(C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            Some(C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
    ]
};

/// TLS versions by their toolkit names, as (Go name, 10 + minor version).
fn tls_version(field: &str, v: &Option<String>, default: u8) -> Result<u8, String> {
    match v.as_deref() {
        None => Ok(default),
        Some("TLS10") => Ok(10),
        Some("TLS11") => Ok(11),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => Err(format!(
            "tls_server_config.{field}: unknown TLS version: {other}"
        )),
    }
}

fn build_tls(
    t: &FileTls,
    dir: &Path,
    http2: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<ServerConfig>>, String> {
    if t.cert_file.is_empty()
        && t.key_file.is_empty()
        && t.client_auth_type.is_empty()
        && t.client_ca_file.is_empty()
    {
        // Upstream: no TLS config, plain HTTP (basic auth may still apply).
        return Ok(None);
    }
    if t.cert_file.is_empty() {
        return Err("tls_server_config: missing cert_file".into());
    }
    if t.key_file.is_empty() {
        return Err("tls_server_config: missing key_file".into());
    }
    let cert_path = join_dir(dir, &t.cert_file);
    let key_path = join_dir(dir, &t.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "tls_server_config.cert_file: failed to load X509KeyPair: cannot read certificates from {}: {e}",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.cert_file: failed to load X509KeyPair: no PEM certificate in {}",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        format!(
            "tls_server_config.key_file: failed to load X509KeyPair: cannot read a private key from {}: {e}",
            key_path.display()
        )
    })?;

    let mut min = tls_version("min_version", &t.min_version, 12)?;
    let max = tls_version("max_version", &t.max_version, 13)?;
    if max < 12 {
        return Err(format!(
            "tls_server_config.max_version: TLS 1.{} is not supported by pgw (rustls speaks TLS 1.2 and 1.3 only), so no client could connect; set max_version to TLS12 or TLS13",
            max - 10
        ));
    }
    if min < 12 {
        warnings.push(format!(
            "tls_server_config.min_version TLS1{}: pgw (rustls) does not implement TLS 1.0 or 1.1; clients need TLS 1.2 or later",
            min - 10
        ));
        min = 12;
    }
    if min > max {
        return Err(format!(
            "tls_server_config: min_version TLS1{} is above max_version TLS1{}",
            min - 10,
            max - 10
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (12u8, &rustls::version::TLS12),
        (13u8, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect();

    let mut provider = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let mut tls12 = Vec::new();
        for name in &t.cipher_suites {
            let Some((_, suite)) = GO_CIPHERS.iter().find(|(n, _)| n == name) else {
                return Err(format!(
                    "tls_server_config.cipher_suites: unknown cipher: {name}"
                ));
            };
            match suite {
                None => warnings.push(format!(
                    "tls_server_config.cipher_suites: {name} is not implemented by pgw (rustls); it is left out"
                )),
                Some(s) => {
                    if let Some(found) = provider
                        .cipher_suites
                        .iter()
                        .find(|c| c.suite() == *s && c.tls13().is_none())
                    {
                        tls12.push(*found);
                    }
                }
            }
        }
        if tls12.is_empty() && max == 12 {
            return Err(
                "tls_server_config.cipher_suites: none of the listed TLS 1.2 cipher suites is implemented by pgw (rustls: the ECDHE AES-GCM and ChaCha20-Poly1305 suites), so no client could connect".into(),
            );
        }
        if tls12.is_empty() && min == 12 {
            warnings.push(
                "tls_server_config.cipher_suites: no listed TLS 1.2 suite is implemented by pgw; only TLS 1.3 clients can connect".into(),
            );
        }
        let tls13: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|c| c.tls13().is_some())
            .copied()
            .collect();
        provider.cipher_suites = tls13.into_iter().chain(tls12).collect();
    }
    if !t.curve_preferences.is_empty() {
        use rustls::NamedGroup as G;
        let mut groups = Vec::new();
        for name in &t.curve_preferences {
            let g = match name.as_str() {
                "CurveP256" => Some(G::secp256r1),
                "CurveP384" => Some(G::secp384r1),
                "X25519" => Some(G::X25519),
                "CurveP521" => None,
                other => {
                    return Err(format!(
                        "tls_server_config.curve_preferences: unknown curve: {other}"
                    ));
                }
            };
            match g.and_then(|g| provider.kx_groups.iter().find(|k| k.name() == g)) {
                Some(k) => groups.push(*k),
                None => warnings.push(format!(
                    "tls_server_config.curve_preferences: {name} is not implemented by pgw (rustls); it is left out"
                )),
            }
        }
        if groups.is_empty() {
            return Err(
                "tls_server_config.curve_preferences: none of the listed curves is implemented by pgw (rustls: X25519, CurveP256, CurveP384)".into(),
            );
        }
        provider.kx_groups = groups;
    }
    let provider = Arc::new(provider);

    let roots = if t.client_ca_file.is_empty() {
        None
    } else {
        let ca_path = join_dir(dir, &t.client_ca_file);
        let mut store = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&ca_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                format!(
                    "tls_server_config.client_ca_file: cannot read {}: {e}",
                    ca_path.display()
                )
            })?;
        let (added, _) = store.add_parsable_certificates(cas);
        if added == 0 {
            return Err(format!(
                "tls_server_config.client_ca_file: no usable CA certificate in {}",
                ca_path.display()
            ));
        }
        Some(Arc::new(store))
    };
    let algs = provider.signature_verification_algorithms;
    let verify = |roots: &Option<Arc<RootCertStore>>, optional: bool| {
        let Some(roots) = roots.clone() else {
            return Err(format!(
                "tls_server_config.client_auth_type {}: needs client_ca_file in pgw (Go would verify against the system's CAs; name the CA that signs your clients' certificates)",
                t.client_auth_type
            ));
        };
        let mut b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        if optional {
            b = b.allow_unauthenticated();
        }
        b.build()
            .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))
            .map(|v| v as Arc<dyn ClientCertVerifier>)
    };
    let any = |mandatory: bool| -> Arc<dyn ClientCertVerifier> {
        let hints = roots.as_ref().map(|r| r.subjects()).unwrap_or_default();
        Arc::new(AnyClientCert {
            mandatory,
            algs,
            hints,
        })
    };
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match t.client_auth_type.as_str() {
        "" | "NoClientCert" => None,
        "RequestClientCert" => Some(any(false)),
        "RequireAnyClientCert" | "RequireClientCert" => Some(any(true)),
        "VerifyClientCertIfGiven" => Some(verify(&roots, true)?),
        "RequireAndVerifyClientCert" => Some(verify(&roots, false)?),
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: Invalid ClientAuth: {other} (expected NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
            ));
        }
    };
    if roots.is_some() && verifier.is_none() {
        return Err(
            "tls_server_config: Client CA's have been configured without a Client Auth Policy (set client_auth_type)".into(),
        );
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        format!("tls_server_config: failed to load X509KeyPair: the key does not match the certificate or is not supported: {e}")
    })?;
    cfg.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Some(Arc::new(cfg)))
}

/// `RequestClientCert` / `RequireAnyClientCert`: a client certificate is asked for (and with
/// the second, required) but not verified against any CA, as Go does. The handshake still
/// proves the client holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Who sent a request, as far as the web configuration can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Principal {
    /// No `basic_auth_users`: everybody may do everything (as upstream).
    Anonymous,
    /// An authenticated basic-auth user.
    User(String),
}

/// A request the configuration refuses.
pub(crate) enum Denied {
    /// 401 with `WWW-Authenticate: Basic`.
    Unauthorized,
}

/// Bound of the authentication cache (entries are 32-byte digests).
const AUTH_CACHE_MAX: usize = 4096;

/// The bcrypt hash upstream compares unknown users against (of "fakepassword"), so that the
/// answer takes as long as for a known user.
const FAKE_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

struct WebState {
    path: Option<PathBuf>,
    current: RwLock<Arc<WebConfig>>,
    /// sha256(user, hash, password) → outcome, as upstream caches bcrypt results (bcrypt
    /// costs ~50 ms a check at cost 10).
    cache: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt comparison at a time, as upstream (it is CPU-bound).
    bcrypt_gate: tokio::sync::Semaphore,
    last_reload_ok: AtomicBool,
}

/// The web configuration in force, shared by the server and whoever reloads it. Cheap to
/// clone.
#[derive(Clone)]
pub struct WebConfigHandle(Arc<WebState>);

impl std::fmt::Debug for WebConfigHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfigHandle")
            .field("path", &self.0.path)
            .finish()
    }
}

impl WebConfigHandle {
    /// Loads `path` (`None`: plain HTTP without authentication) and logs what it enables.
    ///
    /// # Errors
    /// The file does not load ([`WebConfig::load`]); the node must not start then.
    pub fn load(path: Option<&Path>) -> Result<WebConfigHandle, WebConfigError> {
        let cfg = match path {
            None => WebConfig::plain(),
            Some(p) => WebConfig::load(p)?,
        };
        log_config(path, &cfg);
        Ok(WebConfigHandle(Arc::new(WebState {
            path: path.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(cfg)),
            cache: Mutex::new(HashMap::new()),
            bcrypt_gate: tokio::sync::Semaphore::new(1),
            last_reload_ok: AtomicBool::new(true),
        })))
    }

    /// Re-reads the file given at start (the binary calls this on SIGHUP). New connections
    /// get the new TLS settings; every request from now on is checked against the new users
    /// and scopes. On error the previous configuration stays in force, the error is logged
    /// and returned, and `pgw_web_config_last_reload_successful` is 0 until a reload
    /// succeeds. Without `--web.config.file` this does nothing.
    ///
    /// # Errors
    /// The new file does not load.
    pub fn reload(&self) -> Result<(), WebConfigError> {
        let Some(path) = &self.0.path else {
            return Ok(());
        };
        match WebConfig::load(path) {
            Ok(cfg) => {
                log_config(Some(path), &cfg);
                if let Ok(mut cur) = self.0.current.write() {
                    *cur = Arc::new(cfg);
                }
                if let Ok(mut c) = self.0.cache.lock() {
                    c.clear();
                }
                self.0.last_reload_ok.store(true, Ordering::Relaxed);
                tracing::info!(file = %path.display(), "web config file reloaded");
                Ok(())
            }
            Err(e) => {
                self.0.last_reload_ok.store(false, Ordering::Relaxed);
                tracing::error!(err = %e, "web config file not reloaded; the previous configuration stays in force (fix the file and send SIGHUP again)");
                Err(e)
            }
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<WebConfig> {
        match self.0.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether the last reload succeeded (true before any).
    pub fn last_reload_ok(&self) -> bool {
        self.0.last_reload_ok.load(Ordering::Relaxed)
    }

    /// Authenticates a request against `cfg` (basic auth), as upstream's `webHandler`.
    pub(crate) async fn authenticate(
        &self,
        cfg: &WebConfig,
        headers: &HeaderMap,
    ) -> Result<Principal, Denied> {
        if cfg.users.is_empty() {
            return Ok(Principal::Anonymous);
        }
        let Some((user, pass)) = basic_auth(headers) else {
            return Err(Denied::Unauthorized);
        };
        let (hash, known) = match cfg.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (FAKE_HASH.to_string(), false),
        };
        let key = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [user.as_bytes(), hash.as_bytes(), pass.as_bytes()] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
            let mut k = [0u8; 32];
            k.copy_from_slice(ctx.finish().as_ref());
            k
        };
        let cached = self.0.cache.lock().ok().and_then(|c| c.get(&key).copied());
        let ok = match cached {
            Some(ok) => ok,
            None => {
                let ok = {
                    let _gate = self.0.bcrypt_gate.acquire().await;
                    tokio::task::spawn_blocking(move || {
                        bcrypt::verify(pass.as_bytes(), &hash).unwrap_or(false)
                    })
                    .await
                    .unwrap_or(false)
                };
                let ok = ok && known;
                if let Ok(mut c) = self.0.cache.lock() {
                    if c.len() >= AUTH_CACHE_MAX {
                        c.clear();
                    }
                    c.insert(key, ok);
                }
                ok
            }
        };
        if ok {
            Ok(Principal::User(user))
        } else {
            Err(Denied::Unauthorized)
        }
    }
}

/// Checks `principal`'s scope for `method` on a request; `push_job` is the job name when the
/// request is a push or delete of a group. `Ok` when allowed.
pub(crate) fn authorize(
    cfg: &WebConfig,
    principal: &Principal,
    method: &Method,
    push_job: Option<&str>,
) -> Result<(), String> {
    let (Some(scopes), Principal::User(user)) = (&cfg.scopes, principal) else {
        return Ok(());
    };
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match scopes.get(user) {
        None => Err(format!(
            "user {user:?} has no scope in the web config file's pgw_authorization section"
        )),
        Some(Scope::Admin) => Ok(()),
        Some(_) if read => Ok(()),
        Some(Scope::Read) => Err(format!(
            "user {user:?} has scope read: only GET requests are allowed"
        )),
        Some(Scope::Push { jobs, pattern }) => match push_job {
            Some(job) if jobs.is_match(job) => Ok(()),
            Some(job) => Err(format!(
                "user {user:?} may push only to jobs matching {pattern:?}, not {job:?}"
            )),
            None => Err(format!(
                "user {user:?} has scope push: only pushes and deletes of groups whose job matches {pattern:?} are allowed"
            )),
        },
    }
}

/// Go's `Request.BasicAuth`: `Basic ` (any case), standard base64, split at the first `:`.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("Basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn log_config(path: Option<&Path>, cfg: &WebConfig) {
    let Some(path) = path else {
        return;
    };
    for w in &cfg.warnings {
        tracing::warn!(file = %path.display(), "{w}");
    }
    tracing::info!(
        file = %path.display(),
        tls = cfg.tls.is_some(),
        http2 = cfg.tls.is_some() && cfg.http2,
        basic_auth_users = cfg.users.len(),
        scoped_users = cfg.scopes.as_ref().map_or(0, BTreeMap::len),
        "web config file loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("web.yml");
        std::fs::write(&p, text).expect("write");
        WebConfig::load(&p).map_err(|e| e.to_string())
    }

    const HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

    #[test]
    fn strict_fields_and_messages() {
        let e = load("tls_server_config:\n  cert_fil: x\n").unwrap_err();
        assert!(e.contains("cert_fil"), "{e}");
        let e = load("basic_auth_user:\n  a: b\n").unwrap_err();
        assert!(e.contains("basic_auth_user"), "{e}");
        let e = load("basic_auth_users:\n  a: notbcrypt\n").unwrap_err();
        assert!(e.contains("basic_auth_users") && e.contains("\"a\""), "{e}");
        let e = load("tls_server_config:\n  key_file: k\n").unwrap_err();
        assert!(e.contains("missing cert_file"), "{e}");
        let e = load("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").unwrap_err();
        assert!(e.contains("X-Frame-Options"), "{e}");
        let e = load("http_server_config:\n  headers:\n    Foo: bar\n").unwrap_err();
        assert!(e.contains("can not be configured"), "{e}");
        assert!(load("").is_ok());
        let c = load(&format!("basic_auth_users:\n  alice: {HASH}\n")).expect("valid");
        assert!(c.tls.is_none() && c.users.len() == 1);
    }

    #[test]
    fn scopes() {
        let base = format!("basic_auth_users:\n  a: {HASH}\n  b: {HASH}\n  c: {HASH}\n");
        let c = load(&format!(
            "{base}pgw_authorization:\n  users:\n    a: {{scope: admin}}\n    b: {{scope: push, jobs: 'team_b_.*'}}\n    c: {{scope: read}}\n"
        ))
        .expect("valid");
        let u = |n: &str| Principal::User(n.into());
        assert!(authorize(&c, &u("a"), &Method::PUT, None).is_ok());
        assert!(authorize(&c, &u("b"), &Method::PUT, Some("team_b_x")).is_ok());
        assert!(authorize(&c, &u("b"), &Method::PUT, Some("xteam_b_x")).is_err());
        assert!(authorize(&c, &u("b"), &Method::PUT, None).is_err());
        assert!(authorize(&c, &u("b"), &Method::GET, None).is_ok());
        assert!(authorize(&c, &u("c"), &Method::DELETE, Some("any")).is_err());
        assert!(authorize(&c, &u("c"), &Method::GET, None).is_ok());
        let e = load(&format!(
            "{base}pgw_authorization:\n  users:\n    z: {{scope: admin}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("\"z\""), "{e}");
        let e = load(&format!(
            "{base}pgw_authorization:\n  users:\n    a: {{scope: push}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("jobs"), "{e}");
    }

    #[test]
    fn a_bad_reload_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("web.yml");
        std::fs::write(&p, format!("basic_auth_users:\n  a: {HASH}\n")).expect("write");
        let h = WebConfigHandle::load(Some(&p)).expect("loads");
        assert!(h.last_reload_ok());
        std::fs::write(&p, "basic_auth_users:\n  a: plain\n").expect("write");
        assert!(h.reload().is_err());
        assert!(!h.last_reload_ok());
        assert!(h.current().users.contains_key("a"), "old users kept");
        std::fs::write(&p, format!("basic_auth_users:\n  b: {HASH}\n")).expect("write");
        h.reload().expect("reloads");
        assert!(h.last_reload_ok());
        assert!(h.current().users.contains_key("b") && !h.current().users.contains_key("a"));
    }

    #[test]
    fn basic_auth_header() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("basic YTpiOmM="),
        );
        assert_eq!(basic_auth(&h), Some(("a".into(), "b:c".into())));
    }
}
