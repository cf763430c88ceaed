//! `pgw-load`: a load generator for any Pushgateway-compatible endpoint: pgw (one node or
//! the nodes of a cluster) or the reference Pushgateway.
//!
//! Workloads:
//!
//! * `push`: `--connections` keep-alive HTTP/1.1 connections each PUT (or POST) a body of
//!   `--series` gauge series to one of `--groups` grouping keys, back to back, for
//!   `--duration` seconds.
//! * `preload`: fills `--groups` groups with `--series` series each (one push per group,
//!   `--connections` in parallel), then stops.
//! * `scrape`: `--scrape-connections` connections GET the telemetry path back to back (or
//!   every `--scrape-interval-ms`) for `--duration` seconds.
//! * `mixed`: `push` and `scrape` at the same time; both are reported.
//!
//! With several `--url`s (or one comma-separated list), connection `i` talks to URL
//! `i mod n`, so a cluster's nodes share the load evenly. Every run reports throughput,
//! latency (p50/p90/p99/max), errors by kind, bytes sent and received, and the resident set
//! size (current and peak while the run lasted) of the processes given with `--pid`.
//! `--json` prints one JSON object instead of the text report.
//!
//! Does not own: starting or stopping servers (see `benches/compare.sh`). It depends on
//! nothing of pgw, so it measures pgw and the reference alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Longest run accepted (`--duration`), so every run is bounded.
const MAX_DURATION_S: f64 = 3600.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Push,
    Preload,
    Scrape,
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    Put,
    Post,
}

/// Drives a Pushgateway-compatible endpoint and reports throughput, latency, errors, bytes
/// and the RSS of the server processes.
#[derive(Parser, Debug, Clone)]
#[command(name = "pgw-load", version)]
struct Args {
    /// What to run.
    #[arg(value_enum)]
    workload: Workload,
    /// Base URL(s) of the server(s), e.g. `http://127.0.0.1:9091`; repeat or separate with
    /// commas to spread connections over the nodes of a cluster.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    urls: Vec<String>,
    /// Series per push (push, mixed) or per group (preload).
    #[arg(long, default_value_t = 10)]
    series: usize,
    /// Number of grouping keys pushed to.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Concurrent push connections.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// Seconds to run (push, scrape, mixed).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Stop after this many pushes (in addition to the duration).
    #[arg(long)]
    max_requests: Option<u64>,
    /// PUT replaces the group, POST only the pushed families.
    #[arg(long, value_enum, default_value_t = Method::Put)]
    method: Method,
    /// `job` label of the grouping keys; the instance label is `g<number>`.
    #[arg(long, default_value = "pgw_load", value_parser = url_segment)]
    job: String,
    /// Family name of the pushed gauges.
    #[arg(long, default_value = "pgw_load_gauge", value_parser = metric_name)]
    family: String,
    /// Concurrent scrape connections (scrape, mixed).
    #[arg(long, default_value_t = 1)]
    scrape_connections: usize,
    /// Pause between the scrapes of one connection (0: back to back).
    #[arg(long, default_value_t = 0)]
    scrape_interval_ms: u64,
    /// The telemetry path.
    #[arg(long, default_value = "/metrics")]
    scrape_path: String,
    /// Ask for a gzipped scrape (`Accept-Encoding: gzip`).
    #[arg(long)]
    gzip: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// PIDs of server processes whose RSS to report (repeat or separate with commas).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

/// One parsed base URL.
#[derive(Clone, Debug)]
struct Target {
    /// `host:port` for the TCP connection and the `Host` header.
    authority: String,
    /// Path prefix (no trailing slash), e.g. `` or `/pgw`.
    prefix: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .trim()
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            authority,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A keep-alive HTTP/1.1 connection, re-established after an error.
struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

/// What one request produced.
enum Outcome {
    /// Status code and response body length.
    Done(u16, usize),
    /// A failure, by kind.
    Failed(String),
}

impl Conn {
    fn new(target: Target, timeout: Duration) -> Conn {
        Conn {
            target,
            sender: None,
            timeout,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(&self.target.authority)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| "connect: handshake".to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| "connect: no connection".to_string())
    }

