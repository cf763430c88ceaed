//! The pgw node: the Pushgateway HTTP API, its flags, the node's self-metrics, and the `pgw`
//! binary.
//!
//! Owns:
//! - [`config`]: the command-line flags with the reference's names and defaults, the flags
//!   pgw adds, and the upstream flags it refuses with a clear message;
//! - `http`: one dispatcher that reproduces the reference's request handling (path decoding
//!   and cleaning, route prefix, httprouter redirects, 404/405/`OPTIONS`, request decoding)
//!   and the handlers: push, delete, wipe, telemetry, `/api/v1`, health, readiness, quit;
//! - [`metrics`]: the node-local self-metrics (`pushgateway_*`, `process_*`);
//! - `ui`: the server-rendered web page (one page of groups at a time, searched and paged on
//!   the server, so its size does not grow with the store);
//! - [`run`]: wiring a node and the HTTP server together, with graceful shutdown (a drain with
//!   `/-/ready` 503 first), SIGHUP reloads ([`reload`]) and the systemd readiness
//!   notifications (`notify`: `READY=1`, `STOPPING=1` to `$NOTIFY_SOCKET`);
//! - [`web`]: the `--web.config.file` (exporter-toolkit TLS, basic auth, headers; pgw's
//!   scoped credentials) and its reload ([`web::WebConfigHandle::reload`], for SIGHUP);
//! - [`edge`]: the accept loop and connection serving: TLS, connection bound, header, body
//!   and idle timeouts, accept-error backoff, the fd-limit raise at start;
//! - [`serve`] and [`Clock`]: the same HTTP server on an already started node, any listener
//!   and an injected wall clock (the seams the deterministic simulation runs a node through).
//!
//! Does not own: Raft, storage or the data model. Writes go through
//! [`pgw_raft::Node::write`] and come back once committed and applied; reads render the
//! locally applied [`pgw_core::GroupStore`] with [`pgw_core::render`].

#![warn(missing_docs)]

pub mod config;
pub mod edge;
mod http;
pub mod logging;
pub mod metrics;
mod notify;
pub mod reload;
mod timefmt;
mod ui;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use pgw_raft::{Bootstrap, Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

/// Runs a node: opens its storage and starts Raft under `--storage.path`, serves the HTTP
/// API on `listener` until `shutdown` completes or `/-/quit` is called (with
/// `--web.enable-lifecycle`), lets in-flight requests finish, then shuts the node down.
///
/// The listener is the caller's, so tests can bind `127.0.0.1:0` and the binary can bind
/// the flag's address. The web config file is loaded here; use [`run_with_web`] to keep a
/// handle for reloading it.
///
/// # Errors
/// Invalid flags ([`Config::validate`]), a web config file that does not load, a node that
/// cannot start (storage), a failing server, or an unclean node shutdown.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let web = web::WebConfigHandle::load(settings.web_config_file.as_deref())?;
    run_with_web(config, listener, web, shutdown, None).await
}

