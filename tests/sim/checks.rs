//! Invariants the simulation checks besides the shared checker (`pgw_testkit`): Raft
//! safety from openraft's metrics, monotonic reads per replica, and linearizable reads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ServerState;
use pgw_testkit::{OpKind, Workload};

use crate::cluster::{Probe, host};

/// A linearizable read a client made right after one of its writes was acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct LinRead {
    /// The node that served it.
    pub(crate) node: u64,
    pub(crate) group: String,
    pub(crate) family: String,
    /// The client's own acknowledged write (its value).
    pub(crate) after: u64,
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    /// What the read showed for the family (`None`: absent).
    pub(crate) observed: Option<u64>,
}

/// The value of `family` in `group` in a `/api/v1/metrics` body (`None`: absent).
pub(crate) fn api_value(
    body: &[u8],
    job: &str,
    group: &str,
    family: &str,
) -> Result<Option<u64>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bad JSON from /api/v1/metrics: {e}"))?;
    let groups = v["data"].as_array().cloned().unwrap_or_default();
    for g in groups {
        if g["labels"]["job"] != job || g["labels"]["g"] != group {
            continue;
        }
        let metrics = match g[family]["metrics"].as_array() {
            None => return Ok(None),
            Some(m) => m.clone(),
        };
        let mut values = BTreeSet::new();
        for m in metrics {
            let text = m["value"].as_str().unwrap_or("");
            let f: f64 = text
                .parse()
                .map_err(|_| format!("value {text:?} of {group}/{family} is not a number"))?;
            values.insert(f as u64);
        }
        return match values.len() {
            1 => Ok(values.pop_first()),
            _ => Err(format!(
                "{group}/{family} shows values {values:?} at once (torn)"
            )),
        };
    }
    Ok(None)
}

/// Read-your-writes through any node: a linearizable read made after a write was
/// acknowledged shows that write, or one that may follow it in real time, never an older one.
pub(crate) fn lin_read_violations(reads: &[LinRead], ops: &[pgw_testkit::Op]) -> Vec<String> {
    let by_value: BTreeMap<u64, &pgw_testkit::Op> = ops.iter().map(|o| (o.value, o)).collect();
    let mut out = Vec::new();
    for r in reads {
        let Some(own) = by_value.get(&r.after) else {
            continue;
        };
        let what = format!(
            "linearizable read of {}/{} on n{} ({}..{} ms) after write #{} (value {})",
            r.group, r.family, r.node, r.start_ms, r.end_ms, own.id, own.value
        );
        match r.observed {
            Some(w) => match by_value.get(&w) {
                None => out.push(format!("{what} showed {w}, which no client sent")),
                Some(o) if o.start_ms > r.end_ms => out.push(format!(
                    "{what} showed {w}, written by #{} only sent at {} ms",
                    o.id, o.start_ms
                )),
                Some(o) if o.precedes(own) => out.push(format!(
                    "{what} showed {w} of write #{}, acknowledged before #{} was even sent: \
                     a stale read",
                    o.id, own.id
                )),
                Some(_) => {}
            },
            None => {
                let removed = ops.iter().any(|o| {
                    o.group == r.group
                        && o.outcome.may_have_applied()
                        && !o.precedes(own)
                        && o.start_ms <= r.end_ms
                        && (o.kind == OpKind::Delete
                            || (o.kind == OpKind::Put && !o.families.contains(&r.family)))
                });
                if !removed {
                    out.push(format!(
                        "{what} did not show the family, and no write that may follow #{} \
                         removes it: a stale read",
                        own.id
                    ));
                }
            }
        }
    }
    out
}

/// Cluster invariants checked from openraft's metrics while the simulation runs.
#[derive(Default)]
pub(crate) struct RaftWatch {
    /// Term → the node seen leading in it.
    pub(crate) leaders: BTreeMap<u64, u64>,
    /// (node, incarnation) → (term, applied index) last seen.
    pub(crate) last: BTreeMap<(u64, u64), (u64, u64)>,
    /// Node → highest term seen (the vote is durable: it never goes back across restarts).
    pub(crate) max_term: BTreeMap<u64, u64>,
    pub(crate) violations: Vec<String>,
    /// Kinds of violation already reported, per node (each is reported once).
    pub(crate) reported: BTreeSet<(&'static str, u64)>,
}

impl RaftWatch {
    pub(crate) fn report(&mut self, kind: &'static str, node: u64, msg: String) {
        if self.reported.insert((kind, node)) {
            self.violations.push(msg);
        }
    }

