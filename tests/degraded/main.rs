//! Degraded and damaged nodes tell the truth (issue "degraded and damaged"): real `pgw`
//! processes on loopback.
//!
//! - A leader whose followers are killed is not ready within 3 s and answers pushes 503 with
//!   `Retry-After` within 2 s; when the followers return, it recovers without a restart.
//! - SIGHUP under a push load loses nothing and the node keeps serving.
//! - A second process on the same `--storage.path` exits with a clear message.
//! - A corruption matrix over every file a stopped single node keeps: each damaged start either
//!   refuses (non-zero exit, a "storage damaged" message naming the file, no panic) or starts
//!   with every acknowledged series.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Kind, Proc, get, request, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn metric_value(addr: SocketAddr, path: &str, name: &str) -> Option<f64> {
    let r = get(addr, path, Duration::from_secs(5)).await.ok()?;
    r.text()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn is_leader(addr: SocketAddr) -> bool {
    metric_value(addr, "/self-metrics", "pgw_raft_is_leader").await == Some(1.0)
}

/// Kills both followers of a 3-node cluster: the survivor (the leader) turns unready within
/// 3 s with the quorum check failing, answers pushes 503 with `Retry-After` within 2 s, and
/// exposes the quorum loss; restarting the followers brings everything back without touching
/// the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_quorum_is_unready_and_fails_fast() {
    let mut c = support::start_cluster(3, &["--web.self-metrics-path=/self-metrics"]).await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr).collect();
    let leader = wait_for("a leader is elected", TIMEOUT, || {
        let addrs = addrs.clone();
        async move {
            for (i, a) in addrs.iter().enumerate() {
                if is_leader(*a).await {
                    return Ok(i);
                }
            }
            Err("no node reports pgw_raft_is_leader 1".to_string())
        }
    })
    .await;
    let la = addrs[leader];
    assert_eq!(
        support::put(la, "/metrics/job/before", "m 1\n").await,
        Ok(200)
    );
    let r = get(la, "/-/ready?verbose", TIMEOUT).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("[+]quorum ok"), "{}", r.text());

    let killed_at = Instant::now();
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != leader {
            n.kill9();
        }
    }
    let r = wait_for(
        "the survivor's /-/ready turns 503",
        TIMEOUT,
        || async move {
            match get(la, "/-/ready", Duration::from_secs(2)).await {
                Ok(r) if r.status == 503 => Ok(r),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "ready turned 503 only after {took:?}"
    );
    assert!(
        r.text().contains("[-]quorum failed: last quorum contact"),
        "{}",
        r.text()
    );

    let started = Instant::now();
    let r = request(la, "PUT", "/metrics/job/during", &[], b"m 2\n", TIMEOUT)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("quorum"), "{}", r.text());
    assert!(took < Duration::from_secs(2), "the push took {took:?}");
    assert_eq!(
        metric_value(la, "/self-metrics", "pgw_raft_quorum_lost").await,
        Some(1.0)
    );
    assert!(
        metric_value(la, "/self-metrics", "pgw_raft_quorum_contact_age_seconds")
            .await
            .is_some_and(|age| age >= 1.0)
    );
    // Still alive and healthy: losing the quorum is not a reason to exit.
    assert_eq!(get(la, "/-/healthy", TIMEOUT).await.unwrap().status, 200);

    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != leader {
            n.restart().await;
        }
    }
    wait_for("the survivor is ready again", TIMEOUT, || async move {
        match get(la, "/-/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {}: {}", r.status, r.text())),
            Err(e) => Err(e),
        }
    })
    .await;
    wait_for(
        "a push through the old survivor succeeds",
        TIMEOUT,
        || async move {
            match support::put(la, "/metrics/job/after", "m 3\n").await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        metric_value(la, "/self-metrics", "pgw_raft_quorum_lost").await,
        Some(0.0)
    );
}

