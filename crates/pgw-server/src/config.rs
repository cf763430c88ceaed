//! Command-line flags, with the reference Pushgateway's names and defaults (spec §10.1), the
//! flags pgw adds, and the upstream flags pgw refuses.
//!
//! Flags are parsed with clap into [`Config`]; [`Config::validate`] then checks them and
//! resolves what the HTTP layer needs ([`Settings`]). Flag syntax follows kingpin, the
//! upstream flag library, where it matters for existing unit files: `--flag=value` and
//! `--flag value`, boolean flags as `--flag`, `--flag=true|false` and `--no-flag`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

/// `--log.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-request diagnostics.
    Debug,
    /// The default.
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The upstream spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// `--log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `ts=… level=… msg=… key=value`, one event a line (the default, as upstream).
    Logfmt,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// The upstream spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Logfmt => "logfmt",
            LogFormat::Json => "json",
        }
    }
}

const REFUSED: &str = "Upstream flags that pgw refuses";

/// The flags of a `pgw` node.
///
/// Build it with [`Config::parse_from`] (or `try_parse_from`) and call
/// [`Config::validate`] before use; [`crate::run`] does the latter itself.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "pgw",
    version,
    about = "pgw: a Raft-replicated, drop-in compatible Prometheus Pushgateway node.",
    long_about = None
)]
pub struct Config {
    /// Address to listen on for the web interface, API and telemetry (`:9091` means every
    /// interface).
    #[arg(
        long = "web.listen-address",
        default_value = ":9091",
        value_name = "ADDR"
    )]
    pub listen_address: String,

    /// Path under which to expose metrics (joined with the route prefix).
    #[arg(
        long = "web.telemetry-path",
        default_value = "/metrics",
        value_name = "PATH"
    )]
    pub telemetry_path: String,

    /// The URL under which the Pushgateway is externally reachable.
    #[arg(long = "web.external-url", default_value = "", value_name = "URL")]
    pub external_url: String,

    /// Prefix for the internal routes of web endpoints. Defaults to the path of
    /// --web.external-url.
    #[arg(long = "web.route-prefix", default_value = "", value_name = "PREFIX")]
    pub route_prefix: String,

    /// Enable shutdown via HTTP request (`PUT|POST /-/quit`).
    #[arg(long = "web.enable-lifecycle", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub enable_lifecycle: bool,
    #[arg(long = "no-web.enable-lifecycle", hide = true, action = ArgAction::SetTrue)]
    no_enable_lifecycle: bool,

    /// Enable API endpoints for admin control actions (`PUT /api/v1/admin/wipe`).
    #[arg(long = "web.enable-admin-api", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub enable_admin_api: bool,
    #[arg(long = "no-web.enable-admin-api", hide = true, action = ArgAction::SetTrue)]
    no_enable_admin_api: bool,

    /// Do not check consistency of pushed metrics. DANGEROUS. Pushes are answered 202.
    #[arg(long = "push.disable-consistency-check", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub disable_consistency_check: bool,
    #[arg(long = "no-push.disable-consistency-check", hide = true, action = ArgAction::SetTrue)]
    no_disable_consistency_check: bool,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    pub log_format: LogFormat,

    /// Directory of the node's Raft log and state machine (replaces --persistence.file).
    #[arg(long = "storage.path", default_value = "./data", value_name = "DIR")]
    pub storage_path: PathBuf,

    /// Serve the node's own metrics (pushgateway_*, process_*) on this path (joined with the
    /// route prefix) instead of appending them to the telemetry path, so that every replica
    /// serves byte-identical pushed metrics there.
    #[arg(long = "web.self-metrics-path", value_name = "PATH")]
    pub self_metrics_path: Option<String>,

    /// Largest accepted push body, before and after Content-Encoding decoding; larger pushes
    /// get 413. Plain bytes or with a unit (`64MiB`, `512KiB`, `1GB`).
    #[arg(long = "push.max-body-bytes", default_value = "64MiB", value_parser = parse_bytes,
          value_name = "BYTES")]
    pub max_body_bytes: usize,

    /// Optional limit: most series (samples) in one push; more gets 413. 0: unlimited.
    #[arg(long = "push.max-series", default_value_t = 0, value_name = "N")]
    pub max_series: u64,

    /// Optional limit: most labels of one series once stored (its own, the grouping labels
    /// and `instance`); more gets 413. 0: unlimited.
    #[arg(
        long = "push.max-labels-per-series",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_labels_per_series: u64,

    /// Optional limit: longest label value in bytes (grouping labels included); longer gets
    /// 413. 0: unlimited.
    #[arg(
        long = "push.max-label-value-bytes",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_label_value_bytes: u64,

    /// Optional limit: most groups in the store; a push that would create another gets 403.
    /// Travels in the command, so every replica decides alike. 0: unlimited.
    #[arg(long = "push.max-groups", default_value_t = 0, value_name = "N")]
    pub max_groups: u64,

    /// Largest Raft snapshot or `pgwctl restore` stream this node receives.
    #[arg(long = "cluster.max-snapshot-bytes", default_value = "16GiB", value_parser = parse_bytes,
          value_name = "BYTES", help_heading = "Cluster")]
    pub max_snapshot_bytes: usize,

    /// How long a write may wait for a Raft leader before it is answered 503.
    #[arg(long = "cluster.write-timeout", default_value = "10s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub write_timeout: Duration,

    /// On SIGTERM or `/-/quit`: how long the node keeps serving with `/-/ready` answering 503
    /// before it stops accepting connections, so that load balancers take it out of rotation
    /// first (5s covers health checks every 1–2 s with 2–3 failures to mark a server down).
    /// 0s stops at once. A second SIGTERM during the drain stops at once.
    #[arg(long = "web.shutdown-drain", default_value = "5s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub shutdown_drain: Duration,

    /// Build a Raft snapshot after this many applied log entries.
    #[arg(
        long = "raft.snapshot-every",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub snapshot_every: u64,

    /// This node's id in the cluster (a positive integer, unique per cluster). Required with
    /// --cluster.peers and --cluster.join.
    #[arg(long = "cluster.node-id", value_name = "ID", help_heading = "Cluster")]
    pub node_id: Option<u64>,

    /// Static cluster: every voter as `id=host:port` (their gRPC addresses), comma-separated,
    /// this node included. The lowest id initialises the cluster once.
    #[arg(
        long = "cluster.peers",
        value_name = "ID=HOST:PORT,...",
        help_heading = "Cluster"
    )]
    pub peers: Option<String>,

    /// Dynamic membership: join the cluster that the member at this gRPC address (or these,
    /// comma-separated) belongs to, as a learner promoted to voter once caught up.
    #[arg(
        long = "cluster.join",
        value_name = "HOST:PORT[,...]",
        help_heading = "Cluster"
    )]
    pub join: Option<String>,

    /// Address of the internal gRPC port (Raft, forwarded writes, admin; for trusted peers
    /// only). Opened in a cluster, or in a single node when given. Default `:9095`.
    #[arg(
        long = "cluster.listen-address",
        value_name = "ADDR",
        help_heading = "Cluster"
    )]
    pub cluster_listen_address: Option<String>,

    /// The gRPC address other members and pgwctl reach this node at. Default: this node's
    /// entry in --cluster.peers, else --cluster.listen-address.
    #[arg(
        long = "cluster.advertise-address",
        value_name = "HOST:PORT",
        help_heading = "Cluster"
    )]
    pub advertise_address: Option<String>,

    /// Raft heartbeat interval.
    #[arg(long = "raft.heartbeat-interval", default_value = "100ms", value_parser = parse_duration,
          value_name = "DURATION", help_heading = "Cluster")]
    pub heartbeat_interval: Duration,

    /// Raft election timeout (the minimum; each node draws from [t, 1.25t)). A leader lost
    /// this long is replaced; keep it well above the heartbeat interval and network delays.
    #[arg(long = "raft.election-timeout", default_value = "400ms", value_parser = parse_duration,
          value_name = "DURATION", help_heading = "Cluster")]
    pub election_timeout: Duration,

    /// Certificate (PEM chain, leaf first) the cluster port serves and presents when dialing
    /// peers. With --cluster.tls.key-file and --cluster.tls.ca-file the port takes only mutual
    /// TLS (docs/security.md). Re-read on SIGHUP.
    #[arg(
        long = "cluster.tls.cert-file",
        value_name = "FILE",
        help_heading = "Cluster"
    )]
    pub cluster_tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cluster.tls.cert-file. Re-read on SIGHUP.
    #[arg(
        long = "cluster.tls.key-file",
        value_name = "FILE",
        help_heading = "Cluster"
    )]
    pub cluster_tls_key_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) of the cluster: clients and peers must present a certificate it
    /// signed. Use a CA dedicated to the cluster. Re-read on SIGHUP.
    #[arg(
        long = "cluster.tls.ca-file",
        value_name = "FILE",
        help_heading = "Cluster"
    )]
    pub cluster_tls_ca_file: Option<PathBuf>,

    /// Certificate names (DNS SAN or CN) allowed to act as peers (Raft, forwarded writes,
    /// joins), comma-separated. Unset: any certificate of the CA.
    #[arg(
        long = "cluster.tls.peer-names",
        value_name = "NAME,...",
        help_heading = "Cluster"
    )]
    pub cluster_tls_peer_names: Option<String>,

    /// Certificate names (DNS SAN or CN) allowed the admin RPCs (membership, snapshot,
    /// backup, restore, status), comma-separated. Unset: any certificate of the CA.
    #[arg(
        long = "cluster.tls.admin-names",
        value_name = "NAME,...",
        help_heading = "Cluster"
    )]
    pub cluster_tls_admin_names: Option<String>,

    /// Allow the cluster port on a non-loopback address without TLS (no authentication at
    /// all: only on a network where every host is trusted). Logged as a warning at start.
    #[arg(long = "cluster.insecure", help_heading = "Cluster")]
    pub cluster_insecure: bool,

    /// Test only, hidden: dial peer ID at HOST:PORT (a loopback proxy that can cut the link)
    /// instead of its address in the membership. Repeatable or comma-separated.
    #[arg(long = "cluster.peer-dial", hide = true, value_name = "ID=HOST:PORT[,...]",
          action = ArgAction::Append)]
    pub peer_dial: Vec<String>,

    /// Refused: pgw always persists every acknowledged write under --storage.path.
    #[arg(long = "persistence.file", help_heading = REFUSED, value_name = "FILE")]
    pub persistence_file: Option<String>,

    /// Refused: pgw always persists every acknowledged write under --storage.path.
    #[arg(long = "persistence.interval", help_heading = REFUSED, value_name = "DURATION")]
    pub persistence_interval: Option<String>,

    /// Path to the exporter-toolkit web configuration file (TLS, basic auth, response
    /// headers; and pgw's own `pgw_authorization` section). Re-read on SIGHUP.
    #[arg(long = "web.config.file", value_name = "FILE", default_value = "")]
    pub web_config_file: String,

    /// A request head (and, over TLS, the handshake) must arrive within this time of the
    /// connection's start or the end of the previous response; else the connection is closed.
    #[arg(long = "web.read-header-timeout", default_value = "30s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub read_header_timeout: Duration,

    /// A request body must be complete within this time of its head, extended by one second
    /// for every 64 KiB received; a stalled or trickling body is answered 408.
    #[arg(long = "web.read-body-timeout", default_value = "30s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub read_body_timeout: Duration,

    /// A keep-alive connection without a request and without I/O for this long is closed.
    #[arg(long = "web.idle-timeout", default_value = "2m", value_parser = parse_duration,
          value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Most concurrent HTTP connections; beyond it new connections are closed at once (and
    /// counted in pgw_http_connections_rejected_total).
    #[arg(
        long = "web.max-connections",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Most writes (pushes, deletes) this node holds waiting for the Raft log; beyond it a
    /// write is answered 429 with Retry-After.
    #[arg(
        long = "push.max-pending-writes",
        default_value_t = 4096,
        value_name = "N"
    )]
    pub max_pending_writes: usize,

    /// Refused: systemd socket activation is not supported.
    #[arg(long = "web.systemd-socket", help_heading = REFUSED, num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub web_systemd_socket: Option<bool>,

    /// Refused: UTF-8 metric and label names are not supported yet.
    #[arg(long = "push.enable-utf8-names", help_heading = REFUSED, num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub enable_utf8_names: Option<bool>,

    /// Ignored (Debian's packaging of the reference): pgw embeds its web assets.
    #[arg(long = "web.local-assets", help_heading = REFUSED, value_name = "DIR")]
    pub web_local_assets: Option<String>,
}

