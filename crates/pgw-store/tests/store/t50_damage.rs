//! A damaged data file must stop the node instead of letting it start on less than it had
//! made durable (sled recovers the readable prefix of its file without an error).

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

use crate::fixtures::*;

/// Overwrites the first `n` bytes of `<dir>/db`.
fn damage_head(dir: &std::path::Path, n: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("db"))
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&vec![0xA5; n]).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn damaged_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = pgw_store::open(dir.path()).unwrap();
        log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
        log.blocking_append((1..=5).map(|i| blank(1, i)))
            .await
            .unwrap();
    }
    // An intact reopen is fine.
    drop(pgw_store::open(dir.path()).unwrap());
    damage_head(dir.path(), 64);
    match pgw_store::open(dir.path()) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("storage is damaged") || msg.contains("sled"),
                "{msg}"
            );
        }
        Ok((mut log, _)) => {
            // sled may recover some of it; what it recovered must then reach the watermark.
            let state = log.get_log_state().await.unwrap();
            panic!("opened a damaged store; recovered log state {state:?}");
        }
    }
}

#[tokio::test]
async fn a_fresh_directory_gets_a_marker_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    drop(pgw_store::open(dir.path()).unwrap());
    assert!(dir.path().join("durable.mark").exists());
    drop(pgw_store::open(dir.path()).unwrap());
}
