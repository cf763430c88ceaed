//! Talking to the admin gRPC service: one channel per address, endpoints tried in turn, and
//! calls that must run on the leader follow the `x-pgw-leader` hint of a non-leader.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgw_proto::v1::admin_service_client::AdminServiceClient;
use pgw_proto::v1::{StatusReply, StatusRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use crate::error::{CtlError, Result};

/// Metadata naming the leader's gRPC address on a FAILED_PRECONDITION from a non-leader.
const LEADER_METADATA: &str = "x-pgw-leader";
/// Metadata set on a FAILED_PRECONDITION from a node that knows no leader.
const NO_LEADER_METADATA: &str = "x-pgw-no-leader";
/// Largest message accepted from a node (backup chunks are 1 MiB).
const MAX_MESSAGE: usize = 64 << 20;

/// What to do when a leader call is answered UNAVAILABLE or times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The call is idempotent (it names a target state): try again until the deadline.
    Idempotent,
    /// The call must not be repeated blindly: report the failure.
    Once,
}

/// A client of the cluster's admin service.
pub struct Client {
    endpoints: Vec<String>,
    /// Bound of one RPC, and of the search for a leader.
    pub timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    /// TLS to the cluster port (`--cacert`); `None`: plaintext.
    tls: Option<Arc<pgw_tls::rustls::ClientConfig>>,
    /// `Status` answers that refused the credentials (PERMISSION_DENIED, UNAUTHENTICATED).
    refused: Mutex<Vec<String>>,
}

