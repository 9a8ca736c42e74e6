//! A socket's terminals on other nodes (cluster mode): followed through one relay per owner node
//! ([`crate::cluster::relay`]), a connection from this node to the owner that acts for this socket's user.
//!
//! This node makes the policy decision for every event and writes the audit record; the owner carries the event
//! out. What the owner sends on the relay (`output`, `exit`, `terminal-viewers`, `request-error`) goes to the
//! socket with its offsets unchanged, so a client resumes byte-exact whichever node it comes back through.
//!
//! Bounds: a relay always attaches with flow control, and this node acknowledges output to the owner as the
//! socket takes it (or passes the client's own acknowledgements on, when the client asked for flow control), so
//! at most [`app::protocol::FLOW_HIGH_WATERMARK`] bytes per terminal are in flight on a relay; events going to
//! the owner wait in a queue of [`RELAY_QUEUE`] events and [`RELAY_QUEUE_BYTES`] of input.
//!
//! A relay that drops is opened again with backoff ([`RECONNECT_MAX`] apart at most) and every terminal on it
//! re-attached from the offset after the last byte handed to the socket. The owner is declared lost only when
//! its directory lease has expired *and* it does not answer: then its terminals end for this socket with
//! `node_lost`. While the directory does not answer, the relay keeps trying.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::{
    AttachTerminal, ClientEvent, CloseTerminal, ErrorBody, ErrorCode, ErrorEvent, Exit, ExitReason, Input, OutputAck,
    OutputStream, Owner, Reply, Resize, TerminalAck, TerminalAttached, TerminalId, event,
};
use bytes::Bytes;
use porthole_client::{Connection, Incoming};
use serde_json::{Value, json};
use socketioxide::socket::Socket;
use tokio::sync::{mpsc, oneshot, watch};

use super::conn::{Conn, SocketSink};
use crate::cluster::relay::Claims;
use crate::cluster::{NodeRecord, RemoteTerminal};
use crate::error::ServiceError;
use crate::session::{Offer, TerminalSink};
use crate::state::{AppState, Need};

/// Events waiting to be relayed to one owner node, per socket (a burst of keys typed into many terminals at once
/// fits: the event rate limit admits bursts of 2000).
pub const RELAY_QUEUE: usize = 4096;
/// Bytes waiting in one relay's queue: input, and requests' payloads (32 of the largest input events).
pub const RELAY_QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// The longest wait between two attempts to open a dropped relay again.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long output for a terminal whose attach is still being answered waits for that answer.
const ATTACH_WAIT: Duration = Duration::from_secs(10);
/// How often output the socket has no room for is offered again.
const FULL_RETRY: Duration = Duration::from_millis(5);

/// The answer to one relayed request: the owner's ack, or why none came.
type Answer = oneshot::Receiver<Result<Value, ServiceError>>;

/// One event for the owner.
struct Op {
    name: &'static str,
    payload: Value,
    attachments: Vec<Bytes>,
    reply: Option<oneshot::Sender<Result<Value, ServiceError>>>,
    /// What it counts in its link's `queued`.
    bytes: usize,
}

/// A relay to one owner node.
struct Link {
    owner: NodeRecord,
    ops: mpsc::Sender<Op>,
    /// Attachment bytes in `ops` (at most [`RELAY_QUEUE_BYTES`]).
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// The connection now open, if any (none while it is opened again).
    current: watch::Sender<Option<Arc<Connection>>>,
}

impl Link {
    /// Queues an event for the owner; with `reply`, returns the wait for its answer.
    fn send(
        &self,
        name: &'static str,
        payload: Value,
        attachments: Vec<Bytes>,
        reply: bool,
    ) -> Result<Option<Answer>, ServiceError> {
        let (tx, rx) = if reply { Some(oneshot::channel()).unzip() } else { (None, None) };
        // Input's bytes, and a request's (a start's arguments can be most of a 1 MiB packet).
        let bytes: usize = attachments.iter().map(Bytes::len).sum::<usize>()
            + if reply { serde_json::to_string(&payload).map_or(0, |j| j.len()) } else { 0 };
        let full = || {
            ServiceError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {RELAY_QUEUE} events or {} KiB wait to be relayed to node {}; event dropped",
                    RELAY_QUEUE_BYTES / 1024,
                    self.owner.node
                ),
            )
        };
        if self.queued.fetch_add(bytes, Ordering::SeqCst) + bytes > RELAY_QUEUE_BYTES && bytes > 0 {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            return Err(full());
        }
        self.ops.try_send(Op { name, payload, attachments, reply: tx, bytes }).map_err(|e| {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            match e {
                mpsc::error::TrySendError::Full(_) => full(),
                mpsc::error::TrySendError::Closed(_) => unreachable_owner(&self.owner.node),
            }
        })?;
        Ok(rx)
    }

    /// Sends request `E` and waits for the owner's answer.
    async fn request<E: ClientEvent>(&self, payload: &E::Payload) -> Result<E::Ack, ServiceError> {
        let v = serde_json::to_value(payload).map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
        let Some(answer) = self.send(E::NAME, v, Vec::new(), true)? else { unreachable!("a reply was asked for") };
        parse_reply::<E::Ack>(answer.await.unwrap_or_else(|_| Err(unreachable_owner(&self.owner.node)))?)
    }
}

