//! One terminal: what it is (container, command, owner), its event log, and its lifecycle, which one task owns.
//!
//! The lifecycle is explicit ([`Phase`]): `Running` (with or without viewers; without, a grace timer runs),
//! `Closing` (Porthole is ending its processes, for a reason), `Ended` (the exit is known and published). Only
//! the owner task ([`Terminal::own`]) moves it; everyone else sends it a [`Control`] message through the
//! handle and reads snapshots ([`Terminal::phase`]). The task also runs the read pump, so the end of the output
//! and the exit diagnosis happen in one place, in order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use app::protocol::{Exit, ExitReason, TerminalId, TerminalInfo, TerminalStarted, TerminalState};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::exit::{self, Lifecycle};
use super::log::EventLog;
use super::pumps::{self, InputQueue, Reader};
use super::{OwnerId, Sessions};
use crate::docker::{ContainerTarget, RuntimeError};
use crate::error::ServiceError;
use app::protocol::ErrorCode;

/// Where a terminal is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Its process runs. `deserted_since`: nobody is attached, and the grace period runs from then.
    Running { deserted_since: Option<Instant> },
    /// Porthole is ending its processes.
    Closing(ExitReason),
    /// The process is gone and the exit published.
    Ended(Exit),
}

/// What others ask of a terminal's owner task. Every message comes from a rate-limited socket event, a REST
/// request or a disconnect, so the queue is bounded by those.
pub(super) enum Control {
    /// A viewer attached: no grace period applies.
    Joined,
    /// The last viewer left (`ends_on_leave`: it spoke protocol version 1).
    Deserted { ends_on_leave: bool },
    /// End the terminal; answered once no process of it is left and its exit is published.
    Close { reason: ExitReason, done: oneshot::Sender<Result<(), ServiceError>> },
}

/// One open terminal: a handle to its state.
pub struct Terminal {
    id: TerminalId,
    owner: OwnerId,
    container_id: String,
    container_name: String,
    /// The Docker host the container is on.
    host: String,
    /// Who the reaper runs as in the container.
    reaper_user: String,
    /// The container's labels when the terminal started (the policy matches on them).
    labels: std::collections::BTreeMap<String, String>,
    lifecycle: Lifecycle,
    command: Vec<String>,
    exec_id: String,
    started_at_ms: u64,
    flow_control: bool,
    /// It has a tty (false: a pipe terminal, with stdout and stderr apart and no window size).
    tty: bool,
    /// `cols << 16 | rows`, as last asked for.
    size: AtomicU32,
    log: Arc<EventLog>,
    input: InputQueue,
    phase: watch::Sender<Phase>,
    control: mpsc::UnboundedSender<Control>,
    /// Cancelled to stop both pumps (after the processes are gone, or when the stream hangs).
    stop: CancellationToken,
    /// A recording of it exists (its audit records carry the recording's id).
    recorded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal").field("id", &self.id).field("container", &self.container_name).finish()
    }
}

/// What a terminal is made of, once its process runs.
pub(super) struct Parts {
    pub id: TerminalId,
    pub owner: OwnerId,
    pub target: ContainerTarget,
    pub lifecycle: Lifecycle,
    pub command: Vec<String>,
    pub exec_id: String,
    pub cols: u16,
    pub rows: u16,
    pub flow_control: bool,
    pub tty: bool,
    pub log_bytes: usize,
}

