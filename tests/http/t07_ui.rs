//! The web page: groups, families, delete buttons, and HTML escaping.

use crate::harness::{Server, b64};

/// Label values, HELP and sample labels are escaped: a push cannot inject markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_escapes_everything() {
    let s = Server::start(&["--web.enable-admin-api"]).await;
    let job = "<script>alert(1)</script>";
    let value = "\"><img src=x onerror=alert(2)>";
    let path = format!("/metrics/job@base64/{}/x@base64/{}", b64(job), b64(value));
    let body = "# HELP m <b>bold</b>\n# TYPE m gauge\nm{l=\"<i>it</i>\"} 1\n";
    let r = s.put(&path, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for p in ["/", "/status"] {
        let r = s.get(p).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.header("content-security-policy").is_some());
        let html = r.text();
        for bad in ["<script>alert", "<img src=x", "<b>bold", "<i>it"] {
            assert!(!html.contains(bad), "unescaped {bad:?} in page");
        }
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;"), "{html}");
        assert!(
            html.contains("data-delete=\"./metrics/job@base64/"),
            "{html}"
        );
        assert!(html.contains("data-wipe="), "{html}");
        assert!(html.contains("push_time_seconds"), "{html}");
        assert!(html.contains(" UTC"), "push times in UTC: {html}");
    }
    s.stop().await;
}

/// The page's assets are served under `static/`; anything else there is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_assets() {
    let s = Server::start(&[]).await;
    let r = s.get("/static/pgw.js").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/javascript"))
    );
    assert_eq!(s.get("/static/pgw.css").await.status, 200);
    assert_eq!(s.get("/static/nope.js").await.status, 404);
    let r = s.get("/static").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/static/"));
    s.stop().await;
}

/// The delete button's path deletes exactly its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_button_path_works() {
    let s = Server::start(&[]).await;
    let path = format!(
        "/metrics/job/j/instance@base64/=/path@base64/{}",
        b64("a/b c")
    );
    assert_eq!(s.put(&path, "m 1\n").await.status, 200);
    let html = s.get("/").await.text();
    let start = html.find("data-delete=\".").expect("delete button") + "data-delete=\".".len();
    let end = start + html[start..].find('"').expect("attribute end");
    let del = html[start..end].replace("&amp;", "&");
    assert_eq!(s.delete(&del).await.status, 202, "DELETE {del}");
    assert!(!s.metrics_text().await.contains("job=\"j\""));
    s.stop().await;
}