/// SIGHUP (what `systemctl reload` sends) under a push load: every push is acknowledged, the
/// node keeps serving and logs the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_loses_nothing() {
    let root = tempfile::TempDir::new().unwrap();
    let mut n =
        Proc::start_server(Kind::Pgw, "hup", &root.path().join("d"), root.path(), &[]).await;
    for i in 0..200 {
        if i % 20 == 0 {
            n.signal(libc::SIGHUP);
        }
        let r = support::put(n.addr, &format!("/metrics/job/hup/instance/{i}"), "m 1\n").await;
        assert_eq!(r, Ok(200), "push {i}");
    }
    assert!(n.is_running(), "pgw exited on SIGHUP");
    let body = get(n.addr, "/metrics", TIMEOUT).await.unwrap().text();
    for i in 0..200 {
        assert!(
            body.contains(&format!("instance=\"{i}\"")),
            "push {i} missing"
        );
    }
    let log = std::fs::read_to_string(&n.log_path).unwrap();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert_eq!(
        metric_value(n.addr, "/metrics", "pgw_config_last_reload_successful").await,
        Some(1.0)
    );
    // SIGTERM is still graceful.
    let status = n.term(TIMEOUT).expect("exits by itself on SIGTERM");
    assert!(status.success(), "{status}");
}

/// The output of a `pgw` run to completion (a start that must fail).
fn run_pgw(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(support::pgw_binary())
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            support::free_port()
        ))
        .arg(format!("--storage.path={}", dir.display()))
        .args(extra)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run pgw")
}

/// A second process on a directory in use exits with a message that says so, without Rust
/// error internals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_directory_is_refused() {
    let root = tempfile::TempDir::new().unwrap();
    let dir = root.path().join("d");
    let n = Proc::start_server(Kind::Pgw, "first", &dir, root.path(), &[]).await;
    let out = tokio::task::spawn_blocking(move || run_pgw(&dir, &[]))
        .await
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(err.contains("is in use by another pgw process"), "{err}");
    for internal in ["Os {", "WouldBlock", "panicked", "code: 11"] {
        assert!(!err.contains(internal), "{internal:?} in: {err}");
    }
    assert_eq!(
        get(n.addr, "/-/healthy", TIMEOUT).await.unwrap().status,
        200
    );
}

const GROUPS: usize = 10;
const SERIES_PER_GROUP: usize = 1000;

fn body(group: usize) -> String {
    (0..SERIES_PER_GROUP)
        .map(|s| {
            format!(
                "series_total{{s=\"{s}\"}} {}\n",
                group * SERIES_PER_GROUP + s
            )
        })
        .collect()
}

async fn push_groups(addr: SocketAddr, groups: std::ops::Range<usize>) {
    for g in groups {
        let r = support::put(addr, &format!("/metrics/job/damage/g/{g}"), &body(g)).await;
        assert_eq!(r, Ok(200), "group {g}");
    }
}

fn count_series(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("series_total{"))
        .count()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Truncate(u32),
    Overwrite4k,
    Delete,
    OlderCopy,
}

fn apply(damage: Damage, file: &Path, older: Option<&Path>) -> bool {
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    match damage {
        Damage::Truncate(pct) => {
            let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            f.set_len(len * u64::from(pct) / 100).unwrap();
        }
        Damage::Overwrite4k => {
            use std::os::unix::fs::FileExt;
            if len == 0 {
                return false;
            }
            let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            let at = (len / 2).saturating_sub(2048);
            let n = 4096.min(len - at) as usize;
            // A pattern sled's checksums cannot mistake for data.
            f.write_all_at(&vec![0x5A; n], at).unwrap();
        }
        Damage::Delete => std::fs::remove_file(file).unwrap(),
        Damage::OlderCopy => match older {
            Some(o) if o.exists() => {
                std::fs::copy(o, file).unwrap();
            }
            _ => return false,
        },
    }
    true
}

/// What a start on a damaged directory did.
enum Outcome {
    Refused(String),
    Started(usize),
}

async fn start_damaged(dir: &Path, log_dir: &Path, name: &str) -> Outcome {
    match Proc::try_start_server(Kind::Pgw, name, dir, log_dir, &[]).await {
        Err(f) => {
            assert!(
                f.status.code().is_some_and(|c| c != 0),
                "{name}: exited with {} (a signal is a crash): {}",
                f.status,
                f.log
            );
            Outcome::Refused(f.log)
        }
        Ok(mut p) => {
            let text = get(p.addr, "/metrics", TIMEOUT).await.unwrap().text();
            p.kill9();
            Outcome::Started(count_series(&text))
        }
    }
}

