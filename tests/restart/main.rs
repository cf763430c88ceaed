//! Crash-restart test of the real `pgw` binary (single node, sled on a real filesystem).
//!
//! Two concurrent pushers run PUT/POST/DELETE against ~20 groups, every write carrying a
//! unique serial as its sample values, a few of them large (≥ 3 MiB bodies, to exercise
//! large-value storage). Every answer is recorded: 2xx is *acknowledged*, a transport error
//! or an unexpected status is *unknown* (it may or may not have been applied). After a
//! random number of acknowledgements the process is killed with SIGKILL while the pushers
//! are still running, restarted on the same `--storage.path`, and then `/api/v1/metrics`
//! and `/metrics` must show, for every group, the state produced by all acknowledged writes
//! in order, optionally followed by that group's one unknown write (a pusher stops at its
//! first unknown). Three kill cycles, then one graceful SIGTERM cycle. The node snapshots
//! every 40 entries, so recovery goes through a snapshot plus a log tail.
//!
//! Environment: `PGW_RESTART_SEED=<u64>` replays a run (the seed is printed).
//! Needs `cargo build --bin pgw` first.

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::{Kind, Proc};

const GROUPS: usize = 20;
const PUSHERS: usize = 2;
/// Upper bound of writes per pusher and cycle.
const OPS_PER_PUSHER: usize = 60;
const KILL_CYCLES: usize = 3;
/// Per-request deadline; large pushes on a debug build on a busy machine can be slow.
const REQ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the restarted node may take to show a state the oracle accepts.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pushers may take to reach the kill trigger.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(300);

/// pgw flag: build a Raft snapshot (and purge the log) every this many entries.
const SNAPSHOT_EVERY: &str = "--raft.snapshot-every=40";

const BIG_FAMILY: &str = "restart_big";
const BIG_SERIES: usize = 40_000;
const FAMILIES: &[&str] = &["restart_a", "restart_b", "restart_c"];

/// The families of one group: family → (serial, number of series).
type Families = BTreeMap<String, (u64, usize)>;
/// The pushed state of one group; `None`: no such group.
type GroupState = Option<Families>;
/// What a read path shows: group index → its families.
type Observed = BTreeMap<usize, Families>;

#[derive(Clone, Debug)]
enum OpKind {
    Put(Vec<(String, usize)>),
    Post(Vec<(String, usize)>),
    Delete,
}

#[derive(Clone, Debug)]
struct Op {
    group: usize,
    serial: u64,
    kind: OpKind,
}

#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Acked,
    Unknown(String),
    Rejected(String),
}

fn job(group: usize) -> String {
    format!("restart_g{group:02}")
}

/// Odd groups also carry an `instance` grouping label.
fn instance(group: usize) -> String {
    if group % 2 == 1 {
        format!("i{group:02}")
    } else {
        String::new()
    }
}

fn path(group: usize) -> String {
    if group % 2 == 1 {
        format!("/metrics/job/{}/instance/{}", job(group), instance(group))
    } else {
        format!("/metrics/job/{}", job(group))
    }
}

fn body(families: &[(String, usize)], serial: u64) -> Vec<u8> {
    let pad = "p".repeat(64);
    let mut s = String::new();
    for (name, n) in families {
        s.push_str(&format!(
            "# HELP {name} Restart test family.\n# TYPE {name} gauge\n"
        ));
        for k in 0..*n {
            if name == BIG_FAMILY {
                s.push_str(&format!("{name}{{s=\"{k:06}\",pad=\"{pad}\"}} {serial}\n"));
            } else {
                s.push_str(&format!("{name}{{s=\"{k}\"}} {serial}\n"));
            }
        }
    }
    s.into_bytes()
}

