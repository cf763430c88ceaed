//! The commands: each gathers what it needs, checks safety, acts, and prints a table or JSON.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgw_proto::v1::{
    AddLearnerRequest, BackupRequest, ChangeMembershipRequest, Member, MembershipReply,
    RestoreChunk, StatusReply, TriggerSnapshotRequest,
};
use serde::Serialize;

use crate::backup_file::{self, AtomicWriter, Header};
use crate::client::{Client, Retry, describe};
use crate::cluster::{ClusterView, Verdict, check_quorum, list, with, without};
use crate::error::{CtlError, Result};
use crate::output::{Format, Progress, print_json, table};
use crate::{Cli, Command, MemberCommand, http};

/// Runs the command; returns the exit code on success paths (`status` exits 1 when unhealthy).
pub async fn run(cli: Cli) -> Result<i32> {
    let endpoints: Vec<String> = cli
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(CtlError::usage(
            "no endpoint: give --endpoint HOST:PORT (a node's gRPC address) or set PGWCTL_ENDPOINTS",
        ));
    }
    for e in &endpoints {
        if e.contains("://") || !e.contains(':') {
            return Err(CtlError::usage(format!(
                "--endpoint {e:?} must be host:port (a node's gRPC address, e.g. 10.0.0.1:9095)"
            )));
        }
    }
    let client = Client::new(endpoints, cli.timeout).with_tls(cli.tls.grpc_config()?);
    let out = cli.output;
    match cli.command {
        Command::Status { max_lag } => status(&client, out, max_lag).await,
        Command::Member(MemberCommand::List) => member_list(&client, out).await.map(|()| 0),
        Command::Member(MemberCommand::Add {
            id,
            addr,
            http_address,
            wait,
            wait_timeout,
            force,
        }) => member_add(
            &client,
            out,
            id,
            &addr,
            http_address,
            wait,
            wait_timeout,
            force,
        )
        .await
        .map(|()| 0),
        Command::Member(MemberCommand::Promote { id, force, max_lag }) => {
            member_promote(&client, out, id, force, max_lag)
                .await
                .map(|()| 0)
        }
        Command::Member(MemberCommand::Remove { id, force }) => {
            member_remove(&client, out, id, force).await.map(|()| 0)
        }
        Command::Leader => leader(&client, out).await.map(|()| 0),
        Command::Snapshot { node } => snapshot(&client, out, node).await.map(|()| 0),
        Command::Backup {
            file,
            no_progress,
            local,
        } => backup(&client, out, &file, !no_progress, local)
            .await
            .map(|()| 0),
        Command::Restore { file, force } => restore(&client, out, &file, force).await.map(|()| 0),
        Command::Groups { http, linearizable } => {
            let base = http_base(&client, http, cli.tls.https()).await?;
            let rows = http::groups(&base, linearizable, client.timeout, &cli.tls).await?;
            print_groups(out, &rows);
            Ok(0)
        }
        Command::Delete { labels, http } => {
            let pairs = parse_labels(&labels)?;
            http::group_path(&pairs).map_err(CtlError::usage)?;
            let base = http_base(&client, http, cli.tls.https()).await?;
            let url = http::delete(&base, &pairs, client.timeout, &cli.tls).await?;
            match out {
                Format::Json => print_json(&serde_json::json!({
                    "deleted": pairs.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    "url": url,
                })),
                Format::Table => println!("deleted group {}", show_labels(&pairs)),
            }
            Ok(0)
        }
        Command::Wipe { yes, http } => {
            if !yes {
                return Err(CtlError::usage(
                    "wipe deletes every group of the cluster; add --yes to confirm",
                ));
            }
            let base = http_base(&client, http, cli.tls.https()).await?;
            http::wipe(&base, client.timeout, &cli.tls).await?;
            match out {
                Format::Json => print_json(&serde_json::json!({ "wiped": true, "url": base })),
                Format::Table => println!("wiped every group (through {base})"),
            }
            Ok(0)
        }
    }
}

