//! An in-memory Raft log and state machine with an explicit durability model, for the
//! deterministic simulation (`tests/sim`) and other tests that must model crashes without a
//! file system. The `pgw` binary never uses it.
//!
//! # The model: what survives a crash
//!
//! A [`MemDisk`] is the node's "disk". It is the only state that survives a crash, and the
//! test keeps it outside the simulated host. [`MemDisk::open`] plays the part of a process
//! starting on its directory: it builds a fresh [`MemLogStore`] and [`MemStateMachine`] from
//! what the disk holds and fences every handle of the previous incarnation (their writes fail).
//! A simulated crash drops every in-memory handle and every future in flight.
//!
//! It follows the contract the sled store documents (see the crate docs), choosing the
//! harshest behaviour that contract allows:
//!
//! - **Log entries**: an `append` takes the time of one fsync ([`MemConfig::fsync`]) and only
//!   then writes its entries to the disk and reports them flushed. A crash during that time
//!   loses all of them, and no entry is ever visible before it is durable.
//! - **Vote**: durable when `save_vote` returns (after one fsync).
//! - **Truncate** and **purge**: durable when they return.
//! - **Committed log id**: `save_committed` keeps it in memory only; it reaches the disk with
//!   the next append or vote (as sled writes it without an fsync). A crash may lose it, so a
//!   restarted node may re-apply less than it had applied.
//! - **State machine**: lives in memory. It is checkpointed to the disk every
//!   [`MemConfig::checkpoint_every`] applied entries (0: never), and whenever a snapshot is
//!   built or installed. A restarted node starts from the newer of the checkpoint and the
//!   snapshot, and openraft re-applies the committed log after it. With `checkpoint_every = 0`
//!   every restart rebuilds the state machine from the snapshot and the log alone.
//! - **Snapshots**: durable when `build_snapshot` or `install_snapshot` returns (after one
//!   fsync); a snapshot never replaces a newer one.
//!
//! Snapshot data is [`pgw_core::GroupStore::encode_snapshot`], the same bytes the sled store
//! sends, so nodes on either store can exchange snapshots.
//!
//! Time: the fsync delay uses `tokio::time`, so under a paused or simulated clock it costs no
//! wall time. Nothing here reads a wall clock or a random number generator.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use pgw_core::{CommandResponse, GroupStore};

use crate::error::ResultExt;
use crate::{Node, NodeId, SharedStore, SnapshotData, StoreError, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type Meta = SnapshotMeta<NodeId, Node>;

/// Timing of the durability model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemConfig {
    /// How long one fsync takes (`append`, `save_vote`, `truncate`, snapshots). Zero: no wait.
    pub fsync: Duration,
    /// Checkpoint the state machine to the disk every this many applied entries; 0: only
    /// with snapshots.
    pub checkpoint_every: u64,
}

/// The state machine as written to the disk: applied log id, membership and the store bytes.
#[derive(Clone, Debug)]
struct Image {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    data: Vec<u8>,
}

#[derive(Default)]
struct Disk {
    /// Incremented by every [`MemDisk::open`]; handles of older incarnations may not write.
    epoch: u64,
    vote: Option<Vote<NodeId>>,
    log: BTreeMap<u64, Entry>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    snapshot: Option<(Meta, Vec<u8>)>,
    checkpoint: Option<Image>,
    /// Counter for snapshot ids (no clock: ids must be reproducible).
    snapshots_built: u64,
}

/// What a [`MemDisk`] holds, for assertions in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskSummary {
    /// How many times the disk was opened.
    pub opens: u64,
    /// The durable vote.
    pub vote: Option<Vote<NodeId>>,
    /// Last durable log id (or the last purged one when the log is empty).
    pub last_log: Option<LogId<NodeId>>,
    /// Last purged log id.
    pub last_purged: Option<LogId<NodeId>>,
    /// The committed log id as last flushed.
    pub committed: Option<LogId<NodeId>>,
    /// Last log id of the durable snapshot.
    pub snapshot: Option<LogId<NodeId>>,
    /// Last applied log id of the state-machine checkpoint.
    pub checkpoint: Option<LogId<NodeId>>,
}

/// The durable part of an in-memory store: what survives a crash. Cheap to clone (clones
/// share the disk).
#[derive(Clone, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<Disk>>,
}

