//! The browser's Socket.IO client: npm `socket.io-client` bound through wasm-bindgen, with a Rust API typed
//! by `app::protocol`. Reconnection is socket.io-client's own (exponential backoff, forever).
//!
//! `rust_socketio` cannot compile to wasm32, and the official client is proven against socketioxide in this
//! repository's conformance test, so the browser uses it rather than a hand-written Engine.IO transport.

use std::rc::Rc;

use app::protocol::{ClientEvent, ErrorBody, ErrorCode, Reply, ServerEvent, TerminalId};
use js_sys::{Function, Promise, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(module = "socket.io-client")]
extern "C" {
    #[wasm_bindgen(js_name = io)]
    fn io_connect(url: &str, opts: &JsValue) -> RawSocket;

    type RawSocket;
    #[wasm_bindgen(method)]
    fn on(this: &RawSocket, event: &str, cb: &Function);
    #[wasm_bindgen(method)]
    fn emit(this: &RawSocket, event: &str, payload: &JsValue);
    #[wasm_bindgen(method, js_name = timeout)]
    fn with_timeout(this: &RawSocket, ms: u32) -> RawSocket;
    #[wasm_bindgen(method, js_name = emitWithAck)]
    fn emit_with_ack(this: &RawSocket, event: &str, payload: &JsValue) -> Promise;
    #[wasm_bindgen(method, getter)]
    fn connected(this: &RawSocket) -> bool;
    #[wasm_bindgen(method, getter, js_name = io)]
    fn manager(this: &RawSocket) -> RawManager;

    type RawManager;
    #[wasm_bindgen(method, js_name = on)]
    fn on(this: &RawManager, event: &str, cb: &Function);
}

/// How long a request waits for its ack before it is reported as failed.
const ACK_TIMEOUT_MS: u32 = 60_000;

/// What the user sees of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
    Reconnecting,
    Offline,
    /// The server refused this browser's credential (none, expired, revoked); it will not retry by itself.
    SignedOut,
}

impl ConnState {
    pub fn label(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Reconnecting => "reconnecting",
            ConnState::Offline => "offline",
            ConnState::SignedOut => "signed out",
        }
    }
}

/// This browser profile's client id, kept in localStorage (made up on first use).
pub fn client_id() -> String {
    const KEY: &str = "porthole.clientId";
    let storage = web_sys::window().and_then(|w| w.local_storage().ok().flatten());
    if let Some(id) = storage.as_ref().and_then(|s| s.get_item(KEY).ok().flatten())
        && !id.is_empty()
    {
        return id;
    }
    let id: String = (0..32).map(|_| format!("{:x}", (js_sys::Math::random() * 16.0) as u8 & 15)).collect();
    if let Some(s) = storage {
        let _ = s.set_item(KEY, &id);
    }
    id
}

/// A Socket.IO connection to the serving origin. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    raw: Rc<RawSocket>,
}

fn serializer() -> serde_wasm_bindgen::Serializer {
    // Plain objects for maps; `TerminalBytes` becomes a Uint8Array, which socket.io-client sends as a
    // binary attachment.
    serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true)
}

fn to_js<T: Serialize>(value: &T) -> JsValue {
    value.serialize(&serializer()).unwrap_or(JsValue::UNDEFINED)
}

impl Client {
    /// Connects to the origin the page was served from, as protocol version 2 client `client_id` (so this
    /// browser's windows share terminals and a reload can resume them).
    pub fn connect(client_id: &str) -> Client {
        let opts = js_sys::Object::new();
        let auth = app::protocol::ClientAuth {
            protocol_version: Some(app::protocol::PROTOCOL_VERSION),
            client_id: Some(client_id.to_string()),
            // The session cookie authenticates the browser; the token never reaches page scripts.
            token: None,
            encoding: None,
        };
        let _ = Reflect::set(&opts, &"auth".into(), &to_js(&auth));
        // Websocket first; long-polling only where websockets are blocked.
        let transports = js_sys::Array::of2(&"websocket".into(), &"polling".into());
        let _ = Reflect::set(&opts, &"transports".into(), &transports);
        let origin = web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default();
        Client { raw: Rc::new(io_connect(&origin, &opts)) }
    }

