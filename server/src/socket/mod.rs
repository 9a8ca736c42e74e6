//! Socket.IO transport: translates protocol events into service calls and session output into events.
//!
//! Handlers that touch a terminal's byte stream (`input`, `resize`, `output-ack`) are plain closures that do
//! their work synchronously when socketioxide dispatches the packet, so input keeps the order it arrived in;
//! only `start-terminal` and `close-terminal`, which must wait for Docker, run as spawned futures.
//!
//! Every handler takes its payload as `TryData`, so malformed payloads get an `invalid_payload` answer
//! instead of being dropped silently.
//!
//! Sockets are authenticated once, in a connect middleware (refusals are `connect_error`s reading
//! `<code>: <message>`). Every event is then rate-limited and re-checked against the credential's expiry and
//! revocation, and authorized by the service layer; a socket whose credential lapses is told (`auth-error`)
//! and disconnected.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use app::protocol::{
    AttachTerminal, ClientAuth, CloseTerminal, ErrorCode, ErrorEvent, Exit, ExitReason, Hello, Input,
    MAX_CLIENT_ID_LEN, MIN_PROTOCOL_VERSION, Output, OutputAck, PROTOCOL_VERSION, Reply, Resize, StartTerminal,
    TerminalAck, TerminalBytes, TerminalId, event,
};
use bytes::Bytes;
use serde::Serialize;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError};
use tracing::Instrument;

use crate::error::ServiceError;
use crate::http::RequestContext;
use crate::session::{AttachOptions, Offer, TerminalSink, ViewerId};
use crate::state::{AppState, Caller};

/// Most attempts to put an ack or control event into a congested socket's send queue, [`SEND_RETRY`] apart.
const SEND_ATTEMPTS: usize = 300;
const SEND_RETRY: Duration = Duration::from_millis(10);
/// Most `request-error` events per socket waiting for room in its send queue; more are dropped (logged).
const MAX_RETRYING_EVENTS: usize = 16;

/// Registers the namespace handlers on `io`.
pub fn register(io: &socketioxide::SocketIo, state: AppState) {
    use socketioxide::handler::ConnectHandler;
    // The event handlers are registered in the middleware, before the server sends the connect packet: a client
    // may emit the moment it is connected (socket.io-client flushes its buffer then), and an event that arrived
    // before its handler existed would be dropped.
    let authenticate = {
        let state = state.clone();
        move |socket: SocketRef, TryData(auth): TryData<ClientAuth>| {
            let state = state.clone();
            async move {
                let auth = auth.unwrap_or_default();
                let caller = authenticate(&socket, auth.token.clone(), &state)?;
                on_connect(socket, auth, state, caller);
                Ok::<(), ServiceError>(())
            }
        }
    };
    let handler = move |socket: SocketRef| -> Ready<()> {
        if let Some(connected) = socket.extensions.get::<Connected>() {
            let Connected { conn, hello, span } = connected;
            tokio::spawn(watch_credential(socket.clone(), state.clone(), conn).instrument(span));
            emit_reliably(socket, event::HELLO, hello, None);
        }
        ready(())
    };
    io.ns(app::protocol::NAMESPACE, handler.with(authenticate));
}

/// What the connect middleware leaves for the connect handler (in the socket's extensions).
#[derive(Debug, Clone)]
struct Connected {
    conn: Arc<Conn>,
    hello: Hello,
    span: tracing::Span,
}

/// Connect middleware: the credential from `auth.token`, else `Authorization: Bearer` or the session cookie of
/// the handshake request. The caller is kept in the socket's extensions.
fn authenticate(socket: &SocketRef, token: Option<String>, state: &AppState) -> Result<Caller, ServiceError> {
    let parts = socket.req_parts();
    let token = token.or_else(|| crate::auth::credential(&parts.headers));
    let ip = parts.extensions.get::<RequestContext>().and_then(|c| c.ip);
    let caller = state.authenticate(token.as_deref(), ip)?;
    state.audit(crate::audit::Record {
        reason: Some(format!("socket {}", socket.id)),
        ..caller.record("connect", "allowed")
    });
    socket.extensions.insert(caller.clone());
    Ok(caller)
}

/// How to answer a request: whether the client asked for an ack, and a way to send one that can be retried
/// (socketioxide's `AckSender` is used up by a send that the socket's full queue refused).
struct Ack {
    socket: Arc<Socket>,
    id: Option<i64>,
}

