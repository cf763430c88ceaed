//! Rendering the store: text format 0.0.4, delimited protobuf, and the `/api/v1/metrics`
//! JSON (spec §8, §9.2). Output is deterministic: families sorted by name, series in the
//! reference's order with a total tie-break, HELP chosen by a fixed rule.
