//! The process harness of the chaos scenarios: `pgw` nodes as child processes (tracked and
//! ended by PID), loopback TCP proxies on the Raft links, the client load that records every
//! write in a [`pgw_testkit::History`], and the final convergence and check.
//!
//! Practices (reference/test-strategy.md §6): loopback only; every wait polls observable
//! state against a deadline and says what it waited for; every process is ours and is
//! killed by PID on drop; a failing scenario dumps the logs of its nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgw_testkit::push_time::{PushTimeSample, samples_of};
use pgw_testkit::{History, OpKind, Outcome, ReplicaView, ScenarioReport, Workload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::{free_port, get, request};

/// Raft timing of every node: a heartbeat well under the election timeout, with room for a
/// loaded 2-core machine running debug builds.
pub const HEARTBEAT: &str = "100ms";
/// Election timeout of every node.
pub const ELECTION: Duration = Duration::from_millis(600);
/// How long a node waits for a leader before answering 503.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(8);
/// A client gives up on a request after this (longer than the write timeout, so most
/// unknown outcomes are 503s, not client timeouts).
pub const REQ_TIMEOUT: Duration = Duration::from_secs(11);
/// Bound of every wait for the cluster (readiness, leader, convergence).
pub const WAIT: Duration = Duration::from_secs(60);
/// At most this many write-once groups per scenario.
const MAX_FRESH_GROUPS: u64 = 5000;
/// The families the load pushes.
pub const FAMILIES: [&str; 3] = ["chaos_a", "chaos_b", "chaos_c"];

/// Milliseconds since `t0` (the history's clock).
pub fn ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// The `pgw` binary of the same profile as this test.
pub fn pgw_binary() -> PathBuf {
    crate::support::pgw_binary()
}

/// The `pgw` binary built with fail points, if there is one: `PGW_FAILPOINTS_BIN`, else
/// `target/failpoints/<profile>/pgw` (what `.ci/run` builds with
/// `CARGO_TARGET_DIR=target/failpoints cargo build --bin pgw --features pgw-server/failpoints`).
pub fn failpoints_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGW_FAILPOINTS_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let prod = pgw_binary();
    let profile = prod.parent()?.file_name()?.to_owned();
    let target = prod.parent()?.parent()?;
    let p = target.join("failpoints").join(profile).join("pgw");
    p.is_file().then_some(p)
}

/// `target/<profile>/pgwctl`, next to `pgw`.
pub fn pgwctl_binary() -> PathBuf {
    let bin = pgw_binary().with_file_name("pgwctl");
    assert!(
        bin.is_file(),
        "the pgwctl binary is missing at {}: run `cargo build --bin pgwctl` first",
        bin.display()
    );
    bin
}

/// Where report lines are appended (besides stderr): `CHAOS_REPORT_FILE`, else
/// `target/<profile>/chaos-report.txt`, which `.ci/run` prints.
pub fn report_file() -> PathBuf {
    if let Ok(p) = std::env::var("CHAOS_REPORT_FILE") {
        return PathBuf::from(p);
    }
    pgw_binary().with_file_name("chaos-report.txt")
}

/// `CHAOS_DURATION` (seconds of fault phase per scenario), default `ci`.
pub fn chaos_duration(ci: u64) -> Duration {
    let s = std::env::var("CHAOS_DURATION")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(ci);
    Duration::from_secs(s.max(1))
}