impl FromMessageParts<LocalAdapter> for Ack {
    type Error = std::convert::Infallible;
    fn from_message_parts(socket: &Arc<Socket>, _: &mut Value, ack_id: &Option<i64>) -> Result<Self, Self::Error> {
        Ok(Ack { socket: socket.clone(), id: *ack_id })
    }
}

impl Ack {
    fn wanted(&self) -> bool {
        self.id.is_some()
    }

    fn try_send<T: Serialize>(&self, reply: &T) -> Result<(), SendError> {
        let mut unused = Value::Bytes(Bytes::new());
        let Ok(sender) = AckSender::from_message_parts(&self.socket, &mut unused, &self.id);
        sender.send(reply)
    }

    /// Sends the ack, retrying while the socket's send queue is full (it drains at network speed). True when
    /// it was sent (or none was asked for).
    async fn send<T: Serialize>(self, reply: &T) -> bool {
        if !self.wanted() {
            return true;
        }
        match retry_while_full(|| self.try_send(reply)).await {
            Ok(()) => true,
            Err(SendError::Socket(SocketError::Closed)) => {
                tracing::debug!("socket closed before its ack");
                false
            }
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                tracing::warn!("gave up sending an ack to a congested socket");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not send ack");
                false
            }
        }
    }

    /// For synchronous handlers: sends now if it fits, else from a task.
    fn send_soon<T: Serialize + Send + Sync + 'static>(self, reply: T) {
        if !self.wanted() {
            return;
        }
        if let Err(SendError::Socket(SocketError::InternalChannelFull)) = self.try_send(&reply) {
            tokio::spawn(async move {
                self.send(&reply).await;
            });
        }
    }
}

/// Repeats `send` while the socket's send queue is full (it drains at network speed), at most
/// [`SEND_ATTEMPTS`] times [`SEND_RETRY`] apart; returns the last outcome.
async fn retry_while_full(mut send: impl FnMut() -> Result<(), SendError>) -> Result<(), SendError> {
    let mut outcome = send();
    for _ in 1..SEND_ATTEMPTS {
        match outcome {
            Err(SendError::Socket(SocketError::InternalChannelFull)) => tokio::time::sleep(SEND_RETRY).await,
            _ => break,
        }
        outcome = send();
    }
    outcome
}

/// Per-socket state shared by its handlers and sinks.
#[derive(Debug)]
struct Conn {
    /// Who this socket is (authenticated at connect).
    caller: Caller,
    /// Events per second this socket may send ([`crate::Config::max_events_per_sec`], bursts of twice that).
    rate: governor::DefaultDirectRateLimiter,
    /// Cancelled when the socket disconnects: ends its viewers everywhere.
    gone: tokio_util::sync::CancellationToken,
    /// Acks being sent. While non-zero, output is held back so the socket's bounded send queue drains and
    /// the answer fits.
    acks_pending: AtomicUsize,
    /// `request-error` events waiting for room in the send queue, bounded by [`MAX_RETRYING_EVENTS`].
    retrying: AtomicUsize,
}

/// Holds output back while alive. Taken only while an ack is being sent, never during Docker work.
struct AckPriority(Arc<Conn>);

impl AckPriority {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.acks_pending.fetch_add(1, Ordering::SeqCst);
        AckPriority(conn.clone())
    }
}

