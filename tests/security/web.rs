//! The HTTP port: `--web.config.file` (TLS, client certificates, bcrypt basic auth) against
//! the reference Pushgateway 1.5.1 with the same file, pgw's scoped credentials, and
//! connection hygiene (slowloris, idle connections, the fd limit, 429 under a write flood).
//!
//! Certificates are made at test time with the `openssl` CLI, bcrypt hashes with the
//! `bcrypt` crate; requests are made with real `curl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, free_port, pgw_binary, reference_binary, wait_for};

const PASSWORD: &str = "s3cret";

/// A test CA, a server certificate for localhost/127.0.0.1, a client certificate from the
/// CA, and a client certificate from another CA.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "otherca"] {
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=pgw test {ca}"),
            );
            a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            openssl(dir, &a);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write ext");
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("rogue", "otherca", "client.ext"),
        ] {
            let mut a = vec!["req"];
            a.extend(ec);
            let (key, csr, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("/CN={name}"),
            );
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &a);
            let (cacrt, cakey) = (format!("{ca}.crt"), format!("{ca}.key"));
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &cacrt,
                    "-CAkey",
                    &cakey,
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                ],
            );
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn client(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            self.path("client.crt"),
            "--key".into(),
            self.path("client.key"),
        ]
    }

    fn rogue(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            self.path("rogue.crt"),
            "--key".into(),
            self.path("rogue.key"),
        ]
    }
}

/// A bcrypt hash of `pw` (cost 5: fast, and accepted by Go's bcrypt).
fn hash(pw: &str) -> String {
    bcrypt::hash(pw, 5).expect("bcrypt")
}

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reference,
    Pgw,
}

