//! Transport security options shared by pgwctl's commands: `--cacert`, `--cert`, `--key`
//! and `--user` (with the environment variables `PGWCTL_CACERT`, `PGWCTL_CERT`,
//! `PGWCTL_KEY`, `PGWCTL_USER`), named as curl and etcdctl name them.
//!
//! The HTTP commands (`groups`, `delete`, `wipe`) use them for a node's HTTP port served with
//! a `--web.config.file`: `--cacert` is the CA that signed the node's certificate (and makes
//! a bare `host:port` mean `https://`), `--cert`/`--key` a client certificate for
//! `client_auth_type: RequireAndVerifyClientCert`, `--user` basic-auth credentials.

use std::path::PathBuf;

use crate::error::{CtlError, Result};

/// The TLS and credential options (global flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the server's certificate; with it a bare HOST:PORT
    /// is reached over TLS.
    #[arg(long, global = true, env = "PGWCTL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) to present, for servers that require one (with --key).
    #[arg(
        long,
        global = true,
        env = "PGWCTL_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        env = "PGWCTL_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
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
