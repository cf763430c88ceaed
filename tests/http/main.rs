//! HTTP contract tests of the `pgw` node, in process: every endpoint, status code, header
//! and error body the reference Pushgateway's clients depend on (spec §2–§11).
//!
//! Each test starts [`pgw_server::run`] on a `127.0.0.1:0` listener with its own temporary
//! `--storage.path`, waits for `/-/ready` against a deadline, talks to it with the raw
//! HTTP/1.1 client of `tests/support` (paths reach the server exactly as written: `//`,
//! `%2F`, `/../`), and shuts it down through the `shutdown` future.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod t01_push;
mod t02_routing;
mod t03_lifecycle;
mod t04_api;
mod t05_encoding;
mod t06_config;
mod t07_ui;
mod ui_paging;
