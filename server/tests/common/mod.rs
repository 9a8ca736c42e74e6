//! Test harness: a real Porthole server on port 0, a typed Socket.IO client (rust_socketio speaking
//! `app::protocol`), and throwaway containers on the real Docker daemon, removed even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod jwt;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod sandbox;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::{
    self, CloseTerminal, ContainersChanged, ErrorBody, ErrorEvent, Exit, Hello, Resize, StartTerminal, TerminalAck,
    TerminalId, TerminalStarted, event,
};
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;
use porthole_client::{Connection, Incoming, Options, Transport};
use porthole_server::{Config, RunningServer};
use rust_socketio::TransportType;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;

/// How long a test waits for something a user would see before failing. Generous: CI machines are slow;
/// this is a bound on a hang, not a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The test image with bash, built by scripts/testbed.sh.
pub fn bash_image() -> String {
    std::env::var("PORTHOLE_TEST_IMAGE_BASH").unwrap_or_else(|_| "porthole-test/bash:2".into())
}

/// The busybox-only test image (no bash).
pub fn sh_image() -> String {
    std::env::var("PORTHOLE_TEST_IMAGE_SH").unwrap_or_else(|_| "porthole-test/sh:2".into())
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "porthole_server=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .expect("Docker daemon must answer; run scripts/testbed.sh")
}

/// The test bed's second Docker daemon (`scripts/testbed.sh`), for the tests of several Docker hosts.
pub const SECOND_DOCKER_SOCKET: &str = "/run/porthole-docker2.sock";

pub async fn second_docker() -> Docker {
    Docker::connect_with_unix(SECOND_DOCKER_SOCKET, 120, bollard::API_DEFAULT_VERSION)
        .unwrap()
        .negotiate_version()
        .await
        .expect("the second Docker daemon must answer; run scripts/testbed.sh")
}

/// [`test_config`] serving two Docker hosts: `local` (the usual daemon) and `two` (the second).
pub fn two_hosts_config() -> Config {
    let mut c = test_config();
    c.docker_hosts = vec!["local=unix:///var/run/docker.sock".into(), format!("two=unix://{SECOND_DOCKER_SOCKET}")];
    c
}

// ---------------------------------------------------------------------------------------------------------------
// Containers

/// A container that exists for one test and is removed (forcefully) when dropped.
pub struct TestContainer {
    pub name: String,
    pub id: String,
    docker: Docker,
}

impl TestContainer {
    /// Starts a container of `image` running `sleep infinity` under docker-init (so orphans get reaped).
    pub async fn start(test: &str, image: &str) -> TestContainer {
        TestContainer::start_labeled(test, image, &[]).await
    }

