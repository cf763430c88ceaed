//! `pgwctl`, the admin CLI of a pgw cluster.
//!
//! Owns: the command line (status, members, leader, snapshot, backup and restore, and the
//! HTTP-API shortcuts groups/delete/wipe), following the leader from any endpoint, the
//! quorum-safety checks of membership changes, the backup file format, and the table and JSON
//! output (shapes documented in docs/operations.md), and the transport options `--cacert`,
//! `--cert`, `--key`, `--user` (module `tls`: HTTPS and basic auth for the HTTP commands).
//!
//! TLS: `--cacert`/`--cert`/`--key` (env `PGWCTL_CACERT`, `PGWCTL_CERT`, `PGWCTL_KEY`, see
//! `tls.rs`) make the gRPC commands speak mutual TLS to the cluster port (pgw-tls).
//!
//! Does not own: Raft, storage or HTTP serving. It is a thin client of the admin gRPC service
//! (`pgw.v1.AdminService`, from pgw-proto) and of a node's HTTP API, and must not depend on
//! openraft, sled or axum (a unit test checks Cargo.lock).
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 cluster unreachable.

mod backup_file;
mod client;
mod cluster;
mod commands;
mod error;
mod http;
mod output;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::CtlError;
use crate::output::Format;

/// Manage a pgw cluster: membership, health, backups.
#[derive(Debug, Parser)]
#[command(
    name = "pgwctl",
    version,
    about = "Manage a pgw cluster (a Raft-replicated Prometheus Pushgateway)",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 cluster unreachable.\n\
                  See docs/operations.md for runbooks and the JSON output shapes."
)]
pub struct Cli {
    /// gRPC address (host:port, the --cluster.listen-address of a node) of any member; repeat
    /// or separate with commas to try several in turn.
    #[arg(
        long = "endpoint",
        short = 'e',
        global = true,
        env = "PGWCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:9095",
        value_name = "HOST:PORT"
    )]
    pub endpoints: Vec<String>,

    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,

    /// Bound of one request, and of the search for a leader (e.g. 500ms, 10s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// TLS to the cluster port and the HTTP port, and HTTP credentials (`--cacert`, `--cert`,
    /// `--key`, `--user`).
    #[command(flatten)]
    pub tls: tls::TlsArgs,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One row per member (addresses, role, leader, term, indexes, lag, reachability) and a
    /// verdict. Exits 0 when healthy, 1 when degraded or without quorum.
    Status {
        /// A member more than this many entries behind the leader counts as lagging.
        #[arg(long, default_value_t = 1000, value_name = "ENTRIES")]
        max_lag: u64,
    },
    /// List, add, promote and remove members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Who leads the cluster.
    Leader,
    /// Build a snapshot on a node now (and purge its log up to it).
    Snapshot {
        /// The member to snapshot (default: the first endpoint that answers).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Write a consistent copy of the whole store, taken on the leader, to FILE (atomically).
    Backup {
        /// The backup file to write.
        file: PathBuf,
        /// Do not draw a progress line on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Take the backup from the first endpoint that answers, without asking the leader:
        /// works without a quorum (to rebuild a cluster that lost its majority), but may miss
        /// the latest writes. Point --endpoint at the survivor with the highest applied index.
        #[arg(long)]
        local: bool,
    },
    /// Load a backup into a fresh single-node cluster (the endpoint), as one replicated write.
    Restore {
        /// The backup file, written by `pgwctl backup`.
        file: PathBuf,
        /// Replace the groups the node already holds.
        #[arg(long)]
        force: bool,
    },
    /// List the groups (grouping key, last push and failure times, families).
    Groups {
        /// HTTP address of a node (default: the HTTP address the endpoint reports).
        #[arg(long, value_name = "HOST:PORT")]
        http: Option<String>,
        /// Ask the leader for its commit index first (see every acknowledged write).
        #[arg(long)]
        linearizable: bool,
    },
    /// Delete one group, e.g. `pgwctl delete job=backup instance=db1`.
    Delete {
        /// The grouping key as LABEL=VALUE pairs; `job` is required.
        #[arg(required = true, value_name = "LABEL=VALUE")]
        labels: Vec<String>,
        /// HTTP address of a node (default: the HTTP address the endpoint reports).
        #[arg(long, value_name = "HOST:PORT")]
        http: Option<String>,
    },
    /// Delete every group (the node needs --web.enable-admin-api).
    Wipe {
        /// Confirm: every group of the cluster is deleted.
        #[arg(long)]
        yes: bool,
        /// HTTP address of a node (default: the HTTP address the endpoint reports).
        #[arg(long, value_name = "HOST:PORT")]
        http: Option<String>,
    },
}

