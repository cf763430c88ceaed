//! Existing push clients work unchanged: the real `prometheus_client` Python library (from
//! PyPI, installed by `.ci/run` from tests/requirements.txt) pushes to a real `pgw` process.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Kind, Proc, get};
use tempfile::TempDir;

fn python() -> PathBuf {
    let py = support::test_python();
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} has no prometheus_client: run tests/run (it installs tests/requirements.txt into a virtual environment, target/test-venv, and sets PGW_TEST_PYTHON)",
        py.display()
    );
    py
}

fn step(gateway: &str, step: &str) -> (bool, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/push.py");
    let out = Command::new(python())
        .arg(&script)
        .args([gateway, step])
        .output()
        .expect("run push.py");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn metrics(p: &Proc) -> String {
    get(p.addr, "/metrics", Duration::from_secs(10))
        .await
        .expect("scrape")
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_client_python_pushes_unchanged() {
    let root = TempDir::new().unwrap();
    let p = Proc::start_server(
        Kind::Pgw,
        "pgw",
        &root.path().join("data"),
        root.path(),
        &[],
    )
    .await;
    let gw = p.addr.to_string();

    let (ok, err) = step(&gw, "push");
    assert!(ok, "push_to_gateway failed: {err}");
    let body = metrics(&p).await;
    for line in [
        "job_last_success_unixtime{instance=\"host-1\",job=\"batch\",stage=\"load\"} 1",
        "job_records_processed_total{instance=\"host-1\",job=\"batch\"} 1",
        "job_duration_seconds_bucket{instance=\"host-1\",job=\"batch\",le=\"1\"} 1",
        "job_duration_seconds_bucket{instance=\"host-1\",job=\"batch\",le=\"+Inf\"} 2",
        "job_duration_seconds_count{instance=\"host-1\",job=\"batch\"} 2",
        "job_batch_size_sum{instance=\"host-1\",job=\"batch\"} 12",
        "# TYPE job_records_processed_total counter",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }

    let (ok, err) = step(&gw, "pushadd");
    assert!(ok, "pushadd_to_gateway failed: {err}");
    let body = metrics(&p).await;
    assert!(
        body.contains("job_extra{instance=\"host-1\",job=\"batch\"} 7"),
        "{body}"
    );
    assert!(
        body.contains("job_records_processed_total{instance=\"host-1\",job=\"batch\"} 1"),
        "POST keeps other families: {body}"
    );

    let (ok, err) = step(&gw, "push_gzip");
    assert!(ok, "gzip push failed: {err}");
    assert!(
        metrics(&p)
            .await
            .contains("job_records_processed_total{instance=\"\",job=\"gz\"} 2")
    );

    let (ok, err) = step(&gw, "push_base64");
    assert!(ok, "base64 grouping key push failed: {err}");
    let body = metrics(&p).await;
    assert!(
        body.contains("job_records_processed_total{dir=\"/var/lib\",empty=\"\",instance=\"\",job=\"path/job\"} 3"),
        "{body}"
    );

    let (ok, err) = step(&gw, "conflict");
    assert!(!ok, "a type conflict must be refused");
    assert!(err.contains("400"), "the library reports the 400: {err}");

    let (ok, err) = step(&gw, "delete");
    assert!(ok, "delete_from_gateway failed: {err}");
    let body = metrics(&p).await;
    assert!(
        !body.contains("job=\"batch\""),
        "deleted group still served: {body}"
    );
}
