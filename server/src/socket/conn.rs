//! One socket's state and how it answers: the typed ack handle, the bounded reply queue, the output sink.

use std::marker::PhantomData;
use std::sync::Arc;

use app::protocol::{
    ClientEvent, DataEncoding, ErrorCode, Exit, Output, OutputBase64, OutputStream, Reply, ServerEvent, TerminalBytes,
    TerminalId, event,
};
use base64::Engine as _;
use bytes::Bytes;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::AckSender;
use socketioxide::handler::{FromConnectParts, FromDisconnectParts, FromMessageParts, Value};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError};

use super::outbox::{self, Deliver, Outbox, Sent};
use crate::error::ServiceError;
use crate::http::conn::ConnShared;
use crate::session::{Offer, TerminalSink};
use crate::state::{AppState, Caller, Seat};

/// The socket itself, as handlers need it to answer later (socketioxide's `SocketRef` does not give it out).
pub(super) struct Sock(pub Arc<Socket>);

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

/// How to answer one client event `E`: the socket, and the ack id if the client asked for an ack. Only `E`'s
/// reply type can be sent.
pub(super) struct Ack<E> {
    pub socket: Arc<Socket>,
    id: Option<i64>,
    event: PhantomData<fn() -> E>,
}

impl<E> FromMessageParts<LocalAdapter> for Ack<E> {
    type Error = std::convert::Infallible;
    fn from_message_parts(socket: &Arc<Socket>, _: &mut Value, ack_id: &Option<i64>) -> Result<Self, Self::Error> {
        Ok(Ack { socket: socket.clone(), id: *ack_id, event: PhantomData })
    }
}

impl<E: ClientEvent> Ack<E> {
    pub fn wanted(&self) -> bool {
        self.id.is_some()
    }

