//! openraft's storage conformance suite, against a fresh directory per case.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use pgw_store::{LogStore, StateMachineStore, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = pgw_store::open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

/// The suite starts its own runtime per case, so this is a plain test.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
