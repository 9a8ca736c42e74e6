//! The terminal operations of the service door: list, start, attach, detach, input, resize, ack, close.
//!
//! Each takes the [`Caller`] (and, for sockets, the [`Seat`]) and makes every decision itself: the lookup, the
//! policy (one snapshot per event, checking revocation and the grant together) and the audit record. The
//! transports only translate.

use std::sync::Arc;

use app::protocol::{
    AttachTerminal, CloseTerminal, ErrorCode, ExitReason, Input, OutputAck, Owner, Resize, StartTerminal, TerminalAck,
    TerminalAttached, TerminalId, TerminalInfo, TerminalStarted,
};
use tokio_util::sync::CancellationToken;

use super::{AppState, Caller, clipped_command, denied, on_terminal};
use crate::audit::Record;
use crate::auth::policy::{Grant, Level, Policy, RecordLevel};
use crate::cluster::RemoteTerminal;
use crate::docker::ContainerTarget;
use crate::error::ServiceError;
use crate::session::launch::StartPlan;
use crate::session::log::AckError;
use crate::session::viewer::Attachment;
use crate::session::{AttachOptions, Limits, OwnerId, Terminal, ViewerId, no_such_container};

/// How long after a container's `die` event its terminals may take to end by themselves before they are ended.
pub const DIED_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A socket as a viewer of terminals: which viewer it is, which client it belongs to, and how it follows them.
#[derive(Debug, Clone)]
pub struct Seat {
    pub viewer: ViewerId,
    /// The client whose terminals it may resume.
    pub client: Owner,
    /// It speaks protocol version 1: its terminals end when it leaves.
    pub ends_on_leave: bool,
    /// Cancelled when the socket goes: its viewers stop.
    pub gone: CancellationToken,
}

/// What an event on a terminal needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    See,
    Write,
}

impl AppState {
    /// Limits the `hello` event reports.
    pub fn limits(&self) -> Limits {
        self.sessions.limits()
    }

    /// What `caller` may do with `terminal` under `policy`: `None` if they may not even see it. Another user's
    /// terminal is reached at the level of the best single shared rule, never by adding up rules.
    fn grant_under(&self, policy: &Policy, caller: &Caller, terminal: &Terminal) -> Option<Grant> {
        let mut grant = self.container_grant(
            policy,
            caller,
            terminal.container_id(),
            terminal.container_name(),
            terminal.labels(),
        )?;
        if terminal.user() != caller.principal.subject {
            grant.level = grant.shared?;
        }
        Some(grant)
    }

    /// One policy decision for one event on `terminal`: the credential is not revoked, and the grant allows
    /// `need`. Returns whether the caller may only watch. (Expiry and sign-out were checked when the event was
    /// admitted, or the request authenticated.)
    fn decide(&self, caller: &Caller, terminal: &Terminal, need: Need) -> Result<bool, ServiceError> {
        let policy = self.policy();
        AppState::revoked_under(&policy, caller)?;
        match (self.grant_under(&policy, caller, terminal), need) {
            (None, _) => Err(ServiceError::unknown_terminal(terminal.id())),
            (Some(g), Need::See) => Ok(g.level == Level::View),
            (Some(g), Need::Write) if g.level == Level::Interact => Ok(false),
            (Some(_), Need::Write) => Err(ServiceError::new(
                ErrorCode::ViewOnly,
                format!("you may only watch terminals in {}", terminal.container_name()),
            )),
        }
    }

