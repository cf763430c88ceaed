//! The sled database of one storage directory, the durability shim, and the durability
//! marker updates that follow each sync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::StoreError;
use crate::marker::{self, Found, Mark, Marker};

/// sled segment size: 8 MiB, so sled's blob threshold (`segment_size / 4`) is 2 MiB.
const SEGMENT_SIZE: usize = 8 << 20;
/// sled page-cache budget. The state lives in memory in the `GroupStore`; sled's cache only
/// needs the recent log tail.
const CACHE_CAPACITY: u64 = 64 << 20;

/// Name of the tree holding the Raft log, vote, committed and last-purged ids.
pub(crate) const LOG_TREE: &str = "raft_log";
/// Name of the tree holding the state machine.
pub(crate) const SM_TREE: &str = "state_machine";

/// One sled database plus a second handle on its data file for real fsyncs, and the
/// durability marker ([`crate::marker`]).
pub(crate) struct Engine {
    pub(crate) db: sled::Db,
    /// A second handle on `<dir>/db`: `fsync` covers the whole inode, including what sled
    /// wrote through its own handle.
    data_file: Arc<File>,
    dir: PathBuf,
    /// The marker as found at open (checked by [`crate::open`]).
    found: Found,
    /// The open marker, from the end of [`crate::open`] on (`None` before).
    marker: Arc<Mutex<Option<Marker>>>,
}

/// Runs `f`, turning a panic into an error that carries its message, without printing it: sled
/// 0.34 panics on some damaged files instead of returning an error.
pub(crate) fn catch_panics<T>(
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, String> {
    use std::cell::{Cell, RefCell};
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
        static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let msg = match (
                    info.payload().downcast_ref::<&str>(),
                    info.payload().downcast_ref::<String>(),
                ) {
                    (Some(s), _) => (*s).to_string(),
                    (_, Some(s)) => s.clone(),
                    _ => "unknown panic".to_string(),
                };
                let at = info
                    .location()
                    .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
                MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    match result {
        Ok(r) => Ok(r),
        Err(_) => Err(MESSAGE.with(|m| m.borrow_mut().take()).map_or_else(
            || "sled panicked".to_string(),
            |m| format!("sled panicked: {m}"),
        )),
    }
}

impl Engine {
    /// Opens the database in `dir`, creating the directory if needed, and reads the marker.
    pub(crate) fn open(dir: &Path) -> Result<Engine, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(StoreError::io(format!("create {}", dir.display())))?;
        let found = marker::read(dir)?;
        let opened = catch_panics(|| {
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::LowSpace)
                .segment_size(SEGMENT_SIZE)
                .cache_capacity(CACHE_CAPACITY)
                .open()
                .map_err(StoreError::sled("open database"))
        });
        let db = match opened.map(|r| r.map_err(|e| e.to_string())).and_then(|r| r) {
            Ok(db) => db,
            Err(why) if why.contains("WouldBlock") || why.contains("temporarily unavailable") => {
                return Err(StoreError::InUse(dir.to_path_buf()));
            }
            Err(why) => {
                return Err(StoreError::Damaged {
                    file: dir.join("db"),
                    what: format!("the database cannot be opened ({why})"),
                });
            }
        };
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
            found,
            marker: Arc::new(Mutex::new(None)),
        })
    }

    /// The marker as found at open.
    pub(crate) fn found_mark(&self) -> &Found {
        &self.found
    }

    /// Writes a fresh marker holding `mark` (what open verified) and keeps it open for the
    /// updates that follow each sync.
    pub(crate) fn start_marker(&self, mark: Mark) -> Result<(), StoreError> {
        let m = Marker::create(&self.dir, mark)?;
        *lock(&self.marker) = Some(m);
        Ok(())
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

    /// Makes every write issued so far durable (sled's flush, which writes its buffers and
    /// calls `sync_file_range`, then a real `fsync` of the data file), then records `update`
    /// of the marker durably. Call with the update that describes what this sync made
    /// durable; the marker never runs ahead of the data.
    pub(crate) async fn sync_and_mark(
        &self,
        update: impl FnOnce(&mut Mark) + Send + 'static,
    ) -> Result<(), StoreError> {
        // All in one blocking task: one thread hop per sync, which is on the path of every
        // acknowledged write.
        let db = self.db.clone();
        let file = self.data_file.clone();
        let marker = self.marker.clone();
        tokio::task::spawn_blocking(move || {
            db.flush().map_err(StoreError::sled("flush"))?;
            file.sync_all().map_err(StoreError::io("fsync db"))?;
            store_mark(&marker, update)
        })
        .await
        .map_err(|e| StoreError::Io {
            context: "fsync task".into(),
            source: std::io::Error::other(e),
        })?
    }

    /// Records `update` of the marker durably, without a sync of the database (for what is
    /// durable by other means: a snapshot file, or a log about to be truncated).
    pub(crate) async fn mark(
        &self,
        update: impl FnOnce(&mut Mark) + Send + 'static,
    ) -> Result<(), StoreError> {
        let marker = self.marker.clone();
        tokio::task::spawn_blocking(move || store_mark(&marker, update))
            .await
            .map_err(|e| StoreError::Io {
                context: "marker task".into(),
                source: std::io::Error::other(e),
            })?
    }

    /// [`Engine::sync_and_mark`]'s sync alone, for non-async callers (open).
    pub(crate) fn sync_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(StoreError::sled("flush"))?;
        self.data_file
            .sync_all()
            .map_err(StoreError::io("fsync db"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_mark(
    marker: &Mutex<Option<Marker>>,
    update: impl FnOnce(&mut Mark),
) -> Result<(), StoreError> {
    let mut guard = lock(marker);
    // Before open finished there is no marker yet: open writes it from what it verified.
    let Some(m) = guard.as_mut() else {
        return Ok(());
    };
    let mut next = m.mark();
    update(&mut next);
    m.store(next)
}

/// fsyncs a directory so that file creations and renames in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!("fsync directory {}", dir.display())))
}
