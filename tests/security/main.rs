//! Security of both ports (issue 10): one test binary, one module per area.
//!
//! Needs `cargo build --bin pgw --bin pgwctl` with the same profile first, and the `openssl`
//! CLI (test certificates are made at test time).

#[path = "../support/mod.rs"]
mod support;

mod forged;
mod mtls;
mod web;
