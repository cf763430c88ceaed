//! The workload's wire format (URL and body of each write) and the parser that turns a
//! node's `/metrics` body into a [`ReplicaView`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Op, OpKind};

/// How the workload names groups and families on the wire.
///
/// A group `G` of job `J` lives at `/metrics/job/J/g/G` (grouping key `{job="J", g="G"}`).
/// A write of value `v` pushes, for every family `f` it names, `series_per_family` gauge
/// series `f{s="0"} v`, `f{s="1"} v`, … so a family that is only partly written, or mixes
/// two writes, is visible as such.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The `job` label of every group of this workload; other jobs in `/metrics` are
    /// ignored.
    pub job: String,
    /// Series per pushed family.
    pub series_per_family: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            job: "chaos".into(),
            series_per_family: 2,
        }
    }
}

/// What one node serves for one group of the workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    /// Family name → the distinct sample values of its series (one value unless torn).
    pub families: BTreeMap<String, BTreeSet<u64>>,
    /// Family name → number of series.
    pub series: BTreeMap<String, usize>,
    /// `push_time_seconds` of the group.
    pub push_time: Option<f64>,
    /// `push_failure_time_seconds` of the group.
    pub push_failure_time: Option<f64>,
}

impl GroupView {
    /// The value of `family`, if it is present with exactly one value.
    pub fn value(&self, family: &str) -> Option<u64> {
        match self.families.get(family) {
            Some(vs) if vs.len() == 1 => vs.iter().next().copied(),
            _ => None,
        }
    }
}

/// What one node serves: the raw pushed part of its telemetry path (for byte identity) and
/// the workload's groups parsed from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The node's name, for reports.
    pub node: String,
    /// The raw body (the telemetry path with node-local self-metrics moved elsewhere).
    pub body: Vec<u8>,
    /// The workload's groups: group name → view. A group is present iff its
    /// `push_time_seconds` series is.
    pub groups: BTreeMap<String, GroupView>,
    /// Lines of the workload's job that do not parse or do not fit the workload (reported
    /// as violations).
    pub anomalies: Vec<String>,
    /// Panics (or other fatal log lines) the node logged during the run, that the scenario
    /// did not cause on purpose.
    pub panics: Vec<String>,
}

impl Workload {
    /// A workload for `job` with `series_per_family` series a family.
    pub fn new(job: &str, series_per_family: usize) -> Workload {
        Workload {
            job: job.to_string(),
            series_per_family: series_per_family.max(1),
        }
    }

    /// The URL path of `group` (group names must be `[A-Za-z0-9_-]+`).
    pub fn path(&self, group: &str) -> String {
        format!("/metrics/job/{}/g/{group}", self.job)
    }

    /// The request body of `op` (empty for DELETE).
    pub fn body(&self, op: &Op) -> Vec<u8> {
        self.body_of(op.kind, &op.families, op.value)
    }

    /// The request body of a write of `value` to `families`.
    pub fn body_of(&self, kind: OpKind, families: &[String], value: u64) -> Vec<u8> {
        if kind == OpKind::Delete {
            return Vec::new();
        }
        let mut s = String::new();
        for f in families {
            s.push_str(&format!("# TYPE {f} gauge\n"));
            for i in 0..self.series_per_family {
                s.push_str(&format!("{f}{{s=\"{i}\"}} {value}\n"));
            }
        }
        s.into_bytes()
    }

