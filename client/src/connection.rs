//! One Socket.IO connection to a Porthole server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::protocol::{
    self, ClientEvent, ContainersChanged, DataEncoding, ErrorBody, ErrorEvent, Exit, Hello, Output, OutputBase64,
    OutputStream, Reply, TerminalAck, TerminalBytes, TerminalId, TerminalViewers, event,
};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder, ReconnectSettings};
use rust_socketio::{Payload, TransportType};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Where the one reconnection attempt `rust_socketio` makes goes: a port nothing listens on (see `connect`).
const NOWHERE: &str = "http://127.0.0.1:1/";

/// How long [`Options::default`] waits for `hello` and for each request's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which Engine.IO transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// A WebSocket from the start (one handshake).
    #[default]
    WebSocket,
    /// HTTP long-polling only.
    Polling,
    /// Polling, upgraded to a WebSocket.
    Upgrade,
    /// A WebSocket through Porthole's own Socket.IO client ([`crate::native`]) instead of `rust_socketio`:
    /// binary attachments both ways, `TCP_NODELAY`, acks by id, a dead socket reported.
    Native,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's base URL, e.g. `http://127.0.0.1:7070` (a path other than `/` must end in `/socket.io/`).
    pub url: String,
    /// The credential sent as `auth.token`.
    pub token: Option<String>,
    /// A stable client id, so this client's sockets share its terminals.
    pub client_id: Option<String>,
    /// The protocol version announced; `None` announces none (a version 1 client).
    pub protocol_version: Option<u32>,
    /// The whole handshake `auth` object instead of the three fields above.
    pub auth: Option<Value>,
    /// Extra handshake headers (e.g. `Origin`, `Authorization`).
    pub headers: Vec<(String, String)>,
    pub transport: Transport,
    /// How long to wait for `hello` and for each answer.
    pub timeout: Duration,
    /// How `data` travels (`auth.encoding`). [`DataEncoding::Base64`] is binary-safe with `rust_socketio`,
    /// whose WebSocket transport breaks binary attachments that contain the byte 0x1e (see the crate docs).
    pub encoding: DataEncoding,
    /// Verifies the server's TLS certificate (`https://` URLs) against these roots instead of the system's.
    pub tls: Option<native_tls::TlsConnector>,
}

impl Options {
    /// A version-2 client of `url` signing in with `token`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            token: Some(token.into()),
            client_id: None,
            protocol_version: Some(protocol::PROTOCOL_VERSION),
            auth: None,
            headers: Vec::new(),
            transport: Transport::WebSocket,
            timeout: DEFAULT_TIMEOUT,
            encoding: DataEncoding::Binary,
            tls: None,
        }
    }

    fn auth(&self) -> Value {
        if let Some(auth) = &self.auth {
            return auth.clone();
        }
        let mut auth = serde_json::Map::new();
        if let Some(t) = &self.token {
            auth.insert("token".into(), t.clone().into());
        }
        if let Some(c) = &self.client_id {
            auth.insert("clientId".into(), c.clone().into());
        }
        if let Some(v) = self.protocol_version {
            auth.insert("protocolVersion".into(), v.into());
        }
        if self.encoding == DataEncoding::Base64 {
            auth.insert("encoding".into(), "base64".into());
        }
        Value::Object(auth)
    }
}

/// Something the server sent, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Output(Output),
    Exit(Exit),
    RequestError(ErrorEvent),
    Viewers(TerminalViewers),
    ContainersChanged(ContainersChanged),
    /// The credential lapsed; the server disconnects right after.
    AuthError(ErrorBody),
    /// The server disconnected this socket.
    Closed,
    /// An event this client does not know (a newer server), with its name.
    Unknown(String),
}

/// Who waits for a terminal's next output, told the moment it is decoded (before it is queued): for measuring
/// latency without the consumer's queue in between.
type Watchers = Arc<Mutex<HashMap<TerminalId, oneshot::Sender<(Instant, Bytes)>>>>;

/// One connection. Cheap to share by reference; requests are answered one at a time (see the crate docs).
pub struct Connection {
    link: Link,
    watchers: Watchers,
    hello: Hello,
    timeout: Duration,
    encoding: DataEncoding,
    /// One request in flight at a time: `rust_socketio` resolves every request with the same (random) ack id.
    requests: tokio::sync::Mutex<()>,
}

