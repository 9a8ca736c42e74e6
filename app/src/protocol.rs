//! Porthole wire protocol, version [`PROTOCOL_VERSION`] (see `docs/protocol.md`).
//!
//! Socket.IO v5 over Engine.IO v4 on namespace `/`, plus a small JSON REST API. Event names, REST paths,
//! payload structs, error codes and limits are defined here once; nobody spells them elsewhere.
//! All JSON field names are camelCase. Unknown fields are ignored so newer clients can talk to older servers.
//!
//! Each event name is bound to its payload type once, by a marker type in [`event`] implementing
//! [`ClientEvent`] or [`ServerEvent`]: code that sends or handles events through those traits cannot pair an
//! event with the wrong payload.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of this protocol. Sent to every client in the `hello` event and by `GET /healthz`.
/// 2 added resumable terminals (`attach-terminal`, `offset` on `output`, grace periods).
pub const PROTOCOL_VERSION: u32 = 2;
/// Oldest protocol version the server still speaks. A client that does not announce a version in its
/// handshake `auth` is taken to speak version 1: its terminals end when its socket disconnects.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Longest accepted `clientId`, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;

mod recording;
mod sandbox;
pub use recording::*;
pub use sandbox::*;

/// Socket.IO namespace every event travels on.
pub const NAMESPACE: &str = "/";

/// Socket.IO event names.
pub mod event {
    /// Client -> server, with ack: open a terminal ([`super::StartTerminal`] -> [`super::TerminalStarted`]).
    pub const START_TERMINAL: &str = "start-terminal";
    /// Client -> server: keystrokes or pasted bytes for a terminal ([`super::Input`]).
    pub const INPUT: &str = "input";
    /// Client -> server: new tty size ([`super::Resize`]).
    pub const RESIZE: &str = "resize";
    /// Client -> server: bytes of a terminal's output the client has finished processing
    /// ([`super::OutputAck`]); only for terminals started with `flowControl`.
    pub const OUTPUT_ACK: &str = "output-ack";
    /// Client -> server, with ack: follow an existing terminal's output from an offset (resume, second
    /// window, shared viewing) ([`super::AttachTerminal`] -> [`super::TerminalAttached`]).
    pub const ATTACH_TERMINAL: &str = "attach-terminal";
    /// Client -> server, with ack: end a terminal ([`super::CloseTerminal`] -> [`super::TerminalClosed`]).
    pub const CLOSE_TERMINAL: &str = "close-terminal";
    /// Server -> client: bytes the terminal produced ([`super::Output`], `data` is a binary attachment).
    pub const OUTPUT: &str = "output";
    /// Server -> client: the terminal ended ([`super::Exit`]).
    pub const EXIT: &str = "exit";
    /// Server -> client: an `input` or `resize` failed ([`super::ErrorEvent`]). Not named `error`: several
    /// Socket.IO clients reserve that name for their own transport errors.
    pub const REQUEST_ERROR: &str = "request-error";
    /// Server -> client: how many sockets follow a terminal now, sent to each of them when it changes
    /// ([`super::TerminalViewers`]).
    pub const TERMINAL_VIEWERS: &str = "terminal-viewers";
    /// Server -> client, once on connect: protocol version and limits ([`super::Hello`]).
    pub const HELLO: &str = "hello";
    /// Server -> every client: a container was created, started, stopped, paused, renamed or removed
    /// ([`super::ContainersChanged`]); refresh the container list.
    pub const CONTAINERS_CHANGED: &str = "containers-changed";
    /// Server -> client: the socket's credential stopped being valid (expired, revoked, signed out)
    /// ([`super::ErrorBody`]); the server disconnects the socket right after.
    pub const AUTH_ERROR: &str = "auth-error";
    /// Client -> server, with ack: make a sandbox from a profile and open a terminal in it
    /// ([`super::CreateSandbox`] -> [`super::SandboxCreated`]).
    pub const CREATE_SANDBOX: &str = "create-sandbox";
    /// Client -> server, with ack: remove a sandbox, ending its terminals ([`super::RemoveSandbox`] -> the same).
    pub const REMOVE_SANDBOX: &str = "remove-sandbox";
    /// Client -> server, with ack: start a container ([`super::ContainerAction`] -> the same).
    pub const START_CONTAINER: &str = "start-container";
    /// Client -> server, with ack: stop a container ([`super::ContainerAction`] -> the same).
    pub const STOP_CONTAINER: &str = "stop-container";
    /// Client -> server, with ack: restart a container ([`super::ContainerAction`] -> the same).
    pub const RESTART_CONTAINER: &str = "restart-container";

