//! Runs one plan: builds the simulation, steps it, applies the faults, starts the clients
//! (`clients`: load, scraper, membership admin, checker), watches the invariants (`checks`)
//! and hands the history and the replicas' final views to the shared checker (`pgw_testkit`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use openraft::ServerState;
use pgw_store::mem::MemDisk;
use pgw_testkit::push_time::PushTimeSample;
use pgw_testkit::{History, ReplicaView, Summary, Violation, Workload};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::checks::{LinRead, RaftWatch, ReadWatch, lin_read_violations};
use crate::clients::{ClientCtx, admin, checker, load_client, scraper};
use crate::cluster::{self, Metrics, Probe, Slot, SlotRef, host, lock};
use crate::plan::{Action, EPOCH_SECS, Plan, Who};

/// How long a client waits for an answer (the node's write timeout is 3 s).
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after heal the cluster has to converge.
pub(crate) const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// Families the load pushes.
pub(crate) const FAMILIES: [&str; 3] = ["sim_a", "sim_b", "sim_c"];

/// Requests from clients to the driver (which alone can crash and start hosts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Start a new node host.
    Start(u64),
    /// Crash a node for good (it was removed from the cluster).
    Decommission(u64),
}

/// State shared by the driver and the simulated clients.
#[derive(Default)]
pub(crate) struct Shared {
    /// Nodes clients send to (a load balancer's backend list; crashed nodes stay in it).
    pub(crate) serving: Vec<u64>,
    pub(crate) requests: VecDeque<Request>,
    pub(crate) clients_done: u64,
    pub(crate) samples: Vec<PushTimeSample>,
    /// Problems found by clients: scrape anomalies, unexpected 4xx, a failed membership step,
    /// no convergence.
    pub(crate) problems: Vec<String>,
    pub(crate) final_views: Vec<ReplicaView>,
    /// When the load had stopped (every client done) and the checker started waiting.
    pub(crate) quiet_at: Option<Duration>,
    pub(crate) converged_at: Option<Duration>,
    /// Membership steps, for the failure report.
    pub(crate) member_log: Vec<String>,
    /// The membership script still runs (the checker waits for it).
    pub(crate) admin_running: bool,
    /// Linearizable reads made by the clients.
    pub(crate) lin_reads: Vec<LinRead>,
    /// A node the load balancer sends most requests to for a while (stale-forward: the
    /// follower whose link to the leader is held, so that many forwards are caught on it).
    pub(crate) favoured: Option<u64>,
}

pub(crate) type SharedRef = Arc<Mutex<Shared>>;

/// The outcome of one run.
pub struct RunResult {
    /// What the checker covered.
    pub summary: Summary,
    /// Every violation (checker, cluster invariants, harness problems).
    pub violations: Vec<String>,
    /// Simulated duration.
    pub sim_time: Duration,
    /// Wall time.
    pub wall: Duration,
    /// Worst time from a fault to the first acknowledged write sent after it.
    pub fault_to_first_ack: Option<Duration>,
    /// Time from the end of the load (every client answered; after heal) to byte-identical
    /// replicas on every member.
    pub converge: Option<Duration>,
    /// Digest of the final state and the history (determinism self-check).
    pub digest: u64,
    /// Events: simulation steps + history ops + fault actions (determinism self-check).
    pub events: u64,
    /// The history as JSON lines, for a failure report.
    pub history: String,
    /// Membership steps and fault log, for a failure report.
    pub log: Vec<String>,
}

pub(crate) fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

pub(crate) async fn sleep_until(t: Duration) {
    let now = turmoil::sim_elapsed().unwrap_or_default();
    if t > now {
        tokio::time::sleep(t - now).await;
    }
}

/// The running node that leads with the highest term, if any.
pub(crate) fn leader_of(slots: &BTreeMap<u64, SlotRef>) -> Option<(u64, Metrics)> {
    slots
        .iter()
        .filter_map(|(id, s)| {
            let m = lock(s).metrics()?;
            (m.state == ServerState::Leader).then_some((*id, m))
        })
        .max_by_key(|(id, m)| (m.current_term, *id))
}

