//! Flags: refused upstream flags, the self-metrics path, self-metrics content.

use crate::harness::{Server, config};

/// `--persistence.file` and `--persistence.interval` refuse to start, pointing to
/// `--storage.path`; `run` refuses them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_flags_are_refused() {
    for args in [
        &["--persistence.file=/var/lib/pushgateway.data"][..],
        &["--persistence.interval=5m"][..],
        &["--persistence.file", ""][..],
    ] {
        let err = config(args)
            .validate()
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains("--storage.path"), "{err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("--storage.path={}", dir.path().display());
    let c = config(&[&storage, "--persistence.file=/x"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = pgw_server::run(c, listener, std::future::pending())
        .await
        .expect_err("run must refuse");
    assert!(format!("{err:#}").contains("--storage.path"), "{err:#}");
}

/// `--web.config.file` is accepted (issue 10: TLS and basic auth, tested in tests/security);
/// socket activation is refused with a pointer to the alternative.
#[test]
fn unsupported_web_flags_are_refused() {
    assert!(config(&["--web.config.file=web.yml"]).validate().is_ok());
    let err = config(&["--web.systemd-socket"])
        .validate()
        .expect_err("refused")
        .to_string();
    assert!(err.contains("not supported"), "{err}");
}

/// By default the self-metrics are part of the telemetry path, with upstream names; the
/// request counter counts handled requests but not scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_metrics_on_telemetry_path() {
    let s = Server::start(&[]).await;
    assert_eq!(s.put("/metrics/job/j", "m 1\n").await.status, 200);
    assert_eq!(s.put("/metrics/job/j/a", "m 1\n").await.status, 400);
    let text = s.metrics_text().await;
    let text2 = s.metrics_text().await;
    for needle in [
        "# TYPE pushgateway_build_info gauge\npushgateway_build_info{branch=",
        "pushgateway_http_requests_total{code=\"200\",handler=\"push\",method=\"put\"} 1\n",
        "pushgateway_http_requests_total{code=\"400\",handler=\"push\",method=\"put\"} 1\n",
        "pushgateway_http_requests_total{code=\"200\",handler=\"ready\",method=\"get\"} ",
        "# TYPE pushgateway_http_push_duration_seconds summary\n",
        "pushgateway_http_push_duration_seconds{method=\"put\",quantile=\"0.5\"} ",
        "pushgateway_http_push_size_bytes_count{method=\"put\"} 2\n",
        "# TYPE process_cpu_seconds_total counter\n",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text2.contains("handler=\"metrics\""),
        "scrapes are not counted"
    );
    s.stop().await;
}

/// With `--web.self-metrics-path` the node's metrics move there and the telemetry path
/// holds only pushed metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_metrics_path() {
    let s = Server::start(&["--web.self-metrics-path=/self"]).await;
    assert_eq!(s.put("/metrics/job/j", "m 1\n").await.status, 200);
    let text = s.metrics_text().await;
    assert!(!text.contains("pushgateway_"), "{text}");
    assert!(!text.contains("process_"), "{text}");
    assert!(text.contains("m{instance=\"\",job=\"j\"} 1\n"), "{text}");
    let r = s.get("/self").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let own = r.text();
    assert!(own.contains("pushgateway_build_info{"), "{own}");
    assert!(
        own.contains(
            "pushgateway_http_requests_total{code=\"200\",handler=\"push\",method=\"put\"} 1\n"
        ),
        "{own}"
    );
    assert!(!own.contains("push_time_seconds"), "{own}");
    s.stop().await;
}