/// Every file a stopped single node keeps (sled's `db` and `conf`, `snapshot.bin`,
/// `durable.mark`), each truncated to 50% and 90%, with 4 KiB overwritten in its middle,
/// deleted, and replaced by an older copy: pgw either refuses to start (non-zero exit, a
/// message naming the damage and the runbook, no panic) or starts with all 10,000 series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_storage_is_refused_or_complete() {
    let root = tempfile::TempDir::new().unwrap();
    let pristine = root.path().join("pristine");
    let older = root.path().join("older");
    // A snapshot every 4 entries, so that snapshot.bin exists and the log was purged.
    let args = ["--raft.snapshot-every=4"];
    let mut n = Proc::start_server(Kind::Pgw, "seed", &pristine, root.path(), &args).await;
    push_groups(n.addr, 0..GROUPS / 2).await;
    n.term(TIMEOUT).expect("stops on SIGTERM");
    copy_dir(&pristine, &older);
    n.restart().await;
    push_groups(n.addr, GROUPS / 2..GROUPS).await;
    let text = get(n.addr, "/metrics", TIMEOUT).await.unwrap().text();
    assert_eq!(count_series(&text), GROUPS * SERIES_PER_GROUP);
    n.term(TIMEOUT).expect("stops on SIGTERM");
    assert!(pristine.join("snapshot.bin").exists());

    let mut report = Vec::new();
    let mut case = 0;
    for file in files(&pristine) {
        let rel = file.strip_prefix(&pristine).unwrap().to_path_buf();
        for damage in [
            Damage::Truncate(50),
            Damage::Truncate(90),
            Damage::Overwrite4k,
            Damage::Delete,
            Damage::OlderCopy,
        ] {
            case += 1;
            let dir = root.path().join(format!("case{case}"));
            copy_dir(&pristine, &dir);
            if !apply(damage, &dir.join(&rel), Some(&older.join(&rel))) {
                continue;
            }
            let name = format!("case{case}");
            match start_damaged(&dir, root.path(), &name).await {
                Outcome::Refused(log) => {
                    assert!(!log.contains("panicked"), "{rel:?} {damage:?}: {log}");
                    assert!(
                        log.contains("storage damaged") && log.contains("Runbook"),
                        "{rel:?} {damage:?}: refused without the damage message: {log}"
                    );
                    report.push(format!("{} {damage:?}: refused", rel.display()));
                }
                Outcome::Started(series) => {
                    assert_eq!(
                        series,
                        GROUPS * SERIES_PER_GROUP,
                        "{rel:?} {damage:?}: started with less data"
                    );
                    report.push(format!("{} {damage:?}: started complete", rel.display()));
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    eprintln!("corruption matrix:\n{}", report.join("\n"));
    assert!(report.len() >= 12, "too few cases ran: {report:?}");
}

/// A node whose file descriptors run out (a flood of connections against a low limit) while
/// snapshots are being written either keeps taking writes once the flood is released, or says
/// it is unhealthy and exits: never a zombie that answers `/-/healthy` 200 but cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_during_snapshots_leaves_no_zombie() {
    use std::os::unix::process::CommandExt;
    let root = tempfile::TempDir::new().unwrap();
    let port = support::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(root.path().join("fd.log")).unwrap();
    let mut cmd = Command::new(support::pgw_binary());
    cmd.arg(format!("--web.listen-address={addr}"))
        .arg(format!(
            "--storage.path={}",
            root.path().join("d").display()
        ))
        .arg("--raft.snapshot-every=2")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: setrlimit(2) between fork and exec touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 96,
                rlim_max: 96,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    support::wait_ready(addr, Instant::now() + TIMEOUT).await;
    // Hold more connections than the node has descriptors, while pushes trigger snapshots.
    let mut held = Vec::new();
    for _ in 0..150 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    for i in 0..10 {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            support::put(addr, &format!("/metrics/job/fd/i/{i}"), "m 1\n"),
        )
        .await;
    }
    drop(held);
    let verdict = wait_for(
        "the node takes writes again, or exits unhealthy",
        TIMEOUT,
        || {
            let exited = child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return if status.success() {
                        Err(format!("exited with success after fd exhaustion: {status}"))
                    } else {
                        Ok(format!("exited {status}"))
                    };
                }
                let healthy = get(addr, "/-/healthy", Duration::from_secs(2)).await;
                match support::put(addr, "/metrics/job/fd/i/after", "m 2\n").await {
                    Ok(200) => Ok("takes writes".to_string()),
                    other => match healthy {
                        Ok(h) if h.status == 200 => {
                            Err(format!("healthy but the push answered {other:?}"))
                        }
                        h => Ok(format!("unhealthy ({:?})", h.map(|h| h.status))),
                    },
                }
            }
        },
    )
    .await;
    eprintln!("after fd exhaustion: {verdict}");
    let _ = child.kill();
    let _ = child.wait();
}
