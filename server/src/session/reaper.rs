//! Ends every process a terminal started in its container.
//!
//! Docker has no "kill exec" call, and closing an exec's stream leaves its process running. Every terminal's
//! process is started with `PORTHOLE_TERMINAL=<terminal id>` in its environment; children inherit it. To close
//! a terminal, a short `sh` script is exec'd in the container (as root) that signals every process carrying that
//! marker: SIGHUP first (what a closed terminal means; shells pass it on to their jobs), SIGKILL for whatever is
//! left after half a second. A process that scrubs its own environment escapes; that is documented.
//!
//! Closes that arrive together in one container share one reaper exec ([`Batches`]): a hundred terminals closed
//! at once cost one scan of the container's processes, not a hundred.
//!
//! When the daemon cannot be reached, the work is queued (bounded by [`MAX_PENDING_REAPS`]) and retried every
//! [`RETRY_INTERVAL`] until the daemon answers, so a daemon outage does not leak shells either.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::TerminalId;
use tokio::io::AsyncReadExt;

use crate::docker::{ContainerRuntime, ExecSpec, RuntimeError};

/// Environment variable that marks a terminal's processes.
pub const MARKER_ENV: &str = "PORTHOLE_TERMINAL";
/// Most queued reaps waiting for the daemon to return; the oldest is dropped (and logged) beyond it.
pub const MAX_PENDING_REAPS: usize = 4096;
/// How often queued reaps are retried.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Upper bound on one reap, including the daemon round trips.
const REAP_TIMEOUT: Duration = Duration::from_secs(15);
/// Output of the reaper script that is read (and discarded) at most.
const MAX_REAPER_OUTPUT: u64 = 64 * 1024;

/// Shells the script is tried with, in order.
const SHELLS: [&[&str]; 3] = [&["sh"], &["bash"], &["busybox", "sh"]];

/// The arguments are marker values. Exits 0 when no marked process is left, 1 when some survived SIGKILL rounds.
const SCRIPT: &str = r#"for tool in grep kill; do command -v "$tool" >/dev/null 2>&1 || { echo "no $tool in the container"; exit 3; }; done
n=$#
for id in "$@"; do set -- "$@" -e "PORTHOLE_TERMINAL=$id"; done
shift "$n"
# One grep over every process's environment per round (grep -z reads NUL-separated entries); without -z,
# two small processes per process scanned.
if printf 'a\000' | grep -qzx a 2>/dev/null; then
  marked() { grep -l -zxF "$@" /proc/[0-9]*/environ 2>/dev/null; }
else
  command -v tr >/dev/null 2>&1 || { echo "no tr in the container"; exit 3; }
  marked() {
    for env in /proc/[0-9]*/environ; do
      tr '\000' '\n' < "$env" 2>/dev/null | grep -qxF "$@" && echo "$env"
    done
  }
fi
signal=HUP
round=0
while [ "$round" -lt 30 ]; do
  found=
  for env in $(marked "$@"); do
    pid=${env#/proc/}
    pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    kill -s "$signal" "$pid" 2>/dev/null && found=1
  done
  [ -z "$found" ] && exit 0
  round=$((round + 1))
  [ "$round" -ge 5 ] && signal=KILL
  sleep 0.1 2>/dev/null || sleep 1
done
exit 1
"#;

/// The marker entry for a terminal's environment.
pub fn marker(id: &TerminalId) -> String {
    format!("{MARKER_ENV}={id}")
}

/// Most terminals ended by one reaper exec.
pub const MAX_BATCH: usize = 128;

/// Kills the marked processes of one terminal now, as `user` (see [`crate::docker::ContainerTarget::reaper_user`]).
pub async fn reap(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    user: &str,
    id: &TerminalId,
) -> Result<(), RuntimeError> {
    reap_all(runtime, container_id, user, std::slice::from_ref(id)).await
}

/// Kills the marked processes of every terminal in `ids` (all in one container) with one exec, as `user`.
pub async fn reap_all(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    user: &str,
    ids: &[TerminalId],
) -> Result<(), RuntimeError> {
    let id = ids.first().map(|t| t.0.as_str()).unwrap_or_default();
    let more = if ids.len() > 1 { format!(" and {} more", ids.len() - 1) } else { String::new() };
    let id = format!("{id}{more}");
    let work = async {
        let mut failure = String::new();
        for shell in SHELLS {
            let mut cmd: Vec<String> = shell.iter().map(|s| s.to_string()).collect();
            cmd.extend(["-c".into(), SCRIPT.into(), "porthole-reaper".into()]);
            cmd.extend(ids.iter().map(|t| t.0.clone()));
            let spec = ExecSpec { cmd, env: vec![], user: Some(user.to_string()), tty: false };
            let mut stream = runtime.start_exec(container_id, &spec).await?;
            drop(stream.input);
            let mut sink = Vec::new();
            // Reading to the end waits for the script to finish; its output only matters for the log.
            let _ = (&mut stream.output).take(MAX_REAPER_OUTPUT).read_to_end(&mut sink).await;
            // The exit status can be recorded a moment after the stream ends.
            let mut status = runtime.inspect_exec(&stream.exec_id).await?;
            for _ in 0..40 {
                if !status.running && status.exit_code.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                status = runtime.inspect_exec(&stream.exec_id).await?;
            }
            match status.exit_code {
                Some(0) => return Ok(()),
                // This shell does not exist in the container: try the next.
                Some(126 | 127) if status.pid == 0 => {
                    failure = format!("no {} in the container", shell.join(" "));
                }
                code => {
                    failure = format!("exit {code:?}: {}", String::from_utf8_lossy(&sink).trim());
                    break;
                }
            }
        }
        Err(RuntimeError::Api { status: 0, message: format!("ending the processes of {id} failed ({failure})") })
    };
    match tokio::time::timeout(REAP_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::Unavailable(format!("ending the processes of {id} timed out"))),
    }
}

