//! The Raft network over tonic gRPC: the client side of `pgw.v1.RaftService`.
//!
//! One lazily connected channel per peer address, shared by every Raft connection to that
//! peer and by write forwarding. Every RPC is bounded by openraft's `RPCOption::hard_ttl()`;
//! connection failures map to `Unreachable`, so openraft backs off for [`BACKOFF`] before it
//! retries a peer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use pgw_proto::v1::raft_service_client::RaftServiceClient;
use pgw_proto::v1::{RaftReply, RaftRequest, SnapshotChunk};
use pgw_store::{Node, NodeId, TypeConfig};
use tonic::transport::{Channel, Endpoint};

use crate::{codec, lock};

/// How long openraft waits before retrying an unreachable peer. Short, so a restarted peer
/// is caught up quickly.
pub const BACKOFF: Duration = Duration::from_millis(200);
/// Connect timeout of a peer channel.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest gRPC message this node sends (a log entry carries a whole push). What a node
/// accepts is bounded tighter, by [`max_raft_message`].
pub const MAX_MESSAGE: usize = 1 << 30;
/// One AppendEntries carries at most this many bytes of commands (estimated by
/// [`entry_weight`]) plus one entry: a larger run of entries goes out as several RPCs, each
/// reported to openraft as a partial success.
pub const APPEND_BUDGET: usize = 32 << 20;

/// Largest message the Raft service of a node under `policy` accepts: an AppendEntries of
/// [`APPEND_BUDGET`] bytes plus one entry of the largest command, with headroom for the
/// envelope. A forwarded write is bounded again, tighter, by
/// [`pgw_core::policy::Policy::max_command_bytes`].
pub fn max_raft_message(policy: &pgw_core::policy::Policy) -> usize {
    policy
        .max_command_bytes()
        .saturating_add(APPEND_BUDGET)
        .saturating_add(1 << 20)
        .min(MAX_MESSAGE)
}

/// An estimate of a log entry's encoded size: its commands' payloads and keys.
pub fn entry_weight(entry: &openraft::Entry<TypeConfig>) -> usize {
    use pgw_core::command::{Op, Payload};
    fn op_weight(op: Op<'_>) -> usize {
        let key = |k: &pgw_core::GroupingKey| -> usize {
            k.pairs().iter().map(|(a, b)| a.len() + b.len() + 4).sum()
        };
        64 + match op {
            Op::Push(p, _) => {
                key(&p.key)
                    + match &p.payload {
                        Payload::Families(b) => b.len(),
                        Payload::Invalid(m) => m.len(),
                    }
            }
            Op::Delete(k) => key(k),
            Op::Wipe => 0,
            Op::Replace(s) => s.len(),
        }
    }
    match &entry.payload {
        openraft::EntryPayload::Normal(cmd) => match cmd {
            pgw_core::Command::Batch(items) => items.iter().map(|i| op_weight(i.op())).sum(),
            other => other.op().map_or(64, op_weight),
        },
        _ => 256,
    }
}
/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// A peer that has not answered on its channel for this long while calls to it time out
/// gets a new connection (see [`Channels::note_timeout`]).
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// Channels to peers, keyed by address; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    /// When each peer address last answered, or its channel was last judged stale: see
    /// [`Channels::note_timeout`].
    answered: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    /// How a configured endpoint becomes a channel; `None`: TCP (`Endpoint::connect_lazy`).
    factory: Option<ChannelFactory>,
    /// Test-only dial overrides (`--cluster.peer-dial`), see [`Channels::set_peer_dial`].
    dial: Arc<Mutex<PeerDial>>,
}

/// Where to dial peers whose id has an override: by id as configured, and by membership
/// address once the address of that id is known ([`Channels::learn_peer`]).
#[derive(Debug, Default)]
struct PeerDial {
    by_id: BTreeMap<NodeId, String>,
    by_addr: HashMap<String, String>,
}

/// Turns a configured [`Endpoint`] (address, timeouts, keep-alive) into a lazily connected
/// [`Channel`] over another transport, e.g. a simulated network in tests:
/// `ChannelFactory::new(|ep| ep.connect_with_connector_lazy(connector))`.
#[derive(Clone)]
pub struct ChannelFactory(Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>);

impl ChannelFactory {
    /// A factory calling `f` for every new peer address.
    pub fn new(f: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Self {
        ChannelFactory(Arc::new(f))
    }
}

impl std::fmt::Debug for ChannelFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelFactory")
    }
}

impl Channels {
    /// Channels whose connections `factory` makes, instead of TCP.
    pub fn with_factory(factory: ChannelFactory) -> Self {
        Channels {
            factory: Some(factory),
            ..Channels::default()
        }
    }

    /// Test only (`--cluster.peer-dial`): dial node `id` at the given address (e.g. a loopback
    /// proxy that can cut the link) instead of its address in the membership, which stays
    /// unchanged. Applies to every connection to that peer (Raft, forwarded writes, reads)
    /// once its membership address is known ([`Channels::learn_peer`]).
    pub fn set_peer_dial(&self, overrides: &BTreeMap<NodeId, String>) {
        let mut d = lock(&self.dial);
        d.by_id = overrides.clone();
        d.by_addr.clear();
    }

