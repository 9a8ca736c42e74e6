//! Terminal sessions: a process in a container with a tty, its byte pumps, and the registry of open ones.
//!
//! Nothing here knows about Socket.IO or HTTP. A terminal's output goes into a bounded log with absolute
//! offsets; each attached viewer (a socket, through a [`TerminalSink`]) has its own cursor into that log and
//! its own task sending from it, so viewers can attach late, resume after a dropped connection from the offset
//! they had, and a slow viewer only slows this terminal. Input and resizes arrive through
//! [`Terminal::send_input`] / [`Terminal::send_resize`] in the order they are called and are applied by one task
//! per terminal, so bytes reach the tty in the order sent. A terminal outlives its viewers for a grace period.

pub mod reaper;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use app::protocol::{
    self, ErrorCode, Exit, ExitReason, StartTerminal, TerminalAttached, TerminalId, TerminalInfo, TerminalStarted,
    TerminalState,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::docker::{ContainerRuntime, ContainerTarget, ExecSpec, ExecStream, RuntimeError};
use crate::error::ServiceError;
use reaper::PendingReaps;

/// Bytes read from an exec stream at once; a flood leaves in chunks up to this size.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Smallest read buffer of an exec stream (an idle terminal's); it doubles while reads fill it.
pub const MIN_READ_BYTES: usize = 4 * 1024;
/// Input/resize events queued per terminal (not yet written to the tty) before `input_overflow` is reported.
pub const COMMAND_QUEUE_EVENTS: usize = 16 * 1024;
/// Input bytes queued per terminal before `input_overflow` is reported (a process that does not read).
pub const INPUT_QUEUE_BYTES: usize = 1024 * 1024;
/// Most queued input bytes joined into one write to the tty.
const INPUT_BATCH_BYTES: usize = 64 * 1024;
/// How long `close` waits for the process to end before cutting the stream loose.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// How long a started exec may take to be reported running by the daemon.
const START_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between retries when the sink is full (backpressure).
const MAX_SINK_BACKOFF: Duration = Duration::from_millis(20);
/// Container state checks (100 ms apart) after an exec ended as if killed, to tell a stopping container.
const CONTAINER_STOP_CHECKS: usize = 30;
/// How long shutdown waits for viewers to deliver the final `exit` events.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// Ended terminals kept (for clients returning to read how they ended), at most.
pub const MAX_ENDED_KEPT: usize = 256;
/// Ended terminals are kept at least this long, or the grace period if longer.
const MIN_ENDED_RETENTION: Duration = Duration::from_secs(60);
/// The login shells tried, in order, when `start-terminal` has no `command`.
const DEFAULT_SHELLS: [&[&str]; 2] = [&["bash", "-l"], &["sh", "-l"]];

/// Who owns a terminal: the user who opened it, and their client (`client:<id>`, or `socket:<sid>`) whose
/// sockets may resume it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerId {
    pub user: String,
    pub client: String,
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

/// Where a terminal's output and exit go. Implemented by the transport.
pub trait TerminalSink: Send + Sync + 'static {
    /// `data` starts at `offset` in the terminal's output.
    fn output(&self, id: &TerminalId, offset: u64, data: &Bytes) -> Offer;
    /// The number of attached viewers changed.
    fn viewers(&self, id: &TerminalId, attached: usize);
    fn exit(&self, exit: &Exit);
}

/// Limits and lifetimes of terminals.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Terminals one owner (client) may hold at once.
    pub per_owner: usize,
    /// Terminals one user may hold at once, unless the policy says otherwise.
    pub per_user: usize,
    /// Terminals the whole server may hold at once.
    pub total: usize,
    /// How long a terminal keeps running with nobody attached (for clients of protocol version 2).
    pub grace: Duration,
    /// Bytes of recent output kept per terminal.
    pub log_bytes: usize,
}

/// How a viewer attaches (see [`Sessions::attach`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// Deliver output from this offset (absent: the oldest kept byte).
    pub since: Option<u64>,
    /// The viewer acknowledges output (`output-ack`).
    pub flow_control: bool,
    /// A protocol version 1 client: its leaving ends the terminal at once.
    pub v1: bool,
    /// The viewer may only watch (reported in the ack; writes are refused by the service layer).
    pub read_only: bool,
}

/// Identifies an attached viewer (a socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewerId(pub String);

/// Recent output of a terminal with absolute offsets, bounded by `cap` bytes (the newest chunk always stays).
#[derive(Debug, Default)]
struct OutputLog {
    chunks: VecDeque<(u64, Bytes)>,
    start: u64,
    end: u64,
    bytes: usize,
    cap: usize,
}

impl OutputLog {
    fn push(&mut self, chunk: Bytes) {
        let len = chunk.len();
        self.chunks.push_back((self.end, chunk));
        self.end += len as u64;
        self.bytes += len;
        while self.bytes > self.cap && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
            self.start = self.chunks.front().map_or(self.end, |(o, _)| *o);
        }
    }

    /// Up to `max` bytes from `from` (moved up to the oldest kept byte), as `(offset, bytes)`.
    fn read(&self, from: u64, max: usize) -> Option<(u64, Bytes)> {
        let from = from.max(self.start);
        if from >= self.end {
            return None;
        }
        let first = self.chunks.partition_point(|(o, c)| o + c.len() as u64 <= from);
        let mut parts = Vec::new();
        let mut taken = 0usize;
        for (o, c) in self.chunks.iter().skip(first) {
            if taken >= max {
                break;
            }
            let skip = from.saturating_sub(*o) as usize;
            let part = c.slice(skip..c.len().min(skip + max - taken));
            taken += part.len();
            parts.push(part);
        }
        let data = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(taken);
            parts.iter().for_each(|p| joined.extend_from_slice(p));
            joined.freeze()
        };
        Some((from, data))
    }
}

/// One socket following a terminal.
struct Viewer {
    id: ViewerId,
    /// Next offset to send.
    cursor: AtomicU64,
    /// With flow control: the offset the client has processed up to.
    acked: Option<AtomicU64>,
    /// Ends this viewer's task (detach).
    stop: CancellationToken,
    /// A protocol version 1 client: its leaving ends the terminal at once.
    v1: bool,
    /// Where its output goes, once started.
    sink: Mutex<Option<Arc<dyn TerminalSink>>>,
}