    /// Parses a text-format `/metrics` body into a [`ReplicaView`] (panics empty; fill them
    /// in from the node's log).
    pub fn parse(&self, node: &str, body: &[u8]) -> ReplicaView {
        let mut view = ReplicaView {
            node: node.to_string(),
            body: body.to_vec(),
            ..ReplicaView::default()
        };
        let text = String::from_utf8_lossy(body);
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(sample) = parse_sample(line) else {
                view.anomalies.push(format!("unparsable line {line:?}"));
                continue;
            };
            if sample.labels.get("job").map(String::as_str) != Some(self.job.as_str()) {
                continue;
            }
            let Some(group) = sample.labels.get("g").cloned() else {
                view.anomalies.push(format!(
                    "series of job {} without g label: {line}",
                    self.job
                ));
                continue;
            };
            let g = view.groups.entry(group).or_default();
            match sample.name.as_str() {
                "push_time_seconds" => g.push_time = Some(sample.value),
                "push_failure_time_seconds" => g.push_failure_time = Some(sample.value),
                name => {
                    let v = sample.value;
                    if !(v >= 0.0 && v.fract() == 0.0 && v < 9.0e15) {
                        view.anomalies
                            .push(format!("value {v} is not a workload value: {line}"));
                        continue;
                    }
                    g.families
                        .entry(name.to_string())
                        .or_default()
                        .insert(v as u64);
                    *g.series.entry(name.to_string()).or_default() += 1;
                }
            }
        }
        // A family whose series do not all carry one value, or that has the wrong number of
        // series, was written partly.
        for (name, g) in &view.groups {
            for (f, vs) in &g.families {
                let n = g.series.get(f).copied().unwrap_or(0);
                if vs.len() != 1 || n != self.series_per_family {
                    view.anomalies.push(format!(
                        "group {name} family {f}: {n} series with values {vs:?} (a write is \
                         all or nothing: expected {} series of one value)",
                        self.series_per_family
                    ));
                }
            }
            if g.push_time.is_none() {
                view.anomalies
                    .push(format!("group {name} has series but no push_time_seconds"));
            }
        }
        view
    }
}

/// One sample line.
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `name{l="v",...} value [timestamp]` (label values may contain escapes).
pub(crate) fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut consumed = None;
        loop {
            // label name
            let mut key = String::new();
            while let Some(&(i, c)) = chars.peek() {
                if c == '}' && key.is_empty() {
                    consumed = Some(i + 1);
                    break;
                }
                if c == '=' {
                    break;
                }
                if c != ',' && c != ' ' {
                    key.push(c);
                }
                chars.next();
            }
            if consumed.is_some() {
                break;
            }
            chars.next(); // '='
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut val = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        other => val.push(other),
                    },
                    '"' => break,
                    c => val.push(c),
                }
            }
            labels.insert(key, val);
            // ',' or '}'
            match chars.peek() {
                Some(&(_, ',')) => {
                    chars.next();
                }
                Some(&(i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        rest = &r[consumed?..];
    }
    let value_str = rest.split_whitespace().next()?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_workload_out_of_a_body() {
        let w = Workload::new("chaos", 2);
        let body = "\
# TYPE chaos_a gauge
chaos_a{g=\"g1\",instance=\"\",job=\"chaos\",s=\"0\"} 1.234567e+06
chaos_a{g=\"g1\",instance=\"\",job=\"chaos\",s=\"1\"} 1.234567e+06
other{job=\"x\",l=\"a\\\"b\"} 3
push_failure_time_seconds{g=\"g1\",instance=\"\",job=\"chaos\"} 0
push_time_seconds{g=\"g1\",instance=\"\",job=\"chaos\"} 1.7e+09
";
        let v = w.parse("n1", body.as_bytes());
        assert!(v.anomalies.is_empty(), "{:?}", v.anomalies);
        let g = &v.groups["g1"];
        assert_eq!(g.value("chaos_a"), Some(1_234_567));
        assert_eq!(g.push_time, Some(1.7e9));
        assert_eq!(g.push_failure_time, Some(0.0));
        assert_eq!(v.groups.len(), 1);
    }

    #[test]
    fn a_torn_family_is_an_anomaly() {
        let w = Workload::new("chaos", 2);
        let body = "\
chaos_a{g=\"g1\",job=\"chaos\",s=\"0\"} 5
chaos_a{g=\"g1\",job=\"chaos\",s=\"1\"} 6
chaos_b{g=\"g1\",job=\"chaos\",s=\"0\"} 6
push_time_seconds{g=\"g1\",job=\"chaos\"} 1
";
        let v = w.parse("n1", body.as_bytes());
        assert_eq!(v.anomalies.len(), 2, "{:?}", v.anomalies);
    }

    #[test]
    fn bodies_round_trip_through_the_parser() {
        let w = Workload::new("chaos", 3);
        let body = w.body_of(OpKind::Put, &["chaos_a".into(), "chaos_b".into()], 42);
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("chaos_a{s=").count(), 3);
        assert_eq!(w.path("g7"), "/metrics/job/chaos/g/g7");
        assert!(w.body_of(OpKind::Delete, &[], 1).is_empty());
    }
}
