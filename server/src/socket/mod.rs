//! Socket.IO transport: translates protocol events into service calls and session output into events.
//!
//! Handlers that touch a terminal's byte stream (`input`, `resize`) are plain closures that do their work
//! synchronously when socketioxide dispatches the packet, so input keeps the order it arrived in; only
//! `start-terminal` and `close-terminal`, which must wait for Docker, run as spawned futures.
//!
//! Every handler takes its payload as `TryData`, so malformed payloads get an `invalid_payload` answer
//! instead of being dropped silently.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use app::protocol::{
    CloseTerminal, ErrorEvent, Exit, ExitReason, Hello, Input, Output, OutputAck, PROTOCOL_VERSION, Reply, Resize,
    StartTerminal, TerminalAck, TerminalBytes, TerminalId, event,
};
use bytes::Bytes;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SendError, SocketError};
use tracing::Instrument;

use crate::error::ServiceError;
use crate::session::{Offer, OwnerId, TerminalSink};
use crate::state::AppState;

/// Registers the namespace handlers on `io`.
pub fn register(io: &socketioxide::SocketIo, state: AppState) {
    io.ns(app::protocol::NAMESPACE, move |socket: SocketRef| -> Ready<()> {
        on_connect(socket, state.clone());
        ready(())
    });
}

/// Whether the client asked for an ack (socketioxide's `AckSender` does not say).
struct WantsAck(bool);

impl<A: socketioxide::adapter::Adapter> FromMessageParts<A> for WantsAck {
    type Error = std::convert::Infallible;
    fn from_message_parts(
        _: &Arc<socketioxide::socket::Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(WantsAck(ack_id.is_some()))
    }
}

/// Per-socket state shared by its handlers and sinks.
#[derive(Debug, Default)]
struct Conn {
    /// Acks being prepared. While non-zero, output is held back so the socket's bounded send queue has room
    /// for the answer (socketioxide's ack cannot be retried once the queue refused it).
    acks_pending: AtomicUsize,
}

/// Holds output back while alive.
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

/// Sends a terminal's output and exit to one socket.
struct SocketSink {
    socket: SocketRef,
    conn: Arc<Conn>,
}

impl TerminalSink for SocketSink {
    fn output(&self, id: &TerminalId, data: &Bytes) -> Offer {
        if self.conn.acks_pending.load(Ordering::SeqCst) > 0 {
            return Offer::Full;
        }
        let payload = Output {
            terminal_id: id.clone(),
            data: TerminalBytes(data.clone()),
        };
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
        emit_reliably(self.socket.clone(), event::EXIT, exit.clone());
    }
}

/// Emits a control event, retrying for a while when the send queue is full (it drains at network speed).
fn emit_reliably<T: serde::Serialize + Send + 'static>(socket: SocketRef, name: &'static str, payload: T) {
    if socket.emit(name, &payload).is_ok() {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            match socket.emit(name, &payload) {
                Err(SendError::Socket(SocketError::InternalChannelFull)) => continue,
                _ => return,
            }
        }
        tracing::warn!(event = name, "gave up sending an event to a congested socket");
    });
}

