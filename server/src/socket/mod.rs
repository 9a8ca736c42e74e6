//! Socket.IO transport: translates protocol events into service calls and session output into events.
//!
//! Handlers that touch a terminal's byte stream (`input`, `resize`, `output-ack`) are plain closures that do
//! their work synchronously when socketioxide dispatches the packet, so input keeps the order it arrived in;
//! only `start-terminal`, `attach-terminal` and `close-terminal`, which must wait for Docker or the session,
//! run as spawned futures, and only once admitted: a refused request is answered on the spot.
//!
//! Every handler takes its payload as `TryData`, so malformed payloads get an `invalid_payload` answer
//! instead of being dropped silently. Every answer (ack or control event) goes through the socket's bounded
//! reply queue ([`outbox`]); a client that stops reading is disconnected (`outbound_overflow`) instead of
//! making the server hold its replies.
//!
//! Sockets are authenticated once, in a connect middleware (refusals are `connect_error`s reading
//! `<code>: <message>`). Every event is then rate-limited and re-checked against the credential's expiry and
//! revocation, and authorized by the service layer; a socket whose credential lapses is told (`auth-error`)
//! and disconnected. Refusals are logged and audited through [`crate::refusals`], so a flood of them is
//! summarised instead of filling the disk.

pub mod outbox;

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use app::protocol::{
    AttachTerminal, ClientAuth, CloseTerminal, ErrorCode, ErrorEvent, Exit, ExitReason, Hello, Input,
    MAX_CLIENT_ID_LEN, MIN_PROTOCOL_VERSION, Output, OutputAck, PROTOCOL_VERSION, Reply, Resize, StartTerminal,
    TerminalAck, TerminalBytes, TerminalId, event,
};
use bytes::Bytes;
use serde::Serialize;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, TryData};
use socketioxide::handler::{FromConnectParts, FromDisconnectParts, FromMessageParts, Value};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError};
use tracing::Instrument;

use crate::error::ServiceError;
use crate::http::RequestContext;
use crate::http::conn::{ConnShared, PendingSlot};
use crate::session::{AttachOptions, Offer, TerminalSink, ViewerId};
use crate::state::{AppState, Caller};
use outbox::{Deliver, Outbox, Sent};

/// The socket itself, as handlers need it to answer later (socketioxide's `SocketRef` does not give it out).
struct Sock(Arc<Socket>);

impl FromConnectParts<LocalAdapter> for Sock {
    type Error = std::convert::Infallible;
    fn from_connect_parts(s: &Arc<Socket>, _: &Option<Value>) -> Result<Self, Self::Error> {
        Ok(Sock(s.clone()))
    }
}

impl FromDisconnectParts<LocalAdapter> for Sock {
    type Error = std::convert::Infallible;
    fn from_disconnect_parts(s: &Arc<Socket>, _: DisconnectReason) -> Result<Self, Self::Error> {
        Ok(Sock(s.clone()))
    }
}

