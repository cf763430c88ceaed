//! Runs one plan: builds the simulation, steps it, applies the faults, runs the clients (load,
//! scraper, membership admin, checker) and hands the history and the replicas' final views
//! to the shared checker (`pgw_testkit`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use openraft::ServerState;
use pgw_proto::v1::admin_service_client::AdminServiceClient;
use pgw_proto::v1::{ChangeMembershipRequest, StatusRequest};
use pgw_store::mem::MemDisk;
use pgw_testkit::push_time::{PushTimeSample, samples_of};
use pgw_testkit::{History, OpKind, Outcome, ReplicaView, Summary, Violation, Workload};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tonic::transport::Endpoint;

use crate::cluster::{self, Metrics, Probe, Slot, SlotRef, host, lock, raft_addr};
use crate::net::{self, Reply};
use crate::plan::{Action, EPOCH_SECS, MemberScript, Plan, Who};

/// How long a client waits for an answer (the node's write timeout is 3 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after heal the cluster has to converge.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// Families the load pushes.
const FAMILIES: [&str; 3] = ["sim_a", "sim_b", "sim_c"];

/// Requests from clients to the driver (which alone can crash and start hosts).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    /// Start a new node host.
    Start(u64),
    /// Crash a node for good (it was removed from the cluster).
    Decommission(u64),
}

/// A linearizable read a client made right after one of its writes was acknowledged.
#[derive(Clone, Debug)]
struct LinRead {
    /// The node that served it.
    node: u64,
    group: String,
    family: String,
    /// The client's own acknowledged write (its value).
    after: u64,
    start_ms: u64,
    end_ms: u64,
    /// What the read showed for the family (`None`: absent).
    observed: Option<u64>,
}

/// The value of `family` in `group` in a `/api/v1/metrics` body (`None`: absent).
fn api_value(body: &[u8], job: &str, group: &str, family: &str) -> Result<Option<u64>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bad JSON from /api/v1/metrics: {e}"))?;
    let groups = v["data"].as_array().cloned().unwrap_or_default();
    for g in groups {
        if g["labels"]["job"] != job || g["labels"]["g"] != group {
            continue;
        }
        let metrics = match g[family]["metrics"].as_array() {
            None => return Ok(None),
            Some(m) => m.clone(),
        };
        let mut values = BTreeSet::new();
        for m in metrics {
            let text = m["value"].as_str().unwrap_or("");
            let f: f64 = text
                .parse()
                .map_err(|_| format!("value {text:?} of {group}/{family} is not a number"))?;
            values.insert(f as u64);
        }
        return match values.len() {
            1 => Ok(values.pop_first()),
            _ => Err(format!(
                "{group}/{family} shows values {values:?} at once (torn)"
            )),
        };
    }
    Ok(None)
}

/// Read-your-writes through any node: a linearizable read made after a write was
/// acknowledged shows that write, or one that may follow it in real time, never an older one.
fn lin_read_violations(reads: &[LinRead], ops: &[pgw_testkit::Op]) -> Vec<String> {
    let by_value: BTreeMap<u64, &pgw_testkit::Op> = ops.iter().map(|o| (o.value, o)).collect();
    let mut out = Vec::new();
    for r in reads {
        let Some(own) = by_value.get(&r.after) else {
            continue;
        };
        let what = format!(
            "linearizable read of {}/{} on n{} ({}..{} ms) after write #{} (value {})",
            r.group, r.family, r.node, r.start_ms, r.end_ms, own.id, own.value
        );
        match r.observed {
            Some(w) => match by_value.get(&w) {
                None => out.push(format!("{what} showed {w}, which no client sent")),
                Some(o) if o.start_ms > r.end_ms => out.push(format!(
                    "{what} showed {w}, written by #{} only sent at {} ms",
                    o.id, o.start_ms
                )),
                Some(o) if o.precedes(own) => out.push(format!(
                    "{what} showed {w} of write #{}, acknowledged before #{} was even sent: \
                     a stale read",
                    o.id, own.id
                )),
                Some(_) => {}
            },
            None => {
                let removed = ops.iter().any(|o| {
                    o.group == r.group
                        && o.outcome.may_have_applied()
                        && !o.precedes(own)
                        && o.start_ms <= r.end_ms
                        && (o.kind == OpKind::Delete
                            || (o.kind == OpKind::Put && !o.families.contains(&r.family)))
                });
                if !removed {
                    out.push(format!(
                        "{what} did not show the family, and no write that may follow #{} \
                         removes it: a stale read",
                        own.id
                    ));
                }
            }
        }
    }
    out
}

