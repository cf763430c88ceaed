//! The web page at scale: one page of groups at a time, search by label, cursor paging,
//! and a body whose size does not grow with the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Server;

/// Connections pushing at once: enough for the node's group commit to batch well, few
/// enough for one process.
const PUSH_CONNECTIONS: usize = 128;

/// Pushes the empty group `job=<name(i)>` for every `i` in `range` over
/// [`PUSH_CONNECTIONS`] keep-alive HTTP/1.1 connections (a minimal client: the node, not
/// the client, should spend the CPU). Every push must be answered 200; a 503 (a commit
/// slower than the write timeout on a loaded machine) is retried a few times.
async fn push_groups(
    addr: SocketAddr,
    prefix: &str,
    range: std::ops::Range<usize>,
    name: fn(usize) -> String,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let mut tasks = Vec::new();
    for _ in 0..PUSH_CONNECTIONS.min(range.len()) {
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let mut i = next.fetch_add(1, Ordering::Relaxed);
            let mut tries = 0;
            while i < end {
                let req = format!(
                    "PUT {prefix}/metrics/job/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n",
                    name(i)
                );
                s.write_all(req.as_bytes()).await.expect("write push");
                let (status, body) = read_response(&mut s).await;
                match status {
                    200 => {
                        i = next.fetch_add(1, Ordering::Relaxed);
                        tries = 0;
                    }
                    503 if tries < 5 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => panic!("push {i}: {status} {body}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("pusher task");
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` (or none: empty) body.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no status in {head:?}"));
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("content-length"));
            if buf.len() >= p + 4 + len {
                assert_eq!(
                    buf.len(),
                    p + 4 + len,
                    "no pipelining: one response at a time"
                );
                return (status, String::from_utf8_lossy(&buf[p + 4..]).into_owned());
            }
        }
        assert!(buf.len() < 1 << 20, "response too long");
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("push answered within 30 s")
            .expect("read push response");
        assert!(n > 0, "connection closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn g(i: usize) -> String {
    format!("g{i:06}")
}

/// The number in `<span class="NAME">N</span>`.
fn span_number(html: &str, class: &str) -> usize {
    let tag = format!("<span class=\"{class}\">");
    let start = html
        .find(&tag)
        .unwrap_or_else(|| panic!("no {tag} in page: {}", &html[..html.len().min(4000)]))
        + tag.len();
    let end = start + html[start..].find('<').expect("span end");
    html[start..end].parse().expect("a number")
}

/// The groups on a page, by job, in page order.
fn jobs(html: &str) -> Vec<String> {
    html.split("<details class=\"group\">")
        .skip(1)
        .map(|g| {
            let start = g.find("job=&quot;").expect("job badge") + "job=&quot;".len();
            let end = start + g[start..].find("&quot;").expect("badge end");
            g[start..end].to_string()
        })
        .collect()
}

/// The href of the pager link `rel`, unescaped (the first pager's; `None` when absent).
fn link(html: &str, rel: &str) -> Option<String> {
    let tag = format!("rel=\"{rel}\" href=\"");
    let start = html.find(&tag)? + tag.len();
    let end = start + html[start..].find('"').expect("href end");
    Some(html[start..end].replace("&amp;", "&"))
}

async fn page(s: &Server, path: &str) -> String {
    let t = Instant::now();
    let r = s.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    let html = r.text();
    eprintln!("GET {path}: {} bytes in {:?}", html.len(), t.elapsed());
    html
}

/// With 200,000 groups the page is as large as with 1,000: one page of 100 groups. The
/// groups are pushed through the HTTP API (128 connections; about 25 s in a debug build on
/// 2 cores). Search and paging work at that size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_does_not_grow_with_the_store() {
    let s = Server::start(&[]).await;
    let t = Instant::now();
    push_groups(s.addr, "", 0..1_000, g).await;
    let small = page(&s, "/").await;
    assert_eq!(span_number(&small, "matching"), 1_000);
    assert_eq!(jobs(&small).len(), 100);
    assert_eq!(jobs(&small)[0], "g000000");

    push_groups(s.addr, "", 1_000..200_000, g).await;
    eprintln!("pushed 200,000 groups in {:?}", t.elapsed());
    let large = page(&s, "/").await;
    assert_eq!(span_number(&large, "matching"), 200_000);
    assert_eq!(span_number(&large, "count"), 200_000);
    let shown = jobs(&large);
    assert_eq!(shown.len(), 100);
    assert_eq!(shown.first().map(String::as_str), Some("g000000"));
    assert_eq!(shown.last().map(String::as_str), Some("g000099"));
    // Same groups on the page, so the same size but for the digits of the counts (and the
    // push times, all of one length).
    assert!(
        small.len().abs_diff(large.len()) < 100,
        "page with 1,000 groups: {} bytes, with 200,000: {} bytes",
        small.len(),
        large.len()
    );
    assert!(link(&large, "prev").is_none());

    // Next page, by cursor.
    let next = link(&large, "next").expect("a next link");
    let p2 = page(&s, &format!("/{next}")).await;
    assert_eq!(jobs(&p2).first().map(String::as_str), Some("g000100"));
    assert!(link(&p2, "prev").is_some());

    // Search: one exact group; a substring; the count covers all matches, the page 100.
    let one = page(&s, "/?q=job%3Dg123456").await;
    assert_eq!(jobs(&one), ["g123456"]);
    assert_eq!(span_number(&one, "matching"), 1);
    let some = page(&s, "/?q=job~g19999").await;
    assert_eq!(span_number(&some, "matching"), 10);
    assert_eq!(jobs(&some).len(), 10);
    let many = page(&s, "/?q=g1").await;
    assert_eq!(span_number(&many, "matching"), 100_000);
    assert_eq!(jobs(&many).len(), 100);
    assert!(many.len().abs_diff(small.len()) < 1_000);
    let last = page(&s, "/?limit=1000&after=".to_string().as_str()).await;
    assert_eq!(jobs(&last).len(), 1_000);
    s.stop().await;
}

/// Paging forward by the page's own links visits every matching group once, in order;
/// backwards likewise; the search is kept across pages; a route prefix works (the links
/// are relative).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_links_keep_the_search() {
    let s = Server::start(&["--web.route-prefix=/pgw"]).await;
    let name: fn(usize) -> String = |i| format!("svc-{}/instance/i{i:03}", ["api", "db"][i % 2]);
    push_groups(s.addr, "/pgw", 0..250, name).await;
    let instances = |html: &str| -> Vec<String> {
        html.split("<details class=\"group\">")
            .skip(1)
            .map(|g| {
                let start = g.find("instance=&quot;").expect("badge") + "instance=&quot;".len();
                g[start..start + 4].to_string()
            })
            .collect()
    };

    // Forward through the db groups, 40 at a time.
    let mut html = page(&s, "/pgw/?q=job%3Dsvc-db&limit=40").await;
    assert!(
        html.contains("value=\"job=svc-db\""),
        "search box keeps the search"
    );
    assert!(html.contains("name=\"limit\" value=\"40\""));
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert_eq!(span_number(&html, "matching"), 125);
        assert!(jobs(&html).iter().all(|j| j == "svc-db"));
        seen.extend(instances(&html));
        match link(&html, "next") {
            Some(href) => {
                assert!(
                    href.contains("q=job%3Dsvc-db") && href.contains("limit=40"),
                    "{href}"
                );
                html = page(&s, &format!("/pgw/{href}")).await;
            }
            None => break,
        }
    }
    assert_eq!(pages, 4);
    let want: Vec<String> = (0..250)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("i{i:03}"))
        .collect();
    assert_eq!(seen, want);

    // And back again from the last page.
    let mut back = instances(&html);
    while let Some(href) = link(&html, "prev") {
        html = page(&s, &format!("/pgw/{href}")).await;
        let mut p = instances(&html);
        p.extend(back);
        back = p;
    }
    assert_eq!(back, want);

    // A group deleted from under a cursor: the next page still starts after it.
    let first = page(&s, "/pgw/?q=job%3Dsvc-db&limit=40").await;
    let next = link(&first, "next").expect("next");
    let r = s.delete("/pgw/metrics/job/svc-db/instance/i079").await;
    assert_eq!(r.status, 202);
    let p2 = page(&s, &format!("/pgw/{next}")).await;
    assert_eq!(instances(&p2).first().map(String::as_str), Some("i081"));
    assert_eq!(span_number(&p2, "matching"), 124);

    // /status is the same page.
    let st = page(&s, "/pgw/status?q=i003").await;
    assert_eq!(instances(&st), ["i003"]);
    assert!(st.contains("<section id=\"status\">"));
    s.stop().await;
}

/// Bad paging or search input: 400, the page with the message and the search form, no
/// groups; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_400_with_a_message() {
    let s = Server::start(&["--web.enable-admin-api"]).await;
    push_groups(s.addr, "", 0..3, g).await;
    for (q, msg) in [
        ("limit=0", "invalid limit"),
        ("limit=100000", "from 1 to 1000"),
        ("after=bogus", "invalid page cursor in after="),
        ("q=job%3D~g", "regular expressions are not supported"),
        ("q=%22open", "unterminated quote"),
        ("q=%ff", "not valid percent-encoded UTF-8"),
    ] {
        let r = s.get(&format!("/?{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let html = r.text();
        assert!(html.contains("<p class=\"error\">"), "{q}: {html}");
        assert!(html.contains(msg), "{q}: want {msg:?} in {html}");
        assert!(html.contains("<form class=\"search\""), "{q}");
        assert!(jobs(&html).is_empty(), "{q}");
        assert!(html.contains("<section id=\"status\">"));
    }
    let html = page(&s, "/?q=nothing-matches").await;
    assert!(html.contains("No group matches"), "{html}");
    // Unknown parameters are ignored; the small page keeps its look and buttons.
    let html = page(&s, "/?utm_source=x").await;
    assert_eq!(jobs(&html), ["g000000", "g000001", "g000002"]);
    assert!(html.contains("data-wipe="));
    assert_eq!(html.matches("data-delete=\"./metrics/job/").count(), 3);
    assert!(!html.contains("class=\"pager\""), "one page needs no pager");
    s.stop().await;
}
