//! `pgw`: a Pushgateway node. Parses flags, sets up logging, binds the HTTP listener and
//! runs until SIGTERM, SIGINT or `/-/quit`, then shuts down gracefully.

use std::process::ExitCode;

use clap::Parser;
use pgw_server::Config;

#[tokio::main]
async fn main() -> ExitCode {
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
    // SIGHUP (wired by the binary's signal handling): `web.reload()` re-reads the file.
    let listener = match pgw_server::bind(&config.listen_address).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %config.listen_address, err = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match pgw_server::run_with_web(config, listener, web, signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(err = format!("{e:#}"), "pgw stopped with an error");
            ExitCode::FAILURE
        }
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