// ---------------------------------------------------------------------------------------
// status

/// One member in `status --output json`.
#[derive(Debug, Serialize)]
struct StatusMember {
    id: u64,
    grpc_address: String,
    http_address: String,
    /// `voter` or `learner`.
    role: &'static str,
    leader: bool,
    /// Raft state as the node reports it: Leader, Follower, Candidate, Learner.
    state: Option<String>,
    term: Option<u64>,
    commit_index: Option<u64>,
    applied_index: Option<u64>,
    last_log_index: Option<u64>,
    snapshot_index: Option<u64>,
    /// Entries behind the leader's last log index (null when the leader did not answer).
    lag: Option<u64>,
    reachable: bool,
    error: Option<String>,
}

/// `status --output json`.
#[derive(Debug, Serialize)]
struct StatusOut {
    verdict: Verdict,
    summary: String,
    leader_id: Option<u64>,
    term: Option<u64>,
    voters: usize,
    voters_reachable: usize,
    learners: usize,
    members: Vec<StatusMember>,
}

fn role(voter: bool) -> &'static str {
    if voter { "voter" } else { "learner" }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

async fn status(client: &Client, out: Format, max_lag: u64) -> Result<i32> {
    let view = ClusterView::gather(client).await?;
    let (verdict, summary) = view.verdict(max_lag);
    let voters = view.voters();
    let reachable = view.reachable();
    let members: Vec<StatusMember> = view
        .members
        .iter()
        .map(|v| {
            let s = v.status.as_ref().ok();
            StatusMember {
                id: v.member.id,
                grpc_address: v.member.raft_address.clone(),
                http_address: v.http_address(),
                role: role(v.member.voter),
                leader: view.leader == Some(v.member.id),
                state: s.map(|s| s.role.clone()),
                term: s.map(|s| s.term),
                commit_index: s.map(|s| s.commit_index),
                applied_index: s.map(|s| s.applied_index),
                last_log_index: s.map(|s| s.last_log_index),
                snapshot_index: s.map(|s| s.snapshot_index),
                lag: view.lag(v.member.id),
                reachable: s.is_some(),
                error: v.status.as_ref().err().cloned(),
            }
        })
        .collect();
    let report = StatusOut {
        verdict,
        summary,
        leader_id: view.leader,
        term: view.leader_status.as_ref().map(|s| s.term),
        voters: voters.len(),
        voters_reachable: voters.intersection(&reachable).count(),
        learners: view.members.len() - voters.len(),
        members,
    };
    match out {
        Format::Json => print_json(&report),
        Format::Table => {
            let rows: Vec<Vec<String>> = report
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.grpc_address.clone(),
                        if m.http_address.is_empty() {
                            "-".into()
                        } else {
                            m.http_address.clone()
                        },
                        m.role.to_string(),
                        if m.leader { "*".into() } else { String::new() },
                        opt(m.state.clone()),
                        opt(m.term),
                        opt(m.commit_index),
                        opt(m.applied_index),
                        opt(m.lag),
                        match &m.error {
                            None => "yes".into(),
                            Some(e) => format!("no: {e}"),
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "GRPC",
                        "HTTP",
                        "ROLE",
                        "LEADER",
                        "STATE",
                        "TERM",
                        "COMMIT",
                        "APPLIED",
                        "LAG",
                        "REACHABLE"
                    ],
                    &rows
                )
            );
            println!("{}", report.summary);
        }
    }
    Ok(if verdict == Verdict::Healthy { 0 } else { 1 })
}

// ---------------------------------------------------------------------------------------
// members

/// A member in JSON output.
#[derive(Debug, Serialize)]
struct MemberOut {
    id: u64,
    grpc_address: String,
    http_address: String,
    role: &'static str,
}

fn member_out(m: &Member) -> MemberOut {
    MemberOut {
        id: m.id,
        grpc_address: m.raft_address.clone(),
        http_address: m.http_address.clone(),
        role: role(m.voter),
    }
}

