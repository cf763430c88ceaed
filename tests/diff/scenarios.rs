//! The scenario table. Each scenario is a request sequence sent in the same order to both
//! servers; see `main.rs` for what is compared. Sections follow the spec
//! (`reference/pushgateway-spec.md`).

use pgw_core::pb::MetricType::{Counter, Gauge, Histogram, Summary, Untyped};

use crate::bodies::{self, PB, counter, family, gauge, histogram, summary, untyped};
use crate::{Expect, Mode, Outcome, PgwExpect, Req, Scenario};

// ---------------------------------------------------------------------------------------
// Builders.

fn put(path: &str, body: impl AsRef<[u8]>) -> Req {
    Req::new("PUT", path, body)
}
fn post(path: &str, body: impl AsRef<[u8]>) -> Req {
    Req::new("POST", path, body)
}
fn del(path: &str) -> Req {
    Req::new("DELETE", path, b"")
}
fn get(path: &str) -> Req {
    Req::new("GET", path, b"")
}
fn options(path: &str) -> Req {
    Req::new("OPTIONS", path, b"")
}
/// A write barrier: waits until both servers applied everything sent so far.
fn barrier() -> Req {
    Req::new("BARRIER", "", b"")
}
fn pb_put(path: &str, fams: &[pgw_core::pb::MetricFamily]) -> Req {
    put(path, bodies::pb(fams)).h("Content-Type", PB)
}
fn pb_post(path: &str, fams: &[pgw_core::pb::MetricFamily]) -> Req {
    post(path, bodies::pb(fams)).h("Content-Type", PB)
}

fn same(name: &'static str, steps: Vec<Req>) -> Scenario {
    Scenario {
        name,
        mode: Mode::Checked,
        steps,
        expect: Expect::Same,
    }
}
fn unchecked(name: &'static str, steps: Vec<Req>) -> Scenario {
    Scenario {
        name,
        mode: Mode::Unchecked,
        steps,
        expect: Expect::Same,
    }
}
fn differs(name: &'static str, why: &'static str, steps: Vec<Req>, pgw: PgwExpect) -> Scenario {
    Scenario {
        name,
        mode: Mode::Checked,
        steps,
        expect: Expect::Differs { why, pgw },
    }
}

const INCONSISTENT: &str = "pushed metrics are invalid or inconsistent with existing metrics:";

/// A text body with `n` series of one gauge family.
fn many_series(name: &str, n: usize, offset: usize) -> String {
    let mut s = format!("# HELP {name} Many series.\n# TYPE {name} gauge\n");
    for i in 0..n {
        s.push_str(&format!(
            "{name}{{i=\"{i:05}\",k=\"v{}\"}} {}\n",
            i % 7,
            i + offset
        ));
    }
    s
}

const SUMMARY_S: &str =
    "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns{quantile=\"0.9\"} 2\ns_sum 3\ns_count 4\n";
const HISTOGRAM_H: &str =
    "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"1\"} 2\nh_sum 3\nh_count 2\n";

// ---------------------------------------------------------------------------------------

pub fn all() -> Vec<Scenario> {
    let mut v = Vec::new();
    v.extend(writes());
    v.extend(url_grammar());
    v.extend(routing());
    v.extend(bodies_and_encodings());
    v.extend(text_parser());
    v.extend(consistency());
    v.extend(unchecked_mode());
    v.extend(intended_differences());
    v
}

/// §5.2, §5.3, §5.4, §5.5: PUT/POST/DELETE and the merge rules.
fn writes() -> Vec<Scenario> {
    vec![
        same("put_simple", vec![put("/metrics/job/j", "m 1\n")]),
        same(
            "put_replaces_whole_group",
            vec![
                put("/metrics/job/j", "a 1\nb 2\n"),
                put("/metrics/job/j", "a 3\n"),
            ],
        ),
        same(
            "post_replaces_families_by_name",
            vec![
                put("/metrics/job/j", "a{x=\"1\"} 1\na{x=\"2\"} 2\nb 1\n"),
                post("/metrics/job/j", "a{x=\"3\"} 3\nc 4\n"),
            ],
        ),
        same(
            "post_replaces_all_series_of_a_family",
            vec![
                put("/metrics/job/j", "m{x=\"1\"} 1\nm{x=\"2\"} 2\n"),
                post("/metrics/job/j", "m{x=\"1\"} 10\n"),
            ],
        ),
        same(
            "post_into_new_group",
            vec![post(
                "/metrics/job/j/instance/i",
                "# HELP x hi\n# TYPE x counter\nx 3\n",
            )],
        ),
        same(
            "put_empty_body_empties_group",
            vec![put("/metrics/job/j", "a 1\n"), put("/metrics/job/j", "")],
        ),
        same(
            "post_empty_body_keeps_families",
            vec![put("/metrics/job/j", "a 1\n"), post("/metrics/job/j", "")],
        ),
        same(
            "delete_exact_group_only",
            vec![
                put("/metrics/job/j", "a 1\n"),
                put("/metrics/job/j/instance/i", "a 2\n"),
                put("/metrics/job/j/x/y", "a 3\n"),
                del("/metrics/job/j"),
            ],
        ),
        same(
            "delete_ignores_body_and_post_empty_creates_group",
            vec![
                put("/metrics/job/j", "a 1\n"),
                Req::new("DELETE", "/metrics/job/j", "garbage that is not parsed\n"),
                post("/metrics/job/k", ""),
                put("/metrics/job/l", ""),
            ],
        ),
        same(
            "delete_unknown_group",
            vec![
                del("/metrics/job/nope"),
                del("/metrics/job/nope/a/b"),
                put("/metrics/job/j", "a 1\n"),
                del("/metrics/job/j/a/b"),
            ],
        ),
        same(
            "delete_then_put_keeps_order",
            vec![
                put("/metrics/job/j", "a 1\n"),
                del("/metrics/job/j"),
                put("/metrics/job/j", "b 2\n"),
                del("/metrics/job/k"),
                post("/metrics/job/k", "c 3\n"),
            ],
        ),
        same(
            "mixed_sequence_across_groups",
            vec![
                put("/metrics/job/a", "m{v=\"1\"} 1\nn 1\n"),
                post("/metrics/job/b/instance/x", "m{v=\"2\"} 2\n"),
                post("/metrics/job/a", "n 5\no 6\n"),
                del("/metrics/job/b/instance/x"),
                put("/metrics/job/c", "m{v=\"3\"} 3\n"),
                post("/metrics/job/a", "m{v=\"4\"} 4\n"),
                put("/metrics/job/b/instance/x", "p 7\n"),
            ],
        ),
        same(
            "instance_from_body_kept_per_sample",
            vec![put(
                "/metrics/job/j",
                "m{instance=\"y\"} 1\nm{instance=\"z\"} 2\nn 3\n",
            )],
        ),
        same(
            "instance_from_url_wins",
            vec![put(
                "/metrics/job/j/instance/u",
                "m{instance=\"y\"} 1\nn 2\n",
            )],
        ),
        same(
            "path_job_wins_over_body_job",
            vec![put("/metrics/job/j", "m{job=\"other\"} 1\n")],
        ),
        same(
            "path_job_wins_over_job_label_pair",
            vec![
                put("/metrics/job/j/job/other", "m 1\n"),
                put("/metrics/job/k", "n 1\n"),
                put("/metrics/job/k/job/other2/a/b", "o 1\n"),
                del("/metrics/job/k/job/zzz"),
            ],
        ),
        same(
            "grouping_label_overrides_body_label",
            vec![put("/metrics/job/j/a/url", "m{a=\"body\",b=\"keep\"} 1\n")],
        ),
        same(
            "grouping_labels_added_to_every_sample",
            vec![put(
                "/metrics/job/j/a/1/b/2",
                "m 1\nn{c=\"3\"} 2\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
            )],
        ),
        same(
            "duplicate_label_pair_in_url_last_wins",
            vec![put("/metrics/job/j/a/1/a/2", "m 1\n")],
        ),
        same(
            "label_order_in_url_irrelevant",
            vec![
                put("/metrics/job/j/a/1/b/2", "m 1\n"),
                put("/metrics/job/j/b/2/a/1", "m 2\n"),
                post("/metrics/job/j/b/2/a/1", "n 3\n"),
            ],
        ),
        same(
            "empty_label_value_is_a_distinct_group",
            vec![
                put("/metrics/job/j", "m{x=\"1\"} 1\n"),
                put("/metrics/job/j/a@base64/=", "n 1\n"),
            ],
        ),
        same(
            "empty_label_value_via_trailing_slash",
            vec![
                put("/metrics/job/j/a/", "m 1\n"),
                put("/metrics/job/j/a/b/c/", "m 2\n"),
            ],
        ),
        same(
            "failed_push_keeps_group_and_sets_failure_time",
            vec![
                put("/metrics/job/j", "a 1\nb 2\n"),
                put("/metrics/job/j", "a 1 1000\n"),
            ],
        ),
        same(
            "failed_push_to_new_group_creates_marker",
            vec![put("/metrics/job/j", "a 1 1000\n")],
        ),
        same(
            "success_after_failure_keeps_failure_time",
            vec![
                put("/metrics/job/j", "a 1 1000\n"),
                put("/metrics/job/j", "a 2\n"),
                post("/metrics/job/j", "b 3\n"),
            ],
        ),
        same(
            "failed_post_changes_nothing_but_failure_time",
            vec![
                put("/metrics/job/j", "a 1\nb 2\n"),
                post("/metrics/job/j", "a 1\na 5\n"),
                post("/metrics/job/j", "c 1 5\n"),
            ],
        ),
        same(
            "same_family_in_many_groups",
            vec![
                put(
                    "/metrics/job/j1",
                    "# HELP m Same help.\n# TYPE m gauge\nm 1\n",
                ),
                put(
                    "/metrics/job/j2",
                    "# HELP m Same help.\n# TYPE m gauge\nm 2\n",
                ),
                put(
                    "/metrics/job/j3/instance/x",
                    "# HELP m Same help.\n# TYPE m gauge\nm{l=\"z\"} 3\n",
                ),
            ],
        ),
        same(
            "sample_order_byte_wise_values",
            vec![
                put(
                    "/metrics/job/j",
                    "m{v=\"10\"} 1\nm{v=\"9\"} 2\nm{v=\"B\"} 3\nm{v=\"a\"} 4\nm{v=\"é\"} 5\nm{v=\"\"} 6\n",
                ),
                put("/metrics/job/J", "m{v=\"10\"} 7\n"),
                put("/metrics/job/j/instance/10", "m{v=\"0\"} 8\n"),
            ],
        ),
        same(
            "sample_order_label_count_then_values",
            vec![
                put(
                    "/metrics/job/j",
                    "m{b=\"1\"} 1\nm{a=\"2\"} 2\nm 0\nm{a=\"1\",b=\"1\"} 3\nm{a=\"\"} 4\n",
                ),
                put("/metrics/job/a", "m 9\nm{zz=\"0\"} 8\n"),
                put("/metrics/job/j/instance/0", "m 7\n"),
            ],
        ),
        same(
            "pushed_push_time_family_is_overwritten",
            vec![put(
                "/metrics/job/j",
                "push_time_seconds 5\npush_failure_time_seconds 6\nm 1\n",
            )],
        ),
        same(
            "put_changes_family_type_within_group",
            vec![
                put("/metrics/job/j", "# TYPE m counter\nm 1\n"),
                put("/metrics/job/j", "# TYPE m gauge\nm 1\n"),
            ],
        ),
        same(
            "post_changes_family_type_within_group",
            vec![
                put("/metrics/job/j", "# TYPE m counter\nm 1\nn 1\n"),
                post("/metrics/job/j", "# TYPE m gauge\nm 2\n"),
            ],
        ),
        same(
            "many_series",
            vec![
                put("/metrics/job/big", many_series("big_gauge", 2000, 0)),
                post("/metrics/job/big", many_series("big_other", 500, 7)),
                put("/metrics/job/big2", many_series("big_third", 300, 1)),
            ],
        ),
    ]
}