    /// Binds a marker type to its event name and payload types.
    macro_rules! bind {
        ($(#[$doc:meta])* client $marker:ident = $name:ident: $payload:ty => $ack:ty) => {
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $marker;
            impl super::ClientEvent for $marker {
                const NAME: &'static str = $name;
                type Payload = $payload;
                type Ack = $ack;
            }
        };
        ($(#[$doc:meta])* server $marker:ident = $name:ident: $payload:ty) => {
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $marker;
            impl super::ServerEvent for $marker {
                const NAME: &'static str = $name;
                type Payload = $payload;
            }
        };
    }

    bind!(/** [`START_TERMINAL`]. */ client StartTerminal = START_TERMINAL: super::StartTerminal => super::TerminalStarted);
    bind!(/** [`INPUT`]; acked only when the client asks. */ client Input = INPUT: super::Input => super::TerminalAck);
    bind!(/** [`RESIZE`]; acked only when the client asks. */ client Resize = RESIZE: super::Resize => super::TerminalAck);
    bind!(/** [`OUTPUT_ACK`]; acked only when the client asks. */ client OutputAck = OUTPUT_ACK: super::OutputAck => super::TerminalAck);
    bind!(/** [`ATTACH_TERMINAL`]. */ client AttachTerminal = ATTACH_TERMINAL: super::AttachTerminal => super::TerminalAttached);
    bind!(/** [`CLOSE_TERMINAL`]. */ client CloseTerminal = CLOSE_TERMINAL: super::CloseTerminal => super::TerminalAck);
    bind!(/** [`CREATE_SANDBOX`]. */ client CreateSandbox = CREATE_SANDBOX: super::CreateSandbox => super::SandboxCreated);
    bind!(/** [`REMOVE_SANDBOX`]. */ client RemoveSandbox = REMOVE_SANDBOX: super::RemoveSandbox => super::RemoveSandbox);
    bind!(/** [`START_CONTAINER`]. */ client StartContainer = START_CONTAINER: super::ContainerAction => super::ContainerAction);
    bind!(/** [`STOP_CONTAINER`]. */ client StopContainer = STOP_CONTAINER: super::ContainerAction => super::ContainerAction);
    bind!(/** [`RESTART_CONTAINER`]. */ client RestartContainer = RESTART_CONTAINER: super::ContainerAction => super::ContainerAction);
    bind!(/** [`OUTPUT`]. */ server Output = OUTPUT: super::Output);
    bind!(/** [`EXIT`]. */ server Exit = EXIT: super::Exit);
    bind!(/** [`REQUEST_ERROR`]. */ server RequestError = REQUEST_ERROR: super::ErrorEvent);
    bind!(/** [`TERMINAL_VIEWERS`]. */ server TerminalViewers = TERMINAL_VIEWERS: super::TerminalViewers);
    bind!(/** [`HELLO`]. */ server Hello = HELLO: super::Hello);
    bind!(/** [`CONTAINERS_CHANGED`]. */ server ContainersChanged = CONTAINERS_CHANGED: super::ContainersChanged);
    bind!(/** [`AUTH_ERROR`]. */ server AuthError = AUTH_ERROR: super::ErrorBody);
}

/// An event a client sends, bound to its name and payload. Its ack, when the client asks for one (always for
/// `start-terminal`, `attach-terminal` and `close-terminal`), is a [`Reply`] of `Ack`.
pub trait ClientEvent {
    const NAME: &'static str;
    type Payload: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
    type Ack: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
}

/// An event the server sends, bound to its name and payload.
pub trait ServerEvent {
    const NAME: &'static str;
    type Payload: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
}

/// REST paths.
pub mod rest {
    /// `GET`: 200 when the Docker daemon answers ([`super::Health`]), 503 with an [`super::ErrorReply`] when not.
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: every container the daemon knows ([`super::ContainerSummary`] list).
    pub const CONTAINERS: &str = "/api/v1/containers";
    /// `GET`: every open terminal ([`super::TerminalInfo`] list).
    pub const TERMINALS: &str = "/api/v1/terminals";
    /// `GET` one terminal, `DELETE` (204) closes it. `{id}` is a [`super::TerminalId`].
    pub const TERMINAL: &str = "/api/v1/terminals/{id}";
    /// `POST {"token": "..."}`: exchanges a token for the session cookie (204 with `Set-Cookie`). Browsers
    /// may instead open any page with `?token=...`, which answers with the cookie and a redirect without it.
    pub const LOGIN: &str = "/api/v1/login";
    /// `POST`: ends the cookie's session (204, the cookie is cleared).
    pub const LOGOUT: &str = "/api/v1/logout";
    /// `GET`: who the credential belongs to ([`super::WhoAmI`]).
    pub const WHOAMI: &str = "/api/v1/whoami";
    /// `POST {"profile": "..."}`: 201 with a new [`super::Sandbox`]; `GET`: the caller's sandboxes (everyone's
    /// the policy lets them see).
    pub const SANDBOXES: &str = "/api/v1/sandboxes";
    /// `DELETE` (204): removes a sandbox, ending its terminals (`sandbox_removed`).
    pub const SANDBOX: &str = "/api/v1/sandboxes/{id}";
    /// `GET`: the profiles the caller may create ([`super::SandboxProfile`] list).
    pub const SANDBOX_PROFILES: &str = "/api/v1/sandbox-profiles";
    /// `POST` (204): starts a container.
    pub const CONTAINER_START: &str = "/api/v1/containers/{id}/start";
    /// `POST` (204): stops a container.
    pub const CONTAINER_STOP: &str = "/api/v1/containers/{id}/stop";
    /// `POST` (204): restarts a container.
    pub const CONTAINER_RESTART: &str = "/api/v1/containers/{id}/restart";
    /// `GET`: recordings the caller may see, newest first ([`super::Recording`] list; filters and paging in
    /// [`super::RecordingQuery`]).
    pub const RECORDINGS: &str = "/api/v1/recordings";
    /// `GET /api/v1/recordings/{id}` (metadata), `{id}.cast` (the asciicast file, `?follow=true` to stream a
    /// live one), `{id}.txt` (the transcript); `DELETE` (204) removes one (`recordings = "all"` only).
    pub const RECORDING: &str = "/api/v1/recordings/{file}";

    /// The concrete path of one terminal.
    pub fn terminal(id: &super::TerminalId) -> String {
        format!("{TERMINALS}/{}", id.0)
    }
}

/// Smallest accepted `cols`/`rows`.
pub const MIN_DIMENSION: u16 = 1;
/// Largest accepted `cols`/`rows`.
pub const MAX_DIMENSION: u16 = 1000;
/// Size used when `start-terminal` leaves `cols` out.
pub const DEFAULT_COLS: u16 = 80;
/// Size used when `start-terminal` leaves `rows` out.
pub const DEFAULT_ROWS: u16 = 24;
/// Longest accepted `containerId`, in bytes (a full id is 64 hex digits; names are shorter in practice).
pub const MAX_CONTAINER_REF_LEN: usize = 256;
/// `input` events carrying at least this many bytes of `data` do not count against the per-socket event rate:
/// their number is bounded by the bytes they carry, which each terminal's input queue bounds (so a pipe's
/// upload is not held to the event rate times the chunk size).
pub const BULK_INPUT_BYTES: usize = 16 * 1024;
/// Most arguments a `command` may have.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Longest single `command` argument, in bytes.
pub const MAX_COMMAND_ARG_LEN: usize = 4096;
/// Largest `data` of one `input` event, in bytes. Larger pastes must be split by the client.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Flow control: with this many output bytes sent but not acknowledged, the server stops reading the
/// terminal's process (its tty fills and the process blocks on write).
pub const FLOW_HIGH_WATERMARK: u64 = 512 * 1024;
/// Flow control: reading resumes once unacknowledged output is at or below this.
pub const FLOW_LOW_WATERMARK: u64 = 128 * 1024;

/// Whether a handshake `clientId` is well-formed: 1..=[`MAX_CLIENT_ID_LEN`] bytes of `[A-Za-z0-9_-]`.
pub fn client_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Who owns a terminal, as [`TerminalInfo::owner`] spells it: `client:<clientId>` for a client that sent a
/// well-formed `clientId` (its other sockets may resume the terminal), else `socket:<socket id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Client(String),
    Socket(String),
}

impl Owner {
    /// The owner for a socket `sid` that announced `client_id` (ignored unless [`client_id_ok`]).
    pub fn for_socket(client_id: Option<&str>, sid: &str) -> Owner {
        match client_id {
            Some(id) if client_id_ok(id) => Owner::Client(id.to_string()),
            _ => Owner::Socket(sid.to_string()),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Client(id) => write!(f, "client:{id}"),
            Owner::Socket(sid) => write!(f, "socket:{sid}"),
        }
    }
}

/// Identifies one terminal session; opaque to clients (currently `t-` and 32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct TerminalId(pub String);

impl fmt::Display for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Terminal bytes. Serialized as raw bytes (a Socket.IO binary attachment); deserialized from either a
/// binary attachment or a string (taken as its UTF-8 bytes), so clients may send keystrokes either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TerminalBytes(pub Bytes);

impl Serialize for TerminalBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for TerminalBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesOrString;
        impl<'de> serde::de::Visitor<'de> for BytesOrString {
            type Value = TerminalBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or binary data")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TerminalBytes(Bytes::copy_from_slice(v.as_bytes())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(TerminalBytes(Bytes::from(v.into_bytes())))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(TerminalBytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(TerminalBytes(Bytes::from(v)))
            }
        }
        // `deserialize_any` lets Socket.IO parsers hand over a binary attachment, and JSON a string.
        deserializer.deserialize_any(BytesOrString)
    }
}

