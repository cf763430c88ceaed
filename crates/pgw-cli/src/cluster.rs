//! The cluster as pgwctl sees it: every member's own `Status`, the leader's replication lag,
//! the health verdict, and the quorum-safety checks of membership changes.

pub use pgw_proto::membership::{check_quorum, list, majority};
use std::collections::BTreeSet;

use pgw_proto::v1::{Member, StatusReply};
use serde::Serialize;

use crate::client::Client;
use crate::error::Result;

/// A member and what it answered.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// The member as recorded in the Raft membership.
    pub member: Member,
    /// Its own `Status`, or why it could not be asked.
    pub status: std::result::Result<StatusReply, String>,
}

impl MemberView {
    /// The HTTP address: the node's own answer, else the membership's record.
    pub fn http_address(&self) -> String {
        match &self.status {
            Ok(s) if !s.http_address.is_empty() => s.http_address.clone(),
            _ => self.member.http_address.clone(),
        }
    }
}

/// The whole cluster.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// Every member, voters first, by id.
    pub members: Vec<MemberView>,
    /// The leader's id, when one is known.
    pub leader: Option<u64>,
    /// The leader's own status (it carries the replication lag), when reachable.
    pub leader_status: Option<StatusReply>,
}

/// Health verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every member reachable and caught up, one leader.
    Healthy,
    /// A quorum and a leader, but some member unreachable or lagging.
    Degraded,
    /// Fewer than a majority of the voters reachable, or no leader.
    NoQuorum,
}

impl ClusterView {
    /// Asks the endpoints for the membership (the leader's view when it is reachable), then
    /// every member for its own status, concurrently.
    pub async fn gather(client: &Client) -> Result<ClusterView> {
        let (seed_addr, seed) = client.first_status().await?;
        if seed.members.is_empty() {
            return Err(crate::error::CtlError::failed(format!(
                "node {} at {seed_addr} belongs to no initialised cluster yet (it waits to be \
                 added, or is still bootstrapping); point --endpoint at a member of the cluster",
                seed.node_id
            )));
        }
        // The leader's membership is the newest; a follower's may lag a change.
        let mut source = seed.clone();
        let mut source_addr = seed_addr;
        if seed.has_leader
            && seed.leader_id != seed.node_id
            && let Some(m) = seed.members.iter().find(|m| m.id == seed.leader_id)
            && let Ok(s) = client.status_of(&m.raft_address).await
        {
            source = s;
            source_addr = m.raft_address.clone();
        }
        let asks = source.members.iter().map(|m| {
            let m = m.clone();
            let known = (m.id == source.node_id).then(|| source.clone());
            let addr = if m.raft_address.is_empty() && m.id == source.node_id {
                source_addr.clone()
            } else {
                m.raft_address.clone()
            };
            async move {
                let status = match known {
                    Some(s) => Ok(s),
                    None if addr.is_empty() => Err("no gRPC address recorded".to_string()),
                    None => client.status_of(&addr).await,
                };
                // A node that answers for another id is not this member.
                let status = status.and_then(|s| {
                    if s.node_id == m.id {
                        Ok(s)
                    } else {
                        Err(format!(
                            "{addr} answers as node {}, not {}",
                            s.node_id, m.id
                        ))
                    }
                });
                MemberView { member: m, status }
            }
        });
        let mut members: Vec<MemberView> = futures::future::join_all(asks).await;
        members.sort_by_key(|v| (!v.member.voter, v.member.id));
        let leader = elect_view(&members, &source);
        let leader_status = leader.and_then(|id| {
            members
                .iter()
                .find(|v| v.member.id == id)
                .and_then(|v| v.status.as_ref().ok().cloned())
                .filter(|s| s.role == "Leader")
        });
        Ok(ClusterView {
            members,
            leader,
            leader_status,
        })
    }

