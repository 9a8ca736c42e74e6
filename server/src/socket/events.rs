//! The socket's event handlers: each translates one client event into one service call and its answer.
//!
//! `input`, `resize` and `output-ack` are handled synchronously when socketioxide dispatches the packet, so
//! input keeps the order it arrived in; the other requests (`start-terminal`, `create-sandbox`,
//! `close-terminal`, `remove-sandbox`, the container actions) are answered on the spot when refused, and
//! otherwise run as spawned futures; `attach-terminal` is answered at once.

use std::future::{Ready, ready};
use std::sync::Arc;

use app::protocol::{ClientEvent, ErrorEvent, TerminalAck, TerminalId, event};
use socketioxide::extract::TryData;
use socketioxide::socket::{DisconnectReason, Socket};
use tracing::Instrument;

use super::conn::{Ack, Conn, Sock, SocketSink};
use super::relay;
use crate::error::ServiceError;
use crate::session::viewer::Attachment;
use crate::state::{Action, AppState};

/// The request of an event, once the socket may send it (`admission`) and its payload parsed (`req`).
/// Admission is refused first.
fn admitted<E: ClientEvent>(
    admission: Result<(), ServiceError>,
    req: Result<E::Payload, impl std::fmt::Display>,
) -> Result<E::Payload, ServiceError> {
    admission?;
    req.map_err(|e| ServiceError::invalid(format!("{} payload: {e}", E::NAME)))
}

/// Registers event `E` with a synchronous handler.
fn on<E, F>(socket: &Arc<Socket>, handler: F)
where
    E: ClientEvent + 'static,
    F: Fn(Ack<E>, Result<E::Payload, socketioxide::ParserError>) + Send + Sync + Clone + 'static,
{
    socket.on(E::NAME, move |ack: Ack<E>, TryData(req): TryData<E::Payload>| -> Ready<()> {
        handler(ack, req);
        ready(())
    });
}

