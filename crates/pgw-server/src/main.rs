//! `pgw`: a Pushgateway node. Parses flags, sets up logging, binds the HTTP listener and
//! runs until SIGTERM, SIGINT or `/-/quit`, then shuts down gracefully.

use std::process::ExitCode;

use clap::Parser;
use pgw_server::Config;

#[tokio::main]
async fn main() -> ExitCode {
    // First: SIGHUP's default action ends the process, and `systemctl reload` sends it at any
    // time, start-up included. From here on it asks for a reload instead.
    let reload = reload_requests();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("pgw: {e}");
        return ExitCode::from(2);
    }
    pgw_server::logging::init(config.log_level, config.log_format);
    if let Some(fp) = pgw_store::failpoint::setup_from_env() {
        tracing::warn!(FAILPOINTS = %fp, "this build has fail points (crash tests only)");
    }
    // As Go programs do: the soft RLIMIT_NOFILE up to the hard limit, before any socket.
    pgw_server::edge::raise_fd_limit();
    let web = match pgw_server::web::WebConfigHandle::load(
        (!config.web_config_file.is_empty()).then(|| std::path::Path::new(&config.web_config_file)),
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(err = %e, "cannot start: fix the web config file");
            eprintln!("pgw: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match pgw_server::bind(&config.listen_address).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %config.listen_address, err = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        signal().await;
        // The first signal drains and stops gracefully; a second one stops at once.
        tokio::spawn(async {
            signal().await;
            tracing::warn!("second termination signal: stopping at once");
            std::process::exit(1);
        });
    };
    match pgw_server::run_with_web(config, listener, web, shutdown, reload).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(err = format!("{e:#}"), "pgw stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// A channel that yields once per SIGHUP (coalesced while a reload is pending).
fn reload_requests() -> Option<tokio::sync::mpsc::Receiver<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pgw: cannot handle SIGHUP ({e}); a reload request would end pgw");
                return None;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the configuration");
                // A full channel means a reload is already pending: it reads the newest files.
                let _ = tx.try_send(());
            }
        });
        Some(rx)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Completes on SIGINT or SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