/// A flag combination pgw cannot start with. `Display` is the message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--persistence.file` / `--persistence.interval`.
    #[error(
        "--{0} is not supported: pgw persists every acknowledged write in its Raft log and \
         state machine under --storage.path (default ./data); remove --persistence.file and \
         --persistence.interval and set --storage.path to a directory instead"
    )]
    Persistence(&'static str),
    /// `--web.systemd-socket`.
    #[error(
        "--web.systemd-socket is not supported: pass --web.listen-address instead of using \
         systemd socket activation"
    )]
    SystemdSocket,
    /// `--push.enable-utf8-names`.
    #[error(
        "--push.enable-utf8-names is not supported yet: pgw accepts only legacy \
         (`[a-zA-Z_:][a-zA-Z0-9_:]*`) metric and label names"
    )]
    Utf8Names,
    /// A path flag that does not start with `/`.
    #[error("--{flag} must start with \"/\", got {value:?}")]
    Path {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// `--web.self-metrics-path` equal to the telemetry path.
    #[error("--web.self-metrics-path must differ from --web.telemetry-path")]
    SelfMetricsPath,
    /// Zero or nonsensical numbers.
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    /// Inconsistent or malformed cluster flags.
    #[error("{0}")]
    Cluster(String),
}

/// How this node finds its cluster, resolved from the cluster flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id (1 when no cluster flags are given).
    pub node_id: u64,
    /// `--cluster.peers`, parsed (empty unless static).
    pub peers: BTreeMap<u64, String>,
    /// `--cluster.join` targets (empty unless joining).
    pub join: Vec<String>,
    /// Where to open the gRPC port, if at all.
    pub listen_address: Option<String>,
    /// The gRPC address advertised to the cluster ("" when the port is not opened).
    pub advertise_address: String,
    /// `--cluster.peer-dial` (test only): peer id → the address to dial it at.
    pub peer_dial: BTreeMap<u64, String>,
    /// `--cluster.tls.*`, when set.
    pub tls: Option<pgw_raft::SecuritySettings>,
    /// `--cluster.insecure` was needed: the port listens beyond loopback without TLS.
    pub insecure: bool,
}

