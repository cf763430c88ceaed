//! Client oracle and checker for pgw, shared by the deterministic simulation (`tests/sim`)
//! and the real-process chaos tests (`tests/chaos`).
//!
//! Owns: the history model ([`History`], [`Op`], [`OpKind`], [`Outcome`]), the workload's
//! wire format and the parser of a node's `/metrics` ([`Workload`], [`ReplicaView`]), the
//! invariants ([`check`], [`check_all`], [`Violation`]) and the report line
//! ([`ScenarioReport`]). Does not own: running nodes, networks, clocks or randomness. It
//! depends on neither tokio, openraft nor sled, so any runtime (real or simulated) can feed
//! it; times are plain `u64` milliseconds of whatever clock the caller uses.
//!
//! # Using it
//!
//! ```
//! use pgw_testkit::{History, OpKind, Outcome, Workload, check};
//!
//! let w = Workload::new("chaos", 2);
//! let h = History::new();
//! // A client sends a write (a global counter makes values unique) ...
//! let fams = vec!["chaos_a".to_string()];
//! let id = h.begin(1, "g0", OpKind::Put, &fams, 1, "node1", 10);
//! // ... to w.path("g0") with body w.body_of(OpKind::Put, &fams, 1), and records the answer:
//! h.finish(id, Outcome::from_http(Some(200), true), 15, "200");
//! // After heal and convergence, every node's telemetry body is parsed and checked:
//! let body = "chaos_a{g=\"g0\",instance=\"\",job=\"chaos\",s=\"0\"} 1\n\
//!             chaos_a{g=\"g0\",instance=\"\",job=\"chaos\",s=\"1\"} 1\n\
//!             push_time_seconds{g=\"g0\",instance=\"\",job=\"chaos\"} 1.7e+09\n";
//! let views = vec![w.parse("node1", body.as_bytes()), w.parse("node2", body.as_bytes())];
//! let summary = check(&h, &views).expect("no violation");
//! assert_eq!(summary.lost_acked, 0);
//! ```
//!
//! # The oracle, precisely
//!
//! A history is a set of writes. Each names a client, a group, a kind and (for PUT/POST) the
//! families it pushes; every series of every pushed family carries the write's `value`,
//! unique in the history. Its real-time interval is `[start_ms, end_ms]` if acknowledged,
//! `[start_ms, ∞)` if the outcome is unknown (an entry in a leader's log can be committed
//! after the client gave up), and it never applies if it failed (connection refused, 4xx).
//!
//! Group semantics (Pushgateway): a PUT replaces the group with exactly its families; a POST
//! replaces only its families (creating the group); a DELETE removes the group. A write is
//! atomic: all of its families or none.
//!
//! After the faults stop and the cluster converged, for every replica and every group:
//!
//! 1. **durability** ([`Violation::LostAck`], the report's "acknowledged writes lost"): every
//!    acknowledged write is visible unless a write that may follow it in real time (one
//!    that was not acknowledged before it was sent) replaced it; an acknowledged DELETE is
//!    never undone by an older write.
//! 2. **no phantom** ([`Violation::Phantom`]): every visible value was sent by a client to
//!    that group and family, in a write that did not fail.
//! 3. **all or nothing, linearizable** ([`Violation::NotLinearizable`],
//!    [`Violation::Anomaly`]): the group's state is what one real-time-respecting total
//!    order of all acknowledged writes plus any subset of the unknown ones produces, each
//!    applied whole; no family is torn (its series carry one value, all of them present).
//!    The search is exact (see `invariants/linearizable.rs`); it gives up only past a budget
//!    of unknown writes blocking acknowledged ones ([`Violation::Undecided`]).
//! 4. **identical replicas** ([`Violation::ReplicasDiffer`]): byte-identical bodies.
//! 5. **monotone push time** ([`Violation::PushTimeBackwards`]): with samples taken during the
//!    run ([`check_all`], [`push_time::samples_of`]), a group's `push_time_seconds` never
//!    decreases per node incarnation, and the final value is at least any value served.
//! 6. **no panic** ([`Violation::Panic`]): the caller puts panics found in node logs (other
//!    than deliberate fail points) into [`ReplicaView::panics`].

#![warn(missing_docs)]

mod check;
mod history;
mod invariants;
mod report;
mod workload;

pub use check::{Summary, Violation, check, check_all};
pub use history::{Counts, History, Op, OpKind, Outcome};
pub use report::{PREFIX, ScenarioReport};
pub use workload::{GroupView, ReplicaView, Workload};

/// Push-time samples for [`check_all`].
pub mod push_time {
    pub use crate::invariants::push_time::{PushTimeSample, samples_of};
}

#[cfg(test)]
mod tests;