impl Drop for AckPriority {
    fn drop(&mut self) {
        self.0.acks_pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends an ack with output held back meanwhile.
async fn send_ack<T: Serialize>(conn: &Arc<Conn>, ack: Ack, reply: &T) -> bool {
    let _priority = AckPriority::new(conn);
    ack.send(reply).await
}

/// Sends a terminal's output and exit to one socket.
struct SocketSink {
    socket: SocketRef,
    conn: Arc<Conn>,
}

impl TerminalSink for SocketSink {
    fn output(&self, id: &TerminalId, offset: u64, data: &Bytes) -> Offer {
        if self.conn.acks_pending.load(Ordering::SeqCst) > 0 {
            return Offer::Full;
        }
        let payload = Output { terminal_id: id.clone(), offset, data: TerminalBytes(data.clone()) };
        match self.socket.emit(event::OUTPUT, &payload) {
            Ok(()) => Offer::Delivered,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Offer::Full,
            Err(SendError::Socket(SocketError::Closed)) => Offer::Gone,
            Err(SendError::Serialize(e)) => {
                tracing::error!(error = ?e, "could not encode output");
                Offer::Gone
            }
        }
    }

    fn exit(&self, exit: &Exit) {
        emit_reliably(self.socket.clone(), event::EXIT, exit.clone(), None);
    }

    fn viewers(&self, id: &TerminalId, attached: usize) {
        let payload = app::protocol::TerminalViewers { terminal_id: id.clone(), attached };
        emit_reliably(self.socket.clone(), event::TERMINAL_VIEWERS, payload, Some(self.conn.clone()));
    }
}

/// Emits a control event, retrying for a while when the send queue is full. `budget`, when given, bounds how
/// many such events of one socket may wait at once.
fn emit_reliably<T: Serialize + Send + Sync + 'static>(
    socket: SocketRef,
    name: &'static str,
    payload: T,
    budget: Option<Arc<Conn>>,
) {
    if socket.emit(name, &payload).is_ok() {
        return;
    }
    if let Some(conn) = &budget
        && conn.retrying.fetch_add(1, Ordering::SeqCst) >= MAX_RETRYING_EVENTS
    {
        conn.retrying.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(event = name, "socket congested; dropping an event");
        return;
    }
    tokio::spawn(async move {
        if let Err(SendError::Socket(SocketError::InternalChannelFull)) =
            retry_while_full(|| socket.emit(name, &payload)).await
        {
            tracing::warn!(event = name, "gave up sending an event to a congested socket");
        }
        if let Some(conn) = budget {
            conn.retrying.fetch_sub(1, Ordering::SeqCst);
        }
    });
}

/// A client id from the handshake, if it is well-formed.
fn client_id(auth: &ClientAuth) -> Option<String> {
    let id = auth.client_id.as_deref()?;
    let ok = !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        tracing::warn!("ignoring a malformed clientId in the handshake");
    }
    ok.then(|| id.to_string())
}

/// The request of an `event`, once the socket may send it (`admission`) and its payload parsed (`req`).
/// Admission is refused first.
fn admitted<T>(
    admission: Result<(), ServiceError>,
    req: Result<T, impl std::fmt::Display>,
    event: &str,
) -> Result<T, ServiceError> {
    admission?;
    req.map_err(|e| ServiceError::invalid(format!("{event} payload: {e}")))
}

impl Conn {
    /// Whether an event may be handled: within the rate limit, and the credential still valid.
    fn admit(&self, state: &AppState) -> Result<(), ServiceError> {
        if self.rate.check().is_err() {
            return Err(ServiceError::new(
                ErrorCode::RateLimited,
                format!("more than {} events per second from this socket; event dropped", state.events_per_sec()),
            ));
        }
        state.still_valid(&self.caller)
    }
}