/// What the HTTP layer needs, resolved from a validated [`Config`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Route prefix per `computeRoutePrefix`: empty, or `/x` without a trailing `/`.
    pub route_prefix: String,
    /// The telemetry path joined with the route prefix and cleaned.
    pub telemetry_path: String,
    /// The self-metrics path joined with the route prefix, if set.
    pub self_metrics_path: Option<String>,
    /// `--web.enable-lifecycle`.
    pub enable_lifecycle: bool,
    /// `--web.enable-admin-api`.
    pub enable_admin_api: bool,
    /// `!--push.disable-consistency-check`.
    pub check_consistency: bool,
    /// `--push.max-body-bytes`.
    pub max_body_bytes: usize,
    /// `--web.shutdown-drain`.
    pub shutdown_drain: Duration,
    /// The optional `--push.max-*` limits.
    pub limits: pgw_core::policy::Limits,
    /// Every flag by its upstream name, as `/api/v1/status` and the web page show them.
    pub flags: BTreeMap<String, String>,
    /// Notes for the operator about accepted-but-ignored flags (logged at start).
    pub warnings: Vec<String>,
    /// The cluster flags, resolved.
    pub cluster: ClusterSettings,
    /// `--web.config.file`, if given.
    pub web_config_file: Option<PathBuf>,
    /// Connection hygiene and backpressure limits.
    pub edge: EdgeSettings,
}

/// The HTTP edge's timeouts and bounds (see `docs/security.md`, "HTTP port").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeSettings {
    /// `--web.read-header-timeout`.
    pub read_header_timeout: Duration,
    /// `--web.read-body-timeout`.
    pub read_body_timeout: Duration,
    /// `--web.idle-timeout`.
    pub idle_timeout: Duration,
    /// `--web.max-connections`.
    pub max_connections: usize,
    /// `--push.max-pending-writes`.
    pub max_pending_writes: usize,
}

impl Settings {
    /// What this node admits as a write, for the HTTP layer and (through
    /// `pgw_raft::NodeConfig::policy`) the cluster port's forwarded writes.
    pub fn policy(&self) -> pgw_core::policy::Policy {
        pgw_core::policy::Policy {
            admin_api: self.enable_admin_api,
            check_consistency: self.check_consistency,
            max_body_bytes: self.max_body_bytes,
            limits: self.limits,
        }
    }
}

