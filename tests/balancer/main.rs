//! pgw behind a load balancer: the drain on shutdown that lets a balancer take a node out of
//! rotation before it stops.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::{Kind, Proc, get, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

/// SIGTERM first makes `/-/ready` answer 503 while the node keeps serving (pushes included)
/// for `--web.shutdown-drain`, then the node stops gracefully (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_before_stopping() {
    let root = tempfile::TempDir::new().unwrap();
    let mut n = Proc::start_server(
        Kind::Pgw,
        "drain",
        &root.path().join("d"),
        root.path(),
        &["--web.shutdown-drain=3s"],
    )
    .await;
    let addr = n.addr;
    let sent = Instant::now();
    n.signal(libc::SIGTERM);
    let r = wait_for("/-/ready turns 503 on SIGTERM", TIMEOUT, || async move {
        match get(addr, "/-/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 503 => Ok(r),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        }
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert!(r.text().contains("[-]shutdown"), "{}", r.text());
    // Still serving while draining.
    assert_eq!(
        support::put(addr, "/metrics/job/draining", "m 1\n").await,
        Ok(200)
    );
    let body = get(addr, "/metrics", TIMEOUT).await.unwrap().text();
    assert!(body.contains("job=\"draining\""));
    assert!(n.is_running(), "stopped before the drain ended");
    wait_for("the node exits after the drain", TIMEOUT, || {
        let exited = n.is_running();
        async move {
            if exited {
                Err("running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "stopped {took:?} after SIGTERM, before the 3 s drain ended"
    );
    let log = std::fs::read_to_string(&n.log_path).unwrap();
    assert!(log.contains("draining"), "{log}");
}

/// A second SIGTERM during the drain stops the node at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let root = tempfile::TempDir::new().unwrap();
    let mut n = Proc::start_server(
        Kind::Pgw,
        "drain2",
        &root.path().join("d"),
        root.path(),
        &["--web.shutdown-drain=60s"],
    )
    .await;
    let addr = n.addr;
    n.signal(libc::SIGTERM);
    wait_for("/-/ready turns 503 on SIGTERM", TIMEOUT, || async move {
        match get(addr, "/-/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 503 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        }
    })
    .await;
    let second = Instant::now();
    n.signal(libc::SIGTERM);
    wait_for(
        "the node exits on the second SIGTERM",
        Duration::from_secs(5),
        || {
            let running = n.is_running();
            async move {
                if running {
                    Err("running".to_string())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert!(second.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// Behind a real HAProxy (and nginx): clients know only the balancer's address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::{Balancer, PgwCluster, request};

/// One push as a client saw it.
#[derive(Clone, Debug)]
struct Push {
    group: String,
    start: Instant,
    end: Instant,
    /// The HTTP status, or 0 when no answer came.
    status: u16,
}

/// Clients pushing distinct groups (one per push) through the balancer until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Push>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(lb: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, log) = (stop.clone(), log.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let group = format!("c{c}-{i}");
                        let path = format!("/metrics/job/lb/instance/{group}");
                        let start = Instant::now();
                        let status =
                            match request(lb, "PUT", &path, &[], b"lb_push 1\n", TIMEOUT).await {
                                Ok(r) => r.status,
                                Err(_) => 0,
                            };
                        let end = Instant::now();
                        log.lock().unwrap().push(Push {
                            group,
                            start,
                            end,
                            status,
                        });
                        i += 1;
                    }
                })
            })
            .collect();
        Load { stop, log, tasks }
    }

    fn pushes(&self) -> Vec<Push> {
        self.log.lock().unwrap().clone()
    }

    async fn wait_acks(&self, n: usize) {
        let log = self.log.clone();
        wait_for(&format!("{n} acknowledged pushes"), TIMEOUT, || {
            let acked = log
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.status == 200)
                .count();
            async move {
                if acked >= n {
                    Ok(())
                } else {
                    Err(format!("{acked} acknowledged"))
                }
            }
        })
        .await;
    }

    async fn stop(mut self) -> Vec<Push> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.pushes()
    }
}

/// Every acknowledged push is on every running node (after they converged).
async fn assert_no_acked_push_lost(c: &mut PgwCluster, pushes: &[Push]) {
    let addrs: Vec<SocketAddr> = c
        .nodes
        .iter_mut()
        .filter_map(|n| n.is_running().then_some(n.addr))
        .collect();
    let body = support::same_metrics(&addrs, TIMEOUT).await;
    let lost: Vec<&str> = pushes
        .iter()
        .filter(|p| p.status == 200)
        .filter(|p| !body.contains(&format!("instance=\"{}\"", p.group)))
        .map(|p| p.group.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged pushes lost: {lost:?}",
        lost.len()
    );
}

fn summary(pushes: &[Push]) -> String {
    let mut by: std::collections::BTreeMap<u16, usize> = Default::default();
    for p in pushes {
        *by.entry(p.status).or_default() += 1;
    }
    format!("{} pushes by status {by:?}", pushes.len())
}

async fn leader_of(addr: SocketAddr) -> usize {
    wait_for("a leader is known", TIMEOUT, || async move {
        let r = get(addr, "/api/v1/cluster", Duration::from_secs(2)).await?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        v["data"]["leader"]
            .as_u64()
            .map(|id| id as usize - 1)
            .ok_or_else(|| "no leader".to_string())
    })
    .await
}

/// Cluster nodes with a drain of 2 s (longer than HAProxy's inter 500ms × fall 2).
async fn lb_cluster() -> PgwCluster {
    let mut c = support::start_cluster(
        3,
        &[
            "--web.shutdown-drain=2s",
            "--web.self-metrics-path=/self-metrics",
        ],
    )
    .await;
    for n in c.nodes.iter_mut() {
        n.pin_port();
    }
    c
}

/// [`lb_cluster`] behind HAProxy with the shipped configuration.
async fn haproxy_cluster() -> (PgwCluster, Balancer) {
    let c = lb_cluster().await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let lb = Balancer::haproxy(&addrs, c.root.path()).await;
    (c, lb)
}

/// `kill -9` of the leader while clients push through HAProxy: no acknowledged push is lost,
/// at most 2% fail, and a push sent after the kill is acknowledged within 2 s of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_leader_kill9_loses_nothing() {
    let (mut c, lb) = haproxy_cluster().await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let load = Load::start(lb.addr, 8);
    load.wait_acks(200).await;
    let leader = leader_of(addrs[0]).await;
    let killed = Instant::now();
    c.nodes[leader].kill9();
    let first = wait_for(
        "a push sent after the kill is acknowledged",
        TIMEOUT,
        || {
            let pushes = load.pushes();
            async move {
                pushes
                    .iter()
                    .filter(|p| p.start > killed && p.status == 200)
                    .map(|p| p.end)
                    .min()
                    .ok_or_else(|| "none yet".to_string())
            }
        },
    )
    .await;
    let resumed = first - killed;
    let before = load.pushes().len();
    wait_for("300 more pushes after the kill", TIMEOUT, || {
        let n = load.pushes().len();
        async move {
            if n >= before + 300 {
                Ok(())
            } else {
                Err(format!("{}", n - before))
            }
        }
    })
    .await;
    let pushes = load.stop().await;
    let failed = pushes.iter().filter(|p| p.status != 200).count();
    eprintln!(
        "haproxy leader kill -9: {}; first ack after the kill {resumed:?}",
        summary(&pushes)
    );
    assert!(
        failed * 100 <= pushes.len() * 2,
        "more than 2% failed: {}",
        summary(&pushes)
    );
    assert!(
        resumed <= Duration::from_secs(2),
        "first ack {resumed:?} after the kill"
    );
    assert_no_acked_push_lost(&mut c, &pushes).await;
}

/// The number of requests a node has served so far (its own counter).
async fn served(addr: SocketAddr) -> f64 {
    let text = match get(addr, "/self-metrics", Duration::from_secs(2)).await {
        Ok(r) => r.text(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter(|l| {
            l.starts_with("pushgateway_http_requests_total{") && l.contains("handler=\"push\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A rolling restart of all three nodes with SIGTERM while clients push through `lb`: not one
/// push fails. Each node drains (unready, still serving), stops, comes back on its port, and
/// takes pushes from the balancer again before the next one goes.
async fn rolling_restart_without_failures(c: &mut PgwCluster, lb: &Balancer) {
    let load = Load::start(lb.addr, 8);
    load.wait_acks(100).await;
    for i in 0..c.nodes.len() {
        let status = c.nodes[i].term(TIMEOUT).expect("exits on SIGTERM");
        assert!(status.success(), "node {i} exited with {status}");
        c.nodes[i].restart().await;
        let addr = c.nodes[i].addr;
        let base = served(addr).await;
        wait_for(
            "the restarted node takes pushes from the balancer again",
            TIMEOUT,
            || async move {
                let now = served(addr).await;
                if now > base + 5.0 {
                    Ok(())
                } else {
                    Err(format!("{now} pushes served"))
                }
            },
        )
        .await;
    }
    let pushes = load.stop().await;
    eprintln!("rolling restart: {}", summary(&pushes));
    let failed: Vec<&Push> = pushes.iter().filter(|p| p.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_no_acked_push_lost(c, &pushes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_rolling_restart_fails_no_push() {
    let (mut c, lb) = haproxy_cluster().await;
    rolling_restart_without_failures(&mut c, &lb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_rolling_restart_fails_no_push() {
    let mut c = lb_cluster().await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let lb = Balancer::nginx(&addrs, c.root.path()).await;
    rolling_restart_without_failures(&mut c, &lb).await;
}

/// Two of three nodes killed: within 3 s HAProxy has no ready node left and answers pushes
/// 503 with `Retry-After` itself; once the nodes are back, pushes through it succeed again,
/// without restarting the survivor or the balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_stops_routing_without_quorum_and_recovers() {
    let (mut c, lb) = haproxy_cluster().await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let lba = lb.addr;
    assert_eq!(
        support::put(lba, "/metrics/job/q/instance/before", "m 1\n").await,
        Ok(200)
    );
    let leader = leader_of(addrs[0]).await;
    let victims: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &v in &victims {
        c.nodes[v].kill9();
    }
    let killed = Instant::now();
    let r = wait_for("HAProxy has no ready node", TIMEOUT, || async move {
        let r = request(
            lba,
            "PUT",
            "/metrics/job/q/instance/during",
            &[],
            b"m 2\n",
            TIMEOUT,
        )
        .await?;
        if r.status == 503 && r.text().contains("No server is available") {
            Ok(r)
        } else {
            Err(format!("status {}: {}", r.status, r.text()))
        }
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(3),
        "HAProxy still routed {took:?} after the kills"
    );
    assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.text());
    for &v in &victims {
        c.nodes[v].restart().await;
    }
    wait_for(
        "pushes through HAProxy succeed again",
        TIMEOUT,
        || async move {
            match support::put(lba, "/metrics/job/q/instance/after", "m 3\n").await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// The shipped balancer configurations are valid for the balancers themselves
/// (`haproxy -c`, `nginx -t` with the site in a minimal main configuration).
#[test]
fn shipped_configs_pass_haproxy_c_and_nginx_t() {
    let cfg = support::repo_file("deploy/haproxy/haproxy.cfg");
    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("run haproxy -c (apt-get install haproxy)");
    assert!(
        out.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::TempDir::new().unwrap();
    let site = support::repo_file("deploy/nginx/pgw.conf");
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n    access_log off;\n    \
         include {};\n}}\n",
        site.display(),
        d = dir.path().display()
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let out = std::process::Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("run nginx -t (apt-get install nginx)");
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Real clients that know only the balancer: curl, the Python `prometheus_client`
/// (`push_to_gateway`, `pushadd_to_gateway`) and the load tool
/// `pgw-load` push through HAProxy; everything lands on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_clients_through_haproxy() {
    let (mut c, lb) = haproxy_cluster().await;
    let url = format!("http://{}", lb.addr);
    // curl
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "@-",
        ])
        .arg(format!("{url}/metrics/job/curl/instance/lb"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b"curl_pushed 1\n")?;
            }
            child.wait_with_output()
        })
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // prometheus_client
    let script = support::repo_file("tests/clients/push.py");
    let py = support::test_python();
    for step in ["push", "pushadd"] {
        let out = std::process::Command::new(&py)
            .arg(&script)
            .args([lb.addr.to_string().as_str(), step])
            .output()
            .expect("run push.py");
        assert!(
            out.status.success(),
            "prometheus_client {step} through HAProxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // pgw-load
    let load = support::pgw_binary().with_file_name("pgw-load");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(load)
            .args([
                "--url", &url, "-c", "4", "-d", "2", "--groups", "20", "push",
            ])
            .output()
            .expect("run pgw-load")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pgw-load: {report}");
    let pushed = report
        .lines()
        .find(|l| l.starts_with("push:"))
        .unwrap_or_else(|| panic!("no push line in {report}"));
    let ok_of: Vec<&str> = pushed.split_whitespace().collect();
    // "push: N ok of M in ..."
    assert_eq!(
        ok_of.get(1),
        ok_of.get(4),
        "pgw-load saw failures: {pushed}"
    );
    let addrs: Vec<SocketAddr> = c
        .nodes
        .iter_mut()
        .filter_map(|n| n.is_running().then_some(n.addr))
        .collect();
    let body = support::same_metrics(&addrs, TIMEOUT).await;
    assert!(
        body.contains("curl_pushed{instance=\"lb\",job=\"curl\"} 1"),
        "{body}"
    );
    assert!(body.contains("pgw_load_gauge"), "pgw-load's pushes missing");
    assert!(
        body.contains("job_extra{instance=\"host-1\",job=\"batch\"} 7"),
        "prometheus_client's pushes missing: {body}"
    );
}
