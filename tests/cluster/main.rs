//! Real `pgw` processes forming a 3-node cluster on loopback (static `--cluster.peers`):
//! pushes through every node, byte-identical bodies, and `kill -9` of the leader during a push
//! load — no acknowledged push may be missing afterwards, and pushes through the survivors
//! must succeed again within 3 seconds.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Proc, get, put as push, request, same_metrics, wait_for};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Cluster {
    _root: TempDir,
    nodes: Vec<Proc>,
}

/// 3 nodes with `--web.self-metrics-path`, so `/metrics` holds only replicated data.
async fn start_cluster() -> Cluster {
    let c = support::start_cluster(
        3,
        &[
            "--web.self-metrics-path=/self-metrics",
            "--web.enable-admin-api",
        ],
    )
    .await;
    Cluster {
        _root: c.root,
        nodes: c.nodes,
    }
}

async fn cluster_view(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let r = get(addr, "/api/v1/cluster", Duration::from_secs(2)).await?;
    serde_json::from_slice(&r.body).map_err(|e| e.to_string())
}

/// The node index (0-based) that every running node names as leader.
async fn leader_index(c: &mut Cluster) -> usize {
    let addrs: Vec<(usize, SocketAddr)> = c
        .nodes
        .iter_mut()
        .enumerate()
        .filter_map(|(i, n)| n.is_running().then_some((i, n.addr)))
        .collect();
    wait_for("all running nodes agree on a leader", TIMEOUT, || {
        let addrs = addrs.clone();
        async move {
            let mut leaders = BTreeSet::new();
            for (_, a) in &addrs {
                let v = cluster_view(*a).await?;
                leaders.insert(v["data"]["leader"].as_u64().ok_or("no leader yet")?);
            }
            match leaders.len() {
                1 => {
                    let id = *leaders.iter().next().unwrap_or(&0);
                    let idx = (id as usize).checked_sub(1).ok_or("leader id 0")?;
                    if addrs.iter().any(|(i, _)| *i == idx) {
                        Ok(idx)
                    } else {
                        Err(format!("leader {id} is not running"))
                    }
                }
                _ => Err(format!("nodes disagree: {leaders:?}")),
            }
        }
    })
    .await
}

/// Waits until every running node serves the same `/metrics` body and returns it.
async fn converged_body(c: &mut Cluster) -> String {
    let addrs: Vec<SocketAddr> = c
        .nodes
        .iter_mut()
        .filter_map(|n| n.is_running().then_some(n.addr))
        .collect();
    same_metrics(&addrs, TIMEOUT).await
}

/// Pushes through every node land everywhere; the telemetry bodies are byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_through_every_node_are_identical_everywhere() {
    let mut c = start_cluster().await;
    for (i, n) in c.nodes.iter().enumerate() {
        let body = format!("# HELP m A test gauge.\n# TYPE m gauge\nm{{via=\"{i}\"}} {i}\n");
        assert_eq!(
            push(n.addr, &format!("/metrics/job/j{i}"), &body).await,
            Ok(200)
        );
    }
    // A consistency-check rejection relayed by a follower keeps its 400 and message.
    let leader = leader_index(&mut c).await;
    let follower = c.nodes[(leader + 1) % 3].addr;
    let r = request(
        follower,
        "PUT",
        "/metrics/job/j0",
        &[],
        b"# TYPE m counter\nm 1\n",
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .starts_with("pushed metrics are invalid or inconsistent with existing metrics:"),
        "{}",
        r.text()
    );
    let body = converged_body(&mut c).await;
    for i in 0..3 {
        assert!(
            body.contains(&format!("m{{instance=\"\",job=\"j{i}\",via=\"{i}\"}} {i}")),
            "{body}"
        );
    }
    // The JSON API is identical on every node too.
    let mut apis = Vec::new();
    for n in &c.nodes {
        apis.push(get(n.addr, "/api/v1/metrics", TIMEOUT).await.unwrap().body);
    }
    assert!(
        apis.windows(2).all(|w| w[0] == w[1]),
        "/api/v1/metrics differs between replicas"
    );
    // Node-local Raft metrics are on the self-metrics path.
    let leader_addr = c.nodes[leader].addr;
    let own = get(leader_addr, "/self-metrics", TIMEOUT)
        .await
        .unwrap()
        .text();
    for line in [
        "pgw_raft_is_leader 1",
        "pgw_raft_leader_id ",
        "pgw_raft_term ",
        "pgw_raft_replication_lag_entries{peer=",
    ] {
        assert!(
            own.contains(line),
            "missing {line:?} in the leader's self-metrics:\n{own}"
        );
    }
    // Readiness and the cluster view.
    for n in &c.nodes {
        let r = get(n.addr, "/-/ready", TIMEOUT).await.unwrap();
        assert_eq!((r.status, r.text()), (200, "OK".to_string()));
        let v = cluster_view(n.addr).await.unwrap();
        assert_eq!(
            v["data"]["members"].as_array().map(Vec::len),
            Some(3),
            "{v}"
        );
    }
}

#[derive(Default)]
struct Ledger {
    /// (pusher, seq) of every acknowledged push.
    acked: BTreeSet<(usize, u64)>,
    /// (pusher, seq) of pushes whose outcome is unknown (timeout, reset, 5xx).
    unknown: BTreeSet<(usize, u64)>,
    /// (sent, acknowledged) times of every acknowledged push.
    ack_times: Vec<(Instant, Instant)>,
}