fn print_members(out: Format, leader: Option<u64>, members: &[Member], extra: serde_json::Value) {
    match out {
        Format::Json => {
            let mut v = serde_json::json!({
                "leader_id": leader,
                "members": members.iter().map(member_out).collect::<Vec<_>>(),
            });
            if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
                for (k, val) in more {
                    obj.insert(k, val);
                }
            }
            print_json(&v);
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.raft_address.clone(),
                        if m.http_address.is_empty() {
                            "-".into()
                        } else {
                            m.http_address.clone()
                        },
                        role(m.voter).to_string(),
                        if leader == Some(m.id) {
                            "*".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["ID", "GRPC", "HTTP", "ROLE", "LEADER"], &rows)
            );
        }
    }
}

/// The membership as the leader sees it (or the first endpoint when no leader answers),
/// with HTTP addresses filled in from the nodes themselves.
async fn member_list(client: &Client, out: Format) -> Result<()> {
    let view = ClusterView::gather(client).await?;
    let members: Vec<Member> = view
        .members
        .iter()
        .map(|v| Member {
            http_address: v.http_address(),
            ..v.member.clone()
        })
        .collect();
    print_members(out, view.leader, &members, serde_json::json!({}));
    Ok(())
}

/// Prints the outcome of a membership change: a sentence, or JSON with the members.
fn report_change(
    out: Format,
    action: &str,
    id: u64,
    changed: bool,
    message: &str,
    reply: &MembershipReply,
    leader: Option<u64>,
) {
    match out {
        Format::Json => print_members(
            out,
            leader,
            &reply.members,
            serde_json::json!({
                "action": action,
                "node_id": id,
                "changed": changed,
                "message": message,
            }),
        ),
        Format::Table => println!("{message}"),
    }
}

async fn change_membership(
    client: &Client,
    req: ChangeMembershipRequest,
) -> Result<MembershipReply> {
    client
        .on_leader("changing the membership", Retry::Idempotent, |mut c| {
            let req = req.clone();
            async move { c.change_membership(req).await }
        })
        .await
}

