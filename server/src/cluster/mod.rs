//! Cluster mode (`--cluster-redis`): several Porthole nodes share one directory in Redis.
//!
//! What lives in Redis, all under the `porthole:` prefix and all rewritten by each node's heartbeat (so a Redis
//! that restarted empty is whole again within one heartbeat, a third of the lease):
//! - `porthole:nodes`: the set of node ids that ever joined;
//! - `porthole:node:ID`: the node's lease ([`NodeRecord`]: where its peers reach it, its Docker hosts), expiring
//!   after [`LEASE_TTL`] unless renewed;
//! - `porthole:node:ID:terminals`: its running terminals ([`RemoteTerminal`], the REST view plus what the policy
//!   needs), by terminal id;
//! - `porthole:node:ID:users`: how many terminals each user has open or opening on it, for the quotas.
//!
//! What does not: the terminals themselves (output logs, exec streams, viewers) stay on the node that owns them;
//! the other nodes reach them through that node ([`peer`]). Terminal lists from the directory are as fresh as the
//! last heartbeat or change.

pub mod directory;
pub mod peer;
pub mod recordings;
pub mod relay;
pub mod sandboxes;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use app::protocol::{ErrorCode, TerminalInfo};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

/// A node's lease lasts this long unless renewed (`--cluster-lease-ttl`, default).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// A node renews its lease and rewrites its part of the directory this many times per lease.
pub const HEARTBEATS_PER_LEASE: u32 = 3;
/// A node's list of terminals outlives its lease by this much: so that, once the node is lost, a node serving
/// the same Docker host (or the node itself, back) can still read which processes to reap.
pub const ORPHANS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most signed-out sessions a node reads back per heartbeat (as many as it keeps).
pub const MAX_SIGNED_OUT: usize = crate::auth::MAX_REVOKED_SESSIONS;
/// How long one node holds the right to reap a lost node's terminals.
pub const REAP_CLAIM: Duration = Duration::from_secs(30);
/// How long one Redis command may take before the directory counts as unavailable.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Nodes in one cluster, at most (the directory reads every node's entries on a lookup).
pub const MAX_NODES: usize = 64;

const PREFIX: &str = "porthole:";

fn nodes_key() -> String {
    format!("{PREFIX}nodes")
}

fn lease_key(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

fn terminals_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:terminals")
}

/// Cookie sessions signed in on any node (member: the session's token id, score: when it expires).
fn sessions_key() -> String {
    format!("{PREFIX}sessions")
}

/// Sessions signed out on any node (member: token id, score: when it would have expired).
fn signed_out_key() -> String {
    format!("{PREFIX}signed-out")
}

/// How many leases a node's published sandboxes outlive their last write.
pub const SANDBOXES_LEASES: u64 = 4;

fn sandboxes_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:sandboxes")
}

fn users_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:users")
}

/// Cluster mode's settings, checked.
#[derive(Clone)]
pub struct Settings {
    /// The Redis URL (may hold a password: never logged).
    pub redis: String,
    pub node: String,
    /// HOST:PORT.
    pub advertise: String,
    /// `https` when this server serves TLS, else `http`: how peers reach it.
    pub scheme: &'static str,
    pub secret: Vec<u8>,
    /// How long the lease lasts unless renewed ([`LEASE_TTL`] by default).
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("node", &self.node).field("advertise", &self.advertise).finish_non_exhaustive()
    }
}

/// Whether `id` is a valid node id: 1 to 32 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn valid_node_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