/// Registers the namespace handlers on `io`.
pub fn register(io: &socketioxide::SocketIo, state: AppState) {
    use socketioxide::handler::ConnectHandler;
    // The event handlers are registered in the middleware, before the server sends the connect packet: a client
    // may emit the moment it is connected (socket.io-client flushes its buffer then), and an event that arrived
    // before its handler existed would be dropped.
    let authenticate = {
        let state = state.clone();
        move |Sock(socket): Sock, TryData(auth): TryData<serde_json::Value>| {
            let state = state.clone();
            async move {
                let ip = socket.req_parts().extensions.get::<RequestContext>().and_then(|c| c.ip);
                let result = auth
                    .map_err(|e| ServiceError::invalid(format!("auth: {e}")))
                    .and_then(client_auth)
                    .and_then(|auth| Ok((authenticate(&socket, auth.token.clone(), &state)?, auth)));
                match result {
                    Ok((caller, auth)) => {
                        on_connect(socket, auth, state, caller);
                        Ok(())
                    }
                    Err(e) => {
                        state.log_refusal(ip, Some(socket.id.as_str()), "connect", &e);
                        // A wrong credential is counted against the address by the failure limiter, which bounds
                        // how often it can happen: its sign-in slot is free for the next attempt. (The connection
                        // stays under the pre-sign-in byte budget and timeout.) Other refusals keep the slot.
                        if e.code == ErrorCode::Unauthenticated
                            && let Some(slot) = socket.req_parts().extensions.get::<Arc<PendingSlot>>()
                        {
                            slot.release();
                        }
                        Err(e)
                    }
                }
            }
        }
    };
    let handler = move |Sock(socket): Sock| -> Ready<()> {
        if let Some(connected) = socket.extensions.get::<Connected>() {
            let Connected { conn, hello, span } = connected;
            conn.emit(&socket, &state, event::HELLO, hello);
            tokio::spawn(watch_credential(socket, state.clone(), conn).instrument(span));
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
/// the handshake request. On success the socket's sign-in slot is given back and the edge learns the session
/// is signed in.
fn authenticate(socket: &Arc<Socket>, token: Option<String>, state: &AppState) -> Result<Caller, ServiceError> {
    let parts = socket.req_parts();
    let token = token.or_else(|| crate::auth::credential(&parts.headers));
    let ip = parts.extensions.get::<RequestContext>().and_then(|c| c.ip);
    let caller = state.authenticate(token.as_deref(), ip)?;
    if let Some(slot) = parts.extensions.get::<Arc<PendingSlot>>() {
        slot.release();
    }
    state.edge().signed_in(socket.id.as_str(), parts.extensions.get::<Arc<ConnShared>>());
    // For whoever looks sockets up by caller (container events).
    socket.extensions.insert(caller.clone());
    state.audit(crate::audit::Record {
        reason: Some(format!("socket {}", socket.id)),
        ..caller.record("connect", "allowed")
    });
    Ok(caller)
}

/// How to answer a request: the socket, and the ack id if the client asked for an ack.
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

    /// Sends the ack through the socket's reply queue (once; the queue moves it on). False if the client will
    /// not get it: the socket closed, or its reply queue overflowed (and the socket is being disconnected).
    fn send<T: Serialize + Send + Sync + 'static>(self, conn: &Conn, state: &AppState, reply: T) -> bool {
        let Some(id) = self.id else { return true };
        let send: Deliver = Box::new(move |socket: &Arc<Socket>| {
            let mut unused = Value::Bytes(Bytes::new());
            let Ok(sender) = AckSender::from_message_parts(socket, &mut unused, &Some(id));
            sender.send(&reply)
        });
        conn.reply(&self.socket, state, send)
    }
}

/// Per-socket state shared by its handlers and sinks.
#[derive(Debug)]
struct Conn {
    /// Who this socket is (authenticated at connect).
    caller: Caller,
    /// The socket's id, for logs, audit and the edge's registry.
    sid: String,
    /// Events per second this socket may send ([`crate::Config::max_events_per_sec`], bursts of twice that).
    rate: governor::DefaultDirectRateLimiter,
    /// Cancelled when the socket disconnects: ends its viewers everywhere.
    gone: tokio_util::sync::CancellationToken,
    /// Acks and control events waiting for room in the send queue; output holds back while any wait.
    outbox: Arc<Outbox>,
}

impl Conn {
    /// Hands a reply to the outbox; on overflow, disconnects the socket. False if the reply will not arrive.
    fn reply(&self, socket: &Arc<Socket>, state: &AppState, reply: Deliver) -> bool {
        match self.outbox.send(socket, reply) {
            Sent::Now | Sent::Queued => true,
            Sent::Closed => false,
            Sent::Overflow => {
                self.overflow(socket, state);
                false
            }
        }
    }

    /// Emits a control event through the outbox.
    fn emit<T: Serialize + Send + Sync + 'static>(
        &self,
        socket: &Arc<Socket>,
        state: &AppState,
        name: &'static str,
        payload: T,
    ) {
        self.reply(socket, state, Box::new(move |s: &Arc<Socket>| s.emit(name, &payload)));
    }

    /// The client stopped reading and its reply queue is full: disconnect it (once), so it can resume.
    fn overflow(&self, socket: &Arc<Socket>, state: &AppState) {
        if self.gone.is_cancelled() {
            return;
        }
        self.gone.cancel();
        tracing::warn!(
            reason = "outbound_overflow",
            queued = outbox::MAX_QUEUED_REPLIES,
            "client does not read its replies; disconnecting"
        );
        state.audit(crate::audit::Record {
            reason: Some(format!(
                "socket {} disconnected: outbound_overflow (more than {} replies waiting)",
                self.sid,
                outbox::MAX_QUEUED_REPLIES
            )),
            code: Some("outbound_overflow".into()),
            ..self.caller.record("connect", "denied")
        });
        // socketioxide cannot send the disconnect packet into a full queue; then close the transport itself.
        if socket.clone().disconnect().is_err()
            && !state.edge().kill_socket(&self.sid)
            && let Some(c) = socket.req_parts().extensions.get::<Arc<ConnShared>>()
        {
            c.kill();
        }
    }
}

