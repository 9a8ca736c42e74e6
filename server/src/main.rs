//! The `porthole` binary: parse flags, set up logging, serve until SIGINT/SIGTERM, close every terminal.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use porthole_server::Config;
use porthole_server::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background thread, gives memory freed after a burst (an output flood, an attack) back to
/// the system within seconds; glibc's allocator kept ~20 MiB of a single unread output flood for good
/// (measured: `unread_output_flood` in server/tests/exhaustion.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let url = server.open_url();
    tracing::info!(addr = %server.addr(), scheme = server.scheme(), "listening");
    // The one line meant for the person who started it (and for scripts waiting for the port). It holds the
    // local access token, so it goes to stdout only, never to the logs.
    let _ = writeln!(std::io::stdout(), "Porthole is listening on {url}");
    let _ = std::io::stdout().flush();
    if let Ok(health) = server.state().health().await {
        tracing::info!(api = %health.docker_api_version, "Docker daemon answers");
    } else {
        tracing::warn!("the Docker daemon does not answer yet; Porthole will use it as soon as it does");
    }

    tokio::spawn(reload_on_sighup(server.state().clone()));

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

/// Re-reads the policy and the sandbox profiles on each SIGHUP; a bad file keeps the old one.
async fn reload_on_sighup(state: porthole_server::AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match state.reload_policy() {
            Ok(()) => tracing::info!("policy reloaded"),
            Err(porthole_server::auth::policy::PolicyError::NoFile) => {}
            Err(e) => tracing::error!(error = %e, "policy not reloaded; the previous one stays in force"),
        }
        if state.sandbox_manager().profiles().source.is_some() {
            match state.reload_sandboxes().await {
                Ok(()) => tracing::info!("sandbox profiles reloaded"),
                Err(e) => tracing::error!(error = %e, "sandbox profiles not reloaded; the previous ones stay in force"),
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