/// `start-terminal` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTerminal {
    /// Container id, unique id prefix, or name.
    pub container_id: String,
    /// Columns, [`MIN_DIMENSION`]..=[`MAX_DIMENSION`]; [`DEFAULT_COLS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// Rows, [`MIN_DIMENSION`]..=[`MAX_DIMENSION`]; [`DEFAULT_ROWS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Program and arguments (no shell involved). Absent: the container's login shell, bash else sh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Opt in to output flow control: the client promises `output-ack` events, and the server keeps at
    /// most [`FLOW_HIGH_WATERMARK`] unacknowledged bytes in flight. Absent/false: no acks expected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flow_control: bool,
    /// Whether the process gets a tty (default true). `false` makes a pipe terminal, like `docker exec -i`
    /// without `-t`: stdout and stderr stay apart (`output.stream`), bytes pass unchanged both ways, `input`
    /// may end the process's stdin (`eof`), and there is no window size (`resize` is refused).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tty: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Successful `start-terminal` ack. The process is running in the container when this is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalStarted {
    pub terminal_id: TerminalId,
    /// The container's full id.
    pub container_id: String,
    /// The container's name, without Docker's leading `/`.
    pub container_name: String,
    /// The argv actually started (for the default shell: `["bash", "-l"]` or `["sh", "-l"]`).
    pub command: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    /// Whether output flow control is on (the client asked for it).
    #[serde(default)]
    pub flow_control: bool,
    /// Whether the process has a tty (false: a pipe terminal).
    #[serde(default = "yes")]
    pub tty: bool,
}