impl Settings {
    /// Checks the flags and reads the secret file; the message is shown to the operator as is.
    pub fn new(redis: &str, node: &str, advertise: &str, secret_file: &Path, tls: bool) -> Result<Settings, String> {
        if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) || redis::Client::open(redis).is_err() {
            return Err("--cluster-redis must be a redis:// URL, e.g. redis://:PASSWORD@10.0.0.5:6379/0".into());
        }
        if !valid_node_id(node) {
            return Err(format!(
                "--node-id {node:?} must be 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ));
        }
        let host_port = advertise.rsplit_once(':').filter(|(host, port)| {
            !host.is_empty()
                && !host.contains('/')
                && !host.contains("://")
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if host_port.is_none() || advertise.contains("://") {
            return Err(format!("--advertise {advertise:?} must be HOST:PORT, without a scheme (e.g. 10.0.0.7:7070)"));
        }
        let secret = std::fs::read(secret_file)
            .map_err(|e| format!("cannot read --cluster-secret-file {}: {e}", secret_file.display()))?;
        let secret = secret.trim_ascii_end().to_vec();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "--cluster-secret-file {} holds {} bytes; the cluster secret must be at least {MIN_SECRET_BYTES}",
                secret_file.display(),
                secret.len()
            ));
        }
        Ok(Settings {
            redis: redis.to_string(),
            node: node.to_string(),
            advertise: advertise.to_string(),
            scheme: if tls { "https" } else { "http" },
            secret,
            lease_ttl: LEASE_TTL,
        })
    }
}

/// A node's lease, as its peers read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// HOST:PORT.
    pub advertise: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The names of the Docker hosts it serves.
    pub hosts: Vec<String>,
}

impl NodeRecord {
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.advertise)
    }
}

/// A running terminal in the directory: its REST view (with `node` set) and what the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteTerminal {
    pub info: TerminalInfo,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A node's part of the directory, rewritten whole by each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub terminals: Vec<RemoteTerminal>,
    /// Open or opening terminals per user.
    pub users: BTreeMap<String, usize>,
}

/// Checks the cluster-wide per-user quota and records this node's new count for the user, atomically.
/// KEYS[1]: the nodes set. ARGV: prefix, this node, user, this node's count for the user with the new terminal,
/// the quota, the TTL in seconds. Returns -1 when admitted, else how many the user already has.
const RESERVE: &str = r"
local others = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:' .. id) == 1 then
    others = others + tonumber(redis.call('HGET', ARGV[1] .. 'node:' .. id .. ':users', ARGV[3]) or '0')
  end
end
local mine = tonumber(ARGV[4])
if others + mine > tonumber(ARGV[5]) then
  return others + mine - 1
end
local users = ARGV[1] .. 'node:' .. ARGV[2] .. ':users'
redis.call('HSET', users, ARGV[3], mine)
redis.call('EXPIRE', users, ARGV[6])
return -1
";

/// Container events waiting to be published to the other nodes; beyond it they are dropped (the other nodes'
/// lists are then as fresh as their next refresh).
pub const EVENTS_QUEUE: usize = 1024;

/// A container event of one node's Docker hosts, as the other nodes hear of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// The node whose host it happened on.
    pub node: String,
    pub host: String,
    /// `HOST/ID`.
    pub container_id: String,
    pub action: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn events_channel() -> String {
    format!("{PREFIX}events")
}

/// This node's handle on the cluster directory.
pub struct Cluster {
    settings: Settings,
    hosts: Vec<String>,
    client: redis::Client,
    redis: redis::aio::ConnectionManager,
    reserve: redis::Script,
    /// Whether the last command reached Redis (for the log: one line per change).
    up: AtomicBool,
    http: reqwest::Client,
    events: tokio::sync::mpsc::Sender<ClusterEvent>,
    /// The receiving end of `events`, taken by [`Cluster::publish_events`].
    outbox: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<ClusterEvent>>>,
    /// The other live nodes' sandbox containers by bare Docker id, as last read (each heartbeat).
    peer_sandboxes: parking_lot::RwLock<std::collections::HashMap<String, app::protocol::Sandbox>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.settings.node).finish_non_exhaustive()
    }
}

/// The error for a directory that does not answer.
pub fn unavailable(what: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::ClusterUnavailable,
        format!("the cluster directory (Redis) does not answer, so {what} cannot be done now; retry in a moment"),
    )
}