/// §3: the push URL grammar and its decoding.
fn url_grammar() -> Vec<Scenario> {
    vec![
        same(
            "base64_job",
            vec![
                put("/metrics/job@base64/Zm9v", "m 1\n"),
                post("/metrics/job@base64/Zm9v/a/b", "m 2\n"),
                del("/metrics/job@base64/Zm9v"),
            ],
        ),
        same(
            "base64_job_padding_variants",
            vec![
                put("/metrics/job@base64/Zm9vYg==", "m 1\n"),
                post("/metrics/job@base64/Zm9vYg", "n 1\n"),
                post("/metrics/job@base64/Zm9vYg=", "o 1\n"),
                post("/metrics/job@base64/Zm9vYg===", "p 1\n"),
                post("/metrics/job@base64/Zm9vYmE", "q 1\n"),
            ],
        ),
        same(
            "base64_job_with_slash",
            vec![put("/metrics/job@base64/am9iL3dpdGgvc2xhc2g", "m 1\n")],
        ),
        same(
            "base64_job_equals_alone_is_empty",
            vec![
                put("/metrics/job@base64/=", "m 1\n"),
                post("/metrics/job@base64/==/a/b", "m 1\n"),
                del("/metrics/job@base64/="),
            ],
        ),
        same(
            "base64_label_values",
            vec![put(
                "/metrics/job/j/a@base64/Pz8_/b@base64/YQ==/c@base64/=/d@base64/YS9i/e@base64/w6k",
                "m 1\n",
            )],
        ),
        same(
            "base64_label_empty_value",
            vec![
                put("/metrics/job/j/a@base64/", "m 1\n"),
                put("/metrics/job/k/a@base64/===", "m 2\n"),
            ],
        ),
        same(
            "base64_label_bad_encodings",
            vec![
                put("/metrics/job/j/a@base64/fn5+", "m 1\n"),
                put("/metrics/job/j/a@base64/YQ=a", "m 1\n"),
                put("/metrics/job/j/a@base64/Y", "m 1\n"),
                put("/metrics/job/j/a@base64/a*b", "m 1\n"),
                del("/metrics/job/j/a@base64/a*b"),
                put("/metrics/job/j/a@base64/fn5-", "m 1\n"),
            ],
        ),
        same(
            "base64_instance_empty",
            vec![put("/metrics/job/j/instance@base64/=", "m 1\n")],
        ),
        same(
            "percent_escapes_decode",
            vec![
                put("/metrics/job/j%20k/a/b%20c", "m 1\n"),
                put("/metrics/job/j/a/%C3%A9", "m 2\n"),
                put("/metrics/job/j/a/x+y", "m 3\n"),
                put("/metrics/job/j/%61/esc", "m 4\n"),
            ],
        ),
        same(
            "percent_2f_splits_segments",
            vec![
                put("/metrics/job/j%2Fk", "m 1\n"),
                put("/metrics/job/j/a/x%2Fy", "m 1\n"),
                put("/metrics/job/j/a/x%2Fy/b", "m 1\n"),
                del("/metrics/job/j%2Fk"),
            ],
        ),
        same(
            "odd_number_of_components",
            vec![
                put("/metrics/job/j/a", "m 1\n"),
                put("/metrics/job/j/a/b/c", "m 1\n"),
                post("/metrics/job/j/a/b/", "m 1\n"),
                del("/metrics/job/j/a"),
            ],
        ),
        same(
            "trailing_slash_after_job_is_fine",
            vec![
                put("/metrics/job/j/", "m 1\n"),
                post("/metrics/job/k/", "m 2\n"),
            ],
        ),
        same(
            "improper_label_names",
            vec![
                put("/metrics/job/j/1a/x", "m 1\n"),
                put("/metrics/job/j/__a/x", "m 1\n"),
                put("/metrics/job/j/a-b/x", "m 1\n"),
                put("/metrics/job/j/a@base64@base64/YQ", "m 1\n"),
                put("/metrics/job/j/@base64/YQ", "m 1\n"),
                put("/metrics/job/j/%C3%A9/x", "m 1\n"),
                del("/metrics/job/j/__a/x"),
                put("/metrics/job/j/_a/x/A9/y", "m 1\n"),
            ],
        ),
        same(
            "improper_label_name_checked_before_base64",
            vec![put("/metrics/job/j/a/b/1x@base64/!!", "m 1\n")],
        ),
        same(
            "percent_encoded_base64_marker",
            vec![
                put("/metrics/job%40base64/Zm9v", "m 1\n"),
                put("/metrics/job/j/a%40base64/YQ", "m 2\n"),
                put("/metrics/job/j/a@BASE64/YQ", "m 3\n"),
                put("/metrics/job/k/a/%25x%3F%23", "m 4\n"),
            ],
        ),
        same(
            "query_string_ignored",
            vec![
                put("/metrics/job/j?x=y", "m 1\n"),
                post("/metrics/job/j/a/b?job=other", "m 2\n"),
                del("/metrics/job/j?a=b"),
            ],
        ),
    ]
}

