//! Encoding of openraft messages and pgw commands on the internal gRPC API: a
//! format-version byte followed by postcard.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Format version of every payload this module encodes.
pub const FORMAT: u8 = 1;

/// Encodes `value` (version byte + postcard).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_extend(value, vec![FORMAT]).map_err(|e| format!("cannot encode: {e}"))
}

/// Decodes what [`encode`] produced.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        None => Err("empty payload".into()),
        Some((&FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("malformed payload: {e}"))
        }
        Some((v, _)) => Err(format!("unsupported payload format version {v}")),
    }
}
