//! In-process clusters: real `pgw_raft::Node`s with real sled stores in temp dirs and real
//! tonic gRPC on loopback ports. Every wait has a deadline and a message; nothing sleeps and
//! then asserts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgw_core::command::Push;
use pgw_core::pb::{Gauge, Metric, MetricFamily, MetricType};
use pgw_core::{Command, CommandResponse, GroupingKey};
use pgw_raft::{Bootstrap, Node, NodeConfig};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(30);

struct TestNode {
    id: u64,
    addr: SocketAddr,
    dir: PathBuf,
    node: Option<Node>,
}

impl TestNode {
    fn node(&self) -> &Node {
        self.node.as_ref().expect("node is running")
    }
}

fn config(id: u64, addr: SocketAddr, dir: &std::path::Path, bootstrap: Bootstrap) -> NodeConfig {
    NodeConfig {
        id,
        raft_addr: addr.to_string(),
        http_addr: format!("127.0.0.1:{}", 10_000 + id),
        bootstrap,
        snapshot_every: 50,
        keep_logs_after_snapshot: 0,
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        ..NodeConfig::single(dir.to_path_buf())
    }
}

async fn bind(addr: &str) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

async fn start(id: u64, addr: SocketAddr, dir: &std::path::Path, bootstrap: Bootstrap) -> Node {
    let listener = bind(&addr.to_string()).await;
    Node::start(config(id, addr, dir, bootstrap), Some(listener))
        .await
        .expect("node starts")
}

/// Starts `n` nodes with `--cluster.peers` semantics and waits for a leader.
async fn static_cluster(root: &TempDir, n: u64) -> Vec<TestNode> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(bind("127.0.0.1:0").await);
    }
    let peers: BTreeMap<u64, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
        .collect();
    let mut nodes = Vec::new();
    // Start in reverse order: initialisation must not depend on who starts first.
    for (i, listener) in listeners.into_iter().enumerate().rev() {
        let id = i as u64 + 1;
        let addr = listener.local_addr().unwrap();
        let dir = root.path().join(format!("n{id}"));
        let node = Node::start(
            config(id, addr, &dir, Bootstrap::Static(peers.clone())),
            Some(listener),
        )
        .await
        .expect("node starts");
        nodes.push(TestNode {
            id,
            addr,
            dir,
            node: Some(node),
        });
    }
    nodes.sort_by_key(|n| n.id);
    wait_leader(&nodes).await;
    nodes
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_leader(nodes: &[TestNode]) -> u64 {
    let mut leader = 0;
    wait_until("every running node knows the same leader", || {
        let leaders: Vec<Option<u64>> = nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|n| n.status().leader)
            .collect();
        match leaders.first() {
            Some(Some(l)) if leaders.iter().all(|x| *x == Some(*l)) => {
                leader = *l;
                nodes.iter().any(|n| n.id == *l && n.node.is_some())
            }
            _ => false,
        }
    })
    .await;
    leader
}

fn gauge(name: &str, v: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: None,
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(v) }),
            ..Default::default()
        }],
        unit: None,
    }
}

fn counter(name: &str, v: f64) -> MetricFamily {
    let mut f = gauge(name, v);
    f.r#type = Some(MetricType::Counter as i32);
    f.metric[0].gauge = None;
    f.metric[0].counter = Some(pgw_core::pb::Counter {
        value: Some(v),
        ..Default::default()
    });
    f
}

fn put(job: &str, fams: &[MetricFamily], t: i64) -> Command {
    Command::Push(Push::new(
        GroupingKey::from_pairs([("job", job)]),
        true,
        t,
        true,
        fams,
    ))
}

fn snapshot_bytes(n: &Node) -> Vec<u8> {
    n.read(|s| s.encode_snapshot())
}

/// Waits until every running node has applied the leader's last entry, then checks that
/// their stores are byte-identical.
async fn assert_converged(nodes: &[TestNode]) {
    let running: Vec<&Node> = nodes.iter().filter_map(|n| n.node.as_ref()).collect();
    wait_until("all nodes applied the same index", || {
        let idx: Vec<u64> = running.iter().map(|n| n.status().applied_index).collect();
        let last = running
            .iter()
            .map(|n| n.status().last_log_index)
            .max()
            .unwrap_or(0);
        idx.iter().all(|i| *i == idx[0] && *i >= last)
    })
    .await;
    let first = snapshot_bytes(running[0]);
    for n in &running[1..] {
        assert_eq!(snapshot_bytes(n), first, "stores differ between replicas");
    }
}

fn follower(nodes: &[TestNode], leader: u64) -> &TestNode {
    nodes
        .iter()
        .find(|n| n.id != leader && n.node.is_some())
        .expect("a running follower")
}

const T: i64 = 1_700_000_000_000_000_000;

