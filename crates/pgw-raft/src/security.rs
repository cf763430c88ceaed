//! Mutual TLS and roles on the cluster port (`--cluster.tls.*`).
//!
//! - [`ClusterSecurity`] holds the node's TLS material (re-read by
//!   [`ClusterSecurity::reload`]), the role lists and the counters of refused requests.
//! - [`tls_incoming`] turns a TCP listener into a stream of TLS connections that presented a
//!   client certificate signed by the cluster CA; anything else (plaintext HTTP/2, no
//!   certificate, a certificate of another CA) fails the handshake, is counted and logged, and
//!   never reaches a service. Each connection carries a [`PeerInfo`] (address and certificate
//!   names) that tonic puts into every request's extensions.
//! - [`AuthorizeLayer`] checks the caller's role per method before any service runs:
//!   `RaftService` (Raft RPCs, snapshots, forwarded writes, read index, `PeerStatus`) needs a
//!   peer certificate; `AdminService` needs an admin certificate, except `AddLearner`, which a
//!   peer may call too (a node started with `--cluster.join` asks to be added with its own
//!   peer certificate; a peer can already vote and append entries, so this grants it nothing
//!   new). A refused request gets PERMISSION_DENIED (UNAUTHENTICATED without a certificate),
//!   is logged with the caller's names and address, is counted, and changes nothing.
//!
//! Without TLS (`security: None`) the layer lets everything through: the port then has no
//! authentication, which pgw-server allows on loopback or with `--cluster.insecure` only.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pgw_tls::ReloadableTls;
pub use pgw_tls::TlsFiles;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

/// The `--cluster.tls.*` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecuritySettings {
    /// Certificate, key and CA files.
    pub files: TlsFiles,
    /// `--cluster.tls.peer-names`: names allowed to act as peers; empty: any certificate of
    /// the CA.
    pub peer_names: Vec<String>,
    /// `--cluster.tls.admin-names`: names allowed the admin RPCs; empty: any certificate of
    /// the CA.
    pub admin_names: Vec<String>,
}

/// Why a connection or request on the cluster port was refused (the `reason` label of
/// `pgw_cluster_refused_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not TLS at all (e.g. plaintext HTTP/2).
    NotTls,
    /// TLS without a client certificate.
    NoCertificate,
    /// A certificate not signed by the cluster CA, expired, or unusable for its purpose.
    UntrustedCertificate,
    /// Any other handshake failure (timeout, protocol version, reset).
    HandshakeFailed,
    /// A valid certificate whose names are not in `--cluster.tls.peer-names`, calling a peer
    /// RPC.
    NotAPeer,
    /// A valid certificate whose names are not in `--cluster.tls.admin-names`, calling an
    /// admin RPC.
    NotAnAdmin,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 6] = [
        Refusal::HandshakeFailed,
        Refusal::NoCertificate,
        Refusal::NotAPeer,
        Refusal::NotAnAdmin,
        Refusal::NotTls,
        Refusal::UntrustedCertificate,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotTls => "not_tls",
            Refusal::NoCertificate => "no_certificate",
            Refusal::UntrustedCertificate => "untrusted_certificate",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::NotAPeer => "not_a_peer",
            Refusal::NotAnAdmin => "not_an_admin",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::HandshakeFailed => 0,
            Refusal::NoCertificate => 1,
            Refusal::NotAPeer => 2,
            Refusal::NotAnAdmin => 3,
            Refusal::NotTls => 4,
            Refusal::UntrustedCertificate => 5,
        }
    }
}

/// Who is on the other end of a cluster-port connection. Available to every service as a
/// request extension (see [`peer_identity`]).
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// The names (DNS SANs, then CN) of the verified client certificate.
    pub names: Arc<[String]>,
}

/// The caller of a request as a short string for logs: certificate names and address.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> String {
    if let Some(p) = req.extensions().get::<PeerInfo>() {
        return describe(p);
    }
    match req.remote_addr() {
        Some(a) => format!("{a} (no TLS)"),
        None => "unknown (no TLS)".to_string(),
    }
}

fn describe(p: &PeerInfo) -> String {
    let addr = p.remote.map_or_else(|| "?".to_string(), |a| a.to_string());
    format!("certificate {:?} at {addr}", &p.names[..])
}

/// Logs at most one warning per second for a flood of refusals; the rest go to debug.
#[derive(Debug, Default)]
struct LogLimiter(AtomicU64);

impl LogLimiter {
    fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.0.swap(now, Ordering::Relaxed) != now
    }
}

