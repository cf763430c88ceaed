//! Replicated commands and their responses.
//!
//! Every change to the store is a [`Command`] in the Raft log. The node that receives the
//! HTTP request decodes and validates what it can on its own (URL, body syntax) and stamps
//! the receive time; everything that depends on the store (the consistency check) happens in
//! [`crate::store::GroupStore::apply`], so every replica reaches the same decision.
//!
//! Encoding: a format-version byte followed by postcard. Pushed families travel as their
//! delimited-protobuf encoding (the same bytes a protobuf client would send).

use serde::{Deserialize, Serialize};

use crate::key::GroupingKey;
use crate::pb::MetricFamily;

/// Format version of an encoded [`Command`] or [`CommandResponse`].
pub const COMMAND_FORMAT: u8 = 1;

/// A write to the store, in the total order of the Raft log.
///
/// The variants' order is their encoding: never reorder them, only append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// PUT (`replace`) or POST of metric families to a group.
    Push(Push),
    /// DELETE of one group (exact grouping-key match; unknown groups are fine).
    Delete {
        /// The group to delete.
        key: GroupingKey,
    },
    /// Admin wipe: delete every group.
    Wipe,
    /// Restore (`pgwctl restore`): replace the whole store with a backup, the bytes of
    /// [`crate::GroupStore::encode_snapshot`]. Deterministic like every command: each replica
    /// decodes the same bytes to the same store; bytes that do not decode change nothing.
    Replace {
        /// The store snapshot.
        #[serde(with = "serde_bytes_vec")]
        snapshot: Vec<u8>,
    },
    /// Several commands proposed as one Raft entry (group commit: the node that takes
    /// concurrent requests proposes them together, so one log append and one fsync serve them
    /// all). Applied in order, each exactly as if it were an entry of its own; the response is
    /// a [`CommandResponse::Batch`] with one response per command, in the same order.
    ///
    /// Flat by construction: a [`BatchItem`] cannot hold a batch, so neither decoding nor
    /// `apply` recurses on input. (Its first four variants encode exactly like those of
    /// `Command`, so batches written before `BatchItem` existed decode unchanged.)
    Batch(Vec<BatchItem>),
    /// A push under `--push.max-groups`: the limit travels in the command, so every replica
    /// refuses a push that would create a group beyond it alike (see
    /// [`crate::store::GroupStore::apply`]). Only sent when the limit is set, so a cluster
    /// that sets none writes nothing an older pgw cannot decode.
    LimitedPush(LimitedPush),
}

/// One command of a [`Command::Batch`]: any command but a batch.
///
/// The variants' order is their encoding and matches [`Command`]'s for the first four.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BatchItem {
    /// As [`Command::Push`].
    Push(Push),
    /// As [`Command::Delete`].
    Delete {
        /// The group to delete.
        key: GroupingKey,
    },
    /// As [`Command::Wipe`].
    Wipe,
    /// As [`Command::Replace`].
    Replace {
        /// The store snapshot.
        #[serde(with = "serde_bytes_vec")]
        snapshot: Vec<u8>,
    },
    /// As [`Command::LimitedPush`].
    LimitedPush(LimitedPush),
}

/// A push with the store-dependent limit it is applied under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitedPush {
    /// The push.
    pub push: Push,
    /// `--push.max-groups` of the node that took the push: a push that would create a group
    /// while the store already holds this many is refused and changes nothing.
    pub max_groups: u64,
}

/// A single command, borrowed: what [`Command`] and [`BatchItem`] have in common.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// A push, with `--push.max-groups` when set.
    Push(&'a Push, Option<u64>),
    /// A delete.
    Delete(&'a GroupingKey),
    /// A wipe.
    Wipe,
    /// A restore.
    Replace(&'a [u8]),
}

impl BatchItem {
    /// This command, borrowed.
    pub fn op(&self) -> Op<'_> {
        match self {
            BatchItem::Push(p) => Op::Push(p, None),
            BatchItem::LimitedPush(l) => Op::Push(&l.push, Some(l.max_groups)),
            BatchItem::Delete { key } => Op::Delete(key),
            BatchItem::Wipe => Op::Wipe,
            BatchItem::Replace { snapshot } => Op::Replace(snapshot),
        }
    }
}

impl Command {
    /// The command as a batch item; a batch gives its items back as the error.
    pub fn into_item(self) -> Result<BatchItem, Vec<BatchItem>> {
        Ok(match self {
            Command::Push(p) => BatchItem::Push(p),
            Command::LimitedPush(l) => BatchItem::LimitedPush(l),
            Command::Delete { key } => BatchItem::Delete { key },
            Command::Wipe => BatchItem::Wipe,
            Command::Replace { snapshot } => BatchItem::Replace { snapshot },
            Command::Batch(items) => return Err(items),
        })
    }

    /// A push under `max_groups` (`None`: unlimited, a plain [`Command::Push`]).
    pub fn push(push: Push, max_groups: Option<u64>) -> Command {
        match max_groups {
            None => Command::Push(push),
            Some(max_groups) => Command::LimitedPush(LimitedPush { push, max_groups }),
        }
    }

    /// This command, borrowed, unless it is a batch.
    pub fn op(&self) -> Option<Op<'_>> {
        Some(match self {
            Command::Push(p) => Op::Push(p, None),
            Command::LimitedPush(l) => Op::Push(&l.push, Some(l.max_groups)),
            Command::Delete { key } => Op::Delete(key),
            Command::Wipe => Op::Wipe,
            Command::Replace { snapshot } => Op::Replace(snapshot),
            Command::Batch(_) => return None,
        })
    }
}

