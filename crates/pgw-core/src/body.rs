//! Request-body decoding before parsing (spec §4.1, §4.2): `Content-Encoding` and the
//! choice between text and delimited protobuf.

/// A body that could not be decoded. `Display` is the response body (400, or 413 for
/// [`BodyError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// gzip or snappy stream errors, with the decoder's message.
    #[error("{0}")]
    Decode(String),
    /// The decoded body exceeds the limit.
    #[error("request body exceeds the limit of {limit} bytes (--push.max-body-bytes)")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
}

/// Decodes `body` according to `Content-Encoding` (`gzip` and framed `snappy`,
/// case-insensitive; anything else is passed through unchanged). The decoded size is
/// bounded by `max` bytes.
pub fn decode(content_encoding: Option<&str>, body: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
    let _ = (content_encoding, body, max);
    todo!("body::decode")
}

/// Whether a `Content-Type` selects the delimited-protobuf push format (spec §4.2); every
/// other value, or none, means text format 0.0.4.
pub fn is_delimited_protobuf(content_type: Option<&str>) -> bool {
    let _ = content_type;
    todo!("body::is_delimited_protobuf")
}