/// `pgwctl member ...`.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members.
    List,
    /// Add node ID at gRPC address ADDR as a learner (idempotent).
    Add {
        /// The new node's --cluster.node-id.
        id: u64,
        /// The new node's gRPC address (its --cluster.advertise-address).
        addr: String,
        /// The new node's HTTP address (default: what the node reports).
        #[arg(long, value_name = "HOST:PORT")]
        http_address: Option<String>,
        /// Wait until the learner has caught up, then promote it to voter.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits for the learner to catch up.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        wait_timeout: Duration,
        /// Skip pgwctl's own checks when promoting. The server still refuses to promote an
        /// unreachable node or to lose quorum; --force only lets a lagging learner be promoted.
        #[arg(long)]
        force: bool,
    },
    /// Promote learner ID to voter.
    Promote {
        /// The learner's id.
        id: u64,
        /// Promote even if the learner lags. The server still refuses to promote an unreachable
        /// node or to lose quorum, whatever this flag says.
        #[arg(long)]
        force: bool,
        /// The learner may be at most this many entries behind the leader.
        #[arg(long, default_value_t = 1000, value_name = "ENTRIES")]
        max_lag: u64,
    },
    /// Remove member ID (voter or learner); the leader may be removed.
    Remove {
        /// The member's id.
        id: u64,
        /// Skip pgwctl's own quorum check. The server still refuses a removal that would lose
        /// quorum (kept for compatibility).
        #[arg(long)]
        force: bool,
    },
}

/// Parses `500ms`, `10s`, `5m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // Help and version exit 0, usage errors 2 (clap's codes match ours).
        Err(e) => e.exit(),
    };
    let format = cli.output;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgwctl: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(commands::run(cli));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            report(&e, format);
            e.exit.code()
        }
    };
    // Do not wait for idle connections to close.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}

/// Prints an error: on stderr, and in JSON mode also as `{"error": ...}` on stdout.
fn report(e: &CtlError, format: Format) {
    eprintln!("pgwctl: {e}");
    if format == Format::Json {
        output::print_json(&serde_json::json!({
            "error": { "exit_code": e.exit.code(), "message": e.message }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn command_line() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "pgwctl",
            "-e",
            "a:1,b:2",
            "--endpoint",
            "c:3",
            "member",
            "add",
            "4",
            "d:4",
            "--wait",
        ])
        .unwrap();
        assert_eq!(c.endpoints, vec!["a:1", "b:2", "c:3"]);
        assert!(matches!(
            c.command,
            Command::Member(MemberCommand::Add {
                id: 4,
                wait: true,
                ..
            })
        ));
        let e = Cli::try_parse_from(["pgwctl", "member", "remove", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    /// pgwctl's dependency tree (`cargo tree`, normal dependencies with pgwctl's own feature
    /// resolution) has no openraft, sled or axum.
    #[test]
    fn dependency_tree_is_small() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--manifest-path",
            ])
            .arg(manifest)
            .args(["-p", "pgw-cli"])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        let names: std::collections::BTreeSet<&str> =
            tree.lines().filter_map(|l| l.split(' ').next()).collect();
        assert!(
            names.contains("tonic"),
            "the tree lists pgwctl's dependencies:\n{tree}"
        );
        for banned in ["openraft", "sled", "axum", "pgw-raft", "pgw-store"] {
            assert!(
                !names.contains(banned),
                "pgwctl depends on {banned}:\n{tree}"
            );
        }
    }
}
