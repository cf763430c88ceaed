//! The pgw Raft node.
//!
//! Owns: starting openraft on the sled store ([`Node::start`]); bootstrap (a single-node
//! cluster initialised on first start, a static cluster from `--cluster.peers` initialised
//! exactly once, or joining a running cluster); the internal gRPC server and the Raft network
//! over tonic ([`grpc`], [`network`]); the write path ([`Node::write`]: propose a command,
//! forward it to the leader when this node does not lead, wait until it is committed and
//! applied here); local reads of the applied state ([`Node::read`]); readiness and shutdown.
//!
//! Does not own: HTTP (pgw-server), the data model (pgw-core), storage internals (pgw-store).
//!
//! The gRPC port carries Raft traffic, forwarded writes and membership changes. With
//! [`NodeConfig::security`] it takes only mutual TLS from certificates of the cluster CA and
//! checks each caller's role ([`security`]); without it, it has no authentication and is for
//! trusted peers only. Either way it trusts nothing it decodes: a forwarded write is admitted
//! by [`pgw_core::policy::check_command`] under this node's [`NodeConfig::policy`] exactly as
//! if it had come through HTTP; membership changes obey the quorum-safety rules in the server
//! ([`grpc`]); every message and stream it receives has a size bound derived from the policy
//! (`network::max_raft_message`, `--cluster.max-snapshot-bytes`).

#![allow(clippy::result_large_err)]

pub mod codec;
pub mod grpc;
mod health;
pub mod network;
pub mod security;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock, not std's: deadlines follow a paused or simulated runtime clock in tests and
// are the same as std's in the binary.
use tokio::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use pgw_core::policy::{Policy, Reason};
use pgw_core::{Command, CommandResponse, GroupStore};
use pgw_proto::v1::admin_service_client::AdminServiceClient;
use pgw_proto::v1::admin_service_server::AdminServiceServer;
use pgw_proto::v1::raft_service_server::RaftServiceServer;
use pgw_proto::v1::{AddLearnerRequest, ForwardWriteRequest, Member, StatusRequest};
use pgw_store::{NodeId, SharedStore, TypeConfig};
use tokio::sync::watch;

pub use health::{Health, Quorum};
pub use network::{ChannelFactory, Channels};
pub use security::{ClusterSecurity, PeerInfo, SecuritySettings, peer_identity};

/// The openraft instance of a pgw node.
pub type PgwRaft = Raft<TypeConfig>;

/// Why a write could not be answered with the command's outcome.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader could take the write before the deadline (election, lost quorum), and the
    /// write was never handed to one: nothing was applied. The HTTP layer answers 503 with
    /// `Retry-After`.
    #[error("no Raft leader accepted the write within {0:?}; retry later")]
    Unavailable(Duration),
    /// The leader (this node, or the one a follower forwarded to) has not heard from a quorum
    /// for the given time: the write is refused at once (503 with `Retry-After`) instead of
    /// waiting out the write timeout. A write that was already proposed when the contact was
    /// lost may still be applied once the quorum returns.
    #[error(
        "the Raft leader has no contact with a quorum of the cluster (last contact {:.1}s ago); \
         the write was not confirmed and, if it was already proposed, may still be applied once \
         the quorum returns; retry later",
        .0.as_secs_f64()
    )]
    NoQuorum(Duration),
    /// The write was proposed (or handed to a leader) but not confirmed committed and applied
    /// here before `--cluster.write-timeout`: it may still be applied. The HTTP layer answers
    /// 503 with this message.
    #[error(
        "the write was not confirmed within {0:?} (--cluster.write-timeout): it was handed to \
         the Raft leader and may still be applied; check before retrying a change that is not \
         idempotent"
    )]
    NotConfirmed(Duration),
    /// The leader refused the forwarded command before proposing it (see
    /// [`pgw_core::policy::check_command`]): nothing changed.
    #[error("{0}")]
    Refused(pgw_core::policy::Refusal),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage or another fatal error (500).
    #[error("{0}")]
    Fatal(String),
}

/// Why forwarding a write to the leader failed.
enum ForwardError {
    /// The leader refused the command before proposing it.
    Refused(pgw_core::policy::Refusal),
    /// The leader answered that it has no contact with a quorum (for this long).
    NoQuorum(Duration),
    /// Anything else; `sent`: the command may have reached the leader.
    Failed { sent: bool, error: String },
}

/// How the node finds its cluster.
#[derive(Clone, Debug, Default)]
pub enum Bootstrap {
    /// No cluster flags: a single-node cluster, initialised on the first start.
    #[default]
    Single,
    /// `--cluster.peers`: a fixed set of voters (id → gRPC address), this node among them.
    /// The member with the lowest id initialises the cluster, exactly once, when a majority
    /// is reachable and none of them is initialised yet.
    Static(BTreeMap<NodeId, String>),
    /// `--cluster.join`: ask a member of a running cluster to add this node (as a learner,
    /// promoted to voter once caught up).
    Join(Vec<String>),
}

