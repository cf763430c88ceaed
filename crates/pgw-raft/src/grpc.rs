//! The server side of the internal gRPC API: `pgw.v1.RaftService` (Raft RPCs, snapshot
//! streaming, forwarded writes) and `pgw.v1.AdminService` (membership, status, snapshots,
//! backup and restore).
//!
//! # Protocol safety
//! These services drive consensus and membership. They are for cluster members and the admin
//! CLI only. With `--cluster.tls.*` the caller's certificate and role are checked before any
//! handler runs ([`crate::security`]); without, there is no authentication: never expose the
//! cluster port to clients then. Even so they trust nothing they decode:
//!
//! - `ForwardWrite` admits a command exactly as the node's HTTP API would
//!   ([`pgw_core::policy::check_command`]): a refused one gets a gRPC error carrying the reason
//!   ([`REFUSED_METADATA`]), is logged with the peer's address, counted, and changes nothing;
//! - snapshot and restore streams are bounded by `--cluster.max-snapshot-bytes`;
//! - `AddLearner` (with promote) and `ChangeMembership` enforce pgwctl's quorum-safety rules
//!   in the server (`AdminGrpc::check_change`); `force` overrides only the lag rule.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Snapshot, SnapshotMeta, Vote};
use pgw_core::policy::{Reason, Refusal};
use pgw_core::{Command, CommandResponse, GroupStore};
use pgw_proto::v1::admin_service_server::AdminService;
use pgw_proto::v1::raft_service_server::RaftService;
use pgw_proto::v1::{
    AddLearnerRequest, BackupChunk, BackupRequest, ChangeMembershipRequest, ForwardWriteReply,
    ForwardWriteRequest, Member, MembershipReply, RaftReply, RaftRequest, ReadIndexReply,
    ReadIndexRequest, RestoreChunk, RestoreReply, SnapshotChunk, StatusReply, StatusRequest,
    TriggerSnapshotReply, TriggerSnapshotRequest,
};
use pgw_store::{Node, NodeId, SharedStore, TypeConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::{PgwRaft, codec};

/// Encodes an openraft result as a [`RaftReply`].
fn reply<T: serde::Serialize, E: serde::Serialize>(
    r: Result<T, E>,
) -> Result<Response<RaftReply>, Status> {
    let out = match r {
        Ok(v) => RaftReply {
            ok: codec::encode(&v).map_err(Status::internal)?.into(),
            error: Default::default(),
        },
        Err(e) => RaftReply {
            ok: Default::default(),
            error: codec::encode(&e).map_err(Status::internal)?.into(),
        },
    };
    Ok(Response::new(out))
}

fn bad_request(e: String) -> Status {
    Status::invalid_argument(e)
}

/// The Raft service of one node.
pub struct RaftGrpc {
    raft: PgwRaft,
    node: Arc<crate::NodeShared>,
}

impl RaftGrpc {
    /// Serves `raft`, admitting forwarded writes under the node's policy.
    pub(crate) fn new(raft: PgwRaft, node: Arc<crate::NodeShared>) -> Self {
        RaftGrpc { raft, node }
    }

    /// Refuses a forwarded command: logs it with the peer's address, counts it, and builds
    /// the gRPC error that carries the reason to the forwarding node.
    fn refuse(&self, peer: &str, refusal: Refusal) -> Status {
        tracing::warn!(
            peer,
            reason = refusal.reason.as_str(),
            error = %refusal.message,
            "refused a forwarded write; nothing was changed"
        );
        self.node.counters.count_refused_forward(refusal.reason);
        refusal_status(&refusal)
    }
}

/// Forwarded commands larger than this are decoded and checked on the blocking pool.
const OFFLOAD_BYTES: usize = 256 * 1024;

/// Metadata key of a refused forwarded write: the [`Reason`] label. The forwarding node
/// relays the refusal to its client ([`refusal_of`]).
pub const REFUSED_METADATA: &str = "x-pgw-refused";

/// The gRPC error of a refused forwarded write.
fn refusal_status(r: &Refusal) -> Status {
    let code = match r.reason.http_status() {
        413 => tonic::Code::ResourceExhausted,
        403 => tonic::Code::PermissionDenied,
        _ => tonic::Code::InvalidArgument,
    };
    let mut status = Status::new(code, format!("refused: {}", r.message));
    status.metadata_mut().insert(
        REFUSED_METADATA,
        tonic::metadata::MetadataValue::from_static(r.reason.as_str()),
    );
    status
}

/// The refusal a [`REFUSED_METADATA`] error carries, if it is one.
pub fn refusal_of(s: &Status) -> Option<Refusal> {
    let reason = s
        .metadata()
        .get(REFUSED_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(Reason::from_label)?;
    let message = s.message();
    Some(Refusal {
        reason,
        message: message
            .strip_prefix("refused: ")
            .unwrap_or(message)
            .to_string(),
    })
}

/// The peer's address for logs ("unknown" when the transport does not tell).
fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// Metadata key set on the UNAVAILABLE answer of a leader that has no contact with a quorum:
/// the age of its last quorum contact in milliseconds. The forwarding node answers its client
/// 503 at once instead of retrying until its write timeout.
pub const NO_QUORUM_METADATA: &str = "x-pgw-no-quorum-ms";

/// The UNAVAILABLE status of a leader cut off from its quorum for `age`.
fn no_quorum(age: Duration) -> Status {
    let mut status = Status::unavailable(format!(
        "this node leads but has had no contact with a quorum for {:.1}s; retry later",
        age.as_secs_f64()
    ));
    if let Ok(v) = age.as_millis().to_string().parse() {
        status.metadata_mut().insert(NO_QUORUM_METADATA, v);
    }
    status
}

/// The quorum-contact age a leader named in a [`no_quorum`] status, if `s` is one.
pub(crate) fn no_quorum_age(s: &Status) -> Option<Duration> {
    let ms = s.metadata().get(NO_QUORUM_METADATA)?.to_str().ok()?;
    ms.parse().ok().map(Duration::from_millis)
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = codec::decode(&req.into_inner().payload).map_err(bad_request)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = codec::decode(&req.into_inner().payload).map_err(bad_request)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let peer = peer_of(&req);
        let mut stream = req.into_inner();
        let mut vote: Option<Vote<NodeId>> = None;
        let mut meta: Option<SnapshotMeta<NodeId, Node>> = None;
        let mut data = Vec::new();
        let max = self.node.max_snapshot_bytes;
        while let Some(chunk) = stream.message().await? {
            if vote.is_none() {
                vote = Some(codec::decode(&chunk.vote).map_err(bad_request)?);
                meta = Some(codec::decode(&chunk.meta).map_err(bad_request)?);
            }
            if (data.len() + chunk.data.len()) as u64 > max {
                tracing::warn!(
                    peer,
                    max,
                    "refused a snapshot larger than --cluster.max-snapshot-bytes"
                );
                return Err(Status::resource_exhausted(format!(
                    "the snapshot is larger than {max} bytes, this node's \
                     --cluster.max-snapshot-bytes; raise it on every node"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let (Some(vote), Some(meta)) = (vote, meta) else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let snapshot = Snapshot::<TypeConfig> {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn forward_write(
        &self,
        req: Request<ForwardWriteRequest>,
    ) -> Result<Response<ForwardWriteReply>, Status> {
        let peer = peer_of(&req);
        let req = req.into_inner();
        // Nothing decoded here is trusted: the command is admitted exactly as if it had come
        // through this node's HTTP API (pgw_core::policy::check_command) before it is proposed.
        let max = self.node.policy.max_command_bytes();
        if req.command.len() > max {
            return Err(self.refuse(
                &peer,
                Refusal {
                    reason: Reason::PayloadTooLarge,
                    message: format!(
                        "the forwarded command has {} bytes, more than {max} (derived from \
                         --push.max-body-bytes)",
                        req.command.len()
                    ),
                },
            ));
        }
        let policy = self.node.policy;
        let bytes = req.command.clone();
        let admit = move || -> Result<Command, Refusal> {
            let cmd = Command::decode(&bytes).map_err(|e| Refusal {
                reason: Reason::UndecodablePayload,
                message: format!("the forwarded command does not decode: {e}"),
            })?;
            pgw_core::policy::check_command(&cmd, &policy)?;
            Ok(cmd)
        };
        // A large command is decoded and checked on the blocking pool, as the HTTP layer
        // parses large bodies. (Small ones inline: a simulated runtime has no blocking pool
        // whose timing it controls.)
        let admitted = if req.command.len() > OFFLOAD_BYTES {
            tokio::task::spawn_blocking(admit).await.map_err(|e| {
                Status::internal(format!("checking the forwarded write failed: {e}"))
            })?
        } else {
            admit()
        };
        let cmd = match admitted {
            Ok(cmd) => cmd,
            Err(r) => return Err(self.refuse(&peer, r)),
        };
        // Fencing: only the leader of the term the sender addressed takes the write. A copy
        // that arrives late (held in a partition) after the sender retried it elsewhere finds
        // this node in a newer term, or not leading, and is refused: applying it now would put
        // an acknowledged write after writes that were acknowledged later (tests/sim,
        // stale-forward).
        if req.term != 0 {
            let (leads, term, leader) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let leader = m.current_leader.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| (id, n.raft_addr.clone()))
                });
                (
                    m.state == openraft::ServerState::Leader,
                    m.current_term,
                    leader,
                )
            };
            if !leads || term != req.term {
                tracing::debug!(
                    addressed = req.term,
                    term,
                    "refusing a forwarded write addressed to another term"
                );
                let (leader_id, leader_address) = leader.unwrap_or_default();
                return Ok(Response::new(ForwardWriteReply {
                    not_leader: true,
                    leader_id,
                    leader_address,
                    ..Default::default()
                }));
            }
        }
        if let crate::Quorum::Lost(age) = self.node.health.quorum() {
            return Err(no_quorum(age));
        }
        let written = tokio::select! {
            r = self.raft.client_write(cmd) => r,
            age = self.node.health.wait_quorum_lost() => return Err(no_quorum(age)),
        };
        match written {
            Ok(resp) => {
                pgw_store::crash_point!("pgw-raft::forward::after-commit");
                Ok(Response::new(ForwardWriteReply {
                    response: resp.data.encode().into(),
                    log_index: resp.log_id.index,
                    ..Default::default()
                }))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Response::new(ForwardWriteReply {
                    not_leader: true,
                    leader_id: f.leader_id.unwrap_or(0),
                    leader_address: f.leader_node.map(|n| n.raft_addr).unwrap_or_default(),
                    ..Default::default()
                }))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn peer_status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(status_reply(&self.raft, &self.node)))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        match read_index(&self.raft).await.map_err(Status::unavailable)? {
            Ok(index) => Ok(Response::new(ReadIndexReply {
                index,
                ..Default::default()
            })),
            Err((leader_id, leader_address)) => Ok(Response::new(ReadIndexReply {
                not_leader: true,
                leader_id,
                leader_address,
                ..Default::default()
            })),
        }
    }
}

/// Asks the local Raft for a read index: `Ok(Ok(index))` when this node leads, `Ok(Err(hint))`
/// with the leader's (id, address) when it does not.
pub async fn read_index(raft: &PgwRaft) -> Result<Result<u64, (u64, String)>, String> {
    use openraft::error::CheckIsLeaderError;
    match raft.ensure_linearizable().await {
        Ok(log_id) => Ok(Ok(log_id.map_or(0, |l| l.index))),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Ok(Err((
            f.leader_id.unwrap_or(0),
            f.leader_node.map(|n| n.raft_addr).unwrap_or_default(),
        ))),
        Err(e) => Err(e.to_string()),
    }
}

/// Size of one data chunk of the `Backup` and `Restore` streams.
pub const BACKUP_CHUNK: usize = 1 << 20;

/// Metadata key naming the leader's gRPC address on a FAILED_PRECONDITION from a non-leader.
pub const LEADER_METADATA: &str = "x-pgw-leader";

/// Metadata key set (to "1") on a FAILED_PRECONDITION from a node that knows no leader: the
/// caller should retry shortly (an election is under way, or no quorum is reachable).
pub const NO_LEADER_METADATA: &str = "x-pgw-no-leader";

/// The admin service of one node.
pub struct AdminGrpc {
    raft: PgwRaft,
    node: Arc<crate::NodeShared>,
    store: SharedStore,
}

/// The server stream of `Backup`.
pub type BackupStream =
    Pin<Box<dyn futures::Stream<Item = Result<BackupChunk, Status>> + Send + 'static>>;

impl AdminGrpc {
    /// Serves `raft`; `store` is the applied state that `Backup` copies.
    pub(crate) fn new(raft: PgwRaft, node: Arc<crate::NodeShared>, store: SharedStore) -> Self {
        AdminGrpc { raft, node, store }
    }

    /// Refuses a restore unless this node leads a cluster whose only voter is itself.
    fn check_restorable(&self) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if voters.is_empty() {
            return Err(Status::failed_precondition(format!(
                "node {} has not initialised a cluster (it waits to be added to one); restore \
                 into a node started without --cluster.peers/--cluster.join",
                self.node.id
            )));
        }
        if voters != [self.node.id] {
            let list = voters
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Status::failed_precondition(format!(
                "node {} belongs to a cluster of {} voters ({list}); a backup can only be restored \
                 into a fresh single-node cluster: start one pgw with an empty --storage.path and \
                 no --cluster.peers/--cluster.join, restore into it, then add the other nodes \
                 with `pgwctl member add`",
                self.node.id,
                voters.len()
            )));
        }
        if m.current_leader != Some(self.node.id) {
            return Err(self.not_leader());
        }
        Ok(())
    }

    /// Whether the local store holds no group.
    fn store_len(&self) -> usize {
        match self.store.read() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    fn not_leader(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| (id, n.raft_addr.clone()))
        });
        let mut status = Status::failed_precondition(match &leader {
            Some((id, addr)) => {
                format!("this node does not lead; the leader is node {id} at {addr}")
            }
            None => "this node does not lead and no leader is known; retry shortly".to_string(),
        });
        match leader {
            Some((_, addr)) => {
                if let Ok(v) = addr.parse() {
                    status.metadata_mut().insert(LEADER_METADATA, v);
                }
            }
            None => {
                status.metadata_mut().insert(
                    NO_LEADER_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
            }
        }
        status
    }

    fn members(&self) -> Vec<Member> {
        members_of(&self.raft)
    }

    /// Refuses an admin request: logs it with the peer's address and counts it.
    fn refuse_admin(&self, peer: &str, what: &str, status: Status) -> Status {
        tracing::warn!(peer, what, error = %status.message(), "refused an admin request; nothing was changed");
        self.node
            .counters
            .refused_admin
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        status
    }

    /// The quorum-safety rules of a change of the voters from `old` to `new`, as pgwctl
    /// applies them (same messages), enforced here so that a raw RPC cannot do what pgwctl
    /// refuses:
    ///
    /// - a new voter must already be a member (a learner) and answer its status now;
    /// - a new voter may lag the leader by at most `max_lag` entries (0: 1000), unless `force`;
    /// - both the old and the new voter set must keep a reachable majority
    ///   ([`pgw_proto::membership::check_quorum`]), and the new one must not be empty.
    ///
    /// `force` overrides only the lag rule: a lagging voter catches up on its own, while an
    /// unreachable one or a lost quorum blocks every write until an operator intervenes.
    async fn check_change(
        &self,
        old: &BTreeSet<NodeId>,
        new: &BTreeSet<NodeId>,
        force: bool,
        max_lag: u64,
    ) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let added: Vec<NodeId> = new.difference(old).copied().collect();
        let removed: Vec<NodeId> = old.difference(new).copied().collect();
        let what = match (added.first(), removed.first()) {
            (Some(id), _) => format!("promote node {id}"),
            (None, Some(id)) => format!("remove node {id}"),
            (None, None) => "change the voters".to_string(),
        };
        for id in &added {
            if membership.get_node(id).is_none() {
                return Err(Status::failed_precondition(format!(
                    "node {id} is not a member; add it first: `pgwctl member add {id} HOST:PORT --wait`"
                )));
            }
        }
        // Who answers now: this node, and every member of either set that answers its status.
        let mut reachable = BTreeSet::from([self.node.id]);
        let mut errors: BTreeMap<NodeId, String> = BTreeMap::new();
        let asks = old
            .union(new)
            .filter(|id| **id != self.node.id)
            .filter_map(|id| membership.get_node(id).map(|n| (*id, n.raft_addr.clone())))
            .map(|(id, addr)| {
                let channels = self.node.channels.clone();
                async move { (id, crate::admin_status(&channels, &addr).await) }
            });
        for (id, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(_) => {
                    reachable.insert(id);
                }
                Err(e) => {
                    errors.insert(id, e);
                }
            }
        }
        let last = m.last_log_index.unwrap_or(0);
        let max_lag = if max_lag == 0 { 1000 } else { max_lag };
        for id in &added {
            if let Some(e) = errors.get(id) {
                return Err(Status::failed_precondition(format!(
                    "refusing to promote node {id}: it is not reachable ({e}), and a voter that is \
                     down counts against the quorum. Start it and wait until it has caught up \
                     (--force does not override this)"
                )));
            }
            if force {
                continue;
            }
            let lag = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)));
            match lag {
                Some(lag) if lag > max_lag => {
                    let addr = membership
                        .get_node(id)
                        .map(|n| n.raft_addr.clone())
                        .unwrap_or_default();
                    return Err(Status::failed_precondition(format!(
                        "refusing to promote node {id}: it is {lag} entries behind the leader (at \
                         most {max_lag} allowed). Wait until it has caught up (`pgwctl member add \
                         {id} {addr} --wait` waits and promotes), or pass --force"
                    )));
                }
                Some(_) => {}
                None => {
                    return Err(Status::failed_precondition(format!(
                        "refusing to promote node {id}: the leader does not report its replication \
                         lag; check `pgwctl status`, or pass --force"
                    )));
                }
            }
        }
        pgw_proto::membership::check_quorum(old, new, &reachable).map_err(|e| {
            Status::failed_precondition(format!(
                "refusing to {what}: {e} (the server enforces this; --force does not override it)"
            ))
        })
    }
}

