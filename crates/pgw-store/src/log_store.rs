//! The Raft log: openraft's v2 `RaftLogStorage` on the `raft_log` tree.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote,
};
use sled::{Batch, Tree};

use crate::engine::{Engine, LOG_TREE};
use crate::error::ResultExt;
use crate::{NodeId, StoreError, TypeConfig, chunk, codec};

type Entry = openraft::Entry<TypeConfig>;

/// Key prefix of log entries: `e ‖ index (u64 BE) ‖ chunk (u32 BE)`.
const ENTRY: u8 = b'e';
/// Key of the vote.
const VOTE: &[u8] = b"v";
/// Key of the last committed log id.
const COMMITTED: &[u8] = b"c";
/// Key of the last purged log id.
const PURGED: &[u8] = b"p";

fn entry_base(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// What [`LogStore::verify`] recovered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recovered {
    /// The last log index held or purged (`None`: the log is empty and nothing was purged).
    pub(crate) last_index: Option<u64>,
    /// The saved vote: (term, node id, committed).
    pub(crate) vote: Option<(u64, u64, bool)>,
}

/// The Raft log, vote, committed and last-purged log ids of one node.
///
/// Cheap to clone: clones share the database (openraft's log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<Engine>,
    tree: Tree,
    /// The last committed log index openraft reported (0 before any), shared with readers
    /// such as the readiness check: on a follower it is the leader's commit index as of the
    /// last heartbeat.
    committed: Arc<AtomicU64>,
}

impl LogStore {
    pub(crate) fn new(engine: Arc<Engine>) -> Result<LogStore, StoreError> {
        let tree = engine.tree(LOG_TREE)?;
        let mut store = LogStore {
            engine,
            tree,
            committed: Arc::new(AtomicU64::new(0)),
        };
        let saved: Option<LogId<NodeId>> = store.get_meta(COMMITTED, "committed log id")?;
        store.committed = Arc::new(AtomicU64::new(saved.map_or(0, |c| c.index)));
        Ok(store)
    }

