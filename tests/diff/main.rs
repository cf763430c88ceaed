//! Differential test: the same scripted HTTP request sequences go to the reference
//! Pushgateway 1.5.1 (`/usr/bin/prometheus-pushgateway`) and to `pgw`, and the answers and
//! the resulting stores must agree.
//!
//! Per request: the status code; for 4xx/5xx, the stable prefix of the body (never whole Go
//! error texts); for redirects, `Location`; for 405 and OPTIONS, the `Allow` set. After the
//! sequence (and a write barrier, since the reference applies DELETE, wipe and unchecked
//! pushes asynchronously): the pushed part of `GET /metrics` (families other than `go_*`,
//! `process_*`, `pushgateway_*` and pgw's `pgw_*`, push times masked to `0`/`T`) line by
//! line, and
//! `GET /api/v1/metrics` structurally (groups as a set keyed by labels, `time_stamp`s and
//! push times masked; a difference in how `time_stamp`s relate to the group's push time is
//! reported as a warning, see `PGW_DIFF_STRICT_TIME_STAMPS`).
//!
//! Scenarios are data (`scenarios.rs`). Deliberate differences (reference bugs Q1, Q2, Q3,
//! Q6 fixed; HELP chosen deterministically; `Content-Encoding: GZIP` accepted) are
//! [`Expect::Differs`] scenarios: they run against `pgw` only, with pgw's expected outcome
//! asserted.
//!
//! Both servers are started once per mode (checked, and `--push.disable-consistency-check`)
//! with `--web.enable-admin-api`, and wiped between scenarios.
//!
//! Environment:
//! - `PGW_DIFF_SUT=reference`: run a second reference instead of `pgw` (harness self-check:
//!   everything must be identical; `Differs` scenarios are checked to really differ on the
//!   reference, and the ones that would wedge it are skipped).
//! - `PGW_DIFF_ONLY=<substring>`: run only scenarios whose name contains it.
//! - `PGW_DIFF_VERBOSE=1`: print every scenario's verdict.
//! - `PGW_DIFF_DUMP=1`: print every response of both servers and the reference's final
//!   pushed `/metrics`.
//! - `PGW_DIFF_SUT_EXTRA_ARGS="--flag ..."`: extra flags for the system under test only.
//! - `PGW_DIFF_STRICT_TIME_STAMPS=1`: fail (instead of warn) when the `/api/v1/metrics`
//!   `time_stamp`s differ in their relation to the group's push time (zero time, older,
//!   same, newer); by default `time_stamp`s are masked.

#[path = "../support/mod.rs"]
mod support;

mod bodies;
mod scenarios;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Kind, Proc, Response};

/// Per-request deadline. Generous: the machine is shared with builders.
const REQ_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for the reference's asynchronous writes (wipe, DELETE, unchecked pushes).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The group the write barrier creates and deletes.
const BARRIER_JOB: &str = "pgw_diff_write_barrier";

/// Families of the servers' own telemetry, not part of the comparison: the reference's Go
/// runtime, process and `pushgateway_*` metrics, and pgw's node-local `pgw_*` (Raft, cluster)
/// metrics.
const OWN_PREFIXES: &[&str] = &["go_", "process_", "pushgateway_", "pgw_"];

/// Stable error prefixes; a 4xx/5xx body that starts with one of them must start with the
/// same one on the other server. Text-format errors are matched with their line number.
const STABLE_PREFIXES: &[&str] = &[
    "pushed metrics are invalid or inconsistent with existing metrics:",
    "improper label name",
    "invalid base64 encoding",
    "odd number of components",
    "job name is required",
    "404 page not found",
    "Method Not Allowed",
    "An error has occurred while serving metrics:",
    "Lifecycle API is not enabled.",
    "Only POST or PUT requests allowed.",
];

/// One HTTP request of a scenario, or the write barrier.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn new(method: &'static str, path: &str, body: impl AsRef<[u8]>) -> Req {
        Req {
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: body.as_ref().to_vec(),
        }
    }

    /// Adds a request header.
    pub fn h(mut self, name: &'static str, value: &str) -> Req {
        self.headers.push((name, value.to_string()));
        self
    }

    fn is_barrier(&self) -> bool {
        self.method == "BARRIER"
    }

    fn describe(&self) -> String {
        if self.is_barrier() {
            return "(write barrier)".into();
        }
        let mut s = format!("{} {}", self.method, self.path);
        for (n, v) in &self.headers {
            s.push_str(&format!(" [{n}: {v}]"));
        }
        if !self.body.is_empty() {
            let text = String::from_utf8_lossy(&self.body);
            let short: String = text.chars().take(80).collect();
            s.push_str(&format!(
                " body({} B) {:?}{}",
                self.body.len(),
                short,
                if text.chars().count() > 80 { "…" } else { "" }
            ));
        }
        s
    }
}

