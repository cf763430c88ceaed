//! The checker on synthetic histories: histories it must accept and violations it must find.

use std::collections::BTreeMap;

use crate::push_time::PushTimeSample;
use crate::{History, Op, OpKind, Outcome, ReplicaView, Violation, Workload, check, check_all};

const A: Outcome = Outcome::Acked;
const U: Outcome = Outcome::Unknown;
const F: Outcome = Outcome::Failed;

fn op(kind: OpKind, fams: &[&str], value: u64, start: u64, end: u64, outcome: Outcome) -> Op {
    Op {
        id: 0,
        client: 0,
        group: "g".into(),
        kind,
        families: fams.iter().map(|s| s.to_string()).collect(),
        value,
        node: "n1".into(),
        start_ms: start,
        end_ms: end,
        outcome,
        note: String::new(),
    }
}

fn put(fams: &[&str], v: u64, s: u64, e: u64, o: Outcome) -> Op {
    op(OpKind::Put, fams, v, s, e, o)
}
fn post(fams: &[&str], v: u64, s: u64, e: u64, o: Outcome) -> Op {
    op(OpKind::Post, fams, v, s, e, o)
}
fn del(v: u64, s: u64, e: u64, o: Outcome) -> Op {
    op(OpKind::Delete, &[], v, s, e, o)
}

fn history(ops: Vec<Op>) -> History {
    let h = History::new();
    for o in ops {
        h.push(o);
    }
    h
}

/// A replica showing group "g" with `fams` (None: group absent), rendered the way pgw does.
fn view(node: &str, fams: Option<&[(&str, u64)]>) -> ReplicaView {
    let w = Workload::new("chaos", 2);
    let mut body = String::new();
    if let Some(fams) = fams {
        let mut sorted: Vec<_> = fams.to_vec();
        sorted.sort();
        for (f, v) in sorted {
            body.push_str(&format!("# TYPE {f} gauge\n"));
            for s in 0..2 {
                body.push_str(&format!(
                    "{f}{{g=\"g\",instance=\"\",job=\"chaos\",s=\"{s}\"}} {v}\n"
                ));
            }
        }
        body.push_str("push_time_seconds{g=\"g\",instance=\"\",job=\"chaos\"} 100\n");
    }
    w.parse(node, body.as_bytes())
}

fn ok(ops: Vec<Op>, fams: Option<&[(&str, u64)]>) {
    let h = history(ops);
    if let Err(v) = check(&h, &[view("n1", fams), view("n2", fams)]) {
        panic!("expected no violation, got {v:#?}");
    }
}

fn bad(ops: Vec<Op>, fams: Option<&[(&str, u64)]>) -> Vec<Violation> {
    let h = history(ops);
    match check(&h, &[view("n1", fams)]) {
        Ok(s) => panic!("expected a violation, got {s:?}"),
        Err(v) => v,
    }
}

fn lost(v: &[Violation]) -> usize {
    v.iter()
        .filter(|x| matches!(x, Violation::LostAck { .. }))
        .count()
}

fn nonlin(v: &[Violation]) -> usize {
    v.iter()
        .filter(|x| matches!(x, Violation::NotLinearizable { .. }))
        .count()
}

#[test]
fn sequential_put_post_delete_put() {
    let ops = vec![
        put(&["a", "b"], 1, 0, 1, A),
        post(&["b"], 2, 2, 3, A),
        del(3, 4, 5, A),
        put(&["a"], 4, 6, 7, A),
        post(&["c"], 5, 8, 9, A),
    ];
    ok(ops.clone(), Some(&[("a", 4), ("c", 5)]));
    let v = bad(ops, Some(&[("a", 4)]));
    assert_eq!(lost(&v), 1, "{v:#?}");
}

#[test]
fn a_lost_acknowledged_put_is_found() {
    let v = bad(
        vec![put(&["a"], 1, 0, 1, A), put(&["a"], 2, 2, 3, A)],
        Some(&[("a", 1)]),
    );
    assert_eq!(lost(&v), 1, "{v:#?}");
    assert_eq!(nonlin(&v), 1, "{v:#?}");
}

#[test]
fn an_undone_delete_is_found() {
    let v = bad(
        vec![put(&["a"], 1, 0, 1, A), del(2, 2, 3, A)],
        Some(&[("a", 1)]),
    );
    assert_eq!(lost(&v), 1, "{v:#?}");
}