    async fn request(&mut self, req: http::Request<Full<Bytes>>) -> Outcome {
        let timeout = self.timeout;
        let run = async {
            let sender = self.connect().await?;
            sender
                .ready()
                .await
                .map_err(|_| "connection closed".to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| classify(&e))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| "reading body".to_string())?;
            Ok::<_, String>((status, body.to_bytes().len()))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok((status, len))) => Outcome::Done(status, len),
            Ok(Err(kind)) => {
                self.sender = None;
                Outcome::Failed(kind)
            }
            Err(_) => {
                self.sender = None;
                Outcome::Failed("timeout".into())
            }
        }
    }
}

fn classify(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "connection closed mid-response".into()
    } else if e.is_closed() || e.is_canceled() {
        "connection closed".into()
    } else if e.is_parse() {
        "bad response".into()
    } else {
        "io".into()
    }
}

/// Counters of one kind of request (push or scrape) of one connection, merged at the end.
#[derive(Default)]
struct Stats {
    /// Latencies of the answered requests with a 2xx status, µs.
    latencies_us: Vec<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    bytes_sent: u64,
    bytes_received: u64,
}

impl Stats {
    fn record(&mut self, outcome: Outcome, started: Instant, sent: usize) {
        let us = started.elapsed().as_micros() as u64;
        self.bytes_sent += sent as u64;
        match outcome {
            Outcome::Done(status, len) => {
                self.bytes_received += len as u64;
                if (200..300).contains(&status) {
                    self.ok += 1;
                    self.latencies_us.push(us);
                } else {
                    *self.errors.entry(format!("http {status}")).or_default() += 1;
                }
            }
            Outcome::Failed(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
    }

    fn report(mut self, elapsed: Duration, series_per_request: usize) -> Value {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
            let i = rank.clamp(1, self.latencies_us.len()) - 1;
            self.latencies_us[i] as f64 / 1000.0
        };
        let mean = if self.latencies_us.is_empty() {
            0.0
        } else {
            self.latencies_us.iter().sum::<u64>() as f64 / self.latencies_us.len() as f64 / 1000.0
        };
        let secs = elapsed.as_secs_f64().max(1e-9);
        let failed: u64 = self.errors.values().sum();
        json!({
            "requests": self.ok + failed,
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": round3(secs),
            "throughput_per_s": round3(self.ok as f64 / secs),
            "series_per_s": round3(self.ok as f64 * series_per_request as f64 / secs),
            "latency_ms": {
                "p50": round3(pct(50.0)),
                "p90": round3(pct(90.0)),
                "p99": round3(pct(99.0)),
                "max": round3(pct(100.0)),
                "mean": round3(mean),
            },
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "bytes_per_response": self.bytes_received.checked_div(self.ok + failed).unwrap_or(0),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The text body of one push: `series` gauges of one family, values changing per push.
fn push_body(family: &str, series: usize, round: u64, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(
        StrBuf(out),
        "# HELP {family} Load generated by pgw-load.\n# TYPE {family} gauge\n"
    );
    for i in 0..series {
        let _ = writeln!(StrBuf(out), "{family}{{series=\"{i}\"}} {round}.{i}");
    }
}

/// `fmt::Write` into a byte vector.
struct StrBuf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_request(
    target: &Target,
    method: Method,
    job: &str,
    group: usize,
    body: Bytes,
) -> http::Request<Full<Bytes>> {
    let uri = format!("{}/metrics/job/{job}/instance/g{group}", target.prefix);
    let method = match method {
        Method::Put => http::Method::PUT,
        Method::Post => http::Method::POST,
    };
    let len = body.len();
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, &target.authority)
        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .header(http::header::CONTENT_LENGTH, len)
        .body(Full::new(body))
        .unwrap_or_default()
}

/// A `--job` value: it goes into the URL path as it is, so only characters that need no
/// escaping. (A request that cannot be built would otherwise be sent as a default `GET /`.)
fn url_segment(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: use letters, digits and _ - . ~ only (it becomes a URL path segment)"
        ))
    }
}

/// A `--family` value: a Prometheus metric name.
fn metric_name(s: &str) -> Result<String, String> {
    let mut bytes = s.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
        ))
    }
}