/// A short, single-line form of a gRPC error, with the cause of a transport failure (e.g. a
/// TLS alert) when there is one.
pub fn describe(s: &Status) -> String {
    let msg = s.message().trim();
    let mut out = if msg.is_empty() {
        format!("{:?}", s.code())
    } else {
        msg.to_string()
    };
    if let Some(src) = std::error::Error::source(s) {
        let cause = error_chain(src);
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// Whether the node refused the caller's credentials (the cluster port's mutual TLS).
fn refused(s: &Status) -> bool {
    matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)
}

impl Client {
    /// A client trying `endpoints` (gRPC `host:port`) in turn.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        Client {
            endpoints,
            timeout,
            channels: Mutex::new(HashMap::new()),
            tls: None,
            refused: Mutex::new(Vec::new()),
        }
    }

    /// The same client speaking TLS with `tls` (plaintext with `None`).
    pub fn with_tls(mut self, tls: Option<Arc<pgw_tls::rustls::ClientConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// The TLS configuration, if any.
    pub fn tls(&self) -> Option<Arc<pgw_tls::rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// A connected channel to `addr`, reused across calls.
    pub async fn channel(&self, addr: &str) -> std::result::Result<Channel, String> {
        if let Some(c) = self.lock().get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr:?} is not a host:port address: {e}"))?
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true);
        let connect = async {
            match &self.tls {
                None => endpoint.connect().await,
                Some(tls) => {
                    let connector = pgw_tls::Connector::fixed(
                        tls.clone(),
                        self.timeout.min(Duration::from_secs(5)),
                    );
                    endpoint.connect_with_connector(connector).await
                }
            }
        };
        let channel = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => return Err(format!("cannot connect to {addr}: timed out")),
            Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {}", error_chain(&e))),
            Ok(Ok(c)) => c,
        };
        self.lock().insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        match self.channels.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// An admin client for `addr`.
    pub async fn admin(
        &self,
        addr: &str,
    ) -> std::result::Result<AdminServiceClient<Channel>, String> {
        Ok(AdminServiceClient::new(self.channel(addr).await?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// `Status` of the node at `addr`, within the timeout.
    pub async fn status_of(&self, addr: &str) -> std::result::Result<StatusReply, String> {
        let mut client = self.admin(addr).await?;
        match tokio::time::timeout(self.timeout, client.status(StatusRequest {})).await {
            Err(_) => Err(format!("{addr}: no answer within {:?}", self.timeout)),
            Ok(Err(s)) => {
                self.forget(addr);
                if refused(&s) {
                    self.lock_refused()
                        .push(format!("{addr}: {}", describe(&s)));
                }
                Err(format!("{addr}: {}", self.hint(describe(&s))))
            }
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Adds a TLS hint to a transport error of a plaintext client (the node may require TLS).
    fn hint(&self, msg: String) -> String {
        let transport = msg.contains("h2 protocol error")
            || msg.contains("transport error")
            || msg.contains("connection closed");
        match &self.tls {
            None if transport => format!(
                "{msg} (if the cluster port uses TLS, pass --cacert, --cert and --key, or set \
                 PGWCTL_CACERT, PGWCTL_CERT and PGWCTL_KEY)"
            ),
            Some(tls) if transport && !tls.client_auth_cert_resolver.has_certs() => {
                format!("{msg} (the node may require a client certificate: pass --cert and --key)")
            }
            _ => msg,
        }
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        match self.refused.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drops the cached channel to `addr` (after a transport failure).
    fn forget(&self, addr: &str) {
        self.lock().remove(addr);
    }

    /// The first endpoint that answers `Status` and belongs to an initialised cluster, with
    /// its answer; else the first that answers at all (a node waiting to be added, or still
    /// bootstrapping). Exit code 3 when none answers.
    pub async fn first_status(&self) -> Result<(String, StatusReply)> {
        let mut errors = Vec::new();
        let mut uninitialised = None;
        for addr in &self.endpoints {
            match self.status_of(addr).await {
                Ok(s) if !s.members.is_empty() => return Ok((addr.clone(), s)),
                Ok(s) => {
                    uninitialised.get_or_insert((addr.clone(), s));
                }
                Err(e) => errors.push(e),
            }
        }
        let refused = self.lock_refused().clone();
        match uninitialised {
            Some(found) => Ok(found),
            // Reached, but the credentials were refused: not an unreachable cluster.
            None if !refused.is_empty() => Err(CtlError::failed(format!(
                "the cluster refused pgwctl's credentials ({}): pass an admin certificate with \
                 --cert and --key (a name in the nodes' --cluster.tls.admin-names)",
                refused.join("; ")
            ))),
            None => Err(unreachable(&self.endpoints, &errors)),
        }
    }

    /// Runs `call` on the leader: tries the endpoints in turn, follows the leader hint of a
    /// non-leader, and waits for an election (up to the timeout) when no leader is known.
    /// `what` names the operation in errors.
    pub async fn on_leader<T, F, Fut>(&self, what: &str, retry: Retry, mut call: F) -> Result<T>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        self.on_leader_within(what, retry, self.timeout, &mut call)
            .await
    }

    /// Like [`Client::on_leader`], with `rpc_timeout` bounding each attempt (long operations
    /// such as a restore of a large store).
    pub async fn on_leader_within<T, F, Fut>(
        &self,
        what: &str,
        retry: Retry,
        rpc_timeout: Duration,
        call: &mut F,
    ) -> Result<T>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout.max(Duration::from_secs(1));
        let mut hint: Option<String> = None;
        let mut errors: Vec<String> = Vec::new();
        let mut answered = false;
        let mut last_answer = String::new();
        loop {
            let mut candidates: Vec<String> = hint.take().into_iter().collect();
            candidates.extend(self.endpoints.iter().cloned());
            for addr in candidates {
                let client = match self.admin(&addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                match tokio::time::timeout(rpc_timeout, call(client)).await {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Err(_) => {
                        answered = true;
                        last_answer = format!("{addr}: no answer within {rpc_timeout:?}");
                        if retry == Retry::Once {
                            return Err(CtlError::failed(format!(
                                "{what}: node at {addr} did not answer within {rpc_timeout:?}; \
                                 the operation may still complete: check with `pgwctl status`"
                            )));
                        }
                    }
                    Ok(Err(s)) => {
                        let leader = s
                            .metadata()
                            .get(LEADER_METADATA)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match s.code() {
                            Code::FailedPrecondition if leader.is_some() => {
                                answered = true;
                                last_answer = format!("{addr}: {}", describe(&s));
                                if leader.as_deref() != Some(addr.as_str()) {
                                    hint = leader;
                                    break;
                                }
                            }
                            Code::FailedPrecondition
                                if s.metadata().get(NO_LEADER_METADATA).is_some() =>
                            {
                                answered = true;
                                last_answer = format!("{addr}: {}", describe(&s));
                            }
                            Code::Unavailable if is_transport(&s) => {
                                self.forget(&addr);
                                errors.push(format!("{addr}: {}", describe(&s)));
                            }
                            Code::Unavailable | Code::DeadlineExceeded
                                if retry == Retry::Idempotent =>
                            {
                                answered = true;
                                last_answer = format!("{addr}: {}", describe(&s));
                            }
                            _ => {
                                return Err(CtlError::failed(format!(
                                    "{what} failed on the node at {addr}: {}",
                                    describe(&s)
                                )));
                            }
                        }
                    }
                }
            }
            if hint.is_some() {
                continue;
            }
            // No endpoint answered at all: the cluster is unreachable, waiting will not help.
            if !answered {
                return Err(unreachable(&self.endpoints, &errors));
            }
            if Instant::now() >= deadline {
                return Err(CtlError::failed(format!(
                    "{what}: no leader took the request within {:?} (last answer: {last_answer}); \
                     the cluster may be electing a leader or have lost its quorum: check \
                     `pgwctl status`, and see docs/operations.md (recover from the loss of quorum)",
                    self.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether a gRPC error comes from the transport (no connection) rather than the node.
fn is_transport(s: &Status) -> bool {
    let m = s.message();
    m.contains("transport error")
        || m.contains("tcp connect")
        || m.contains("Connection refused")
        || m.contains("connection error")
        || m.contains("broken pipe")
}

/// The error chain of `e` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// The exit-code-3 error when no endpoint answered.
pub fn unreachable(endpoints: &[String], errors: &[String]) -> CtlError {
    let mut seen = Vec::new();
    for e in errors {
        if !seen.contains(e) {
            seen.push(e.clone());
        }
    }
    CtlError::unreachable(format!(
        "cannot reach the cluster: no endpoint answered ({}). Check that the nodes run and that \
         --endpoint (or PGWCTL_ENDPOINTS) names their gRPC address (--cluster.listen-address, \
         default :9095), not their HTTP port. Tried: {}",
        seen.join("; "),
        endpoints.join(", ")
    ))
}
