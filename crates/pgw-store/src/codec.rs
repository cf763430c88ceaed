//! Record encoding: a format-version byte, a CRC-32 of the payload, then postcard.
//!
//! Format 2 (written by this build): `2 ‖ CRC-32 (u32 BE) of the postcard bytes ‖ postcard`.
//! Format 1 (written before checksums): `1 ‖ postcard`, still read.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// Format version of every record this crate writes (log entries, vote, committed, last
/// purged, state-machine meta).
pub(crate) const FORMAT: u8 = 2;
/// The format written before records carried a checksum.
pub(crate) const FORMAT_V1: u8 = 1;

/// Encodes `value` as version byte ‖ CRC-32 ‖ postcard.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out =
        postcard::to_extend(value, vec![FORMAT, 0, 0, 0, 0]).map_err(|e| StoreError::Encode {
            what,
            reason: e.to_string(),
        })?;
    let crc = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Decodes what [`encode`] produced (or format 1); the whole input must be consumed and the
/// checksum must match. Returns the format version with the value.
pub(crate) fn decode_versioned<T: DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<(u8, T), StoreError> {
    let payload = match bytes.split_first() {
        None => return Err(StoreError::Corrupt(format!("{what}: empty record"))),
        Some((&FORMAT_V1, rest)) => rest,
        Some((&FORMAT, rest)) => {
            let (crc, payload) = rest.split_first_chunk::<4>().ok_or_else(|| {
                StoreError::Corrupt(format!("{what}: record shorter than its checksum"))
            })?;
            if crc32fast::hash(payload) != u32::from_be_bytes(*crc) {
                return Err(StoreError::Corrupt(format!(
                    "{what}: checksum mismatch: the record was damaged or altered"
                )));
            }
            payload
        }
        Some((&v, _)) => {
            return Err(StoreError::Corrupt(format!(
                "{what}: unsupported format version {v}"
            )));
        }
    };
    let (value, tail) = postcard::take_from_bytes(payload)
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    if !tail.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "{what}: {} trailing bytes",
            tail.len()
        )));
    }
    Ok((bytes[0], value))
}

/// [`decode_versioned`] without the version.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    decode_versioned(what, bytes).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let bytes = encode("t", &(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT);
        let back: (u64, String) = decode("t", &bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));
        assert!(decode::<(u64, String)>("t", &[]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode::<(u64, String)>("t", &bad).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<(u64, String)>("t", &long).is_err());
        // Any flipped payload bit is caught by the checksum.
        for i in 5..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1;
            assert!(decode::<(u64, String)>("t", &flipped).is_err(), "byte {i}");
        }
        // Format 1 (no checksum) is still read.
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&postcard::to_allocvec(&(7u64, "x".to_string())).unwrap());
        assert_eq!(
            decode_versioned::<(u64, String)>("t", &v1).unwrap(),
            (FORMAT_V1, (7, "x".to_string()))
        );
    }
}
