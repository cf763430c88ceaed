//! The state machine: the in-memory [`GroupStore`] mirrored into the `state_machine` tree, and
//! its snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StoredMembership,
};
use pgw_core::store::{Effect, decode_family, encode_family};
use pgw_core::{CommandResponse, GroupStore, GroupingKey};
use serde::{Deserialize, Serialize};
use sled::{Batch, Tree};

use crate::engine::{Engine, SM_TREE};
use crate::error::ResultExt;
use crate::snapshot_file::{Identity, Meta, SnapshotFile};
use crate::{Node, NodeId, SharedStore, SnapshotData, StoreError, TypeConfig, chunk, codec};

type Entry = openraft::Entry<TypeConfig>;

/// Key prefix of stored families: `f ‖ GroupingKey::encode() ‖ family name ‖ chunk (u32 BE)`.
const FAMILY: u8 = b'f';
/// Key of the [`Applied`] record.
const META: &[u8] = b"m";

/// What the state machine has applied, besides the groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
}

/// The persisted meta record: [`Applied`], the store's push clock, and the digest of every
/// family record of the tree (format 2).
#[derive(Serialize, Deserialize)]
struct MetaRecord {
    applied: Applied,
    clock_ns: i64,
    digest: Digest,
}

/// The meta record as written before checksums (format 1): no digest.
#[derive(Deserialize)]
struct MetaRecordV1 {
    applied: Applied,
    clock_ns: i64,
}

/// An order-independent digest of the family records of the tree: their number and the
/// wrapping sum of one 64-bit value per record (the CRC-32 of its key, and the CRC-32 of its
/// value). Kept up to date by every apply from the records it writes and deletes, stored in
/// the meta record of the same atomic batch, and recomputed at start: a record that sled lost
/// or that changed under it does not add up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Digest {
    records: u64,
    sum: u64,
}

impl Digest {
    fn term(base: &[u8], value_crc: u32) -> u64 {
        (u64::from(crc32fast::hash(base)) << 32) | u64::from(value_crc)
    }

    fn add(&mut self, base: &[u8], value_crc: u32) {
        self.records = self.records.wrapping_add(1);
        self.sum = self.sum.wrapping_add(Self::term(base, value_crc));
    }

    fn remove(&mut self, base: &[u8], value_crc: u32) {
        self.records = self.records.wrapping_sub(1);
        self.sum = self.sum.wrapping_sub(Self::term(base, value_crc));
    }
}

fn group_prefix(key: &GroupingKey) -> Vec<u8> {
    let mut k = vec![FAMILY];
    k.extend_from_slice(&key.encode());
    k
}

fn family_base(key: &GroupingKey, name: &str) -> Vec<u8> {
    let mut k = group_prefix(key);
    k.extend_from_slice(name.as_bytes());
    k
}

fn write_lock(
    store: &SharedStore,
) -> Result<std::sync::RwLockWriteGuard<'_, GroupStore>, StoreError> {
    store.write().map_err(|_| StoreError::Poisoned)
}

fn read_lock(
    store: &SharedStore,
) -> Result<std::sync::RwLockReadGuard<'_, GroupStore>, StoreError> {
    store.read().map_err(|_| StoreError::Poisoned)
}

fn lock_applied(applied: &Mutex<Applied>) -> Result<MutexGuard<'_, Applied>, StoreError> {
    applied.lock().map_err(|_| StoreError::Poisoned)
}

/// The Raft state machine of one node: the whole group store in memory (shared with readers
/// through [`StateMachineStore::shared`]) and in the `state_machine` tree.
pub struct StateMachineStore {
    engine: Arc<Engine>,
    tree: Tree,
    store: SharedStore,
    /// Updated only while the store's write lock is held, so that a reader holding the read
    /// lock sees the groups and the applied log id of the same moment.
    applied: Arc<Mutex<Applied>>,
    snapshots: Arc<SnapshotFile>,
    /// The digest of the family records in the tree (only `apply` and `install` change it).
    digest: Digest,
    /// The snapshot file found at open.
    snapshot_at_open: Option<Identity>,
    stats: Arc<StorageStats>,
}

/// Counters of storage conditions that are retried rather than fatal, for the self-metrics.
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Failed attempts to write a snapshot file (built or received); each is retried with
    /// backoff.
    pub snapshot_write_failures: std::sync::atomic::AtomicU64,
}

/// Builds snapshots of a [`StateMachineStore`] (openraft runs it in its own task).
pub struct SnapshotBuilder {
    engine: Arc<Engine>,
    store: SharedStore,
    applied: Arc<Mutex<Applied>>,
    snapshots: Arc<SnapshotFile>,
    stats: Arc<StorageStats>,
}

