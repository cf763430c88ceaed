//! The text exposition format 0.0.4 parser, with the reference's semantics (spec §4.4).

use crate::pb::MetricFamily;

/// Why a text body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A syntax error: 400 `text format parsing error in line N: ...`; nothing is stored.
    #[error("text format parsing error in line {line}: {msg}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// Syntactically fine but holds bytes that are not UTF-8 (label value or HELP). The
    /// reference accepts these in the parser and fails the push in its consistency check, so
    /// pgw records it as a failed push with this message.
    #[error("{0}")]
    NotUtf8(String),
}

/// Parses a text-format body into families sorted by name.
pub fn parse(input: &[u8]) -> Result<Vec<MetricFamily>, ParseError> {
    let _ = input;
    todo!("text::parse")
}