/// [`run`] with a web configuration the caller loaded, reloading what can be reloaded (the
/// web config file, the cluster TLS files) each time `reload` yields (the binary feeds it
/// SIGHUP; see [`reload`]).
///
/// # Errors
/// As [`run`].
pub async fn run_with_web(
    config: Config,
    listener: TcpListener,
    web: web::WebConfigHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Option<tokio::sync::mpsc::Receiver<()>>,
) -> anyhow::Result<()> {
    let settings = config.validate()?;
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    let local = listener.local_addr().ok();
    let cluster = settings.cluster.clone();
    let mut node_config = NodeConfig::single(config.storage_path.clone());
    node_config.id = cluster.node_id;
    node_config.write_timeout = config.write_timeout;
    node_config.snapshot_every = config.snapshot_every;
    node_config.heartbeat = config.heartbeat_interval;
    node_config.election_timeout = config.election_timeout;
    node_config.raft_addr = cluster.advertise_address.clone();
    node_config.peer_dial = cluster.peer_dial.clone();
    node_config.policy = settings.policy();
    node_config.max_snapshot_bytes = config.max_snapshot_bytes as u64;
    if let Some(tls) = &cluster.tls {
        let security = pgw_raft::ClusterSecurity::load(tls)
            .map_err(|e| anyhow::anyhow!("cannot start the cluster port with TLS: {e}"))?;
        tracing::info!(
            peer_names = ?tls.peer_names,
            admin_names = ?tls.admin_names,
            "cluster gRPC port: mutual TLS, certificates of {} only",
            tls.files.ca.display()
        );
        node_config.security = Some(security);
    }
    node_config.bootstrap = if !cluster.peers.is_empty() {
        Bootstrap::Static(cluster.peers.clone())
    } else if !cluster.join.is_empty() {
        Bootstrap::Join(cluster.join.clone())
    } else {
        Bootstrap::Single
    };
    // A wildcard address (`:9091`) is not one a client can reach: advertise the gRPC host
    // with the HTTP port then.
    if let Some(addr) = local {
        node_config.http_addr = if addr.ip().is_unspecified() {
            match cluster.advertise_address.rsplit_once(':') {
                Some((host, _)) if !host.is_empty() => format!("{host}:{}", addr.port()),
                _ => String::new(),
            }
        } else {
            addr.to_string()
        };
    }
    let grpc = match &cluster.listen_address {
        None => None,
        Some(a) => Some(bind(a).await.with_context(|| {
            format!("binding the cluster gRPC port --cluster.listen-address {a}")
        })?),
    };
    if let Some(g) = &grpc {
        tracing::info!(address = %g.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
            advertise = %cluster.advertise_address, node_id = cluster.node_id, "cluster gRPC listening");
    }
    let node = Node::start(node_config, grpc)
        .await
        .with_context(|| format!("starting the node on {}", config.storage_path.display()))?;
    let node = Arc::new(node);

    tracing::info!(
        address = %local.map_or_else(|| "?".to_string(), |a| a.to_string()),
        storage = %config.storage_path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let stats = Arc::new(edge::EdgeStats::default());
    let listener = edge::TcpAcceptor::new(listener, stats.clone());
    serve_with(
        settings,
        node,
        listener,
        Arc::new(SystemClock),
        notify::serving(shutdown),
        web,
        stats,
        reload,
    )
    .await
}

/// A wall clock: where the receiving node reads the push time it stamps into a command
/// (`push_time_seconds`). The binary uses [`SystemClock`]; simulation tests pass a simulated
/// clock so that runs are reproducible.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Serves the HTTP API of an already started `node` on `listener` (any
/// [`axum::serve::Listener`]: TCP in the binary, a simulated network in tests) until
/// `shutdown` completes or `/-/quit` is called, lets in-flight requests finish, then shuts the
/// node down. [`run`] is this on a node it starts from the flags, with the system clock.
///
/// # Errors
/// A failing server or an unclean node shutdown.
pub async fn serve<L>(
    settings: config::Settings,
    node: Arc<Node>,
    listener: L,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let web = web::WebConfigHandle::load(settings.web_config_file.as_deref())?;
    let stats = Arc::new(edge::EdgeStats::default());
    serve_with(settings, node, listener, clock, shutdown, web, stats, None).await
}

/// The reloadable parts of a node: its web config file, and its cluster TLS files when the
/// cluster port uses TLS.
fn reloadable(node: &Arc<Node>, web: &web::WebConfigHandle) -> reload::Reloads {
    let reloads = reload::Reloads::default();
    let w = web.clone();
    reloads.register(
        "web config",
        Box::new(move || {
            w.reload()
                .map(|()| "--web.config.file re-read".to_string())
                .map_err(|e| e.to_string())
        }),
    );
    if node.cluster_security().is_some() {
        let n = node.clone();
        reloads.register(
            "cluster TLS",
            Box::new(move || {
                n.reload_cluster_tls()
                    .map(|()| "cluster port certificates, key and CA re-read".to_string())
            }),
        );
    }
    reloads
}

#[allow(clippy::too_many_arguments)]
async fn serve_with<L>(
    settings: config::Settings,
    node: Arc<Node>,
    listener: L,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    web: web::WebConfigHandle,
    stats: Arc<edge::EdgeStats>,
    reload: Option<tokio::sync::mpsc::Receiver<()>>,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
{
    let (quit_tx, mut quit_rx) = watch::channel(false);
    let metrics = metrics::SelfMetrics::new(metrics::BuildInfo::current());
    let limits = settings.edge;
    let reloads = Arc::new(reloadable(&node, &web));
    let reload_task = reload.map(|rx| tokio::spawn(reload::serve(reloads.clone(), rx)));
    let app = Arc::new(http::App::new(
        settings,
        node.clone(),
        metrics,
        quit_tx,
        clock,
        reloads,
        web.clone(),
        stats.clone(),
    ));
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let signal = {
        let node = node.clone();
        let failed = failed.clone();
        let app = app.clone();
        async move {
            let drain = tokio::select! {
                () = shutdown => {
                    tracing::info!("shutdown requested; exiting gracefully...");
                    true
                }
                _ = quit_rx.wait_for(|q| *q) => true,
                why = node.health().wait_fatal() => {
                    tracing::error!(
                        reason = %why,
                        "Raft stopped for good; /-/healthy answers 500 and the node exits \
                         non-zero once in-flight requests are answered, so that its supervisor \
                         restarts it (see docs/operations.md, \"Raft stopped\")"
                    );
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    false
                }
            };
            let period = app.settings.shutdown_drain;
            if drain && !period.is_zero() {
                app.draining
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    drain = ?period,
                    "draining: /-/ready answers 503 so that load balancers stop sending \
                     requests; still serving until the drain ends (a second SIGTERM stops at \
                     once)"
                );
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    // A node that fails while draining stops at once.
                    why = node.health().wait_fatal() => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    }
                }
            }
            tracing::info!("no longer accepting connections; finishing requests in flight");
        }
    };
    edge::serve(listener, app, web, limits, stats, signal).await;
    tracing::info!("HTTP server stopped");
    if let Some(t) = reload_task {
        t.abort();
    }
    let stopped = node.shutdown().await;
    if let Some(why) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!("Raft stopped for good: {why}");
    }
    stopped.context("shutting the node down")?;
    Ok(())
}

/// Binds a listener for `--web.listen-address`. Go's notation is accepted: `:9091` means
/// every interface (IPv6 and IPv4 where the system allows, else IPv4).
///
/// # Errors
/// The address cannot be resolved or bound.
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    if let Some(port) = address.strip_prefix(':') {
        match TcpListener::bind(format!("[::]:{port}")).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => return TcpListener::bind(format!("0.0.0.0:{port}")).await,
        }
    }
    TcpListener::bind(address).await
}
