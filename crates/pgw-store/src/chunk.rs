//! Chunked values: a value of any size is stored as pieces of at most [`CHUNK_SIZE`] bytes
//! under `base ‖ chunk index (u32 BE)`. The value of chunk 0 starts with the number of chunks
//! (u32 BE), so a value can be read, replaced or deleted exactly even when `base` is a prefix
//! of another value's base (family names such as `foo` and `foobar`).
//!
//! Checksums: the top bit of the chunk count ([`CRC_FLAG`]) says that a CRC-32 of the whole
//! value (u32 BE) follows the count. Every value this build writes has one, and every read
//! verifies it, so a damaged or altered value is an error, never data. Values written before
//! checksums (flag clear) are still read.
//!
//! Why chunks: see the crate docs (sled writes messages over `segment_size / 4` to blob files
//! that it never fsyncs; small pieces keep every B-tree leaf in the fsynced `db` file).

use std::collections::BTreeMap;

use sled::{Batch, IVec, Tree};

use crate::StoreError;

/// Maximum size of one stored piece of a value (64 KiB).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Maximum size of one stored value (a log entry, or one family of one group): 2³¹ − 1 chunks of
/// [`CHUNK_SIZE`]. In practice values are bounded by memory long before this, and pushes by
/// the HTTP layer's body limit.
pub const MAX_VALUE_LEN: u64 = (MAX_CHUNKS as u64) * (CHUNK_SIZE as u64);

const HEADER: usize = 4;
/// Set in the chunk count when a CRC-32 of the whole value follows it.
const CRC_FLAG: u32 = 1 << 31;
/// The largest chunk count (the flag bit is not part of it).
const MAX_CHUNKS: u32 = CRC_FLAG - 1;

/// The header of a stored value: its chunk count and, for values written with checksums, the
/// CRC-32 of the whole value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) count: u32,
    pub(crate) crc: Option<u32>,
}

/// A reassembled value: its base key and its bytes.
pub(crate) type Value = (Vec<u8>, Vec<u8>);

/// The key of chunk `i` of the value stored under `base`.
pub(crate) fn chunk_key(base: &[u8], i: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 4);
    k.extend_from_slice(base);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Splits a chunk key into its base and chunk index.
fn split_key(key: &[u8]) -> Result<(&[u8], u32), StoreError> {
    let (base, idx) = key
        .split_last_chunk::<4>()
        .ok_or_else(|| StoreError::Corrupt(format!("chunk key too short: {key:02x?}")))?;
    Ok((base, u32::from_be_bytes(*idx)))
}

/// Reads the header from the value of chunk 0; returns it and the first piece of the value.
pub(crate) fn header(first: &[u8]) -> Result<(Header, &[u8]), StoreError> {
    let (n, rest) = first
        .split_first_chunk::<HEADER>()
        .ok_or_else(|| StoreError::Corrupt("chunk 0 shorter than its header".into()))?;
    let n = u32::from_be_bytes(*n);
    let count = n & MAX_CHUNKS;
    if count == 0 {
        return Err(StoreError::Corrupt("chunk count 0".into()));
    }
    if n & CRC_FLAG == 0 {
        return Ok((Header { count, crc: None }, rest));
    }
    let (crc, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| StoreError::Corrupt("chunk 0 shorter than its checksum".into()))?;
    let crc = Some(u32::from_be_bytes(*crc));
    Ok((Header { count, crc }, rest))
}

/// Checks a reassembled value against the checksum of its header.
fn verify(base: &[u8], h: Header, value: &[u8]) -> Result<(), StoreError> {
    match h.crc {
        Some(crc) if crc32fast::hash(value) != crc => Err(StoreError::Corrupt(format!(
            "checksum mismatch in the value under {base:02x?} ({} bytes, {} chunks): the record \
             was damaged or altered",
            value.len(),
            h.count
        ))),
        _ => Ok(()),
    }
}

