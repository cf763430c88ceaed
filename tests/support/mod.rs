//! Process harness shared by the end-to-end tests (`diff`, `restart`).
//!
//! Practices (see `reference/test-strategy.md`): every process is ours, tracked by its PID
//! and ended by its PID (never by name); ports are picked on 127.0.0.1 and a child that fails
//! to bind is restarted on a fresh port; every wait polls observable state against a deadline
//! and panics with a message that says what it waited for; a failing test dumps the logs of
//! the processes it started.
//!
//! Included with `#[path = "../support/mod.rs"] mod support;`.

// `unused` rather than `dead_code`: some includers also put `#[allow(dead_code)]` on their
// `mod support;`, and clippy rejects the same attribute twice.
#![allow(
    unused,
    reason = "shared by several test binaries, each of which uses a different subset"
)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The reference Pushgateway (Debian package `prometheus-pushgateway`, version 1.5.1).
pub const REFERENCE_BIN: &str = "/usr/bin/prometheus-pushgateway";

/// How long a server may take from spawn to a 200 on `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns a port on 127.0.0.1 that was free a moment ago. The child may still lose the
/// race for it; [`Proc::start_server`] retries on a fresh port when that happens.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// The `pgw` binary of the same cargo profile as the running test
/// (`target/<profile>/pgw`; tests run from `target/<profile>/deps/`).
pub fn pgw_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps/");
    let bin = profile_dir.join("pgw");
    if !bin.is_file() {
        panic!(
            "the pgw binary is missing at {}: run `cargo build --bin pgw` first \
             (with the same profile as the tests)",
            bin.display()
        );
    }
    bin
}

/// The reference Pushgateway binary. Panics (the test fails, it does not skip) when it is
/// not installed.
pub fn reference_binary() -> PathBuf {
    let p = PathBuf::from(REFERENCE_BIN);
    if !p.is_file() {
        panic!(
            "the reference Pushgateway is missing at {REFERENCE_BIN}: \
             run `apt-get install prometheus-pushgateway` (CI installs it)"
        );
    }
    p
}

/// Which server a [`Proc`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The reference Pushgateway 1.5.1.
    Reference,
    /// Our `pgw` node binary.
    Pgw,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::Pgw => "pgw",
        }
    }
}

/// A child process we started: its PID, log file and HTTP address.
pub struct Proc {
    pub name: String,
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Where the server keeps its state (persistence file or `--storage.path`).
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// Set by [`Proc::keep_log_quiet`]: do not dump the log when dropped while panicking.
    quiet: bool,
    /// Set by [`Proc::pin_port`]: restarts listen on this HTTP port again (a load balancer
    /// in front knows the node by it).
    pinned_port: Option<u16>,
    /// The path polled until it answers 200 after a (re)start: `/-/ready` unless started
    /// with [`Proc::start_server_live`].
    ready_path: &'static str,
}