#[test]
fn an_absent_group_needs_a_delete() {
    let v = bad(vec![put(&["a"], 1, 0, 1, A)], None);
    assert_eq!(lost(&v), 1, "{v:#?}");
    // An unknown DELETE sent afterwards explains it.
    ok(vec![put(&["a"], 1, 0, 1, A), del(2, 2, 3, U)], None);
    // A failed one does not.
    let v = bad(vec![put(&["a"], 1, 0, 1, A), del(2, 2, 3, F)], None);
    assert_eq!(lost(&v), 1, "{v:#?}");
    // Only failed writes: the group never existed.
    ok(vec![put(&["a"], 1, 0, 1, F)], None);
}

#[test]
fn phantoms_are_found() {
    let v = bad(vec![put(&["a"], 1, 0, 1, A)], Some(&[("a", 99)]));
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::Phantom { value: 99, .. })),
        "{v:#?}"
    );
    // A failed write must never be visible.
    let v = bad(
        vec![put(&["a"], 1, 0, 1, A), put(&["a"], 2, 2, 3, F)],
        Some(&[("a", 2)]),
    );
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::Phantom { value: 2, .. })),
        "{v:#?}"
    );
    // A value shown under a family it was not pushed to.
    let v = bad(vec![put(&["a"], 1, 0, 1, A)], Some(&[("b", 1)]));
    assert!(
        v.iter().any(|x| matches!(x, Violation::Phantom { .. })),
        "{v:#?}"
    );
}

#[test]
fn unknown_writes_may_go_either_way() {
    let ops = vec![put(&["a"], 1, 0, 1, A), put(&["a"], 2, 2, 3, U)];
    ok(ops.clone(), Some(&[("a", 1)]));
    ok(ops, Some(&[("a", 2)]));
    // An unknown write may take effect after a later acknowledged one (a leader's log entry
    // committed after the client gave up).
    ok(
        vec![put(&["a"], 1, 0, 1, U), put(&["a"], 2, 5, 6, A)],
        Some(&[("a", 1)]),
    );
}

#[test]
fn unknown_writes_are_all_or_nothing() {
    // An earlier acknowledged PUT {a,b}=1, then an unknown PUT {a,b}=2: a=2, b=1 is torn.
    let v = bad(
        vec![put(&["a", "b"], 1, 0, 1, A), put(&["a", "b"], 2, 2, 3, U)],
        Some(&[("a", 2), ("b", 1)]),
    );
    assert_eq!(nonlin(&v), 1, "{v:#?}");
    // Same with a POST: b half-applied.
    let v = bad(
        vec![put(&["a", "b"], 1, 0, 1, A), post(&["a", "b"], 2, 2, 3, U)],
        Some(&[("a", 2), ("b", 1)]),
    );
    assert_eq!(nonlin(&v), 1, "{v:#?}");
    // Two PUTs each showing one of the other's families cannot both be last.
    let v = bad(
        vec![put(&["a", "b"], 1, 0, 10, A), put(&["a", "b"], 2, 0, 10, A)],
        Some(&[("a", 1), ("b", 2)]),
    );
    assert_eq!(nonlin(&v), 1, "{v:#?}");
}

#[test]
fn post_replaces_only_its_families() {
    let ops = vec![put(&["a", "b"], 1, 0, 1, A), post(&["b"], 2, 2, 3, A)];
    ok(ops.clone(), Some(&[("a", 1), ("b", 2)]));
    let v = bad(ops, Some(&[("b", 2)]));
    assert_eq!(lost(&v), 1, "{v:#?}");
}

#[test]
fn put_removes_families_it_does_not_push() {
    let ops = vec![
        put(&["a"], 1, 0, 1, A),
        post(&["b"], 2, 2, 3, A),
        put(&["a"], 3, 4, 5, A),
    ];
    ok(ops.clone(), Some(&[("a", 3)]));
    let v = bad(ops, Some(&[("a", 3), ("b", 2)]));
    assert_eq!(lost(&v), 1, "{v:#?}");
}

#[test]
fn concurrent_acknowledged_writes_may_land_in_either_order() {
    let ops = vec![put(&["a"], 1, 0, 10, A), put(&["a"], 2, 5, 15, A)];
    ok(ops.clone(), Some(&[("a", 1)]));
    ok(ops, Some(&[("a", 2)]));
}

