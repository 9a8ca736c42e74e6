//! A fake [`ContainerRuntime`] for the session core's pure unit tests: one running container, `echo`, whose
//! tty processes write back what they read (like a tty in canonical mode without a shell), and a reaper exec
//! that ends them. Commands named `missing` are not found (126/127 with no pid). Integration tests use the real
//! daemon instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::ContainerSummary;
use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{
    ContainerEvent, ContainerRuntime, ContainerSpec, ContainerTarget, ExecSpec, ExecStatus, ExecStream, RuntimeError,
};

/// The fake's one container.
pub const CONTAINER: &str = "echo";

#[derive(Debug, Clone)]
struct Exec {
    status: ExecStatus,
    /// The `PORTHOLE_TERMINAL` marker it carries.
    marker: Option<String>,
    kill: CancellationToken,
}

/// The fake runtime.
#[derive(Debug, Default)]
pub struct EchoRuntime {
    execs: Arc<Mutex<HashMap<String, Exec>>>,
    next: AtomicU64,
    /// Resizes seen, in order.
    pub resizes: Mutex<Vec<(String, u16, u16)>>,
}

impl EchoRuntime {
    /// Execs still running.
    pub fn running(&self) -> usize {
        self.execs.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|e| e.status.running).count()
    }

    fn finish(execs: &Mutex<HashMap<String, Exec>>, id: &str, code: i64) {
        if let Some(e) = execs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(id) {
            e.status = ExecStatus { running: false, exit_code: Some(code), pid: e.status.pid };
        }
    }
}

fn target() -> ContainerTarget {
    ContainerTarget {
        id: CONTAINER.into(),
        host: String::new(),
        name: CONTAINER.into(),
        state: "running".into(),
        accepts_exec: true,
        labels: Default::default(),
        user: String::new(),
        caps_dropped: false,
        oom_killed: false,
    }
}

#[async_trait]
impl ContainerRuntime for EchoRuntime {
    async fn ping(&self) -> Result<String, RuntimeError> {
        Ok("1.41".into())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        Ok(vec![])
    }

    async fn resolve(&self, container_ref: &str) -> Result<ContainerTarget, RuntimeError> {
        if container_ref == CONTAINER { Ok(target()) } else { Err(RuntimeError::NotFound(container_ref.into())) }
    }

    async fn start_exec(&self, _container_id: &str, spec: &ExecSpec) -> Result<ExecStream, RuntimeError> {
        let id = format!("exec-{}", self.next.fetch_add(1, Ordering::SeqCst));
        let marker = spec.env.iter().find_map(|e| e.strip_prefix("PORTHOLE_TERMINAL=")).map(str::to_string);
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (mut read, mut write) = tokio::io::split(ours);
        let kill = CancellationToken::new();
        let missing = spec.cmd.first().is_some_and(|c| c == "missing");
        let pid = if missing { 0 } else { 1 };
        self.execs.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            Exec {
                status: ExecStatus { running: !missing, exit_code: missing.then_some(127), pid },
                marker,
                kill: kill.clone(),
            },
        );
        let execs = self.execs.clone();
        let exec_id = id.clone();
        if spec.cmd.iter().any(|a| a == "porthole-reaper") {
            // The reaper: end every exec with one of the markers after its name.
            let at = spec.cmd.iter().position(|a| a == "porthole-reaper").unwrap_or(0);
            let wanted: Vec<String> = spec.cmd[at + 1..].to_vec();
            let victims: Vec<_> = execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|e| e.marker.as_ref().is_some_and(|m| wanted.contains(m)) && e.status.running)
                .map(|e| e.kill.clone())
                .collect();
            victims.iter().for_each(CancellationToken::cancel);
            tokio::spawn(async move {
                drop((read, write));
                tokio::time::sleep(Duration::from_millis(1)).await;
                EchoRuntime::finish(&execs, &exec_id, 0);
            });
        } else if missing {
            tokio::spawn(async move {
                let _ = write.write_all(b"exec: \"missing\": executable file not found in $PATH").await;
            });
        } else {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let code = loop {
                    tokio::select! {
                        r = read.read(&mut buf) => match r {
                            Ok(0) | Err(_) => break 0,
                            Ok(n) => if write.write_all(&buf[..n]).await.is_err() { break 0 },
                        },
                        _ = kill.cancelled() => break 137,
                    }
                };
                EchoRuntime::finish(&execs, &exec_id, code);
            });
        }
        let (output, input) = tokio::io::split(theirs);
        Ok(ExecStream { exec_id: id, output: Box::pin(output), input: Box::pin(input) })
    }

    async fn inspect_exec(&self, exec_id: &str) -> Result<ExecStatus, RuntimeError> {
        let execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        execs.get(exec_id).map(|e| e.status).ok_or_else(|| RuntimeError::NotFound(exec_id.into()))
    }

    async fn resize_exec(&self, exec_id: &str, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        self.resizes.lock().unwrap_or_else(|e| e.into_inner()).push((exec_id.into(), cols, rows));
        Ok(())
    }

    async fn container_events(&self) -> Result<BoxStream<'static, Result<ContainerEvent, RuntimeError>>, RuntimeError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }

    async fn create_container(&self, _spec: &ContainerSpec) -> Result<String, RuntimeError> {
        Err(RuntimeError::Api { status: 501, message: "the echo runtime makes no containers".into() })
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        if id == CONTAINER { Ok(()) } else { Err(RuntimeError::NotFound(id.into())) }
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotFound(id.into()))
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotFound(id.into()))
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(vec!["runc".into()])
    }
}