impl StateMachineStore {
    /// Loads the state machine of `engine`: from the tree, or from `snapshot.bin` when the
    /// snapshot is newer than the tree (the tree is then rewritten durably).
    pub(crate) fn open(engine: Arc<Engine>) -> Result<StateMachineStore, StoreError> {
        let tree = engine.tree(SM_TREE)?;
        let (mut store, mut applied, mut digest) = load(&tree)?;
        let (snapshots, on_disk) =
            SnapshotFile::open(engine.dir()).map_err(|e| StoreError::Damaged {
                file: crate::snapshot_path(engine.dir()),
                what: e.to_string(),
            })?;
        let snapshot_at_open = on_disk.as_ref().map(|(_, id)| *id);
        if let Some(((meta, data), _)) = on_disk
            && meta.last_log_id > applied.last_applied
        {
            tracing::info!(
                snapshot = %meta,
                tree_last_applied = ?applied.last_applied,
                "state-machine tree is behind the durable snapshot; restoring from the snapshot"
            );
            store = GroupStore::decode_snapshot(&data)
                .map_err(|e| StoreError::Corrupt(format!("snapshot.bin data: {e}")))?;
            applied = Applied {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
            };
            let (batch, d) = rewrite_batch(&tree, &store, &applied)?;
            tree.apply_batch(batch)
                .map_err(StoreError::sled("restore state machine from snapshot"))?;
            engine.sync_blocking()?;
            digest = d;
        }
        Ok(StateMachineStore {
            engine,
            tree,
            store: Arc::new(RwLock::new(store)),
            applied: Arc::new(Mutex::new(applied)),
            snapshots: Arc::new(snapshots),
            digest,
            snapshot_at_open,
            stats: Arc::default(),
        })
    }

    /// The snapshot file found at open (its last log index and file CRC), if any.
    pub(crate) fn snapshot_at_open(&self) -> Option<Identity> {
        self.snapshot_at_open
    }

    /// Counters of retried storage conditions, for the self-metrics.
    pub fn stats(&self) -> Arc<StorageStats> {
        self.stats.clone()
    }

    /// Index of the last log entry applied to the state machine (0 when none).
    pub(crate) fn snapshot_index(&self) -> u64 {
        lock_applied(&self.applied)
            .map(|a| a.last_applied.map_or(0, |l| l.index))
            .unwrap_or(0)
    }

    /// The in-memory group store, for readers (rendering `/metrics`, the JSON API). Only this
    /// state machine writes to it; take the read lock briefly.
    pub fn shared(&self) -> SharedStore {
        self.store.clone()
    }

    /// Applies `entries` in memory and writes what changed, plus the applied state, as one
    /// sled batch (not fsynced: see the crate docs).
    fn apply_entries(
        &mut self,
        entries: impl Iterator<Item = Entry>,
    ) -> Result<Vec<CommandResponse>, StoreError> {
        let mut responses = Vec::new();
        let mut changes = Changes::default();
        let record = {
            let mut store = write_lock(&self.store)?;
            let mut applied = lock_applied(&self.applied)?;
            let mut next = applied.clone();
            for entry in entries {
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::Applied,
                    EntryPayload::Normal(cmd) => {
                        let (response, effect) = store.apply(&cmd);
                        changes.record(effect);
                        response
                    }
                    EntryPayload::Membership(m) => {
                        next.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::Applied
                    }
                };
                next.last_applied = Some(entry.log_id);
                responses.push(response);
            }
            if responses.is_empty() {
                return Ok(responses);
            }
            *applied = next.clone();
            MetaRecord {
                applied: next,
                clock_ns: store.clock_ns(),
                digest: self.digest,
            }
        };
        let (batch, digest) = {
            let store = read_lock(&self.store)?;
            changes.into_batch(&self.tree, &store, record)?
        };
        self.tree
            .apply_batch(batch)
            .map_err(StoreError::sled("apply to state machine"))?;
        self.digest = digest;
        crate::crash_point!("pgw-store::sm::after-apply");
        Ok(responses)
    }

    async fn install(&mut self, meta: &Meta, data: Vec<u8>) -> Result<(), StoreError> {
        let store = GroupStore::decode_snapshot(&data)
            .map_err(|e| StoreError::Corrupt(format!("received snapshot {meta}: {e}")))?;
        let applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        // The snapshot file first: if we crash before the tree is rewritten, `open` restores
        // from the file. The other order could leave a tree ahead of an older snapshot after
        // the log was purged up to the tree.
        persist_retrying(&self.engine, &self.snapshots, &self.stats, meta, data).await?;
        crate::crash_point!("pgw-store::snapshot::install-before-tree");
        let (batch, digest) = rewrite_batch(&self.tree, &store, &applied)?;
        self.tree
            .apply_batch(batch)
            .map_err(StoreError::sled("install snapshot into state machine"))?;
        self.engine.sync_and_mark(|_| {}).await?;
        self.digest = digest;
        let old = {
            let mut current = write_lock(&self.store)?;
            *lock_applied(&self.applied)? = applied;
            std::mem::replace(&mut *current, store)
        };
        // Free the replaced store outside the lock.
        drop(old);
        Ok(())
    }

    fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            store: self.store.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// Makes `(meta, data)` the durable snapshot and records its identity in the marker. A failed