/// The status of the leader, waiting (up to the timeout) for one to be known.
async fn leader_status(client: &Client) -> Result<StatusReply> {
    let deadline = Instant::now() + client.timeout;
    loop {
        let (_, seed) = client.first_status().await?;
        if seed.has_leader {
            if seed.leader_id == seed.node_id && seed.role == "Leader" {
                return Ok(seed);
            }
            if let Some(m) = seed.members.iter().find(|m| m.id == seed.leader_id)
                && let Ok(s) = client.status_of(&m.raft_address).await
                && s.role == "Leader"
            {
                return Ok(s);
            }
        }
        if Instant::now() >= deadline {
            return Err(CtlError::failed(format!(
                "no leader answered within {:?} (node {} knows {}); the cluster may be electing \
                 a leader or have lost its quorum: check `pgwctl status`",
                client.timeout,
                seed.node_id,
                if seed.has_leader {
                    format!("leader {}", seed.leader_id)
                } else {
                    "no leader".into()
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn member_add(
    client: &Client,
    out: Format,
    id: u64,
    addr: &str,
    http_address: Option<String>,
    wait: bool,
    wait_timeout: Duration,
    force: bool,
) -> Result<()> {
    if id == 0 {
        return Err(CtlError::usage("node ids start at 1"));
    }
    if addr.contains("://") || !addr.contains(':') {
        return Err(CtlError::usage(format!(
            "{addr:?} must be the new node's gRPC address as host:port (its --cluster.advertise-address)"
        )));
    }
    let view = ClusterView::gather(client).await?;
    if let Some(existing) = view.member(id) {
        if existing.member.raft_address != addr {
            return Err(CtlError::failed(format!(
                "node {id} is already a member at {}, not {addr}; to move it, remove it first \
                 (`pgwctl member remove {id}`) and add it again, or use a new id",
                existing.member.raft_address
            )));
        }
        if existing.member.voter || !wait {
            let reply = MembershipReply {
                members: view.members.iter().map(|v| v.member.clone()).collect(),
            };
            let msg = format!(
                "node {id} at {addr} is already a member ({}); nothing to do",
                role(existing.member.voter)
            );
            report_change(out, "add", id, false, &msg, &reply, view.leader);
            return Ok(());
        }
    } else {
        if let Some(other) = view.members.iter().find(|v| v.member.raft_address == addr) {
            return Err(CtlError::failed(format!(
                "{addr} is already the address of member {}; each node needs its own address \
                 (remove member {} first if it was replaced)",
                other.member.id, other.member.id
            )));
        }
        // Ask the new node who it is, so a wrong id or a node of another cluster is caught
        // before it enters the membership.
        let mut http = http_address.clone().unwrap_or_default();
        match client.status_of(addr).await {
            Ok(s) => {
                if s.node_id != id {
                    return Err(CtlError::failed(format!(
                        "the node at {addr} has --cluster.node-id {}, not {id}; run \
                         `pgwctl member add {} {addr}` or restart it with --cluster.node-id {id}",
                        s.node_id, s.node_id
                    )));
                }
                let ours: BTreeSet<u64> = view.members.iter().map(|v| v.member.id).collect();
                let theirs: BTreeSet<u64> = s.members.iter().map(|m| m.id).collect();
                if !theirs.is_empty() && theirs.intersection(&ours).next().is_none() {
                    return Err(CtlError::failed(format!(
                        "node {id} at {addr} already belongs to another cluster (members {}): it \
                         was probably started without --cluster.peers/--cluster.join and \
                         initialised itself. Stop it, empty its --storage.path, and start it again \
                         with --cluster.peers listing this cluster's members and itself (see \
                         docs/operations.md, add a node)",
                        list(&theirs)
                    )));
                }
                if http.is_empty() {
                    http = s.http_address;
                }
            }
            Err(e) => {
                eprintln!(
                    "pgwctl: warning: node {id} at {addr} does not answer yet ({e}); adding it \
                     anyway: it catches up once it runs"
                );
            }
        }
        let member = Member {
            id,
            raft_address: addr.to_string(),
            http_address: http,
            voter: false,
        };
        let req = AddLearnerRequest {
            member: Some(member),
            blocking: false,
            promote: false,
        };
        let reply = client
            .on_leader("adding a learner", Retry::Idempotent, |mut c| {
                let req = req.clone();
                async move { c.add_learner(req).await }
            })
            .await?;
        if !wait {
            let msg = format!(
                "added node {id} at {addr} as a learner; promote it once it has caught up: \
                 `pgwctl member promote {id}` (or use `member add --wait`)"
            );
            report_change(out, "add", id, true, &msg, &reply, view.leader);
            return Ok(());
        }
    }
    // --wait: until the learner has replicated what the leader had when it was added.
    let start = leader_status(client).await?;
    let target = start.last_log_index;
    let deadline = Instant::now() + wait_timeout;
    let show = out == Format::Table && std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let leader = leader_status(client).await?;
        let lag = leader.lag.get(&id).copied();
        let matched = lag.map(|l| leader.last_log_index.saturating_sub(l));
        if matched.is_some_and(|m| m >= target) {
            if show {
                eprintln!("\rnode {id} caught up (index {target})                 ");
            }
            break;
        }
        if Instant::now() >= deadline {
            return Err(CtlError::failed(format!(
                "node {id} at {addr} did not catch up within {wait_timeout:?} (it has {} of {target} \
                 entries); it stays a learner. Check that it runs and reaches the leader (its log), \
                 then `pgwctl member promote {id}`",
                opt(matched)
            )));
        }
        if show {
            eprint!(
                "\rwaiting for node {id} to catch up: {} of {target} entries",
                opt(matched)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    promote(client, out, id, force, u64::MAX, "add").await
}

async fn member_promote(
    client: &Client,
    out: Format,
    id: u64,
    force: bool,
    max_lag: u64,
) -> Result<()> {
    promote(client, out, id, force, max_lag, "promote").await
}

/// Promotes learner `id`: it must be a member, reachable and caught up, and the change must
/// keep a quorum (unless `force`).
async fn promote(
    client: &Client,
    out: Format,
    id: u64,
    force: bool,
    max_lag: u64,
    action: &str,
) -> Result<()> {
    let view = ClusterView::gather(client).await?;
    let Some(target) = view.member(id) else {
        return Err(CtlError::failed(format!(
            "node {id} is not a member; add it first: `pgwctl member add {id} HOST:PORT --wait`"
        )));
    };
    let voters = view.voters();
    if target.member.voter {
        let reply = MembershipReply {
            members: view.members.iter().map(|v| v.member.clone()).collect(),
        };
        let msg = format!("node {id} is already a voter; nothing to do");
        report_change(out, action, id, false, &msg, &reply, view.leader);
        return Ok(());
    }
    if !force {
        if let Err(e) = &target.status {
            return Err(CtlError::failed(format!(
                "refusing to promote node {id}: it is not reachable ({e}), and a voter that is \
                 down counts against the quorum. Start it and wait until it has caught up, or pass \
                 --force"
            )));
        }
        match view.lag(id) {
            Some(lag) if lag > max_lag => {
                return Err(CtlError::failed(format!(
                    "refusing to promote node {id}: it is {lag} entries behind the leader (at most \
                     {max_lag} allowed). Wait until it has caught up (`pgwctl member add {id} {} \
                     --wait` waits and promotes), or pass --force",
                    target.member.raft_address
                )));
            }
            Some(_) => {}
            None => {
                return Err(CtlError::failed(format!(
                    "refusing to promote node {id}: the leader does not report its replication \
                     lag (no leader reachable?); check `pgwctl status`, or pass --force"
                )));
            }
        }
        let new = with(&voters, id);
        check_quorum(&voters, &new, &view.reachable()).map_err(|e| {
            CtlError::failed(format!(
                "refusing to promote node {id}: {e}; or pass --force if you accept the risk"
            ))
        })?;
    }
    let req = ChangeMembershipRequest {
        voters: with(&voters, id).into_iter().collect(),
        retain: true,
        remove_nodes: Vec::new(),
        force,
        max_lag,
    };
    let reply = change_membership(client, req).await?;
    let msg = format!(
        "node {id} is now a voter; voters: {}",
        list(&voters_of(&reply.members))
    );
    report_change(out, action, id, true, &msg, &reply, view.leader);
    Ok(())
}

fn voters_of(members: &[Member]) -> BTreeSet<u64> {
    members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

async fn member_remove(client: &Client, out: Format, id: u64, force: bool) -> Result<()> {
    let view = ClusterView::gather(client).await?;
    let Some(target) = view.member(id) else {
        let reply = MembershipReply {
            members: view.members.iter().map(|v| v.member.clone()).collect(),
        };
        let msg = format!("node {id} is not a member; nothing to do");
        report_change(out, "remove", id, false, &msg, &reply, view.leader);
        return Ok(());
    };
    let voters = view.voters();
    let req = if target.member.voter {
        let new = without(&voters, id);
        if new.is_empty() {
            return Err(CtlError::failed(format!(
                "refusing to remove node {id}: it is the last voter, and a cluster without voters \
                 can neither elect a leader nor take writes. To retire the cluster, stop the node; \
                 to replace it, add the new node first"
            )));
        }
        if !force {
            check_quorum(&voters, &new, &view.reachable()).map_err(|e| {
                CtlError::failed(format!(
                    "refusing to remove node {id}: {e}; or pass --force if you accept that the \
                     cluster may stop taking writes"
                ))
            })?;
        }
        ChangeMembershipRequest {
            voters: new.into_iter().collect(),
            retain: false,
            remove_nodes: vec![id],
            force,
            max_lag: 0,
        }
    } else {
        ChangeMembershipRequest {
            voters: voters.iter().copied().collect(),
            retain: false,
            remove_nodes: vec![id],
            force,
            max_lag: 0,
        }
    };
    let reply = change_membership(client, req).await?;
    let mut leader = view.leader;
    let mut msg = format!(
        "removed node {id}; voters: {}. Stop the pgw process of node {id} now; its \
         --storage.path may be deleted",
        list(&voters_of(&reply.members))
    );
    if view.leader == Some(id) {
        // The removed leader stepped down: wait for the remaining members to elect another.
        let remaining: Vec<String> = reply
            .members
            .iter()
            .filter(|m| m.id != id)
            .map(|m| m.raft_address.clone())
            .collect();
        let others = Client::new(remaining, client.timeout).with_tls(client.tls());
        match leader_status(&others).await {
            Ok(s) => {
                leader = Some(s.node_id);
                msg.push_str(&format!("; node {} now leads", s.node_id));
            }
            Err(e) => msg.push_str(&format!("; no new leader yet ({e})")),
        }
    }
    report_change(out, "remove", id, true, &msg, &reply, leader);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// leader, snapshot

async fn leader(client: &Client, out: Format) -> Result<()> {
    let s = leader_status(client).await?;
    let me = s.members.iter().find(|m| m.id == s.node_id);
    let grpc = me.map(|m| m.raft_address.clone()).unwrap_or_default();
    match out {
        Format::Json => print_json(&serde_json::json!({
            "leader_id": s.node_id,
            "grpc_address": grpc,
            "http_address": s.http_address,
            "term": s.term,
        })),
        Format::Table => println!(
            "node {} leads (term {}), gRPC {grpc}, HTTP {}",
            s.node_id,
            s.term,
            if s.http_address.is_empty() {
                "-"
            } else {
                &s.http_address
            }
        ),
    }
    Ok(())
}

async fn snapshot(client: &Client, out: Format, node: Option<u64>) -> Result<()> {
    let (seed_addr, seed) = client.first_status().await?;
    let (id, addr) = match node {
        None => (seed.node_id, seed_addr),
        Some(id) => match seed.members.iter().find(|m| m.id == id) {
            Some(m) => (id, m.raft_address.clone()),
            None => {
                return Err(CtlError::failed(format!(
                    "node {id} is not a member (members: {}); see `pgwctl member list`",
                    list(&seed.members.iter().map(|m| m.id).collect())
                )));
            }
        },
    };
    let mut c = client.admin(&addr).await.map_err(|e| {
        CtlError::failed(format!(
            "cannot reach node {id}: {e}; check `pgwctl status`"
        ))
    })?;
    let wait = client.timeout.max(Duration::from_secs(60));
    let reply = match tokio::time::timeout(wait, c.trigger_snapshot(TriggerSnapshotRequest {}))
        .await
    {
        Err(_) => {
            return Err(CtlError::failed(format!(
                "node {id} at {addr} did not finish the snapshot within {wait:?}; it may still be \
                 building it (see its log)"
            )));
        }
        Ok(Err(s)) => {
            return Err(CtlError::failed(format!(
                "snapshot on node {id} at {addr} failed: {}",
                describe(&s)
            )));
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    match out {
        Format::Json => print_json(&serde_json::json!({
            "node_id": id,
            "snapshot_index": reply.snapshot_index,
        })),
        Format::Table => println!(
            "node {id} built a snapshot at log index {}",
            reply.snapshot_index
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// backup, restore

/// Opens the backup stream: from the leader, or with `local` from the first endpoint that
/// answers.
async fn open_backup(
    client: &Client,
    local: bool,
) -> Result<tonic::Streaming<pgw_proto::v1::BackupChunk>> {
    if !local {
        return client
            .on_leader("backup", Retry::Idempotent, |mut c| async move {
                c.backup(BackupRequest { local: false }).await
            })
            .await;
    }
    let (addr, _) = client.first_status().await?;
    let mut c = client
        .admin(&addr)
        .await
        .map_err(|e| CtlError::unreachable(format!("cannot reach {addr}: {e}")))?;
    match tokio::time::timeout(client.timeout, c.backup(BackupRequest { local: true })).await {
        Err(_) => Err(CtlError::failed(format!(
            "the node at {addr} did not start the backup within {:?}; retry",
            client.timeout
        ))),
        Ok(Err(s)) => Err(CtlError::failed(format!(
            "backup on the node at {addr} failed: {}",
            describe(&s)
        ))),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

async fn backup(
    client: &Client,
    out: Format,
    file: &Path,
    progress: bool,
    local: bool,
) -> Result<()> {
    let mut stream = open_backup(client, local).await?;
    let idle = client.timeout.max(Duration::from_secs(30));
    let next = |m: Option<
        std::result::Result<Option<pgw_proto::v1::BackupChunk>, tonic::Status>,
    >|
     -> Result<Option<pgw_proto::v1::BackupChunk>> {
        match m {
            None => Err(CtlError::failed(format!(
                "the backup stream stalled for {idle:?}; retry the backup"
            ))),
            Some(Err(s)) => Err(CtlError::failed(format!(
                "the backup stream failed: {}; retry the backup",
                describe(&s)
            ))),
            Some(Ok(c)) => Ok(c),
        }
    };
    let first =
        next(tokio::time::timeout(idle, stream.message()).await.ok())?.ok_or_else(|| {
            CtlError::failed("the leader sent an empty backup stream; retry the backup")
        })?;
    let created_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let header = Header {
        applied_index: first.applied_index,
        term: first.term,
        node_id: first.leader_id,
        created_ms,
        groups: first.groups,
        data_len: first.total_size,
    };
    let expected_crc = first.data_crc32;
    let file_err = |e: String| CtlError::failed(format!("writing the backup: {e}"));
    let mut writer = AtomicWriter::create(file, &header).map_err(file_err)?;
    let mut crc = crc32fast::Hasher::new();
    let mut received = 0u64;
    let mut bar = Progress::new("backup", header.data_len, progress && out == Format::Table);
    let mut chunk = Some(first);
    while let Some(c) = chunk.take() {
        crc.update(&c.data);
        writer.write(&c.data).map_err(file_err)?;
        received += c.data.len() as u64;
        bar.update(received);
        if received > header.data_len {
            break;
        }
        chunk = next(tokio::time::timeout(idle, stream.message()).await.ok())?;
    }
    bar.finish();
    if received != header.data_len {
        return Err(CtlError::failed(format!(
            "the backup stream carried {received} bytes, the leader announced {}; retry the backup",
            header.data_len
        )));
    }
    if crc.finalize() != expected_crc {
        return Err(CtlError::failed(
            "the backup data does not match the leader's CRC-32; retry the backup",
        ));
    }
    writer.finish().map_err(file_err)?;
    let size = (backup_file::HEADER_LEN as u64) + header.data_len + 4;
    match out {
        Format::Json => print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "bytes": size,
            "applied_index": header.applied_index,
            "term": header.term,
            "node_id": header.node_id,
            "local": local,
            "groups": header.groups,
            "created": crate::output::rfc3339(created_ms as f64 / 1000.0),
        })),
        Format::Table => println!(
            "wrote {} ({}): {} groups, every write up to log index {}, taken on {} {} (term {})",
            file.display(),
            crate::output::bytes(size),
            header.groups,
            header.applied_index,
            if local {
                "node (local, not confirmed by a quorum)"
            } else {
                "leader"
            },
            header.node_id,
            header.term
        ),
    }
    Ok(())
}

async fn restore(client: &Client, out: Format, file: &Path, force: bool) -> Result<()> {
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", file.display())))?;
    let b = backup_file::decode(&bytes)
        .map_err(|e| CtlError::failed(format!("{} cannot be restored: {e}", file.display())))?;
    drop(bytes);
    let data = bytes::Bytes::from(b.data);
    let crc = crc32fast::hash(&data);
    let mut chunks = Vec::with_capacity(data.len() / (1 << 20) + 1);
    let mut off = 0;
    loop {
        let end = (off + (1 << 20)).min(data.len());
        chunks.push(RestoreChunk {
            data: data.slice(off..end),
            ..Default::default()
        });
        off = end;
        if off >= data.len() {
            break;
        }
    }
    chunks[0].total_size = data.len() as u64;
    chunks[0].data_crc32 = crc;
    chunks[0].force = force;
    // A large store takes a while to decode and commit.
    let rpc_timeout =
        client.timeout.max(Duration::from_secs(60)) + Duration::from_secs(data.len() as u64 >> 20);
    let reply = client
        .on_leader_within("restore", Retry::Once, rpc_timeout, &mut |mut c| {
            let chunks = chunks.clone();
            async move { c.restore(futures::stream::iter(chunks)).await }
        })
        .await?;
    match out {
        Format::Json => print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "log_index": reply.log_index,
            "groups": reply.groups,
            "series": reply.series,
            "backup_applied_index": b.header.applied_index,
        })),
        Format::Table => println!(
            "restored {} groups ({} series) from {} (taken at log index {}) as log entry {}; add \
             the other nodes with `pgwctl member add ID ADDR --wait`",
            reply.groups,
            reply.series,
            file.display(),
            b.header.applied_index,
            reply.log_index
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// HTTP commands

/// The HTTP base URL: `--http`, else the address the first answering endpoint reports.
async fn http_base(client: &Client, http: Option<String>, https: bool) -> Result<String> {
    if let Some(h) = http {
        return Ok(http::base_url(&h, https));
    }
    let (addr, s) = client.first_status().await?;
    if s.http_address.is_empty() || s.http_address.starts_with(':') {
        return Err(CtlError::usage(format!(
            "node {} at {addr} does not know a reachable HTTP address (it listens on a wildcard \
             address); pass --http HOST:PORT",
            s.node_id
        )));
    }
    Ok(http::base_url(&s.http_address, https))
}

fn parse_labels(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(CtlError::usage(format!(
                "{a:?} is not LABEL=VALUE (e.g. job=backup instance=db1)"
            )));
        };
        if out.iter().any(|(n, _)| n == k) {
            return Err(CtlError::usage(format!("label {k} is given twice")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn show_labels(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort_by_key(|(k, _)| (k != "job", k.clone()));
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_groups(out: Format, rows: &[http::GroupRow]) {
    match out {
        Format::Json => print_json(&serde_json::json!({ "groups": rows })),
        Format::Table => {
            let lines: Vec<Vec<String>> = rows
                .iter()
                .map(|g| {
                    let pairs: Vec<(String, String)> = g
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    vec![
                        show_labels(&pairs),
                        g.last_push.clone().unwrap_or_else(|| "never".into()),
                        g.last_failure.clone().unwrap_or_else(|| "-".into()),
                        if g.last_push_successful {
                            "ok".into()
                        } else {
                            "FAILED".into()
                        },
                        g.families.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["GROUP", "LAST PUSH", "LAST FAILURE", "STATUS", "FAMILIES"],
                    &lines
                )
            );
            println!("{} groups", rows.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let p = parse_labels(&["instance=a".into(), "job=j".into()]).unwrap();
        assert_eq!(show_labels(&p), "job=\"j\", instance=\"a\"");
        assert_eq!(parse_labels(&["x".into()]).unwrap_err().exit.code(), 2);
        assert_eq!(
            parse_labels(&["a=1".into(), "a=2".into()])
                .unwrap_err()
                .exit
                .code(),
            2
        );
    }
}