fn unreachable_owner(node: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::ClusterUnavailable,
        format!("node {node} (which holds this terminal) does not answer; retry in a moment"),
    )
}

/// An ack's JSON as the protocol's reply: the value, or the owner's refusal as a service error.
fn parse_reply<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ServiceError> {
    let reply: Reply<T> = serde_json::from_value(v.clone())
        .map_err(|e| ServiceError::new(ErrorCode::Internal, format!("a peer's answer does not parse: {e}")))?;
    reply.into_result().map_err(|b: ErrorBody| ServiceError::new(b.code, b.message))
}

/// A terminal this socket follows through a relay.
pub(super) struct Relayed {
    node: String,
    remote: RemoteTerminal,
    /// The client acknowledges output itself (it attached with `flowControl`).
    client_flow: bool,
    /// The client has the attach's answer: output may go to it.
    live: AtomicBool,
    ready: tokio::sync::Notify,
    /// The offset after the last byte handed to the socket: where a re-attach resumes.
    next: AtomicU64,
}

impl Relayed {
    /// A terminal of `node`'s, not live yet, whose output resumes at `next`.
    fn new(node: &str, remote: RemoteTerminal, client_flow: bool, next: u64) -> Arc<Relayed> {
        Arc::new(Relayed {
            node: node.to_string(),
            remote,
            client_flow,
            live: AtomicBool::new(false),
            ready: Default::default(),
            next: AtomicU64::new(next),
        })
    }

    /// The client has the attach's answer.
    pub fn go_live(&self) {
        self.live.store(true, Ordering::SeqCst);
        self.ready.notify_waiters();
    }

    async fn wait_live(&self) -> bool {
        let waited = tokio::time::timeout(ATTACH_WAIT, async {
            loop {
                let notified = self.ready.notified();
                if self.live.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        });
        waited.await.is_ok()
    }
}

/// A socket's relays and the terminals it follows through them.
#[derive(Default)]
pub(super) struct Relays {
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Held while a relay is being opened, so that one socket opens one per owner.
    opening: tokio::sync::Mutex<()>,
    terminals: Mutex<HashMap<TerminalId, Arc<Relayed>>>,
    /// Starts relayed and not answered yet: output for a terminal not known yet may be theirs.
    starting: AtomicU64,
    /// Told when a terminal is filed.
    filed: tokio::sync::Notify,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays").field("terminals", &self.lock().len()).finish_non_exhaustive()
    }
}

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TerminalId, Arc<Relayed>>> {
        self.terminals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this socket follows `id` through a relay.
    pub fn has(&self, id: &TerminalId) -> bool {
        self.lock().contains_key(id)
    }

    fn get(&self, id: &TerminalId) -> Option<Arc<Relayed>> {
        self.lock().get(id).cloned()
    }

    fn forget(&self, id: &TerminalId) {
        self.lock().remove(id);
    }

    fn file(&self, id: TerminalId, t: Arc<Relayed>) {
        self.lock().insert(id, t);
        self.filed.notify_waiters();
    }

    /// The terminal `id`, waiting (up to [`ATTACH_WAIT`]) while a relayed start may be about to file it.
    async fn get_or_wait(&self, id: &TerminalId) -> Option<Arc<Relayed>> {
        let waited = tokio::time::timeout(ATTACH_WAIT, async {
            loop {
                let filed = self.filed.notified();
                if let Some(t) = self.get(id) {
                    return Some(t);
                }
                if self.starting.load(Ordering::SeqCst) == 0 {
                    return None;
                }
                filed.await;
            }
        });
        waited.await.ok().flatten()
    }

    fn on_node(&self, node: &str) -> Vec<(TerminalId, Arc<Relayed>)> {
        self.lock().iter().filter(|(_, t)| t.node == node).map(|(id, t)| (id.clone(), t.clone())).collect()
    }

    /// The open relay to `node`, if any.
    fn link_now(&self, node: &str) -> Option<Arc<Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).get(node).cloned()
    }

    fn remove_link(&self, node: &str) {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).remove(node);
    }
}