/// `kill -9` of the leader during a push load: every acknowledged push survives on every
/// node, and pushes through the survivors succeed again within 3 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader_during_pushes_loses_nothing() {
    let mut c = start_cluster().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = Arc::new(Mutex::new(
        c.nodes.iter().map(|n| n.addr).collect::<Vec<_>>(),
    ));
    let mut pushers = Vec::new();
    for p in 0..6usize {
        let (ledger, stop, addrs) = (ledger.clone(), stop.clone(), addrs.clone());
        pushers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) && seq < 5_000 {
                seq += 1;
                let addr = {
                    let a = addrs.lock().unwrap();
                    a[(p + seq as usize) % a.len()]
                };
                let body = format!("seq{{pusher=\"{p}\"}} {seq}\n");
                let path = format!("/metrics/job/load/pusher/{p}/seq/{seq}");
                let sent = Instant::now();
                match push(addr, &path, &body).await {
                    Ok(200) => {
                        let mut l = ledger.lock().unwrap();
                        l.acked.insert((p, seq));
                        l.ack_times.push((sent, Instant::now()));
                    }
                    Ok(s) if s < 500 => panic!("push {path} answered {s}"),
                    // Connection refused to the dead node: never sent, but count it unknown.
                    _ => {
                        ledger.lock().unwrap().unknown.insert((p, seq));
                    }
                }
            }
        }));
    }
    wait_for("some pushes acknowledged before the fault", TIMEOUT, || {
        let n = ledger.lock().unwrap().acked.len();
        async move {
            if n >= 100 {
                Ok(())
            } else {
                Err(format!("{n} acked"))
            }
        }
    })
    .await;
    let leader = leader_index(&mut c).await;
    let killed_at = Instant::now();
    c.nodes[leader].kill9();
    eprintln!(
        "killed leader node{} at {} acked pushes",
        leader + 1,
        ledger.lock().unwrap().acked.len()
    );
    {
        // Pushers now use the survivors only (a balancer would drop the dead node).
        let mut a = addrs.lock().unwrap();
        *a = c
            .nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then_some(n.addr))
            .collect();
    }
    // The first push *sent* after the kill that was acknowledged.
    let recovered = wait_for("a push sent after the kill acknowledged", TIMEOUT, || {
        let t = ledger
            .lock()
            .unwrap()
            .ack_times
            .iter()
            .filter(|(sent, _)| *sent > killed_at)
            .map(|(_, acked)| *acked)
            .min();
        async move { t.ok_or_else(|| "none yet".to_string()) }
    })
    .await;
    let gap = recovered.duration_since(killed_at);
    eprintln!("first acknowledged push through a survivor {gap:?} after the kill");
    assert!(
        gap <= Duration::from_secs(3),
        "pushes resumed only {gap:?} after the leader was killed"
    );
    // Let the load run on the survivors for a while, then restart the old leader.
    let before = ledger.lock().unwrap().acked.len();
    wait_for("more pushes acknowledged by the survivors", TIMEOUT, || {
        let n = ledger.lock().unwrap().acked.len();
        async move {
            if n >= before + 100 {
                Ok(())
            } else {
                Err(format!("{n} acked"))
            }
        }
    })
    .await;
    c.nodes[leader].restart().await;
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        p.await.expect("pusher task");
    }
    let body = converged_body(&mut c).await;
    let mut present: BTreeMap<(usize, u64), f64> = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("seq{")) {
        let pusher = field(line, "pusher").and_then(|v| v.parse().ok());
        let seq = field(line, "seq").and_then(|v| v.parse().ok());
        let value = line.rsplit(' ').next().and_then(|v| v.parse().ok());
        if let (Some(p), Some(s), Some(v)) = (pusher, seq, value) {
            present.insert((p, s), v);
        }
    }
    let l = ledger.lock().unwrap();
    let missing: Vec<_> = l
        .acked
        .iter()
        .filter(|k| !present.contains_key(k))
        .collect();
    let phantom: Vec<_> = present
        .keys()
        .filter(|k| !l.acked.contains(k) && !l.unknown.contains(k))
        .collect();
    for ((_, seq), v) in &present {
        assert_eq!(
            *v, *seq as f64,
            "value of push {seq} is its sequence number"
        );
    }
    eprintln!(
        "cluster kill -9 report: acked {}, unknown {}, present {}, acked lost {}",
        l.acked.len(),
        l.unknown.len(),
        present.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged pushes missing after kill -9 of the leader: {missing:?}"
    );
    assert!(phantom.is_empty(), "values no client sent: {phantom:?}");
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &line[start..];
    Some(&rest[..rest.find('"')?])
}

/// A node that cannot reach a majority knows no leader: `/-/ready` is 503 with the failed
/// check listed, while `/-/healthy` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quorum_is_not_ready() {
    let root = TempDir::new().unwrap();
    let (p1, p2, p3) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let peers = format!("1=127.0.0.1:{p1},2=127.0.0.1:{p2},3=127.0.0.1:{p3}");
    let args = [
        "--cluster.node-id=2".to_string(),
        format!("--cluster.peers={peers}"),
        format!("--cluster.listen-address=127.0.0.1:{p2}"),
        "--cluster.write-timeout=1s".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n = Proc::start_server_live(
        support::Kind::Pgw,
        "lonely",
        &root.path().join("n2"),
        root.path(),
        &args,
    )
    .await;
    let r = get(n.addr, "/-/ready", TIMEOUT).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("[-]leader failed"), "{}", r.text());
    assert_eq!(
        get(n.addr, "/-/healthy", TIMEOUT).await.unwrap().status,
        200
    );
    // A write cannot be acknowledged; it times out with 503 and Retry-After.
    let r = request(n.addr, "PUT", "/metrics/job/x", &[], b"m 1\n", TIMEOUT)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
}