#[test]
fn a_blocking_unknown_write_is_left_out_when_it_never_applied() {
    // P{a} acked, then an unknown PUT{b} (never applied), then Q{c} acked: {a, c} is fine.
    ok(
        vec![
            post(&["a"], 1, 0, 1, A),
            put(&["b"], 2, 2, 3, U),
            post(&["c"], 3, 4, 5, A),
        ],
        Some(&[("a", 1), ("c", 3)]),
    );
    // ... and so is {b, c} (it applied).
    ok(
        vec![
            post(&["a"], 1, 0, 1, A),
            put(&["b"], 2, 2, 3, U),
            post(&["c"], 3, 4, 5, A),
        ],
        Some(&[("b", 2), ("c", 3)]),
    );
    // But {c} alone is not: nothing removes a.
    let v = bad(
        vec![
            post(&["a"], 1, 0, 1, A),
            put(&["b"], 2, 2, 3, U),
            post(&["c"], 3, 4, 5, A),
        ],
        Some(&[("c", 3)]),
    );
    assert!(nonlin(&v) + lost(&v) >= 1, "{v:#?}");
}

#[test]
fn an_unknown_delete_between_acknowledged_writes() {
    // PUT a=1; DELETE unknown; POST b=3: either {a=1,b=3} or {b=3}.
    let ops = vec![
        put(&["a"], 1, 0, 1, A),
        del(2, 2, 3, U),
        post(&["b"], 3, 4, 5, A),
    ];
    ok(ops.clone(), Some(&[("a", 1), ("b", 3)]));
    ok(ops, Some(&[("b", 3)]));
}

#[test]
fn replicas_must_be_identical() {
    let h = history(vec![put(&["a"], 1, 0, 1, A), put(&["a"], 2, 0, 5, A)]);
    let v = check(
        &h,
        &[view("n1", Some(&[("a", 1)])), view("n2", Some(&[("a", 2)]))],
    )
    .expect_err("differ");
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::ReplicasDiffer { .. })),
        "{v:#?}"
    );
}

#[test]
fn duplicate_values_and_panics_are_reported() {
    let h = history(vec![put(&["a"], 1, 0, 1, A), put(&["a"], 1, 2, 3, A)]);
    let mut r = view("n1", Some(&[("a", 1)]));
    r.panics.push("thread 'x' panicked at src/lib.rs".into());
    let v = check(&h, &[r]).expect_err("violations");
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::DuplicateValue { .. }))
    );
    assert!(v.iter().any(|x| matches!(x, Violation::Panic { .. })));
}

#[test]
fn push_time_must_not_go_backwards() {
    let h = history(vec![put(&["a"], 1, 0, 1, A)]);
    let s = |node: &str, inc: u64, at: u64, t: f64| PushTimeSample {
        node: node.into(),
        incarnation: inc,
        at_ms: at,
        group: "g".into(),
        push_time: t,
    };
    let views = [view("n1", Some(&[("a", 1)]))];
    // Final view has 100; a restart may serve an older value in a new incarnation.
    let fine = [
        s("n1", 0, 1, 50.0),
        s("n1", 0, 2, 100.0),
        s("n1", 1, 3, 50.0),
    ];
    let (_, v) = check_all(&h.ops(), &views, &fine);
    assert!(v.is_empty(), "{v:#?}");
    let back = [s("n1", 0, 1, 60.0), s("n1", 0, 2, 50.0)];
    let (_, v) = check_all(&h.ops(), &views, &back);
    assert_eq!(v.len(), 1, "{v:#?}");
    let above_final = [s("n2", 0, 1, 120.0)];
    let (_, v) = check_all(&h.ops(), &views, &above_final);
    assert_eq!(v.len(), 1, "{v:#?}");
}

#[test]
fn summary_counts() {
    let h = history(vec![
        put(&["a"], 1, 0, 1, A),
        put(&["a"], 2, 2, 3, U),
        put(&["a"], 3, 4, 5, F),
    ]);
    let s = check(&h, &[view("n1", Some(&[("a", 2)]))]).expect("ok");
    assert_eq!(
        (s.counts.acked, s.counts.failed, s.counts.unknown),
        (1, 1, 1)
    );
    assert_eq!(s.unknown_visible, 1);
    assert_eq!(s.lost_acked, 0);
    assert_eq!(s.groups_present, 1);
}

