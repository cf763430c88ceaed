//! Unit tests of apply, the consistency check and persistence records.

use super::*;
use crate::pb::{Counter, Histogram, Summary, Untyped};

fn key(pairs: &[(&str, &str)]) -> GroupingKey {
    GroupingKey::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn lp(n: &str, v: &str) -> LabelPair {
    LabelPair {
        name: Some(n.into()),
        value: Some(v.into()),
    }
}

fn family(name: &str, t: MetricType, samples: &[(&[(&str, &str)], f64)]) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: None,
        r#type: Some(t as i32),
        metric: samples
            .iter()
            .map(|(labels, v)| {
                let mut m = Metric {
                    label: labels.iter().map(|(n, v)| lp(n, v)).collect(),
                    ..Default::default()
                };
                match t {
                    MetricType::Counter => {
                        m.counter = Some(Counter {
                            value: Some(*v),
                            ..Default::default()
                        })
                    }
                    MetricType::Gauge => m.gauge = Some(Gauge { value: Some(*v) }),
                    MetricType::Untyped => m.untyped = Some(Untyped { value: Some(*v) }),
                    MetricType::Summary => {
                        m.summary = Some(Box::new(Summary {
                            sample_count: Some(1),
                            sample_sum: Some(*v),
                            ..Default::default()
                        }))
                    }
                    MetricType::Histogram => {
                        m.histogram = Some(Box::new(Histogram {
                            sample_count: Some(1),
                            sample_sum: Some(*v),
                            ..Default::default()
                        }))
                    }
                    MetricType::GaugeHistogram => {}
                }
                m
            })
            .collect(),
        unit: None,
    }
}

fn gauge(name: &str, v: f64) -> MetricFamily {
    family(name, MetricType::Gauge, &[(&[], v)])
}

fn push(k: &GroupingKey, replace: bool, t: i64, fams: &[MetricFamily]) -> Command {
    Command::Push(Push::new(k.clone(), replace, t, true, fams))
}

fn value(store: &GroupStore, k: &GroupingKey, name: &str) -> Option<Vec<f64>> {
    let f = &store.get(k)?.families.get(name)?.family();
    Some(
        f.metric
            .iter()
            .map(|m| {
                m.gauge
                    .as_ref()
                    .and_then(|g| g.value)
                    .or(m.counter.as_ref().and_then(|c| c.value))
                    .or(m.untyped.as_ref().and_then(|u| u.value))
                    .unwrap_or(f64::NAN)
            })
            .collect(),
    )
}

