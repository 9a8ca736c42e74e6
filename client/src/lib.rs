//! `porthole-client`: Porthole's Rust client, typed by [`app::protocol`], on `rust_socketio`.
//!
//! - [`Connection`]: one Socket.IO connection: connect with a token (waiting for `hello` or the refusal),
//!   typed requests ([`Connection::request`]) and events ([`Connection::emit`]), and everything the server sends
//!   as [`Incoming`], in arrival order.
//! - [`Follower`]: the terminals a client follows and how far it has each; it drops repeated bytes after a
//!   resume, reports gaps, and says what to acknowledge ([`Follower::resume_requests`] re-attaches from there).
//!
//! Workarounds for `rust_socketio` 0.6 defects Porthole's use runs into (see `docs/architecture.md`):
//! - its reconnect loop ignores `disconnect()` (upstream #374) and would retry refused sign-ins: automatic
//!   reconnection is always off, and a client resumes by making a new [`Connection`];
//! - its ack ids are random in `0..999` and a reply resolves every request with the same id: one request is in
//!   flight per connection at a time, and each has a timeout;
//! - binary `output` events arrive with the JSON text as a mangled event name: the terminal id and offset are
//!   recovered from it;
//! - its WebSocket transport splits every binary frame at each byte 0x1e (it takes them for the polling
//!   transport's packet separator, `rust_engineio`'s `Payload` parser), so a binary attachment containing that
//!   byte breaks the connection: clients that receive arbitrary bytes (the CLI, pipes) choose
//!   [`app::protocol::DataEncoding::Base64`] in [`Options::encoding`], which the server then uses both ways.

mod connection;
mod follower;
mod native;

pub use connection::{Connection, Incoming, Options, Transport};
pub use follower::{Follower, Received};

/// What can go wrong talking to a server (refusals of a request are the request's `Err(ErrorBody)` instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server refused the connection: `<code>: <message>` as its `connect_error` said.
    #[error("refused: {0}")]
    Refused(String),
    /// The transport failed or the server could not be reached.
    #[error("transport: {0}")]
    Transport(String),
    /// No answer in time.
    #[error("no answer to {0} in time")]
    Timeout(String),
    /// The server's answer does not parse as the protocol says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    /// The error code of a refusal (`unauthenticated`, `too_many_connections`, ...), if it was one.
    pub fn refusal_code(&self) -> Option<&str> {
        match self {
            Error::Refused(m) => m.split_once(':').map(|(code, _)| code.trim()),
            _ => None,
        }
    }
}
