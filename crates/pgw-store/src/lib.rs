//! Persistent storage for a pgw node: the openraft [`TypeConfig`], the sled-backed Raft log
//! ([`LogStore`]), the sled-backed state machine ([`StateMachineStore`]) and its snapshots.
//!
//! # What this crate owns
//!
//! - [`TypeConfig`]: the openraft type configuration (commands are [`pgw_core::Command`],
//!   responses [`pgw_core::CommandResponse`], node ids `u64`, node addresses [`Node`], snapshots
//!   a [`std::io::Cursor`] over the whole snapshot, sent with `full_snapshot`).
//! - [`open`]: one `sled::Db` per storage directory, with the project's mandatory sled
//!   mitigations (a real `fsync`, 64 KiB value chunks, 8 MiB segments, `Mode::LowSpace`, one
//!   tree for the state machine).
//! - [`LogStore`]: openraft's v2 `RaftLogStorage` + `RaftLogReader` (entries, vote, committed,
//!   last purged).
//! - [`StateMachineStore`]: openraft's v2 `RaftStateMachine` + `RaftSnapshotBuilder`. It keeps
//!   the whole [`pgw_core::GroupStore`] in memory behind a [`SharedStore`] that the HTTP layer
//!   renders from, and mirrors every change into sled.
//! - The snapshot file `<dir>/snapshot.bin`.
//! - [`mem`]: an in-memory log and state machine with an explicit crash model (what survives a
//!   crash, what a restart rebuilds), for the deterministic simulation tests. The binary never
//!   uses it.
//!
//! It does not own: the Raft node, its network or its configuration (pgw-raft), HTTP
//! (pgw-server), or what a command means ([`pgw_core::GroupStore::apply`]). It must not depend
//! on axum or tonic. The engine (sled) stays behind this crate's types.
//!
//! # On-disk layout (`--storage.path`, format version 1)
//!
//! | file | content |
//! |---|---|
//! | `db`, `conf`, `blobs/`, `snap.*` | sled 0.34.7 |
//! | `snapshot.bin` | the last durable snapshot (see below) |
//!
//! Tree `raft_log` (keys big-endian, so byte order is log order):
//!
//! | key | value |
//! |---|---|
//! | `e` ‖ index (u64 BE) ‖ chunk (u32 BE) | a chunk of: version byte ‖ postcard(`openraft::Entry`) |
//! | `v` | version byte ‖ postcard(`Vote`) |
//! | `c` | version byte ‖ postcard(`LogId`): the last committed log id |
//! | `p` | version byte ‖ postcard(`LogId`): the last purged log id |
//!
//! Tree `state_machine` (one tree, so every apply is one atomic `apply_batch`):
//!
//! | key | value |
//! |---|---|
//! | `f` ‖ [`GroupingKey::encode`](pgw_core::GroupingKey::encode) ‖ family name ‖ chunk (u32 BE) | a chunk of [`pgw_core::store::encode_family`] |
//! | `m` | version byte ‖ postcard(last applied log id, last membership, push clock) |
//!
//! Large values are split into chunks of at most [`CHUNK_SIZE`] (64 KiB) under
//! `key ‖ chunk index (u32 BE)`; chunk 0 starts with the chunk count (u32 BE). The chunk size is
//! well under the 1 MiB ceiling the project set, on purpose: sled writes a whole B-tree leaf as
//! one message when it consolidates, splits or merges it; a leaf holds at most about 20 items
//! (it splits above 16, a merge adds fewer than 4), and any message over `segment_size / 4`
//! (2 MiB with 8 MiB segments) goes to a blob file that sled never fsyncs. 20 × 64 KiB =
//! 1.25 MiB keeps every leaf inline, in the `db` file that the durability shim fsyncs. The format caps one value at [`MAX_VALUE_LEN`] (2³² chunks); the practical
//! limit is memory, because a value (a log entry, one family of one group) is built in memory
//! and written in one batch. The maximum push size is enforced by the HTTP layer, not here.
//!
//! `snapshot.bin`: version byte ‖ u64 BE length ‖ postcard(`SnapshotMeta`) ‖ u64 BE length ‖
//! [`pgw_core::GroupStore::encode_snapshot`] bytes. Written to `snapshot.bin.tmp`, fsynced,
//! renamed over `snapshot.bin`, then the directory is fsynced.
//!
//! Unreadable or invalid persisted data (unknown version byte, truncated chunk, bad postcard)
//! is reported as a `StorageError` (from the traits) or a [`StoreError`] (from [`open`]),
//! never a panic.
//!
//! # Durability contract: what survives a crash
//!
//! "Durable" below means: sled has written it (`flush_async`) *and* `fsync` returned on a
//! second handle of `<dir>/db` (sled's own flush only calls `sync_file_range`, which neither
//! flushes the disk cache nor file metadata).
//!
//! - **Log entries**: durable before `append` reports them
//!   (`LogFlushed::log_io_completed` is called only after the fsync). All entries of one
//!   `append` are one sled batch and one fsync. This is what makes an acknowledgement mean
//!   "on disk on a quorum".
//! - **Vote**: durable before `save_vote` returns.
//! - **Truncation** (`truncate`): durable before it returns.
//! - **Purge** (`purge`): the deletions and the new last-purged id are one atomic batch, not
//!   fsynced on their own. A purge lost in a crash only brings back entries that are already in
//!   the durable snapshot; openraft purges them again.
//! - **Committed log id** (`save_committed`): written, not fsynced. On restart openraft
//!   re-applies up to whatever committed id survived and learns the rest from the leader.
//! - **State machine** (`apply`): every `apply` call is one atomic sled batch holding the
//!   changed families *and* the last applied log id, membership and push clock, so the tree is
//!   always the state after some prefix of the log. It is **not** fsynced: after a crash the
//!   tree may be behind what was applied. That is safe because the Raft log is the source of
//!   truth: (1) everything applied was committed, so it is in the durable log of a quorum and
//!   in this node's log (sled recovers a prefix of its single write stream, and every log
//!   write precedes the apply of the same entry); (2) on restart openraft re-applies the entries
//!   after the recovered last-applied id; (3) the only entries that cannot be re-applied are
//!   purged ones, and openraft purges only up to a snapshot, which is durable before
//!   `build_snapshot`/`install_snapshot` return; (4) [`open`] restores the state machine from
//!   `snapshot.bin` whenever the snapshot is newer than the tree. So no applied write is lost;
//!   at worst a restarted node re-applies a tail of the log before it serves it again.
//! - **Snapshots**: durable (tmp file, fsync, rename, directory fsync) before `build_snapshot`
//!   or `install_snapshot` returns. `install_snapshot` persists the file first, then rewrites
//!   the state-machine tree in one durable batch.
//!
//! Known limits: sled 0.34 reuses segments of its file once their content has been rewritten
//! and `sync_file_range`d elsewhere, without waiting for an fsync, so a power loss (not a process
//! crash) between two fsyncs depends on the disk honouring write order for that window. A
//! process crash (`kill -9`) loses nothing that was reported durable.