fn rejected(r: &CommandResponse) -> &str {
    match r {
        CommandResponse::Rejected(m) => m,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

const T1: i64 = 1_700_000_000_000_000_000;

#[test]
fn put_creates_group_with_synthetic_families_and_sanitised_labels() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j"), ("a", "1")]);
    let f = family(
        "m",
        MetricType::Gauge,
        &[(&[("a", "body"), ("x", "y")], 1.0)],
    );
    let (r, e) = s.apply(&push(&k, true, T1, &[f]));
    assert_eq!(r, CommandResponse::Applied);
    assert_eq!(
        e,
        Effect::Group {
            key: k.clone(),
            families: vec!["m".into(), PUSH_FAILURE_TIME.into(), PUSH_TIME.into()]
        }
    );
    let g = s.get(&k).unwrap();
    let labels: Vec<(String, String)> = g.families["m"].family().metric[0]
        .label
        .iter()
        .map(|l| (l.name().to_string(), l.value().to_string()))
        .collect();
    let want = [("a", "1"), ("instance", ""), ("job", "j"), ("x", "y")];
    assert_eq!(labels, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(g.push_time_ns(), T1);
    assert_eq!(g.push_failure_time_ns(), 0);
    assert!(g.last_push_successful());
    assert_eq!(value(&s, &k, PUSH_TIME), Some(vec![T1 as f64 / 1e9]));
    assert_eq!(value(&s, &k, PUSH_FAILURE_TIME), Some(vec![0.0]));
}

#[test]
fn body_instance_is_kept_unless_the_key_has_one() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    let f = family("m", MetricType::Gauge, &[(&[("instance", "y")], 1.0)]);
    s.apply(&push(&k, true, T1, &[f]));
    let m = &s.get(&k).unwrap().families["m"].family().metric[0];
    assert_eq!(m.label[0].value(), "y");
    // The synthetic series get instance="".
    let p = &s.get(&k).unwrap().families[PUSH_TIME].family().metric[0];
    assert_eq!(validate::fmt_labels(&p.label), r#"{instance="",job="j"}"#);
}

#[test]
fn post_replaces_whole_families_by_name_put_replaces_the_group() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    let two = family(
        "a",
        MetricType::Gauge,
        &[(&[("x", "1")], 1.0), (&[("x", "2")], 2.0)],
    );
    s.apply(&push(&k, true, T1, &[two, gauge("b", 5.0)]));
    let one = family("a", MetricType::Gauge, &[(&[("x", "3")], 3.0)]);
    assert_eq!(
        s.apply(&push(&k, false, T1 + 1, &[one])).0,
        CommandResponse::Applied
    );
    assert_eq!(
        value(&s, &k, "a"),
        Some(vec![3.0]),
        "POST replaces all series of the family"
    );
    assert_eq!(
        value(&s, &k, "b"),
        Some(vec![5.0]),
        "POST keeps other families"
    );
    assert_eq!(
        s.apply(&push(&k, true, T1 + 2, &[gauge("c", 1.0)])).0,
        CommandResponse::Applied
    );
    assert_eq!(value(&s, &k, "a"), None);
    assert_eq!(value(&s, &k, "b"), None);
    assert_eq!(value(&s, &k, "c"), Some(vec![1.0]));
    // PUT with an empty body empties the group but keeps it.
    s.apply(&push(&k, true, T1 + 3, &[]));
    let names: Vec<&String> = s.get(&k).unwrap().families.keys().collect();
    assert_eq!(names, [PUSH_FAILURE_TIME, PUSH_TIME]);
    assert_eq!(s.get(&k).unwrap().push_time_ns(), T1 + 3);
}

#[test]
fn delete_and_wipe() {
    let mut s = GroupStore::new();
    let k1 = key(&[("job", "a")]);
    let k2 = key(&[("job", "a"), ("instance", "i")]);
    s.apply(&push(&k1, true, T1, &[gauge("m", 1.0)]));
    s.apply(&push(&k2, true, T1, &[gauge("m", 1.0)]));
    assert_eq!(
        s.apply(&Command::Delete { key: k1.clone() }),
        (CommandResponse::Applied, Effect::GroupRemoved(k1.clone()))
    );
    assert!(s.get(&k1).is_none());
    assert!(s.get(&k2).is_some(), "delete is an exact-key match");
    assert_eq!(
        s.apply(&Command::Delete { key: k1.clone() }),
        (CommandResponse::Applied, Effect::None)
    );
    // The deleted group's series are gone from the index: pushing them again is fine.
    assert_eq!(
        s.apply(&push(&k1, true, T1, &[gauge("m", 2.0)])).0,
        CommandResponse::Applied
    );
    assert_eq!(
        s.apply(&Command::Wipe),
        (CommandResponse::Applied, Effect::Wiped)
    );
    assert!(s.is_empty());
    assert_eq!(s.family_names().count(), 0);
    assert_eq!(s.series_count(), 0);
}

#[test]
fn timestamps_are_rejected_and_recorded_as_failure() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    s.apply(&push(&k, true, T1, &[gauge("m", 1.0)]));
    let mut f = gauge("m", 2.0);
    f.metric[0].timestamp_ms = Some(5);
    let (r, e) = s.apply(&push(&k, true, T1 + 10, &[f]));
    assert_eq!(
        rejected(&r),
        format!("{REJECT_PREFIX}pushed metrics must not have timestamps")
    );
    assert_eq!(
        e,
        Effect::Group {
            key: k.clone(),
            families: vec![PUSH_FAILURE_TIME.into()]
        }
    );
    assert_eq!(
        value(&s, &k, "m"),
        Some(vec![1.0]),
        "a failed PUT does not empty the group"
    );
    let g = s.get(&k).unwrap();
    assert_eq!(g.push_failure_time_ns(), T1 + 10);
    assert_eq!(g.push_time_ns(), T1);
    assert!(!g.last_push_successful());
    // A later success keeps the failure time.
    s.apply(&push(&k, false, T1 + 20, &[gauge("m", 3.0)]));
    assert_eq!(s.get(&k).unwrap().push_failure_time_ns(), T1 + 10);
}

#[test]
fn failed_push_to_a_new_group_creates_it_with_push_time_zero() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    let mut f = gauge("m", 2.0);
    f.metric[0].timestamp_ms = Some(5);
    let (r, _) = s.apply(&push(&k, true, T1, &[f]));
    rejected(&r);
    let g = s.get(&k).expect("the failure marker group exists");
    assert_eq!(g.push_time_ns(), 0);
    assert_eq!(g.push_failure_time_ns(), T1);
    assert_eq!(g.families.len(), 2);
}

