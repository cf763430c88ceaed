//! Security tests (issue 10): both ports as trust boundaries. One test binary; each area in
//! its own module.

#[path = "../support/mod.rs"]
mod support;

mod web;