impl Cluster {
    /// Connects lazily: a node starts while Redis is down, and refuses what needs the directory until it is up.
    pub fn new(settings: Settings, hosts: Vec<String>) -> Result<Cluster, String> {
        let client = redis::Client::open(settings.redis.as_str()).map_err(|_| "--cluster-redis is not a valid URL")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = client.get_connection_manager_lazy(config).map_err(|e| format!("cluster directory: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(peer::CONNECT_TIMEOUT)
            .timeout(peer::REQUEST_TIMEOUT)
            // Peers are reached at --advertise; with TLS their certificates name the cluster's hostnames.
            .build()
            .map_err(|e| format!("cannot set up the peer client: {e}"))?;
        let (events, outbox) = tokio::sync::mpsc::channel(EVENTS_QUEUE);
        Ok(Cluster {
            settings,
            hosts,
            client,
            redis,
            reserve: redis::Script::new(RESERVE),
            up: AtomicBool::new(true),
            http,
            events,
            outbox: parking_lot::Mutex::new(Some(outbox)),
            peer_sandboxes: parking_lot::RwLock::default(),
        })
    }

    pub fn node(&self) -> &str {
        &self.settings.node
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How often this node renews its lease.
    pub fn heartbeat(&self) -> Duration {
        self.settings.lease_ttl / HEARTBEATS_PER_LEASE
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.redis.clone()
    }

    /// Notes whether Redis answered, logging changes.
    fn saw<T>(&self, r: redis::RedisResult<T>) -> redis::RedisResult<T> {
        let ok = r.is_ok();
        if self.up.swap(ok, Ordering::SeqCst) != ok {
            match &r {
                Ok(_) => tracing::info!(node = %self.node(), "the cluster directory answers again"),
                Err(e) => tracing::warn!(node = %self.node(), error = %e, "the cluster directory does not answer"),
            }
        }
        r
    }

    /// Whether the last command reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Renews the lease and rewrites this node's terminals and user counts, in one transaction.
    pub async fn publish(&self, snapshot: &Snapshot) -> Result<(), ServiceError> {
        let me = self.node();
        let ttl = self.settings.lease_ttl.as_secs() as i64;
        let record = NodeRecord {
            node: me.to_string(),
            advertise: self.settings.advertise.clone(),
            scheme: self.settings.scheme.to_string(),
            hosts: self.hosts.clone(),
        };
        let lease =
            serde_json::to_string(&record).map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.set_ex(lease_key(me), lease, ttl as u64).ignore();
        pipe.sadd(nodes_key(), me).ignore();
        pipe.del(terminals_key(me)).ignore();
        let terminals: Vec<(String, String)> = snapshot
            .terminals
            .iter()
            .filter_map(|t| Some((t.info.terminal_id.0.clone(), serde_json::to_string(t).ok()?)))
            .collect();
        if !terminals.is_empty() {
            pipe.hset_multiple(terminals_key(me), &terminals).ignore();
            pipe.expire(terminals_key(me), ORPHANS_TTL.as_secs() as i64).ignore();
        }
        pipe.del(users_key(me)).ignore();
        let users: Vec<(&str, usize)> = snapshot.users.iter().map(|(u, n)| (u.as_str(), *n)).collect();
        if !users.is_empty() {
            pipe.hset_multiple(users_key(me), &users).ignore();
            pipe.expire(users_key(me), ttl).ignore();
        }
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.conn()).await;
        self.saw(r).map_err(|_| unavailable("renewing this node's lease"))
    }

    /// Takes this node out of the directory (at shutdown).
    pub async fn leave(&self) {
        let me = self.node();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(lease_key(me))
            .del(terminals_key(me))
            .del(users_key(me))
            .del(sandboxes_key(me))
            .srem(nodes_key(), me);
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.conn()).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not take this node out of the cluster directory");
        }
    }

