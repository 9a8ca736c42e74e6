//! Terminal sessions: a process in a container with a tty, its event log, and the registry of open ones.
//!
//! Nothing here knows about Socket.IO or HTTP. One file per concern:
//! - [`log`]: the terminal's timestamped event log, and its two kinds of subscriber (viewers and taps);
//! - [`terminal`]: one terminal, its explicit lifecycle (`Running → Closing → Ended`) owned by one task;
//! - [`pumps`]: the byte pumps between the exec stream and the log (output) and the tty (input, resizes);
//! - [`viewer`]: delivery of the log to one attached socket, with flow control and backpressure;
//! - [`registry`]: the directory of terminals with the per-owner, per-user and total quotas, behind a trait;
//! - [`launch`]: checking a start request and starting the exec (default shells, waiting for a pid);
//! - [`exit`]: deciding why a terminal ended, given the container's lifecycle;
//! - [`reaper`]: ending every process a terminal started;
//! - [`sessions`]: the operations the service layer calls (start, attach, detach, close, shutdown).

pub mod exit;
pub mod launch;
pub mod log;
pub mod pumps;
pub mod reaper;
pub mod registry;
pub mod sessions;
pub mod terminal;
pub mod viewer;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::protocol::{Exit, TerminalId, TerminalInfo};
use bytes::Bytes;

pub use launch::no_such_container;
pub use pumps::{READ_CHUNK_BYTES, Written};
pub use sessions::{Prelaunched, Sessions};
pub use terminal::Terminal;

/// Who owns a terminal: the user who opened it, and their client ([`app::protocol::Owner`]) whose sockets may
/// resume it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerId {
    pub user: String,
    pub client: app::protocol::Owner,
}

/// Outcome of offering output to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Taken.
    Delivered,
    /// The receiver is congested; offer the same bytes again later. Reading from the container pauses meanwhile.
    Full,
    /// The receiver is gone; the bytes are dropped.
    Gone,
}

/// Where a viewer's output and exit go. Implemented by the transport.
pub trait TerminalSink: Send + Sync + 'static {
    /// `data` starts at `offset` in the terminal's output, and came from `stream`.
    fn output(&self, id: &TerminalId, offset: u64, data: &Bytes, stream: app::protocol::OutputStream) -> Offer;
    /// The number of attached viewers changed.
    fn viewers(&self, id: &TerminalId, attached: usize);
    fn exit(&self, exit: &Exit);
}

/// Limits and lifetimes of terminals.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Terminals one owner (client) may hold at once.
    pub per_client: usize,
    /// Terminals one user may hold at once, unless the policy says otherwise.
    pub per_user: usize,
    /// Terminals the whole server may hold at once.
    pub total: usize,
    /// How long a terminal keeps running with nobody attached (for clients of protocol version 2).
    pub grace: Duration,
    /// Bytes of recent events kept per terminal (also how far a tap may fall behind before it gets a gap).
    pub log_bytes: usize,
}

/// How a viewer attaches (see [`Sessions::attach`]).
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Deliver output from this offset (absent: the oldest kept byte).
    pub since: Option<u64>,
    /// The viewer acknowledges output (`output-ack`).
    pub flow_control: bool,
    /// The socket speaks protocol version 1: its leaving ends the terminal at once.
    pub ends_on_leave: bool,
    /// The viewer may only watch (reported in the ack; writes are refused by the service layer).
    pub read_only: bool,
    /// The user the viewer belongs to (named in the recording's attach and detach markers).
    pub user: String,
}

/// Identifies an attached viewer (a socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewerId(pub String);

/// Orders a terminal list oldest first.
pub fn sorted(mut list: Vec<TerminalInfo>) -> Vec<TerminalInfo> {
    list.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.terminal_id.cmp(&b.terminal_id)));
    list
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
