//! Integration tests of pgw-store: openraft's conformance suite, restarts on the same
//! directory, the state machine's persistence and snapshots, and large values.

mod fixtures;
mod t10_suite;
mod t20_log_reopen;
mod t30_state_machine;
mod t40_large_values;
mod t50_damage;
mod t60_mem_suite;