/// A node's TLS material, role lists and refusal counters.
#[derive(Debug)]
pub struct ClusterSecurity {
    tls: Arc<ReloadableTls>,
    peer_names: Option<BTreeSet<String>>,
    admin_names: Option<BTreeSet<String>>,
    refused: [AtomicU64; 6],
    reload_failures: AtomicU64,
    last_reload_ok: AtomicBool,
    /// One per [`Refusal`], so a flood of one kind does not hide the first of another.
    log: [LogLimiter; 6],
}

fn name_set(names: &[String]) -> Option<BTreeSet<String>> {
    let set: BTreeSet<String> = names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    (!set.is_empty()).then_some(set)
}

impl ClusterSecurity {
    /// Reads the files of `settings` (see [`pgw_tls::Material::load`]). When peer names are
    /// set, the nodes this one dials must present a certificate with one of them.
    ///
    /// # Errors
    /// A file is unusable; the message names it.
    pub fn load(settings: &SecuritySettings) -> Result<Arc<ClusterSecurity>, String> {
        let peer_names = name_set(&settings.peer_names);
        let admin_names = name_set(&settings.admin_names);
        let tls = ReloadableTls::load(settings.files.clone(), peer_names.clone())
            .map_err(|e| e.to_string())?;
        let own = tls.current().names.clone();
        if let Some(peers) = &peer_names
            && !own.iter().any(|n| peers.contains(n))
        {
            tracing::warn!(
                names = ?own,
                "this node's certificate carries none of --cluster.tls.peer-names: its peers \
                 will refuse its Raft RPCs; issue it a certificate with a peer name"
            );
        }
        Ok(Arc::new(ClusterSecurity {
            tls: Arc::new(tls),
            peer_names,
            admin_names,
            refused: Default::default(),
            reload_failures: AtomicU64::new(0),
            last_reload_ok: AtomicBool::new(true),
            log: Default::default(),
        }))
    }

    /// Re-reads the certificate, key and CA files. On success new connections (accepted and
    /// dialed) use them; established connections keep theirs, so the node stays in the
    /// cluster. On error the old material stays, the failure is counted
    /// ([`ClusterSecurity::reload_failures`]) and returned.
    ///
    /// # Errors
    /// A file is unusable; the message names it.
    pub fn reload(&self) -> Result<(), String> {
        match self.tls.reload() {
            Ok(names) => {
                self.last_reload_ok.store(true, Ordering::Relaxed);
                tracing::info!(
                    names = ?names,
                    generation = self.tls.generation(),
                    "re-read the cluster TLS certificate, key and CA; new connections use them"
                );
                Ok(())
            }
            Err(e) => {
                self.last_reload_ok.store(false, Ordering::Relaxed);
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "re-reading the cluster TLS files failed, the previous certificates stay \
                     in use: {e}"
                ))
            }
        }
    }

    /// The reloadable material (for the client connector).
    pub fn tls(&self) -> &Arc<ReloadableTls> {
        &self.tls
    }

    /// Failed reloads so far.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Whether the last reload succeeded (true before any).
    pub fn last_reload_ok(&self) -> bool {
        self.last_reload_ok.load(Ordering::Relaxed)
    }

    /// Refused connections and requests so far, by reason.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), self.refused[r.index()].load(Ordering::Relaxed)))
            .collect()
    }

    fn count(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Checks that the caller described by `info` may call `path`.
    fn authorize(
        &self,
        node: u64,
        path: &str,
        info: Option<&PeerInfo>,
    ) -> Result<(), tonic::Status> {
        let Some(info) = info else {
            self.count(Refusal::NoCertificate);
            tracing::warn!(
                node,
                method = path,
                "refused a cluster request without a client certificate"
            );
            return Err(tonic::Status::unauthenticated(
                "the cluster port needs a client certificate of the cluster CA",
            ));
        };
        let in_list = |list: &Option<BTreeSet<String>>| {
            list.as_ref()
                .is_none_or(|l| info.names.iter().any(|n| l.contains(n)))
        };
        let (peer_ok, admin_ok) = (in_list(&self.peer_names), in_list(&self.admin_names));
        let (allowed, refusal, flag, what) = match role_of(path) {
            Role::Peer => (
                peer_ok,
                Refusal::NotAPeer,
                "--cluster.tls.peer-names",
                "a peer RPC",
            ),
            Role::PeerOrAdmin => (
                peer_ok || admin_ok,
                Refusal::NotAPeer,
                "--cluster.tls.peer-names or --cluster.tls.admin-names",
                "AddLearner",
            ),
            Role::Admin => (
                admin_ok,
                Refusal::NotAnAdmin,
                "--cluster.tls.admin-names",
                "an admin RPC",
            ),
        };
        if allowed {
            return Ok(());
        }
        self.count(refusal);
        let who = describe(info);
        if self.log[refusal.index()].allow() {
            tracing::warn!(node, method = path, caller = %who, reason = refusal.label(),
                "refused a cluster request: the certificate has no name in {flag}");
        } else {
            tracing::debug!(node, method = path, caller = %who, reason = refusal.label(),
                "refused a cluster request");
        }
        Err(tonic::Status::permission_denied(format!(
            "node {node} refuses {path} ({what}) from {who}: none of its names is listed in {flag}"
        )))
    }

    /// Counts and logs a failed handshake.
    fn handshake_failed(&self, remote: Option<SocketAddr>, e: &std::io::Error) {
        let reason = classify(e);
        self.count(reason);
        let addr = remote.map_or_else(|| "?".to_string(), |a| a.to_string());
        if self.log[reason.index()].allow() {
            tracing::warn!(peer = %addr, reason = reason.label(), error = %e,
                "refused a cluster connection: the TLS handshake failed (the cluster port takes \
                 only TLS with a client certificate of the cluster CA)");
        } else {
            tracing::debug!(peer = %addr, reason = reason.label(), error = %e,
                "refused a cluster connection");
        }
    }
}

