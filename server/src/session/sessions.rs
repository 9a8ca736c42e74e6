//! The session core's operations, as the service layer calls them: start, attach, detach, close, shutdown.
//! Authorization and audit are not here; they happen once, in [`crate::state`], before these are called.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use app::protocol::{ErrorCode, ExitReason, TerminalAttached, TerminalId, TerminalInfo, TerminalStarted};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::exit::Lifecycle;
use super::launch::{Launched, Launcher, StartPlan, no_such_container};
use super::reaper::{self, PendingReaps};
use super::registry::{Directory, LocalDirectory};
use super::terminal::{Control, Parts};
use super::viewer::Attachment;
use super::{AttachOptions, Limits, OwnerId, Terminal, ViewerId, pumps};
use crate::docker::{ContainerRuntime, ContainerTarget, RuntimeError};
use crate::error::ServiceError;

/// How long shutdown waits for viewers to deliver the final `exit` events.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// All open terminals, the limits on them, and the runtime they run on.
pub struct Sessions {
    runtime: Arc<dyn ContainerRuntime>,
    limits: Limits,
    directory: Arc<dyn Directory>,
    launcher: Launcher,
    pending_reaps: PendingReaps,
    reaps: reaper::Batches,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// A login shell started ahead of time in a container, for the terminal of whoever gets the container.
#[derive(Debug)]
pub struct Prelaunched {
    /// The id its terminal will have (its processes carry it as their reaper marker).
    pub id: TerminalId,
    pub target: ContainerTarget,
    launched: Launched,
}

impl Prelaunched {
    /// Docker's id of its exec.
    pub fn exec_id(&self) -> &str {
        &self.launched.stream.exec_id
    }

    /// Nobody will use it: its processes are ended (in the background).
    pub fn end(self, runtime: Arc<dyn ContainerRuntime>, pending: PendingReaps) {
        let Prelaunched { id, target, launched } = self;
        drop(launched);
        tokio::spawn(async move {
            let user = target.reaper_user();
            if let Err(crate::docker::RuntimeError::Unavailable(_)) =
                reaper::reap(runtime.as_ref(), &target.id, &user, &id).await
            {
                pending.push(target.id, user, id);
            }
        });
    }
}

/// A slot counted against the limits while a terminal starts; given back on drop unless kept.
struct Reservation<'a> {
    directory: &'a dyn Directory,
    owner: OwnerId,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.directory.release(&self.owner);
        }
    }
}

impl Sessions {
    /// Sessions with the in-process directory.
    pub fn new(runtime: Arc<dyn ContainerRuntime>, limits: Limits) -> Arc<Sessions> {
        Sessions::with_directory(runtime, limits, Arc::new(LocalDirectory::new(limits)))
    }

    pub fn with_directory(
        runtime: Arc<dyn ContainerRuntime>,
        limits: Limits,
        directory: Arc<dyn Directory>,
    ) -> Arc<Sessions> {
        let pending_reaps = PendingReaps::default();
        let sessions = Arc::new(Sessions {
            launcher: Launcher::new(runtime.clone(), pending_reaps.clone()),
            runtime,
            limits,
            directory,
            pending_reaps,
            reaps: reaper::Batches::default(),
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

    pub(super) fn directory(&self) -> &dyn Directory {
        self.directory.as_ref()
    }

    pub(crate) fn pending_reaps(&self) -> &PendingReaps {
        &self.pending_reaps
    }

    /// Closes in flight, batched per container.
    pub(super) fn reaps(&self) -> &reaper::Batches {
        &self.reaps
    }

    fn refuse_when_shutting_down(&self) -> Result<(), ServiceError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ServiceError::new(ErrorCode::Internal, "the server is shutting down"));
        }
        Ok(())
    }

    /// Finds the container a checked request names.
    pub async fn resolve(&self, plan: &StartPlan) -> Result<ContainerTarget, ServiceError> {
        self.runtime.resolve(&plan.container_ref).await.map_err(|e| match e {
            RuntimeError::NotFound(_) => no_such_container(&plan.container_ref),
            other => ServiceError::from_runtime(other),
        })
    }

