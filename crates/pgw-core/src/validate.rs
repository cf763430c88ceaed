//! Per-push validation and label sanitising (spec §5.2, §6 items 2, 5, 6), and the fixed
//! list of node-local self-metric names that pushes must agree with.

use crate::pb::MetricType;

/// A family name the node itself exposes. Its metrics are node-local (not replicated), so
/// the consistency check compares pushes against this fixed table, never against live
/// values: every replica reaches the same decision.
#[derive(Clone, Copy, Debug)]
pub struct ReservedFamily {
    /// Family name.
    pub name: &'static str,
    /// Its type.
    pub r#type: MetricType,
    /// Its HELP.
    pub help: &'static str,
    /// Whether the family has series from start-up. The reference replaces the HELP of a
    /// pushed family of such a name silently; for the others (vectors without children at
    /// start-up) a different HELP is an error (spec §6 items 7, 8).
    pub present_at_start: bool,
}

/// The self-metrics of a pgw node, by name.
pub const RESERVED: &[ReservedFamily] = &[
    ReservedFamily {
        name: "pgw_cluster_forwarded_writes_total",
        r#type: MetricType::Counter,
        help: "Writes (pushes, deletes, wipes) this node forwarded to the Raft leader.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_cluster_pending_writes",
        r#type: MetricType::Gauge,
        help: "Writes this node has proposed or forwarded and not answered yet.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_cluster_refused_admin_requests_total",
        r#type: MetricType::Counter,
        help: "Admin requests (membership changes, restores) this node refused by its safety rules.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_cluster_refused_forwarded_writes_total",
        r#type: MetricType::Counter,
        help: "Forwarded writes this node refused before proposing them, by reason.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_cluster_refused_requests_total",
        r#type: MetricType::Counter,
        help: "Connections and requests the cluster gRPC port refused, by reason (TLS handshake or role).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_cluster_tls_last_reload_successful",
        r#type: MetricType::Gauge,
        help: "Whether the last re-read of the cluster TLS files succeeded (1) or kept the previous ones (0).",
        present_at_start: false,
    },
    ReservedFamily {
        name: "pgw_config_last_reload_success_timestamp_seconds",
        r#type: MetricType::Gauge,
        help: "When the reloadable configuration was last loaded successfully (start or SIGHUP).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_config_last_reload_successful",
        r#type: MetricType::Gauge,
        help: "1 if the last configuration reload (SIGHUP) succeeded, else 0.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_accept_errors_total",
        r#type: MetricType::Counter,
        help: "Failed accepts of HTTP connections (retried with backoff).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_body_timeouts_total",
        r#type: MetricType::Counter,
        help: "Requests answered 408 because their body did not arrive within --web.read-body-timeout.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_connections_open",
        r#type: MetricType::Gauge,
        help: "HTTP connections being served.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_connections_rejected_total",
        r#type: MetricType::Counter,
        help: "HTTP connections closed at once because --web.max-connections were open.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_connections_timed_out_total",
        r#type: MetricType::Counter,
        help: "HTTP connections closed by the header or idle timeout.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_forbidden_total",
        r#type: MetricType::Counter,
        help: "Requests answered 403 by a pgw_authorization scope.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_tls_handshake_failures_total",
        r#type: MetricType::Counter,
        help: "Failed or timed-out TLS handshakes on the HTTP port.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_unauthorized_total",
        r#type: MetricType::Counter,
        help: "Requests answered 401 (missing or wrong basic-auth credentials).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_http_writes_throttled_total",
        r#type: MetricType::Counter,
        help: "Writes answered 429 because --push.max-pending-writes writes were waiting.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_push_rejected_total",
        r#type: MetricType::Counter,
        help: "Pushes this node answered with a refusal by a --push.max-* limit, by reason.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_applied_index",
        r#type: MetricType::Gauge,
        help: "Highest Raft log index applied to this node's store.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_commit_index",
        r#type: MetricType::Gauge,
        help: "Highest Raft log index this node knows to be committed.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_is_leader",
        r#type: MetricType::Gauge,
        help: "1 if this node is the Raft leader, else 0.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_last_log_index",
        r#type: MetricType::Gauge,
        help: "Index of the last entry in this node's Raft log.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_leader_changes_total",
        r#type: MetricType::Counter,
        help: "Times this node saw the Raft leader change (including to none).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_leader_id",
        r#type: MetricType::Gauge,
        help: "Id of the Raft leader this node knows, 0 if none.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_quorum_contact_age_seconds",
        r#type: MetricType::Gauge,
        help: "On the Raft leader: seconds since a quorum last acknowledged its leadership.",
        present_at_start: false,
    },
    ReservedFamily {
        name: "pgw_raft_quorum_lost",
        r#type: MetricType::Gauge,
        help: "1 if this node leads but no quorum acknowledged it within the quorum timeout \
               (it cannot commit writes and is not ready), else 0.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_replication_lag_entries",
        r#type: MetricType::Gauge,
        help: "Entries a member is behind the leader's last log index (reported by the leader only).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_snapshot_index",
        r#type: MetricType::Gauge,
        help: "Last Raft log index included in this node's latest snapshot.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_snapshot_size_bytes",
        r#type: MetricType::Gauge,
        help: "Size of this node's latest snapshot file.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_snapshots_total",
        r#type: MetricType::Counter,
        help: "Snapshots this node built or installed since it started.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_raft_term",
        r#type: MetricType::Gauge,
        help: "Current Raft term of this node.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_storage_snapshot_write_failures_total",
        r#type: MetricType::Counter,
        help: "Failed attempts to write a snapshot file; each is retried with backoff.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pgw_web_config_last_reload_successful",
        r#type: MetricType::Gauge,
        help: "1 if the last load of --web.config.file succeeded, else 0 (the previous configuration stays in force).",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_cpu_seconds_total",
        r#type: MetricType::Counter,
        help: "Total user and system CPU time spent in seconds.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_max_fds",
        r#type: MetricType::Gauge,
        help: "Maximum number of open file descriptors.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_open_fds",
        r#type: MetricType::Gauge,
        help: "Number of open file descriptors.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_resident_memory_bytes",
        r#type: MetricType::Gauge,
        help: "Resident memory size in bytes.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_start_time_seconds",
        r#type: MetricType::Gauge,
        help: "Start time of the process since unix epoch in seconds.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_virtual_memory_bytes",
        r#type: MetricType::Gauge,
        help: "Virtual memory size in bytes.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "process_virtual_memory_max_bytes",
        r#type: MetricType::Gauge,
        help: "Maximum amount of virtual memory available in bytes.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pushgateway_build_info",
        r#type: MetricType::Gauge,
        help: "A metric with a constant '1' value labeled by version, revision, branch, goversion from which pushgateway was built, and the goos and goarch for the build.",
        present_at_start: true,
    },
    ReservedFamily {
        name: "pushgateway_http_push_duration_seconds",
        r#type: MetricType::Summary,
        help: "HTTP request duration for pushes to the Pushgateway.",
        present_at_start: false,
    },
    ReservedFamily {
        name: "pushgateway_http_push_size_bytes",
        r#type: MetricType::Summary,
        help: "HTTP request size for pushes to the Pushgateway.",
        present_at_start: false,
    },
    ReservedFamily {
        name: "pushgateway_http_requests_total",
        r#type: MetricType::Counter,
        help: "Total HTTP requests processed by the Pushgateway, excluding scrapes.",
        present_at_start: false,
    },
];

