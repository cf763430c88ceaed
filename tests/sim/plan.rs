//! What a seed means: the scenario's cluster configuration, its fault schedule and its load,
//! all derived from one `u64` (TigerBeetle's VOPR "swarm testing" idea).

use std::collections::BTreeMap;
use std::time::Duration;

use pgw_raft::Bootstrap;
use pgw_store::mem::MemConfig;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cluster::{NodeSpec, raft_addr};

/// The scenario families. A seed picks one (`seed % 7`) unless `SIM_SCENARIO` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The leader is cut off from every peer (symmetric), repeatedly.
    PartitionLeader,
    /// One-way cuts: the leader cannot send, or cannot receive, or a random directed link.
    OneWay,
    /// Message latency, latency spikes on links, flapping links (turmoil `fail_rate`) and
    /// messages held back and delivered late (`hold`/`release`).
    LossLatency,
    /// Crashes of the leader, a follower, a majority or every node, then restarts from the
    /// durable part of the store only.
    CrashRestart,
    /// A node joins and is promoted, a voter (possibly the leader) is removed and stopped, a
    /// replacement with an empty disk and a new id joins; under load, with a fault on the side.
    Membership,
    /// Any mix of the above.
    Swarm,
    /// Requests a follower forwards to the leader are held back on the wire while that leader
    /// is cut off and replaced; the follower retries elsewhere, and the old leader, leading
    /// again, finally receives the held requests: a late duplicate of a write must never undo
    /// a later acknowledged one.
    StaleForward,
}

impl Kind {
    /// Every kind, in seed order.
    pub const ALL: [Kind; 7] = [
        Kind::PartitionLeader,
        Kind::OneWay,
        Kind::LossLatency,
        Kind::CrashRestart,
        Kind::Membership,
        Kind::Swarm,
        Kind::StaleForward,
    ];

    /// The scenario name printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PartitionLeader => "partition-leader",
            Kind::OneWay => "one-way",
            Kind::LossLatency => "loss-latency",
            Kind::CrashRestart => "crash-restart",
            Kind::Membership => "membership",
            Kind::Swarm => "swarm",
            Kind::StaleForward => "stale-forward",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind a seed runs by default.
    pub fn of_seed(seed: u64) -> Kind {
        Kind::ALL[(seed % Kind::ALL.len() as u64) as usize]
    }
}

/// Which node a fault hits, resolved when the fault starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// The node that leads (highest term) at that moment.
    Leader,
    /// A running node that does not lead.
    Follower,
}

/// One scheduled fault (or the end of one).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Cut `who` off from every other node, both ways.
    Isolate(Who),
    /// `who` cannot send to any other node (it still receives).
    CutOutbound(Who),
    /// No other node can send to `who` (it still sends).
    CutInbound(Who),
    /// Messages from `from` to `to` are dropped.
    CutOneWay(u64, u64),
    /// Messages between `who` and another node are held back until [`Action::Release`].
    Hold(Who, u64),
    /// Deliver every held message (late).
    Release,
    /// Maximum message latency on every link.
    Latency(Duration),
    /// Fixed latency on the links between `who` and every other node.
    LinkLatency(Who, Duration),
    /// Node-to-node links fail at random per message (dropping what is in flight) and come
    /// back with a later message.
    Flaky {
        /// Probability that a message breaks its link.
        fail_rate: f64,
        /// Drawn for the log only: turmoil 0.7.2 has no per-link repair rate, so a broken link
        /// comes back at the global rate (1.0: the next message).
        repair_rate: f64,
    },
    /// Crash a node (its host stops; only its `MemDisk` survives).
    Crash(Who),
    /// Crash two nodes at once (a majority of three).
    CrashMajority,
    /// Crash every node.
    CrashAll,
    /// Restart every crashed node (except decommissioned ones).
    Restart,
    /// Undo every network fault (links, latency, flapping, held messages).
    Repair,
    /// Stale forward, step 1: hold the link between the leader `L` and a follower `F`, and
    /// cut `L` off from the other node `N`; `F` and `N` elect a new leader.
    HoldAndIsolateLeader,
    /// Step 2: `L` can reach `N` again (the held link stays held) and rejoins as a follower.
    RejoinHeldLeader,
    /// Step 3: crash whichever node leads unless it is `L` (it restarts soon after), so that
    /// `L` may lead again.
    CrashLeaderUnlessHeld,
    /// Step 4: deliver what the held link kept (late), restart the crashed node.
    ReleaseHeld,
}

/// The membership changes, run by the admin client over the real admin gRPC service.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberScript {
    /// When the new node starts (it joins with `--cluster.join` semantics).
    pub add_at: Duration,
    /// The id of the new node.
    pub new_id: u64,
    /// The id of the node that replaces the removed one (empty disk, a new id, as
    /// docs/operations.md says: ids are not reused).
    pub replacement_id: u64,
    /// Remove the leader (true) or a random follower once the new node is a voter.
    pub remove_leader: bool,
    /// Pause between the steps.
    pub pause: Duration,
}

