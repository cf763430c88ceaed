//! **All or nothing, in some real-time order**: a group's final state must be the result of
//! applying, in one total order that respects real time, every acknowledged write to it and
//! any subset of its unknown writes — each of them whole.
//!
//! # The search
//!
//! Every write carries a unique value, so each visible family names the write that last set
//! it (its *witness*). The linearization is built backwards, from the last write: a write may
//! be placed last among those not placed yet when
//!
//! - real time allows it (no acknowledged write that must follow it is still unplaced:
//!   `x` must precede `y` when `x` was acknowledged before `y` was sent; an unknown write
//!   may take effect at any time after it was sent, so nothing is forced after it), and
//! - its effect on the families (and the group's existence) that no later write decided yet
//!   matches the observed state: a PUT sets its families to its value and removes every
//!   other family, a POST sets only its families, a DELETE removes all.
//!
//! Placing any such write is safe (if a valid order exists, one exists with it last among
//! the rest: two writes whose effects on an undecided family both match the observation have
//! the same effect on it, because values are unique). So the search is greedy, and branches
//! only when it is stuck: then some unknown write that blocks an acknowledged one must be
//! left out (it never took effect), and each choice is tried. Witnesses are never left out.
//! At the end every family no write decided must be absent (the initial state is empty).

use std::collections::BTreeMap;

use crate::history::{Op, OpKind, Outcome};

/// The observed state of one group: `None` when the group is absent, else family → value.
pub(crate) type Observed = Option<BTreeMap<String, u64>>;

/// How many dead ends the search may explore per group before it gives up.
const BUDGET: usize = 20_000;

/// Outcome of the search for one group.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A valid order exists.
    Ok,
    /// No valid order exists; the reason names the first obstacle.
    Violation(String),
    /// The search gave up (too many unknown writes blocking acknowledged ones).
    Undecided,
}

struct Problem<'a> {
    ops: Vec<&'a Op>,
    fams: Vec<u128>,
    /// Observed: group present; and per family index the observed value.
    present: bool,
    obs: Vec<Option<u64>>,
    witness: Vec<bool>,
    acked: Vec<bool>,
    start: Vec<u64>,
    end: Vec<u64>,
}

#[derive(Clone)]
struct State {
    alive: Vec<bool>,
    /// Multiset of the start times of the alive writes.
    starts: BTreeMap<u64, usize>,
    open: u128,
    presence_open: bool,
    /// Alive acknowledged writes and witnesses (the search is done when none are left).
    must: usize,
}

/// Checks one group. `ops`: every write to the group that may have applied (not
/// [`Outcome::Failed`]). `observed`: what a replica serves. Families whose value belongs to
/// no write of `ops` must have been reported (as phantoms) and left out of `observed`.
pub(crate) fn check_group(ops: &[&Op], observed: &Observed) -> Verdict {
    let mut names: Vec<String> = Vec::new();
    let index = |n: &str, names: &mut Vec<String>| -> Option<usize> {
        if let Some(i) = names.iter().position(|x| x == n) {
            return Some(i);
        }
        if names.len() >= 128 {
            return None;
        }
        names.push(n.to_string());
        Some(names.len() - 1)
    };
    let mut fams = Vec::with_capacity(ops.len());
    for op in ops {
        let mut m = 0u128;
        for f in &op.families {
            match index(f, &mut names) {
                Some(i) => m |= 1 << i,
                None => return Verdict::Violation("more than 128 families in one group".into()),
            }
        }
        fams.push(m);
    }
    if let Some(o) = observed {
        for f in o.keys() {
            if index(f, &mut names).is_none() {
                return Verdict::Violation("more than 128 families in one group".into());
            }
        }
    }
    let mut obs = vec![None; names.len()];
    if let Some(o) = observed {
        for (f, v) in o {
            if let Some(i) = names.iter().position(|x| x == f) {
                obs[i] = Some(*v);
            }
        }
    }
    let witness: Vec<bool> = ops
        .iter()
        .map(|op| {
            observed
                .as_ref()
                .is_some_and(|o| op.families.iter().any(|f| o.get(f) == Some(&op.value)))
        })
        .collect();
    let acked: Vec<bool> = ops.iter().map(|o| o.outcome == Outcome::Acked).collect();
    let p = Problem {
        start: ops.iter().map(|o| o.start_ms).collect(),
        end: ops.iter().map(|o| o.effective_end()).collect(),
        ops: ops.to_vec(),
        fams,
        present: observed.is_some(),
        obs,
        witness,
        acked,
    };
    let mut starts = BTreeMap::new();
    for s in &p.start {
        *starts.entry(*s).or_insert(0) += 1;
    }
    let n = p.ops.len();
    let all = if names.len() == 128 {
        u128::MAX
    } else {
        (1u128 << names.len()) - 1
    };
    let st = State {
        alive: vec![true; n],
        starts,
        open: all,
        presence_open: true,
        must: (0..n).filter(|&i| p.acked[i] || p.witness[i]).count(),
    };
    // Try writes latest-ending first: the likely last ones.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((p.end[i], p.start[i])));
    let mut budget = BUDGET;
    let mut first_failure = None;
    match p.solve(st, &order, &mut budget, &mut first_failure) {
        Some(true) => Verdict::Ok,
        Some(false) => Verdict::Violation(
            first_failure.unwrap_or_else(|| "no order of the writes explains it".into()),
        ),
        None => Verdict::Undecided,
    }
}

