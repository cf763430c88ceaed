//! `pgwctl` against live clusters of real `pgw` processes on loopback: growing 3 → 5 with
//! `member add --wait` and shrinking back under push load (the leader among the removed, no
//! acknowledged push lost), replacing a node killed with `kill -9` by a new empty one that
//! catches up from a snapshot, refusing unsafe removals, backup and restore into a fresh node
//! with byte-identical `/metrics`, the HTTP shortcuts, and every exit code.
//!
//! Needs `cargo build --bin pgw --bin pgwctl` with the same profile first.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{
    Kind, Proc, free_port, get, join_all, put, request, run_serial as run, same_metrics, wait_for,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one pgwctl run.
const CTL_TIMEOUT: Duration = Duration::from_secs(120);

/// `target/<profile>/pgwctl`, next to `pgw`.
fn pgwctl_binary() -> PathBuf {
    let bin = support::pgw_binary().with_file_name("pgwctl");
    assert!(
        bin.is_file(),
        "the pgwctl binary is missing at {}: run `cargo build --bin pgwctl` first (same profile \
         as the tests)",
        bin.display()
    );
    bin
}

/// What one pgwctl run printed and its exit code.
#[derive(Debug)]
struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("pgwctl printed no JSON ({e}): {self:?}"))
    }

    #[track_caller]
    fn ok(self) -> Ctl {
        assert_eq!(self.code, 0, "pgwctl failed: {self:?}");
        self
    }
}

/// Runs pgwctl with `args` (and `env`), bounded by [`CTL_TIMEOUT`] (killed by its PID past it).
async fn ctl_env(args: &[String], env: &[(&str, &str)]) -> Ctl {
    let bin = pgwctl_binary();
    let args = args.to_vec();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&args)
            .env_remove("PGWCTL_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn pgwctl: {e}"));
        let deadline = Instant::now() + CTL_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("reap pgwctl");
                    panic!(
                        "pgwctl {args:?} did not finish within {CTL_TIMEOUT:?}; stderr: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("wait for pgwctl: {e}"),
            }
        }
        let out = child.wait_with_output().expect("collect pgwctl output");
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("pgwctl runner")
}

/// Runs `pgwctl --endpoint <endpoints> <args>`.
async fn ctl(endpoints: &[String], args: &[&str]) -> Ctl {
    let mut all = vec!["--endpoint".to_string(), endpoints.join(",")];
    all.extend(args.iter().map(|s| s.to_string()));
    ctl_env(&all, &[]).await
}

/// A pgw process with its node id and gRPC address.
struct Node {
    id: u64,
    grpc: String,
    proc: Proc,
}

/// A set of pgw processes under one temporary directory.
struct Cluster {
    root: TempDir,
    nodes: Vec<Node>,
}

/// Flags of every node: the telemetry path holds only pushed data, the admin API is on.
const COMMON: [&str; 2] = [
    "--web.self-metrics-path=/self-metrics",
    "--web.enable-admin-api",
];

