//! openraft's storage conformance suite against the in-memory store of the simulation, and
//! its crash model.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageError};
use pgw_store::TypeConfig;
use pgw_store::mem::{MemConfig, MemDisk, MemLogStore, MemStateMachine};

use crate::fixtures::*;

struct Builder(MemConfig);

impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine, MemDisk> for Builder {
    async fn build(&self) -> Result<(MemDisk, MemLogStore, MemStateMachine), StorageError<u64>> {
        let disk = MemDisk::new();
        let (log, sm) = disk.open(self.0).expect("open in-memory store");
        Ok((disk, log, sm))
    }
}

/// The suite starts its own runtime per case, so this is a plain test.
#[test]
fn openraft_storage_suite_mem() {
    Suite::test_all(Builder(MemConfig::default())).expect("openraft storage suite (mem)");
}

/// The same suite with a real fsync delay and frequent state-machine checkpoints.
#[test]
fn openraft_storage_suite_mem_with_delays() {
    let config = MemConfig {
        fsync: std::time::Duration::from_millis(1),
        checkpoint_every: 2,
    };
    Suite::test_all(Builder(config)).expect("openraft storage suite (mem, delays)");
}

/// A crash keeps the durable log, vote and snapshot, loses the state machine after its last
/// checkpoint and an unflushed committed id, and fences the crashed incarnation.
#[tokio::test]
async fn crash_keeps_durable_state_only() {
    let disk = MemDisk::new();
    let config = MemConfig {
        fsync: std::time::Duration::ZERO,
        checkpoint_every: 3,
    };
    let j = key(&[("job", "j")]);
    let (mut log, mut sm) = disk.open(config).unwrap();
    let entries = vec![
        membership(1, 1, &[1]),
        normal(1, 2, push(&j, true, 1_000, &[gauge("a", &[("x", 1.0)])])),
        normal(1, 3, push(&j, true, 2_000, &[gauge("a", &[("x", 2.0)])])),
        normal(1, 4, push(&j, true, 3_000, &[gauge("a", &[("x", 3.0)])])),
    ];
    log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
    append(&mut log, entries.clone()).await;
    log.save_committed(Some(lid(1, 4))).await.unwrap();
    let mut rest = entries;
    let last = rest.split_off(3);
    sm.apply(rest).await.unwrap();
    sm.apply(last).await.unwrap();
    let summary = disk.summary();
    assert_eq!(summary.last_log, Some(lid(1, 4)));
    // Committed was saved after the last flush: not durable yet.
    assert_eq!(summary.committed, None);
    // Checkpointed after 3 entries (index 3), not after the 4th.
    assert_eq!(summary.checkpoint, Some(lid(1, 3)));

    // Crash: reopen. The old incarnation is fenced.
    let (mut log2, mut sm2) = disk.open(config).unwrap();
    assert!(log.save_vote(&openraft::Vote::new(2, 1)).await.is_err());
    assert_eq!(
        log2.read_vote().await.unwrap(),
        Some(openraft::Vote::new(1, 1))
    );
    assert_eq!(log2.read_committed().await.unwrap(), None);
    let (applied, _) = sm2.applied_state().await.unwrap();
    assert_eq!(applied, Some(lid(1, 3)));
    assert_eq!(log2.try_get_log_entries(1..5).await.unwrap().len(), 4);

    // A snapshot is durable and newer than the checkpoint: the next incarnation starts there.
    sm2.apply([normal(
        1,
        4,
        push(&j, true, 3_000, &[gauge("a", &[("x", 3.0)])]),
    )])
    .await
    .unwrap();
    let snap = sm2
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(lid(1, 4)));
    let before = content(&sm2.shared());
    let (_log3, mut sm3) = disk.open(config).unwrap();
    assert_eq!(sm3.applied_state().await.unwrap().0, Some(lid(1, 4)));
    assert_eq!(content(&sm3.shared()), before);
}

/// An append whose fsync never completes (the future is dropped: a crash) leaves nothing.
#[tokio::test]
async fn crash_during_append_loses_the_unflushed_entries() {
    let disk = MemDisk::new();
    let config = MemConfig {
        fsync: std::time::Duration::from_millis(200),
        checkpoint_every: 0,
    };
    let (mut log, _sm) = disk.open(config).unwrap();
    append(&mut log, vec![membership(1, 1, &[1])]).await;
    assert_eq!(disk.summary().last_log, Some(lid(1, 1)));
    let j = key(&[("job", "j")]);
    let pending = append(
        &mut log,
        vec![normal(
            1,
            2,
            push(&j, true, 1_000, &[gauge("a", &[("x", 1.0)])]),
        )],
    );
    // Dropped before the fsync finished.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(1), pending).await;
    assert_eq!(disk.summary().last_log, Some(lid(1, 1)));
}

async fn append(log: &mut MemLogStore, entries: Vec<openraft::Entry<TypeConfig>>) {
    log.blocking_append(entries).await.unwrap();
}