/// State shared by the driver and the simulated clients.
#[derive(Default)]
struct Shared {
    /// Nodes clients send to (a load balancer's backend list; crashed nodes stay in it).
    serving: Vec<u64>,
    requests: VecDeque<Request>,
    clients_done: u64,
    samples: Vec<PushTimeSample>,
    /// Problems found by clients: scrape anomalies, unexpected 4xx, a failed membership step,
    /// no convergence.
    problems: Vec<String>,
    final_views: Vec<ReplicaView>,
    /// When the load had stopped (every client done) and the checker started waiting.
    quiet_at: Option<Duration>,
    converged_at: Option<Duration>,
    /// Membership steps, for the failure report.
    member_log: Vec<String>,
    /// The membership script still runs (the checker waits for it).
    admin_running: bool,
    /// Linearizable reads made by the clients.
    lin_reads: Vec<LinRead>,
    /// A node the load balancer sends most requests to for a while (stale-forward: the
    /// follower whose link to the leader is held, so that many forwards are caught on it).
    favoured: Option<u64>,
}

type SharedRef = Arc<Mutex<Shared>>;

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

fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

async fn sleep_until(t: Duration) {
    let now = turmoil::sim_elapsed().unwrap_or_default();
    if t > now {
        tokio::time::sleep(t - now).await;
    }
}

/// The running node that leads with the highest term, if any.
fn leader_of(slots: &BTreeMap<u64, SlotRef>) -> Option<(u64, Metrics)> {
    slots
        .iter()
        .filter_map(|(id, s)| {
            let m = lock(s).metrics()?;
            (m.state == ServerState::Leader).then_some((*id, m))
        })
        .max_by_key(|(id, m)| (m.current_term, *id))
}

/// Cluster invariants checked from openraft's metrics while the simulation runs.
#[derive(Default)]
struct RaftWatch {
    /// Term → the node seen leading in it.
    leaders: BTreeMap<u64, u64>,
    /// (node, incarnation) → (term, applied index) last seen.
    last: BTreeMap<(u64, u64), (u64, u64)>,
    /// Node → highest term seen (the vote is durable: it never goes back across restarts).
    max_term: BTreeMap<u64, u64>,
    violations: Vec<String>,
    /// Kinds of violation already reported, per node (each is reported once).
    reported: BTreeSet<(&'static str, u64)>,
}

impl RaftWatch {
    fn report(&mut self, kind: &'static str, node: u64, msg: String) {
        if self.reported.insert((kind, node)) {
            self.violations.push(msg);
        }
    }