/// `input` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    pub terminal_id: TerminalId,
    /// At most [`MAX_INPUT_BYTES`]; may be empty.
    #[serde(default)]
    pub data: TerminalBytes,
    /// After `data`, close the process's stdin (end of input). Only for pipe terminals (`tty: false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
    /// Where `data` starts in the terminal's input: the bytes of input the server had accepted before it. Input
    /// the server already has is dropped (a resend after a reconnect repeats nothing); an `offset` beyond what
    /// it has is refused. Absent: appended as is. Meant for a terminal's only writer (a pipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Which of a pipe terminal's output streams bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output, and everything a tty produces.
    #[default]
    Stdout,
    /// Standard error of a pipe terminal.
    Stderr,
}

/// How `data` fields travel, chosen in the handshake (`auth.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataEncoding {
    /// `output` data is a binary attachment; `input` data a binary attachment or a UTF-8 string.
    #[default]
    Binary,
    /// Every `data`, both ways, is a base64 string (RFC 4648, with padding): for Socket.IO clients whose
    /// binary attachments are unreliable.
    Base64,
}

/// `resize` event. Both dimensions in [`MIN_DIMENSION`]..=[`MAX_DIMENSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resize {
    pub terminal_id: TerminalId,
    pub cols: u16,
    pub rows: u16,
}

/// `output-ack` event: the client has processed (e.g. xterm.js has parsed) the first `processed` bytes of the
/// terminal's output, counted from the start of the terminal. Cumulative, so a lost or repeated ack is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputAck {
    pub terminal_id: TerminalId,
    pub processed: u64,
}

/// `attach-terminal` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttachTerminal {
    pub terminal_id: TerminalId,
    /// Deliver output from this offset on (the offset after the last byte the client has). Absent: from the
    /// oldest byte the server still keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// As in `start-terminal`: this socket will send `output-ack`s for the terminal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flow_control: bool,
}

/// Successful `attach-terminal` ack. Then come `output` events from `offset` on, without gaps, then live
/// output, and `exit` when the terminal ends (at once, after the replay, if it has ended already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalAttached {
    pub terminal_id: TerminalId,
    pub container_id: String,
    pub container_name: String,
    pub command: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    pub flow_control: bool,
    /// Where the delivered output starts: `since`, or the oldest kept byte when `since` was older (or absent).
    pub offset: u64,
    /// Offset of the end of the output at the moment of attaching.
    pub end: u64,
    /// `since` was older than the oldest byte the server keeps: bytes `since..offset` are lost.
    pub truncated: bool,
    /// Whether the terminal had already ended (its `exit` follows the replay).
    pub ended: bool,
    /// This socket may only watch: its `input`, `resize` and `close-terminal` are refused with `view_only`.
    #[serde(default)]
    pub read_only: bool,
    /// Whether the process has a tty (false: a pipe terminal).
    #[serde(default = "yes")]
    pub tty: bool,
    /// Bytes of input the terminal has accepted so far (from every writer): where a resuming writer continues.
    #[serde(default)]
    pub input_offset: u64,
}

