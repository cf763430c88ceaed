//! The cluster port trusts nothing it decodes (issue 10, requirements 3, 7, 8): a real `pgw`
//! process and a raw tonic client sending what a compromised or buggy peer could send.
//!
//! - forged `ForwardWrite`s (a batch nested 8,000 deep, an invalid grouping key, a wipe at a
//!   node without `--web.enable-admin-api`, an unchecked push at a node that checks, a
//!   restore, an oversized command) are each refused with a clear gRPC error, counted by
//!   reason, logged with the peer's address; the node stays up and `/metrics` is unchanged;
//! - raw membership RPCs that pgwctl would refuse (promoting an unreachable learner, also
//!   with `--force`) are refused by the server, and writes keep working;
//! - a push with 2,000 grouping labels × 4,000 series completes and other writes complete
//!   after it; one that outlives `--cluster.write-timeout` is answered 503 "not confirmed …
//!   may still be applied" and is applied;
//! - each optional `--push.max-*` limit answers 4xx naming its flag, counted by reason.
//!
//! Needs `cargo build --bin pgw --bin pgwctl` with the same profile first.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use pgw_core::command::{BatchItem, Payload, Push};
use pgw_core::pb::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use pgw_core::{Command, GroupingKey};
use pgw_proto::v1::admin_service_client::AdminServiceClient;
use pgw_proto::v1::raft_service_client::RaftServiceClient;
use pgw_proto::v1::{AddLearnerRequest, ChangeMembershipRequest, ForwardWriteRequest, Member};
use tempfile::TempDir;
use tonic::Code;

use crate::support::{Kind, Proc, free_port, get, put, request, run_serial as run, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of anything queued behind the wide push: its apply stores 8 million label pairs,
/// tens of seconds in a debug build on a loaded machine (the bench measures the real cost).
const WIDE_TIMEOUT: Duration = Duration::from_secs(300);

/// A single node with its cluster port open on loopback, self-metrics on `/self` (so that
/// `/metrics` holds only pushed data), and `extra` flags.
async fn node(dir: &TempDir, name: &str, extra: &[&str]) -> (Proc, u16) {
    let grpc = free_port();
    let mut args = vec![
        format!("--cluster.listen-address=127.0.0.1:{grpc}"),
        "--web.self-metrics-path=/self".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::start_server(Kind::Pgw, name, &dir.path().join(name), dir.path(), &args).await;
    (p, grpc)
}

async fn raft_client(grpc: u16) -> RaftServiceClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the cluster port");
    RaftServiceClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

async fn admin_client(grpc: u16) -> AdminServiceClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the cluster port");
    AdminServiceClient::new(ch)
}

async fn metrics(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics", TIMEOUT).await.expect("GET /metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    r.text()
}

/// The value of the self-metric sample `line_prefix` (e.g. `name{reason="x"}`), 0 if absent.
async fn self_metric(addr: SocketAddr, line_prefix: &str) -> f64 {
    let r = get(addr, "/self", TIMEOUT).await.expect("GET /self");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn gauge(name: &str, v: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: Some("forged".into()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            label: vec![LabelPair {
                name: Some("x".into()),
                value: Some("1".into()),
            }],
            gauge: Some(Gauge { value: Some(v) }),
            ..Default::default()
        }],
        unit: None,
    }
}

fn forged_push(key: GroupingKey, check: bool) -> Command {
    Command::Push(Push::new(key, true, 1, check, &[gauge("forged", 1.0)]))
}

/// Sends `bytes` as a forwarded command; returns the gRPC error (panics on success).
async fn forward_refused(
    client: &mut RaftServiceClient<tonic::transport::Channel>,
    what: &str,
    bytes: Vec<u8>,
) -> tonic::Status {
    match client
        .forward_write(ForwardWriteRequest {
            command: bytes.into(),
            term: 0,
        })
        .await
    {
        Ok(r) => panic!(
            "{what}: a forged forwarded write was taken: {:?}",
            r.into_inner()
        ),
        Err(s) => s,
    }
}