impl Viewer {
    /// The offset this viewer holds the terminal back at.
    fn floor(&self) -> u64 {
        match &self.acked {
            Some(a) => a.load(Ordering::SeqCst),
            None => self.cursor.load(Ordering::SeqCst),
        }
    }
}

/// A viewer registered by [`Sessions::attach`], whose output starts flowing once [`Attachment::start`] is
/// called (after the transport has acknowledged the attach).
pub struct Attachment {
    terminal: Arc<Terminal>,
    viewer: Arc<Viewer>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment").field("terminal", &self.terminal.id).field("viewer", &self.viewer.id).finish()
    }
}

impl Attachment {
    pub fn start(self, sink: Arc<dyn TerminalSink>) {
        *self.viewer.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink.clone());
        self.terminal.announce_viewers();
        let span = tracing::info_span!("viewer", terminal = %self.terminal.id, viewer = %self.viewer.id.0);
        tokio::spawn(viewer_pump(self.terminal, self.viewer, sink).instrument(span));
    }
}

enum Command {
    Input(Bytes),
    Resize(u16, u16),
}

impl Command {
    fn bytes(&self) -> usize {
        match self {
            Command::Input(b) => b.len(),
            Command::Resize(..) => 0,
        }
    }
}

/// One open terminal.
pub struct Terminal {
    id: TerminalId,
    owner: OwnerId,
    container_id: String,
    container_name: String,
    /// The container's labels when the terminal started (the policy matches on them).
    labels: std::collections::BTreeMap<String, String>,
    command: Vec<String>,
    exec_id: String,
    started_at_ms: u64,
    size: Mutex<(u16, u16)>,
    commands: mpsc::UnboundedSender<Command>,
    /// Events and input bytes in `commands`, bounded by [`COMMAND_QUEUE_EVENTS`] and [`INPUT_QUEUE_BYTES`].
    queued_events: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Recent output; `end_tx` carries its end offset to waiting viewers.
    log: Mutex<OutputLog>,
    end_tx: watch::Sender<u64>,
    /// Set once the process ended (after the last byte was logged).
    exit_tx: watch::Sender<Option<Exit>>,
    viewers: Mutex<HashMap<ViewerId, Arc<Viewer>>>,
    /// Notified when a viewer advances, acknowledges, attaches or leaves (the read pump may resume).
    progress: Notify,
    /// When the last viewer left, and which detach that was (a later attach or detach invalidates its timer).
    detached: Mutex<Option<(Instant, u64)>>,
    detach_epoch: AtomicU64,
    /// Flow control was asked for at start (reported in the start ack).
    flow_control: bool,
    /// Set once, by whoever decides why the terminal ends before its process does.
    close_reason: Mutex<Option<ExitReason>>,
    /// Cancelled to stop both pumps (after the process is gone, or when the stream hangs).
    stop: CancellationToken,
    /// Cancelled when the process has ended and its exit is known.
    finished: CancellationToken,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal").field("id", &self.id).field("container", &self.container_name).finish()
    }
}

impl Terminal {
    fn viewers(&self) -> std::sync::MutexGuard<'_, HashMap<ViewerId, Arc<Viewer>>> {
        self.viewers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, OutputLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user who opened it.
    pub fn user(&self) -> &str {
        &self.owner.user
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn container_name(&self) -> &str {
        &self.container_name
    }

    pub fn labels(&self) -> &std::collections::BTreeMap<String, String> {
        &self.labels
    }

    pub fn command(&self) -> &[String] {
        &self.command
    }

    pub fn id(&self) -> &TerminalId {
        &self.id
    }

    /// Whether `viewer` is attached (only attached sockets may write, resize or close).
    pub fn is_attached(&self, viewer: &ViewerId) -> bool {
        self.viewers().contains_key(viewer)
    }

    pub fn has_ended(&self) -> bool {
        self.exit_tx.borrow().is_some()
    }

    /// Tells every started viewer how many are attached.
    fn announce_viewers(&self) {
        let viewers: Vec<_> = self.viewers().values().cloned().collect();
        let attached = viewers.len();
        for v in viewers {
            if let Some(sink) = v.sink.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                sink.viewers(&self.id, attached);
            }
        }
    }

    /// How far the slowest viewer is behind the end of the output (0 with nobody attached).
    fn lag(&self) -> u64 {
        let end = self.log().end;
        self.viewers().values().map(|v| end.saturating_sub(v.floor())).max().unwrap_or(0)
    }

