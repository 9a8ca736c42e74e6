//! The service layer shared by the socket and HTTP transports: one cloneable handle, methods named for intent.
//!
//! Authorization is decided here and only here: every transport passes the [`Caller`] and gets the same
//! answer, so the picker, REST, server functions and socket events cannot disagree. The transports call
//! [`AppState`] methods only; every decision and every audit record happens behind them, once. This file holds
//! sign-in, the policy and the containers; [`terminals`] the terminal operations.

mod recordings;
pub use recordings::{CastSource, Page};
mod sandboxes;
mod terminals;

pub use sandboxes::Action;
pub use terminals::{Need, Seat};

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use app::protocol::{ContainerSummary, ErrorCode, Health, PROTOCOL_VERSION, TerminalInfo};
use tokio::sync::watch;

use crate::audit::{Audit, Record};
use crate::auth::policy::Policy;
use crate::auth::{Authenticator, FailureLimiter, Principal, now_secs};
use crate::docker::ContainerRuntime;
use crate::error::ServiceError;
use crate::session::{Limits, Sessions, Terminal};

/// Container notices queued for the socket layer; a slower reader misses the oldest (and its clients refresh
/// on the next event).
pub const NOTICE_QUEUE: usize = 64;

/// Who is asking, and from where.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ip: Option<IpAddr>,
    /// Cluster mode: the node that relays this caller's socket (see [`crate::cluster::relay`]). That node
    /// audits; records of this caller are not written here.
    pub relayed_by: Option<String>,
}

impl Caller {
    /// An audit record of `action` by this caller.
    pub fn record(&self, action: &'static str, outcome: &'static str) -> Record {
        Record {
            action,
            outcome,
            user: Some(self.principal.subject.clone()),
            ip: self.ip,
            relayed: self.relayed_by.is_some(),
            ..Record::default()
        }
    }
}

/// Authentication, policy and audit, shared by all transports.
#[derive(Debug)]
pub struct Security {
    auth: Authenticator,
    policy: RwLock<Arc<Policy>>,
    audit: Arc<Audit>,
    failures: FailureLimiter,
    /// Bumped whenever credentials may have stopped being valid (policy reload, logout): sockets re-check.
    epoch: watch::Sender<u64>,
    /// Events per second one socket may send.
    events_per_sec: u32,
    /// Refusals written to the log one by one, and to the audit log, each bounded per abuser.
    logged_refusals: crate::refusals::Refusals,
    audited_refusals: crate::refusals::Refusals,
}

impl Security {
    pub fn new(
        auth: Authenticator,
        policy: Policy,
        audit: Audit,
        failures: FailureLimiter,
        events_per_sec: u32,
    ) -> Security {
        Security {
            auth,
            policy: RwLock::new(Arc::new(policy)),
            audit: Arc::new(audit),
            failures,
            epoch: watch::channel(0).0,
            events_per_sec,
            logged_refusals: crate::refusals::Refusals::new(crate::refusals::Sink::Log),
            audited_refusals: crate::refusals::Refusals::new(crate::refusals::Sink::Audit),
        }
    }