    /// A write's decision, audited when refused.
    fn decide_write(&self, caller: &Caller, terminal: &Terminal, action: &'static str) -> Result<(), ServiceError> {
        match self.decide(caller, terminal, Need::Write) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.audit_refusal(&e, on_terminal(denied(caller, action, &e), terminal));
                Err(e.audited())
            }
        }
    }

    /// The terminals `caller` may see: their own, and others' in containers shared with them.
    pub fn terminals(&self, caller: &Caller) -> Vec<TerminalInfo> {
        let policy = self.policy();
        let visible: Vec<_> = self
            .sessions
            .all()
            .into_iter()
            .filter(|t| self.grant_under(&policy, caller, t).is_some())
            .map(|t| self.sessions.info(&t))
            .collect();
        crate::session::sorted(visible)
    }

    /// Every terminal, regardless of who may see it (for the operator: shutdown, tests).
    pub fn all_terminals(&self) -> Vec<TerminalInfo> {
        crate::session::sorted(self.sessions.all().iter().map(|t| self.sessions.info(t)).collect())
    }

    /// A terminal `caller` may see.
    fn visible_terminal(&self, caller: &Caller, id: &TerminalId) -> Result<Arc<Terminal>, ServiceError> {
        let t = self.sessions.find(id)?;
        match self.grant_under(&self.policy(), caller, &t) {
            Some(_) => Ok(t),
            None => Err(ServiceError::unknown_terminal(id)),
        }
    }

    pub fn terminal(&self, caller: &Caller, id: &TerminalId) -> Result<TerminalInfo, ServiceError> {
        self.visible_terminal(caller, id).map(|t| self.sessions.info(&t))
    }

    /// Decides whether `caller` may open `plan` in `target`.
    fn authorize_start(
        &self,
        caller: &Caller,
        target: &ContainerTarget,
        plan: &StartPlan,
        req: &StartTerminal,
    ) -> Result<(Option<usize>, RecordLevel), ServiceError> {
        let policy = self.policy();
        AppState::revoked_under(&policy, caller)?;
        let Some(grant) = self.container_grant(&policy, caller, &target.id, &target.name, &target.labels) else {
            return Err(no_such_container(&req.container_id));
        };
        if grant.level != Level::Interact {
            return Err(ServiceError::new(
                ErrorCode::Forbidden,
                format!(
                    "you have view-only access to {}: you may watch its shared terminals, not open one",
                    target.name
                ),
            ));
        }
        match &plan.command {
            None if !grant.login_shell => Err(ServiceError::new(
                ErrorCode::CommandNotAllowed,
                format!("the login shell is not allowed for you in {}; ask for an allowed command", target.name),
            )),
            Some(cmd) if !grant.commands.allows(cmd) => Err(ServiceError::new(
                ErrorCode::CommandNotAllowed,
                format!("{:?} is not on your command allowlist for {}", cmd, target.name),
            )),
            _ => {
                Ok((policy.quota(&caller.principal), grant.record.unwrap_or(self.recordings.settings().default_level)))
            }
        }
    }

    /// Opens a terminal for `caller` on `seat`, if the policy allows it, and registers the seat as its viewer
    /// from the first byte. Start the returned attachment once the client has the answer, or hand it to
    /// [`AppState::abandon`].
    pub async fn start(
        &self,
        caller: &Caller,
        seat: &Seat,
        req: StartTerminal,
    ) -> Result<(Attachment, TerminalStarted), ServiceError> {
        self.start_in(caller, seat, req, None).await
    }

    /// [`AppState::start`], with the process `pre` started ahead of time in the container when given.
    pub(super) async fn start_in(
        &self,
        caller: &Caller,
        seat: &Seat,
        req: StartTerminal,
        pre: Option<crate::session::Prelaunched>,
    ) -> Result<(Attachment, TerminalStarted), ServiceError> {
        let mut seen: Option<ContainerTarget> = None;
        let mut level = RecordLevel::Off;
        let result = async {
            let plan = StartPlan::check(&req)?;
            let target = match &pre {
                // Just made and started by Porthole: no need to ask the daemon again.
                Some(p) if p.target.id == plan.container_ref => p.target.clone(),
                _ => self.sessions.resolve(&plan).await?,
            };
            seen = Some(target.clone());
            // Hidden containers answer exactly like missing ones, whatever their state.
            let quota;
            (quota, level) = self.authorize_start(caller, &target, &plan, &req)?;
            let owner = OwnerId { user: caller.principal.subject.clone(), client: seat.client.clone() };
            self.sessions.start(&owner, target, &plan, quota, pre).await
        }
        .await;
        match result {
            Ok((terminal, started)) => {
                self.recordings.start(&terminal, level);
                self.audit(on_terminal(caller.record("terminal.open", "allowed"), &terminal));
                let how = AttachOptions {
                    since: Some(0),
                    flow_control: started.flow_control,
                    ends_on_leave: seat.ends_on_leave,
                    read_only: false,
                    user: caller.principal.subject.clone(),
                };
                match self.sessions.attach(&terminal, seat.viewer.clone(), how, &seat.gone) {
                    Ok((attachment, _)) => Ok((attachment, started)),
                    Err(e) => {
                        tracing::error!(error = %e, "could not attach to a new terminal");
                        let _ = self.sessions.close(&terminal, ExitReason::Disconnected).await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                let mut r = denied(caller, "terminal.open", &e);
                r.container =
                    Some(seen.as_ref().map_or_else(|| crate::refusals::clip(&req.container_id), |t| t.name.clone()));
                r.container_id = seen.map(|t| t.id);
                r.command = clipped_command(req.command);
                self.audit_refusal(&e, r);
                Err(e.audited())
            }
        }
    }

    /// A new terminal whose client will never learn of it (its socket left, or the answer could not be sent):
    /// it can neither be used nor closed by anyone, so it ends now.
    pub async fn abandon(&self, caller: &Caller, attachment: Attachment) {
        let terminal = attachment.terminal().clone();
        drop(attachment);
        let mut r = on_terminal(caller.record("terminal.close", "allowed"), &terminal);
        r.reason = Some("the client left before it learned of the terminal".into());
        self.audit(r);
        let _ = self.sessions.close(&terminal, ExitReason::Disconnected).await;
    }

    /// Attaches `seat` to a terminal `caller` may see (read-only when they may only watch).
    pub fn attach(
        &self,
        caller: &Caller,
        seat: &Seat,
        req: AttachTerminal,
    ) -> Result<(Attachment, TerminalAttached), ServiceError> {
        let t = self.sessions.find(&req.terminal_id)?;
        let read_only = match self.decide(caller, &t, Need::See) {
            Ok(read_only) => read_only,
            Err(e) => {
                self.audit_refusal(&e, on_terminal(denied(caller, "terminal.attach", &e), &t));
                return Err(e.audited());
            }
        };
        let mut r = on_terminal(caller.record("terminal.attach", "allowed"), &t);
        r.reason = read_only.then(|| "read-only".to_string());
        self.audit(r);
        let how = AttachOptions {
            since: req.since,
            flow_control: req.flow_control,
            ends_on_leave: seat.ends_on_leave,
            read_only,
            user: caller.principal.subject.clone(),
        };
        self.sessions.attach(&t, seat.viewer.clone(), how, &seat.gone)
    }

    /// The attach's answer could not be delivered: only that attachment is undone.
    pub fn detach(&self, attachment: Attachment) {
        self.sessions.undo_attach(attachment);
    }

    /// The socket left: it stops following every terminal (each left with nobody starts its grace period).
    pub async fn leave(&self, seat: &Seat) {
        self.sessions.detach_everywhere(&seat.viewer).await;
    }

    /// A running terminal `seat` is attached to, that `caller` may write to.
    fn writable(
        &self,
        caller: &Caller,
        seat: &Seat,
        id: &TerminalId,
        action: &'static str,
    ) -> Result<Arc<Terminal>, ServiceError> {
        let t = self.sessions.find_attached(id, &seat.viewer)?;
        self.decide_write(caller, &t, action)?;
        Ok(t)
    }

    /// Queues input (`data` already decoded from the socket's encoding); `written` is told once it reached the
    /// process.
    pub fn input(
        &self,
        caller: &Caller,
        seat: &Seat,
        req: &Input,
        data: bytes::Bytes,
        written: Option<crate::session::Written>,
    ) -> Result<(), ServiceError> {
        self.writable(caller, seat, &req.terminal_id, "terminal.input")?.send_input(data, req.eof, req.offset, written)
    }

    pub fn resize(&self, caller: &Caller, seat: &Seat, req: Resize) -> Result<(), ServiceError> {
        self.writable(caller, seat, &req.terminal_id, "terminal.resize")?.send_resize(req.cols, req.rows)
    }

    /// Records how far `seat` has processed a terminal's output. Valid after the process ended too: the viewer
    /// may still be draining the log. Needs no grant: only an attached viewer has a cursor to move.
    pub fn ack(&self, caller: &Caller, seat: &Seat, req: OutputAck) -> Result<(), ServiceError> {
        self.still_valid(caller)?;
        let t = self.sessions.find(&req.terminal_id)?;
        match t.log().ack(&seat.viewer, req.processed) {
            // A viewer leaves once it delivered the exit; its acks still in flight are harmless.
            Err(AckError::NotAttached) if t.has_ended() => return Ok(()),
            other => other,
        }
        .map_err(|e| match e {
            AckError::NotAttached => ServiceError::unknown_terminal(t.id()),
            AckError::NoFlowControl => {
                ServiceError::invalid(format!("terminal {} was not started or attached with flowControl", t.id()))
            }
            AckError::Ahead { sent } => ServiceError::invalid(format!(
                "output-ack acknowledges offset {} but only {sent} was sent",
                req.processed
            )),
        })
    }

    /// Ends a terminal `seat` is attached to, if `caller` may write to it.
    pub async fn close(&self, caller: &Caller, seat: &Seat, req: CloseTerminal) -> Result<TerminalAck, ServiceError> {
        let t = self.sessions.find_attached(&req.terminal_id, &seat.viewer)?;
        self.close_terminal(caller, &t).await.map(|()| TerminalAck { terminal_id: req.terminal_id })
    }

    /// The daemon says a container died. Terminals whose exec streams did not end with it (gVisor's stay open
    /// when its sandbox dies) are ended after [`DIED_GRACE`], as `oom` or `container_stopped`.
    pub fn container_died(&self, container_id: &str) {
        let open: Vec<_> =
            self.sessions.all().into_iter().filter(|t| t.container_id() == container_id && !t.has_ended()).collect();
        if open.is_empty() {
            return;
        }
        let (sessions, container_id) = (self.sessions.clone(), container_id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(DIED_GRACE).await;
            let reason = match sessions.runtime().resolve(&container_id).await {
                Ok(t) if t.accepts_exec => return,
                Ok(t) if t.oom_killed => ExitReason::Oom,
                _ => ExitReason::ContainerStopped,
            };
            let still: Vec<_> = open.into_iter().filter(|t| !t.has_ended()).collect();
            futures_util::future::join_all(still.iter().map(|t| sessions.close(t, reason))).await;
        });
    }

    /// A terminal another node owns, as `caller` may see it under `policy`: its grant, if any.
    fn remote_grant(&self, policy: &Policy, caller: &Caller, t: &RemoteTerminal) -> Option<Grant> {
        let mut grant =
            self.container_grant(policy, caller, &t.info.container_id, &t.info.container_name, &t.labels)?;
        if t.info.user != caller.principal.subject {
            grant.level = grant.shared?;
        }
        Some(grant)
    }

    /// [`AppState::terminals`], and in cluster mode those on the other nodes too. While the directory does not
    /// answer, only this node's are listed.
    pub async fn terminals_everywhere(&self, caller: &Caller) -> Vec<TerminalInfo> {
        let mut list = self.terminals(caller);
        let Some(cluster) = self.cluster() else { return list };
        match cluster.remote_terminals().await {
            Ok(remote) => {
                let policy = self.policy();
                let visible = remote.into_iter().filter(|(_, t)| self.remote_grant(&policy, caller, t).is_some());
                list.extend(visible.map(|(_, t)| t.info));
                crate::session::sorted(list)
            }
            Err(e) => {
                tracing::debug!(error = %e.message, "listing only this node's terminals");
                list
            }
        }
    }

    /// A terminal `caller` may see, here or (in cluster mode) on another node.
    pub async fn terminal_anywhere(&self, caller: &Caller, id: &TerminalId) -> Result<TerminalInfo, ServiceError> {
        let here = self.terminal(caller, id);
        let Some(cluster) = self.cluster() else { return here };
        if here.is_ok() || self.sessions.find(id).is_ok() {
            return here;
        }
        match cluster.find_remote(&id.0).await? {
            Some((_, t)) if self.remote_grant(&self.policy(), caller, &t).is_some() => Ok(t.info),
            _ => Err(ServiceError::unknown_terminal(id)),
        }
    }

    /// Ends a terminal by id (REST), here or, in cluster mode, on the node that owns it: the decision and the
    /// audit record are made here, and the owner is asked to carry it out.
    pub async fn close_terminal_anywhere(&self, caller: &Caller, id: &TerminalId) -> Result<(), ServiceError> {
        let Some(cluster) = self.cluster().cloned() else { return self.close_terminal_id(caller, id).await };
        if self.sessions.find(id).is_ok() {
            return self.close_terminal_id(caller, id).await;
        }
        let Some((owner, t)) = cluster.find_remote(&id.0).await? else {
            return Err(ServiceError::unknown_terminal(id));
        };
        self.decide_remote(caller, &owner.node, &t, "terminal.close", Need::Write, true)?;
        crate::cluster::peer::close(&cluster, &owner, id).await
    }

    /// Cluster mode: whether `id` is not one of this node's terminals (another node's, or nobody's).
    pub fn elsewhere(&self, id: &TerminalId) -> bool {
        self.cluster().is_some() && self.sessions.find(id).is_err()
    }

    /// Cluster mode: the policy decision on `action` for terminal `t`, which node `owner` holds, made here; the
    /// refusal audited here with both nodes named, and with `audit_allowed` the permission too. Returns whether
    /// the caller may only watch.
    pub fn decide_remote(
        &self,
        caller: &Caller,
        owner: &str,
        t: &RemoteTerminal,
        action: &'static str,
        need: Need,
        audit_allowed: bool,
    ) -> Result<bool, ServiceError> {
        let policy = self.policy();
        let record = |outcome| Record {
            terminal_id: Some(t.info.terminal_id.0.clone()),
            container_id: Some(t.info.container_id.clone()),
            container: Some(t.info.container_name.clone()),
            command: Some(t.info.command.clone()),
            node: self.node_id(),
            owner_node: Some(owner.to_string()),
            ..caller.record(action, outcome)
        };
        let decided = AppState::revoked_under(&policy, caller).and_then(|()| {
            match (self.remote_grant(&policy, caller, t), need) {
                (None, _) => Err(ServiceError::unknown_terminal(&t.info.terminal_id)),
                (Some(g), Need::See) => Ok(g.level == Level::View),
                (Some(g), Need::Write) if g.level == Level::Interact => Ok(false),
                (Some(_), Need::Write) => Err(ServiceError::new(
                    ErrorCode::ViewOnly,
                    format!("you may only watch terminals in {}", t.info.container_name),
                )),
            }
        });
        match decided {
            Ok(read_only) => {
                if audit_allowed {
                    self.audit(Record { reason: read_only.then(|| "read-only".into()), ..record("allowed") });
                }
                Ok(read_only)
            }
            Err(e) => {
                let r = Record {
                    code: Some(e.code.to_string()),
                    reason: Some(crate::refusals::clip(&e.message)),
                    ..record("denied")
                };
                self.audit_refusal(&e, r);
                Err(e.audited())
            }
        }
    }

    /// A peer node asks to end one of this node's terminals (it decided and audited).
    pub async fn close_for_peer(&self, id: &TerminalId) -> Result<(), ServiceError> {
        let t = self.sessions.find(id)?;
        if t.has_ended() {
            self.sessions.forget(id);
            return Ok(());
        }
        self.sessions.close(&t, ExitReason::Closed).await
    }

    /// Ends a terminal by id (REST).
    pub async fn close_terminal_id(&self, caller: &Caller, id: &TerminalId) -> Result<(), ServiceError> {
        let t = self.visible_terminal(caller, id)?;
        self.close_terminal(caller, &t).await
    }

    async fn close_terminal(&self, caller: &Caller, terminal: &Arc<Terminal>) -> Result<(), ServiceError> {
        self.decide_write(caller, terminal, "terminal.close")?;
        self.audit(on_terminal(caller.record("terminal.close", "allowed"), terminal));
        if terminal.has_ended() {
            // Already over: just take it off the list.
            self.sessions.forget(terminal.id());
            return Ok(());
        }
        self.sessions.close(terminal, ExitReason::Closed).await
    }
}
