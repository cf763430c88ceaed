//! Values larger than one chunk round-trip through the log and the state machine.

use openraft::RaftLogReader;
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use prost::Message;

use crate::fixtures::*;

/// A ~5 MiB push is one log entry of ~80 chunks and one state-machine family of as many; both
/// come back intact after a restart.
#[tokio::test]
async fn five_mib_entry_and_family_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let j = key(&[("job", "big")]);
    let fam = big_gauge("huge", 5 << 20);
    assert!(fam.encoded_len() >= 5 << 20);
    let entry = normal(1, 1, push(&j, true, 1_000, &[fam]));
    let before;
    {
        let (mut log, mut sm) = pgw_store::open(dir.path()).unwrap();
        log.blocking_append([entry.clone(), blank(1, 2)])
            .await
            .unwrap();
        let responses = sm.apply([entry.clone()]).await.unwrap();
        assert_eq!(responses, vec![pgw_core::CommandResponse::Applied]);
        before = content(&sm.shared());
        assert!(before.len() >= 5 << 20);
    }
    let (mut log, sm) = reopen(dir.path());
    let got = log.try_get_log_entries(1..3).await.unwrap();
    assert_eq!(got, vec![entry, blank(1, 2)]);
    assert_eq!(content(&sm.shared()), before);

    // Replacing the big family with a small one leaves no stale chunks behind.
    let mut sm = sm;
    sm.apply([normal(
        1,
        2,
        push(&j, true, 2_000, &[gauge("huge", &[("x", 1.0)])]),
    )])
    .await
    .unwrap();
    let small = content(&sm.shared());
    drop((log, sm));
    let (_log, sm) = reopen(dir.path());
    assert_eq!(content(&sm.shared()), small);

    // Nothing went to sled's blob files, which sled never fsyncs.
    let blobs = std::fs::read_dir(dir.path().join("blobs")).map_or(0, |d| d.count());
    assert_eq!(blobs, 0, "sled wrote blob files");
}