fn scrape_request(target: &Target, path: &str, gzip: bool) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("{}{}", target.prefix, path))
        .header(http::header::HOST, &target.authority)
        .header(
            http::header::ACCEPT,
            "text/plain;version=0.0.4;q=1,*/*;q=0.1",
        );
    if gzip {
        b = b.header(http::header::ACCEPT_ENCODING, "gzip");
    }
    b.body(Full::new(Bytes::new())).unwrap_or_default()
}

/// Shared run state: when measuring starts, when to stop.
struct Clock {
    measure_from: Instant,
    stop_at: Instant,
    stop: AtomicBool,
    pushes: AtomicU64,
    max_pushes: u64,
}

impl Clock {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.stop_at
    }
}

async fn push_worker(args: Arc<Args>, target: Target, worker: usize, clock: Arc<Clock>) -> Stats {
    let mut conn = Conn::new(target.clone(), Duration::from_secs_f64(args.timeout));
    let mut stats = Stats::default();
    let mut buf = Vec::new();
    let groups = args.groups.max(1);
    let mut round: u64 = 0;
    // Connection `w` walks the groups w, w+C, w+2C, … so concurrent pushes hit distinct
    // groups whenever there are at least as many groups as connections.
    let mut group = worker % groups;
    while clock.running() {
        let n = clock.pushes.fetch_add(1, Ordering::Relaxed);
        if n >= clock.max_pushes {
            clock.stop.store(true, Ordering::Relaxed);
            break;
        }
        push_body(&args.family, args.series, round, &mut buf);
        let body = Bytes::copy_from_slice(&buf);
        let sent = body.len();
        let req = push_request(&target, args.method, &args.job, group, body);
        let started = Instant::now();
        let outcome = conn.request(req).await;
        if started >= clock.measure_from {
            stats.record(outcome, started, sent);
        }
        group = (group + args.connections.max(1)) % groups;
        if group < args.connections.max(1) {
            round += 1;
        }
    }
    stats
}

async fn scrape_worker(args: Arc<Args>, target: Target, clock: Arc<Clock>) -> Stats {
    let mut conn = Conn::new(target.clone(), Duration::from_secs_f64(args.timeout));
    let mut stats = Stats::default();
    while clock.running() {
        let req = scrape_request(&target, &args.scrape_path, args.gzip);
        let started = Instant::now();
        let outcome = conn.request(req).await;
        if started >= clock.measure_from {
            stats.record(outcome, started, 0);
        }
        if args.scrape_interval_ms > 0 {
            let left = clock.stop_at.saturating_duration_since(Instant::now());
            tokio::time::sleep(Duration::from_millis(args.scrape_interval_ms).min(left)).await;
        }
    }
    stats
}

/// Fills every group once: connection `w` pushes groups w, w+C, ….
async fn preload_worker(args: Arc<Args>, targets: Arc<Vec<Target>>, worker: usize) -> Stats {
    let c = args.connections.max(1);
    let target = targets[worker % targets.len()].clone();
    let mut conn = Conn::new(target.clone(), Duration::from_secs_f64(args.timeout));
    let mut stats = Stats::default();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(MAX_DURATION_S);
    let mut group = worker;
    while group < args.groups && Instant::now() < deadline {
        push_body(&args.family, args.series, 1, &mut buf);
        let body = Bytes::copy_from_slice(&buf);
        let sent = body.len();
        let req = push_request(&target, args.method, &args.job, group, body);
        let started = Instant::now();
        stats.record(conn.request(req).await, started, sent);
        group += c;
    }
    stats
}