    /// Admits one more terminal for `user`, who would then have `mine` on this node, if the user's terminals
    /// on every live node stay within `quota`. Errors: `quota_exceeded`, `cluster_unavailable`.
    pub async fn reserve(&self, user: &str, mine: usize, quota: usize) -> Result<(), ServiceError> {
        let ttl = self.settings.lease_ttl.as_secs();
        let r: redis::RedisResult<i64> = self
            .reserve
            .key(nodes_key())
            .arg(PREFIX)
            .arg(self.node())
            .arg(user)
            .arg(mine)
            .arg(quota)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await;
        match self.saw(r) {
            Ok(-1) => Ok(()),
            Ok(has) => Err(ServiceError::new(
                ErrorCode::QuotaExceeded,
                format!("user {user} already has {has} terminals open in the cluster (quota {quota})"),
            )),
            Err(_) => Err(unavailable("opening a terminal")),
        }
    }

    /// Records that `user` has `n` terminals open or opening on this node.
    pub async fn set_user_count(&self, user: &str, n: usize) {
        let key = users_key(self.node());
        let r: redis::RedisResult<()> =
            if n == 0 { self.conn().hdel(key, user).await } else { self.conn().hset(key, user, n).await };
        let _ = self.saw(r);
    }

    /// Lists (or updates) one of this node's terminals.
    pub async fn put_terminal(&self, t: &RemoteTerminal) {
        let Ok(json) = serde_json::to_string(t) else { return };
        let key = terminals_key(self.node());
        let mut pipe = redis::pipe();
        pipe.hset(&key, &t.info.terminal_id.0, json).ignore().expire(&key, ORPHANS_TTL.as_secs() as i64).ignore();
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.conn()).await;
        let _ = self.saw(r);
    }

    /// Takes one of this node's terminals off the directory.
    pub async fn remove_terminal(&self, id: &str) {
        let r: redis::RedisResult<()> = self.conn().hdel(terminals_key(self.node()), id).await;
        let _ = self.saw(r);
    }

    /// Every other node that joined (at most [`MAX_NODES`]), with its lease if it is current.
    async fn leases(&self, what: &str) -> Result<Vec<(String, Option<String>)>, ServiceError> {
        let mut conn = self.conn();
        let ids: redis::RedisResult<Vec<String>> = conn.smembers(nodes_key()).await;
        let mut ids = self.saw(ids).map_err(|_| unavailable(what))?;
        ids.retain(|id| id != self.node() && valid_node_id(id));
        ids.truncate(MAX_NODES);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| lease_key(id)).collect();
        let leases: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
        let leases = self.saw(leases).map_err(|_| unavailable(what))?;
        Ok(ids.into_iter().zip(leases).collect())
    }

    /// The nodes that joined and whose lease has expired (killed, or cut off), this one aside.
    pub async fn lost_nodes(&self) -> Result<Vec<String>, ServiceError> {
        let leases = self.leases("finding lost nodes").await?;
        Ok(leases.into_iter().filter(|(_, l)| l.is_none()).map(|(id, _)| id).collect())
    }

    /// The terminals `node` last listed (for a lost node, or this one just started: orphans).
    pub async fn orphans(&self, node: &str) -> Result<Vec<RemoteTerminal>, ServiceError> {
        let all: redis::RedisResult<Vec<String>> = self.conn().hvals(terminals_key(node)).await;
        let all = self.saw(all).map_err(|_| unavailable("reading a lost node's terminals"))?;
        Ok(all.iter().filter_map(|j| serde_json::from_str::<RemoteTerminal>(j).ok()).collect())
    }

    /// Takes the right to reap `node`'s orphans for [`REAP_CLAIM`]; false when another node has it.
    pub async fn claim_reap(&self, node: &str) -> bool {
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(format!("{PREFIX}node:{node}:reaper"))
            .arg(self.node())
            .arg("NX")
            .arg("EX")
            .arg(REAP_CLAIM.as_secs())
            .query_async(&mut self.conn())
            .await;
        matches!(self.saw(r), Ok(Some(_)))
    }

    /// Takes reaped orphans of `node` off its list; a lost node whose list is empty leaves the directory.
    pub async fn forget_orphans(&self, node: &str, ids: &[String]) {
        let mut conn = self.conn();
        if !ids.is_empty() {
            let r: redis::RedisResult<()> = conn.hdel(terminals_key(node), ids).await;
            let _ = self.saw(r);
        }
        if node == self.node() {
            return;
        }
        let left: redis::RedisResult<usize> = conn.hlen(terminals_key(node)).await;
        let lease: redis::RedisResult<bool> = conn.exists(lease_key(node)).await;
        if let (Ok(0), Ok(false)) = (self.saw(left), self.saw(lease)) {
            let mut pipe = redis::pipe();
            pipe.atomic().srem(nodes_key(), node).ignore().del(users_key(node)).ignore();
            let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            let _ = self.saw(r);
        }
    }

    /// Records a cookie session signed in here, valid until `expires_at` (Unix seconds): refused (the caller
    /// then refuses the sign-in) while Redis does not answer.
    pub async fn record_session(&self, id: &str, expires_at: u64) -> Result<(), ServiceError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(sessions_key())
            .arg("-inf")
            .arg(peer::unix_now())
            .ignore()
            .zadd(sessions_key(), id, expires_at)
            .ignore();
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.conn()).await;
        self.saw(r).map_err(|_| unavailable("a cookie sign-in"))
    }

    /// Signs session `id` out on every node: listed as signed out until it would have expired anyway.
    pub async fn sign_out(&self, id: &str, expires_at: u64) -> Result<(), ServiceError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(sessions_key(), id)
            .ignore()
            .zadd(signed_out_key(), id, expires_at)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(signed_out_key())
            .arg("-inf")
            .arg(peer::unix_now())
            .ignore();
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.conn()).await;
        self.saw(r).map_err(|_| unavailable("signing out on every node"))
    }

    /// The sessions signed out on any node and not expired yet, at most [`MAX_SIGNED_OUT`].
    pub async fn signed_out(&self) -> Result<Vec<String>, ServiceError> {
        let r: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
            .arg(signed_out_key())
            .arg(peer::unix_now())
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_SIGNED_OUT)
            .query_async(&mut self.conn())
            .await;
        self.saw(r).map_err(|_| unavailable("reading signed-out sessions"))
    }

    /// Queues a container event of this node's hosts for the other nodes (dropped when the queue is full).
    pub fn tell(&self, e: &crate::docker::ContainerEvent) {
        let id = &e.change.container_id;
        let (host, qualified) = match id.split_once('/') {
            Some((host, _)) => (host.to_string(), id.clone()),
            None => {
                let host = self.hosts.first().cloned().unwrap_or_default();
                (host.clone(), format!("{host}/{id}"))
            }
        };
        let event = ClusterEvent {
            node: self.node().to_string(),
            host,
            container_id: qualified,
            action: e.change.action.clone(),
            name: e.name.clone(),
            labels: e.labels.clone(),
        };
        if self.events.try_send(event).is_err() {
            tracing::debug!("container event not published: the queue is full");
        }
    }

    /// Publishes the queued container events until `stop` (once per node: the queue is taken).
    pub async fn publish_events(&self, stop: tokio_util::sync::CancellationToken) {
        let Some(mut outbox) = self.outbox.lock().take() else { return };
        loop {
            let e = tokio::select! {
                _ = stop.cancelled() => return,
                e = outbox.recv() => match e { Some(e) => e, None => return },
            };
            let Ok(json) = serde_json::to_string(&e) else { continue };
            let r: redis::RedisResult<()> = self.conn().publish(events_channel(), json).await;
            let _ = self.saw(r);
        }
    }

    /// The other nodes' container events, on a connection of their own; ends when Redis goes away.
    pub async fn subscribe_events(
        &self,
    ) -> redis::RedisResult<impl futures_util::Stream<Item = ClusterEvent> + Send + use<>> {
        use futures_util::StreamExt;
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out connecting to Redis")))??;
        pubsub.subscribe(events_channel()).await?;
        let me = self.node().to_string();
        Ok(pubsub.into_on_message().filter_map(move |m| {
            let e = m.get_payload::<String>().ok().and_then(|j| serde_json::from_str::<ClusterEvent>(&j).ok());
            let me = me.clone();
            async move { e.filter(|e| e.node != me) }
        }))
    }

    /// The Docker hosts this node serves.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The other nodes whose lease is current.
    pub async fn peers(&self) -> Result<Vec<NodeRecord>, ServiceError> {
        let leases = self.leases("finding the other nodes").await?;
        Ok(leases.into_iter().filter_map(|(_, l)| serde_json::from_str::<NodeRecord>(&l?).ok()).collect())
    }

    /// Every running terminal the other live nodes own, with its owner.
    pub async fn remote_terminals(&self) -> Result<Vec<(NodeRecord, RemoteTerminal)>, ServiceError> {
        let peers = self.peers().await?;
        let mut conn = self.conn();
        let mut out = Vec::new();
        for node in peers {
            let all: redis::RedisResult<Vec<String>> = conn.hvals(terminals_key(&node.node)).await;
            let all = self.saw(all).map_err(|_| unavailable("listing the cluster's terminals"))?;
            for t in all.iter().filter_map(|j| serde_json::from_str::<RemoteTerminal>(j).ok()) {
                out.push((node.clone(), t));
            }
        }
        Ok(out)
    }

    /// A running terminal another live node owns, with its owner.
    pub async fn find_remote(&self, id: &str) -> Result<Option<(NodeRecord, RemoteTerminal)>, ServiceError> {
        let peers = self.peers().await?;
        let mut conn = self.conn();
        for node in peers {
            let t: redis::RedisResult<Option<String>> = conn.hget(terminals_key(&node.node), id).await;
            let t = self.saw(t).map_err(|_| unavailable("finding the terminal"))?;
            if let Some(t) = t.and_then(|j| serde_json::from_str::<RemoteTerminal>(&j).ok()) {
                return Ok(Some((node, t)));
            }
        }
        Ok(None)
    }

    /// Writes this node's sandbox containers for its peers. `owner` is empty for a warm pool container or one
    /// being made. Kept for [`SANDBOXES_LEASES`] leases, so that a slow round (reaping a lost node's terminals)
    /// does not hide them; peers read only live nodes' entries.
    pub async fn publish_sandboxes(&self, mine: &[app::protocol::Sandbox]) -> Result<(), ServiceError> {
        let json = serde_json::to_string(mine).map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
        let ttl = self.settings.lease_ttl.as_secs() * SANDBOXES_LEASES;
        let r: redis::RedisResult<()> = self.conn().set_ex(sandboxes_key(self.node()), json, ttl).await;
        self.saw(r).map_err(|_| unavailable("publishing this node's sandboxes"))
    }

    /// Reads the other live nodes' sandbox containers into [`Cluster::peer_sandbox`]'s cache. While the directory
    /// does not answer, the cache keeps what it had.
    pub async fn learn_peer_sandboxes(&self) -> Result<(), ServiceError> {
        let peers = self.peers().await?;
        let mut conn = self.conn();
        let mut all = std::collections::HashMap::new();
        for node in peers {
            let list: redis::RedisResult<Option<String>> = conn.get(sandboxes_key(&node.node)).await;
            let list = self.saw(list).map_err(|_| unavailable("reading the other nodes' sandboxes"))?;
            let Some(list) = list.and_then(|j| serde_json::from_str::<Vec<app::protocol::Sandbox>>(&j).ok()) else {
                continue;
            };
            for mut sb in list.into_iter().take(sandboxes::MAX_PER_NODE) {
                sb.node = Some(node.node.clone());
                all.insert(sandboxes::bare_id(&sb.id).to_string(), sb);
            }
        }
        *self.peer_sandboxes.write() = all;
        Ok(())
    }

    /// Another live node's sandbox container with Docker id `id` (bare or `HOST/ID`), as last read.
    pub fn peer_sandbox(&self, id: &str) -> Option<app::protocol::Sandbox> {
        self.peer_sandboxes.read().get(sandboxes::bare_id(id)).cloned()
    }

    /// Every other live node's sandbox container, as last read.
    pub fn peer_sandboxes(&self) -> Vec<app::protocol::Sandbox> {
        self.peer_sandboxes.read().values().cloned().collect()
    }

    /// The client for signed requests to peers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
