//! The Raft log survives a restart on the same directory.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{LogState, RaftLogReader, Vote};

use crate::fixtures::*;

/// Entries, vote, committed and last purged are all there after dropping everything and
/// reopening the directory.
#[tokio::test]
async fn log_vote_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(&[("job", "j")]);
    let entries = vec![
        blank(1, 1),
        membership(1, 2, &[1, 2, 3]),
        normal(1, 3, push(&k, true, 10, &[gauge("a", &[("x", 1.0)])])),
        blank(2, 4),
        normal(2, 5, push(&k, false, 20, &[gauge("b", &[("y", 2.0)])])),
        blank(2, 6),
    ];
    let vote = Vote::new(2, 1);
    {
        let (mut log, sm) = pgw_store::open(dir.path()).unwrap();
        log.save_vote(&vote).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        log.purge(lid(1, 2)).await.unwrap();
        log.save_committed(Some(lid(2, 5))).await.unwrap();
        drop((log, sm));
    }
    let (mut log, _sm) = pgw_store::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(lid(2, 5)));
    assert_eq!(
        log.get_log_state().await.unwrap(),
        LogState {
            last_purged_log_id: Some(lid(1, 2)),
            last_log_id: Some(lid(2, 6))
        }
    );
    let got = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(got, entries[2..].to_vec());
    let got = log.try_get_log_entries(4..=5).await.unwrap();
    assert_eq!(got, entries[3..5].to_vec());
}

/// Truncation is durable and later appends replace the truncated entries.
#[tokio::test]
async fn truncate_then_append_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = pgw_store::open(dir.path()).unwrap();
        log.blocking_append((1..=5).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.truncate(lid(1, 3)).await.unwrap();
        log.blocking_append([blank(2, 3)]).await.unwrap();
    }
    let (mut log, _sm) = pgw_store::open(dir.path()).unwrap();
    let got = log.try_get_log_entries(..).await.unwrap();
    assert_eq!(got, vec![blank(1, 1), blank(1, 2), blank(2, 3)]);
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(lid(2, 3))
    );
}
