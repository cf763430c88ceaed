//! The quorum-safety rules of membership changes, shared by `pgwctl` (which checks before it
//! asks) and the server's admin service (which enforces them, so that a raw RPC cannot do what
//! pgwctl refuses). Pure functions of voter ids; the messages are the ones both show.

use std::collections::BTreeSet;

/// The number of voters that must agree in a set of `n` voters.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Checks that a change of the voter set from `old` to `new` keeps a quorum: during the joint
/// phase both a majority of `old` and a majority of `new` must be reachable, and `new` must not
/// be empty. The error says why and what to do.
pub fn check_quorum(
    old: &BTreeSet<u64>,
    new: &BTreeSet<u64>,
    reachable: &BTreeSet<u64>,
) -> std::result::Result<(), String> {
    if new.is_empty() {
        return Err(
            "it would remove the last voter, and a cluster without voters cannot take writes \
             or elect a leader; add another node first"
                .into(),
        );
    }
    for (label, set) in [("after the change", new), ("before the change", old)] {
        let up: BTreeSet<u64> = set.intersection(reachable).copied().collect();
        if up.len() < majority(set.len()) {
            let down: Vec<String> = set.difference(reachable).map(|i| i.to_string()).collect();
            return Err(format!(
                "it would lose quorum: {label} the voters are {}, of which only {} reachable \
                 ({}), but {} are needed; unreachable: {}. Bring the unreachable nodes back (or \
                 remove them first) and retry",
                list(set),
                up.len(),
                list(&up),
                majority(set.len()),
                down.join(", ")
            ));
        }
    }
    Ok(())
}

/// `{1, 2, 3}` as `1, 2, 3` (`none` when empty).
pub fn list(set: &BTreeSet<u64>) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
