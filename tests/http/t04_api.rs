//! `/api/v1` (spec §9): JSON bodies, CORS and cache headers, OPTIONS, routing.

use crate::harness::Server;
use crate::support::Response;

fn assert_cors(r: &Response) {
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Accept, Authorization, Content-Type, Origin")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, DELETE, OPTIONS")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-expose-headers"), Some("Date"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
}

/// `GET /api/v1/status`: envelope, build information, every flag under its upstream name,
/// start time in RFC 3339.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status() {
    let s = Server::start(&["--web.enable-admin-api"]).await;
    let r = s.get("/api/v1/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_cors(&r);
    let text = r.text();
    assert!(
        text.starts_with("{\"status\":\"success\",\"data\":{"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let data = &v["data"];
    for k in [
        "branch",
        "buildDate",
        "buildUser",
        "goVersion",
        "revision",
        "version",
    ] {
        assert!(
            data["build_information"][k].is_string(),
            "build_information.{k}: {text}"
        );
    }
    let flags = &data["flags"];
    for k in [
        "log.format",
        "log.level",
        "persistence.file",
        "persistence.interval",
        "push.disable-consistency-check",
        "push.enable-utf8-names",
        "web.config.file",
        "web.enable-admin-api",
        "web.enable-lifecycle",
        "web.external-url",
        "web.listen-address",
        "web.local-assets",
        "web.route-prefix",
        "web.systemd-socket",
        "web.telemetry-path",
        "storage.path",
        "web.self-metrics-path",
        "push.max-body-bytes",
        "cluster.write-timeout",
        "raft.snapshot-every",
    ] {
        assert!(flags[k].is_string(), "flag {k} missing: {text}");
    }
    assert_eq!(flags["web.enable-admin-api"], "true");
    assert_eq!(flags["web.enable-lifecycle"], "false");
    assert_eq!(flags["web.telemetry-path"], "/metrics");
    assert_eq!(flags["log.level"], "info");
    assert_eq!(flags["persistence.file"], "");
    assert_eq!(flags["cluster.write-timeout"], "10s");
    let start = data["start_time"].as_str().expect("start_time");
    assert!(start.ends_with('Z') && start.contains('T'), "{start}");
    s.stop().await;
}

/// `GET /api/v1/metrics`: one object per group with labels, `last_push_successful` and the
/// families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics() {
    let s = Server::start(&[]).await;
    let r = s.get("/api/v1/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"status\":\"success\",\"data\":[]}");
    assert_cors(&r);
    assert_eq!(
        s.put(
            "/metrics/job/j/instance/i",
            "# HELP m help\n# TYPE m gauge\nm 1.5\n"
        )
        .await
        .status,
        200
    );
    let r = s.get("/api/v1/metrics").await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["status"], "success");
    let groups = v["data"].as_array().expect("array");
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g["labels"]["job"], "j");
    assert_eq!(g["labels"]["instance"], "i");
    assert_eq!(g["last_push_successful"], true);
    assert_eq!(g["m"]["type"], "GAUGE");
    assert_eq!(g["m"]["help"], "help");
    assert_eq!(g["m"]["metrics"][0]["value"], "1.5");
    assert!(g["push_time_seconds"]["time_stamp"].is_string());
    s.stop().await;
}

/// `OPTIONS` on any `/api/v1` path is 200 and empty with the CORS headers; the API is
/// reached as `/api/v1/`; wrong methods are 405; unknown paths 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_routing() {
    let s = Server::start(&[]).await;
    let r = s.req("OPTIONS", "/api/v1/anything/at/all", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_cors(&r);
    let r = s.get("/api/v1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/api/v1/"));
    let r = s.post("/api/v1/status", "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    let r = s.get("/api/v1/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 page not found\n");
    s.stop().await;
}

/// The request decoder wraps every route but `/api/v1`: a gzip header with an empty body
/// is 400 `EOF` elsewhere, while the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_is_not_decoded() {
    let s = Server::start(&[]).await;
    let gz = [("Content-Encoding", "gzip")];
    assert_eq!(s.req("GET", "/api/v1/status", &gz, b"").await.status, 200);
    let r = s.req("GET", "/-/healthy", &gz, b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "EOF\n");
    s.stop().await;
}