#[test]
fn duplicate_series_across_groups_are_rejected_and_q2_does_not_poison() {
    let mut s = GroupStore::new();
    let k1 = key(&[("job", "x")]);
    let k2 = key(&[("job", "x"), ("instance", "")]);
    assert_eq!(
        s.apply(&push(&k1, true, T1, &[gauge("m", 1.0)])).0,
        CommandResponse::Applied
    );
    let (r, e) = s.apply(&push(&k2, true, T1 + 1, &[gauge("m", 1.0)]));
    assert!(
        rejected(&r).contains("was collected before with the same name and label values"),
        "{r:?}"
    );
    // Q2 fixed: the colliding failure-marker group is not created.
    assert_eq!(e, Effect::None);
    assert!(s.get(&k2).is_none());
    assert!(s.inconsistencies().is_empty());
    // Later pushes still work.
    assert_eq!(
        s.apply(&push(&k1, true, T1 + 2, &[gauge("m", 2.0)])).0,
        CommandResponse::Applied
    );
}

#[test]
fn empty_label_group_does_not_collide() {
    let mut s = GroupStore::new();
    let k1 = key(&[("job", "x")]);
    let k2 = key(&[("job", "x"), ("a", "")]);
    assert_eq!(
        s.apply(&push(&k1, true, T1, &[gauge("m", 1.0)])).0,
        CommandResponse::Applied
    );
    assert_eq!(
        s.apply(&push(&k2, true, T1, &[gauge("m", 1.0)])).0,
        CommandResponse::Applied
    );
}

#[test]
fn duplicate_within_a_push_and_own_replacement() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "x")]);
    let dup = family(
        "m",
        MetricType::Gauge,
        &[(&[("a", "1")], 1.0), (&[("a", "1")], 2.0)],
    );
    rejected(&s.apply(&push(&k, true, T1, &[dup])).0);
    // Re-pushing the same series into the same group replaces it: no collision with itself.
    let f = family("m", MetricType::Gauge, &[(&[("a", "1")], 1.0)]);
    assert_eq!(
        s.apply(&push(&k, true, T1, std::slice::from_ref(&f))).0,
        CommandResponse::Applied
    );
    assert_eq!(
        s.apply(&push(&k, false, T1, std::slice::from_ref(&f))).0,
        CommandResponse::Applied
    );
    assert_eq!(
        s.apply(&push(&k, true, T1, &[f])).0,
        CommandResponse::Applied
    );
}

#[test]
fn type_conflicts_across_groups() {
    let mut s = GroupStore::new();
    let k1 = key(&[("job", "a")]);
    let k2 = key(&[("job", "b")]);
    s.apply(&push(
        &k1,
        true,
        T1,
        &[family("m", MetricType::Counter, &[(&[], 1.0)])],
    ));
    let r = s.apply(&push(&k2, true, T1, &[gauge("m", 1.0)])).0;
    assert!(rejected(&r).contains("is not a COUNTER"), "{r:?}");
    // The same group may change the type of its own family.
    assert_eq!(
        s.apply(&push(&k1, true, T1, &[gauge("m", 1.0)])).0,
        CommandResponse::Applied
    );
    assert_eq!(
        s.apply(&push(&k2, true, T1, &[gauge("m", 1.0)])).0,
        CommandResponse::Applied
    );
}

#[test]
fn suffix_collisions() {
    let mut s = GroupStore::new();
    let k1 = key(&[("job", "a")]);
    let k2 = key(&[("job", "b")]);
    s.apply(&push(
        &k1,
        true,
        T1,
        &[family("s", MetricType::Summary, &[(&[], 1.0)])],
    ));
    assert!(
        rejected(&s.apply(&push(&k2, true, T1, &[gauge("s_count", 1.0)])).0).contains("collides")
    );
    assert!(
        rejected(&s.apply(&push(&k2, true, T1, &[gauge("s_sum", 1.0)])).0).contains("collides")
    );
    assert_eq!(
        s.apply(&push(&k2, true, T1, &[gauge("s_bucket", 1.0)])).0,
        CommandResponse::Applied,
        "_bucket next to a summary is allowed"
    );
    s.apply(&push(
        &k1,
        true,
        T1,
        &[family("h", MetricType::Histogram, &[(&[], 1.0)])],
    ));
    assert!(
        rejected(&s.apply(&push(&k2, true, T1, &[gauge("h_bucket", 1.0)])).0).contains("collides")
    );
    // And the reverse: a histogram next to an existing x_count.
    s.apply(&push(&k2, true, T1, &[gauge("x_count", 1.0)]));
    let r = s
        .apply(&push(
            &k1,
            false,
            T1,
            &[family("x", MetricType::Histogram, &[(&[], 1.0)])],
        ))
        .0;
    assert!(rejected(&r).contains("collides"), "{r:?}");
    // Within one push.
    let k3 = key(&[("job", "c")]);
    let both = [
        family("y", MetricType::Summary, &[(&[], 1.0)]),
        gauge("y_sum", 1.0),
    ];
    assert!(rejected(&s.apply(&push(&k3, true, T1, &both)).0).contains("collides"));
    // PUT of the same group drops its old families first: no collision with itself.
    s.apply(&push(&k3, true, T1, &[gauge("z_count", 1.0)]));
    let z = family("z", MetricType::Summary, &[(&[], 1.0)]);
    assert_eq!(
        s.apply(&push(&k3, true, T1, std::slice::from_ref(&z))).0,
        CommandResponse::Applied
    );
}

