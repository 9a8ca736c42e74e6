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
        match self.sandboxes.known(id) {
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
                Ok((Sandboxes::describe(&row, "running"), shell))
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
        Ok(self
            .sandboxes
            .owned()
            .into_iter()
            .filter_map(|row| {
                let c = containers.get(&row.id)?;
                self.container_grant(&policy, caller, &row.id, &c.name, &c.labels)?;
                Some(Sandboxes::describe(&row, &c.state))
            })
            .collect())
    }

    /// Removes a sandbox (its owner, or someone a covering rule lets manage it). Its terminals end with
    /// `sandbox_removed`.
    pub async fn remove_sandbox(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let mut seen: Option<Row> = None;
        let result = async {
            check_container_ref(id)?;
            let target = self.sessions.runtime().resolve(id).await.map_err(|e| match e {
                crate::docker::RuntimeError::NotFound(_) => no_such_container(id),
                other => ServiceError::from_runtime(other),
            })?;
            let policy = self.policy();
            AppState::revoked_under(&policy, caller)?;
            let grant = self.container_grant(&policy, caller, &target.id, &target.name, &target.labels);
            let Some(row) = self.sandbox_of(&target.id).filter(|_| grant.is_some()) else {
                return Err(ServiceError::new(ErrorCode::ContainerNotFound, format!("no sandbox matches {id:?}")));
            };
            seen = Some(row.clone());
            if !grant.is_some_and(|g| g.manage) {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    format!("sandbox {} belongs to {}; you may not remove it", row.name, row.owner),
                ));
            }
            // `false`: someone else's removal of it was under way, and is done.
            self.sandboxes.remove(&self.sessions, &row, ExitReason::SandboxRemoved).await?;
            Ok(row)
        }
        .await;
        match result {
            Ok(row) => {
                self.audit(on_sandbox(caller.record("sandbox.remove", "allowed"), &row));
                Ok(())
            }
            Err(e) => {
                let mut r = denied(caller, "sandbox.remove", &e);
                r.container = Some(seen.as_ref().map_or_else(|| crate::refusals::clip(id), |s| s.name.clone()));
                r.container_id = seen.map(|s| s.id);
                self.audit_refusal(&e, r);
                Err(e.audited())
            }
        }
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
