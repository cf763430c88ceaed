//! Health, readiness, `/-/quit`, the admin wipe and graceful shutdown.

use crate::harness::Server;

/// `/-/healthy` and `/-/ready` answer 200 `OK` as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_and_ready() {
    let s = Server::start(&[]).await;
    for p in ["/-/healthy", "/-/ready"] {
        let r = s.get(p).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "OK");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    assert_eq!(s.put("/-/healthy", "").await.status, 405);
    s.stop().await;
}

/// Without `--web.enable-lifecycle`, `/-/quit` is 403; GET is 405 with upstream's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_disabled() {
    let s = Server::start(&[]).await;
    for m in ["PUT", "POST"] {
        let r = s.req(m, "/-/quit", &[], b"").await;
        assert_eq!(r.status, 403);
        assert_eq!(r.text(), "Lifecycle API is not enabled.");
    }
    let r = s.get("/-/quit").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.text(), "Only POST or PUT requests allowed.");
    assert_eq!(s.delete("/-/quit").await.status, 405);
    s.stop().await;
}

/// With `--web.enable-lifecycle`, `POST /-/quit` answers 200 and the node stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_enabled() {
    let s = Server::start(&["--web.enable-lifecycle"]).await;
    assert_eq!(s.put("/metrics/job/j", "m 1\n").await.status, 200);
    let r = s.post("/-/quit", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Requesting termination... Goodbye!");
    assert_eq!(s.wait_exit().await, Ok(()));
}

/// The wipe is 404 without `--web.enable-admin-api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_disabled() {
    let s = Server::start(&[]).await;
    let r = s.put("/api/v1/admin/wipe", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 page not found\n");
    s.stop().await;
}

/// With `--web.enable-admin-api`, `PUT /api/v1/admin/wipe` removes every group (202) and
/// other methods are 405 with `Allow: OPTIONS, PUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_enabled() {
    let s = Server::start(&["--web.enable-admin-api"]).await;
    assert_eq!(s.put("/metrics/job/a", "m 1\n").await.status, 200);
    assert_eq!(s.put("/metrics/job/b/x/y", "m 2\n").await.status, 200);
    let r = s.put("/api/v1/admin/wipe", "").await;
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    assert_eq!(r.header("access-control-allow-origin"), None);
    let text = s.metrics_text().await;
    assert!(!text.contains("push_time_seconds"), "{text}");
    for m in ["GET", "POST", "DELETE"] {
        let r = s.req(m, "/api/v1/admin/wipe", &[], b"").await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("OPTIONS, PUT"), "{m}");
    }
    s.stop().await;
}