/// Every forged forwarded write is refused with a clear error, nothing changes, the node
/// stays up, and each refusal is counted by reason and logged with the peer's address.
#[test]
fn forged_forwarded_writes_are_refused_and_change_nothing() {
    run(async {
        let dir = TempDir::new().expect("tempdir");
        // A small body limit, so that an oversized command is cheap to build.
        let (p, grpc) = node(&dir, "forged", &["--push.max-body-bytes=1KiB"]).await;
        let status = put(p.addr, "/metrics/job/kept/instance/a", "kept_metric 42\n")
            .await
            .expect("push");
        assert_eq!(status, 200);
        let before = metrics(p.addr).await;
        assert!(
            before.contains("kept_metric{instance=\"a\",job=\"kept\"} 42"),
            "{before}"
        );
        let mut client = raft_client(grpc).await;

        // 1. A batch nested 8,000 deep, built by hand (format byte, then `Batch` of one
        //    `Batch` of one ...): 16 kB that used to overflow the stack.
        let mut nested = vec![pgw_core::command::COMMAND_FORMAT];
        for _ in 0..8000 {
            nested.extend_from_slice(&[4, 1]);
        }
        nested.push(2);
        assert!(nested.len() > 16_000);
        let s = forward_refused(&mut client, "nested batch", nested).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("does not decode"), "{s:?}");

        // 2. An invalid grouping key: no `job`, and a label name the URL grammar refuses.
        let no_job = forged_push(GroupingKey::from_pairs([("instance", "x")]), true);
        let s = forward_refused(&mut client, "key without job", no_job.encode()).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("grouping key is invalid"), "{s:?}");
        let bad_name = forged_push(
            GroupingKey::from_pairs([("job", "kept"), ("bad-name", "x")]),
            true,
        );
        let s = forward_refused(&mut client, "bad label name", bad_name.encode()).await;
        assert!(s.message().contains("improper label name"), "{s:?}");

        // 3. A wipe at a node without --web.enable-admin-api.
        let s = forward_refused(&mut client, "wipe", Command::Wipe.encode()).await;
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("--web.enable-admin-api"), "{s:?}");
        // ... also inside a batch.
        let in_batch = Command::Batch(vec![BatchItem::Wipe]);
        let s = forward_refused(&mut client, "wipe in a batch", in_batch.encode()).await;
        assert!(s.message().contains("command 1 of the batch"), "{s:?}");

        // 4. An unchecked push at a node that checks consistency.
        let unchecked = forged_push(GroupingKey::from_pairs([("job", "kept")]), false);
        let s = forward_refused(&mut client, "unchecked push", unchecked.encode()).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("consistency"), "{s:?}");

        // 5. A forged restore (an admin act) replacing the store with an empty one.
        let replace = Command::Replace {
            snapshot: pgw_core::GroupStore::new().encode_snapshot(),
        };
        let s = forward_refused(&mut client, "restore", replace.encode()).await;
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("restore"), "{s:?}");

        // 6. A payload that does not decode, and one larger than the body limit allows.
        let mut undecodable = Push::new(
            GroupingKey::from_pairs([("job", "kept")]),
            true,
            1,
            true,
            &[],
        );
        undecodable.payload = Payload::Families(vec![9, 1, 2, 3]);
        let s = forward_refused(
            &mut client,
            "undecodable payload",
            Command::Push(undecodable.clone()).encode(),
        )
        .await;
        assert!(s.message().contains("does not decode"), "{s:?}");
        let mut huge = undecodable;
        huge.payload = Payload::Families(vec![0; 16 * 1024]);
        let s = forward_refused(
            &mut client,
            "oversized payload",
            Command::Push(huge).encode(),
        )
        .await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("--push.max-body-bytes"), "{s:?}");
        let s = forward_refused(&mut client, "oversized command", vec![1; 6 << 20]).await;
        assert!(
            matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
            "{s:?}"
        );

        // The node is alive and its data unchanged.
        let r = get(p.addr, "/-/healthy", TIMEOUT).await.expect("healthy");
        assert_eq!(r.status, 200);
        assert_eq!(
            metrics(p.addr).await,
            before,
            "a refused write changed /metrics"
        );
        // A legitimate push still works, through HTTP.
        assert_eq!(
            put(p.addr, "/metrics/job/after", "after_metric 1\n").await,
            Ok(200)
        );
        // Counted by reason, logged with the peer's address.
        let family = "pgw_cluster_refused_forwarded_writes_total";
        for (reason, n) in [
            ("undecodable_payload", 2.0),
            ("invalid_key", 2.0),
            ("admin_api_disabled", 2.0),
            ("unchecked_push", 1.0),
            ("restore_not_forwardable", 1.0),
            ("payload_too_large", 2.0),
        ] {
            let got = self_metric(p.addr, &format!("{family}{{reason=\"{reason}\"}}")).await;
            assert_eq!(got, n, "{family} for {reason}");
        }
        let log = std::fs::read_to_string(&p.log_path).expect("log");
        let line = log
            .lines()
            .find(|l| l.contains("refused a forwarded write") && l.contains("admin_api_disabled"))
            .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    });
}