/// The header of the value currently stored under `base` in `tree` (`None` when absent).
pub(crate) fn stored_header(tree: &Tree, base: &[u8]) -> Result<Option<Header>, StoreError> {
    match tree
        .get(chunk_key(base, 0))
        .map_err(StoreError::sled("read chunk header"))?
    {
        None => Ok(None),
        Some(first) => Ok(Some(header(&first)?.0)),
    }
}

/// Number of chunks of the value currently stored under `base` in `tree` (0 when absent).
pub(crate) fn stored_count(tree: &Tree, base: &[u8]) -> Result<u32, StoreError> {
    Ok(stored_header(tree, base)?.map_or(0, |h| h.count))
}

/// Adds the writes that store `value` under `base` to `batch`, deleting the surplus chunks of
/// a previous value of `old_count` chunks. Returns the CRC-32 of `value` (stored with it).
pub(crate) fn put(
    batch: &mut Batch,
    base: &[u8],
    value: &[u8],
    old_count: u32,
) -> Result<u32, StoreError> {
    let too_long = || StoreError::Encode {
        what: "chunked value",
        reason: format!(
            "{} bytes exceed the maximum of {MAX_VALUE_LEN}",
            value.len()
        ),
    };
    let n = u32::try_from(value.len().div_ceil(CHUNK_SIZE).max(1))
        .ok()
        .filter(|n| *n <= MAX_CHUNKS)
        .ok_or_else(too_long)?;
    let crc = crc32fast::hash(value);
    let mut pieces = value.chunks(CHUNK_SIZE);
    let first = pieces.next().unwrap_or(&[]);
    let mut v0 = Vec::with_capacity(HEADER + 4 + first.len());
    v0.extend_from_slice(&(n | CRC_FLAG).to_be_bytes());
    v0.extend_from_slice(&crc.to_be_bytes());
    v0.extend_from_slice(first);
    batch.insert(chunk_key(base, 0), v0);
    for (i, piece) in (1u32..).zip(pieces) {
        batch.insert(chunk_key(base, i), piece);
    }
    for i in n..old_count {
        batch.remove(chunk_key(base, i));
    }
    Ok(crc)
}

/// Adds the deletion of a value of `old_count` chunks under `base` to `batch`.
pub(crate) fn remove(batch: &mut Batch, base: &[u8], old_count: u32) {
    for i in 0..old_count {
        batch.remove(chunk_key(base, i));
    }
}

/// Reads the value stored under `base`, if any.
pub(crate) fn get(tree: &Tree, base: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(first) = tree
        .get(chunk_key(base, 0))
        .map_err(StoreError::sled("read chunk"))?
    else {
        return Ok(None);
    };
    let (h, piece) = header(&first)?;
    let n = h.count;
    let mut out = piece.to_vec();
    for i in 1..n {
        let piece = tree
            .get(chunk_key(base, i))
            .map_err(StoreError::sled("read chunk"))?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("chunk {i} of {n} missing under {base:02x?}"))
            })?;
        out.extend_from_slice(&piece);
    }
    verify(base, h, &out)?;
    Ok(Some(out))
}