/// A push through every node lands on all of them; replicas are identical; a consistency
/// check rejection is relayed through a follower; read-your-writes on the answering node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_writes_through_any_node_replicate_identically() {
    let root = TempDir::new().unwrap();
    let nodes = static_cluster(&root, 3).await;
    for (i, n) in nodes.iter().enumerate() {
        let cmd = put(&format!("job{i}"), &[gauge("m", i as f64)], T + i as i64);
        assert_eq!(n.node().write(cmd).await.unwrap(), CommandResponse::Applied);
        // Read-your-writes on the node that answered.
        let key = GroupingKey::from_pairs([("job", format!("job{i}"))]);
        assert!(
            n.node().read(|s| s.get(&key).is_some()),
            "node {} sees its own write",
            n.id
        );
    }
    let leader = wait_leader(&nodes).await;
    let f = follower(&nodes, leader);
    let r = f
        .node()
        .write(put("job0", &[counter("m", 1.0)], T + 10))
        .await
        .unwrap();
    match r {
        CommandResponse::Rejected(msg) => {
            assert!(msg.starts_with("pushed metrics are invalid"), "{msg}")
        }
        other => panic!("a type conflict must be rejected through a follower too: {other:?}"),
    }
    // A linearizable read through a follower sees a write acknowledged by another node.
    let other = nodes.iter().find(|n| n.id != f.id).unwrap();
    assert_eq!(
        other
            .node()
            .write(put("lin", &[gauge("m", 1.0)], T + 20))
            .await
            .unwrap(),
        CommandResponse::Applied
    );
    f.node()
        .linearizable_barrier()
        .await
        .expect("read index through a follower");
    let key = GroupingKey::from_pairs([("job", "lin")]);
    assert!(
        f.node().read(|s| s.get(&key).is_some()),
        "linearizable read sees the write"
    );
    assert_converged(&nodes).await;
    for n in nodes {
        n.node().shutdown().await.unwrap();
    }
}

/// The leader stops; the survivors elect a new one and take writes; the old leader restarts
/// on its directory and port and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_leader_failover_and_restart_catch_up() {
    let root = TempDir::new().unwrap();
    let mut nodes = static_cluster(&root, 3).await;
    let leader = wait_leader(&nodes).await;
    for i in 0..20 {
        let n = &nodes[i % 3];
        assert_eq!(
            n.node()
                .write(put("a", &[gauge("m", i as f64)], T + i as i64))
                .await
                .unwrap(),
            CommandResponse::Applied
        );
    }
    let idx = nodes.iter().position(|n| n.id == leader).unwrap();
    let old = nodes[idx].node.take().unwrap();
    old.shutdown().await.unwrap();
    drop(old);
    let new_leader = wait_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    for i in 20..60 {
        let n = nodes
            .iter()
            .filter(|n| n.node.is_some())
            .nth(i % 2)
            .unwrap();
        assert_eq!(
            n.node()
                .write(put("b", &[gauge("m", i as f64)], T + i as i64))
                .await
                .unwrap(),
            CommandResponse::Applied
        );
    }
    let (id, addr, dir) = (nodes[idx].id, nodes[idx].addr, nodes[idx].dir.clone());
    nodes[idx].node = Some(start(id, addr, &dir, Bootstrap::Static(BTreeMap::new())).await);
    assert_converged(&nodes).await;
    for n in nodes {
        n.node().shutdown().await.unwrap();
    }
}

/// After snapshots purged the log, a 4th node joins via `--cluster.join` semantics, catches
/// up from a streamed snapshot and becomes a voter; then a member is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t30_join_catches_up_from_snapshot_then_remove() {
    let root = TempDir::new().unwrap();
    let mut nodes = static_cluster(&root, 3).await;
    for i in 0..120 {
        let n = &nodes[i % 3];
        let cmd = put(
            &format!("j{}", i % 10),
            &[gauge("m", i as f64)],
            T + i as i64,
        );
        assert_eq!(n.node().write(cmd).await.unwrap(), CommandResponse::Applied);
    }
    let leader = wait_leader(&nodes).await;
    let l = nodes.iter().find(|n| n.id == leader).unwrap();
    wait_until("the leader purged its log after a snapshot", || {
        let m = l.node().raft().metrics().borrow().clone();
        m.snapshot.is_some() && m.purged.is_some()
    })
    .await;
    let listener = bind("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let dir = root.path().join("n4");
    let seed = nodes[0].addr.to_string();
    let n4 = Node::start(
        config(4, addr, &dir, Bootstrap::Join(vec![seed])),
        Some(listener),
    )
    .await
    .unwrap();
    nodes.push(TestNode {
        id: 4,
        addr,
        dir,
        node: Some(n4),
    });
    wait_until("node 4 is a voter", || {
        let m = nodes[3].node().raft().metrics().borrow().clone();
        m.membership_config.membership().voter_ids().any(|v| v == 4)
    })
    .await;
    assert_converged(&nodes).await;
    let snap = nodes[3].node().raft().metrics().borrow().snapshot;
    assert!(snap.is_some(), "node 4 was fed by a snapshot");
    // Remove node 1 (whoever leads).
    let leader = wait_leader(&nodes).await;
    let l = nodes.iter().find(|n| n.id == leader).unwrap();
    let voters = std::collections::BTreeSet::from([2, 3, 4]);
    l.node()
        .raft()
        .change_membership(openraft::ChangeMembers::ReplaceAllVoters(voters), false)
        .await
        .expect("membership change");
    wait_until("node 1 is no longer a member", || {
        nodes[1..].iter().all(|n| {
            let m = n.node().raft().metrics().borrow().clone();
            !m.membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id == 1)
        })
    })
    .await;
    let n = nodes
        .iter()
        .find(|n| n.id != 1 && n.node.is_some())
        .unwrap();
    assert_eq!(
        n.node()
            .write(put("after", &[gauge("m", 1.0)], T + 1000))
            .await
            .unwrap(),
        CommandResponse::Applied
    );
    for n in nodes {
        n.node().shutdown().await.unwrap();
    }
}
