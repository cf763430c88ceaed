//! Building request bodies: delimited protobuf (via `pgw_core::pb`) and gzip.

use std::io::Write;

use pgw_core::pb::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary, Untyped,
};

/// `Content-Type` of a delimited-protobuf push.
pub const PB: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

pub fn labels(l: &[(&str, &str)]) -> Vec<LabelPair> {
    l.iter()
        .map(|(n, v)| LabelPair {
            name: Some(n.to_string()),
            value: Some(v.to_string()),
        })
        .collect()
}

pub fn family(name: &str, help: Option<&str>, ty: MetricType, metric: Vec<Metric>) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_string()),
        help: help.map(str::to_string),
        r#type: Some(ty as i32),
        metric,
        ..Default::default()
    }
}

pub fn gauge(l: &[(&str, &str)], v: f64) -> Metric {
    Metric {
        label: labels(l),
        gauge: Some(Gauge { value: Some(v) }),
        ..Default::default()
    }
}

pub fn counter(l: &[(&str, &str)], v: f64) -> Metric {
    Metric {
        label: labels(l),
        counter: Some(Counter {
            value: Some(v),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn untyped(l: &[(&str, &str)], v: f64) -> Metric {
    Metric {
        label: labels(l),
        untyped: Some(Untyped { value: Some(v) }),
        ..Default::default()
    }
}

pub fn summary(l: &[(&str, &str)], count: u64, sum: f64, q: &[(f64, f64)]) -> Metric {
    Metric {
        label: labels(l),
        summary: Some(Box::new(Summary {
            sample_count: Some(count),
            sample_sum: Some(sum),
            quantile: q
                .iter()
                .map(|&(quantile, value)| Quantile {
                    quantile: Some(quantile),
                    value: Some(value),
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn histogram(l: &[(&str, &str)], count: u64, sum: f64, b: &[(f64, u64)]) -> Metric {
    Metric {
        label: labels(l),
        histogram: Some(Box::new(Histogram {
            sample_count: Some(count),
            sample_sum: Some(sum),
            bucket: b
                .iter()
                .map(|&(upper, cum)| Bucket {
                    cumulative_count: Some(cum),
                    upper_bound: Some(upper),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A delimited-protobuf body.
pub fn pb(families: &[MetricFamily]) -> Vec<u8> {
    pgw_core::delimited::encode(families)
}

/// Gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip into a Vec");
    e.finish().expect("gzip into a Vec")
}