    /// Queues bytes for the tty. Never waits: ordering is the order of calls.
    pub fn send_input(&self, data: Bytes) -> Result<(), ServiceError> {
        if data.len() > protocol::MAX_INPUT_BYTES {
            return Err(ServiceError::invalid(format!(
                "input data is {} bytes; the limit is {} per event",
                data.len(),
                protocol::MAX_INPUT_BYTES
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.queue(Command::Input(data))
    }

    /// Queues a tty resize, applied in order with input.
    pub fn send_resize(&self, cols: u16, rows: u16) -> Result<(), ServiceError> {
        check_size(cols, rows)?;
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) = (cols, rows);
        self.queue(Command::Resize(cols, rows))
    }

    fn queue(&self, command: Command) -> Result<(), ServiceError> {
        let bytes = command.bytes();
        // Only this socket's handler adds to a terminal's queue, and it does so synchronously, so the check
        // and the add cannot interleave with another add.
        if self.queued_events.load(Ordering::SeqCst) >= COMMAND_QUEUE_EVENTS
            || self.queued_bytes.load(Ordering::SeqCst) + bytes > INPUT_QUEUE_BYTES
        {
            return Err(ServiceError::new(
                ErrorCode::InputOverflow,
                format!(
                    "terminal {} is not reading its input ({} bytes queued, limit {INPUT_QUEUE_BYTES}); input dropped",
                    self.id,
                    self.queued_bytes.load(Ordering::SeqCst)
                ),
            ));
        }
        self.queued_events.fetch_add(1, Ordering::SeqCst);
        self.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.commands.send(command).map_err(|_| ServiceError::unknown_terminal(&self.id))
    }

    /// Called by the write pump once a command left the queue.
    fn dequeued(&self, events: usize, bytes: usize) {
        self.queued_events.fetch_sub(events, Ordering::SeqCst);
        self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Records that `viewer` has processed the terminal's output up to offset `processed` (cumulative).
    pub fn ack_output(&self, viewer: &ViewerId, processed: u64) -> Result<(), ServiceError> {
        let v = self.viewers().get(viewer).cloned().ok_or_else(|| ServiceError::unknown_terminal(&self.id))?;
        let Some(acked) = &v.acked else {
            return Err(ServiceError::invalid(format!(
                "terminal {} was not started or attached with flowControl",
                self.id
            )));
        };
        let sent = v.cursor.load(Ordering::SeqCst);
        if processed > sent {
            return Err(ServiceError::invalid(format!(
                "output-ack acknowledges offset {processed} but only {sent} was sent"
            )));
        }
        // Acks may arrive out of order or twice: keep the highest.
        acked.fetch_max(processed, Ordering::SeqCst);
        self.progress.notify_waiters();
        Ok(())
    }

    /// Its state for the REST view, given the grace period.
    pub fn info_with(&self, grace: Duration) -> TerminalInfo {
        let (cols, rows) = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        let attached = self.viewers().len();
        let exit = self.exit_tx.borrow().clone();
        let detached = *self.detached.lock().unwrap_or_else(|e| e.into_inner());
        let (state, grace_left_ms) = match (&exit, attached, detached) {
            (Some(_), _, _) => (TerminalState::Exited, None),
            (None, 0, Some((since, _))) => {
                (TerminalState::Detached, Some(grace.saturating_sub(since.elapsed()).as_millis() as u64))
            }
            (None, 0, None) => (TerminalState::Detached, None),
            _ => (TerminalState::Running, None),
        };
        TerminalInfo {
            terminal_id: self.id.clone(),
            owner: self.owner.client.clone(),
            user: self.owner.user.clone(),
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            command: self.command.clone(),
            cols,
            rows,
            started_at_ms: self.started_at_ms,
            bytes_out: self.log().end,
            state,
            attached,
            grace_left_ms,
            exit,
        }
    }

    fn started(&self) -> TerminalStarted {
        let (cols, rows) = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        TerminalStarted {
            terminal_id: self.id.clone(),
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            command: self.command.clone(),
            cols,
            rows,
            flow_control: self.flow_control,
        }
    }

    /// Records why the terminal is ending; false when a reason was already set.
    fn mark_closing(&self, reason: ExitReason) -> bool {
        let mut r = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        true
    }

    fn close_reason(&self) -> Option<ExitReason> {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_size(cols: u16, rows: u16) -> Result<(), ServiceError> {
    if protocol::dimension_ok(cols) && protocol::dimension_ok(rows) {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!(
            "cols and rows must be {}..={}, got {cols}x{rows}",
            protocol::MIN_DIMENSION,
            protocol::MAX_DIMENSION
        )))
    }
}

/// Checks a container reference before it goes into an Engine API URL path.
fn check_container_ref(r: &str) -> Result<(), ServiceError> {
    let name = r.strip_prefix('/').unwrap_or(r);
    let valid = !name.is_empty()
        && r.len() <= protocol::MAX_CONTAINER_REF_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!(
            "containerId must be a container id, id prefix or name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most {} bytes)",
            protocol::MAX_CONTAINER_REF_LEN
        )))
    }
}

/// The answer for a container that does not exist, or that the caller may not see (the same, so that names
/// cannot be probed).
pub fn no_such_container(container_ref: &str) -> ServiceError {
    ServiceError::new(ErrorCode::ContainerNotFound, format!("no container matches {container_ref:?}"))
}

fn check_command(cmd: &[String]) -> Result<(), ServiceError> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(ServiceError::invalid("command must name a program: a non-empty array of strings"));
    }
    if cmd.len() > protocol::MAX_COMMAND_ARGS {
        return Err(ServiceError::invalid(format!("command has more than {} arguments", protocol::MAX_COMMAND_ARGS)));
    }
    if cmd.iter().any(|a| a.len() > protocol::MAX_COMMAND_ARG_LEN || a.contains('\0')) {
        return Err(ServiceError::invalid(format!(
            "command arguments must be at most {} bytes and contain no NUL",
            protocol::MAX_COMMAND_ARG_LEN
        )));
    }
    Ok(())
}

/// Orders a terminal list oldest first.
pub fn sorted(mut list: Vec<TerminalInfo>) -> Vec<TerminalInfo> {
    list.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.terminal_id.cmp(&b.terminal_id)));
    list
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Default)]
struct Registry {
    /// Running terminals and, for a while, ended ones.
    terminals: HashMap<TerminalId, Arc<Terminal>>,
    /// Ids of the running ones (each holds a slot in the counts below).
    running: std::collections::HashSet<TerminalId>,
    /// Ended terminals still listed, oldest first.
    ended: VecDeque<TerminalId>,
    /// Open plus starting terminals per owner.
    per_owner: HashMap<OwnerId, usize>,
    /// Open plus starting terminals per user.
    per_user: HashMap<String, usize>,
    /// Open plus starting terminals in all.
    total: usize,
}

impl Registry {
    /// Gives back one slot of `owner` (a terminal that ended, or a start that failed).
    fn release(&mut self, owner: &OwnerId) {
        count_down(&mut self.per_owner, owner);
        count_down(&mut self.per_user, &owner.user);
        self.total = self.total.saturating_sub(1);
    }
}

/// Takes one from `key`'s count, forgetting the key at zero (the maps stay as small as what is open).
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A slot counted against the limits while a terminal starts; given back on drop unless kept.
struct Reservation<'a> {
    sessions: &'a Sessions,
    owner: OwnerId,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.sessions.release(&self.owner);
        }
    }
}