/// Node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (1 for a single-node cluster).
    pub id: u64,
    /// The address other members reach this node's gRPC port at.
    pub raft_addr: String,
    /// The address clients reach this node's HTTP API at.
    pub http_addr: String,
    /// `--storage.path`.
    pub storage_path: PathBuf,
    /// `--cluster.write-timeout`: how long a write may wait for a leader.
    pub write_timeout: Duration,
    /// `--raft.snapshot-every`: build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// How to find the cluster.
    pub bootstrap: Bootstrap,
    /// How many applied log entries to keep after a snapshot (so slightly lagging peers catch
    /// up from the log rather than a whole snapshot).
    pub keep_logs_after_snapshot: u64,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range (min; max is 1.25× min).
    pub election_timeout: Duration,
    /// Test only (`--cluster.peer-dial`): dial these peers at these addresses (loopback
    /// proxies that can cut links) instead of their membership addresses.
    pub peer_dial: BTreeMap<NodeId, String>,
    /// What this node admits as a write (from pgw-server's flags): the leader re-checks every
    /// forwarded command against it, and the cluster port's message limit derives from it.
    pub policy: Policy,
    /// `--cluster.max-snapshot-bytes`: largest snapshot or restore stream this node receives.
    pub max_snapshot_bytes: u64,
    /// `--cluster.tls.*`: mutual TLS and roles on the gRPC port and for dialing peers. `None`:
    /// plaintext, no authentication.
    pub security: Option<Arc<ClusterSecurity>>,
}

impl NodeConfig {
    /// A single-node configuration with the defaults.
    pub fn single(storage_path: PathBuf) -> Self {
        NodeConfig {
            id: 1,
            raft_addr: String::new(),
            http_addr: String::new(),
            storage_path,
            write_timeout: Duration::from_secs(10),
            snapshot_every: 10_000,
            bootstrap: Bootstrap::Single,
            keep_logs_after_snapshot: 1000,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(400),
            peer_dial: BTreeMap::new(),
            policy: Policy::default(),
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            security: None,
        }
    }
}

/// Default of `--cluster.max-snapshot-bytes`: 16 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 16 << 30;

/// What `/-/ready` and the self-metrics need to know about the node.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// Whether a leader is known.
    pub has_leader: bool,
    /// Whether this node leads.
    pub is_leader: bool,
    /// The known leader's id.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Highest log index applied to the local store.
    pub applied_index: u64,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// Index of the last snapshot.
    pub snapshot_index: u64,
    /// Role: Leader, Follower, Candidate, Learner.
    pub role: String,
}

/// Node-local counters for the cluster self-metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Writes forwarded to the leader.
    pub forwarded_writes: AtomicU64,
    /// Writes proposed or forwarded and not answered yet.
    pub pending_writes: AtomicI64,
    /// Leader changes seen.
    pub leader_changes: AtomicU64,
    /// Snapshots built or installed.
    pub snapshots: AtomicU64,
    /// Forwarded commands this node refused, by [`Reason`] (indexed like [`Reason::ALL`]).
    refused_forwards: [AtomicU64; Reason::ALL.len()],
    /// Admin RPCs (membership changes, restores) refused by the server's safety rules.
    pub refused_admin: AtomicU64,
}

impl Counters {
    /// Counts a forwarded command refused for `reason`.
    pub fn count_refused_forward(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.refused_forwards[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forwarded commands refused so far, for every reason (zeros included).
    pub fn refused_forwards(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.refused_forwards)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }
}

struct PendingGuard<'a>(&'a AtomicI64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub id: u64,
    /// gRPC address.
    pub raft_addr: String,
    /// HTTP address ("" when unknown, e.g. peers of a static cluster).
    pub http_addr: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Entries this member is behind the leader's last log index; only known on the leader.
    pub lag: Option<u64>,
}

/// State shared by the node and its gRPC services.
pub(crate) struct NodeShared {
    pub(crate) id: NodeId,
    pub(crate) http_addr: String,
    /// The commit index the log store last saw (openraft 0.9 publishes none in its metrics).
    pub(crate) committed: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) counters: Counters,
    pub(crate) storage_path: PathBuf,
    pub(crate) health: Health,
    /// What this node admits as a write ([`NodeConfig::policy`]).
    pub(crate) policy: Policy,
    /// [`NodeConfig::max_snapshot_bytes`].
    pub(crate) max_snapshot_bytes: u64,
    /// The channels to peers (the admin service asks members for their status).
    pub(crate) channels: Channels,
}

