//! The checker: runs every invariant over a history and the replicas' final views.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{self, Counts, History, Op, Outcome};
use crate::invariants::linearizable::{self, Observed, Verdict};
use crate::invariants::push_time::PushTimeSample;
use crate::invariants::{durability, identical, phantom, push_time};
use crate::workload::ReplicaView;

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Violation {
    /// Two writes of the history carry the same value (a harness bug: values must be unique).
    DuplicateValue {
        /// The value.
        value: u64,
        /// The ops carrying it.
        ops: Vec<usize>,
    },
    /// An acknowledged write is not visible and nothing that may follow it replaced it, or an
    /// acknowledged DELETE was undone.
    LostAck {
        /// Where.
        node: String,
        /// The group.
        group: String,
        /// The op's id in the history.
        op: usize,
        /// PUT/POST/DELETE.
        method: String,
        /// Its value.
        value: u64,
        /// What is wrong.
        detail: String,
    },
    /// A visible value that no client sent (to that group and family), or that belongs to a
    /// write that was certainly refused.
    Phantom {
        /// Where.
        node: String,
        /// The group it is visible in.
        group: String,
        /// The family.
        family: String,
        /// The value.
        value: u64,
        /// What is wrong.
        detail: String,
    },
    /// No real-time order of the acknowledged writes and some of the unknown ones, each
    /// applied whole, produces the group's state.
    NotLinearizable {
        /// Where.
        node: String,
        /// The group.
        group: String,
        /// What cannot be explained.
        detail: String,
    },
    /// The search gave up on a group (too many unknown writes); not a proven violation, but
    /// the run proves nothing for that group either.
    Undecided {
        /// Where.
        node: String,
        /// The group.
        group: String,
    },
    /// A line of the workload that is malformed, a torn family, a group without push time.
    Anomaly {
        /// Where.
        node: String,
        /// What.
        detail: String,
    },
    /// Two replicas serve different bytes.
    ReplicasDiffer {
        /// One node.
        a: String,
        /// Another.
        b: String,
        /// The first difference.
        detail: String,
    },
    /// A group's `push_time_seconds` decreased.
    PushTimeBackwards {
        /// Where.
        node: String,
        /// The group.
        group: String,
        /// The earlier value.
        from: f64,
        /// The later, smaller value.
        to: f64,
        /// When (`u64::MAX`: in the final view).
        at_ms: u64,
    },
    /// A node panicked (outside a deliberate fail point).
    Panic {
        /// Where.
        node: String,
        /// The log line.
        line: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateValue { value, ops } => {
                write!(f, "value {value} is carried by several writes {ops:?}")
            }
            Violation::LostAck {
                node,
                group,
                op,
                method,
                value,
                detail,
            } => write!(
                f,
                "LOST ACKNOWLEDGED WRITE on {node}: {method} #{op} value {value} to group \
                 {group}: {detail}"
            ),
            Violation::Phantom {
                node,
                group,
                family,
                value,
                detail,
            } => write!(
                f,
                "phantom on {node}: group {group} family {family} shows {value}: {detail}"
            ),
            Violation::NotLinearizable {
                node,
                group,
                detail,
            } => write!(f, "not linearizable on {node}: group {group}: {detail}"),
            Violation::Undecided { node, group } => write!(
                f,
                "undecided on {node}: group {group} has too many unknown writes to check"
            ),
            Violation::Anomaly { node, detail } => write!(f, "anomaly on {node}: {detail}"),
            Violation::ReplicasDiffer { a, b, detail } => {
                write!(f, "replicas {a} and {b} differ: {detail}")
            }
            Violation::PushTimeBackwards {
                node,
                group,
                from,
                to,
                at_ms,
            } => {
                if *at_ms == u64::MAX {
                    write!(
                        f,
                        "push_time_seconds of group {group} on {node} ends at {to}, below \
                         {from} served earlier"
                    )
                } else {
                    write!(
                        f,
                        "push_time_seconds of group {group} on {node} went back from {from} \
                         to {to} at {at_ms} ms"
                    )
                }
            }
            Violation::Panic { node, line } => write!(f, "{node} panicked: {line}"),
        }
    }
}

/// What a check covered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Writes in the history.
    pub ops: usize,
    /// Outcome counts.
    pub counts: Counts,
    /// Groups written or visible.
    pub groups: usize,
    /// Groups visible at the end.
    pub groups_present: usize,
    /// Replicas compared.
    pub replicas: usize,
    /// Acknowledged writes lost (on any replica): must be 0.
    pub lost_acked: usize,
    /// Unknown writes whose value is visible at the end (they took effect).
    pub unknown_visible: usize,
}

