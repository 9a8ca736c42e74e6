//! Socket.IO transport: translates protocol events into service calls and session output into events.
//!
//! [`events`] has the handlers; [`conn`] the per-socket state, the typed ack handle and the output sink;
//! [`outbox`] the bounded reply queue. The handlers call [`AppState`] methods only.
//!
//! Every handler takes its payload as `TryData`, so malformed payloads get an `invalid_payload` answer
//! instead of being dropped silently. Every answer (ack or control event) goes through the socket's bounded
//! reply queue; a client that stops reading is disconnected (`outbound_overflow`) instead of making the server
//! hold its replies.
//!
//! Sockets are authenticated once, in a connect middleware (refusals are `connect_error`s reading
//! `<code>: <message>`). Every event is then rate-limited and re-checked against the credential's expiry and
//! revocation, and authorized by the service layer; a socket whose credential lapses is told (`auth-error`)
//! and disconnected. Refusals are logged and audited through [`crate::refusals`], so a flood of them is
//! summarised instead of filling the disk.

mod conn;
mod events;
pub mod outbox;
mod relay;

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use app::protocol::{ClientAuth, ErrorCode, Hello, MIN_PROTOCOL_VERSION, Owner, PROTOCOL_VERSION, ServerEvent, event};
use socketioxide::extract::TryData;
use socketioxide::socket::Socket;
use tracing::Instrument;

use crate::error::ServiceError;
use crate::http::RequestContext;
use crate::http::conn::{ConnShared, PendingSlot};
use crate::session::ViewerId;
use crate::state::{AppState, Caller, Seat};
use conn::{Conn, Sock};

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
                let result = auth.map_err(|e| ServiceError::invalid(format!("auth: {e}"))).and_then(|auth| match auth
                    .get("peer")
                {
                    Some(peer) => relayed(&socket, peer, &state),
                    None => client_auth(auth)
                        .and_then(|auth| Ok((authenticate(&socket, auth.token.clone(), &state)?, auth))),
                });
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
            conn.emit::<event::Hello>(&socket, &state, hello);
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