/// Everything a seed decides.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// The scenario family.
    pub kind: Kind,
    /// Initial voters.
    pub nodes: Vec<NodeSpec>,
    /// Nodes that join later (membership).
    pub spares: Vec<NodeSpec>,
    /// Faults by start time.
    pub faults: Vec<(Duration, Action)>,
    /// Membership changes, if any.
    pub members: Option<MemberScript>,
    /// When every fault is undone and crashed nodes restart.
    pub heal_at: Duration,
    /// When clients stop sending (the load continues a little after heal: liveness).
    pub load_until: Duration,
    /// How many concurrent clients push.
    pub clients: u64,
    /// How many groups they push to.
    pub groups: u64,
    /// Base maximum message latency.
    pub base_latency: Duration,
    /// Whether turmoil runs hosts in a seeded random order each step.
    pub random_order: bool,
}

/// The epoch of every simulation (2023-11-14T22:13:20Z), so push times are reproducible.
pub const EPOCH_SECS: u64 = 1_700_000_000;

/// How long the load continues after heal.
const TAIL: Duration = Duration::from_secs(3);

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The production defaults (`--raft.heartbeat-interval=100ms`,
/// `--raft.election-timeout=400ms`), with a distinct election timeout per node: 400 ms + 60 ms ×
/// a seeded permutation + jitter, so two nodes never time out together forever (fixed
/// timeouts must not tie).
fn node_specs(rng: &mut StdRng, ids: &[u64], all: &[u64]) -> Vec<NodeSpec> {
    let mut slots: Vec<u64> = (0..ids.len() as u64 + 2).collect();
    slots.shuffle(rng);
    let peers: BTreeMap<u64, String> = [1u64, 2, 3].iter().map(|&i| (i, raft_addr(i))).collect();
    ids.iter()
        .zip(slots)
        .map(|(&id, slot)| {
            let checkpoint_every = *[0u64, 1, 3, 10, 50].choose(rng).unwrap_or(&0);
            NodeSpec {
                id,
                election_timeout: ms(400 + 60 * slot + rng.gen_range(0..20)),
                heartbeat: ms(100),
                write_timeout: ms(3000),
                snapshot_every: rng.gen_range(40..200),
                keep_logs: rng.gen_range(5..40),
                mem: MemConfig {
                    fsync: ms(rng.gen_range(1..=3)),
                    checkpoint_every,
                },
                clock_skew_ms: rng.gen_range(-5000..=5000),
                bootstrap: if peers.contains_key(&id) {
                    Bootstrap::Static(peers.clone())
                } else {
                    Bootstrap::Join(all.iter().map(|&i| raft_addr(i)).collect())
                },
            }
        })
        .collect()
}

impl Plan {
    /// The plan of `seed` for `kind`.
    pub fn new(seed: u64, kind: Kind) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_5eed_0000_0000);
        let initial = [1u64, 2, 3];
        let mut specs = node_specs(&mut rng, &[1, 2, 3, 4], &initial);
        let mut spares = specs.split_off(3);
        // Node 5 (the replacement in membership changes) is node 4's twin, 30 ms slower to
        // time out: between the 60 ms slots, so no tie (and no extra draw from `rng`).
        if let Some(four) = spares.first().cloned() {
            spares.push(NodeSpec {
                id: 5,
                election_timeout: four.election_timeout + ms(30),
                ..four
            });
        }
        let mut faults = Vec::new();
        let mut members = None;
        let mut t = 3000u64;
        let mut base_latency = ms(10);
        match kind {
            Kind::PartitionLeader => {
                for _ in 0..rng.gen_range(2..=3) {
                    let d = rng.gen_range(1500..6000);
                    faults.push((ms(t), Action::Isolate(Who::Leader)));
                    faults.push((ms(t + d), Action::Repair));
                    t += d + rng.gen_range(1000..3000);
                }
            }
            Kind::OneWay => {
                for _ in 0..rng.gen_range(3..=4) {
                    let d = rng.gen_range(1500..5000);
                    let action = match rng.gen_range(0..3) {
                        0 => Action::CutOutbound(Who::Leader),
                        1 => Action::CutInbound(Who::Leader),
                        _ => {
                            let mut pair = initial;
                            pair.shuffle(&mut rng);
                            Action::CutOneWay(pair[0], pair[1])
                        }
                    };
                    faults.push((ms(t), action));
                    faults.push((ms(t + d), Action::Repair));
                    t += d + rng.gen_range(800..2500);
                }
            }
            Kind::LossLatency => {
                base_latency = ms(rng.gen_range(5..30));
                faults.push((ms(t), Action::Latency(ms(rng.gen_range(20..90)))));
                faults.push((
                    ms(t),
                    Action::Flaky {
                        fail_rate: rng.gen_range(0.002..0.02),
                        repair_rate: rng.gen_range(0.05..0.4),
                    },
                ));
                let end = t + rng.gen_range(8000..12000);
                let mut u = t + 1000;
                while u + 3000 < end {
                    let d = rng.gen_range(800..3000);
                    if rng.gen_bool(0.5) {
                        faults.push((ms(u), Action::Hold(Who::Leader, rng.gen_range(1..=3))));
                        faults.push((ms(u + d), Action::Release));
                    } else {
                        let who = if rng.gen_bool(0.5) {
                            Who::Leader
                        } else {
                            Who::Follower
                        };
                        // One way; the round trip stays under the heartbeat interval, which
                        // openraft 0.9 uses as the append-entries timeout (a slower link
                        // stalls replication to that peer: a documented limit, not tested).
                        let d = ms(rng.gen_range(15..45));
                        faults.push((ms(u), Action::LinkLatency(who, d)));
                    }
                    u += d + rng.gen_range(500..1500);
                }
                faults.push((ms(end), Action::Repair));
                t = end + 1000;
            }
            Kind::CrashRestart => {
                for _ in 0..rng.gen_range(3..=4) {
                    let d = rng.gen_range(300..5000);
                    let action = match rng.gen_range(0..20) {
                        0..=7 => Action::Crash(Who::Leader),
                        8..=13 => Action::Crash(Who::Follower),
                        14..=17 => Action::CrashMajority,
                        _ => Action::CrashAll,
                    };
                    faults.push((ms(t), action));
                    faults.push((ms(t + d), Action::Restart));
                    t += d + rng.gen_range(1500..3500);
                }
            }
            Kind::Membership => {
                let pause = ms(rng.gen_range(500..2000));
                members = Some(MemberScript {
                    add_at: ms(t),
                    new_id: 4,
                    replacement_id: 5,
                    remove_leader: rng.gen_bool(0.5),
                    pause,
                });
                // One fault on the side, while membership changes.
                let at = t + rng.gen_range(1000..6000);
                let d = rng.gen_range(1000..3000);
                let side = match rng.gen_range(0..3) {
                    0 => Action::Isolate(Who::Leader),
                    1 => Action::Crash(Who::Follower),
                    _ => Action::CutInbound(Who::Leader),
                };
                let undo = if matches!(side, Action::Crash(_)) {
                    Action::Restart
                } else {
                    Action::Repair
                };
                faults.push((ms(at), side));
                faults.push((ms(at + d), undo));
                t = (at + d).max(t + 14_000);
            }
            Kind::StaleForward => {}
            Kind::Swarm => {
                if rng.gen_bool(0.3) {
                    members = Some(MemberScript {
                        add_at: ms(t + rng.gen_range(0..4000)),
                        new_id: 4,
                        replacement_id: 5,
                        remove_leader: rng.gen_bool(0.5),
                        pause: ms(rng.gen_range(500..2000)),
                    });
                }
                if rng.gen_bool(0.5) {
                    base_latency = ms(rng.gen_range(5..40));
                }
                for _ in 0..rng.gen_range(3..=6) {
                    let d = rng.gen_range(500..5000);
                    let (action, undo) = match rng.gen_range(0..9) {
                        0 => (Action::Isolate(Who::Leader), Action::Repair),
                        1 => (Action::Isolate(Who::Follower), Action::Repair),
                        2 => (Action::CutOutbound(Who::Leader), Action::Repair),
                        3 => (Action::CutInbound(Who::Leader), Action::Repair),
                        4 => (
                            Action::Hold(Who::Leader, rng.gen_range(1..=3)),
                            Action::Release,
                        ),
                        5 => (
                            Action::Flaky {
                                fail_rate: rng.gen_range(0.002..0.02),
                                repair_rate: rng.gen_range(0.05..0.4),
                            },
                            Action::Repair,
                        ),
                        6 => (Action::Crash(Who::Leader), Action::Restart),
                        7 => (Action::Crash(Who::Follower), Action::Restart),
                        _ => (Action::CrashMajority, Action::Restart),
                    };
                    faults.push((ms(t), action));
                    faults.push((ms(t + d), undo));
                    t += d + rng.gen_range(300..2500);
                }
                if members.is_some() {
                    t = t.max(18_000);
                }
            }
        }
        if kind == Kind::StaleForward {
            for _ in 0..rng.gen_range(1..=2) {
                let d1 = rng.gen_range(1500..4000);
                let d2 = rng.gen_range(1000..2500);
                let d3 = rng.gen_range(900..1600);
                let d4 = rng.gen_range(1000..2500);
                faults.push((ms(t), Action::HoldAndIsolateLeader));
                faults.push((ms(t + d1), Action::RejoinHeldLeader));
                faults.push((ms(t + d1 + d2), Action::CrashLeaderUnlessHeld));
                // The crashed leader stays down longer than an election timeout (else it
                // resumes leading its own term at restart) and comes back: with it the old
                // leader has a quorum and wins the election while its link to the follower is
                // still held.
                faults.push((ms(t + d1 + d2 + d3), Action::Restart));
                faults.push((ms(t + d1 + d2 + d3 + d4), Action::ReleaseHeld));
                t += d1 + d2 + d3 + d4 + rng.gen_range(2000..4000);
            }
        }
        let heal_at = ms(t);
        Plan {
            seed,
            kind,
            nodes: specs,
            spares,
            faults,
            members,
            heal_at,
            load_until: heal_at + TAIL,
            clients: rng.gen_range(3..=4),
            groups: rng.gen_range(4..=8),
            base_latency,
            random_order: rng.gen_bool(0.5),
        }
    }
}