impl NodeShared {
    /// The commit index known to this node: on a follower, the leader's as of its last
    /// heartbeat; never below what this node applied.
    pub(crate) fn committed_index(&self, m: &RaftMetrics<NodeId, pgw_store::Node>) -> u64 {
        let applied = m.last_applied.map_or(0, |l| l.index);
        self.committed
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(applied)
    }
}

/// A running pgw node: openraft over the sled store, the internal gRPC server, and the
/// shared in-memory view of the applied state that the HTTP layer renders from.
pub struct Node {
    shared: Arc<NodeShared>,
    raft: PgwRaft,
    store: SharedStore,
    channels: Channels,
    security: Option<Arc<ClusterSecurity>>,
    write_timeout: Duration,
    grpc_stop: watch::Sender<bool>,
    /// Counters of the sled store's retried conditions (`None` on other stores).
    storage_stats: Option<Arc<pgw_store::StorageStats>>,
    grpc_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    bootstrap_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    watcher: tokio::task::JoinHandle<()>,
}

/// Counts leader changes and snapshots from openraft's metrics stream, until Raft stops.
async fn watch_metrics(raft: PgwRaft, shared: Arc<NodeShared>) {
    let mut rx = raft.metrics();
    let (mut leader, mut snapshot) = {
        let m = rx.borrow();
        (m.current_leader, m.snapshot)
    };
    shared.health.observe(shared.id, &rx.borrow());
    while rx.changed().await.is_ok() {
        // A few fields: a full copy per change (every append and apply) is not needed.
        let (now_leader, now_snapshot) = {
            let m = rx.borrow();
            shared.health.observe(shared.id, &m);
            (m.current_leader, m.snapshot)
        };
        if now_leader != leader {
            leader = now_leader;
            shared
                .counters
                .leader_changes
                .fetch_add(1, Ordering::Relaxed);
        }
        if now_snapshot != snapshot {
            snapshot = now_snapshot;
            shared.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The already built parts [`Node::start_with`] runs a node on.
pub struct NodeParts<L, S> {
    /// The Raft log (openraft's v2 `RaftLogStorage`).
    pub log_store: L,
    /// The state machine (openraft's v2 `RaftStateMachine`).
    pub state_machine: S,
    /// The applied state `state_machine` writes and the node reads ([`Node::read`]).
    pub store: SharedStore,
    /// The commit index `log_store` last saw (see [`pgw_store::LogStore::committed_index`]).
    pub committed: Arc<AtomicU64>,
    /// Channels to peers: [`Channels::default`] dials TCP, [`Channels::with_factory`] anything
    /// else.
    pub channels: Channels,
    /// Adjusts the openraft configuration derived from [`NodeConfig`] before Raft starts (tests
    /// use it to fix the election timeout, so that runs are reproducible).
    pub tune_raft: Option<fn(&mut Config)>,
}

impl Node {
    /// Opens storage under `config.storage_path`, starts Raft and the gRPC server (when
    /// `grpc` is given) and bootstraps as configured. A single-node cluster is initialised on
    /// its first start and this returns once it leads; a clustered node returns at once and
    /// finds its cluster in the background (see [`Node::status`]).
    pub async fn start(
        config: NodeConfig,
        grpc: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.storage_path).map_err(|e| {
            anyhow::anyhow!(
                "cannot create --storage.path {}: {e}",
                config.storage_path.display()
            )
        })?;
        let (log_store, state_machine) = pgw_store::open(&config.storage_path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open storage at {}: {e}",
                config.storage_path.display()
            )
        })?;
        let storage_stats = state_machine.stats();
        let channels = match &config.security {
            None => Channels::default(),
            Some(sec) => {
                let connector =
                    pgw_tls::Connector::reloadable(sec.tls().clone(), network::CONNECT_TIMEOUT);
                Channels::with_factory(ChannelFactory::new(move |ep| {
                    ep.connect_with_connector_lazy(connector.clone())
                }))
            }
        };
        let parts = NodeParts {
            store: state_machine.shared(),
            committed: log_store.committed_index(),
            log_store,
            state_machine,
            channels,
            tune_raft: None,
        };
        let mut node = match config.security.clone() {
            None => {
                let incoming = grpc.map(tokio_stream::wrappers::TcpListenerStream::new);
                Self::start_with(config, parts, incoming).await?
            }
            Some(sec) => {
                let incoming = grpc.map(|l| security::tls_incoming(l, sec));
                Self::start_with(config, parts, incoming).await?
            }
        };
        node.storage_stats = Some(storage_stats);
        Ok(node)
    }

    /// Starts a node on already built parts: any log store and state machine for pgw's
    /// [`TypeConfig`], the applied store and commit index they share, the channels to peers,
    /// and, when given, the gRPC server on the connections `grpc_incoming` yields. Otherwise
    /// as [`Node::start`], which calls this with the sled store, TCP channels and a TCP
    /// listener (with [`NodeConfig::security`]: TLS channels and [`security::tls_incoming`]).
    /// With `config.security` set the role check refuses every request whose connection
    /// carries no [`PeerInfo`], so a plain incoming stream then serves nothing.
    pub async fn start_with<L, S, I, IO, IE>(
        config: NodeConfig,
        parts: NodeParts<L, S>,
        grpc_incoming: Option<I>,
    ) -> anyhow::Result<Node>
    where
        L: openraft::storage::RaftLogStorage<TypeConfig>,
        S: openraft::storage::RaftStateMachine<TypeConfig>,
        I: futures::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let NodeParts {
            log_store,
            state_machine,
            store,
            committed,
            channels,
            tune_raft,
        } = parts;
        channels.set_peer_dial(&config.peer_dial);
        if let Bootstrap::Static(peers) = &config.bootstrap {
            for (id, addr) in peers {
                channels.learn_peer(*id, addr);
            }
        }
        let election_ms = config.election_timeout.as_millis().max(10) as u64;
        let raft_config = Config {
            cluster_name: "pgw".into(),
            heartbeat_interval: config.heartbeat.as_millis().max(1) as u64,
            election_timeout_min: election_ms,
            // A narrow range: openraft 0.9's leader lease equals the maximum, and a follower
            // refuses votes until the lease of the lost leader expired, so a wide range only
            // delays fail-over. Split votes are still broken by the randomness left.
            election_timeout_max: election_ms + election_ms / 4,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: config.keep_logs_after_snapshot,
            ..Default::default()
        };
        let mut raft_config = raft_config;
        if let Some(tune) = tune_raft {
            tune(&mut raft_config);
        }
        let raft_config = Arc::new(raft_config.validate()?);
        // About two election timeouts (the longest a healthy leader may go unanswered while
        // the cluster elects), and never under a second: a loaded machine must not make a
        // healthy leader look cut off.
        let quorum_timeout =
            Duration::from_millis(2 * raft_config.election_timeout_max).max(Duration::from_secs(1));
        let raft = Raft::new(
            config.id,
            raft_config,
            network::Network::new(channels.clone()),
            log_store,
            state_machine,
        )
        .await?;
        let shared = Arc::new(NodeShared {
            id: config.id,
            http_addr: config.http_addr.clone(),
            committed,
            counters: Counters::default(),
            storage_path: config.storage_path.clone(),
            health: Health::new(quorum_timeout),
            policy: config.policy,
            max_snapshot_bytes: config.max_snapshot_bytes,
            channels: channels.clone(),
        });
        let watcher = tokio::spawn(watch_metrics(raft.clone(), shared.clone()));
        let (grpc_stop, stop_rx) = watch::channel(false);
        let grpc_task = grpc_incoming.map(|incoming| {
            // Every message of the Raft service is bounded by what a peer may legitimately
            // send: an AppendEntries of at most APPEND_BUDGET bytes of entries plus one entry
            // of the largest command, derived from --push.max-body-bytes.
            let raft_svc =
                RaftServiceServer::new(grpc::RaftGrpc::new(raft.clone(), shared.clone()))
                    .max_decoding_message_size(network::max_raft_message(&config.policy))
                    .max_encoding_message_size(network::MAX_MESSAGE);
            let admin_svc = AdminServiceServer::new(grpc::AdminGrpc::new(
                raft.clone(),
                shared.clone(),
                store.clone(),
            ));
            let authorize = security::AuthorizeLayer::new(config.security.clone(), config.id);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .layer(authorize)
                    .add_service(raft_svc)
                    .add_service(admin_svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            })
        });
        let node = Node {
            shared,
            raft,
            store,
            channels,
            security: config.security.clone(),
            write_timeout: config.write_timeout,
            grpc_stop,
            storage_stats: None,
            grpc_task: std::sync::Mutex::new(grpc_task),
            bootstrap_task: std::sync::Mutex::new(None),
            watcher,
        };
        let me = pgw_store::Node {
            raft_addr: config.raft_addr.clone(),
            http_addr: config.http_addr.clone(),
        };
        match config.bootstrap.clone() {
            Bootstrap::Single => {
                if !node.raft.is_initialized().await? {
                    let members = BTreeMap::from([(config.id, me)]);
                    initialize(&node.raft, members).await?;
                    tracing::info!(id = config.id, "initialised a new single-node cluster");
                }
                // A node of a larger cluster restarted without its cluster flags still finds
                // its peers from the stored membership; only a single voter must lead now.
                let voters = grpc::voter_ids(&node.raft);
                if voters.len() <= 1 {
                    node.raft
                        .wait(Some(Duration::from_secs(30)))
                        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
                        .await
                        .map_err(|e| anyhow::anyhow!("no leader after start: {e}"))?;
                }
            }
            Bootstrap::Static(peers) => {
                if node.raft.is_initialized().await? {
                    warn_changed_peers(&node.raft, &peers);
                } else {
                    let task = tokio::spawn(static_bootstrap(
                        node.raft.clone(),
                        node.channels.clone(),
                        config.id,
                        me,
                        peers,
                    ));
                    *lock(&node.bootstrap_task) = Some(task);
                }
            }
            Bootstrap::Join(targets) => {
                if !node.raft.is_initialized().await? {
                    let member = Member {
                        id: config.id,
                        raft_address: config.raft_addr.clone(),
                        http_address: config.http_addr.clone(),
                        voter: false,
                    };
                    let task = tokio::spawn(join(
                        node.raft.clone(),
                        node.channels.clone(),
                        member,
                        targets,
                    ));
                    *lock(&node.bootstrap_task) = Some(task);
                }
            }
        }
        Ok(node)
    }

    /// Proposes `cmd`, waits until it is committed (durable on a quorum) and applied on this
    /// node, and returns the outcome `apply` produced. A follower forwards the command to the
    /// leader and then waits until it has applied the entry itself, so a client that reads
    /// from this node afterwards sees its write. While no leader is known it retries until
    /// `--cluster.write-timeout` has passed.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        self.shared
            .counters
            .pending_writes
            .fetch_add(1, Ordering::Relaxed);
        let _pending = PendingGuard(&self.shared.counters.pending_writes);
        let deadline = Instant::now() + self.write_timeout;
        let mut backoff = Duration::from_millis(10);
        // Whether the command may have reached a leader's log: then a deadline means "not
        // confirmed, may still be applied", not "no leader".
        let mut sent = false;
        let expired = |sent: bool| {
            if sent {
                WriteError::NotConfirmed(self.write_timeout)
            } else {
                WriteError::Unavailable(self.write_timeout)
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(expired(sent));
            }
            // A leader cut off from its quorum cannot commit: say so at once, and stop waiting
            // as soon as the contact is lost while the write is under way.
            if let Quorum::Lost(age) = self.shared.health.quorum() {
                return Err(WriteError::NoQuorum(age));
            }
            // A leader proposes the command at once; it may commit even if openraft then
            // reports a lost leadership.
            sent |= self.is_leader();
            let attempt = tokio::select! {
                r = tokio::time::timeout(left, self.raft.client_write(cmd.clone())) => r,
                age = self.shared.health.wait_quorum_lost() => {
                    return Err(WriteError::NoQuorum(age));
                }
            };
            match attempt {
                Err(_) => return Err(expired(true)),
                Ok(Ok(resp)) => return Ok(resp.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    if let (Some(leader_id), Some(leader)) = (f.leader_id, f.leader_node) {
                        self.channels.learn_peer(leader_id, &leader.raft_addr);
                        // A leader that froze or was cut off never answers: give up on it as
                        // soon as this node stops naming it leader (it voted in an election
                        // or learnt of a newer term), not only at the deadline. The retry
                        // may apply the command twice if the old leader did commit it; every
                        // command is idempotent apart from its push time, and both copies
                        // land before this write is answered.
                        let mut metrics = self.raft.metrics();
                        let leader_changed = async move {
                            let _ = metrics
                                .wait_for(|m| m.current_leader != Some(leader_id))
                                .await;
                        };
                        let forwarded = tokio::select! {
                            r = self.forward(&leader.raft_addr, &cmd, left) => Some(r),
                            () = leader_changed => None,
                        };
                        match forwarded {
                            Some(Ok(Some((resp, index)))) => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                self.wait_applied(index, left)
                                    .await
                                    .map_err(|()| WriteError::NotConfirmed(self.write_timeout))?;
                                return Ok(resp);
                            }
                            Some(Ok(None)) => {}
                            Some(Err(ForwardError::NoQuorum(age))) => {
                                return Err(WriteError::NoQuorum(age));
                            }
                            Some(Err(ForwardError::Refused(r))) => {
                                return Err(WriteError::Refused(r));
                            }
                            Some(Err(ForwardError::Failed { sent: s, error })) => {
                                sent |= s;
                                tracing::debug!(%error, "forwarding a write failed; retrying")
                            }
                            None => {
                                sent = true;
                                tracing::debug!(
                                    from = leader_id,
                                    "the leader changed while forwarding a write; retrying"
                                )
                            }
                        }
                    }
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(WriteError::Fatal(e.to_string()));
                }
                Ok(Err(RaftError::Fatal(openraft::error::Fatal::Stopped))) => {
                    return Err(WriteError::ShuttingDown);
                }
                Ok(Err(RaftError::Fatal(e))) => return Err(WriteError::Fatal(e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Sends `cmd` to the leader at `addr`. `Ok(None)`: that node no longer leads.
    async fn forward(
        &self,
        addr: &str,
        cmd: &Command,
        left: Duration,
    ) -> Result<Option<(CommandResponse, u64)>, ForwardError> {
        self.shared
            .counters
            .forwarded_writes
            .fetch_add(1, Ordering::Relaxed);
        let mut client = self
            .channels
            .raft_client(addr)
            .map_err(|error| ForwardError::Failed { sent: false, error })?;
        let req = ForwardWriteRequest {
            command: cmd.encode().into(),
            // This node follows the leader it forwards to in its current term: the receiver
            // takes the write only while it still leads that term (see the proto).
            term: self.raft.metrics().borrow().current_term,
        };
        let reply = match tokio::time::timeout(left, client.forward_write(req)).await {
            Err(_) => {
                self.channels.note_timeout(addr);
                return Err(ForwardError::Failed {
                    sent: true,
                    error: "forwarded write timed out".into(),
                });
            }
            Ok(Err(s)) => {
                if let Some(r) = grpc::refusal_of(&s) {
                    return Err(ForwardError::Refused(r));
                }
                if let Some(age) = grpc::no_quorum_age(&s) {
                    return Err(ForwardError::NoQuorum(age));
                }
                return Err(ForwardError::Failed {
                    sent: true,
                    error: s.to_string(),
                });
            }
            Ok(Ok(r)) => {
                self.channels.note_answer(addr);
                r.into_inner()
            }
        };
        if reply.not_leader {
            return Ok(None);
        }
        let resp = CommandResponse::decode(&reply.response).map_err(|e| ForwardError::Failed {
            sent: true,
            error: e.to_string(),
        })?;
        Ok(Some((resp, reply.log_index)))
    }

    /// Waits until this node applied `index`; `Err(())` at the deadline.
    async fn wait_applied(&self, index: u64, left: Duration) -> Result<(), ()> {
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "forwarded write applied locally")
            .await
            .map(|_| ())
            .map_err(|_| ())
    }

    /// A linearizable read barrier: asks the leader (this node or, through gRPC, the current
    /// leader) to confirm its leadership with a quorum and to name its commit index, then
    /// waits until this node has applied that index. A read after it sees every write that
    /// was acknowledged before the barrier started, on whichever node it runs.
    pub async fn linearizable_barrier(&self) -> Result<(), WriteError> {
        if let Quorum::Lost(age) = self.shared.health.quorum() {
            return Err(WriteError::NoQuorum(age));
        }
        let deadline = Instant::now() + self.write_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WriteError::Unavailable(self.write_timeout));
            }
            let attempt = async {
                match grpc::read_index(&self.raft).await? {
                    Ok(index) => Ok(Some(index)),
                    Err((_, addr)) if !addr.is_empty() => {
                        let mut client = self.channels.raft_client(&addr)?;
                        let reply = client
                            .read_index(pgw_proto::v1::ReadIndexRequest {})
                            .await
                            .map_err(|s| s.to_string())?
                            .into_inner();
                        Ok(if reply.not_leader {
                            None
                        } else {
                            Some(reply.index)
                        })
                    }
                    Err(_) => Ok(None),
                }
            };
            match tokio::time::timeout(left, attempt).await {
                Err(_) => return Err(WriteError::Unavailable(self.write_timeout)),
                Ok(Ok(Some(index))) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return self
                        .wait_applied(index, left)
                        .await
                        .map_err(|()| WriteError::Unavailable(self.write_timeout));
                }
                Ok(Ok(None)) => {}
                Ok(Err::<_, String>(e)) => {
                    tracing::debug!(error = %e, "read index failed; retrying")
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Runs `f` on the locally applied store (never waits for Raft).
    pub fn read<R>(&self, f: impl FnOnce(&GroupStore) -> R) -> R {
        // A poisoned lock means a panic while applying; the data is still the last applied
        // state, so reading it is the most useful thing to do.
        let guard = match self.store.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&guard)
    }

    /// Whether this node leads now (cheaper than [`Node::status`]).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Current Raft status of this node.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        NodeStatus {
            id: self.shared.id,
            has_leader: m.current_leader.is_some(),
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            commit_index: self.shared.committed_index(&m),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            role: format!("{:?}", m.state),
        }
    }

    /// Every member of the current membership (voters first, by id), with replication lag
    /// when this node leads.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        grpc::members_of(&self.raft)
            .into_iter()
            .map(|mem| {
                let lag = m.replication.as_ref().map(|r| {
                    r.get(&mem.id).map_or(last, |matched| {
                        last.saturating_sub(matched.map_or(0, |l| l.index))
                    })
                });
                MemberInfo {
                    id: mem.id,
                    raft_addr: mem.raft_address,
                    http_addr: mem.http_address,
                    voter: mem.voter,
                    lag,
                }
            })
            .collect()
    }

    /// Quorum contact and fatal-stop tracking ([`Health::quorum`], [`Health::fatal`]).
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// Counters of the storage conditions that are retried rather than fatal (sled store only).
    pub fn storage_stats(&self) -> Option<&pgw_store::StorageStats> {
        self.storage_stats.as_deref()
    }

    /// Node-local counters (forwarded and pending writes, leader changes, snapshots).
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Size of the latest snapshot file, if any.
    pub fn snapshot_size(&self) -> Option<u64> {
        std::fs::metadata(pgw_store::snapshot_path(&self.shared.storage_path))
            .ok()
            .map(|m| m.len())
    }

    /// The openraft handle (for the gRPC services, metrics and tests).
    pub fn raft(&self) -> &PgwRaft {
        &self.raft
    }

    /// The channels to peers, shared with the Raft network.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The cluster port's TLS and roles, when `--cluster.tls.*` is set.
    pub fn cluster_security(&self) -> Option<&Arc<ClusterSecurity>> {
        self.security.as_ref()
    }

    /// Re-reads the cluster TLS certificate, key and CA (on SIGHUP). New connections, both
    /// accepted and dialed, use the new files; cached connections to peers are dropped so
    /// that the next call dials with the new certificate, while calls in flight finish on
    /// theirs: the node stays in the cluster. Without `--cluster.tls.*` this does nothing.
    ///
    /// # Errors
    /// A file is unusable: the previous certificates stay in use, and the message says which
    /// file and why.
    pub fn reload_cluster_tls(&self) -> Result<(), String> {
        let Some(sec) = &self.security else {
            return Ok(());
        };
        sec.reload()?;
        self.channels.reset();
        Ok(())
    }

    /// Refused cluster-port connections and requests by reason (all zero without
    /// `--cluster.tls.*`), for `pgw_cluster_refused_requests_total`.
    pub fn refused_cluster_requests(&self) -> Vec<(&'static str, u64)> {
        match &self.security {
            Some(sec) => sec.refused(),
            None => security::Refusal::ALL
                .iter()
                .map(|r| (r.label(), 0))
                .collect(),
        }
    }

    /// Stops Raft and the gRPC server and lets storage close cleanly. Writes already
    /// proposed finish or fail with [`WriteError::ShuttingDown`].
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        if let Some(t) = lock(&self.bootstrap_task).take() {
            t.abort();
        }
        let result = self
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"));
        self.watcher.abort();
        let _ = self.grpc_stop.send(true);
        let task = lock(&self.grpc_task).take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        result
    }
}