/// A server process we started (killed by PID on drop).
struct Srv {
    kind: Kind,
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {:?} log {}:\n{}",
                self.kind,
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Srv {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Spawns `kind` with `--web.config.file=cfg` (if any) and `extra`, and waits until its port
/// accepts connections. `Err` with the log if it exits first.
async fn start(
    kind: Kind,
    dir: &Path,
    name: &str,
    cfg: Option<&Path>,
    extra: &[&str],
    wrap: Option<&[String]>,
) -> Result<Srv, String> {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let data = dir.join(format!("{name}.data"));
    let (bin, mut args): (PathBuf, Vec<String>) = match kind {
        Kind::Reference => (
            reference_binary(),
            vec![format!("--persistence.file={}", data.display())],
        ),
        Kind::Pgw => (
            pgw_binary(),
            vec![format!("--storage.path={}", data.display())],
        ),
    };
    args.push(format!("--web.listen-address=127.0.0.1:{port}"));
    if let Some(c) = cfg {
        args.push(format!("--web.config.file={}", c.display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(&w[0]);
            c.args(&w[1..]).arg(&bin).args(&args);
            c
        }
        None => {
            let mut c = Command::new(&bin);
            c.args(&args);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone"))
        .stderr(file);
    let child = cmd.spawn().map_err(|e| format!("spawn {bin:?}: {e}"))?;
    let mut srv = Srv {
        kind,
        child,
        port,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = srv.child.try_wait() {
            let log = srv.log_text();
            return Err(format!("{kind:?} exited with {st}: {log}"));
        }
        if TcpStream::connect(srv.addr()).await.is_ok() {
            return Ok(srv);
        }
        if Instant::now() > deadline {
            panic!("{kind:?} did not listen on {} in 30s", srv.addr());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What curl saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// HTTP status, 0 when no response (handshake refused, connection closed).
    code: u16,
    /// The `WWW-Authenticate` header, if any.
    www_authenticate: Option<String>,
}

fn curl(args: &[String]) -> Seen {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let www_authenticate = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("www-authenticate")
            .then(|| v.trim().to_string())
    });
    Seen {
        code,
        www_authenticate,
    }
}

async fn curl_async(args: Vec<String>) -> Seen {
    tokio::task::spawn_blocking(move || curl(&args))
        .await
        .expect("curl task")
}

/// One client behaviour of a differential case: extra curl arguments, and the outcome both
/// servers must show.
struct Case {
    what: &'static str,
    args: Vec<String>,
    path: &'static str,
    https: bool,
    code: u16,
}

fn case(what: &'static str, args: Vec<String>, code: u16) -> Case {
    Case {
        what,
        args,
        path: "/-/healthy",
        https: true,
        code,
    }
}

/// Starts the reference and pgw with the same web config file and checks that each case gets
/// the expected outcome from both (status, `WWW-Authenticate`, handshake refused = 0).
async fn differential(dir: &Path, name: &str, cfg_text: &str, pki: &Pki, cases: Vec<Case>) {
    let cfg = dir.join(format!("{name}.yml"));
    std::fs::write(&cfg, cfg_text).expect("write web config");
    let reference = start(
        Kind::Reference,
        dir,
        &format!("{name}-ref"),
        Some(&cfg),
        &[],
        None,
    )
    .await
    .expect("reference starts");
    let pgw = start(
        Kind::Pgw,
        dir,
        &format!("{name}-pgw"),
        Some(&cfg),
        &[],
        None,
    )
    .await
    .expect("pgw starts");
    for c in cases {
        let mut got = Vec::new();
        for srv in [&reference, &pgw] {
            let scheme = if c.https { "https" } else { "http" };
            let mut args = vec!["--cacert".to_string(), pki.path("ca.crt")];
            args.extend(c.args.iter().cloned());
            args.push(format!("{scheme}://localhost:{}{}", srv.port, c.path));
            got.push(curl_async(args).await);
        }
        assert_eq!(
            got[0], got[1],
            "{name}: {}: reference (left) and pgw (right) differ",
            c.what
        );
        assert_eq!(
            got[1].code, c.code,
            "{name}: {}: expected status {} (0 = refused), got {:?}",
            c.what, c.code, got[1]
        );
        if c.code == 401 {
            assert_eq!(
                got[1].www_authenticate.as_deref(),
                Some("Basic"),
                "{name}: {}",
                c.what
            );
        }
    }
}

fn user(u: &str, p: &str) -> Vec<String> {
    vec!["-u".into(), format!("{u}:{p}")]
}

/// TLS with bcrypt basic auth answers as the reference: 401 with `WWW-Authenticate: Basic`
/// without, with wrong, or with unknown credentials; 200 with the right ones; Go's 400 to
/// plain HTTP on the TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_match_the_reference() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let cfg = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
         http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
         basic_auth_users:\n  alice: {}\n  bob: {}\n",
        hash(PASSWORD),
        hash("other")
    );
    let mut plain = case("plain HTTP to the TLS port", user("alice", PASSWORD), 400);
    plain.https = false;
    differential(
        tmp.path(),
        "auth",
        &cfg,
        &pki,
        vec![
            case("no credentials", vec![], 401),
            case("wrong password", user("alice", "wrong"), 401),
            case("another user's password", user("bob", PASSWORD), 401),
            case("unknown user", user("mallory", PASSWORD), 401),
            case("right credentials", user("alice", PASSWORD), 200),
            case(
                "right credentials over HTTP/1.1",
                {
                    let mut a = user("bob", "other");
                    a.push("--http1.1".into());
                    a
                },
                200,
            ),
            plain,
        ],
    )
    .await;
}

/// The five client-auth types give the reference's handshake outcomes with no client
/// certificate, one from the CA, and one from another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_match_the_reference() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    for (auth, ca, none, good, rogue) in [
        ("NoClientCert", false, 200, 200, 200),
        ("RequestClientCert", false, 200, 200, 200),
        ("RequireAnyClientCert", false, 0, 200, 200),
        ("VerifyClientCertIfGiven", true, 200, 200, 0),
        ("RequireAndVerifyClientCert", true, 0, 200, 0),
    ] {
        let mut cfg = format!("{tls}  client_auth_type: {auth}\n");
        if ca {
            cfg.push_str("  client_ca_file: ca.crt\n");
        }
        differential(
            tmp.path(),
            auth,
            &cfg,
            &pki,
            vec![
                case("no client certificate", vec![], none),
                case("client certificate from the CA", pki.client(), good),
                case("client certificate from another CA", pki.rogue(), rogue),
            ],
        )
        .await;
    }
}

/// `min_version`/`max_version` give the reference's outcomes for TLS 1.2 and 1.3 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_match_the_reference() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let tls12 = || vec!["--tlsv1.2".to_string(), "--tls-max".into(), "1.2".into()];
    let tls13 = || vec!["--tlsv1.3".to_string()];
    for (name, extra, v12, v13) in [
        ("default", "", 200, 200),
        ("min13", "  min_version: TLS13\n", 0, 200),
        ("max12", "  max_version: TLS12\n", 200, 0),
        (
            "ciphers",
            "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [CurveP256]\n",
            200,
            0,
        ),
    ] {
        differential(
            tmp.path(),
            name,
            &format!("{tls}{extra}"),
            &pki,
            vec![
                case("a TLS 1.2 client", tls12(), v12),
                case("a TLS 1.3 client", tls13(), v13),
            ],
        )
        .await;
    }
}