#[test]
fn label_and_name_validation() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    for (f, want) in [
        (
            family("m", MetricType::Gauge, &[(&[("__x", "1")], 1.0)]),
            "invalid name",
        ),
        (
            family("m", MetricType::Gauge, &[(&[("a-b", "1")], 1.0)]),
            "invalid name",
        ),
        (
            family("m", MetricType::Gauge, &[(&[("a", "1"), ("a", "2")], 1.0)]),
            "same name",
        ),
        (
            family("m", MetricType::Summary, &[(&[("quantile", "1")], 1.0)]),
            "quantile",
        ),
        (
            family("pb-bad", MetricType::Gauge, &[(&[], 1.0)]),
            "not valid",
        ),
    ] {
        let r = s.apply(&push(&k, true, T1, &[f])).0;
        assert!(rejected(&r).contains(want), "{r:?} should contain {want}");
    }
    let mut wrong_value = gauge("m", 1.0);
    wrong_value.r#type = Some(MetricType::Counter as i32);
    assert!(rejected(&s.apply(&push(&k, true, T1, &[wrong_value])).0).contains("is not a COUNTER"));
}

#[test]
fn reserved_self_metric_names() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    let r = s
        .apply(&push(
            &k,
            true,
            T1,
            &[family(
                "pushgateway_http_requests_total",
                MetricType::Counter,
                &[(&[], 1.0)],
            )],
        ))
        .0;
    assert!(
        rejected(&r).contains("has help \"\" but should have"),
        "{r:?}"
    );
    let r = s
        .apply(&push(
            &k,
            true,
            T1,
            &[gauge("process_cpu_seconds_total", 1.0)],
        ))
        .0;
    assert!(
        rejected(&r).contains("has type GAUGE but should have COUNTER"),
        "{r:?}"
    );
    let f = family(
        "process_cpu_seconds_total",
        MetricType::Counter,
        &[(&[], 1.0)],
    );
    assert_eq!(
        s.apply(&push(&k, true, T1, &[f])).0,
        CommandResponse::Applied
    );
    // The stored family keeps what was pushed; the renderer shows the node's own HELP.
    let stored = &s.get(&k).unwrap().families["process_cpu_seconds_total"].family();
    assert_eq!(stored.help(), "");
    // A family colliding with an own summary's suffix is refused.
    let r = s
        .apply(&push(
            &k,
            true,
            T1,
            &[gauge("pushgateway_http_push_size_bytes_count", 1.0)],
        ))
        .0;
    assert!(
        rejected(&r).contains("collides with previously collected summary"),
        "{r:?}"
    );
}

#[test]
fn synthetic_time_stamps_are_the_write_time() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    s.apply(&push(&k, true, T1, &[gauge("m", 1.0)]));
    let g = s.get(&k).unwrap();
    // push_failure_time_seconds is 0 ("never failed") but was stored by this write.
    assert_eq!(g.families[PUSH_FAILURE_TIME].time_ns, T1);
    assert_eq!(g.push_failure_time_ns(), 0);
    let k2 = key(&[("job", "new")]);
    let mut f = gauge("m2", 1.0);
    f.metric[0].timestamp_ms = Some(1);
    s.apply(&push(&k2, true, T1 + 5, &[f]));
    let g2 = s.get(&k2).unwrap();
    assert_eq!(g2.families[PUSH_TIME].time_ns, T1 + 5);
    assert_eq!(g2.push_time_ns(), 0);
    assert_eq!(g2.push_failure_time_ns(), T1 + 5);
}

#[test]
fn pushed_synthetic_names_are_overwritten() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    s.apply(&push(&k, true, T1, &[gauge(PUSH_TIME, 42.0)]));
    assert_eq!(value(&s, &k, PUSH_TIME), Some(vec![T1 as f64 / 1e9]));
}

#[test]
fn push_time_never_goes_backwards() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    s.apply(&push(&k, true, T1 + 100, &[]));
    s.apply(&push(&k, true, T1, &[]));
    assert_eq!(s.get(&k).unwrap().push_time_ns(), T1 + 100);
    assert_eq!(s.clock_ns(), T1 + 100);
}

