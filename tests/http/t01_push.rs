//! Pushes and deletes: status codes, URL errors, body errors, the consistency check.

use crate::harness::{Server, assert_http_error, assert_http_error_prefix, b64};

/// PUT and POST answer 200 with an empty body once applied, DELETE 202; PUT replaces the
/// group, POST replaces only the pushed families, DELETE removes the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_post_delete() {
    let s = Server::start(&[]).await;
    let r = s.put("/metrics/job/j", "m 1\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-type"), None);
    let text = s.metrics_text().await;
    assert!(text.contains("m{instance=\"\",job=\"j\"} 1\n"), "{text}");
    assert!(
        text.contains("push_time_seconds{instance=\"\",job=\"j\"} "),
        "{text}"
    );
    assert!(
        text.contains("push_failure_time_seconds{instance=\"\",job=\"j\"} 0\n"),
        "{text}"
    );

    assert_eq!(s.post("/metrics/job/j", "n 2\n").await.status, 200);
    let text = s.metrics_text().await;
    assert!(text.contains("m{instance=\"\",job=\"j\"} 1\n"), "{text}");
    assert!(text.contains("n{instance=\"\",job=\"j\"} 2\n"), "{text}");

    assert_eq!(s.put("/metrics/job/j", "n 3\n").await.status, 200);
    let text = s.metrics_text().await;
    assert!(!text.contains("\nm{"), "PUT must replace the group: {text}");
    assert!(text.contains("n{instance=\"\",job=\"j\"} 3\n"), "{text}");

    let r = s.delete("/metrics/job/j").await;
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    let text = s.metrics_text().await;
    assert!(!text.contains("job=\"j\""), "{text}");
    // Deleting an unknown group is fine.
    assert_eq!(s.delete("/metrics/job/unknown/a/b").await.status, 202);
    s.stop().await;
}

/// Grouping labels from the URL, `@base64` job and values, and the empty value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_key_forms() {
    let s = Server::start(&[]).await;
    let path = format!(
        "/metrics/job@base64/{}/instance@base64/=/zone/eu",
        b64("a/b")
    );
    let r = s.put(&path, "m 1\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.put("/metrics/job/j/instance/i%20x", "m 2\n").await.status,
        200
    );
    let text = s.metrics_text().await;
    assert!(
        text.contains("m{instance=\"\",job=\"a/b\",zone=\"eu\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("m{instance=\"i x\",job=\"j\"} 2\n"), "{text}");
    // The path job wins over a `job` label pair.
    assert_eq!(s.put("/metrics/job/k/job/other", "m 3\n").await.status, 200);
    let text = s.metrics_text().await;
    assert!(text.contains("m{instance=\"\",job=\"k\"} 3\n"), "{text}");
    s.stop().await;
}

/// Malformed push and delete URLs are 400 with the reference's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_errors() {
    let s = Server::start(&[]).await;
    let r = s.put("/metrics/job/j/a", "m 1\n").await;
    assert_http_error(&r, 400, "odd number of components in label string \"/a\"");
    let r = s.put("/metrics/job/j/a/b/", "m 1\n").await;
    assert_http_error(
        &r,
        400,
        "odd number of components in label string \"/a/b/\"",
    );
    // `%2F` is decoded before routing: a separator.
    let r = s.put("/metrics/job/j%2Fk", "m 1\n").await;
    assert_http_error(&r, 400, "odd number of components in label string \"/k\"");
    let r = s.put("/metrics/job/j/__x/y", "m 1\n").await;
    assert_http_error(&r, 400, "improper label name \"__x\"");
    let r = s.put("/metrics/job/j/a-b/y", "m 1\n").await;
    assert_http_error(&r, 400, "improper label name \"a-b\"");
    let r = s.put("/metrics/job@base64/!!!", "m 1\n").await;
    assert_http_error_prefix(&r, 400, "invalid base64 encoding in job name");
    let r = s.put("/metrics/job@base64/=", "m 1\n").await;
    assert_http_error(&r, 400, "job name is required");
    let r = s.put("/metrics/job/j/a@base64/!!", "m 1\n").await;
    assert_http_error_prefix(&r, 400, "invalid base64 encoding for label a=");
    let r = s.delete("/metrics/job/j/a").await;
    assert_http_error(&r, 400, "odd number of components in label string \"/a\"");
    let r = s.post("/metrics/job/j/__x/y", "m 1\n").await;
    assert_eq!(r.status, 400);
    // Nothing was stored by any of them.
    assert!(!s.metrics_text().await.contains("push_time_seconds"));
    s.stop().await;
}

