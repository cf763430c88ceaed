//! pgw behind a load balancer: the drain on shutdown that lets a balancer take a node out of
//! rotation before it stops.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::{Kind, Proc, get, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn signal(p: &Proc, sig: libc::c_int) {
    let pid = p.pid().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// SIGTERM first makes `/-/ready` answer 503 while the node keeps serving (pushes included)
/// for `--web.shutdown-drain`, then the node stops gracefully (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_before_stopping() {
    let root = tempfile::TempDir::new().unwrap();
    let mut n = Proc::start_server(
        Kind::Pgw,
        "drain",
        &root.path().join("d"),
        root.path(),
        &["--web.shutdown-drain=3s"],
    )
    .await;
    let addr = n.addr;
    let sent = Instant::now();
    signal(&n, libc::SIGTERM);
    let r = wait_for("/-/ready turns 503 on SIGTERM", TIMEOUT, || async move {
        match get(addr, "/-/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 503 => Ok(r),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        }
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert!(r.text().contains("[-]shutdown"), "{}", r.text());
    // Still serving while draining.
    assert_eq!(
        support::put(addr, "/metrics/job/draining", "m 1\n").await,
        Ok(200)
    );
    let body = get(addr, "/metrics", TIMEOUT).await.unwrap().text();
    assert!(body.contains("job=\"draining\""));
    assert!(n.is_running(), "stopped before the drain ended");
    let status = wait_for("the node exits after the drain", TIMEOUT, || {
        let exited = n.is_running();
        async move {
            if exited {
                Err("running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    let _ = status;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "stopped {took:?} after SIGTERM, before the 3 s drain ended"
    );
    let log = std::fs::read_to_string(&n.log_path).unwrap();
    assert!(log.contains("draining"), "{log}");
}

/// A second SIGTERM during the drain stops the node at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let root = tempfile::TempDir::new().unwrap();
    let mut n = Proc::start_server(
        Kind::Pgw,
        "drain2",
        &root.path().join("d"),
        root.path(),
        &["--web.shutdown-drain=60s"],
    )
    .await;
    let addr = n.addr;
    signal(&n, libc::SIGTERM);
    wait_for("/-/ready turns 503 on SIGTERM", TIMEOUT, || async move {
        match get(addr, "/-/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 503 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        }
    })
    .await;
    let second = Instant::now();
    signal(&n, libc::SIGTERM);
    wait_for(
        "the node exits on the second SIGTERM",
        Duration::from_secs(5),
        || {
            let running = n.is_running();
            async move {
                if running {
                    Err("running".to_string())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert!(second.elapsed() < Duration::from_secs(5));
}