/// Registers the socket's event handlers (from the connect middleware, before anything awaits: events that
/// arrive before their handler exists would be dropped).
pub(super) fn register(socket: &Arc<Socket>, state: &AppState, conn: &Arc<Conn>, span: &tracing::Span) {
    on_start(socket, state, conn, span);
    on_input(socket, state, conn, span);
    on_stream::<event::Resize>(
        socket,
        state,
        conn,
        span,
        Admit::RateLimited,
        |r| &r.terminal_id,
        |s, c, r| if c.relays.has(&r.terminal_id) { relay::resize(s, c, r) } else { s.resize(&c.caller, &c.seat, r) },
    );
    // Not rate-limited: acks are cumulative and cheap, and dropping the last one would leave a flow-controlled
    // terminal paused for good.
    on_stream::<event::OutputAck>(
        socket,
        state,
        conn,
        span,
        Admit::Always,
        |r| &r.terminal_id,
        |s, c, r| if c.relays.has(&r.terminal_id) { relay::ack(s, c, r) } else { s.ack(&c.caller, &c.seat, r) },
    );
    on_request::<event::CloseTerminal, _, _>(socket, state, conn, span, |state, conn, req| async move {
        if conn.relays.has(&req.terminal_id) {
            relay::close(&state, &conn, req).await
        } else {
            state.close(&conn.caller, &conn.seat, req).await
        }
    });
    {
        let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
        on::<event::AttachTerminal, _>(socket, move |ack, req| {
            let req = match admitted::<event::AttachTerminal>(conn.admit(&state), req) {
                Ok(req) => req,
                Err(e) => return refuse(&conn, &state, &span, ack, e),
            };
            if state.elsewhere(&req.terminal_id) {
                // Another node's terminal (or nobody's): through a relay, answered once the owner answers.
                let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
                let task = async move {
                    let socket = ack.socket.clone();
                    let relayed = relay::attach(&state, &conn, &socket, req).await;
                    relayed_answer(&state, &conn, ack, relayed);
                };
                tokio::spawn(task.instrument(span));
                return;
            }
            let attached = state.attach(&conn.caller, &conn.seat, req);
            match attached {
                Ok((attachment, reply)) => {
                    let socket = ack.socket.clone();
                    if ack.send(&conn, &state, Ok(reply)) && socket.connected() {
                        attachment.start(Arc::new(SocketSink { socket, conn: conn.clone(), state: state.clone() }));
                    } else {
                        // Only this attachment failed; the socket's other terminals are unaffected.
                        state.detach(attachment);
                    }
                }
                Err(e) => refuse(&conn, &state, &span, ack, e),
            }
        });
    }
    // A sandbox whose terminal's answer could not be delivered stays (listed, removable); only the terminal
    // nobody learned of ends.
    on_open::<event::CreateSandbox, _, _>(socket, state, conn, span, |state, conn, req| async move {
        state.create_sandbox_terminal(&conn.caller, &conn.seat, req).await
    });
    on_request::<event::RemoveSandbox, _, _>(socket, state, conn, span, |state, conn, req| async move {
        state.remove_sandbox(&conn.caller, &req.id).await.map(|()| req)
    });
    on_request::<event::StartContainer, _, _>(socket, state, conn, span, |state, conn, req| async move {
        state.container_action(&conn.caller, &req, Action::Start).await.map(|()| req)
    });
    on_request::<event::StopContainer, _, _>(socket, state, conn, span, |state, conn, req| async move {
        state.container_action(&conn.caller, &req, Action::Stop).await.map(|()| req)
    });
    on_request::<event::RestartContainer, _, _>(socket, state, conn, span, |state, conn, req| async move {
        state.container_action(&conn.caller, &req, Action::Restart).await.map(|()| req)
    });
    {
        let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
        socket.on_disconnect(move |Sock(socket): Sock, reason: DisconnectReason| -> Ready<()> {
            conn.seat.gone.cancel();
            state.edge().signed_out(socket.id.as_str());
            let (state, conn) = (state.clone(), conn.clone());
            let task = async move {
                tracing::info!(?reason, "disconnected");
                state.leave(&conn.seat).await;
            };
            tokio::spawn(task.instrument(span.clone()));
            ready(())
        });
    }
}

/// Registers `start-terminal`: opened here, or (cluster mode) through a relay on the node serving the
/// container's Docker host ([`relay::placed`]).
fn on_start(socket: &Arc<Socket>, state: &AppState, conn: &Arc<Conn>, span: &tracing::Span) {
    let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
    on::<event::StartTerminal, _>(socket, move |ack, req| {
        let req = match admitted::<event::StartTerminal>(conn.admit(&state), req) {
            Ok(req) => req,
            Err(e) => return refuse(&conn, &state, &span, ack, e),
        };
        let (state, conn) = (state.clone(), conn.clone());
        let task = async move {
            let placed = match state.cluster() {
                Some(_) => relay::placed(&state, &conn.caller, &req.container_id).await,
                None => Ok(None),
            };
            match placed {
                Ok(None) => {
                    let opened = state.start(&conn.caller, &conn.seat, req).await;
                    opened_answer(state, conn, ack, opened).await;
                }
                Ok(Some((owner, container))) => {
                    let socket = ack.socket.clone();
                    let relayed = relay::start(&state, &conn, &socket, owner, container, req).await;
                    relayed_answer(&state, &conn, ack, relayed);
                }
                Err(e) => {
                    conn.refused(&state, event::START_TERMINAL, &e, None);
                    ack.send(&conn, &state, Err(e));
                }
            }
        };
        tokio::spawn(task.instrument(span.clone()));
    });
}