/// What a relay's tasks need of the socket.
#[derive(Clone)]
struct Ctx {
    state: AppState,
    conn: Arc<Conn>,
    socket: Arc<Socket>,
}

impl Ctx {
    fn sink(&self) -> SocketSink {
        SocketSink { socket: self.socket.clone(), conn: self.conn.clone(), state: self.state.clone() }
    }

    fn claims(&self) -> Claims {
        let p = &self.conn.caller.principal;
        Claims {
            user: p.subject.clone(),
            groups: p.groups.clone(),
            expires_at: p.expires_at,
            token_id: p.token_id.clone(),
            ip: self.conn.caller.ip,
            client_id: match &self.conn.seat.client {
                Owner::Client(id) => Some(id.clone()),
                Owner::Socket(_) => None,
            },
            protocol_version: self.conn.version,
        }
    }
}

/// The relay from this socket to `owner`, opened if there is none.
async fn link(ctx: &Ctx, owner: &NodeRecord) -> Result<Arc<Link>, ServiceError> {
    let cluster = ctx.state.cluster().cloned().ok_or_else(|| unreachable_owner(&owner.node))?;
    let relays = &ctx.conn.relays;
    let _one = relays.opening.lock().await;
    if let Some(l) = relays.link_now(&owner.node) {
        return Ok(l);
    }
    let (connection, rx) = crate::cluster::relay::connect(&cluster, owner, &ctx.claims()).await?;
    let (ops_tx, ops_rx) = mpsc::channel(RELAY_QUEUE);
    let (current, _) = watch::channel(Some(Arc::new(connection)));
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let link = Arc::new(Link { owner: owner.clone(), ops: ops_tx, queued: queued.clone(), current });
    relays.links.lock().unwrap_or_else(|e| e.into_inner()).insert(owner.node.clone(), link.clone());
    let current = link.current.subscribe();
    tokio::spawn(write(owner.node.clone(), current, ops_rx, queued, ctx.conn.seat.gone.clone()));
    tokio::spawn(supervise(ctx.clone(), link.clone(), rx));
    tracing::info!(peer = %owner.node, "relay opened");
    Ok(link)
}

/// Sends the queued events to `node`, in order, on whichever connection is open; ends with the relay.
async fn write(
    node: String,
    mut current: watch::Receiver<Option<Arc<Connection>>>,
    mut ops: mpsc::Receiver<Op>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    gone: tokio_util::sync::CancellationToken,
) {
    loop {
        let op = tokio::select! {
            _ = gone.cancelled() => return,
            op = ops.recv() => match op { Some(op) => op, None => return },
        };
        queued.fetch_sub(op.bytes, Ordering::SeqCst);
        let connection = loop {
            if let Some(c) = current.borrow_and_update().clone() {
                break c;
            }
            tokio::select! {
                _ = gone.cancelled() => return,
                changed = current.changed() => if changed.is_err() { return },
            }
        };
        let node = node.clone();
        match connection.send(op.name, op.payload, op.attachments, op.reply.is_some()).await {
            Ok(wait) => {
                if let (Some(reply), Some(wait)) = (op.reply, wait) {
                    tokio::spawn(async move {
                        let _ = reply.send(wait.await.map_err(|_| unreachable_owner(&node)));
                    });
                }
            }
            // The connection broke under it: the supervisor opens another; this event is lost with it.
            Err(e) => {
                tracing::debug!(peer = %node, error = %e, "a relayed event was lost with its connection");
                if let Some(reply) = op.reply {
                    let _ = reply.send(Err(unreachable_owner(&node)));
                }
            }
        }
    }
}

