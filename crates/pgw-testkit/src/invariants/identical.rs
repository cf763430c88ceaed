//! **Identical replicas**: once healed and converged, every replica serves the same bytes on
//! the telemetry path (node-local self-metrics moved to another path).

use crate::check::Violation;
use crate::workload::ReplicaView;

pub(crate) fn check(replicas: &[ReplicaView]) -> Vec<Violation> {
    let Some(first) = replicas.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in &replicas[1..] {
        if r.body != first.body {
            out.push(Violation::ReplicasDiffer {
                a: first.node.clone(),
                b: r.node.clone(),
                detail: first_difference(&first.body, &r.body),
            });
        }
    }
    out
}

/// The first differing line of two bodies, for the report.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (ta, tb) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let mut la = ta.lines();
    let mut lb = tb.lines();
    let mut n = 1;
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            (x, y) => {
                return format!(
                    "line {n}: {:?} vs {:?} ({} vs {} bytes)",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>"),
                    a.len(),
                    b.len()
                );
            }
        }
    }
}
