//! Starting and stopping in-process nodes, and small request helpers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgw_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{self, Response};

/// How long a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to become ready or to stop.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A node running in this process.
pub struct Server {
    pub addr: SocketAddr,
    /// The route prefix the node was started with (`""` for none).
    pub prefix: String,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

/// Parses `args` (after the program name) into a [`Config`].
pub fn config(args: &[&str]) -> Config {
    let mut argv = vec!["pgw"];
    argv.extend_from_slice(args);
    Config::try_parse_from(argv).expect("flags parse")
}

impl Server {
    /// Starts a node with `args` (upstream-style flags) and waits until `/-/ready` is 200.
    pub async fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = format!("--storage.path={}", dir.path().join("data").display());
        let mut all = vec![storage.as_str()];
        if !args.iter().any(|a| a.starts_with("--web.shutdown-drain")) {
            all.push("--web.shutdown-drain=0s");
        }
        all.extend_from_slice(args);
        let config = config(&all);
        let prefix =
            pgw_server::config::compute_route_prefix(&config.route_prefix, &config.external_url);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            pgw_server::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| format!("{e:#}"))
        });
        let mut server = Server {
            addr,
            prefix,
            _dir: dir,
            stop: Some(tx),
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let path = format!("{}/-/ready", self.prefix);
        loop {
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = self.task.take().expect("task").await;
                panic!("the node stopped before it was ready: {result:?}");
            }
            let last = match support::get(self.addr, &path, Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("status {} body {:?}", r.status, r.text()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "{path} on {} did not answer 200 within {START_TIMEOUT:?} (last: {last})",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a request; panics on a transport error.
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        support::request(self.addr, method, path, headers, body, REQUEST_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.req("GET", path, &[], b"").await
    }

    /// `PUT path` with a text body.
    pub async fn put(&self, path: &str, body: &str) -> Response {
        self.req("PUT", path, &[], body.as_bytes()).await
    }

    /// `POST path` with a text body.
    pub async fn post(&self, path: &str, body: &str) -> Response {
        self.req("POST", path, &[], body.as_bytes()).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Response {
        self.req("DELETE", path, &[], b"").await
    }

    /// The text exposition of the telemetry path (asserts 200).
    pub async fn metrics_text(&self) -> String {
        let r = self.get(&format!("{}/metrics", self.prefix)).await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// Sends a raw chunked request; returns the status and body.
    pub async fn chunked(&self, method: &str, path: &str, chunks: &[&[u8]]) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            self.addr
        )
        .into_bytes();
        for c in chunks {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        // The server may answer and close before it read everything.
        let _ = s.write_all(&out).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, s.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    }

    /// Waits for the node to stop by itself (e.g. after `/-/quit`); returns its result.
    pub async fn wait_exit(mut self) -> Result<(), String> {
        let task = self.task.take().expect("task");
        match tokio::time::timeout(START_TIMEOUT, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("node task failed: {e}")),
            Err(_) => panic!("the node did not stop within {START_TIMEOUT:?}"),
        }
    }

    /// Stops the node through its shutdown future and asserts a clean stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = Server::wait_exit(self).await;
        assert_eq!(result, Ok(()), "node stopped with an error");
    }
}

/// Asserts the Go `http.Error` shape: status, body `msg` + `\n`, text/plain, nosniff.
pub fn assert_http_error(r: &Response, status: u16, msg: &str) {
    assert_eq!(r.status, status, "body: {:?}", r.text());
    assert_eq!(r.text(), format!("{msg}\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

/// Asserts an `http.Error` whose message starts with `prefix`.
pub fn assert_http_error_prefix(r: &Response, status: u16, prefix: &str) {
    assert_eq!(r.status, status, "body: {:?}", r.text());
    assert!(
        r.text().starts_with(prefix),
        "body {:?} should start with {prefix:?}",
        r.text()
    );
    assert!(r.text().ends_with('\n'));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

/// base64url without padding.
pub fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// gzips `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// gunzips `data`.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}
