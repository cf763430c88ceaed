//! The sled database of one storage directory and the durability shim.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::StoreError;

/// sled segment size: 8 MiB, so sled's blob threshold (`segment_size / 4`) is 2 MiB.
const SEGMENT_SIZE: usize = 8 << 20;
/// sled page-cache budget. The state lives in memory in the `GroupStore`; sled's cache only
/// needs the recent log tail.
const CACHE_CAPACITY: u64 = 64 << 20;

/// Name of the tree holding the Raft log, vote, committed and last-purged ids.
pub(crate) const LOG_TREE: &str = "raft_log";
/// Name of the tree holding the state machine.
pub(crate) const SM_TREE: &str = "state_machine";

/// One sled database plus a second handle on its data file for real fsyncs.
pub(crate) struct Engine {
    pub(crate) db: sled::Db,
    /// A second handle on `<dir>/db`: `fsync` covers the whole inode, including what sled
    /// wrote through its own handle.
    data_file: Arc<File>,
    dir: PathBuf,
}

impl Engine {
    /// Opens the database in `dir`, creating the directory if needed.
    pub(crate) fn open(dir: &Path) -> Result<Engine, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(StoreError::io(format!("create {}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(StoreError::sled("open database"))?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path)
            .map_err(StoreError::io(format!("open {}", data_path.display())))?;
        // Make the files sled created, and their directory entries, durable before anything
        // is reported durable on top of them.
        let conf_path = dir.join("conf");
        if let Ok(conf) = File::open(&conf_path) {
            conf.sync_all()
                .map_err(StoreError::io(format!("fsync {}", conf_path.display())))?;
        }
        data_file
            .sync_all()
            .map_err(StoreError::io(format!("fsync {}", data_path.display())))?;
        sync_dir(dir)?;
        Ok(Engine {
            db,
            data_file: Arc::new(data_file),
            dir: dir.to_path_buf(),
        })
    }

    /// The storage directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (or creates) a tree.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db
            .open_tree(name)
            .map_err(StoreError::sled("open tree"))
    }

    /// Makes every write issued so far durable: sled's flush (which writes its buffers and
    /// calls `sync_file_range`), then a real `fsync` of the data file.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map_err(StoreError::sled("flush"))?;
        let file = self.data_file.clone();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| StoreError::Io {
                context: "fsync task".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(StoreError::io("fsync db"))
    }

    /// [`Engine::sync`] for non-async callers (open).
    pub(crate) fn sync_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(StoreError::sled("flush"))?;
        self.data_file
            .sync_all()
            .map_err(StoreError::io("fsync db"))
    }
}

/// fsyncs a directory so that file creations and renames in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!("fsync directory {}", dir.display())))
}