impl Summary {
    /// `acked/failed/unknown` as the report prints it.
    pub fn outcomes(&self) -> String {
        format!(
            "{}/{}/{}",
            self.counts.acked, self.counts.failed, self.counts.unknown
        )
    }
}

/// Checks `history` against the final, converged `replicas`: see the crate doc for the
/// properties. `Ok` carries what was covered.
pub fn check(history: &History, replicas: &[ReplicaView]) -> Result<Summary, Vec<Violation>> {
    let (summary, violations) = check_all(&history.ops(), replicas, &[]);
    if violations.is_empty() {
        Ok(summary)
    } else {
        Err(violations)
    }
}

/// Like [`check`], with the push-time samples taken during the run, returning the summary
/// (with [`Summary::lost_acked`]) even when there are violations.
pub fn check_all(
    ops: &[Op],
    replicas: &[ReplicaView],
    samples: &[PushTimeSample],
) -> (Summary, Vec<Violation>) {
    let mut violations = Vec::new();
    let mut by_value: BTreeMap<u64, usize> = BTreeMap::new();
    let mut dups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(prev) = by_value.insert(op.value, i) {
            dups.entry(op.value).or_insert_with(|| vec![prev]).push(i);
        }
    }
    for (value, ids) in dups {
        violations.push(Violation::DuplicateValue { value, ops: ids });
    }
    // Ops are indexed by position; make sure `id` agrees so reports name the right op.
    let ops: Vec<Op> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| Op { id: i, ..o.clone() })
        .collect();
    let groups = history::by_group(&ops);
    let mut all_groups: BTreeSet<&str> = groups.keys().copied().collect();
    for r in replicas {
        all_groups.extend(r.groups.keys().map(String::as_str));
    }

    let mut lost: BTreeSet<usize> = BTreeSet::new();
    let mut unknown_visible: BTreeSet<usize> = BTreeSet::new();
    // Identical views are checked once.
    let mut seen: BTreeMap<&[u8], String> = BTreeMap::new();
    for r in replicas {
        for a in &r.anomalies {
            violations.push(Violation::Anomaly {
                node: r.node.clone(),
                detail: a.clone(),
            });
        }
        for p in &r.panics {
            violations.push(Violation::Panic {
                node: r.node.clone(),
                line: p.clone(),
            });
        }
        if !r.body.is_empty() && seen.contains_key(r.body.as_slice()) {
            continue;
        }
        seen.insert(r.body.as_slice(), r.node.clone());
        for group in &all_groups {
            let empty = Vec::new();
            let gops = groups.get(group).unwrap_or(&empty);
            let may: Vec<&Op> = gops
                .iter()
                .copied()
                .filter(|o| o.outcome.may_have_applied())
                .collect();
            // The observed state, phantoms reported and left out.
            let mut writers: BTreeMap<String, usize> = BTreeMap::new();
            let mut clean = true;
            let observed: Observed = r.groups.get(*group).map(|gv| {
                let mut m = BTreeMap::new();
                for f in gv.families.keys() {
                    let Some(v) = gv.value(f) else {
                        clean = false; // torn: already an anomaly
                        continue;
                    };
                    match phantom::writer_of(&r.node, group, f, v, &ops, &by_value) {
                        Ok(i) => {
                            writers.insert(f.clone(), i);
                            m.insert(f.clone(), v);
                            if ops[i].outcome != Outcome::Acked {
                                unknown_visible.insert(i);
                            }
                        }
                        Err(v) => {
                            clean = false;
                            violations.push(v);
                        }
                    }
                }
                m
            });
            let writer = |f: &str| writers.get(f).copied();
            for o in &may {
                if let Some(detail) = durability::lost(o, &may, &observed, &writer) {
                    lost.insert(o.id);
                    violations.push(Violation::LostAck {
                        node: r.node.clone(),
                        group: group.to_string(),
                        op: o.id,
                        method: o.kind.method().to_string(),
                        value: o.value,
                        detail,
                    });
                }
            }
            if !clean {
                continue;
            }
            match linearizable::check_group(&may, &observed) {
                Verdict::Ok => {}
                Verdict::Violation(detail) => violations.push(Violation::NotLinearizable {
                    node: r.node.clone(),
                    group: group.to_string(),
                    detail,
                }),
                Verdict::Undecided => violations.push(Violation::Undecided {
                    node: r.node.clone(),
                    group: group.to_string(),
                }),
            }
        }
    }
    violations.extend(identical::check(replicas));
    violations.extend(push_time::check(samples, replicas));

    let summary = Summary {
        ops: ops.len(),
        counts: history::counts(&ops),
        groups: all_groups.len(),
        groups_present: replicas.first().map_or(0, |r| r.groups.len()),
        replicas: replicas.len(),
        lost_acked: lost.len(),
        unknown_visible: unknown_visible.len(),
    };
    (summary, violations)
}
