//! Transport security options shared by pgwctl's commands, as etcdctl and curl name them:
//! `--cacert`, `--cert`, `--key` and `--user` (environment `PGWCTL_CACERT`, `PGWCTL_CERT`,
//! `PGWCTL_KEY`, `PGWCTL_USER`).
//!
//! For the gRPC commands ([`TlsArgs::grpc_config`]): with `--cacert` pgwctl speaks TLS to the
//! cluster port and accepts a node certificate signed by that CA (by CA, not by host name,
//! as the nodes do among themselves: docs/security.md); `--cert`/`--key` is the client
//! certificate it presents, which the node checks against `--cluster.tls.admin-names`.
//! Without `--cacert` pgwctl speaks plaintext.
//!
//! For the HTTP commands (`groups`, `delete`, `wipe`; [`TlsArgs::apply_http`]) against a node
//! served with a `--web.config.file`: `--cacert` is the CA that signed the node's certificate
//! (and makes a bare `host:port` mean `https://`), `--cert`/`--key` a client certificate for
//! `client_auth_type: RequireAndVerifyClientCert`, `--user` basic-auth credentials.

use std::path::PathBuf;
use std::sync::Arc;

use pgw_tls::rustls::ClientConfig;

use crate::error::{CtlError, Result};

/// `--cacert`, `--cert`, `--key`, `--user` (global flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the nodes' certificates: speak TLS to the cluster
    /// port and, for the HTTP commands, reach a bare HOST:PORT over https, trusting that CA.
    #[arg(long, global = true, env = "PGWCTL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM) to present: an admin certificate for the admin commands, or
    /// the one an HTTP port that requires client certificates accepts.
    #[arg(long, global = true, env = "PGWCTL_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "PGWCTL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Basic-auth credentials for the HTTP port, as USER:PASSWORD (prefer the environment
    /// variable: a command line is visible to other users).
    #[arg(
        long,
        global = true,
        env = "PGWCTL_USER",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub user: Option<String>,
}

impl TlsArgs {
    /// The TLS client configuration for the cluster port, or `None` for plaintext.
    ///
    /// # Errors
    /// A usage error (exit 2) for `--cert` without `--key` (or the reverse), `--cert`
    /// without `--cacert`, and unreadable or mismatched files (naming the file).
    pub fn grpc_config(&self) -> Result<Option<Arc<ClientConfig>>> {
        let identity = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(CtlError::usage(
                    "--cert needs --key (the private key of the client certificate)",
                ));
            }
            (None, Some(_)) => return Err(CtlError::usage("--key needs --cert")),
            (Some(c), Some(k)) => Some((c, k)),
        };
        let Some(ca) = &self.cacert else {
            if identity.is_some() {
                return Err(CtlError::usage(
                    "--cert and --key need --cacert (the CA that signed the nodes' certificates)",
                ));
            }
            return Ok(None);
        };
        let usage = |e: pgw_tls::TlsError| CtlError::usage(e.to_string());
        let roots = pgw_tls::load_roots(ca, "--cacert").map_err(usage)?;
        let identity = match identity {
            None => None,
            Some((c, k)) => Some((
                pgw_tls::load_certs(c, "--cert").map_err(usage)?,
                pgw_tls::load_key(k, "--key").map_err(usage)?,
            )),
        };
        pgw_tls::client_config(roots, identity, None)
            .map(Some)
            .map_err(usage)
    }

    /// Whether a bare `host:port` should be reached with `https://`.
    pub fn https(&self) -> bool {
        self.cacert.is_some()
    }

    /// `--user` split into user and password.
    ///
    /// # Errors
    /// No `:` in the value.
    pub fn basic_auth(&self) -> Result<Option<(String, String)>> {
        match &self.user {
            None => Ok(None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => Ok(Some((user.to_string(), pass.to_string()))),
                None => Err(CtlError::usage(
                    "--user must be USER:PASSWORD (or set PGWCTL_USER)",
                )),
            },
        }
    }

    /// Applies the CA and client certificate to an HTTP client builder.
    ///
    /// # Errors
    /// A file that cannot be read or is not PEM.
    pub fn apply_http(&self, mut b: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| {
                CtlError::usage(format!("cannot read the {what} {}: {e}", p.display()))
            })
        };
        if let Some(ca) = &self.cacert {
            let pem = read(ca, "CA certificate (--cacert)")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CtlError::usage(format!(
                    "--cacert {}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(CtlError::usage(format!(
                    "--cacert {}: no PEM certificate in it",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let mut pem = read(cert, "client certificate (--cert)")?;
            pem.push(b'\n');
            pem.extend(read(key, "client key (--key)")?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                CtlError::usage(format!(
                    "--cert {} / --key {}: not a PEM certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            b = b.identity(id);
        }
        Ok(b)
    }
}