fn on_connect(socket: SocketRef, state: AppState) {
    let owner = OwnerId(socket.id.to_string());
    let conn = Arc::new(Conn::default());
    let span = tracing::info_span!("socket", sid = %socket.id, transport = ?socket.transport_type());
    tracing::info!(parent: &span, "connected");

    // Every `on` is registered before anything awaits: events that arrive earlier would be dropped.
    {
        let (state, owner, conn, span) = (state.clone(), owner.clone(), conn.clone(), span.clone());
        socket.on(
            event::START_TERMINAL,
            move |socket: SocketRef, TryData(req): TryData<StartTerminal>, ack: AckSender| -> Ready<()> {
                let priority = AckPriority::new(&conn);
                let task = async move {
                    let reply = match req {
                        Err(e) => Err(ServiceError::invalid(format!("start-terminal payload: {e}"))),
                        Ok(req) => state.sessions().start(&owner, req).await,
                    };
                    match reply {
                        Ok((terminal, started)) => {
                            send_ack(ack, &Reply::Ok(started), &priority);
                            drop(priority);
                            // The socket may have gone while Docker started the process; its disconnect
                            // handler could not see this terminal yet, so close it here.
                            if !socket.connected() {
                                state.sessions().close(&terminal, ExitReason::Disconnected).await;
                                return;
                            }
                            terminal.attach(Arc::new(SocketSink { socket, conn }));
                        }
                        Err(e) => {
                            tracing::info!(code = %e.code, message = %e.message, "start-terminal refused");
                            send_ack(ack, &Reply::<()>::Err(e.reply()), &priority);
                        }
                    }
                };
                tokio::spawn(task.instrument(span.clone()));
                ready(())
            },
        );
    }
    {
        let (state, owner, span) = (state.clone(), owner.clone(), span.clone());
        socket.on(
            event::INPUT,
            move |socket: SocketRef, wants: WantsAck, TryData(req): TryData<Input>, ack: AckSender| -> Ready<()> {
                let _g = span.enter();
                let (id, result) = match req {
                    Err(e) => (None, Err(ServiceError::invalid(format!("input payload: {e}")))),
                    Ok(Input { terminal_id, data }) => {
                        let r = state
                            .sessions()
                            .get(&terminal_id, Some(&owner))
                            .and_then(|t| t.send_input(data.0));
                        (Some(terminal_id), r)
                    }
                };
                answer(&socket, (wants, ack), event::INPUT, id, result);
                ready(())
            },
        );
    }
    {
        let (state, owner, span) = (state.clone(), owner.clone(), span.clone());
        socket.on(
            event::RESIZE,
            move |socket: SocketRef, wants: WantsAck, TryData(req): TryData<Resize>, ack: AckSender| -> Ready<()> {
                let _g = span.enter();
                let (id, result) = match req {
                    Err(e) => (None, Err(ServiceError::invalid(format!("resize payload: {e}")))),
                    Ok(Resize {
                        terminal_id,
                        cols,
                        rows,
                    }) => {
                        let r = state
                            .sessions()
                            .get(&terminal_id, Some(&owner))
                            .and_then(|t| t.send_resize(cols, rows));
                        (Some(terminal_id), r)
                    }
                };
                answer(&socket, (wants, ack), event::RESIZE, id, result);
                ready(())
            },
        );
    }
    {
        let (state, owner, span) = (state.clone(), owner.clone(), span.clone());
        socket.on(
            event::OUTPUT_ACK,
            move |socket: SocketRef, wants: WantsAck, TryData(req): TryData<OutputAck>, ack: AckSender| -> Ready<()> {
                let _g = span.enter();
                let (id, result) = match req {
                    Err(e) => (None, Err(ServiceError::invalid(format!("output-ack payload: {e}")))),
                    Ok(OutputAck { terminal_id, processed }) => {
                        let r = state
                            .sessions()
                            .get(&terminal_id, Some(&owner))
                            .and_then(|t| t.ack_output(processed));
                        (Some(terminal_id), r)
                    }
                };
                answer(&socket, (wants, ack), event::OUTPUT_ACK, id, result);
                ready(())
            },
        );
    }
    {
        let (state, owner, conn, span) = (state.clone(), owner.clone(), conn.clone(), span.clone());
        socket.on(
            event::CLOSE_TERMINAL,
            move |TryData(req): TryData<CloseTerminal>, ack: AckSender| -> Ready<()> {
                let priority = AckPriority::new(&conn);
                let task = async move {
                    let reply = match req {
                        Err(e) => Err(ServiceError::invalid(format!("close-terminal payload: {e}"))),
                        Ok(CloseTerminal { terminal_id }) => match state.sessions().get(&terminal_id, Some(&owner)) {
                            Ok(t) => {
                                state.sessions().close(&t, ExitReason::Closed).await;
                                Ok(TerminalAck { terminal_id })
                            }
                            Err(e) => Err(e),
                        },
                    };
                    send_ack(ack, &Reply::from(reply.map_err(|e| e.body())), &priority);
                };
                tokio::spawn(task.instrument(span.clone()));
                ready(())
            },
        );
    }
    {
        let (state, owner, span) = (state.clone(), owner.clone(), span.clone());
        socket.on_disconnect(move |reason: DisconnectReason| -> Ready<()> {
            let task = async move {
                tracing::info!(?reason, "disconnected; closing its terminals");
                state.sessions().close_owned_by(&owner, ExitReason::Disconnected).await;
            };
            tokio::spawn(task.instrument(span));
            ready(())
        });
    }

    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        max_terminals_per_socket: state.sessions().limits().per_owner,
        max_input_bytes: app::protocol::MAX_INPUT_BYTES,
    };
    emit_reliably(socket, event::HELLO, hello);
}

fn send_ack<T: serde::Serialize>(ack: AckSender, reply: &T, _priority: &AckPriority) {
    match ack.send(reply) {
        Ok(()) => {}
        // The client left while the request was being handled.
        Err(SendError::Socket(SocketError::Closed)) => tracing::debug!("socket closed before its ack"),
        Err(e) => tracing::warn!(error = %e, "could not send ack"),
    }
}

/// Answers `input`/`resize`: with an ack when the client asked for one, else failures as a `request-error` event.
fn answer(
    socket: &SocketRef,
    (wants, ack): (WantsAck, AckSender),
    name: &'static str,
    terminal_id: Option<TerminalId>,
    result: Result<(), ServiceError>,
) {
    match result {
        Ok(()) => {
            if let Some(terminal_id) = terminal_id {
                let _ = ack.send(&TerminalAck { terminal_id });
            }
        }
        Err(e) => {
            tracing::info!(event = name, code = %e.code, message = %e.message, "request refused");
            if wants.0 {
                let _ = ack.send(&e.reply());
            } else {
                let payload = ErrorEvent {
                    event: name.to_string(),
                    terminal_id,
                    error: e.body(),
                };
                emit_reliably(socket.clone(), event::REQUEST_ERROR, payload);
            }
        }
    }
}