/// Sends a terminal's output and exit to one socket.
struct SocketSink {
    socket: Arc<Socket>,
    conn: Arc<Conn>,
    state: AppState,
}

impl TerminalSink for SocketSink {
    fn output(&self, id: &TerminalId, offset: u64, data: &Bytes) -> Offer {
        if self.conn.outbox.busy() {
            return Offer::Full;
        }
        if self.conn.outbox.overflowed() {
            return Offer::Gone;
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
        self.conn.emit(&self.socket, &self.state, event::EXIT, exit.clone());
    }

    fn viewers(&self, id: &TerminalId, attached: usize) {
        let payload = app::protocol::TerminalViewers { terminal_id: id.clone(), attached };
        self.conn.emit(&self.socket, &self.state, event::TERMINAL_VIEWERS, payload);
    }
}

/// The handshake's `auth` payload, field by field, so a mistyped field is refused with its name instead of
/// being taken for an absent credential. `protocolVersion` is any non-negative integer: above the newest
/// version it negotiates the newest.
fn client_auth(value: serde_json::Value) -> Result<ClientAuth, ServiceError> {
    use serde_json::Value;
    let mut fields = match value {
        Value::Object(fields) => fields,
        Value::Null => Default::default(),
        other => return Err(ServiceError::invalid(format!("auth must be an object, not {}", json_kind(&other)))),
    };
    let string = |fields: &mut serde_json::Map<String, Value>, name: &str| match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ServiceError::invalid(format!("auth.{name} must be a string, not {}", json_kind(&other)))),
    };
    let protocol_version = match fields.remove("protocolVersion") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            Some(n.as_u64().map_or(PROTOCOL_VERSION, |v| u32::try_from(v).unwrap_or(u32::MAX)))
        }
        // Integers too large for u64 (10^30) arrive as floats; they are still integers above the newest.
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 1.0 && f.fract() == 0.0) => Some(u32::MAX),
        Some(other) => {
            return Err(ServiceError::invalid(format!(
                "auth.protocolVersion must be a non-negative integer, not {other}"
            )));
        }
    };
    Ok(ClientAuth {
        protocol_version,
        client_id: string(&mut fields, "clientId")?,
        token: string(&mut fields, "token")?,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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

    /// Logs and audits a refused request (both summarised when they come in floods); the audit record is left
    /// to the service layer when it wrote one.
    fn refused(&self, state: &AppState, what: &'static str, e: &ServiceError, terminal: Option<&TerminalId>) {
        state.log_refusal(self.caller.ip, Some(&self.sid), what, e);
        if !e.audited {
            let record = crate::audit::Record {
                code: Some(e.code.to_string()),
                reason: Some(crate::refusals::clip(&e.message)),
                terminal_id: terminal.map(|t| crate::refusals::clip(&t.0)),
                ..self.caller.record(audit_action(what), "denied")
            };
            state.audit_refusal(e, record);
        }
    }
}

/// The audit log's name for what a socket event attempts.
fn audit_action(event: &str) -> &'static str {
    match event {
        event::START_TERMINAL => "terminal.open",
        event::ATTACH_TERMINAL => "terminal.attach",
        event::CLOSE_TERMINAL => "terminal.close",
        event::INPUT => "terminal.input",
        event::RESIZE => "terminal.resize",
        event::OUTPUT_ACK => "terminal.output_ack",
        _ => "connect",
    }
}

