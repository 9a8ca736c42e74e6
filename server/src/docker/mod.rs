//! The container runtime seam: what Porthole needs from Docker, behind a small trait.
//!
//! [`engine::Engine`] implements it over the Docker Engine API (bollard for requests, a raw hijacked connection
//! for exec streams). The session core's pure unit tests use [`echo::EchoRuntime`], a fake whose processes echo
//! their input; integration tests use the real daemon.

#[cfg(test)]
pub mod echo;
pub mod engine;
pub mod hosts;

use std::pin::Pin;

use app::protocol::{ContainerSummary, ContainersChanged};
use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite};

/// Failures of the container runtime, already sorted by what the user should be told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The daemon cannot be reached (socket missing, connection refused, timed out, went away).
    #[error("the Docker daemon is unavailable: {0}")]
    Unavailable(String),
    /// The daemon says the object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The daemon refused because of the object's state (e.g. container not running).
    #[error("{0}")]
    Conflict(String),
    /// A bare reference matches containers on more than one Docker host ([`hosts::Hosts`]).
    #[error("{0}")]
    Ambiguous(String),
    /// Any other answer from the daemon.
    #[error("Docker error ({status}): {message}")]
    Api { status: u16, message: String },
}

/// A container an exec can target, resolved from an id, id prefix or name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTarget {
    /// Full id (`HOST/ID` with more than one Docker host, see [`hosts`]).
    pub id: String,
    /// The Docker host's name (filled by [`hosts::Hosts`]; empty from a single runtime).
    pub host: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Docker's state word (`running`, `exited`, `paused`, ...).
    pub state: String,
    /// Running and not paused: an exec can start.
    pub accepts_exec: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The container's configured user (`Config.User`; empty: the image's, usually root).
    pub user: String,
    /// It runs with every capability dropped (`CapDrop` has `ALL`): root in it cannot signal other users.
    pub caps_dropped: bool,
    /// Docker's `State.OOMKilled`: a process of it was killed for lack of memory in its last run.
    pub oom_killed: bool,
}

/// Whether `reference` names the container `name` with bare Docker id `id`: its name, its id, or a prefix of 4 or
/// more of its id.
pub fn names(reference: &str, name: &str, id: &str) -> bool {
    name == reference || id == reference || (reference.len() >= 4 && id.starts_with(reference))
}

impl ContainerTarget {
    /// Who may end a terminal's processes here: root, unless every capability is dropped (then root has no
    /// `CAP_KILL` over other users), where it is the container's own user, the one its terminals run as.
    pub fn reaper_user(&self) -> String {
        if self.caps_dropped && !self.user.is_empty() { self.user.clone() } else { "0".into() }
    }
}

/// A container lifecycle event, with what the policy needs to decide who may hear of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub change: ContainersChanged,
    /// The container's name (without `/`).
    pub name: String,
    /// The event's attributes: the container's labels, plus Docker's `name`, `image` and the like.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    /// `NAME=value` entries added to the container's environment.
    pub env: Vec<String>,
    /// `user`, `uid` or `uid:gid`; `None` is the container's default user.
    pub user: Option<String>,
    /// Allocate a tty (and merge stdout/stderr into it).
    pub tty: bool,
}

/// Raw byte streams of a started exec: the tty output and its input.
pub struct ExecStream {
    /// Docker's exec id.
    pub exec_id: String,
    pub output: Pin<Box<dyn AsyncRead + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl std::fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStream").field("exec_id", &self.exec_id).finish_non_exhaustive()
    }
}

/// State of an exec process as the daemon reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStatus {
    pub running: bool,
    pub exit_code: Option<i64>,
    /// Host pid; 0 when the process never started.
    pub pid: i64,
}

/// A container to create (for sandboxes). Limits left `None` are Docker's defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    pub image: String,
    /// The container's name; `None`: Docker picks one.
    pub name: Option<String>,
    /// The command; `None`: the image's default.
    pub cmd: Option<Vec<String>>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// `uid:gid` or a user name.
    pub user: Option<String>,
    /// Memory limit in bytes (also the memory+swap limit: no swap).
    pub memory_bytes: Option<i64>,
    /// CPUs, e.g. 0.5.
    pub cpus: Option<f64>,
    /// Most processes.
    pub pids: Option<i64>,
    /// Mount point -> tmpfs options (e.g. `size=16m`).
    pub tmpfs: std::collections::BTreeMap<String, String>,
    /// `none`, or a network's name.
    pub network: String,
    pub read_only_rootfs: bool,
    /// An OCI runtime registered with the daemon (e.g. `runsc`); `None`: the default.
    pub runtime: Option<String>,
    /// `(name, soft, hard)` resource limits, e.g. `("nofile", 1024, 1024)`.
    pub ulimits: Vec<(String, i64, i64)>,
    /// `NAME=value` entries of the container's environment.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// Run Docker's init as PID 1 (it reaps orphans and passes signals on).
    pub init: bool,
}

/// What Porthole needs from a container engine.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Checks the daemon answers; returns the API version in use.
    async fn ping(&self) -> Result<String, RuntimeError>;
    /// Every container, running or not.
    async fn list_containers(&self) -> Result<Vec<ContainerSummary>, RuntimeError>;
    /// Resolves an id, unique id prefix or name.
    async fn resolve(&self, container_ref: &str) -> Result<ContainerTarget, RuntimeError>;
    /// Creates and starts an exec, returning its streams as soon as the daemon accepted it.
    async fn start_exec(&self, container_id: &str, spec: &ExecSpec) -> Result<ExecStream, RuntimeError>;
    async fn inspect_exec(&self, exec_id: &str) -> Result<ExecStatus, RuntimeError>;
    async fn resize_exec(&self, exec_id: &str, cols: u16, rows: u16) -> Result<(), RuntimeError>;
    /// Container lifecycle events (not exec events) from now on, until the connection breaks.
    async fn container_events(&self) -> Result<BoxStream<'static, Result<ContainerEvent, RuntimeError>>, RuntimeError>;
    /// Creates a container (not started) with every capability dropped and no new privileges; returns its id.
    /// Errors: `NotFound` the image is not present locally (nothing is pulled), `Conflict` the name is taken,
    /// `Api` the daemon refused the settings (e.g. an unknown runtime or network).
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Starts a created or stopped container; starting a running one is not an error.
    /// Errors: `NotFound` no such container, `Api` it could not start.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container, killing it after `grace`; stopping a stopped one is not an error.
    /// Errors: `NotFound` no such container.
    async fn stop_container(&self, id: &str, grace: std::time::Duration) -> Result<(), RuntimeError>;
    /// Removes a container and its anonymous volumes, killing it first if it runs. Errors: `NotFound` no such
    /// container, `Conflict` a removal is already in progress.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// The OCI runtimes the daemon has registered (`runc`, `runsc`, ...).
    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError>;
}