fn apply(state: &mut GroupState, op: &Op) {
    match &op.kind {
        OpKind::Delete => *state = None,
        OpKind::Put(fams) => {
            *state = Some(
                fams.iter()
                    .map(|(n, c)| (n.clone(), (op.serial, *c)))
                    .collect(),
            )
        }
        OpKind::Post(fams) => {
            let m = state.get_or_insert_with(BTreeMap::new);
            for (n, c) in fams {
                m.insert(n.clone(), (op.serial, *c));
            }
        }
    }
}

/// A random write to `group`; `big` adds the ≥ 3 MiB family (never a DELETE then).
fn random_op(rng: &mut StdRng, group: usize, serial: u64, big: bool) -> Op {
    let pick_families = |rng: &mut StdRng| -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = Vec::new();
        for f in FAMILIES {
            if rng.gen_bool(0.6) {
                v.push((f.to_string(), rng.gen_range(1..=3)));
            }
        }
        if v.is_empty() && rng.gen_bool(0.8) {
            v.push((FAMILIES[0].to_string(), 1));
        }
        v
    };
    let roll = if big {
        rng.gen_range(15..100)
    } else {
        rng.gen_range(0..100)
    };
    let kind = if roll < 15 {
        OpKind::Delete
    } else if roll < 55 {
        let mut f = pick_families(rng);
        if big {
            f.push((BIG_FAMILY.to_string(), BIG_SERIES));
        }
        OpKind::Put(f)
    } else {
        let mut f = pick_families(rng);
        if big {
            f.push((BIG_FAMILY.to_string(), BIG_SERIES));
        }
        if f.is_empty() {
            f.push((FAMILIES[1].to_string(), 2));
        }
        OpKind::Post(f)
    };
    Op {
        group,
        serial,
        kind,
    }
}

async fn send(addr: SocketAddr, op: &Op) -> Answer {
    let (method, body) = match &op.kind {
        OpKind::Put(f) => ("PUT", body(f, op.serial)),
        OpKind::Post(f) => ("POST", body(f, op.serial)),
        OpKind::Delete => ("DELETE", Vec::new()),
    };
    match support::request(addr, method, &path(op.group), &[], &body, REQ_TIMEOUT).await {
        Ok(r) if (200..300).contains(&r.status) => Answer::Acked,
        Ok(r) if r.status == 400 => Answer::Rejected(format!("400 {:?}", r.text())),
        Ok(r) => Answer::Unknown(format!("status {} {:?}", r.status, r.text())),
        Err(e) => Answer::Unknown(e),
    }
}

struct Shared {
    serial: AtomicU64,
    acks: AtomicU64,
    stop: AtomicBool,
}

/// One pusher: sequential writes to its own groups until `OPS_PER_PUSHER`, the first
/// non-acknowledged answer, or `stop`.
async fn pusher(
    addr: SocketAddr,
    groups: Vec<usize>,
    seed: u64,
    shared: Arc<Shared>,
) -> Vec<(Op, Answer)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    for i in 0..OPS_PER_PUSHER {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        // Large bodies go to the pusher's first group only, to bound the store: the third
        // write of every cycle, then one in twelve.
        let big = i == 2 || rng.gen_bool(1.0 / 12.0);
        let group = if big {
            groups[0]
        } else {
            groups[rng.gen_range(0..groups.len())]
        };
        let serial = shared.serial.fetch_add(1, Ordering::SeqCst);
        let op = random_op(&mut rng, group, serial, big);
        let answer = send(addr, &op).await;
        let done = answer != Answer::Acked;
        if !done {
            shared.acks.fetch_add(1, Ordering::SeqCst);
        }
        log.push((op, answer));
        if done {
            break;
        }
    }
    log
}