/// A push, as taken by the receiving node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// The grouping key from the URL.
    pub key: GroupingKey,
    /// PUT replaces the whole group; POST replaces only the pushed family names.
    pub replace: bool,
    /// Wall-clock receive time in nanoseconds since the Unix epoch, stamped by the node that
    /// took the request. `apply` never reads a clock; it keeps a monotone maximum of these.
    pub time_ns: i64,
    /// Run the consistency check (`false` with `--push.disable-consistency-check`).
    pub check: bool,
    /// What was pushed.
    pub payload: Payload,
}

/// The body of a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// The decoded families, delimited-protobuf encoded, one family per name.
    Families(#[serde(with = "serde_bytes_vec")] Vec<u8>),
    /// The receiving node found the body decodable but invalid in a way the reference treats
    /// as a failed push (it records `push_failure_time_seconds`), e.g. a label value that is
    /// not UTF-8. `apply` records the failure and answers with this message.
    Invalid(String),
}

impl Push {
    /// Builds a push carrying `families`.
    pub fn new(
        key: GroupingKey,
        replace: bool,
        time_ns: i64,
        check: bool,
        families: &[MetricFamily],
    ) -> Self {
        Push {
            key,
            replace,
            time_ns,
            check,
            payload: Payload::Families(crate::delimited::encode(families)),
        }
    }
}

/// The outcome of applying a command, returned to the client by the node that took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied (200 for a checked push, 202 for an unchecked push, a delete or a wipe).
    Applied,
    /// Rejected by validation or the consistency check (400): nothing changed except the
    /// group's `push_failure_time_seconds`. The message is the full response body line.
    Rejected(String),
    /// The responses to the commands of a [`Command::Batch`], in order. Flat like the batch.
    Batch(Vec<ItemResponse>),
    /// Refused by a limit that depends on the store (`--push.max-groups`), before anything
    /// changed: not even `push_failure_time_seconds` is recorded. `reason` is the self-metric
    /// label, `message` the response body.
    Refused {
        /// Self-metric reason label, e.g. `max_groups`.
        reason: String,
        /// The message for the client.
        message: String,
    },
}

/// The outcome of one command of a batch: a [`CommandResponse`] that is not a batch.
///
/// The variants' order is their encoding; the first two match [`CommandResponse`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemResponse {
    /// As [`CommandResponse::Applied`].
    Applied,
    /// As [`CommandResponse::Rejected`].
    Rejected(String),
    /// As [`CommandResponse::Refused`].
    Refused {
        /// Self-metric reason label.
        reason: String,
        /// The message for the client.
        message: String,
    },
}

impl From<ItemResponse> for CommandResponse {
    fn from(r: ItemResponse) -> Self {
        match r {
            ItemResponse::Applied => CommandResponse::Applied,
            ItemResponse::Rejected(m) => CommandResponse::Rejected(m),
            ItemResponse::Refused { reason, message } => {
                CommandResponse::Refused { reason, message }
            }
        }
    }
}

impl CommandResponse {
    /// The response as one of a batch (`None` for a batch).
    pub fn into_item(self) -> Option<ItemResponse> {
        Some(match self {
            CommandResponse::Applied => ItemResponse::Applied,
            CommandResponse::Rejected(m) => ItemResponse::Rejected(m),
            CommandResponse::Refused { reason, message } => {
                ItemResponse::Refused { reason, message }
            }
            CommandResponse::Batch(_) => return None,
        })
    }
}

/// Errors decoding a command or response.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Empty input.
    #[error("empty command encoding")]
    Empty,
    /// A format version this build does not know.
    #[error("unsupported command format version {0}")]
    Version(u8),
    /// postcard failed.
    #[error("malformed command: {0}")]
    Malformed(#[from] postcard::Error),
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![COMMAND_FORMAT];
    // postcard into a Vec cannot fail for these types (no maps with non-string keys, no
    // unsupported serde features); fall back to an empty body defensively.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(_) => vec![COMMAND_FORMAT],
    }
}

fn decode_versioned<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&COMMAND_FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&v, _)) => Err(CodecError::Version(v)),
    }
}

impl Command {
    /// Encodes with the format-version byte.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decodes what [`Command::encode`] produced.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_versioned(bytes)
    }
}

impl CommandResponse {
    /// Encodes with the format-version byte.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decodes what [`CommandResponse::encode`] produced.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_versioned(bytes)
    }
}

/// serde helper: `Vec<u8>` as a byte string (postcard writes it as length + bytes either way;
/// this keeps JSON debugging output compact too).
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}
