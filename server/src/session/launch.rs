//! Starting a terminal's process: checking the request, then the exec, until the daemon reports a pid.
//!
//! A request is checked once, into a [`StartPlan`], before any Docker work. Without a `command` the login
//! shells are tried in order ([`DEFAULT_SHELLS`]); which one a container has is remembered per container (at
//! most [`MAX_REMEMBERED_SHELLS`] containers), so concurrent starts in one container probe it once, not once
//! each. At most [`MAX_CONCURRENT_LAUNCHES`] execs are being started at once; the daemon's start timeout
//! counts from an exec's turn, not from the request.

/// The `TERM` every terminal gets.
pub const TERM: &str = "xterm-256color";

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::{self, ErrorCode, StartTerminal, TerminalId};
use tokio::io::AsyncReadExt;

use super::reaper::{self, PendingReaps};
use crate::docker::{ContainerRuntime, ContainerTarget, ExecSpec, ExecStream, RuntimeError};
use crate::error::ServiceError;

/// How long a started exec may take to be reported running by the daemon.
const START_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between the inspections that wait for a started exec's pid (the pid shows after about 50 to
/// 100 ms here; a longer pause would add up to itself to every open).
const MAX_START_POLL: Duration = Duration::from_millis(10);
/// The login shells tried, in order, when `start-terminal` has no `command`.
pub const DEFAULT_SHELLS: [&[&str]; 2] = [&["bash", "-l"], &["sh", "-l"]];
/// Containers whose default shell is remembered; beyond it the memory is cleared and rebuilt.
pub const MAX_REMEMBERED_SHELLS: usize = 4096;
/// Execs being started at once (create, start, wait for the pid). More starts wait their turn: a daemon given
/// hundreds at once starts none of them in time, while this many keep it busy.
pub const MAX_CONCURRENT_LAUNCHES: usize = 16;

/// A checked `start-terminal` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    /// The container reference, without a leading `/`.
    pub container_ref: String,
    pub cols: u16,
    pub rows: u16,
    /// The command asked for; `None`: a default shell.
    pub command: Option<Vec<String>>,
    pub flow_control: bool,
    /// Give the process a tty (false: a pipe terminal).
    pub tty: bool,
}

impl StartPlan {
    /// Checks a request's fields (the container reference goes into an Engine API path).
    pub fn check(req: &StartTerminal) -> Result<StartPlan, ServiceError> {
        check_container_ref(&req.container_id)?;
        let (cols, rows) = (req.cols.unwrap_or(protocol::DEFAULT_COLS), req.rows.unwrap_or(protocol::DEFAULT_ROWS));
        check_size(cols, rows)?;
        if let Some(cmd) = &req.command {
            check_command(cmd)?;
        }
        Ok(StartPlan {
            container_ref: req.container_id.strip_prefix('/').unwrap_or(&req.container_id).to_string(),
            cols,
            rows,
            command: req.command.clone(),
            flow_control: req.flow_control,
            tty: req.tty,
        })
    }
}

pub fn check_size(cols: u16, rows: u16) -> Result<(), ServiceError> {
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

/// Checks a container reference before it goes into an Engine API URL path: an id, id prefix or name, or
/// `HOST/` and one of those (see [`crate::docker::hosts`]).
pub fn check_container_ref(r: &str) -> Result<(), ServiceError> {
    let name = r.strip_prefix('/').unwrap_or(r);
    let (host_ok, name) = match name.split_once('/') {
        Some((host, rest)) => (crate::docker::hosts::valid_name(host), rest),
        None => (true, name),
    };
    let valid = host_ok
        && !name.is_empty()
        && r.len() <= protocol::MAX_CONTAINER_REF_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!(
            "containerId must be a container id, id prefix or name ([a-zA-Z0-9][a-zA-Z0-9_.-]*), optionally after \
             a Docker host's name and a slash (HOST/REF), at most {} bytes",
            protocol::MAX_CONTAINER_REF_LEN
        )))
    }
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

/// The answer for a container that does not exist, or that the caller may not see (the same, so that names
/// cannot be probed).
pub fn no_such_container(container_ref: &str) -> ServiceError {
    ServiceError::new(ErrorCode::ContainerNotFound, format!("no container matches {container_ref:?}"))
}

