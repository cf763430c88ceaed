//! pgw's internal gRPC API, generated from `proto/pgw.proto`.
//!
//! Owns: the wire contract between pgw nodes (Raft RPCs, write forwarding) and between
//! `pgwctl` and a node (the admin service). Payloads that are openraft or pgw-core types
//! travel as opaque bytes; their encoding belongs to `pgw-raft`.
//!
//! Also owns the quorum-safety rules of membership changes ([`membership`]), which pgwctl
//! checks and the server enforces.
//!
//! Does not own: any Raft, storage or HTTP logic. It depends on neither openraft nor sled, so
//! the CLI links it without them.
//!
//! The services are for trusted peers only: the cluster port has no authentication.

#![allow(clippy::all)]

pub mod membership;

/// Generated messages and services of package `pgw.v1`.
pub mod v1 {
    tonic::include_proto!("pgw.v1");
}
