//! The node's own metrics, with the reference's names (spec §8.1): build info, HTTP request
//! counters, push duration and size summaries, and `process_*` from `/proc/self`.
//!
//! Names, types and HELP strings come from [`pgw_core::validate::RESERVED`], the table the
//! consistency check compares pushes against, so what the node exposes and what a push may
//! use cannot drift apart. A name missing from that table is not exposed.
//!
//! These metrics are node-local and never replicated. Like upstream's vector metrics, the
//! request counter and the summaries are absent until their first observation.
//!
//! Summaries: `_count` and `_sum` cover every observation since start; the 0.1/0.5/0.9
//! quantiles are exact (nearest rank) over a sliding window of the most recent observations,
//! at most [`WINDOW_MAX_AGE`] old and at most [`WINDOW_MAX_LEN`] of them (upstream keeps a
//! 10-minute window of approximate quantiles). An empty window yields `NaN`, as upstream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgw_core::pb::{self, MetricFamily};

/// Quantiles of the push summaries (upstream objectives 0.1, 0.5, 0.9).
pub const QUANTILES: [f64; 3] = [0.1, 0.5, 0.9];
/// Oldest observation a summary window keeps.
pub const WINDOW_MAX_AGE: Duration = Duration::from_secs(600);
/// Most observations a summary window keeps.
pub const WINDOW_MAX_LEN: usize = 1000;

/// Build information, as `pushgateway_build_info` and `/api/v1/status` show it.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    /// Crate version.
    pub version: String,
    /// VCS revision (`PGW_REVISION` at build time), or `unknown`.
    pub revision: String,
    /// VCS branch (`PGW_BRANCH` at build time), or `unknown`.
    pub branch: String,
    /// `PGW_BUILD_USER` at build time, or empty.
    pub build_user: String,
    /// `PGW_BUILD_DATE` at build time, or empty.
    pub build_date: String,
    /// The `goversion` label and `goVersion` field: pgw is not written in Go, so this is the
    /// version of the Rust compiler that built it (`rustc --version`), or `rust`.
    pub rust_version: String,
    /// `goos` in Go's spelling (`linux`, `darwin`, ...).
    pub os: String,
    /// `goarch` in Go's spelling (`amd64`, `arm64`, ...).
    pub arch: String,
}

impl BuildInfo {
    /// The information compiled into this binary.
    pub fn current() -> Self {
        let or = |v: Option<&str>, d: &str| v.filter(|s| !s.is_empty()).unwrap_or(d).to_string();
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: or(option_env!("PGW_REVISION"), "unknown"),
            branch: or(option_env!("PGW_BRANCH"), "unknown"),
            build_user: or(option_env!("PGW_BUILD_USER"), ""),
            build_date: or(option_env!("PGW_BUILD_DATE"), ""),
            rust_version: or(option_env!("PGW_RUSTC_VERSION"), "rust"),
            os: match std::env::consts::OS {
                "macos" => "darwin",
                other => other,
            }
            .to_string(),
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "x86" => "386",
                "powerpc64" => "ppc64",
                "loongarch64" => "loong64",
                other => other,
            }
            .to_string(),
        }
    }
}

/// What one instrumented request contributes.
#[derive(Clone, Debug)]
pub struct Observation {
    /// Upstream handler name (`push`, `delete`, `wipe`, `healthy`, ...).
    pub handler: &'static str,
    /// HTTP method, lower-cased as client_golang does.
    pub method: String,
    /// Response status.
    pub code: u16,
    /// For pushes: duration and approximate request size in bytes.
    pub push: Option<(Duration, f64)>,
}

#[derive(Debug, Default)]
struct Summary {
    count: u64,
    sum: f64,
    window: VecDeque<(Instant, f64)>,
}

