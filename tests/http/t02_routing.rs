//! Router-level behaviour (spec §2): path cleaning, trailing-slash redirects, 404, 405,
//! automatic OPTIONS, HEAD, the route prefix.

use crate::harness::{Server, assert_http_error};

/// `//`, `/./` and `/../` are answered 301 to the cleaned path for every method, with the
/// query kept, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_cleaning_redirects() {
    let s = Server::start(&[]).await;
    let r = s.put("/metrics/job/j/a//b/c", "m 1\n").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/metrics/job/j/a/b/c"));
    let r = s.get("/./metrics").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/metrics"));
    let r = s.get("/x/../metrics?a=b").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/metrics?a=b"));
    // `%2F%2F` decodes to `//` before cleaning.
    let r = s.delete("/metrics/job/j%2F%2Fk").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/metrics/job/j/k"));
    assert!(!s.metrics_text().await.contains("push_time_seconds"));
    s.stop().await;
}

/// httprouter's trailing-slash redirects: 301 for GET, 307 otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_slash_redirects() {
    let s = Server::start(&[]).await;
    let r = s.put("/metrics/job/", "m 1\n").await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/metrics/job"));
    let r = s.get("/metrics/").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/metrics"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = s.put("/metrics/job", "m 1\n").await;
    assert_http_error(&r, 404, "404 page not found");
    // A trailing slash after the job is fine: no extra labels.
    assert_eq!(s.put("/metrics/job/j/", "m 1\n").await.status, 200);
    s.stop().await;
}

/// Unknown paths are 404, wrong methods 405 with `Allow`, HEAD is not supported, OPTIONS
/// on the push paths lists their methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_methods() {
    let s = Server::start(&[]).await;
    assert_http_error(&s.get("/nope").await, 404, "404 page not found");
    assert_http_error(&s.get("/-/reload").await, 404, "404 page not found");
    assert_http_error(
        &s.put("/metrics/nojob", "").await,
        404,
        "404 page not found",
    );

    let r = s.put("/metrics", "m 1\n").await;
    assert_http_error(&r, 405, "Method Not Allowed");
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    let r = s.req("HEAD", "/metrics", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    let r = s.get("/metrics/job/x").await;
    assert_http_error(&r, 405, "Method Not Allowed");
    assert_eq!(r.header("allow"), Some("DELETE, OPTIONS, POST, PUT"));

    let r = s.req("OPTIONS", "/metrics/job/x/a/b", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("allow"), Some("DELETE, OPTIONS, POST, PUT"));
    let r = s.req("OPTIONS", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    assert_eq!(s.req("OPTIONS", "/nope", &[], b"").await.status, 404);
    s.stop().await;
}

/// A malformed percent-escape is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_escape() {
    let s = Server::start(&[]).await;
    let r = s.put("/metrics/job/%zz", "m 1\n").await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

/// With a route prefix every route moves under it (telemetry path joined with it), the
/// un-prefixed paths are 404, except `GET /-/quit` (upstream quirk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_prefix() {
    let s = Server::start(&["--web.route-prefix=/pfx/", "--web.telemetry-path=/tele"]).await;
    assert_eq!(s.prefix, "/pfx");
    assert_eq!(s.put("/pfx/metrics/job/j", "m 1\n").await.status, 200);
    let r = s.get("/pfx/tele").await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("m{instance=\"\",job=\"j\"} 1\n"),
        "{}",
        r.text()
    );
    assert_eq!(s.get("/pfx/-/healthy").await.status, 200);
    assert_eq!(s.get("/pfx/api/v1/status").await.status, 200);
    assert_eq!(s.get("/pfx/").await.status, 200);
    let r = s.get("/pfx").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/pfx/"));
    assert_eq!(s.get("/metrics").await.status, 404);
    assert_eq!(s.get("/tele").await.status, 404);
    assert_eq!(s.get("/-/healthy").await.status, 404);
    assert_eq!(s.put("/metrics/job/j", "m 1\n").await.status, 404);
    assert_eq!(s.get("/api/v1/status").await.status, 404);
    assert_eq!(s.get("/-/quit").await.status, 405);
    // The push API stays at `<prefix>/metrics/job` whatever the telemetry path.
    assert_eq!(s.get("/pfx/metrics").await.status, 404);
    s.stop().await;
}

/// Without a route prefix the path of `--web.external-url` is the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_url_prefix() {
    let s = Server::start(&["--web.external-url=http://gateway.example:9091/ext/"]).await;
    assert_eq!(s.prefix, "/ext");
    assert_eq!(s.get("/ext/-/healthy").await.status, 200);
    assert_eq!(s.get("/-/healthy").await.status, 404);
    s.stop().await;
}