/// `terminal-viewers` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalViewers {
    pub terminal_id: TerminalId,
    /// Sockets attached now, this one included.
    pub attached: usize,
}

/// `close-terminal` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTerminal {
    pub terminal_id: TerminalId,
}

/// Successful `close-terminal` ack (and `input`/`resize` acks, when a client asks for one).
/// For `close-terminal` it is sent once no process of the terminal is left in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalAck {
    pub terminal_id: TerminalId,
}

/// `output` event: bytes exactly as the tty produced them, never re-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    pub terminal_id: TerminalId,
    /// Offset of `data`'s first byte in the terminal's output, counted from its first byte (0). Consecutive
    /// events of one terminal on one socket are contiguous: `offset` = previous `offset` + previous length.
    #[serde(default)]
    pub offset: u64,
    /// A Socket.IO binary attachment (a base64 string with `auth.encoding: "base64"`).
    pub data: TerminalBytes,
    /// `stderr` for a pipe terminal's standard error; absent for a tty's output and for stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<OutputStream>,
}

/// `output` on a socket that chose `auth.encoding: "base64"`: [`Output`] with `data` as a base64 string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputBase64 {
    pub terminal_id: TerminalId,
    #[serde(default)]
    pub offset: u64,
    /// The bytes, base64 (RFC 4648, with padding).
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<OutputStream>,
}

/// Why a terminal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The process ended by itself; `exitCode` is its status.
    Exited,
    /// The container stopped (or was killed, paused or removed) under the terminal.
    ContainerStopped,
    /// A client closed it (`close-terminal` or `DELETE /api/v1/terminals/{id}`).
    Closed,
    /// The Docker daemon stopped answering; the process is ended as soon as it is back.
    DockerUnavailable,
    /// The server is shutting down.
    ServerShutdown,
    /// The owning socket disconnected (only seen through the REST API's history, never by that socket).
    Disconnected,
    /// Nobody re-attached within the grace period after the last viewer left.
    Abandoned,
    /// Its sandbox was removed (`DELETE /api/v1/sandboxes/{id}`, `remove-sandbox`, the UI).
    SandboxRemoved,
    /// Its sandbox reached its idle timeout or its max lifetime.
    SandboxExpired,
    /// Its container was killed for running out of memory (Docker's `State.OOMKilled`).
    Oom,
    /// Cluster mode: the node that held it is gone (its directory lease expired and its peers cannot reach it).
    NodeLost,
}

