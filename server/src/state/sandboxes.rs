//! The sandbox and container-management operations of the service door: profiles, create, list, remove, and
//! start/stop/restart of existing containers. Each decides (policy, ownership) and audits here.
//!
//! Who sees what:
//! - pool containers, and containers being made, are hidden from everyone (a pooled container goes to exactly
//!   one user);
//! - a sandbox's owner always sees it and may use, manage and remove it, whatever the rules say;
//! - other users see someone's sandbox only through a `shared = true` rule that covers it, and may remove or
//!   manage it only with `manage = true` on a rule that covers it;
//! - every other container is the policy's, as before; managing it needs `manage = true`.

use std::collections::HashMap;

use app::protocol::{
    ContainerAction, CreateSandbox, ErrorCode, ExitReason, Sandbox, SandboxCreated, SandboxProfile, StartTerminal,
};

use super::{AppState, Caller, Seat, denied};
use crate::audit::Record;
use crate::auth::policy::{Commands, Grant, Level, Policy};
use crate::error::ServiceError;
use crate::sandbox::store::Row;
use crate::sandbox::{Known, STOP_GRACE, Sandboxes};
use crate::session::launch::check_container_ref;
use crate::session::no_such_container;
use crate::session::viewer::Attachment;

/// A lifecycle action on an existing container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    fn audit_name(self) -> &'static str {
        match self {
            Action::Start => "container.start",
            Action::Stop => "container.stop",
            Action::Restart => "container.restart",
        }
    }
}

fn unknown_profile(name: &str) -> ServiceError {
    ServiceError::new(ErrorCode::UnknownProfile, format!("no sandbox profile {name:?} is available to you"))
}

fn on_sandbox(mut r: Record, row: &Row) -> Record {
    r.container = Some(row.name.clone());
    r.container_id = Some(row.id.clone());
    r.reason = Some(format!("profile {}", row.profile));
    r
}