#[test]
fn json_lines_round_trip() {
    let h = history(vec![put(&["a"], 1, 0, 1, A), del(2, 2, 3, U)]);
    let back = History::from_json_lines(&h.to_json_lines()).expect("parse");
    assert_eq!(back.ops(), h.ops());
}

/// A small deterministic generator (no `rand` dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Soundness: histories produced by a real sequential execution (a real-time-respecting
/// order, unknown writes applied or not) are always accepted; and dropping an acknowledged
/// write's effect is found.
#[test]
fn random_executions_are_accepted_and_lost_writes_found() {
    let fams = ["a", "b", "c"];
    let mut found_losses = 0;
    let seeds: u64 = std::env::var("TESTKIT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let max_ops: u64 = std::env::var("TESTKIT_MAX_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 0..seeds {
        let mut rng = Lcg(seed * 7919 + 1);
        let n = 2 + rng.below(max_ops) as usize;
        // Each op gets a commit point inside its interval; concurrent clients overlap.
        let mut ops = Vec::new();
        let mut commits = Vec::new();
        for i in 0..n {
            let start = rng.below(100);
            let len = 1 + rng.below(30);
            let commit = start + rng.below(len + 1);
            let kind = match rng.below(10) {
                0..=3 => OpKind::Put,
                4..=7 => OpKind::Post,
                _ => OpKind::Delete,
            };
            let mut fs: Vec<&str> = fams.iter().copied().filter(|_| rng.below(2) == 0).collect();
            if fs.is_empty() && kind != OpKind::Delete {
                fs.push(fams[rng.below(3) as usize]);
            }
            let outcome = match rng.below(10) {
                0..=5 => A,
                6..=8 => U,
                _ => F,
            };
            // An unknown write applies (at any later point) or not.
            let applied = match outcome {
                A => true,
                U => rng.below(2) == 0,
                _ => false,
            };
            let commit = if outcome == U {
                start + rng.below(200)
            } else {
                commit
            };
            ops.push(op(kind, &fs, i as u64 + 1, start, start + len, outcome));
            commits.push((commit, i, applied));
        }
        commits.sort();
        let mut state: Option<BTreeMap<&str, u64>> = None;
        for &(_, i, applied) in &commits {
            if !applied {
                continue;
            }
            let o = &ops[i];
            match o.kind {
                OpKind::Delete => state = None,
                OpKind::Put => {
                    state = Some(o.families.iter().map(|f| (fam(f), o.value)).collect());
                }
                OpKind::Post => {
                    let m = state.get_or_insert_with(BTreeMap::new);
                    for f in &o.families {
                        m.insert(fam(f), o.value);
                    }
                }
            }
        }
        let shown: Option<Vec<(&str, u64)>> = state
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect());
        let h = history(ops.clone());
        let views = [view("n1", shown.as_deref())];
        if let Err(v) = check(&h, &views) {
            panic!(
                "seed {seed}: a real execution was rejected: {v:#?}\nops {ops:#?}\nshown {shown:?}"
            );
        }
        // Mutation: forget the last acknowledged write in commit order; unless something
        // else explains the state, the checker must object.
        if let Some(&(_, last, _)) = commits.iter().rev().find(|(_, i, _)| ops[*i].outcome == A) {
            let mut mutated = ops.clone();
            mutated[last].outcome = A;
            let mut state2: Option<BTreeMap<&str, u64>> = None;
            for &(_, i, applied) in &commits {
                if !applied || i == last {
                    continue;
                }
                let o = &ops[i];
                match o.kind {
                    OpKind::Delete => state2 = None,
                    OpKind::Put => {
                        state2 = Some(o.families.iter().map(|f| (fam(f), o.value)).collect())
                    }
                    OpKind::Post => {
                        let m = state2.get_or_insert_with(BTreeMap::new);
                        for f in &o.families {
                            m.insert(fam(f), o.value);
                        }
                    }
                }
            }
            if state2 != state {
                let shown2: Option<Vec<(&str, u64)>> = state2
                    .as_ref()
                    .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect());
                let h2 = history(mutated);
                if check(&h2, &[view("n1", shown2.as_deref())]).is_err() {
                    found_losses += 1;
                }
            }
        }
    }
    assert!(
        found_losses > seeds / 20,
        "only {found_losses} mutations detected"
    );
}

fn fam(f: &str) -> &'static str {
    match f {
        "a" => "a",
        "b" => "b",
        _ => "c",
    }
}