impl Cluster {
    /// Starts a static cluster of nodes 1..=n concurrently and waits until each is ready.
    async fn start(n: u64, extra: &[&str]) -> Cluster {
        let root = TempDir::new().expect("tempdir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers = (1..=n)
            .zip(&ports)
            .map(|(id, p)| format!("{id}=127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let starts = (1..=n).zip(&ports).map(|(id, port)| {
            let mut args = vec![
                format!("--cluster.node-id={id}"),
                format!("--cluster.peers={peers}"),
                format!("--cluster.listen-address=127.0.0.1:{port}"),
            ];
            args.extend(COMMON.iter().chain(extra).map(|s| s.to_string()));
            let dir = root.path().join(format!("n{id}"));
            let logs = root.path().to_path_buf();
            let grpc = format!("127.0.0.1:{port}");
            async move {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                let proc =
                    Proc::start_server(Kind::Pgw, &format!("node{id}"), &dir, &logs, &a).await;
                Node { id, grpc, proc }
            }
        });
        let nodes = join_all(starts.map(Box::pin).collect()).await;
        Cluster { root, nodes }
    }

    /// Starts node `id` with an empty directory, waiting to be added: `--cluster.peers` names
    /// the running members and itself, and a lower id than its own, so it never initialises a
    /// cluster on its own.
    async fn start_joining(&mut self, id: u64, extra: &[&str]) {
        let port = free_port();
        let grpc = format!("127.0.0.1:{port}");
        let mut peers: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.proc.is_running().then(|| format!("{}={}", n.id, n.grpc)))
            .collect();
        peers.push(format!("{id}={grpc}"));
        let mut args = vec![
            format!("--cluster.node-id={id}"),
            format!("--cluster.peers={}", peers.join(",")),
            format!("--cluster.listen-address={grpc}"),
        ];
        args.extend(COMMON.iter().chain(extra).map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = self.root.path().join(format!("n{id}"));
        let proc =
            Proc::start_server_live(Kind::Pgw, &format!("node{id}"), &dir, self.root.path(), &a)
                .await;
        self.nodes.push(Node { id, grpc, proc });
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// gRPC addresses of the running nodes.
    fn endpoints(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.proc.is_running().then(|| n.grpc.clone()))
            .collect()
    }

    /// HTTP addresses of the nodes `ids`.
    fn http(&mut self, ids: &[u64]) -> Vec<SocketAddr> {
        ids.iter().map(|id| self.node(*id).proc.addr).collect()
    }
}

/// `pgwctl status --output json` until it reports `want` voters, healthy; returns the report.
async fn wait_healthy(endpoints: &[String], want: usize) -> serde_json::Value {
    wait_for(
        &format!("a healthy cluster of {want} voters"),
        TIMEOUT,
        || {
            let endpoints = endpoints.to_vec();
            async move {
                let out = ctl(&endpoints, &["status", "--output", "json"]).await;
                let v = out.json();
                if out.code == 0 && v["verdict"] == "healthy" && v["voters"] == want {
                    Ok(v)
                } else {
                    Err(format!("exit {}: {}", out.code, v["summary"]))
                }
            }
        },
    )
    .await
}

fn leader_of(status: &serde_json::Value) -> u64 {
    let leaders: Vec<u64> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["leader"] == true)
        .map(|m| m["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {status}");
    assert_eq!(status["leader_id"], leaders[0]);
    leaders[0]
}

fn voter_ids(status: &serde_json::Value) -> BTreeSet<u64> {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["id"].as_u64().expect("id"))
        .collect()
}

/// Pushes `load_seq` groups (one per sequence number) round-robin through `targets` until
/// stopped; records the sequence numbers answered 200.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(targets: Vec<SocketAddr>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, a, n) = (stop.clone(), acked.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                n.fetch_add(1, Ordering::Relaxed);
                let target = targets[(seq as usize) % targets.len()];
                let body = format!("# TYPE load_seq gauge\nload_seq {seq}\n");
                if put(target, &format!("/metrics/job/load/seq/{seq}"), &body).await == Ok(200) {
                    a.lock().expect("acked").push(seq);
                }
            }
        });
        Load {
            stop,
            acked,
            sent,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    async fn wait_acked(&self, at_least: usize) {
        wait_for(
            &format!("{at_least} acknowledged pushes"),
            TIMEOUT,
            || async {
                let n = self.acked();
                if n >= at_least {
                    Ok(())
                } else {
                    Err(format!(
                        "{n} acknowledged of {} sent",
                        self.sent.load(Ordering::Relaxed)
                    ))
                }
            },
        )
        .await
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        Arc::try_unwrap(self.acked)
            .map(|m| m.into_inner().expect("acked"))
            .unwrap_or_else(|a| a.lock().expect("acked").clone())
    }
}

