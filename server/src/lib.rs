//! Porthole's server as a library: configuration, the router (REST + Socket.IO on one port), and a
//! [`start`] that binds and serves until told to stop. `main.rs` is a thin wrapper around it.

pub mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
pub mod docker;
pub mod error;
pub mod http;
pub mod recording;
pub mod refusals;
pub mod sandbox;
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
/// Packets queued per socket before emits report congestion (output then waits: backpressure). With output
/// events of at most 64 KiB, a client that does not read makes the server hold at most 16 MiB for it.
pub const SOCKET_QUEUE_PACKETS: usize = 256;
/// Socket.IO heartbeat: ping every 25 s, drop a peer silent for 20 s more.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How much longer than the sign-in timeout socketioxide waits before it drops a session that never connected.
pub const SIGN_IN_BACKSTOP: Duration = Duration::from_secs(1);

/// Window in which failed sign-ins per address are counted (`--max-auth-failures` per window).
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Authentication, policy and audit log from the flags. Key, policy and log files are read now, so mistakes
/// stop the server at start.
pub fn security(config: &Config) -> anyhow::Result<state::Security> {
    let jwt = config.jwt();
    let auth = if jwt.configured() {
        auth::Authenticator::jwt(jwt).map_err(anyhow::Error::msg)?
    } else {
        auth::Authenticator::local(config.token.clone().unwrap_or_else(auth::generate_token))
    };
    let policy = match &config.policy {
        Some(path) => auth::policy::Policy::load(path)?,
        None => {
            if !auth.is_local() {
                tracing::warn!("no --policy given: every holder of a valid JWT may open any container");
            }
            auth::policy::Policy::allow_all()
        }
    };
    Ok(state::Security::new(
        auth,
        policy,
        audit::Audit::open(&config.audit_log).map_err(anyhow::Error::msg)?,
        auth::FailureLimiter::new(config.max_auth_failures, AUTH_FAILURE_WINDOW),
        config.max_events_per_sec,
    ))
}

/// The sandbox manager from the flags: the state store under `--state-dir` and the `--sandboxes` profiles.
pub fn sandboxes(config: &Config, runtime: Arc<dyn ContainerRuntime>) -> anyhow::Result<Arc<sandbox::Sandboxes>> {
    let store = sandbox::store::Store::open(&config.state_dir()).map_err(anyhow::Error::msg)?;
    let profiles = match &config.sandboxes {
        Some(path) => sandbox::profile::Profiles::load(path).map_err(anyhow::Error::msg)?,
        None => sandbox::profile::Profiles::default(),
    };
    let limits =
        sandbox::CreateLimits { per_user: config.max_sandboxes_per_user, per_sec: config.max_sandbox_creates_per_sec };
    // In cluster mode a node's sandboxes (and its pool) carry its node id as their instance.
    let instance = config.cluster_redis.as_ref().and(config.node_id.as_deref());
    sandbox::Sandboxes::new(runtime, store, profiles, limits, instance).map_err(anyhow::Error::msg)
}

/// Builds the axum router with the Socket.IO layer and the edge guard, over `runtime`.
pub fn router(
    config: &Config,
    runtime: Arc<dyn ContainerRuntime>,
) -> anyhow::Result<(axum::Router, AppState, SocketIo)> {
    router_with_edge(config, runtime, http::conn::Connections::new(config.edge()))
}

