//! deploy/grafana/pgw.json: at least 8 panels with PromQL, and every query returns data
//! from a real Prometheus scraping a real 3-node pgw cluster under load, configured with
//! the jobs of deploy/prometheus/prometheus.yml.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::read_deploy;
use crate::support::{request, start_cluster, wait_for};

/// The dashboard's panels that hold queries: (title, exprs).
fn panels(dash: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dash["panels"]
        .as_array()
        .expect("panels is a list")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner.iter());
        }
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        let exprs: Vec<String> = targets
            .iter()
            .filter_map(|t| t["expr"].as_str().map(str::to_string))
            .collect();
        out.push((p["title"].as_str().unwrap_or("?").to_string(), exprs));
    }
    out.sort();
    out
}

/// The default value of each templating variable.
fn variables(dash: &serde_json::Value) -> Vec<(String, String)> {
    dash["templating"]["list"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|v| v["type"] == "custom")
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_string(),
                        v["current"]["value"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A query as Grafana sends it with the defaults: variables replaced, `$__rate_interval`
/// as Grafana computes it for a 1 s scrape interval (4 scrape intervals, rounded up).
fn expand(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr.replace("$__rate_interval", "5s");
    // Longest names first: `$replicas_job` before `$job`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in &vars {
        e = e
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    e
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read_deploy("grafana/pgw.json")).expect("pgw.json is JSON")
}

#[test]
fn the_dashboard_has_panels_for_every_area() {
    let dash = dashboard();
    let ps = panels(&dash);
    assert!(ps.len() >= 8, "{} panels", ps.len());
    for (title, exprs) in &ps {
        assert!(!exprs.is_empty(), "panel {title:?} has no query");
    }
    let all: String = ps.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
    for needed in [
        "pgw_raft_leader_id",
        "pgw_raft_term",
        "pgw_raft_quorum_contact_age_seconds",
        "pgw_raft_applied_index",
        "pushgateway_http_requests_total",
        "pushgateway_http_push_duration_seconds",
        "pgw_cluster_forwarded_writes_total",
        "429",
        "503",
        "push_time_seconds",
        "scrape_samples_scraped",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(all.contains(needed), "no panel queries {needed}");
    }
    // The variables default to jobs that the example scrape config defines.
    let config = read_deploy("prometheus/prometheus.yml");
    let jobs: BTreeSet<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- job_name:"))
        .map(str::trim)
        .collect();
    let vars = variables(&dash);
    assert!(vars.iter().any(|(n, _)| n == "job"), "{vars:?}");
    for (name, value) in &vars {
        assert!(
            jobs.contains(value.as_str()),
            "variable ${name} defaults to {value:?}, not a job of prometheus.yml ({jobs:?})"
        );
    }
}

/// Kills the Prometheus child (by its handle) when the test ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_a_real_cluster() {
    let dash = dashboard();
    let vars = variables(&dash);
    // Snapshots every 50 entries so that the snapshot-size panel has data.
    let c = start_cluster(
        3,
        &[
            "--web.self-metrics-path=/self-metrics",
            "--raft.snapshot-every=50",
        ],
    )
    .await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();

    // Load: pushes (PUT and POST) and deletes through every node, until the test ends
    // (bounded: at most 20,000 requests).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent, addrs) = (stop.clone(), sent.clone(), addrs.clone());
        tokio::spawn(async move {
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                let addr = addrs[(i % 3) as usize];
                let path = format!("/metrics/job/load/instance/i{}", i % 20);
                let body = format!(
                    "# TYPE load_value gauge\nload_value{{step=\"{}\"}} {i}\n",
                    i % 5
                );
                let method = match i % 10 {
                    9 => "DELETE",
                    n if n % 2 == 0 => "PUT",
                    _ => "POST",
                };
                let body = if method == "DELETE" {
                    ""
                } else {
                    body.as_str()
                };
                if let Ok(r) = request(
                    addr,
                    method,
                    &path,
                    &[],
                    body.as_bytes(),
                    Duration::from_secs(15),
                )
                .await
                {
                    assert!(
                        r.status == 200 || r.status == 202,
                        "{method} {path}: {}",
                        r.status
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Prometheus with the jobs of deploy/prometheus/prometheus.yml, scraping every second.
    let dir = c.root.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let replicas: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "      - targets: ['{a}']\n        labels: {{replica: '{}'}}\n",
                i + 1
            )
        })
        .collect();
    let selfs: Vec<String> = addrs.iter().map(|a| format!("'{a}'")).collect();
    let job = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("pgw.json has no variable {name}"))
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
         - job_name: {}\n    honor_labels: true\n    static_configs:\n{replicas}  \
         - job_name: {}\n    metrics_path: /self-metrics\n    static_configs:\n      - targets: [{}]\n",
        job("replicas_job"),
        job("job"),
        selfs.join(", ")
    );
    let prom = crate::support::Prometheus::start(&dir, &config);

    let queries: Vec<(String, String)> = panels(&dash)
        .into_iter()
        .flat_map(|(title, exprs)| exprs.into_iter().map(move |e| (title.clone(), e)))
        .map(|(t, e)| (t, expand(&e, &vars)))
        .collect();
    let queries = &queries;
    let log_path = &dir.join("prometheus.log");
    let prom = &prom;
    wait_for(
        "every dashboard query to return data",
        Duration::from_secs(90),
        || async move {
            let mut missing = Vec::new();
            for (title, q) in queries {
                match prom.query(q).await {
                    Ok(r) if r.as_array().is_some_and(|a| !a.is_empty()) => {}
                    Ok(r) => missing.push(format!("{title}: {q} -> {r}")),
                    Err(e) => missing.push(format!("{title}: {q} -> {e}")),
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                // Scrapes come every second: do not hammer Prometheus in between.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(1500)..];
                Err(format!(
                    "{} of {} queries without data:\n{}\nprometheus log tail:\n{tail}",
                    missing.len(),
                    queries.len(),
                    missing.join("\n")
                ))
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load task");
    assert!(
        sent.load(Ordering::Relaxed) > 0,
        "no request of the load got an answer"
    );
}
