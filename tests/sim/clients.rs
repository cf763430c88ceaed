//! The simulated clients: the load (PUT/POST/DELETE with unique values, linearizable
//! reads), the scraper, the membership admin and the checker that waits for convergence.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgw_proto::v1::admin_service_client::AdminServiceClient;
use pgw_proto::v1::{ChangeMembershipRequest, StatusRequest};
use pgw_testkit::push_time::samples_of;
use pgw_testkit::{History, OpKind, Outcome, ReplicaView, Workload};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tonic::transport::Endpoint;

use crate::checks::{LinRead, api_value};
use crate::cluster::{Metrics, SlotRef, host, lock, raft_addr};
use crate::driver::{
    CLIENT_TIMEOUT, CONVERGE_WITHIN, FAMILIES, Request, SharedRef, leader_of, now_ms, sleep_until,
};
use crate::net::{self, Reply};
use crate::plan::{MemberScript, Plan};

#[derive(Clone)]
pub(crate) struct ClientCtx {
    pub(crate) plan: Plan,
    pub(crate) shared: SharedRef,
    pub(crate) slots: BTreeMap<u64, SlotRef>,
    pub(crate) history: History,
    pub(crate) workload: Workload,
    pub(crate) counter: Arc<AtomicU64>,
}

/// Waits until some node leads (the cluster formed).
pub(crate) async fn wait_for_leader(slots: &BTreeMap<u64, SlotRef>) {
    while leader_of(slots).is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client pushing PUT/POST/DELETE with unique values to random groups through random
/// nodes, one request at a time, recording each outcome.
pub(crate) async fn load_client(ctx: ClientCtx, index: u64) -> turmoil::Result {
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
pub(crate) async fn lin_read(ctx: &ClientCtx, via: u64, group: &str, family: &str, after: u64) {
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
pub(crate) async fn scrape(
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
pub(crate) async fn scraper(ctx: ClientCtx) -> turmoil::Result {
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
pub(crate) fn membership(
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
pub(crate) async fn checker(
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

pub(crate) fn admin_client(
    id: u64,
) -> Result<AdminServiceClient<tonic::transport::Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", raft_addr(id)))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500));
    Ok(AdminServiceClient::new(
        endpoint.connect_with_connector_lazy(net::connector()),
    ))
}

/// Removes `victim` through the admin service of whichever node leads, as `pgwctl member
/// remove` does.
pub(crate) async fn remove_member(
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
                    ..Default::default()
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

pub(crate) async fn wait_voter(slots: &BTreeMap<u64, SlotRef>, id: u64, until: Duration) -> bool {
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
pub(crate) async fn admin(
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

pub(crate) async fn admin_script(
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
