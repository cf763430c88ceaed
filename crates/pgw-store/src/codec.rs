//! Record encoding: a format-version byte followed by postcard.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// Format version of every record this crate writes (log entries, vote, committed, last
/// purged, state-machine meta, snapshot file).
pub(crate) const FORMAT: u8 = 1;

/// Encodes `value` as version byte ‖ postcard.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT]).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes what [`encode`] produced; the whole input must be consumed.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        None => Err(StoreError::Corrupt(format!("{what}: empty record"))),
        Some((&FORMAT, rest)) => {
            let (value, tail) = postcard::take_from_bytes(rest)
                .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
            if !tail.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "{what}: {} trailing bytes",
                    tail.len()
                )));
            }
            Ok(value)
        }
        Some((&v, _)) => Err(StoreError::Corrupt(format!(
            "{what}: unsupported format version {v}"
        ))),
    }
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
        let mut long = bytes;
        long.push(0);
        assert!(decode::<(u64, String)>("t", &long).is_err());
    }
}