impl ExitReason {
    /// The wire spelling, e.g. `container_stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Exited => "exited",
            ExitReason::ContainerStopped => "container_stopped",
            ExitReason::Closed => "closed",
            ExitReason::DockerUnavailable => "docker_unavailable",
            ExitReason::ServerShutdown => "server_shutdown",
            ExitReason::Disconnected => "disconnected",
            ExitReason::Abandoned => "abandoned",
            ExitReason::SandboxRemoved => "sandbox_removed",
            ExitReason::SandboxExpired => "sandbox_expired",
            ExitReason::Oom => "oom",
            ExitReason::NodeLost => "node_lost",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `exit` event. Sent once per terminal, after its last `output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub terminal_id: TerminalId,
    /// The process's exit status when Docker reports one, else `null`.
    pub exit_code: Option<i64>,
    pub reason: ExitReason,
}

/// Machine-readable error codes. Clients must treat unknown codes like `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is malformed: wrong types, missing fields, out-of-range values, too large.
    InvalidPayload,
    /// No container matches `containerId`.
    ContainerNotFound,
    /// A bare id, id prefix or name matches containers on more than one Docker host: name it as `HOST/REF`.
    AmbiguousContainer,
    /// The container exists but is not running (stopped, paused, restarting).
    ContainerNotRunning,
    /// The requested program (or, without `command`, any shell) does not exist in the container.
    CommandNotFound,
    /// The requested program exists in the container but cannot be executed (not executable, a directory).
    CommandNotExecutable,
    /// No terminal with this id belongs to this client.
    UnknownTerminal,
    /// The per-socket or server-wide terminal limit is reached.
    TooManyTerminals,
    /// The Docker daemon does not answer.
    DockerUnavailable,
    /// The terminal's input queue is full (the process is not reading); the input was dropped.
    InputOverflow,
    /// No such REST route.
    NotFound,
    /// No credential, or one that does not verify (bad signature, wrong issuer or audience, malformed).
    Unauthenticated,
    /// The credential has expired.
    TokenExpired,
    /// The credential was revoked or its session signed out.
    TokenRevoked,
    /// Too many failed sign-in attempts from this address; wait and retry.
    TooManyAuthFailures,
    /// The policy does not allow this (e.g. opening a terminal with view-only access).
    Forbidden,
    /// The policy's command allowlist does not include this command (or the default login shell).
    CommandNotAllowed,
    /// The terminal is attached read-only for this user: input, resize and close are refused.
    ViewOnly,
    /// The user's terminal quota (from the policy, or `--max-terminals-per-user`) is reached.
    QuotaExceeded,
    /// This socket sends more events per second than allowed; the event was dropped.
    RateLimited,
    /// The request's `Origin` is not this server's own or a configured one (cross-site request).
    OriginNotAllowed,
    /// A connection cap is reached: too many connections (or unauthenticated Socket.IO connections) from this
    /// address, or in total. Retry later.
    TooManyConnections,
    /// A Socket.IO connection did not sign in (complete its CONNECT) in time, or sent too much before it did.
    SignInTimeout,
    /// No sandbox profile of this name exists, or the caller may not use it (the same answer).
    UnknownProfile,
    /// The profile's image is not present on the Docker host (nothing is ever pulled).
    ImageNotFound,
    /// No recording with this id exists, or the caller may not see it (the same answer).
    UnknownRecording,
    /// The recording is still being written (it cannot be removed yet).
    RecordingInProgress,
    /// Cluster mode: the cluster directory (Redis) does not answer, so nothing that needs it (opening a
    /// terminal, reaching one on another node) can be done now. Terminals already open go on; retry later.
    ClusterUnavailable,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    /// The wire spelling, e.g. `container_not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::ContainerNotFound => "container_not_found",
            ErrorCode::AmbiguousContainer => "ambiguous_container",
            ErrorCode::ContainerNotRunning => "container_not_running",
            ErrorCode::CommandNotFound => "command_not_found",
            ErrorCode::CommandNotExecutable => "command_not_executable",
            ErrorCode::UnknownTerminal => "unknown_terminal",
            ErrorCode::TooManyTerminals => "too_many_terminals",
            ErrorCode::DockerUnavailable => "docker_unavailable",
            ErrorCode::InputOverflow => "input_overflow",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::TooManyAuthFailures => "too_many_auth_failures",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::CommandNotAllowed => "command_not_allowed",
            ErrorCode::ViewOnly => "view_only",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::SignInTimeout => "sign_in_timeout",
            ErrorCode::UnknownProfile => "unknown_profile",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::UnknownRecording => "unknown_recording",
            ErrorCode::RecordingInProgress => "recording_in_progress",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `{code, message}` inside every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// Human-readable; safe to show to the user.
    pub message: String,
}

/// `{"error": {code, message}}`: a failed ack, and the body of every REST error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { error: ErrorBody { code, message: message.into() } }
    }
}

/// An ack is either the success payload or an [`ErrorReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    Err(ErrorReply),
    Ok(T),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e.error),
        }
    }
}

impl<T> From<Result<T, ErrorBody>> for Reply<T> {
    fn from(r: Result<T, ErrorBody>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(error) => Reply::Err(ErrorReply { error }),
        }
    }
}

/// `request-error` event: an `input` or `resize` failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEvent {
    /// The event that failed, e.g. `input`.
    pub event: String,
    /// The terminal concerned, when the payload named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<TerminalId>,
    pub error: ErrorBody,
}

/// `hello` event, sent once right after the connection is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The newest version the server speaks.
    pub protocol_version: u32,
    /// The oldest version the server speaks.
    pub min_protocol_version: u32,
    /// The version this connection uses: the client's announced version, capped at the server's.
    pub negotiated_version: u32,
    /// Seconds a detached terminal keeps running (for protocol version 2 clients); 0: ended on disconnect.
    pub grace_period_secs: u64,
    /// Bytes of recent output kept per terminal for `attach-terminal`.
    pub output_log_bytes: usize,
    /// The server's version, e.g. `0.1.0`.
    pub server_version: String,
    /// How many terminals this client may hold at once: its `clientId` across all its sockets, or this socket
    /// when it sent none. (The field's name is older than client ids.)
    pub max_terminals_per_socket: usize,
    /// Largest `input` `data`, in bytes.
    pub max_input_bytes: usize,
    /// Who this socket is signed in as (the credential's subject).
    #[serde(default)]
    pub user: String,
}