    /// Calls `f` with every payload of server event `E` (payloads that do not parse are logged and dropped).
    pub fn on<E: ServerEvent + 'static>(&self, mut f: impl FnMut(E::Payload) + 'static) {
        let cb = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
            match serde_wasm_bindgen::from_value::<E::Payload>(v) {
                Ok(t) => f(t),
                Err(e) => web_sys::console::warn_1(&format!("porthole: bad {} payload: {e}", E::NAME).into()),
            }
        });
        self.raw.on(E::NAME, cb.as_ref().unchecked_ref());
        // The socket lives as long as the page.
        cb.forget();
    }

    /// `output` events (terminal, offset, bytes), handed over without copying the bytes into Rust.
    pub fn on_output(&self, mut f: impl FnMut(TerminalId, u64, Uint8Array) + 'static) {
        let cb = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
            let id = Reflect::get(&v, &"terminalId".into()).ok().and_then(|i| i.as_string());
            let offset = Reflect::get(&v, &"offset".into()).ok().and_then(|o| o.as_f64()).unwrap_or(0.0) as u64;
            let data = Reflect::get(&v, &"data".into()).ok();
            if let (Some(id), Some(data)) = (id, data) {
                // socket.io-client delivers attachments as ArrayBuffer in browsers.
                f(TerminalId(id), offset, Uint8Array::new(&data));
            }
        });
        self.raw.on(<app::protocol::event::Output as ServerEvent>::NAME, cb.as_ref().unchecked_ref());
        cb.forget();
    }

    /// Calls `f` each time the socket (re)connects.
    pub fn on_connect(&self, mut f: impl FnMut() + 'static) {
        let cb = Closure::<dyn FnMut(JsValue)>::new(move |_| f());
        self.raw.on("connect", cb.as_ref().unchecked_ref());
        cb.forget();
    }

    /// Calls `f` when the socket itself disconnects (not on the browser's `offline` event: a socket can
    /// survive a blip).
    pub fn on_disconnect(&self, mut f: impl FnMut() + 'static) {
        let cb = Closure::<dyn FnMut(JsValue)>::new(move |_| f());
        self.raw.on("disconnect", cb.as_ref().unchecked_ref());
        cb.forget();
    }

    /// Calls `f` with the server's reason when it refuses this socket's credential: a `connect_error` whose
    /// message starts with an authentication error code, or an `auth-error` event mid-session.
    pub fn on_auth_error(&self, f: impl Fn(String) + 'static) {
        let f = Rc::new(f);
        let g = f.clone();
        let refused = Closure::<dyn FnMut(JsValue)>::new(move |err: JsValue| {
            let message = Reflect::get(&err, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_default();
            let auth_codes = [
                ErrorCode::Unauthenticated,
                ErrorCode::TokenExpired,
                ErrorCode::TokenRevoked,
                ErrorCode::TooManyAuthFailures,
            ];
            let is_auth =
                auth_codes.iter().any(|c| message.strip_prefix(c.as_str()).is_some_and(|rest| rest.starts_with(':')));
            if is_auth {
                let text = message.split_once(": ").map_or(message.as_str(), |(_, m)| m).to_string();
                g(text);
            }
        });
        self.raw.on("connect_error", refused.as_ref().unchecked_ref());
        refused.forget();
        self.on::<app::protocol::event::AuthError>(move |e| f(e.message));
    }

    /// Follows the connection state.
    pub fn on_state(&self, f: impl Fn(ConnState) + 'static) {
        let f = Rc::new(f);
        let hook = |target: &dyn Fn(&str, &Function), event: &str, state: Rc<dyn Fn(JsValue) -> Option<ConnState>>| {
            let f = f.clone();
            let cb = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
                if let Some(s) = state(v) {
                    f(s)
                }
            });
            target(event, cb.as_ref().unchecked_ref());
            cb.forget();
        };
        let raw = self.raw.clone();
        let on_socket = move |e: &str, cb: &Function| raw.on(e, cb);
        let manager = self.raw.manager();
        let on_manager = move |e: &str, cb: &Function| manager.on(e, cb);
        hook(&on_socket, "connect", Rc::new(|_| Some(ConnState::Connected)));
        hook(
            &on_socket,
            "disconnect",
            Rc::new(|reason: JsValue| {
                // The server ending the session will not be retried by the client.
                let by_server = reason.as_string().as_deref() == Some("io server disconnect");
                Some(if by_server { ConnState::Offline } else { ConnState::Reconnecting })
            }),
        );
        hook(&on_manager, "reconnect_attempt", Rc::new(|_| Some(ConnState::Reconnecting)));
        hook(&on_manager, "reconnect_failed", Rc::new(|_| Some(ConnState::Offline)));
        if let Some(w) = web_sys::window() {
            let on_window = move |e: &str, cb: &Function| {
                let _ = w.add_event_listener_with_callback(e, cb);
            };
            hook(&on_window, "offline", Rc::new(|_| Some(ConnState::Offline)));
            // Back online: the socket may have survived the blip, or be waiting for its next attempt.
            let raw = self.raw.clone();
            hook(
                &on_window,
                "online",
                Rc::new(move |_| Some(if raw.connected() { ConnState::Connected } else { ConnState::Reconnecting })),
            );
        }
    }

    /// Exchanges `token` for the session cookie (`POST /api/v1/login`); the server's message on refusal.
    pub async fn sign_in(token: &str) -> Result<(), String> {
        let window = web_sys::window().ok_or("no window")?;
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        let body = js_sys::JSON::stringify(&to_js(&app::protocol::Login { token: token.to_string() }))
            .map_err(|_| "could not encode the token")?;
        init.set_body(&body);
        let headers = web_sys::Headers::new().map_err(|_| "no headers")?;
        let _ = headers.set("content-type", "application/json");
        init.set_headers(&headers);
        let response = JsFuture::from(window.fetch_with_str_and_init(app::protocol::rest::LOGIN, &init))
            .await
            .map_err(|_| "Porthole could not be reached".to_string())?;
        let response: web_sys::Response = response.unchecked_into();
        if response.ok() {
            return Ok(());
        }
        let json = match response.json() {
            Ok(p) => JsFuture::from(p).await.ok(),
            Err(_) => None,
        };
        let reply = json.and_then(|j| serde_wasm_bindgen::from_value::<app::protocol::ErrorReply>(j).ok());
        Err(reply.map_or_else(|| format!("sign-in failed ({})", response.status()), |r| r.error.message))
    }

    /// Ends this browser's session (`POST /api/v1/logout`); the cookie is cleared.
    pub async fn sign_out() {
        let Some(window) = web_sys::window() else { return };
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        let _ = JsFuture::from(window.fetch_with_str_and_init(app::protocol::rest::LOGOUT, &init)).await;
    }

    /// Fire-and-forget client event `E`.
    pub fn emit<E: ClientEvent>(&self, payload: &E::Payload) {
        self.raw.emit(E::NAME, &to_js(payload));
    }

    /// Client event `E` with an ack: the ack's success value, or its error (a timeout or a dropped connection
    /// becomes an `internal` error with a message saying so).
    pub async fn request<E: ClientEvent>(&self, req: &E::Payload) -> Result<E::Ack, ErrorBody> {
        let promise = self.raw.with_timeout(ACK_TIMEOUT_MS).emit_with_ack(E::NAME, &to_js(req));
        let value = JsFuture::from(promise).await.map_err(|_| ErrorBody {
            code: ErrorCode::Internal,
            message: "the server did not answer (connection lost or timed out)".into(),
        })?;
        serde_wasm_bindgen::from_value::<Reply<E::Ack>>(value)
            .map_err(|e| ErrorBody { code: ErrorCode::Internal, message: format!("unreadable answer: {e}") })?
            .into_result()
    }
}
