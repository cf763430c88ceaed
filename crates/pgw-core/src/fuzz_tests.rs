//! Fuzz targets on stable Rust: proptest-driven, run as ordinary tests for a bounded number
//! of cases (`PROPTEST_CASES` raises it for a longer run). Each feeds arbitrary bytes and
//! mutations of valid inputs to a decoder that takes untrusted input, then whatever decodes
//! to the code that consumes it: the command decoder then the admission check and `apply`,
//! the text parser, the delimited-protobuf decoder, and the snapshot decoder. The property is
//! that none of them panics or overflows the stack. Failing cases proptest finds are kept
//! in `proptest-regressions/fuzz_tests.txt` and replayed first on every run.

use proptest::prelude::*;

use crate::command::{BatchItem, Command, LimitedPush, Payload, Push};
use crate::key::GroupingKey;
use crate::pb::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use crate::policy::{Policy, check_command};
use crate::store::GroupStore;

fn family(name: &str, labels: &[(&str, &str)], v: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: Some("h".into()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            label: labels
                .iter()
                .map(|(n, v)| LabelPair {
                    name: Some((*n).into()),
                    value: Some((*v).into()),
                })
                .collect(),
            gauge: Some(Gauge { value: Some(v) }),
            ..Default::default()
        }],
        unit: None,
    }
}

fn key(job: &str) -> GroupingKey {
    GroupingKey::from_pairs([("job", job), ("instance", "i")])
}

/// A store with a group, so that `apply` has something to check against and replace.
fn seeded() -> GroupStore {
    let mut s = GroupStore::new();
    s.apply(&Command::Push(Push::new(
        key("seed"),
        true,
        1,
        true,
        &[family("g", &[("a", "1")], 1.0)],
    )));
    s
}

/// Valid encodings of every kind of command.
fn valid_commands() -> Vec<Vec<u8>> {
    let push = Push::new(
        key("j"),
        false,
        5,
        true,
        &[family("g", &[("a", "2")], 2.0), family("h_total", &[], 3.0)],
    );
    let snapshot = seeded().encode_snapshot();
    vec![
        Command::Push(push.clone()).encode(),
        Command::Delete { key: key("seed") }.encode(),
        Command::Wipe.encode(),
        Command::Replace {
            snapshot: snapshot.clone(),
        }
        .encode(),
        Command::LimitedPush(LimitedPush {
            push: push.clone(),
            max_groups: 1,
        })
        .encode(),
        Command::Batch(vec![
            BatchItem::Push(push.clone()),
            BatchItem::Delete { key: key("j") },
            BatchItem::Replace { snapshot },
            BatchItem::Push(Push {
                payload: Payload::Invalid("bad".into()),
                ..push
            }),
        ])
        .encode(),
    ]
}

/// A mutation of `base`: overwrite, insert, remove bytes, or truncate.
#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Set(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % n] = b;
                }
            }
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Remove(i) => {
                if !bytes.is_empty() {
                    bytes.remove(i % n);
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % n),
        }
    }
    bytes
}

/// Decodes `bytes` as a command and, if it decodes, admits it under a permissive and a
/// strict policy and applies it to a seeded store (whatever the admission says: `apply`
/// must be total on anything that decodes, as a replica applies what its leader logged).
fn command_target(bytes: &[u8]) {
    if let Ok(cmd) = Command::decode(bytes) {
        let strict = Policy::default();
        let open = Policy {
            admin_api: true,
            check_consistency: false,
            ..strict
        };
        let _ = check_command(&cmd, &strict);
        let _ = check_command(&cmd, &open);
        let mut s = seeded();
        let _ = s.apply(&cmd);
        let _ = s.inconsistencies();
        let mut out = Vec::new();
        crate::render::text(&s, &[], &mut out);
    }
}

const VALID_TEXT: &[&str] = &[
    "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"1\",b=\"x\\\"y\"} 1.5\ng{a=\"2\"} -Inf\n",
    "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
    "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n",
    "u 1 1700000000000\nu{x=\"\"} NaN\n",
];

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        // Bounded for CI; `PROPTEST_CASES=100000` runs longer.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn command_decoder_on_arbitrary_bytes(
        version in prop_oneof![Just(1u8), any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![version];
        bytes.extend(body);
        command_target(&bytes);
    }

    #[test]
    fn command_decoder_on_mutated_commands(
        which in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let valid = valid_commands();
        let base = valid[which.index(valid.len())].clone();
        command_target(&mutate(base, &mutations));
    }

    #[test]
    fn text_parser_on_arbitrary_and_mutated_bodies(
        which in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 0..8),
        arbitrary in proptest::collection::vec(any::<u8>(), 0..256),
        use_arbitrary in any::<bool>(),
    ) {
        let body = if use_arbitrary {
            arbitrary
        } else {
            mutate(VALID_TEXT[which.index(VALID_TEXT.len())].as_bytes().to_vec(), &mutations)
        };
        if let Ok(families) = crate::text::parse(&body) {
            // What parses is pushed: the same path as an HTTP push.
            let push = Push::new(key("t"), true, 1, true, &families);
            let _ = crate::policy::check_push(&push, &families, &Policy::default());
            let mut s = seeded();
            s.apply(&Command::Push(push));
        }
    }

    #[test]
    fn delimited_decoder_on_arbitrary_and_mutated_bodies(
        mutations in proptest::collection::vec(mutation(), 0..8),
        arbitrary in proptest::collection::vec(any::<u8>(), 0..256),
        use_arbitrary in any::<bool>(),
    ) {
        let body = if use_arbitrary {
            arbitrary
        } else {
            let valid = crate::delimited::encode(&[
                family("g", &[("a", "1")], 1.0),
                family("h", &[("b", "2"), ("c", "3")], 2.0),
            ]);
            mutate(valid, &mutations)
        };
        if let Ok(families) = crate::delimited::decode(&body) {
            let push = Push::new(key("p"), false, 1, true, &families);
            let mut s = seeded();
            s.apply(&Command::Push(push));
        }
    }

    #[test]
    fn snapshot_decoder_on_mutated_snapshots(
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let bytes = mutate(seeded().encode_snapshot(), &mutations);
        if let Ok(s) = GroupStore::decode_snapshot(&bytes) {
            let mut out = Vec::new();
            crate::render::text(&s, &[], &mut out);
        }
    }
}
