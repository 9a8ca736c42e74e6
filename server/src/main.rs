//! The `porthole` binary: parse flags, set up logging, serve until SIGINT/SIGTERM, close every terminal.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use porthole_server::Config;
use porthole_server::config::LogFormat;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let mut server = match porthole_server::start(&config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = writeln!(std::io::stderr(), "porthole: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://{}/", server.addr());
    tracing::info!(%url, "listening");
    // The one line meant for the person who started it (and for scripts waiting for the port).
    let _ = writeln!(std::io::stdout(), "Porthole is listening on {url}");
    let _ = std::io::stdout().flush();
    if let Ok(health) = server.state().health().await {
        tracing::info!(api = %health.docker_api_version, "Docker daemon answers");
    } else {
        tracing::warn!("the Docker daemon does not answer yet; Porthole will use it as soon as it does");
    }

    tokio::select! {
        r = server.wait() => {
            if let Err(e) = r {
                tracing::error!("{e:#}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        signal = shutdown_signal() => {
            tracing::info!(%signal, "shutting down: closing every terminal");
            match server.shutdown(Duration::from_secs(config.shutdown_timeout_secs)).await {
                Ok(()) => { tracing::info!("stopped"); ExitCode::SUCCESS }
                Err(e) => { tracing::error!("{e:#}"); ExitCode::FAILURE }
            }
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