/// [`router`] with given connection accounting.
fn router_with_edge(
    config: &Config,
    runtime: Arc<dyn ContainerRuntime>,
    edge: Arc<http::conn::Connections>,
) -> anyhow::Result<(axum::Router, AppState, SocketIo)> {
    let sign_in = edge.limits().sign_in_timeout;
    let sandboxes = sandboxes(config, runtime.clone())?;
    let security = security(config)?;
    let recordings = recording::Recordings::open(config.recordings(), &config.state_dir(), security.audit_log())
        .map_err(anyhow::Error::msg)?;
    let cluster = match config.cluster().map_err(anyhow::Error::msg)? {
        Some(settings) => {
            let hosts = config.endpoints().map_err(anyhow::Error::msg)?.into_iter().map(|(name, _)| name).collect();
            Some(Arc::new(cluster::Cluster::new(settings, hosts).map_err(anyhow::Error::msg)?))
        }
        None => None,
    };
    let state = AppState::new(runtime, config.limits(), security, sandboxes, recordings, edge, cluster);
    let parser = ParserConfig::common().max_incoming_binaries(4).max_incoming_binary_buf_size(MAX_PACKET_BYTES);
    let (layer, io) = SocketIo::builder()
        .with_parser(parser)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .max_payload(MAX_PACKET_BYTES as u64)
        .ws_max_message_size(MAX_PACKET_BYTES)
        .ws_max_frame_size(MAX_PACKET_BYTES)
        .max_buffer_size(SOCKET_QUEUE_PACKETS)
        // A backstop: the edge closes WebSockets that did not sign in after `sign_in` (with a connect_error);
        // this also ends polling sessions that never sent CONNECT.
        .connect_timeout(sign_in + SIGN_IN_BACKSTOP)
        .build_layer();
    socket::register(&io, state.clone());
    let edge = http::Edge {
        trusted_proxies: config.trusted_proxy.clone(),
        tls: config.tls(),
        allowed_origins: config.allowed_origin.clone(),
    };
    let guard = http::Guard { state: state.clone(), edge: Arc::new(edge) };
    let router = http::router(state.clone())
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(guard, http::guard))
        // Refused requests are accounted by `refusals`; tower-http would log every 5xx at ERROR, one line each.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );
    Ok((router, state, io))
}

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    local_token: Option<String>,
    state: AppState,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The address to open in a browser: with the local access token, which the page exchanges for a cookie.
    pub fn open_url(&self) -> String {
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() => SocketAddr::new([127, 0, 0, 1].into(), self.addr.port()).to_string(),
            _ => self.addr.to_string(),
        };
        match &self.local_token {
            Some(t) => format!("{}://{host}/?token={t}", self.scheme()),
            None => format!("{}://{host}/", self.scheme()),
        }
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
    let hosts = config.endpoints().map_err(anyhow::Error::msg)?;
    let hosts = hosts
        .into_iter()
        .map(|(name, endpoint)| (name, Arc::new(docker::engine::Engine::new(endpoint)) as Arc<dyn ContainerRuntime>))
        .collect();
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(docker::hosts::Hosts::new(hosts));
    start_with_runtime(config, runtime).await
}

/// Like [`start`], with a given runtime.
pub async fn start_with_runtime(config: &Config, runtime: Arc<dyn ContainerRuntime>) -> anyhow::Result<RunningServer> {
    let (open_files, _) = http::conn::raise_open_files_limit();
    let limits = config.edge().fitted(open_files);
    tracing::info!(
        max_connections = limits.max_connections,
        max_per_address = limits.max_per_address,
        "connection caps"
    );
    let edge = http::conn::Connections::new(limits);
    let (router, state, io) = router_with_edge(config, runtime.clone(), edge.clone())?;
    let profiles = state.sandbox_manager().profiles();
    if !profiles.profiles.is_empty() {
        match runtime.runtimes().await {
            Ok(have) => profiles.check_runtimes(&have).map_err(anyhow::Error::msg)?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the sandbox profiles' runtimes: the daemon does not answer")
            }
        }
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            // One process-wide crypto provider (ring); a second install attempt is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("loading the TLS certificate {} and key {}", cert.display(), key.display()))?;
            Some(tls)
        }
        _ => None,
    };
    let listener = std::net::TcpListener::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(watch::container_events(runtime, io.clone(), state.clone(), stop.clone()));
    tokio::spawn(watch::container_notices(io.clone(), state.clone(), stop.clone()));
    tokio::spawn(refusals::Refusals::run(state.clone(), stop.clone()));
    {
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move { state.maintain_sandboxes(stop).await });
    }
    {
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move { state.maintain_recordings(stop).await });
    }
    {
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move { state.run_cluster(stop).await });
    }
    if let Some(cluster) = state.cluster().cloned() {
        let stop2 = stop.clone();
        tokio::spawn(async move { cluster.publish_events(stop2).await });
        tokio::spawn(watch::cluster_events(io.clone(), state.clone(), stop.clone()));
    }
    let shutdown = {
        let (stop, state) = (stop.clone(), state.clone());
        async move {
            stop.cancelled().await;
            state.shutdown().await;
            io.close().await;
        }
    };
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            handle.graceful_shutdown(Some(Duration::from_secs(1)));
        });
    }
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let serving = tls.is_some();
    // Every connection passes the edge (caps, timeouts, TCP_NODELAY); TLS, if any, runs on top of it.
    let accept = http::conn::EdgeAcceptor::new(edge, serving);
    let task = tokio::spawn(async move {
        match tls {
            Some(tls) => axum_server::from_tcp_rustls(listener, tls)
                .map(|tls| tls.acceptor(accept))
                .handle(handle)
                .serve(service)
                .await
                .context("serving HTTPS"),
            None => axum_server::from_tcp(listener)
                .acceptor(accept)
                .handle(handle)
                .serve(service)
                .await
                .context("serving HTTP"),
        }
    });
    let local_token = state.local_token().map(str::to_string);
    Ok(RunningServer { addr, tls: serving, local_token, state, stop, task })
}
