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
use crate::snapshot_file::{Meta, SnapshotFile};
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

/// The persisted meta record: [`Applied`] plus the store's push clock.
#[derive(Serialize, Deserialize)]
struct MetaRecord {
    applied: Applied,
    clock_ns: i64,
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
}

/// Builds snapshots of a [`StateMachineStore`] (openraft runs it in its own task).
pub struct SnapshotBuilder {
    store: SharedStore,
    applied: Arc<Mutex<Applied>>,
    snapshots: Arc<SnapshotFile>,
}

impl StateMachineStore {
    /// Loads the state machine of `engine`: from the tree, or from `snapshot.bin` when the
    /// snapshot is newer than the tree (the tree is then rewritten durably).
    pub(crate) fn open(engine: Arc<Engine>) -> Result<StateMachineStore, StoreError> {
        let tree = engine.tree(SM_TREE)?;
        let (mut store, mut applied) = load(&tree)?;
        let (snapshots, on_disk) = SnapshotFile::open(engine.dir())?;
        if let Some((meta, data)) = on_disk
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
            let batch = rewrite_batch(&tree, &store, &applied)?;
            tree.apply_batch(batch)
                .map_err(StoreError::sled("restore state machine from snapshot"))?;
            engine.sync_blocking()?;
        }
        Ok(StateMachineStore {
            engine,
            tree,
            store: Arc::new(RwLock::new(store)),
            applied: Arc::new(Mutex::new(applied)),
            snapshots: Arc::new(snapshots),
        })
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
            }
        };
        let batch = {
            let store = read_lock(&self.store)?;
            changes.into_batch(&self.tree, &store, &record)?
        };
        self.tree
            .apply_batch(batch)
            .map_err(StoreError::sled("apply to state machine"))?;
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
        self.snapshots.persist(meta, data).await?;
        crate::crash_point!("pgw-store::snapshot::install-before-tree");
        let batch = rewrite_batch(&self.tree, &store, &applied)?;
        self.tree
            .apply_batch(batch)
            .map_err(StoreError::sled("install snapshot into state machine"))?;
        self.engine.sync().await?;
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
            store: self.store.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// Reads the groups and the applied state from the tree.
fn load(tree: &Tree) -> Result<(GroupStore, Applied), StoreError> {
    let (applied, clock_ns) = match tree
        .get(META)
        .map_err(StoreError::sled("read state-machine meta"))?
    {
        Some(v) => {
            let rec: MetaRecord = codec::decode("state-machine meta", &v)?;
            (rec.applied, rec.clock_ns)
        }
        None => (Applied::default(), 0),
    };
    let mut families = Vec::new();
    for (base, value) in chunk::assemble(tree.scan_prefix([FAMILY]))? {
        let (key, name) = GroupingKey::decode_prefix(&base[1..])
            .map_err(|e| StoreError::Corrupt(format!("family key {base:02x?}: {e}")))?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("family name in {base:02x?} is not UTF-8")))?;
        let sf = decode_family(&value)
            .map_err(|e| StoreError::Corrupt(format!("family {name} of {key:?}: {e}")))?;
        families.push((key, name, sf));
    }
    let store = if families.is_empty() && clock_ns == 0 {
        GroupStore::new()
    } else {
        GroupStore::restore(clock_ns, families)
    };
    Ok((store, applied))
}

/// A batch that replaces the whole tree with `store` and `applied`.
fn rewrite_batch(tree: &Tree, store: &GroupStore, applied: &Applied) -> Result<Batch, StoreError> {
    let mut batch = Batch::default();
    for k in tree.iter().keys() {
        batch.remove(k.map_err(StoreError::sled("scan state machine"))?);
    }
    for (key, group) in store.groups() {
        for (name, sf) in &group.families {
            chunk::put(&mut batch, &family_base(key, name), &encode_family(sf), 0)?;
        }
    }
    let record = MetaRecord {
        applied: applied.clone(),
        clock_ns: store.clock_ns(),
    };
    batch.insert(META, codec::encode("state-machine meta", &record)?);
    Ok(batch)
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

    /// The sled batch: deletions of removed groups as stored in the tree, then the final
    /// value (from memory) of every touched family, then the meta record. A later write to the
    /// same key in a `Batch` replaces an earlier removal.
    fn into_batch(
        self,
        tree: &Tree,
        store: &GroupStore,
        record: &MetaRecord,
    ) -> Result<Batch, StoreError> {
        let mut batch = Batch::default();
        let prefixes: Vec<Vec<u8>> = if self.wiped {
            vec![vec![FAMILY]]
        } else {
            self.removed.iter().map(group_prefix).collect()
        };
        for prefix in prefixes {
            for k in tree.scan_prefix(prefix).keys() {
                batch.remove(k.map_err(StoreError::sled("scan state machine"))?);
            }
        }
        if self.replaced {
            // Every stored family was removed above; write the final store whole. Touched
            // families below are written again with the same final value (or removed).
            for (key, group) in store.groups() {
                for (name, sf) in &group.families {
                    chunk::put(&mut batch, &family_base(key, name), &encode_family(sf), 0)?;
                }
            }
        }
        for (base, (key, name)) in self.touched {
            let old = chunk::stored_count(tree, &base)?;
            match store.get(&key).and_then(|g| g.families.get(&name)) {
                Some(sf) => chunk::put(&mut batch, &base, &encode_family(sf), old)?,
                None => chunk::remove(&mut batch, &base, old),
            }
        }
        batch.insert(META, codec::encode("state-machine meta", record)?);
        Ok(batch)
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
        let data = self.snapshots.persist(&meta, data).await?;
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