/// Ends the socket when its credential expires or is revoked (policy reload, logout), telling it why first.
async fn watch_credential(socket: SocketRef, state: AppState, conn: Arc<Conn>) {
    let mut changes = state.credential_changes();
    loop {
        let expiry = conn.caller.principal.expires_at.map(|exp| {
            let at = exp.saturating_add(state.security().auth.leeway()).saturating_add(1);
            Duration::from_secs(at.saturating_sub(crate::auth::now_secs()))
        });
        tokio::select! {
            _ = conn.gone.cancelled() => return,
            _ = tokio::time::sleep(expiry.unwrap_or(Duration::MAX / 4)), if expiry.is_some() => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
        if let Err(e) = state.still_valid(&conn.caller) {
            tracing::info!(code = %e.code, "credential no longer valid; disconnecting");
            state.audit(crate::audit::Record {
                code: Some(e.code.to_string()),
                reason: Some(format!("socket {} disconnected: {}", socket.id, e.message)),
                ..conn.caller.record("connect", "denied")
            });
            let _ = socket.emit(event::AUTH_ERROR, &e.body());
            let _ = socket.disconnect();
            return;
        }
    }
}

/// Registers the socket's event handlers (from the connect middleware, see [`register`]).
fn on_connect(socket: SocketRef, auth: ClientAuth, state: AppState, caller: Caller) {
    // Terminals belong to the client (one per browser profile, say), so its other sockets can resume them.
    let client = client_id(&auth).map_or_else(|| format!("socket:{}", socket.id), |c| format!("client:{c}"));
    let viewer = ViewerId(socket.id.to_string());
    let version = auth.protocol_version.unwrap_or(1).clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
    let v1 = version < 2;
    let per_sec = std::num::NonZeroU32::new(state.events_per_sec()).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = per_sec.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
    let conn = Arc::new(Conn {
        caller,
        rate: governor::RateLimiter::direct(governor::Quota::per_second(per_sec).allow_burst(burst)),
        gone: Default::default(),
        acks_pending: Default::default(),
        retrying: Default::default(),
    });
    let span = tracing::info_span!("socket", sid = %socket.id, transport = ?socket.transport_type(), user = %conn.caller.principal.subject, client = %client, version);
    tracing::info!(parent: &span, "connected");

    // Every `on` is registered before anything awaits: events that arrive earlier would be dropped.
    {
        let (state, client, viewer, conn, span) =
            (state.clone(), client.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(
            event::START_TERMINAL,
            move |socket: SocketRef, ack: Ack, TryData(req): TryData<StartTerminal>| -> Ready<()> {
                let req = admitted(conn.admit(&state), req, event::START_TERMINAL);
                let task = async move {
                    let reply = match req {
                        Err(e) => Err(e),
                        Ok(req) => state.start_terminal(&conn.caller, &client, req).await,
                    };
                    match reply {
                        Ok((terminal, started)) => {
                            // Registered before the ack so no byte is missed; its output flows after the ack.
                            let how = AttachOptions {
                                since: Some(0),
                                flow_control: started.flow_control,
                                v1,
                                read_only: false,
                            };
                            let attached = state.sessions().attach(&terminal, viewer.clone(), how, &conn.gone);
                            let delivered = send_ack(&conn, ack, &Reply::Ok(started)).await;
                            // A client that never learned the id can neither use nor close the terminal; and
                            // the socket may have left while Docker started the process, before its disconnect
                            // handler could see this terminal.
                            if !delivered || !socket.connected() {
                                let _ = state.sessions().close(&terminal, ExitReason::Disconnected).await;
                                return;
                            }
                            match attached {
                                Ok((attachment, _)) => attachment.start(Arc::new(SocketSink { socket, conn })),
                                Err(e) => tracing::error!(error = %e, "could not attach to a new terminal"),
                            }
                        }
                        Err(e) => {
                            tracing::info!(code = %e.code, message = %e.message, "start-terminal refused");
                            send_ack(&conn, ack, &Reply::<()>::Err(e.reply())).await;
                        }
                    }
                };
                tokio::spawn(task.instrument(span.clone()));
                ready(())
            },
        );
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::INPUT, move |socket: SocketRef, ack: Ack, TryData(req): TryData<Input>| -> Ready<()> {
            let _g = span.enter();
            let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
            let result = admitted(conn.admit(&state), req, event::INPUT).and_then(|Input { terminal_id, data }| {
                state
                    .sessions()
                    .get(&terminal_id, Some(&owner))
                    .and_then(|t| writable(&state, &conn, t, "terminal.input"))
                    .and_then(|t| t.send_input(data.0))
            });
            answer(&socket, &conn, ack, event::INPUT, id, result);
            ready(())
        });
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::RESIZE, move |socket: SocketRef, ack: Ack, TryData(req): TryData<Resize>| -> Ready<()> {
            let _g = span.enter();
            let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
            let result = admitted(conn.admit(&state), req, event::RESIZE).and_then(|r| {
                state
                    .sessions()
                    .get(&r.terminal_id, Some(&owner))
                    .and_then(|t| writable(&state, &conn, t, "terminal.resize"))
                    .and_then(|t| t.send_resize(r.cols, r.rows))
            });
            answer(&socket, &conn, ack, event::RESIZE, id, result);
            ready(())
        });
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(
            event::OUTPUT_ACK,
            move |socket: SocketRef, ack: Ack, TryData(req): TryData<OutputAck>| -> Ready<()> {
                let _g = span.enter();
                // Not rate-limited: acks are cumulative and cheap, and dropping the last one would leave a
                // flow-controlled terminal paused for good.
                let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
                let admission = state.still_valid(&conn.caller);
                let result = admitted(admission, req, event::OUTPUT_ACK).and_then(|a| {
                    // Acks stay valid after the process ended: the viewer may still be draining the log.
                    state.sessions().find(&a.terminal_id).and_then(|t| t.ack_output(&owner, a.processed))
                });
                answer(&socket, &conn, ack, event::OUTPUT_ACK, id, result);
                ready(())
            },
        );
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::CLOSE_TERMINAL, move |ack: Ack, TryData(req): TryData<CloseTerminal>| -> Ready<()> {
            let req = admitted(conn.admit(&state), req, event::CLOSE_TERMINAL);
            let task = async move {
                let reply = match req.and_then(|r| Ok((state.sessions().get(&r.terminal_id, Some(&owner))?, r))) {
                    Ok((t, CloseTerminal { terminal_id })) => {
                        state.close_terminal(&conn.caller, &t).await.map(|()| TerminalAck { terminal_id })
                    }
                    Err(e) => Err(e),
                };
                send_ack(&conn, ack, &Reply::from(reply.map_err(|e| e.body()))).await;
            };
            tokio::spawn(task.instrument(span.clone()));
            ready(())
        });
    }
    {
        let (state, viewer, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(
            event::ATTACH_TERMINAL,
            move |socket: SocketRef, ack: Ack, TryData(req): TryData<AttachTerminal>| -> Ready<()> {
                let req = admitted(conn.admit(&state), req, event::ATTACH_TERMINAL);
                let task = async move {
                    let attached = req.and_then(|req| {
                        let t = state.sessions().find(&req.terminal_id)?;
                        let read_only = state.authorize_attach(&conn.caller, &t)?;
                        let how = AttachOptions { since: req.since, flow_control: req.flow_control, v1, read_only };
                        let (attachment, reply) = state.sessions().attach(&t, viewer.clone(), how, &conn.gone)?;
                        Ok((t, attachment, reply))
                    });
                    match attached {
                        Ok((terminal, attachment, reply)) => {
                            if send_ack(&conn, ack, &Reply::Ok(reply)).await && socket.connected() {
                                attachment.start(Arc::new(SocketSink { socket, conn }));
                            } else {
                                // Only this attachment failed; the socket's other terminals are unaffected.
                                drop(attachment);
                                state.sessions().detach(&terminal, &viewer).await;
                            }
                        }
                        Err(e) => {
                            tracing::info!(code = %e.code, message = %e.message, "attach-terminal refused");
                            send_ack(&conn, ack, &Reply::<()>::Err(e.reply())).await;
                        }
                    }
                };
                tokio::spawn(task.instrument(span.clone()));
                ready(())
            },
        );
    }
    {
        let (state, viewer, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on_disconnect(move |reason: DisconnectReason| -> Ready<()> {
            conn.gone.cancel();
            let task = async move {
                tracing::info!(?reason, "disconnected");
                state.sessions().detach_everywhere(&viewer).await;
            };
            tokio::spawn(task.instrument(span));
            ready(())
        });
    }

    let limits = state.sessions().limits();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        negotiated_version: version,
        grace_period_secs: limits.grace.as_secs(),
        output_log_bytes: limits.log_bytes,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        max_terminals_per_socket: state.sessions().limits().per_owner,
        max_input_bytes: app::protocol::MAX_INPUT_BYTES,
        user: conn.caller.principal.subject.clone(),
    };
    socket.extensions.insert(Connected { conn, hello, span });
}