/// 3 voters (status shows three voters and one leader) → add 4 and 5 with `member add --wait`
/// → remove two of them, the leader among them, while pushes run through the survivors: every
/// acknowledged push is on every survivor afterwards.
#[test]
fn grow_to_five_and_shrink_back_to_three_under_load() {
    run(async {
        let t0 = Instant::now();
        let mut c = Cluster::start(3, &[]).await;
        let eps = c.endpoints();
        let status = wait_healthy(&eps, 3).await;
        assert_eq!(voter_ids(&status), BTreeSet::from([1, 2, 3]));
        leader_of(&status);
        // The table form has a row per member and the verdict.
        let table = ctl(&eps[1..2], &["status"]).await.ok();
        assert_eq!(table.stdout.lines().count(), 5, "{}", table.stdout);
        assert!(table.stdout.contains("healthy: 3 of 3 voters reachable"));

        for id in [4, 5] {
            c.start_joining(id, &[]).await;
            let addr = c.node(id).grpc.clone();
            let out = ctl(
                &eps,
                &[
                    "member",
                    "add",
                    &id.to_string(),
                    &addr,
                    "--wait",
                    "-o",
                    "json",
                ],
            )
            .await
            .ok();
            let v = out.json();
            let me = v["members"]
                .as_array()
                .expect("members")
                .iter()
                .find(|m| m["id"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("node {id} in {v}"));
            assert_eq!(me["role"], "voter", "{v}");
            assert!(!me["http_address"].as_str().unwrap_or_default().is_empty());
            // Adding it again changes nothing.
            let again = ctl(
                &eps,
                &["member", "add", &id.to_string(), &addr, "-o", "json"],
            )
            .await
            .ok();
            assert_eq!(again.json()["changed"], false);
        }
        let eps = c.endpoints();
        let status = wait_healthy(&eps, 5).await;
        assert_eq!(voter_ids(&status), BTreeSet::from([1, 2, 3, 4, 5]));
        let leader = leader_of(&status);
        eprintln!(
            "grown to 5 voters after {:?}; leader {leader}",
            t0.elapsed()
        );

        // Remove the leader and one of the new nodes; push through the three others.
        let other = if leader == 5 { 4 } else { 5 };
        let removed = [other, leader];
        let survivors: Vec<u64> = (1..=5).filter(|i| !removed.contains(i)).collect();
        let load = Load::start(c.http(&survivors));
        load.wait_acked(20).await;
        for id in removed {
            let out = ctl(&eps, &["member", "remove", &id.to_string()]).await.ok();
            if id == leader {
                assert!(out.stdout.contains("now leads"), "{out:?}");
            }
        }
        let after = load.acked();
        load.wait_acked(after + 20).await;
        let acked = load.stop().await;

        let survivor_eps: Vec<String> = survivors
            .iter()
            .map(|id| c.node(*id).grpc.clone())
            .collect();
        let status = wait_healthy(&survivor_eps, 3).await;
        assert_eq!(voter_ids(&status), survivors.iter().copied().collect());
        assert!(!removed.contains(&leader_of(&status)));

        let addrs = c.http(&survivors);
        let body = same_metrics(&addrs, TIMEOUT).await;
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|seq| !body.contains(&format!("seq=\"{seq}\"}}")))
            .collect();
        assert!(missing.is_empty(), "acknowledged pushes lost: {missing:?}");
        eprintln!(
            "{} acknowledged pushes survived the shrink; test took {:?}",
            acked.len(),
            t0.elapsed()
        );
        for id in removed {
            c.node(id).proc.kill9();
        }
    });
}