pub fn not_running(target: &ContainerTarget) -> ServiceError {
    ServiceError::new(
        ErrorCode::ContainerNotRunning,
        format!(
            "container {} is {}; start it to open a terminal",
            target.name,
            if target.state.is_empty() { "not running" } else { &target.state }
        ),
    )
}

/// A started process: its streams and the argv that ran.
#[derive(Debug)]
pub struct Launched {
    pub stream: ExecStream,
    pub command: Vec<String>,
}

/// Starts execs, remembering each container's default shell.
pub struct Launcher {
    runtime: Arc<dyn ContainerRuntime>,
    pending_reaps: PendingReaps,
    /// Container id -> per container, a lock held while its default shell is probed, and the index into
    /// [`DEFAULT_SHELLS`] that worked.
    shells: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<usize>>>>>,
    /// [`MAX_CONCURRENT_LAUNCHES`] permits.
    launches: tokio::sync::Semaphore,
}

/// How one exec turned out.
enum Attempt {
    Running(ExecStream),
    /// The runtime could not start the program: `executable` false for a program that is not there (127),
    /// true for one that is there but cannot be executed (126).
    NotFound {
        why: String,
        executable: bool,
    },
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher").finish_non_exhaustive()
    }
}

impl Launcher {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, pending_reaps: PendingReaps) -> Launcher {
        Launcher {
            runtime,
            pending_reaps,
            shells: Mutex::new(HashMap::new()),
            launches: tokio::sync::Semaphore::new(MAX_CONCURRENT_LAUNCHES),
        }
    }

    /// Starts `plan` in `target` as terminal `id` (its processes carry the reaper's marker).
    pub async fn launch(
        &self,
        target: &ContainerTarget,
        plan: &StartPlan,
        id: &TerminalId,
    ) -> Result<Launched, ServiceError> {
        if !target.accepts_exec {
            return Err(not_running(target));
        }
        if let Some(cmd) = &plan.command {
            return match self.attempt(target, cmd, id, plan.tty).await? {
                Attempt::Running(stream) => Ok(Launched { stream, command: cmd.clone() }),
                Attempt::NotFound { why, executable: false } => {
                    tracing::debug!(container = %target.name, command = ?cmd, %why, "command not found");
                    Err(ServiceError::new(
                        ErrorCode::CommandNotFound,
                        format!("{} not found in container {}", cmd[0], target.name),
                    ))
                }
                Attempt::NotFound { why, executable: true } => {
                    tracing::debug!(container = %target.name, command = ?cmd, %why, "command not executable");
                    Err(ServiceError::new(
                        ErrorCode::CommandNotExecutable,
                        format!("{} in container {} cannot be executed", cmd[0], target.name),
                    ))
                }
            };
        }
        let probe = {
            let mut shells = self.shells.lock().unwrap_or_else(|e| e.into_inner());
            if shells.len() >= MAX_REMEMBERED_SHELLS && !shells.contains_key(&target.id) {
                shells.clear();
            }
            shells.entry(target.id.clone()).or_default().clone()
        };
        // Probed once per container: the first start probes while holding the container's lock; the others
        // wait for its answer, then start at once, in parallel.
        let mut remembered = probe.lock().await;
        if let Some(i) = *remembered {
            drop(remembered);
            if let Attempt::Running(stream) = self.attempt(target, &shell(i), id, plan.tty).await? {
                return Ok(Launched { stream, command: shell(i) });
            }
            // The shell went away (the container changed): probe again.
            remembered = probe.lock().await;
        }
        let mut tried = Vec::new();
        for i in 0..DEFAULT_SHELLS.len() {
            let cmd = shell(i);
            match self.attempt(target, &cmd, id, plan.tty).await? {
                Attempt::Running(stream) => {
                    *remembered = Some(i);
                    return Ok(Launched { stream, command: cmd });
                }
                Attempt::NotFound { why, .. } => {
                    tracing::debug!(container = %target.name, command = ?cmd, %why, "command not found");
                    tried.push(cmd[0].clone());
                }
            }
        }
        *remembered = None;
        Err(ServiceError::new(
            ErrorCode::CommandNotFound,
            format!("{} not found in container {}", tried.join(", no "), target.name),
        ))
    }

    /// Starts one exec and waits until the daemon reports its process started (or could not).
    async fn attempt(
        &self,
        target: &ContainerTarget,
        cmd: &[String],
        id: &TerminalId,
        tty: bool,
    ) -> Result<Attempt, ServiceError> {
        // A pipe gets no terminal type, as with `docker exec -i`.
        let env = if tty {
            vec![reaper::marker(id), format!("TERM={TERM}"), "COLORTERM=truecolor".into()]
        } else {
            vec![reaper::marker(id)]
        };
        let spec = ExecSpec { cmd: cmd.to_vec(), env, user: None, tty };
        let result = match self.launches.acquire().await {
            Ok(_turn) => self.attempt_inner(target, &spec).await,
            Err(_) => Err(ServiceError::new(ErrorCode::Internal, "the server is shutting down")),
        };
        if result.is_err() {
            // The daemon may have started the process although it did not say so in time: end it.
            let (runtime, container, id) = (self.runtime.clone(), target.id.clone(), id.clone());
            let (pending, user) = (self.pending_reaps.clone(), target.reaper_user());
            tokio::spawn(async move {
                if let Err(RuntimeError::Unavailable(_)) = reaper::reap(runtime.as_ref(), &container, &user, &id).await
                {
                    pending.push(container, user, id);
                }
            });
        }
        result
    }

    async fn attempt_inner(&self, target: &ContainerTarget, spec: &ExecSpec) -> Result<Attempt, ServiceError> {
        let t0 = std::time::Instant::now();
        let stream = self.runtime.start_exec(&target.id, spec).await.map_err(|e| start_error(target, e))?;
        let upgraded = t0.elapsed();
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let status = self.runtime.inspect_exec(&stream.exec_id).await.map_err(|e| start_error(target, e))?;
            // The daemon marks an exec running before the runtime has started it; only a pid proves it started.
            if status.pid > 0 {
                tracing::debug!(container = %target.name, exec_ms = upgraded.as_millis() as u64, pid_ms = t0.elapsed().as_millis() as u64, "exec started");
                return Ok(Attempt::Running(stream));
            }
            if let Some(code) = status.exit_code {
                // The runtime could not start the process at all (no pid): 126/127 mean not found / not executable.
                let mut out = Vec::new();
                let mut output = stream.output;
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), (&mut output).take(4096).read_to_end(&mut out)).await;
                let why = String::from_utf8_lossy(&out).trim().to_string();
                if code == 126 || code == 127 {
                    // Docker 20.10 says 126 for both; its message tells them apart.
                    let missing = code == 127 || why.contains("not found") || why.contains("no such file");
                    return Ok(Attempt::NotFound { why, executable: !missing });
                }
                return Err(ServiceError::new(ErrorCode::Internal, format!("the process did not start: {why}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::new(ErrorCode::Internal, "the daemon did not start the process in time"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_START_POLL);
        }
    }
}