    /// Sends the ack through the socket's reply queue. False if the client will not get it: the socket closed,
    /// or its reply queue overflowed (and the socket is being disconnected).
    pub fn send(self, conn: &Conn, state: &AppState, reply: Result<E::Ack, ServiceError>) -> bool {
        let Some(id) = self.id else { return true };
        let reply: Reply<E::Ack> = Reply::from(reply.map_err(|e| e.body()));
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
pub(super) struct Conn {
    /// Who this socket is (authenticated at connect).
    pub caller: Caller,
    /// The socket as a viewer of terminals.
    pub seat: Seat,
    /// The socket's id, for logs, audit and the edge's registry.
    pub sid: String,
    /// Events per second this socket may send ([`crate::Config::max_events_per_sec`], bursts of twice that).
    pub rate: governor::DefaultDirectRateLimiter,
    /// Acks and control events waiting for room in the send queue; output holds back while any wait.
    pub outbox: Arc<Outbox>,
    /// How `data` travels on this socket (`auth.encoding`).
    pub encoding: DataEncoding,
    /// The protocol version negotiated.
    pub version: u32,
    /// Cluster mode: the terminals of other nodes this socket follows, and the relays to them.
    pub relays: super::relay::Relays,
}

impl Conn {
    /// An `input`'s bytes as the socket sent them: base64 is decoded on a socket that chose it.
    pub fn input_bytes(&self, data: TerminalBytes) -> Result<Bytes, ServiceError> {
        match self.encoding {
            DataEncoding::Binary => Ok(data.0),
            DataEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&data.0)
                .map(Bytes::from)
                .map_err(|e| ServiceError::invalid(format!("input data must be base64 on this socket: {e}"))),
        }
    }

    /// Hands a reply to the outbox; on overflow, disconnects the socket. False if the reply will not arrive.
    pub fn reply(&self, socket: &Arc<Socket>, state: &AppState, reply: Deliver) -> bool {
        match self.outbox.send(socket, reply) {
            Sent::Now | Sent::Queued => true,
            Sent::Closed => false,
            Sent::Overflow => {
                self.overflow(socket, state);
                false
            }
        }
    }

    /// Emits server event `E` through the outbox.
    pub fn emit<E: ServerEvent>(&self, socket: &Arc<Socket>, state: &AppState, payload: E::Payload) {
        self.reply(socket, state, Box::new(move |s: &Arc<Socket>| s.emit(E::NAME, &payload)));
    }

    /// The client stopped reading (its reply queue is full, or its replies stalled): disconnect it (once), so it
    /// can resume.
    pub fn overflow(&self, socket: &Arc<Socket>, state: &AppState) {
        if self.seat.gone.is_cancelled() {
            return;
        }
        self.seat.gone.cancel();
        tracing::warn!(
            reason = "outbound_overflow",
            queued = outbox::MAX_QUEUED_REPLIES,
            "client does not read its replies; disconnecting"
        );
        state.audit(crate::audit::Record {
            reason: Some(format!(
                "socket {} disconnected: outbound_overflow (more than {} replies waiting, or none delivered for {} s)",
                self.sid,
                outbox::MAX_QUEUED_REPLIES,
                outbox::MAX_REPLY_STALL.as_secs()
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

    /// Whether an event may be handled: within the rate limit, and the credential neither expired nor signed
    /// out. (Revocation by the policy is checked with the policy decision, in the service layer.)
    pub fn admit(&self, state: &AppState) -> Result<(), ServiceError> {
        self.admit_metered(state, true)
    }

    /// [`Conn::admit`], counting the event against the rate only when `metered`.
    pub fn admit_metered(&self, state: &AppState, metered: bool) -> Result<(), ServiceError> {
        if metered && self.rate.check().is_err() {
            return Err(ServiceError::new(
                ErrorCode::RateLimited,
                format!("more than {} events per second from this socket; event dropped", state.events_per_sec()),
            ));
        }
        state.credential_current(&self.caller)
    }

    /// Logs and audits a refused request (both summarised when they come in floods); the audit record is left
    /// to the service layer when it wrote one.
    pub fn refused(&self, state: &AppState, what: &'static str, e: &ServiceError, terminal: Option<&TerminalId>) {
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
fn audit_action(name: &str) -> &'static str {
    match name {
        event::START_TERMINAL => "terminal.open",
        event::ATTACH_TERMINAL => "terminal.attach",
        event::CLOSE_TERMINAL => "terminal.close",
        event::INPUT => "terminal.input",
        event::RESIZE => "terminal.resize",
        event::OUTPUT_ACK => "terminal.output_ack",
        _ => "connect",
    }
}

/// Sends a terminal's output and exit to one socket.
pub(super) struct SocketSink {
    pub socket: Arc<Socket>,
    pub conn: Arc<Conn>,
    pub state: AppState,
}

impl TerminalSink for SocketSink {
    fn output(&self, id: &TerminalId, offset: u64, data: &Bytes, stream: OutputStream) -> Offer {
        if self.conn.outbox.busy() {
            return Offer::Full;
        }
        if self.conn.outbox.overflowed() {
            return Offer::Gone;
        }
        let stream = (stream == OutputStream::Stderr).then_some(stream);
        let name = <event::Output as ServerEvent>::NAME;
        let sent = match self.conn.encoding {
            DataEncoding::Binary => {
                let payload = Output { terminal_id: id.clone(), offset, data: TerminalBytes(data.clone()), stream };
                self.socket.emit(name, &payload)
            }
            DataEncoding::Base64 => {
                let data = base64::engine::general_purpose::STANDARD.encode(data);
                self.socket.emit(name, &OutputBase64 { terminal_id: id.clone(), offset, data, stream })
            }
        };
        match sent {
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
        self.conn.emit::<event::Exit>(&self.socket, &self.state, exit.clone());
    }

    fn viewers(&self, id: &TerminalId, attached: usize) {
        let payload = app::protocol::TerminalViewers { terminal_id: id.clone(), attached };
        self.conn.emit::<event::TerminalViewers>(&self.socket, &self.state, payload);
    }
}