/// §2: routing, redirects, methods, the small endpoints.
fn routing() -> Vec<Scenario> {
    vec![
        same(
            "path_cleaning_redirects",
            vec![
                put("/metrics/job/j/a//b/c", "m 1\n"),
                put("/metrics/job/j/./a/b", "m 1\n"),
                put("/metrics/job/j/../k", "m 1\n"),
                put("/metrics/job/j//x", "m 1\n"),
                get("/metrics/"),
                del("/metrics//job/j"),
            ],
        ),
        same(
            "trailing_slash_redirects",
            vec![
                put("/metrics/job/", "m 1\n"),
                del("/metrics/job/"),
                post("/metrics/job@base64/", "m 1\n"),
            ],
        ),
        same(
            "unknown_paths_404",
            vec![
                get("/nope"),
                put("/metrics/job", "m 1\n"),
                put("/metrics/job@base64", "m 1\n"),
                get("/-/reload"),
                post("/-/reload", ""),
                put("/metrics/jobs/x", "m 1\n"),
                put("/metrics/job2/x", "m 1\n"),
                get("/api/v1/nope"),
                put("/api/v1/admin/nope", ""),
            ],
        ),
        same(
            "methods_not_allowed",
            vec![
                get("/metrics/job/j"),
                Req::new("PATCH", "/metrics/job/j", "m 1\n"),
                post("/metrics", "m 1\n"),
                put("/metrics", "m 1\n"),
                Req::new("HEAD", "/metrics", b""),
                del("/metrics"),
                get("/api/v1/admin/wipe"),
                post("/api/v1/admin/wipe", ""),
                del("/api/v1/admin/wipe"),
                post("/api/v1/metrics", ""),
                get("/metrics/job/j/a/b"),
            ],
        ),
        same(
            "options_requests",
            vec![
                options("/metrics/job/j"),
                options("/metrics/job/j/a/b"),
                options("/metrics/job@base64/Zm9v"),
                options("/api/v1/metrics"),
                options("/api/v1/whatever"),
            ],
        ),
        same(
            "health_and_ready",
            vec![
                get("/-/healthy"),
                get("/-/ready"),
                Req::new("HEAD", "/-/healthy", b""),
                post("/-/healthy", ""),
            ],
        ),
        same(
            "metrics_gzip_response",
            vec![
                put("/metrics/job/j", "a 1\n"),
                get("/metrics").h("Accept-Encoding", "gzip"),
                get("/metrics").h("Accept-Encoding", "identity"),
            ],
        ),
        same(
            "lifecycle_disabled",
            vec![put("/-/quit", ""), post("/-/quit", ""), get("/-/quit")],
        ),
        same(
            "admin_wipe",
            vec![
                put("/metrics/job/j1", "a 1\n"),
                put("/metrics/job/j2/instance/i", "b 1\n"),
                put("/api/v1/admin/wipe", ""),
                barrier(),
                put("/metrics/job/j3", "c 1\n"),
            ],
        ),
        same(
            "api_status_and_metrics_answer_json",
            vec![
                put("/metrics/job/j", "a 1\n"),
                get("/api/v1/status"),
                get("/api/v1/metrics"),
            ],
        ),
        same(
            "metrics_content_negotiation",
            vec![
                put("/metrics/job/j", "a 1\n"),
                get("/metrics").h(
                    "Accept",
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
                ),
                get("/metrics").h("Accept", "application/openmetrics-text; version=1.0.0"),
                get("/metrics").h("Accept", "text/plain"),
            ],
        ),
        same(
            "content_encoding_gzip_with_empty_body",
            vec![
                put("/metrics/job/j", "a 1\n"),
                get("/metrics").h("Content-Encoding", "gzip"),
                get("/-/healthy").h("Content-Encoding", "gzip"),
                get("/api/v1/status").h("Content-Encoding", "gzip"),
                del("/metrics/job/j").h("Content-Encoding", "gzip"),
            ],
        ),
    ]
}