/// The Socket.IO handshake `auth` payload a client may send (`io(url, { auth: { ... } })`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuth {
    /// The newest protocol version the client speaks; absent means 1.
    #[serde(default)]
    pub protocol_version: Option<u32>,
    /// A stable id for this client (e.g. one per browser profile), so its sockets share its terminals and
    /// limits. At most [`MAX_CLIENT_ID_LEN`] bytes of `[A-Za-z0-9_-]`. Absent: each socket is its own client.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The credential: the local access token, a session token or a JWT. Browsers leave it out and are
    /// authenticated by their session cookie; other clients may also send `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// How `data` fields travel on this socket; absent: binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<DataEncoding>,
}

/// `containers-changed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainersChanged {
    /// Full id of the container concerned.
    pub container_id: String,
    /// Docker's action word: `create`, `start`, `die`, `stop`, `pause`, `unpause`, `rename`, `restart`, `destroy`.
    pub action: String,
}

/// One container, as `GET /api/v1/containers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    /// Full id; with more than one Docker host, qualified by its host: `HOST/ID`.
    pub id: String,
    /// The Docker host it is on (`--docker-host NAME=URL`; `local` unless named).
    #[serde(default)]
    pub host: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    /// Docker's state word: `running`, `exited`, `paused`, `created`, `restarting`, `removing`, `dead`.
    pub state: String,
    /// Docker's human status, e.g. `Up 5 minutes`.
    pub status: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// The container's labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// When it is a sandbox: its profile, owner and lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    /// What the caller may do with it.
    #[serde(default)]
    pub rights: ContainerRights,
}

impl ContainerSummary {
    /// Whether `list` spans more than one Docker host (then a container is best named `HOST/NAME`).
    pub fn several_hosts(list: &[ContainerSummary]) -> bool {
        list.first().is_some_and(|first| list.iter().any(|c| c.host != first.host))
    }
}

/// `GET /api/v1/whoami` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub subject: String,
    pub groups: Vec<String>,
    /// When the credential expires, seconds since the Unix epoch; absent: it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `POST /api/v1/login` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub token: String,
}

/// Where a terminal is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalState {
    /// Its process runs and at least one socket is attached.
    Running,
    /// Its process runs, nobody is attached; it ends when the grace period runs out.
    Detached,
    /// Its process ended; kept for a while so a returning client can read the end of it.
    Exited,
}

/// One open terminal, as `GET /api/v1/terminals` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalInfo {
    pub terminal_id: TerminalId,
    /// Who owns it: `client:<clientId>` for clients that sent one, else `socket:<socket id>`.
    pub owner: String,
    /// The user (subject) who opened it.
    #[serde(default)]
    pub user: String,
    /// The container's id (`HOST/ID` with more than one Docker host, as in the container list).
    pub container_id: String,
    pub container_name: String,
    /// The Docker host the container is on.
    #[serde(default)]
    pub host: String,
    /// In cluster mode: the node that owns it (holds its exec stream). Absent when the server runs alone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    pub command: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Bytes the terminal has produced so far (also the offset of its output's end).
    pub bytes_out: u64,
    pub state: TerminalState,
    /// Sockets attached now.
    pub attached: usize,
    /// When detached: milliseconds left before it is ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_left_ms: Option<u64>,
    /// When exited: how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
}

/// `GET /healthz` body when healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub protocol_version: u32,
    /// The Docker Engine API version in use, e.g. `1.41`.
    pub docker_api_version: String,
}