#[test]
fn unchecked_pushes_can_make_the_store_inconsistent_and_delete_heals() {
    let mut s = GroupStore::new();
    let k1 = key(&[("job", "a")]);
    let k2 = key(&[("job", "b")]);
    let unchecked = |k: &GroupingKey, f: MetricFamily| {
        Command::Push(Push::new(k.clone(), true, T1, false, &[f]))
    };
    assert_eq!(
        s.apply(&unchecked(
            &k1,
            family("m", MetricType::Counter, &[(&[], 1.0)])
        ))
        .0,
        CommandResponse::Applied
    );
    assert!(s.inconsistencies().is_empty());
    assert_eq!(
        s.apply(&unchecked(&k2, gauge("m", 1.0))).0,
        CommandResponse::Applied
    );
    let errs = s.inconsistencies();
    assert!(errs.iter().any(|e| e.contains("is not a")), "{errs:?}");
    s.apply(&Command::Delete { key: k2 });
    assert!(s.inconsistencies().is_empty());
}

#[test]
fn invalid_payload_records_a_failure() {
    let mut s = GroupStore::new();
    let k = key(&[("job", "j")]);
    let cmd = Command::Push(Push {
        key: k.clone(),
        replace: true,
        time_ns: T1,
        check: true,
        payload: Payload::Invalid("bad utf8".into()),
    });
    assert_eq!(
        rejected(&s.apply(&cmd).0),
        format!("{REJECT_PREFIX}bad utf8")
    );
    assert_eq!(s.get(&k).unwrap().push_failure_time_ns(), T1);
}

fn scripted() -> Vec<Command> {
    let mut cmds = Vec::new();
    for i in 0..40i64 {
        let k = key(&[
            ("job", &format!("j{}", i % 7)),
            ("i", &format!("{}", i % 3)),
        ]);
        let f = family(
            &format!("m{}", i % 5),
            MetricType::Gauge,
            &[(&[("s", &format!("{}", i % 4))], i as f64)],
        );
        cmds.push(push(&k, i % 2 == 0, T1 + i, &[f]));
        if i % 11 == 0 {
            cmds.push(Command::Delete {
                key: key(&[("job", "j1"), ("i", "1")]),
            });
        }
        if i % 13 == 0 {
            let c = family("m1", MetricType::Counter, &[(&[], 1.0)]);
            cmds.push(push(&k, false, T1 + i, &[c]));
        }
    }
    cmds
}

#[test]
fn apply_is_deterministic() {
    let run = || {
        let mut s = GroupStore::new();
        let responses: Vec<CommandResponse> = scripted().iter().map(|c| s.apply(c).0).collect();
        (responses, s.encode_snapshot())
    };
    let (r1, b1) = run();
    let (r2, b2) = run();
    assert_eq!(r1, r2);
    assert_eq!(b1, b2);
    assert!(
        r1.iter().any(|r| matches!(r, CommandResponse::Rejected(_))),
        "the script exercises rejections"
    );
}

#[test]
fn commands_round_trip_through_their_encoding() {
    for c in scripted() {
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
    }
    assert!(Command::decode(&[]).is_err());
    assert!(Command::decode(&[99, 1, 2]).is_err());
    assert!(Command::decode(&[COMMAND_FORMAT_FOR_TEST, 200, 200, 200]).is_err());
}

const COMMAND_FORMAT_FOR_TEST: u8 = crate::command::COMMAND_FORMAT;

