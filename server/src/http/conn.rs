//! The connection edge: what every TCP connection is held to before and while HTTP runs on it.
//!
//! - **Caps.** [`Connections`] counts connections per client address and in total. A connection past a cap is
//!   an *overflow* connection (at most [`OVERFLOW_SLOTS`] at once, more are closed at once): it is served one
//!   request, which must arrive within [`OVERFLOW_HEADER_TIMEOUT`], and only `/healthz` and requests of
//!   existing Socket.IO sessions are answered; anything else gets 503 `too_many_connections`. That is the
//!   headroom that keeps health checks and signed-in clients working while an abuser holds the caps.
//! - **Timeouts.** [`Tracked`] wraps the socket: a connection that has not sent a whole request within the header
//!   timeout is closed, so is a keep-alive connection with no request in flight for the idle timeout (or one
//!   that started a request and did not finish its header within the header timeout). An upgraded WebSocket is
//!   closed when the client sent nothing for the idle timeout (Engine.IO pings every 25 s keep live ones busy).
//! - **Before sign-in.** A Socket.IO handshake takes a [`PendingSlot`] (bounded per address) that lives in the
//!   socket's request parts until the socket signs in or goes away. A WebSocket that has not signed in may send
//!   at most [`PREAUTH_MAX_BYTES`], and is closed after the sign-in timeout; on plain connections the server
//!   first sends a Socket.IO `connect_error` (`sign_in_timeout: ...`) so the client learns why.
//! - **Kill switch.** A connection can be closed from outside ([`ConnShared::kill`]), e.g. when its socket
//!   stopped reading and its reply queue overflowed (socketioxide cannot disconnect a socket whose send queue is
//!   full).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use app::protocol::ErrorCode;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use futures_util::task::AtomicWaker;

use super::tracked::InFlight;
pub use super::tracked::{Tracked, sign_in_farewell};
use crate::error::ServiceError;

/// Connections past a cap served at once (each one request, then closed).
pub const OVERFLOW_SLOTS: usize = 32;
/// How long an overflow connection has to send its request.
pub const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Open files kept free of connections for Docker, the audit log and overflow connections: the total cap is at
/// most the open-files limit minus this.
pub const FD_RESERVE: usize = 64;
/// Bytes a WebSocket may send before its Socket.IO connection signs in (a CONNECT with a JWT is a few KiB).
pub const PREAUTH_MAX_BYTES: usize = 64 * 1024;
/// The shortest silence after which an upgraded WebSocket is closed, whatever `--idle-timeout-secs` says: longer
/// than the Engine.IO ping interval plus timeout, so a live client (which answers every ping) is never cut.
pub const WEBSOCKET_MIN_IDLE: Duration =
    Duration::from_secs(crate::PING_INTERVAL.as_secs() + crate::PING_TIMEOUT.as_secs() + 5);

/// The edge's settings (flags, see `Config`).
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub sign_in_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
    pub max_unauthenticated_per_address: usize,
    /// Peers whose connections are counted by the forwarded address of their first request.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl EdgeLimits {
    /// The caps as they apply with `open_files` file descriptors: the total leaves [`FD_RESERVE`] free, and one
    /// address gets at most a quarter of the total.
    pub fn fitted(mut self, open_files: u64) -> EdgeLimits {
        let room = usize::try_from(open_files).unwrap_or(usize::MAX).saturating_sub(FD_RESERVE).max(8);
        self.max_connections = self.max_connections.min(room);
        self.max_per_address = self.max_per_address.min((self.max_connections / 4).max(1));
        self
    }
}

/// Connection counts and the registry of signed-in Socket.IO sessions.
#[derive(Debug)]
pub struct Connections {
    pub(super) limits: EdgeLimits,
    pub(super) total: AtomicUsize,
    pub(super) overflow: AtomicUsize,
    pub(super) per_address: Mutex<HashMap<IpAddr, usize>>,
    pub(super) pending: Mutex<HashMap<IpAddr, usize>>,
    /// Signed-in Socket.IO sessions (by sid), with the WebSocket connection carrying each, if known.
    pub(super) sockets: Mutex<HashMap<String, Weak<ConnShared>>>,
    /// WebSocket upgrades of sessions not signed in yet, to hand to [`Connections::signed_in`].
    pub(super) upgrades: Mutex<HashMap<String, Weak<ConnShared>>>,
    /// Overflow connections, oldest first: when the slots are full, the oldest that has not sent a request yet
    /// makes room for the newcomer (a health check sends its request at once; a slowloris never does).
    pub(super) overflowing: Mutex<std::collections::VecDeque<Weak<ConnShared>>>,
    /// Polling sessions that have not signed in yet: when their handshake was answered.
    pub(super) polls: Mutex<HashMap<String, Instant>>,
}