    /// A live view of the committed log index (see the field docs).
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self
            .tree
            .get(key)
            .map_err(StoreError::sled("read log meta"))?
        {
            None => Ok(None),
            Some(v) => codec::decode(what, &v).map(Some),
        }
    }

    /// Entries with index in `[start, end)` (`end == None`: to the end of the log).
    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let lo = chunk::chunk_key(&entry_base(start), 0);
        let hi = match end {
            Some(end) => chunk::chunk_key(&entry_base(end), 0),
            None => vec![ENTRY + 1],
        };
        if lo >= hi {
            return Ok(Vec::new());
        }
        chunk::assemble(self.tree.range(lo..hi))?
            .into_iter()
            .map(|(base, bytes)| {
                let entry: Entry = codec::decode("log entry", &bytes)?;
                if base[1..] != entry.log_id.index.to_be_bytes() {
                    return Err(StoreError::Corrupt(format!(
                        "log entry {} stored under key {base:02x?}",
                        entry.log_id
                    )));
                }
                Ok(entry)
            })
            .collect()
    }

    fn first_entry_index(&self) -> Result<Option<u64>, StoreError> {
        self.next_entry_index(0)
    }

    /// The index of the first stored entry at or after `from`.
    fn next_entry_index(&self, from: u64) -> Result<Option<u64>, StoreError> {
        let Some(k) = self
            .tree
            .range(chunk::chunk_key(&entry_base(from), 0)..vec![ENTRY + 1])
            .keys()
            .next()
            .transpose()
            .map_err(StoreError::sled("scan log keys"))?
        else {
            return Ok(None);
        };
        k.get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("log key {k:02x?}")))
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let Some(last) = self
            .tree
            .scan_prefix([ENTRY])
            .keys()
            .next_back()
            .transpose()
            .map_err(StoreError::sled("read last log key"))?
        else {
            return Ok(None);
        };
        let index = last
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt(format!("log key {last:02x?}")))?;
        let bytes = chunk::get(&self.tree, &entry_base(index))?
            .ok_or_else(|| StoreError::Corrupt(format!("log entry {index}: chunk 0 missing")))?;
        let entry: Entry = codec::decode("log entry", &bytes)?;
        Ok(Some(entry.log_id))
    }

    async fn append_inner(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for entry in &entries {
            let base = entry_base(entry.log_id.index);
            let value = codec::encode("log entry", entry)?;
            let old = chunk::stored_count(&self.tree, &base)?;
            chunk::put(&mut batch, &base, &value, old)?;
        }
        self.tree
            .apply_batch(batch)
            .map_err(StoreError::sled("append log entries"))?;
        // Appends follow the end of the log (a conflicting tail was truncated first), so the
        // last appended index is the new durable end.
        let last = entries.last().map(|e| e.log_id.index);
        self.engine
            .sync_and_mark(move |m| {
                if last.is_some() {
                    m.log = last;
                }
            })
            .await?;
        crate::crash_point!("pgw-store::log::after-append");
        Ok(())
    }

    /// Reads the whole log once, as found at start: every entry must decode (checksums
    /// included) and the indexes must run without a gap from just after the last purged entry
    /// to the last one. Returns what was recovered.
    pub(crate) fn verify(&self) -> Result<Recovered, StoreError> {
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED, "last purged log id")?;
        let vote: Option<Vote<NodeId>> = self.get_meta(VOTE, "vote")?;
        let _committed: Option<LogId<NodeId>> = self.get_meta(COMMITTED, "committed log id")?;
        let mut expected = purged.map(|p| p.index + 1);
        let mut last = None;
        // In bounded slices: the log after a snapshot is short, but a node that never
        // snapshotted may hold many entries.
        // u64::MAX: nothing (left) to read.
        let mut start = self.first_entry_index()?.unwrap_or(u64::MAX);
        while start != u64::MAX {
            let end = start.saturating_add(1024);
            let entries = self.read_range(start, Some(end))?;
            for e in entries {
                let index = e.log_id.index;
                if let Some(want) = expected
                    && index != want
                {
                    return Err(StoreError::Corrupt(format!(
                        "the Raft log has a gap: entry {want} is missing before entry {index}"
                    )));
                }
                expected = Some(index + 1);
                last = Some(index);
            }
            // Continue at the next stored entry (a gap is reported above when one follows).
            start = self.next_entry_index(end)?.unwrap_or(u64::MAX);
        }
        Ok(Recovered {
            last_index: last.or(purged.map(|p| p.index)),
            vote: vote.map(|v| (v.leader_id.term, v.leader_id.node_id, v.committed)),
        })
    }

    /// Adds the removal of every entry key in `[lo, hi)` to `batch`.
    fn remove_range(&self, batch: &mut Batch, lo: Vec<u8>, hi: Vec<u8>) -> Result<(), StoreError> {
        for k in self.tree.range(lo..hi).keys() {
            batch.remove(k.map_err(StoreError::sled("scan log keys"))?);
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let Some(start) = start else {
            return Ok(Vec::new());
        };
        self.read_range(start, end)
            .sto(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self
            .get_meta(PURGED, "last purged log id")
            .sto(ErrorSubject::Logs, ErrorVerb::Read)?;
        let last = self
            .last_entry_id()
            .sto(ErrorSubject::Logs, ErrorVerb::Read)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let res: Result<(), StoreError> = async {
            let v = codec::encode("vote", vote)?;
            self.tree
                .insert(VOTE, v)
                .map_err(StoreError::sled("write vote"))?;
            let vote = (vote.leader_id.term, vote.leader_id.node_id, vote.committed);
            self.engine
                .sync_and_mark(move |m| m.vote = Some(vote))
                .await
        }
        .await;
        res.sto(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE, "vote")
            .sto(ErrorSubject::Vote, ErrorVerb::Read)
    }

    /// Written without an fsync: see the crate docs.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.committed
            .store(committed.as_ref().map_or(0, |c| c.index), Ordering::Relaxed);
        let res = match committed {
            Some(c) => codec::encode("committed log id", &c).and_then(|v| {
                self.tree
                    .insert(COMMITTED, v)
                    .map(drop)
                    .map_err(StoreError::sled("write committed"))
            }),
            None => self
                .tree
                .remove(COMMITTED)
                .map(drop)
                .map_err(StoreError::sled("write committed")),
        };
        res.sto(ErrorSubject::Store, ErrorVerb::Write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.get_meta(COMMITTED, "committed log id")
            .sto(ErrorSubject::Store, ErrorVerb::Read)
    }

    /// One sled batch and one fsync for all `entries`; `callback` is told only after the fsync.
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

    /// Deletes entries with index ≥ `log_id.index`, durably.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let res: Result<(), StoreError> = async {
            // Entries that were durable (but never committed) are going away: lower the
            // marker first, so a crash in between never looks like lost data.
            let keep = log_id.index.checked_sub(1);
            self.engine
                .mark(move |m| {
                    if m.log.is_some_and(|l| Some(l) > keep) {
                        m.log = keep;
                    }
                })
                .await?;
            let mut batch = Batch::default();
            let lo = chunk::chunk_key(&entry_base(log_id.index), 0);
            self.remove_range(&mut batch, lo, vec![ENTRY + 1])?;
            self.tree
                .apply_batch(batch)
                .map_err(StoreError::sled("truncate log"))?;
            self.engine.sync_and_mark(|_| {}).await
        }
        .await;
        res.sto(ErrorSubject::Log(log_id), ErrorVerb::Delete)
    }

    /// Deletes entries with index ≤ `log_id.index` and records `log_id` as last purged, in one
    /// atomic batch (not fsynced on its own: see the crate docs).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let res: Result<(), StoreError> = (|| {
            let mut batch = Batch::default();
            let lo = vec![ENTRY];
            let hi = match log_id.index.checked_add(1) {
                Some(next) => chunk::chunk_key(&entry_base(next), 0),
                None => vec![ENTRY + 1],
            };
            self.remove_range(&mut batch, lo, hi)?;
            batch.insert(PURGED, codec::encode("last purged log id", &log_id)?);
            self.tree
                .apply_batch(batch)
                .map_err(StoreError::sled("purge log"))
        })();
        res.sto(ErrorSubject::Log(log_id), ErrorVerb::Delete)
    }
}