/// Hands what the owner sends to the socket; opens the relay again when it drops.
async fn supervise(ctx: Ctx, link: Arc<Link>, mut rx: mpsc::UnboundedReceiver<Incoming>) {
    let gone = ctx.conn.seat.gone.clone();
    loop {
        let incoming = tokio::select! {
            _ = gone.cancelled() => break,
            incoming = rx.recv() => incoming,
        };
        match incoming {
            None | Some(Incoming::Closed) => match reopen(&ctx, &link).await {
                Some(next) => rx = next,
                None => break,
            },
            Some(incoming) => {
                if !forward(&ctx, &link, incoming).await {
                    break;
                }
            }
        }
    }
    if let Some(c) = link.current.send_replace(None) {
        c.close().await;
    }
}

/// Hands one event from the owner to the socket. False once the socket is gone.
async fn forward(ctx: &Ctx, link: &Link, incoming: Incoming) -> bool {
    let relays = &ctx.conn.relays;
    match incoming {
        Incoming::Output(o) => {
            let Some(t) = relays.get_or_wait(&o.terminal_id).await else { return true };
            if !t.wait_live().await {
                return true;
            }
            let sink = ctx.sink();
            let stream = o.stream.unwrap_or(OutputStream::Stdout);
            loop {
                match sink.output(&o.terminal_id, o.offset, &o.data.0, stream) {
                    Offer::Delivered => break,
                    Offer::Full => {
                        tokio::select! {
                            _ = ctx.conn.seat.gone.cancelled() => return false,
                            _ = tokio::time::sleep(FULL_RETRY) => {}
                        }
                    }
                    Offer::Gone => return false,
                }
            }
            let next = o.offset + o.data.0.len() as u64;
            t.next.store(next, Ordering::SeqCst);
            if !t.client_flow {
                // Acks are cumulative: one dropped for a full queue is made good by the next.
                let ack = json!({ "terminalId": o.terminal_id, "processed": next });
                let _ = link.send(event::OUTPUT_ACK, ack, Vec::new(), false);
            }
        }
        Incoming::Exit(e) => {
            if let Some(t) = relays.get_or_wait(&e.terminal_id).await {
                t.wait_live().await;
                ctx.sink().exit(&e);
                relays.forget(&e.terminal_id);
            }
        }
        Incoming::Viewers(v) => {
            if relays.has(&v.terminal_id) {
                ctx.sink().viewers(&v.terminal_id, v.attached);
            }
        }
        Incoming::RequestError(e) => {
            if e.terminal_id.as_ref().is_none_or(|id| relays.has(id)) {
                ctx.conn.emit::<event::RequestError>(&ctx.socket, &ctx.state, e);
            }
        }
        // The user's own node sends them container events; the owner's credential checks are its own.
        Incoming::ContainersChanged(_) | Incoming::AuthError(_) | Incoming::Unknown(_) | Incoming::Closed => {}
    }
    true
}