/// Why a connection or handshake was refused.
fn too_many(what: &str) -> ServiceError {
    ServiceError::new(ErrorCode::TooManyConnections, format!("{what}; try again later"))
}

impl Connections {
    pub fn new(limits: EdgeLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            total: AtomicUsize::new(0),
            overflow: AtomicUsize::new(0),
            per_address: Mutex::default(),
            pending: Mutex::default(),
            sockets: Mutex::default(),
            upgrades: Mutex::default(),
            overflowing: Mutex::default(),
            polls: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &EdgeLimits {
        &self.limits
    }

    pub(super) fn trusted(&self, ip: IpAddr) -> bool {
        self.limits.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Counts a new connection from `peer`; `None` if even the overflow slots are taken.
    pub(super) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Arc<ConnShared>> {
        let ip = (!self.trusted(peer.ip())).then_some(peer.ip());
        let total = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        let mut within = total <= self.limits.max_connections;
        if let Some(ip) = ip {
            let mut per = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = per.entry(ip).or_default();
            *n += 1;
            within &= *n <= self.limits.max_per_address;
        }
        let overflow = !within;
        let shared = Arc::new(ConnShared::new(self.clone(), peer, ip, overflow));
        if overflow {
            let mut queue = self.overflowing.lock().unwrap_or_else(|e| e.into_inner());
            queue.retain(|c| c.upgrade().is_some_and(|c| !c.killed.load(Ordering::SeqCst)));
            if self.overflow.fetch_add(1, Ordering::SeqCst) >= OVERFLOW_SLOTS {
                let idle = queue.iter().filter_map(Weak::upgrade).find(|c| c.requests.load(Ordering::SeqCst) == 0);
                match idle {
                    // Its slot is given back when its task ends, a moment later.
                    Some(oldest) => oldest.kill(),
                    // Dropping `shared` gives back what was counted.
                    None => return None,
                }
            }
            queue.push_back(Arc::downgrade(&shared));
        }
        Some(shared)
    }

    pub(super) fn release(&self, shared: &ConnShared) {
        if shared.released.swap(true, Ordering::SeqCst) {
            return;
        }
        self.total.fetch_sub(1, Ordering::SeqCst);
        if shared.overflow {
            self.overflow.fetch_sub(1, Ordering::SeqCst);
        }
        let counted = shared.counted_ip.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ip) = counted {
            decrement(&self.per_address, ip);
        }
    }

    /// Takes a sign-in slot for a new Socket.IO handshake from `ip`.
    pub fn handshake(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Arc<PendingSlot>, ServiceError> {
        if let Some(ip) = ip {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let n = pending.entry(ip).or_default();
            if *n >= self.limits.max_unauthenticated_per_address {
                return Err(too_many(&format!(
                    "this address already has {} connections that have not signed in",
                    self.limits.max_unauthenticated_per_address
                )));
            }
            *n += 1;
        }
        Ok(Arc::new(PendingSlot { conns: self.clone(), ip, released: AtomicBool::new(false) }))
    }

    /// Whether `sid` is a signed-in Socket.IO session.
    pub fn is_signed_in(&self, sid: &str) -> bool {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).contains_key(sid)
    }

    /// A polling handshake opened the session `sid`: its sign-in clock starts.
    pub fn polling_opened(&self, sid: &str) {
        let now = Instant::now();
        let forget_after = self.limits.sign_in_timeout + Duration::from_secs(10);
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        // Sessions that never signed in are long gone by then; this keeps the table as small as the slots.
        polls.retain(|_, opened| now.duration_since(*opened) < forget_after);
        polls.insert(sid.to_string(), now);
    }

    /// When the polling session `sid` must have signed in by; `None` once it has (or if it is not one).
    pub fn polling_deadline(&self, sid: &str) -> Option<Instant> {
        let polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        polls.get(sid).map(|opened| *opened + self.limits.sign_in_timeout)
    }

    /// Records that the session `sid` signed in; `conn` is the connection its handshake came on.
    pub fn signed_in(&self, sid: &str, conn: Option<&Arc<ConnShared>>) {
        self.polls.lock().unwrap_or_else(|e| e.into_inner()).remove(sid);
        let upgraded = self.upgrades.lock().unwrap_or_else(|e| e.into_inner()).remove(sid);
        let conn = upgraded.or_else(|| conn.map(Arc::downgrade)).unwrap_or_default();
        if let Some(c) = conn.upgrade() {
            c.authenticated.store(true, Ordering::SeqCst);
        }
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).insert(sid.to_string(), conn);
    }

