//! Delimited protobuf (`varint length + MetricFamily`, repeated), spec §4.3.

use crate::pb::MetricFamily;

/// A malformed delimited-protobuf body. `Display` is the 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes a push body. A later family with the same name replaces an earlier one; the
/// result is sorted by family name. An empty body is an empty push.
pub fn decode(bytes: &[u8]) -> Result<Vec<MetricFamily>, DecodeError> {
    let _ = bytes;
    todo!("delimited::decode")
}

/// Encodes families as a delimited stream, in the given order.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    use prost::Message;
    let mut out = Vec::new();
    for f in families {
        // Writing into a Vec cannot run out of space.
        let _ = f.encode_length_delimited(&mut out);
    }
    out
}
