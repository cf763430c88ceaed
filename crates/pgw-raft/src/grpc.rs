//! The server side of the internal gRPC API: `pgw.v1.RaftService` (Raft RPCs, snapshot
//! streaming, forwarded writes) and `pgw.v1.AdminService` (membership, status, snapshots).
//!
//! # Protocol safety
//! These services drive consensus and membership. They are for trusted cluster members and
//! the admin CLI only, and have no authentication: never expose the cluster port to clients.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Snapshot, SnapshotMeta, Vote};
use pgw_core::Command;
use pgw_proto::v1::admin_service_server::AdminService;
use pgw_proto::v1::raft_service_server::RaftService;
use pgw_proto::v1::{
    AddLearnerRequest, ChangeMembershipRequest, ForwardWriteReply, ForwardWriteRequest, Member,
    MembershipReply, RaftReply, RaftRequest, ReadIndexReply, ReadIndexRequest, SnapshotChunk, StatusReply, StatusRequest,
    TriggerSnapshotReply, TriggerSnapshotRequest,
};
use pgw_store::{Node, NodeId, TypeConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::{PgwRaft, codec};

/// Encodes an openraft result as a [`RaftReply`].
fn reply<T: serde::Serialize, E: serde::Serialize>(r: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let out = match r {
        Ok(v) => RaftReply { ok: codec::encode(&v).map_err(Status::internal)?.into(), error: Default::default() },
        Err(e) => RaftReply { ok: Default::default(), error: codec::encode(&e).map_err(Status::internal)?.into() },
    };
    Ok(Response::new(out))
}

fn bad_request(e: String) -> Status {
    Status::invalid_argument(e)
}

/// The Raft service of one node.
pub struct RaftGrpc {
    raft: PgwRaft,
}

impl RaftGrpc {
    /// Serves `raft`.
    pub fn new(raft: PgwRaft) -> Self {
        RaftGrpc { raft }
    }
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = codec::decode(&req.into_inner().payload).map_err(bad_request)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = codec::decode(&req.into_inner().payload).map_err(bad_request)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftReply>, Status> {
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
        let snapshot = Snapshot::<TypeConfig> { meta, snapshot: Box::new(Cursor::new(data)) };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn forward_write(
        &self,
        req: Request<ForwardWriteRequest>,
    ) -> Result<Response<ForwardWriteReply>, Status> {
        let cmd = Command::decode(&req.into_inner().command).map_err(|e| bad_request(e.to_string()))?;
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(Response::new(ForwardWriteReply {
                response: resp.data.encode().into(),
                log_index: resp.log_id.index,
                ..Default::default()
            })),
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

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        match read_index(&self.raft).await.map_err(Status::unavailable)? {
            Ok(index) => Ok(Response::new(ReadIndexReply { index, ..Default::default() })),
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

/// The admin service of one node.
pub struct AdminGrpc {
    raft: PgwRaft,
    node: Arc<crate::NodeShared>,
}

impl AdminGrpc {
    /// Serves `raft`.
    pub(crate) fn new(raft: PgwRaft, node: Arc<crate::NodeShared>) -> Self {
        AdminGrpc { raft, node }
    }

    fn not_leader(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.and_then(|id| {
            m.membership_config.membership().get_node(&id).map(|n| (id, n.raft_addr.clone()))
        });
        let mut status = Status::failed_precondition(match &leader {
            Some((id, addr)) => format!("this node does not lead; the leader is node {id} at {addr}"),
            None => "this node does not lead and no leader is known; retry shortly".to_string(),
        });
        if let Some((_, addr)) = leader {
            if let Ok(v) = addr.parse() {
                status.metadata_mut().insert("x-pgw-leader", v);
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
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let mut lag = std::collections::HashMap::new();
        let last = m.last_log_index.unwrap_or(0);
        if let Some(rep) = &m.replication {
            for (id, matched) in rep {
                lag.insert(*id, last.saturating_sub(matched.map_or(0, |l| l.index)));
            }
        }
        Ok(Response::new(StatusReply {
            node_id: m.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            commit_index: self.node.committed_index(&m),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members: self.members(),
            lag,
            last_log_index: last,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            http_address: self.node.http_addr.clone(),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let req = req.into_inner();
        let member = req.member.ok_or_else(|| Status::invalid_argument("member is required"))?;
        if member.id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved; use ids from 1"));
        }
        if self.raft.metrics().borrow().current_leader != Some(self.node.id) {
            return Err(self.not_leader());
        }
        let already_voter = voter_ids(&self.raft).contains_key(&member.id);
        if !already_voter {
            let node = Node { raft_addr: member.raft_address, http_addr: member.http_address };
            // Adding a node that is already a member changes nothing (idempotent).
            self.raft
                .add_learner(member.id, node, req.blocking || req.promote)
                .await
                .map_err(write_error)?;
            if req.promote {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([member.id])), false)
                    .await
                    .map_err(write_error)?;
            }
        }
        Ok(Response::new(MembershipReply { members: self.members() }))
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
            return Err(Status::invalid_argument("the new membership needs at least one voter"));
        }
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), req.retain)
            .await
            .map_err(write_error)?;
        if !req.remove_nodes.is_empty() {
            let gone: BTreeSet<NodeId> = req.remove_nodes.into_iter().collect();
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(write_error)?;
        }
        Ok(Response::new(MembershipReply { members: self.members() }))
    }

    async fn trigger_snapshot(
        &self,
        _req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotReply>, Status> {
        let before = self.raft.metrics().borrow().snapshot.map_or(0, |l| l.index);
        let applied = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        self.raft.trigger().snapshot().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(std::time::Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.map_or(0, |l| l.index) >= applied && (applied > before || applied == before),
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
        Ok(Response::new(TriggerSnapshotReply { snapshot_index: m.snapshot.map_or(0, |l| l.index) }))
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