/// All open terminals, the limits on them, and the runtime they run on.
pub struct Sessions {
    self_ref: std::sync::Weak<Sessions>,
    runtime: Arc<dyn ContainerRuntime>,
    limits: Limits,
    registry: Mutex<Registry>,
    pending_reaps: PendingReaps,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Size and options a terminal is opened with.
#[derive(Debug, Clone, Copy)]
struct TtySettings {
    cols: u16,
    rows: u16,
    flow_control: bool,
}

/// How a started exec turned out.
enum Launch {
    Running(ExecStream),
    NotFound(String),
}

impl Sessions {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, limits: Limits) -> Arc<Sessions> {
        let sessions = Arc::new_cyclic(|weak| Sessions {
            self_ref: weak.clone(),
            runtime,
            limits,
            registry: Mutex::new(Registry::default()),
            pending_reaps: PendingReaps::default(),
            shutting_down: AtomicBool::new(false),
        });
        // Retries reaps that failed while the daemon was away. Holds only a weak reference.
        let weak = Arc::downgrade(&sessions);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(reaper::RETRY_INTERVAL).await;
                let Some(s) = weak.upgrade() else { break };
                if !s.pending_reaps.is_empty() {
                    s.pending_reaps.retry(s.runtime.as_ref()).await;
                }
            }
        });
        sessions
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reserve(&self, owner: &OwnerId, user_quota: Option<usize>) -> Result<Reservation<'_>, ServiceError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ServiceError::new(ErrorCode::Internal, "the server is shutting down"));
        }
        let mut reg = self.registry();
        let mine = reg.per_owner.get(owner).copied().unwrap_or(0);
        if mine >= self.limits.per_owner {
            return Err(ServiceError::new(
                ErrorCode::TooManyTerminals,
                format!("this connection already has {mine} terminals open (limit {})", self.limits.per_owner),
            ));
        }
        let quota = user_quota.unwrap_or(self.limits.per_user);
        let theirs = reg.per_user.get(&owner.user).copied().unwrap_or(0);
        if theirs >= quota {
            return Err(ServiceError::new(
                ErrorCode::QuotaExceeded,
                format!("user {} already has {theirs} terminals open (quota {quota})", owner.user),
            ));
        }
        if reg.total >= self.limits.total {
            return Err(ServiceError::new(
                ErrorCode::TooManyTerminals,
                format!("the server has {} terminals open (limit {})", reg.total, self.limits.total),
            ));
        }
        *reg.per_owner.entry(owner.clone()).or_default() += 1;
        *reg.per_user.entry(owner.user.clone()).or_default() += 1;
        reg.total += 1;
        Ok(Reservation { sessions: self, owner: owner.clone(), kept: false })
    }

    fn release(&self, owner: &OwnerId) {
        self.registry().release(owner);
    }

    /// Checks a `start-terminal` request's fields (before any Docker work).
    pub fn check_start(req: &StartTerminal) -> Result<(), ServiceError> {
        check_container_ref(&req.container_id)?;
        check_size(req.cols.unwrap_or(protocol::DEFAULT_COLS), req.rows.unwrap_or(protocol::DEFAULT_ROWS))?;
        if let Some(cmd) = &req.command {
            check_command(cmd)?;
        }
        Ok(())
    }

    /// Finds the container a request names (an id, id prefix or name, checked first).
    pub async fn resolve(&self, container_ref: &str) -> Result<ContainerTarget, ServiceError> {
        check_container_ref(container_ref)?;
        let name = container_ref.strip_prefix('/').unwrap_or(container_ref);
        self.runtime.resolve(name).await.map_err(|e| match e {
            RuntimeError::NotFound(_) => no_such_container(container_ref),
            other => ServiceError::from_runtime(other),
        })
    }

    /// Opens a terminal in `target` (resolved and authorized by the caller). Its output is kept from the first
    /// byte; viewers follow it with [`Sessions::attach`]. `user_quota` overrides the per-user limit.
    pub async fn start(
        self: &Arc<Self>,
        owner: &OwnerId,
        target: ContainerTarget,
        req: StartTerminal,
        user_quota: Option<usize>,
    ) -> Result<(Arc<Terminal>, TerminalStarted), ServiceError> {
        Sessions::check_start(&req)?;
        let flow_control = req.flow_control;
        let cols = req.cols.unwrap_or(protocol::DEFAULT_COLS);
        let rows = req.rows.unwrap_or(protocol::DEFAULT_ROWS);
        let candidates: Vec<Vec<String>> = match req.command {
            Some(cmd) => vec![cmd],
            None => DEFAULT_SHELLS.iter().map(|c| c.iter().map(|s| s.to_string()).collect()).collect(),
        };
        let mut reservation = self.reserve(owner, user_quota)?;
        if !target.accepts_exec {
            return Err(not_running(&target));
        }

        let id = TerminalId(format!("t-{}", uuid::Uuid::new_v4().simple()));
        let mut tried = Vec::new();
        for cmd in candidates {
            let spec = ExecSpec {
                cmd: cmd.clone(),
                env: vec![reaper::marker(&id), "TERM=xterm-256color".into(), "COLORTERM=truecolor".into()],
                user: None,
                tty: true,
            };
            match self.launch(&target, &spec, &id).await? {
                Launch::NotFound(why) => {
                    tracing::debug!(container = %target.name, command = ?cmd, %why, "command not found");
                    tried.push(cmd[0].clone());
                }
                Launch::Running(stream) => {
                    reservation.kept = true;
                    let tty = TtySettings { cols, rows, flow_control };
                    let terminal = self.open(id, owner.clone(), target, cmd, stream, tty);
                    if self.shutting_down.load(Ordering::SeqCst) {
                        // Shutdown began while this terminal started, after it took its list: end it too.
                        let _ = self.close(&terminal, ExitReason::ServerShutdown).await;
                        return Err(ServiceError::new(ErrorCode::Internal, "the server is shutting down"));
                    }
                    let started = terminal.started();
                    return Ok((terminal, started));
                }
            }
        }
        Err(ServiceError::new(
            ErrorCode::CommandNotFound,
            format!("{} not found in container {}", tried.join(", no "), target.name),
        ))
    }

    /// Starts an exec and waits until the daemon reports its process started (or could not).
    async fn launch(&self, target: &ContainerTarget, spec: &ExecSpec, id: &TerminalId) -> Result<Launch, ServiceError> {
        let result = self.launch_inner(target, spec).await;
        if result.is_err() {
            // The daemon may have started the process although it did not say so in time: end it.
            let (runtime, container, id) = (self.runtime.clone(), target.id.clone(), id.clone());
            let pending = self.pending_reaps.clone();
            tokio::spawn(async move {
                if let Err(RuntimeError::Unavailable(_)) = reaper::reap(runtime.as_ref(), &container, &id).await {
                    pending.push(container, id);
                }
            });
        }
        result
    }

    async fn launch_inner(&self, target: &ContainerTarget, spec: &ExecSpec) -> Result<Launch, ServiceError> {
        let stream = self.runtime.start_exec(&target.id, spec).await.map_err(|e| self.start_error(target, e))?;
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let status = self.runtime.inspect_exec(&stream.exec_id).await.map_err(|e| self.start_error(target, e))?;
            // The daemon marks an exec running before the runtime has started it; only a pid proves it started.
            if status.pid > 0 {
                return Ok(Launch::Running(stream));
            }
            if let Some(code) = status.exit_code {
                // The runtime could not start the process at all (no pid): 126/127 mean not found / not executable.
                let mut out = Vec::new();
                let mut output = stream.output;
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), (&mut output).take(4096).read_to_end(&mut out)).await;
                let why = String::from_utf8_lossy(&out).trim().to_string();
                if code == 126 || code == 127 {
                    return Ok(Launch::NotFound(why));
                }
                return Err(ServiceError::new(ErrorCode::Internal, format!("the process did not start: {why}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::new(ErrorCode::Internal, "the daemon did not start the process in time"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn start_error(&self, target: &ContainerTarget, e: RuntimeError) -> ServiceError {
        match e {
            // The container stopped between inspect and exec.
            RuntimeError::Conflict(m) => ServiceError::new(
                ErrorCode::ContainerNotRunning,
                format!("container {} is not running: {m}", target.name),
            ),
            RuntimeError::NotFound(_) => {
                ServiceError::new(ErrorCode::ContainerNotFound, format!("container {} no longer exists", target.name))
            }
            other => ServiceError::from_runtime(other),
        }
    }

    fn open(
        self: &Arc<Self>,
        id: TerminalId,
        owner: OwnerId,
        target: ContainerTarget,
        command: Vec<String>,
        stream: ExecStream,
        tty: TtySettings,
    ) -> Arc<Terminal> {
        let TtySettings { cols, rows, flow_control } = tty;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let terminal = Arc::new(Terminal {
            id: id.clone(),
            owner,
            container_id: target.id.clone(),
            container_name: target.name.clone(),
            labels: target.labels.clone(),
            command,
            exec_id: stream.exec_id.clone(),
            started_at_ms: now_ms(),
            size: Mutex::new((cols, rows)),
            commands,
            queued_events: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            log: Mutex::new(OutputLog { cap: self.limits.log_bytes.max(1), ..OutputLog::default() }),
            end_tx: watch::channel(0).0,
            exit_tx: watch::channel(None).0,
            viewers: Mutex::new(HashMap::new()),
            progress: Notify::new(),
            detached: Mutex::new(None),
            detach_epoch: AtomicU64::new(0),
            flow_control,
            close_reason: Mutex::new(None),
            stop: CancellationToken::new(),
            finished: CancellationToken::new(),
        });
        {
            let mut reg = self.registry();
            reg.terminals.insert(id.clone(), terminal.clone());
            reg.running.insert(id.clone());
        }
        let span = tracing::info_span!("terminal", terminal = %id, container = %target.name, exec = %stream.exec_id);
        tracing::info!(parent: &span, command = ?terminal.command, cols, rows, "terminal started");
        // The first command applies the requested size; input and later resizes queue behind it.
        let _ = terminal.queue(Command::Resize(cols, rows));
        let ExecStream { output, input, .. } = stream;
        tokio::spawn(write_pump(self.runtime.clone(), terminal.clone(), input, command_rx).instrument(span.clone()));
        tokio::spawn(self.clone().read_pump(terminal.clone(), output).instrument(span));
        terminal
    }

    /// Moves output from the exec stream into the terminal's log; when the stream ends, works out why and
    /// records the exit. Reading pauses while the slowest attached viewer is more than
    /// [`protocol::FLOW_HIGH_WATERMARK`] behind (until it is within [`protocol::FLOW_LOW_WATERMARK`]): the tty
    /// then fills and the process blocks. With nobody attached it reads on, and the log keeps the newest bytes.
    async fn read_pump(
        self: Arc<Self>,
        terminal: Arc<Terminal>,
        mut output: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    ) {
        let mut stream_error = None;
        // The read buffer grows while reads fill it (a flood) and starts small, so an idle terminal holds
        // [`MIN_READ_BYTES`], not [`READ_CHUNK_BYTES`].
        let mut want = MIN_READ_BYTES;
        let mut buf = BytesMut::with_capacity(want);
        // An attached viewer must never fall off the log: with a small log, pause earlier.
        let cap = terminal.log().cap as u64;
        let high = protocol::FLOW_HIGH_WATERMARK.min(cap / 2);
        let low = protocol::FLOW_LOW_WATERMARK.min(high / 4);
        'reading: loop {
            if terminal.lag() > high {
                loop {
                    let progressed = terminal.progress.notified();
                    tokio::pin!(progressed);
                    progressed.as_mut().enable();
                    if terminal.lag() <= low {
                        break;
                    }
                    tokio::select! {
                        _ = progressed => {}
                        _ = terminal.stop.cancelled() => break 'reading,
                    }
                }
            }
            buf.reserve(want);
            let n = tokio::select! {
                r = output.read_buf(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => { stream_error = Some(e.to_string()); 0 }
                },
                _ = terminal.stop.cancelled() => 0,
            };
            if n == 0 {
                break;
            }
            let chunk = if n * 2 >= buf.capacity() {
                // Mostly full: hand the allocation over as is, and read more at once next time.
                if n == buf.capacity() {
                    want = (want * 2).min(READ_CHUNK_BYTES);
                }
                buf.split().freeze()
            } else {
                // A small read (a keystroke's echo): copy it out, so the log never pins a mostly empty buffer,
                // and keep the buffer for the next read.
                let chunk = Bytes::copy_from_slice(&buf);
                if n * 8 < want {
                    want = (want / 2).max(MIN_READ_BYTES);
                }
                if buf.capacity() > 2 * want {
                    // The flood is over: give the big buffer back.
                    buf = BytesMut::with_capacity(want);
                } else {
                    buf.clear();
                }
                chunk
            };
            let end = {
                let mut log = terminal.log();
                log.push(chunk);
                log.end
            };
            terminal.end_tx.send_replace(end);
        }
        drop(output);
        let (exit_code, reason) = self.exit_cause(&terminal, stream_error).await;
        terminal.stop.cancel();
        let exit = Exit { terminal_id: terminal.id.clone(), exit_code, reason };
        tracing::info!(?exit_code, %reason, bytes_out = terminal.log().end, "terminal ended");
        self.ended(&terminal, exit);
    }

    /// Records the exit (viewers deliver it after the last output) and frees the terminal's slot. The
    /// terminal stays listed as exited for a while, unless a client closed it.
    fn ended(&self, terminal: &Arc<Terminal>, exit: Exit) {
        let reason = exit.reason;
        terminal.exit_tx.send_replace(Some(exit));
        {
            let mut reg = self.registry();
            if reg.running.remove(&terminal.id) {
                reg.release(&terminal.owner);
            }
            if reason == ExitReason::Closed {
                reg.terminals.remove(&terminal.id);
            } else {
                reg.ended.push_back(terminal.id.clone());
                // Bounded history: forget the oldest ended terminals first.
                while reg.ended.len() > MAX_ENDED_KEPT {
                    if let Some(old) = reg.ended.pop_front() {
                        reg.terminals.remove(&old);
                    }
                }
            }
        }
        terminal.finished.cancel();
        let retention = self.limits.grace.max(MIN_ENDED_RETENTION);
        let (weak, id) = (self.self_ref.clone(), terminal.id.clone());
        if reason != ExitReason::Closed {
            tokio::spawn(async move {
                tokio::time::sleep(retention).await;
                if let Some(sessions) = weak.upgrade() {
                    let mut reg = sessions.registry();
                    reg.ended.retain(|t| *t != id);
                    reg.terminals.remove(&id);
                }
            });
        }
    }

    /// Registers `viewer` on `terminal` from offset `since` (absent: the oldest kept byte). Output flows once
    /// the returned [`Attachment`] is started. Attaching again with the same viewer id replaces the old one.
    pub fn attach(
        &self,
        terminal: &Arc<Terminal>,
        viewer: ViewerId,
        how: AttachOptions,
        socket_gone: &CancellationToken,
    ) -> Result<(Attachment, TerminalAttached), ServiceError> {
        let AttachOptions { since, flow_control, v1, read_only } = how;
        let (start, end) = {
            let log = terminal.log();
            (log.start, log.end)
        };
        let wanted = since.unwrap_or(start);
        if wanted > end {
            return Err(ServiceError::invalid(format!("since {wanted} is past the end of the output ({end})")));
        }
        let offset = wanted.max(start);
        let truncated = since.is_some_and(|s| s < start);
        let v = Arc::new(Viewer {
            id: viewer.clone(),
            cursor: AtomicU64::new(offset),
            acked: flow_control.then(|| AtomicU64::new(offset)),
            // Ends with the socket even if the terminal has left the registry by then.
            stop: socket_gone.child_token(),
            v1,
            sink: Mutex::new(None),
        });
        if let Some(old) = terminal.viewers().insert(viewer, v.clone()) {
            old.stop.cancel();
        }
        // Someone is back: the grace timer, if any, no longer applies.
        terminal.detach_epoch.fetch_add(1, Ordering::SeqCst);
        *terminal.detached.lock().unwrap_or_else(|e| e.into_inner()) = None;
        terminal.progress.notify_waiters();
        let (cols, rows) = *terminal.size.lock().unwrap_or_else(|e| e.into_inner());
        let attached = TerminalAttached {
            terminal_id: terminal.id.clone(),
            container_id: terminal.container_id.clone(),
            container_name: terminal.container_name.clone(),
            command: terminal.command.clone(),
            cols,
            rows,
            flow_control,
            offset,
            end,
            truncated,
            ended: terminal.has_ended(),
            read_only,
        };
        tracing::info!(terminal = %terminal.id, viewer = %v.id.0, offset, end, truncated, "viewer attached");
        Ok((Attachment { terminal: terminal.clone(), viewer: v }, attached))
    }

    /// `viewer` (a socket) went away: it stops following every terminal. A terminal left with nobody runs on
    /// for the grace period (or ends at once, for protocol version 1 clients or a zero grace period).
    pub async fn detach_everywhere(self: &Arc<Self>, viewer: &ViewerId) {
        let terminals: Vec<_> = self.registry().terminals.values().cloned().collect();
        futures_util::future::join_all(terminals.iter().map(|t| self.detach(t, viewer))).await;
    }

    /// `viewer` stops following `terminal`; if nobody is left, the grace period starts (or, for protocol
    /// version 1 clients and a zero grace period, the terminal ends).
    pub async fn detach(self: &Arc<Self>, terminal: &Arc<Terminal>, viewer: &ViewerId) {
        let removed = terminal.viewers().remove(viewer);
        let Some(v) = removed else { return };
        v.stop.cancel();
        terminal.progress.notify_waiters();
        terminal.announce_viewers();
        if !terminal.viewers().is_empty() || terminal.has_ended() {
            return;
        }
        if v.v1 || self.limits.grace.is_zero() {
            let _ = self.close(terminal, ExitReason::Disconnected).await;
        } else {
            self.start_grace(terminal);
        }
    }

    fn start_grace(self: &Arc<Self>, terminal: &Arc<Terminal>) {
        let epoch = terminal.detach_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        *terminal.detached.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), epoch));
        tracing::info!(terminal = %terminal.id, grace = ?self.limits.grace, "nobody attached; terminal kept for the grace period");
        let (sessions, terminal) = (self.clone(), terminal.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(sessions.limits.grace) => {}
                _ = terminal.finished.cancelled() => return,
            }
            let still = terminal.detach_epoch.load(Ordering::SeqCst) == epoch && terminal.viewers().is_empty();
            if still {
                tracing::info!(terminal = %terminal.id, "grace period over; ending the terminal");
                let _ = sessions.close(&terminal, ExitReason::Abandoned).await;
            }
        });
    }

    /// Decides the exit code and reason once the stream has ended.
    async fn exit_cause(&self, terminal: &Terminal, stream_error: Option<String>) -> (Option<i64>, ExitReason) {
        if let Some(e) = &stream_error {
            tracing::debug!(error = %e, "exec stream failed");
        }
        // The stream can end a moment before the daemon records the exit status.
        let mut status = None;
        for _ in 0..40 {
            match self.runtime.inspect_exec(&terminal.exec_id).await {
                Ok(s) if s.running && terminal.close_reason().is_none() && !terminal.stop.is_cancelled() => {
                    status = Some(Ok(s));
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                other => {
                    status = Some(other);
                    break;
                }
            }
        }
        let exit_code = match &status {
            Some(Ok(s)) if !s.running => s.exit_code,
            _ => None,
        };
        if let Some(reason) = terminal.close_reason() {
            return (exit_code, reason);
        }
        match status {
            Some(Err(RuntimeError::Unavailable(_))) => {
                self.pending_reaps.push(terminal.container_id.clone(), terminal.id.clone());
                (None, ExitReason::DockerUnavailable)
            }
            // The exec is gone with its container.
            Some(Err(RuntimeError::NotFound(_))) => (None, ExitReason::ContainerStopped),
            _ => match self.container_after_exit(&terminal.container_id, exit_code).await {
                Ok(t) if t.accepts_exec => {
                    if status.as_ref().is_some_and(|s| s.as_ref().is_ok_and(|s| s.running)) {
                        // The stream broke while the process still runs: make sure it does not linger.
                        let _ = reaper::reap(self.runtime.as_ref(), &terminal.container_id, &terminal.id).await;
                    }
                    (exit_code, ExitReason::Exited)
                }
                Ok(_) | Err(RuntimeError::NotFound(_)) => (exit_code, ExitReason::ContainerStopped),
                Err(RuntimeError::Unavailable(_)) => {
                    self.pending_reaps.push(terminal.container_id.clone(), terminal.id.clone());
                    (exit_code, ExitReason::DockerUnavailable)
                }
                Err(_) => (exit_code, ExitReason::Exited),
            },
        }
    }

    /// The container's state after an exec ended. A container being stopped kills its processes before the
    /// daemon reports it stopped, so when the exit looks like a kill (no code, or 128+signal) the state is
    /// watched for a moment before concluding it is still running.
    async fn container_after_exit(
        &self,
        container_id: &str,
        exit_code: Option<i64>,
    ) -> Result<ContainerTarget, RuntimeError> {
        let looks_killed = exit_code.is_none_or(|c| c > 128);
        let checks = if looks_killed { CONTAINER_STOP_CHECKS } else { 1 };
        let mut last = self.runtime.resolve(container_id).await;
        for _ in 1..checks {
            match &last {
                Ok(t) if t.accepts_exec => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = self.runtime.resolve(container_id).await;
        }
        last
    }

    /// A running terminal `viewer` is attached to (`None`: any running terminal, for the REST API).
    pub fn get(&self, id: &TerminalId, viewer: Option<&ViewerId>) -> Result<Arc<Terminal>, ServiceError> {
        let t = self.registry().terminals.get(id).cloned();
        match t {
            Some(t) if !t.has_ended() && viewer.is_none_or(|v| t.is_attached(v)) => Ok(t),
            _ => Err(ServiceError::unknown_terminal(id)),
        }
    }

    /// Any listed terminal, running or ended (for attaching and the REST view).
    pub fn find(&self, id: &TerminalId) -> Result<Arc<Terminal>, ServiceError> {
        self.registry().terminals.get(id).cloned().ok_or_else(|| ServiceError::unknown_terminal(id))
    }

    /// Forgets an ended terminal (REST `DELETE` of an exited one).
    pub fn forget(&self, id: &TerminalId) {
        let mut reg = self.registry();
        reg.ended.retain(|t| t != id);
        reg.terminals.remove(id);
    }

    /// Every listed terminal, running or ended.
    pub fn all(&self) -> Vec<Arc<Terminal>> {
        self.registry().terminals.values().cloned().collect()
    }

    pub fn info(&self, terminal: &Terminal) -> TerminalInfo {
        terminal.info_with(self.limits.grace)
    }

    /// Ends a terminal: no process of it is left in the container when this returns Ok (if the daemon is
    /// unreachable, the reap is queued and done when it returns). Idempotent; waits for the exit to be
    /// delivered. Fails only when the container still runs but its processes could not be ended.
    pub async fn close(&self, terminal: &Arc<Terminal>, reason: ExitReason) -> Result<(), ServiceError> {
        let mut result = Ok(());
        if terminal.mark_closing(reason) {
            tracing::info!(terminal = %terminal.id, %reason, "closing terminal");
            match reaper::reap(self.runtime.as_ref(), &terminal.container_id, &terminal.id).await {
                // The processes are gone; whatever output was still on its way is of no use to anyone.
                Ok(()) => terminal.stop.cancel(),
                Err(RuntimeError::Unavailable(_)) => {
                    self.pending_reaps.push(terminal.container_id.clone(), terminal.id.clone());
                    terminal.stop.cancel();
                }
                Err(e) => {
                    // A container that stopped or vanished meanwhile took the processes with it.
                    match self.runtime.resolve(&terminal.container_id).await {
                        Ok(t) if t.accepts_exec => {
                            tracing::warn!(terminal = %terminal.id, error = %e, "could not end the terminal's processes");
                            result = Err(ServiceError::new(
                                ErrorCode::Internal,
                                format!("the terminal is closed, but its processes could not be ended: {e}"),
                            ));
                        }
                        _ => tracing::debug!(terminal = %terminal.id, "container gone while closing"),
                    }
                    terminal.stop.cancel();
                }
            }
        }
        if tokio::time::timeout(CLOSE_WAIT, terminal.finished.cancelled()).await.is_err() {
            tracing::warn!(terminal = %terminal.id, "exec stream did not end after its processes were killed; dropping it");
            terminal.stop.cancel();
            terminal.finished.cancelled().await;
        }
        result
    }

    /// Refuses new terminals and closes every open one, concurrently.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let all: Vec<_> = self.registry().terminals.values().filter(|t| !t.has_ended()).cloned().collect();
        tracing::info!(terminals = all.len(), "closing every terminal for shutdown");
        futures_util::future::join_all(all.iter().map(|t| self.close(t, ExitReason::ServerShutdown))).await;
        // Give viewers a moment to send their last output and `exit` before the sockets are closed.
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while all.iter().any(|t| !t.viewers().is_empty()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn not_running(target: &ContainerTarget) -> ServiceError {
    ServiceError::new(
        ErrorCode::ContainerNotRunning,
        format!(
            "container {} is {}; start it to open a terminal",
            target.name,
            if target.state.is_empty() { "not running" } else { &target.state }
        ),
    )
}

/// Sends one viewer the terminal's output from its cursor on, then the exit. Holds back while a flow-controlled
/// viewer has more than [`protocol::FLOW_HIGH_WATERMARK`] unacknowledged; retries while its sink is congested.
async fn viewer_pump(terminal: Arc<Terminal>, viewer: Arc<Viewer>, sink: Arc<dyn TerminalSink>) {
    let mut end_rx = terminal.end_tx.subscribe();
    let mut exit_rx = terminal.exit_tx.subscribe();
    let mut delivered_exit = false;
    'sending: loop {
        if viewer.stop.is_cancelled() {
            break;
        }
        if let Some(acked) = &viewer.acked {
            loop {
                let progressed = terminal.progress.notified();
                tokio::pin!(progressed);
                progressed.as_mut().enable();
                let unacked = viewer.cursor.load(Ordering::SeqCst).saturating_sub(acked.load(Ordering::SeqCst));
                if unacked <= protocol::FLOW_HIGH_WATERMARK {
                    break;
                }
                tokio::select! {
                    _ = progressed => {}
                    _ = viewer.stop.cancelled() => break 'sending,
                }
            }
        }
        // Mark the current end and exit as seen before reading, so a change after the read wakes us below.
        end_rx.borrow_and_update();
        let exit = exit_rx.borrow_and_update().clone();
        let cursor = viewer.cursor.load(Ordering::SeqCst);
        let next = terminal.log().read(cursor, READ_CHUNK_BYTES);
        match next {
            Some((offset, data)) => {
                if offset > cursor {
                    tracing::warn!(lost = offset - cursor, "viewer fell behind the output log");
                }
                let mut pause = Duration::from_millis(1);
                loop {
                    // A replaced or detached viewer must not send another byte.
                    if viewer.stop.is_cancelled() {
                        break 'sending;
                    }
                    match sink.output(&terminal.id, offset, &data) {
                        Offer::Delivered => break,
                        Offer::Gone => break 'sending,
                        Offer::Full => {
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = viewer.stop.cancelled() => break 'sending,
                            }
                            pause = (pause * 2).min(MAX_SINK_BACKOFF);
                        }
                    }
                }
                viewer.cursor.store(offset + data.len() as u64, Ordering::SeqCst);
                terminal.progress.notify_waiters();
            }
            None => {
                if let Some(exit) = exit {
                    sink.exit(&exit);
                    delivered_exit = true;
                    break;
                }
                tokio::select! {
                    _ = end_rx.changed() => {}
                    _ = exit_rx.changed() => {}
                    _ = viewer.stop.cancelled() => break,
                }
            }
        }
    }
    // After the exit the viewer leaves the terminal's list (unless a newer attach replaced it). Otherwise it
    // stays until its socket's disconnect handler detaches it, which also decides about the grace period.
    let mut viewers = terminal.viewers();
    let removed = delivered_exit && viewers.get(&viewer.id).is_some_and(|v| Arc::ptr_eq(v, &viewer));
    if removed {
        viewers.remove(&viewer.id);
    }
    drop(viewers);
    terminal.progress.notify_waiters();
    if removed && !terminal.has_ended() {
        terminal.announce_viewers();
    }
}

/// Applies input and resizes in arrival order. Consecutive inputs are joined into one write.
async fn write_pump(
    runtime: Arc<dyn ContainerRuntime>,
    terminal: Arc<Terminal>,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut input_open = true;
    let mut held: Option<Command> = None;
    loop {
        let command = match held.take() {
            Some(c) => c,
            None => {
                let next = tokio::select! {
                    c = commands.recv() => c,
                    _ = terminal.stop.cancelled() => None,
                };
                let Some(c) = next else { break };
                c
            }
        };
        match command {
            Command::Input(first) => {
                let (mut events, mut batch) = (1, BytesMut::from(&first[..]));
                while batch.len() < INPUT_BATCH_BYTES {
                    match commands.try_recv() {
                        Ok(Command::Input(more)) => {
                            events += 1;
                            batch.extend_from_slice(&more);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if input_open {
                    let write = async {
                        input.write_all(&batch).await?;
                        input.flush().await
                    };
                    let written = tokio::select! {
                        r = write => r,
                        // A daemon that stopped reading must not keep this task (and its connection) alive.
                        _ = terminal.stop.cancelled() => break,
                    };
                    if let Err(e) = written {
                        tracing::debug!(error = %e, "tty input closed");
                        input_open = false;
                    }
                }
                terminal.dequeued(events, batch.len());
            }
            Command::Resize(cols, rows) => {
                if let Err(e) = runtime.resize_exec(&terminal.exec_id, cols, rows).await {
                    tracing::debug!(error = %e, cols, rows, "resize failed");
                }
                terminal.dequeued(1, 0);
            }
        }
    }
    let _ = input.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_refs_cannot_escape_the_api_path() {
        for ok in ["web", "/web", "a1b2c3", "my_app.db-1", &"f".repeat(64)] {
            assert!(check_container_ref(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "../info", "a/b", "a?b=1", "-x", ".x", "a b", "web%2F..", &"a".repeat(300)] {
            assert_eq!(check_container_ref(bad).map_err(|e| e.code), Err(ErrorCode::InvalidPayload), "{bad}");
        }
    }

    #[test]
    fn commands_are_bounded() {
        assert!(check_command(&["ls".into()]).is_ok());
        assert!(check_command(&[]).is_err());
        assert!(check_command(&["".into()]).is_err());
        assert!(check_command(&["a\0b".into()]).is_err());
        assert!(check_command(&vec!["x".to_string(); protocol::MAX_COMMAND_ARGS + 1]).is_err());
        assert!(check_command(&["x".repeat(protocol::MAX_COMMAND_ARG_LEN + 1)]).is_err());
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(1, 1).is_ok());
        assert!(check_size(1000, 1000).is_ok());
        assert!(check_size(0, 24).is_err());
        assert!(check_size(80, 1001).is_err());
    }
}
