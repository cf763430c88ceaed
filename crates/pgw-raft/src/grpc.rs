//! The server side of the internal gRPC API: `pgw.v1.RaftService` (Raft RPCs, snapshot
//! streaming, forwarded writes) and `pgw.v1.AdminService` (membership, status, snapshots,
//! backup and restore).
//!
//! # Protocol safety
//! These services drive consensus and membership. They are for cluster members and the admin
//! CLI only. With `--cluster.tls.*` the caller's certificate and role are checked before any
//! handler runs ([`crate::security`]); without, there is no authentication: never expose the
//! cluster port to clients then.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Snapshot, SnapshotMeta, Vote};
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
    /// For `PeerStatus`; `None`: it answers UNIMPLEMENTED.
    node: Option<Arc<crate::NodeShared>>,
}

impl RaftGrpc {
    /// Serves `raft`.
    pub fn new(raft: PgwRaft) -> Self {
        RaftGrpc { raft, node: None }
    }

    /// Serves `raft`, and `PeerStatus` from `node`.
    pub(crate) fn with_node(raft: PgwRaft, node: Arc<crate::NodeShared>) -> Self {
        RaftGrpc {
            raft,
            node: Some(node),
        }
    }
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
        let mut stream = req.into_inner();
        let mut vote: Option<Vote<NodeId>> = None;
        let mut meta: Option<SnapshotMeta<NodeId, Node>> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if vote.is_none() {
                vote = Some(codec::decode(&chunk.vote).map_err(bad_request)?);
                meta = Some(codec::decode(&chunk.meta).map_err(bad_request)?);
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
        let req = req.into_inner();
        let cmd = Command::decode(&req.command).map_err(|e| bad_request(e.to_string()))?;
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
        match self.raft.client_write(cmd).await {
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
        match &self.node {
            Some(node) => Ok(Response::new(status_reply(&self.raft, node))),
            None => Err(Status::unimplemented("PeerStatus is not served here")),
        }
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
        let mut stream = req.into_inner();
        let mut header: Option<(u64, u32, bool)> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            let (total, _, _) =
                *header.get_or_insert((chunk.total_size, chunk.data_crc32, chunk.force));
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
            CommandResponse::Rejected(msg) => Err(Status::invalid_argument(msg)),
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