/// write (a full disk, no file descriptor left) is retried with backoff, up to about a minute,
/// and counted; only a write that keeps failing is returned as an error (openraft then stops,
/// and the node exits for its supervisor).
async fn persist_retrying(
    engine: &Arc<Engine>,
    snapshots: &SnapshotFile,
    stats: &StorageStats,
    meta: &Meta,
    data: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    const ATTEMPTS: u32 = 8;
    let mut delay = std::time::Duration::from_millis(250);
    let mut data = data;
    for attempt in 1..=ATTEMPTS {
        match snapshots.persist(meta, data).await {
            Ok((back, identity)) => {
                if let Some(id) = identity {
                    engine
                        .mark(move |m| m.snapshot = Some((id.index, id.crc)))
                        .await?;
                }
                return Ok(back);
            }
            Err((e, back)) => {
                let Some(back) = back else {
                    return Err(e);
                };
                data = back;
                stats
                    .snapshot_write_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if attempt == ATTEMPTS {
                    return Err(e);
                }
                tracing::warn!(
                    error = %e,
                    attempt,
                    retry_in = ?delay,
                    snapshot = %meta,
                    "writing the snapshot file failed; retrying (see docs/operations.md, \
                     \"Snapshot write failures\")"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(15));
            }
        }
    }
    Err(StoreError::Corrupt(
        "unreachable: no snapshot attempt".into(),
    ))
}

/// Reads the groups and the applied state from the tree, and checks the family records
/// against the digest of the meta record.
fn load(tree: &Tree) -> Result<(GroupStore, Applied, Digest), StoreError> {
    let (applied, clock_ns, expected) = match tree
        .get(META)
        .map_err(StoreError::sled("read state-machine meta"))?
    {
        Some(v) if v.first() == Some(&codec::FORMAT_V1) => {
            let rec: MetaRecordV1 = codec::decode("state-machine meta", &v)?;
            (rec.applied, rec.clock_ns, None)
        }
        Some(v) => {
            let rec: MetaRecord = codec::decode("state-machine meta", &v)?;
            (rec.applied, rec.clock_ns, Some(rec.digest))
        }
        None => (Applied::default(), 0, Some(Digest::default())),
    };
    let mut families = Vec::new();
    let mut digest = Digest::default();
    for (base, value) in chunk::assemble(tree.scan_prefix([FAMILY]))? {
        digest.add(&base, crc32fast::hash(&value));
        let (key, name) = GroupingKey::decode_prefix(&base[1..])
            .map_err(|e| StoreError::Corrupt(format!("family key {base:02x?}: {e}")))?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("family name in {base:02x?} is not UTF-8")))?;
        let sf = decode_family(&value)
            .map_err(|e| StoreError::Corrupt(format!("family {name} of {key:?}: {e}")))?;
        families.push((key, name, sf));
    }
    if let Some(expected) = expected
        && expected != digest
    {
        return Err(StoreError::Corrupt(format!(
            "the state-machine tree holds {} family records that do not add up to the {} \
             recorded with its last applied entry ({:?}): records are missing or were altered",
            digest.records, expected.records, applied.last_applied
        )));
    }
    let store = if families.is_empty() && clock_ns == 0 {
        GroupStore::new()
    } else {
        GroupStore::restore(clock_ns, families)
    };
    Ok((store, applied, digest))
}

/// A batch that replaces the whole tree with `store` and `applied`, and the new digest.
fn rewrite_batch(
    tree: &Tree,
    store: &GroupStore,
    applied: &Applied,
) -> Result<(Batch, Digest), StoreError> {
    let mut batch = Batch::default();
    for k in tree.iter().keys() {
        batch.remove(k.map_err(StoreError::sled("scan state machine"))?);
    }
    let mut digest = Digest::default();
    for (key, group) in store.groups() {
        for (name, sf) in &group.families {
            let base = family_base(key, name);
            let crc = chunk::put(&mut batch, &base, &encode_family(sf), 0)?;
            digest.add(&base, crc);
        }
    }
    let record = MetaRecord {
        applied: applied.clone(),
        clock_ns: store.clock_ns(),
        digest,
    };
    batch.insert(META, codec::encode("state-machine meta", &record)?);
    Ok((batch, digest))
}