/// Locks `m`, also after a panic elsewhere poisoned it (the data is still consistent for
/// every use here).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// On a restart of an initialised node, `--cluster.peers` no longer decides the membership
/// (the Raft log does): warn when the flag and the stored membership differ, and say how to
/// change the membership instead.
fn warn_changed_peers(raft: &PgwRaft, flag: &BTreeMap<NodeId, String>) {
    let stored: BTreeMap<NodeId, String> = grpc::voter_ids(raft)
        .into_iter()
        .map(|(id, n)| (id, n.raft_addr))
        .collect();
    let differences = peer_differences(flag, &stored);
    if differences.is_empty() {
        return;
    }
    tracing::warn!(
        differences = %differences.join("; "),
        "--cluster.peers differs from the membership this node stored; the stored membership \
         stays in force (the flag only seeds a new cluster). Change membership with \
         `pgwctl member add <id> <host:port>` / `pgwctl member remove <id>` (docs/operations.md), \
         or make the flag match to silence this warning"
    );
}

/// The differences between `--cluster.peers` and the stored voters, one line each.
fn peer_differences(
    flag: &BTreeMap<NodeId, String>,
    stored: &BTreeMap<NodeId, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, addr) in flag {
        match stored.get(id) {
            None => out.push(format!("node {id} ({addr}) is in the flag but not a voter")),
            Some(s) if s != addr => out.push(format!(
                "node {id} is {addr} in the flag but {s} in the membership"
            )),
            Some(_) => {}
        }
    }
    for (id, addr) in stored {
        if !flag.contains_key(id) {
            out.push(format!("voter {id} ({addr}) is missing from the flag"));
        }
    }
    out
}