/// Looks a name up in [`RESERVED`] (sorted by name; a unit test checks that).
pub fn reserved(name: &str) -> Option<&'static ReservedFamily> {
    RESERVED
        .binary_search_by(|r| r.name.cmp(name))
        .ok()
        .map(|i| &RESERVED[i])
}

use crate::key::GroupingKey;
use crate::pb::{LabelPair, Metric, MetricFamily};

/// Whether `name` is a legal metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` is a legal label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The reference's name for a metric type (`COUNTER`, `GAUGE`, ...).
pub fn type_name(t: MetricType) -> &'static str {
    t.as_str_name()
}

/// Sets every grouping label of every sample to the key's value (adding it when absent),
/// adds `instance=""` when the sample has no `instance`, and sorts label pairs by name
/// (stable, so duplicates stay adjacent for the check), as the reference's
/// `sanitizeLabels` does.
pub fn sanitize(family: &mut MetricFamily, key: &GroupingKey) {
    Sanitizer::new(key).sanitize(family);
}

/// [`sanitize`] for many families of one push, reusing its scratch space.
///
/// Cost: per sample O(P log P + K) for P pushed labels and K grouping labels (a binary search
/// in the sorted key per pushed label, then one merge of two sorted lists), so a push costs
/// time linear in its samples × grouping labels, the size of what it stores. (It used to
/// scan the sample's labels once per grouping label: O(K² × samples), 21 s for 2,000
/// grouping labels × 4,000 samples.)
pub struct Sanitizer<'k> {
    key: &'k GroupingKey,
    /// Per grouping label: did the sample have it?
    seen: Vec<bool>,
    /// The grouping labels a sample lacks (and `instance=""` when it lacks one), sorted.
    added: Vec<LabelPair>,
}