impl Config {
    /// Parses flags from `args` (the first item is the program name); on an error prints
    /// clap's message and exits, as a binary does. Usable without importing `clap::Parser`.
    pub fn parse_from<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as Parser>::parse_from(args)
    }

    /// Parses flags from `args` (the first item is the program name).
    ///
    /// # Errors
    /// Unknown flags or values that do not parse, with clap's message.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as Parser>::try_parse_from(args)
    }

    /// `--web.enable-lifecycle`, with `--no-web.enable-lifecycle` applied.
    pub fn lifecycle_enabled(&self) -> bool {
        self.enable_lifecycle && !self.no_enable_lifecycle
    }

    /// `--web.enable-admin-api`, with its `--no-` form applied.
    pub fn admin_api_enabled(&self) -> bool {
        self.enable_admin_api && !self.no_enable_admin_api
    }

    /// `--push.disable-consistency-check`, with its `--no-` form applied.
    pub fn consistency_check_disabled(&self) -> bool {
        self.disable_consistency_check && !self.no_disable_consistency_check
    }

    /// The optional `--push.max-*` limits (0: unlimited).
    pub fn limits(&self) -> pgw_core::policy::Limits {
        let opt = |v: u64| (v > 0).then_some(v);
        pgw_core::policy::Limits {
            max_series: opt(self.max_series),
            max_labels_per_series: opt(self.max_labels_per_series),
            max_label_value_bytes: opt(self.max_label_value_bytes),
            max_groups: opt(self.max_groups),
        }
    }

    /// Checks the flags and resolves the HTTP settings.
    ///
    /// # Errors
    /// Any upstream flag pgw refuses (`--persistence.*`,
    /// `--web.systemd-socket`, `--push.enable-utf8-names=true`), paths that do not start with
    /// `/`, and zero limits.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.persistence_file.is_some() {
            return Err(ConfigError::Persistence("persistence.file"));
        }
        if self.persistence_interval.is_some() {
            return Err(ConfigError::Persistence("persistence.interval"));
        }
        if self.web_systemd_socket == Some(true) {
            return Err(ConfigError::SystemdSocket);
        }
        if self.enable_utf8_names == Some(true) {
            return Err(ConfigError::Utf8Names);
        }
        if !self.telemetry_path.starts_with('/') {
            return Err(ConfigError::Path {
                flag: "web.telemetry-path",
                value: self.telemetry_path.clone(),
            });
        }
        if let Some(p) = &self.self_metrics_path
            && !p.starts_with('/')
        {
            return Err(ConfigError::Path {
                flag: "web.self-metrics-path",
                value: p.clone(),
            });
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Zero("push.max-body-bytes"));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::Zero("cluster.write-timeout"));
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::Zero("raft.snapshot-every"));
        }
        for (flag, d) in [
            ("web.read-header-timeout", self.read_header_timeout),
            ("web.read-body-timeout", self.read_body_timeout),
            ("web.idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero(flag));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Zero("web.max-connections"));
        }
        if self.max_pending_writes == 0 {
            return Err(ConfigError::Zero("push.max-pending-writes"));
        }

        let cluster = self.cluster_settings()?;
        let route_prefix = compute_route_prefix(&self.route_prefix, &self.external_url);
        let telemetry_path = join_path(&route_prefix, &self.telemetry_path);
        let self_metrics_path = self
            .self_metrics_path
            .as_deref()
            .map(|p| join_path(&route_prefix, p));
        if self_metrics_path.as_deref() == Some(telemetry_path.as_str()) {
            return Err(ConfigError::SelfMetricsPath);
        }
        let mut warnings = Vec::new();
        if cluster.insecure {
            warnings.push(format!(
                "--cluster.insecure: the cluster gRPC port {} takes plaintext without \
                 authentication; anyone who can reach it can write, wipe and change the \
                 membership. Set --cluster.tls.cert-file, --cluster.tls.key-file and \
                 --cluster.tls.ca-file (docs/security.md)",
                cluster.listen_address.as_deref().unwrap_or("")
            ));
        }
        if self.web_local_assets.is_some() {
            warnings.push(
                "--web.local-assets is ignored: pgw embeds its web page and assets".to_string(),
            );
        }
        Ok(Settings {
            flags: self.status_flags(&route_prefix),
            route_prefix,
            telemetry_path,
            self_metrics_path,
            enable_lifecycle: self.lifecycle_enabled(),
            enable_admin_api: self.admin_api_enabled(),
            check_consistency: !self.consistency_check_disabled(),
            max_body_bytes: self.max_body_bytes,
            shutdown_drain: self.shutdown_drain,
            limits: self.limits(),
            web_config_file: (!self.web_config_file.is_empty())
                .then(|| PathBuf::from(&self.web_config_file)),
            edge: EdgeSettings {
                read_header_timeout: self.read_header_timeout,
                read_body_timeout: self.read_body_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections,
                max_pending_writes: self.max_pending_writes,
            },
            warnings,
            cluster,
        })
    }

    /// Resolves and checks the cluster flags.
    fn cluster_settings(&self) -> Result<ClusterSettings, ConfigError> {
        let err = |m: String| Err(ConfigError::Cluster(m));
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Zero("raft.heartbeat-interval"));
        }
        if self.election_timeout <= self.heartbeat_interval * 2 {
            return err(format!(
                "--raft.election-timeout ({}) must be more than twice --raft.heartbeat-interval ({})",
                format_duration(self.election_timeout),
                format_duration(self.heartbeat_interval)
            ));
        }
        if self.peers.is_some() && self.join.is_some() {
            return err(
                "--cluster.peers and --cluster.join are exclusive: use peers for a \
                        static cluster, join to add this node to a running one"
                    .into(),
            );
        }
        let clustered = self.peers.is_some() || self.join.is_some();
        if self.node_id == Some(0) {
            return err("--cluster.node-id must be a positive integer".into());
        }
        let node_id = match (self.node_id, clustered) {
            (Some(id), _) => id,
            (None, false) => 1,
            (None, true) => {
                return err(
                    "--cluster.node-id is required with --cluster.peers or --cluster.join".into(),
                );
            }
        };
        let mut peers = BTreeMap::new();
        if let Some(spec) = &self.peers {
            for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((id, addr)) = part.split_once('=') else {
                    return err(format!("--cluster.peers: {part:?} is not id=host:port"));
                };
                let Ok(id) = id.trim().parse::<u64>() else {
                    return err(format!("--cluster.peers: {id:?} is not a node id"));
                };
                if id == 0 {
                    return err("--cluster.peers: node ids start at 1".into());
                }
                let addr = addr.trim();
                if !valid_host_port(addr) {
                    return err(format!("--cluster.peers: {addr:?} is not host:port"));
                }
                if peers.insert(id, addr.to_string()).is_some() {
                    return err(format!("--cluster.peers names node {id} twice"));
                }
            }
            if !peers.contains_key(&node_id) {
                return err(format!(
                    "--cluster.peers must include this node (--cluster.node-id {node_id})"
                ));
            }
        }
        let join: Vec<String> = self
            .join
            .iter()
            .flat_map(|j| j.split(','))
            .map(str::trim)
            .filter(|j| !j.is_empty())
            .map(str::to_string)
            .collect();
        if self.join.is_some() && join.is_empty() {
            return err("--cluster.join needs at least one host:port".into());
        }
        if let Some(bad) = join.iter().find(|j| !valid_host_port(j)) {
            return err(format!("--cluster.join: {bad:?} is not host:port"));
        }
        let listen_address = match (&self.cluster_listen_address, clustered) {
            (Some(a), _) => Some(a.clone()),
            (None, true) => Some(":9095".to_string()),
            (None, false) => None,
        };
        let advertise_address = match (&self.advertise_address, &listen_address) {
            (_, None) => String::new(),
            (Some(a), Some(_)) => a.clone(),
            (None, Some(listen)) => match peers.get(&node_id) {
                Some(a) => a.clone(),
                None if listen_host_is_specific(listen) => listen.clone(),
                None if self.join.is_some() => {
                    return err(format!(
                        "--cluster.advertise-address is required with --cluster.join when \
                         --cluster.listen-address ({listen}) is not a specific host"
                    ));
                }
                // A single node with a gRPC port: only pgwctl talks to it.
                None => listen.clone(),
            },
        };
        let mut peer_dial = BTreeMap::new();
        for part in self
            .peer_dial
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let parsed = part
                .split_once('=')
                .and_then(|(id, addr)| Some((id.trim().parse::<u64>().ok()?, addr.trim())));
            match parsed {
                Some((id, addr)) if valid_host_port(addr) => {
                    peer_dial.insert(id, addr.to_string());
                }
                _ => return err(format!("--cluster.peer-dial: {part:?} is not id=host:port")),
            }
        }
        let tls = self.cluster_tls()?;
        let insecure = match (&listen_address, &tls) {
            (Some(listen), None) if !listen_host_is_loopback(listen) => {
                if !self.cluster_insecure {
                    return err(format!(
                        "the cluster gRPC port (--cluster.listen-address {listen}) would listen \
                         beyond loopback without TLS, where anyone who reaches it can write, \
                         wipe and change the membership: set --cluster.tls.cert-file, \
                         --cluster.tls.key-file and --cluster.tls.ca-file (see \
                         docs/security.md), listen on 127.0.0.1, or pass --cluster.insecure on \
                         a network where every host is trusted"
                    ));
                }
                true
            }
            _ => false,
        };
        Ok(ClusterSettings {
            node_id,
            peers,
            join,
            listen_address,
            advertise_address,
            peer_dial,
            tls,
            insecure,
        })
    }

    /// Resolves `--cluster.tls.*`: all three files or none; names only with them.
    fn cluster_tls(&self) -> Result<Option<pgw_raft::SecuritySettings>, ConfigError> {
        let err = |m: String| Err(ConfigError::Cluster(m));
        let files = [
            ("--cluster.tls.cert-file", &self.cluster_tls_cert_file),
            ("--cluster.tls.key-file", &self.cluster_tls_key_file),
            ("--cluster.tls.ca-file", &self.cluster_tls_ca_file),
        ];
        let given: Vec<&str> = files
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| *n)
            .collect();
        let names = |v: &Option<String>| -> Vec<String> {
            v.iter()
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        };
        let (Some(cert), Some(key), Some(ca)) = (
            &self.cluster_tls_cert_file,
            &self.cluster_tls_key_file,
            &self.cluster_tls_ca_file,
        ) else {
            if !given.is_empty() {
                let missing: Vec<&str> = files
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                return err(format!(
                    "{} given without {}: mutual TLS on the cluster port needs all three",
                    given.join(", "),
                    missing.join(" and ")
                ));
            }
            if self.cluster_tls_peer_names.is_some() || self.cluster_tls_admin_names.is_some() {
                return err(
                    "--cluster.tls.peer-names and --cluster.tls.admin-names need \
                     --cluster.tls.cert-file, --cluster.tls.key-file and --cluster.tls.ca-file"
                        .into(),
                );
            }
            return Ok(None);
        };
        if self.cluster_insecure {
            return err(
                "--cluster.insecure contradicts --cluster.tls.*: remove one of them".into(),
            );
        }
        Ok(Some(pgw_raft::SecuritySettings {
            files: pgw_raft::security::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            peer_names: names(&self.cluster_tls_peer_names),
            admin_names: names(&self.cluster_tls_admin_names),
        }))
    }

    /// Every flag under its upstream name with its value as a string (spec §9.1): booleans
    /// `true`/`false`, durations in Go's notation. Upstream flags without a counterpart in pgw
    /// have an empty value.
    fn status_flags(&self, route_prefix: &str) -> BTreeMap<String, String> {
        let b = |v: bool| v.to_string();
        let mut f = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            f.insert(k.to_string(), v);
        };
        // Upstream flags.
        put("log.format", self.log_format.as_str().into());
        put("log.level", self.log_level.as_str().into());
        put("persistence.file", String::new());
        put("persistence.interval", String::new());
        put(
            "push.disable-consistency-check",
            b(self.consistency_check_disabled()),
        );
        put("push.enable-utf8-names", String::new());
        put("web.config.file", self.web_config_file.clone());
        put("web.enable-admin-api", b(self.admin_api_enabled()));
        put("web.enable-lifecycle", b(self.lifecycle_enabled()));
        put("web.external-url", self.external_url.clone());
        put("web.listen-address", self.listen_address.clone());
        put("web.local-assets", String::new());
        // Upstream shows the computed prefix (the flag variable is overwritten).
        put("web.route-prefix", route_prefix.to_string());
        put("web.systemd-socket", String::new());
        put("web.telemetry-path", self.telemetry_path.clone());
        // pgw's own flags.
        put(
            "cluster.advertise-address",
            self.advertise_address.clone().unwrap_or_default(),
        );
        put("cluster.join", self.join.clone().unwrap_or_default());
        put(
            "cluster.listen-address",
            self.cluster_listen_address.clone().unwrap_or_default(),
        );
        put(
            "cluster.node-id",
            self.node_id.map(|i| i.to_string()).unwrap_or_default(),
        );
        put("cluster.peers", self.peers.clone().unwrap_or_default());
        put("web.shutdown-drain", format_duration(self.shutdown_drain));
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        put(
            "cluster.tls.cert-file",
            path(&self.cluster_tls_cert_file).unwrap_or_default(),
        );
        put(
            "cluster.tls.key-file",
            path(&self.cluster_tls_key_file).unwrap_or_default(),
        );
        put(
            "cluster.tls.ca-file",
            path(&self.cluster_tls_ca_file).unwrap_or_default(),
        );
        put(
            "cluster.tls.peer-names",
            self.cluster_tls_peer_names.clone().unwrap_or_default(),
        );
        put(
            "cluster.tls.admin-names",
            self.cluster_tls_admin_names.clone().unwrap_or_default(),
        );
        put("cluster.insecure", b(self.cluster_insecure));
        put("cluster.write-timeout", format_duration(self.write_timeout));
        put(
            "raft.election-timeout",
            format_duration(self.election_timeout),
        );
        put(
            "raft.heartbeat-interval",
            format_duration(self.heartbeat_interval),
        );
        put("push.max-body-bytes", self.max_body_bytes.to_string());
        put("push.max-series", self.max_series.to_string());
        put(
            "push.max-labels-per-series",
            self.max_labels_per_series.to_string(),
        );
        put(
            "push.max-label-value-bytes",
            self.max_label_value_bytes.to_string(),
        );
        put("push.max-groups", self.max_groups.to_string());
        put(
            "cluster.max-snapshot-bytes",
            self.max_snapshot_bytes.to_string(),
        );
        put("raft.snapshot-every", self.snapshot_every.to_string());
        put(
            "push.max-pending-writes",
            self.max_pending_writes.to_string(),
        );
        put("web.idle-timeout", format_duration(self.idle_timeout));
        put("web.max-connections", self.max_connections.to_string());
        put(
            "web.read-body-timeout",
            format_duration(self.read_body_timeout),
        );
        put(
            "web.read-header-timeout",
            format_duration(self.read_header_timeout),
        );
        put("storage.path", self.storage_path.display().to_string());
        put(
            "web.self-metrics-path",
            self.self_metrics_path.clone().unwrap_or_default(),
        );
        f
    }
}