/// A bad web config file stops both servers before they serve anything; pgw exits non-zero
/// with a message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_web_config_files_refuse_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _pki = Pki::new(tmp.path());
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    for (name, text, field) in [
        (
            "unknown-field",
            "tls_server_config:\n  cert_fil: server.crt\n".to_string(),
            "cert_fil",
        ),
        (
            "min-version",
            format!("{tls}  min_version: TLS14\n"),
            "min_version",
        ),
        (
            "client-auth",
            format!("{tls}  client_auth_type: Maybe\n"),
            "client_auth_type",
        ),
        (
            "missing-key",
            "tls_server_config:\n  cert_file: server.crt\n".to_string(),
            "key_file",
        ),
        (
            "missing-cert-file",
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n".to_string(),
            "cert_file",
        ),
        (
            "not-bcrypt",
            "basic_auth_users:\n  alice: plaintext\n".to_string(),
            "basic_auth_users",
        ),
        (
            "ca-without-auth",
            format!("{tls}  client_ca_file: ca.crt\n"),
            "Client CA",
        ),
        (
            "header",
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".to_string(),
            "X-Frame-Options",
        ),
        (
            "cipher",
            format!("{tls}  cipher_suites: [TLS_NOPE]\n"),
            "cipher_suites",
        ),
    ] {
        let cfg = tmp.path().join(format!("{name}.yml"));
        std::fs::write(&cfg, &text).expect("write");
        for kind in [Kind::Reference, Kind::Pgw] {
            // The reference logs "Listening on" and then stops serving; pgw does not listen.
            let port_gone = async |srv: &mut Srv| {
                wait_for("the server to stop", Duration::from_secs(10), || {
                    let exited = matches!(srv.child.try_wait(), Ok(Some(_)));
                    let addr = srv.addr();
                    async move {
                        if exited || TcpStream::connect(addr).await.is_err() {
                            Ok(())
                        } else {
                            Err("still listening".to_string())
                        }
                    }
                })
                .await
            };
            match start(
                kind,
                tmp.path(),
                &format!("{name}-{kind:?}"),
                Some(&cfg),
                &[],
                None,
            )
            .await
            {
                Err(log) => {
                    if kind == Kind::Pgw {
                        assert!(
                            log.contains(field),
                            "{name}: pgw's message must name {field:?}: {log}"
                        );
                        assert!(!log.contains("exited with exit status: 0"), "{name}: {log}");
                    }
                }
                Ok(mut srv) => {
                    assert_eq!(
                        kind,
                        Kind::Reference,
                        "{name}: pgw started with a bad file: {}",
                        srv.log_text()
                    );
                    port_gone(&mut srv).await;
                }
            }
        }
    }
}