/// The Socket.IO client underneath.
enum Link {
    Rs(Client),
    Native(crate::native::Native),
}

impl Link {
    async fn disconnect(&self) {
        match self {
            Link::Rs(client) => {
                let _ = client.disconnect().await;
            }
            Link::Native(n) => n.disconnect().await,
        }
    }
}

/// Hands a decoded event on, in order, first telling whoever waits for the terminal's next output.
fn deliver(watchers: &Watchers, tx: &mpsc::UnboundedSender<Incoming>, incoming: Incoming) {
    if let Incoming::Output(o) = &incoming
        && let Some(watcher) = watchers.lock().unwrap_or_else(|e| e.into_inner()).remove(&o.terminal_id)
    {
        let _ = watcher.send((Instant::now(), o.data.0.clone()));
    }
    let _ = tx.send(incoming);
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("user", &self.hello.user).finish_non_exhaustive()
    }
}

/// Binary events arrive from `rust_socketio` as the attachment, with the JSON text, quotes stripped, as the
/// event name: `output,{terminalId:t-…,offset:N,data:}`. The terminal id and offset are recovered from it.
fn mangled_output(name: &str, data: Bytes) -> Option<Output> {
    let (event_name, rest) = name.split_once(',')?;
    if event_name != event::OUTPUT {
        return None;
    }
    let field = |key: &str, ok: fn(char) -> bool| -> Option<String> {
        let start = rest.find(key)? + key.len();
        Some(rest[start..].chars().take_while(|c| ok(*c)).collect())
    };
    let terminal_id = TerminalId(field("terminalId:", |c| c.is_ascii_alphanumeric() || c == '-')?);
    let offset = field("offset:", |c| c.is_ascii_digit()).and_then(|o| o.parse().ok()).unwrap_or(0);
    let stream = field("stream:", |c| c.is_ascii_lowercase()).filter(|s| s == "stderr").map(|_| OutputStream::Stderr);
    Some(Output { terminal_id, offset, data: TerminalBytes(data), stream })
}