    /// Voter ids.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|v| v.member.voter)
            .map(|v| v.member.id)
            .collect()
    }

    /// Ids of the members that answered.
    pub fn reachable(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|v| v.status.is_ok())
            .map(|v| v.member.id)
            .collect()
    }

    /// The member `id`.
    pub fn member(&self, id: u64) -> Option<&MemberView> {
        self.members.iter().find(|v| v.member.id == id)
    }

    /// Entries member `id` is behind the leader's last log index (known only when the leader
    /// answered).
    pub fn lag(&self, id: u64) -> Option<u64> {
        let leader = self.leader_status.as_ref()?;
        if leader.node_id == id {
            return Some(0);
        }
        leader.lag.get(&id).copied()
    }

    /// The verdict and its one-line explanation. A member more than `max_lag` entries behind
    /// the leader counts as lagging.
    pub fn verdict(&self, max_lag: u64) -> (Verdict, String) {
        let voters = self.voters();
        let reachable = self.reachable();
        let up = voters.intersection(&reachable).count();
        let counts = format!("{up} of {} voters reachable", voters.len());
        if up < majority(voters.len()) {
            return (Verdict::NoQuorum, format!("no quorum: {counts}"));
        }
        let Some(leader) = self.leader else {
            return (
                Verdict::NoQuorum,
                format!("no quorum: {counts}, but no leader (an election may be under way)"),
            );
        };
        let mut problems = Vec::new();
        for v in &self.members {
            let kind = if v.member.voter { "voter" } else { "learner" };
            match &v.status {
                Err(_) => problems.push(format!("{kind} {} unreachable", v.member.id)),
                Ok(_) => {
                    if let Some(lag) = self.lag(v.member.id).filter(|l| *l > max_lag) {
                        problems.push(format!("{kind} {} is {lag} entries behind", v.member.id));
                    }
                }
            }
        }
        if self.leader_status.is_none() {
            problems.push(format!("leader {leader} did not report replication lag"));
        }
        if problems.is_empty() {
            (
                Verdict::Healthy,
                format!("healthy: {counts}, leader {leader}"),
            )
        } else {
            (
                Verdict::Degraded,
                format!(
                    "degraded: {counts}, leader {leader} ({})",
                    problems.join(", ")
                ),
            )
        }
    }
}

/// Who leads: the reachable member that says it is the leader in the highest term, else the
/// leader the membership source names.
fn elect_view(members: &[MemberView], source: &StatusReply) -> Option<u64> {
    let claimed = members
        .iter()
        .filter_map(|v| v.status.as_ref().ok())
        .filter(|s| s.role == "Leader")
        .max_by_key(|s| s.term)
        .map(|s| s.node_id);
    claimed.or(source.has_leader.then_some(source.leader_id))
}

/// Voters after adding `id`.
pub fn with(set: &BTreeSet<u64>, id: u64) -> BTreeSet<u64> {
    let mut s = set.clone();
    s.insert(id);
    s
}

