//! Per-push validation and label sanitising (spec §5.2, §6 items 2, 5, 6).