/// Which server pair a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Default flags (consistency check on).
    Checked,
    /// `--push.disable-consistency-check`.
    Unchecked,
}

/// What the comparison expects.
pub enum Expect {
    /// Both servers behave identically (modulo masked times and stable prefixes).
    Same,
    /// A deliberate difference: the scenario runs against `pgw` only and `pgw` must meet
    /// `pgw`.
    Differs { why: &'static str, pgw: PgwExpect },
}

/// An extra check of pgw's outcome of a [`Expect::Differs`] scenario.
pub type Check = fn(&Outcome) -> Result<(), String>;

/// pgw's expected outcome for a [`Expect::Differs`] scenario.
pub struct PgwExpect {
    /// Status per request (barriers excluded).
    pub statuses: Vec<u16>,
    /// `(request index, body prefix)` pairs.
    pub prefixes: Vec<(usize, &'static str)>,
    /// Status of the final `GET /metrics`.
    pub metrics_status: u16,
    /// Lines that must be in the (masked, filtered) final `/metrics`.
    pub has: Vec<&'static str>,
    /// Substrings that must not be in the final `/metrics`.
    pub lacks: Vec<&'static str>,
    /// Extra check on the whole outcome.
    pub check: Option<Check>,
    /// Never send this scenario to the reference (it would wedge it, Q1), nor run it
    /// against a reference in self-check mode.
    pub wedges_reference: bool,
    /// The reference's behaviour is random here (Q4): in self-check mode the scenario can
    /// neither pass nor fail meaningfully.
    pub reference_random: bool,
}

impl PgwExpect {
    pub fn statuses(statuses: &[u16]) -> PgwExpect {
        PgwExpect {
            statuses: statuses.to_vec(),
            prefixes: Vec::new(),
            metrics_status: 200,
            has: Vec::new(),
            lacks: Vec::new(),
            check: None,
            wedges_reference: false,
            reference_random: false,
        }
    }
    pub fn prefix(mut self, index: usize, prefix: &'static str) -> Self {
        self.prefixes.push((index, prefix));
        self
    }
    pub fn metrics_status(mut self, status: u16) -> Self {
        self.metrics_status = status;
        self
    }
    pub fn has(mut self, line: &'static str) -> Self {
        self.has.push(line);
        self
    }
    pub fn lacks(mut self, s: &'static str) -> Self {
        self.lacks.push(s);
        self
    }
    pub fn check(mut self, f: Check) -> Self {
        self.check = Some(f);
        self
    }
    pub fn wedges_reference(mut self) -> Self {
        self.wedges_reference = true;
        self
    }
    pub fn reference_random(mut self) -> Self {
        self.reference_random = true;
        self
    }
}

/// One scripted scenario.
pub struct Scenario {
    pub name: &'static str,
    pub mode: Mode,
    pub steps: Vec<Req>,
    pub expect: Expect,
}

/// What one server did in one scenario.
pub struct Outcome {
    /// One entry per step (barriers report status 0 when they completed).
    pub responses: Vec<Result<Response, String>>,
    /// Final `GET /metrics` (after a write barrier).
    pub metrics: Result<Response, String>,
    /// Final `GET /api/v1/metrics`.
    pub api: Result<Response, String>,
    /// The address, for extra requests in checks.
    pub addr: SocketAddr,
}

impl Outcome {
    /// The pushed part of the final `/metrics`, masked, one line per entry.
    pub fn pushed_lines(&self) -> Vec<String> {
        match &self.metrics {
            Ok(r) => pushed_part(&r.text()),
            Err(_) => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Talking to a server.

async fn send(addr: SocketAddr, r: &Req) -> Result<Response, String> {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    support::request(addr, r.method, &r.path, &headers, &r.body, REQ_TIMEOUT).await
}

async fn api_groups(addr: SocketAddr) -> Result<Vec<Value>, String> {
    let r = support::get(addr, "/api/v1/metrics", REQ_TIMEOUT).await?;
    if r.status != 200 {
        return Err(format!(
            "GET /api/v1/metrics: status {} {:?}",
            r.status,
            r.text()
        ));
    }
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("GET /api/v1/metrics: bad JSON: {e}: {:?}", r.text()))?;
    v.get("data")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| format!("GET /api/v1/metrics: no data array in {v}"))
}

fn has_group(groups: &[Value], job: &str) -> bool {
    groups.iter().any(|g| {
        g.get("labels")
            .and_then(|l| l.get("job"))
            .and_then(Value::as_str)
            == Some(job)
            && g.get("labels")
                .and_then(Value::as_object)
                .is_some_and(|l| l.len() == 1)
    })
}

/// Waits until every write sent to `addr` before this call has been applied: the reference
/// queues DELETE, wipe and unchecked pushes and answers before applying them, in FIFO order.
/// Puts a marker group, waits for it to appear, deletes it and waits for it to disappear.
async fn barrier(addr: SocketAddr) -> Result<(), String> {
    let path = format!("/metrics/job/{BARRIER_JOB}");
    let r = support::request(addr, "PUT", &path, &[], b"", REQ_TIMEOUT).await?;
    if !matches!(r.status, 200 | 202 | 400) {
        return Err(format!("barrier PUT: status {} {:?}", r.status, r.text()));
    }
    settle(addr, "the barrier group to appear", |g| {
        has_group(g, BARRIER_JOB)
    })
    .await?;
    let r = support::request(addr, "DELETE", &path, &[], b"", REQ_TIMEOUT).await?;
    if r.status != 202 {
        return Err(format!(
            "barrier DELETE: status {} {:?}",
            r.status,
            r.text()
        ));
    }
    settle(addr, "the barrier group to disappear", |g| {
        !has_group(g, BARRIER_JOB)
    })
    .await
}

/// Polls `/api/v1/metrics` until `ok(groups)`, with a deadline.
async fn settle(addr: SocketAddr, what: &str, ok: impl Fn(&[Value]) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let last = match api_groups(addr).await {
            Ok(g) if ok(&g) => return Ok(()),
            Ok(g) => format!("{} groups", g.len()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{addr}: timed out after {SETTLE_TIMEOUT:?} waiting for {what} (last: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Admin wipe, then wait until `/api/v1/metrics` is empty.
async fn wipe(addr: SocketAddr) -> Result<(), String> {
    let r = support::request(addr, "PUT", "/api/v1/admin/wipe", &[], b"", REQ_TIMEOUT).await?;
    if r.status != 202 {
        return Err(format!("wipe: status {} {:?}", r.status, r.text()));
    }
    settle(addr, "the wiped store to be empty", |g| g.is_empty()).await
}

async fn run_steps(addr: SocketAddr, steps: &[Req]) -> Outcome {
    let mut responses = Vec::with_capacity(steps.len());
    for s in steps {
        let r = if s.is_barrier() {
            barrier(addr).await.map(|()| Response {
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
            })
        } else {
            send(addr, s).await
        };
        responses.push(r);
    }
    let (metrics, api) = match barrier(addr).await {
        Ok(()) => (
            support::get(addr, "/metrics", REQ_TIMEOUT).await,
            support::get(addr, "/api/v1/metrics", REQ_TIMEOUT).await,
        ),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    Outcome {
        responses,
        metrics,
        api,
        addr,
    }
}

// ---------------------------------------------------------------------------------------
// Normalising what we compare.

/// The stable prefix of an error body, if it has one.
fn stable_prefix(body: &str) -> Option<String> {
    if let Some(rest) = body.strip_prefix("text format parsing error in line ") {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return Some(format!("text format parsing error in line {n}:"));
    }
    STABLE_PREFIXES
        .iter()
        .find(|p| body.starts_with(*p))
        .map(|p| p.to_string())
}

fn allow_set(r: &Response) -> Option<Vec<String>> {
    r.header("allow").map(|v| {
        let mut m: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
        m.sort();
        m
    })
}

fn is_push_time_family(name: &str) -> bool {
    name == "push_time_seconds" || name == "push_failure_time_seconds"
}

fn mask_time_value(v: &str) -> &'static str {
    if v == "0" { "0" } else { "T" }
}

/// The pushed part of an exposition: own telemetry dropped, push times masked.
pub fn pushed_part(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (name, lines) in support::families(text) {
        if OWN_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        for l in lines {
            if is_push_time_family(&name)
                && !l.starts_with('#')
                && let Some((series, value)) = l.rsplit_once(' ')
            {
                out.push(format!("{series} {}", mask_time_value(value)));
                continue;
            }
            out.push(l);
        }
    }
    out
}

/// Sort key for an RFC 3339 timestamp with optional nanoseconds.
fn time_key(ts: &str) -> String {
    // 2026-11-21T16:17:15.2042983Z → pad the fraction to 9 digits.
    let (main, zone) = match ts
        .find(['Z', '+'])
        .or_else(|| ts.rfind('-').filter(|&i| i > 10))
    {
        Some(i) => ts.split_at(i),
        None => (ts, ""),
    };
    let (secs, frac) = main.split_once('.').unwrap_or((main, ""));
    format!("{zone}|{secs}.{frac:0<9}")
}

/// A family's `time_stamp` relative to its group's `push_time_seconds` `time_stamp`:
/// `zero` (Go's zero time), `=push`, `<push`, `>push`.
fn mask_time_stamp(ts: &str, push: Option<&str>) -> String {
    if ts.starts_with("0001-") {
        return "zero".into();
    }
    let Some(push) = push else {
        return "T".into();
    };
    if push.starts_with("0001-") {
        return "T(push zero)".into();
    }
    match time_key(ts).cmp(&time_key(push)) {
        std::cmp::Ordering::Less => "<push".into(),
        std::cmp::Ordering::Equal => "=push".into(),
        std::cmp::Ordering::Greater => ">push".into(),
    }
}

/// `/api/v1/metrics` as a map from the group's labels (canonical JSON) to the group with
/// push-time values masked and each `time_stamp` masked to `T` or, with `relations`,
/// replaced by its relation to the group's `push_time_seconds` `time_stamp`.
fn normalize_api(r: &Response, relations: bool) -> Result<BTreeMap<String, Value>, String> {
    let v: Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("bad JSON ({e}): {}", r.text()))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no data array: {v}"))?;
    let mut out = BTreeMap::new();
    for g in data {
        let obj = g
            .as_object()
            .ok_or_else(|| format!("group is not an object: {g}"))?;
        let key = obj
            .get("labels")
            .map(Value::to_string)
            .ok_or_else(|| format!("group without labels: {g}"))?;
        let push = obj
            .get("push_time_seconds")
            .and_then(|f| f.get("time_stamp"))
            .and_then(Value::as_str);
        let mut norm = serde_json::Map::new();
        for (k, fam) in obj {
            let mut fam = fam.clone();
            if let Some(f) = fam.as_object_mut() {
                if let Some(ts) = f.get("time_stamp").and_then(Value::as_str) {
                    let masked = if relations {
                        mask_time_stamp(ts, push)
                    } else {
                        "T".to_string()
                    };
                    f.insert("time_stamp".into(), Value::String(masked));
                }
                if is_push_time_family(k)
                    && let Some(Value::Array(ms)) = f.get_mut("metrics")
                {
                    for m in ms {
                        if let Some(Value::String(val)) = m.get_mut("value") {
                            *val = mask_time_value(val).to_string();
                        }
                    }
                }
            }
            norm.insert(k.clone(), fam);
        }
        if out.insert(key.clone(), Value::Object(norm)).is_some() {
            return Err(format!("two groups with labels {key}"));
        }
    }
    Ok(out)
}

fn short(r: &Result<Response, String>) -> String {
    match r {
        Ok(r) if r.status == 0 => "barrier ok".into(),
        Ok(r) => {
            let t = r.text();
            let t: String = t.chars().take(300).collect();
            format!("{} {:?}", r.status, t)
        }
        Err(e) => format!("ERROR {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Comparing.

fn compare_response(
    req: &Req,
    a: &Result<Response, String>,
    b: &Result<Response, String>,
) -> Option<String> {
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) => return Some(format!("both failed: reference {a}; sut {b}")),
        _ => return Some("one side failed".into()),
    };
    if req.is_barrier() {
        return None;
    }
    if a.status != b.status {
        return Some("status differs".into());
    }
    if a.status >= 400 {
        let pa = stable_prefix(&a.text());
        if pa.is_some() && pa != stable_prefix(&b.text()) {
            return Some(format!("error body prefix differs (expected {pa:?})"));
        }
    }
    if (300..400).contains(&a.status) && a.header("location") != b.header("location") {
        return Some(format!(
            "Location differs: reference {:?}, sut {:?}",
            a.header("location"),
            b.header("location")
        ));
    }
    if (a.status == 405 || req.method == "OPTIONS") && allow_set(a) != allow_set(b) {
        return Some(format!(
            "Allow differs: reference {:?}, sut {:?}",
            a.header("allow"),
            b.header("allow")
        ));
    }
    if a.status == 200 && !a.body.is_empty() {
        for h in ["content-type", "content-encoding"] {
            if a.header(h) != b.header(h) {
                return Some(format!(
                    "{h} differs: reference {:?}, sut {:?}",
                    a.header(h),
                    b.header(h)
                ));
            }
        }
        // Bodies of small fixed endpoints (health, ready) must match exactly.
        if req.method == "GET" && req.path.starts_with("/-/") && a.body != b.body {
            return Some("body differs".into());
        }
    }
    None
}

fn line_diff(a: &[String], b: &[String]) -> String {
    let mut s = String::new();
    let (mut i, mut j) = (0, 0);
    // Simple LCS-free diff: walk both, resync on the next common line.
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            s.push_str(&format!("      {}\n", a[i]));
            i += 1;
            j += 1;
            continue;
        }
        let next_in_b = (i < a.len())
            .then(|| b[j..].iter().position(|l| *l == a[i]))
            .flatten();
        let next_in_a = (j < b.len())
            .then(|| a[i..].iter().position(|l| *l == b[j]))
            .flatten();
        match (next_in_b, next_in_a) {
            (Some(nb), Some(na)) if nb <= na => {
                for l in &b[j..j + nb] {
                    s.push_str(&format!("  sut+ {l}\n"));
                }
                j += nb;
            }
            (_, Some(na)) => {
                for l in &a[i..i + na] {
                    s.push_str(&format!("  ref- {l}\n"));
                }
                i += na;
            }
            (Some(nb), None) => {
                for l in &b[j..j + nb] {
                    s.push_str(&format!("  sut+ {l}\n"));
                }
                j += nb;
            }
            (None, None) => {
                if i < a.len() {
                    s.push_str(&format!("  ref- {}\n", a[i]));
                    i += 1;
                }
                if j < b.len() {
                    s.push_str(&format!("  sut+ {}\n", b[j]));
                    j += 1;
                }
            }
        }
    }
    s
}

/// Compares two outcomes of the same scenario.
fn compare(sc: &Scenario, a: &Outcome, b: &Outcome) -> Comparison {
    let mut out = Vec::new();
    for (i, req) in sc.steps.iter().enumerate() {
        if let Some(why) = compare_response(req, &a.responses[i], &b.responses[i]) {
            out.push(format!("  step #{i}: {why}"));
        }
    }
    match (&a.metrics, &b.metrics) {
        (Ok(ma), Ok(mb)) if ma.status != mb.status => out.push(format!(
            "  final GET /metrics: status differs\n    reference: {}\n    sut:       {}",
            short(&a.metrics),
            short(&b.metrics)
        )),
        (Ok(ma), Ok(mb)) if ma.status == 200 => {
            let (la, lb) = (pushed_part(&ma.text()), pushed_part(&mb.text()));
            if la != lb {
                out.push(format!(
                    "  final GET /metrics: pushed part differs (ref- only in reference, sut+ only in sut):\n{}",
                    line_diff(&la, &lb)
                ));
            }
        }
        (Ok(ma), Ok(mb)) => {
            let (pa, pb) = (stable_prefix(&ma.text()), stable_prefix(&mb.text()));
            if pa != pb {
                out.push(format!(
                    "  final GET /metrics: error prefix differs\n    reference: {}\n    sut:       {}",
                    short(&a.metrics),
                    short(&b.metrics)
                ));
            }
        }
        _ => out.push(format!(
            "  final GET /metrics failed\n    reference: {}\n    sut:       {}",
            short(&a.metrics),
            short(&b.metrics)
        )),
    }
    let mut time_stamps = None;
    match (&a.api, &b.api) {
        (Ok(ra), Ok(rb)) => match (normalize_api(ra, false), normalize_api(rb, false)) {
            (Ok(ga), Ok(gb)) if ga != gb => {
                out.push(format!(
                    "  final GET /api/v1/metrics differs:\n{}",
                    api_diff(&ga, &gb)
                ));
            }
            (Ok(_), Ok(_)) => {
                if let (Ok(ga), Ok(gb)) = (normalize_api(ra, true), normalize_api(rb, true))
                    && ga != gb
                {
                    time_stamps = Some((api_diff(&ga, &gb), time_stamp_kinds(&ga, &gb)));
                }
            }
            (ea, eb) => out.push(format!(
                "  final GET /api/v1/metrics unreadable\n    reference: {:?}\n    sut:       {:?}",
                ea.err(),
                eb.err()
            )),
        },
        _ => out.push(format!(
            "  final GET /api/v1/metrics failed\n    reference: {}\n    sut:       {}",
            short(&a.api),
            short(&b.api)
        )),
    }
    Comparison {
        diffs: out,
        time_stamps,
    }
}

/// What [`compare`] found.
struct Comparison {
    /// Mismatches (each a report paragraph).
    diffs: Vec<String>,
    /// With everything else equal: how the `/api/v1/metrics` `time_stamp`s differ, relative
    /// to each group's push time (the report, and the kinds of difference).
    time_stamps: Option<(String, BTreeSet<String>)>,
}

/// `family: reference <mask> vs sut <mask>` for every family whose `time_stamp` mask
/// differs.
fn time_stamp_kinds(
    ga: &BTreeMap<String, Value>,
    gb: &BTreeMap<String, Value>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, x) in ga {
        let (Some(xo), Some(yo)) = (x.as_object(), gb.get(k).and_then(Value::as_object)) else {
            continue;
        };
        for (f, fx) in xo {
            let tx = fx.get("time_stamp").and_then(Value::as_str);
            let ty = yo
                .get(f)
                .and_then(|fy| fy.get("time_stamp"))
                .and_then(Value::as_str);
            if tx != ty {
                out.insert(format!(
                    "{f}: reference {} vs sut {}",
                    tx.unwrap_or("-"),
                    ty.unwrap_or("-")
                ));
            }
        }
    }
    out
}

/// Group-by-group, family-by-family difference of two normalised `/api/v1/metrics`.
fn api_diff(ga: &BTreeMap<String, Value>, gb: &BTreeMap<String, Value>) -> String {
    let mut s = String::new();
    for k in ga.keys().chain(gb.keys().filter(|k| !ga.contains_key(*k))) {
        match (ga.get(k), gb.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                s.push_str(&format!("    group {k}:\n"));
                if let (Some(xo), Some(yo)) = (x.as_object(), y.as_object()) {
                    for f in xo.keys().chain(yo.keys().filter(|f| !xo.contains_key(*f))) {
                        if xo.get(f) != yo.get(f) {
                            s.push_str(&format!(
                                "      {f}:\n        reference: {}\n        sut:       {}\n",
                                xo.get(f).map_or("(absent)".into(), Value::to_string),
                                yo.get(f).map_or("(absent)".into(), Value::to_string)
                            ));
                        }
                    }
                }
            }
            (Some(_), None) => s.push_str(&format!("    group {k}: only in reference\n")),
            (None, Some(_)) => s.push_str(&format!("    group {k}: only in sut\n")),
            (None, None) => {}
        }
    }
    s
}

/// Checks pgw's outcome of a `Differs` scenario.
fn check_expected(sc: &Scenario, e: &PgwExpect, o: &Outcome) -> Result<(), String> {
    let mut errs = Vec::new();
    let reqs: Vec<(usize, &Req)> = sc
        .steps
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_barrier())
        .collect();
    if reqs.len() != e.statuses.len() {
        errs.push(format!(
            "scenario bug: {} requests but {} expected statuses",
            reqs.len(),
            e.statuses.len()
        ));
    }
    for (k, ((i, req), want)) in reqs.iter().zip(&e.statuses).enumerate() {
        let got = &o.responses[*i];
        match got {
            Ok(r) if r.status == *want => {}
            _ => errs.push(format!(
                "request {k} ({}): expected {want}, got {}",
                req.describe(),
                short(got)
            )),
        }
        for (pi, prefix) in &e.prefixes {
            if *pi == k && !matches!(got, Ok(r) if r.text().starts_with(prefix)) {
                errs.push(format!(
                    "request {k} ({}): expected a body starting with {prefix:?}, got {}",
                    req.describe(),
                    short(got)
                ));
            }
        }
    }
    match &o.metrics {
        Ok(m) if m.status == e.metrics_status => {
            let lines = pushed_part(&m.text());
            let text = m.text();
            for h in &e.has {
                if !lines.iter().any(|l| l == h) {
                    errs.push(format!("final /metrics lacks the line {h:?}"));
                }
            }
            for l in &e.lacks {
                if text.contains(l) {
                    errs.push(format!("final /metrics contains {l:?}"));
                }
            }
            if !e.has.is_empty() || !e.lacks.is_empty() {
                // Only print the pushed part once.
                if errs.iter().any(|x| x.starts_with("final /metrics")) {
                    errs.push(format!(
                        "final /metrics pushed part:\n      {}",
                        lines.join("\n      ")
                    ));
                }
            }
        }
        other => errs.push(format!(
            "final GET /metrics: expected status {}, got {}",
            e.metrics_status,
            short(other)
        )),
    }
    if let Some(f) = e.check
        && let Err(x) = f(o)
    {
        errs.push(x);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n    "))
    }
}

// ---------------------------------------------------------------------------------------
// The test.

struct Pair {
    reference: Proc,
    sut: Proc,
}

async fn start_pair(dir: &std::path::Path, mode: Mode, sut_kind: Kind) -> Pair {
    let mut args = vec!["--web.enable-admin-api"];
    if mode == Mode::Unchecked {
        args.push("--push.disable-consistency-check");
    }
    let tag = match mode {
        Mode::Checked => "checked",
        Mode::Unchecked => "unchecked",
    };
    let reference = Proc::start_server(
        Kind::Reference,
        &format!("reference-{tag}"),
        &dir.join(format!("reference-{tag}")),
        dir,
        &args,
    )
    .await;
    // Extra flags for the system under test only (harness debugging, e.g. give a
    // reference SUT `--push.disable-consistency-check` to see that differences are caught).
    let extra = std::env::var("PGW_DIFF_SUT_EXTRA_ARGS").unwrap_or_default();
    let mut sut_args = args.clone();
    for a in extra.split_whitespace() {
        if !sut_args.contains(&a) {
            sut_args.push(a);
        }
    }
    let sut = Proc::start_server(
        sut_kind,
        &format!("sut-{}-{tag}", sut_kind.name()),
        &dir.join(format!("sut-{tag}")),
        dir,
        &sut_args,
    )
    .await;
    Pair { reference, sut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_reference() {
    // Fail (not skip) when the reference is not installed.
    support::reference_binary();
    let sut_kind = match std::env::var("PGW_DIFF_SUT").as_deref() {
        Ok("reference") => Kind::Reference,
        _ => Kind::Pgw,
    };
    let self_check = sut_kind == Kind::Reference;
    let only = std::env::var("PGW_DIFF_ONLY").ok();
    let verbose = std::env::var("PGW_DIFF_VERBOSE").is_ok_and(|v| v != "0");
    let dump = std::env::var("PGW_DIFF_DUMP").is_ok_and(|v| v != "0");
    let strict_time_stamps = std::env::var("PGW_DIFF_STRICT_TIME_STAMPS").is_ok_and(|v| v != "0");

    let all = scenarios::all();
    {
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "scenario names must be unique");
    }
    let selected: Vec<&Scenario> = all
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| s.name.contains(o)))
        .collect();
    assert!(
        !selected.is_empty(),
        "no scenario matches PGW_DIFF_ONLY={only:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = None;
    let mut unchecked = None;
    if selected.iter().any(|s| s.mode == Mode::Checked) {
        checked = Some(start_pair(dir.path(), Mode::Checked, sut_kind).await);
    }
    if selected.iter().any(|s| s.mode == Mode::Unchecked) {
        unchecked = Some(start_pair(dir.path(), Mode::Unchecked, sut_kind).await);
    }

    let started = Instant::now();
    let mut identical = 0usize;
    let mut intended = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut time_stamp_diffs: Vec<(&str, String)> = Vec::new();
    let mut time_stamp_kinds: BTreeSet<String> = BTreeSet::new();
    for sc in &selected {
        let pair = match sc.mode {
            Mode::Checked => checked.as_mut(),
            Mode::Unchecked => unchecked.as_mut(),
        }
        .expect("pair started for this mode");
        for p in [&mut pair.reference, &mut pair.sut] {
            assert!(
                p.is_running(),
                "{} died before scenario {}; log:\n{}",
                p.name,
                sc.name,
                p.log_tail(4000)
            );
        }
        let (ra, sa) = (pair.reference.addr, pair.sut.addr);
        match &sc.expect {
            Expect::Same => {
                let (wa, wb) = tokio::join!(wipe(ra), wipe(sa));
                if let Err(e) = wa.and(wb) {
                    failures.push(format!("{}: wipe before the scenario failed: {e}", sc.name));
                    continue;
                }
                let (a, b) = tokio::join!(run_steps(ra, &sc.steps), run_steps(sa, &sc.steps));
                let Comparison { diffs, time_stamps } = compare(sc, &a, &b);
                if let Some((t, kinds)) = time_stamps {
                    time_stamp_diffs.push((sc.name, t));
                    time_stamp_kinds.extend(kinds);
                }
                if dump {
                    eprintln!("---- {} [{:?}]", sc.name, sc.mode);
                    for (i, r) in sc.steps.iter().enumerate() {
                        eprintln!(
                            "  #{i} {}\n      reference: {}\n      sut:       {}",
                            r.describe(),
                            short(&a.responses[i]),
                            short(&b.responses[i])
                        );
                    }
                    eprintln!(
                        "  final /metrics: {}",
                        short(&a.metrics).lines().next().unwrap_or("")
                    );
                    for l in a.pushed_lines() {
                        eprintln!("      {l}");
                    }
                }
                if diffs.is_empty() {
                    identical += 1;
                    if verbose {
                        eprintln!("ok     {}", sc.name);
                    }
                } else {
                    if verbose {
                        eprintln!("DIFF   {}", sc.name);
                    }
                    let mut s = format!("{} [{:?}] differs:\n", sc.name, sc.mode);
                    for (i, r) in sc.steps.iter().enumerate() {
                        s.push_str(&format!(
                            "  #{i} {}\n      reference: {}\n      sut:       {}\n",
                            r.describe(),
                            short(&a.responses[i]),
                            short(&b.responses[i])
                        ));
                    }
                    s.push_str(&diffs.join("\n"));
                    failures.push(s);
                }
            }
            Expect::Differs { why, pgw } => {
                intended += 1;
                if self_check && (pgw.wedges_reference || pgw.reference_random) {
                    notes.push(format!("{}: not run against a reference ({why})", sc.name));
                    continue;
                }
                if let Err(e) = wipe(sa).await {
                    failures.push(format!("{}: wipe before the scenario failed: {e}", sc.name));
                    continue;
                }
                let b = run_steps(sa, &sc.steps).await;
                let res = check_expected(sc, pgw, &b);
                match (self_check, res) {
                    (false, Ok(())) => {
                        if verbose {
                            eprintln!("ok     {} (intended difference)", sc.name);
                        }
                    }
                    (false, Err(e)) => failures.push(format!(
                        "{} [{:?}] (intended difference: {why}): pgw does not meet its expectation:\n    {e}",
                        sc.name, sc.mode
                    )),
                    (true, Ok(())) => notes.push(format!(
                        "{}: the reference meets pgw's expectation, so this scenario shows no difference",
                        sc.name
                    )),
                    (true, Err(_)) => {
                        if verbose {
                            eprintln!("ok     {} (difference confirmed on the reference)", sc.name);
                        }
                    }
                }
            }
        }
    }

    println!(
        "diff: {} scenarios, {identical} identical, {intended} intended differences{} ({:.1?})",
        selected.len(),
        if self_check {
            " [self-check: sut is a second reference]"
        } else {
            ""
        },
        started.elapsed()
    );
    for n in &notes {
        println!("note: {n}");
    }
    if !time_stamp_diffs.is_empty() {
        let names: Vec<&str> = time_stamp_diffs.iter().map(|(n, _)| *n).collect();
        let (first, example) = &time_stamp_diffs[0];
        let msg = format!(
            "/api/v1/metrics `time_stamp`s differ (relative to each group's push time; \
             everything else equal) in {} scenarios: {}\n  kinds:\n    {}\n  e.g. {first}:\n{example}",
            names.len(),
            names.join(", "),
            time_stamp_kinds
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        );
        if strict_time_stamps {
            failures.push(msg);
        } else {
            println!("warning: {msg}(set PGW_DIFF_STRICT_TIME_STAMPS=1 to fail on this)");
        }
    }
    if !failures.is_empty() {
        let report = failures.join("\n\n");
        panic!(
            "{} of {} scenarios failed:\n\n{report}\n\ndiff: {} scenarios, {identical} identical, {intended} intended differences, {} failed",
            failures.len(),
            selected.len(),
            selected.len(),
            failures.len()
        );
    }
    drop(checked);
    drop(unchecked);
}
