//! Sandboxes (containers Porthole creates on demand from a profile) and container lifecycle actions.

use serde::{Deserialize, Serialize};

use super::TerminalStarted;

/// Longest profile name accepted in a request.
pub const MAX_PROFILE_NAME_LEN: usize = 64;

/// Docker label: the profile a sandbox was made from.
pub const LABEL_PROFILE: &str = "porthole.sandbox.profile";
/// Docker label: `1` on a container made for the warm pool (it keeps the label once claimed: Docker cannot
/// change labels; the owner lives in Porthole's state store).
pub const LABEL_POOL: &str = "porthole.sandbox.pool";
/// Docker label: the id of the Porthole instance that made the sandbox.
pub const LABEL_INSTANCE: &str = "porthole.sandbox.instance";

/// One sandbox, as `POST /api/v1/sandboxes`, `GET /api/v1/sandboxes` and `create-sandbox` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// The container's full id.
    pub id: String,
    /// The container's name.
    pub name: String,
    pub profile: String,
    /// The owner's subject, as in the audit log.
    pub owner: String,
    pub image: String,
    /// Docker's state word (`running`, `exited`, ...).
    pub state: String,
    /// When the owner got it (created, or claimed from the warm pool), ms since the Unix epoch.
    pub created_at: u64,
    /// When `max_lifetime` ends it, ms since the Unix epoch.
    pub expires_at: u64,
    /// In cluster mode: the node that made it, and keeps it (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `POST /api/v1/sandboxes` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSandbox {
    pub profile: String,
}

/// `create-sandbox` request: make a sandbox and open a terminal in it at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flow_control: bool,
}

/// Successful `create-sandbox` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCreated {
    pub sandbox: Sandbox,
    /// The terminal opened in it, as `start-terminal` acks it.
    pub terminal: TerminalStarted,
}

/// `remove-sandbox` request, and its ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveSandbox {
    /// The sandbox's container id (or unique prefix, or name).
    pub id: String,
}

/// `start-container`, `stop-container` and `restart-container` request, and their ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerAction {
    /// Container id, unique id prefix, or name.
    pub container_id: String,
}

/// One profile the caller may create, as `GET /api/v1/sandbox-profiles` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxProfile {
    pub name: String,
    pub image: String,
    /// Memory limit in bytes (also the memory+swap limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// `none` or a network's name.
    pub network: String,
    /// The OCI runtime (`runsc` for gVisor); absent: the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Seconds after its last terminal ends that a sandbox is removed.
    pub idle_timeout_secs: u64,
    /// Seconds a sandbox lives at most.
    pub max_lifetime_secs: u64,
    /// Containers kept warm.
    pub pool: usize,
}

/// What the caller may do with a container in the picker (`ContainerSummary::sandbox`, `manage`, `removable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRights {
    /// May start, stop and restart it.
    #[serde(default)]
    pub manage: bool,
    /// May remove it (a sandbox of theirs, or one they may manage).
    #[serde(default)]
    pub remove: bool,
}
