//! Builders for entries, commands and metric families.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use pgw_core::pb::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use pgw_core::{Command, GroupingKey, Push};
use pgw_store::{Node, TypeConfig};

pub fn lid(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Blank,
    }
}

pub fn normal(term: u64, index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

pub fn membership(term: u64, index: u64, ids: &[u64]) -> Entry<TypeConfig> {
    let voters: BTreeSet<u64> = ids.iter().copied().collect();
    let nodes: BTreeMap<u64, Node> = ids
        .iter()
        .map(|&id| {
            (
                id,
                Node {
                    raft_addr: format!("127.0.0.1:{}", 9095 + id),
                    http_addr: format!("127.0.0.1:{}", 9091 + id),
                },
            )
        })
        .collect();
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

pub fn key(pairs: &[(&str, &str)]) -> GroupingKey {
    GroupingKey::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

/// A gauge family with one series per `(label value, sample value)`.
pub fn gauge(name: &str, series: &[(&str, f64)]) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: Some(format!("help of {name}")),
        r#type: Some(MetricType::Gauge as i32),
        metric: series
            .iter()
            .map(|(l, v)| Metric {
                label: vec![LabelPair {
                    name: Some("l".into()),
                    value: Some((*l).into()),
                }],
                gauge: Some(Gauge { value: Some(*v) }),
                ..Default::default()
            })
            .collect(),
        unit: None,
    }
}

/// A gauge family of about `bytes` encoded bytes (series with long label values).
pub fn big_gauge(name: &str, bytes: usize) -> MetricFamily {
    let label = "x".repeat(200);
    let n = bytes / 220 + 1;
    let values: Vec<String> = (0..n).map(|i| format!("{label}{i:08}")).collect();
    let series: Vec<(&str, f64)> = values.iter().map(|v| (v.as_str(), 1.0)).collect();
    gauge(name, &series)
}

pub fn push(k: &GroupingKey, replace: bool, time_ns: i64, fams: &[MetricFamily]) -> Command {
    Command::Push(Push::new(k.clone(), replace, time_ns, true, fams))
}

/// `encode_snapshot` of the store, as a comparable value.
pub fn content(store: &pgw_store::SharedStore) -> Vec<u8> {
    store.read().unwrap().encode_snapshot()
}

/// Reopens a storage directory whose previous stores were just dropped. sled's flusher
/// thread may hold the directory lock for a moment after the last handle is dropped (longer
/// with large values and a loaded machine), so [`pgw_store::StoreError::InUse`] is retried for
/// up to 10 s.
pub fn reopen(dir: &std::path::Path) -> (pgw_store::LogStore, pgw_store::StateMachineStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match pgw_store::open(dir) {
            Ok(opened) => return opened,
            Err(pgw_store::StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}