/// Network and host faults currently applied, so heal can undo them.
#[derive(Default)]
struct Faults {
    /// A network fault (cut, flapping links, latency) is active until the next repair.
    net_faulty: bool,
    holds: Vec<(String, String)>,
    link_latency: Vec<(String, String)>,
    crashed: BTreeSet<u64>,
    /// Removed from the cluster and stopped for good (until a wipe-and-rejoin).
    decommissioned: BTreeSet<u64>,
    /// Fault start times.
    started: Vec<Duration>,
}

struct Driver<'a> {
    plan: &'a Plan,
    sim: turmoil::Sim<'a>,
    slots: BTreeMap<u64, SlotRef>,
    shared: SharedRef,
    faults: Faults,
    rng: StdRng,
    watch: RaftWatch,
    reads: ReadWatch,
    log: Vec<String>,
    actions: u64,
    /// Nodes registered as hosts (links exist only between registered hosts).
    registered: BTreeSet<u64>,
    /// Since when no fault is active (and what ended the last one), while the cluster has
    /// not settled on one leader yet.
    quiet_since: Option<(Duration, String)>,
    /// The stale-forward fault in progress: (old leader, follower on the held link, others).
    stale: Option<(u64, u64, Vec<u64>)>,
}

/// Once no fault is active, the cluster must settle on one leader that every running voter
/// follows in its term within this time.
const SETTLE_WITHIN: Duration = Duration::from_secs(4);

impl<'a> Driver<'a> {
    fn node_hosts(&self) -> Vec<String> {
        self.registered.iter().map(|&id| host(id)).collect()
    }

