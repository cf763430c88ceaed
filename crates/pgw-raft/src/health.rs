//! What the node knows about its own health, from openraft's metrics stream: how long ago a
//! quorum last acknowledged this node's leadership, and whether Raft stopped for good.
//!
//! openraft 0.9 keeps a leader in office without a quorum (it never steps down by itself), so
//! `state == Leader` alone says nothing about whether a write can commit. Its metrics carry
//! `millis_since_quorum_ack`, the age of the newest instant a quorum acknowledged, computed
//! when the metrics are published. [`Health`] turns each published value into the instant of
//! that acknowledgement, so its age keeps growing between publications while no quorum
//! answers. A leader whose quorum contact is older than [`Health::quorum_timeout`] is
//! *cut off*: it is not ready, and writes on it (and forwarded to it) fail at once.

use std::sync::Mutex;
use std::time::Duration;

// tokio's clock: ages follow a paused or simulated clock in tests.
use tokio::time::Instant;

use openraft::{RaftMetrics, ServerState};
use pgw_store::NodeId;

/// Where this node stands with its quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quorum {
    /// This node does not lead (a follower, candidate or learner).
    NotLeader,
    /// This node leads and a quorum acknowledged it this long ago (at most the timeout).
    Contact(Duration),
    /// This node leads but no quorum acknowledged it for this long (more than the timeout).
    Lost(Duration),
}

#[derive(Debug, Default)]
struct State {
    /// On a leader: the instant of the newest quorum acknowledgement (the start of the
    /// leadership until openraft reports one). `None` when not leading.
    quorum_ack_at: Option<Instant>,
    /// The only voter is this node: its quorum is itself.
    sole_voter: bool,
    /// Why Raft stopped for good, once it did (not set by a requested shutdown).
    fatal: Option<String>,
}

/// Quorum contact and fatal-stop tracking of one node (see the module docs).
#[derive(Debug)]
pub struct Health {
    quorum_timeout: Duration,
    state: Mutex<State>,
    fatal_tx: tokio::sync::watch::Sender<Option<String>>,
}

impl Health {
    /// A tracker that declares the quorum lost after `quorum_timeout` without contact.
    pub(crate) fn new(quorum_timeout: Duration) -> Health {
        Health {
            quorum_timeout,
            state: Mutex::new(State::default()),
            fatal_tx: tokio::sync::watch::channel(None).0,
        }
    }

    /// How long a leader may go without a quorum acknowledgement before it counts as cut off.
    pub fn quorum_timeout(&self) -> Duration {
        self.quorum_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Takes in one publication of openraft's metrics.
    pub(crate) fn observe(&self, id: NodeId, m: &RaftMetrics<NodeId, pgw_store::Node>) {
        let now = Instant::now();
        let mut st = self.lock();
        if m.state == ServerState::Leader {
            let mut voters = m.membership_config.membership().voter_ids();
            st.sole_voter = voters.next() == Some(id) && voters.next().is_none();
            st.quorum_ack_at = Some(match m.millis_since_quorum_ack {
                Some(ms) => now.checked_sub(Duration::from_millis(ms)).unwrap_or(now),
                // Elected, no acknowledgement yet: the votes that elected it were the contact.
                None => st.quorum_ack_at.unwrap_or(now),
            });
        } else {
            st.quorum_ack_at = None;
        }
        if let Err(fatal) = &m.running_state
            && !matches!(fatal, openraft::error::Fatal::Stopped)
            && st.fatal.is_none()
        {
            let why = fatal.to_string();
            st.fatal = Some(why.clone());
            drop(st);
            self.fatal_tx.send_replace(Some(why));
        }
    }

    /// Where this node stands with its quorum now.
    pub fn quorum(&self) -> Quorum {
        let st = self.lock();
        match st.quorum_ack_at {
            None => Quorum::NotLeader,
            Some(_) if st.sole_voter => Quorum::Contact(Duration::ZERO),
            Some(at) => {
                let age = at.elapsed();
                if age > self.quorum_timeout {
                    Quorum::Lost(age)
                } else {
                    Quorum::Contact(age)
                }
            }
        }
    }

    /// Why Raft stopped for good, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// Completes with the reason once Raft stops for good (never after a requested shutdown).
    pub async fn wait_fatal(&self) -> String {
        let mut rx = self.fatal_tx.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Completes once this node leads without quorum contact (polled: between openraft's
    /// publications the age grows with the clock alone).
    pub(crate) async fn wait_quorum_lost(&self) -> Duration {
        loop {
            if let Quorum::Lost(age) = self.quorum() {
                return age;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn age_grows_between_publications_and_recovers() {
        let h = Health::new(Duration::from_secs(1));
        assert_eq!(h.quorum(), Quorum::NotLeader);
        let mut m = RaftMetrics::<NodeId, pgw_store::Node>::new_initial(1);
        m.state = ServerState::Leader;
        let members =
            openraft::Membership::new(vec![std::collections::BTreeSet::from([1, 2, 3])], None);
        m.membership_config = std::sync::Arc::new(openraft::StoredMembership::new(None, members));
        m.millis_since_quorum_ack = Some(100);
        h.observe(1, &m);
        assert!(matches!(h.quorum(), Quorum::Contact(_)));
        tokio::time::advance(Duration::from_millis(950)).await;
        assert!(matches!(h.quorum(), Quorum::Lost(_)), "{:?}", h.quorum());
        m.millis_since_quorum_ack = Some(0);
        h.observe(1, &m);
        assert!(matches!(h.quorum(), Quorum::Contact(_)));
        m.state = ServerState::Follower;
        h.observe(1, &m);
        assert_eq!(h.quorum(), Quorum::NotLeader);
    }

    #[tokio::test(start_paused = true)]
    async fn sole_voter_never_loses_its_quorum_and_fatal_is_reported_once() {
        let h = Health::new(Duration::from_secs(1));
        let mut m = RaftMetrics::<NodeId, pgw_store::Node>::new_initial(1);
        m.state = ServerState::Leader;
        let members = openraft::Membership::new(vec![std::collections::BTreeSet::from([1])], None);
        m.membership_config = std::sync::Arc::new(openraft::StoredMembership::new(None, members));
        h.observe(1, &m);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(h.quorum(), Quorum::Contact(Duration::ZERO));
        assert_eq!(h.fatal(), None);
        m.running_state = Err(openraft::error::Fatal::Stopped);
        h.observe(1, &m);
        assert_eq!(h.fatal(), None, "a requested shutdown is not a failure");
        m.running_state = Err(openraft::error::Fatal::Panicked);
        h.observe(1, &m);
        assert!(h.fatal().is_some());
        assert!(h.wait_fatal().await.contains("panicked"));
    }
}