/// Acks arrive as `Text([Array([value])])`; events as `Text([value])`.
fn first_value(payload: Payload) -> Value {
    match payload {
        #[allow(deprecated)]
        Payload::Text(mut values) if !values.is_empty() => match values.remove(0) {
            Value::Array(mut inner) if !inner.is_empty() => inner.remove(0),
            v => v,
        },
        #[allow(deprecated)]
        Payload::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn decode(name: &str, payload: Payload) -> Option<Incoming> {
    if let Payload::Binary(data) = payload {
        return mangled_output(name, data).map(Incoming::Output);
    }
    decode_value(name, first_value(payload), Vec::new())
}

/// An event as JSON (and, for the native client, its binary attachments).
fn decode_value(name: &str, v: Value, mut attachments: Vec<Bytes>) -> Option<Incoming> {
    fn typed<T: serde::de::DeserializeOwned>(v: Value, wrap: fn(T) -> Incoming, name: &str) -> Incoming {
        serde_json::from_value(v).map(wrap).unwrap_or_else(|e| Incoming::Unknown(format!("{name} (unparsable: {e})")))
    }
    Some(match name {
        // Binary output (the native client): `data` is the placeholder of the one attachment.
        event::OUTPUT if !attachments.is_empty() => {
            let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            match (serde_json::from_value(field("terminalId")), serde_json::from_value(field("stream"))) {
                (Ok(terminal_id), Ok(stream)) => Incoming::Output(Output {
                    terminal_id,
                    offset: field("offset").as_u64().unwrap_or(0),
                    data: TerminalBytes(attachments.swap_remove(0)),
                    stream,
                }),
                _ => Incoming::Unknown(format!("{name} (unparsable: {v})")),
            }
        }
        // Text output: the base64 form (`auth.encoding: "base64"`).
        event::OUTPUT => match serde_json::from_value::<OutputBase64>(v) {
            Ok(o) => match base64::engine::general_purpose::STANDARD.decode(o.data.as_bytes()) {
                Ok(data) => Incoming::Output(Output {
                    terminal_id: o.terminal_id,
                    offset: o.offset,
                    data: TerminalBytes(data.into()),
                    stream: o.stream,
                }),
                Err(e) => Incoming::Unknown(format!("{name} (data is not base64: {e})")),
            },
            Err(e) => Incoming::Unknown(format!("{name} (unparsable: {e})")),
        },
        event::EXIT => typed(v, Incoming::Exit, name),
        event::REQUEST_ERROR => typed(v, Incoming::RequestError, name),
        event::TERMINAL_VIEWERS => typed(v, Incoming::Viewers, name),
        event::CONTAINERS_CHANGED => typed(v, Incoming::ContainersChanged, name),
        event::AUTH_ERROR => typed(v, Incoming::AuthError, name),
        event::HELLO => return None,
        other => Incoming::Unknown(other.to_string()),
    })
}

/// What `connect` waits for first.
type Greeting = Arc<Mutex<Option<oneshot::Sender<Result<Hello, Error>>>>>;

impl Connection {
    /// Connects and waits for `hello` (or the server's refusal). Everything the server sends afterwards
    /// arrives on the receiver, in order; it is unbounded, so a consumer that falls behind should use flow
    /// control (`flowControl` and [`Connection::ack_output`]), which bounds what is in flight.
    pub async fn connect(options: &Options) -> Result<(Connection, mpsc::UnboundedReceiver<Incoming>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (greet_tx, greet_rx) = oneshot::channel();
        let greeting: Greeting = Arc::new(Mutex::new(Some(greet_tx)));
        let greet = |g: &Greeting, r: Result<Hello, Error>| {
            if let Some(tx) = g.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(r);
            }
        };
        let watchers: Watchers = Arc::default();
        if options.transport == Transport::Native {
            return Connection::connect_native(options, tx, rx, greeting, greet_rx, watchers).await;
        }
        let mut builder = ClientBuilder::new(options.url.as_str()).auth(options.auth());
        if let Some(tls) = &options.tls {
            builder = builder.tls_config(tls.clone());
        }
        for (k, v) in &options.headers {
            builder = builder.opening_header(k.as_str(), v.as_str());
        }
        let g = greeting.clone();
        builder = builder.on("error", move |payload, _| {
            #[allow(deprecated)]
            let text = match payload {
                Payload::String(s) => s,
                Payload::Text(v) => v.first().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                Payload::Binary(_) => String::new(),
            };
            // A refusal reads `Received an ConnectError frame: {"message":"<code>: <message>"}`.
            let refusal = text
                .find('{')
                .and_then(|i| serde_json::from_str::<Value>(&text[i..]).ok())
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string));
            greet(&g, Err(refusal.map_or_else(|| Error::Transport(text), Error::Refused)));
            async {}.boxed()
        });
        // `Closed` is told once: for the server's disconnect, or for a transport that died (see below).
        let told = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tell_closed = {
            let (tx, told) = (tx.clone(), told.clone());
            move || {
                if !told.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let _ = tx.send(Incoming::Closed);
                }
            }
        };
        let closed = tell_closed.clone();
        builder = builder.on("close", move |_, _| {
            closed();
            async {}.boxed()
        });
        // `rust_socketio` says nothing when the transport dies (a cut connection, a dead peer): its stream just
        // ends. Its reconnect hook is the only sign, so reconnection is on for one attempt, the hook tells
        // `Closed`, points the attempt at an address nothing listens on, and ends the client for good (a
        // manual disconnect stops its loop); a client resumes with a new [`Connection`] of its own.
        let this: Arc<std::sync::OnceLock<Client>> = Arc::default();
        let lost = (tell_closed, this.clone());
        builder = builder.on_reconnect(move || {
            (lost.0)();
            if let Some(client) = lost.1.get() {
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client.disconnect().await;
                });
            }
            async {
                let mut nowhere = ReconnectSettings::new();
                nowhere.address(NOWHERE);
                nowhere
            }
            .boxed()
        });
        let g = greeting.clone();
        let w = watchers.clone();
        let transport = match options.transport {
            Transport::WebSocket => TransportType::Websocket,
            Transport::Polling => TransportType::Polling,
            Transport::Upgrade | Transport::Native => TransportType::WebsocketUpgrade,
        };
        let client = builder
            .transport_type(transport)
            // Never reconnect by itself (upstream #374; it would also retry a refused sign-in): one attempt, to
            // nowhere, only to learn that the transport died.
            .reconnect(true)
            .max_reconnect_attempts(1)
            .reconnect_delay(10, 10)
            .reconnect_on_disconnect(false)
            .on_any(move |name, payload, _| {
                let name = String::from(name);
                if name == event::HELLO {
                    let hello =
                        serde_json::from_value(first_value(payload)).map_err(|e| Error::Protocol(e.to_string()));
                    greet(&g, hello);
                } else if let Some(incoming) = decode(&name, payload) {
                    deliver(&w, &tx, incoming);
                }
                async {}.boxed()
            })
            .connect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let _ = this.set(client.clone());
        Connection::finish(options, Link::Rs(client), greet_rx, watchers, rx).await
    }

    /// Waits for `hello` on a connected `link` (closing it when none comes) and makes the connection.
    async fn finish(
        options: &Options,
        link: Link,
        greet_rx: oneshot::Receiver<Result<Hello, Error>>,
        watchers: Watchers,
        rx: mpsc::UnboundedReceiver<Incoming>,
    ) -> Result<(Connection, mpsc::UnboundedReceiver<Incoming>), Error> {
        let failed = match tokio::time::timeout(options.timeout, greet_rx).await {
            Ok(Ok(Ok(hello))) => {
                let (timeout, encoding) = (options.timeout, options.encoding);
                let connection = Connection { link, watchers, hello, timeout, encoding, requests: Default::default() };
                return Ok((connection, rx));
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => return Err(Error::Transport("the connection ended before hello".into())),
            Err(_) => Error::Timeout("the connection (hello)".into()),
        };
        link.disconnect().await;
        Err(failed)
    }

    async fn connect_native(
        options: &Options,
        tx: mpsc::UnboundedSender<Incoming>,
        rx: mpsc::UnboundedReceiver<Incoming>,
        greeting: Greeting,
        greet_rx: oneshot::Receiver<Result<Hello, Error>>,
        watchers: Watchers,
    ) -> Result<(Connection, mpsc::UnboundedReceiver<Incoming>), Error> {
        let (w, closed) = (watchers.clone(), tx.clone());
        let on_event: crate::native::OnEvent = Box::new(move |name, payload, attachments| {
            if name == event::HELLO {
                let hello = serde_json::from_value(payload).map_err(|e| Error::Protocol(e.to_string()));
                if let Some(g) = greeting.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = g.send(hello);
                }
            } else if let Some(incoming) = decode_value(&name, payload, attachments) {
                deliver(&w, &tx, incoming);
            }
        });
        let on_close = Box::new(move || {
            let _ = closed.send(Incoming::Closed);
        });
        let native = crate::native::Native::connect(
            &options.url,
            &options.auth(),
            &options.headers,
            options.tls.clone(),
            options.timeout,
            on_event,
            on_close,
        )
        .await?;
        Connection::finish(options, Link::Native(native), greet_rx, watchers, rx).await
    }

    /// The server's `hello`.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Sends `name` with an ack request and returns the ack's JSON.
    pub async fn request_raw(&self, name: &str, payload: Value) -> Result<Value, Error> {
        let _one = self.requests.lock().await;
        self.send_request(name, payload).await?.await
    }

    /// Sends `name` with an ack request now (the event is on its way when this returns, before anything sent
    /// later), and returns the wait for the ack. Not serialised with [`Connection::request_raw`]: the caller
    /// keeps at most one such request in flight.
    async fn send_request(
        &self,
        name: &str,
        payload: Value,
    ) -> Result<impl std::future::Future<Output = Result<Value, Error>> + Send + 'static, Error> {
        self.send_request_with(name, payload, Vec::new()).await
    }

    /// [`Connection::send_request`] with binary attachments (the native client only).
    async fn send_request_with(
        &self,
        name: &str,
        payload: Value,
        attachments: Vec<Bytes>,
    ) -> Result<impl std::future::Future<Output = Result<Value, Error>> + Send + 'static, Error> {
        let rx = match &self.link {
            Link::Rs(client) => {
                let (tx, rx) = oneshot::channel();
                let tx = Arc::new(Mutex::new(Some(tx)));
                client
                    .emit_with_ack(name, payload, self.timeout, move |p: Payload, _| {
                        if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                            let _ = tx.send(first_value(p));
                        }
                        async {}.boxed()
                    })
                    .await
                    .map_err(|e| Error::Transport(e.to_string()))?;
                rx
            }
            Link::Native(n) => n
                .send(name, payload, attachments, true)
                .await?
                .ok_or_else(|| Error::Protocol("no ack channel".into()))?,
        };
        let (timeout, name) = (self.timeout, name.to_string());
        Ok(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(v)) => Ok(v),
                _ => Err(Error::Timeout(name)),
            }
        })
    }

    /// Sends `name` now, with binary `attachments` standing in for `{"_placeholder": true, "num": i}` in
    /// `payload` (the native transport only), and with `ack` returns the wait for the server's answer. Unlike
    /// [`Connection::request_raw`], requests are not serialised: on the native transport acks are matched by id,
    /// so any number may be in flight. Events sent after this returns arrive after this one.
    pub async fn send(
        &self,
        name: &str,
        payload: Value,
        attachments: Vec<Bytes>,
        ack: bool,
    ) -> Result<Option<impl std::future::Future<Output = Result<Value, Error>> + Send + 'static>, Error> {
        if !matches!(self.link, Link::Native(_)) {
            return Err(Error::Protocol("Connection::send needs the native transport".into()));
        }
        if ack {
            return Ok(Some(self.send_request_with(name, payload, attachments).await?));
        }
        if let Link::Native(n) = &self.link {
            n.send(name, payload, attachments, false).await?;
        }
        Ok(None)
    }

    /// Waits up to `timeout` for each later answer (instead of [`Options::timeout`], which bounds the connect).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Closes the connection, as [`Connection::disconnect`] does, through a shared reference.
    pub async fn close(&self) {
        self.link.disconnect().await;
    }

    /// Sends request `E` and returns its answer: the ack's value, or the server's refusal.
    pub async fn request<E: ClientEvent>(&self, payload: &E::Payload) -> Result<Result<E::Ack, ErrorBody>, Error> {
        let v = serde_json::to_value(payload).map_err(|e| Error::Protocol(e.to_string()))?;
        let answer = self.request_raw(E::NAME, v).await?;
        let reply: Reply<E::Ack> =
            serde_json::from_value(answer.clone()).map_err(|e| Error::Protocol(format!("{answer}: {e}")))?;
        Ok(reply.into_result())
    }

    /// Sends `name` without an ack.
    pub async fn emit_raw(&self, name: &str, payload: Value) -> Result<(), Error> {
        match &self.link {
            Link::Rs(client) => client.emit(name, payload).await.map_err(|e| Error::Transport(e.to_string())),
            Link::Native(n) => n.send(name, payload, Vec::new(), false).await.map(|_| ()),
        }
    }

    /// Sends event `E` without an ack.
    pub async fn emit<E: ClientEvent>(&self, payload: &E::Payload) -> Result<(), Error> {
        let v = serde_json::to_value(payload).map_err(|e| Error::Protocol(e.to_string()))?;
        self.emit_raw(E::NAME, v).await
    }

    /// Sends keystrokes. They travel as a JSON string (`rust_socketio` cannot put a binary attachment inside an
    /// object), so `data` must be UTF-8.
    pub async fn input(&self, terminal_id: &TerminalId, data: &str) -> Result<(), Error> {
        self.emit_raw(event::INPUT, serde_json::json!({ "terminalId": terminal_id, "data": data })).await
    }

    /// Sends bytes for a terminal's process, then with `eof` the end of its input (pipe terminals), in the
    /// connection's encoding: with [`DataEncoding::Binary`] only UTF-8 can be sent (a protocol error otherwise).
    /// With `acked`, waits for the server's ack, which comes once the bytes reached the process (one request at
    /// a time, as every request: a writer keeps a window by asking for an ack on one event of it, see the CLI's
    /// pipe). `offset`: where `data` starts
    /// in the terminal's input, so that a resend repeats nothing (see [`protocol::Input::offset`]).
    pub async fn send_input(
        &self,
        terminal_id: &TerminalId,
        data: &[u8],
        eof: bool,
        offset: Option<u64>,
        acked: bool,
    ) -> Result<Result<TerminalAck, ErrorBody>, Error> {
        let (payload, attachments) = self.input_payload(terminal_id, data, eof, offset)?;
        if !acked {
            match &self.link {
                Link::Native(n) => n.send(event::INPUT, payload, attachments, false).await.map(|_| ())?,
                Link::Rs(_) => self.emit_raw(event::INPUT, payload).await?,
            }
            return Ok(Ok(TerminalAck { terminal_id: terminal_id.clone() }));
        }
        let _one = self.requests.lock().await;
        let answer = self.send_request_with(event::INPUT, payload, attachments).await?.await?;
        let reply: Reply<TerminalAck> =
            serde_json::from_value(answer.clone()).map_err(|e| Error::Protocol(format!("{answer}: {e}")))?;
        Ok(reply.into_result())
    }

    /// Sends input asking for its ack, now, and returns the wait for the ack: input sent after this call
    /// returns arrives after it. One such wait at a time per connection (see [`Connection::send_request`]).
    pub async fn send_input_acked(
        &self,
        terminal_id: &TerminalId,
        data: &[u8],
        offset: Option<u64>,
    ) -> Result<impl std::future::Future<Output = Result<Result<TerminalAck, ErrorBody>, Error>> + Send + 'static, Error>
    {
        let (payload, attachments) = self.input_payload(terminal_id, data, false, offset)?;
        let answer = self.send_request_with(event::INPUT, payload, attachments).await?;
        Ok(async move {
            let answer = answer.await?;
            let reply: Reply<TerminalAck> =
                serde_json::from_value(answer.clone()).map_err(|e| Error::Protocol(format!("{answer}: {e}")))?;
            Ok(reply.into_result())
        })
    }

    fn input_payload(
        &self,
        terminal_id: &TerminalId,
        data: &[u8],
        eof: bool,
        offset: Option<u64>,
    ) -> Result<(Value, Vec<Bytes>), Error> {
        let mut attachments = Vec::new();
        let data = match (self.encoding, &self.link) {
            (DataEncoding::Base64, _) => Value::from(base64::engine::general_purpose::STANDARD.encode(data)),
            // The native client sends bytes as what they are: a binary attachment.
            (DataEncoding::Binary, Link::Native(_)) => {
                attachments.push(Bytes::copy_from_slice(data));
                crate::native::placeholder(0)
            }
            (DataEncoding::Binary, Link::Rs(_)) => Value::from(
                String::from_utf8(data.to_vec())
                    .map_err(|_| Error::Protocol("binary input needs the base64 encoding".into()))?,
            ),
        };
        let mut payload = serde_json::json!({ "terminalId": terminal_id, "data": data });
        if eof {
            payload["eof"] = true.into();
        }
        if let Some(offset) = offset {
            payload["offset"] = offset.into();
        }
        Ok((payload, attachments))
    }

    /// Acknowledges that `processed` bytes of a flow-controlled terminal's output were consumed.
    pub async fn ack_output(&self, terminal_id: &TerminalId, processed: u64) -> Result<(), Error> {
        let ack = protocol::OutputAck { terminal_id: terminal_id.clone(), processed };
        self.emit::<event::OutputAck>(&ack).await
    }

    /// The moment the next `output` of `terminal_id` arrives, and its bytes (it is also queued as usual).
    pub fn next_output(&self, terminal_id: &TerminalId) -> oneshot::Receiver<(Instant, Bytes)> {
        let (tx, rx) = oneshot::channel();
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).insert(terminal_id.clone(), tx);
        rx
    }

    /// Closes the connection (and never reconnects).
    pub async fn disconnect(self) {
        self.link.disconnect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangled_binary_output_is_recovered() {
        let o = mangled_output("output,{terminalId:t-0123abcd,offset:42,data:}", Bytes::from_static(b"hi")).unwrap();
        assert_eq!((o.terminal_id.0.as_str(), o.offset, &o.data.0[..]), ("t-0123abcd", 42, &b"hi"[..]));
        assert!(mangled_output("hello", Bytes::new()).is_none());
        assert!(mangled_output("exit,{terminalId:t-1}", Bytes::new()).is_none());
    }

    #[test]
    fn auth_carries_the_given_fields_only() {
        let mut o = Options::new("http://x", "tok");
        o.client_id = Some("c1".into());
        assert_eq!(o.auth(), serde_json::json!({"token": "tok", "clientId": "c1", "protocolVersion": 2}));
        o.protocol_version = None;
        o.token = None;
        assert_eq!(o.auth(), serde_json::json!({"clientId": "c1"}));
    }
}