/// Opens the dropped relay again and re-attaches its terminals where the socket is. None when the socket is
/// gone, or the owner was declared lost (its terminals ended with `node_lost`).
async fn reopen(ctx: &Ctx, link: &Link) -> Option<mpsc::UnboundedReceiver<Incoming>> {
    link.current.send_replace(None);
    let cluster = ctx.state.cluster()?.clone();
    let node = link.owner.node.clone();
    tracing::warn!(peer = %node, "relay dropped; opening it again");
    let mut delay = Duration::from_millis(100);
    loop {
        if ctx.conn.seat.gone.is_cancelled() {
            return None;
        }
        // The owner may have come back at another address.
        let owner = match cluster.peers().await {
            Ok(peers) => peers.into_iter().find(|p| p.node == node),
            Err(_) => Some(link.owner.clone()),
        };
        let lease_expired = owner.is_none();
        let target = owner.unwrap_or_else(|| link.owner.clone());
        match crate::cluster::relay::connect(&cluster, &target, &ctx.claims()).await {
            Ok((connection, rx)) => {
                reattach(ctx, &connection, &node).await;
                link.current.send_replace(Some(Arc::new(connection)));
                tracing::info!(peer = %node, "relay open again; its terminals resumed");
                return Some(rx);
            }
            Err(_) if lease_expired => {
                lost(ctx, &node).await;
                return None;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = ctx.conn.seat.gone.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// Attaches the socket's terminals on `node` again, each from where the socket is.
async fn reattach(ctx: &Ctx, connection: &Connection, node: &str) {
    for (id, t) in ctx.conn.relays.on_node(node) {
        let req =
            AttachTerminal { terminal_id: id.clone(), since: Some(t.next.load(Ordering::SeqCst)), flow_control: true };
        match connection.request::<event::AttachTerminal>(&req).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                ctx.conn.relays.forget(&id);
                let payload = ErrorEvent { event: event::ATTACH_TERMINAL.to_string(), terminal_id: Some(id), error };
                ctx.conn.emit::<event::RequestError>(&ctx.socket, &ctx.state, payload);
            }
            Err(e) => {
                tracing::warn!(peer = %node, terminal = %id, error = %e, "could not re-attach a relayed terminal")
            }
        }
    }
}

/// `node` is gone: its terminals end for this socket with `node_lost`.
async fn lost(ctx: &Ctx, node: &str) {
    tracing::warn!(peer = %node, "node lost: its lease expired and it does not answer");
    let sink = ctx.sink();
    for (id, _) in ctx.conn.relays.on_node(node) {
        ctx.conn.relays.forget(&id);
        sink.exit(&Exit { terminal_id: id, exit_code: None, reason: ExitReason::NodeLost });
    }
    ctx.conn.relays.remove_link(node);
}

/// `attach-terminal` for another node's terminal: decided and audited here, carried out by the owner. The
/// caller sends the answer, then calls [`Relayed::go_live`].
pub(super) async fn attach(
    state: &AppState,
    conn: &Arc<Conn>,
    socket: &Arc<Socket>,
    req: AttachTerminal,
) -> Result<(Arc<Relayed>, TerminalAttached), ServiceError> {
    let cluster = state.cluster().cloned().ok_or_else(|| ServiceError::unknown_terminal(&req.terminal_id))?;
    let Some((owner, remote)) = cluster.find_remote(&req.terminal_id.0).await? else {
        return Err(ServiceError::unknown_terminal(&req.terminal_id));
    };
    state.decide_remote(&conn.caller, &owner.node, &remote, "terminal.attach", Need::See, true)?;
    let ctx = Ctx { state: state.clone(), conn: conn.clone(), socket: socket.clone() };
    let link = link(&ctx, &owner).await?;
    let relayed = Relayed::new(&owner.node, remote, req.flow_control, req.since.unwrap_or(0));
    conn.relays.file(req.terminal_id.clone(), relayed.clone());
    let asked = AttachTerminal { flow_control: true, ..req.clone() };
    match link.request::<event::AttachTerminal>(&asked).await {
        Ok(mut attached) => {
            relayed.next.store(attached.offset, Ordering::SeqCst);
            attached.flow_control = req.flow_control;
            Ok((relayed, attached))
        }
        Err(e) => {
            conn.relays.forget(&req.terminal_id);
            Err(e)
        }
    }
}

/// Where `start-terminal` for `container_ref` goes in cluster mode: `None` for this node (its own hosts, or
/// nothing that matches elsewhere: the local lookup then answers), else the live node serving the container's
/// host and the container as it lists it. A bare id or name must be unique in the cluster
/// (`ambiguous_container`). Containers the caller may not see do not count. Another node's sandbox opens on
/// the node that made it, whoever serves its host.
pub(super) async fn placed(
    state: &AppState,
    caller: &crate::state::Caller,
    container_ref: &str,
) -> Result<Option<(NodeRecord, app::protocol::ContainerSummary)>, ServiceError> {
    let Some(cluster) = state.cluster().cloned() else { return Ok(None) };
    let named_host = container_ref.split_once('/').map(|(h, r)| (h.to_string(), r.to_string()));
    if named_host.as_ref().is_none_or(|(h, _)| cluster.hosts().contains(h))
        && let Some(t) = state.target_here(container_ref).await
        && let Some(maker) = state.sandbox_maker(&t.id)
    {
        // Hidden from the caller: the local lookup answers container_not_found.
        if !state.may_see_container(caller, &t.id, &t.name, &t.labels) {
            return Ok(None);
        }
        let summary = app::protocol::ContainerSummary {
            id: if t.id.contains('/') || t.host.is_empty() { t.id.clone() } else { format!("{}/{}", t.host, t.id) },
            host: t.host.clone(),
            name: t.name.clone(),
            image: String::new(),
            state: t.state.clone(),
            status: String::new(),
            created: 0,
            labels: t.labels.clone(),
            sandbox: None,
            rights: Default::default(),
        };
        return match cluster.peers().await?.into_iter().find(|p| p.node == maker) {
            Some(node) => Ok(Some((node, summary))),
            None => Err(ServiceError::new(
                ErrorCode::ClusterUnavailable,
                format!("sandbox {} is node {maker}'s, which does not answer; retry in a moment", t.name),
            )),
        };
    }
    if let Some((host, _)) = &named_host
        && cluster.hosts().contains(host)
    {
        return Ok(None);
    }
    let bare = named_host.as_ref().map_or(container_ref, |(_, r)| r.as_str());
    let elsewhere = state.containers_elsewhere(&cluster).await;
    let mut found: Vec<_> = elsewhere
        .into_iter()
        .filter(|(_, c)| named_host.as_ref().is_none_or(|(h, _)| &c.host == h))
        .filter(|(_, c)| {
            let id = c.id.split_once('/').map_or(c.id.as_str(), |(_, id)| id);
            crate::docker::names(bare, &c.name, id)
        })
        .filter(|(_, c)| state.may_see_container(caller, &c.id, &c.name, &c.labels))
        .collect();
    if found.is_empty() {
        return Ok(None);
    }
    // Found elsewhere: a bare reference must not name one of this node's containers too.
    let here = named_host.is_none() && state.resolves_here(caller, container_ref).await;
    match (here, found.len()) {
        (false, 1) => {
            let (lister, c) = found.remove(0);
            // Another node's sandbox on that host: opened by the node that made it.
            let maker = state.sandbox_maker(&c.id).filter(|m| m != &lister.node);
            let node = match maker {
                Some(m) => cluster.peers().await?.into_iter().find(|p| p.node == m).ok_or_else(|| {
                    ServiceError::new(
                        ErrorCode::ClusterUnavailable,
                        format!("sandbox {} is node {m}'s, which does not answer; retry in a moment", c.name),
                    )
                })?,
                None => lister,
            };
            Ok(Some((node, c)))
        }
        (_, n) => {
            let hosts: Vec<&str> = found.iter().map(|(_, c)| c.host.as_str()).collect();
            Err(ServiceError::new(
                ErrorCode::AmbiguousContainer,
                format!(
                    "{container_ref:?} names containers on {} Docker hosts of the cluster ({}): name one as HOST/{container_ref}",
                    n + usize::from(here),
                    hosts.join(", ")
                ),
            ))
        }
    }
}

/// `start-terminal` for a container on a Docker host another node serves: opened there through the relay, the
/// relay's socket its viewer from the first byte. The owner makes the start decision (the same policy file)
/// without auditing; this node audits, naming both nodes. The caller sends the answer, then calls
/// [`Relayed::go_live`].
pub(super) async fn start(
    state: &AppState,
    conn: &Arc<Conn>,
    socket: &Arc<Socket>,
    owner: NodeRecord,
    container: app::protocol::ContainerSummary,
    req: app::protocol::StartTerminal,
) -> Result<(Arc<Relayed>, app::protocol::TerminalStarted), ServiceError> {
    let ctx = Ctx { state: state.clone(), conn: conn.clone(), socket: socket.clone() };
    let record = |outcome, id: Option<&TerminalId>, command: Option<Vec<String>>| crate::audit::Record {
        terminal_id: id.map(|t| t.0.clone()),
        container_id: Some(container.id.clone()),
        container: Some(container.name.clone()),
        command,
        node: state.node_id(),
        owner_node: Some(owner.node.clone()),
        ..conn.caller.record("terminal.open", outcome)
    };
    let asked = app::protocol::StartTerminal { container_id: container.id.clone(), flow_control: true, ..req.clone() };
    conn.relays.starting.fetch_add(1, Ordering::SeqCst);
    let started = match link(&ctx, &owner).await {
        Ok(link) => link.request::<event::StartTerminal>(&asked).await,
        Err(e) => Err(e),
    };
    let result = match started {
        Ok(mut started) => {
            let info = app::protocol::TerminalInfo {
                terminal_id: started.terminal_id.clone(),
                owner: String::new(),
                user: conn.caller.principal.subject.clone(),
                container_id: container.id.clone(),
                container_name: container.name.clone(),
                host: container.host.clone(),
                node: owner.node.clone(),
                command: started.command.clone(),
                cols: started.cols,
                rows: started.rows,
                started_at_ms: 0,
                bytes_out: 0,
                state: app::protocol::TerminalState::Running,
                attached: 1,
                grace_left_ms: None,
                exit: None,
            };
            let remote = RemoteTerminal { info, labels: container.labels.clone() };
            let relayed = Relayed::new(&owner.node, remote, req.flow_control, 0);
            conn.relays.file(started.terminal_id.clone(), relayed.clone());
            state.audit(record("allowed", Some(&started.terminal_id), Some(started.command.clone())));
            // As this node names it: `HOST/ID`.
            started.container_id = container.id.clone();
            started.flow_control = req.flow_control;
            Ok((relayed, started))
        }
        Err(e) => {
            let r = crate::audit::Record {
                code: Some(e.code.to_string()),
                reason: Some(crate::refusals::clip(&e.message)),
                ..record("denied", None, req.command.clone())
            };
            state.audit_refusal(&e, r);
            Err(e.audited())
        }
    };
    conn.relays.starting.fetch_sub(1, Ordering::SeqCst);
    conn.relays.filed.notify_waiters();
    result
}

/// The relay and the terminal for an event on `id`, decided here for `action`.
fn route(state: &AppState, conn: &Conn, id: &TerminalId, action: &'static str) -> Result<Arc<Link>, ServiceError> {
    let t = conn.relays.get(id).ok_or_else(|| ServiceError::unknown_terminal(id))?;
    state.decide_remote(&conn.caller, &t.node, &t.remote, action, Need::Write, false)?;
    conn.relays.link_now(&t.node).ok_or_else(|| unreachable_owner(&t.node))
}

/// `input` for a relayed terminal (`data` already decoded); `written` is told once the owner wrote it.
pub(super) fn input(
    state: &AppState,
    conn: &Conn,
    req: &Input,
    data: Bytes,
    written: Option<crate::session::Written>,
) -> Result<(), ServiceError> {
    let link = route(state, conn, &req.terminal_id, "terminal.input")?;
    let mut payload = json!({ "terminalId": req.terminal_id, "data": { "_placeholder": true, "num": 0 } });
    if req.eof {
        payload["eof"] = true.into();
    }
    if let Some(offset) = req.offset {
        payload["offset"] = offset.into();
    }
    let answer = link.send(event::INPUT, payload, vec![data], written.is_some())?;
    if let (Some(answer), Some(written)) = (answer, written) {
        tokio::spawn(async move {
            if let Ok(Ok(v)) = answer.await
                && parse_reply::<TerminalAck>(v).is_ok()
            {
                let _ = written.send(());
            }
        });
    }
    Ok(())
}

/// `resize` for a relayed terminal.
pub(super) fn resize(state: &AppState, conn: &Conn, req: Resize) -> Result<(), ServiceError> {
    let link = route(state, conn, &req.terminal_id, "terminal.resize")?;
    let v = serde_json::to_value(&req).map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
    link.send(event::RESIZE, v, Vec::new(), false).map(|_| ())
}

/// `output-ack` for a relayed terminal: passed on when the client keeps flow control itself (else this node
/// acknowledges as the socket takes the output, and the client's acks change nothing).
pub(super) fn ack(_state: &AppState, conn: &Conn, req: OutputAck) -> Result<(), ServiceError> {
    let t = conn.relays.get(&req.terminal_id).ok_or_else(|| ServiceError::unknown_terminal(&req.terminal_id))?;
    if !t.client_flow {
        return Err(ServiceError::invalid(format!(
            "terminal {} was not started or attached with flowControl",
            req.terminal_id
        )));
    }
    let link = conn.relays.link_now(&t.node).ok_or_else(|| unreachable_owner(&t.node))?;
    let v = serde_json::to_value(&req).map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
    link.send(event::OUTPUT_ACK, v, Vec::new(), false).map(|_| ())
}

/// `close-terminal` for a relayed terminal: decided and audited here, ended by the owner.
pub(super) async fn close(state: &AppState, conn: &Conn, req: CloseTerminal) -> Result<TerminalAck, ServiceError> {
    let t = conn.relays.get(&req.terminal_id).ok_or_else(|| ServiceError::unknown_terminal(&req.terminal_id))?;
    state.decide_remote(&conn.caller, &t.node, &t.remote, "terminal.close", Need::Write, true)?;
    let link = conn.relays.link_now(&t.node).ok_or_else(|| unreachable_owner(&t.node))?;
    link.request::<event::CloseTerminal>(&req).await
}