impl Proc {
    /// Spawns a server of `kind` with its state under `data_dir` (created if missing), logs
    /// to `<log_dir>/<name>.log`, listening on a fresh 127.0.0.1 port, and waits until
    /// `/-/ready` answers 200. `extra_args` are upstream flags such as
    /// `--web.enable-admin-api`.
    pub async fn start_server(
        kind: Kind,
        name: &str,
        data_dir: &Path,
        log_dir: &Path,
        extra_args: &[&str],
    ) -> Proc {
        match Proc::try_start_server(kind, name, data_dir, log_dir, extra_args).await {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Proc::start_server`], but waits only until the HTTP server answers
    /// `/-/healthy`, not until the node is ready: for a node that waits to be added to a
    /// cluster (it has no leader until then).
    pub async fn start_server_live(
        kind: Kind,
        name: &str,
        data_dir: &Path,
        log_dir: &Path,
        extra_args: &[&str],
    ) -> Proc {
        match Proc::try_start_server_at(kind, name, data_dir, log_dir, extra_args, "/-/healthy")
            .await
        {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Proc::start_server`], but an exit before readiness is returned.
    pub async fn try_start_server(
        kind: Kind,
        name: &str,
        data_dir: &Path,
        log_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Proc, StartFailure> {
        Proc::try_start_server_at(kind, name, data_dir, log_dir, extra_args, "/-/ready").await
    }

    async fn try_start_server_at(
        kind: Kind,
        name: &str,
        data_dir: &Path,
        log_dir: &Path,
        extra_args: &[&str],
        ready_path: &'static str,
    ) -> Result<Proc, StartFailure> {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let mut p = Proc {
            name: name.to_string(),
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            log_path: log_dir.join(format!("{name}.log")),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            quiet: false,
            pinned_port: None,
            ready_path,
        };
        p.try_launch().await?;
        Ok(p)
    }

    fn command(&self, port: u16) -> Command {
        let listen = format!("--web.listen-address=127.0.0.1:{port}");
        let mut cmd = match self.kind {
            Kind::Reference => {
                let mut c = Command::new(reference_binary());
                c.arg(format!(
                    "--persistence.file={}",
                    self.data_dir.join("pg.data").display()
                ))
                .arg(listen);
                c
            }
            Kind::Pgw => {
                let mut c = Command::new(pgw_binary());
                c.arg(listen)
                    .arg(format!("--storage.path={}", self.data_dir.display()));
                for a in pgw_extra_args() {
                    c.arg(a);
                }
                // No drain on SIGTERM unless the test asks for one: tests stop nodes often.
                if !self
                    .extra_args
                    .iter()
                    .any(|a| a.starts_with("--web.shutdown-drain"))
                {
                    c.arg("--web.shutdown-drain=0s");
                }
                c
            }
        };
        cmd.args(&self.extra_args);
        cmd
    }

    /// (Re)starts the process on a fresh port, retrying when the child cannot bind it.
    /// Panics if it exits before it becomes ready.
    async fn launch(&mut self) {
        if let Err(e) = self.try_launch().await {
            panic!("{e}");
        }
    }

    /// Like [`Proc::launch`], but an exit before readiness (other than losing the port
    /// race) is returned as an error carrying the exit status and this start's log.
    async fn try_launch(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "{}: already running", self.name);
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let port = self.pinned_port.unwrap_or_else(free_port);
            let log = File::options()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("open log file");
            let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            let mut cmd = self.command(port);
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log fd"))
                .stderr(log);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("{}: spawn {:?}: {e}", self.name, cmd));
            self.child = Some(child);
            self.addr = SocketAddr::from(([127, 0, 0, 1], port));
            match self
                .wait_ready_or_exit(Instant::now() + READY_TIMEOUT)
                .await
            {
                Ok(()) => return Ok(()),
                Err(status) => {
                    self.child = None;
                    let data = std::fs::read(&self.log_path).unwrap_or_default();
                    let log = String::from_utf8_lossy(data.get(log_start..).unwrap_or_default())
                        .into_owned();
                    let bind_failure = log.contains("address already in use")
                        || log.contains("Address already in use")
                        || log.contains("AddrInUse");
                    if bind_failure && attempt < ATTEMPTS {
                        if self.pinned_port.is_some() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        eprintln!(
                            "{}: port {port} was taken ({status}); retrying on a fresh port",
                            self.name
                        );
                        continue;
                    }
                    return Err(StartFailure {
                        name: self.name.clone(),
                        status,
                        log_path: self.log_path.clone(),
                        log,
                    });
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Polls `/-/ready` (or the path given at start) until it answers 200. Returns the exit
    /// status if the child died first; panics (with the log) at the deadline.
    async fn wait_ready_or_exit(
        &mut self,
        deadline: Instant,
    ) -> Result<(), std::process::ExitStatus> {
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(status);
            }
            let last = match get(self.addr, self.ready_path, Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("status {} body {:?}", r.status, r.text()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "{}: {} on {} did not answer 200 within {:?} (last: {last}); log {}:\n{}",
                    self.name,
                    self.ready_path,
                    self.addr,
                    READY_TIMEOUT,
                    self.log_path.display(),
                    self.log_tail(4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The child's PID, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Base URL, e.g. `http://127.0.0.1:43123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL (via `Child::kill`) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM by PID, then wait up to `timeout` for a graceful exit (SIGKILL after that).
    /// Returns the exit status if it exited on its own, `None` if it had to be killed or
    /// was not running.
    pub fn term(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet, so the
        // PID cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the running child by its PID.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Makes every later (re)start listen on the current HTTP port again, as a node behind
    /// a load balancer must (a start that loses the port race retries the same port).
    pub fn pin_port(&mut self) {
        self.pinned_port = Some(self.addr.port());
    }

    /// Starts the process again on the same data directory (on a fresh port, unless pinned)
    /// and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }

    /// Like [`Proc::restart`], but returns an error (exit status and log) instead of
    /// panicking when the process exits before it becomes ready.
    pub async fn try_restart(&mut self) -> Result<(), StartFailure> {
        self.kill9();
        self.try_launch().await
    }

    /// Whether the child still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Do not dump this process's log if the test panics.
    pub fn keep_log_quiet(&mut self) {
        self.quiet = true;
    }

    /// The last `max` bytes of the log.
    pub fn log_tail(&self, max: usize) -> String {
        let data = std::fs::read(&self.log_path).unwrap_or_default();
        let start = data.len().saturating_sub(max);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }
}

/// A process that exited before it became ready.
#[derive(Debug)]
pub struct StartFailure {
    pub name: String,
    pub status: std::process::ExitStatus,
    pub log_path: PathBuf,
    /// What this start wrote to the log.
    pub log: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: exited before it became ready ({}); log {}:\n{}",
            self.name,
            self.status,
            self.log_path.display(),
            self.log
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() && !self.quiet {
            eprintln!(
                "---- log of {} ({}) ----\n{}\n---- end of log ----",
                self.name,
                self.log_path.display(),
                self.log_tail(8000)
            );
        }
    }
}

/// Extra flags for every `pgw` process, from `PGW_TEST_EXTRA_ARGS` (whitespace separated),
/// e.g. to move a listener the harness does not know about.
fn pgw_extra_args() -> Vec<String> {
    std::env::var("PGW_TEST_EXTRA_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Polls `GET <addr>/-/ready` until it answers 200; panics at the deadline with the last
/// answer seen.
pub async fn wait_ready(addr: SocketAddr, deadline: Instant) {
    loop {
        let last = match get(addr, "/-/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 200 => return,
            Ok(r) => format!("status {} body {:?}", r.status, r.text()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("http://{addr}/-/ready did not answer 200 before the deadline (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `probe` until it returns `Some`, or panics at the deadline with `what` and the
/// last diagnostic the probe gave.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client. The differential test needs byte-exact control over the
// request line (`//`, `%2F`, `/../` must reach the server unnormalised), the headers and
// the body, and must not follow redirects or decompress anything.

/// One HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole
/// response. `path` goes verbatim into the request line. Errors (connect, timeout, garbage)
/// are returned as text.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    match tokio::time::timeout(timeout, request_inner(addr, method, path, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no complete response to {method} {path} within {timeout:?}"
        )),
    }
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has_len = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if !has_len && (!body.is_empty() || !matches!(method, "GET" | "HEAD" | "OPTIONS")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write request: {e}"))?;
    let mut raw = Vec::new();
    // A server may close early after answering (e.g. a 400 before reading a large body),
    // which can surface as a reset; keep what was read.
    match stream.read_to_end(&mut raw).await {
        Ok(_) => {}
        Err(e) if !raw.is_empty() => {
            let _ = e;
        }
        Err(e) => return Err(format!("read response: {e}")),
    }
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head_only: bool) -> Result<Response, String> {
    if raw.is_empty() {
        return Err("connection closed without a response".into());
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| format!("header not UTF-8: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(format!("truncated body: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body: missing chunk size line")?;
        let size_str = std::str::from_utf8(&data[..nl]).map_err(|e| e.to_string())?;
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|e| format!("chunk size {size_str:?}: {e}"))?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunked body: truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// `GET path` with no extra headers.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    request(addr, "GET", path, &[], &[], timeout).await
}

// ---------------------------------------------------------------------------------------
// Reading the exposition.

/// The family a line belongs to: the name after `# HELP`/`# TYPE`, else the sample's
/// metric name with a histogram/summary suffix left on (the caller groups consecutive
/// lines, so `x_bucket` lines following `# TYPE x histogram` are matched by prefix).
fn family_of_line(line: &str) -> String {
    if let Some(rest) = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
    {
        return rest.split(' ').next().unwrap_or_default().to_string();
    }
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    line[..end].to_string()
}

/// Runs `test` on a fresh 4-thread runtime, one such test at a time per test binary: each
/// starts several processes, and `cargo test` runs tests on parallel threads.
pub fn run_serial(test: impl std::future::Future<Output = ()>) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(test);
}

/// Waits (up to `timeout`) until every node of `addrs` serves the same `/metrics` body, and
/// returns it: the replicas converged.
pub async fn same_metrics(addrs: &[SocketAddr], timeout: Duration) -> String {
    wait_for("byte-identical /metrics on every node", timeout, || {
        let addrs = addrs.to_vec();
        async move {
            let mut bodies = Vec::new();
            for a in &addrs {
                let r = get(*a, "/metrics", Duration::from_secs(10)).await?;
                if r.status != 200 {
                    return Err(format!("{a}: status {}", r.status));
                }
                bodies.push(r.body);
            }
            if bodies.windows(2).all(|w| w[0] == w[1]) {
                Ok(String::from_utf8_lossy(&bodies[0]).into_owned())
            } else {
                Err("bodies differ".into())
            }
        }
    })
    .await
}

/// PUTs the text `body` to `path`; returns the status.
pub async fn put(addr: SocketAddr, path: &str, body: &str) -> Result<u16, String> {
    request(
        addr,
        "PUT",
        path,
        &[],
        body.as_bytes(),
        Duration::from_secs(20),
    )
    .await
    .map(|r| r.status)
}

/// Groups exposition lines by family (HELP/TYPE start a family; samples whose name is the
/// family name or the family name plus `_bucket`/`_sum`/`_count` belong to it).
pub fn families(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let name = family_of_line(line);
        let belongs = match out.last() {
            Some((fam, _)) => {
                name == *fam
                    || (!line.starts_with('#')
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(fam.as_str())))
            }
            None => false,
        };
        if belongs {
            out.last_mut().expect("non-empty").1.push(line.to_string());
        } else {
            out.push((name, vec![line.to_string()]));
        }
    }
    out
}

/// A static `pgw` cluster of real processes (see [`start_cluster`]).
pub struct PgwCluster {
    /// Data directories and logs.
    pub root: tempfile::TempDir,
    /// The nodes, in id order (node `i` has id `i + 1`).
    pub nodes: Vec<Proc>,
    /// The gRPC port of each node.
    pub grpc_ports: Vec<u16>,
}

/// Starts `n` `pgw` processes forming one cluster with `--cluster.peers` (fixed gRPC ports,
/// fresh HTTP ports), each with `extra_args`, and waits until every one is ready. They start
/// concurrently: a node is ready only once a majority is up.
pub async fn start_cluster(n: usize, extra_args: &[&str]) -> PgwCluster {
    let root = tempfile::TempDir::new().expect("tempdir");
    let grpc_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers = grpc_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<Vec<String>> = (0..n)
        .map(|i| {
            let mut a = vec![
                format!("--cluster.node-id={}", i + 1),
                format!("--cluster.peers={peers}"),
                format!("--cluster.listen-address=127.0.0.1:{}", grpc_ports[i]),
            ];
            a.extend(extra_args.iter().map(|s| s.to_string()));
            a
        })
        .collect();
    let mut starts = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let dir = root.path().join(format!("n{}", i + 1));
        let log_dir = root.path().to_path_buf();
        starts.push(Box::pin(async move {
            Proc::start_server(Kind::Pgw, &format!("node{}", i + 1), &dir, &log_dir, &a).await
        }));
    }
    let nodes = join_all(starts).await;
    PgwCluster {
        root,
        nodes,
        grpc_ports,
    }
}

/// Polls every future to completion concurrently on the current task, keeping their order.
pub async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// A load balancer process we started (Debian's HAProxy or nginx) in front of pgw nodes,
/// listening on `addr`; killed when dropped.
pub struct Balancer {
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    child: Child,
}

impl Drop for Balancer {
    /// SIGTERM (nginx's master then stops its workers; SIGKILL would orphan them), SIGKILL
    /// after 5 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's file `rel` (e.g. `deploy/haproxy/haproxy.cfg`).
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The shipped config `text` with its example node addresses (`10.0.0.N:9091`) replaced by
/// `nodes` and its listen port 9091 replaced by `port` on 127.0.0.1.
fn localise(text: &str, nodes: &[SocketAddr], listen_from: &str, listen_to: &str) -> String {
    let mut out = text.replace(listen_from, listen_to);
    for (i, n) in nodes.iter().enumerate() {
        out = out.replace(&format!("10.0.0.{}:9091", i + 1), &n.to_string());
    }
    assert!(
        !out.contains("10.0.0."),
        "the config names more example nodes than given"
    );
    out
}

impl Balancer {
    /// Starts HAProxy with the repository's `deploy/haproxy/haproxy.cfg`, pointed at `nodes`
    /// (the example addresses replaced), listening on a fresh loopback port; waits until it
    /// accepts connections.
    pub async fn haproxy(nodes: &[SocketAddr], dir: &Path) -> Balancer {
        let text = std::fs::read_to_string(repo_file("deploy/haproxy/haproxy.cfg"))
            .expect("read deploy/haproxy/haproxy.cfg");
        let port = free_port();
        let cfg = localise(
            &text,
            nodes,
            "bind :9091",
            &format!("bind 127.0.0.1:{port}"),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        Balancer::spawn(cmd, port, dir.join("haproxy.log")).await
    }

    /// Starts nginx with the repository's `deploy/nginx/pgw.conf` (in a minimal main config
    /// with its own prefix), pointed at `nodes`, on a fresh loopback port.
    pub async fn nginx(nodes: &[SocketAddr], dir: &Path) -> Balancer {
        let text = std::fs::read_to_string(repo_file("deploy/nginx/pgw.conf"))
            .expect("read deploy/nginx/pgw.conf");
        let port = free_port();
        let site = localise(
            &text,
            nodes,
            "listen 9091;",
            &format!("listen 127.0.0.1:{port};"),
        );
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
        std::fs::write(prefix.join("pgw.conf"), site).expect("write pgw.conf");
        let main = format!(
            "pid {p}/nginx.pid;\nerror_log {p}/logs/error.log notice;\nevents {{}}\nhttp {{\n    \
             access_log off;\n    client_body_temp_path {p}/body;\n    proxy_temp_path {p}/proxy;\n    \
             include {p}/pgw.conf;\n}}\n",
            p = prefix.display()
        );
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, main).expect("write nginx.conf");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg("daemon off;");
        Balancer::spawn(cmd, port, dir.join("nginx.log")).await
    }

    async fn spawn(mut cmd: Command, port: u16, log_path: PathBuf) -> Balancer {
        let log = File::create(&log_path).expect("balancer log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e} (apt-get install haproxy nginx)"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut b = Balancer {
            addr,
            log_path,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!(
                    "the balancer exited with {status}: {}",
                    std::fs::read_to_string(&b.log_path).unwrap_or_default()
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "the balancer did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The Python interpreter of the tests that run Python (`prometheus_client`,
/// `kubernetes-validate`): `PGW_TEST_PYTHON` (tests/run sets it to its virtual environment),
/// else that virtual environment if tests/run created it (`PGW_TEST_VENV`, default
/// `target/test-venv`), else `python3`.
pub fn test_python() -> PathBuf {
    if let Some(p) = std::env::var_os("PGW_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("PGW_TEST_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv"),
        PathBuf::from,
    );
    let py = venv.join("bin/python");
    if py.is_file() {
        py
    } else {
        PathBuf::from("python3")
    }
}

/// A real Prometheus server (Debian package `prometheus`) we started with a config of the
/// test's, on a fresh loopback port, its data under `dir`; killed when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Writes `config` (prometheus.yml) into `dir` and starts `/usr/bin/prometheus` on it.
    pub fn start(dir: &Path, config: &str) -> Prometheus {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(
            bin.exists(),
            "{} is missing: apt-get install prometheus (tests/run installs it)",
            bin.display()
        );
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { addr, child }
    }

    /// An instant query through the HTTP API: the `data.result` array.
    pub async fn query(&self, q: &str) -> Result<serde_json::Value, String> {
        let mut path = String::from("/api/v1/query?query=");
        for b in q.bytes() {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                path.push(b as char);
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
        let r = get(self.addr, &path, Duration::from_secs(5)).await?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(format!("query {q}: {v}"));
        }
        Ok(v["data"]["result"].clone())
    }
}