impl<'k> Sanitizer<'k> {
    /// A sanitiser for pushes to `key`.
    pub fn new(key: &'k GroupingKey) -> Self {
        Sanitizer {
            key,
            seen: Vec::with_capacity(key.pairs().len()),
            added: Vec::new(),
        }
    }

    /// Sanitises every sample of `family` (see [`sanitize`]).
    pub fn sanitize(&mut self, family: &mut MetricFamily) {
        let key: &'k GroupingKey = self.key;
        let pairs = key.pairs();
        for m in &mut family.metric {
            self.seen.clear();
            self.seen.resize(pairs.len(), false);
            let mut has_instance = false;
            for lp in m.label.iter_mut() {
                let name = lp.name();
                if name == "instance" {
                    has_instance = true;
                }
                if let Ok(i) = pairs.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
                    lp.value = Some(pairs[i].1.clone());
                    self.seen[i] = true;
                }
            }
            self.added.clear();
            for ((name, value), _) in pairs.iter().zip(&self.seen).filter(|(_, s)| !**s) {
                if name == "instance" {
                    has_instance = true;
                }
                self.added.push(LabelPair {
                    name: Some(name.clone()),
                    value: Some(value.clone()),
                });
            }
            if !has_instance {
                let at = self.added.partition_point(|lp| lp.name() < "instance");
                self.added.insert(
                    at,
                    LabelPair {
                        name: Some("instance".into()),
                        value: Some(String::new()),
                    },
                );
            }
            // The pushed labels, stably sorted (few), merged with the added ones (sorted,
            // and never equal in name to a pushed one): the same order as a stable sort of
            // pushed ++ added, pushed first on ties.
            let mut pushed = std::mem::take(&mut m.label);
            pushed.sort_by(|a, b| a.name().cmp(b.name()));
            let mut out = Vec::with_capacity(pushed.len() + self.added.len());
            let mut added = self.added.drain(..).peekable();
            for lp in pushed {
                while let Some(a) = added.next_if(|a| a.name() < lp.name()) {
                    out.push(a);
                }
                out.push(lp);
            }
            out.extend(added);
            m.label = out;
        }
    }
}

/// Formats a sample for error messages: `{a="1",b="2"}`.
pub fn fmt_labels(labels: &[LabelPair]) -> String {
    let mut out = String::from("{");
    for (i, lp) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(lp.name());
        out.push('=');
        out.push_str(&format!("{:?}", lp.value()));
    }
    out.push('}');
    out
}

/// FNV-1a 64 of a sanitised label set, the identity of a series within a family (the
/// reference hashes the same way, with the same 0xFF separators). Deterministic on every
/// replica.
pub fn series_hash(labels: &[LabelPair]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for lp in labels {
        add(lp.name().as_bytes());
        add(&[0xff]);
        add(lp.value().as_bytes());
        add(&[0xff]);
    }
    h
}

/// The family's type, or an error for values the text format cannot express.
pub fn known_type(family: &MetricFamily) -> Result<MetricType, String> {
    match family.r#type {
        None => Ok(MetricType::Counter),
        Some(t) => match MetricType::try_from(t) {
            Ok(MetricType::GaugeHistogram) | Err(_) => Err(format!(
                "metric family {:?} has an unsupported type {}",
                family.name(),
                t
            )),
            Ok(t) => Ok(t),
        },
    }
}