/// Raw membership RPCs that pgwctl would refuse are refused by the server: promoting a
/// learner that cannot be reached (the `pgwctl member add 99 …` then `promote --force` of
/// issue 10), raw or through pgwctl with `--force`; writes keep working.
#[test]
fn unsafe_membership_changes_are_refused_by_the_server() {
    run(async {
        let dir = TempDir::new().expect("tempdir");
        let (p, grpc) = node(&dir, "members", &[]).await;
        let mut admin = admin_client(grpc).await;
        let nowhere = format!("127.0.0.1:{}", free_port());
        // Adding a learner is harmless: it does not count towards the quorum.
        admin
            .add_learner(AddLearnerRequest {
                member: Some(Member {
                    id: 99,
                    raft_address: nowhere.clone(),
                    http_address: String::new(),
                    voter: false,
                }),
                blocking: false,
                promote: false,
            })
            .await
            .expect("adding a learner");
        // Promoting it, even with force, is refused: it cannot be reached.
        let s = admin
            .change_membership(ChangeMembershipRequest {
                voters: vec![1, 99],
                retain: true,
                remove_nodes: vec![],
                force: true,
                max_lag: 0,
            })
            .await
            .expect_err("promoting an unreachable learner must be refused");
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        assert!(s.message().contains("not reachable"), "{s:?}");
        // The same through add_learner with promote.
        let s = admin
            .add_learner(AddLearnerRequest {
                member: Some(Member {
                    id: 98,
                    raft_address: format!("127.0.0.1:{}", free_port()),
                    http_address: String::new(),
                    voter: false,
                }),
                blocking: false,
                promote: true,
            })
            .await
            .expect_err("add-and-promote of an unreachable node must be refused");
        assert!(s.message().contains("not reachable"), "{s:?}");
        // Removing the last voter is refused.
        let s = admin
            .change_membership(ChangeMembershipRequest {
                voters: vec![],
                retain: false,
                remove_nodes: vec![1],
                force: true,
                max_lag: 0,
            })
            .await
            .expect_err("removing the last voter must be refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        // pgwctl promote --force meets the same refusal.
        let out = pgwctl(&[
            "--endpoint",
            &format!("127.0.0.1:{grpc}"),
            "member",
            "promote",
            "99",
            "--force",
        ])
        .await;
        assert_ne!(out.0, 0, "pgwctl promote --force succeeded: {out:?}");
        assert!(out.2.contains("not reachable"), "{out:?}");
        // Writes were never blocked: the node is ready and takes a push.
        let r = get(p.addr, "/-/ready", TIMEOUT).await.expect("ready");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            tokio::time::timeout(TIMEOUT, put(p.addr, "/metrics/job/still", "still 1\n"))
                .await
                .expect("a push after the refused promotions answers"),
            Ok(200)
        );
        let refused = self_metric(p.addr, "pgw_cluster_refused_admin_requests_total").await;
        assert!(refused >= 3.0, "refused admin requests counted: {refused}");
    });
}