#[test]
fn snapshot_and_restore_reproduce_the_store() {
    let mut s = GroupStore::new();
    for c in scripted() {
        s.apply(&c);
    }
    let bytes = s.encode_snapshot();
    let back = GroupStore::decode_snapshot(&bytes).unwrap();
    assert_eq!(back.encode_snapshot(), bytes);
    assert_eq!(back.series_count(), s.series_count());
    assert_eq!(back.clock_ns(), s.clock_ns());
    // Records restore the same store in any order.
    let mut records = Vec::new();
    for (k, g) in s.groups() {
        for (n, sf) in &g.families {
            records.push((k.clone(), n.clone(), sf.clone()));
        }
    }
    records.reverse();
    let restored = GroupStore::restore(s.clock_ns(), records);
    assert_eq!(restored.encode_snapshot(), bytes);
    // Continuing on the restored store gives the same result as on the original.
    let next = push(
        &key(&[("job", "j0"), ("i", "0")]),
        true,
        T1 + 1000,
        &[gauge("m1", 1.0)],
    );
    let mut a = s.clone();
    let mut b = restored;
    assert_eq!(a.apply(&next), b.apply(&next));
    // Corrupt snapshots are errors, not panics.
    for cut in [0, 1, 5, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            GroupStore::decode_snapshot(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn replace_restores_a_snapshot_deterministically_and_rejects_garbage() {
    let mut src = GroupStore::new();
    for c in scripted() {
        src.apply(&c);
    }
    let snapshot = src.encode_snapshot();
    let cmd = Command::Replace {
        snapshot: snapshot.clone(),
    };
    assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);

    // Replacing a store that holds other groups yields exactly the backed-up store.
    let mut dst = GroupStore::new();
    dst.apply(&push(
        &key(&[("job", "other")]),
        true,
        T1 - 5,
        &[gauge("x", 1.0)],
    ));
    let (r, effect) = dst.apply(&cmd);
    assert_eq!(r, CommandResponse::Applied);
    assert_eq!(effect, Effect::Replaced);
    assert_eq!(dst.encode_snapshot(), snapshot);
    assert!(dst.get(&key(&[("job", "other")])).is_none());

    // The push clock never goes backwards: a store that saw a later push keeps its clock.
    let mut later = GroupStore::new();
    later.apply(&push(
        &key(&[("job", "x")]),
        true,
        T1 + 1_000_000,
        &[gauge("x", 1.0)],
    ));
    later.apply(&cmd);
    assert_eq!(later.clock_ns(), T1 + 1_000_000);
    assert_eq!(later.len(), src.len());

    // Same command, same result on every replica.
    let mut a = GroupStore::new();
    let mut b = GroupStore::new();
    assert_eq!(a.apply(&cmd), b.apply(&cmd));
    assert_eq!(a.encode_snapshot(), b.encode_snapshot());

    // Undecodable bytes change nothing and say why.
    let before = dst.encode_snapshot();
    for bad in [
        Vec::new(),
        vec![99u8, 0, 0],
        snapshot[..snapshot.len() / 2].to_vec(),
    ] {
        let (r, effect) = dst.apply(&Command::Replace { snapshot: bad });
        assert!(rejected(&r).contains("restore data is invalid"), "{r:?}");
        assert_eq!(effect, Effect::None);
        assert_eq!(dst.encode_snapshot(), before);
    }
}

#[test]
fn family_records_round_trip() {
    let sf = StoredFamily::new(T1, &gauge("m", 1.5));
    assert_eq!(decode_family(&encode_family(&sf)).unwrap(), sf);
    assert!(decode_family(&[]).is_err());
    assert!(decode_family(&[RECORD_FORMAT, 1, 2]).is_err());
    let k = key(&[("job", "j"), ("a", "")]);
    let mut enc = k.encode();
    enc.extend_from_slice(b"rest");
    let (back, rest) = GroupingKey::decode_prefix(&enc).unwrap();
    assert_eq!((back, rest), (k, &b"rest"[..]));
}

#[test]
fn check_cost_does_not_depend_on_store_size_for_holders() {
    // Indirect check of incrementality: index holders track exactly the groups with a family.
    let mut s = GroupStore::new();
    for i in 0..50 {
        let k = key(&[("job", &format!("j{i}"))]);
        s.apply(&push(&k, true, T1, &[gauge("m", 1.0)]));
    }
    assert_eq!(s.holders("m").count(), 50);
    assert_eq!(s.series_count(), 150);
    s.apply(&Command::Delete {
        key: key(&[("job", "j3")]),
    });
    assert_eq!(s.holders("m").count(), 49);
    assert_eq!(s.series_count(), 147);
}

/// Renders text and protobuf of `store` and of a copy rebuilt from its snapshot (no cache).
fn renderings(store: &GroupStore) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let fresh = GroupStore::decode_snapshot(&store.encode_snapshot()).unwrap();
    let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    crate::render::text(store, &[], &mut a);
    crate::render::text(&fresh, &[], &mut b);
    crate::render::protobuf(store, &[], &mut c);
    crate::render::protobuf(&fresh, &[], &mut d);
    (a, b, c, d)
}

#[test]
fn render_cache_follows_every_change() {
    let mut s = GroupStore::new();
    let a = key(&[("job", "a")]);
    let b = key(&[("job", "b")]);
    let shared = |v: f64| family("shared", MetricType::Gauge, &[(&[("x", "1")], v)]);
    let own = |v: f64| family("own_a", MetricType::Counter, &[(&[], v)]);
    let mut step = 0;
    let mut check = |s: &GroupStore| {
        step += 1;
        // Twice: the second rendering comes from the cache.
        for _ in 0..2 {
            let (a, b, c, d) = renderings(s);
            assert_eq!(
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b),
                "text, step {step}"
            );
            assert_eq!(c, d, "protobuf, step {step}");
        }
    };
    check(&s);
    s.apply(&push(&a, true, T1, &[shared(1.0), own(1.0)]));
    check(&s);
    s.apply(&push(&b, true, T1 + 1, &[shared(2.0)]));
    check(&s);
    // POST replacing one family of one group.
    s.apply(&push(&a, false, T1 + 2, &[shared(3.0)]));
    check(&s);
    // PUT dropping a family.
    s.apply(&push(&a, true, T1 + 3, &[shared(4.0)]));
    check(&s);
    // A rejected push (type conflict) only changes the failure time.
    s.apply(&push(
        &b,
        false,
        T1 + 4,
        &[family("shared", MetricType::Counter, &[(&[], 1.0)])],
    ));
    // The index names every holder of a family after replacements.
    assert_eq!(s.holders("shared").count(), 2);
    assert_eq!(s.holders(PUSH_TIME).count(), 2);
    check(&s);
    s.apply(&Command::Delete { key: a.clone() });
    check(&s);
    s.apply(&Command::Batch(items(vec![
        push(&a, true, T1 + 5, &[own(7.0)]),
        Command::Delete { key: b.clone() },
        push(&b, true, T1 + 6, &[shared(8.0)]),
    ])));
    check(&s);
    s.apply(&Command::Wipe);
    check(&s);
    // Self-metrics (`extra`) are merged afresh every time, cached families or not.
    s.apply(&push(&a, true, T1 + 7, &[shared(9.0)]));
    let extra = [
        family("shared", MetricType::Gauge, &[(&[("x", "self")], 1.0)]),
        gauge("zzz_self", 2.0),
    ];
    let fresh = GroupStore::decode_snapshot(&s.encode_snapshot()).unwrap();
    for _ in 0..2 {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        crate::render::text(&s, &extra, &mut x);
        crate::render::text(&fresh, &extra, &mut y);
        assert_eq!(String::from_utf8_lossy(&x), String::from_utf8_lossy(&y));
        assert!(String::from_utf8_lossy(&x).contains("zzz_self 2\n"));
    }
}