/// Whether a `cols`/`rows` value is accepted.
pub fn dimension_ok(v: u16) -> bool {
    (MIN_DIMENSION..=MAX_DIMENSION).contains(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_terminal_is_camel_case_and_optional_fields_may_be_absent() {
        let v: StartTerminal = serde_json::from_str(r#"{"containerId":"web"}"#).unwrap();
        assert_eq!(
            v,
            StartTerminal {
                container_id: "web".into(),
                cols: None,
                rows: None,
                command: None,
                flow_control: false,
                tty: true
            }
        );
        let v: StartTerminal =
            serde_json::from_str(r#"{"containerId":"web","cols":120,"rows":40,"command":["ls","-l"],"x":1}"#).unwrap();
        assert_eq!(v.cols, Some(120));
        assert!(!v.flow_control);
        assert_eq!(v.command.as_deref(), Some(&["ls".to_string(), "-l".to_string()][..]));
        let v: StartTerminal = serde_json::from_str(r#"{"containerId":"web","flowControl":true}"#).unwrap();
        assert!(v.flow_control);
    }

    #[test]
    fn wrong_types_and_out_of_range_numbers_are_rejected() {
        assert!(serde_json::from_str::<StartTerminal>(r#"{"containerId":5}"#).is_err());
        assert!(serde_json::from_str::<StartTerminal>(r#"{}"#).is_err());
        assert!(serde_json::from_str::<Resize>(r#"{"terminalId":"t","cols":-1,"rows":2}"#).is_err());
        assert!(serde_json::from_str::<Resize>(r#"{"terminalId":"t","cols":70000,"rows":2}"#).is_err());
        assert!(!dimension_ok(0));
        assert!(dimension_ok(1));
        assert!(dimension_ok(1000));
        assert!(!dimension_ok(1001));
    }

    #[test]
    fn input_data_accepts_a_string_as_its_utf8_bytes() {
        let v: Input = serde_json::from_str(r#"{"terminalId":"t-1","data":"hé"}"#).unwrap();
        assert_eq!(v.data.0.as_ref(), "hé".as_bytes());
        assert!(serde_json::from_str::<Input>(r#"{"terminalId":"t-1","data":5}"#).is_err());
    }

    #[test]
    fn replies_are_either_the_value_or_an_error_object() {
        let err = serde_json::to_value(Reply::<TerminalAck>::Err(ErrorReply::new(
            ErrorCode::UnknownTerminal,
            "no such terminal",
        )))
        .unwrap();
        assert_eq!(err, serde_json::json!({"error": {"code": "unknown_terminal", "message": "no such terminal"}}));
        let ok: Reply<TerminalAck> = serde_json::from_str(r#"{"terminalId":"t-1"}"#).unwrap();
        assert_eq!(ok.into_result().unwrap().terminal_id, TerminalId("t-1".into()));
        let back: Reply<TerminalAck> = serde_json::from_value(err).unwrap();
        assert_eq!(back.into_result().unwrap_err().code, ErrorCode::UnknownTerminal);
    }

    #[test]
    fn exit_reasons_and_error_codes_serialize_as_documented() {
        for code in [
            ErrorCode::InvalidPayload,
            ErrorCode::ContainerNotFound,
            ErrorCode::AmbiguousContainer,
            ErrorCode::ContainerNotRunning,
            ErrorCode::CommandNotFound,
            ErrorCode::UnknownTerminal,
            ErrorCode::TooManyTerminals,
            ErrorCode::DockerUnavailable,
            ErrorCode::InputOverflow,
            ErrorCode::NotFound,
            ErrorCode::Unauthenticated,
            ErrorCode::TokenExpired,
            ErrorCode::TokenRevoked,
            ErrorCode::TooManyAuthFailures,
            ErrorCode::Forbidden,
            ErrorCode::CommandNotAllowed,
            ErrorCode::ViewOnly,
            ErrorCode::QuotaExceeded,
            ErrorCode::RateLimited,
            ErrorCode::OriginNotAllowed,
            ErrorCode::TooManyConnections,
            ErrorCode::SignInTimeout,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
        }
        for reason in [
            ExitReason::Exited,
            ExitReason::ContainerStopped,
            ExitReason::Closed,
            ExitReason::DockerUnavailable,
            ExitReason::ServerShutdown,
            ExitReason::Disconnected,
            ExitReason::Abandoned,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::json!(reason.as_str()));
        }
        let exit = Exit { terminal_id: TerminalId("t-1".into()), exit_code: None, reason: ExitReason::Closed };
        assert_eq!(
            serde_json::to_value(exit).unwrap(),
            serde_json::json!({"terminalId": "t-1", "exitCode": null, "reason": "closed"})
        );
    }

    #[test]
    fn owners_are_spelled_client_or_socket() {
        assert_eq!(Owner::for_socket(Some("tab-1_A"), "sid9").to_string(), "client:tab-1_A");
        assert_eq!(Owner::for_socket(None, "sid9").to_string(), "socket:sid9");
        for bad in ["", "a b", "a:b", "é", &"x".repeat(MAX_CLIENT_ID_LEN + 1)] {
            assert!(!client_id_ok(bad), "{bad:?}");
            assert_eq!(Owner::for_socket(Some(bad), "s").to_string(), "socket:s");
        }
        assert!(client_id_ok(&"x".repeat(MAX_CLIENT_ID_LEN)));
    }

    #[test]
    fn event_markers_carry_the_documented_names() {
        fn name<E: ClientEvent>() -> &'static str {
            E::NAME
        }
        fn server<E: ServerEvent>() -> &'static str {
            E::NAME
        }
        assert_eq!(name::<event::StartTerminal>(), "start-terminal");
        assert_eq!(name::<event::OutputAck>(), "output-ack");
        assert_eq!(server::<event::Output>(), "output");
        assert_eq!(server::<event::RequestError>(), "request-error");
    }
}