    /// Starts the default login shell in `target` for a terminal nobody owns yet (a warm pool container's):
    /// [`Sessions::start`] with it opens the terminal without waiting for Docker.
    pub async fn prelaunch(&self, target: ContainerTarget) -> Result<Prelaunched, ServiceError> {
        self.refuse_when_shutting_down()?;
        let plan = StartPlan {
            container_ref: target.id.clone(),
            cols: app::protocol::DEFAULT_COLS,
            rows: app::protocol::DEFAULT_ROWS,
            command: None,
            flow_control: false,
            tty: true,
        };
        let id = TerminalId(format!("t-{}", uuid::Uuid::new_v4().simple()));
        let launched = self.launcher.launch(&target, &plan, &id).await?;
        Ok(Prelaunched { id, target, launched })
    }

    /// Opens a terminal in `target` (resolved and authorized by the caller), with `pre`'s process when given
    /// (the plan's command is then the default shell). Its output is kept from the first byte; viewers follow it
    /// with [`Sessions::attach`]. `user_quota` overrides the per-user limit.
    pub async fn start(
        self: &Arc<Self>,
        owner: &OwnerId,
        target: ContainerTarget,
        plan: &StartPlan,
        user_quota: Option<usize>,
        pre: Option<Prelaunched>,
    ) -> Result<(Arc<Terminal>, TerminalStarted), ServiceError> {
        let reserved = match self.refuse_when_shutting_down() {
            Ok(()) => self.directory.reserve(owner, user_quota).await,
            Err(e) => Err(e),
        };
        if let Err(e) = reserved {
            if let Some(pre) = pre {
                pre.end(self.runtime.clone(), self.pending_reaps.clone());
            }
            return Err(e);
        }
        let mut reservation = Reservation { directory: self.directory.as_ref(), owner: owner.clone(), kept: false };
        let (id, Launched { stream, command }) = match pre {
            Some(pre) if plan.command.is_none() => (pre.id, pre.launched),
            other => {
                if let Some(pre) = other {
                    pre.end(self.runtime.clone(), self.pending_reaps.clone());
                }
                let id = TerminalId(format!("t-{}", uuid::Uuid::new_v4().simple()));
                let launched = self.launcher.launch(&target, plan, &id).await?;
                (id, launched)
            }
        };
        reservation.kept = true;
        let parts = Parts {
            id,
            owner: owner.clone(),
            target,
            lifecycle: Lifecycle::Shared,
            command,
            exec_id: stream.exec_id.clone(),
            cols: plan.cols,
            rows: plan.rows,
            flow_control: plan.flow_control,
            tty: plan.tty,
            log_bytes: self.limits.log_bytes,
        };
        let (terminal, control, input_rx) = Terminal::new(parts);
        self.directory.insert(terminal.clone());
        let (cols, rows) = terminal.size();
        let span = tracing::info_span!("terminal", terminal = %terminal.id(), container = %terminal.container_name(), exec = %terminal.exec_id());
        tracing::info!(parent: &span, command = ?terminal.command(), cols, rows, "terminal started");
        // The first command applies the requested size; input and later resizes queue behind it.
        if terminal.tty() {
            let _ = terminal.send_resize(cols, rows);
        }
        let crate::docker::ExecStream { output, input, .. } = stream;
        tokio::spawn(pumps::write(self.runtime.clone(), terminal.clone(), input, input_rx).instrument(span.clone()));
        tokio::spawn(terminal.clone().own(self.clone(), output, control).instrument(span));
        if self.shutting_down.load(Ordering::SeqCst) {
            // Shutdown began while this terminal started, after it took its list: end it too.
            let _ = self.close(&terminal, ExitReason::ServerShutdown).await;
            return Err(ServiceError::new(ErrorCode::Internal, "the server is shutting down"));
        }
        let started = terminal.started();
        Ok((terminal, started))
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
        let AttachOptions { since, flow_control, ends_on_leave, read_only, user } = how;
        let log = terminal.log();
        let (sub, start) =
            log.attach_viewer(viewer, &user, since, flow_control, ends_on_leave, socket_gone).map_err(|end| {
                ServiceError::invalid(format!("since {} is past the end of the output ({end})", since.unwrap_or(0)))
            })?;
        // Someone is back: the grace timer, if any, no longer applies.
        let _ = terminal.tell(Control::Joined);
        let (cols, rows) = terminal.size();
        let attached = TerminalAttached {
            terminal_id: terminal.id().clone(),
            container_id: terminal.container_id().to_string(),
            container_name: terminal.container_name().to_string(),
            command: terminal.command().to_vec(),
            cols,
            rows,
            flow_control,
            offset: start.offset,
            end: start.end,
            truncated: start.truncated,
            ended: terminal.has_ended(),
            read_only,
            tty: terminal.tty(),
            input_offset: terminal.input_offset(),
        };
        tracing::info!(terminal = %terminal.id(), viewer = %sub.id().0, offset = start.offset, end = start.end, truncated = start.truncated, "viewer attached");
        Ok((Attachment { terminal: terminal.clone(), sub, flow_control }, attached))
    }

