//! The state machine: apply, restart, snapshots.

use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use pgw_core::{Command, CommandResponse};

use crate::fixtures::*;

/// Applied pushes, deletes and a wipe are rebuilt from disk after a restart, byte for byte.
#[tokio::test]
async fn applied_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = key(&[("job", "j")]);
    let k = key(&[("job", "k"), ("instance", "i1")]);
    let before;
    let applied_before;
    {
        let (_log, mut sm) = pgw_store::open(dir.path()).unwrap();
        let responses = sm
            .apply([
                membership(1, 1, &[1]),
                normal(
                    1,
                    2,
                    push(
                        &j,
                        true,
                        1_000,
                        &[gauge("a", &[("x", 1.0)]), gauge("b", &[("y", 2.0)])],
                    ),
                ),
                normal(1, 3, push(&k, true, 2_000, &[gauge("a", &[("z", 3.0)])])),
                blank(1, 4),
            ])
            .await
            .unwrap();
        assert_eq!(responses.len(), 4);
        assert!(
            responses.iter().all(|r| *r == CommandResponse::Applied),
            "{responses:?}"
        );
        // One apply call with a POST, a PUT that drops a family and a delete.
        sm.apply([
            normal(1, 5, push(&j, false, 3_000, &[gauge("c", &[("w", 4.0)])])),
            normal(1, 6, push(&j, true, 4_000, &[gauge("a", &[("x", 5.0)])])),
            normal(1, 7, Command::Delete { key: k.clone() }),
        ])
        .await
        .unwrap();
        {
            let shared = sm.shared();
            let store = shared.read().unwrap();
            assert!(store.get(&k).is_none());
            let g = store.get(&j).unwrap();
            assert!(g.families.contains_key("a"));
            assert!(!g.families.contains_key("b"));
            assert!(!g.families.contains_key("c"));
        }
        before = content(&sm.shared());
        applied_before = sm.applied_state().await.unwrap();
        assert_eq!(applied_before.0, Some(lid(1, 7)));
        assert_eq!(applied_before.1.log_id(), &Some(lid(1, 1)));
    }
    let (_log, mut sm) = pgw_store::open(dir.path()).unwrap();
    assert_eq!(content(&sm.shared()), before);
    assert_eq!(sm.applied_state().await.unwrap(), applied_before);

    // A wipe followed by a push in the same apply call.
    sm.apply([
        normal(2, 8, Command::Wipe),
        normal(2, 9, push(&k, true, 5_000, &[gauge("d", &[("v", 6.0)])])),
    ])
    .await
    .unwrap();
    let after_wipe = content(&sm.shared());
    {
        let shared = sm.shared();
        let store = shared.read().unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.get(&k).is_some());
    }
    drop(sm);
    drop(_log);
    let (_log, mut sm) = pgw_store::open(dir.path()).unwrap();
    assert_eq!(content(&sm.shared()), after_wipe);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(2, 9)));
}

/// A built snapshot installed into a fresh store gives the same content and applied state,
/// and both survive a restart.
#[tokio::test]
async fn snapshot_build_and_install() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let j = key(&[("job", "j")]);
    let (_la, mut sma) = pgw_store::open(a.path()).unwrap();
    sma.apply([
        membership(1, 1, &[1, 2]),
        normal(
            1,
            2,
            push(
                &j,
                true,
                1_000,
                &[gauge("a", &[("x", 1.0)]), gauge("b", &[("y", 2.0)])],
            ),
        ),
        normal(
            1,
            3,
            push(
                &key(&[("job", "q")]),
                true,
                2_000,
                &[gauge("a", &[("z", 3.0)])],
            ),
        ),
    ])
    .await
    .unwrap();
    let snap = sma
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(lid(1, 3)));
    let current = sma.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot.get_ref(), snap.snapshot.get_ref());

    {
        let (_lb, mut smb) = pgw_store::open(b.path()).unwrap();
        let mut rx = smb.begin_receiving_snapshot().await.unwrap();
        *rx = *snap.snapshot.clone();
        smb.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(content(&smb.shared()), content(&sma.shared()));
        assert_eq!(
            smb.applied_state().await.unwrap(),
            sma.applied_state().await.unwrap()
        );
        assert_eq!(
            smb.get_current_snapshot().await.unwrap().unwrap().meta,
            snap.meta
        );
    }
    let (_lb, mut smb) = pgw_store::open(b.path()).unwrap();
    assert_eq!(content(&smb.shared()), content(&sma.shared()));
    assert_eq!(
        smb.applied_state().await.unwrap(),
        sma.applied_state().await.unwrap()
    );
    assert_eq!(
        smb.get_current_snapshot().await.unwrap().unwrap().meta,
        snap.meta
    );
}