/// §4.1–§4.3: Content-Encoding, format selection, delimited protobuf.
fn bodies_and_encodings() -> Vec<Scenario> {
    let simple = vec![
        family(
            "pb_gauge",
            Some("A gauge."),
            Gauge,
            vec![gauge(&[("a", "1")], 1.5)],
        ),
        family(
            "pb_counter",
            None,
            Counter,
            vec![counter(&[], 7.0), counter(&[("b", "x")], 8.0)],
        ),
        family("pb_untyped", Some("U."), Untyped, vec![untyped(&[], -2.0)]),
    ];
    let one = |name: &str| vec![family(name, None, Gauge, vec![gauge(&[], 1.0)])];
    let body = bodies::pb(&one("pb_ct"));
    let variant =
        |ct: &str, job: &str| put(&format!("/metrics/job/{job}"), &body).h("Content-Type", ct);
    let mut truncated = bodies::pb(&simple);
    truncated.truncate(truncated.len() - 3);
    let gz_text = bodies::gzip(b"m{a=\"1\"} 1\n# TYPE n counter\nn 2\n");
    let mut gz_truncated = gz_text.clone();
    gz_truncated.truncate(gz_truncated.len() - 4);
    vec![
        same("protobuf_simple", vec![pb_put("/metrics/job/j", &simple)]),
        same(
            "protobuf_content_type_variants",
            vec![
                variant(
                    "Application/Vnd.Google.Protobuf; Proto=io.prometheus.client.MetricFamily; Encoding=delimited",
                    "case",
                ),
                variant(
                    "application/vnd.google.protobuf; encoding=delimited; proto=io.prometheus.client.MetricFamily",
                    "order",
                ),
                variant(
                    "application/vnd.google.protobuf;proto=\"io.prometheus.client.MetricFamily\";encoding=\"delimited\"",
                    "quoted",
                ),
                variant(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; charset=utf-8",
                    "extra_param",
                ),
            ],
        ),
        same(
            "protobuf_wrong_params_parsed_as_text",
            vec![
                variant(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text",
                    "a",
                ),
                variant(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.Metric; encoding=delimited",
                    "b",
                ),
                variant(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=Delimited",
                    "c",
                ),
                variant("application/x-protobuf", "d"),
                variant("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily", "e"),
                variant("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; x", "f"),
                put("/metrics/job/g", "m 1\n").h(
                    "Content-Type",
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text",
                ),
                put("/metrics/job/h", "m 2\n").h("Content-Type", "application/json"),
                put("/metrics/job/i", "m 3\n").h("Content-Type", "application/openmetrics-text; version=1.0.0"),
            ],
        ),
        same(
            "protobuf_repeated_family_last_wins",
            vec![pb_put(
                "/metrics/job/j",
                &[
                    family("m", Some("first"), Gauge, vec![gauge(&[], 1.0)]),
                    family("n", None, Gauge, vec![gauge(&[], 5.0)]),
                    family("m", Some("second"), Gauge, vec![gauge(&[("x", "y")], 2.0)]),
                ],
            )],
        ),
        same(
            "protobuf_family_without_metrics",
            vec![pb_put(
                "/metrics/job/j",
                &[
                    family("empty_fam", Some("No metrics."), Gauge, vec![]),
                    family("m", None, Gauge, vec![gauge(&[], 1.0)]),
                ],
            )],
        ),
        same(
            "protobuf_timestamp_rejected",
            vec![
                pb_put(
                    "/metrics/job/j",
                    &[family(
                        "m",
                        None,
                        Gauge,
                        vec![pgw_core::pb::Metric {
                            timestamp_ms: Some(1000),
                            ..gauge(&[], 1.0)
                        }],
                    )],
                ),
                pb_post("/metrics/job/k", &simple),
            ],
        ),
        differs(
            "protobuf_truncated",
            "truncated protobuf bodies are rejected (as upstream >= 1.6.1); 1.5.1's pbutil accepts a cut varint as an empty push",
            vec![
                put("/metrics/job/j", &truncated).h("Content-Type", PB),
                put("/metrics/job/j", [0x05u8, 0x0a]).h("Content-Type", PB),
                put("/metrics/job/j", [0xffu8]).h("Content-Type", PB),
            ],
            PgwExpect::statuses(&[400, 400, 400]).prefix(0, "unexpected EOF").prefix(1, "unexpected EOF").prefix(2, "unexpected EOF"),
                ),
        same(
            "protobuf_empty_body",
            vec![
                put("/metrics/job/j", "").h("Content-Type", PB),
                post("/metrics/job/k", "").h("Content-Type", PB),
            ],
        ),
        same(
            "protobuf_value_does_not_match_type",
            vec![
                pb_put(
                    "/metrics/job/j",
                    &[family("m", None, Gauge, vec![counter(&[], 1.0)])],
                ),
                pb_put(
                    "/metrics/job/k",
                    &[family("n", None, Summary, vec![gauge(&[], 1.0)])],
                ),
            ],
        ),
        same(
            "protobuf_summary_and_histogram",
            vec![pb_put(
                "/metrics/job/j/zz/1",
                &[
                    family(
                        "pb_summary",
                        Some("S."),
                        Summary,
                        vec![summary(&[("a", "x")], 10, 5.5, &[(0.5, 1.0), (0.99, 3.0)])],
                    ),
                    family(
                        "pb_hist",
                        Some("H."),
                        Histogram,
                        vec![
                            histogram(&[], 5, 2.5, &[(0.1, 1), (1.0, 3), (10.0, 4)]),
                            histogram(&[("b", "y")], 3, 1.0, &[(1.0, 1), (f64::INFINITY, 3)]),
                        ],
                    ),
                ],
            )],
        ),
        same(
            "protobuf_invalid_label_names",
            vec![
                pb_put(
                    "/metrics/job/j",
                    &[family("m", None, Gauge, vec![gauge(&[("a-b", "1")], 1.0)])],
                ),
                pb_put(
                    "/metrics/job/k",
                    &[family("m", None, Gauge, vec![gauge(&[("__x", "1")], 1.0)])],
                ),
                pb_put(
                    "/metrics/job/l",
                    &[family("m", None, Gauge, vec![gauge(&[("", "1")], 1.0)])],
                ),
            ],
        ),
        same(
            "protobuf_duplicate_label_names",
            vec![pb_put(
                "/metrics/job/j",
                &[family(
                    "m",
                    None,
                    Gauge,
                    vec![gauge(&[("a", "1"), ("a", "2")], 1.0)],
                )],
            )],
        ),
        same(
            "protobuf_summary_with_quantile_label",
            vec![pb_put(
                "/metrics/job/j",
                &[family(
                    "s",
                    None,
                    Summary,
                    vec![summary(&[("quantile", "0.5")], 1, 1.0, &[])],
                )],
            )],
        ),
        same(
            "protobuf_help_escapes",
            vec![pb_put(
                "/metrics/job/j",
                &[family(
                    "m",
                    Some("line1\nline2 back\\slash \"quoted\""),
                    Gauge,
                    vec![gauge(&[("v", "a\"b\\c\nd")], 1.0)],
                )],
            )],
        ),
        same(
            "protobuf_metric_without_value_field",
            vec![
                pb_put(
                    "/metrics/job/j",
                    &[family("m", None, Untyped, vec![pgw_core::pb::Metric::default()])],
                ),
                pb_put(
                    "/metrics/job/k",
                    &[family(
                        "c",
                        None,
                        Counter,
                        vec![pgw_core::pb::Metric {
                            counter: Some(pgw_core::pb::Counter::default()),
                            ..Default::default()
                        }],
                    )],
                ),
                pb_put(
                    "/metrics/job/l",
                    &[pgw_core::pb::MetricFamily {
                        name: Some("notype".into()),
                        r#type: None,
                        metric: vec![counter(&[], 3.0)],
                        ..Default::default()
                    }],
                ),
            ],
        ),
        differs(
            "protobuf_gauge_histogram_type",
            "GAUGE_HISTOGRAM cannot be exposed in text 0.0.4: pgw rejects it; 1.5.1 stores it and every later scrape is a truncated body",
            vec![pb_put(
                "/metrics/job/j",
                &[family(
                    "gh",
                    None,
                    pgw_core::pb::MetricType::GaugeHistogram,
                    vec![histogram(&[], 1, 1.0, &[(1.0, 1)])],
                )],
            )],
            PgwExpect::statuses(&[400]).prefix(0, INCONSISTENT),
                ),
        differs(
            "protobuf_newer_fields_ignored",
            "float bucket counts (`cumulative_count_float`) are rendered as newer upstream does; 1.5.1's client_model predates them and renders the integer count",
            vec![pb_put(
                "/metrics/job/j",
                &[
                    pgw_core::pb::MetricFamily {
                        unit: Some("seconds".into()),
                        ..family(
                            "with_extras",
                            Some("Extras."),
                            Counter,
                            vec![pgw_core::pb::Metric {
                                counter: Some(pgw_core::pb::Counter {
                                    value: Some(4.0),
                                    exemplar: Some(pgw_core::pb::Exemplar {
                                        label: bodies::labels(&[("trace_id", "abc")]),
                                        value: Some(1.0),
                                        timestamp: None,
                                    }),
                                    created_timestamp: Some(pgw_core::pb::Timestamp {
                                        seconds: Some(1_700_000_000),
                                        nanos: Some(5),
                                    }),
                                }),
                                ..Default::default()
                            }],
                        )
                    },
                    family(
                        "hist_float_and_native",
                        None,
                        Histogram,
                        vec![pgw_core::pb::Metric {
                            histogram: Some(Box::new(pgw_core::pb::Histogram {
                                sample_count: Some(3),
                                sample_sum: Some(2.0),
                                schema: Some(0),
                                zero_threshold: Some(1e-128),
                                zero_count: Some(1),
                                positive_span: vec![pgw_core::pb::BucketSpan {
                                    offset: Some(0),
                                    length: Some(2),
                                }],
                                positive_delta: vec![1, 0],
                                bucket: vec![pgw_core::pb::Bucket {
                                    cumulative_count: Some(2),
                                    cumulative_count_float: Some(2.5),
                                    upper_bound: Some(1.0),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            })),
                            ..Default::default()
                        }],
                    ),
                ],
            )],
            PgwExpect::statuses(&[200]).has("hist_float_and_native_bucket{instance=\"\",job=\"j\",le=\"1\"} 2.5"),
                ),
        same(
            "protobuf_grouping_labels_override",
            vec![pb_put(
                "/metrics/job/j/a/url",
                &[family(
                    "m",
                    None,
                    Gauge,
                    vec![
                        gauge(&[("a", "body"), ("job", "other"), ("instance", "i")], 1.0),
                        gauge(&[("b", "1")], 2.0),
                    ],
                )],
            )],
        ),
        same(
            "gzip_body",
            vec![
                put("/metrics/job/j", &gz_text).h("Content-Encoding", "gzip"),
                post("/metrics/job/k", bodies::gzip(&bodies::pb(&simple)))
                    .h("Content-Encoding", "gzip")
                    .h("Content-Type", PB),
            ],
        ),
        same(
            "gzip_invalid",
            vec![
                put("/metrics/job/j", "m 1\n").h("Content-Encoding", "gzip"),
                put("/metrics/job/j", "").h("Content-Encoding", "gzip"),
                put("/metrics/job/j", [0x1fu8, 0x8b, 0x08]).h("Content-Encoding", "gzip"),
            ],
        ),
        differs(
            "gzip_truncated_trailer",
            "Q10: a gzip body without its trailer is rejected; 1.5.1's parser swallows the read error and stores it",
            vec![put("/metrics/job/j", &gz_truncated).h("Content-Encoding", "gzip")],
            PgwExpect::statuses(&[400]).prefix(0, "unexpected EOF"),
                ),
        same(
            "other_content_encodings_ignored",
            vec![
                put("/metrics/job/a", "m 1\n").h("Content-Encoding", "deflate"),
                put("/metrics/job/b", "m 2\n").h("Content-Encoding", "identity"),
                put("/metrics/job/c", "m 3\n").h("Content-Encoding", "br"),
                put("/metrics/job/d", "m 4\n").h("Content-Encoding", "x-unknown"),
            ],
        ),
    ]
}

/// §4.4: the text format parser.
fn text_parser() -> Vec<Scenario> {
    vec![
        same(
            "text_missing_final_newline",
            vec![
                put("/metrics/job/j", "m 1"),
                put("/metrics/job/j", "a 1\nb 2"),
                put("/metrics/job/j", "# HELP a x"),
            ],
        ),
        same(
            "text_crlf_line_endings",
            vec![
                put("/metrics/job/j", "m 1\r\n"),
                put("/metrics/job/j", "m{a=\"1\"} 1\r\n"),
            ],
        ),
        same(
            "text_comments_and_blank_lines_ignored",
            vec![put(
                "/metrics/job/j",
                "# random comment\n\n   \n# UNIT m seconds\n#no space\n#\nm 1\n# EOF\n",
            )],
        ),
        same(
            "text_whitespace_tolerance",
            vec![put(
                "/metrics/job/j",
                "  m 1\n\tn{a=\"1\"} 2\no {a=\"1\"} 3\np{ a = \"1\" , } 4\nq{} 5\nr{a=\"1\",} 6\ns\t7\n",
            )],
        ),
        same(
            "text_help_and_type_errors",
            vec![
                put("/metrics/job/j", "# HELP m a\n# HELP m b\nm 1\n"),
                put("/metrics/job/j", "m 1\n# TYPE m gauge\n"),
                put("/metrics/job/j", "# TYPE m gauge\n# TYPE m gauge\nm 1\n"),
                put("/metrics/job/j", "# TYPE m foo\nm 1\n"),
                put("/metrics/job/j", "# TYPE m gaugehistogram\nm 1\n"),
                put("/metrics/job/j", "# TYPE m\nm 1\n"),
                put("/metrics/job/j", "# HELP\nm 1\n"),
                put("/metrics/job/j", "# TYPE 1m gauge\n"),
                put("/metrics/job/j", "# TYPE m GAUGE\nm 1\n"),
            ],
        ),
        same(
            "text_help_before_and_after_type",
            vec![put(
                "/metrics/job/j",
                "# TYPE a gauge\n# HELP a after type\na 1\n# HELP b \nb 2\n# HELP c multi  spaced  text \nc 3\n",
            )],
        ),
        same(
            "text_metric_names",
            vec![
                put("/metrics/job/a", "1m 1\n"),
                put("/metrics/job/b", "m-x 1\n"),
                put("/metrics/job/c", "m:x 1\n:y 2\n_z 3\n"),
                put("/metrics/job/d", "mé 1\n"),
                put("/metrics/job/e", "{a=\"1\"} 1\n"),
            ],
        ),
        same(
            "text_label_name_errors",
            vec![
                put("/metrics/job/j", "m{1a=\"x\"} 1\n"),
                put("/metrics/job/j", "m{a-b=\"x\"} 1\n"),
                put("/metrics/job/j", "m{__name__=\"x\"} 1\n"),
                put("/metrics/job/j", "m{__a=\"x\"} 1\n"),
                put("/metrics/job/j", "m{a=\"1\",a=\"2\"} 1\n"),
                put("/metrics/job/j", "m{a=\"1\" b=\"2\"} 1\n"),
                put("/metrics/job/j", "m{a=1} 1\n"),
                put("/metrics/job/j", "m{a} 1\n"),
                put("/metrics/job/j", "m{a=\"1\"\n"),
            ],
        ),
        same(
            "text_label_values_with_syntax_characters",
            vec![put(
                "/metrics/job/j",
                "m{a=\"x}y,z=w\"} 1\nm{a=\"é✓ 漢字\"} 2\nm{a=\"# not a comment\"} 3\nm{a=\" \"} 4\n",
            )],
        ),
        same(
            "text_help_variants",
            vec![put(
                "/metrics/job/j",
                "# HELP a\na 1\n# HELP b Unicode: é✓ 漢字\nb 2\n# HELP c   leading spaces\nc 3\n# HELP d trailing\t\nd 4\n",
            )],
        ),
        same(
            "text_special_values_in_histogram_and_summary",
            vec![put(
                "/metrics/job/j",
                "# TYPE s summary\ns{quantile=\"0.5\"} NaN\ns{quantile=\"0.9\"} +Inf\ns_sum NaN\ns_count 0\n\
                 # TYPE h histogram\nh_bucket{le=\"-Inf\"} 0\nh_bucket{le=\"NaN\"} 0\nh_sum +Inf\nh_count 0\n\
                 # TYPE c counter\nc NaN\n",
            )],
        ),
        same(
            "text_label_value_escapes",
            vec![
                put("/metrics/job/j", "m{a=\"x\\\\y\\\"z\\nw\"} 1\n"),
                put("/metrics/job/k", "m{a=\"x\\ty\"} 1\n"),
                put("/metrics/job/k", "m{a=\"x\ny\"} 1\n"),
                put("/metrics/job/k", "m{a=\"unterminated} 1\n"),
            ],
        ),
        same(
            "text_help_escapes",
            vec![
                put("/metrics/job/j", "# HELP m a\\\\b\\nc \"q\"\nm 1\n"),
                put("/metrics/job/k", "# HELP n a\\tb\nn 1\n"),
            ],
        ),
        same(
            "text_help_escaped_quote",
            vec![put("/metrics/job/j", "# HELP m say \\\"hi\\\"\nm 1\n")],
        ),
        same(
            "text_values_accepted",
            vec![put(
                "/metrics/job/j",
                "m{v=\"a\"} NaN\nm{v=\"b\"} nan\nm{v=\"c\"} NAN\nm{v=\"d\"} Inf\nm{v=\"e\"} +Inf\n\
                 m{v=\"f\"} -Inf\nm{v=\"g\"} inf\nm{v=\"h\"} Infinity\nm{v=\"i\"} .5\nm{v=\"j\"} 5.\n\
                 m{v=\"k\"} +3\nm{v=\"l\"} 1e3\nm{v=\"m\"} -0\nm{v=\"n\"} 1E3\nm{v=\"o\"} -infinity\n",
            )],
        ),
        same(
            "text_values_rejected",
            vec![
                put("/metrics/job/j", "m +nan\n"),
                put("/metrics/job/j", "m 0x10\n"),
                put("/metrics/job/j", "m 1e\n"),
                put("/metrics/job/j", "m 1_000\n"),
                put("/metrics/job/j", "m 2e308\n"),
                put("/metrics/job/j", "m abc\n"),
                put("/metrics/job/j", "m\n"),
                put("/metrics/job/j", "m \n"),
                put("/metrics/job/j", "m ١\n"),
                put("/metrics/job/j", "m 0x1p3\n"),
            ],
        ),
        same(
            "text_timestamps",
            vec![
                put("/metrics/job/j", "m 1 1000\n"),
                put("/metrics/job/k", "m 1 \n"),
                put("/metrics/job/k", "m 1 abc\n"),
                put("/metrics/job/k", "m 1 -5\n"),
                put("/metrics/job/k", "m 1 1.5\n"),
                put("/metrics/job/k", "m 1 2 3\n"),
            ],
        ),
        same(
            "text_float_rendering",
            vec![put(
                "/metrics/job/j",
                "f{v=\"01\"} 1e3\nf{v=\"02\"} 100000\nf{v=\"03\"} 1000000\nf{v=\"04\"} 1234567\n\
                 f{v=\"05\"} 0.0001\nf{v=\"06\"} 0.00001\nf{v=\"07\"} 123456789012345678\n\
                 f{v=\"08\"} 1e-320\nf{v=\"09\"} 1.5e300\nf{v=\"10\"} -1\nf{v=\"11\"} 0.1\n\
                 f{v=\"12\"} 3.0000000000000004\nf{v=\"13\"} 5e-324\nf{v=\"14\"} 1.7976931348623157e308\n\
                 f{v=\"15\"} -0.000123\nf{v=\"16\"} 999999\nf{v=\"17\"} 12345.678\n",
            )],
        ),
        same(
            "text_noncontiguous_samples_merge",
            vec![put("/metrics/job/j", "a 1\nb 2\na{x=\"1\"} 3\n")],
        ),
        same(
            "text_families_without_samples_dropped",
            vec![put("/metrics/job/j", "# TYPE a gauge\n# HELP b x\nc 1\n")],
        ),
        same(
            "text_histogram",
            vec![
                put(
                    "/metrics/job/j",
                    "# HELP h A histogram.\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"1.0\"} 2\n\
                     h_bucket{le=\"1e3\"} 3\nh_sum 10\nh_count 3\n",
                ),
                put(
                    "/metrics/job/k/zz/1",
                    "# TYPE h2 histogram\nh2_bucket{a=\"x\",le=\"1\"} 1\nh2_bucket{a=\"x\",le=\"+Inf\"} 2\n\
                     h2_sum{a=\"x\"} 1.5\nh2_count{a=\"x\"} 2\n",
                ),
            ],
        ),
        same(
            "text_histogram_errors",
            vec![
                put(
                    "/metrics/job/j",
                    "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
                ),
                put(
                    "/metrics/job/j",
                    "# TYPE h histogram\nh_bucket 1\nh_count 1\n",
                ),
                put("/metrics/job/j", "# TYPE h histogram\nh 1\n"),
            ],
        ),
        same(
            "text_histogram_odd_counts",
            vec![put(
                "/metrics/job/j",
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1.5\nh_bucket{le=\"+Inf\"} 2\nh_count 2.5\nh_sum 1\n",
            )],
        ),
        same(
            "text_histogram_negative_counts",
            vec![put(
                "/metrics/job/j",
                "# TYPE h histogram\nh_bucket{le=\"1\"} -1\nh_count 1\nh_sum 1\n",
            )],
        ),
        same(
            "text_histogram_partial",
            vec![put(
                "/metrics/job/j",
                "# TYPE h histogram\nh_sum 1\n# TYPE g histogram\ng_count 4\n# TYPE b histogram\nb_bucket{le=\"2\"} 3\n",
            )],
        ),
        same(
            "text_summary",
            vec![
                put("/metrics/job/j", SUMMARY_S),
                put(
                    "/metrics/job/le/zz/1",
                    "# HELP sx S.\n# TYPE sx summary\nsx{quantile=\"0.5\"} 1\nsx{quantile=\"1e-1\"} 0\nsx_sum 3\nsx_count 4\n",
                ),
            ],
        ),
        same(
            "text_summary_errors",
            vec![
                put("/metrics/job/j", "# TYPE s summary\ns{quantile=\"x\"} 1\n"),
                put("/metrics/job/j", "# TYPE s summary\ns 1\n"),
                put("/metrics/job/j", "# TYPE s summary\ns_count 1.5\ns_sum 1\n"),
            ],
        ),
        same(
            "text_suffix_names_without_type_are_untyped",
            vec![put(
                "/metrics/job/j",
                "x_count 1\nx_sum 2\nx_bucket{le=\"1\"} 3\n# TYPE y gauge\ny_count 4\n",
            )],
        ),
        same(
            "text_counter",
            vec![put(
                "/metrics/job/j",
                "# HELP c Some help.\n# TYPE c counter\nc 5\n# TYPE c2 counter\nc2 -1\n# TYPE c_total counter\nc_total 1\n",
            )],
        ),
        same(
            "text_invalid_utf8_label_value",
            vec![
                put("/metrics/job/j", "ok 1\n"),
                put("/metrics/job/j", b"m{a=\"\xff\"} 1\n"),
            ],
        ),
        differs(
            "text_invalid_utf8_help",
            "HELP bytes that are not UTF-8 are kept with U+FFFD replacements (pgw stores text as UTF-8); 1.5.1 serves the raw bytes",
            vec![put("/metrics/job/j", b"# HELP m bad \xff help\nm 1\n")],
            PgwExpect::statuses(&[200]).has("# HELP m bad \u{fffd} help"),
        ),
        same(
            "text_empty_label_values",
            vec![put(
                "/metrics/job/j",
                "m{a=\"\"} 1\nm{a=\"\",b=\"x\"} 2\nn{instance=\"\"} 3\n",
            )],
        ),
    ]
}

/// §6: the consistency check.
fn consistency() -> Vec<Scenario> {
    vec![
        same(
            "duplicate_series_in_one_push",
            vec![
                put("/metrics/job/j", "m 1\nm 2\n"),
                put(
                    "/metrics/job/k",
                    "m{a=\"1\",b=\"2\"} 1\nm{b=\"2\",a=\"1\"} 2\n",
                ),
            ],
        ),
        same(
            "duplicate_series_after_sanitising",
            vec![
                put("/metrics/job/j", "m{job=\"x\"} 1\nm 2\n"),
                put("/metrics/job/k/a/1", "m{a=\"2\"} 1\nm 2\n"),
                put("/metrics/job/l", "m{instance=\"\"} 1\nm 2\n"),
            ],
        ),
        same(
            "duplicate_series_across_groups",
            vec![
                put("/metrics/job/x", "m{a=\"1\"} 1\n"),
                put("/metrics/job/x/a/1", "m 1\n"),
                put("/metrics/job/y", "n{instance=\"i\"} 1\n"),
                put("/metrics/job/y/instance/i", "n 1\n"),
            ],
        ),
        same(
            "type_conflict_across_groups",
            vec![
                put("/metrics/job/j1", "# TYPE m counter\nm 1\n"),
                put("/metrics/job/j2", "# TYPE m gauge\nm 2\n"),
                put("/metrics/job/j3", "m 3\n"),
                post("/metrics/job/j1", "# TYPE m gauge\nm 1\n"),
            ],
        ),
        same(
            "type_conflict_resolved_by_replacing",
            vec![
                put("/metrics/job/j1", "# TYPE m counter\nm 1\n"),
                put("/metrics/job/j1", "# TYPE m gauge\nm 1\n"),
                put("/metrics/job/j2", "# TYPE m gauge\nm 2\n"),
            ],
        ),
        same(
            "suffix_collision_summary",
            vec![
                put("/metrics/job/j1", SUMMARY_S),
                put("/metrics/job/j2", "s_count 1\n"),
                put("/metrics/job/j3", "s_sum 1\n"),
                put("/metrics/job/j4", "t_sum 1\n"),
                put(
                    "/metrics/job/j5",
                    "# TYPE t summary\nt{quantile=\"0.5\"} 1\nt_sum 3\nt_count 4\n",
                ),
            ],
        ),
        same(
            "suffix_collision_histogram",
            vec![
                put("/metrics/job/j1", HISTOGRAM_H),
                put("/metrics/job/j2", "h_bucket 1\n"),
                put("/metrics/job/j3", "h_count 1\n"),
                put("/metrics/job/j4", "# TYPE h_sum gauge\nh_sum 1\n"),
            ],
        ),
        same(
            "suffix_collision_within_one_push",
            vec![
                put("/metrics/job/j", format!("{SUMMARY_S}s_count 1\n")),
                put(
                    "/metrics/job/k",
                    format!("{HISTOGRAM_H}# TYPE h_bucket gauge\nh_bucket 1\n"),
                ),
            ],
        ),
        same(
            "summary_next_to_bucket_suffix_allowed",
            vec![
                put("/metrics/job/j1", SUMMARY_S),
                put("/metrics/job/j2", "s_bucket 1\n"),
            ],
        ),
        same(
            "double_underscore_body_label",
            vec![put("/metrics/job/j", "m{__a=\"x\"} 1\n")],
        ),
        same(
            "own_metric_help_conflict",
            vec![
                put("/metrics/job/warmup", "w 1\n"),
                put(
                    "/metrics/job/j",
                    "# TYPE pushgateway_http_requests_total counter\npushgateway_http_requests_total{code=\"x\"} 1\n",
                ),
            ],
        ),
        differs(
            "own_metric_type_conflict",
            "pgw exposes no Go runtime metrics, so go_* names are free to push; its own process_* and pushgateway_* names keep their types",
            vec![
                put(
                    "/metrics/job/j",
                    "# TYPE go_goroutines counter\ngo_goroutines 1\n",
                ),
                put(
                    "/metrics/job/k",
                    "# TYPE process_cpu_seconds_total gauge\nprocess_cpu_seconds_total 1\n",
                ),
                put(
                    "/metrics/job/l",
                    "# TYPE pushgateway_build_info counter\npushgateway_build_info 1\n",
                ),
            ],
            PgwExpect::statuses(&[200, 400, 400])
                .prefix(1, INCONSISTENT)
                .prefix(2, INCONSISTENT),
        ),
        same(
            "own_metric_same_type_accepted",
            vec![
                put("/metrics/job/warmup", "w 1\n"),
                put(
                    "/metrics/job/j",
                    "# HELP pushgateway_build_info custom\n# TYPE pushgateway_build_info gauge\npushgateway_build_info{x=\"y\"} 1\n",
                ),
                put(
                    "/metrics/job/k",
                    "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total{x=\"y\"} 1\n",
                ),
                put(
                    "/metrics/job/l",
                    "# TYPE go_gc_duration_seconds summary\ngo_gc_duration_seconds{x=\"y\",quantile=\"0.5\"} 1\ngo_gc_duration_seconds_sum{x=\"y\"} 1\ngo_gc_duration_seconds_count{x=\"y\"} 1\n",
                ),
            ],
        ),
        same(
            "own_metric_suffix_collision",
            vec![put(
                "/metrics/job/j",
                "pushgateway_http_push_size_bytes_count{x=\"y\"} 1\n",
            )],
        ),
        same(
            "inconsistent_push_leaves_state",
            vec![
                put("/metrics/job/j", "a 1\nb 1\n"),
                put("/metrics/job/j", "a 1\na 2\n"),
                put("/metrics/job/k", "# TYPE a counter\na 1\n"),
            ],
        ),
    ]
}

/// §5.1: `--push.disable-consistency-check` (202, no check, asynchronous).
fn unchecked_mode() -> Vec<Scenario> {
    vec![
        unchecked(
            "unchecked_put_post_delete",
            vec![
                put("/metrics/job/j", "a 1\n"),
                post("/metrics/job/j", "b 2\n"),
                put("/metrics/job/k/instance/i", "c 3\n"),
                del("/metrics/job/k/instance/i"),
                post("/metrics/job/l", "d 4\n"),
            ],
        ),
        unchecked(
            "unchecked_type_conflict_delete_heals",
            vec![
                put("/metrics/job/j1", "# TYPE m counter\nm 1\n"),
                put("/metrics/job/j2", "# TYPE m gauge\nm 2\n"),
                barrier(),
                get("/metrics"),
                del("/metrics/job/j2"),
            ],
        ),
        unchecked(
            "unchecked_inconsistent_store_serves_500",
            vec![
                put("/metrics/job/j1", "# TYPE m counter\nm 1\n"),
                put("/metrics/job/j2", "# TYPE m gauge\nm 2\n"),
            ],
        ),
        unchecked(
            "unchecked_duplicate_series_in_push",
            vec![
                put("/metrics/job/j", "m 1\nm 2\n"),
                put("/metrics/job/k", "n 1\n"),
            ],
        ),
        unchecked(
            "unchecked_timestamps_dropped",
            vec![
                put("/metrics/job/j", "a 1\n"),
                put("/metrics/job/j", "a 2 1000\n"),
                put("/metrics/job/k", "b 2 1000\n"),
            ],
        ),
        unchecked(
            "unchecked_parse_errors_still_400",
            vec![
                put("/metrics/job/j", "m 1"),
                put("/metrics/job/j", "m{1a=\"x\"} 1\n"),
                put("/metrics/job/j", [0x05u8, 0x0a]).h("Content-Type", PB),
                put("/metrics/job/j", "m 1\n").h("Content-Encoding", "gzip"),
            ],
        ),
        unchecked(
            "unchecked_url_errors_still_400",
            vec![
                put("/metrics/job/j/a", "m 1\n"),
                put("/metrics/job/j/1a/b", "m 1\n"),
                put("/metrics/job@base64/=", "m 1\n"),
                put("/metrics/job/j/a@base64/fn5+", "m 1\n"),
                del("/metrics/job/j/a"),
            ],
        ),
        unchecked(
            "unchecked_instance_collision_then_delete",
            vec![
                put("/metrics/job/x", "m 1\n"),
                put("/metrics/job/x/instance@base64/=", "m 1\n"),
                barrier(),
                get("/metrics"),
                del("/metrics/job/x/instance@base64/="),
            ],
        ),
        unchecked(
            "unchecked_suffix_collision",
            vec![
                put("/metrics/job/j1", SUMMARY_S),
                put("/metrics/job/j2", "s_count 1\n"),
            ],
        ),
        unchecked(
            "unchecked_invalid_body_label_name",
            vec![put("/metrics/job/j", "m{__a=\"x\"} 1\n")],
        ),
        unchecked(
            "unchecked_empty_bodies",
            vec![
                put("/metrics/job/j", "a 1\n"),
                post("/metrics/job/j", ""),
                put("/metrics/job/k", "b 1\n"),
                put("/metrics/job/k", ""),
            ],
        ),
        unchecked(
            "unchecked_protobuf_type_mismatch",
            vec![pb_put(
                "/metrics/job/j",
                &[family("m", None, Gauge, vec![counter(&[], 1.0)])],
            )],
        ),
        unchecked(
            "unchecked_wipe",
            vec![
                put("/metrics/job/a", "m 1\n"),
                put("/metrics/job/b", "m 2\n"),
                put("/api/v1/admin/wipe", ""),
                barrier(),
                put("/metrics/job/c", "m 3\n"),
            ],
        ),
    ]
}

fn help_is_deterministic(o: &Outcome) -> Result<(), String> {
    let first = o.pushed_lines();
    let helps: Vec<&String> = first
        .iter()
        .filter(|l| l.starts_with("# HELP m "))
        .collect();
    if helps.len() > 1 {
        return Err(format!("more than one HELP line for m: {helps:?}"));
    }
    if let Some(h) = helps.first()
        && !["# HELP m help one", "# HELP m help two"].contains(&h.as_str())
    {
        return Err(format!("unexpected HELP line {h:?}"));
    }
    // Scrape repeatedly: a random choice (the reference's Q4) shows up quickly.
    let addr = o.addr;
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut bodies = Vec::new();
            for _ in 0..20 {
                let r = crate::support::get(addr, "/metrics", std::time::Duration::from_secs(20))
                    .await?;
                bodies.push(crate::pushed_part(&r.text()));
            }
            Ok::<_, String>(bodies)
        })
    });
    let bodies = handle
        .join()
        .map_err(|_| "scrape thread panicked".to_string())??;
    for b in bodies {
        if b != first {
            return Err(format!(
                "/metrics changed between scrapes of an unchanged store:\n{first:?}\nvs\n{b:?}"
            ));
        }
    }
    Ok(())
}