/// `VmRSS` and `VmHWM` of a process, bytes.
fn rss_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// Samples the RSS of `pids` every 200 ms until `stop`; returns the peak seen per PID.
async fn sample_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut peak = vec![0u64; pids.len()];
    loop {
        for (i, &pid) in pids.iter().enumerate() {
            if let Some((rss, _)) = rss_of(pid) {
                peak[i] = peak[i].max(rss);
            }
        }
        if stop.load(Ordering::Relaxed) {
            return peak;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let targets: Vec<Target> = args
        .urls
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| Target::parse(u))
        .collect::<anyhow::Result<_>>()?;
    if targets.is_empty() {
        bail!("no --url given");
    }
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        bail!("--duration must be in (0, {MAX_DURATION_S}] seconds");
    }
    if !(0.0..=MAX_DURATION_S).contains(&args.warmup) {
        bail!("--warmup must be in [0, {MAX_DURATION_S}] seconds");
    }
    let args = Arc::new(args);
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_rss(args.pids.clone(), sampler_stop.clone()));

    let mut out = json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "urls": args.urls,
        "config": {
            "series": args.series,
            "groups": args.groups,
            "connections": args.connections,
            "scrape_connections": args.scrape_connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "method": format!("{:?}", args.method).to_uppercase(),
            "gzip": args.gzip,
        },
    });

    match args.workload {
        Workload::Preload => {
            let targets = Arc::new(targets);
            let started = Instant::now();
            let handles: Vec<_> = (0..args.connections.max(1))
                .map(|w| tokio::spawn(preload_worker(args.clone(), targets.clone(), w)))
                .collect();
            let mut stats = Stats::default();
            for h in handles {
                stats.merge(h.await?);
            }
            out["push"] = stats.report(started.elapsed(), args.series);
            out["series_stored"] = json!(args.groups * args.series);
        }
        Workload::Push | Workload::Scrape | Workload::Mixed => {
            let start = Instant::now();
            let measure_from = start + Duration::from_secs_f64(args.warmup);
            let clock = Arc::new(Clock {
                measure_from,
                stop_at: measure_from + Duration::from_secs_f64(args.duration),
                stop: AtomicBool::new(false),
                pushes: AtomicU64::new(0),
                max_pushes: args.max_requests.unwrap_or(u64::MAX),
            });
            let pushers: Vec<_> = if args.workload == Workload::Scrape {
                Vec::new()
            } else {
                (0..args.connections.max(1))
                    .map(|w| {
                        tokio::spawn(push_worker(
                            args.clone(),
                            targets[w % targets.len()].clone(),
                            w,
                            clock.clone(),
                        ))
                    })
                    .collect()
            };
            let scrapers: Vec<_> = if args.workload == Workload::Push {
                Vec::new()
            } else {
                (0..args.scrape_connections.max(1))
                    .map(|w| {
                        tokio::spawn(scrape_worker(
                            args.clone(),
                            targets[w % targets.len()].clone(),
                            clock.clone(),
                        ))
                    })
                    .collect()
            };
            let mut push = Stats::default();
            for h in pushers {
                push.merge(h.await?);
            }
            let mut scrape = Stats::default();
            for h in scrapers {
                scrape.merge(h.await?);
            }
            // A capped run may end before the duration: measure up to the last answer.
            let elapsed = Instant::now().saturating_duration_since(measure_from);
            if args.workload != Workload::Scrape {
                out["push"] = push.report(elapsed, args.series);
            }
            if args.workload != Workload::Push {
                out["scrape"] = scrape.report(elapsed, 0);
            }
        }
    }

    sampler_stop.store(true, Ordering::Relaxed);
    let peaks = sampler.await.unwrap_or_default();
    let rss: Vec<Value> = args
        .pids
        .iter()
        .zip(peaks.iter().chain(std::iter::repeat(&0)))
        .map(|(&pid, &peak)| match rss_of(pid) {
            Some((rss, hwm)) => json!({"pid": pid, "rss_bytes": rss, "peak_rss_bytes": peak.max(rss), "hwm_bytes": hwm}),
            None => json!({"pid": pid, "error": "no such process"}),
        })
        .collect();
    out["rss"] = json!(rss);
    Ok(out)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn text_report(v: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "workload {} against {}",
        v["workload"].as_str().unwrap_or("?"),
        v["urls"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|u| u.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "config {}", v["config"]);
    for section in ["push", "scrape"] {
        let r = &v[section];
        if r.is_null() {
            continue;
        }
        let l = &r["latency_ms"];
        let _ = writeln!(
            s,
            "{section}: {} ok of {} in {:.2} s = {:.1}/s ({:.0} series/s)",
            r["ok"],
            r["requests"],
            r["elapsed_s"].as_f64().unwrap_or(0.0),
            r["throughput_per_s"].as_f64().unwrap_or(0.0),
            r["series_per_s"].as_f64().unwrap_or(0.0),
        );
        let _ = writeln!(
            s,
            "  latency ms: p50 {} p90 {} p99 {} max {} mean {}",
            l["p50"], l["p90"], l["p99"], l["max"], l["mean"]
        );
        let _ = writeln!(
            s,
            "  bytes: sent {} received {} ({} per response)",
            mb(r["bytes_sent"].as_u64().unwrap_or(0)),
            mb(r["bytes_received"].as_u64().unwrap_or(0)),
            r["bytes_per_response"]
        );
        match r["errors"].as_object() {
            Some(e) if !e.is_empty() => {
                for (k, n) in e {
                    let _ = writeln!(s, "  errors {k}: {n}");
                }
            }
            _ => {
                let _ = writeln!(s, "  errors: none");
            }
        }
    }
    if let Some(rss) = v["rss"].as_array() {
        for p in rss {
            match p["rss_bytes"].as_u64() {
                Some(b) => {
                    let _ = writeln!(
                        s,
                        "rss pid {}: {} (peak during run {})",
                        p["pid"],
                        mb(b),
                        mb(p["peak_rss_bytes"].as_u64().unwrap_or(0))
                    );
                }
                None => {
                    let _ = writeln!(s, "rss pid {}: no such process", p["pid"]);
                }
            }
        }
    }
    s
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json_out = args.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = rt.block_on(run(args))?;
    if json_out {
        println!("{report}");
    } else {
        print!("{}", text_report(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:9091").expect("url");
        assert_eq!(t.authority, "127.0.0.1:9091");
        assert_eq!(t.prefix, "");
        let t = Target::parse("http://localhost/pgw/").expect("url");
        assert_eq!(t.authority, "localhost:80");
        assert_eq!(t.prefix, "/pgw");
        assert!(Target::parse("https://x").is_err());
    }

    #[test]
    fn bad_job_and_family_values_are_refused() {
        assert!(url_segment("load-1.a_b~").is_ok());
        for bad in ["", "a/b", "a b", "é", "a?b"] {
            assert!(url_segment(bad).is_err(), "{bad:?}");
        }
        assert!(metric_name("pgw_load:gauge").is_ok());
        for bad in ["", "1x", "a-b", "a b"] {
            assert!(metric_name(bad).is_err(), "{bad:?}");
        }
        let args = |job: &str| {
            Args::try_parse_from([
                "pgw-load",
                "push",
                "--url",
                "http://127.0.0.1:1",
                "--job",
                job,
            ])
        };
        assert!(args("ok").is_ok());
        let err = args("a/b").expect_err("a job with a slash is refused");
        assert!(err.to_string().contains("URL path segment"), "{err}");
    }

    #[test]
    fn push_body_is_text_format() {
        let mut b = Vec::new();
        push_body("f", 2, 7, &mut b);
        assert_eq!(
            String::from_utf8(b).expect("utf8"),
            "# HELP f Load generated by pgw-load.\n# TYPE f gauge\nf{series=\"0\"} 7.0\nf{series=\"1\"} 7.1\n"
        );
    }

    #[test]
    fn percentiles() {
        let s = Stats {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ok: 100,
            ..Stats::default()
        };
        let r = s.report(Duration::from_secs(1), 10);
        assert_eq!(r["latency_ms"]["p50"], 50.0);
        assert_eq!(r["latency_ms"]["p99"], 99.0);
        assert_eq!(r["latency_ms"]["max"], 100.0);
        assert_eq!(r["throughput_per_s"], 100.0);
    }
}