impl Debug for MemDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemDisk").field(&self.summary()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn stale() -> StoreError {
    StoreError::Io {
        context: "in-memory store".into(),
        source: std::io::Error::other(
            "this handle belongs to an incarnation that crashed; the disk was reopened",
        ),
    }
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an incarnation on this disk, as a process starting on its storage directory:
    /// the log store and a state machine rebuilt from the newer of the checkpoint and the
    /// snapshot. Handles from earlier incarnations can no longer write.
    pub fn open(&self, config: MemConfig) -> Result<(MemLogStore, MemStateMachine), StoreError> {
        let mut disk = lock(&self.inner);
        disk.epoch += 1;
        let epoch = disk.epoch;
        let from_snapshot = disk.snapshot.as_ref().map(|(meta, data)| Image {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            data: data.clone(),
        });
        let image = match (disk.checkpoint.clone(), from_snapshot) {
            (Some(c), Some(s)) => Some(if s.last_applied > c.last_applied {
                s
            } else {
                c
            }),
            (c, s) => c.or(s),
        };
        let (store, applied) = match image {
            None => (GroupStore::new(), Applied::default()),
            Some(img) => (
                GroupStore::decode_snapshot(&img.data)
                    .map_err(|e| StoreError::Corrupt(format!("state-machine image: {e}")))?,
                Applied {
                    last_applied: img.last_applied,
                    membership: img.membership,
                },
            ),
        };
        let committed = disk.committed;
        drop(disk);
        let log = MemLogStore {
            disk: self.clone(),
            epoch,
            config,
            committed: Arc::new(Mutex::new(committed)),
            committed_index: Arc::new(AtomicU64::new(committed.map_or(0, |c| c.index))),
        };
        let sm = MemStateMachine {
            disk: self.clone(),
            epoch,
            config,
            store: Arc::new(RwLock::new(store)),
            applied: Arc::new(Mutex::new(applied)),
            since_checkpoint: 0,
        };
        Ok((log, sm))
    }

    /// What the disk holds.
    pub fn summary(&self) -> DiskSummary {
        let disk = lock(&self.inner);
        DiskSummary {
            opens: disk.epoch,
            vote: disk.vote,
            last_log: disk
                .log
                .values()
                .next_back()
                .map(|e| e.log_id)
                .or(disk.last_purged),
            last_purged: disk.last_purged,
            committed: disk.committed,
            snapshot: disk.snapshot.as_ref().and_then(|(m, _)| m.last_log_id),
            checkpoint: disk.checkpoint.as_ref().and_then(|c| c.last_applied),
        }
    }

    /// Locks the disk for a write by the incarnation `epoch`.
    fn write(&self, epoch: u64) -> Result<MutexGuard<'_, Disk>, StoreError> {
        let disk = lock(&self.inner);
        if disk.epoch != epoch {
            return Err(stale());
        }
        Ok(disk)
    }
}

async fn fsync(config: &MemConfig) {
    if !config.fsync.is_zero() {
        tokio::time::sleep(config.fsync).await;
    }
}

/// The Raft log of one incarnation. Cheap to clone (openraft's log reader is a clone).
#[derive(Clone)]
pub struct MemLogStore {
    disk: MemDisk,
    epoch: u64,
    config: MemConfig,
    /// The committed log id as openraft last saved it; reaches the disk with the next flush.
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    committed_index: Arc<AtomicU64>,
}

impl MemLogStore {
    /// A live view of the committed log index, like [`crate::LogStore::committed_index`].
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    async fn append_inner(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        // The write is in flight until the fsync returns: a crash before then loses it all.
        fsync(&self.config).await;
        let committed = *lock(&self.committed);
        let mut disk = self.disk.write(self.epoch)?;
        for entry in entries {
            disk.log.insert(entry.log_id.index, entry);
        }
        disk.committed = committed;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let disk = lock(&self.disk.inner);
        Ok(disk.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let disk = lock(&self.disk.inner);
        let last = disk.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: disk.last_purged,
            last_log_id: last.or(disk.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        fsync(&self.config).await;
        let committed = *lock(&self.committed);
        let mut disk = self
            .disk
            .write(self.epoch)
            .sto(ErrorSubject::Vote, ErrorVerb::Write)?;
        disk.vote = Some(*vote);
        disk.committed = committed;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.disk.inner).vote)
    }

    /// Kept in memory until the next flush: see the module docs.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.committed_index
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        *lock(&self.committed) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(*lock(&self.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        match self.append_inner(entries).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut disk = self
                .disk
                .write(self.epoch)
                .sto(ErrorSubject::Log(log_id), ErrorVerb::Delete)?;
            disk.log.split_off(&log_id.index);
        }
        fsync(&self.config).await;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut disk = self
            .disk
            .write(self.epoch)
            .sto(ErrorSubject::Log(log_id), ErrorVerb::Delete)?;
        let keep = disk.log.split_off(&(log_id.index + 1));
        disk.log = keep;
        if disk.last_purged < Some(log_id) {
            disk.last_purged = Some(log_id);
        }
        Ok(())
    }
}

/// What the state machine has applied, besides the groups.
#[derive(Clone, Debug, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
}