/// When `snapshot.bin` is newer than the state-machine tree (a crash after the snapshot, before
/// the tree reached disk), opening restores the state machine from the snapshot.
#[tokio::test]
async fn open_restores_from_newer_snapshot() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let j = key(&[("job", "j")]);
    let (_la, mut sma) = pgw_store::open(a.path()).unwrap();
    sma.apply([
        membership(1, 1, &[1]),
        normal(1, 2, push(&j, true, 1_000, &[gauge("a", &[("x", 1.0)])])),
    ])
    .await
    .unwrap();
    sma.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // What a crash leaves: the snapshot file and the marker that recorded it, with a tree
    // that never reached disk.
    for f in ["snapshot.bin", "durable.mark"] {
        std::fs::copy(a.path().join(f), b.path().join(f)).unwrap();
    }
    let (_lb, mut smb) = pgw_store::open(b.path()).unwrap();
    assert_eq!(content(&smb.shared()), content(&sma.shared()));
    assert_eq!(
        smb.applied_state().await.unwrap(),
        sma.applied_state().await.unwrap()
    );
    drop((_lb, smb));
    // The tree was rewritten: reopening reads it; and the snapshot file the marker recorded
    // may not go missing.
    let (_lb, mut smb) = pgw_store::open(b.path()).unwrap();
    assert_eq!(content(&smb.shared()), content(&sma.shared()));
    assert_eq!(smb.applied_state().await.unwrap().0, Some(lid(1, 2)));
    drop((_lb, smb));
    std::fs::remove_file(b.path().join("snapshot.bin")).unwrap();
    let err = pgw_store::open(b.path())
        .err()
        .expect("a deleted snapshot is damage");
    assert!(err.to_string().contains("snapshot.bin"), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

/// A corrupt snapshot file is an error, not a panic.
#[tokio::test]
async fn corrupt_snapshot_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snapshot.bin"), b"\x01garbage").unwrap();
    let err = pgw_store::open(dir.path()).err().expect("open must fail");
    assert!(err.to_string().contains("snapshot.bin"), "{err}");
}

/// A restore (`Command::Replace`) rewrites the whole tree: the replaced store, and nothing of
/// what was there before, is rebuilt from disk after a restart; a push in the same apply call
/// after the restore is kept too.
#[tokio::test]
async fn replace_survives_reopen() {
    let src_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let j = key(&[("job", "j")]);
    let k = key(&[("job", "k")]);
    let old = key(&[("job", "old")]);
    let snapshot = {
        let (_log, mut sm) = pgw_store::open(src_dir.path()).unwrap();
        sm.apply([
            membership(1, 1, &[1]),
            normal(
                1,
                2,
                push(
                    &j,
                    true,
                    1_000,
                    &[gauge("a", &[("x", 1.0)]), big_gauge("big", 300_000)],
                ),
            ),
            normal(1, 3, push(&k, true, 2_000, &[gauge("b", &[("y", 2.0)])])),
        ])
        .await
        .unwrap();
        let shared = sm.shared();
        shared.read().unwrap().encode_snapshot()
    };
    let expected;
    {
        let (_log, mut sm) = pgw_store::open(dir.path()).unwrap();
        sm.apply([
            membership(1, 1, &[1]),
            normal(
                1,
                2,
                push(
                    &old,
                    true,
                    500,
                    &[gauge("a", &[("x", 9.0)]), big_gauge("big", 200_000)],
                ),
            ),
        ])
        .await
        .unwrap();
        let responses = sm
            .apply([
                normal(
                    1,
                    3,
                    Command::Replace {
                        snapshot: snapshot.clone(),
                    },
                ),
                normal(1, 4, push(&k, false, 3_000, &[gauge("c", &[("z", 3.0)])])),
            ])
            .await
            .unwrap();
        assert_eq!(
            responses,
            vec![CommandResponse::Applied, CommandResponse::Applied]
        );
        {
            let shared = sm.shared();
            let store = shared.read().unwrap();
            assert!(store.get(&old).is_none());
            assert_eq!(store.len(), 2);
            assert!(store.get(&k).unwrap().families.contains_key("c"));
        }
        expected = content(&sm.shared());
    }
    let (_log, mut sm) = reopen(dir.path());
    assert_eq!(content(&sm.shared()), expected);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(1, 4)));
}
