//! [`ContainerRuntime`] over the Docker Engine API.
//!
//! Requests go through bollard. Exec streams do not: bollard's exec reader guesses whether a stream is
//! multiplexed from its first byte, so tty output that happens to start with a byte 0..=2 at a read boundary is
//! taken for a frame header and the stream stalls or is corrupted. For a tty exec the daemon sends raw bytes, so
//! `POST /exec/{id}/start` is sent here on its own connection, the `101 UPGRADED` answer is read, and the socket
//! is then handed over unchanged: no decoding, no copying, reads as large as the reader's buffer.
//!
//! The client is created lazily and re-created after failures, so a daemon that is down when Porthole starts,
//! or restarts later, is picked up without restarting Porthole.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use app::protocol::{ContainerSummary, ContainersChanged};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::CreateExecOptions;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder, ResizeExecOptions};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::{
    ContainerEvent, ContainerRuntime, ContainerSpec, ContainerTarget, ExecSpec, ExecStatus, ExecStream, RuntimeError,
};

/// Container event actions that change what a container list shows.
const LIST_EVENTS: [&str; 9] = ["create", "start", "die", "stop", "pause", "unpause", "rename", "restart", "destroy"];
/// Timeout for ordinary Engine API requests, in seconds (bollard's unit).
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// Timeout for connecting and upgrading an exec stream.
const EXEC_UPGRADE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest HTTP response head accepted while upgrading an exec stream.
const MAX_UPGRADE_HEAD_BYTES: usize = 16 * 1024;
/// Read buffer for an exec upgrade's response head (the stream after it is read unbuffered).
const HEAD_BUFFER_BYTES: usize = 4 * 1024;
/// Largest error body read from a refused upgrade.
const MAX_UPGRADE_ERROR_BODY: u64 = 16 * 1024;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://host:port` (plain HTTP).
    Tcp(String),
}

impl Endpoint {
    /// The default endpoint: `DOCKER_HOST` when set, else the local unix socket.
    pub fn from_env() -> Result<Endpoint, String> {
        match std::env::var("DOCKER_HOST") {
            Ok(v) if !v.is_empty() => Endpoint::parse(&v),
            _ => Ok(Endpoint::Unix(PathBuf::from("/var/run/docker.sock"))),
        }
    }