#[test]
fn a_batch_applies_like_its_commands_one_by_one() {
    let a = key(&[("job", "a")]);
    let b = key(&[("job", "b")]);
    let cmds = vec![
        push(&a, true, T1, &[gauge("g", 1.0)]),
        // Rejected: `g` is a gauge in group a.
        push(
            &b,
            true,
            T1 + 1,
            &[family("g", MetricType::Counter, &[(&[], 1.0)])],
        ),
        push(&b, false, T1 + 2, &[gauge("h", 2.0)]),
        Command::Delete { key: a.clone() },
        push(&a, false, T1 + 3, &[gauge("g", 3.0)]),
    ];
    let mut one_by_one = GroupStore::new();
    let expected: Vec<CommandResponse> = cmds.iter().map(|c| one_by_one.apply(c).0).collect();
    let mut batched = GroupStore::new();
    let (resp, effect) = batched.apply(&Command::Batch(items(cmds.clone())));
    let expected_items: Vec<ItemResponse> = expected
        .iter()
        .map(|r| r.clone().into_item().unwrap())
        .collect();
    assert_eq!(resp, CommandResponse::Batch(expected_items.clone()));
    assert!(matches!(expected[1], CommandResponse::Rejected(_)));
    assert!(matches!(effect, Effect::Many(ref e) if e.len() == cmds.len()));
    assert_eq!(batched.encode_snapshot(), one_by_one.encode_snapshot());
    // Round trip through the command codec.
    let enc = Command::Batch(items(cmds.clone())).encode();
    assert_eq!(Command::decode(&enc).unwrap(), Command::Batch(items(cmds)));
    let r = CommandResponse::Batch(expected_items);
    assert_eq!(CommandResponse::decode(&r.encode()).unwrap(), r);
}

fn items(cmds: Vec<Command>) -> Vec<crate::command::BatchItem> {
    cmds.into_iter().map(|c| c.into_item().unwrap()).collect()
}