/// Voters after removing `id`.
pub fn without(set: &BTreeSet<u64>, id: u64) -> BTreeSet<u64> {
    let mut s = set.clone();
    s.remove(&id);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn removing_a_healthy_voter_from_a_healthy_cluster_is_safe() {
        assert!(check_quorum(&s(&[1, 2, 3]), &s(&[1, 2]), &s(&[1, 2, 3])).is_ok());
        assert!(
            check_quorum(
                &s(&[1, 2, 3, 4, 5]),
                &s(&[1, 2, 3, 4]),
                &s(&[1, 2, 3, 4, 5])
            )
            .is_ok()
        );
    }

    #[test]
    fn removing_the_dead_voter_is_safe_removing_a_live_one_is_not() {
        // Node 3 is down.
        let up = s(&[1, 2]);
        assert!(check_quorum(&s(&[1, 2, 3]), &s(&[1, 2]), &up).is_ok());
        let e = check_quorum(&s(&[1, 2, 3]), &s(&[1, 3]), &up).unwrap_err();
        assert!(e.contains("lose quorum"), "{e}");
        assert!(e.contains("unreachable: 3"), "{e}");
    }

    #[test]
    fn the_joint_phase_needs_the_old_majority_too() {
        // 4 voters, 2 down: the new set {1,2,3} has a majority up, the old one does not.
        let e = check_quorum(&s(&[1, 2, 3, 4]), &s(&[1, 2, 3]), &s(&[1, 2])).unwrap_err();
        assert!(e.contains("before the change"), "{e}");
    }

    #[test]
    fn the_last_voter_cannot_be_removed() {
        let e = check_quorum(&s(&[1]), &s(&[]), &s(&[1])).unwrap_err();
        assert!(e.contains("last voter"), "{e}");
    }

    #[test]
    fn promoting_an_unreachable_learner_can_lose_quorum() {
        // Voters {1,2} with 2 down... the old set has no quorum at all.
        assert!(check_quorum(&s(&[1, 2]), &s(&[1, 2, 3]), &s(&[1, 3])).is_err());
        // Voters {1} plus an unreachable learner 2: {1,2} needs both.
        assert!(check_quorum(&s(&[1]), &s(&[1, 2]), &s(&[1])).is_err());
        assert!(check_quorum(&s(&[1]), &s(&[1, 2]), &s(&[1, 2])).is_ok());
    }

    fn reply(id: u64, role: &str, term: u64, leader: u64, lag: &[(u64, u64)]) -> StatusReply {
        StatusReply {
            node_id: id,
            role: role.into(),
            term,
            leader_id: leader,
            has_leader: leader != 0,
            last_log_index: 100,
            lag: lag.iter().copied().collect(),
            ..Default::default()
        }
    }

    fn view(statuses: Vec<(u64, bool, std::result::Result<StatusReply, String>)>) -> ClusterView {
        let members: Vec<MemberView> = statuses
            .into_iter()
            .map(|(id, voter, status)| MemberView {
                member: Member {
                    id,
                    raft_address: format!("n{id}:9095"),
                    http_address: String::new(),
                    voter,
                },
                status,
            })
            .collect();
        let source = members[0].status.clone().unwrap_or_default();
        let leader = elect_view(&members, &source);
        let leader_status = leader.and_then(|id| {
            members
                .iter()
                .find(|v| v.member.id == id)
                .and_then(|v| v.status.clone().ok())
        });
        ClusterView {
            members,
            leader,
            leader_status,
        }
    }

    #[test]
    fn verdicts() {
        let healthy = view(vec![
            (
                1,
                true,
                Ok(reply(1, "Leader", 3, 1, &[(1, 0), (2, 0), (3, 2)])),
            ),
            (2, true, Ok(reply(2, "Follower", 3, 1, &[]))),
            (3, true, Ok(reply(3, "Follower", 3, 1, &[]))),
        ]);
        let (v, text) = healthy.verdict(1000);
        assert_eq!(v, Verdict::Healthy, "{text}");
        assert_eq!(text, "healthy: 3 of 3 voters reachable, leader 1");
        assert_eq!(healthy.lag(3), Some(2));
        // A lagging member degrades.
        let (v, text) = healthy.verdict(1);
        assert_eq!(v, Verdict::Degraded);
        assert!(text.contains("voter 3 is 2 entries behind"), "{text}");

        let one_down = view(vec![
            (1, true, Ok(reply(1, "Leader", 3, 1, &[(2, 0), (3, 50)]))),
            (2, true, Ok(reply(2, "Follower", 3, 1, &[]))),
            (3, true, Err("connection refused".into())),
        ]);
        let (v, text) = one_down.verdict(1000);
        assert_eq!(v, Verdict::Degraded);
        assert!(
            text.starts_with("degraded: 2 of 3 voters reachable"),
            "{text}"
        );

        let two_down = view(vec![
            (1, true, Ok(reply(1, "Candidate", 4, 0, &[]))),
            (2, true, Err("refused".into())),
            (3, true, Err("refused".into())),
        ]);
        let (v, text) = two_down.verdict(1000);
        assert_eq!(v, Verdict::NoQuorum);
        assert_eq!(text, "no quorum: 1 of 3 voters reachable");
    }

    #[test]
    fn the_leader_in_the_highest_term_wins() {
        let v = view(vec![
            (1, true, Ok(reply(1, "Leader", 3, 1, &[]))),
            (2, true, Ok(reply(2, "Leader", 5, 2, &[]))),
            (3, true, Ok(reply(3, "Follower", 5, 2, &[]))),
        ]);
        assert_eq!(v.leader, Some(2));
    }
}