    fn observe(&mut self, id: u64, probe: &Probe, at: Duration) {
        if !probe.running {
            return;
        }
        let Some(m) = probe.metrics.as_ref().map(|m| m.borrow().clone()) else {
            return;
        };
        let term = m.current_term;
        let applied = m.last_applied.map_or(0, |l| l.index);
        if m.state == ServerState::Leader {
            let prev = *self.leaders.entry(term).or_insert(id);
            if prev != id {
                self.report(
                    "two-leaders",
                    id,
                    format!("two leaders in term {term}: node {prev} and node {id} (at {at:?})"),
                );
            }
        }
        if let Some(&(t0, a0)) = self.last.get(&(id, probe.incarnation)) {
            if term < t0 {
                self.report(
                    "term-back",
                    id,
                    format!("node {id} term went back from {t0} to {term} (at {at:?})"),
                );
            }
            if applied < a0 {
                self.report(
                    "applied-back",
                    id,
                    format!(
                        "node {id} applied index went back from {a0} to {applied} without a \
                         restart (at {at:?})"
                    ),
                );
            }
        }
        self.last.insert((id, probe.incarnation), (term, applied));
        let max = self.max_term.entry(id).or_insert(term);
        let max = *max;
        if term < max {
            self.report(
                "vote-lost",
                id,
                format!(
                    "node {id} restarted with term {term} below {max} it had reached: the vote \
                     was not durable (at {at:?})"
                ),
            );
        }
        self.max_term.insert(id, max.max(term));
    }
}

/// Watches what every replica's applied store shows, family by family, as it changes: the
/// "monotonic reads" check. A replica applies one log in order, so once it shows the value of
/// a write V it never again shows the value of a write W that was acknowledged before V was
/// sent; if it does, W was applied a second time (a stale duplicate, e.g. a forwarded request
/// that was held on the wire and delivered after its retry succeeded). The final-state check
/// cannot see this once later writes overwrite the stale value.
#[derive(Default)]
struct ReadWatch {
    /// (node, incarnation) → last applied index seen (render only on change).
    applied: BTreeMap<(u64, u64), u64>,
    /// (node, incarnation, group, family) → last value seen (`None`: seen, then gone).
    last: BTreeMap<(u64, u64, String, String), Option<u64>>,
    /// Value changes.
    changes: Vec<ValueChange>,
}

/// A replica's value of one family changed.
struct ValueChange {
    node: u64,
    incarnation: u64,
    group: String,
    family: String,
    before: u64,
    /// `None`: the family is gone.
    after: Option<u64>,
    at: Duration,
}

impl ReadWatch {
    fn observe(&mut self, id: u64, probe: &Probe, workload: &Workload, at: Duration) {
        if !probe.running {
            return;
        }
        let (Some(m), Some(store)) = (probe.metrics.as_ref(), probe.store.as_ref()) else {
            return;
        };
        let applied = m.borrow().last_applied.map_or(0, |l| l.index);
        let key = (id, probe.incarnation);
        if self.applied.get(&key) == Some(&applied) {
            return;
        }
        self.applied.insert(key, applied);
        let mut body = Vec::new();
        {
            let guard = match store.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            pgw_core::render::text(&guard, &[], &mut body);
        }
        let view = workload.parse(&host(id), &body);
        let mut now: BTreeMap<(u64, u64, String, String), Option<u64>> = BTreeMap::new();
        for (group, gv) in &view.groups {
            for family in gv.families.keys() {
                if let Some(value) = gv.value(family) {
                    let k = (id, probe.incarnation, group.clone(), family.clone());
                    now.insert(k, Some(value));
                }
            }
        }
        // Families this incarnation showed before and no longer shows are gone.
        for (k, v) in &self.last {
            if k.0 == id && k.1 == probe.incarnation && v.is_some() && !now.contains_key(k) {
                now.insert(k.clone(), None);
            }
        }
        for (k, value) in now {
            if let Some(Some(before)) = self.last.get(&k).copied()
                && Some(before) != value
            {
                self.changes.push(ValueChange {
                    node: k.0,
                    incarnation: k.1,
                    group: k.2.clone(),
                    family: k.3.clone(),
                    before,
                    after: value,
                    at,
                });
            }
            self.last.insert(k, value);
        }
    }