/// `CHAOS_SEED`, else a fresh one; printed so a run can be replayed (as far as real
/// processes allow: the seed fixes the choices, not the timing).
pub fn chaos_seed(scenario: &str) -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("chaos {scenario}: seed {seed} (replay the choices with CHAOS_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------
// Nodes.

/// One `pgw` node: a child process, restartable on the same directory and gRPC port.
pub struct NodeProc {
    pub id: u64,
    pub name: String,
    /// The node's real gRPC address (its address in the membership).
    pub grpc: String,
    /// The current HTTP address (kept across restarts when the port is still free).
    pub http: SocketAddr,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Bumped on every start.
    pub incarnation: u64,
    stopped: bool,
}

impl NodeProc {
    pub fn new(id: u64, root: &Path, grpc: String, binary: PathBuf, args: Vec<String>) -> NodeProc {
        let name = format!("node{id}");
        NodeProc {
            id,
            grpc,
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: root.join(&name),
            log_path: root.join(format!("{name}.log")),
            name,
            binary,
            args,
            child: None,
            incarnation: 0,
            stopped: false,
        }
    }

    /// Starts the process (with extra `env`, e.g. `FAILPOINTS`) and waits until its HTTP
    /// server answers `/-/healthy`; retries on a fresh HTTP port when the old one is taken.
    pub async fn start(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{}: already running", self.name);
        for attempt in 1..=5 {
            self.incarnation += 1;
            let mut log = File::options()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("open log");
            let _ = writeln!(
                log,
                "==== harness: {} incarnation {} on http {} env {env:?} ====",
                self.name, self.incarnation, self.http
            );
            let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            let mut cmd = Command::new(&self.binary);
            cmd.args(&self.args)
                .arg(format!("--web.listen-address={}", self.http))
                .arg(format!("--storage.path={}", self.dir.display()))
                .env_remove("FAILPOINTS")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log")))
                .stderr(Stdio::from(log));
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
            self.child = Some(child);
            self.stopped = false;
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = self.exited() {
                    let data = std::fs::read(&self.log_path).unwrap_or_default();
                    let text = String::from_utf8_lossy(data.get(log_start..).unwrap_or_default())
                        .into_owned();
                    if text.contains("ddress already in use") && attempt < 5 {
                        eprintln!(
                            "{}: port {} taken; retrying on a fresh one",
                            self.name, self.http
                        );
                        self.http = SocketAddr::from(([127, 0, 0, 1], free_port()));
                        break;
                    }
                    panic!("{} exited at start ({status}); log:\n{text}", self.name);
                }
                if let Ok(r) = get(self.http, "/-/healthy", Duration::from_secs(2)).await
                    && r.status == 200
                {
                    return;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{}: /-/healthy did not answer within {WAIT:?}; log:\n{}",
                        self.name,
                        self.log_tail(4000)
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("{}: could not bind an HTTP port", self.name);
    }

    /// The exit status, if the child exited (and reaps it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn is_running(&mut self) -> bool {
        self.exited();
        self.child.is_some()
    }

    /// Running and not SIGSTOPped.
    pub fn is_serving(&mut self) -> bool {
        self.is_running() && !self.stopped
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped = false;
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the PID of our own child, not reaped yet (we hold the
            // `Child`), so the PID cannot have been reused.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGSTOP: the process freezes (its sockets stay open, nothing answers).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// SIGTERM, then wait up to `timeout` for a graceful exit (SIGKILL after). Returns
    /// whether it exited on its own with status 0.
    pub async fn term(&mut self, timeout: Duration) -> bool {
        if self.child.is_none() {
            return false;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status.success();
            }
            if Instant::now() >= deadline {
                self.kill9();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/-/ready` until 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match get(self.http, "/-/ready", Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e,
            };
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) while waiting for readiness; log:\n{}",
                    self.name,
                    self.log_tail(4000)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: not ready within {WAIT:?} (last: {last}); log:\n{}",
                    self.name,
                    self.log_tail(4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log_tail(&self, max: usize) -> String {
        let data = std::fs::read(&self.log_path).unwrap_or_default();
        let start = data.len().saturating_sub(max);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    /// Panic lines of the whole log (every incarnation), except those a fail point caused.
    pub fn panics(&self) -> Vec<String> {
        let data = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(&data)
            .lines()
            .filter(|l| l.contains("panicked at") || l.contains("stack overflow"))
            .filter(|l| !l.contains("FAILPOINT"))
            .map(str::to_string)
            .collect()
    }

    /// Whether a fail point fired in this node's log.
    pub fn failpoint_fired(&self, name: &str) -> bool {
        let data = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(&data).contains(&format!("FAILPOINT {name} fired"))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------
// Link proxies.

/// A directed Raft link A→B through a loopback proxy: A dials the proxy (its
/// `--cluster.peer-dial`), the proxy dials B. `cut()` closes live connections and refuses new
/// ones; `heal()` lets them through again.
pub struct LinkProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections being relayed.
    live: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    pub async fn start(target: String) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let live2 = live.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                // Counted before the cut flag is read, so `cut()` waits for this one too.
                live2.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                let mut rx = cut_rx.clone();
                let live = live2.clone();
                tokio::spawn(async move {
                    if !*rx.borrow()
                        && let Ok(mut outbound) = TcpStream::connect(&target).await
                    {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            biased;
                            _ = rx.wait_for(|c| *c) => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    }
                    drop(inbound);
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        LinkProxy {
            addr,
            cut,
            live,
            task,
        }
    }

    /// Refuses new connections and closes live ones; returns once none is relayed any more.
    pub async fn cut(&self) {
        let _ = self.cut.send(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn heal(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The cluster.

/// How to start a cluster.
pub struct Opts {
    pub nodes: u64,
    /// Put a [`LinkProxy`] on every directed Raft link.
    pub proxied: bool,
    pub snapshot_every: u64,
    pub binary: PathBuf,
    /// Extra environment of each node's first start (e.g. `FAILPOINTS`).
    pub env: BTreeMap<u64, Vec<(String, String)>>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 3,
            proxied: false,
            snapshot_every: 500,
            binary: pgw_binary(),
            env: BTreeMap::new(),
        }
    }
}

pub struct Cluster {
    pub root: TempDir,
    pub nodes: Vec<NodeProc>,
    /// (from, to) → proxy.
    pub proxies: BTreeMap<(u64, u64), LinkProxy>,
    /// Nodes removed from the membership (not checked at the end).
    pub removed: BTreeSet<u64>,
    /// The addresses the load pushes to; updated on restarts.
    pub targets: Targets,
    pub snapshot_every: u64,
    failed: bool,
}

/// The nodes clients may push to: id → (HTTP address, incarnation).
pub type Targets = Arc<Mutex<BTreeMap<u64, (SocketAddr, u64)>>>;

/// Flags of every node besides its identity and addresses.
pub fn common_args(snapshot_every: u64) -> Vec<String> {
    vec![
        "--web.self-metrics-path=/self-metrics".into(),
        "--web.enable-admin-api".into(),
        format!("--raft.heartbeat-interval={HEARTBEAT}"),
        format!("--raft.election-timeout={}ms", ELECTION.as_millis()),
        format!("--cluster.write-timeout={}s", WRITE_TIMEOUT.as_secs()),
        format!("--raft.snapshot-every={snapshot_every}"),
        "--log.level=info".into(),
        // The scenarios stop nodes on purpose; the drain is tested behind a load balancer.
        "--web.shutdown-drain=0s".into(),
    ]
}

impl Cluster {
    /// Starts a static cluster of `opts.nodes` nodes concurrently and waits until every
    /// node is ready.
    pub async fn start(opts: Opts) -> Cluster {
        let root = TempDir::new().expect("tempdir");
        let n = opts.nodes;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let grpc = |id: u64| format!("127.0.0.1:{}", ports[(id - 1) as usize]);
        let peers = (1..=n)
            .map(|id| format!("{id}={}", grpc(id)))
            .collect::<Vec<_>>()
            .join(",");
        let mut proxies = BTreeMap::new();
        if opts.proxied {
            for from in 1..=n {
                for to in (1..=n).filter(|t| *t != from) {
                    proxies.insert((from, to), LinkProxy::start(grpc(to)).await);
                }
            }
        }
        let mut nodes = Vec::new();
        for id in 1..=n {
            let mut args = vec![
                format!("--cluster.node-id={id}"),
                format!("--cluster.peers={peers}"),
                format!("--cluster.listen-address={}", grpc(id)),
            ];
            args.extend(common_args(opts.snapshot_every));
            let dial: Vec<String> = proxies
                .iter()
                .filter(|((from, _), _)| *from == id)
                .map(|((_, to), p)| format!("{to}={}", p.addr))
                .collect();
            if !dial.is_empty() {
                args.push(format!("--cluster.peer-dial={}", dial.join(",")));
            }
            nodes.push(NodeProc::new(
                id,
                root.path(),
                grpc(id),
                opts.binary.clone(),
                args,
            ));
        }
        let mut c = Cluster {
            root,
            nodes,
            proxies,
            removed: BTreeSet::new(),
            targets: Arc::default(),
            snapshot_every: opts.snapshot_every,
            failed: true,
        };
        for n in c.nodes.iter_mut() {
            let env: Vec<(String, String)> = opts.env.get(&n.id).cloned().unwrap_or_default();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            n.start(&env).await;
        }
        for n in c.nodes.iter_mut() {
            n.wait_ready().await;
        }
        c.refresh_targets();
        c
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Ids of the nodes that are members (not removed).
    pub fn member_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| !self.removed.contains(id))
            .collect()
    }

    /// Publishes the current HTTP addresses of every running member to the load. Stopped
    /// (SIGSTOPped) nodes stay targets: clients keep pushing to them.
    pub fn refresh_targets(&mut self) {
        let removed = self.removed.clone();
        let m: BTreeMap<u64, (SocketAddr, u64)> = self
            .nodes
            .iter_mut()
            .filter(|n| !removed.contains(&n.id))
            .filter_map(|n| n.is_running().then_some((n.id, (n.http, n.incarnation))))
            .collect();
        *self.targets.lock().expect("targets") = m;
    }

    /// Like [`Self::refresh_targets`], but dead nodes stay targets too (clients hit refused
    /// connections, as behind a load balancer that has not noticed yet).
    pub fn targets_all(&mut self) {
        let removed = self.removed.clone();
        let m: BTreeMap<u64, (SocketAddr, u64)> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.id))
            .map(|n| (n.id, (n.http, n.incarnation)))
            .collect();
        *self.targets.lock().expect("targets") = m;
    }

    /// Restarts node `id` (killing it first if needed) and waits until it is ready.
    pub async fn restart(&mut self, id: u64, env: &[(&str, &str)]) {
        let n = self.node(id);
        n.kill9();
        n.start(env).await;
        n.wait_ready().await;
        self.refresh_targets();
    }

    /// The leader every serving member agrees on.
    pub async fn leader(&mut self) -> u64 {
        let addrs: Vec<SocketAddr> = {
            let removed = self.removed.clone();
            self.nodes
                .iter_mut()
                .filter(|n| !removed.contains(&n.id))
                .filter_map(|n| n.is_serving().then_some(n.http))
                .collect()
        };
        crate::support::wait_for("every serving node names one leader", WAIT, || {
            let addrs = addrs.clone();
            async move {
                let mut leaders = BTreeSet::new();
                for a in &addrs {
                    let v = cluster_view(*a).await?;
                    leaders.insert(v["data"]["leader"].as_u64().ok_or("no leader")?);
                }
                if leaders.len() == 1 {
                    Ok(*leaders.iter().next().unwrap_or(&0))
                } else {
                    Err(format!("leaders {leaders:?}"))
                }
            }
        })
        .await
    }

    /// Cuts every link between `id` and the other nodes, both directions; returns once no
    /// byte can pass any more.
    pub async fn isolate(&self, id: u64) {
        for ((from, to), p) in &self.proxies {
            if *from == id || *to == id {
                p.cut().await;
            }
        }
    }

    pub fn heal_all(&self) {
        for p in self.proxies.values() {
            p.heal();
        }
    }

    /// Waits until every serving member is ready, has applied the same index and serves
    /// byte-identical `/metrics` on two polls in a row; returns the views.
    pub async fn converge(&mut self, w: &Workload) -> Vec<ReplicaView> {
        let members = self.member_ids();
        for id in &members {
            let n = self.node(*id);
            if n.is_serving() {
                n.wait_ready().await;
            }
        }
        let nodes: Vec<(String, SocketAddr)> = {
            let removed = self.removed.clone();
            self.nodes
                .iter_mut()
                .filter(|n| !removed.contains(&n.id))
                .filter_map(|n| n.is_serving().then(|| (n.name.clone(), n.http)))
                .collect()
        };
        let previous: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let bodies = crate::support::wait_for(
            "converged replicas: same applied index, byte-identical /metrics twice in a row",
            WAIT,
            || {
                let nodes = nodes.clone();
                let previous = previous.clone();
                async move {
                    let mut applied = BTreeSet::new();
                    for (_, a) in &nodes {
                        let v = cluster_view(*a).await?;
                        applied.insert(v["data"]["applied_index"].as_u64().unwrap_or(0));
                    }
                    if applied.len() != 1 {
                        return Err(format!("applied indexes {applied:?}"));
                    }
                    let mut bodies = Vec::new();
                    for (name, a) in &nodes {
                        let r = get(*a, "/metrics", Duration::from_secs(10)).await?;
                        if r.status != 200 {
                            return Err(format!("{name}: /metrics status {}", r.status));
                        }
                        bodies.push((name.clone(), r.body));
                    }
                    if !bodies.windows(2).all(|w| w[0].1 == w[1].1) {
                        *previous.lock().expect("prev") = None;
                        return Err("bodies differ".into());
                    }
                    let mut prev = previous.lock().expect("prev");
                    if prev.as_deref() == Some(bodies[0].1.as_slice()) {
                        Ok(bodies)
                    } else {
                        *prev = Some(bodies[0].1.clone());
                        Err("identical once; polling again to see it stable".into())
                    }
                }
            },
        )
        .await;
        let panics: BTreeMap<String, Vec<String>> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.panics()))
            .collect();
        bodies
            .into_iter()
            .map(|(name, body)| {
                let mut v = w.parse(&name, &body);
                v.panics = panics.get(&name).cloned().unwrap_or_default();
                v
            })
            .collect()
    }

    /// Marks the scenario successful: logs are not dumped on drop.
    pub fn passed(&mut self) {
        self.failed = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut() {
            n.kill9();
        }
        let keep = std::env::var_os("CHAOS_KEEP").is_some();
        if keep && !self.failed {
            let kept = self.root.path().to_path_buf();
            let root = std::mem::replace(&mut self.root, TempDir::new().expect("tempdir"));
            let _ = root.keep();
            eprintln!(
                "chaos: CHAOS_KEEP: kept data and logs in {}",
                kept.display()
            );
        }
        if self.failed || std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "---- log of {} ({}) ----\n{}\n---- end of log ----",
                    n.name,
                    n.log_path.display(),
                    n.log_tail(6000)
                );
            }
            // Keep the directory (data, full logs) for a post-mortem.
            let kept = self.root.path().to_path_buf();
            let root = std::mem::replace(&mut self.root, TempDir::new().expect("tempdir"));
            let _ = root.keep();
            eprintln!("chaos: kept data and logs in {}", kept.display());
        }
    }
}

pub async fn cluster_view(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let r = get(addr, "/api/v1/cluster", Duration::from_secs(2)).await?;
    if r.status != 200 {
        return Err(format!("/api/v1/cluster: {}", r.status));
    }
    serde_json::from_slice(&r.body).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// The load.

/// Clients pushing through random nodes, and a sampler of push times; every write is in
/// `history`.
pub struct Load {
    pub t0: Instant,
    pub history: History,
    pub workload: Workload,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    samples: Arc<Mutex<Vec<PushTimeSample>>>,
    /// Answers outside 2xx/503 or transport errors, for the report (id, note).
    pub unexpected: Arc<Mutex<Vec<String>>>,
    next_value: Arc<AtomicU64>,
}

impl Load {
    /// Starts `clients` clients writing to `groups` groups through `targets`.
    pub fn start(targets: Targets, clients: u64, groups: u64, seed: u64) -> Load {
        let t0 = Instant::now();
        let history = History::new();
        let workload = Workload::new("chaos", 2);
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<PushTimeSample>>> = Arc::default();
        let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
        let next_value = Arc::new(AtomicU64::new(1));
        let fresh = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (targets, history, workload, stop, unexpected, next_value, fresh) = (
                targets.clone(),
                history.clone(),
                workload.clone(),
                stop.clone(),
                unexpected.clone(),
                next_value.clone(),
                fresh.clone(),
            );
            let mut rng = StdRng::seed_from_u64(seed ^ (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let pick = {
                        let t = targets.lock().expect("targets");
                        if t.is_empty() {
                            None
                        } else {
                            // A third of the clients pick a node at random for every write;
                            // the others stick to one (as a script configured with one
                            // gateway does), so a frozen or cut-off node holds only its own
                            // clients while the others keep the majority busy.
                            let i = if c % 3 == 0 {
                                rng.gen_range(0..t.len())
                            } else {
                                (c as usize / 3 + c as usize) % t.len()
                            };
                            t.iter().nth(i).map(|(id, (a, _))| (*id, *a))
                        }
                    };
                    let Some((node, addr)) = pick else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    // A quarter of the writes create a group nobody writes again, so every one
                    // of them acknowledged must be visible at the end (up to a cap that keeps
                    // long runs' bodies small); the rest mix PUT/POST/DELETE on shared groups.
                    let (group, kind) = if rng.gen_bool(0.25)
                        && fresh.fetch_add(1, Ordering::Relaxed) < MAX_FRESH_GROUPS
                    {
                        (format!("once-{c}-{}", rng.r#gen::<u32>()), OpKind::Put)
                    } else {
                        let kind = match rng.gen_range(0..100) {
                            0..45 => OpKind::Put,
                            45..85 => OpKind::Post,
                            _ => OpKind::Delete,
                        };
                        (format!("g{:02}", rng.gen_range(0..groups)), kind)
                    };
                    let mut fams: Vec<String> = FAMILIES
                        .iter()
                        .filter(|_| rng.gen_bool(0.5))
                        .map(|s| s.to_string())
                        .collect();
                    if fams.is_empty() {
                        fams.push(FAMILIES[rng.gen_range(0..FAMILIES.len())].to_string());
                    }
                    let id = write_once(
                        &history,
                        &workload,
                        &next_value,
                        &unexpected,
                        c,
                        &group,
                        kind,
                        &fams,
                        node,
                        addr,
                        t0,
                    )
                    .await;
                    // A refused connection (node down) returns at once: do not spin.
                    if history
                        .get(id)
                        .is_some_and(|o| o.outcome == Outcome::Failed)
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        // The push-time sampler: every serving node's /metrics, labelled with its incarnation
        // read before and after (a sample across a restart is dropped).
        {
            let (targets, workload, stop, samples) = (
                targets.clone(),
                workload.clone(),
                stop.clone(),
                samples.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let snapshot: Vec<(u64, SocketAddr, u64)> = targets
                        .lock()
                        .expect("targets")
                        .iter()
                        .map(|(id, (a, inc))| (*id, *a, *inc))
                        .collect();
                    for (id, addr, inc) in snapshot {
                        let at = ms(t0);
                        let Ok(r) = get(addr, "/metrics", Duration::from_secs(1)).await else {
                            continue;
                        };
                        let same = targets
                            .lock()
                            .expect("targets")
                            .get(&id)
                            .is_some_and(|(a, i)| *a == addr && *i == inc);
                        if r.status == 200 && same {
                            let v = workload.parse(&format!("node{id}"), &r.body);
                            samples
                                .lock()
                                .expect("samples")
                                .extend(samples_of(&v, inc, at));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }));
        }
        Load {
            t0,
            history,
            workload,
            stop,
            tasks,
            samples,
            unexpected,
            next_value,
        }
    }

    pub fn now_ms(&self) -> u64 {
        ms(self.t0)
    }

    /// Waits until `n` more writes than now are acknowledged.
    pub async fn wait_acks(&self, n: usize) {
        let target = self.history.acked() + n;
        let h = self.history.clone();
        crate::support::wait_for(&format!("{n} more acknowledged writes"), WAIT, || {
            let h = h.clone();
            async move {
                let a = h.acked();
                if a >= target {
                    Ok(())
                } else {
                    let c = h.counts();
                    Err(format!(
                        "acked {} failed {} unknown {}",
                        c.acked, c.failed, c.unknown
                    ))
                }
            }
        })
        .await
    }

    /// Waits until a write sent at or after `t_ms` is acknowledged; returns the delay.
    pub async fn wait_ack_after(&self, t_ms: u64) -> Duration {
        let h = self.history.clone();
        let d =
            crate::support::wait_for("an acknowledged write sent after the fault", WAIT, || {
                let h = h.clone();
                async move {
                    h.first_ack_after(t_ms)
                        .ok_or_else(|| "none yet".to_string())
                }
            })
            .await;
        Duration::from_millis(d)
    }

    /// Stops the clients (each finishes its request, bounded by [`REQ_TIMEOUT`]).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("load task");
        }
    }

    /// One more write of every kind through every given node, each of which must be
    /// acknowledged (liveness after heal).
    pub async fn probe(&self, nodes: &[(u64, SocketAddr)]) {
        for (i, (node, addr)) in nodes.iter().enumerate() {
            let group = format!("probe{i}");
            let fams = vec![FAMILIES[0].to_string()];
            let deadline = Instant::now() + WAIT;
            loop {
                let id = write_once(
                    &self.history,
                    &self.workload,
                    &self.next_value,
                    &self.unexpected,
                    u64::MAX,
                    &group,
                    OpKind::Put,
                    &fams,
                    *node,
                    *addr,
                    self.t0,
                )
                .await;
                if self
                    .history
                    .get(id)
                    .is_some_and(|o| o.outcome == Outcome::Acked)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node{node} acknowledged no write within {WAIT:?} after heal"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// One write through `node` (recorded like the others); its outcome and latency.
    pub async fn write_through(
        &self,
        node: u64,
        addr: SocketAddr,
        group: &str,
    ) -> (Outcome, Duration) {
        let started = Instant::now();
        let id = write_once(
            &self.history,
            &self.workload,
            &self.next_value,
            &self.unexpected,
            u64::MAX - 1,
            group,
            OpKind::Put,
            &[FAMILIES[1].to_string()],
            node,
            addr,
            self.t0,
        )
        .await;
        (
            self.history.get(id).map_or(Outcome::Pending, |o| o.outcome),
            started.elapsed(),
        )
    }

    pub fn samples(&self) -> Vec<PushTimeSample> {
        self.samples.lock().expect("samples").clone()
    }
}

/// Sends one write, records it; returns its id in the history.
#[allow(clippy::too_many_arguments)]
async fn write_once(
    history: &History,
    workload: &Workload,
    next_value: &AtomicU64,
    unexpected: &Mutex<Vec<String>>,
    client: u64,
    group: &str,
    kind: OpKind,
    fams: &[String],
    node: u64,
    addr: SocketAddr,
    t0: Instant,
) -> usize {
    let value = next_value.fetch_add(1, Ordering::Relaxed);
    let node_name = format!("node{node}");
    let id = history.begin(client, group, kind, fams, value, &node_name, ms(t0));
    let body = workload.body_of(kind, fams, value);
    let r = request(
        addr,
        kind.method(),
        &workload.path(group),
        &[],
        &body,
        REQ_TIMEOUT,
    )
    .await;
    let end = ms(t0);
    let (outcome, note) = match r {
        Ok(resp) => {
            let o = Outcome::from_http(Some(resp.status), true);
            if !(200..300).contains(&resp.status) && resp.status != 503 {
                unexpected.lock().expect("unexpected").push(format!(
                    "{} {} via {node_name}: {} {}",
                    kind.method(),
                    group,
                    resp.status,
                    resp.text().trim()
                ));
            }
            (o, resp.status.to_string())
        }
        // Refused: the request never left the client.
        Err(e) if e.starts_with("connect ") => (Outcome::Failed, e),
        Err(e) => (Outcome::Unknown, e),
    };
    history.finish(id, outcome, end, &note);
    id
}

// ---------------------------------------------------------------------------------------
// The end of a scenario.

/// What a scenario measured besides the history.
#[derive(Default)]
pub struct Timings {
    pub fault_to_first_ack: Option<Duration>,
}

/// Stops the load, heals, probes every member, converges, checks and reports. Panics with
/// every violation (and keeps the logs) if the check fails.
pub async fn finish(
    scenario: &str,
    started: Instant,
    cluster: &mut Cluster,
    load: &mut Load,
    timings: Timings,
) -> ScenarioReport {
    load.stop().await;
    cluster.heal_all();
    let heal = Instant::now();
    for id in cluster.member_ids() {
        let n = cluster.node(id);
        if !n.is_running() {
            n.start(&[]).await;
        }
    }
    cluster.refresh_targets();
    let probes: Vec<(u64, SocketAddr)> = cluster
        .targets
        .lock()
        .expect("targets")
        .iter()
        .map(|(id, (a, _))| (*id, *a))
        .collect();
    load.probe(&probes).await;
    let views = cluster.converge(&load.workload).await;
    let converge = heal.elapsed();
    let (summary, violations) =
        pgw_testkit::check_all(&load.history.ops(), &views, &load.samples());
    let unexpected = load.unexpected.lock().expect("unexpected").clone();
    let report = ScenarioReport {
        scenario: scenario.to_string(),
        duration: started.elapsed(),
        summary,
        fault_to_first_ack: timings.fault_to_first_ack,
        converge: Some(converge),
        violations: violations.len() + unexpected.len(),
    };
    let line = report.to_string();
    eprintln!("{line}");
    if let Ok(mut f) = File::options()
        .create(true)
        .append(true)
        .open(report_file())
    {
        let _ = writeln!(f, "{line}");
    }
    if !violations.is_empty() || !unexpected.is_empty() {
        let hist = cluster.root.path().join("history.jsonl");
        let _ = std::fs::write(&hist, load.history.to_json_lines());
        let shown: Vec<String> = violations.iter().take(40).map(|v| v.to_string()).collect();
        panic!(
            "{scenario}: {} violations, {} unexpected answers (history in {}):\n{}\n{}",
            violations.len(),
            unexpected.len(),
            hist.display(),
            shown.join("\n"),
            unexpected
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        report.summary.counts.acked > 0,
        "{scenario}: no write was acknowledged"
    );
    cluster.passed();
    report
}