    /// Parses `unix://PATH`, a bare absolute path, `tcp://HOST:PORT` or `http://HOST:PORT`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("docker host {s:?} has no socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else if let Some(addr) = s.strip_prefix("tcp://").or_else(|| s.strip_prefix("http://")) {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() || !addr.contains(':') {
                return Err(format!("docker host {s:?} must be tcp://HOST:PORT"));
            }
            Ok(Endpoint::Tcp(addr.to_string()))
        } else {
            Err(format!(
                "unsupported docker host {s:?}: use unix://PATH or tcp://HOST:PORT (TLS and ssh are not supported)"
            ))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

trait Duplex: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Duplex for T {}

/// The Docker Engine API client.
#[derive(Debug)]
pub struct Engine {
    endpoint: Endpoint,
    /// A client whose API version was negotiated with the daemon; `None` until the daemon first answers.
    client: Mutex<Option<Docker>>,
}

impl Engine {
    pub fn new(endpoint: Endpoint) -> Engine {
        Engine { endpoint, client: Mutex::new(None) }
    }

    fn cached(&self) -> Option<Docker> {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A negotiated client, connecting first when needed.
    async fn client(&self) -> Result<Docker, RuntimeError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let fresh = match &self.endpoint {
            Endpoint::Unix(path) => {
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(&format!("tcp://{addr}"), REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(classify)?;
        let negotiated = fresh.negotiate_version().await.map_err(classify)?;
        tracing::info!(endpoint = %self.endpoint, api = %api_version(&negotiated), "connected to the Docker daemon");
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(negotiated.clone());
        Ok(negotiated)
    }

    /// Runs `f` with a client; forgets the client when the daemon proves unreachable so the next call
    /// reconnects (and renegotiates: the daemon may have been replaced by another version).
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, RuntimeError>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: std::future::Future<Output = Result<T, BollardError>>,
    {
        let client = self.client().await?;
        let result = f(client).await.map_err(classify);
        if let Err(RuntimeError::Unavailable(_)) = &result {
            *self.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }

    async fn connect_raw(&self) -> std::io::Result<Pin<Box<dyn Duplex>>> {
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => Box::pin(UnixStream::connect(path).await?),
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Box::pin(s)
            }
        })
    }

    /// `POST /exec/{id}/start` with `Upgrade: tcp`; returns the raw duplex stream after the response head.
    async fn upgrade_exec(&self, version: &str, exec_id: &str, tty: bool) -> Result<ExecStream, RuntimeError> {
        let conn = self
            .connect_raw()
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("connecting to {}: {e}", self.endpoint)))?;
        let (read, mut write) = tokio::io::split(conn);
        let body = format!(r#"{{"Detach":false,"Tty":{tty}}}"#);
        let head = format!(
            "POST /v{version}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\nUser-Agent: porthole\r\n\
             Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        write.write_all(head.as_bytes()).await.map_err(|e| RuntimeError::Unavailable(format!("starting exec: {e}")))?;
        // Buffered only while the response head is read; the stream itself is handed over unbuffered.
        let mut reader = BufReader::with_capacity(HEAD_BUFFER_BYTES, read);
        let mut status_line = String::new();
        let mut head_bytes = 0usize;
        let mut content_length: u64 = 0;
        loop {
            let mut line = String::new();
            let n = (&mut reader)
                .take((MAX_UPGRADE_HEAD_BYTES - head_bytes) as u64)
                .read_line(&mut line)
                .await
                .map_err(|e| RuntimeError::Unavailable(format!("reading exec start response: {e}")))?;
            if n == 0 {
                return Err(RuntimeError::Unavailable("the daemon closed the exec stream before answering".into()));
            }
            head_bytes += n;
            if head_bytes >= MAX_UPGRADE_HEAD_BYTES {
                return Err(RuntimeError::Api { status: 0, message: "oversized exec start response".into() });
            }
            if status_line.is_empty() {
                status_line = line.trim_end().to_string();
                continue;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 101 || status == 200 {
            // Bytes of the stream that arrived with the head come first, then the socket, read directly.
            let early = bytes::Bytes::copy_from_slice(reader.buffer());
            let socket = reader.into_inner();
            let output: Pin<Box<dyn AsyncRead + Send>> =
                if early.is_empty() { Box::pin(socket) } else { Box::pin(std::io::Cursor::new(early).chain(socket)) };
            return Ok(ExecStream { exec_id: exec_id.to_string(), output, input: Box::pin(write) });
        }
        let mut body = Vec::new();
        let _ = (&mut reader).take(content_length.min(MAX_UPGRADE_ERROR_BODY)).read_to_end(&mut body).await;
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(status_error(status, message))
    }
}

fn api_version(docker: &Docker) -> String {
    let v = docker.client_version();
    format!("{}.{}", v.major_version, v.minor_version)
}

fn status_error(status: u16, message: String) -> RuntimeError {
    match status {
        404 => RuntimeError::NotFound(message),
        409 => RuntimeError::Conflict(message),
        _ => RuntimeError::Api { status, message },
    }
}

/// Sorts bollard's errors into what the user should be told.
fn classify(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => status_error(status_code, message),
        BollardError::SocketNotFoundError(path) => RuntimeError::Unavailable(format!("no socket at {path}")),
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::HttpClientError { .. } => RuntimeError::Unavailable(e.to_string()),
        other => RuntimeError::Api { status: 0, message: other.to_string() },
    }
}

/// Docker names carry a leading `/`.
fn strip_slash(name: &str) -> String {
    name.strip_prefix('/').unwrap_or(name).to_string()
}

#[async_trait]
impl ContainerRuntime for Engine {
    async fn ping(&self) -> Result<String, RuntimeError> {
        self.with_client(|d| async move { d.ping().await.map(|_| api_version(&d)) }).await
    }

    async fn list_containers(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let options = ListContainersOptionsBuilder::new().all(true).build();
        let list = self.with_client(|d| async move { d.list_containers(Some(options)).await }).await?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                host: String::new(),
                name: c.names.and_then(|n| n.into_iter().next()).map(|n| strip_slash(&n)).unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                created: c.created.unwrap_or_default(),
                labels: c.labels.map(|l| l.into_iter().collect()).unwrap_or_default(),
                sandbox: None,
                rights: Default::default(),
            })
            .collect())
    }

    async fn resolve(&self, container_ref: &str) -> Result<ContainerTarget, RuntimeError> {
        let c = self.with_client(|d| async move { d.inspect_container(container_ref, None).await }).await?;
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let caps_dropped = c
            .host_config
            .as_ref()
            .and_then(|h| h.cap_drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c.eq_ignore_ascii_case("ALL")));
        let running = state.running.unwrap_or(false);
        let paused = state.paused.unwrap_or(false);
        let restarting = state.restarting.unwrap_or(false);
        Ok(ContainerTarget {
            id: c.id.unwrap_or_default(),
            host: String::new(),
            name: c.name.map(|n| strip_slash(&n)).unwrap_or_default(),
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            accepts_exec: running && !paused && !restarting,
            labels: config.labels.map(|l| l.into_iter().collect()).unwrap_or_default(),
            user: config.user.unwrap_or_default(),
            caps_dropped,
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    async fn start_exec(&self, container_id: &str, spec: &ExecSpec) -> Result<ExecStream, RuntimeError> {
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(spec.tty),
            env: Some(spec.env.clone()),
            cmd: Some(spec.cmd.clone()),
            user: spec.user.clone(),
            ..Default::default()
        };
        let client = self.client().await?;
        let version = api_version(&client);
        let created = self.with_client(|d| async move { d.create_exec(container_id, options).await }).await?;
        tokio::time::timeout(EXEC_UPGRADE_TIMEOUT, self.upgrade_exec(&version, &created.id, spec.tty))
            .await
            .map_err(|_| RuntimeError::Unavailable("timed out starting the exec".into()))?
    }

    async fn inspect_exec(&self, exec_id: &str) -> Result<ExecStatus, RuntimeError> {
        let r = self.with_client(|d| async move { d.inspect_exec(exec_id).await }).await?;
        Ok(ExecStatus { running: r.running.unwrap_or(false), exit_code: r.exit_code, pid: r.pid.unwrap_or(0) })
    }

    async fn resize_exec(&self, exec_id: &str, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        let options = ResizeExecOptions { h: i32::from(rows), w: i32::from(cols) };
        self.with_client(|d| async move { d.resize_exec(exec_id, options).await }).await
    }

    async fn container_events(&self) -> Result<BoxStream<'static, Result<ContainerEvent, RuntimeError>>, RuntimeError> {
        let client = self.client().await?;
        let filters = std::collections::HashMap::from([("type", vec!["container"]), ("event", LIST_EVENTS.to_vec())]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let stream = client.events(Some(options)).filter_map(|item| async move {
            match item {
                Ok(e) => {
                    let action = e.action.unwrap_or_default();
                    let actor = e.actor.unwrap_or_default();
                    let labels: std::collections::BTreeMap<String, String> =
                        actor.attributes.unwrap_or_default().into_iter().collect();
                    let name = labels.get("name").cloned().unwrap_or_default();
                    let change = ContainersChanged { container_id: actor.id.unwrap_or_default(), action };
                    // Health checks report as e.g. "health_status: healthy"; only list-changing actions pass.
                    LIST_EVENTS.contains(&change.action.as_str()).then_some(Ok(ContainerEvent { change, name, labels }))
                }
                Err(e) => Some(Err(classify(e))),
            }
        });
        Ok(stream.boxed())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        use bollard::models::{ContainerCreateBody, HostConfig};
        let host = HostConfig {
            memory: spec.memory_bytes,
            memory_swap: spec.memory_bytes,
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: spec.pids,
            tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
            network_mode: Some(spec.network.clone()),
            readonly_rootfs: Some(spec.read_only_rootfs),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            runtime: spec.runtime.clone(),
            init: Some(spec.init),
            ulimits: (!spec.ulimits.is_empty()).then(|| {
                spec.ulimits
                    .iter()
                    .map(|(name, soft, hard)| bollard::models::ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(*soft),
                        hard: Some(*hard),
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            user: spec.user.clone(),
            labels: Some(spec.labels.clone().into_iter().collect()),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            working_dir: spec.working_dir.clone(),
            tty: Some(true),
            open_stdin: Some(true),
            host_config: Some(host),
            ..Default::default()
        };
        let options =
            bollard::query_parameters::CreateContainerOptions { name: spec.name.clone(), ..Default::default() };
        let created = self.with_client(|d| async move { d.create_container(Some(options), body).await }).await?;
        Ok(created.id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self.with_client(|d| async move { d.start_container(id, None).await }).await {
            // 304: already running.
            Err(RuntimeError::Api { status: 304, .. }) => Ok(()),
            other => other,
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self.with_client(|d| async move { d.stop_container(id, Some(options)).await }).await {
            Err(RuntimeError::Api { status: 304, .. }) => Ok(()),
            other => other,
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::RemoveContainerOptions { force: true, v: true, link: false };
        self.with_client(|d| async move { d.remove_container(id, Some(options)).await }).await
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        let info = self.with_client(|d| async move { d.info().await }).await?;
        Ok(info.runtimes.map(|r| r.into_keys().collect()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hosts_parse() {
        assert_eq!(Endpoint::parse("unix:///run/d.sock"), Ok(Endpoint::Unix("/run/d.sock".into())));
        assert_eq!(Endpoint::parse("/run/d.sock"), Ok(Endpoint::Unix("/run/d.sock".into())));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:2375"), Ok(Endpoint::Tcp("127.0.0.1:2375".into())));
        assert!(Endpoint::parse("ssh://me@host").is_err());
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("tcp://nohostport").is_err());
    }

    #[test]
    fn daemon_errors_are_sorted_for_the_user() {
        let e = classify(BollardError::DockerResponseServerError { status_code: 404, message: "No such".into() });
        assert!(matches!(e, RuntimeError::NotFound(_)));
        let e = classify(BollardError::DockerResponseServerError { status_code: 409, message: "stopped".into() });
        assert!(matches!(e, RuntimeError::Conflict(_)));
        assert!(matches!(classify(BollardError::RequestTimeoutError), RuntimeError::Unavailable(_)));
        assert!(matches!(classify(BollardError::SocketNotFoundError("/x".into())), RuntimeError::Unavailable(_)));
    }
}
