//! The Pushgateway data model, with no I/O.
//!
//! Owns:
//! - grouping keys and their URL form, including `@base64` segments ([`key`]);
//! - request-body decoding: `Content-Encoding` ([`body`]), the text format 0.0.4 parser
//!   ([`text`]) and the delimited-protobuf decoder ([`delimited`]);
//! - per-push validation and label sanitising ([`validate`]);
//! - what a node admits before proposing a write, shared by HTTP and the cluster port's
//!   forwarded writes: the optional limits, and re-validation of decoded commands ([`policy`]);
//! - the replicated commands ([`command`]) and the group store with its deterministic
//!   [`store::GroupStore::apply`] and the incremental consistency check ([`store`]);
//! - rendering: text 0.0.4 with Go's float formatting, delimited protobuf and the `/api/v1`
//!   JSON ([`render`], [`float`]), with the render cache that lets a scrape re-render only
//!   the groups' families that changed since the previous scrape.
//!
//! Contract: `apply` is a pure function of the store and the command. It reads no clock, no
//! randomness and iterates only ordered maps, so the same command sequence yields the same
//! store and the same rendered bytes on every replica.
//!
//! Contract on untrusted input: every decoder here (commands, the text format, delimited
//! protobuf, snapshots) and `apply` are total and bounded. A [`Command::Batch`] cannot hold a
//! batch, so nothing recurses on input; prost stops at 100 levels of message nesting; the
//! text parser and `apply` are loops. A command decoded from another node is admitted by
//! [`policy::check_command`] before it is proposed. The decoders are fuzzed
//! (`fuzz_tests.rs`).
//!
//! Does not own: storage, networking, Raft, HTTP. This crate must not depend on tokio,
//! openraft, sled, tonic or axum.

pub mod body;
pub mod civil;
pub mod command;
pub mod delimited;
pub mod float;
pub mod key;
pub mod policy;
pub mod render;
pub mod store;
pub mod text;
pub mod validate;
mod view;

/// The Prometheus client data model (`io.prometheus.client`), generated from
/// `proto/metrics.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.client.rs"));
}

pub use command::{BatchItem, Command, CommandResponse, ItemResponse, Push};
pub use key::GroupingKey;
pub use store::GroupStore;

#[cfg(test)]
mod fuzz_tests;