/// `terminal` if this socket's user may write to it (else the refusal, audited).
fn writable(
    state: &AppState,
    conn: &Conn,
    terminal: Arc<crate::session::Terminal>,
    action: &'static str,
) -> Result<Arc<crate::session::Terminal>, ServiceError> {
    match state.authorize_write(&conn.caller, &terminal) {
        Ok(()) => Ok(terminal),
        Err(e) => {
            state.audit_denied_write(&conn.caller, &terminal, action, &e);
            Err(e)
        }
    }
}

/// Answers `input`, `resize` and `output-ack`: with an ack when the client asked for one, else failures as a
/// `request-error` event.
fn answer(
    socket: &SocketRef,
    conn: &Arc<Conn>,
    ack: Ack,
    name: &'static str,
    terminal_id: Option<TerminalId>,
    result: Result<(), ServiceError>,
) {
    match result {
        Ok(()) => {
            if let Some(terminal_id) = terminal_id {
                ack.send_soon(TerminalAck { terminal_id });
            }
        }
        Err(e) => {
            tracing::info!(event = name, code = %e.code, message = %e.message, "request refused");
            if ack.wanted() {
                ack.send_soon(e.reply());
            } else {
                let payload = ErrorEvent { event: name.to_string(), terminal_id, error: e.body() };
                emit_reliably(socket.clone(), event::REQUEST_ERROR, payload, Some(conn.clone()));
            }
        }
    }
}
