//! Mutual TLS and roles on the cluster (gRPC) port (issue 10, requirements 1 and 2).
//!
//! Certificates are made at test time with the `openssl` CLI: a cluster CA, peer
//! certificates named `node1`…`node4`, an admin certificate named `admin`, and a second CA
//! whose "admin" certificate must not be trusted. Real `pgw` and `pgwctl` processes on
//! loopback, except the reload test, which drives `pgw_raft::Node`s in process (the SIGHUP
//! handler that calls the same reload lives in the binary's signal wiring).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgw_raft::{Bootstrap, Node, NodeConfig};

use crate::support::{
    self, Kind, Proc, free_port, get, join_all, put, run_serial as run, same_metrics, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Certificates

/// A directory of PEM files made with the openssl CLI.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run openssl {args:?} (is openssl installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::TempDir::new().expect("tempdir"),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// A self-signed CA `<name>.crt`/`<name>.key`.
    fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
    }

    /// A certificate for `name` (CN and DNS SAN) signed by `ca`, with the extended key
    /// usages `eku`, written to `<file>.crt`/`<file>.key` (a new key every time).
    fn issue(&self, ca: &str, name: &str, eku: &str, file: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{file}.key"),
                "-out",
                &format!("{file}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(
            self.path(&format!("{file}.ext")),
            format!("subjectAltName=DNS:{name}\nextendedKeyUsage={eku}\n"),
        )
        .expect("write extensions");
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{file}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{file}.crt"),
                "-days",
                "1",
                "-extfile",
                &format!("{file}.ext"),
            ],
        );
    }

    /// A peer certificate (server and client use) for `name`.
    fn peer(&self, ca: &str, name: &str) {
        self.issue(ca, name, "serverAuth,clientAuth", name);
    }

    /// The DER of the first certificate of `file`.
    fn der(&self, file: &str) -> Vec<u8> {
        pgw_tls::load_certs(&self.path(file), file).expect("certificate")[0].to_vec()
    }

    /// The `--cluster.tls.*` flags of node `name`.
    fn node_flags(&self, name: &str, peers: &str, admins: &str) -> Vec<String> {
        vec![
            format!(
                "--cluster.tls.cert-file={}",
                self.arg(&format!("{name}.crt"))
            ),
            format!(
                "--cluster.tls.key-file={}",
                self.arg(&format!("{name}.key"))
            ),
            format!("--cluster.tls.ca-file={}", self.arg("ca.crt")),
            format!("--cluster.tls.peer-names={peers}"),
            format!("--cluster.tls.admin-names={admins}"),
        ]
    }

    /// pgwctl's `--cacert/--cert/--key` for certificate `file` (no client certificate for
    /// `None`).
    fn ctl_flags(&self, ca: &str, file: Option<&str>) -> Vec<String> {
        let mut v = vec![format!("--cacert={}", self.arg(&format!("{ca}.crt")))];
        if let Some(f) = file {
            v.push(format!("--cert={}", self.arg(&format!("{f}.crt"))));
            v.push(format!("--key={}", self.arg(&format!("{f}.key"))));
        }
        v
    }
}

// ---------------------------------------------------------------------------------------
// pgwctl

fn pgwctl_binary() -> PathBuf {
    let bin = support::pgw_binary().with_file_name("pgwctl");
    assert!(
        bin.is_file(),
        "the pgwctl binary is missing at {}: run `cargo build --bin pgwctl` first",
        bin.display()
    );
    bin
}

#[derive(Debug)]
struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `pgwctl --endpoint <endpoint> --timeout 5s <args>` (bounded: pgwctl's own timeout).
async fn ctl(endpoint: &str, args: &[String]) -> Ctl {
    let bin = pgwctl_binary();
    let mut all = vec![format!("--endpoint={endpoint}"), "--timeout=5s".to_string()];
    all.extend(args.iter().cloned());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&bin)
            .args(&all)
            .env_remove("PGWCTL_ENDPOINTS")
            .env_remove("PGWCTL_CACERT")
            .env_remove("PGWCTL_CERT")
            .env_remove("PGWCTL_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run pgwctl {all:?}: {e}"));
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("pgwctl runner")
}

fn args(parts: &[&[String]], rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

/// The value of `pgw_cluster_refused_requests_total{reason="<reason>"}` in a self-metrics
/// body.
fn refused(body: &str, reason: &str) -> f64 {
    let prefix = format!("pgw_cluster_refused_requests_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} in the self-metrics:\n{body}"))
}

