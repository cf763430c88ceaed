//! Content-Encoding of requests and responses, format negotiation, and the body limit.

use crate::harness::{Server, assert_http_error_prefix, gunzip, gzip};

const PROTO: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// A gzipped push is decoded; a gzip header without a gzip body is 400 on any non-API
/// route, before routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_requests() {
    let s = Server::start(&[]).await;
    let gz = [("Content-Encoding", "gzip")];
    let r = s.req("PUT", "/metrics/job/j", &gz, &gzip(b"m 1\n")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .req(
            "POST",
            "/metrics/job/j",
            &[("Content-Encoding", "GZIP")],
            &gzip(b"n 2\n"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = s.metrics_text().await;
    assert!(text.contains("m{instance=\"\",job=\"j\"} 1\n"), "{text}");
    assert!(text.contains("n{instance=\"\",job=\"j\"} 2\n"), "{text}");

    let r = s.req("GET", "/metrics", &gz, b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "EOF\n");
    let r = s.req("PUT", "/metrics/job/j", &gz, b"m 1\n").await;
    assert_eq!(r.status, 400);
    let r = s.req("DELETE", "/metrics/job/j", &gz, b"").await;
    assert_eq!(r.status, 400);
    let r = s
        .req("PUT", "/metrics/job/j", &gz, b"not gzip at all\n")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "gzip: invalid header\n");
    // Other encodings are ignored.
    let r = s
        .req(
            "PUT",
            "/metrics/job/k",
            &[("Content-Encoding", "identity")],
            b"m 3\n",
        )
        .await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

/// The exposition is gzipped when asked for, and delimited protobuf when `Accept` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_negotiation() {
    let s = Server::start(&[]).await;
    assert_eq!(
        s.put("/metrics/job/j", "# TYPE m gauge\nm 1\n")
            .await
            .status,
        200
    );

    let r = s.get("/metrics").await;
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(r.header("content-encoding"), None);

    let r = s
        .req(
            "GET",
            "/metrics",
            &[("Accept-Encoding", "deflate, gzip;q=1.0")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let text = String::from_utf8(gunzip(&r.body)).expect("utf-8");
    assert!(text.contains("m{instance=\"\",job=\"j\"} 1\n"), "{text}");

    let r = s.req("GET", "/metrics", &[("Accept", PROTO)], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some(
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
        )
    );
    let fams = pgw_core::delimited::decode(&r.body).expect("delimited protobuf");
    let m = fams.iter().find(|f| f.name() == "m").expect("family m");
    assert_eq!(m.metric.len(), 1);
    assert!(fams.iter().any(|f| f.name() == "push_time_seconds"));

    let r = s
        .req(
            "GET",
            "/metrics",
            &[("Accept", "application/openmetrics-text; version=1.0.0")],
            b"",
        )
        .await;
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    s.stop().await;
}

/// Bodies above `--push.max-body-bytes` are 413: announced by Content-Length, streamed
/// chunked, or only after gzip decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit() {
    let s = Server::start(&["--push.max-body-bytes=1024"]).await;
    let ok = format!("# {}\nm 1\n", "x".repeat(900)); // 907 bytes
    assert_eq!(s.put("/metrics/job/j", &ok).await.status, 200);

    let big = format!("# {}\nm 2\n", "x".repeat(4096));
    let r = s.put("/metrics/job/j", &big).await;
    assert_http_error_prefix(&r, 413, "request body exceeds the limit of 1024 bytes");

    let chunk = vec![b'#'; 600];
    let (status, body) = s
        .chunked("PUT", "/metrics/job/j", &[&chunk, &chunk, &chunk])
        .await;
    assert_eq!(status, 413, "{body}");

    let bomb = gzip(format!("# {}\n", "x".repeat(100_000)).as_bytes());
    assert!(bomb.len() < 1024);
    let r = s
        .req(
            "PUT",
            "/metrics/job/j",
            &[("Content-Encoding", "gzip")],
            &bomb,
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Nothing of the refused pushes was stored.
    assert!(
        s.metrics_text()
            .await
            .contains("m{instance=\"\",job=\"j\"} 1\n")
    );
    s.stop().await;
}