/// Whether `s` looks like `host:port` (host may be `[v6]`, port numeric).
fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains('/')
        }
        None => false,
    }
}

/// Whether a listen address names a host others can dial (not `:port`, `0.0.0.0`, `[::]`).
fn listen_host_is_specific(listen: &str) -> bool {
    match listen.rsplit_once(':') {
        Some((host, _)) => !matches!(host, "" | "0.0.0.0" | "[::]" | "::"),
        None => false,
    }
}

/// Whether a listen address is on loopback only (`127.0.0.0/8`, `[::1]`, `localhost`).
fn listen_host_is_loopback(listen: &str) -> bool {
    let Some((host, _)) = listen.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Upstream `computeRoutePrefix`: with `prefix` empty the path of `external_url` is used; `/`
/// means no prefix; anything else gets a leading `/` and loses one trailing `/`.
pub fn compute_route_prefix(prefix: &str, external_url: &str) -> String {
    let mut p = if prefix.is_empty() {
        url_path(external_url)
    } else {
        prefix.to_string()
    };
    if p == "/" {
        return String::new();
    }
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    if p.ends_with('/') {
        p.pop();
    }
    p
}

/// The (percent-decoded) path of a URL such as `http://host:9091/ext/` or `/ext`.
fn url_path(url: &str) -> String {
    let no_frag = url.split('#').next().unwrap_or_default();
    let no_query = no_frag.split('?').next().unwrap_or_default();
    let path = match no_query.find("://") {
        Some(i) => {
            let after = &no_query[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        None => no_query,
    };
    match crate::http::path::percent_decode(path.as_bytes()) {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => path.to_string(),
    }
}

/// Go's `path.Join(prefix, p)` for an absolute `p`: joined and cleaned.
fn join_path(prefix: &str, p: &str) -> String {
    let joined = format!("{prefix}/{p}");
    String::from_utf8_lossy(&crate::http::path::clean(joined.as_bytes(), false)).into_owned()
}

/// Parses a byte size: a plain integer, or a number with `B`, `KB`/`KiB`, `MB`/`MiB`,
/// `GB`/`GiB` (case-insensitive; decimal units are powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid byte size {s:?}: expected e.g. 67108864 or 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        other => return Err(format!("invalid byte size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("byte size {s:?} is too large"))
}

/// Parses a duration in Go's `time.ParseDuration` notation (`10s`, `1m30s`, `250ms`, `1.5h`),
/// which is what the upstream flags use. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?}: expected e.g. 10s, 1m30s or 500ms");
    let mut rest = s.trim().strip_prefix('+').unwrap_or(s.trim());
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(err());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, r) = rest.split_at(int_end);
        let (frac, r) = match r.strip_prefix('.') {
            Some(r2) => {
                let e = r2.find(|c: char| !c.is_ascii_digit()).unwrap_or(r2.len());
                r2.split_at(e)
            }
            None => ("", r),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(err());
        }
        let unit_end = r
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let i: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        let mut v = i.checked_mul(scale).ok_or_else(err)?;
        if !frac.is_empty() {
            let digits = &frac[..frac.len().min(18)];
            let f: u128 = digits.parse().map_err(|_| err())?;
            v += f * scale / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(v).ok_or_else(err)?;
        rest = r;
    }
    let nanos = u64::try_from(total).map_err(|_| err())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration as Go's `time.Duration.String` does (`10s`, `5m0s`, `1h0m0s`,
/// `1.5s`, `250ms`), for `/api/v1/status`.
pub fn format_duration(d: Duration) -> String {
    let u = d.as_nanos();
    if u == 0 {
        return "0s".into();
    }
    fn frac(v: u128, prec: u32) -> (u128, String) {
        let div = 10u128.pow(prec);
        let f = v % div;
        if f == 0 {
            return (v / div, String::new());
        }
        let s = format!("{f:0width$}", width = prec as usize);
        (v / div, format!(".{}", s.trim_end_matches('0')))
    }
    if u < 1_000_000_000 {
        let (prec, unit) = if u < 1_000 {
            (0, "ns")
        } else if u < 1_000_000 {
            (3, "\u{b5}s")
        } else {
            (6, "ms")
        };
        let (i, f) = frac(u, prec);
        return format!("{i}{f}{unit}");
    }
    let (secs, f) = frac(u, 9);
    let s = secs % 60;
    let mins = secs / 60;
    if mins == 0 {
        return format!("{s}{f}s");
    }
    let m = mins % 60;
    let h = mins / 60;
    if h == 0 {
        format!("{m}m{s}{f}s")
    } else {
        format!("{h}h{m}m{s}{f}s")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn optional_limits_default_to_unlimited() {
        let c = Config::try_parse_from(["pgw"]).unwrap();
        assert_eq!(c.limits(), pgw_core::policy::Limits::default());
        let c = Config::try_parse_from([
            "pgw",
            "--push.max-series=10",
            "--push.max-labels-per-series=20",
            "--push.max-label-value-bytes=30",
            "--push.max-groups=40",
        ])
        .unwrap();
        let l = c.limits();
        assert_eq!(
            (
                l.max_series,
                l.max_labels_per_series,
                l.max_label_value_bytes,
                l.max_groups
            ),
            (Some(10), Some(20), Some(30), Some(40))
        );
        let s = c.validate().unwrap();
        assert_eq!(s.policy().limits, l);
        assert_eq!(
            s.flags.get("push.max-groups").map(String::as_str),
            Some("40")
        );
    }

    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["pgw"];
        v.extend_from_slice(args);
        Config::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn defaults_match_upstream() {
        let c = cfg(&[]);
        assert_eq!(c.listen_address, ":9091");
        assert_eq!(c.telemetry_path, "/metrics");
        assert_eq!(c.storage_path, PathBuf::from("./data"));
        assert_eq!(c.max_body_bytes, 64 << 20);
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.snapshot_every, 10_000);
        let s = c.validate().expect("valid");
        assert_eq!(s.route_prefix, "");
        assert_eq!(s.telemetry_path, "/metrics");
        assert!(s.check_consistency);
        assert!(!s.enable_admin_api && !s.enable_lifecycle);
        assert_eq!(s.flags["web.enable-admin-api"], "false");
        assert_eq!(s.flags["cluster.write-timeout"], "10s");
        assert_eq!(s.flags["persistence.file"], "");
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
            assert!(s.flags.contains_key(k), "missing flag {k}");
        }
    }

    #[test]
    fn boolean_flag_forms() {
        assert!(cfg(&["--web.enable-lifecycle"]).lifecycle_enabled());
        assert!(cfg(&["--web.enable-lifecycle=true"]).lifecycle_enabled());
        assert!(!cfg(&["--web.enable-lifecycle=false"]).lifecycle_enabled());
        assert!(!cfg(&["--web.enable-lifecycle", "--no-web.enable-lifecycle"]).lifecycle_enabled());
        assert!(cfg(&["--push.disable-consistency-check"]).consistency_check_disabled());
    }

    #[test]
    fn refused_flags() {
        let e = cfg(&["--persistence.file=/tmp/x"]).validate().unwrap_err();
        assert!(e.to_string().contains("--storage.path"), "{e}");
        let e = cfg(&["--persistence.interval", "5m"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--storage.path"), "{e}");
        let s = cfg(&["--web.config.file=web.yml"])
            .validate()
            .expect("accepted");
        assert_eq!(s.web_config_file, Some(PathBuf::from("web.yml")));
        assert_eq!(s.flags["web.config.file"], "web.yml");
        assert!(cfg(&["--web.max-connections=0"]).validate().is_err());
        assert!(cfg(&["--web.read-header-timeout=0s"]).validate().is_err());
        assert_eq!(
            cfg(&["--web.systemd-socket"]).validate().unwrap_err(),
            ConfigError::SystemdSocket
        );
        assert!(cfg(&["--web.systemd-socket=false"]).validate().is_ok());
        assert_eq!(
            cfg(&["--push.enable-utf8-names"]).validate().unwrap_err(),
            ConfigError::Utf8Names
        );
        let s = cfg(&["--web.local-assets=/usr/share/x"])
            .validate()
            .expect("ignored");
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn route_prefix() {
        assert_eq!(compute_route_prefix("", ""), "");
        assert_eq!(compute_route_prefix("/", ""), "");
        assert_eq!(compute_route_prefix("pfx", ""), "/pfx");
        assert_eq!(compute_route_prefix("/pfx/", ""), "/pfx");
        assert_eq!(compute_route_prefix("", "http://h:9091/ext/"), "/ext");
        assert_eq!(compute_route_prefix("", "http://h:9091"), "");
        assert_eq!(compute_route_prefix("/r", "http://h/ext/"), "/r");
        let s = cfg(&["--web.route-prefix=/pfx", "--web.telemetry-path=/tele"])
            .validate()
            .expect("valid");
        assert_eq!(s.telemetry_path, "/pfx/tele");
        assert_eq!(s.flags["web.route-prefix"], "/pfx");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_micros(3)), "3\u{b5}s");
        assert_eq!(format_duration(Duration::from_nanos(12)), "12ns");
    }

    #[test]
    fn peer_dial_is_hidden_and_parsed() {
        let s = cfg(&[
            "--cluster.node-id=1",
            "--cluster.peers=1=127.0.0.1:1,2=127.0.0.1:2",
            "--cluster.listen-address=127.0.0.1:1",
            "--cluster.peer-dial=2=127.0.0.1:7002,3=127.0.0.1:7003",
            "--cluster.peer-dial",
            "4=127.0.0.1:7004",
        ])
        .validate()
        .expect("valid");
        assert_eq!(s.cluster.peer_dial.len(), 3);
        assert_eq!(s.cluster.peer_dial[&2], "127.0.0.1:7002");
        assert!(!s.flags.contains_key("cluster.peer-dial"));
        assert!(cfg(&["--cluster.peer-dial=x"]).validate().is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .expect("help");
        assert!(!String::from_utf8_lossy(&help).contains("peer-dial"));
    }

    #[test]
    fn plaintext_cluster_port_beyond_loopback_needs_insecure() {
        let peers = "--cluster.peers=1=10.0.0.1:9095,2=10.0.0.2:9095";
        // The default listen address (:9095, every interface) without TLS: refused.
        let e = cfg(&["--cluster.node-id=1", peers]).validate().unwrap_err();
        assert!(e.to_string().contains("--cluster.insecure"), "{e}");
        for listen in ["0.0.0.0:9095", "10.0.0.1:9095", "[::]:9095", "host:9095"] {
            let l = format!("--cluster.listen-address={listen}");
            assert!(
                cfg(&["--cluster.node-id=1", peers, &l]).validate().is_err(),
                "{listen}"
            );
        }
        for listen in [
            "127.0.0.1:9095",
            "127.0.0.2:1",
            "[::1]:9095",
            "localhost:9095",
        ] {
            let l = format!("--cluster.listen-address={listen}");
            let s = cfg(&["--cluster.node-id=1", peers, &l])
                .validate()
                .expect(listen);
            assert!(!s.cluster.insecure && s.warnings.is_empty(), "{listen}");
        }
        let s = cfg(&["--cluster.node-id=1", peers, "--cluster.insecure"])
            .validate()
            .expect("--cluster.insecure allows it");
        assert!(s.cluster.insecure);
        assert!(s.warnings.iter().any(|w| w.contains("--cluster.insecure")));
        // No gRPC port at all (a single node without cluster flags): nothing to protect.
        assert!(cfg(&[]).validate().expect("valid").cluster.tls.is_none());
    }

    #[test]
    fn cluster_tls_flags() {
        let tls = [
            "--cluster.tls.cert-file=/c.pem",
            "--cluster.tls.key-file=/k.pem",
            "--cluster.tls.ca-file=/ca.pem",
        ];
        let peers = "--cluster.peers=1=10.0.0.1:9095,2=10.0.0.2:9095";
        let mut a = vec!["--cluster.node-id=1", peers];
        a.extend(tls);
        a.extend([
            "--cluster.tls.peer-names=n1, n2,",
            "--cluster.tls.admin-names=ops",
        ]);
        let s = cfg(&a).validate().expect("TLS beyond loopback is fine");
        let t = s.cluster.tls.expect("tls");
        assert_eq!(t.files.cert, PathBuf::from("/c.pem"));
        assert_eq!(t.peer_names, ["n1", "n2"]);
        assert_eq!(t.admin_names, ["ops"]);
        assert!(!s.cluster.insecure);
        assert_eq!(s.flags["cluster.tls.ca-file"], "/ca.pem");
        // Some of the files only: the message names the missing ones.
        let e = cfg(&["--cluster.node-id=1", peers, tls[0]])
            .validate()
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("--cluster.tls.key-file") && m.contains("--cluster.tls.ca-file"),
            "{m}"
        );
        // Names without files, and TLS with --cluster.insecure: contradictions.
        assert!(cfg(&["--cluster.tls.peer-names=a"]).validate().is_err());
        let mut b = vec!["--cluster.insecure"];
        b.extend(tls);
        assert!(cfg(&b).validate().is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1kb"), Ok(1000));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("").is_err());
    }
}