    /// Forgets a session that disconnected.
    pub fn signed_out(&self, sid: &str) {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).remove(sid);
        self.upgrades.lock().unwrap_or_else(|e| e.into_inner()).remove(sid);
    }

    /// A WebSocket upgrade of the session `sid` arrived on `conn`.
    pub fn upgrade(&self, sid: &str, conn: &Arc<ConnShared>) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sockets.get_mut(sid) {
            *entry = Arc::downgrade(conn);
            conn.authenticated.store(true, Ordering::SeqCst);
        } else {
            drop(sockets);
            conn.watch_sign_in();
            let mut upgrades = self.upgrades.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded by the open connections: stale entries of gone connections are dropped here.
            upgrades.retain(|_, c| c.strong_count() > 0);
            upgrades.insert(sid.to_string(), Arc::downgrade(conn));
        }
    }

    /// Closes the connection carrying session `sid`, if it is known and still open. True if one was closed.
    pub fn kill_socket(&self, sid: &str) -> bool {
        let conn = self.sockets.lock().unwrap_or_else(|e| e.into_inner()).get(sid).and_then(Weak::upgrade);
        conn.map(|c| c.kill()).is_some()
    }

    /// Connections open now (for tests and the log).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

fn decrement(map: &Mutex<HashMap<IpAddr, usize>>, ip: IpAddr) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = map.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

/// A sign-in slot: held by a Socket.IO session (in its handshake's request parts) until it signs in or ends.
#[derive(Debug)]
pub struct PendingSlot {
    conns: Arc<Connections>,
    ip: Option<IpAddr>,
    released: AtomicBool,
}