/// Ends the socket when its credential expires or is revoked (policy reload, logout), telling it why first.
async fn watch_credential(socket: Arc<Socket>, state: AppState, conn: Arc<Conn>) {
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
            if socket.clone().disconnect().is_err() {
                conn.overflow(&socket, &state);
            }
            return;
        }
    }
}

/// Registers the socket's event handlers (from the connect middleware, see [`register`]).
fn on_connect(socket: Arc<Socket>, auth: ClientAuth, state: AppState, caller: Caller) {
    // Terminals belong to the client (one per browser profile, say), so its other sockets can resume them.
    let client = client_id(&auth).map_or_else(|| format!("socket:{}", socket.id), |c| format!("client:{c}"));
    let viewer = ViewerId(socket.id.to_string());
    let version = auth.protocol_version.unwrap_or(1).clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
    let v1 = version < 2;
    let per_sec = std::num::NonZeroU32::new(state.events_per_sec()).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = per_sec.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
    let conn = Arc::new(Conn {
        caller,
        sid: socket.id.to_string(),
        rate: governor::RateLimiter::direct(governor::Quota::per_second(per_sec).allow_burst(burst)),
        gone: Default::default(),
        outbox: Default::default(),
    });
    let span = tracing::info_span!("socket", sid = %socket.id, transport = ?socket.transport_type(), user = %crate::refusals::clip(&conn.caller.principal.subject), client = %client, version);
    tracing::info!(parent: &span, "connected");

    // Every `on` is registered before anything awaits: events that arrive earlier would be dropped.
    {
        let (state, client, viewer, conn, span) =
            (state.clone(), client.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::START_TERMINAL, move |ack: Ack, TryData(req): TryData<StartTerminal>| -> Ready<()> {
            let req = match admitted(conn.admit(&state), req, event::START_TERMINAL) {
                Ok(req) => req,
                Err(e) => {
                    let _g = span.enter();
                    conn.refused(&state, event::START_TERMINAL, &e, None);
                    ack.send(&conn, &state, Reply::<()>::Err(e.reply()));
                    return ready(());
                }
            };
            let (state, client, viewer, conn) = (state.clone(), client.clone(), viewer.clone(), conn.clone());
            let task = async move {
                match state.start_terminal(&conn.caller, &client, req).await {
                    Ok((terminal, started)) => {
                        // Registered before the ack so no byte is missed; its output flows after the ack.
                        let how =
                            AttachOptions { since: Some(0), flow_control: started.flow_control, v1, read_only: false };
                        let attached = state.sessions().attach(&terminal, viewer.clone(), how, &conn.gone);
                        let socket = ack.socket.clone();
                        let delivered = ack.send(&conn, &state, Reply::Ok(started));
                        // A client that will never learn the id can neither use nor close the terminal; and
                        // the socket may have left while Docker started the process, before its disconnect
                        // handler could see this terminal.
                        if !delivered || !socket.connected() {
                            let _ = state.sessions().close(&terminal, ExitReason::Disconnected).await;
                            return;
                        }
                        match attached {
                            Ok((attachment, _)) => attachment.start(Arc::new(SocketSink { socket, conn, state })),
                            Err(e) => tracing::error!(error = %e, "could not attach to a new terminal"),
                        }
                    }
                    Err(e) => {
                        conn.refused(&state, event::START_TERMINAL, &e, None);
                        ack.send(&conn, &state, Reply::<()>::Err(e.reply()));
                    }
                }
            };
            tokio::spawn(task.instrument(span.clone()));
            ready(())
        });
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::INPUT, move |ack: Ack, TryData(req): TryData<Input>| -> Ready<()> {
            let _g = span.enter();
            let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
            let result = admitted(conn.admit(&state), req, event::INPUT).and_then(|Input { terminal_id, data }| {
                state
                    .sessions()
                    .get(&terminal_id, Some(&owner))
                    .and_then(|t| writable(&state, &conn, t, "terminal.input"))
                    .and_then(|t| t.send_input(data.0))
            });
            answer(&conn, &state, ack, event::INPUT, id, result);
            ready(())
        });
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::RESIZE, move |ack: Ack, TryData(req): TryData<Resize>| -> Ready<()> {
            let _g = span.enter();
            let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
            let result = admitted(conn.admit(&state), req, event::RESIZE).and_then(|r| {
                state
                    .sessions()
                    .get(&r.terminal_id, Some(&owner))
                    .and_then(|t| writable(&state, &conn, t, "terminal.resize"))
                    .and_then(|t| t.send_resize(r.cols, r.rows))
            });
            answer(&conn, &state, ack, event::RESIZE, id, result);
            ready(())
        });
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::OUTPUT_ACK, move |ack: Ack, TryData(req): TryData<OutputAck>| -> Ready<()> {
            let _g = span.enter();
            // Not rate-limited: acks are cumulative and cheap, and dropping the last one would leave a
            // flow-controlled terminal paused for good.
            let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
            let admission = state.still_valid(&conn.caller);
            let result = admitted(admission, req, event::OUTPUT_ACK).and_then(|a| {
                // Acks stay valid after the process ended: the viewer may still be draining the log.
                state.sessions().find(&a.terminal_id).and_then(|t| t.ack_output(&owner, a.processed))
            });
            answer(&conn, &state, ack, event::OUTPUT_ACK, id, result);
            ready(())
        });
    }
    {
        let (state, owner, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::CLOSE_TERMINAL, move |ack: Ack, TryData(req): TryData<CloseTerminal>| -> Ready<()> {
            let found = admitted(conn.admit(&state), req, event::CLOSE_TERMINAL)
                .and_then(|r| Ok((state.sessions().get(&r.terminal_id, Some(&owner))?, r)));
            let (t, CloseTerminal { terminal_id }) = match found {
                Ok(found) => found,
                Err(e) => {
                    let _g = span.enter();
                    conn.refused(&state, event::CLOSE_TERMINAL, &e, None);
                    ack.send(&conn, &state, Reply::<()>::Err(e.reply()));
                    return ready(());
                }
            };
            let (state, conn) = (state.clone(), conn.clone());
            let task = async move {
                let reply = state.close_terminal(&conn.caller, &t).await.map(|()| TerminalAck { terminal_id });
                if let Err(e) = &reply {
                    conn.refused(&state, event::CLOSE_TERMINAL, e, None);
                }
                ack.send(&conn, &state, Reply::from(reply.map_err(|e| e.body())));
            };
            tokio::spawn(task.instrument(span.clone()));
            ready(())
        });
    }
    {
        let (state, viewer, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on(event::ATTACH_TERMINAL, move |ack: Ack, TryData(req): TryData<AttachTerminal>| -> Ready<()> {
            let attached = admitted(conn.admit(&state), req, event::ATTACH_TERMINAL).and_then(|req| {
                let t = state.sessions().find(&req.terminal_id)?;
                let read_only = state.authorize_attach(&conn.caller, &t)?;
                let how = AttachOptions { since: req.since, flow_control: req.flow_control, v1, read_only };
                let (attachment, reply) = state.sessions().attach(&t, viewer.clone(), how, &conn.gone)?;
                Ok((t, attachment, reply))
            });
            match attached {
                Ok((terminal, attachment, reply)) => {
                    let socket = ack.socket.clone();
                    if ack.send(&conn, &state, Reply::Ok(reply)) && socket.connected() {
                        attachment.start(Arc::new(SocketSink { socket, conn: conn.clone(), state: state.clone() }));
                    } else {
                        // Only this attachment failed; the socket's other terminals are unaffected.
                        drop(attachment);
                        let (state, viewer) = (state.clone(), viewer.clone());
                        tokio::spawn(
                            async move { state.sessions().detach(&terminal, &viewer).await }.instrument(span.clone()),
                        );
                    }
                }
                Err(e) => {
                    let _g = span.enter();
                    conn.refused(&state, event::ATTACH_TERMINAL, &e, None);
                    ack.send(&conn, &state, Reply::<()>::Err(e.reply()));
                }
            }
            ready(())
        });
    }
    {
        let (state, viewer, conn, span) = (state.clone(), viewer.clone(), conn.clone(), span.clone());
        socket.on_disconnect(move |Sock(socket): Sock, reason: DisconnectReason| -> Ready<()> {
            conn.gone.cancel();
            state.edge().signed_out(socket.id.as_str());
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
            Err(e.audited())
        }
    }
}

/// Answers `input`, `resize` and `output-ack`: with an ack when the client asked for one, else failures as a
/// `request-error` event.
fn answer(
    conn: &Conn,
    state: &AppState,
    ack: Ack,
    name: &'static str,
    terminal_id: Option<TerminalId>,
    result: Result<(), ServiceError>,
) {
    match result {
        Ok(()) => {
            if let Some(terminal_id) = terminal_id {
                ack.send(conn, state, TerminalAck { terminal_id });
            }
        }
        Err(e) => {
            conn.refused(state, name, &e, terminal_id.as_ref());
            if ack.wanted() {
                ack.send(conn, state, e.reply());
            } else {
                let payload = ErrorEvent { event: name.to_string(), terminal_id, error: e.body() };
                conn.emit(&ack.socket, state, event::REQUEST_ERROR, payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handshake_auth_fields_are_checked_one_by_one() {
        let ok = client_auth(json!({"token": "t", "protocolVersion": 2, "clientId": "c"})).unwrap();
        assert_eq!(
            (ok.token.as_deref(), ok.protocol_version, ok.client_id.as_deref()),
            (Some("t"), Some(2), Some("c"))
        );
        assert_eq!(client_auth(json!({})).unwrap(), ClientAuth::default());
        assert_eq!(client_auth(serde_json::Value::Null).unwrap(), ClientAuth::default());
        // Above the newest: still an integer, negotiated down later.
        assert_eq!(client_auth(json!({"protocolVersion": 7_000_000_000u64})).unwrap().protocol_version, Some(u32::MAX));
        let huge: serde_json::Value =
            serde_json::from_str(r#"{"protocolVersion": 1000000000000000000000000000000}"#).unwrap();
        assert_eq!(client_auth(huge).unwrap().protocol_version, Some(u32::MAX));
        for bad in [
            json!({"protocolVersion": "2"}),
            json!({"protocolVersion": -7}),
            json!({"protocolVersion": 1.5}),
            json!({"protocolVersion": true}),
        ] {
            let e = client_auth(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidPayload);
            assert!(e.message.contains("auth.protocolVersion"), "{}", e.message);
        }
        let e = client_auth(json!({"token": 5})).unwrap_err();
        assert!(e.message.contains("auth.token must be a string"), "{}", e.message);
        assert!(client_auth(json!("x")).unwrap_err().message.contains("auth must be an object"));
    }
}
