//! The pgw Raft node.
//!
//! Owns: starting openraft on the sled store, bootstrap (a single-node cluster initialised
//! on first start; static and dynamic clusters later), the write path ([`Node::write`]:
//! propose a command, wait until it is committed and applied here), local reads of the
//! applied state ([`Node::read`]), readiness and shutdown.
//!
//! Does not own: HTTP (pgw-server), the data model (pgw-core), storage internals (pgw-store).

#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::time::Duration;

use pgw_core::{Command, CommandResponse, GroupStore};

/// Why a write could not be answered with the command's outcome.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader could take the write before the deadline (election, lost quorum): the HTTP
    /// layer answers 503 with `Retry-After`.
    #[error("no Raft leader accepted the write within {0:?}; retry later")]
    Unavailable(Duration),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage or another fatal error (500).
    #[error("{0}")]
    Fatal(String),
}

/// Node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--storage.path`.
    pub storage_path: PathBuf,
    /// `--cluster.write-timeout`: how long a write may wait for a leader.
    pub write_timeout: Duration,
    /// `--raft.snapshot-every`: build a snapshot after this many applied entries.
    pub snapshot_every: u64,
}

/// What `/-/ready` and the self-metrics need to know about the node.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// Whether a leader is known.
    pub has_leader: bool,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// Highest log index applied to the local store.
    pub applied_index: u64,
    /// Highest log index known committed.
    pub commit_index: u64,
}

/// A running pgw node (placeholder API; the implementation lands with pgw-store).
pub struct Node {
    _private: (),
}

impl Node {
    /// Opens storage under `config.storage_path`, starts Raft and, on first start of a
    /// single-node cluster, initialises it.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let _ = config;
        todo!("Node::start")
    }

    /// Proposes `cmd`, waits until it is committed and applied on this node, and returns
    /// the outcome `apply` produced.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        let _ = cmd;
        todo!("Node::write")
    }

    /// Runs `f` on the locally applied store (never blocks on Raft).
    pub fn read<R>(&self, f: impl FnOnce(&GroupStore) -> R) -> R {
        let _ = f;
        todo!("Node::read")
    }

    /// Current Raft status of this node.
    pub fn status(&self) -> NodeStatus {
        todo!("Node::status")
    }

    /// Stops Raft and closes storage cleanly. In-flight writes finish first.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        todo!("Node::shutdown")
    }
}
