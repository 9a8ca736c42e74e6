//! Deciding why a terminal ended, once its exec stream is over: its exit code from the daemon, and whether the
//! process ended by itself, its container stopped, or the daemon went away.
//!
//! The diagnosis takes the container's [`Lifecycle`] as input. In a shared container (one that exists without
//! Porthole) a process that ended as if killed may mean the container is being stopped, so the container's state
//! is watched for a moment. In a dedicated container (a sandbox, whose first process is the terminal's) the
//! container's end is the terminal's end.

use std::time::Duration;

use app::protocol::{ExitReason, TerminalId};

use super::reaper::{self, PendingReaps};
use crate::docker::{ContainerRuntime, ContainerTarget, ExecStatus, RuntimeError};

/// Container state checks (100 ms apart) after an exec ended as if killed, to tell a stopping container.
const CONTAINER_STOP_CHECKS: usize = 30;
/// Exec inspections (25 ms apart) while the daemon has not yet recorded the end of a stream's process.
const EXIT_STATUS_CHECKS: usize = 40;

/// Whose container a terminal runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifecycle {
    /// A container that exists without Porthole; other terminals and processes may share it.
    #[default]
    Shared,
    /// A container made for this terminal; it ends with the terminal.
    Dedicated,
}

/// What the diagnosis needs to know about a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Ended<'a> {
    pub id: &'a TerminalId,
    pub container_id: &'a str,
    /// Who the reaper runs as there.
    pub reaper_user: &'a str,
    pub exec_id: &'a str,
    pub lifecycle: Lifecycle,
    /// Why Porthole was ending it, if it was.
    pub closing: Option<ExitReason>,
}

/// The exit code (when the daemon has one) and the reason the terminal ended. A container that stopped because
/// it ran out of memory (Docker's `State.OOMKilled`) gives [`ExitReason::Oom`].
pub async fn diagnose(
    runtime: &dyn ContainerRuntime,
    pending: &PendingReaps,
    ended: Ended<'_>,
    stream_error: Option<String>,
) -> (Option<i64>, ExitReason) {
    match diagnose_process(runtime, pending, ended, stream_error).await {
        (code, ExitReason::ContainerStopped) => match runtime.resolve(ended.container_id).await {
            Ok(t) if t.oom_killed => (code, ExitReason::Oom),
            _ => (code, ExitReason::ContainerStopped),
        },
        other => other,
    }
}

async fn diagnose_process(
    runtime: &dyn ContainerRuntime,
    pending: &PendingReaps,
    ended: Ended<'_>,
    stream_error: Option<String>,
) -> (Option<i64>, ExitReason) {
    if let Some(e) = &stream_error {
        tracing::debug!(error = %e, "exec stream failed");
    }
    // The stream can end a moment before the daemon records the exit status.
    let mut status: Option<Result<ExecStatus, RuntimeError>> = None;
    for _ in 0..EXIT_STATUS_CHECKS {
        match runtime.inspect_exec(ended.exec_id).await {
            Ok(s) if s.running && ended.closing.is_none() => {
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
    if let Some(reason) = ended.closing {
        return (exit_code, reason);
    }
    let still_running = status.as_ref().is_some_and(|s| s.as_ref().is_ok_and(|s| s.running));
    match status {
        Some(Err(RuntimeError::Unavailable(_))) => {
            pending.push(ended.container_id.to_string(), ended.reaper_user.to_string(), ended.id.clone());
            (None, ExitReason::DockerUnavailable)
        }
        // The exec is gone with its container.
        Some(Err(RuntimeError::NotFound(_))) => (None, ExitReason::ContainerStopped),
        _ => match container_after_exit(runtime, ended.container_id, exit_code, ended.lifecycle).await {
            Ok(t) if t.accepts_exec => {
                if still_running {
                    // The stream broke while the process still runs: make sure it does not linger.
                    let _ = reaper::reap(runtime, ended.container_id, ended.reaper_user, ended.id).await;
                }
                (exit_code, ExitReason::Exited)
            }
            Ok(_) | Err(RuntimeError::NotFound(_)) => (exit_code, ExitReason::ContainerStopped),
            Err(RuntimeError::Unavailable(_)) => {
                pending.push(ended.container_id.to_string(), ended.reaper_user.to_string(), ended.id.clone());
                (exit_code, ExitReason::DockerUnavailable)
            }
            Err(_) => (exit_code, ExitReason::Exited),
        },
    }
}

/// The container's state after an exec ended. A shared container being stopped kills its processes before the
/// daemon reports it stopped, so when the exit looks like a kill (no code, or 128+signal) the state is watched
/// for a moment before concluding it is still running. A dedicated container is looked at once.
async fn container_after_exit(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    exit_code: Option<i64>,
    lifecycle: Lifecycle,
) -> Result<ContainerTarget, RuntimeError> {
    // 128 + n: killed by signal n; exactly 128 is what gVisor reports for a process whose sandbox died.
    let looks_killed = exit_code.is_none_or(|c| c >= 128);
    let checks = if looks_killed && lifecycle == Lifecycle::Shared { CONTAINER_STOP_CHECKS } else { 1 };
    let mut last = runtime.resolve(container_id).await;
    for _ in 1..checks {
        match &last {
            Ok(t) if t.accepts_exec => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = runtime.resolve(container_id).await;
    }
    last
}
