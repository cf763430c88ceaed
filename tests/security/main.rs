//! Security tests of issue 10 (one test binary, one module per area).
//!
//! Needs `cargo build --bin pgw --bin pgwctl` with the same profile first.

#[path = "../support/mod.rs"]
mod support;

mod forged;