fn shell(i: usize) -> Vec<String> {
    DEFAULT_SHELLS[i].iter().map(|s| s.to_string()).collect()
}

fn start_error(target: &ContainerTarget, e: RuntimeError) -> ServiceError {
    match e {
        // The container stopped between inspect and exec.
        RuntimeError::Conflict(m) => {
            ServiceError::new(ErrorCode::ContainerNotRunning, format!("container {} is not running: {m}", target.name))
        }
        RuntimeError::NotFound(_) => {
            ServiceError::new(ErrorCode::ContainerNotFound, format!("container {} no longer exists", target.name))
        }
        other => ServiceError::from_runtime(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_refs_cannot_escape_the_api_path() {
        for ok in ["web", "/web", "a1b2c3", "my_app.db-1", &"f".repeat(64), "local/web", "edge-2/a1b2", "h_1/my.db"] {
            assert!(check_container_ref(ok).is_ok(), "{ok}");
        }
        let bad_refs = [
            "",
            "/",
            "../info",
            "a/b/c",
            "a/",
            "/a/",
            "A/b",
            "-h/b",
            "h/../b",
            "h/.b",
            "a?b=1",
            "-x",
            ".x",
            "a b",
            "web%2F..",
            &"a".repeat(300),
        ];
        for bad in bad_refs {
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

    #[test]
    fn a_plan_has_the_defaults_and_no_leading_slash() {
        let plan = StartPlan::check(&StartTerminal {
            container_id: "/web".into(),
            cols: None,
            rows: Some(40),
            command: None,
            flow_control: true,
            tty: true,
        })
        .unwrap();
        assert_eq!((plan.container_ref.as_str(), plan.cols, plan.rows, plan.flow_control), ("web", 80, 40, true));
    }
}