    /// Records that node `id` is at membership address `addr`, so a dial override for `id`
    /// applies to `addr`. Cheap; a no-op without overrides.
    pub fn learn_peer(&self, id: NodeId, addr: &str) {
        let mut d = lock(&self.dial);
        if let Some(dial) = d.by_id.get(&id).cloned()
            && d.by_addr.get(addr) != Some(&dial)
        {
            tracing::info!(peer = id, addr, dial = %dial, "dialing peer through override");
            d.by_addr.insert(addr.to_string(), dial);
        }
    }

    /// The channel to `addr` (`host:port`), created lazily on first use and reused after.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let dialed = lock(&self.dial).by_addr.get(addr).cloned();
        let addr = dialed.as_deref().unwrap_or(addr);
        let mut map = lock(&self.inner);
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match &self.factory {
            None => endpoint.connect_lazy(),
            Some(f) => (f.0)(endpoint),
        };
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Drops every cached channel: the next call to each peer dials a new connection (after
    /// new TLS material was loaded). Calls in flight finish on their channels.
    pub fn reset(&self) {
        lock(&self.inner).clear();
    }

    /// Records that `addr` answered a call (its connection works).
    pub fn note_answer(&self, addr: &str) {
        let now = tokio::time::Instant::now();
        let mut answered = lock(&self.answered);
        // Every append, heartbeat and forwarded write lands here: allocate the key only once.
        match answered.get_mut(addr) {
            Some(t) => *t = now,
            None => {
                answered.insert(addr.to_string(), now);
            }
        }
    }

    /// Records that a call to `addr` got no answer in time. When nothing came back from
    /// `addr` for [`STALE_AFTER`], its channel is dropped so that the next call opens a new
    /// connection: a connection whose packets are silently dropped (a partition, a middlebox
    /// that lost its state) never fails on its own, and HTTP/2 keep-alive takes up to 10 s to
    /// notice. Without this a deposed leader cut off for a moment keeps its dead connections,
    /// never hears of the newer term, and keeps taking (and failing) writes long after the
    /// network healed. A slow peer that still answers now and then keeps its connection.
    pub fn note_timeout(&self, addr: &str) {
        let now = tokio::time::Instant::now();
        let mut answered = lock(&self.answered);
        let since = *answered.entry(addr.to_string()).or_insert(now);
        if now.saturating_duration_since(since) < STALE_AFTER {
            return;
        }
        answered.insert(addr.to_string(), now);
        drop(answered);
        let dialed = lock(&self.dial).by_addr.get(addr).cloned();
        let key = dialed.as_deref().unwrap_or(addr);
        if lock(&self.inner).remove(key).is_some() {
            tracing::info!(peer = addr, "no answer for {STALE_AFTER:?}; reconnecting");
        }
    }

    /// A Raft service client for `addr`.
    pub fn raft_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        Ok(RaftServiceClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// Creates connections to peers.
#[derive(Clone, Debug, Default)]
pub struct Network {
    channels: Channels,
}

impl Network {
    /// A network using (and sharing) `channels`.
    pub fn new(channels: Channels) -> Self {
        Network { channels }
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub struct Connection {
    target: NodeId,
    addr: String,
    channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        self.channels.learn_peer(target, &node.raft_addr);
        Connection {
            target,
            addr: node.raft_addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

fn unreachable(msg: impl std::fmt::Display) -> Unreachable {
    Unreachable::new(&std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        msg.to_string(),
    ))
}

fn network_error(msg: impl std::fmt::Display) -> NetworkError {
    NetworkError::new(&std::io::Error::other(msg.to_string()))
}

/// Why a call to a peer failed, before its answer was decoded.
enum CallError {
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl<E: std::error::Error> From<CallError> for RPCError<NodeId, Node, E> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(u) => RPCError::Unreachable(u),
            CallError::Network(n) => RPCError::Network(n),
        }
    }
}

fn status_error(target: NodeId, addr: &str, s: tonic::Status) -> CallError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            CallError::Unreachable(unreachable(format!(
                "node {target} at {addr}: {}",
                s.message()
            )))
        }
        _ => CallError::Network(network_error(format!("node {target} at {addr}: {s}"))),
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &Req,
        option: &RPCOption,
        vote: bool,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let payload = codec::encode(rpc).map_err(|e| RPCError::Network(network_error(e)))?;
        let mut client = self
            .channels
            .raft_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let request = RaftRequest {
            payload: payload.into(),
        };
        let fut = async {
            if vote {
                client.vote(request).await
            } else {
                client.append_entries(request).await
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => {
                self.channels.note_timeout(&self.addr);
                return Err(RPCError::Unreachable(unreachable(format!(
                    "node {} at {}: no answer within {:?}",
                    self.target,
                    self.addr,
                    option.hard_ttl()
                ))));
            }
            Ok(Err(s)) => return Err(status_error(self.target, &self.addr, s).into()),
            Ok(Ok(r)) => {
                self.channels.note_answer(&self.addr);
                r.into_inner()
            }
        };
        decode_reply::<Resp, RaftError<NodeId, E>>(&reply)
            .map_err(|e| RPCError::Network(network_error(e)))?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Decodes a [`RaftReply`]: the outer error is a malformed reply, the inner one the remote
/// Raft error.
pub fn decode_reply<T, E>(reply: &RaftReply) -> Result<Result<T, E>, String>
where
    T: serde::de::DeserializeOwned,
    E: serde::de::DeserializeOwned,
{
    if !reply.error.is_empty() {
        return Ok(Err(codec::decode(&reply.error)?));
    }
    Ok(Ok(codec::decode(&reply.ok)?))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        // Keep the message within what the receiver accepts: send the entries that fit in
        // APPEND_BUDGET (at least one) and report the rest as not sent yet.
        let mut total = 0usize;
        let mut keep = rpc.entries.len();
        for (i, e) in rpc.entries.iter().enumerate() {
            total = total.saturating_add(entry_weight(e));
            if total > APPEND_BUDGET && i > 0 {
                keep = i;
                break;
            }
        }
        if keep < rpc.entries.len() {
            rpc.entries.truncate(keep);
            let last = rpc.entries.last().map(|e| e.log_id);
            return match self.call(&rpc, &option, false).await? {
                AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
                other => Ok(other),
            };
        }
        self.call(&rpc, &option, false).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(&rpc, &option, true).await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // With `generic-snapshot-data` openraft sends snapshots with `full_snapshot` only.
        Err(RPCError::Network(network_error(
            "chunked install_snapshot is not used",
        )))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let to_net = |e: String| StreamingError::Network(network_error(e));
        let vote_bytes = codec::encode(&vote).map_err(to_net)?;
        let meta_bytes = codec::encode(&snapshot.meta).map_err(to_net)?;
        let data = snapshot.snapshot.into_inner();
        let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK + 1);
        let mut first = true;
        let mut pieces = data.chunks(SNAPSHOT_CHUNK).peekable();
        if pieces.peek().is_none() {
            chunks.push(SnapshotChunk {
                vote: vote_bytes.clone().into(),
                meta: meta_bytes.clone().into(),
                data: Default::default(),
            });
        }
        for piece in pieces {
            let (v, m) = if first {
                (vote_bytes.clone(), meta_bytes.clone())
            } else {
                (Vec::new(), Vec::new())
            };
            first = false;
            chunks.push(SnapshotChunk {
                vote: v.into(),
                meta: m.into(),
                data: bytes::Bytes::copy_from_slice(piece),
            });
        }
        let mut client = self
            .channels
            .raft_client(&self.addr)
            .map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
        // A whole snapshot may take a while; allow a generous multiple of the RPC ttl.
        let ttl = option.hard_ttl().max(Duration::from_secs(60));
        let call = client.snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, call) => r,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Unreachable(unreachable(
                    "snapshot transfer timed out",
                )));
            }
            Ok(Err(s)) => {
                return Err(match status_error(self.target, &self.addr, s) {
                    CallError::Unreachable(u) => StreamingError::Unreachable(u),
                    CallError::Network(n) => StreamingError::Network(n),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        match decode_reply::<SnapshotResponse<NodeId>, Fatal<NodeId>>(&reply).map_err(to_net)? {
            Ok(resp) => Ok(resp),
            Err(fatal) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(BACKOFF))
    }
}

#[cfg(test)]
mod stale_channel_tests {
    use super::*;

    fn cached(channels: &Channels, addr: &str) -> bool {
        lock(&channels.inner).contains_key(addr)
    }

    /// A peer silent for `STALE_AFTER` while calls time out gets a new connection; one that
    /// answers keeps its own (tests/sim seed 0, partition-leader).
    #[tokio::test]
    async fn a_silent_peer_is_reconnected_an_answering_one_is_not() {
        let channels = Channels::default();
        let (silent, talking) = ("127.0.0.1:1", "127.0.0.1:2");
        channels.get(silent).unwrap();
        channels.get(talking).unwrap();
        channels.note_timeout(silent);
        channels.note_timeout(talking);
        assert!(cached(&channels, silent), "one timeout is not staleness");
        tokio::time::sleep(STALE_AFTER + Duration::from_millis(50)).await;
        channels.note_answer(talking);
        channels.note_timeout(silent);
        channels.note_timeout(talking);
        assert!(
            !cached(&channels, silent),
            "silent for STALE_AFTER: dropped"
        );
        assert!(cached(&channels, talking), "it answered just now: kept");
        // The next call dials again.
        channels.get(silent).unwrap();
        assert!(cached(&channels, silent));
    }
}