/// Answers a request carried out through a relay; once the client has the answer, the relayed terminal's
/// output may go to it.
fn relayed_answer<E: ClientEvent>(
    state: &AppState,
    conn: &Conn,
    ack: Ack<E>,
    relayed: Result<(Arc<relay::Relayed>, E::Ack), ServiceError>,
) {
    match relayed {
        Ok((relayed, reply)) => {
            ack.send(conn, state, Ok(reply));
            relayed.go_live();
        }
        Err(e) => {
            conn.refused(state, E::NAME, &e, None);
            ack.send(conn, state, Err(e));
        }
    }
}

/// Answers a request that opened a terminal: once the client has the answer the attachment starts, else the
/// terminal is abandoned.
async fn opened_answer<E: ClientEvent>(
    state: AppState,
    conn: Arc<Conn>,
    ack: Ack<E>,
    opened: Result<(Attachment, E::Ack), ServiceError>,
) {
    match opened {
        Ok((attachment, reply)) => {
            let socket = ack.socket.clone();
            // The socket may have left while Docker started the process, before its disconnect handler could
            // see this terminal.
            if ack.send(&conn, &state, Ok(reply)) && socket.connected() {
                attachment.start(Arc::new(SocketSink { socket, conn, state }));
            } else {
                state.abandon(&conn.caller, attachment).await;
            }
        }
        Err(e) => {
            conn.refused(&state, E::NAME, &e, None);
            ack.send(&conn, &state, Err(e));
        }
    }
}

/// Registers a request that opens a terminal (`create-sandbox`): the service call runs as a spawned future;
/// once the client has the answer the attachment starts, else the terminal is abandoned.
fn on_open<E, F, Fut>(socket: &Arc<Socket>, state: &AppState, conn: &Arc<Conn>, span: &tracing::Span, call: F)
where
    E: ClientEvent + 'static,
    F: Fn(AppState, Arc<Conn>, E::Payload) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(Attachment, E::Ack), ServiceError>> + Send + 'static,
{
    let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
    on::<E, _>(socket, move |ack, req| {
        let req = match admitted::<E>(conn.admit(&state), req) {
            Ok(req) => req,
            Err(e) => return refuse(&conn, &state, &span, ack, e),
        };
        let (state, conn, call) = (state.clone(), conn.clone(), call.clone());
        let task = async move {
            let opened = call(state.clone(), conn.clone(), req).await;
            opened_answer(state, conn, ack, opened).await;
        };
        tokio::spawn(task.instrument(span.clone()));
    });
}

/// Registers a request answered by one service call that runs as a spawned future (`remove-sandbox` and the
/// container actions).
fn on_request<E, F, Fut>(socket: &Arc<Socket>, state: &AppState, conn: &Arc<Conn>, span: &tracing::Span, call: F)
where
    E: ClientEvent + 'static,
    F: Fn(AppState, Arc<Conn>, E::Payload) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<E::Ack, ServiceError>> + Send + 'static,
{
    let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
    on::<E, _>(socket, move |ack, req| {
        let req = match admitted::<E>(conn.admit(&state), req) {
            Ok(req) => req,
            Err(e) => return refuse(&conn, &state, &span, ack, e),
        };
        let (state, conn) = (state.clone(), conn.clone());
        let call = call.clone();
        let task = async move {
            let reply = call(state.clone(), conn.clone(), req).await;
            if let Err(e) = &reply {
                conn.refused(&state, E::NAME, e, None);
            }
            ack.send(&conn, &state, reply);
        };
        tokio::spawn(task.instrument(span.clone()));
    });
}