/// pgw's own `pgw_authorization`: read-only users may only GET; push users only push to
/// their jobs (so one team cannot overwrite another's groups); admins may do everything
/// (wipe included); a refused request is 403 with a message and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_credentials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let h = hash(PASSWORD);
    let cfg = tmp.path().join("scopes.yml");
    std::fs::write(
        &cfg,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  admin: {h}\n  teama: {h}\n  reader: {h}\n  nobody: {h}\n\
             pgw_authorization:\n  users:\n    admin: {{scope: admin}}\n    teama: {{scope: push, jobs: 'team_a(_.*)?'}}\n    reader: {{scope: read}}\n"
        ),
    )
    .expect("write");
    let srv = start(
        Kind::Pgw,
        tmp.path(),
        "scopes",
        Some(&cfg),
        &["--web.enable-admin-api"],
        None,
    )
    .await
    .expect("pgw starts");
    let url = |p: &str| format!("https://localhost:{}{p}", srv.port);
    let req = |who: &str, method: &str, path: &str| {
        let mut a = vec![
            "--cacert".to_string(),
            pki.path("ca.crt"),
            "-X".into(),
            method.into(),
        ];
        a.extend(user(who, PASSWORD));
        if method != "GET" && method != "DELETE" {
            a.extend(["--data-binary".into(), "m 1\n".into()]);
        }
        a.push(url(path));
        curl_async(a)
    };
    // The node needs a leader before writes: wait for the admin's push to land.
    wait_for(
        "an admin push to succeed",
        Duration::from_secs(30),
        || async {
            let s = req("admin", "PUT", "/metrics/job/admin_job").await;
            if s.code == 200 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    for (who, method, path, code) in [
        ("teama", "PUT", "/metrics/job/team_a", 200),
        ("teama", "POST", "/metrics/job/team_a_x/instance/i", 200),
        ("teama", "PUT", "/metrics/job/team_b", 403),
        ("teama", "PUT", "/metrics/job/admin_job", 403),
        ("teama", "DELETE", "/metrics/job/admin_job", 403),
        ("teama", "PUT", "/metrics/job@base64/dGVhbV9i", 403),
        ("teama", "PUT", "/metrics/job@base64/dGVhbV9h", 200),
        ("teama", "DELETE", "/metrics/job/team_a_x/instance/i", 202),
        ("teama", "PUT", "/api/v1/admin/wipe", 403),
        ("teama", "GET", "/metrics", 200),
        ("reader", "GET", "/metrics", 200),
        ("reader", "GET", "/api/v1/metrics", 200),
        ("reader", "PUT", "/metrics/job/team_a", 403),
        ("reader", "DELETE", "/metrics/job/admin_job", 403),
        ("nobody", "GET", "/metrics", 403),
        ("mallory", "GET", "/metrics", 401),
        ("admin", "PUT", "/metrics/job/team_b", 200),
    ] {
        let s = req(who, method, path).await;
        assert_eq!(s.code, code, "{who} {method} {path}: {s:?}");
    }
    let mut a = vec!["--cacert".to_string(), pki.path("ca.crt"), "-s".into()];
    a.extend(user("reader", PASSWORD));
    a.push(url("/metrics"));
    let out = Command::new("curl").args(&a).output().expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    for job in ["admin_job", "team_a", "team_b"] {
        assert!(
            body.contains(&format!("job=\"{job}\"")),
            "group {job} missing:\n{body}"
        );
    }
    assert!(
        !body.contains("team_a_x"),
        "deleted group still there:\n{body}"
    );
    assert!(
        body.contains("pgw_http_forbidden_total 8"),
        "403s counted:\n{body}"
    );
    let s = req("admin", "PUT", "/api/v1/admin/wipe").await;
    assert_eq!(s.code, 202, "admin wipes: {s:?}");
}

/// How a held connection behaves.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// Connects and sends nothing.
    Idle,
    /// Sends part of a request head, then one more byte a second (slowloris).
    PartialHead,
    /// Sends a whole head announcing a body, then one body byte a second.
    SlowBody,
    /// One complete request, then keeps the connection open and silent.
    KeepAlive,
}