/// A follower is killed with `kill -9`: removing a live voter is refused (exit 1, quorum),
/// removing the dead one works, and a new node with an empty directory is added with
/// `member add --wait` and catches up from a snapshot (the leader's log was purged).
#[test]
fn replace_a_killed_node_and_refuse_an_unsafe_removal() {
    run(async {
        let t0 = Instant::now();
        let mut c = Cluster::start(3, &["--raft.snapshot-every=100"]).await;
        let eps = c.endpoints();
        let status = wait_healthy(&eps, 3).await;
        leader_of(&status);
        // More than the 1000 log entries kept after a snapshot, so a new node cannot catch up
        // from the log alone. Concurrent pushes share entries (group commit), so push in
        // rounds until the leader's log is long enough.
        let targets = c.http(&[1, 2, 3]);
        let next = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + TIMEOUT;
        let (leader, applied) = loop {
            let round_end = next.load(Ordering::Relaxed) + 400;
            let pushers = (0..8).map(|_| {
                let next = next.clone();
                let targets = targets.clone();
                async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= round_end {
                            break;
                        }
                        let body = format!("# TYPE fill gauge\nfill{{i=\"{i}\"}} {i}\n");
                        let path = format!("/metrics/job/fill/slot/{}", i % 50);
                        let target = targets[(i as usize) % targets.len()];
                        assert_eq!(put(target, &path, &body).await, Ok(200), "push {i}");
                    }
                }
            });
            join_all(pushers.map(Box::pin).collect()).await;
            next.store(round_end, Ordering::Relaxed);
            // Leadership may move under the load: ask who leads now.
            let status = wait_healthy(&eps, 3).await;
            let leader = leader_of(&status);
            let applied = status["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["id"] == leader))
                .and_then(|m| m["applied_index"].as_u64())
                .expect("leader's applied index");
            if applied >= 1300 {
                break (leader, applied);
            }
            assert!(
                Instant::now() < deadline,
                "the log did not reach 1300 entries in time: {status}"
            );
        };
        let snap = ctl(
            &eps,
            &["snapshot", "--node", &leader.to_string(), "-o", "json"],
        )
        .await
        .ok();
        assert!(
            snap.json()["snapshot_index"].as_u64().unwrap_or(0) >= applied,
            "{snap:?}"
        );
        eprintln!("filled after {:?}", t0.elapsed());

        let victim = (1..=3).find(|i| *i != leader).expect("a follower");
        let live_other = (1..=3)
            .find(|i| *i != leader && *i != victim)
            .expect("another");
        c.node(victim).proc.kill9();

        let degraded = ctl(&eps, &["status", "-o", "json"]).await;
        assert_eq!(degraded.code, 1, "{degraded:?}");
        let v = degraded.json();
        assert_eq!(v["verdict"], "degraded", "{v}");
        assert_eq!(v["voters_reachable"], 2);

        // Removing a live voter would leave {leader, victim} with one of them down.
        for id in [live_other, leader] {
            let refused = ctl(&eps, &["member", "remove", &id.to_string()]).await;
            assert_eq!(refused.code, 1, "{refused:?}");
            assert!(
                refused.stderr.contains("refusing to remove node")
                    && refused.stderr.contains("lose quorum"),
                "{refused:?}"
            );
        }
        let list = ctl(&eps, &["member", "list", "-o", "json"]).await.ok();
        assert_eq!(list.json()["members"].as_array().map(Vec::len), Some(3));

        ctl(&eps, &["member", "remove", &victim.to_string()])
            .await
            .ok();
        c.start_joining(4, &["--raft.snapshot-every=1000000"]).await;
        let addr = c.node(4).grpc.clone();
        ctl(&eps, &["member", "add", "4", &addr, "--wait"])
            .await
            .ok();
        let eps = c.endpoints();
        let status = wait_healthy(&eps, 3).await;
        let members: BTreeSet<u64> = [leader, live_other, 4].into_iter().collect();
        assert_eq!(voter_ids(&status), members);
        let new = status["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["id"] == 4)
            .cloned()
            .expect("node 4");
        // It never builds a snapshot itself (snapshot-every is huge): it installed the leader's.
        assert!(new["snapshot_index"].as_u64().unwrap_or(0) > 0, "{new}");
        let ids: Vec<u64> = members.into_iter().collect();
        let body = same_metrics(&c.http(&ids), TIMEOUT).await;
        assert_eq!(body.matches("fill{").count(), 50, "{body}");

        // Lose the majority: no quorum, a leader backup is impossible, a local one works.
        let survivor = live_other;
        let survivor_ep = vec![c.node(survivor).grpc.clone()];
        for id in [leader, 4] {
            c.node(id).proc.kill9();
        }
        let lost = ctl(&survivor_ep, &["status", "-o", "json"]).await;
        assert_eq!(lost.code, 1, "{lost:?}");
        assert_eq!(lost.json()["verdict"], "no_quorum", "{lost:?}");
        let file = c.root.path().join("local.backup").display().to_string();
        let refused = ctl(&survivor_ep, &["--timeout", "2s", "backup", &file]).await;
        assert_eq!(refused.code, 1, "{refused:?}");
        let local = ctl(&survivor_ep, &["backup", "--local", &file, "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(local["groups"], 50, "{local}");
        assert_eq!(local["node_id"], survivor);
        eprintln!("test took {:?}", t0.elapsed());
    });
}

/// A loaded cluster is backed up and restored into a fresh single node: `/metrics` and
/// `/api/v1/metrics` are byte-identical; restores that would be unsafe are refused; the HTTP
/// shortcuts and every exit code.
#[test]
fn backup_restore_http_commands_and_exit_codes() {
    run(async {
        let t0 = Instant::now();
        let mut c = Cluster::start(3, &[]).await;
        let eps = c.endpoints();
        wait_healthy(&eps, 3).await;
        let http = c.http(&[1, 2, 3]);
        for i in 0..40u64 {
            let body = format!(
                "# HELP g A gauge.\n# TYPE g gauge\ng{{k=\"{i}\"}} {i}.5\n\
                 # TYPE c counter\nc{{k=\"{i}\"}} {}\n\
                 # HELP h A histogram.\n# TYPE h histogram\n\
                 h_bucket{{k=\"{i}\",le=\"1\"}} 1\nh_bucket{{k=\"{i}\",le=\"+Inf\"}} 3\n\
                 h_sum{{k=\"{i}\"}} 4.25\nh_count{{k=\"{i}\"}} 3\n",
                i * 7
            );
            let path = format!(
                "/metrics/job/batch/instance@base64/{}",
                b64(&format!("host/{i}"))
            );
            assert_eq!(put(http[(i % 3) as usize], &path, &body).await, Ok(200));
        }
        // A rejected push records push_failure_time_seconds on its group.
        let r = request(
            http[0],
            "PUT",
            "/metrics/job/batch/instance@base64/aG9zdC8w",
            &[],
            b"# TYPE g counter\ng 1\n",
            Duration::from_secs(20),
        )
        .await
        .expect("push");
        assert_eq!(r.status, 400, "{}", r.text());

        let dir = c.root.path().to_path_buf();
        let file = dir.join("pgw.backup");
        let file_s = file.display().to_string();
        let out = ctl(&eps, &["backup", &file_s, "-o", "json"]).await.ok();
        let v = out.json();
        assert_eq!(v["groups"], 40, "{v}");
        assert_eq!(
            v["bytes"].as_u64(),
            Some(std::fs::metadata(&file).expect("backup file").len())
        );
        assert!(!dir.join("pgw.backup.tmp").exists());

        // A fresh single node with a gRPC port.
        let fresh_port = free_port();
        let fresh_grpc = vec![format!("127.0.0.1:{fresh_port}")];
        let listen = format!("--cluster.listen-address=127.0.0.1:{fresh_port}");
        let mut args: Vec<&str> = COMMON.to_vec();
        args.push(&listen);
        args.push("--cluster.node-id=7");
        let mut fresh =
            Proc::start_server(Kind::Pgw, "fresh", &dir.join("fresh"), &dir, &args).await;

        // A node that initialised its own cluster cannot be added to another one.
        let foreign = ctl(&eps, &["member", "add", "7", &fresh_grpc[0]]).await;
        assert_eq!(foreign.code, 1, "{foreign:?}");
        assert!(foreign.stderr.contains("another cluster"), "{foreign:?}");
        let wrong_id = ctl(&eps, &["member", "add", "8", &fresh_grpc[0]]).await;
        assert_eq!(wrong_id.code, 1, "{wrong_id:?}");
        assert!(
            wrong_id.stderr.contains("--cluster.node-id 7"),
            "{wrong_id:?}"
        );

        // The last voter cannot be removed; a multi-voter cluster refuses a restore.
        let last = ctl(&fresh_grpc, &["member", "remove", "7"]).await;
        assert_eq!(last.code, 1, "{last:?}");
        assert!(last.stderr.contains("last voter"), "{last:?}");
        let multi = ctl(&eps, &["restore", &file_s]).await;
        assert_eq!(multi.code, 1, "{multi:?}");
        assert!(
            multi.stderr.contains("fresh single-node cluster"),
            "{multi:?}"
        );

        let restored = ctl(&fresh_grpc, &["restore", &file_s, "-o", "json"])
            .await
            .ok();
        assert_eq!(restored.json()["groups"], 40);
        let want = same_metrics(&http, TIMEOUT).await;
        let got = get(fresh.addr, "/metrics", Duration::from_secs(10))
            .await
            .expect("scrape fresh");
        assert_eq!(got.text(), want, "restored /metrics differ");
        assert!(want.contains("push_failure_time_seconds{instance=\"host/0\",job=\"batch\"} 1"));
        let api = |a: SocketAddr| async move {
            get(a, "/api/v1/metrics", Duration::from_secs(10))
                .await
                .expect("api")
                .body
        };
        assert_eq!(api(fresh.addr).await, api(http[0]).await);

        // Restoring over data needs --force; a damaged file is refused.
        let again = ctl(&fresh_grpc, &["restore", &file_s]).await;
        assert_eq!(again.code, 1, "{again:?}");
        assert!(again.stderr.contains("--force"), "{again:?}");
        ctl(&fresh_grpc, &["restore", &file_s, "--force"])
            .await
            .ok();
        let mut bytes = std::fs::read(&file).expect("read backup");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let bad = dir.join("bad.backup");
        std::fs::write(&bad, &bytes).expect("write damaged backup");
        let damaged = ctl(
            &fresh_grpc,
            &["restore", &bad.display().to_string(), "--force"],
        )
        .await;
        assert_eq!(damaged.code, 1, "{damaged:?}");
        assert!(damaged.stderr.contains("CRC"), "{damaged:?}");

        // HTTP shortcuts, through the address the node reports.
        let groups = ctl(&fresh_grpc, &["groups", "-o", "json"])
            .await
            .ok()
            .json();
        let list = groups["groups"].as_array().expect("groups").clone();
        assert_eq!(list.len(), 40);
        let failed: Vec<&serde_json::Value> = list
            .iter()
            .filter(|g| !g["last_failure"].is_null())
            .collect();
        assert_eq!(failed.len(), 1, "{groups}");
        assert_eq!(failed[0]["labels"]["instance"], "host/0");
        assert_eq!(failed[0]["last_push_successful"], false);
        assert_eq!(
            failed[0]["families"],
            serde_json::json!(["c", "g", "h"]),
            "{groups}"
        );
        ctl(&fresh_grpc, &["delete", "job=batch", "instance=host/1"])
            .await
            .ok();
        let groups = ctl(&fresh_grpc, &["groups", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(groups["groups"].as_array().map(Vec::len), Some(39));
        let unconfirmed = ctl(&fresh_grpc, &["wipe"]).await;
        assert_eq!(unconfirmed.code, 2, "{unconfirmed:?}");
        ctl(&fresh_grpc, &["wipe", "--yes"]).await.ok();
        let http_flag = fresh.addr.to_string();
        let groups = ctl(&fresh_grpc, &["groups", "--http", &http_flag, "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(groups["groups"].as_array().map(Vec::len), Some(0));

        // Exit codes: 0 (endpoints from the environment), 2 (usage), 3 (unreachable).
        let from_env = ctl_env(
            &["leader".into(), "-o".into(), "json".into()],
            &[("PGWCTL_ENDPOINTS", &eps.join(","))],
        )
        .await
        .ok();
        assert!(from_env.json()["leader_id"].as_u64().is_some());
        for usage in [
            vec!["member", "add", "four", "127.0.0.1:1"],
            vec!["frobnicate"],
            vec!["--endpoint", "http://127.0.0.1:1", "status"],
            vec!["delete", "instance=x"],
        ] {
            let args: Vec<String> = usage.iter().map(|s| s.to_string()).collect();
            let out = ctl_env(&args, &[]).await;
            assert_eq!(out.code, 2, "{usage:?}: {out:?}");
        }
        let dead = vec![format!("127.0.0.1:{}", free_port())];
        for args in [
            vec!["status"],
            vec!["member", "remove", "2"],
            vec!["backup", "/nonexistent/x"],
        ] {
            let out = ctl(&dead, &args).await;
            assert_eq!(out.code, 3, "{args:?}: {out:?}");
            assert!(out.stderr.contains("cannot reach the cluster"), "{out:?}");
        }
        let json_err = ctl(&dead, &["status", "-o", "json"]).await;
        assert_eq!(json_err.json()["error"]["exit_code"], 3);
        fresh.kill9();
        eprintln!("test took {:?}", t0.elapsed());
    });
}

/// base64url without padding, as Pushgateway clients encode `@base64` path segments.
fn b64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn base64_helper() {
    assert_eq!(b64("host/0"), "aG9zdC8w");
    assert_eq!(b64("a"), "YQ");
    assert_eq!(b64("ab"), "YWI");
}