impl PendingSlot {
    /// The session signed in: the slot is free for another handshake.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst)
            && let Some(ip) = self.ip
        {
            decrement(&self.conns.pending, ip);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the stream, the service wrapper, the edge middleware and the socket layer share about one connection.
/// In every request's extensions.
#[derive(Debug)]
pub struct ConnShared {
    pub(super) conns: Arc<Connections>,
    pub peer: SocketAddr,
    /// The address this connection is counted under (none yet for a trusted proxy's).
    pub(super) counted_ip: Mutex<Option<IpAddr>>,
    /// Past a cap: one request, `/healthz` or an existing session's, then closed.
    pub overflow: bool,
    pub(super) accepted: Instant,
    pub(super) in_flight: AtomicUsize,
    pub(super) requests: AtomicU64,
    /// Milliseconds after `accepted` when the last request ended.
    pub(super) idle_since_ms: AtomicU64,
    pub(super) upgraded: AtomicBool,
    /// Set when this connection carries a Socket.IO WebSocket that has not signed in: since when.
    pub(super) sign_in: OnceLock<Instant>,
    /// The sign-in slot of the WebSocket handshake made on this connection: given back when it closes, even if
    /// socketioxide keeps the session's parts a while longer.
    pub(super) slot: Mutex<Option<Arc<PendingSlot>>>,
    pub(super) authenticated: AtomicBool,
    pub(super) killed: AtomicBool,
    pub(super) waker: AtomicWaker,
    /// The counts were given back (when the socket closed; socketioxide may hold this a while longer).
    pub(super) released: AtomicBool,
}

impl ConnShared {
    pub(super) fn new(
        conns: Arc<Connections>,
        peer: SocketAddr,
        counted_ip: Option<IpAddr>,
        overflow: bool,
    ) -> ConnShared {
        ConnShared {
            conns,
            peer,
            counted_ip: Mutex::new(counted_ip),
            overflow,
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            sign_in: OnceLock::new(),
            slot: Mutex::new(None),
            authenticated: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            released: AtomicBool::new(false),
        }
    }

    /// For a trusted proxy's connection: counts it under the client address its first request names.
    /// Refused when that address is at its cap.
    pub fn attribute(&self, ip: Option<IpAddr>) -> Result<(), ServiceError> {
        let Some(ip) = ip else { return Ok(()) };
        if !self.conns.trusted(self.peer.ip()) || self.requests.load(Ordering::SeqCst) > 1 {
            return Ok(());
        }
        let mut counted = self.counted_ip.lock().unwrap_or_else(|e| e.into_inner());
        if counted.is_some() {
            return Ok(());
        }
        let mut per = self.conns.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(ip).or_default();
        if *n >= self.conns.limits.max_per_address {
            return Err(too_many(&format!(
                "this address already has {} connections open",
                self.conns.limits.max_per_address
            )));
        }
        *n += 1;
        *counted = Some(ip);
        Ok(())
    }

    /// This connection carries a Socket.IO WebSocket that has not signed in yet.
    pub fn watch_sign_in(&self) {
        let _ = self.sign_in.set(Instant::now());
    }

    /// The WebSocket handshake on this connection took `slot`.
    pub fn hold_slot(&self, slot: Arc<PendingSlot>) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
    }

    /// Its Socket.IO session signed in.
    pub fn mark_signed_in(&self) {
        self.authenticated.store(true, Ordering::SeqCst);
    }

    pub(super) fn awaiting_sign_in(&self) -> Option<Instant> {
        if self.authenticated.load(Ordering::SeqCst) {
            return None;
        }
        self.sign_in.get().copied()
    }

    /// Closes the connection as soon as its task runs.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    pub(super) fn idle_since(&self) -> Instant {
        self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst))
    }
}

impl Drop for ConnShared {
    fn drop(&mut self) {
        self.conns.release(self);
    }
}

/// The service of one connection: counts requests in flight, notes upgrades, and on overflow connections
/// answers only what the headroom is for.
#[derive(Debug, Clone)]
pub struct TrackedService<S> {
    inner: S,
    shared: Arc<ConnShared>,
}

/// Whether an overflow connection's request is one the headroom is kept for.
fn headroom_request<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    path == app::protocol::rest::HEALTHZ
        || (path.starts_with("/socket.io")
            && req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid="))))
}

impl<S, B> tower::Service<Request<B>> for TrackedService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let flight = InFlight::new(&self.shared);
        let overflow = self.shared.overflow;
        if overflow && !headroom_request(&req) {
            let e = too_many("the server is at its connection limit for this address or in total");
            return Box::pin(async move {
                drop(flight);
                Ok(close_after(axum::response::IntoResponse::into_response(e)))
            });
        }
        req.extensions_mut().insert(self.shared.clone());
        let fut = self.inner.call(req);
        let shared = self.shared.clone();
        Box::pin(async move {
            let res = fut.await;
            if let Ok(r) = &res
                && r.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                shared.upgraded.store(true, Ordering::SeqCst);
            }
            drop(flight);
            match res {
                Ok(r) if overflow => Ok(close_after(r)),
                other => other,
            }
        })
    }
}

fn close_after(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// The acceptor that puts every connection under the edge (innermost: TLS, if any, runs on top of it).
#[derive(Debug, Clone)]
pub struct EdgeAcceptor {
    conns: Arc<Connections>,
    tls: bool,
}

impl EdgeAcceptor {
    pub fn new(conns: Arc<Connections>, tls: bool) -> EdgeAcceptor {
        EdgeAcceptor { conns, tls }
    }
}

/// The answer to a connection refused before anything was read from it.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
content-length: 85\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections; try again\"}}";

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for EdgeAcceptor {
    type Stream = Tracked<tokio::net::TcpStream>;
    type Service = TrackedService<S>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let (conns, tls) = (self.conns.clone(), self.tls);
        Box::pin(async move {
            // A keystroke's echo is a small packet that must not wait for Nagle's algorithm.
            stream.set_nodelay(true)?;
            let _ = rustix::net::sockopt::set_tcp_quickack(&stream, true);
            let peer = stream.peer_addr()?;
            let Some(shared) = conns.admit(peer) else {
                if !tls {
                    let _ = stream.try_write(REFUSED);
                }
                return Err(io::Error::other("connection caps and overflow slots are full"));
            };
            let service = TrackedService { inner: service, shared: shared.clone() };
            Ok((Tracked::new(stream, shared, tls), service))
        })
    }
}