    pub(crate) fn observe(&mut self, id: u64, probe: &Probe, at: Duration) {
        if !probe.running {
            return;
        }
        let Some(m) = probe.metrics.as_ref().map(|m| m.borrow().clone()) else {
            return;
        };
        let term = m.current_term;
        let applied = m.last_applied.map_or(0, |l| l.index);
        if m.state == ServerState::Leader {
            let prev = *self.leaders.entry(term).or_insert(id);
            if prev != id {
                self.report(
                    "two-leaders",
                    id,
                    format!("two leaders in term {term}: node {prev} and node {id} (at {at:?})"),
                );
            }
        }
        if let Some(&(t0, a0)) = self.last.get(&(id, probe.incarnation)) {
            if term < t0 {
                self.report(
                    "term-back",
                    id,
                    format!("node {id} term went back from {t0} to {term} (at {at:?})"),
                );
            }
            if applied < a0 {
                self.report(
                    "applied-back",
                    id,
                    format!(
                        "node {id} applied index went back from {a0} to {applied} without a \
                         restart (at {at:?})"
                    ),
                );
            }
        }
        self.last.insert((id, probe.incarnation), (term, applied));
        let max = self.max_term.entry(id).or_insert(term);
        let max = *max;
        if term < max {
            self.report(
                "vote-lost",
                id,
                format!(
                    "node {id} restarted with term {term} below {max} it had reached: the vote \
                     was not durable (at {at:?})"
                ),
            );
        }
        self.max_term.insert(id, max.max(term));
    }
}

/// Watches what every replica's applied store shows, family by family, as it changes: the
/// "monotonic reads" check. A replica applies one log in order, so once it shows the value of
/// a write V it never again shows the value of a write W that was acknowledged before V was
/// sent; if it does, W was applied a second time (a stale duplicate, e.g. a forwarded request
/// that was held on the wire and delivered after its retry succeeded). The final-state check
/// cannot see this once later writes overwrite the stale value.
#[derive(Default)]
pub(crate) struct ReadWatch {
    /// (node, incarnation) → last applied index seen (render only on change).
    pub(crate) applied: BTreeMap<(u64, u64), u64>,
    /// (node, incarnation, group, family) → last value seen (`None`: seen, then gone).
    pub(crate) last: BTreeMap<(u64, u64, String, String), Option<u64>>,
    /// Value changes.
    pub(crate) changes: Vec<ValueChange>,
}

/// A replica's value of one family changed.
pub(crate) struct ValueChange {
    pub(crate) node: u64,
    pub(crate) incarnation: u64,
    pub(crate) group: String,
    pub(crate) family: String,
    pub(crate) before: u64,
    /// `None`: the family is gone.
    pub(crate) after: Option<u64>,
    pub(crate) at: Duration,
}

impl ReadWatch {
    pub(crate) fn observe(&mut self, id: u64, probe: &Probe, workload: &Workload, at: Duration) {
        if !probe.running {
            return;
        }
        let (Some(m), Some(store)) = (probe.metrics.as_ref(), probe.store.as_ref()) else {
            return;
        };
        let applied = m.borrow().last_applied.map_or(0, |l| l.index);
        let key = (id, probe.incarnation);
        if self.applied.get(&key) == Some(&applied) {
            return;
        }
        self.applied.insert(key, applied);
        let mut body = Vec::new();
        {
            let guard = match store.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            pgw_core::render::text(&guard, &[], &mut body);
        }
        let view = workload.parse(&host(id), &body);
        let mut now: BTreeMap<(u64, u64, String, String), Option<u64>> = BTreeMap::new();
        for (group, gv) in &view.groups {
            for family in gv.families.keys() {
                if let Some(value) = gv.value(family) {
                    let k = (id, probe.incarnation, group.clone(), family.clone());
                    now.insert(k, Some(value));
                }
            }
        }
        // Families this incarnation showed before and no longer shows are gone.
        for (k, v) in &self.last {
            if k.0 == id && k.1 == probe.incarnation && v.is_some() && !now.contains_key(k) {
                now.insert(k.clone(), None);
            }
        }
        for (k, value) in now {
            if let Some(Some(before)) = self.last.get(&k).copied()
                && Some(before) != value
            {
                self.changes.push(ValueChange {
                    node: k.0,
                    incarnation: k.1,
                    group: k.2.clone(),
                    family: k.3.clone(),
                    before,
                    after: value,
                    at,
                });
            }
            self.last.insert(k, value);
        }
    }

    /// Value changes that went back in real time.
    pub(crate) fn violations(&self, ops: &[pgw_testkit::Op]) -> Vec<String> {
        let by_value: BTreeMap<u64, &pgw_testkit::Op> = ops.iter().map(|o| (o.value, o)).collect();
        let mut out = Vec::new();
        for c in &self.changes {
            let ValueChange {
                node: id,
                incarnation: inc,
                group,
                family,
                before,
                after,
                at,
            } = c;
            let Some(v) = by_value.get(before) else {
                continue;
            };
            let Some(after) = after else {
                // Gone: some write that may follow V in real time must have removed it.
                let at_ms = at.as_millis() as u64;
                let removed = ops.iter().any(|o| {
                    &o.group == group
                        && o.outcome.may_have_applied()
                        && !o.precedes(v)
                        && o.start_ms <= at_ms
                        && (o.kind == OpKind::Delete
                            || (o.kind == OpKind::Put && !o.families.contains(family)))
                });
                if !removed {
                    out.push(format!(
                        "n{id} (incarnation {inc}) stopped showing {group}/{family} at {at:?} \
                         after showing {before} of write #{} (sent at {} ms), but every write \
                         that removes it was acknowledged before #{} was sent: a stale \
                         DELETE or PUT was applied again",
                        v.id, v.start_ms, v.id
                    ));
                }
                continue;
            };
            let Some(w) = by_value.get(after) else {
                continue;
            };
            if w.precedes(v) {
                out.push(format!(
                    "n{id} (incarnation {inc}) showed {group}/{family} = {after} at {at:?} after \
                     showing {before}: write #{} ({} value {after}, acknowledged at {} ms) was \
                     applied again after write #{} ({} value {before}, sent at {} ms)",
                    w.id,
                    w.kind.method(),
                    w.end_ms,
                    v.id,
                    v.kind.method(),
                    v.start_ms
                ));
            }
        }
        out
    }
}
