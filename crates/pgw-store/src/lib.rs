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
//! | `durable.mark` | the durability marker: last durable log index, vote and snapshot identity, rewritten after every sync (`marker` module) |
//!
//! # Integrity (design invariant 11)
//!
//! Every record carries a checksum: chunked values (log entries, families) a CRC-32 of the
//! whole value in chunk 0's header; the other records (vote, committed, purged, state-machine
//! meta) format 2 of the record codec (`2 ‖ CRC-32 ‖ postcard`); `snapshot.bin` a trailing
//! CRC-32. The state-machine meta record also holds a digest of all family records, updated by
//! every apply in the same atomic batch. [`open`] reads and checks everything and refuses to
//! start ([`StoreError::Damaged`]) on a checksum mismatch, a gap in the log, records that do not
//! add up to the digest, a log, vote or snapshot behind what `durable.mark` recorded, or a
//! missing marker beside a Raft state. Records written before checksums (format 1) are still
//! read. Cost: one extra `fdatasync` of the marker per log sync (docs/performance.md).
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
//! [`pgw_core::GroupStore::encode_snapshot`] bytes ‖ CRC-32 of all before. Written to
//! `snapshot.bin.tmp`, fsynced, renamed over `snapshot.bin`, then the directory is fsynced;
//! then its identity (last index, file CRC) goes into `durable.mark`.
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
mod marker;
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
pub use state_machine::{SnapshotBuilder, StateMachineStore, StorageStats};

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
/// Opens one `sled::Db` on the directory, reads and checks everything it holds, rebuilds the
/// in-memory [`pgw_core::GroupStore`] from the state-machine tree, and, when `snapshot.bin` is
/// newer than the tree (a crash after a snapshot, before the tree reached disk), restores the
/// state machine from the snapshot and rewrites the tree durably.
///
/// Damage is refused, never served ([`StoreError::Damaged`], naming the file and the runbook):
/// a record whose checksum does not match; a log with a gap; a state-machine tree whose family
/// records do not add up to the digest stored with them; a snapshot file that does not match
/// its checksum, is older than, or differs from, the one the marker recorded; a log or vote
/// behind what the marker says was durable; a missing marker beside a Raft state; a database
/// that sled cannot open (sled's panics on damaged files are caught). A directory held by
/// another process is [`StoreError::InUse`].
///
/// Only one process may open a directory; within one process, every holder of the previous
/// stores (the Raft core, servers) must be dropped before the directory is opened again.
///
/// Blocking (file I/O, fsyncs): call it at startup or from `spawn_blocking`.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let engine = Arc::new(engine::Engine::open(path)?);
    let db_file = path.join("db");
    let damaged_db = |e: String| StoreError::Damaged {
        file: db_file.clone(),
        what: e,
    };
    let opened = engine::catch_panics(|| {
        let log = LogStore::new(engine.clone())?;
        let recovered = log.verify()?;
        let sm = StateMachineStore::open(engine.clone())?;
        Ok((log, recovered, sm))
    });
    let (log, recovered, sm) = match opened {
        Ok(Ok(x)) => x,
        // Errors that already name their file pass through; the rest come from the database.
        Ok(Err(
            e @ (StoreError::Damaged { .. } | StoreError::InUse(_) | StoreError::Io { .. }),
        )) => {
            return Err(e);
        }
        Ok(Err(e)) => return Err(damaged_db(e.to_string())),
        Err(panic) => return Err(damaged_db(panic)),
    };
    let snapshot = sm.snapshot_at_open();
    let holds_state = recovered.last_index.is_some()
        || recovered.vote.is_some()
        || snapshot.is_some()
        || sm.snapshot_index() > 0;
    let mark = match engine.found_mark() {
        marker::Found::Missing if holds_state => {
            return Err(StoreError::Damaged {
                file: path.join(marker::FILE),
                what: "the durability marker is missing, but the database holds a Raft state \
                       (a vote or log entries): pgw cannot tell how much of it was lost"
                    .into(),
            });
        }
        marker::Found::Missing => marker::Mark::default(),
        marker::Found::Valid(m) => *m,
    };
    if let Some(durable) = mark.log {
        let extent = [recovered.last_index, snapshot.and_then(|s| s.index)]
            .into_iter()
            .flatten()
            .max();
        if extent.is_none_or(|e| e < durable) {
            return Err(damaged_db(format!(
                "the Raft log was durable up to index {durable}, but {}: the file was truncated, \
                 damaged or replaced by an older copy",
                match extent {
                    None => "nothing could be recovered".to_string(),
                    Some(e) => format!("only index {e} could be recovered"),
                }
            )));
        }
    }
    if let Some((term, node, _)) = mark.vote {
        match recovered.vote {
            Some((t, _, _)) if t >= term => {}
            found => {
                return Err(damaged_db(format!(
                    "the vote for term {term} (node {node}) was durable, but {}: the file was \
                     truncated, damaged or replaced by an older copy",
                    match found {
                        None => "no vote could be recovered".to_string(),
                        Some((t, n, _)) => format!("only a vote for term {t} (node {n}) was found"),
                    }
                )));
            }
        }
    }
    if let Some((index, crc)) = mark.snapshot {
        let file = path.join(snapshot_file_name());
        let fmt =
            |i: Option<u64>| i.map_or_else(|| "no entry".to_string(), |i| format!("index {i}"));
        match snapshot {
            None => {
                return Err(StoreError::Damaged {
                    file,
                    what: format!(
                        "a snapshot up to {} was made durable, but the file is missing",
                        fmt(index)
                    ),
                });
            }
            Some(s) if s.index < index || (s.index == index && s.crc != crc) => {
                return Err(StoreError::Damaged {
                    file,
                    what: format!(
                        "a snapshot up to {} was made durable, but the file holds {} (CRC {:08x}, \
                         expected {crc:08x}): it was replaced by an older or different copy",
                        fmt(index),
                        fmt(s.index),
                        s.crc
                    ),
                });
            }
            Some(_) => {}
        }
    }
    // What was verified is the new baseline (it may be ahead of the old marker: a crash after
    // a sync, before its marker update; and a version-1 marker is rewritten as version 2).
    engine.start_marker(marker::Mark {
        log: recovered.last_index.max(mark.log),
        vote: recovered.vote,
        snapshot: snapshot.map(|s| (s.index, s.crc)).or(mark.snapshot),
    })?;
    Ok((log, sm))
}

fn snapshot_file_name() -> &'static str {
    "snapshot.bin"
}
