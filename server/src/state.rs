//! The service layer shared by the socket and HTTP transports: one cloneable handle, methods named for intent.
//!
//! Authorization is decided here and only here: every transport passes the [`Caller`] and gets the same
//! answer, so the picker, REST, server functions and socket events cannot disagree.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use app::protocol::{
    ContainerSummary, ErrorCode, ExitReason, Health, PROTOCOL_VERSION, StartTerminal, TerminalId, TerminalInfo,
    TerminalStarted,
};
use tokio::sync::watch;

use crate::audit::{Audit, Record};
use crate::auth::policy::{Grant, Level, Policy};
use crate::auth::{Authenticator, FailureLimiter, Principal, now_secs};
use crate::docker::{ContainerRuntime, ContainerTarget};
use crate::error::ServiceError;
use crate::session::{Limits, OwnerId, Sessions, Terminal, no_such_container};

/// Who is asking, and from where.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// An audit record of `action` by this caller.
    pub fn record(&self, action: &'static str, outcome: &'static str) -> Record {
        Record { action, outcome, user: Some(self.principal.subject.clone()), ip: self.ip, ..Record::default() }
    }
}

/// Authentication, policy and audit, shared by all transports.
#[derive(Debug)]
pub struct Security {
    pub auth: Authenticator,
    pub policy: RwLock<Arc<Policy>>,
    pub audit: Audit,
    pub failures: FailureLimiter,
    /// Bumped whenever credentials may have stopped being valid (policy reload, logout): sockets re-check.
    pub epoch: watch::Sender<u64>,
    /// Events per second one socket may send.
    pub events_per_sec: u32,
    /// Refusals written to the log one by one, and to the audit log, each bounded per abuser.
    pub logged_refusals: crate::refusals::Refusals,
    pub audited_refusals: crate::refusals::Refusals,
}

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    sessions: Arc<Sessions>,
    security: Arc<Security>,
    edge: Arc<crate::http::conn::Connections>,
}

fn denied(caller: &Caller, action: &'static str, e: &ServiceError) -> Record {
    Record {
        code: Some(e.code.to_string()),
        reason: Some(crate::refusals::clip(&e.message)),
        ..caller.record(action, "denied")
    }
}

/// Most command words, each clipped, quoted in the audit record of a refused command.
const MAX_AUDITED_ARGS: usize = 16;

fn clipped_command(cmd: Option<Vec<String>>) -> Option<Vec<String>> {
    cmd.map(|c| c.iter().take(MAX_AUDITED_ARGS).map(|a| crate::refusals::clip(a)).collect())
}

fn on_terminal(mut r: Record, t: &Terminal) -> Record {
    r.terminal_id = Some(t.id().0.clone());
    r.container_id = Some(t.container_id().to_string());
    r.container = Some(t.container_name().to_string());
    r.command = Some(t.command().to_vec());
    r
}