/// A tonic channel to the cluster port over TLS with `identity` (cert, key files) trusted by
/// `ca`.
async fn tls_channel(
    pki: &Pki,
    ca: &str,
    identity: Option<&str>,
    port: u16,
) -> Result<tonic::transport::Channel, String> {
    let roots = pgw_tls::load_roots(&pki.path(&format!("{ca}.crt")), "ca").expect("ca");
    let identity = identity.map(|f| {
        (
            pgw_tls::load_certs(&pki.path(&format!("{f}.crt")), "cert").expect("cert"),
            pgw_tls::load_key(&pki.path(&format!("{f}.key")), "key").expect("key"),
        )
    });
    let config = pgw_tls::client_config(roots, identity, None).expect("client config");
    let connector = pgw_tls::Connector::fixed(config, Duration::from_secs(5));
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("{e:?}"))
}

// ---------------------------------------------------------------------------------------
// Tests

/// Three nodes with peer and admin names form a cluster over mutual TLS and replicate a
/// push; a fourth joins with its peer certificate (`AddLearner` from a peer). Plaintext gRPC
/// and a certificate from another CA are refused; `pgwctl status` and `backup` work with the
/// admin certificate only (the peer certificate is refused when both lists are set); every
/// refusal changes nothing and is counted by reason.
#[test]
fn mtls_cluster_roles_and_refusals() {
    run(async {
        let pki = Pki::new();
        pki.ca("ca");
        pki.ca("other-ca");
        for n in ["node1", "node2", "node3", "node4"] {
            pki.peer("ca", n);
        }
        pki.issue("ca", "admin", "clientAuth", "admin");
        // Same name, wrong CA.
        pki.issue("other-ca", "admin", "clientAuth", "stranger");
        let peers_list = "node1,node2,node3,node4";

        let root = tempfile::TempDir::new().expect("tempdir");
        let grpc: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers = grpc
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let node_args: Vec<Vec<String>> = (0..3)
            .map(|i| {
                let mut a = vec![
                    format!("--cluster.node-id={}", i + 1),
                    format!("--cluster.peers={peers}"),
                    format!("--cluster.listen-address=127.0.0.1:{}", grpc[i]),
                    "--web.self-metrics-path=/self-metrics".to_string(),
                ];
                a.extend(pki.node_flags(&format!("node{}", i + 1), peers_list, "admin"));
                a
            })
            .collect();
        let mut starts = Vec::new();
        for (i, a) in node_args.iter().enumerate() {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let dir = root.path().join(format!("n{}", i + 1));
            let log_dir = root.path().to_path_buf();
            starts.push(Box::pin(async move {
                Proc::start_server(Kind::Pgw, &format!("node{}", i + 1), &dir, &log_dir, &a).await
            }));
        }
        let mut nodes = join_all(starts).await;
        let http: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let ep1 = format!("127.0.0.1:{}", grpc[0]);

        // A push to one node is replicated to all over mutual TLS.
        assert_eq!(
            put(http[1], "/metrics/job/mtls", "mtls_pushed 1\n").await,
            Ok(200)
        );
        let body = same_metrics(&http, TIMEOUT).await;
        assert!(body.contains("mtls_pushed{"), "push replicated: {body}");

        // Plaintext gRPC (HTTP/2 without TLS) is refused: no service answers it.
        let plain = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{ep1}"))
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            let mut c = pgw_proto::v1::raft_service_client::RaftServiceClient::new(ch);
            let wipe = pgw_core::Command::Wipe.encode();
            c.forward_write(pgw_proto::v1::ForwardWriteRequest {
                command: wipe.into(),
                term: 0,
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}"))
        };
        let r = tokio::time::timeout(Duration::from_secs(20), plain)
            .await
            .expect("a plaintext request is answered or dropped within 20 s");
        assert!(r.is_err(), "a plaintext ForwardWrite(Wipe) must be refused");

        // A certificate of another CA (even one named "admin") is refused at the handshake.
        let stranger = async {
            let ch = tls_channel(&pki, "ca", Some("stranger"), grpc[0]).await?;
            let mut c = pgw_proto::v1::admin_service_client::AdminServiceClient::new(ch);
            c.status(pgw_proto::v1::StatusRequest {})
                .await
                .map(|_| ())
                .map_err(|s| format!("{s:?}"))
        };
        let r = tokio::time::timeout(Duration::from_secs(20), stranger)
            .await
            .expect("answered within 20 s");
        assert!(r.is_err(), "a certificate of another CA must be refused");
        let c = ctl(
            &ep1,
            &args(&[&pki.ctl_flags("ca", Some("stranger"))], &["status"]),
        )
        .await;
        assert_ne!(c.code, 0, "pgwctl with another CA's certificate: {c:?}");

        // A peer certificate calling a peer RPC over TLS works (ReadIndex), the same
        // certificate calling an admin RPC does not.
        let ch = tls_channel(&pki, "ca", Some("node4"), grpc[0])
            .await
            .expect("TLS connection with a peer certificate");
        let mut raft = pgw_proto::v1::raft_service_client::RaftServiceClient::new(ch.clone());
        raft.read_index(pgw_proto::v1::ReadIndexRequest {})
            .await
            .expect("a peer may call ReadIndex");
        let mut admin = pgw_proto::v1::admin_service_client::AdminServiceClient::new(ch);
        let denied = admin
            .trigger_snapshot(pgw_proto::v1::TriggerSnapshotRequest {})
            .await
            .expect_err("a peer certificate must not trigger a snapshot");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        assert!(
            denied.message().contains("--cluster.tls.admin-names"),
            "the refusal says why: {denied:?}"
        );
        // And the admin certificate calling a peer RPC (forwarded writes) is refused too.
        let ch = tls_channel(&pki, "ca", Some("admin"), grpc[0])
            .await
            .expect("TLS connection with the admin certificate");
        let mut raft = pgw_proto::v1::raft_service_client::RaftServiceClient::new(ch);
        let denied = raft
            .forward_write(pgw_proto::v1::ForwardWriteRequest {
                command: pgw_core::Command::Wipe.encode().into(),
                term: 0,
            })
            .await
            .expect_err("an admin certificate is not a peer");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

        // pgwctl status: the admin certificate works; no certificate and the peer one fail.
        let admin_flags = pki.ctl_flags("ca", Some("admin"));
        let c = ctl(&ep1, &args(&[&admin_flags], &["status", "-o", "json"])).await;
        assert_eq!(c.code, 0, "pgwctl status with the admin certificate: {c:?}");
        let c = ctl(&ep1, &args(&[], &["status"])).await;
        assert_ne!(c.code, 0, "pgwctl status without TLS: {c:?}");
        assert!(c.stderr.contains("--cacert"), "hints at TLS: {c:?}");
        let c = ctl(&ep1, &args(&[&pki.ctl_flags("ca", None)], &["status"])).await;
        assert_ne!(
            c.code, 0,
            "pgwctl status without a client certificate: {c:?}"
        );
        let c = ctl(
            &ep1,
            &args(&[&pki.ctl_flags("ca", Some("node1"))], &["status"]),
        )
        .await;
        assert_eq!(c.code, 1, "pgwctl status with a peer certificate: {c:?}");
        assert!(c.stderr.contains("admin-names"), "says why: {c:?}");

        // pgwctl backup: refused with the peer certificate (no file), works as admin.
        let refused_file = root.path().join("refused.pgwbackup");
        let c = ctl(
            &ep1,
            &args(
                &[&pki.ctl_flags("ca", Some("node2"))],
                &["backup", &refused_file.display().to_string()],
            ),
        )
        .await;
        assert_eq!(c.code, 1, "backup with a peer certificate: {c:?}");
        assert!(c.stderr.contains("refuses"), "{c:?}");
        assert!(!refused_file.exists(), "a refused backup writes nothing");
        let file = root.path().join("admin.pgwbackup");
        let c = ctl(
            &ep1,
            &args(&[&admin_flags], &["backup", &file.display().to_string()]),
        )
        .await;
        assert_eq!(c.code, 0, "backup with the admin certificate: {c:?}");
        assert!(file.is_file());

        // A fourth node joins with its peer certificate (AddLearner called by a peer).
        let grpc4 = free_port();
        let mut a4 = vec![
            "--cluster.node-id=4".to_string(),
            format!("--cluster.join={ep1}"),
            format!("--cluster.listen-address=127.0.0.1:{grpc4}"),
            "--web.self-metrics-path=/self-metrics".to_string(),
        ];
        a4.extend(pki.node_flags("node4", peers_list, "admin"));
        let a4: Vec<&str> = a4.iter().map(String::as_str).collect();
        let node4 = Proc::start_server_live(
            Kind::Pgw,
            "node4",
            &root.path().join("n4"),
            root.path(),
            &a4,
        )
        .await;
        wait_for("node 4 joined as a voter", TIMEOUT, || {
            let admin_flags = admin_flags.clone();
            let ep1 = ep1.clone();
            async move {
                let c = ctl(&ep1, &args(&[&admin_flags], &["status", "-o", "json"])).await;
                let voters = serde_json::from_str::<serde_json::Value>(&c.stdout)
                    .ok()
                    .and_then(|v| v["voters"].as_u64());
                match voters {
                    Some(4) => Ok(()),
                    other => Err(format!("voters {other:?}: {c:?}")),
                }
            }
        })
        .await;
        nodes.push(node4);
        let http: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

        // Nothing refused changed anything: the group is still there, on every node.
        let body = same_metrics(&http, TIMEOUT).await;
        assert!(body.contains("mtls_pushed{"), "data unchanged: {body}");

        // Every refusal was counted by reason on node 1.
        let self_metrics = get(http[0], "/self-metrics", Duration::from_secs(10))
            .await
            .expect("self-metrics");
        let text = self_metrics.text();
        assert!(refused(&text, "not_tls") >= 1.0, "{text}");
        assert!(refused(&text, "untrusted_certificate") >= 1.0, "{text}");
        assert!(refused(&text, "no_certificate") >= 1.0, "{text}");
        assert!(refused(&text, "not_an_admin") >= 3.0, "{text}");
        assert!(refused(&text, "not_a_peer") >= 1.0, "{text}");
        let log = std::fs::read_to_string(&nodes[0].log_path).unwrap_or_default();
        assert!(
            log.contains("refused a cluster request") && log.contains("node4"),
            "refusals are logged with the caller's certificate name"
        );
    });
}