    fn running(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| lock(s).probe.running)
            .map(|(id, _)| *id)
            .collect()
    }

    fn resolve(&mut self, who: Who) -> Option<u64> {
        match who {
            Who::Leader => leader_of(&self.slots)
                .map(|(id, _)| id)
                .or_else(|| self.running().first().copied()),
            Who::Follower => {
                let leader = leader_of(&self.slots).map(|(id, _)| id);
                let followers: Vec<u64> = self
                    .running()
                    .into_iter()
                    .filter(|id| Some(*id) != leader)
                    .collect();
                followers.choose(&mut self.rng).copied()
            }
        }
    }

    fn others(&self, id: u64) -> Vec<String> {
        self.registered
            .iter()
            .filter(|&&o| o != id)
            .map(|&o| host(o))
            .collect()
    }

    fn add_host(&mut self, id: u64) {
        let slot = self.slots[&id].clone();
        lock(&slot).probe.running = true;
        self.registered.insert(id);
        self.sim
            .host(host(id), move || cluster::run_node(slot.clone()));
    }

    fn crash(&mut self, id: u64) {
        if self.faults.crashed.contains(&id) || self.faults.decommissioned.contains(&id) {
            return;
        }
        self.sim.crash(host(id));
        let mut slot = lock(&self.slots[&id]);
        slot.probe.running = false;
        // The crashed incarnation's metrics are history; the next one publishes its own.
        slot.probe.metrics = None;
        slot.probe.store = None;
        slot.probe.node = None;
        drop(slot);
        self.faults.crashed.insert(id);
    }

    fn restart_crashed(&mut self) {
        let crashed: Vec<u64> = self.faults.crashed.iter().copied().collect();
        for id in crashed {
            self.sim.bounce(host(id));
            lock(&self.slots[&id]).probe.running = true;
            self.faults.crashed.remove(&id);
        }
    }

    fn repair_network(&mut self) {
        for (a, b) in std::mem::take(&mut self.faults.holds) {
            self.sim.release(a, b);
        }
        let hosts = self.node_hosts();
        for (i, a) in hosts.iter().enumerate() {
            for b in &hosts[i + 1..] {
                self.sim.repair(a.as_str(), b.as_str());
                self.sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
            }
        }
        let base = self.plan.base_latency;
        for (a, b) in std::mem::take(&mut self.faults.link_latency) {
            self.sim
                .set_link_latency(a.as_str(), b.as_str(), Duration::from_millis(1));
            self.sim
                .set_link_max_message_latency(a.as_str(), b.as_str(), base);
        }
        self.sim.set_max_message_latency(base);
    }

    fn apply(&mut self, action: &Action) {
        self.actions += 1;
        let at = self.sim.elapsed();
        let mut note = format!("{at:?}: {action:?}");
        match action {
            Action::Isolate(who) => {
                if let Some(id) = self.resolve(*who) {
                    note.push_str(&format!(" -> node {id}"));
                    for o in self.others(id) {
                        self.sim.partition(host(id), o);
                    }
                }
            }
            Action::CutOutbound(who) => {
                if let Some(id) = self.resolve(*who) {
                    note.push_str(&format!(" -> node {id}"));
                    for o in self.others(id) {
                        self.sim.partition_oneway(host(id), o);
                    }
                }
            }
            Action::CutInbound(who) => {
                if let Some(id) = self.resolve(*who) {
                    note.push_str(&format!(" -> node {id}"));
                    for o in self.others(id) {
                        self.sim.partition_oneway(o, host(id));
                    }
                }
            }
            Action::CutOneWay(from, to) => {
                self.sim.partition_oneway(host(*from), host(*to));
            }
            Action::Hold(who, other) => {
                if let Some(id) = self.resolve(*who) {
                    let peer = if *other == id {
                        self.others(id).first().cloned()
                    } else {
                        Some(host(*other))
                    };
                    if let Some(peer) = peer {
                        note.push_str(&format!(" -> {} <-> {peer}", host(id)));
                        self.sim.hold(host(id), peer.clone());
                        self.faults.holds.push((host(id), peer));
                    }
                }
            }
            Action::Release => {
                for (a, b) in std::mem::take(&mut self.faults.holds) {
                    self.sim.release(a, b);
                }
            }
            Action::Latency(d) => self.sim.set_max_message_latency(*d),
            Action::LinkLatency(who, d) => {
                if let Some(id) = self.resolve(*who) {
                    note.push_str(&format!(" -> node {id}"));
                    for o in self.others(id) {
                        self.sim.set_link_latency(host(id), o.clone(), *d);
                        self.faults.link_latency.push((host(id), o));
                    }
                }
            }
            Action::Flaky {
                fail_rate,
                repair_rate: _,
            } => {
                let hosts = self.node_hosts();
                for (i, a) in hosts.iter().enumerate() {
                    for b in &hosts[i + 1..] {
                        self.sim
                            .set_link_fail_rate(a.as_str(), b.as_str(), *fail_rate);
                    }
                }
            }
            Action::Crash(who) => {
                if let Some(id) = self.resolve(*who) {
                    note.push_str(&format!(" -> node {id}"));
                    self.crash(id);
                }
            }
            Action::CrashMajority => {
                let mut running = self.running();
                running.shuffle(&mut self.rng);
                let n = running.len() / 2 + 1;
                for id in running.into_iter().take(n) {
                    note.push_str(&format!(" node {id}"));
                    self.crash(id);
                }
            }
            Action::CrashAll => {
                for id in self.running() {
                    self.crash(id);
                }
            }
            Action::Restart => self.restart_crashed(),
            Action::Repair => self.repair_network(),
            Action::HoldAndIsolateLeader => {
                let leader = self.resolve(Who::Leader);
                // The follower with the longest election timeout: the old leader then wins
                // the race to lead again (timeouts are fixed per node).
                let follower = self
                    .running()
                    .into_iter()
                    .filter(|&n| Some(n) != leader)
                    .max_by_key(|n| lock(&self.slots[n]).spec.election_timeout);
                if let (Some(l), Some(f)) = (leader, follower) {
                    let others: Vec<u64> = self
                        .running()
                        .into_iter()
                        .filter(|&n| n != l && n != f)
                        .collect();
                    note.push_str(&format!(" -> hold n{l} <-> n{f}, cut n{l} from {others:?}"));
                    self.sim.hold(host(l), host(f));
                    self.faults.holds.push((host(l), host(f)));
                    for &n in &others {
                        self.sim.partition(host(l), host(n));
                    }
                    self.faults.net_faulty = true;
                    self.stale = Some((l, f, others));
                    lock(&self.shared).favoured = Some(f);
                }
            }
            Action::RejoinHeldLeader => {
                lock(&self.shared).favoured = None;
                if let Some((l, _, others)) = self.stale.clone() {
                    for n in others {
                        self.sim.repair(host(l), host(n));
                    }
                }
            }
            Action::CrashLeaderUnlessHeld => {
                let held = self.stale.as_ref().map(|(l, _, _)| *l);
                if let Some(leader) = self.resolve(Who::Leader)
                    && Some(leader) != held
                {
                    note.push_str(&format!(" -> node {leader}"));
                    self.crash(leader);
                }
            }
            Action::ReleaseHeld => {
                for (a, b) in std::mem::take(&mut self.faults.holds) {
                    self.sim.release(a, b);
                }
                self.restart_crashed();
                self.stale = None;
            }
        }
        match action {
            Action::ReleaseHeld => {
                self.faults.net_faulty = false;
                self.became_quiet(at, &note);
            }
            Action::RejoinHeldLeader | Action::CrashLeaderUnlessHeld => {
                self.quiet_since = None;
            }
            Action::Restart if self.stale.is_some() => {}
            Action::Restart | Action::Repair | Action::Release => {
                if matches!(action, Action::Repair) {
                    self.faults.net_faulty = false;
                }
                self.became_quiet(at, &note);
            }
            Action::Crash(_) | Action::CrashMajority | Action::CrashAll | Action::Hold(..) => {
                self.faults.started.push(at);
                self.quiet_since = None;
            }
            _ => {
                self.faults.started.push(at);
                self.faults.net_faulty = true;
                self.quiet_since = None;
            }
        }
        self.log.push(note);
    }

    /// Starts the settle clock if no fault is left.
    fn became_quiet(&mut self, at: Duration, why: &str) {
        let quiet = !self.faults.net_faulty
            && self.faults.holds.is_empty()
            && self.faults.crashed.is_empty();
        if quiet {
            self.quiet_since = Some((at, why.to_string()));
        }
    }

    /// Liveness: after the faults ended, one leader that every running voter follows.
    fn check_settled(&mut self, now: Duration) {
        let Some((since, why)) = self.quiet_since.clone() else {
            return;
        };
        if lock(&self.shared).admin_running {
            // Membership changes move leadership on purpose; judged by convergence instead.
            self.quiet_since = Some((now, why));
            return;
        }
        let settled = leader_of(&self.slots).is_some_and(|(leader, m)| {
            // The leader also knows it is in contact with its quorum again (pgw's health: the
            // quorum check of /-/ready and of writes), without a restart.
            let in_contact = self.slots.get(&leader).is_some_and(|s| {
                lock(s)
                    .probe
                    .node
                    .as_ref()
                    .is_none_or(|n| !matches!(n.health().quorum(), pgw_raft::Quorum::Lost(_)))
            });
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            in_contact
                && voters.iter().all(|v| {
                    self.slots.get(v).is_none_or(|s| {
                        let s = lock(s);
                        !s.probe.running
                            || s.metrics().is_some_and(|mm| {
                                mm.current_leader == Some(leader)
                                    && mm.current_term == m.current_term
                            })
                    })
                })
        });
        if settled {
            self.quiet_since = None;
        } else if now > since + SETTLE_WITHIN {
            let states: Vec<String> = self
                .slots
                .iter()
                .filter_map(|(id, s)| {
                    let s = lock(s);
                    let m = s.metrics()?;
                    let quorum = s.probe.node.as_ref().map(|n| n.health().quorum());
                    Some(format!(
                        "n{id}: term {} {:?} leader {:?} quorum {quorum:?}",
                        m.current_term, m.state, m.current_leader
                    ))
                })
                .collect();
            self.watch.violations.push(format!(
                "no settled leader {SETTLE_WITHIN:?} after the faults ended ({why}): {}",
                states.join(", ")
            ));
            self.quiet_since = None;
        }
    }

    fn handle(&mut self, req: Request) {
        self.actions += 1;
        let at = self.sim.elapsed();
        self.log.push(format!("{at:?}: {req:?}"));
        match req {
            Request::Start(id) => {
                self.add_host(id);
                lock(&self.shared).serving.push(id);
            }
            Request::Decommission(id) => {
                self.crash(id);
                self.faults.crashed.remove(&id);
                self.faults.decommissioned.insert(id);
                lock(&self.shared).serving.retain(|&n| n != id);
            }
        }
    }
}

