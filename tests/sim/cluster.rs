//! Whole pgw nodes as turmoil hosts: the real Raft node (`pgw_raft::Node::start_with`), its
//! gRPC server and peer channels on the simulated network, the real HTTP API
//! (`pgw_server::serve`) on a simulated listener, the in-memory store whose durable part
//! (`MemDisk`) lives outside the host and survives crashes, and a simulated wall clock.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::RaftMetrics;
use pgw_raft::{Bootstrap, Channels, Node, NodeConfig, NodeParts};
use pgw_store::mem::{MemConfig, MemDisk};
use tokio::sync::watch;
use turmoil::net::TcpListener;

use crate::net;

/// openraft's metrics of a pgw node.
pub type Metrics = RaftMetrics<u64, pgw_store::Node>;

/// The host name of node `id`.
pub fn host(id: u64) -> String {
    format!("n{id}")
}

/// The gRPC address of node `id`, as recorded in the membership.
pub fn raft_addr(id: u64) -> String {
    format!("n{id}:{}", net::GRPC_PORT)
}

/// The HTTP address of node `id`.
pub fn http_addr(id: u64) -> String {
    format!("n{id}:{}", net::HTTP_PORT)
}

/// How one node is configured; derived from the seed.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Raft node id.
    pub id: u64,
    /// This node's fixed election timeout (seed-derived, distinct per node).
    pub election_timeout: Duration,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// How long a write may wait for a leader before the node answers 503.
    pub write_timeout: Duration,
    /// `--raft.snapshot-every`.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot.
    pub keep_logs: u64,
    /// The store's durability timing.
    pub mem: MemConfig,
    /// Offset of this node's wall clock from the simulation's (ms; push timestamps).
    pub clock_skew_ms: i64,
    /// How the node finds its cluster on (re)start.
    pub bootstrap: Bootstrap,
}

/// What the driver can see of a node from outside its host.
#[derive(Default)]
pub struct Probe {
    /// Started incarnations (bumped each time the software starts).
    pub incarnation: u64,
    /// openraft's metrics of the current incarnation.
    pub metrics: Option<watch::Receiver<Metrics>>,
    /// The applied store of the current incarnation (what its `/metrics` renders).
    pub store: Option<pgw_store::SharedStore>,
    /// The running node of the current incarnation (its health: quorum contact).
    pub node: Option<Arc<Node>>,
    /// Whether the host runs (false after a crash, until the restart).
    pub running: bool,
}

/// A node slot: its configuration and disk (replaceable before a restart) and its probe.
pub struct Slot {
    /// Configuration used at the next start.
    pub spec: NodeSpec,
    /// The durable part of its store.
    pub disk: MemDisk,
    /// The outside view.
    pub probe: Probe,
}

/// A node slot shared between the driver and the host's software.
pub type SlotRef = Arc<Mutex<Slot>>;

/// Locks, ignoring poisoning (a panic is reported separately).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Slot {
    /// The current metrics, if the node runs.
    pub fn metrics(&self) -> Option<Metrics> {
        if !self.probe.running {
            return None;
        }
        self.probe.metrics.as_ref().map(|m| m.borrow().clone())
    }
}

/// A simulated wall clock: the simulation's, shifted by a fixed skew.
struct SimClock {
    skew_ms: i64,
}

impl pgw_server::Clock for SimClock {
    fn now(&self) -> SystemTime {
        let base = UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default();
        let skew = Duration::from_millis(self.skew_ms.unsigned_abs());
        if self.skew_ms >= 0 {
            base + skew
        } else {
            base - skew
        }
    }
}

/// Fixes openraft's election timeout to the node's seed-derived minimum: openraft 0.9 draws
/// each timeout from `rand::thread_rng()` in `[min, max)`, so `max = min + 1` makes it
/// reproducible.
fn fixed_election_timeout(c: &mut openraft::Config) {
    c.election_timeout_max = c.election_timeout_min + 1;
}

/// The HTTP settings of every simulated node: self-metrics on their own path, so that the
/// telemetry path is byte-identical on every replica.
fn settings() -> Result<pgw_server::config::Settings, String> {
    pgw_server::Config::try_parse_from(["pgw", "--web.self-metrics-path=/self-metrics"])
        .map_err(|e| e.to_string())?
        .validate()
        .map_err(|e| e.to_string())
}

/// The software of one node host: runs until the host crashes.
pub async fn run_node(slot: SlotRef) -> turmoil::Result {
    let (spec, disk) = {
        let s = lock(&slot);
        (s.spec.clone(), s.disk.clone())
    };
    let (log_store, state_machine) = disk.open(spec.mem)?;
    let store = state_machine.shared();
    let parts = NodeParts {
        store: state_machine.shared(),
        committed: log_store.committed_index(),
        log_store,
        state_machine,
        channels: Channels::with_factory(net::channel_factory()),
        tune_raft: Some(fixed_election_timeout),
    };
    let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
    let grpc = TcpListener::bind((any, net::GRPC_PORT)).await?;
    let http = TcpListener::bind((any, net::HTTP_PORT)).await?;
    let mut config = NodeConfig::single(PathBuf::from(format!("/sim/{}", host(spec.id))));
    config.id = spec.id;
    config.raft_addr = raft_addr(spec.id);
    config.http_addr = http_addr(spec.id);
    config.write_timeout = spec.write_timeout;
    config.snapshot_every = spec.snapshot_every;
    config.keep_logs_after_snapshot = spec.keep_logs;
    config.heartbeat = spec.heartbeat;
    config.election_timeout = spec.election_timeout;
    config.bootstrap = spec.bootstrap.clone();
    let node = Node::start_with(config, parts, Some(net::incoming(grpc))).await?;
    {
        let mut s = lock(&slot);
        s.probe.incarnation += 1;
        s.probe.metrics = Some(node.raft().metrics());
        s.probe.store = Some(store);
    }
    let node = Arc::new(node);
    lock(&slot).probe.node = Some(node.clone());
    let settings = settings()?;
    pgw_server::serve(
        settings,
        node,
        net::HttpListener(http),
        Arc::new(SimClock {
            skew_ms: spec.clock_skew_ms,
        }),
        std::future::pending(),
    )
    .await?;
    Ok(())
}