/// The cluster port on a non-loopback address without TLS refuses to start (before it
/// binds anything) unless `--cluster.insecure` is given, which is logged as a warning.
#[test]
fn plaintext_cluster_port_beyond_loopback_needs_insecure() {
    run(async {
        let root = tempfile::TempDir::new().expect("tempdir");
        let refused = Proc::try_start_server(
            Kind::Pgw,
            "open",
            &root.path().join("open"),
            root.path(),
            &["--cluster.listen-address=0.0.0.0:0"],
        )
        .await;
        let failure = match refused {
            Ok(_) => panic!("a plaintext cluster port on 0.0.0.0 must not start"),
            Err(f) => f,
        };
        assert_eq!(failure.status.code(), Some(2), "{failure}");
        assert!(
            failure.log.contains("--cluster.insecure") && failure.log.contains("--cluster.tls"),
            "the refusal names the fixes: {failure}"
        );

        let port = free_port();
        let listen = format!("--cluster.listen-address=0.0.0.0:{port}");
        let node = Proc::start_server(
            Kind::Pgw,
            "insecure",
            &root.path().join("insecure"),
            root.path(),
            &[&listen, "--cluster.insecure"],
        )
        .await;
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        assert!(
            log.contains("level=warn") && log.contains("--cluster.insecure"),
            "--cluster.insecure is logged as a warning at start:\n{log}"
        );

        // Half the TLS flags: refused with a message naming the missing ones.
        let pki = Pki::new();
        pki.ca("ca");
        let cert = format!("--cluster.tls.cert-file={}", pki.arg("ca.crt"));
        let half = Proc::try_start_server(
            Kind::Pgw,
            "half",
            &root.path().join("half"),
            root.path(),
            &["--cluster.listen-address=127.0.0.1:0", &cert],
        )
        .await;
        let failure = match half {
            Ok(_) => panic!("--cluster.tls.cert-file alone must not start"),
            Err(f) => f,
        };
        assert!(
            failure.log.contains("--cluster.tls.key-file")
                && failure.log.contains("--cluster.tls.ca-file"),
            "{failure}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Reload, in process

fn security(pki: &Pki, name: &str) -> Arc<pgw_raft::ClusterSecurity> {
    pgw_raft::ClusterSecurity::load(&pgw_raft::SecuritySettings {
        files: pgw_raft::security::TlsFiles {
            cert: pki.path(&format!("{name}.crt")),
            key: pki.path(&format!("{name}.key")),
            ca: pki.path("ca-file.crt"),
        },
        peer_names: vec!["node1".into(), "node2".into(), "node3".into()],
        admin_names: vec!["admin".into()],
    })
    .expect("TLS material loads")
}

/// The certificate node at `port` serves to a new connection (DER).
async fn served_cert(pki: &Pki, port: u16) -> Vec<u8> {
    let roots = pgw_tls::load_roots(&pki.path("ca-file.crt"), "ca").expect("ca");
    let identity = (
        pgw_tls::load_certs(&pki.path("admin.crt"), "cert").expect("cert"),
        pgw_tls::load_key(&pki.path("admin.key"), "key").expect("key"),
    );
    let config = pgw_tls::client_config(roots, Some(identity), None).expect("config");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = pgw_tls::rustls::pki_types::ServerName::try_from("node").expect("name");
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        pgw_tls::tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake within 10 s")
    .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .to_vec()
}

/// Writes through every node and waits until each has applied them all: the cluster works
/// (forwarding from followers opens connections of its own).
async fn writes_replicate(nodes: &[Node], what: &str) {
    let mut last = 0;
    for n in nodes {
        let r = tokio::time::timeout(TIMEOUT, n.write(pgw_core::Command::Wipe))
            .await
            .unwrap_or_else(|_| panic!("{what}: a write through node {} hangs", n.status().id));
        assert!(
            r.is_ok(),
            "{what}: write through node {}: {r:?}",
            n.status().id
        );
        last = last.max(n.status().applied_index);
    }
    let deadline = Instant::now() + TIMEOUT;
    while nodes.iter().any(|n| n.status().applied_index < last) {
        assert!(
            Instant::now() < deadline,
            "{what}: every node applies index {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Certificates and the CA are re-read on demand without leaving the cluster: a CA
/// rotation (CA bundle old+new, new certificates, then the new CA only) keeps writes
/// replicating, each reload makes new connections use the new certificate, and a bad file
/// keeps the previous certificates and reports the error.
#[test]
fn reload_rotates_certificates_without_leaving_the_cluster() {
    run(async {
        let pki = Pki::new();
        pki.ca("ca");
        for n in ["node1", "node2", "node3"] {
            pki.peer("ca", n);
        }
        pki.issue("ca", "admin", "clientAuth", "admin");
        std::fs::copy(pki.path("ca.crt"), pki.path("ca-file.crt")).expect("ca file");

        let root = tempfile::TempDir::new().expect("tempdir");
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            );
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        let peers: BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
            .collect();
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let config = NodeConfig {
                id,
                raft_addr: peers[&id].clone(),
                bootstrap: Bootstrap::Static(peers.clone()),
                heartbeat: Duration::from_millis(50),
                election_timeout: Duration::from_millis(300),
                security: Some(security(&pki, &format!("node{id}"))),
                // The probe writes below are wipes (they change nothing the test checks), which
                // a node admits only with the admin API, as over HTTP.
                policy: pgw_core::policy::Policy {
                    admin_api: true,
                    ..Default::default()
                },
                ..NodeConfig::single(root.path().join(format!("n{id}")))
            };
            nodes.push(Node::start(config, Some(l)).await.expect("node starts"));
        }
        let deadline = Instant::now() + TIMEOUT;
        while nodes.iter().any(|n| !n.status().has_leader) {
            assert!(
                Instant::now() < deadline,
                "a leader is elected over mutual TLS"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writes_replicate(&nodes, "before any reload").await;
        assert_eq!(served_cert(&pki, ports[0]).await, pki.der("node1.crt"));

        // Rotation step 1: trust both CAs, new certificates from the new CA.
        pki.ca("ca2");
        let bundle = [
            std::fs::read(pki.path("ca.crt")).expect("ca"),
            std::fs::read(pki.path("ca2.crt")).expect("ca2"),
        ]
        .concat();
        std::fs::write(pki.path("ca-file.crt"), bundle).expect("bundle");
        for n in ["node1", "node2", "node3"] {
            pki.peer("ca2", n);
        }
        for n in &nodes {
            n.reload_cluster_tls().expect("reload with the CA bundle");
        }
        assert_eq!(
            served_cert(&pki, ports[0]).await,
            pki.der("node1.crt"),
            "a new connection gets the new certificate"
        );
        writes_replicate(&nodes, "after the new certificates").await;

        // Rotation step 2: the new CA only. Only connections with the new certificates can
        // work now, both ways.
        std::fs::copy(pki.path("ca2.crt"), pki.path("ca-file.crt")).expect("ca2 only");
        pki.issue("ca2", "admin", "clientAuth", "admin");
        for n in &nodes {
            n.reload_cluster_tls().expect("reload with the new CA only");
        }
        writes_replicate(&nodes, "after dropping the old CA").await;
        for (i, p) in ports.iter().enumerate() {
            assert_eq!(
                served_cert(&pki, *p).await,
                pki.der(&format!("node{}.crt", i + 1))
            );
        }

        // A bad file: the reload fails, says which file, and the node keeps serving the
        // previous certificate.
        let good = pki.der("node1.crt");
        std::fs::write(pki.path("node1.crt"), "not a certificate\n").expect("garbage");
        let err = nodes[0]
            .reload_cluster_tls()
            .expect_err("a bad certificate file is refused");
        assert!(err.contains("--cluster.tls.cert-file"), "{err}");
        let sec = nodes[0].cluster_security().expect("security");
        assert!(!sec.last_reload_ok());
        assert_eq!(sec.reload_failures(), 1);
        std::fs::write(pki.path("node1.key"), "").expect("empty key");
        assert!(nodes[0].reload_cluster_tls().is_err());
        writes_replicate(&nodes, "after failed reloads").await;
        assert_eq!(served_cert(&pki, ports[0]).await, good);

        for n in &nodes {
            n.shutdown().await.expect("clean shutdown");
        }
    });
}

/// The `pgw` process re-reads its cluster certificates on SIGHUP: a new connection gets the
/// new certificate, and a bad file keeps the previous one and shows in
/// `pgw_cluster_tls_last_reload_successful`. (Ignored until the binary's SIGHUP handler calls
/// `Node::reload_cluster_tls`; the reload itself is covered in process above.)
#[test]
fn sighup_reloads_the_cluster_certificates() {
    run(async {
        let pki = Pki::new();
        pki.ca("ca");
        pki.peer("ca", "node1");
        pki.issue("ca", "admin", "clientAuth", "admin");
        std::fs::copy(pki.path("ca.crt"), pki.path("ca-file.crt")).expect("ca file");
        let root = tempfile::TempDir::new().expect("tempdir");
        let grpc = free_port();
        let mut a = vec![
            format!("--cluster.listen-address=127.0.0.1:{grpc}"),
            "--web.self-metrics-path=/self-metrics".to_string(),
        ];
        a.extend(pki.node_flags("node1", "node1", "admin"));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let node =
            Proc::start_server(Kind::Pgw, "node1", &root.path().join("n1"), root.path(), &a).await;
        let pid = node.pid().expect("running") as i32;
        assert_eq!(served_cert(&pki, grpc).await, pki.der("node1.crt"));

        pki.peer("ca", "node1");
        let new = pki.der("node1.crt");
        // SAFETY: kill(2) on the PID of a child this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        wait_for("a new connection gets the new certificate", TIMEOUT, || {
            let pki = &pki;
            let new = new.clone();
            async move {
                if served_cert(pki, grpc).await == new {
                    Ok(())
                } else {
                    Err("still the old certificate".to_string())
                }
            }
        })
        .await;

        std::fs::write(pki.path("node1.key"), "garbage\n").expect("garbage");
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        wait_for(
            "the failed reload shows in the self-metrics",
            TIMEOUT,
            || async {
                let r = get(node.addr, "/self-metrics", Duration::from_secs(10)).await?;
                if r.text()
                    .contains("pgw_cluster_tls_last_reload_successful 0")
                {
                    Ok(())
                } else {
                    Err("pgw_cluster_tls_last_reload_successful is not 0".to_string())
                }
            },
        )
        .await;
        assert_eq!(
            served_cert(&pki, grpc).await,
            new,
            "the previous certificate stays"
        );
        let c = ctl(
            &format!("127.0.0.1:{grpc}"),
            &args(&[&pki.ctl_flags("ca", Some("admin"))], &["status"]),
        )
        .await;
        assert_eq!(c.code, 0, "{c:?}");
    });
}