async fn initialize(
    raft: &PgwRaft,
    members: BTreeMap<NodeId, pgw_store::Node>,
) -> anyhow::Result<()> {
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Already initialised (a restart that raced us): the log is what counts.
        Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot initialise the cluster: {e}")),
    }
}

/// Static bootstrap: the lowest id initialises the cluster once a majority of the peers is
/// reachable and none of them reports an initialised membership; the others wait to be
/// contacted by the leader. Retries until initialised.
async fn static_bootstrap(
    raft: PgwRaft,
    channels: Channels,
    id: NodeId,
    me: pgw_store::Node,
    peers: BTreeMap<NodeId, String>,
) {
    let lowest = peers.keys().next().copied().unwrap_or(id);
    if lowest != id {
        tracing::info!(
            id,
            leader_candidate = lowest,
            "waiting for node {lowest} to initialise the cluster"
        );
        return;
    }
    let majority = peers.len() / 2 + 1;
    loop {
        if raft.is_initialized().await.unwrap_or(false) {
            return;
        }
        let mut reachable = 1; // this node
        let mut initialised_elsewhere = false;
        let mut http_addrs: BTreeMap<NodeId, String> = BTreeMap::new();
        for (peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
            match admin_status(&channels, addr).await {
                Ok(s) if !s.members.is_empty() => {
                    tracing::info!(
                        peer,
                        "peer already belongs to an initialised cluster; not initialising"
                    );
                    initialised_elsewhere = true;
                }
                Ok(s) => {
                    reachable += 1;
                    http_addrs.insert(*peer, s.http_address);
                }
                Err(e) => tracing::debug!(peer, error = %e, "peer not reachable yet"),
            }
        }
        if initialised_elsewhere {
            return;
        }
        if reachable >= majority {
            let members: BTreeMap<NodeId, pgw_store::Node> = peers
                .iter()
                .map(|(p, addr)| {
                    let node = if *p == id {
                        me.clone()
                    } else {
                        pgw_store::Node {
                            raft_addr: addr.clone(),
                            http_addr: http_addrs.get(p).cloned().unwrap_or_default(),
                        }
                    };
                    (*p, node)
                })
                .collect();
            match initialize(&raft, members).await {
                Ok(()) => {
                    tracing::info!(id, peers = peers.len(), "initialised the static cluster");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "initialising the cluster failed; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A peer's status, through the peer service (`PeerStatus`: a peer certificate may call it,
/// while `AdminService.Status` is for admin certificates).
async fn admin_status(
    channels: &Channels,
    addr: &str,
) -> Result<pgw_proto::v1::StatusReply, String> {
    let mut client = channels.raft_client(addr)?;
    match tokio::time::timeout(Duration::from_secs(1), client.peer_status(StatusRequest {})).await {
        Err(_) => Err(format!("{addr}: timed out")),
        Ok(Err(s)) => Err(format!("{addr}: {}", s.message())),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// Dynamic join: asks the given members (following leader hints) to add this node as a
/// learner and promote it once caught up. Retries until the node is a member.
async fn join(raft: PgwRaft, channels: Channels, me: Member, targets: Vec<String>) {
    let mut targets = targets;
    let mut i = 0usize;
    loop {
        if raft.is_initialized().await.unwrap_or(false) {
            let m = raft.metrics().borrow().clone();
            if m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == me.id)
            {
                tracing::info!(id = me.id, "joined the cluster as a voter");
                return;
            }
        }
        let Some(addr) = targets.get(i % targets.len().max(1)).cloned() else {
            tracing::error!("--cluster.join names no member");
            return;
        };
        i += 1;
        let req = AddLearnerRequest {
            member: Some(me.clone()),
            blocking: true,
            promote: true,
        };
        let mut client = match channels.get(&addr) {
            Ok(c) => AdminServiceClient::new(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot join");
                return;
            }
        };
        match tokio::time::timeout(Duration::from_secs(120), client.add_learner(req)).await {
            Ok(Ok(_)) => {
                tracing::info!(id = me.id, via = %addr, "added to the cluster");
                continue;
            }
            Ok(Err(s)) => {
                if let Some(leader) = s
                    .metadata()
                    .get("x-pgw-leader")
                    .and_then(|v| v.to_str().ok())
                {
                    if !targets.iter().any(|t| t == leader) {
                        targets.insert(0, leader.to_string());
                    }
                    i = targets.iter().position(|t| t == leader).unwrap_or(0);
                    continue;
                }
                tracing::warn!(via = %addr, error = %s.message(), "join attempt failed; retrying");
            }
            Err(_) => tracing::warn!(via = %addr, "join attempt timed out; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_differences_name_each_change() {
        let flag = BTreeMap::from([(1, "a:1".to_string()), (2, "b:1".to_string())]);
        let same = flag.clone();
        assert!(peer_differences(&flag, &same).is_empty());
        let stored = BTreeMap::from([(1, "a:1".to_string()), (3, "c:1".to_string())]);
        assert_eq!(
            peer_differences(&flag, &stored),
            vec![
                "node 2 (b:1) is in the flag but not a voter".to_string(),
                "voter 3 (c:1) is missing from the flag".to_string(),
            ]
        );
        let moved = BTreeMap::from([(1, "a:2".to_string()), (2, "b:1".to_string())]);
        assert_eq!(
            peer_differences(&flag, &moved),
            vec!["node 1 is a:1 in the flag but a:2 in the membership".to_string()]
        );
    }
}
