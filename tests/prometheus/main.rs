//! The real Prometheus server (Debian package `prometheus`) scrapes a 3-node pgw cluster
//! the way deploy/prometheus/prometheus.yml shows: every replica, `honor_labels: true`, a
//! `replica` label per target, deduplicated at query time, while clients push through a load
//! balancer (Debian's HAProxy with deploy/haproxy/haproxy.cfg). Also checks that file with
//! `promtool`.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{request, start_cluster, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn tool(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: apt-get install prometheus (CI installs it)",
        p.display()
    );
    p
}

#[test]
fn the_example_config_is_valid() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/prometheus.yml");
    let out = Command::new(tool("promtool"))
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_replica_and_deduplicates() {
    let c = start_cluster(3, &["--web.self-metrics-path=/self-metrics"]).await;
    // One push, through one node.
    let body = "# TYPE batch_last_success gauge\nbatch_last_success{stage=\"load\"} 42\n";
    let r = request(
        c.nodes[1].addr,
        "PUT",
        "/metrics/job/nightly/instance/db-1",
        &[],
        body.as_bytes(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let dir = c.root.path().join("prometheus");
    let targets: Vec<String> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "      - targets: ['{}']\n        labels: {{replica: '{}'}}\n",
                n.addr,
                i + 1
            )
        })
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pushgateway-replicas\n    honor_labels: true\n    static_configs:\n{}",
        targets.concat()
    );
    let prom = &support::Prometheus::start(&dir, &config);

    // Clients push through HAProxy only; Prometheus scrapes the nodes at their own addresses.
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let lb = support::Balancer::haproxy(&addrs, c.root.path()).await;
    const LB_GROUPS: usize = 30;
    for g in 0..LB_GROUPS {
        let body = format!("lb_pushed{{n=\"{g}\"}} {g}\n");
        let path = format!("/metrics/job/through_lb/instance/i{g}");
        let r = request(lb.addr, "PUT", &path, &[], body.as_bytes(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Every replica is scraped and serves the pushed series with the pushed job/instance.
    let series = wait_for(
        "the series scraped from all 3 replicas",
        TIMEOUT,
        || async move {
            let r = prom.query("batch_last_success").await?;
            let n = r.as_array().map_or(0, Vec::len);
            if n == 3 {
                Ok(r)
            } else {
                Err(format!("{n} series: {r}"))
            }
        },
    )
    .await;
    for s in series.as_array().unwrap() {
        assert_eq!(
            s["metric"]["job"], "nightly",
            "honor_labels keeps the pushed job: {s}"
        );
        assert_eq!(s["metric"]["instance"], "db-1", "{s}");
        assert_eq!(s["value"][1], "42", "{s}");
    }
    // Deduplicated at query time: one series, the pushed value.
    let dedup = prom
        .query("max without (replica) (batch_last_success)")
        .await
        .unwrap();
    assert_eq!(dedup.as_array().map(Vec::len), Some(1), "{dedup}");
    assert_eq!(dedup[0]["value"][1], "42");
    // What went through the balancer: scraped from every replica, deduplicated to exactly
    // what was pushed.
    let dedup = wait_for(
        "every group pushed through HAProxy scraped from all 3 replicas",
        TIMEOUT,
        || async move {
            let all = prom.query("count(lb_pushed)").await?;
            if all[0]["value"][1].as_str() == Some(&*(3 * LB_GROUPS).to_string()) {
                prom.query("max without (replica) (lb_pushed)").await
            } else {
                Err(format!("{all}"))
            }
        },
    )
    .await;
    let series = dedup.as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), LB_GROUPS, "{dedup}");
    for s in &series {
        assert_eq!(s["metric"]["job"], "through_lb", "{s}");
        let n = s["metric"]["n"].as_str().unwrap_or_default();
        assert_eq!(s["metric"]["instance"], format!("i{n}"), "{s}");
        assert_eq!(s["value"][1], n, "{s}");
    }
    // push_time_seconds is the same on every replica (stamped once, replicated as data).
    let spread = wait_for(
        "push_time_seconds scraped from all replicas",
        TIMEOUT,
        || async move {
            let all = prom
                .query("count(push_time_seconds{job=\"nightly\"})")
                .await?;
            if all[0]["value"][1] == "3" {
                prom.query("stddev(push_time_seconds{job=\"nightly\"})")
                    .await
            } else {
                Err(format!("{all}"))
            }
        },
    )
    .await;
    assert_eq!(
        spread[0]["value"][1], "0",
        "push_time_seconds differs between replicas: {spread}"
    );
}
