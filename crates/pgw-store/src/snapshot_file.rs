//! The durable snapshot file `<dir>/snapshot.bin`.
//!
//! Format: version byte ‖ u64 BE length ‖ postcard(`SnapshotMeta`) ‖ u64 BE length ‖ data
//! (the `GroupStore::encode_snapshot` blob). Replaced atomically: write `snapshot.bin.tmp`,
//! fsync it, rename it over `snapshot.bin`, fsync the directory.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use openraft::SnapshotMeta;

use crate::engine::sync_dir;
use crate::{Node, NodeId, StoreError, codec};

/// Snapshot metadata as openraft defines it for pgw.
pub(crate) type Meta = SnapshotMeta<NodeId, Node>;

/// A snapshot read from disk: its metadata and data.
pub(crate) type Loaded = (Meta, Vec<u8>);

const FILE: &str = "snapshot.bin";

/// The snapshot file of the node whose storage directory is `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}
const TMP: &str = "snapshot.bin.tmp";

/// The snapshot file of one storage directory. Writers are serialised and a snapshot never
/// replaces a newer one.
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    /// Metadata of the snapshot currently on disk; the lock serialises writers.
    current: tokio::sync::Mutex<Option<Meta>>,
}

impl SnapshotFile {
    /// Loads the snapshot of `dir`, if any, and returns the handle with it.
    pub(crate) fn open(dir: &Path) -> Result<(SnapshotFile, Option<Loaded>), StoreError> {
        let loaded = read(dir)?;
        let file = SnapshotFile {
            dir: dir.to_path_buf(),
            current: tokio::sync::Mutex::new(loaded.as_ref().map(|(m, _)| m.clone())),
        };
        Ok((file, loaded))
    }

    /// Makes `(meta, data)` the durable snapshot, unless the snapshot on disk is newer.
    /// Returns `data` back.
    pub(crate) async fn persist(&self, meta: &Meta, data: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let mut current = self.current.lock().await;
        if let Some(cur) = current.as_ref()
            && cur.last_log_id > meta.last_log_id
        {
            tracing::debug!(
                current = %cur,
                built = %meta,
                "not replacing a newer snapshot on disk"
            );
            return Ok(data);
        }
        let dir = self.dir.clone();
        let meta_owned = meta.clone();
        let data =
            tokio::task::spawn_blocking(move || write(&dir, &meta_owned, &data).map(|()| data))
                .await
                .map_err(|e| StoreError::Io {
                    context: "snapshot write task".into(),
                    source: std::io::Error::other(e),
                })??;
        *current = Some(meta.clone());
        Ok(data)
    }

    /// Reads the snapshot on disk.
    pub(crate) async fn load(&self) -> Result<Option<Loaded>, StoreError> {
        // Hold the lock so a concurrent writer's rename cannot interleave with the read.
        let _current = self.current.lock().await;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || read(&dir))
            .await
            .map_err(|e| StoreError::Io {
                context: "snapshot read task".into(),
                source: std::io::Error::other(e),
            })?
    }
}

fn encode(meta: &Meta, data: &[u8]) -> Result<Vec<u8>, StoreError> {
    let m = postcard::to_allocvec(meta).map_err(|e| StoreError::Encode {
        what: "snapshot meta",
        reason: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(1 + 8 + m.len() + 8 + data.len());
    out.push(codec::FORMAT);
    out.extend_from_slice(&(m.len() as u64).to_be_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Loaded, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("{FILE}: {why}"));
    let (&v, rest) = bytes.split_first().ok_or_else(|| corrupt("empty file"))?;
    if v != codec::FORMAT {
        return Err(corrupt(&format!("unsupported format version {v}")));
    }
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StoreError> {
        let (len, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| corrupt("bad length"))?;
        if tail.len() < len {
            return Err(corrupt("truncated"));
        }
        let (part, tail) = tail.split_at(len);
        *rest = tail;
        Ok(part.to_vec())
    };
    let mut rest = rest;
    let meta_bytes = take(&mut rest)?;
    let data = take(&mut rest)?;
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    let meta: Meta =
        postcard::from_bytes(&meta_bytes).map_err(|e| corrupt(&format!("meta: {e}")))?;
    Ok((meta, data))
}

fn read(dir: &Path) -> Result<Option<Loaded>, StoreError> {
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            context: format!("read {}", path.display()),
            source: e,
        }),
    }
}

fn write(dir: &Path, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let bytes = encode(meta, data)?;
    let tmp = dir.join(TMP);
    let path = dir.join(FILE);
    let mut f = File::create(&tmp).map_err(StoreError::io(format!("create {}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io(format!("write {}", tmp.display())))?;
    drop(f);
    crate::crash_point!("pgw-store::snapshot::before-rename");
    fs::rename(&tmp, &path).map_err(StoreError::io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let meta = Meta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "s1".into(),
        };
        let bytes = encode(&meta, b"data").unwrap();
        let (m, d) = decode(&bytes).unwrap();
        assert_eq!(m, meta);
        assert_eq!(d, b"data");
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut v = bytes;
        v[0] = 2;
        assert!(decode(&v).is_err());
        assert!(decode(&[]).is_err());
    }
}