    /// Like [`TestContainer::start`], with extra labels.
    pub async fn start_labeled(test: &str, image: &str, labels: &[(&str, &str)]) -> TestContainer {
        let name = format!("porthole-it-{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        TestContainer::start_named(docker().await, &name, test, image, labels).await
    }

    /// A container called `name` on the daemon `docker` talks to.
    pub async fn start_named(
        docker: Docker,
        name: &str,
        test: &str,
        image: &str,
        labels: &[(&str, &str)],
    ) -> TestContainer {
        let name = name.to_string();
        let mut all = HashMap::from([("porthole.test".to_string(), test.to_string())]);
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            labels: Some(all),
            host_config: Some(HostConfig { init: Some(true), ..Default::default() }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = docker.create_container(Some(options), body).await.expect("create test container");
        let guard = TestContainer { name, id: created.id, docker };
        guard.docker.start_container(&guard.id, None).await.expect("start test container");
        guard
    }

    /// A container that exists but is stopped.
    pub async fn stopped(test: &str, image: &str) -> TestContainer {
        let c = TestContainer::start(test, image).await;
        c.stop().await;
        c
    }

    pub async fn stop(&self) {
        let options = bollard::query_parameters::StopContainerOptionsBuilder::new().t(1).build();
        self.docker.stop_container(&self.id, Some(options)).await.expect("stop container");
    }

    /// Runs a command (no tty) and returns its exit code and stdout+stderr.
    pub async fn exec(&self, cmd: &[&str]) -> (i64, String) {
        let options = CreateExecOptions {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self.docker.create_exec(&self.id, options).await.expect("create exec");
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } = self.docker.start_exec(&exec.id, None).await.unwrap() {
            while let Some(Ok(chunk)) = output.next().await {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let code = self.docker.inspect_exec(&exec.id).await.unwrap().exit_code.unwrap_or(-1);
        (code, out)
    }

    /// Live processes in the container other than its init, its `sleep infinity` and the `ps` itself, as
    /// `ps` prints them. Zombies are not counted: they are not running, and init reaps them.
    pub async fn stray_processes(&self) -> Vec<String> {
        let (code, out) = self.exec(&["ps", "-o", "pid,stat,args"]).await;
        assert_eq!(code, 0, "ps failed: {out}");
        out.lines()
            .skip(1)
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let (pid, stat, args) = (cols[0], cols.get(1).copied().unwrap_or(""), cols[2..].join(" "));
                pid != "1" && !stat.starts_with('Z') && args != "sleep infinity" && !args.starts_with("ps -o")
            })
            .map(str::to_string)
            .collect()
    }

    /// Waits until no stray process is left; returns what was left at the deadline otherwise.
    pub async fn wait_no_strays(&self, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let strays = self.stray_processes().await;
            if strays.is_empty() || tokio::time::Instant::now() >= deadline {
                return strays;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        // Drop cannot await; remove on a helper thread with its own runtime, and wait for it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = docker.remove_container(&id, Some(options)).await;
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Server

/// The local access token test servers use (`--token`).
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// A fresh directory under the temp dir.
pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("porthole-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn test_config() -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.token = Some(TEST_TOKEN.into());
    c.audit_log = "/dev/null".into();
    // Each server its own state (its own instance id): servers must never clean up each other's sandboxes.
    c.state_dir = Some(tempdir("state"));
    c
}

/// An HTTP client that presents `TEST_TOKEN` as a bearer token.
pub fn http() -> reqwest::Client {
    http_as(TEST_TOKEN)
}

/// An HTTP client that presents `token` as a bearer token.
pub fn http_as(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// `GET url` as the test user.
pub async fn get(url: impl AsRef<str>) -> reqwest::Response {
    http().get(url.as_ref()).send().await.unwrap()
}

pub async fn start_server(config: Config) -> RunningServer {
    init_tracing();
    porthole_server::start(&config).await.expect("server starts")
}

pub fn base_url(server: &RunningServer) -> String {
    format!("http://{}", server.addr())
}

// ---------------------------------------------------------------------------------------------------------------
// Socket.IO client

/// What the server sent, by terminal.
#[derive(Default)]
struct Inbox {
    output: HashMap<TerminalId, Vec<u8>>,
    exits: HashMap<TerminalId, Exit>,
    errors: Vec<ErrorEvent>,
    hello: Option<Hello>,
    /// `auth-error` events.
    auth_errors: Vec<ErrorBody>,
    /// The server's `connect_error` message, if it refused the connection.
    connect_error: Option<String>,
    /// The server closed the connection.
    closed: bool,
    changes: Vec<ContainersChanged>,
    /// Every output event in arrival order, for ordering checks.
    order: Vec<TerminalId>,
    /// Per terminal: the offset where its received bytes start, and gaps or overlaps seen between events.
    first_offset: HashMap<TerminalId, u64>,
    discontinuities: Vec<String>,
    /// The last `terminal-viewers` count of each terminal.
    viewers: HashMap<TerminalId, usize>,
    /// Each terminal's output by stream (pipe terminals): stdout, stderr.
    streams: HashMap<TerminalId, (Vec<u8>, Vec<u8>)>,
}

/// `start-terminal` for `container`'s default shell at the default size.
pub fn shell_request(container: &str) -> StartTerminal {
    StartTerminal {
        container_id: container.into(),
        cols: None,
        rows: None,
        command: None,
        flow_control: false,
        tty: true,
    }
}

/// A typed Socket.IO client for the tests: a [`porthole_client::Connection`] and everything it received.
pub struct TestClient {
    client: Connection,
    inbox: Arc<Mutex<Inbox>>,
    changed: Arc<Notify>,
}

fn transport_of(t: TransportType) -> Transport {
    match t {
        TransportType::Polling => Transport::Polling,
        TransportType::WebsocketUpgrade | TransportType::Any => Transport::Upgrade,
        TransportType::Websocket => Transport::WebSocket,
    }
}

/// Files what arrives into the inbox, checking that each terminal's output is contiguous.
fn file(inbox: &mut Inbox, incoming: Incoming) {
    match incoming {
        Incoming::Output(o) => {
            let id = o.terminal_id.clone();
            let first = *inbox.first_offset.entry(id.clone()).or_insert(o.offset);
            let have = inbox.output.get(&id).map_or(0, |b| b.len() as u64);
            if o.offset != first + have {
                let msg = format!("{id}: event at offset {}, expected {}", o.offset, first + have);
                inbox.discontinuities.push(msg);
            }
            inbox.output.entry(id.clone()).or_default().extend_from_slice(&o.data.0);
            let streams = inbox.streams.entry(id.clone()).or_default();
            match o.stream {
                Some(app::protocol::OutputStream::Stderr) => streams.1.extend_from_slice(&o.data.0),
                _ => streams.0.extend_from_slice(&o.data.0),
            }
            inbox.order.push(id);
        }
        Incoming::Exit(exit) => {
            inbox.exits.insert(exit.terminal_id.clone(), exit);
        }
        Incoming::RequestError(e) => inbox.errors.push(e),
        Incoming::AuthError(e) => inbox.auth_errors.push(e),
        Incoming::ContainersChanged(c) => inbox.changes.push(c),
        Incoming::Closed => inbox.closed = true,
        Incoming::Viewers(v) => {
            inbox.viewers.insert(v.terminal_id, v.attached);
        }
        Incoming::Unknown(_) => {}
    }
}

impl TestClient {
    pub async fn connect(server: &RunningServer) -> TestClient {
        Self::connect_with(server, TransportType::Websocket).await
    }

    pub async fn connect_with(server: &RunningServer, transport: TransportType) -> TestClient {
        Self::connect_url(&base_url(server), transport).await
    }

    pub async fn connect_url(url: &str, transport: TransportType) -> TestClient {
        Self::connect_auth(url, transport, None).await
    }

    /// A protocol version 2 client with a stable client id (resumable terminals).
    pub async fn connect_v2(url: &str, client_id: &str) -> TestClient {
        let auth = serde_json::json!({"protocolVersion": 2, "clientId": client_id});
        Self::connect_auth(url, TransportType::Websocket, Some(auth)).await
    }

    /// Connects with `auth` (the test token added unless it names one).
    pub async fn connect_auth(url: &str, transport: TransportType, auth: Option<Value>) -> TestClient {
        let mut auth = auth.unwrap_or_else(|| serde_json::json!({}));
        if auth.get("token").is_none() {
            auth["token"] = Value::from(TEST_TOKEN);
        }
        match Self::try_connect(url, transport, auth, &[]).await {
            Ok(c) => c,
            Err(e) => panic!("socket.io connect refused: {e}"),
        }
    }

    /// Connects with exactly `auth` and the handshake `headers`; the server's refusal message on failure.
    pub async fn try_connect(
        url: &str,
        transport: TransportType,
        auth: Value,
        headers: &[(&str, &str)],
    ) -> Result<TestClient, String> {
        let options = Options {
            auth: Some(auth),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            transport: transport_of(transport),
            timeout: PATIENCE,
            ..Options::new(url, TEST_TOKEN)
        };
        let (client, mut rx) = Connection::connect(&options).await.map_err(|e| e.to_string())?;
        let inbox = Arc::new(Mutex::new(Inbox { hello: Some(client.hello().clone()), ..Inbox::default() }));
        let changed = Arc::new(Notify::new());
        let (i, n) = (inbox.clone(), changed.clone());
        tokio::spawn(async move {
            while let Some(incoming) = rx.recv().await {
                file(&mut i.lock().unwrap(), incoming);
                n.notify_waiters();
            }
        });
        Ok(TestClient { client, inbox, changed })
    }

    /// The `auth-error` events received.
    pub fn auth_errors(&self) -> Vec<ErrorBody> {
        self.inbox.lock().unwrap().auth_errors.clone()
    }

    /// Waits until the server has told this socket its credential lapsed and closed the connection.
    pub async fn wait_auth_error(&self) -> ErrorBody {
        self.wait_until("auth-error", |i| i.auth_errors.first().cloned()).await
    }

    pub async fn wait_closed(&self) {
        self.wait_until("the server closing the connection", |i| i.closed.then_some(())).await
    }

    async fn wait_until<T>(&self, what: &str, mut f: impl FnMut(&Inbox) -> Option<T>) -> T
    where
        T: Sized,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let notified = self.changed.notified();
            if let Some(v) = f(&self.inbox.lock().unwrap()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // One last look: notify_waiters does not store a permit.
                if let Some(v) = f(&self.inbox.lock().unwrap()) {
                    return v;
                }
                let inbox = self.inbox.lock().unwrap();
                let outputs: HashMap<_, _> =
                    inbox.output.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
                panic!(
                    "timed out waiting for {what}; outputs: {outputs:#?}; exits: {:?}; errors: {:?}",
                    inbox.exits, inbox.errors
                );
            }
        }
    }

    pub fn hello(&self) -> Hello {
        self.inbox.lock().unwrap().hello.clone().unwrap()
    }

    /// Emits `payload` with an ack and returns the ack's JSON value.
    pub async fn request_raw(&self, name: &str, payload: Value) -> Value {
        self.client.request_raw(name, payload).await.expect("ack in time")
    }

    pub async fn request<Req: Serialize, Res: DeserializeOwned>(
        &self,
        name: &str,
        req: &Req,
    ) -> Result<Res, ErrorBody> {
        let v = self.request_raw(name, serde_json::to_value(req).unwrap()).await;
        let reply: protocol::Reply<Res> =
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("ack {v} does not parse: {e}"));
        reply.into_result()
    }

    pub async fn emit_raw(&self, name: &str, payload: Value) {
        self.client.emit_raw(name, payload).await.expect("emit");
    }

    pub async fn start(&self, req: StartTerminal) -> Result<TerminalStarted, ErrorBody> {
        self.request(event::START_TERMINAL, &req).await
    }

    /// Opens the default shell in `container`.
    pub async fn shell(&self, container: &str) -> TerminalStarted {
        self.start(shell_request(container)).await.expect("start-terminal")
    }

    /// `start-terminal` for the default shell, expecting a refusal.
    pub async fn shell_err(&self, container: &str) -> ErrorBody {
        self.start(shell_request(container)).await.expect_err("start-terminal should be refused")
    }

    pub async fn input(&self, id: &TerminalId, data: &str) {
        self.client.input(id, data).await.expect("emit");
    }

    pub async fn resize(&self, id: &TerminalId, cols: u16, rows: u16) {
        let v = serde_json::to_value(Resize { terminal_id: id.clone(), cols, rows }).unwrap();
        self.emit_raw(event::RESIZE, v).await;
    }

    pub async fn close(&self, id: &TerminalId) -> Result<TerminalAck, ErrorBody> {
        self.request(event::CLOSE_TERMINAL, &CloseTerminal { terminal_id: id.clone() }).await
    }

    /// Everything `id` has printed so far, lossily decoded.
    pub fn screen(&self, id: &TerminalId) -> String {
        String::from_utf8_lossy(&self.bytes(id)).into_owned()
    }

    pub fn bytes(&self, id: &TerminalId) -> Vec<u8> {
        self.inbox.lock().unwrap().output.get(id).cloned().unwrap_or_default()
    }

    /// Gaps or overlaps between consecutive `output` events (should be none).
    pub fn discontinuities(&self) -> Vec<String> {
        self.inbox.lock().unwrap().discontinuities.clone()
    }

    /// Offset of the first byte received for `id`.
    pub fn first_offset(&self, id: &TerminalId) -> Option<u64> {
        self.inbox.lock().unwrap().first_offset.get(id).copied()
    }

    pub async fn attach(
        &self,
        req: &app::protocol::AttachTerminal,
    ) -> Result<app::protocol::TerminalAttached, ErrorBody> {
        self.request(event::ATTACH_TERMINAL, req).await
    }

    /// What `id` wrote to its stdout (all of a tty's output).
    pub fn stdout(&self, id: &TerminalId) -> Vec<u8> {
        self.inbox.lock().unwrap().streams.get(id).map(|s| s.0.clone()).unwrap_or_default()
    }

    /// What pipe terminal `id` wrote to its stderr.
    pub fn stderr(&self, id: &TerminalId) -> Vec<u8> {
        self.inbox.lock().unwrap().streams.get(id).map(|s| s.1.clone()).unwrap_or_default()
    }

    /// Waits until the last `terminal-viewers` count of `id` is `n`.
    pub async fn wait_viewers(&self, id: &TerminalId, n: usize) {
        let id2 = id.clone();
        self.wait_until(&format!("{n} viewers of {id}"), move |i| (i.viewers.get(&id2) == Some(&n)).then_some(())).await
    }

    pub fn errors(&self) -> Vec<ErrorEvent> {
        self.inbox.lock().unwrap().errors.clone()
    }

    pub fn exit_of(&self, id: &TerminalId) -> Option<Exit> {
        self.inbox.lock().unwrap().exits.get(id).cloned()
    }

    /// Waits until `id`'s output contains `needle`; returns the whole output.
    pub async fn wait_for(&self, id: &TerminalId, needle: &str) -> String {
        let needle_bytes = needle.as_bytes().to_vec();
        let id2 = id.clone();
        let bytes = self
            .wait_until(&format!("{needle:?} on {id}"), move |i| {
                let out = i.output.get(&id2)?;
                out.windows(needle_bytes.len()).any(|w| w == needle_bytes).then(|| out.clone())
            })
            .await;
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until `id` has produced at least `n` bytes.
    pub async fn wait_for_bytes(&self, id: &TerminalId, n: usize) -> Vec<u8> {
        let id2 = id.clone();
        self.wait_until(&format!("{n} bytes on {id}"), move |i| {
            let out = i.output.get(&id2)?;
            (out.len() >= n).then(|| out.clone())
        })
        .await
    }

    pub fn changes(&self) -> Vec<ContainersChanged> {
        self.inbox.lock().unwrap().changes.clone()
    }

    /// Waits for a `containers-changed` event about `container_id` with `action`.
    pub async fn wait_change(&self, container_id: &str, action: &str) -> ContainersChanged {
        let (id, action) = (container_id.to_string(), action.to_string());
        self.wait_until(&format!("containers-changed {action} {id}"), move |i| {
            i.changes.iter().find(|c| c.container_id == id && c.action == action).cloned()
        })
        .await
    }

    pub async fn wait_exit(&self, id: &TerminalId) -> Exit {
        let id2 = id.clone();
        self.wait_until(&format!("exit of {id}"), move |i| i.exits.get(&id2).cloned()).await
    }

    pub async fn wait_error(&self, n: usize) -> Vec<ErrorEvent> {
        self.wait_until(&format!("{n} error events"), move |i| (i.errors.len() >= n).then(|| i.errors.clone())).await
    }

    /// Types `command` and a newline, and waits for `expect` to appear after it.
    pub async fn run(&self, id: &TerminalId, command: &str, expect: &str) -> String {
        self.input(id, &format!("{command}\n")).await;
        self.wait_for(id, expect).await
    }

    pub async fn disconnect(self) {
        self.client.disconnect().await;
    }
}

/// Blocks until `f` holds or the deadline passes; for REST-side conditions.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
