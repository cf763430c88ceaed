//! The durability marker `<dir>/durable.mark`: what this directory is known to have made
//! durable, kept outside sled so that damage to sled's files can be told from a short store.
//!
//! sled recovers whatever prefix of its file it can read and may come back with less, or
//! empty, without an error. The marker records, after every sync that made something durable,
//! the last durable log index, the last saved vote and the identity of the durable snapshot.
//! [`crate::open`] compares the recovered store with it and refuses to start on less (design
//! invariant 11): a node never serves, votes or acknowledges with less than it had.
//!
//! # Format (version 2)
//! A 1 KiB file of two 512-byte slots (separate disk sectors, so a torn write damages at most
//! the slot being written). Writes alternate between the slots, each followed by
//! `fdatasync`; a read takes the valid slot with the higher sequence number. A slot is
//! `MAGIC ‖ seq ‖ log (index + 1, 0: none) ‖ vote term ‖ vote node ‖ vote flags ‖ snapshot
//! (index + 1, 0: none; u64) ‖ snapshot file CRC-32 ‖ snapshot flag ‖ CRC-32 of the slot`, all
//! big-endian. Version 1 (9 bytes: `1 ‖ log index`, written every 1,024 entries by earlier
//! builds) is read and rewritten as version 2.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::engine::sync_dir;

/// The marker file's name.
pub(crate) const FILE: &str = "durable.mark";
const MAGIC: &[u8; 8] = b"PGWMARK2";
const SLOT: u64 = 512;
const SLOT_LEN: usize = 8 + 8 + 8 + 8 + 8 + 1 + 8 + 4 + 1 + 4;

/// What the directory has made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The last durable log index (`None`: no entry was ever durable).
    pub(crate) log: Option<u64>,
    /// The last durable vote: (term, node id, committed), `None` before the first.
    pub(crate) vote: Option<(u64, u64, bool)>,
    /// The durable snapshot: (last log index, `None` for a snapshot of nothing; file CRC-32).
    pub(crate) snapshot: Option<(Option<u64>, u32)>,
}

fn encode(seq: u64, m: &Mark) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        b[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(MAGIC);
    put(&seq.to_be_bytes());
    put(&m.log.map_or(0, |i| i.saturating_add(1)).to_be_bytes());
    let (term, node, committed) = m.vote.unwrap_or_default();
    put(&term.to_be_bytes());
    put(&node.to_be_bytes());
    put(&[u8::from(m.vote.is_some()) | (u8::from(committed) << 1)]);
    let (index, crc) = m.snapshot.unwrap_or_default();
    put(&index.map_or(0, |i| i.saturating_add(1)).to_be_bytes());
    put(&crc.to_be_bytes());
    put(&[u8::from(m.snapshot.is_some())]);
    let sum = crc32fast::hash(&b[..SLOT_LEN - 4]);
    b[SLOT_LEN - 4..].copy_from_slice(&sum.to_be_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, Mark)> {
    let b = b.get(..SLOT_LEN)?;
    if &b[..8] != MAGIC {
        return None;
    }
    let sum = u32::from_be_bytes(b[SLOT_LEN - 4..].try_into().ok()?);
    if crc32fast::hash(&b[..SLOT_LEN - 4]) != sum {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let seq = u64_at(8)?;
    let log = u64_at(16)?.checked_sub(1);
    let (term, node, vflags) = (u64_at(24)?, u64_at(32)?, b[40]);
    let snap_index = u64_at(41)?.checked_sub(1);
    let snap_crc = u32::from_be_bytes(b.get(49..53)?.try_into().ok()?);
    let snap_present = b[53] == 1;
    Some((
        seq,
        Mark {
            log,
            vote: (vflags & 1 == 1).then_some((term, node, vflags & 2 == 2)),
            snapshot: snap_present.then_some((snap_index, snap_crc)),
        },
    ))
}

/// What [`read`] found on disk.
#[derive(Debug)]
pub(crate) enum Found {
    /// No marker file.
    Missing,
    /// A valid marker.
    Valid(Mark),
}

/// Reads the marker of `dir`. A file that exists but holds no valid slot is damage.
pub(crate) fn read(dir: &Path) -> Result<Found, StoreError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("read {}", path.display()),
                source: e,
            });
        }
        Ok(b) => b,
    };
    // Version 1: a version byte and the durable log index.
    if let [1, rest @ ..] = bytes.as_slice()
        && let Ok(index) = <[u8; 8]>::try_from(rest)
    {
        return Ok(Found::Valid(Mark {
            log: Some(u64::from_be_bytes(index)),
            ..Mark::default()
        }));
    }
    let slots = [0u64, SLOT].map(|at| bytes.get(at as usize..).and_then(decode));
    match slots {
        [Some(a), Some(b)] => Ok(Found::Valid(if a.0 >= b.0 { a.1 } else { b.1 })),
        [Some((_, m)), None] | [None, Some((_, m))] => Ok(Found::Valid(m)),
        [None, None] => Err(StoreError::Damaged {
            file: path,
            what: format!(
                "the durability marker ({} bytes) holds no valid record: it was truncated, \
                 overwritten or replaced",
                bytes.len()
            ),
        }),
    }
}