#[test]
fn max_groups_refuses_a_new_group_and_changes_nothing() {
    let mut s = GroupStore::new();
    let (a, b) = (key(&[("job", "a")]), key(&[("job", "b")]));
    let limited = |k: &GroupingKey, t: i64| {
        Command::push(
            Push::new(k.clone(), true, t, true, &[gauge("g", 1.0)]),
            Some(1),
        )
    };
    assert_eq!(s.apply(&limited(&a, T1)).0, CommandResponse::Applied);
    let before = s.encode_snapshot();
    let (resp, effect) = s.apply(&limited(&b, T1 + 5));
    match resp {
        CommandResponse::Refused { reason, message } => {
            assert_eq!(reason, MAX_GROUPS_REASON);
            assert!(message.contains("--push.max-groups"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(effect, Effect::None);
    // Nothing changed, not even the push clock.
    assert_eq!(s.encode_snapshot(), before);
    // An existing group may still be pushed to.
    assert_eq!(s.apply(&limited(&a, T1 + 6)).0, CommandResponse::Applied);
    // In a batch, the refusal is one item's response.
    let (resp, _) = s.apply(&Command::Batch(items(vec![
        limited(&b, T1 + 7),
        push(&b, true, T1 + 8, &[gauge("h", 1.0)]),
    ])));
    match resp {
        CommandResponse::Batch(r) => {
            assert!(matches!(r[0], ItemResponse::Refused { .. }), "{r:?}");
            assert_eq!(r[1], ItemResponse::Applied);
        }
        other => panic!("{other:?}"),
    }
}

/// The sanitiser as it was (one scan of the sample's labels per grouping label), kept as
/// the oracle of the linear one.
fn sanitize_quadratic(family: &mut MetricFamily, key: &GroupingKey) {
    for m in &mut family.metric {
        for (name, value) in key.pairs() {
            let mut found = false;
            for lp in m.label.iter_mut().filter(|lp| lp.name() == name) {
                lp.value = Some(value.clone());
                found = true;
            }
            if !found {
                m.label.push(LabelPair {
                    name: Some(name.clone()),
                    value: Some(value.clone()),
                });
            }
        }
        if !m.label.iter().any(|lp| lp.name() == "instance") {
            m.label.push(LabelPair {
                name: Some("instance".into()),
                value: Some(String::new()),
            });
        }
        m.label.sort_by(|a, b| a.name().cmp(b.name()));
    }
}

proptest::proptest! {
    #[test]
    fn linear_sanitize_matches_the_reference_order(
        key_pairs in proptest::collection::vec(("[a-e]{1,2}|instance|job", "[xy]{0,2}"), 0..6),
        samples in proptest::collection::vec(
            proptest::collection::vec(("[a-e]{1,2}|instance|job|zz", "[pq]{0,2}"), 0..6), 0..4),
    ) {
        let mut pairs = key_pairs;
        pairs.push(("job".into(), "j".into()));
        let k = GroupingKey::from_pairs(pairs);
        let fam = MetricFamily {
            name: Some("m".into()),
            metric: samples
                .iter()
                .map(|labels| Metric {
                    label: labels
                        .iter()
                        .map(|(n, v)| LabelPair { name: Some(n.clone()), value: Some(v.clone()) })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut fast = fam.clone();
        validate::sanitize(&mut fast, &k);
        let mut slow = fam;
        sanitize_quadratic(&mut slow, &k);
        proptest::prop_assert_eq!(fast, slow);
    }
}

/// The `Command` of format 1 before batches were flat: the encoding of logs written then.
#[derive(serde::Serialize)]
enum OldCommand {
    Push(Push),
    Delete {
        key: GroupingKey,
    },
    Wipe,
    #[allow(dead_code)]
    Replace {
        snapshot: Vec<u8>,
    },
    Batch(Vec<OldCommand>),
}

#[test]
fn batches_written_before_flat_batches_decode_unchanged() {
    let a = key(&[("job", "a")]);
    let p = Push::new(a.clone(), true, T1, true, &[gauge("g", 1.0)]);
    let old = OldCommand::Batch(vec![
        OldCommand::Push(p.clone()),
        OldCommand::Delete { key: a.clone() },
        OldCommand::Wipe,
    ]);
    let bytes = postcard::to_extend(&old, vec![crate::command::COMMAND_FORMAT]).unwrap();
    assert_eq!(
        Command::decode(&bytes).unwrap(),
        Command::Batch(vec![
            crate::command::BatchItem::Push(p.clone()),
            crate::command::BatchItem::Delete { key: a },
            crate::command::BatchItem::Wipe,
        ])
    );
    // And a single command encodes exactly as before.
    let single = postcard::to_extend(&OldCommand::Push(p.clone()), vec![1]).unwrap();
    assert_eq!(Command::Push(p).encode(), single);
}

#[test]
fn a_deeply_nested_batch_is_refused_without_recursion() {
    // Format 1, then `Batch` of one `Batch` of one ..., 8,000 deep (16 kB), as a forged
    // forwarded write would carry it. The flat type reads the inner tag as a batch item and
    // fails on what follows; nothing recurses.
    let mut bytes = vec![crate::command::COMMAND_FORMAT];
    for _ in 0..8000 {
        bytes.extend_from_slice(&[4, 1]);
    }
    bytes.push(2);
    // Run on a small stack, so a recursive decoder would overflow here.
    let outcome = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let decoded = Command::decode(&bytes);
            if let Ok(cmd) = &decoded {
                let mut s = GroupStore::new();
                s.apply(cmd);
            }
            decoded.is_err()
        })
        .unwrap()
        .join();
    assert!(
        outcome.is_ok(),
        "decoding a nested batch overflowed the stack"
    );
}