/// Unparsable bodies are 400 and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_errors() {
    let s = Server::start(&[]).await;
    let r = s.put("/metrics/job/j", "m 1").await;
    assert_http_error_prefix(&r, 400, "text format parsing error in line 1:");
    let r = s.put("/metrics/job/j", "m{a=\"b} 1\n").await;
    assert_http_error_prefix(&r, 400, "text format parsing error in line 1:");
    let r = s.post("/metrics/job/j", "# TYPE m nonsense\nm 1\n").await;
    assert_http_error_prefix(&r, 400, "text format parsing error in line 1:");
    let r = s
        .req(
            "PUT",
            "/metrics/job/j",
            &[(
                "Content-Type",
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            )],
            &[0x20, 0x0a],
        )
        .await;
    assert_eq!(r.status, 400, "truncated protobuf: {}", r.text());
    assert!(!s.metrics_text().await.contains("job=\"j\""));
    s.stop().await;
}

/// The consistency check runs in the replicated apply: an inconsistent push is 400 with
/// the reference's message prefix; a push with timestamps too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_check() {
    let s = Server::start(&[]).await;
    assert_eq!(
        s.put("/metrics/job/a", "# TYPE m counter\nm 1\n")
            .await
            .status,
        200
    );
    let r = s.put("/metrics/job/b", "# TYPE m gauge\nm 1\n").await;
    assert_http_error_prefix(
        &r,
        400,
        "pushed metrics are invalid or inconsistent with existing metrics: ",
    );
    let r = s.put("/metrics/job/c", "x 1 1000\n").await;
    assert_http_error_prefix(
        &r,
        400,
        "pushed metrics are invalid or inconsistent with existing metrics: ",
    );
    assert!(
        r.text().contains("must not have timestamps"),
        "{}",
        r.text()
    );
    let text = s.metrics_text().await;
    assert!(text.contains("# TYPE m counter\n"), "{text}");
    s.stop().await;
}

/// A delimited-protobuf push is accepted and exposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_push() {
    use pgw_core::pb;
    let s = Server::start(&[]).await;
    let fam = pb::MetricFamily {
        name: Some("pm".into()),
        help: Some("from protobuf".into()),
        r#type: Some(pb::MetricType::Gauge as i32),
        metric: vec![pb::Metric {
            gauge: Some(pb::Gauge { value: Some(4.5) }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = pgw_core::delimited::encode(&[fam]);
    let r = s
        .req(
            "PUT",
            "/metrics/job/p",
            &[(
                "Content-Type",
                "application/vnd.google.protobuf; encoding=delimited; proto=io.prometheus.client.MetricFamily",
            )],
            &body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = s.metrics_text().await;
    assert!(
        text.contains(
            "# HELP pm from protobuf\n# TYPE pm gauge\npm{instance=\"\",job=\"p\"} 4.5\n"
        ),
        "{text}"
    );
    s.stop().await;
}

/// With `--push.disable-consistency-check` pushes answer 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchecked_pushes_answer_202() {
    let s = Server::start(&["--push.disable-consistency-check"]).await;
    let r = s.put("/metrics/job/j", "m 1\n").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(s.post("/metrics/job/j", "n 1\n").await.status, 202);
    assert!(
        s.metrics_text()
            .await
            .contains("n{instance=\"\",job=\"j\"} 1\n")
    );
    s.stop().await;
}

/// Unchecked pushes can make the store inconsistent; the whole scrape is then 500 with
/// the reference's message (spec §8.5), and the API still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_store_fails_the_scrape() {
    let s = Server::start(&["--push.disable-consistency-check"]).await;
    assert_eq!(
        s.put("/metrics/job/a", "# TYPE m counter\nm 1\n")
            .await
            .status,
        202
    );
    assert_eq!(
        s.put("/metrics/job/b", "# TYPE m gauge\nm 1\n")
            .await
            .status,
        202
    );
    let r = s.get("/metrics").await;
    assert_http_error_prefix(&r, 500, "An error has occurred while serving metrics:\n\n");
    assert!(r.text().contains(" error(s) occurred:\n* "), "{}", r.text());
    assert_eq!(s.get("/api/v1/metrics").await.status, 200);
    assert_eq!(s.delete("/metrics/job/b").await.status, 202);
    assert_eq!(s.get("/metrics").await.status, 200);
    s.stop().await;
}