fn has_value_of(m: &Metric, t: MetricType) -> bool {
    match t {
        MetricType::Counter => m.counter.is_some(),
        MetricType::Gauge => m.gauge.is_some(),
        MetricType::Summary => m.summary.is_some(),
        MetricType::Untyped => m.untyped.is_some(),
        MetricType::Histogram => m.histogram.is_some(),
        MetricType::GaugeHistogram => false,
    }
}

/// Checks one sanitised family on its own, as the reference's gather does for every sample
/// (spec §6 items 2, 5, 6) plus the metric-name check the reference skips for protobuf
/// (quirk Q6): a legal name, a known type, each sample's value matching the type, legal and
/// unique label names, no explicit `quantile` (summaries) or `le` (histograms) label, and no
/// duplicate series within the family.
pub fn check_family(family: &MetricFamily) -> Result<MetricType, String> {
    let name = family.name();
    if !is_metric_name(name) {
        return Err(format!("metric name {name:?} is not valid"));
    }
    let t = known_type(family)?;
    let mut seen = std::collections::HashSet::with_capacity(family.metric.len());
    for m in &family.metric {
        if !has_value_of(m, t) {
            return Err(format!(
                "collected metric {name:?} {} is not a {}",
                fmt_labels(&m.label),
                type_name(t)
            ));
        }
        let mut previous: Option<&str> = None;
        for lp in &m.label {
            let ln = lp.name();
            if previous == Some(ln) {
                return Err(format!(
                    "collected metric {name:?} {} has two or more labels with the same name: {ln}",
                    fmt_labels(&m.label)
                ));
            }
            if !is_label_name(ln) || ln.starts_with("__") {
                return Err(format!(
                    "collected metric {name:?} {} has a label with an invalid name: {ln}",
                    fmt_labels(&m.label)
                ));
            }
            if (t == MetricType::Summary && ln == "quantile")
                || (t == MetricType::Histogram && ln == "le")
            {
                return Err(format!(
                    "collected metric {name:?} {} must not have an explicit {ln:?} label",
                    fmt_labels(&m.label)
                ));
            }
            previous = Some(ln);
        }
        if !seen.insert(series_hash(&m.label)) {
            return Err(duplicate_message(name, &m.label));
        }
    }
    Ok(t)
}

/// The reference's message for a duplicate series.
pub fn duplicate_message(name: &str, labels: &[LabelPair]) -> String {
    format!(
        "collected metric {name:?} {} was collected before with the same name and label values",
        fmt_labels(labels)
    )
}

/// Checks a pushed family against the node's own metric of the same name, if any (spec §6
/// items 1, 7, 8): the type must match; for an own family that has no series at start-up the
/// HELP must match too. (For the others the reference replaces the HELP when it renders the
/// merged family; pgw's renderer does the same, so the stored family keeps what was pushed.)
pub fn check_reserved(family: &MetricFamily, t: MetricType) -> Result<(), String> {
    let Some(r) = reserved(family.name()) else {
        return Ok(());
    };
    if t != r.r#type {
        return Err(format!(
            "gathered metric family {} has type {} but should have {}",
            r.name,
            type_name(t),
            type_name(r.r#type)
        ));
    }
    if !r.present_at_start && family.help() != r.help {
        return Err(format!(
            "gathered metric family {} has help {:?} but should have {:?}",
            r.name,
            family.help(),
            r.help
        ));
    }
    Ok(())
}

/// The family names a histogram or summary named `name` collides with, and the reverse
/// (spec §6 item 4): `Some((base, suffix))` when `name` ends in `_count`, `_sum` or `_bucket`.
pub fn split_suffix(name: &str) -> Option<(&str, &'static str)> {
    for suffix in ["_count", "_sum", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return Some((base, suffix));
        }
    }
    None
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn reserved_table_is_sorted_and_unique() {
        for w in RESERVED.windows(2) {
            assert!(
                w[0].name < w[1].name,
                "{} must sort before {}",
                w[0].name,
                w[1].name
            );
        }
        for r in RESERVED {
            assert_eq!(reserved(r.name).map(|x| x.name), Some(r.name));
            assert!(is_metric_name(r.name));
        }
        assert!(reserved("pushgateway_nope").is_none());
    }
}