/// Holds a connection the way `how` says until the server closes it; returns how long that
/// took and what the server sent.
async fn hold(addr: SocketAddr, how: Hold, limit: Duration) -> Result<(Duration, String), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    let head: &[u8] = match how {
        Hold::Idle => b"",
        Hold::PartialHead => b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Hold::SlowBody => {
            b"PUT /metrics/job/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nm"
        }
        Hold::KeepAlive => b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    s.write_all(head).await.map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ok((start.elapsed(), String::from_utf8_lossy(&got).into_owned()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                if start.elapsed() > limit {
                    return Err(format!("{how:?}: still open after {limit:?}"));
                }
                if matches!(how, Hold::PartialHead | Hold::SlowBody)
                    && s.write_all(b"1").await.is_err()
                {
                    return Ok((start.elapsed(), String::from_utf8_lossy(&got).into_owned()));
                }
            }
        }
    }
}

/// With the default timeouts, 500 idle, half-sent (slowloris head, 1 byte/s body) and
/// silent keep-alive connections are all closed by the server within 40 s, the stalled body
/// answered 408, while a push from another client still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_connections_are_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = start(Kind::Pgw, tmp.path(), "slow", None, &[], None)
        .await
        .expect("pgw starts");
    let addr = srv.addr();
    wait_for(
        "the node to accept a push",
        Duration::from_secs(30),
        || async {
            match support::put(addr, "/metrics/job/before", "m 1\n").await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let limit = Duration::from_secs(40);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let how = match i % 4 {
            0 => Hold::Idle,
            1 => Hold::PartialHead,
            2 => Hold::SlowBody,
            _ => Hold::KeepAlive,
        };
        tasks.push((how, tokio::spawn(hold(addr, how, limit))));
    }
    // While those are held, a push still works.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        support::put(addr, "/metrics/job/during", "m 2\n").await,
        Ok(200),
        "a push while 500 slow connections are open"
    );
    for (how, t) in tasks {
        let (took, got) = t.await.expect("task").unwrap_or_else(|e| panic!("{e}"));
        assert!(took < limit, "{how:?} took {took:?}");
        if matches!(how, Hold::SlowBody) {
            assert!(
                got.starts_with("HTTP/1.1 408"),
                "a stalled body gets 408, got {got:?}"
            );
        }
    }
    let r = support::get(addr, "/metrics", Duration::from_secs(10))
        .await
        .expect("scrape");
    let text = r.text();
    assert!(text.contains("job=\"during\""), "{text}");
    assert!(text.contains("pgw_http_body_timeouts_total 125"), "{text}");
}

fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    (
        f.next().unwrap_or_default().to_string(),
        f.next().unwrap_or_default().to_string(),
    )
}