/// Every member of the current membership, voters first, by id.
pub fn members_of(raft: &PgwRaft) -> Vec<Member> {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut out: Vec<Member> = membership
        .nodes()
        .map(|(id, n)| Member {
            id: *id,
            raft_address: n.raft_addr.clone(),
            http_address: n.http_addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    out.sort_by_key(|m| (!m.voter, m.id));
    out
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> Status {
    use openraft::error::ChangeMembershipError;
    match e {
        // Another change is still being committed: retrying shortly is the fix.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => Status::unavailable(format!("{p}; retry in a moment")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(status_reply(&self.raft, &self.node)))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let peer = peer_of(&req);
        let req = req.into_inner();
        let member = req
            .member
            .ok_or_else(|| Status::invalid_argument("member is required"))?;
        if member.id == 0 {
            return Err(Status::invalid_argument(
                "node id 0 is reserved; use ids from 1",
            ));
        }
        if self.raft.metrics().borrow().current_leader != Some(self.node.id) {
            return Err(self.not_leader());
        }
        let already_voter = voter_ids(&self.raft).contains_key(&member.id);
        if !already_voter {
            if req.promote
                && let Err(e) = crate::admin_status(&self.node.channels, &member.raft_address).await
            {
                // Checked before adding: a blocking add waits for the learner to catch up,
                // which an unreachable node never does.
                return Err(self.refuse_admin(
                    &peer,
                    "add_learner",
                    Status::failed_precondition(format!(
                        "refusing to promote node {}: it is not reachable ({e}), and a voter \
                         that is down counts against the quorum. Start it and wait until it has \
                         caught up (--force does not override this)",
                        member.id
                    )),
                ));
            }
            let node = Node {
                raft_addr: member.raft_address,
                http_addr: member.http_address,
            };
            // Adding a node that is already a member changes nothing (idempotent).
            self.raft
                .add_learner(member.id, node, req.blocking || req.promote)
                .await
                .map_err(write_error)?;
            if req.promote {
                let old: BTreeSet<NodeId> = voter_ids(&self.raft).into_keys().collect();
                let mut new = old.clone();
                new.insert(member.id);
                if let Err(s) = self.check_change(&old, &new, false, 0).await {
                    return Err(self.refuse_admin(&peer, "add_learner", s));
                }
                self.raft
                    .change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([member.id])),
                        false,
                    )
                    .await
                    .map_err(write_error)?;
            }
        }
        Ok(Response::new(MembershipReply {
            members: self.members(),
        }))
    }

    async fn change_membership(
        &self,
        req: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let peer = peer_of(&req);
        let req = req.into_inner();
        if self.raft.metrics().borrow().current_leader != Some(self.node.id) {
            return Err(self.not_leader());
        }
        let voters: BTreeSet<NodeId> = req.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument(
                "the new membership needs at least one voter",
            ));
        }
        // Only change the voters when they change (removing a learner keeps them), so that a
        // retried request converges instead of proposing a new entry each time.
        let current: BTreeSet<NodeId> = voter_ids(&self.raft).into_keys().collect();
        if voters != current {
            if let Err(s) = self
                .check_change(&current, &voters, req.force, req.max_lag)
                .await
            {
                return Err(self.refuse_admin(&peer, "change_membership", s));
            }
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), req.retain)
                .await
                .map_err(write_error)?;
        }
        // Voters removed without `retain` are already gone; only remove what is left. When
        // this node removed itself it no longer leads, and there is nothing left to do.
        let present: BTreeSet<NodeId> = members_of(&self.raft).into_iter().map(|m| m.id).collect();
        let gone: BTreeSet<NodeId> = req
            .remove_nodes
            .into_iter()
            .filter(|id| present.contains(id))
            .collect();
        if !gone.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(write_error)?;
        }
        Ok(Response::new(MembershipReply {
            members: self.members(),
        }))
    }

    async fn trigger_snapshot(
        &self,
        _req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotReply>, Status> {
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(std::time::Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.map_or(0, |l| l.index) >= applied,
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
        Ok(Response::new(TriggerSnapshotReply {
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }))
    }

    type BackupStream = BackupStream;

    /// Confirms leadership with a quorum (a read index; skipped when `local` is asked), waits
    /// until that index is applied here, then encodes the applied store under its read lock
    /// (one consistent moment) and streams it in [`BACKUP_CHUNK`]-sized pieces.
    async fn backup(&self, req: Request<BackupRequest>) -> Result<Response<BackupStream>, Status> {
        if !req.into_inner().local {
            let index = match read_index(&self.raft).await.map_err(|e| {
                Status::unavailable(format!(
                    "node {} cannot confirm its leadership: {e}",
                    self.node.id
                ))
            })? {
                Ok(index) => index,
                Err(_) => return Err(self.not_leader()),
            };
            self.raft
                .wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(Some(index), "backup: read index applied")
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "node {} did not apply index {index}: {e}",
                        self.node.id
                    ))
                })?;
        }
        let raft = self.raft.clone();
        let store = self.store.clone();
        let (data, applied, groups) = tokio::task::spawn_blocking(move || {
            let guard = match store.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            // Nothing is applied while the read lock is held, and openraft publishes an applied
            // index only after the state machine applied it: the store holds at least this.
            let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
            (guard.encode_snapshot(), applied, guard.len() as u64)
        })
        .await
        .map_err(|e| Status::internal(format!("encoding the backup failed: {e}")))?;
        let term = self.raft.metrics().borrow().current_term;
        let header = BackupChunk {
            applied_index: applied,
            term,
            leader_id: self.node.id,
            total_size: data.len() as u64,
            data_crc32: crc32fast::hash(&data),
            groups,
            data: Default::default(),
        };
        let data = bytes::Bytes::from(data);
        let mut chunks = Vec::with_capacity(data.len() / BACKUP_CHUNK + 1);
        let mut off = 0;
        loop {
            let end = (off + BACKUP_CHUNK).min(data.len());
            chunks.push(data.slice(off..end));
            off = end;
            if off >= data.len() {
                break;
            }
        }
        tracing::info!(applied, bytes = data.len(), groups, "streaming a backup");
        let mut header = Some(header);
        let stream = futures::stream::iter(chunks.into_iter().map(move |piece| {
            let mut chunk = header.take().unwrap_or_default();
            chunk.data = piece;
            Ok(chunk)
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    /// Receives a backup, checks its size and CRC, decodes it (so a bad file changes nothing),
    /// and proposes it as one [`Command::Replace`].
    async fn restore(
        &self,
        req: Request<Streaming<RestoreChunk>>,
    ) -> Result<Response<RestoreReply>, Status> {
        self.check_restorable()?;
        let peer = peer_of(&req);
        let mut stream = req.into_inner();
        let mut header: Option<(u64, u32, bool)> = None;
        let mut data = Vec::new();
        let max = self.node.max_snapshot_bytes;
        while let Some(chunk) = stream.message().await? {
            let (total, _, _) =
                *header.get_or_insert((chunk.total_size, chunk.data_crc32, chunk.force));
            if total > max {
                return Err(self.refuse_admin(
                    &peer,
                    "restore",
                    Status::resource_exhausted(format!(
                        "the backup has {total} bytes, more than {max}, this node's \
                         --cluster.max-snapshot-bytes; raise it to restore this backup"
                    )),
                ));
            }
            if data.is_empty() {
                data.reserve(usize::try_from(total.min(1 << 30)).unwrap_or(0));
            }
            data.extend_from_slice(&chunk.data);
            if data.len() as u64 > total {
                return Err(Status::invalid_argument(format!(
                    "the restore stream carries more than the announced {total} bytes"
                )));
            }
        }
        let Some((total, crc, force)) = header else {
            return Err(Status::invalid_argument("empty restore stream"));
        };
        if data.len() as u64 != total {
            return Err(Status::invalid_argument(format!(
                "the restore stream ended after {} of {total} bytes; run the restore again",
                data.len()
            )));
        }
        if crc32fast::hash(&data) != crc {
            return Err(Status::data_loss(
                "the restore data does not match its CRC-32; run the restore again",
            ));
        }
        let (data, groups, series) = tokio::task::spawn_blocking(move || {
            GroupStore::decode_snapshot(&data)
                .map(|s| (s.len() as u64, s.series_count() as u64))
                .map(|(g, n)| (data, g, n))
        })
        .await
        .map_err(|e| Status::internal(format!("decoding the backup failed: {e}")))?
        .map_err(|e| {
            Status::invalid_argument(format!("the backup is not a valid pgw store: {e}"))
        })?;
        // Membership or leadership may have changed while the data arrived.
        self.check_restorable()?;
        let held = self.store_len();
        if held > 0 && !force {
            return Err(Status::failed_precondition(format!(
                "node {} already holds {held} groups; restore only into a fresh node, or pass --force \
                 to replace them",
                self.node.id
            )));
        }
        let resp = self
            .raft
            .client_write(Command::Replace { snapshot: data })
            .await
            .map_err(write_error)?;
        match resp.data {
            CommandResponse::Applied => {
                tracing::info!(
                    groups,
                    series,
                    log_index = resp.log_id.index,
                    "restored a backup"
                );
                Ok(Response::new(RestoreReply {
                    log_index: resp.log_id.index,
                    groups,
                    series,
                }))
            }
            CommandResponse::Rejected(msg) | CommandResponse::Refused { message: msg, .. } => {
                Err(Status::invalid_argument(msg))
            }
            CommandResponse::Batch(_) => Err(Status::internal("unexpected batch response")),
        }
    }
}

/// This node's status (`AdminService.Status`, `RaftService.PeerStatus`).
fn status_reply(raft: &PgwRaft, node: &crate::NodeShared) -> StatusReply {
    let m = raft.metrics().borrow().clone();
    let mut lag = std::collections::HashMap::new();
    let last = m.last_log_index.unwrap_or(0);
    if let Some(rep) = &m.replication {
        for (id, matched) in rep {
            lag.insert(*id, last.saturating_sub(matched.map_or(0, |l| l.index)));
        }
    }
    StatusReply {
        node_id: m.id,
        role: format!("{:?}", m.state),
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        has_leader: m.current_leader.is_some(),
        commit_index: node.committed_index(&m),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        members: members_of(raft),
        lag,
        last_log_index: last,
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        http_address: node.http_addr.clone(),
    }
}

/// Ids of the voters of the current membership.
pub fn voter_ids(raft: &PgwRaft) -> BTreeMap<NodeId, Node> {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_travels_in_its_status() {
        for reason in Reason::ALL {
            let r = Refusal {
                reason,
                message: format!("because {}", reason.as_str()),
            };
            let s = refusal_status(&r);
            assert!(s.message().starts_with("refused: "), "{s:?}");
            assert_eq!(refusal_of(&s), Some(r));
        }
        assert_eq!(refusal_of(&Status::unavailable("no leader")), None);
    }
}