#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

mod chunk;
mod codec;
mod engine;
mod error;
pub mod failpoint;
mod log_store;
pub mod mem;
mod snapshot_file;
mod state_machine;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use chunk::{CHUNK_SIZE, MAX_VALUE_LEN};
pub use error::StoreError;
pub use log_store::LogStore;
pub use snapshot_file::path as snapshot_path;
pub use state_machine::{SnapshotBuilder, StateMachineStore};

/// The node id type of the cluster.
pub type NodeId = u64;

/// The in-memory group store shared between the state machine (the only writer) and readers
/// such as the HTTP layer, which renders `/metrics` from it.
pub type SharedStore = Arc<RwLock<pgw_core::GroupStore>>;

/// The snapshot payload: the whole [`pgw_core::GroupStore::encode_snapshot`] blob.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

openraft::declare_raft_types!(
    /// The openraft type configuration of pgw.
    pub TypeConfig:
        D = pgw_core::Command,
        R = pgw_core::CommandResponse,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A cluster member's addresses, as recorded in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The internal gRPC address (Raft, forwarding, admin), `host:port`.
    pub raft_addr: String,
    /// The public HTTP address (the Pushgateway API), `host:port`.
    pub http_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} http={}", self.raft_addr, self.http_addr)
    }
}

/// Opens (creating if needed) the storage directory `path` and returns its Raft log and
/// state machine.
///
/// Opens one `sled::Db` on the directory, rebuilds the in-memory [`pgw_core::GroupStore`] from
/// the state-machine tree, and, when `snapshot.bin` is newer than the tree (a crash after a
/// snapshot, before the tree reached disk), restores the state machine from the snapshot and
/// rewrites the tree durably.
///
/// Only one process may open a directory; within one process, every holder of the previous
/// stores (the Raft core, servers) must be dropped before the directory is opened again.
///
/// Blocking (file I/O, and an fsync when restoring from the snapshot): call it at startup or
/// from `spawn_blocking`.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let engine = Arc::new(engine::Engine::open(path)?);
    let log = LogStore::new(engine.clone())?;
    let sm = StateMachineStore::open(engine.clone())?;
    // sled recovers the readable prefix of a damaged file without an error, possibly
    // nothing at all. Refuse to start on less than this directory is known to have made
    // durable, rather than serving (and replicating) an older or empty state.
    if let Some(mark) = engine.watermark() {
        let (index, has_vote) = log.recovered_extent()?;
        let snapshot = sm.snapshot_index();
        let extent = index.max(snapshot);
        // A directory that held a Raft state never comes back with neither a log nor a vote.
        if extent < mark || (extent == 0 && !has_vote) {
            return Err(StoreError::Corrupt(format!(
                "{} held a Raft log durable up to index {mark}, but only {} could be recovered{}: \
                 the storage is damaged. Do not start this node on it: move the directory away and \
                 rejoin the node to its cluster with an empty --storage.path, or restore a backup",
                path.display(),
                if extent == 0 {
                    "nothing".to_string()
                } else {
                    format!("up to index {extent}")
                },
                if has_vote { "" } else { " (no vote)" },
            )));
        }
    }
    Ok((log, sm))
}