    /// Value changes that went back in real time.
    fn violations(&self, ops: &[pgw_testkit::Op]) -> Vec<String> {
        let by_value: BTreeMap<u64, &pgw_testkit::Op> = ops.iter().map(|o| (o.value, o)).collect();
        let mut out = Vec::new();
        for c in &self.changes {
            let ValueChange {
                node: id,
                incarnation: inc,
                group,
                family,
                before,
                after,
                at,
            } = c;
            let Some(v) = by_value.get(before) else {
                continue;
            };
            let Some(after) = after else {
                // Gone: some write that may follow V in real time must have removed it.
                let at_ms = at.as_millis() as u64;
                let removed = ops.iter().any(|o| {
                    &o.group == group
                        && o.outcome.may_have_applied()
                        && !o.precedes(v)
                        && o.start_ms <= at_ms
                        && (o.kind == OpKind::Delete
                            || (o.kind == OpKind::Put && !o.families.contains(family)))
                });
                if !removed {
                    out.push(format!(
                        "n{id} (incarnation {inc}) stopped showing {group}/{family} at {at:?} \
                         after showing {before} of write #{} (sent at {} ms), but every write \
                         that removes it was acknowledged before #{} was sent: a stale \
                         DELETE or PUT was applied again",
                        v.id, v.start_ms, v.id
                    ));
                }
                continue;
            };
            let Some(w) = by_value.get(after) else {
                continue;
            };
            if w.precedes(v) {
                out.push(format!(
                    "n{id} (incarnation {inc}) showed {group}/{family} = {after} at {at:?} after \
                     showing {before}: write #{} ({} value {after}, acknowledged at {} ms) was \
                     applied again after write #{} ({} value {before}, sent at {} ms)",
                    w.id,
                    w.kind.method(),
                    w.end_ms,
                    v.id,
                    v.kind.method(),
                    v.start_ms
                ));
            }
        }
        out
    }
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
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            voters.iter().all(|v| {
                self.slots.get(v).is_none_or(|s| {
                    let s = lock(s);
                    !s.probe.running
                        || s.metrics().is_some_and(|mm| {
                            mm.current_leader == Some(leader) && mm.current_term == m.current_term
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
                    let m = lock(s).metrics()?;
                    Some(format!(
                        "n{id}: term {} {:?} leader {:?}",
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

#[derive(Clone)]
struct ClientCtx {
    plan: Plan,
    shared: SharedRef,
    slots: BTreeMap<u64, SlotRef>,
    history: History,
    workload: Workload,
    counter: Arc<AtomicU64>,
}

/// Waits until some node leads (the cluster formed).
async fn wait_for_leader(slots: &BTreeMap<u64, SlotRef>) {
    while leader_of(slots).is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client pushing PUT/POST/DELETE with unique values to random groups through random
/// nodes, one request at a time, recording each outcome.
async fn load_client(ctx: ClientCtx, index: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(ctx.plan.seed.wrapping_mul(31).wrapping_add(index));
    wait_for_leader(&ctx.slots).await;
    while turmoil::sim_elapsed().unwrap_or_default() < ctx.plan.load_until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..80))).await;
        let (serving, favoured) = {
            let s = lock(&ctx.shared);
            (s.serving.clone(), s.favoured)
        };
        let picked = match favoured {
            Some(f) if rng.gen_bool(0.7) => Some(f),
            _ => serving.choose(&mut rng).copied(),
        };
        let Some(node) = picked else {
            continue;
        };
        let group = format!("g{}", rng.gen_range(0..ctx.plan.groups));
        let kind = match rng.gen_range(0..20) {
            0..=8 => OpKind::Put,
            9..=16 => OpKind::Post,
            _ => OpKind::Delete,
        };
        let mut families: Vec<String> = FAMILIES
            .iter()
            .filter(|_| rng.gen_bool(0.5))
            .map(|f| f.to_string())
            .collect();
        if families.is_empty() {
            families.push(FAMILIES[rng.gen_range(0..FAMILIES.len())].to_string());
        }
        let value = ctx.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let id = ctx
            .history
            .begin(index, &group, kind, &families, value, &host(node), now_ms());
        let method = match kind {
            OpKind::Put => http::Method::PUT,
            OpKind::Post => http::Method::POST,
            OpKind::Delete => http::Method::DELETE,
        };
        let body = ctx.workload.body_of(kind, &families, value);
        let reply = net::request(
            &host(node),
            method,
            &ctx.workload.path(&group),
            body,
            CLIENT_TIMEOUT,
        )
        .await;
        let (outcome, note) = match &reply {
            Reply::Status(s, body) => {
                if (400..500).contains(s) {
                    lock(&ctx.shared).problems.push(format!(
                        "unexpected {s} for {} of value {value} to {group} via {}: {}",
                        kind.method(),
                        host(node),
                        String::from_utf8_lossy(body).trim()
                    ));
                }
                (Outcome::from_http(Some(*s), true), s.to_string())
            }
            Reply::NotSent(e) => (Outcome::Failed, e.clone()),
            Reply::Lost(e) => (Outcome::Unknown, e.clone()),
        };
        ctx.history.finish(id, outcome, now_ms(), &note);
        if outcome == Outcome::Acked && kind != OpKind::Delete && rng.gen_bool(0.15) {
            let Some(&via) = serving.choose(&mut rng) else {
                continue;
            };
            let family = families[rng.gen_range(0..families.len())].clone();
            lin_read(&ctx, via, &group, &family, value).await;
        }
    }
    lock(&ctx.shared).clients_done += 1;
    Ok(())
}

/// A linearizable read (`/api/v1/metrics?consistency=linearizable`) through `via` right
/// after this client's write of `after` to `group` was acknowledged.
async fn lin_read(ctx: &ClientCtx, via: u64, group: &str, family: &str, after: u64) {
    let start_ms = now_ms();
    let reply = net::request(
        &host(via),
        http::Method::GET,
        "/api/v1/metrics?consistency=linearizable",
        Vec::new(),
        CLIENT_TIMEOUT,
    )
    .await;
    let Reply::Status(200, body) = reply else {
        return; // no leader, a cut link: nothing was promised
    };
    let end_ms = now_ms();
    let mut shared = lock(&ctx.shared);
    match api_value(&body, &ctx.workload.job, group, family) {
        Ok(observed) => shared.lin_reads.push(LinRead {
            node: via,
            group: group.to_string(),
            family: family.to_string(),
            after,
            start_ms,
            end_ms,
            observed,
        }),
        Err(e) => shared
            .problems
            .push(format!("linearizable read on n{via} at {end_ms} ms: {e}")),
    }
}

/// GET `/metrics` on `id`, parsed; `None` unless a 200 came from the same incarnation.
async fn scrape(
    slots: &BTreeMap<u64, SlotRef>,
    workload: &Workload,
    id: u64,
) -> Option<(ReplicaView, u64)> {
    let incarnation = {
        let s = lock(&slots[&id]);
        if !s.probe.running {
            return None;
        }
        s.probe.incarnation
    };
    let reply = net::request(
        &host(id),
        http::Method::GET,
        "/metrics",
        Vec::new(),
        Duration::from_secs(2),
    )
    .await;
    let Reply::Status(200, body) = reply else {
        return None;
    };
    let s = lock(&slots[&id]);
    if !s.probe.running || s.probe.incarnation != incarnation {
        return None;
    }
    Some((workload.parse(&host(id), &body), incarnation))
}

/// Scrapes every node like Prometheus would, recording push times (they must never go
/// backwards within an incarnation) and anything malformed.
async fn scraper(ctx: ClientCtx) -> turmoil::Result {
    wait_for_leader(&ctx.slots).await;
    while turmoil::sim_elapsed().unwrap_or_default() < ctx.plan.load_until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let serving = lock(&ctx.shared).serving.clone();
        for id in serving {
            if let Some((view, incarnation)) = scrape(&ctx.slots, &ctx.workload, id).await {
                let at = now_ms();
                let mut s = lock(&ctx.shared);
                s.samples.extend(samples_of(&view, incarnation, at));
                for a in view.anomalies {
                    s.problems
                        .push(format!("scrape of {} at {at} ms: {a}", host(id)));
                }
            }
        }
    }
    Ok(())
}

/// Members of the cluster as the leader sees them, if one leads.
fn membership(
    slots: &BTreeMap<u64, SlotRef>,
) -> Option<(u64, Metrics, BTreeSet<u64>, BTreeSet<u64>)> {
    let (leader, m) = leader_of(slots)?;
    let mem = m.membership_config.membership();
    let voters: BTreeSet<u64> = mem.voter_ids().collect();
    let all: BTreeSet<u64> = mem.nodes().map(|(id, _)| *id).collect();
    Some((leader, m, voters, all))
}

/// After the load stopped: waits until every member has applied the leader's whole log and
/// serves the same bytes, then records the views for the checker.
async fn checker(
    shared: SharedRef,
    slots: BTreeMap<u64, SlotRef>,
    plan: Plan,
    workload: Workload,
) -> turmoil::Result {
    sleep_until(plan.load_until).await;
    loop {
        let waiting = {
            let s = lock(&shared);
            s.clients_done < plan.clients || s.admin_running
        };
        if !waiting || turmoil::sim_elapsed().unwrap_or_default() > plan.heal_at + CONVERGE_WITHIN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock(&shared).quiet_at = Some(turmoil::sim_elapsed().unwrap_or_default());
    let deadline = plan.heal_at + CONVERGE_WITHIN;
    let mut last_views: Vec<ReplicaView> = Vec::new();
    let mut why = String::from("no leader");
    loop {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        if now > deadline {
            let mut s = lock(&shared);
            s.problems.push(format!(
                "replicas did not converge within {CONVERGE_WITHIN:?} of heal: {why}"
            ));
            s.final_views = last_views;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some((_, m, _voters, members)) = membership(&slots) else {
            why = "no leader".into();
            continue;
        };
        let last = m.last_log_index.unwrap_or(0);
        let behind: Vec<u64> = members
            .iter()
            .filter(|id| {
                slots.get(id).is_none_or(|s| {
                    lock(s)
                        .metrics()
                        .is_none_or(|mm| mm.last_applied.map_or(0, |l| l.index) < last)
                })
            })
            .copied()
            .collect();
        if !behind.is_empty() {
            why = format!("members {behind:?} have not applied index {last}");
            continue;
        }
        let mut views = Vec::new();
        for &id in &members {
            if let Some((view, _)) = scrape(&slots, &workload, id).await {
                views.push(view);
            }
        }
        let complete = views.len() == members.len();
        let identical = views.windows(2).all(|w| w[0].body == w[1].body);
        last_views = views;
        if complete && identical {
            let mut s = lock(&shared);
            s.converged_at = Some(turmoil::sim_elapsed().unwrap_or_default());
            s.final_views = last_views;
            return Ok(());
        }
        why = if complete {
            "members serve different bodies".into()
        } else {
            "not every member answered /metrics".into()
        };
    }
}

fn admin_client(id: u64) -> Result<AdminServiceClient<tonic::transport::Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", raft_addr(id)))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500));
    Ok(AdminServiceClient::new(
        endpoint.connect_with_connector_lazy(net::connector()),
    ))
}

/// Removes `victim` through the admin service of whichever node leads, as `pgwctl member
/// remove` does.
async fn remove_member(
    slots: &BTreeMap<u64, SlotRef>,
    shared: &SharedRef,
    victim: u64,
    until: Duration,
) -> Result<(), String> {
    let mut last_err = String::from("not tried");
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let target = leader_of(slots).map(|(id, _)| id);
        let Some(target) = target else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut client = admin_client(target)?;
        let call = async {
            let status = client
                .status(StatusRequest {})
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let voters: Vec<u64> = status
                .members
                .iter()
                .filter(|m| m.voter && m.id != victim)
                .map(|m| m.id)
                .collect();
            let present = status.members.iter().any(|m| m.id == victim);
            if !present {
                return Ok(());
            }
            client
                .change_membership(ChangeMembershipRequest {
                    voters,
                    retain: false,
                    remove_nodes: vec![victim],
                })
                .await
                .map(drop)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(())) => {
                lock(shared).member_log.push(format!(
                    "{:?}: removed node {victim} via node {target}",
                    turmoil::sim_elapsed().unwrap_or_default()
                ));
                return Ok(());
            }
            Ok(Err(e)) => last_err = e,
            Err(_) => last_err = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last_err)
}

async fn wait_voter(slots: &BTreeMap<u64, SlotRef>, id: u64, until: Duration) -> bool {
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        if membership(slots).is_some_and(|(_, _, voters, _)| voters.contains(&id)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The membership script: a node joins (and is promoted by the join flow), a voter is
/// removed and stopped, and a replacement (empty disk, new id) joins, as docs/operations.md
/// describes.
async fn admin(
    shared: SharedRef,
    slots: BTreeMap<u64, SlotRef>,
    plan: Plan,
    script: MemberScript,
) -> turmoil::Result {
    let log = |msg: String| {
        lock(&shared).member_log.push(format!(
            "{:?}: {msg}",
            turmoil::sim_elapsed().unwrap_or_default()
        ));
    };
    let result = admin_script(&shared, &slots, &plan, &script, &log).await;
    if let Err(e) = result {
        lock(&shared).problems.push(e);
    }
    lock(&shared).admin_running = false;
    Ok(())
}

async fn admin_script(
    shared: &SharedRef,
    slots: &BTreeMap<u64, SlotRef>,
    plan: &Plan,
    script: &MemberScript,
    log: &dyn Fn(String),
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0xad41);
    sleep_until(script.add_at).await;
    lock(shared)
        .requests
        .push_back(Request::Start(script.new_id));
    log(format!("start node {} (joins)", script.new_id));
    let now = || turmoil::sim_elapsed().unwrap_or_default();
    if !wait_voter(slots, script.new_id, now() + Duration::from_secs(30)).await {
        return Err(format!(
            "node {} did not become a voter within 30 s of starting",
            script.new_id
        ));
    }
    log(format!("node {} is a voter", script.new_id));
    tokio::time::sleep(script.pause).await;
    let victim = loop {
        if let Some((leader, _, voters, _)) = membership(slots) {
            let candidates: Vec<u64> = voters
                .iter()
                .copied()
                .filter(|&v| v != script.new_id && v != leader)
                .collect();
            break if script.remove_leader {
                leader
            } else {
                candidates.choose(&mut rng).copied().unwrap_or(leader)
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    log(format!("remove node {victim}"));
    remove_member(slots, shared, victim, now() + Duration::from_secs(30))
        .await
        .map_err(|e| format!("removing node {victim} failed for 30 s: {e}"))?;
    lock(shared)
        .requests
        .push_back(Request::Decommission(victim));
    tokio::time::sleep(script.pause).await;
    let replacement = script.replacement_id;
    lock(shared).requests.push_back(Request::Start(replacement));
    log(format!(
        "start node {replacement} (empty disk, joins) to replace node {victim}"
    ));
    if !wait_voter(slots, replacement, now() + Duration::from_secs(40)).await {
        return Err(format!(
            "node {replacement} did not become a voter within 40 s of starting"
        ));
    }
    log(format!("node {replacement} is a voter"));
    Ok(())
}