/// Deliberate differences (spec §13, design.md "Where upstream is the spec"). These run
/// against pgw only.
fn intended_differences() -> Vec<Scenario> {
    vec![
        differs(
            "q1_invalid_base64_job_put",
            "Q1: an invalid job@base64 returns 400 and leaves the route usable; 1.5.1 leaves the \
             route's mutex locked and hangs that route forever (never sent to the reference)",
            vec![
                put("/metrics/job@base64/a*b", "m 1\n"),
                put("/metrics/job@base64/a*b/x/y", "m 1\n"),
                put("/metrics/job@base64/Zm9v", "m 1\n"),
                put("/metrics/job@base64/Zm9v/x/y", "m 1\n"),
            ],
            PgwExpect::statuses(&[400, 400, 200, 200])
                .prefix(0, "invalid base64 encoding")
                .prefix(1, "invalid base64 encoding")
                .has("m{instance=\"\",job=\"foo\"} 1")
                .has("m{instance=\"\",job=\"foo\",x=\"y\"} 1")
                .wedges_reference(),
        ),
        differs(
            "q1_invalid_base64_job_post_delete",
            "Q1 on the POST and DELETE routes (never sent to the reference)",
            vec![
                post("/metrics/job@base64/!", "m 1\n"),
                del("/metrics/job@base64/!"),
                del("/metrics/job@base64/a*b/x/y"),
                post("/metrics/job@base64/YmFy", "m 2\n"),
                post("/metrics/job@base64/YmF6/x/y", "m 3\n"),
                del("/metrics/job@base64/YmF6/x/y"),
            ],
            PgwExpect::statuses(&[400, 400, 400, 200, 200, 202])
                .prefix(0, "invalid base64 encoding")
                .prefix(1, "invalid base64 encoding")
                .prefix(2, "invalid base64 encoding")
                .has("m{instance=\"\",job=\"bar\"} 2")
                .lacks("job=\"baz\"")
                .wedges_reference(),
        ),
        differs(
            "q2_failed_collision_does_not_poison",
            "Q2: a push rejected for colliding with {job=x} (as {job=x,instance=\"\"}) must not \
             create a failure-marker group whose synthetic series collide; 1.5.1 creates it and \
             every later push fails and every scrape is 500 until it is deleted",
            vec![
                put("/metrics/job/x", "m 1\n"),
                put("/metrics/job/x/instance@base64/=", "m 1\n"),
                put("/metrics/job/y", "n 1\n"),
                get("/metrics"),
            ],
            PgwExpect::statuses(&[200, 400, 200, 200])
                .prefix(1, INCONSISTENT)
                .has("m{instance=\"\",job=\"x\"} 1")
                .has("n{instance=\"\",job=\"y\"} 1"),
        ),
        differs(
            "q2_failed_collision_other_family",
            "Q2: {job=x,instance=\"\"} collides with {job=x} through the synthetic series alone; \
             the push is rejected without poisoning the store",
            vec![
                put("/metrics/job/x", "m 1\n"),
                put("/metrics/job/x/instance@base64/=", "other 1\n"),
                post("/metrics/job/x", "m 2\n"),
            ],
            PgwExpect::statuses(&[200, 400, 200])
                .prefix(1, INCONSISTENT)
                .has("m{instance=\"\",job=\"x\"} 2")
                .lacks("other"),
        ),
        differs(
            "q3_non_utf8_job",
            "Q3: a job that is not UTF-8 (%FF) is rejected with 400 without poisoning the \
             store; 1.5.1 answers 400 and then fails every push and scrape",
            vec![
                put("/metrics/job/%FF", "m 1\n"),
                put("/metrics/job/ok", "m 1\n"),
                get("/metrics"),
            ],
            PgwExpect::statuses(&[400, 200, 200]).has("m{instance=\"\",job=\"ok\"} 1"),
        ),
        differs(
            "q3_non_utf8_label_value",
            "Q3 with a grouping label value (%FF) instead of the job",
            vec![
                put("/metrics/job/j/a/%FF", "m 1\n"),
                post("/metrics/job/j/a/%C3%28", "m 1\n"),
                put("/metrics/job/ok", "m 1\n"),
            ],
            PgwExpect::statuses(&[400, 400, 200]).has("m{instance=\"\",job=\"ok\"} 1"),
        ),
        differs(
            "q3_non_utf8_base64_label_value",
            "Q3 with a base64 label value that decodes to invalid UTF-8 (0xFF)",
            vec![
                put("/metrics/job/j/a@base64/_w", "m 1\n"),
                put("/metrics/job@base64/_w", "m 1\n"),
                put("/metrics/job/ok", "m 1\n"),
            ],
            PgwExpect::statuses(&[400, 400, 200]).has("m{instance=\"\",job=\"ok\"} 1"),
        ),
        differs(
            "q6_protobuf_invalid_family_name",
            "Q6: protobuf family names are validated (400); 1.5.1 stores `pb-bad` and renders an \
             unparsable exposition",
            vec![
                pb_put(
                    "/metrics/job/j",
                    &[family("pb-bad", None, Gauge, vec![gauge(&[], 1.0)])],
                ),
                put("/metrics/job/ok", "m 1\n"),
            ],
            PgwExpect::statuses(&[400, 200])
                .has("m{instance=\"\",job=\"ok\"} 1")
                .lacks("pb-bad"),
        ),
        differs(
            "q6_protobuf_non_ascii_family_name",
            "Q6 with a non-ASCII protobuf family name",
            vec![
                pb_put(
                    "/metrics/job/j",
                    &[family("mé", None, Gauge, vec![gauge(&[], 1.0)])],
                ),
                pb_put(
                    "/metrics/job/k",
                    &[family("", None, Gauge, vec![gauge(&[], 1.0)])],
                ),
                put("/metrics/job/ok", "m 1\n"),
            ],
            PgwExpect::statuses(&[400, 400, 200])
                .has("m{instance=\"\",job=\"ok\"} 1")
                .lacks("mé"),
        ),
        differs(
            "help_chosen_deterministically",
            "Q4: when groups disagree on HELP, pgw picks one by a fixed rule, the same on every \
             scrape and replica; 1.5.1 picks at random per scrape",
            vec![
                put("/metrics/job/j1", "# HELP m help one\nm 1\n"),
                put("/metrics/job/j2", "# HELP m help two\nm 2\n"),
                put("/metrics/job/j3", "m 3\n"),
            ],
            PgwExpect::statuses(&[200, 200, 200])
                .has("m{instance=\"\",job=\"j1\"} 1")
                .has("m{instance=\"\",job=\"j3\"} 3")
                .check(help_is_deterministic)
                .reference_random(),
        ),
        differs(
            "gzip_content_encoding_case_insensitive",
            "pgw accepts `Content-Encoding: GZIP` as upstream does since 1.6.0; 1.5.1 compares \
             case-sensitively and parses the raw gzip bytes as text (400)",
            vec![
                put("/metrics/job/j", bodies::gzip(b"m 1\n")).h("Content-Encoding", "GZIP"),
                post("/metrics/job/j", bodies::gzip(b"n 2\n")).h("Content-Encoding", "Gzip"),
            ],
            PgwExpect::statuses(&[200, 200])
                .has("m{instance=\"\",job=\"j\"} 1")
                .has("n{instance=\"\",job=\"j\"} 2"),
        ),
    ]
}