/// Registers `input`: queued synchronously as it is dispatched (so input keeps its order); its ack, when asked
/// for, is sent once the bytes were written to the process, so a client that waits for acks never overfills the
/// terminal's input queue.
fn on_input(socket: &Arc<Socket>, state: &AppState, conn: &Arc<Conn>, span: &tracing::Span) {
    let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
    on::<event::Input, _>(socket, move |ack, req| {
        let _g = span.enter();
        let id = req.as_ref().ok().map(|r| r.terminal_id.clone());
        let (tx, rx) = if ack.wanted() { Some(tokio::sync::oneshot::channel()).unzip() } else { (None, None) };
        // Bulk input (a pipe's chunks) is bounded by its bytes, not its count (see `BULK_INPUT_BYTES`).
        let bulk = req.as_ref().is_ok_and(|r| r.data.0.len() >= app::protocol::BULK_INPUT_BYTES);
        let queued = admitted::<event::Input>(conn.admit_metered(&state, !bulk), req).and_then(|r| {
            let data = conn.input_bytes(r.data.clone())?;
            if conn.relays.has(&r.terminal_id) {
                relay::input(&state, &conn, &r, data, tx)
            } else {
                state.input(&conn.caller, &conn.seat, &r, data, tx)
            }
        });
        match (queued, rx, id) {
            (Ok(()), Some(rx), Some(terminal_id)) => {
                let (state, conn) = (state.clone(), conn.clone());
                tokio::spawn(async move {
                    let reply = match rx.await {
                        Ok(()) => Ok(TerminalAck { terminal_id }),
                        Err(_) => Err(ServiceError::new(
                            app::protocol::ErrorCode::UnknownTerminal,
                            format!("terminal {terminal_id} ended before this input reached it"),
                        )),
                    };
                    ack.send(&conn, &state, reply);
                });
            }
            (result, _, id) => answer(&conn, &state, ack, id, result),
        }
    });
}

/// Whether a stream event goes through the rate limit and credential check first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    RateLimited,
    Always,
}

/// Registers one of the events on a terminal's byte stream (`input`, `resize`, `output-ack`): handled
/// synchronously as it is dispatched (so input keeps its order) by `call`, answered by [`answer`].
fn on_stream<E>(
    socket: &Arc<Socket>,
    state: &AppState,
    conn: &Arc<Conn>,
    span: &tracing::Span,
    admit: Admit,
    terminal: fn(&E::Payload) -> &TerminalId,
    call: fn(&AppState, &Conn, E::Payload) -> Result<(), ServiceError>,
) where
    E: ClientEvent<Ack = TerminalAck> + 'static,
{
    let (state, conn, span) = (state.clone(), conn.clone(), span.clone());
    on::<E, _>(socket, move |ack, req| {
        let _g = span.enter();
        let id = req.as_ref().ok().map(|r| terminal(r).clone());
        let admission = if admit == Admit::RateLimited { conn.admit(&state) } else { Ok(()) };
        let result = admitted::<E>(admission, req).and_then(|r| call(&state, &conn, r));
        answer(&conn, &state, ack, id, result);
    });
}

/// Answers a refused request with its error (and records it).
fn refuse<E: ClientEvent>(conn: &Conn, state: &AppState, span: &tracing::Span, ack: Ack<E>, e: ServiceError) {
    let _g = span.enter();
    conn.refused(state, E::NAME, &e, None);
    ack.send(conn, state, Err(e));
}

/// Answers `input`, `resize` and `output-ack`: with an ack when the client asked for one, else failures as a
/// `request-error` event.
fn answer<E: ClientEvent<Ack = TerminalAck>>(
    conn: &Conn,
    state: &AppState,
    ack: Ack<E>,
    terminal_id: Option<TerminalId>,
    result: Result<(), ServiceError>,
) {
    match result {
        Ok(()) => {
            if let Some(terminal_id) = terminal_id {
                ack.send(conn, state, Ok(TerminalAck { terminal_id }));
            }
        }
        Err(e) => {
            conn.refused(state, E::NAME, &e, terminal_id.as_ref());
            if ack.wanted() {
                ack.send(conn, state, Err(e));
            } else {
                let payload = ErrorEvent { event: E::NAME.to_string(), terminal_id, error: e.body() };
                conn.emit::<event::RequestError>(&ack.socket, state, payload);
            }
        }
    }
}