/// Raises the soft open-files limit to the hard one; returns (soft, hard) as they are afterwards.
pub fn raise_open_files_limit() -> (u64, u64) {
    let before = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let soft = match rlimit::increase_nofile_limit(before.1) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            before.0
        }
    };
    tracing::info!(soft_before = before.0, soft, hard = before.1, "open-files limit");
    (soft, before.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn limits() -> EdgeLimits {
        EdgeLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            sign_in_timeout: Duration::from_secs(5),
            max_connections: 4096,
            max_per_address: 64,
            max_unauthenticated_per_address: 2,
            trusted_proxies: vec!["10.0.0.1/32".parse().unwrap()],
        }
    }

    #[test]
    pub(super) fn caps_fit_the_open_files_limit() {
        let l = limits().fitted(128);
        assert_eq!((l.max_connections, l.max_per_address), (64, 16));
        let l = limits().fitted(1 << 20);
        assert_eq!((l.max_connections, l.max_per_address), (4096, 64));
    }

    #[test]
    pub(super) fn connections_past_a_cap_overflow_and_are_given_back() {
        let mut l = limits();
        l.max_per_address = 2;
        let conns = Connections::new(l);
        let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let a = conns.admit(peer).unwrap();
        let b = conns.admit(peer).unwrap();
        let c = conns.admit(peer).unwrap();
        assert!(!a.overflow && !b.overflow && c.overflow);
        // Another address is not affected; a trusted proxy is not counted per address.
        assert!(!conns.admit("192.0.2.2:1".parse().unwrap()).unwrap().overflow);
        let proxied: Vec<_> = (0..5).map(|_| conns.admit("10.0.0.1:1".parse().unwrap()).unwrap()).collect();
        assert!(proxied.iter().all(|p| !p.overflow));
        drop((a, c, proxied));
        assert!(!conns.admit(peer).unwrap().overflow);
        assert_eq!(conns.open(), 1);
        // With b, the address's two regular slots are taken; the rest overflow. Past the overflow slots, the
        // oldest overflow connections that have not sent a request make room.
        let second = conns.admit(peer).unwrap();
        assert!(!second.overflow);
        let overflow: Vec<_> = (0..OVERFLOW_SLOTS + 5).filter_map(|_| conns.admit(peer)).collect();
        assert_eq!(overflow.len(), OVERFLOW_SLOTS + 5);
        assert!(overflow.iter().all(|c| c.overflow));
        let evicted = overflow.iter().filter(|c| c.killed.load(Ordering::SeqCst)).count();
        assert_eq!(evicted, 5);
        assert!(overflow[..5].iter().all(|c| c.killed.load(Ordering::SeqCst)), "the oldest go first");
        drop(second);
        drop(overflow);
        // Overflow connections that are all busy with a request are not evicted: the newcomer is refused.
        let busy: Vec<_> = (0..OVERFLOW_SLOTS + 1).filter_map(|_| conns.admit(peer)).collect();
        let flights: Vec<_> = busy.iter().map(InFlight::new).collect();
        assert!(conns.admit(peer).is_none());
        drop((flights, busy, b));
        assert_eq!(conns.open(), 0);
    }

    #[test]
    pub(super) fn sign_in_slots_are_bounded_per_address_and_given_back() {
        let conns = Connections::new(limits());
        let ip = Some("192.0.2.1".parse().unwrap());
        let a = conns.handshake(ip).unwrap();
        let _b = conns.handshake(ip).unwrap();
        assert_eq!(conns.handshake(ip).unwrap_err().code, ErrorCode::TooManyConnections);
        a.release();
        let _c = conns.handshake(ip).unwrap();
        drop(a);
        assert!(conns.handshake(ip).is_err(), "a released slot is not given back twice");
    }
}
