//! Porthole's server as a library: configuration, the router (REST + Socket.IO on one port), and a
//! [`start`] that binds and serves until told to stop. `main.rs` is a thin wrapper around it.

pub mod config;
pub mod docker;
pub mod error;
pub mod http;
pub mod session;
pub mod socket;
pub mod state;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use socketioxide::{ParserConfig, SocketIo};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use config::Config;
use docker::ContainerRuntime;
pub use state::AppState;

/// Largest Engine.IO packet accepted (websocket message or polling body). A client sending more is
/// disconnected by the transport; application limits (e.g. `MAX_INPUT_BYTES`) are far below it.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Packets queued per socket before emits report congestion (output then waits: backpressure).
pub const SOCKET_QUEUE_PACKETS: usize = 1024;
/// Socket.IO heartbeat: ping every 25 s, drop a peer silent for 20 s more.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the axum router with the Socket.IO layer, over `runtime`.
pub fn router(config: &Config, runtime: Arc<dyn ContainerRuntime>) -> (axum::Router, AppState, SocketIo) {
    let state = AppState::new(runtime, config.limits());
    let parser = ParserConfig::common().max_incoming_binaries(4).max_incoming_binary_buf_size(MAX_PACKET_BYTES);
    let (layer, io) = SocketIo::builder()
        .with_parser(parser)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .max_payload(MAX_PACKET_BYTES as u64)
        .ws_max_message_size(MAX_PACKET_BYTES)
        .ws_max_frame_size(MAX_PACKET_BYTES)
        .max_buffer_size(SOCKET_QUEUE_PACKETS)
        .build_layer();
    socket::register(&io, state.clone());
    let router = http::router(state.clone()).layer(layer).layer(TraceLayer::new_for_http());
    (router, state, io)
}

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    state: AppState,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Closes every terminal (leaving no process behind), disconnects clients and stops serving.
    pub async fn shutdown(self, timeout: Duration) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(timeout, self.task).await {
            Ok(joined) => joined.context("server task panicked")?,
            Err(_) => anyhow::bail!("shutdown took longer than {timeout:?}"),
        }
    }

    /// Waits until the server stops by itself (it only does on errors).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task panicked")?
    }
}

/// Binds `config.listen` and serves on the Docker daemon `config` points at.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    config.validate().map_err(anyhow::Error::msg)?;
    let endpoint = config.endpoint().map_err(anyhow::Error::msg)?;
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(docker::engine::Engine::new(endpoint));
    start_with_runtime(config, runtime).await
}

/// Like [`start`], with a given runtime.
pub async fn start_with_runtime(config: &Config, runtime: Arc<dyn ContainerRuntime>) -> anyhow::Result<RunningServer> {
    let (router, state, io) = router(config, runtime.clone());
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(watch::container_events(runtime, io.clone(), stop.clone()));
    let shutdown = {
        let (stop, state) = (stop.clone(), state.clone());
        async move {
            stop.cancelled().await;
            state.sessions().shutdown().await;
            io.close().await;
        }
    };
    let task = tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(shutdown).await.context("serving HTTP")
    });
    Ok(RunningServer { addr, state, stop, task })
}