impl AppState {
    /// What `caller` may do in the container `id` (`name`, `labels`) under `policy`: `None` if it is hidden
    /// from them. Sandboxes follow the rules in this module's header.
    pub(super) fn container_grant(
        &self,
        policy: &Policy,
        caller: &Caller,
        id: &str,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Option<Grant> {
        let by_rules = policy.grant(&caller.principal, name, labels);
        match self.sandboxes.known(id).or_else(|| self.known_elsewhere(id, labels)) {
            None => by_rules,
            Some(Known::Hidden) => None,
            Some(Known::Sandbox(row)) if row.owner == caller.principal.subject => {
                let mut g = by_rules.unwrap_or(Grant {
                    level: Level::Interact,
                    login_shell: true,
                    commands: Commands::Any,
                    shared: None,
                    manage: true,
                    record: None,
                });
                g.level = Level::Interact;
                g.login_shell = true;
                g.commands = Commands::Any;
                g.manage = true;
                // Others' terminals in their own sandbox (a colleague who may manage it opened one) too.
                g.shared = Some(Level::Interact);
                Some(g)
            }
            // Someone else's: at the level of the shared rule that shows it, never more.
            Some(Known::Sandbox(_)) => by_rules.and_then(|mut g| {
                g.level = g.shared?;
                Some(g)
            }),
        }
    }

    /// Cluster mode: what another node's sandbox container is (its owner's, or hidden: a pool container, one
    /// being made, or one of an instance this node has not heard of). Containers another instance labelled are
    /// never judged by the rules alone: only the node that made one knows whose it is.
    fn known_elsewhere(&self, id: &str, labels: &std::collections::BTreeMap<String, String>) -> Option<Known> {
        let cluster = self.cluster()?;
        let instance = labels.get(app::protocol::LABEL_INSTANCE)?;
        if instance == self.sandboxes.instance() {
            // This instance's label but not in its store: a leftover the clean-up removes.
            return Some(Known::Hidden);
        }
        Some(match cluster.peer_sandbox(id) {
            Some(sb) if !sb.owner.is_empty() => Known::Sandbox(Row {
                name: sb.name,
                id: sb.id,
                profile: sb.profile,
                kind: crate::sandbox::store::Kind::Owned,
                owner: sb.owner,
                image: sb.image,
                created_at_ms: sb.created_at,
                expires_at_ms: sb.expires_at,
            }),
            _ => Known::Hidden,
        })
    }

    /// Cluster mode: the node that made the sandbox container `id`, when it is another node's.
    pub fn sandbox_maker(&self, id: &str) -> Option<String> {
        if self.sandboxes.known(id).is_some() {
            return None;
        }
        self.cluster()?.peer_sandbox(id).and_then(|sb| sb.node)
    }

    /// Cluster mode: this node's sandbox containers as its peers read them (with their states now).
    pub(super) async fn published_sandboxes(&self) -> Vec<Sandbox> {
        let states: HashMap<String, String> = match self.sessions.runtime().list_containers().await {
            Ok(list) => list.into_iter().map(|c| (c.id, c.state)).collect(),
            Err(_) => HashMap::new(),
        };
        self.sandboxes
            .rows()
            .into_iter()
            .filter(|r| !r.id.is_empty())
            .map(|mut r| {
                if r.kind != crate::sandbox::store::Kind::Owned {
                    r.owner.clear();
                }
                Sandboxes::describe(&r, states.get(&r.id).map_or("unknown", String::as_str))
            })
            .collect()
    }

    /// The sandbox record of `id`, when it is a sandbox.
    pub(super) fn sandbox_of(&self, id: &str) -> Option<Row> {
        match self.sandboxes.known(id) {
            Some(Known::Sandbox(row)) => Some(row),
            _ => None,
        }
    }

    /// The profiles `caller` may create sandboxes from.
    pub fn sandbox_profiles(&self, caller: &Caller) -> Vec<SandboxProfile> {
        let policy = self.policy();
        self.sandboxes
            .profiles()
            .profiles
            .values()
            .filter(|p| policy.may_create(&caller.principal, &p.name))
            .map(|p| p.summary())
            .collect()
    }

    /// Makes a sandbox for `caller` from the profile named `profile`.
    pub async fn create_sandbox(&self, caller: &Caller, profile: &str) -> Result<Sandbox, ServiceError> {
        let (sandbox, shell) = self.make_sandbox(caller, profile).await?;
        if let Some(shell) = shell {
            // Nobody asked for a terminal: the shell started ahead of time goes.
            shell.end(self.sessions.runtime().clone(), self.sessions.pending_reaps().clone());
        }
        Ok(sandbox)
    }

    /// A sandbox for `caller`, audited; from the warm pool it comes with its login shell already running.
    async fn make_sandbox(
        &self,
        caller: &Caller,
        profile: &str,
    ) -> Result<(Sandbox, Option<crate::session::Prelaunched>), ServiceError> {
        let result = async {
            let policy = self.policy();
            AppState::revoked_under(&policy, caller)?;
            let profiles = self.sandboxes.profiles();
            let p = match profiles.get(profile) {
                Some(p) if policy.may_create(&caller.principal, profile) => p.clone(),
                _ => return Err(unknown_profile(profile)),
            };
            let quota = policy.sandbox_quota(&caller.principal).unwrap_or(self.sandboxes.default_quota);
            self.sandboxes.create(&caller.principal.subject, &p, quota).await
        }
        .await;
        match result {
            Ok((row, shell)) => {
                self.audit(on_sandbox(caller.record("sandbox.create", "allowed"), &row));
                // Docker's create and start events came while it was nobody's to see: say it exists now.
                let labels = std::collections::BTreeMap::from([
                    (app::protocol::LABEL_PROFILE.to_string(), row.profile.clone()),
                    (app::protocol::LABEL_INSTANCE.to_string(), self.sandboxes.instance().to_string()),
                ]);
                let change = app::protocol::ContainersChanged { container_id: row.id.clone(), action: "create".into() };
                let _ = self.notices.send(crate::docker::ContainerEvent { change, name: row.name.clone(), labels });
                let mut sandbox = Sandboxes::describe(&row, "running");
                sandbox.node = self.node_id();
                Ok((sandbox, shell))
            }
            Err(e) => {
                let mut r = denied(caller, "sandbox.create", &e);
                r.reason =
                    Some(format!("profile {}: {}", crate::refusals::clip(profile), r.reason.unwrap_or_default()));
                self.audit_refusal(&e, r);
                Err(e.audited())
            }
        }
    }

    /// `create-sandbox`: a sandbox and a terminal in it, the seat attached from the first byte. If the terminal
    /// cannot start, the sandbox is removed again.
    pub async fn create_sandbox_terminal(
        &self,
        caller: &Caller,
        seat: &Seat,
        req: CreateSandbox,
    ) -> Result<(Attachment, SandboxCreated), ServiceError> {
        if req.profile.len() > app::protocol::MAX_PROFILE_NAME_LEN {
            return Err(ServiceError::invalid("profile is too long"));
        }
        crate::session::launch::check_size(
            req.cols.unwrap_or(app::protocol::DEFAULT_COLS),
            req.rows.unwrap_or(app::protocol::DEFAULT_ROWS),
        )?;
        let (sandbox, shell) = self.make_sandbox(caller, &req.profile).await?;
        let start = StartTerminal {
            container_id: sandbox.id.clone(),
            cols: req.cols,
            rows: req.rows,
            command: None,
            flow_control: req.flow_control,
            tty: true,
        };
        match self.start_in(caller, seat, start, shell).await {
            Ok((attachment, terminal)) => Ok((attachment, SandboxCreated { sandbox, terminal })),
            Err(e) => {
                if let Some(row) = self.sandbox_of(&sandbox.id) {
                    let _ = self.sandboxes.remove(&self.sessions, &row, ExitReason::SandboxRemoved).await;
                    let mut r = on_sandbox(caller.record("sandbox.remove", "allowed"), &row);
                    r.reason = Some(format!("its terminal could not start: {}", e.message));
                    self.audit(r);
                }
                Err(e)
            }
        }
    }

    /// The sandboxes `caller` may see, oldest first, with their containers' states.
    pub async fn sandboxes(&self, caller: &Caller) -> Result<Vec<Sandbox>, ServiceError> {
        let containers: HashMap<String, app::protocol::ContainerSummary> =
            match self.sessions.runtime().list_containers().await {
                Ok(list) => list.into_iter().map(|c| (c.id.clone(), c)).collect(),
                Err(e) => return Err(ServiceError::from_runtime(e)),
            };
        let policy = self.policy();
        AppState::revoked_under(&policy, caller)?;
        let mut list: Vec<Sandbox> = self
            .sandboxes
            .owned()
            .into_iter()
            .filter_map(|row| {
                let c = containers.get(&row.id)?;
                self.container_grant(&policy, caller, &row.id, &c.name, &c.labels)?;
                let mut sb = Sandboxes::describe(&row, &c.state);
                sb.node = self.node_id();
                Some(sb)
            })
            .collect();
        if let Some(cluster) = self.cluster() {
            // Other nodes' (their state as this node's daemon sees it when it serves their host too).
            for mut sb in cluster.peer_sandboxes().into_iter().filter(|sb| !sb.owner.is_empty()) {
                let labels = peer_labels(&sb);
                if self.container_grant(&policy, caller, &sb.id, &sb.name, &labels).is_some() {
                    if let Some(c) = containers.get(&sb.id) {
                        sb.state = c.state.clone();
                    }
                    list.push(sb);
                }
            }
            list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
        }
        Ok(list)
    }

    /// Removes a sandbox (its owner, or someone a covering rule lets manage it). Its terminals end with
    /// `sandbox_removed`.
    pub async fn remove_sandbox(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let mut seen: Option<Row> = None;
        // Cluster mode, another node's sandbox: that node (which removes it), and this node's id.
        let mut maker: Option<String> = None;
        let result = async {
            check_container_ref(id)?;
            let (target_id, name, labels) = match self.sessions.runtime().resolve(id).await {
                Ok(t) => (t.id, t.name, t.labels),
                // Another node's sandbox on a Docker host this node does not serve, by its id or name.
                Err(crate::docker::RuntimeError::NotFound(_)) => match self.peer_sandbox_named(id) {
                    Some(sb) => {
                        let labels = peer_labels(&sb);
                        (sb.id, sb.name, labels)
                    }
                    None => return Err(no_such_container(id)),
                },
                Err(other) => return Err(ServiceError::from_runtime(other)),
            };
            let policy = self.policy();
            AppState::revoked_under(&policy, caller)?;
            let grant = self.container_grant(&policy, caller, &target_id, &name, &labels);
            let row = match self.sandbox_of(&target_id) {
                Some(row) => Some(row),
                None => match self.known_elsewhere(&target_id, &labels) {
                    Some(Known::Sandbox(row)) => {
                        maker = self.sandbox_maker(&target_id);
                        Some(row)
                    }
                    _ => None,
                },
            };
            let Some(row) = row.filter(|_| grant.is_some()) else {
                return Err(ServiceError::new(ErrorCode::ContainerNotFound, format!("no sandbox matches {id:?}")));
            };
            seen = Some(row.clone());
            if !grant.is_some_and(|g| g.manage) {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    format!("sandbox {} belongs to {}; you may not remove it", row.name, row.owner),
                ));
            }
            match (&maker, self.cluster()) {
                (Some(node), Some(cluster)) => {
                    let peers = cluster.peers().await?;
                    let Some(node) = peers.iter().find(|p| &p.node == node) else {
                        return Err(ServiceError::new(
                            ErrorCode::ClusterUnavailable,
                            format!("sandbox {} is node {node}'s, which does not answer; retry in a moment", row.name),
                        ));
                    };
                    crate::cluster::sandboxes::remove_on(cluster, node, &row.id).await?;
                }
                // `false`: someone else's removal of it was under way, and is done.
                _ => {
                    self.sandboxes.remove(&self.sessions, &row, ExitReason::SandboxRemoved).await?;
                }
            }
            Ok(row)
        }
        .await;
        let (node, owner_node) = match &maker {
            Some(m) => (self.node_id(), Some(m.clone())),
            None => (None, None),
        };
        match result {
            Ok(row) => {
                self.audit(Record { node, owner_node, ..on_sandbox(caller.record("sandbox.remove", "allowed"), &row) });
                Ok(())
            }
            Err(e) => {
                let mut r = denied(caller, "sandbox.remove", &e);
                r.container = Some(seen.as_ref().map_or_else(|| crate::refusals::clip(id), |s| s.name.clone()));
                r.container_id = seen.map(|s| s.id);
                self.audit_refusal(&e, Record { node, owner_node, ..r });
                Err(e.audited())
            }
        }
    }

    /// Cluster mode: another node's sandbox named `reference` (its name, its id, or a prefix of 4 or more of
    /// its id), as last read.
    fn peer_sandbox_named(&self, reference: &str) -> Option<Sandbox> {
        let reference = crate::cluster::sandboxes::bare_id(reference);
        let found: Vec<_> = self
            .cluster()?
            .peer_sandboxes()
            .into_iter()
            .filter(|sb| {
                let id = crate::cluster::sandboxes::bare_id(&sb.id);
                crate::docker::names(reference, &sb.name, id)
            })
            .collect();
        (found.len() == 1).then(|| found.into_iter().next()).flatten()
    }

    /// The peer route's removal: one of this node's sandboxes, for a user another node admitted (that node
    /// decided and audits).
    pub async fn remove_sandbox_for_peer(&self, id: &str) -> Result<(), ServiceError> {
        let Some(row) = self
            .sandbox_of(id)
            .or_else(|| self.sandboxes.owned().into_iter().find(|r| crate::cluster::sandboxes::bare_id(&r.id) == id))
        else {
            return Err(ServiceError::new(ErrorCode::ContainerNotFound, format!("no sandbox {id:?} on this node")));
        };
        self.sandboxes.remove(&self.sessions, &row, ExitReason::SandboxRemoved).await?;
        Ok(())
    }

    /// Audits a sandbox the maintenance loop removed (idle, or past its lifetime).
    pub fn audit_expired(&self, row: &Row) {
        let mut r = on_sandbox(
            Record { action: "sandbox.expire", outcome: "allowed", user: Some(row.owner.clone()), ..Record::default() },
            row,
        );
        r.code = Some(ExitReason::SandboxExpired.to_string());
        self.audit(r);
    }

    /// Starts, stops or restarts a container `caller` may manage. Visible but not manageable: `forbidden`;
    /// hidden: `container_not_found`, as for a missing one.
    pub async fn container_action(
        &self,
        caller: &Caller,
        req: &ContainerAction,
        action: Action,
    ) -> Result<(), ServiceError> {
        let mut seen = None;
        let result = async {
            check_container_ref(&req.container_id)?;
            let runtime = self.sessions.runtime();
            let target = runtime.resolve(&req.container_id).await.map_err(|e| match e {
                crate::docker::RuntimeError::NotFound(_) => no_such_container(&req.container_id),
                other => ServiceError::from_runtime(other),
            })?;
            seen = Some(target.clone());
            let policy = self.policy();
            AppState::revoked_under(&policy, caller)?;
            let Some(grant) = self.container_grant(&policy, caller, &target.id, &target.name, &target.labels) else {
                return Err(no_such_container(&req.container_id));
            };
            if !grant.manage {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    format!("you may not start, stop or restart {}", target.name),
                ));
            }
            let done = match action {
                Action::Start => runtime.start_container(&target.id).await,
                Action::Stop => runtime.stop_container(&target.id, STOP_GRACE).await,
                Action::Restart => match runtime.stop_container(&target.id, STOP_GRACE).await {
                    Ok(()) => runtime.start_container(&target.id).await,
                    Err(e) => Err(e),
                },
            };
            done.map_err(|e| match e {
                crate::docker::RuntimeError::NotFound(_) => no_such_container(&req.container_id),
                crate::docker::RuntimeError::Api { message, .. } | crate::docker::RuntimeError::Conflict(message) => {
                    ServiceError::new(ErrorCode::Internal, format!("Docker refused: {message}"))
                }
                other => ServiceError::from_runtime(other),
            })
        }
        .await;
        let mut r = match &result {
            Ok(()) => caller.record(action.audit_name(), "allowed"),
            Err(e) => denied(caller, action.audit_name(), e),
        };
        r.container = Some(seen.as_ref().map_or_else(|| crate::refusals::clip(&req.container_id), |t| t.name.clone()));
        r.container_id = seen.map(|t| t.id);
        match result {
            Ok(()) => {
                self.audit(r);
                Ok(())
            }
            Err(e) => {
                self.audit_refusal(&e, r);
                Err(e.audited())
            }
        }
    }
}

/// The labels another node's sandbox container carries that rules may match (its profile and its maker).
fn peer_labels(sb: &Sandbox) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (app::protocol::LABEL_PROFILE.to_string(), sb.profile.clone()),
        (app::protocol::LABEL_INSTANCE.to_string(), sb.node.clone().unwrap_or_default()),
    ])
}