impl Terminal {
    /// A running terminal, its control queue and its input queue's receiving end.
    pub(super) fn new(parts: Parts) -> (Arc<Terminal>, mpsc::UnboundedReceiver<Control>, pumps::InputReceiver) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (input, input_rx) = InputQueue::new();
        let terminal = Arc::new(Terminal {
            id: parts.id,
            owner: parts.owner,
            reaper_user: parts.target.reaper_user(),
            container_id: parts.target.id,
            container_name: parts.target.name,
            host: parts.target.host,
            labels: parts.target.labels,
            lifecycle: parts.lifecycle,
            command: parts.command,
            exec_id: parts.exec_id,
            started_at_ms: super::now_ms(),
            flow_control: parts.flow_control,
            tty: parts.tty,
            size: AtomicU32::new(pack(parts.cols, parts.rows)),
            log: EventLog::new(parts.log_bytes),
            input,
            phase: watch::channel(Phase::Running { deserted_since: None }).0,
            control,
            stop: CancellationToken::new(),
            recorded: std::sync::atomic::AtomicBool::new(false),
        });
        (terminal, control_rx, input_rx)
    }

    pub fn id(&self) -> &TerminalId {
        &self.id
    }

    pub fn owner(&self) -> &OwnerId {
        &self.owner
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

    /// When it started, ms since the Unix epoch.
    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    /// Notes that a recording of it exists.
    pub fn set_recorded(&self) {
        self.recorded.store(true, Ordering::Relaxed);
    }

    /// Whether a recording of it exists (its id is the terminal's).
    pub fn recorded(&self) -> bool {
        self.recorded.load(Ordering::Relaxed)
    }

    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    pub(super) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn size(&self) -> (u16, u16) {
        let v = self.size.load(Ordering::Relaxed);
        ((v >> 16) as u16, v as u16)
    }

    /// A snapshot of its lifecycle.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub fn has_ended(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Ended(_))
    }

    /// Waits until the exit is published.
    pub async fn ended(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| matches!(p, Phase::Ended(_))).await;
    }

    pub(super) fn tell(&self, control: Control) -> Result<(), Control> {
        self.control.send(control).map_err(|e| e.0)
    }

    /// Whether it has a tty (false: a pipe terminal).
    pub fn tty(&self) -> bool {
        self.tty
    }

    /// Queues bytes for the process, then with `eof` the end of its input (pipe terminals only). Never waits:
    /// ordering is the order of calls. `written` is told once they reached the process.
    pub fn send_input(
        &self,
        data: Bytes,
        eof: bool,
        offset: Option<u64>,
        written: Option<pumps::Written>,
    ) -> Result<(), ServiceError> {
        if eof && self.tty {
            return Err(ServiceError::invalid(format!(
                "terminal {} has a tty: end its input with the tty's EOF character (Ctrl-D) instead of eof",
                self.id
            )));
        }
        self.input.input(&self.log, &self.id, data, eof, offset, written)
    }

    /// Bytes of input accepted so far (the offset a resuming writer continues from).
    pub fn input_offset(&self) -> u64 {
        self.input.accepted()
    }

    /// Queues a tty resize, applied in order with input.
    pub fn send_resize(&self, cols: u16, rows: u16) -> Result<(), ServiceError> {
        if !self.tty {
            return Err(ServiceError::invalid(format!("terminal {} has no tty to resize (tty: false)", self.id)));
        }
        super::launch::check_size(cols, rows)?;
        self.size.store(pack(cols, rows), Ordering::Relaxed);
        self.input.resize(&self.id, cols, rows)
    }

    /// Tells every started viewer how many are attached.
    pub fn announce_viewers(&self) {
        let (sinks, attached) = self.log.sinks();
        for sink in sinks {
            sink.viewers(&self.id, attached);
        }
    }

    /// Its state for the REST view, given the grace period.
    pub fn info(&self, grace: Duration) -> TerminalInfo {
        let (cols, rows) = self.size();
        let attached = self.log.viewers();
        let (state, grace_left_ms, exit) = match self.phase() {
            Phase::Ended(exit) => (TerminalState::Exited, None, Some(exit)),
            Phase::Running { deserted_since: Some(since) } if attached == 0 => {
                (TerminalState::Detached, Some(grace.saturating_sub(since.elapsed()).as_millis() as u64), None)
            }
            _ if attached == 0 => (TerminalState::Detached, None, None),
            _ => (TerminalState::Running, None, None),
        };
        TerminalInfo {
            terminal_id: self.id.clone(),
            owner: self.owner.client.to_string(),
            user: self.owner.user.clone(),
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            host: self.host.clone(),
            node: String::new(),
            command: self.command.clone(),
            cols,
            rows,
            started_at_ms: self.started_at_ms,
            bytes_out: self.log.end(),
            state,
            attached,
            grace_left_ms,
            exit,
        }
    }

    pub(super) fn started(&self) -> TerminalStarted {
        let (cols, rows) = self.size();
        TerminalStarted {
            terminal_id: self.id.clone(),
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            command: self.command.clone(),
            cols,
            rows,
            flow_control: self.flow_control,
            tty: self.tty,
        }
    }

    /// The owner task: runs the read pump, moves the lifecycle on control messages and timers, and when the
    /// output ends works out why, publishes the exit and frees the terminal's slot.
    pub(super) async fn own(
        self: Arc<Self>,
        sessions: Arc<Sessions>,
        output: Reader,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let grace = sessions.limits().grace;
        let mut read = std::pin::pin!(pumps::read(self.clone(), output));
        let mut grace_ends: Option<tokio::time::Instant> = None;
        let mut reaping: Option<Reaping> = None;
        let mut closing: Option<ExitReason> = None;
        let mut closer: Option<oneshot::Sender<Result<(), ServiceError>>> = None;
        let mut waiters: Vec<oneshot::Sender<Result<(), ServiceError>>> = Vec::new();
        let mut result = Ok(());
        let stream_error = loop {
            let mut begin = None;
            tokio::select! {
                e = &mut read => break e,
                Some(c) = control.recv() => match c {
                    // Both are rechecked against the viewers now: the two messages of an attach and a detach
                    // racing on different threads may arrive in either order.
                    Control::Joined | Control::Deserted { .. } if closing.is_none() => {
                        let ends_on_leave = matches!(c, Control::Deserted { ends_on_leave: true });
                        if self.log.viewers() > 0 {
                            grace_ends = None;
                            self.phase.send_replace(Phase::Running { deserted_since: None });
                        } else if ends_on_leave || grace.is_zero() {
                            begin = Some(ExitReason::Disconnected);
                        } else if grace_ends.is_none() {
                            tracing::info!(?grace, "nobody attached; terminal kept for the grace period");
                            grace_ends = Some(tokio::time::Instant::now() + grace);
                            self.phase.send_replace(Phase::Running { deserted_since: Some(Instant::now()) });
                        }
                    }
                    Control::Joined | Control::Deserted { .. } => {}
                    Control::Close { reason, done } => {
                        if closing.is_none() {
                            begin = Some(reason);
                            closer = Some(done);
                        } else {
                            waiters.push(done);
                        }
                    }
                },
                _ = tokio::time::sleep_until(grace_ends.unwrap_or_else(tokio::time::Instant::now)), if grace_ends.is_some() => {
                    grace_ends = None;
                    if self.log.viewers() == 0 {
                        tracing::info!("grace period over; ending the terminal");
                        begin = Some(ExitReason::Abandoned);
                    }
                }
                r = async { reaping.as_mut().expect("guarded").await }, if reaping.is_some() => {
                    reaping = None;
                    result = r;
                    // The processes are gone; whatever output was still on its way is of no use to anyone.
                    self.stop.cancel();
                }
            }
            if let Some(reason) = begin
                && closing.is_none()
            {
                tracing::info!(%reason, "closing terminal");
                closing = Some(reason);
                grace_ends = None;
                self.phase.send_replace(Phase::Closing(reason));
                reaping = Some(Box::pin(end_processes(sessions.clone(), self.clone())));
            }
        };
        // The output is over. Closes asked for meanwhile wait for the exit like the others.
        let facts = exit::Ended {
            id: &self.id,
            container_id: &self.container_id,
            reaper_user: &self.reaper_user,
            exec_id: &self.exec_id,
            lifecycle: self.lifecycle,
            closing,
        };
        let diagnosis = exit::diagnose(sessions.runtime().as_ref(), sessions.pending_reaps(), facts, stream_error);
        let mut diagnosis = std::pin::pin!(diagnosis);
        let (exit_code, natural) = loop {
            tokio::select! {
                d = &mut diagnosis => break d,
                Some(c) = control.recv() => if let Control::Close { done, .. } = c { waiters.push(done) },
            }
        };
        if let Some(r) = reaping {
            // The stream ended by itself while the processes were being ended: finish that first.
            result = r.await;
        }
        self.stop.cancel();
        let reason = closing.unwrap_or(natural);
        let exit = Exit { terminal_id: self.id.clone(), exit_code, reason };
        tracing::info!(?exit_code, %reason, bytes_out = self.log.end(), "terminal ended");
        self.log.finish(exit.clone());
        sessions.directory().ended(&self, reason == ExitReason::Closed);
        self.phase.send_replace(Phase::Ended(exit));
        waiters.extend(closer);
        while let Ok(c) = control.try_recv() {
            if let Control::Close { done, .. } = c {
                waiters.push(done);
            }
        }
        // Every close waiting learns whether the processes could be ended.
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Ending a terminal's processes, in flight.
type Reaping = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;

fn pack(cols: u16, rows: u16) -> u32 {
    (u32::from(cols) << 16) | u32::from(rows)
}

/// Ends the terminal's processes. When the daemon is away, the reap is queued for its return. Fails only when
/// the container still runs but the processes could not be ended.
async fn end_processes(sessions: Arc<Sessions>, terminal: Arc<Terminal>) -> Result<(), ServiceError> {
    let runtime = sessions.runtime().clone();
    match sessions.reaps().reap(runtime.clone(), &terminal.container_id, &terminal.reaper_user, &terminal.id).await {
        Ok(()) => Ok(()),
        Err(RuntimeError::Unavailable(_)) => {
            let (container, user) = (terminal.container_id.clone(), terminal.reaper_user.clone());
            sessions.pending_reaps().push(container, user, terminal.id.clone());
            Ok(())
        }
        Err(e) => match runtime.resolve(&terminal.container_id).await {
            // A container that stopped or vanished meanwhile took the processes with it.
            Ok(t) if t.accepts_exec => {
                tracing::warn!(error = %e, "could not end the terminal's processes");
                Err(ServiceError::new(
                    ErrorCode::Internal,
                    format!("the terminal is closed, but its processes could not be ended: {e}"),
                ))
            }
            _ => {
                tracing::debug!("container gone while closing");
                Ok(())
            }
        },
    }
}
