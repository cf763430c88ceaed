//! **push_time_seconds never goes backwards**: per node and process incarnation, a group's
//! `push_time_seconds` never decreases over time; and the converged value of every group is
//! at least every value any node ever served for it (the state machine keeps a monotone push
//! clock, so a later log prefix never shows an older push time, even across a DELETE and a
//! re-creation).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::Violation;
use crate::workload::ReplicaView;

/// One observation of a group's `push_time_seconds` during the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushTimeSample {
    /// The node that served it.
    pub node: String,
    /// Which process incarnation of the node (bumped on every restart): a restarted node
    /// may legitimately serve an older prefix until it caught up.
    pub incarnation: u64,
    /// When it was read (abstract ms clock).
    pub at_ms: u64,
    /// The group.
    pub group: String,
    /// The value.
    pub push_time: f64,
}

/// Every group's push time in `view`, as samples.
pub fn samples_of(view: &ReplicaView, incarnation: u64, at_ms: u64) -> Vec<PushTimeSample> {
    view.groups
        .iter()
        .filter_map(|(g, gv)| {
            gv.push_time.map(|t| PushTimeSample {
                node: view.node.clone(),
                incarnation,
                at_ms,
                group: g.clone(),
                push_time: t,
            })
        })
        .collect()
}

pub(crate) fn check(samples: &[PushTimeSample], replicas: &[ReplicaView]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut sorted: Vec<&PushTimeSample> = samples.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.node, a.incarnation, &a.group, a.at_ms).cmp(&(
            &b.node,
            b.incarnation,
            &b.group,
            b.at_ms,
        ))
    });
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        if (&a.node, a.incarnation, &a.group) == (&b.node, b.incarnation, &b.group)
            && b.push_time < a.push_time
        {
            out.push(Violation::PushTimeBackwards {
                node: b.node.clone(),
                group: b.group.clone(),
                from: a.push_time,
                to: b.push_time,
                at_ms: b.at_ms,
            });
        }
    }
    let mut max: BTreeMap<&str, &PushTimeSample> = BTreeMap::new();
    for s in samples {
        let e = max.entry(s.group.as_str()).or_insert(s);
        if s.push_time > e.push_time {
            *e = s;
        }
    }
    for r in replicas {
        for (g, gv) in &r.groups {
            if let (Some(t), Some(m)) = (gv.push_time, max.get(g.as_str()))
                && t < m.push_time
            {
                out.push(Violation::PushTimeBackwards {
                    node: r.node.clone(),
                    group: g.clone(),
                    from: m.push_time,
                    to: t,
                    at_ms: u64::MAX,
                });
            }
        }
    }
    out
}