/// The restart groups as seen in `/api/v1/metrics`.
fn observe_api(v: &Value) -> Result<Observed, String> {
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| "no data array".to_string())?;
    let mut out = BTreeMap::new();
    for g in data {
        let labels = g
            .get("labels")
            .and_then(Value::as_object)
            .ok_or("no labels")?;
        let Some(j) = labels.get("job").and_then(Value::as_str) else {
            continue;
        };
        let Some(idx) = j
            .strip_prefix("restart_g")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let inst = labels.get("instance").and_then(Value::as_str).unwrap_or("");
        if inst != instance(idx) || labels.len() != if idx % 2 == 1 { 2 } else { 1 } {
            return Err(format!("unexpected grouping key {labels:?}"));
        }
        let mut fams = BTreeMap::new();
        for (name, fam) in g.as_object().ok_or("group not an object")? {
            if !name.starts_with("restart_") {
                continue;
            }
            let metrics = fam
                .get("metrics")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{name}: no metrics"))?;
            let values: BTreeSet<&str> = metrics
                .iter()
                .filter_map(|m| m.get("value").and_then(Value::as_str))
                .collect();
            let serial = single_serial(name, values.iter().copied())?;
            fams.insert(name.clone(), (serial, metrics.len()));
        }
        if out.insert(idx, fams).is_some() {
            return Err(format!("group {idx} twice"));
        }
    }
    Ok(out)
}

/// The restart groups as seen in the `/metrics` exposition. A group exists iff its
/// `push_time_seconds` series does.
fn observe_text(text: &str) -> Result<Observed, String> {
    let mut values: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
    let mut out: Observed = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or("sample without value")?;
        let name = &series[..series.find('{').unwrap_or(series.len())];
        if name != "push_time_seconds" && !name.starts_with("restart_") {
            continue;
        }
        let Some(j) = series
            .split("job=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let Some(idx) = j
            .strip_prefix("restart_g")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if name == "push_time_seconds" {
            out.entry(idx).or_default();
        } else {
            values
                .entry((idx, name.to_string()))
                .or_default()
                .push(value.to_string());
        }
    }
    for ((idx, name), vals) in values {
        let serial = single_serial(&name, vals.iter().map(String::as_str))?;
        out.entry(idx)
            .or_default()
            .insert(name, (serial, vals.len()));
    }
    Ok(out)
}

fn single_serial<'a>(name: &str, values: impl Iterator<Item = &'a str>) -> Result<u64, String> {
    let set: BTreeSet<&str> = values.collect();
    if set.len() != 1 {
        return Err(format!(
            "family {name} mixes values of several writes: {set:?}"
        ));
    }
    let v = set.into_iter().next().expect("one value");
    v.parse::<f64>()
        .map(|f| f as u64)
        .map_err(|e| format!("family {name}: value {v:?}: {e}"))
}

/// Checks one observation against the per-group candidates; returns the resolved state.
fn check(observed: &Observed, candidates: &[Vec<GroupState>]) -> Result<Vec<GroupState>, String> {
    let mut errs = Vec::new();
    let mut resolved = Vec::with_capacity(GROUPS);
    for (g, cands) in candidates.iter().enumerate() {
        let obs: GroupState = observed.get(&g).cloned();
        if cands.contains(&obs) {
            resolved.push(obs);
        } else {
            errs.push(format!(
                "group {} ({}): observed {obs:?}, acceptable {cands:?}",
                g,
                path(g)
            ));
            resolved.push(obs);
        }
    }
    for g in observed.keys() {
        if *g >= GROUPS {
            errs.push(format!("unexpected group {g}"));
        }
    }
    if errs.is_empty() {
        Ok(resolved)
    } else {
        Err(errs.join("\n"))
    }
}