/// The state machine of one incarnation: the group store in memory, shared with readers
/// through [`MemStateMachine::shared`], like [`crate::StateMachineStore`].
pub struct MemStateMachine {
    disk: MemDisk,
    epoch: u64,
    config: MemConfig,
    store: SharedStore,
    /// Updated only under the store's write lock (readers see a consistent pair).
    applied: Arc<Mutex<Applied>>,
    since_checkpoint: u64,
}

/// Builds snapshots of a [`MemStateMachine`].
pub struct MemSnapshotBuilder {
    disk: MemDisk,
    epoch: u64,
    config: MemConfig,
    store: SharedStore,
    applied: Arc<Mutex<Applied>>,
}

fn write_store(
    store: &SharedStore,
) -> Result<std::sync::RwLockWriteGuard<'_, GroupStore>, StoreError> {
    store.write().map_err(|_| StoreError::Poisoned)
}

fn read_store(
    store: &SharedStore,
) -> Result<std::sync::RwLockReadGuard<'_, GroupStore>, StoreError> {
    store.read().map_err(|_| StoreError::Poisoned)
}

impl MemStateMachine {
    /// The in-memory group store, for readers.
    pub fn shared(&self) -> SharedStore {
        self.store.clone()
    }

    fn apply_entries(
        &mut self,
        entries: impl Iterator<Item = Entry>,
    ) -> Result<Vec<CommandResponse>, StoreError> {
        let mut responses = Vec::new();
        let image = {
            let mut store = write_store(&self.store)?;
            let mut applied = lock(&self.applied);
            for entry in entries {
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::Applied,
                    EntryPayload::Normal(cmd) => store.apply(&cmd).0,
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::Applied
                    }
                };
                applied.last_applied = Some(entry.log_id);
                responses.push(response);
            }
            self.since_checkpoint += responses.len() as u64;
            let due = self.config.checkpoint_every > 0
                && self.since_checkpoint >= self.config.checkpoint_every;
            due.then(|| Image {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                data: store.encode_snapshot(),
            })
        };
        if let Some(image) = image {
            self.since_checkpoint = 0;
            self.disk.write(self.epoch)?.checkpoint = Some(image);
        }
        Ok(responses)
    }

    async fn install(&mut self, meta: &Meta, data: Vec<u8>) -> Result<(), StoreError> {
        let store = GroupStore::decode_snapshot(&data)
            .map_err(|e| StoreError::Corrupt(format!("received snapshot {meta}: {e}")))?;
        fsync(&self.config).await;
        {
            let mut disk = self.disk.write(self.epoch)?;
            let newer_on_disk = disk
                .snapshot
                .as_ref()
                .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id);
            disk.checkpoint = Some(Image {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                data: data.clone(),
            });
            if !newer_on_disk {
                disk.snapshot = Some((meta.clone(), data));
            }
        }
        let old = {
            let mut current = write_store(&self.store)?;
            *lock(&self.applied) = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            std::mem::replace(&mut *current, store)
        };
        drop(old);
        self.since_checkpoint = 0;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let applied = lock(&self.applied).clone();
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut last = None;
        let entries = entries.into_iter().inspect(|e| last = Some(e.log_id));
        let res = self.apply_entries(entries);
        res.map_err(|e| match last {
            Some(log_id) => e.storage(ErrorSubject::Apply(log_id), ErrorVerb::Write),
            None => e.storage(ErrorSubject::StateMachine, ErrorVerb::Write),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MemSnapshotBuilder {
            disk: self.disk.clone(),
            epoch: self.epoch,
            config: self.config,
            store: self.store.clone(),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        self.install(meta, snapshot.into_inner()).await.sto(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
        )
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let disk = lock(&self.disk.inner);
        Ok(disk.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

impl MemSnapshotBuilder {
    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (data, applied) = {
            let store = read_store(&self.store)?;
            let applied = lock(&self.applied).clone();
            (store.encode_snapshot(), applied)
        };
        fsync(&self.config).await;
        let mut disk = self.disk.write(self.epoch)?;
        disk.snapshots_built += 1;
        let snapshot_id = match &applied.last_applied {
            Some(l) => format!("{l}-{}", disk.snapshots_built),
            None => format!("none-{}", disk.snapshots_built),
        };
        let meta = Meta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        let newer_on_disk = disk
            .snapshot
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id);
        if !newer_on_disk {
            disk.snapshot = Some((meta.clone(), data.clone()));
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemSnapshotBuilder {
    /// Encodes the store as of the last applied entry and makes it the durable snapshot
    /// before returning it.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build()
            .await
            .sto(ErrorSubject::Snapshot(None), ErrorVerb::Write)
    }
}