/// Connect middleware for a relay from another node ([`crate::cluster::relay`]): the socket is the user's the
/// relaying node vouches for, with their client id and protocol version. Refused outside cluster mode and
/// unless signed with the cluster secret.
fn relayed(
    socket: &Arc<Socket>,
    peer: &serde_json::Value,
    state: &AppState,
) -> Result<(Caller, ClientAuth), ServiceError> {
    let Some(cluster) = state.cluster() else {
        return Err(crate::auth::unauthenticated("relays from other nodes are accepted only in cluster mode"));
    };
    let (node, claims) = crate::cluster::relay::verify(cluster, peer).map_err(|why| {
        tracing::warn!(why = %why, "refused an unsigned or badly signed relay");
        crate::auth::unauthenticated(format!("relay refused: {why}"))
    })?;
    let caller = Caller { principal: claims.principal(), ip: claims.ip, relayed_by: Some(node) };
    state.still_valid(&caller)?;
    let parts = socket.req_parts();
    if let Some(slot) = parts.extensions.get::<Arc<PendingSlot>>() {
        slot.release();
    }
    state.edge().signed_in(socket.id.as_str(), parts.extensions.get::<Arc<ConnShared>>());
    // No `Caller` extension: container events reach the user on their own node, not through relays.
    let auth = ClientAuth {
        protocol_version: Some(claims.protocol_version),
        client_id: claims.client_id,
        token: None,
        encoding: None,
    };
    Ok((caller, auth))
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
    let encoding = match string(&mut fields, "encoding")?.as_deref() {
        None | Some("binary") => None,
        Some("base64") => Some(app::protocol::DataEncoding::Base64),
        Some(other) => {
            return Err(ServiceError::invalid(format!(
                "auth.encoding must be \"binary\" or \"base64\", not {:?}",
                crate::refusals::clip(other)
            )));
        }
    };
    Ok(ClientAuth {
        protocol_version,
        client_id: string(&mut fields, "clientId")?,
        token: string(&mut fields, "token")?,
        encoding,
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

/// Ends the socket when its credential expires or is revoked (policy reload, logout), telling it why first.
async fn watch_credential(socket: Arc<Socket>, state: AppState, conn: Arc<Conn>) {
    let mut changes = state.credential_changes();
    loop {
        let expiry = conn.caller.principal.expires_at.map(|exp| {
            let at = exp.saturating_add(state.leeway()).saturating_add(1);
            Duration::from_secs(at.saturating_sub(crate::auth::now_secs()))
        });
        tokio::select! {
            _ = conn.seat.gone.cancelled() => return,
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
            let _ = socket.emit(<event::AuthError as ServerEvent>::NAME, &e.body());
            if socket.clone().disconnect().is_err() {
                conn.overflow(&socket, &state);
            }
            return;
        }
    }
}

/// Sets the socket up once it is signed in: its state, its handlers, and the `hello` to send.
fn on_connect(socket: Arc<Socket>, auth: ClientAuth, state: AppState, caller: Caller) {
    // Terminals belong to the client (one per browser profile, say), so its other sockets can resume them.
    if auth.client_id.as_deref().is_some_and(|id| !app::protocol::client_id_ok(id)) {
        tracing::warn!("ignoring a malformed clientId in the handshake");
    }
    let client = Owner::for_socket(auth.client_id.as_deref(), socket.id.as_str());
    let version = auth.protocol_version.unwrap_or(1).clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
    let per_sec = std::num::NonZeroU32::new(state.events_per_sec()).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = per_sec.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
    let seat = Seat {
        viewer: ViewerId(socket.id.to_string()),
        client: client.clone(),
        // A relay that drops is a blip between nodes, not the user leaving: the grace period applies.
        ends_on_leave: version < 2 && caller.relayed_by.is_none(),
        gone: Default::default(),
    };
    let conn = Arc::new(Conn {
        caller,
        seat,
        sid: socket.id.to_string(),
        rate: governor::RateLimiter::direct(governor::Quota::per_second(per_sec).allow_burst(burst)),
        outbox: Default::default(),
        encoding: auth.encoding.unwrap_or_default(),
        version,
        relays: Default::default(),
    });
    {
        // Weak handles: the socket holds its handlers, which hold the connection, which holds the outbox.
        let (weak_conn, weak_socket, state) = (Arc::downgrade(&conn), Arc::downgrade(&socket), state.clone());
        conn.outbox.on_stall(move || {
            if let (Some(conn), Some(socket)) = (weak_conn.upgrade(), weak_socket.upgrade()) {
                conn.overflow(&socket, &state);
            }
        });
    }
    let span = tracing::info_span!("socket", sid = %socket.id, transport = ?socket.transport_type(), user = %crate::refusals::clip(&conn.caller.principal.subject), client = %client, version);
    tracing::info!(parent: &span, "connected");
    events::register(&socket, &state, &conn, &span);
    let limits = state.limits();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        negotiated_version: version,
        grace_period_secs: limits.grace.as_secs(),
        output_log_bytes: limits.log_bytes,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        max_terminals_per_socket: limits.per_client,
        max_input_bytes: app::protocol::MAX_INPUT_BYTES,
        user: conn.caller.principal.subject.clone(),
    };
    socket.extensions.insert(Connected { conn, hello, span });
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
        assert_eq!(
            client_auth(json!({"encoding": "base64"})).unwrap().encoding,
            Some(app::protocol::DataEncoding::Base64)
        );
        assert_eq!(client_auth(json!({"encoding": "binary"})).unwrap().encoding, None);
        let e = client_auth(json!({"encoding": "hex"})).unwrap_err();
        assert!(e.message.contains("auth.encoding must be"), "{}", e.message);
    }
}