    /// The audit log, for the parts that write their own records (recordings).
    pub fn audit_log(&self) -> Arc<Audit> {
        self.audit.clone()
    }
}

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    sessions: Arc<Sessions>,
    sandboxes: Arc<crate::sandbox::Sandboxes>,
    recordings: Arc<crate::recording::Recordings>,
    /// Container changes Docker's events cannot tell (a sandbox becoming someone's), for `watch` to pass on.
    notices: tokio::sync::broadcast::Sender<crate::docker::ContainerEvent>,
    security: Arc<Security>,
    edge: Arc<crate::http::conn::Connections>,
    /// Cluster mode: the directory in Redis, and this node's part of it.
    cluster: Option<(Arc<crate::cluster::Cluster>, Arc<crate::cluster::directory::ClusterDirectory>)>,
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
    r.recording_id = t.recorded().then(|| t.id().0.clone());
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
        sandboxes: Arc<crate::sandbox::Sandboxes>,
        recordings: Arc<crate::recording::Recordings>,
        edge: Arc<crate::http::conn::Connections>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> AppState {
        let local = crate::session::registry::LocalDirectory::new(limits);
        let (sessions, cluster) = match cluster {
            Some(c) => {
                let directory = crate::cluster::directory::ClusterDirectory::new(local, c.clone());
                (Sessions::with_directory(runtime, limits, directory.clone()), Some((c, directory)))
            }
            None => (Sessions::with_directory(runtime, limits, Arc::new(local)), None),
        };
        sandboxes.use_sessions(&sessions);
        let notices = tokio::sync::broadcast::channel(NOTICE_QUEUE).0;
        AppState { sessions, sandboxes, recordings, notices, security: Arc::new(security), edge, cluster }
    }

    /// This node's recordings, unfiltered (for the peer routes; users go through the checked operations).
    pub fn recordings_store(&self) -> &Arc<crate::recording::Recordings> {
        &self.recordings
    }

    /// Cluster mode: this node's id (for records and views that name their node).
    pub fn node_id(&self) -> Option<String> {
        self.cluster().map(|c| c.node().to_string())
    }

    /// Cluster mode's directory, when on.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref().map(|(c, _)| c)
    }

    /// In cluster mode, renews this node's lease until `stop`, then leaves the directory. Meanwhile it reaps
    /// the processes of lost nodes' terminals on the Docker hosts it serves: first those this node itself left
    /// when it last stopped without leaving (killed), then every heartbeat those of nodes whose lease expired.
    pub async fn run_cluster(&self, stop: tokio_util::sync::CancellationToken) {
        let Some((cluster, directory)) = &self.cluster else { return };
        self.reap_orphans_of(cluster, cluster.node()).await;
        let reaping = async {
            let mut tick = tokio::time::interval(cluster.heartbeat());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                self.learn_sign_outs(cluster).await;
                let mine = self.published_sandboxes().await;
                if cluster.publish_sandboxes(&mine).await.is_ok() {
                    let _ = cluster.learn_peer_sandboxes().await;
                }
                let Ok(lost) = cluster.lost_nodes().await else { continue };
                for node in lost {
                    if cluster.claim_reap(&node).await {
                        self.reap_orphans_of(cluster, &node).await;
                    }
                }
            }
        };
        tokio::join!(directory.clone().heartbeat(stop.clone()), reaping);
    }

    /// Ends the processes of `node`'s listed terminals that are on a Docker host this node serves (and, for
    /// this node's own list, not running here), and takes them off the list.
    async fn reap_orphans_of(&self, cluster: &crate::cluster::Cluster, node: &str) {
        use crate::docker::RuntimeError;
        let Ok(orphans) = cluster.orphans(node).await else { return };
        let mut done = Vec::new();
        for t in orphans {
            let id = &t.info.terminal_id;
            if !cluster.hosts().contains(&t.info.host) || (node == cluster.node() && self.sessions.find(id).is_ok()) {
                continue;
            }
            let container = if t.info.container_id.contains('/') {
                t.info.container_id.clone()
            } else {
                format!("{}/{}", t.info.host, t.info.container_id)
            };
            let runtime = self.sessions.runtime();
            let reaped = match runtime.resolve(&container).await {
                Ok(target) => {
                    crate::session::reaper::reap(runtime.as_ref(), &target.id, &target.reaper_user(), id).await
                }
                Err(e) => Err(e),
            };
            match reaped {
                // Next round: the daemon may answer then.
                Err(RuntimeError::Unavailable(e)) => {
                    tracing::warn!(lost = %node, terminal = %id, error = %e, "cannot reap a lost node's terminal yet");
                    continue;
                }
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(lost = %node, terminal = %id, error = %e, "could not reap a lost node's terminal")
                }
                Ok(()) => tracing::info!(lost = %node, terminal = %id, "reaped a lost node's terminal"),
            }
            done.push(id.0.clone());
        }
        cluster.forget_orphans(node, &done).await;
    }

    /// Runs the recordings' retention until `stop`.
    pub async fn maintain_recordings(&self, stop: tokio_util::sync::CancellationToken) {
        self.recordings.clone().maintain(stop).await;
    }

    /// Container changes to pass on to the clients that may see the container, besides Docker's own events.
    pub fn container_notices(&self) -> tokio::sync::broadcast::Receiver<crate::docker::ContainerEvent> {
        self.notices.subscribe()
    }

    /// The sandbox manager.
    pub fn sandbox_manager(&self) -> &Arc<crate::sandbox::Sandboxes> {
        &self.sandboxes
    }

    /// Runs the sandboxes' maintenance (expiry, idle timeouts, the pools, clean-up after a crash) until `stop`.
    pub async fn maintain_sandboxes(&self, stop: tokio_util::sync::CancellationToken) {
        let me = self.clone();
        let expired = move |row: &crate::sandbox::store::Row| me.audit_expired(row);
        self.sandboxes.clone().maintain(self.sessions.clone(), expired, stop).await;
    }

    /// Re-reads the sandbox profiles file. On error the old profiles stay and the error is returned.
    pub async fn reload_sandboxes(&self) -> Result<(), String> {
        let Some(path) = self.sandboxes.profiles().source.clone() else {
            return Err("no --sandboxes file was given; nothing to reload".into());
        };
        let result = match crate::sandbox::profile::Profiles::load(&path) {
            Ok(p) => self.sandboxes.reload(p).await,
            Err(e) => Err(e),
        };
        self.audit(Record {
            action: "sandboxes.reload",
            outcome: if result.is_ok() { "allowed" } else { "denied" },
            reason: result.as_ref().err().cloned(),
            ..Record::default()
        });
        result
    }

    /// Connection counts, sign-in slots and the registry of signed-in sockets.
    pub fn edge(&self) -> &Arc<crate::http::conn::Connections> {
        &self.edge
    }

    /// The local access token, when signing in is by token.
    pub fn local_token(&self) -> Option<&str> {
        self.security.auth.local_token()
    }

    /// Seconds of leeway on credential expiry.
    pub fn leeway(&self) -> u64 {
        self.security.auth.leeway()
    }

    /// Writes the pending refusal summaries (every [`crate::refusals::INTERVAL`]; all of them with `all`).
    pub fn flush_refusals(&self, all: bool) {
        let s = &self.security;
        if all {
            s.logged_refusals.flush_all(&s.audit);
            s.audited_refusals.flush_all(&s.audit);
        } else {
            s.logged_refusals.flush(&s.audit);
            s.audited_refusals.flush(&s.audit);
        }
    }

    /// Closes every terminal and removes the warm pools (server shutdown); users' sandboxes stay theirs.
    pub async fn shutdown(&self) {
        self.sessions.shutdown().await;
        self.recordings.drain(crate::recording::SHUTDOWN_DRAIN).await;
        self.sandboxes.drain_pools().await;
    }

    pub fn events_per_sec(&self) -> u32 {
        self.security.events_per_sec
    }

    fn policy(&self) -> Arc<Policy> {
        self.security.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes an audit record; one about a recorded terminal is also listed with its recording.
    pub fn audit(&self, record: Record) {
        if record.relayed {
            return;
        }
        let recording = record.recording_id.clone();
        let id = self.security.audit.record(record);
        if let Some(r) = recording {
            self.recordings.link_audit(&r, &id);
        }
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
        let caller = Caller { principal, ip, relayed_by: None };
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
        AppState::revoked_under(&self.policy(), caller)?;
        self.signed_out(caller)
    }

    fn signed_out(&self, caller: &Caller) -> Result<(), ServiceError> {
        if self.security.auth.signed_out(&caller.principal) {
            return Err(ServiceError::new(ErrorCode::TokenRevoked, "this session was signed out"));
        }
        Ok(())
    }

    /// Whether `caller`'s credential has neither expired nor been signed out (the policy's revocations are
    /// checked with each policy decision).
    pub fn credential_current(&self, caller: &Caller) -> Result<(), ServiceError> {
        if caller.principal.expired_at(now_secs(), self.security.auth.leeway()) {
            return Err(ServiceError::new(ErrorCode::TokenExpired, "the token has expired; sign in again"));
        }
        self.signed_out(caller)
    }

    /// Whether `policy` revokes `caller`'s credential (the part of [`AppState::still_valid`] that needs the
    /// policy, checked with the policy snapshot the caller goes on to use).
    fn revoked_under(policy: &Policy, caller: &Caller) -> Result<(), ServiceError> {
        match policy.revoked(&caller.principal) {
            Some(why) => Err(ServiceError::new(ErrorCode::TokenRevoked, why)),
            None => Ok(()),
        }
    }

    /// Exchanges a token for a session cookie value and lifetime. In cluster mode the session is recorded in
    /// the directory, so a cookie sign-in is refused (`cluster_unavailable`) while Redis does not answer.
    pub async fn login(&self, token: &str, ip: Option<IpAddr>) -> Result<(Caller, String, u64), ServiceError> {
        let caller = self.authenticate(Some(token), ip)?;
        let (value, max_age, id) = self.security.auth.session_with_id(&caller.principal, token)?;
        if let Some(cluster) = self.cluster() {
            use sha2::Digest;
            let id = id.unwrap_or_else(|| format!("{:x}", sha2::Sha256::digest(value.as_bytes())));
            if let Err(e) = cluster.record_session(&id, now_secs().saturating_add(max_age)).await {
                self.audit_refusal(&e, denied(&caller, "login", &e));
                return Err(e.audited());
            }
        }
        self.audit(caller.record("login", "allowed"));
        Ok((caller, value, max_age))
    }

    /// Ends `caller`'s session; sockets using it are disconnected, in cluster mode on every node (each learns
    /// of it within a heartbeat). Signed out here even when Redis does not answer (then the error says so).
    pub async fn logout(&self, caller: &Caller) -> Result<(), ServiceError> {
        self.security.auth.sign_out(&caller.principal);
        self.audit(caller.record("logout", "allowed"));
        self.security.epoch.send_modify(|e| *e += 1);
        match (self.cluster(), &caller.principal.token_id) {
            (Some(cluster), Some(id)) => {
                let until = caller.principal.expires_at.unwrap_or_else(|| now_secs().saturating_add(24 * 3600));
                cluster.sign_out(id, until).await
            }
            _ => Ok(()),
        }
    }

    /// Cluster mode: takes in the sessions other nodes signed out; their sockets here are disconnected.
    async fn learn_sign_outs(&self, cluster: &crate::cluster::Cluster) {
        let Ok(ids) = cluster.signed_out().await else { return };
        let mut new = false;
        for id in ids {
            new |= self.security.auth.sign_out_id(&id);
        }
        if new {
            self.security.epoch.send_modify(|e| *e += 1);
        }
    }

    /// Re-reads the policy file. On error the old policy stays and the error is returned.
    pub fn reload_policy(&self) -> Result<(), crate::auth::policy::PolicyError> {
        let Some(path) = self.policy().source.clone() else {
            return Err(crate::auth::policy::PolicyError::NoFile);
        };
        let result = Policy::load(&path);
        let outcome = if result.is_ok() { "allowed" } else { "denied" };
        self.audit(Record {
            action: "policy.reload",
            outcome,
            reason: result.as_ref().err().map(|e| e.to_string()),
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
        let mut list = self.containers_here().await?;
        let here = list.len();
        if let Some(cluster) = self.cluster() {
            list.extend(self.containers_elsewhere(cluster).await.into_iter().map(|(_, c)| c));
        }
        let policy = self.policy();
        let mut list: Vec<ContainerSummary> = list
            .into_iter()
            .enumerate()
            .filter_map(|(i, mut c)| {
                let grant = self.container_grant(&policy, caller, &c.id, &c.name, &c.labels)?;
                c.sandbox = self.sandbox_of(&c.id).map(|row| {
                    let mut sb = crate::sandbox::Sandboxes::describe(&row, &c.state);
                    sb.node = self.node_id();
                    sb
                });
                // Another node's sandbox (its maker removes it, for whoever this node lets).
                let elsewhere = match (&c.sandbox, self.cluster()) {
                    (None, Some(cluster)) => cluster.peer_sandbox(&c.id).filter(|sb| !sb.owner.is_empty()),
                    _ => None,
                };
                let removable_elsewhere = elsewhere.is_some() && grant.manage;
                if let Some(mut sb) = elsewhere {
                    sb.state = c.state.clone();
                    c.sandbox = Some(sb);
                }
                // Start, stop and restart act on this node's hosts only.
                let manage = grant.manage && i < here;
                c.rights = app::protocol::ContainerRights {
                    manage,
                    remove: removable_elsewhere || (c.sandbox.is_some() && manage),
                };
                Some(c)
            })
            .collect();
        list.sort_by(|a, b| (a.state != "running").cmp(&(b.state != "running")).then_with(|| a.name.cmp(&b.name)));
        Ok(list)
    }

    /// Every container on this node's Docker hosts, unfiltered.
    pub async fn containers_here(&self) -> Result<Vec<ContainerSummary>, ServiceError> {
        self.sessions.runtime().list_containers().await.map_err(ServiceError::from_runtime)
    }

    /// Cluster mode: the containers of the Docker hosts this node does not serve, each host listed by one live
    /// node that serves it (ids `HOST/ID`), with that node. Nodes that do not answer within
    /// [`crate::cluster::peer::LIST_TIMEOUT`] are left out; so is everything while the directory does not answer.
    pub async fn containers_elsewhere(
        &self,
        cluster: &crate::cluster::Cluster,
    ) -> Vec<(crate::cluster::NodeRecord, ContainerSummary)> {
        let Ok(peers) = cluster.peers().await else { return Vec::new() };
        let mut covered: std::collections::BTreeSet<String> = cluster.hosts().iter().cloned().collect();
        let mut asked = Vec::new();
        for p in peers {
            let new: Vec<String> = p.hosts.iter().filter(|h| !covered.contains(*h)).cloned().collect();
            if !new.is_empty() {
                covered.extend(new.iter().cloned());
                asked.push((p, new));
            }
        }
        let lists =
            futures_util::future::join_all(asked.iter().map(|(p, _)| crate::cluster::peer::containers_of(cluster, p)))
                .await;
        let mut out = Vec::new();
        for ((p, hosts), list) in asked.iter().zip(lists) {
            match list {
                Ok(list) => out.extend(list.into_iter().filter(|c| hosts.contains(&c.host)).map(|c| (p.clone(), c))),
                Err(e) => tracing::warn!(peer = %p.node, error = %e.message, "a peer did not list its containers"),
            }
        }
        out
    }

    /// The container `container_ref` names on this node's hosts, if any.
    pub async fn target_here(&self, container_ref: &str) -> Option<crate::docker::ContainerTarget> {
        self.sessions.runtime().resolve(container_ref).await.ok()
    }

    /// Whether `container_ref` names a container on this node's hosts that `caller` may see.
    pub async fn resolves_here(&self, caller: &Caller, container_ref: &str) -> bool {
        match self.sessions.runtime().resolve(container_ref).await {
            Ok(t) => self.may_see_container(caller, &t.id, &t.name, &t.labels),
            Err(_) => false,
        }
    }

    /// Whether `caller` may see the container `id` (`name`, with `labels`).
    pub fn may_see_container(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.container_grant(&self.policy(), caller, id, name, labels).is_some()
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

    async fn terminals(&self) -> Vec<TerminalInfo> {
        self.state.terminals_everywhere(&self.caller).await
    }

    fn sandbox_profiles(&self) -> Vec<app::protocol::SandboxProfile> {
        self.state.sandbox_profiles(&self.caller)
    }
}
