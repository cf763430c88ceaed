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

/// Name of the durability watermark file: a version byte and the highest log index (u64 BE)
/// this directory is known to have made durable. sled recovers whatever prefix of its file it
/// can read and may come back *empty* from a damaged file without an error; the watermark lets
/// [`crate::open`] notice that instead of starting a node that silently lost acknowledged
/// writes (reference quirk Q8).
pub(crate) const WATERMARK: &str = "durable.mark";
/// The watermark is rewritten when the durable log index passed it by this many entries.
const WATERMARK_STEP: u64 = 1024;

/// One sled database plus a second handle on its data file for real fsyncs.
pub(crate) struct Engine {
    pub(crate) db: sled::Db,
    /// A second handle on `<dir>/db`: `fsync` covers the whole inode, including what sled
    /// wrote through its own handle.
    data_file: Arc<File>,
    dir: PathBuf,
    /// The watermark as last written (`None`: no file yet).
    watermark: std::sync::Mutex<Option<u64>>,
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
        let watermark = read_watermark(dir)?;
        Ok(Engine {
            db,
            data_file: Arc::new(data_file),
            dir: dir.to_path_buf(),
            watermark: std::sync::Mutex::new(watermark),
        })
    }

    /// Lowers the watermark to `index` if it is above (before a log truncation).
    pub(crate) async fn lower_watermark(&self, index: u64) -> Result<(), StoreError> {
        if self.watermark().is_none_or(|w| w <= index) {
            return Ok(());
        }
        self.store_watermark(index).await
    }

    /// Writes the watermark file off the async threads and records it.
    async fn store_watermark(&self, index: u64) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_watermark(&dir, index))
            .await
            .map_err(|e| StoreError::Io {
                context: "watermark task".into(),
                source: std::io::Error::other(e),
            })??;
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) = Some(index);
        Ok(())
    }

    /// The watermark found at open, if any.
    pub(crate) fn watermark(&self) -> Option<u64> {
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the log is durable up to `index`: writes the watermark file (atomically,
    /// fsync'd) the first time and whenever `index` passed it by [`WATERMARK_STEP`], or always
    /// when `force`. Call only after the data itself was made durable.
    pub(crate) async fn note_durable(&self, index: u64, force: bool) -> Result<(), StoreError> {
        let due = match self.watermark() {
            None => true,
            Some(w) => index > w && (force || index >= w.saturating_add(WATERMARK_STEP)),
        };
        if !due {
            return Ok(());
        }
        self.store_watermark(index).await
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
        // sled's flush and the fsync in one blocking task: one thread hop per sync instead of
        // two (sled's `flush_async` runs on sled's own pool), which is on the path of every
        // acknowledged write.
        let db = self.db.clone();
        let file = self.data_file.clone();
        tokio::task::spawn_blocking(move || {
            db.flush().map_err(StoreError::sled("flush"))?;
            file.sync_all().map_err(StoreError::io("fsync db"))
        })
        .await
        .map_err(|e| StoreError::Io {
            context: "fsync task".into(),
            source: std::io::Error::other(e),
        })?
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

fn read_watermark(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(WATERMARK);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            context: format!("read {}", path.display()),
            source: e,
        }),
        Ok(bytes) => match bytes.split_first() {
            Some((&1, rest)) if rest.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(rest);
                Ok(Some(u64::from_be_bytes(b)))
            }
            _ => Err(StoreError::Corrupt(format!(
                "{} is not a valid watermark file",
                path.display()
            ))),
        },
    }
}

fn write_watermark(dir: &Path, index: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let path = dir.join(WATERMARK);
    let tmp = dir.join(format!("{WATERMARK}.tmp"));
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&index.to_be_bytes());
    let mut f = File::create(&tmp).map_err(StoreError::io(format!("create {}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(StoreError::io(format!("rename {}", tmp.display())))?;
    sync_dir(dir)
}