/// What one `apply` call changed, coalesced so that the batch writes each key's final value.
#[derive(Default)]
struct Changes {
    /// Every family was removed at some point (later effects may have re-added some).
    wiped: bool,
    /// The whole store was replaced (a restore): every family of the final store is written.
    replaced: bool,
    /// Groups removed at some point (later effects may have re-added some).
    removed: BTreeSet<GroupingKey>,
    /// Families written or deleted, by storage base key.
    touched: BTreeMap<Vec<u8>, (GroupingKey, String)>,
}

impl Changes {
    fn record(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Group { key, families } => {
                for name in families {
                    self.touched
                        .insert(family_base(&key, &name), (key.clone(), name));
                }
            }
            Effect::GroupRemoved(key) => {
                if !self.wiped {
                    self.removed.insert(key);
                }
            }
            Effect::Wiped => {
                self.wiped = true;
                self.removed.clear();
            }
            Effect::Replaced => {
                self.wiped = true;
                self.replaced = true;
                self.removed.clear();
            }
            Effect::Many(effects) => {
                for effect in effects {
                    self.record(effect);
                }
            }
        }
    }

    /// The sled batch (deletions of removed groups as stored in the tree, then the final
    /// value, from memory, of every touched family, then the meta record) and the digest of
    /// the tree after it. A later write to the same key in a `Batch` replaces an earlier
    /// removal. `record.digest` is the digest before this batch.
    fn into_batch(
        self,
        tree: &Tree,
        store: &GroupStore,
        mut record: MetaRecord,
    ) -> Result<(Batch, Digest), StoreError> {
        let mut batch = Batch::default();
        let mut digest = record.digest;
        // Every family record this batch may change, with its header as stored (each once,
        // so that the digest loses each old record exactly once).
        let mut old: BTreeMap<Vec<u8>, Option<chunk::Header>> = BTreeMap::new();
        let prefixes: Vec<Vec<u8>> = if self.wiped {
            vec![vec![FAMILY]]
        } else {
            self.removed.iter().map(group_prefix).collect()
        };
        for prefix in prefixes {
            for item in tree.scan_prefix(prefix) {
                let (k, v) = item.map_err(StoreError::sled("scan state machine"))?;
                if let Some((base, &[0, 0, 0, 0])) = k.split_last_chunk::<4>() {
                    old.insert(base.to_vec(), Some(chunk::header(&v)?.0));
                }
                batch.remove(k);
            }
        }
        let mut finals: BTreeMap<Vec<u8>, (GroupingKey, String)> = self.touched;
        if self.replaced {
            // Every stored family was removed above; write the final store whole.
            for (key, group) in store.groups() {
                for name in group.families.keys() {
                    finals.insert(family_base(key, name), (key.clone(), name.clone()));
                }
            }
        }
        for base in finals.keys() {
            if !old.contains_key(base) {
                old.insert(base.clone(), chunk::stored_header(tree, base)?);
            }
        }
        for (base, header) in &old {
            if let Some(h) = header {
                // A record written before checksums carries none: read its value's CRC.
                let crc = match h.crc {
                    Some(crc) => crc,
                    None => chunk::get(tree, base)?.map_or(0, |v| crc32fast::hash(&v)),
                };
                digest.remove(base, crc);
            }
        }
        for (base, (key, name)) in finals {
            let count = old.get(&base).copied().flatten().map_or(0, |h| h.count);
            match store.get(&key).and_then(|g| g.families.get(&name)) {
                Some(sf) => {
                    let crc = chunk::put(&mut batch, &base, &encode_family(sf), count)?;
                    digest.add(&base, crc);
                }
                None => chunk::remove(&mut batch, &base, count),
            }
        }
        record.digest = digest;
        batch.insert(META, codec::encode("state-machine meta", &record)?);
        Ok((batch, digest))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let applied = lock_applied(&self.applied)
            .map(|a| a.clone())
            .sto(ErrorSubject::StateMachine, ErrorVerb::Read)?;
        Ok((applied.last_applied, applied.last_membership))
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
        self.builder()
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
        let loaded = self
            .snapshots
            .load()
            .await
            .sto(ErrorSubject::Snapshot(None), ErrorVerb::Read)?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl SnapshotBuilder {
    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        // The read lock pins one moment: `applied` only changes under the write lock.
        let (data, applied) = {
            let store = read_lock(&self.store)?;
            let applied = lock_applied(&self.applied)?.clone();
            (store.encode_snapshot(), applied)
        };
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let snapshot_id = match &applied.last_applied {
            Some(l) => format!("{l}-{stamp}"),
            None => format!("none-{stamp}"),
        };
        let meta = Meta {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership,
            snapshot_id,
        };
        let data =
            persist_retrying(&self.engine, &self.snapshots, &self.stats, &meta, data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Encodes the store as of the last applied entry and makes it the durable snapshot
    /// before returning it.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build()
            .await
            .sto(ErrorSubject::Snapshot(None), ErrorVerb::Write)
    }
}
