//! TLS options of pgwctl, as etcdctl has them: `--cacert`, `--cert`, `--key` (environment
//! `PGWCTL_CACERT`, `PGWCTL_CERT`, `PGWCTL_KEY`).
//!
//! For the gRPC commands ([`TlsArgs::grpc_config`]): with `--cacert` pgwctl speaks TLS to the
//! cluster port and accepts a node certificate signed by that CA (by CA, not by host name,
//! as the nodes do among themselves: docs/security.md); `--cert`/`--key` is the client
//! certificate it presents, which the node checks against `--cluster.tls.admin-names`.
//! Without `--cacert` pgwctl speaks plaintext.

use std::path::PathBuf;
use std::sync::Arc;

use pgw_tls::rustls::ClientConfig;

use crate::error::{CtlError, Result};

/// `--cacert`, `--cert`, `--key`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the nodes' certificates: speak TLS to the cluster
    /// port and trust that CA.
    #[arg(long, global = true, env = "PGWCTL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM) to present: an admin certificate for the admin commands.
    #[arg(long, global = true, env = "PGWCTL_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "PGWCTL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
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
}