type Waiter = (TerminalId, tokio::sync::oneshot::Sender<Result<(), RuntimeError>>);
/// Container id -> the user the reaper runs as there, and the closes waiting.
type Waiting = std::collections::HashMap<String, (String, Vec<Waiter>)>;

/// Reaps waiting per container, each container's served by one task at a time: the closes that arrive while a
/// reap runs go together in the next one (at most [`MAX_BATCH`] each).
#[derive(Debug, Default, Clone)]
pub struct Batches {
    waiting: Arc<Mutex<Waiting>>,
}

impl Batches {
    /// Ends `id`'s processes in `container_id`, together with whatever else is being closed there.
    pub async fn reap(
        &self,
        runtime: Arc<dyn ContainerRuntime>,
        container_id: &str,
        user: &str,
        id: &TerminalId,
    ) -> Result<(), RuntimeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let first = !waiting.contains_key(container_id);
            waiting
                .entry(container_id.to_string())
                .or_insert_with(|| (user.to_string(), Vec::new()))
                .1
                .push((id.clone(), tx));
            first
        };
        if first {
            let (batches, container) = (self.clone(), container_id.to_string());
            tokio::spawn(async move { batches.serve(runtime, container).await });
        }
        rx.await.unwrap_or_else(|_| Err(RuntimeError::Unavailable("the reaper task ended".into())))
    }

    async fn serve(&self, runtime: Arc<dyn ContainerRuntime>, container_id: String) {
        // The first request waits a moment, so closes sent together go together.
        tokio::task::yield_now().await;
        loop {
            let (user, batch): (String, Vec<Waiter>) = {
                let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                let Some((user, list)) = waiting.get_mut(&container_id) else { return };
                if list.is_empty() {
                    waiting.remove(&container_id);
                    return;
                }
                let n = list.len().min(MAX_BATCH);
                (user.clone(), list.drain(..n).collect())
            };
            let ids: Vec<TerminalId> = batch.iter().map(|(id, _)| id.clone()).collect();
            let result = reap_all(runtime.as_ref(), &container_id, &user, &ids).await;
            for (_, tx) in batch {
                let _ = tx.send(result.clone());
            }
        }
    }
}

/// Reaps that must wait for the daemon.
#[derive(Debug, Default, Clone)]
pub struct PendingReaps {
    /// (container id, reaper user, terminal).
    queue: Arc<Mutex<VecDeque<(String, String, TerminalId)>>>,
}

impl PendingReaps {
    pub fn push(&self, container_id: String, user: String, id: TerminalId) {
        tracing::warn!(container = %container_id, terminal = %id, "daemon unreachable; will end the terminal's processes when it returns");
        self.requeue(container_id, user, id);
    }

    fn requeue(&self, container_id: String, user: String, id: TerminalId) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_PENDING_REAPS
            && let Some((c, _, t)) = q.pop_front()
        {
            tracing::error!(container = %c, terminal = %t, "pending reap queue full; giving up on the oldest");
        }
        q.push_back((container_id, user, id));
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tries every queued reap once; keeps those that still cannot reach the daemon.
    pub async fn retry(&self, runtime: &dyn ContainerRuntime) {
        let batch: Vec<_> = self.queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for (container_id, user, id) in batch {
            match reap(runtime, &container_id, &user, &id).await {
                Ok(()) => {
                    tracing::info!(container = %container_id, terminal = %id, "ended processes left from a daemon outage")
                }
                Err(RuntimeError::Unavailable(_)) => self.requeue(container_id, user, id),
                // The container is gone or the reap itself failed for good: nothing more to do.
                Err(e) => {
                    tracing::warn!(container = %container_id, terminal = %id, error = %e, "dropping pending reap")
                }
            }
        }
    }
}
