//! **No phantom**: every visible value was sent by a client, to this group and family, in a
//! write that was not certainly refused.

use std::collections::BTreeMap;

use crate::check::Violation;
use crate::history::{Op, OpKind, Outcome};

/// Checks one visible family value; returns the writer's index in `ops` when it is legit.
pub(crate) fn writer_of(
    node: &str,
    group: &str,
    family: &str,
    value: u64,
    ops: &[Op],
    by_value: &BTreeMap<u64, usize>,
) -> Result<usize, Violation> {
    let phantom = |detail: String| Violation::Phantom {
        node: node.to_string(),
        group: group.to_string(),
        family: family.to_string(),
        value,
        detail,
    };
    let Some(&i) = by_value.get(&value) else {
        return Err(phantom("no client sent this value".into()));
    };
    let op = &ops[i];
    if op.group != group || op.kind == OpKind::Delete || !op.families.iter().any(|f| f == family) {
        return Err(phantom(format!(
            "the value belongs to {} of families {:?} to group {}",
            op.kind.method(),
            op.families,
            op.group
        )));
    }
    if op.outcome == Outcome::Failed {
        return Err(phantom(format!(
            "the write was certainly refused ({}), yet it is visible",
            op.note
        )));
    }
    Ok(i)
}