fn classify(e: &std::io::Error) -> Refusal {
    use pgw_tls::rustls::Error as E;
    if e.kind() == std::io::ErrorKind::TimedOut {
        return Refusal::HandshakeFailed;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => Refusal::NoCertificate,
        Some(E::InvalidCertificate(_)) => Refusal::UntrustedCertificate,
        Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => Refusal::NotTls,
        _ => Refusal::HandshakeFailed,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Peer,
    PeerOrAdmin,
    Admin,
}

/// The role a gRPC method needs (unknown methods: admin).
fn role_of(path: &str) -> Role {
    if path.starts_with("/pgw.v1.RaftService/") {
        Role::Peer
    } else if path == "/pgw.v1.AdminService/AddLearner" {
        Role::PeerOrAdmin
    } else {
        Role::Admin
    }
}

/// A TLS connection accepted on the cluster port.
pub struct TlsConn {
    stream: tokio_rustls_server::TlsStream<TcpStream>,
    info: PeerInfo,
}

use pgw_tls::tokio_rustls::server as tokio_rustls_server;

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// The connections of `listener` that complete a mutual-TLS handshake with the current
/// material of `security`; the others are counted, logged and dropped. At most
/// [`MAX_HANDSHAKES`] handshakes run at once, each bounded by [`HANDSHAKE_TIMEOUT`]. The
/// accept loop ends when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    security: Arc<ClusterSecurity>,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a cluster connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let security = security.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let acceptor = pgw_tls::tokio_rustls::TlsAcceptor::from(
                    security.tls().current().server.clone(),
                );
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return security.handshake_failed(Some(remote), &e),
                        Err(_) => {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                            );
                            return security.handshake_failed(Some(remote), &e);
                        }
                    };
                let names: Vec<String> = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| pgw_tls::cert_names(c.as_ref()))
                    .unwrap_or_default();
                let info = PeerInfo {
                    remote: Some(remote),
                    names: names.into(),
                };
                let _ = tx.send(Ok(TlsConn { stream, info })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A tower layer checking roles before the gRPC services ([`ClusterSecurity`]); a no-op
/// without security.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    security: Option<Arc<ClusterSecurity>>,
    node: u64,
}

impl AuthorizeLayer {
    /// Checks requests to node `node` against `security`.
    pub fn new(security: Option<Arc<ClusterSecurity>>, node: u64) -> Self {
        AuthorizeLayer { security, node }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            security: self.security.clone(),
            node: self.node,
        }
    }
}

/// The service of [`AuthorizeLayer`].
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    security: Option<Arc<ClusterSecurity>>,
    node: u64,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Authorize<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    // No allocation per request: the inner future, or the ready refusal.
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(security) = &self.security
            && let Err(status) = security.authorize(
                self.node,
                req.uri().path(),
                req.extensions().get::<PeerInfo>(),
            )
        {
            return futures::future::Either::Right(std::future::ready(Ok(status.into_http())));
        }
        // The ready service answers this request; a clone takes its place for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        futures::future::Either::Left(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_method() {
        assert_eq!(role_of("/pgw.v1.RaftService/AppendEntries"), Role::Peer);
        assert_eq!(role_of("/pgw.v1.RaftService/PeerStatus"), Role::Peer);
        assert_eq!(
            role_of("/pgw.v1.AdminService/AddLearner"),
            Role::PeerOrAdmin
        );
        assert_eq!(role_of("/pgw.v1.AdminService/Status"), Role::Admin);
        assert_eq!(role_of("/pgw.v1.AdminService/Backup"), Role::Admin);
        assert_eq!(
            role_of("/grpc.reflection.v1.ServerReflection/X"),
            Role::Admin
        );
    }
}