    /// Undoes an attach whose answer never reached the client (before its output started): the viewer is
    /// detached first, so a terminal left with nobody starts its grace period again.
    pub fn undo_attach(&self, attachment: Attachment) {
        let terminal = attachment.terminal().clone();
        let viewer = attachment.sub.id().clone();
        self.detach(&terminal, &viewer);
        drop(attachment);
    }

    /// `viewer` (a socket) went away: it stops following every terminal.
    pub async fn detach_everywhere(&self, viewer: &ViewerId) {
        for t in self.directory.all() {
            self.detach(&t, viewer);
        }
    }

    /// `viewer` stops following `terminal`; if nobody is left, the grace period starts (or, for protocol
    /// version 1 clients and a zero grace period, the terminal ends).
    pub fn detach(&self, terminal: &Arc<Terminal>, viewer: &ViewerId) {
        let Some(ends_on_leave) = terminal.log().detach_viewer(viewer) else { return };
        terminal.announce_viewers();
        if terminal.log().viewers() == 0 && !terminal.has_ended() {
            let _ = terminal.tell(Control::Deserted { ends_on_leave });
        }
    }

    /// A running terminal that `viewer` is attached to.
    pub fn find_attached(&self, id: &TerminalId, viewer: &ViewerId) -> Result<Arc<Terminal>, ServiceError> {
        match self.directory.find(id) {
            Some(t) if !t.has_ended() && t.log().is_viewer(viewer) => Ok(t),
            _ => Err(ServiceError::unknown_terminal(id)),
        }
    }

    /// Any listed terminal, running or ended.
    pub fn find(&self, id: &TerminalId) -> Result<Arc<Terminal>, ServiceError> {
        self.directory.find(id).ok_or_else(|| ServiceError::unknown_terminal(id))
    }

    /// Forgets an ended terminal (REST `DELETE` of an exited one).
    pub fn forget(&self, id: &TerminalId) {
        self.directory.forget(id);
    }

    /// Every listed terminal, running or ended.
    pub fn all(&self) -> Vec<Arc<Terminal>> {
        self.directory.all()
    }

    pub fn info(&self, terminal: &Terminal) -> TerminalInfo {
        let mut info = terminal.info(self.limits.grace);
        info.node = self.directory.node().to_string();
        info
    }

    /// The cluster node this is (empty when running alone).
    pub fn node(&self) -> &str {
        self.directory.node()
    }

    /// Ends a terminal: no process of it is left in the container when this returns Ok (if the daemon is
    /// unreachable, the reap is queued and done when it returns). Idempotent; returns once the exit is
    /// published. Fails only when the container still runs but its processes could not be ended.
    pub async fn close(&self, terminal: &Arc<Terminal>, reason: ExitReason) -> Result<(), ServiceError> {
        if terminal.has_ended() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        if terminal.tell(Control::Close { reason, done }).is_err() {
            terminal.ended().await;
            return Ok(());
        }
        let result = answer.await.unwrap_or(Ok(()));
        terminal.ended().await;
        result
    }

    /// Refuses new terminals and closes every open one, concurrently.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let all: Vec<_> = self.directory.all().into_iter().filter(|t| !t.has_ended()).collect();
        tracing::info!(terminals = all.len(), "closing every terminal for shutdown");
        futures_util::future::join_all(all.iter().map(|t| self.close(t, ExitReason::ServerShutdown))).await;
        // Give viewers a moment to send their last output and `exit` before the sockets are closed.
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while all.iter().any(|t| t.log().viewers() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