/// Reads both paths until they show a state every group's candidates accept.
///
/// Called right after `/-/ready` answered 200, so the first read must already pass; if it
/// does not, polling goes on until the deadline only to tell a lost write from a late one.
async fn verify(addr: SocketAddr, candidates: &[Vec<GroupState>]) -> Vec<GroupState> {
    let started = Instant::now();
    let deadline = started + RECOVERY_TIMEOUT;
    let mut first_failure: Option<String> = None;
    loop {
        let attempt = async {
            let r = support::get(addr, "/api/v1/metrics", REQ_TIMEOUT).await?;
            if r.status != 200 {
                return Err(format!("/api/v1/metrics: status {}", r.status));
            }
            let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
            let api = observe_api(&v).map_err(|e| format!("/api/v1/metrics: {e}"))?;
            let resolved = check(&api, candidates).map_err(|e| format!("/api/v1/metrics:\n{e}"))?;
            let m = support::get(addr, "/metrics", REQ_TIMEOUT).await?;
            if m.status != 200 {
                return Err(format!("/metrics: status {} {:?}", m.status, m.text()));
            }
            let text = observe_text(&m.text()).map_err(|e| format!("/metrics: {e}"))?;
            let resolved_text = check(&text, candidates).map_err(|e| format!("/metrics:\n{e}"))?;
            if resolved_text != resolved {
                return Err(format!(
                    "/metrics and /api/v1/metrics disagree:\n{resolved_text:?}\nvs\n{resolved:?}"
                ));
            }
            Ok(resolved)
        }
        .await;
        match (attempt, first_failure.as_ref()) {
            (Ok(r), None) => return r,
            (Ok(_), Some(first)) => panic!(
                "right after /-/ready answered 200 the store did not show every acknowledged \
                 write; it caught up {:.1?} later (readiness is reported too early). First \
                 read:\n{first}",
                started.elapsed()
            ),
            (Err(e), _) if Instant::now() >= deadline => panic!(
                "after the restart, the store did not reach a state consistent with the \
                 acknowledged writes within {RECOVERY_TIMEOUT:?}:\n{e}"
            ),
            (Err(e), _) => {
                // Keep polling to tell "lost" from "late", then fail either way.
                first_failure.get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9() {
    let seed = std::env::var("PGW_RESTART_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    println!("restart: seed {seed} (replay with PGW_RESTART_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let big_body = body(&[(BIG_FAMILY.to_string(), BIG_SERIES)], u64::from(u32::MAX)).len();
    assert!(
        big_body >= 3 << 20,
        "large writes must be at least 3 MiB, are {big_body} bytes"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    // Snapshot often, so a restart recovers from a snapshot plus a log tail, not only from
    // the log.
    let mut node = Proc::start_server(
        Kind::Pgw,
        "pgw-restart",
        &dir.path().join("data"),
        dir.path(),
        &[SNAPSHOT_EVERY],
    )
    .await;

    let mut state: Vec<GroupState> = vec![None; GROUPS];
    let shared_serial = Arc::new(AtomicU64::new(1));
    let mut totals = (0usize, 0usize, 0usize);
    for cycle in 0..=KILL_CYCLES {
        let graceful = cycle == KILL_CYCLES;
        let shared = Arc::new(Shared {
            serial: AtomicU64::new(shared_serial.load(Ordering::SeqCst)),
            acks: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let target = rng.gen_range(30..(PUSHERS * OPS_PER_PUSHER * 5 / 6)) as u64;
        let addr = node.addr;
        let mut tasks = Vec::new();
        for p in 0..PUSHERS {
            let groups: Vec<usize> = (0..GROUPS).filter(|g| g % PUSHERS == p).collect();
            tasks.push(tokio::spawn(pusher(
                addr,
                groups,
                rng.r#gen(),
                shared.clone(),
            )));
        }
        // Wait for the kill trigger: enough acknowledgements, or every pusher finished.
        let deadline = Instant::now() + CYCLE_TIMEOUT;
        loop {
            if shared.acks.load(Ordering::SeqCst) >= target || tasks.iter().all(|t| t.is_finished())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: only {} of {target} writes acknowledged within {CYCLE_TIMEOUT:?}",
                shared.acks.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let in_flight = tasks.iter().filter(|t| !t.is_finished()).count();
        if graceful {
            shared.stop.store(true, Ordering::SeqCst);
            let status = node.term(Duration::from_secs(30));
            assert!(
                status.is_some_and(|s| s.success()),
                "pgw did not exit cleanly within 30 s of SIGTERM: {status:?}"
            );
        } else {
            node.kill9();
        }
        let mut logs = Vec::new();
        for t in tasks {
            logs.extend(t.await.expect("pusher task"));
        }
        shared_serial.store(shared.serial.load(Ordering::SeqCst), Ordering::SeqCst);

        // Candidates per group: acknowledged writes in order, then optionally the one
        // unknown write (a pusher stops at its first unknown; logs are in per-group order
        // because each group belongs to one pusher).
        let mut acked_state = state.clone();
        let mut unknown: Vec<Option<Op>> = vec![None; GROUPS];
        let (mut acked, mut unknowns) = (0, 0);
        let mut reasons = Vec::new();
        for (op, answer) in &logs {
            match answer {
                Answer::Acked => {
                    assert!(
                        unknown[op.group].is_none(),
                        "oracle bug: acknowledged write after an unknown one on group {}",
                        op.group
                    );
                    apply(&mut acked_state[op.group], op);
                    acked += 1;
                }
                Answer::Unknown(why) => {
                    reasons.push(format!("{} #{}: {why}", path(op.group), op.serial));
                    unknown[op.group] = Some(op.clone());
                    unknowns += 1;
                }
                Answer::Rejected(e) => panic!(
                    "cycle {cycle}: a valid write was rejected: {} {}: {e}",
                    path(op.group),
                    op.serial
                ),
            }
        }
        let candidates: Vec<Vec<GroupState>> = (0..GROUPS)
            .map(|g| {
                let mut c = vec![acked_state[g].clone()];
                if let Some(op) = &unknown[g] {
                    let mut s = acked_state[g].clone();
                    apply(&mut s, op);
                    c.push(s);
                }
                c
            })
            .collect();
        let big = logs
            .iter()
            .filter(|(op, a)| {
                *a == Answer::Acked
                    && matches!(&op.kind, OpKind::Put(f) | OpKind::Post(f) if f.iter().any(|(n, _)| n == BIG_FAMILY))
            })
            .count();

        node.restart().await;
        let started = Instant::now();
        state = verify(node.addr, &candidates).await;
        let (mut applied, mut lost, mut either) = (0, 0, 0);
        for g in 0..GROUPS {
            if let [before, after] = candidates[g].as_slice() {
                if before == after {
                    either += 1;
                } else if state[g] == *after {
                    applied += 1;
                } else {
                    lost += 1;
                }
            }
        }
        println!(
            "restart: cycle {cycle} ({}): {} writes, {acked} acknowledged ({big} large), \
             {unknowns} unknown ({applied} applied, {lost} not applied, {either} indistinguishable), \
             {in_flight} pusher(s) in flight at the {}; recovered state verified in {:.1?}",
            if graceful { "SIGTERM" } else { "SIGKILL" },
            logs.len(),
            if graceful { "signal" } else { "kill" },
            started.elapsed()
        );
        for r in &reasons {
            println!("restart:   unknown {r}");
        }
        totals.0 += logs.len();
        totals.1 += acked;
        totals.2 += unknowns;
    }

    // Liveness after the last restart: a fresh write is acknowledged and visible.
    let serial = shared_serial.fetch_add(1, Ordering::SeqCst);
    let op = Op {
        group: 0,
        serial,
        kind: OpKind::Put(vec![(FAMILIES[2].to_string(), 1)]),
    };
    assert_eq!(
        send(node.addr, &op).await,
        Answer::Acked,
        "write after the last restart"
    );
    apply(&mut state[0], &op);
    let candidates: Vec<Vec<GroupState>> = state.iter().map(|s| vec![s.clone()]).collect();
    verify(node.addr, &candidates).await;
    // Informational: did recovery go through snapshots? (pgw's node-local self-metric.)
    if let Ok(m) = support::get(node.addr, "/metrics", REQ_TIMEOUT).await {
        let text = m.text();
        let snap = text
            .lines()
            .find(|l| l.starts_with("pgw_raft_snapshot_index "))
            .unwrap_or("pgw_raft_snapshot_index (not exposed)");
        println!("restart: {snap}");
    }
    println!(
        "restart: {} cycles, {} writes, {} acknowledged, {} unknown; every acknowledged write survived",
        KILL_CYCLES + 1,
        totals.0,
        totals.1,
        totals.2
    );
}

/// Copies a directory tree (regular files and directories only).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for e in std::fs::read_dir(from).expect("read storage dir") {
        let e = e.expect("dir entry");
        let ty = e.file_type().expect("file type");
        let target = to.join(e.file_name());
        if ty.is_dir() {
            copy_dir(&e.path(), &target);
        } else if ty.is_file() {
            std::fs::copy(e.path(), &target).expect("copy file");
        }
    }
}

/// Every regular file under `dir`, relative to it.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("dir entry");
            let ty = e.file_type().expect("file type");
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() && e.metadata().is_ok_and(|m| m.len() > 0) {
                out.push(e.path().strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Reference quirk Q8: a corrupt persistence file makes the reference start empty, silently,
/// and overwrite the file. pgw must not lose acknowledged writes silently: with any one
/// storage file damaged it either refuses to start (non-zero exit) or still serves every
/// acknowledged write. Each file is damaged on its own copy of a cleanly shut down store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_storage_is_not_silently_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pristine = dir.path().join("pristine");
    let mut node = Proc::start_server(Kind::Pgw, "pgw-q8", &pristine, dir.path(), &[]).await;
    let mut state: Vec<GroupState> = vec![None; GROUPS];
    for (g, group_state) in state.iter_mut().enumerate().take(3) {
        let op = Op {
            group: g,
            serial: 1000 + g as u64,
            kind: OpKind::Put(vec![(FAMILIES[0].to_string(), 2)]),
        };
        assert_eq!(send(node.addr, &op).await, Answer::Acked, "seed write {g}");
        apply(group_state, &op);
    }
    let status = node.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "pgw did not exit cleanly within 30 s of SIGTERM: {status:?}"
    );
    let expected: Observed = state
        .iter()
        .enumerate()
        .filter_map(|(g, s)| s.clone().map(|f| (g, f)))
        .collect();

    let files = files_under(&pristine);
    assert!(!files.is_empty(), "pgw left no files under --storage.path");
    let mut failures = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let case = dir.path().join(format!("damaged-{i}"));
        copy_dir(&pristine, &case);
        let path = case.join(file);
        let mut bytes = std::fs::read(&path).expect("read storage file");
        let n = bytes.len().min(64);
        for b in &mut bytes[..n] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).expect("damage storage file");

        let name = format!("pgw-q8-damaged-{i}");
        match Proc::try_start_server(Kind::Pgw, &name, &case, dir.path(), &[]).await {
            Err(e) if !e.status.success() => {
                println!(
                    "restart: damaged {}: pgw refused to start ({})",
                    file.display(),
                    e.status
                );
            }
            Err(e) => failures.push(format!(
                "damaged {}: pgw exited with success before becoming ready:\n{e}",
                file.display()
            )),
            Ok(mut p) => {
                p.keep_log_quiet();
                let seen = async {
                    let r = support::get(p.addr, "/api/v1/metrics", REQ_TIMEOUT).await?;
                    let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                    observe_api(&v)
                }
                .await;
                match seen {
                    Ok(seen) if seen == expected => println!(
                        "restart: damaged {}: pgw started and still serves every acknowledged write",
                        file.display()
                    ),
                    other => failures.push(format!(
                        "damaged {} ({} bytes overwritten): pgw started and does not serve the \
                         acknowledged writes (silent data loss, reference quirk Q8)\n  \
                         expected {expected:?}\n  observed {other:?}\n  log:\n{}",
                        file.display(),
                        n,
                        p.log_tail(3000)
                    )),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} damaged-storage cases lost data silently:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