/// A node started with a soft fd limit of 1024 (below its hard limit) runs with the hard
/// limit, and says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_fd_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = nofile(std::process::id());
    let hard_n: u64 = hard.parse().unwrap_or(u64::MAX);
    assert!(
        hard_n > 1024,
        "this test needs a hard RLIMIT_NOFILE above 1024, have {hard}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let wrap = vec![
        "prlimit".to_string(),
        format!("--nofile=1024:{hard}"),
        "--".to_string(),
    ];
    let srv = start(Kind::Pgw, tmp.path(), "fd", None, &[], Some(&wrap))
        .await
        .expect("pgw starts under prlimit");
    let pid = srv.child.id();
    wait_for(
        "pgw to log the raised limit",
        Duration::from_secs(10),
        || async {
            let log = srv.log_text();
            if log.contains("raised the soft open file limit") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    let (soft, hard2) = nofile(pid);
    assert_eq!(
        (soft.as_str(), hard2.as_str()),
        (hard.as_str(), hard.as_str()),
        "pgw's limits"
    );
    assert!(
        srv.log_text().contains("raised the soft open file limit"),
        "{}",
        srv.log_text()
    );
}

/// Beyond `--push.max-pending-writes` a push is answered 429 with `Retry-After`, never
/// queued without bound; every other push succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_flood_gets_429_with_retry_after() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = start(
        Kind::Pgw,
        tmp.path(),
        "flood",
        None,
        &["--push.max-pending-writes=2"],
        None,
    )
    .await
    .expect("pgw starts");
    let addr = srv.addr();
    wait_for(
        "the node to accept a push",
        Duration::from_secs(30),
        || async {
            match support::put(addr, "/metrics/job/warm", "m 1\n").await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let body = format!("m {i}\n");
            support::request(
                addr,
                "PUT",
                &format!("/metrics/job/flood{i}"),
                &[],
                body.as_bytes(),
                Duration::from_secs(30),
            )
            .await
        }));
    }
    let (mut ok, mut throttled) = (0, 0);
    for t in tasks {
        let r = t.await.expect("task").expect("response");
        match r.status {
            200 => ok += 1,
            429 => {
                throttled += 1;
                assert_eq!(
                    r.header("retry-after"),
                    Some("1"),
                    "429 carries Retry-After"
                );
                assert!(
                    r.text().contains("--push.max-pending-writes"),
                    "{}",
                    r.text()
                );
            }
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    assert!(
        throttled > 0,
        "no 429 among 200 concurrent pushes with a bound of 2 ({ok} ok)"
    );
    assert!(ok > 0, "no push succeeded");
    let r = support::get(addr, "/metrics", Duration::from_secs(10))
        .await
        .expect("scrape");
    assert!(
        r.text()
            .contains(&format!("pgw_http_writes_throttled_total {throttled}")),
        "{}",
        r.text()
    );
}

/// `pgwctl` (next to `pgw`).
fn pgwctl(args: &[String], env: &[(&str, &str)]) -> (i32, String, String) {
    let bin = pgw_binary().with_file_name("pgwctl");
    assert!(
        bin.is_file(),
        "build pgwctl first: cargo build --bin pgwctl"
    );
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .env_remove("PGWCTL_USER")
        .env_remove("PGWCTL_CACERT")
        .env_remove("PGWCTL_CERT")
        .env_remove("PGWCTL_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pgwctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// pgwctl's HTTP commands speak https with `--cacert`, a client certificate (`--cert`,
/// `--key`) and basic auth (`--user` or `PGWCTL_USER`); without them they fail with a
/// message that says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwctl_over_https_with_basic_auth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let cfg = tmp.path().join("ctl.yml");
    std::fs::write(
        &cfg,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
             basic_auth_users:\n  alice: {}\n",
            hash(PASSWORD)
        ),
    )
    .expect("write");
    let srv = start(Kind::Pgw, tmp.path(), "ctl", Some(&cfg), &[], None)
        .await
        .expect("pgw starts");
    let mut push = vec!["--cacert".to_string(), pki.path("ca.crt")];
    push.extend(pki.client());
    push.extend(user("alice", PASSWORD));
    push.extend([
        "-X".into(),
        "PUT".into(),
        "--data-binary".into(),
        "m 1\n".into(),
    ]);
    push.push(format!(
        "https://localhost:{}/metrics/job/ctl/instance/a",
        srv.port
    ));
    wait_for(
        "a push over mTLS with basic auth",
        Duration::from_secs(30),
        || {
            let push = push.clone();
            async move {
                let s = curl_async(push).await;
                if s.code == 200 {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            }
        },
    )
    .await;
    let http = format!("localhost:{}", srv.port);
    let tls_args = |with_cert: bool| {
        let mut a = vec![
            "--http".to_string(),
            http.clone(),
            "--cacert".into(),
            pki.path("ca.crt"),
        ];
        if with_cert {
            a.extend(pki.client());
        }
        a
    };
    let groups = |extra: Vec<String>| {
        let mut a = vec!["groups".to_string(), "-o".into(), "json".into()];
        a.extend(extra);
        a
    };
    // Everything given: the group is listed.
    let mut a = groups(tls_args(true));
    a.extend(["--user".into(), format!("alice:{PASSWORD}")]);
    let (code, out, err) = pgwctl(&a, &[]);
    assert_eq!(code, 0, "pgwctl groups: {out} {err}");
    assert!(out.contains("\"ctl\""), "{out}");
    // Credentials from the environment.
    let (code, out, err) = pgwctl(
        &groups(tls_args(true)),
        &[("PGWCTL_USER", &format!("alice:{PASSWORD}"))],
    );
    assert_eq!(code, 0, "PGWCTL_USER: {out} {err}");
    // No credentials: 401, and the message says how to give them.
    let (code, _, err) = pgwctl(&groups(tls_args(true)), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401") && err.contains("--user"), "{err}");
    // Wrong password.
    let mut a = groups(tls_args(true));
    a.extend(["--user".into(), "alice:wrong".into()]);
    let (code, _, err) = pgwctl(&a, &[]);
    assert!(code != 0 && err.contains("401"), "{err}");
    // No client certificate: the handshake is refused.
    let mut a = groups(tls_args(false));
    a.extend(["--user".into(), format!("alice:{PASSWORD}")]);
    let (code, _, err) = pgwctl(&a, &[]);
    assert_ne!(code, 0, "no client certificate must fail: {err}");
    // Delete through pgwctl, then the group is gone.
    let mut a = vec!["delete".to_string(), "job=ctl".into(), "instance=a".into()];
    a.extend(tls_args(true));
    let (code, out, err) = pgwctl(&a, &[("PGWCTL_USER", &format!("alice:{PASSWORD}"))]);
    assert_eq!(code, 0, "pgwctl delete: {out} {err}");
    let (code, out, err) = pgwctl(
        &groups(tls_args(true)),
        &[("PGWCTL_USER", &format!("alice:{PASSWORD}"))],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("\"ctl\""),
        "deleted group still listed: {out}"
    );
}

/// Pushes one gauge with the real Python `prometheus_client` and its `basic_auth_handler`
/// over https (the CA given by `SSL_CERT_FILE`). Returns success and stderr.
fn python_push(gateway: &str, ca: &str, user: &str, password: &str) -> (bool, String) {
    const SCRIPT: &str = r#"
import sys
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import basic_auth_handler, push_to_gateway
gateway, user, password = sys.argv[1:4]
def handler(url, method, timeout, headers, data):
    return basic_auth_handler(url, method, timeout, headers, data, user, password)
reg = CollectorRegistry()
Gauge("batch_last_success", "Last success of the batch job.", registry=reg).set(42)
push_to_gateway(gateway, job="nightly", registry=reg, grouping_key={"instance": "db-1"}, handler=handler)
"#;
    let py =
        std::env::var_os("PGW_TEST_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let out = Command::new(py)
        .args(["-c", SCRIPT, gateway, user, password])
        .env("SSL_CERT_FILE", ca)
        .output()
        .expect("run python3 (pip install -r tests/requirements.txt)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Query Prometheus' HTTP API (plain HTTP on loopback).
async fn prom_query(prom: SocketAddr, q: &str) -> Result<serde_json::Value, String> {
    let mut path = String::from("/api/v1/query?query=");
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let r = support::get(prom, &path, Duration::from_secs(5)).await?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("query {q}: {v}"));
    }
    Ok(v["data"]["result"].clone())
}

/// The real Python `prometheus_client` pushes over https with basic auth (and is refused
/// with a wrong password), and a real Prometheus scrapes the node over TLS with basic auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_and_prometheus_over_tls_with_basic_auth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let cfg = tmp.path().join("tls.yml");
    std::fs::write(
        &cfg,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  alice: {}\n",
            hash(PASSWORD)
        ),
    )
    .expect("write");
    let srv = start(Kind::Pgw, tmp.path(), "tls", Some(&cfg), &[], None)
        .await
        .expect("pgw starts");
    let gateway = format!("https://localhost:{}", srv.port);
    let ca = pki.path("ca.crt");
    let (ok, err) = python_push(&gateway, &ca, "alice", "wrong");
    assert!(
        !ok && err.contains("401"),
        "a wrong password must be refused: {err}"
    );
    wait_for(
        "prometheus_client to push over https",
        Duration::from_secs(30),
        || {
            let (gateway, ca) = (gateway.clone(), ca.clone());
            async move {
                let (ok, err) = tokio::task::spawn_blocking(move || {
                    python_push(&gateway, &ca, "alice", PASSWORD)
                })
                .await
                .expect("task");
                if ok { Ok(()) } else { Err(err) }
            }
        },
    )
    .await;

    let prom_cfg = tmp.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pgw\n    honor_labels: true\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: alice\n      password: {PASSWORD}\n    static_configs:\n      - targets: ['localhost:{}']\n",
            srv.port
        ),
    )
    .expect("write");
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).expect("log");
    let bin = PathBuf::from("/usr/bin/prometheus");
    assert!(bin.is_file(), "apt-get install prometheus (CI does)");
    let mut child = Command::new(bin)
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        wait_for(
            "Prometheus to scrape the pushed gauge over TLS",
            Duration::from_secs(60),
            || async move {
                let r = prom_query(prom, "batch_last_success").await?;
                if r.as_array().map_or(0, Vec::len) == 1 {
                    Ok(r)
                } else {
                    Err(format!("{r}"))
                }
            },
        ),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let r = r.unwrap_or_else(|_| {
        panic!(
            "prometheus: {}",
            std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default()
        )
    });
    assert_eq!(r[0]["metric"]["job"], "nightly", "{r}");
    assert_eq!(r[0]["metric"]["instance"], "db-1", "{r}");
    assert_eq!(r[0]["value"][1], "42", "{r}");
}