/// The open marker of a storage directory: the last mark written and the file it goes to.
pub(crate) struct Marker {
    path: PathBuf,
    file: File,
    seq: u64,
    mark: Mark,
}

impl Marker {
    /// Writes `mark` as a fresh version-2 marker (tmp file, fsync, rename, directory fsync)
    /// and opens it for the in-place updates of [`Marker::store`].
    pub(crate) fn create(dir: &Path, mark: Mark) -> Result<Marker, StoreError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        // Sequence 1 goes where [`Marker::store`] would put it (slot `seq % 2`).
        let mut bytes = vec![0u8; 2 * SLOT as usize];
        let at = SLOT as usize;
        bytes[at..at + SLOT_LEN].copy_from_slice(&encode(1, &mark));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .map_err(StoreError::io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path)
            .map_err(StoreError::io(format!("rename {}", tmp.display())))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(format!("open {}", path.display())))?;
        Ok(Marker {
            path,
            file,
            seq: 1,
            mark,
        })
    }

    /// The last mark written.
    pub(crate) fn mark(&self) -> Mark {
        self.mark
    }

    /// Makes `mark` durable: one slot write and `fdatasync`. A no-op when nothing changed.
    pub(crate) fn store(&mut self, mark: Mark) -> Result<(), StoreError> {
        if mark == self.mark {
            return Ok(());
        }
        let seq = self.seq + 1;
        let at = (seq % 2) * SLOT;
        self.file
            .write_all_at(&encode(seq, &mark), at)
            .and_then(|()| self.file.sync_data())
            .map_err(StoreError::io(format!("write {}", self.path.display())))?;
        self.seq = seq;
        self.mark = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mark {
        Mark {
            log: Some(41),
            vote: Some((3, 2, true)),
            snapshot: Some((Some(40), 0xdead_beef)),
        }
    }

    #[test]
    fn slots_round_trip_and_the_newest_valid_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Missing));
        let mut m = Marker::create(dir.path(), Mark::default()).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Valid(x) if x == Mark::default()));
        m.store(sample()).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Valid(x) if x == sample()));
        let newer = Mark {
            log: Some(42),
            ..sample()
        };
        m.store(newer).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Valid(x) if x == newer));
        // A torn write of the newest slot leaves the previous one.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = (m.seq % 2 * SLOT) as usize;
        bytes[newest + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Valid(x) if x == sample()));
        // Both slots damaged, or a truncated file: damage, not an empty mark.
        std::fs::write(&path, &bytes[..30]).unwrap();
        assert!(read(dir.path()).is_err());
        std::fs::write(&path, vec![0u8; 1024]).unwrap();
        assert!(read(dir.path()).is_err());
    }

    #[test]
    fn version_1_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&7u64.to_be_bytes());
        std::fs::write(dir.path().join(FILE), v1).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Valid(m) if m.log == Some(7)));
    }
}