/// Reassembles every value from an ordered scan over chunk keys (a whole prefix, or a key
/// range that starts and ends at chunk 0 of some base). Returns `(base, value)` in base order.
pub(crate) fn assemble(
    scan: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
) -> Result<Vec<Value>, StoreError> {
    // Chunks of one base come in index order; grouping by base keeps this correct even when
    // another base sorts between two chunks (a name that extends another with a NUL byte).
    let mut groups: BTreeMap<Vec<u8>, Vec<(u32, IVec)>> = BTreeMap::new();
    for item in scan {
        let (k, v) = item.map_err(StoreError::sled("scan chunks"))?;
        let (base, i) = split_key(&k)?;
        groups.entry(base.to_vec()).or_default().push((i, v));
    }
    let mut out = Vec::with_capacity(groups.len());
    for (base, chunks) in groups {
        let mut it = chunks.into_iter();
        let Some((0, first)) = it.next() else {
            return Err(StoreError::Corrupt(format!(
                "chunk 0 missing under {base:02x?}"
            )));
        };
        let (h, piece) = header(&first)?;
        let n = h.count;
        let mut value = piece.to_vec();
        let mut count = 1u32;
        for (i, piece) in it {
            if i != count {
                return Err(StoreError::Corrupt(format!(
                    "chunk {count} of {n} missing under {base:02x?}"
                )));
            }
            value.extend_from_slice(&piece);
            count += 1;
        }
        if count != n {
            return Err(StoreError::Corrupt(format!(
                "{count} of {n} chunks present under {base:02x?}"
            )));
        }
        verify(&base, h, &value)?;
        out.push((base, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_tree() -> (sled::Db, Tree) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let t = db.open_tree("t").unwrap();
        (db, t)
    }

    #[test]
    fn put_get_shrink_remove() {
        let (_db, t) = temp_tree();
        let big: Vec<u8> = (0..3 * CHUNK_SIZE + 5).map(|i| i as u8).collect();
        let mut b = Batch::default();
        put(&mut b, b"foo", &big, 0).unwrap();
        t.apply_batch(b).unwrap();
        assert_eq!(stored_count(&t, b"foo").unwrap(), 4);
        assert_eq!(get(&t, b"foo").unwrap().unwrap(), big);

        // A longer base that sorts among foo's chunks does not disturb it.
        let mut b = Batch::default();
        put(&mut b, b"foo\0", b"x", 0).unwrap();
        put(&mut b, b"foobar", b"", 0).unwrap();
        t.apply_batch(b).unwrap();
        let all = assemble(t.iter()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (b"foo".to_vec(), big.clone()));
        assert_eq!(all[1], (b"foo\0".to_vec(), b"x".to_vec()));
        assert_eq!(all[2], (b"foobar".to_vec(), vec![]));

        let mut b = Batch::default();
        put(&mut b, b"foo", b"small", 4).unwrap();
        t.apply_batch(b).unwrap();
        assert_eq!(stored_count(&t, b"foo").unwrap(), 1);
        assert_eq!(get(&t, b"foo").unwrap().unwrap(), b"small");
        assert_eq!(assemble(t.iter()).unwrap().len(), 3);

        let mut b = Batch::default();
        remove(&mut b, b"foo", 1);
        t.apply_batch(b).unwrap();
        assert_eq!(get(&t, b"foo").unwrap(), None);
    }

    #[test]
    fn damaged_value_is_an_error_and_old_values_still_read() {
        let (_db, t) = temp_tree();
        let big: Vec<u8> = (0..CHUNK_SIZE + 7).map(|i| (i * 7) as u8).collect();
        let mut b = Batch::default();
        let crc = put(&mut b, b"k", &big, 0).unwrap();
        t.apply_batch(b).unwrap();
        assert_eq!(crc, crc32fast::hash(&big));
        assert_eq!(
            stored_header(&t, b"k").unwrap(),
            Some(Header {
                count: 2,
                crc: Some(crc)
            })
        );
        // Flip one byte of the second chunk: both readers refuse the value.
        let mut piece = t.get(chunk_key(b"k", 1)).unwrap().unwrap().to_vec();
        piece[3] ^= 0x40;
        t.insert(chunk_key(b"k", 1), piece).unwrap();
        assert!(get(&t, b"k").is_err());
        assert!(assemble(t.iter()).is_err());
        // A value written before checksums (flag clear) is read as it is.
        let mut legacy = 1u32.to_be_bytes().to_vec();
        legacy.extend_from_slice(b"old");
        t.insert(chunk_key(b"old", 0), legacy).unwrap();
        assert_eq!(get(&t, b"old").unwrap().unwrap(), b"old");
    }

    #[test]
    fn missing_chunk_is_an_error() {
        let (_db, t) = temp_tree();
        let big = vec![1u8; 2 * CHUNK_SIZE + 1];
        let mut b = Batch::default();
        put(&mut b, b"k", &big, 0).unwrap();
        t.apply_batch(b).unwrap();
        t.remove(chunk_key(b"k", 1)).unwrap();
        assert!(get(&t, b"k").is_err());
        assert!(assemble(t.iter()).is_err());
        t.remove(chunk_key(b"k", 0)).unwrap();
        assert!(assemble(t.iter()).is_err());
    }
}