/// Scrapes `/metrics` and returns the value of a self-metric sample line `name`.
async fn self_metric(addr: SocketAddr, name: &str) -> Result<f64, String> {
    let r = support::get(addr, "/metrics", Duration::from_secs(10)).await?;
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{name} not in /metrics"))
}

/// With `--web.max-connections` open, one more connection is closed at once and counted;
/// once they are gone the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_are_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = start(
        Kind::Pgw,
        tmp.path(),
        "bound",
        None,
        &["--web.max-connections=5"],
        None,
    )
    .await
    .expect("pgw starts");
    let addr = srv.addr();
    // The accept loop runs once the node has started: wait for it, and for the probe's
    // connection to be gone.
    wait_for(
        "the node to serve",
        Duration::from_secs(30),
        || async move { self_metric(addr, "pgw_http_connections_open").await },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Wait until the server has taken all five (the gauge counts them).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the sixth connection must be closed at once, not held");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the sixth connection was served: {n:?}"
    );
    drop(held);
    let rejected = wait_for(
        "the node to serve again",
        Duration::from_secs(10),
        || async move { self_metric(addr, "pgw_http_connections_rejected_total").await },
    )
    .await;
    assert!(rejected >= 1.0, "rejections counted: {rejected}");
}

/// Out of file descriptors (`EMFILE`, a hard limit of 128 the node cannot raise), accepting
/// fails: the node retries with backoff, counts the errors, stays up, and serves again once
/// connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_are_retried_not_fatal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wrap = vec![
        "prlimit".to_string(),
        "--nofile=128:128".into(),
        "--".into(),
    ];
    let mut srv = start(Kind::Pgw, tmp.path(), "emfile", None, &[], Some(&wrap))
        .await
        .expect("pgw starts under prlimit");
    let addr = srv.addr();
    wait_for(
        "the node to answer",
        Duration::from_secs(30),
        || async move { self_metric(addr, "pgw_http_accept_errors_total").await },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
        {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    let errors = wait_for(
        "the node to serve again",
        Duration::from_secs(30),
        || async move { self_metric(addr, "pgw_http_accept_errors_total").await },
    )
    .await;
    assert!(errors >= 1.0, "accept errors counted: {errors}");
    assert!(
        matches!(srv.child.try_wait(), Ok(None)),
        "the node must stay up"
    );
    assert!(
        srv.log_text()
            .contains("accepting an HTTP connection failed"),
        "{}",
        srv.log_text()
    );
}