/// Runs `plan` to the end and checks it.
pub fn run(plan: &Plan) -> RunResult {
    let wall = Instant::now();
    crate::panics::reset();
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(plan.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(plan.load_until + CONVERGE_WITHIN + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(plan.base_latency)
        .tcp_capacity(256);
    if plan.random_order {
        builder.enable_random_order();
    }
    let sim = builder.build();
    let shared: SharedRef = Arc::new(Mutex::new(Shared::default()));
    let mut slots = BTreeMap::new();
    for spec in plan.nodes.iter().chain(&plan.spares) {
        slots.insert(
            spec.id,
            Arc::new(Mutex::new(Slot {
                spec: spec.clone(),
                disk: MemDisk::new(),
                probe: Probe::default(),
            })),
        );
    }
    let mut d = Driver {
        plan,
        sim,
        slots,
        shared: shared.clone(),
        faults: Faults::default(),
        rng: StdRng::seed_from_u64(plan.seed ^ 0xfa17),
        watch: RaftWatch::default(),
        reads: ReadWatch::default(),
        log: Vec::new(),
        actions: 0,
        registered: BTreeSet::new(),
        quiet_since: None,
        stale: None,
    };
    for spec in &plan.nodes {
        d.add_host(spec.id);
        lock(&shared).serving.push(spec.id);
    }

    let history = History::new();
    let workload = Workload::new("sim", 2);
    let counter = Arc::new(AtomicU64::new(0));
    let node_slots: BTreeMap<u64, SlotRef> = d.slots.clone();
    for c in 0..plan.clients {
        let ctx = ClientCtx {
            plan: plan.clone(),
            shared: shared.clone(),
            slots: node_slots.clone(),
            history: history.clone(),
            workload: workload.clone(),
            counter: counter.clone(),
        };
        d.sim.client(format!("client{c}"), load_client(ctx, c));
    }
    {
        let ctx = ClientCtx {
            plan: plan.clone(),
            shared: shared.clone(),
            slots: node_slots.clone(),
            history: history.clone(),
            workload: workload.clone(),
            counter: counter.clone(),
        };
        d.sim.client("scraper", scraper(ctx));
    }
    if let Some(script) = plan.members.clone() {
        lock(&shared).admin_running = true;
        d.sim.client(
            "admin",
            admin(shared.clone(), node_slots.clone(), plan.clone(), script),
        );
    }
    d.sim.client(
        "checker",
        checker(
            shared.clone(),
            node_slots.clone(),
            plan.clone(),
            workload.clone(),
        ),
    );

    // SIM_TRACE=<file>: every change of a node's Raft state, to diff two runs of one seed.
    struct Trace {
        out: Vec<String>,
        last: BTreeMap<u64, Option<String>>,
    }
    let trace_path = std::env::var("SIM_TRACE").ok();
    let mut trace = trace_path.as_ref().map(|_| Trace {
        out: Vec::new(),
        last: BTreeMap::new(),
    });
    let mut schedule: VecDeque<(Duration, Action)> = plan.faults.iter().cloned().collect();
    let mut healed = false;
    let mut steps: u64 = 0;
    let mut harness_error = None;
    loop {
        let now = d.sim.elapsed();
        while schedule.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, action)) = schedule.pop_front() {
                d.apply(&action);
            }
        }
        if !healed && now >= plan.heal_at {
            healed = true;
            schedule.clear();
            d.repair_network();
            d.restart_crashed();
            d.faults.net_faulty = false;
            d.log.push(format!("{now:?}: heal"));
            d.became_quiet(now, "heal");
        }
        let requests: Vec<Request> = lock(&shared).requests.drain(..).collect();
        for r in requests {
            d.handle(r);
        }
        if steps.is_multiple_of(10) {
            d.check_settled(now);
            let probes: Vec<(u64, SlotRef)> =
                d.slots.iter().map(|(id, s)| (*id, s.clone())).collect();
            for (id, s) in probes {
                let slot = lock(&s);
                d.watch.observe(id, &slot.probe, now);
                d.reads.observe(id, &slot.probe, &workload, now);
                if let Some(t) = trace.as_mut() {
                    let line = slot.metrics().map(|m| {
                        format!(
                            "n{id} inc={} term={} {:?} leader={:?} last={:?} applied={:?}",
                            slot.probe.incarnation,
                            m.current_term,
                            m.state,
                            m.current_leader,
                            m.last_log_index,
                            m.last_applied.map(|l| l.index)
                        )
                    });
                    if t.last.get(&id) != Some(&line) {
                        t.out.push(format!("{now:?} {line:?}"));
                        t.last.insert(id, line);
                    }
                }
            }
        }
        steps += 1;
        match d.sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                harness_error = Some(format!("simulation failed: {e}"));
                break;
            }
        }
    }
    let sim_time = d.sim.elapsed();
    d.log.push(format!(
        "read watch: {} value changes seen on replicas",
        d.reads.changes.len()
    ));
    for (id, s) in &d.slots {
        let slot = lock(s);
        let disk = slot.disk.summary();
        if disk.opens > 0 {
            d.log.push(format!(
                "n{id} disk: opened {} times, last log {:?}, snapshot {:?}, checkpoint {:?}, \
                 committed {:?}",
                disk.opens,
                disk.last_log.map(|l| l.index),
                disk.snapshot.map(|l| l.index),
                disk.checkpoint.map(|l| l.index),
                disk.committed.map(|l| l.index)
            ));
        }
    }
    if let (Some(path), Some(t)) = (&trace_path, &mut trace) {
        for o in history.ops() {
            t.out.push(format!(
                "op {} c{} {:?} {} v{} {} {}..{} {:?} {}",
                o.id,
                o.client,
                o.kind,
                o.group,
                o.value,
                o.node,
                o.start_ms,
                o.end_ms,
                o.outcome,
                o.note
            ));
        }
        t.out.extend(d.log.iter().cloned());
        let _ = std::fs::write(path, t.out.join("\n"));
    }

    let mut violations: Vec<String> = Vec::new();
    if let Some(e) = harness_error {
        violations.push(e);
    }
    let ops = history.ops();
    let (final_views, samples, problems, quiet_at, converged_at, member_log, lin_reads) = {
        let s = lock(&shared);
        (
            s.final_views.clone(),
            s.samples.clone(),
            s.problems.clone(),
            s.quiet_at,
            s.converged_at,
            s.member_log.clone(),
            s.lin_reads.clone(),
        )
    };
    let mut views = final_views;
    let panics = crate::panics::take();
    if let Some(first) = views.first_mut() {
        first.panics = panics.clone();
    } else if !panics.is_empty() {
        violations.extend(panics.iter().map(|p| format!("panic: {p}")));
    }
    let (summary, checked) = pgw_testkit::check_all(&ops, &views, &samples);
    violations.extend(checked.iter().map(Violation::to_string));
    violations.extend(problems);
    violations.extend(d.watch.violations.iter().cloned());
    violations.extend(d.reads.violations(&ops));
    violations.extend(lin_read_violations(&lin_reads, &ops));
    d.log
        .push(format!("{} linearizable reads checked", lin_reads.len()));
    if views.is_empty() {
        violations.push("the checker collected no replica view".into());
    }
    // Liveness: a write sent after heal is acknowledged.
    let heal_ms = plan.heal_at.as_millis() as u64;
    if history.first_ack_after(heal_ms).is_none() {
        violations.push(format!(
            "no write sent after heal ({:?}) was acknowledged before the load stopped",
            plan.heal_at
        ));
    }
    let fault_to_first_ack = d
        .faults
        .started
        .iter()
        .filter_map(|t| history.first_ack_after(t.as_millis() as u64))
        .max()
        .map(Duration::from_millis);
    // From the moment the load stopped (all clients answered) to identical replicas.
    let converge = converged_at.map(|t| t.saturating_sub(quiet_at.unwrap_or(plan.heal_at)));

    let mut h = DefaultHasher::new();
    for v in &views {
        v.node.hash(&mut h);
        v.body.hash(&mut h);
    }
    for o in &ops {
        (
            o.client, &o.group, o.kind, o.value, &o.node, o.start_ms, o.end_ms, o.outcome,
        )
            .hash(&mut h);
    }
    for (id, s) in &d.slots {
        let slot = lock(s);
        id.hash(&mut h);
        let summary = slot.disk.summary();
        summary
            .last_log
            .map(|l| (l.leader_id.term, l.index))
            .hash(&mut h);
        summary
            .vote
            .map(|v| (v.leader_id.term, v.leader_id.voted_for(), v.committed))
            .hash(&mut h);
    }
    sim_time.hash(&mut h);
    let mut log = vec![format!(
        "scenario {} seed {}: heal at {:?}, load until {:?}",
        plan.kind.name(),
        plan.seed,
        plan.heal_at,
        plan.load_until
    )];
    log.extend(member_log);
    log.extend(d.log.iter().cloned());
    RunResult {
        summary,
        violations,
        sim_time,
        wall: wall.elapsed(),
        fault_to_first_ack,
        converge,
        digest: h.finish(),
        events: steps + ops.len() as u64 + d.actions,
        history: history.to_json_lines(),
        log,
    }
}
