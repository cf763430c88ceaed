//! The durable snapshot file `<dir>/snapshot.bin`.
//!
//! Format 2: version byte ‖ u64 BE length ‖ postcard(`SnapshotMeta`) ‖ u64 BE length ‖ data
//! (the `GroupStore::encode_snapshot` blob) ‖ CRC-32 (u32 BE) of everything before it. Format 1
//! (before checksums) has no CRC and is still read. Replaced atomically: write
//! `snapshot.bin.tmp`, fsync it, rename it over `snapshot.bin`, fsync the directory. The
//! file's CRC is also recorded in the durability marker ([`crate::marker`]), so an older copy
//! put in its place is noticed.

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

/// The identity of the snapshot on disk: its last log index (`None`: a snapshot of nothing)
/// and the CRC-32 of the whole file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) index: Option<u64>,
    pub(crate) crc: u32,
}

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
    /// Loads (and verifies) the snapshot of `dir`, if any, and returns the handle with it and
    /// its identity.
    pub(crate) fn open(
        dir: &Path,
    ) -> Result<(SnapshotFile, Option<(Loaded, Identity)>), StoreError> {
        let loaded = read_identified(dir)?;
        let file = SnapshotFile {
            dir: dir.to_path_buf(),
            current: tokio::sync::Mutex::new(loaded.as_ref().map(|((m, _), _)| m.clone())),
        };
        Ok((file, loaded))
    }

    /// Makes `(meta, data)` the durable snapshot, unless the snapshot on disk is newer.
    /// Returns `data` back, and the new file's identity when it was written; on an error,
    /// returns `data` back with it (when it survived), so that the caller can retry.
    pub(crate) async fn persist(
        &self,
        meta: &Meta,
        data: Vec<u8>,
    ) -> Result<(Vec<u8>, Option<Identity>), (StoreError, Option<Vec<u8>>)> {
        let mut current = self.current.lock().await;
        if let Some(cur) = current.as_ref()
            && cur.last_log_id > meta.last_log_id
        {
            tracing::debug!(
                current = %cur,
                built = %meta,
                "not replacing a newer snapshot on disk"
            );
            return Ok((data, None));
        }
        let dir = self.dir.clone();
        let meta_owned = meta.clone();
        let (written, data) =
            tokio::task::spawn_blocking(move || (write(&dir, &meta_owned, &data), data))
                .await
                .map_err(|e| {
                    let e = StoreError::Io {
                        context: "snapshot write task".into(),
                        source: std::io::Error::other(e),
                    };
                    (e, None)
                })?;
        let crc = match written {
            Ok(crc) => crc,
            Err(e) => return Err((e, Some(data))),
        };
        *current = Some(meta.clone());
        let index = meta.last_log_id.map(|l| l.index);
        Ok((data, Some(Identity { index, crc })))
    }

    /// Reads the snapshot on disk.
    pub(crate) async fn load(&self) -> Result<Option<Loaded>, StoreError> {
        // Hold the lock so a concurrent writer's rename cannot interleave with the read.
        let _current = self.current.lock().await;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || read_identified(&dir).map(|l| l.map(|(l, _)| l)))
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
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Loaded, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("{FILE}: {why}"));
    let (&v, _) = bytes.split_first().ok_or_else(|| corrupt("empty file"))?;
    let body = match v {
        codec::FORMAT_V1 => bytes,
        codec::FORMAT => {
            let (body, crc) = bytes
                .split_last_chunk::<4>()
                .ok_or_else(|| corrupt("shorter than its checksum"))?;
            if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
                return Err(corrupt(&format!(
                    "checksum mismatch over its {} bytes: the file is truncated, damaged or altered",
                    bytes.len()
                )));
            }
            body
        }
        v => return Err(corrupt(&format!("unsupported format version {v}"))),
    };
    let rest = &body[1..];
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

fn read_identified(dir: &Path) -> Result<Option<(Loaded, Identity)>, StoreError> {
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let crc = crc32fast::hash(&bytes);
            let loaded = decode(&bytes)?;
            let index = loaded.0.last_log_id.map(|l| l.index);
            Ok(Some((loaded, Identity { index, crc })))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            context: format!("read {}", path.display()),
            source: e,
        }),
    }
}

/// Writes the snapshot file durably; returns the CRC-32 of the whole file.
fn write(dir: &Path, meta: &Meta, data: &[u8]) -> Result<u32, StoreError> {
    let bytes = encode(meta, data)?;
    let crc = crc32fast::hash(&bytes);
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
    sync_dir(dir)?;
    Ok(crc)
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
        let mut v = bytes.clone();
        v[0] = 3;
        assert!(decode(&v).is_err());
        assert!(decode(&[]).is_err());
        // A flipped byte anywhere, or any truncation, is caught.
        for i in 1..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(decode(&flipped).is_err(), "byte {i}");
            assert!(decode(&bytes[..i]).is_err(), "truncated to {i}");
        }
    }
}