impl Summary {
    fn observe(&mut self, now: Instant, v: f64) {
        self.count += 1;
        self.sum += v;
        self.window.push_back((now, v));
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        while self.window.len() > WINDOW_MAX_LEN {
            self.window.pop_front();
        }
        while let Some(&(t, _)) = self.window.front() {
            if now.duration_since(t) > WINDOW_MAX_AGE {
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    fn snapshot(&mut self, now: Instant) -> pb::Summary {
        self.trim(now);
        let mut values: Vec<f64> = self.window.iter().map(|&(_, v)| v).collect();
        values.sort_by(f64::total_cmp);
        let quantile = QUANTILES
            .iter()
            .map(|&q| pb::Quantile {
                quantile: Some(q),
                value: Some(nearest_rank(&values, q)),
            })
            .collect();
        pb::Summary {
            sample_count: Some(self.count),
            sample_sum: Some(self.sum),
            quantile,
            ..Default::default()
        }
    }
}

/// The `q`-quantile of sorted `values` by nearest rank; `NaN` when empty.
fn nearest_rank(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[derive(Debug, Default)]
struct Inner {
    /// `(code, handler, method)` → count.
    requests: BTreeMap<(String, &'static str, String), u64>,
    push_duration: BTreeMap<String, Summary>,
    push_size: BTreeMap<String, Summary>,
    /// Pushes refused by a `--push.max-*` limit, by reason label.
    rejected: BTreeMap<&'static str, u64>,
}

/// The node's self-metrics registry. Cheap to update from any request task.
#[derive(Debug)]
pub struct SelfMetrics {
    build: BuildInfo,
    inner: Mutex<Inner>,
}

impl SelfMetrics {
    /// An empty registry for this build.
    pub fn new(build: BuildInfo) -> Self {
        SelfMetrics {
            build,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The build information.
    pub fn build(&self) -> &BuildInfo {
        &self.build
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way
        // that matters; keep serving them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one instrumented request.
    pub fn observe(&self, o: Observation) {
        let now = Instant::now();
        let mut inner = self.lock();
        *inner
            .requests
            .entry((o.code.to_string(), o.handler, o.method.clone()))
            .or_default() += 1;
        if let Some((duration, size)) = o.push {
            inner
                .push_duration
                .entry(o.method.clone())
                .or_default()
                .observe(now, duration.as_secs_f64());
            inner
                .push_size
                .entry(o.method)
                .or_default()
                .observe(now, size);
        }
    }

    /// Counts a push refused by one of the optional limits (`pgw_push_rejected_total`).
    pub fn count_rejected(&self, reason: pgw_core::policy::Reason) {
        *self.lock().rejected.entry(reason.as_str()).or_default() += 1;
    }

    /// Every self-metric family, sorted by name, label pairs sorted by name. Families
    /// without series are left out.
    pub fn families(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        let mut out = Vec::new();
        out.extend(process_families());
        let b = &self.build;
        push_family(
            &mut out,
            "pushgateway_build_info",
            vec![metric(
                &[
                    ("branch", &b.branch),
                    ("goarch", &b.arch),
                    ("goos", &b.os),
                    ("goversion", &b.rust_version),
                    ("revision", &b.revision),
                    ("version", &b.version),
                ],
                Value::Gauge(1.0),
            )],
        );
        let mut inner = self.lock();
        let summaries = |m: &mut BTreeMap<String, Summary>| -> Vec<pb::Metric> {
            m.iter_mut()
                .map(|(method, s)| metric(&[("method", method)], Value::Summary(s.snapshot(now))))
                .collect()
        };
        let durations = summaries(&mut inner.push_duration);
        let sizes = summaries(&mut inner.push_size);
        let requests = inner
            .requests
            .iter()
            .map(|((code, handler, method), n)| {
                metric(
                    &[("code", code), ("handler", handler), ("method", method)],
                    Value::Counter(*n as f64),
                )
            })
            .collect();
        let rejected = pgw_core::policy::Reason::ALL
            .iter()
            .filter(|r| r.is_limit())
            .map(|r| {
                let n = inner.rejected.get(r.as_str()).copied().unwrap_or(0);
                metric(&[("reason", r.as_str())], Value::Counter(n as f64))
            })
            .collect();
        drop(inner);
        push_family(&mut out, "pgw_push_rejected_total", rejected);
        push_family(
            &mut out,
            "pushgateway_http_push_duration_seconds",
            durations,
        );
        push_family(&mut out, "pushgateway_http_push_size_bytes", sizes);
        push_family(&mut out, "pushgateway_http_requests_total", requests);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

enum Value {
    Counter(f64),
    Gauge(f64),
    Summary(pb::Summary),
}

fn metric(labels: &[(&str, &str)], value: Value) -> pb::Metric {
    let mut label: Vec<pb::LabelPair> = labels
        .iter()
        .map(|(n, v)| pb::LabelPair {
            name: Some((*n).to_string()),
            value: Some((*v).to_string()),
        })
        .collect();
    label.sort_by(|a, b| a.name.cmp(&b.name));
    let mut m = pb::Metric {
        label,
        ..Default::default()
    };
    match value {
        Value::Counter(v) => {
            m.counter = Some(pb::Counter {
                value: Some(v),
                ..Default::default()
            })
        }
        Value::Gauge(v) => m.gauge = Some(pb::Gauge { value: Some(v) }),
        Value::Summary(s) => m.summary = Some(Box::new(s)),
    }
    m
}

/// Appends family `name` with `metrics` if it has any and `name` is reserved; type and HELP
/// come from the reserved table.
fn push_family(out: &mut Vec<MetricFamily>, name: &str, metrics: Vec<pb::Metric>) {
    if metrics.is_empty() {
        return;
    }
    let Some(r) = pgw_core::validate::reserved(name) else {
        tracing::debug!(
            name,
            "self-metric not in pgw_core::validate::RESERVED; not exposed"
        );
        return;
    };
    out.push(MetricFamily {
        name: Some(r.name.to_string()),
        help: Some(r.help.to_string()),
        r#type: Some(r.r#type as i32),
        metric: metrics,
        ..Default::default()
    });
}

fn gauge(out: &mut Vec<MetricFamily>, name: &str, v: Option<f64>) {
    if let Some(v) = v {
        push_family(out, name, vec![metric(&[], Value::Gauge(v))]);
    }
}

/// `process_*` families from `/proc/self`, as client_golang's process collector reports
/// them (it assumes 100 clock ticks a second, as procfs does). Anything unreadable is left
/// out.
fn process_families() -> Vec<MetricFamily> {
    const TICKS: f64 = 100.0;
    let mut out = Vec::new();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the `(comm)` field, which may itself contain spaces and parentheses.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].split_whitespace().collect())
        })
        .unwrap_or_default();
    // `fields[0]` is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        push_family(
            &mut out,
            "process_cpu_seconds_total",
            vec![metric(&[], Value::Counter((utime + stime) / TICKS))],
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let limit = |name: &str| -> Option<f64> {
        let line = limits.as_deref()?.lines().find(|l| l.starts_with(name))?;
        let soft = line[name.len()..].split_whitespace().next()?;
        if soft == "unlimited" {
            Some(u64::MAX as f64)
        } else {
            soft.parse().ok()
        }
    };
    gauge(&mut out, "process_max_fds", limit("Max open files"));
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    gauge(&mut out, "process_open_fds", open);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: f64 = line["VmRSS:".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kb * 1024.0)
        });
    gauge(&mut out, "process_resident_memory_bytes", rss);
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start = match (btime, field(22)) {
        (Some(b), Some(ticks)) => Some(b + ticks / TICKS),
        _ => None,
    };
    gauge(&mut out, "process_start_time_seconds", start);
    gauge(&mut out, "process_virtual_memory_bytes", field(23));
    gauge(
        &mut out,
        "process_virtual_memory_max_bytes",
        limit("Max address space"),
    );
    out
}

/// The HTTP edge's self-metrics (`pgw_http_*`, `pgw_web_config_*`). Node-local.
pub fn edge_families(e: &crate::edge::EdgeStats, web_reload_ok: bool) -> Vec<MetricFamily> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = Vec::new();
    let counter = |out: &mut Vec<MetricFamily>, name: &str, v: &std::sync::atomic::AtomicU64| {
        push_family(
            out,
            name,
            vec![metric(&[], Value::Counter(v.load(Relaxed) as f64))],
        );
    };
    counter(&mut out, "pgw_http_accept_errors_total", &e.accept_errors);
    counter(&mut out, "pgw_http_body_timeouts_total", &e.body_timeouts);
    gauge(
        &mut out,
        "pgw_http_connections_open",
        Some(e.open.load(Relaxed).max(0) as f64),
    );
    counter(&mut out, "pgw_http_connections_rejected_total", &e.rejected);
    counter(
        &mut out,
        "pgw_http_connections_timed_out_total",
        &e.timed_out,
    );
    counter(&mut out, "pgw_http_forbidden_total", &e.forbidden);
    counter(
        &mut out,
        "pgw_http_tls_handshake_failures_total",
        &e.tls_failures,
    );
    counter(&mut out, "pgw_http_unauthorized_total", &e.unauthorized);
    counter(&mut out, "pgw_http_writes_throttled_total", &e.throttled);
    gauge(
        &mut out,
        "pgw_web_config_last_reload_successful",
        Some(if web_reload_ok { 1.0 } else { 0.0 }),
    );
    out
}

/// The node's Raft and cluster self-metrics (`pgw_raft_*`, `pgw_cluster_*`), from the live
/// node. Node-local: never replicated, different on every replica.
pub fn cluster_families(node: &pgw_raft::Node) -> Vec<MetricFamily> {
    use std::sync::atomic::Ordering::Relaxed;
    let st = node.status();
    let c = node.counters();
    let mut out = Vec::new();
    let counter = |out: &mut Vec<MetricFamily>, name: &str, v: u64| {
        push_family(out, name, vec![metric(&[], Value::Counter(v as f64))]);
    };
    counter(
        &mut out,
        "pgw_cluster_forwarded_writes_total",
        c.forwarded_writes.load(Relaxed),
    );
    gauge(
        &mut out,
        "pgw_cluster_pending_writes",
        Some(c.pending_writes.load(Relaxed).max(0) as f64),
    );
    counter(
        &mut out,
        "pgw_cluster_refused_admin_requests_total",
        c.refused_admin.load(Relaxed),
    );
    let refused = c
        .refused_forwards()
        .into_iter()
        .map(|(r, n)| metric(&[("reason", r.as_str())], Value::Counter(n as f64)))
        .collect();
    push_family(
        &mut out,
        "pgw_cluster_refused_forwarded_writes_total",
        refused,
    );
    let refused: Vec<pb::Metric> = node
        .refused_cluster_requests()
        .into_iter()
        .map(|(reason, n)| metric(&[("reason", reason)], Value::Counter(n as f64)))
        .collect();
    push_family(&mut out, "pgw_cluster_refused_requests_total", refused);
    gauge(
        &mut out,
        "pgw_cluster_tls_last_reload_successful",
        node.cluster_security()
            .map(|s| if s.last_reload_ok() { 1.0 } else { 0.0 }),
    );
    gauge(
        &mut out,
        "pgw_raft_applied_index",
        Some(st.applied_index as f64),
    );
    gauge(
        &mut out,
        "pgw_raft_commit_index",
        Some(st.commit_index as f64),
    );
    gauge(
        &mut out,
        "pgw_raft_is_leader",
        Some(if st.is_leader { 1.0 } else { 0.0 }),
    );
    gauge(
        &mut out,
        "pgw_raft_last_log_index",
        Some(st.last_log_index as f64),
    );
    counter(
        &mut out,
        "pgw_raft_leader_changes_total",
        c.leader_changes.load(Relaxed),
    );
    gauge(
        &mut out,
        "pgw_raft_leader_id",
        Some(st.leader.unwrap_or(0) as f64),
    );
    let lags: Vec<pb::Metric> = node
        .members()
        .into_iter()
        .filter_map(|m| m.lag.map(|lag| (m.id, lag)))
        .map(|(id, lag)| metric(&[("peer", &id.to_string())], Value::Gauge(lag as f64)))
        .collect();
    push_family(&mut out, "pgw_raft_replication_lag_entries", lags);
    let quorum = node.health().quorum();
    gauge(
        &mut out,
        "pgw_raft_quorum_contact_age_seconds",
        match quorum {
            pgw_raft::Quorum::NotLeader => None,
            pgw_raft::Quorum::Contact(age) | pgw_raft::Quorum::Lost(age) => Some(age.as_secs_f64()),
        },
    );
    gauge(
        &mut out,
        "pgw_raft_quorum_lost",
        Some(if matches!(quorum, pgw_raft::Quorum::Lost(_)) {
            1.0
        } else {
            0.0
        }),
    );
    gauge(
        &mut out,
        "pgw_raft_snapshot_index",
        Some(st.snapshot_index as f64),
    );
    gauge(
        &mut out,
        "pgw_raft_snapshot_size_bytes",
        node.snapshot_size().map(|s| s as f64),
    );
    counter(
        &mut out,
        "pgw_raft_snapshots_total",
        c.snapshots.load(Relaxed),
    );
    gauge(&mut out, "pgw_raft_term", Some(st.term as f64));
    if let Some(s) = node.storage_stats() {
        counter(
            &mut out,
            "pgw_storage_snapshot_write_failures_total",
            s.snapshot_write_failures.load(Relaxed),
        );
    }
    out
}

/// The outcome of the last configuration reload (SIGHUP), as Prometheus names it.
pub fn reload_families(reloads: &crate::reload::Reloads) -> Vec<MetricFamily> {
    let (ok, at) = reloads.last();
    let mut out = Vec::new();
    gauge(
        &mut out,
        "pgw_config_last_reload_success_timestamp_seconds",
        Some(at),
    );
    gauge(
        &mut out,
        "pgw_config_last_reload_successful",
        Some(if ok { 1.0 } else { 0.0 }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.1), 1.0);
        assert_eq!(nearest_rank(&v, 0.5), 5.0);
        assert_eq!(nearest_rank(&v, 0.9), 9.0);
        assert!(nearest_rank(&[], 0.5).is_nan());
        assert_eq!(nearest_rank(&[7.0], 0.1), 7.0);
    }

    #[test]
    fn window_is_bounded() {
        let mut s = Summary::default();
        let now = Instant::now();
        for i in 0..(WINDOW_MAX_LEN + 10) {
            s.observe(now, i as f64);
        }
        assert_eq!(s.window.len(), WINDOW_MAX_LEN);
        assert_eq!(s.count, (WINDOW_MAX_LEN + 10) as u64);
    }

    #[test]
    fn families_sorted_and_reserved() {
        let m = SelfMetrics::new(BuildInfo::current());
        m.observe(Observation {
            handler: "push",
            method: "put".into(),
            code: 200,
            push: Some((Duration::from_millis(3), 120.0)),
        });
        m.observe(Observation {
            handler: "healthy",
            method: "get".into(),
            code: 200,
            push: None,
        });
        let fams = m.families();
        let names: Vec<&str> = fams.iter().map(|f| f.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(names.contains(&"pushgateway_build_info"));
        assert!(names.contains(&"pushgateway_http_requests_total"));
        assert!(names.contains(&"pushgateway_http_push_duration_seconds"));
        for f in &fams {
            let r = pgw_core::validate::reserved(f.name()).expect("reserved");
            assert_eq!(f.help(), r.help);
            assert_eq!(f.r#type(), r.r#type);
            for m in &f.metric {
                let names: Vec<&str> = m.label.iter().map(|l| l.name()).collect();
                let mut s = names.clone();
                s.sort_unstable();
                assert_eq!(names, s);
            }
        }
        if cfg!(target_os = "linux") {
            assert!(names.contains(&"process_cpu_seconds_total"));
            assert!(names.contains(&"process_open_fds"));
            assert!(names.contains(&"process_start_time_seconds"));
        }
    }
}