impl AppState {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        limits: Limits,
        security: Security,
        edge: Arc<crate::http::conn::Connections>,
    ) -> AppState {
        AppState { sessions: Sessions::new(runtime, limits), security: Arc::new(security), edge }
    }

    /// Connection counts, sign-in slots and the registry of signed-in sockets.
    pub fn edge(&self) -> &Arc<crate::http::conn::Connections> {
        &self.edge
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    pub fn events_per_sec(&self) -> u32 {
        self.security.events_per_sec
    }

    fn policy(&self) -> Arc<Policy> {
        self.security.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn audit(&self, record: Record) {
        self.security.audit.record(record);
    }

    /// Audits a refusal: one by one while its source is within its budget, else counted into a summary
    /// ([`crate::refusals`]).
    pub fn audit_refusal(&self, e: &ServiceError, record: Record) {
        if self.security.audited_refusals.admit(record.ip, None, e.code, record.user.as_deref()) {
            self.audit(record);
        }
    }

    /// Logs a refusal at `info`, one by one while its source (`ip`, `socket`) is within its budget, else counted
    /// into a summary line.
    pub fn log_refusal(&self, ip: Option<IpAddr>, socket: Option<&str>, what: &'static str, e: &ServiceError) {
        if self.security.logged_refusals.admit(ip, socket, e.code, None) {
            tracing::info!(event = what, code = %e.code, message = %crate::refusals::clip(&e.message), "refused");
        }
    }

    /// Checks a credential presented from `ip`. Wrong credentials count against the address; an address with
    /// too many recent failures is refused outright until its window ends.
    pub fn authenticate(&self, token: Option<&str>, ip: Option<IpAddr>) -> Result<Caller, ServiceError> {
        let refuse = |e: ServiceError| {
            let record = Record {
                code: Some(e.code.to_string()),
                reason: Some(crate::refusals::clip(&e.message)),
                ip,
                ..Record { action: "auth", outcome: "denied", ..Record::default() }
            };
            self.audit_refusal(&e, record);
            e.audited()
        };
        if let Some(ip) = ip
            && let Some(left) = self.security.failures.blocked(ip)
        {
            return Err(refuse(ServiceError::new(
                ErrorCode::TooManyAuthFailures,
                format!("too many failed sign-in attempts from this address; try again in {} s", left.as_secs() + 1),
            )));
        }
        let Some(token) = token else {
            return Err(refuse(crate::auth::unauthenticated(
                "sign in first: open the link Porthole printed at start, or send a token",
            )));
        };
        let principal = match self.security.auth.verify(token) {
            Ok(p) => p,
            Err(e) => {
                if e.code == ErrorCode::Unauthenticated
                    && let Some(ip) = ip
                {
                    self.security.failures.record_failure(ip);
                }
                return Err(refuse(e));
            }
        };
        let caller = Caller { principal, ip };
        if let Err(e) = self.still_valid(&caller) {
            // The credential verified, so the record can say whose it was.
            self.audit_refusal(&e, denied(&caller, "auth", &e));
            return Err(e.audited());
        }
        Ok(caller)
    }

    /// Whether `caller`'s credential is still honoured: not expired, revoked by the policy or signed out.
    pub fn still_valid(&self, caller: &Caller) -> Result<(), ServiceError> {
        let p = &caller.principal;
        if p.expired_at(now_secs(), self.security.auth.leeway()) {
            return Err(ServiceError::new(ErrorCode::TokenExpired, "the token has expired; sign in again"));
        }
        if let Some(why) = self.policy().revoked(p) {
            return Err(ServiceError::new(ErrorCode::TokenRevoked, why));
        }
        if self.security.auth.signed_out(p) {
            return Err(ServiceError::new(ErrorCode::TokenRevoked, "this session was signed out"));
        }
        Ok(())
    }

    /// Exchanges a token for a session cookie value and lifetime.
    pub fn login(&self, token: &str, ip: Option<IpAddr>) -> Result<(Caller, String, u64), ServiceError> {
        let caller = self.authenticate(Some(token), ip)?;
        let (value, max_age) = self.security.auth.session_for(&caller.principal, token)?;
        self.audit(caller.record("login", "allowed"));
        Ok((caller, value, max_age))
    }

    /// Ends `caller`'s session; sockets using it are disconnected.
    pub fn logout(&self, caller: &Caller) {
        self.security.auth.sign_out(&caller.principal);
        self.audit(caller.record("logout", "allowed"));
        self.security.epoch.send_modify(|e| *e += 1);
    }

    /// Re-reads the policy file. On error the old policy stays and the error is returned.
    pub fn reload_policy(&self) -> Result<(), String> {
        let Some(path) = self.policy().source.clone() else {
            return Err("no --policy file was given; nothing to reload".into());
        };
        let result = Policy::load(&path);
        let outcome = if result.is_ok() { "allowed" } else { "denied" };
        self.audit(Record {
            action: "policy.reload",
            outcome,
            reason: result.as_ref().err().cloned(),
            ..Record::default()
        });
        let policy = result?;
        *self.security.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        self.security.epoch.send_modify(|e| *e += 1);
        Ok(())
    }

    /// Changes whenever credentials may have stopped being valid.
    pub fn credential_changes(&self) -> watch::Receiver<u64> {
        self.security.epoch.subscribe()
    }

    /// Whether the daemon answers.
    pub async fn health(&self) -> Result<Health, ServiceError> {
        match self.sessions.runtime().ping().await {
            Ok(api) => Ok(Health { status: "ok".into(), protocol_version: PROTOCOL_VERSION, docker_api_version: api }),
            Err(e) => Err(ServiceError::new(ErrorCode::DockerUnavailable, e.to_string())),
        }
    }

    /// The containers `caller` may see, running ones first, then by name.
    pub async fn containers(&self, caller: &Caller) -> Result<Vec<ContainerSummary>, ServiceError> {
        let mut list = self.sessions.runtime().list_containers().await.map_err(ServiceError::from_runtime)?;
        let policy = self.policy();
        list.retain(|c| policy.grant(&caller.principal, &c.name, &c.labels).is_some());
        list.sort_by(|a, b| (a.state != "running").cmp(&(b.state != "running")).then_with(|| a.name.cmp(&b.name)));
        Ok(list)
    }

    /// Whether `caller` may see the container `name` with `labels`.
    pub fn may_see_container(
        &self,
        caller: &Caller,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.policy().grant(&caller.principal, name, labels).is_some()
    }

    /// What `caller` may do with `terminal`: `None` if they may not even see it. Another user's terminal is
    /// reached at the level of the best single shared rule, never by adding up rules.
    fn terminal_grant(&self, caller: &Caller, terminal: &Terminal) -> Option<Grant> {
        let mut grant = self.policy().grant(&caller.principal, terminal.container_name(), terminal.labels())?;
        if terminal.user() != caller.principal.subject {
            grant.level = grant.shared?;
        }
        Some(grant)
    }

    /// The terminals `caller` may see: their own, and others' in containers shared with them.
    pub fn terminals(&self, caller: &Caller) -> Vec<TerminalInfo> {
        let visible: Vec<_> = self
            .sessions
            .all()
            .into_iter()
            .filter(|t| self.terminal_grant(caller, t).is_some())
            .map(|t| self.sessions.info(&t))
            .collect();
        crate::session::sorted(visible)
    }

    /// Every terminal, regardless of who may see it (for the operator: shutdown, tests).
    pub fn all_terminals(&self) -> Vec<TerminalInfo> {
        crate::session::sorted(self.sessions.all().iter().map(|t| self.sessions.info(t)).collect())
    }

    /// A terminal `caller` may see.
    pub fn visible_terminal(&self, caller: &Caller, id: &TerminalId) -> Result<Arc<Terminal>, ServiceError> {
        let t = self.sessions.find(id)?;
        match self.terminal_grant(caller, &t) {
            Some(_) => Ok(t),
            None => Err(ServiceError::unknown_terminal(id)),
        }
    }

    pub fn terminal(&self, caller: &Caller, id: &TerminalId) -> Result<TerminalInfo, ServiceError> {
        self.visible_terminal(caller, id).map(|t| self.sessions.info(&t))
    }

    /// Whether `caller` may type into, resize and close `terminal`.
    pub fn authorize_write(&self, caller: &Caller, terminal: &Terminal) -> Result<(), ServiceError> {
        match self.terminal_grant(caller, terminal) {
            Some(g) if g.level == Level::Interact => Ok(()),
            Some(_) => Err(ServiceError::new(
                ErrorCode::ViewOnly,
                format!("you may only watch terminals in {}", terminal.container_name()),
            )),
            None => Err(ServiceError::unknown_terminal(terminal.id())),
        }
    }

    /// Whether `caller` may attach to `terminal`; `Ok(true)` means read-only.
    pub fn authorize_attach(&self, caller: &Caller, terminal: &Terminal) -> Result<bool, ServiceError> {
        let result = match self.terminal_grant(caller, terminal) {
            Some(g) => Ok(g.level == Level::View),
            None => Err(ServiceError::unknown_terminal(terminal.id())),
        };
        match &result {
            Ok(read_only) => {
                let mut r = on_terminal(caller.record("terminal.attach", "allowed"), terminal);
                r.reason = read_only.then(|| "read-only".to_string());
                self.audit(r);
            }
            Err(e) => self.audit_refusal(e, on_terminal(denied(caller, "terminal.attach", e), terminal)),
        }
        result.map_err(ServiceError::audited)
    }

    /// Records a refused write (input, resize, close) in the audit log.
    pub fn audit_denied_write(&self, caller: &Caller, terminal: &Terminal, action: &'static str, e: &ServiceError) {
        self.audit_refusal(e, on_terminal(denied(caller, action, e), terminal));
    }

    /// Decides whether `caller` may open `req` in `target`.
    fn authorize_start(
        &self,
        caller: &Caller,
        target: &ContainerTarget,
        req: &StartTerminal,
    ) -> Result<(), ServiceError> {
        let policy = self.policy();
        let Some(grant) = policy.grant(&caller.principal, &target.name, &target.labels) else {
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
        match &req.command {
            None if !grant.login_shell => Err(ServiceError::new(
                ErrorCode::CommandNotAllowed,
                format!("the login shell is not allowed for you in {}; ask for an allowed command", target.name),
            )),
            Some(cmd) if !grant.commands.allows(cmd) => Err(ServiceError::new(
                ErrorCode::CommandNotAllowed,
                format!("{:?} is not on your command allowlist for {}", cmd, target.name),
            )),
            _ => Ok(()),
        }
    }

    /// Opens a terminal for `caller`'s client `client`, if the policy allows it.
    pub async fn start_terminal(
        &self,
        caller: &Caller,
        client: &str,
        req: StartTerminal,
    ) -> Result<(Arc<Terminal>, TerminalStarted), ServiceError> {
        let mut seen: Option<ContainerTarget> = None;
        let result = async {
            Sessions::check_start(&req)?;
            let target = self.sessions.resolve(&req.container_id).await?;
            seen = Some(target.clone());
            // Hidden containers answer exactly like missing ones, whatever their state.
            self.authorize_start(caller, &target, &req)?;
            let owner = OwnerId { user: caller.principal.subject.clone(), client: client.to_string() };
            let quota = self.policy().quota(&caller.principal);
            self.sessions.start(&owner, target, req.clone(), quota).await
        }
        .await;
        match result {
            Ok((terminal, started)) => {
                self.audit(on_terminal(caller.record("terminal.open", "allowed"), &terminal));
                Ok((terminal, started))
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

    /// Ends a terminal `caller` may write to.
    pub async fn close_terminal(&self, caller: &Caller, terminal: &Arc<Terminal>) -> Result<(), ServiceError> {
        if let Err(e) = self.authorize_write(caller, terminal) {
            self.audit_denied_write(caller, terminal, "terminal.close", &e);
            return Err(e.audited());
        }
        self.audit(on_terminal(caller.record("terminal.close", "allowed"), terminal));
        if terminal.has_ended() {
            // Already over: just take it off the list.
            self.sessions.forget(terminal.id());
            return Ok(());
        }
        self.sessions.close(terminal, ExitReason::Closed).await
    }

    /// Ends a terminal by id (REST).
    pub async fn close_terminal_id(&self, caller: &Caller, id: &TerminalId) -> Result<(), ServiceError> {
        let t = self.visible_terminal(caller, id)?;
        self.close_terminal(caller, &t).await
    }
}

/// The server functions' view of the service layer, bound to the caller of one request.
#[derive(Debug, Clone)]
pub struct CallerScope {
    pub state: AppState,
    pub caller: Caller,
}

#[async_trait::async_trait]
impl app::api::backend::Backend for CallerScope {
    async fn containers(&self) -> Result<Vec<ContainerSummary>, app::protocol::ErrorBody> {
        self.state.containers(&self.caller).await.map_err(|e| e.body())
    }

    fn terminals(&self) -> Vec<TerminalInfo> {
        self.state.terminals(&self.caller)
    }
}