impl Problem<'_> {
    fn blocked(&self, st: &State, i: usize) -> bool {
        if !self.acked[i] {
            return false;
        }
        // The latest start among the other alive writes.
        let mut it = st.starts.iter().rev();
        let latest = match it.next() {
            Some((s, c)) if *s == self.start[i] && *c == 1 => it.next().map(|(s, _)| *s),
            Some((s, _)) => Some(*s),
            None => None,
        };
        latest.is_some_and(|l| self.end[i] < l)
    }

    /// The state after placing write `i` last among the alive ones, if its effect matches.
    fn place(&self, st: &State, i: usize) -> Option<(u128, bool)> {
        if st.open == 0 && !st.presence_open {
            return Some((0, false));
        }
        let op = self.ops[i];
        let f = self.fams[i];
        let each_open = |pred: &dyn Fn(usize) -> bool| -> bool {
            (0..self.obs.len())
                .filter(|b| st.open & (1 << b) != 0)
                .all(pred)
        };
        match op.kind {
            OpKind::Put => {
                if st.presence_open && !self.present {
                    return None;
                }
                let ok = each_open(&|b| {
                    if f & (1 << b) != 0 {
                        self.obs[b] == Some(op.value)
                    } else {
                        self.obs[b].is_none()
                    }
                });
                ok.then_some((0, false))
            }
            OpKind::Delete => {
                if st.presence_open && self.present {
                    return None;
                }
                each_open(&|b| self.obs[b].is_none()).then_some((0, false))
            }
            OpKind::Post => {
                if st.presence_open && !self.present {
                    return None;
                }
                let ok = each_open(&|b| f & (1 << b) == 0 || self.obs[b] == Some(op.value));
                ok.then_some((st.open & !f, false))
            }
        }
    }

    fn remove(&self, st: &mut State, i: usize) {
        st.alive[i] = false;
        if let Some(c) = st.starts.get_mut(&self.start[i]) {
            *c -= 1;
            if *c == 0 {
                st.starts.remove(&self.start[i]);
            }
        }
        if self.acked[i] || self.witness[i] {
            st.must -= 1;
        }
    }

    fn end_ok(&self, st: &State) -> Result<(), String> {
        if st.presence_open && self.present {
            return Err("the group exists, but no write that may have applied creates it".into());
        }
        for b in 0..self.obs.len() {
            if st.open & (1 << b) != 0 && self.obs[b].is_some() {
                return Err("a visible value is not explained by any write".into());
            }
        }
        Ok(())
    }

    /// `Some(true)`: solved; `Some(false)`: impossible; `None`: budget exhausted.
    fn solve(
        &self,
        mut st: State,
        order: &[usize],
        budget: &mut usize,
        why: &mut Option<String>,
    ) -> Option<bool> {
        loop {
            if st.must == 0 {
                return match self.end_ok(&st) {
                    Ok(()) => Some(true),
                    Err(e) => {
                        why.get_or_insert(e);
                        Some(false)
                    }
                };
            }
            let mut progressed = false;
            for &i in order {
                if !st.alive[i] || self.blocked(&st, i) {
                    continue;
                }
                if let Some((open, presence_open)) = self.place(&st, i) {
                    st.open = open;
                    st.presence_open = presence_open;
                    self.remove(&mut st, i);
                    progressed = true;
                }
            }
            if progressed {
                continue;
            }
            // Stuck: leave out one unknown, non-witness write that blocks an acknowledged one.
            let min_acked_end = (0..self.ops.len())
                .filter(|&i| st.alive[i] && self.acked[i])
                .map(|i| self.end[i])
                .min();
            let candidates: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&u| {
                    st.alive[u]
                        && !self.acked[u]
                        && !self.witness[u]
                        && min_acked_end.is_some_and(|m| self.start[u] > m)
                })
                .collect();
            if candidates.is_empty() {
                why.get_or_insert_with(|| self.explain_stuck(&st));
                return Some(false);
            }
            for u in candidates {
                if *budget == 0 {
                    return None;
                }
                *budget -= 1;
                let mut next = st.clone();
                self.remove(&mut next, u);
                match self.solve(next, order, budget, why) {
                    Some(false) => {}
                    other => return other,
                }
            }
            return Some(false);
        }
    }

    /// Names the acknowledged (or visible) write that cannot be placed, for the report.
    fn explain_stuck(&self, st: &State) -> String {
        let mut parts = Vec::new();
        for i in 0..self.ops.len() {
            if !st.alive[i] || !(self.acked[i] || self.witness[i]) {
                continue;
            }
            let op = self.ops[i];
            let why = if self.blocked(st, i) {
                "must precede a write still unexplained"
            } else {
                "its effect contradicts what is visible"
            };
            parts.push(format!(
                "{} {} value {} ({:?}, sent at {} ms, answered at {} ms): {why}",
                op.kind.method(),
                op.families.join("+"),
                op.value,
                op.outcome,
                op.start_ms,
                op.end_ms
            ));
            if parts.len() >= 3 {
                break;
            }
        }
        format!(
            "no real-time order explains the state; {}",
            parts.join("; ")
        )
    }
}