async fn pgwctl(args: &[&str]) -> (i32, String, String) {
    let bin = crate::support::pgw_binary().with_file_name("pgwctl");
    assert!(bin.is_file(), "build pgwctl first: {}", bin.display());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .env_remove("PGWCTL_ENDPOINTS")
            .stdin(Stdio::null())
            .output()
            .expect("run pgwctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("pgwctl task")
}

/// The URL path and body of issue 10's wide push: 2,000 grouping labels, 4,000 series.
fn wide_push() -> (String, String) {
    let mut path = String::from("/metrics/job/wide");
    for i in 0..1999 {
        path.push_str(&format!("/l{i:04}/v{i:04}"));
    }
    let mut body = String::from("# TYPE wide gauge\n");
    for i in 0..4000 {
        body.push_str(&format!("wide{{s=\"{i}\"}} 1\n"));
    }
    (path, body)
}

/// A push of 2,000 grouping labels × 4,000 series completes, and writes sent while it is
/// applied complete after it: progress, not timing (the criterion bench
/// `apply_wide_grouping_key` measures the cost).
#[test]
fn a_wide_push_completes_and_other_writes_proceed() {
    run(async {
        let dir = TempDir::new().expect("tempdir");
        let (p, _) = node(&dir, "wide", &["--cluster.write-timeout=60s"]).await;
        let (path, body) = wide_push();
        let addr = p.addr;
        let wide = tokio::spawn(async move {
            request(addr, "PUT", &path, &[], body.as_bytes(), WIDE_TIMEOUT).await
        });
        // Small writes to other groups while the wide one is under way: each completes.
        let mut small = Vec::new();
        for i in 0..5 {
            let addr = p.addr;
            small.push(tokio::spawn(async move {
                let path = format!("/metrics/job/small{i}");
                request(addr, "PUT", &path, &[], b"small 1\n", WIDE_TIMEOUT)
                    .await
                    .map(|r| r.status)
            }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = wide
            .await
            .expect("task")
            .expect("the wide push is answered");
        assert_eq!(r.status, 200, "wide push: {}", r.text());
        for (i, s) in small.into_iter().enumerate() {
            assert_eq!(s.await.expect("task"), Ok(200), "small push {i}");
        }
        // The wide group is there, with its grouping labels (the JSON API, not a scrape of
        // 8 million label pairs).
        let r = get(p.addr, "/api/v1/metrics", TIMEOUT).await.expect("api");
        assert!(
            r.text().contains("\"l1998\":\"v1998\""),
            "wide group missing"
        );
        // And writes go on afterwards.
        assert_eq!(
            put(p.addr, "/metrics/job/after", "after 1\n").await,
            Ok(200)
        );
    });
}

/// A write that outlives `--cluster.write-timeout` is answered 503 with a message saying it
/// was not confirmed in time and may still be applied; it is applied.
#[test]
fn a_write_not_confirmed_in_time_says_it_may_still_apply() {
    run(async {
        let dir = TempDir::new().expect("tempdir");
        let (p, _) = node(&dir, "slow", &["--cluster.write-timeout=100ms"]).await;
        // The wide push takes far longer than 100 ms to apply.
        let (path, body) = wide_push();
        let r = request(p.addr, "PUT", &path, &[], body.as_bytes(), WIDE_TIMEOUT)
            .await
            .expect("answered");
        assert_eq!(r.status, 503, "{}", r.text());
        let text = r.text();
        assert!(text.contains("not confirmed"), "{text}");
        assert!(text.contains("may still be applied"), "{text}");
        assert!(!text.contains("no Raft leader"), "{text}");
        wait_for(
            "the unconfirmed write to be applied",
            WIDE_TIMEOUT,
            || async {
                let r = get(p.addr, "/api/v1/metrics", TIMEOUT).await?;
                if r.text().contains("\"l1998\":\"v1998\"") {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            },
        )
        .await;
    });
}

/// Each optional limit answers 4xx with a message naming it and its flag, and
/// `pgw_push_rejected_total` counts the rejections by reason.
#[test]
fn each_exceeded_limit_answers_4xx_naming_it() {
    run(async {
        let dir = TempDir::new().expect("tempdir");
        let (p, _) = node(
            &dir,
            "limits",
            &[
                "--push.max-series=2",
                "--push.max-labels-per-series=4",
                "--push.max-label-value-bytes=8",
                "--push.max-groups=2",
            ],
        )
        .await;
        let push = |path: &'static str, body: &'static str| {
            let addr = p.addr;
            async move {
                request(addr, "PUT", path, &[], body.as_bytes(), TIMEOUT)
                    .await
                    .expect("answered")
            }
        };
        let ok = push("/metrics/job/a", "m{x=\"1\"} 1\nm{x=\"2\"} 2\n").await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        for (path, body, status, flag, reason) in [
            (
                "/metrics/job/a",
                "m{x=\"1\"} 1\nm{x=\"2\"} 2\nm{x=\"3\"} 3\n",
                413,
                "--push.max-series",
                "max_series",
            ),
            (
                "/metrics/job/a",
                "m{x=\"1\",y=\"2\",z=\"3\"} 1\n",
                413,
                "--push.max-labels-per-series",
                "max_labels_per_series",
            ),
            (
                "/metrics/job/a",
                "m{x=\"123456789\"} 1\n",
                413,
                "--push.max-label-value-bytes",
                "max_label_value_bytes",
            ),
            (
                "/metrics/job/a-very-long-job-name",
                "m 1\n",
                413,
                "--push.max-label-value-bytes",
                "max_label_value_bytes",
            ),
        ] {
            let r = push(path, body).await;
            assert_eq!(r.status, status, "{flag}: {}", r.text());
            assert!(r.text().contains(flag), "{flag}: {}", r.text());
            let n = self_metric(
                p.addr,
                &format!("pgw_push_rejected_total{{reason=\"{reason}\"}}"),
            )
            .await;
            assert!(n >= 1.0, "{reason} not counted");
        }
        // Groups: a second group fits, a third does not; pushing to an existing one still does.
        assert_eq!(push("/metrics/job/b", "m 1\n").await.status, 200);
        let r = push("/metrics/job/c", "m 1\n").await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("--push.max-groups"), "{}", r.text());
        assert_eq!(
            self_metric(p.addr, "pgw_push_rejected_total{reason=\"max_groups\"}").await,
            1.0
        );
        assert_eq!(push("/metrics/job/a", "m 5\n").await.status, 200);
        // Nothing of the refused pushes was stored.
        let m = metrics(p.addr).await;
        assert!(!m.contains("job=\"c\""), "{m}");
        assert!(!m.contains("x=\"3\""), "{m}");
    });
}
