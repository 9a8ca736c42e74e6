//! Watches the daemon's container events and tells the connected clients that may see the container, so
//! container lists refresh by themselves. Reconnects (with a short pause) whenever the daemon goes away, and
//! then tells every client to refresh once, since events may have been missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use app::protocol::{ContainersChanged, event};
use futures_util::StreamExt;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerEvent, ContainerRuntime};
use crate::state::{AppState, Caller};

/// Pause before reconnecting to the event stream after it broke.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled.
pub async fn container_events(
    runtime: Arc<dyn ContainerRuntime>,
    io: SocketIo,
    state: AppState,
    stop: CancellationToken,
) {
    let mut missed = false;
    loop {
        let stream = tokio::select! {
            s = runtime.container_events() => s,
            _ = stop.cancelled() => return,
        };
        match stream {
            Ok(mut events) => {
                if std::mem::take(&mut missed) {
                    let change = ContainersChanged { container_id: String::new(), action: "resync".into() };
                    send(&io, &state, &change, None);
                }
                loop {
                    let next = tokio::select! {
                        n = events.next() => n,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Some(Ok(e)) => {
                            tracing::debug!(container = %e.change.container_id, action = %e.change.action, "container event");
                            send(&io, &state, &e.change, Some(&e));
                            if let Some(cluster) = state.cluster() {
                                cluster.tell(&e);
                            }
                            if e.change.action == "die" {
                                state.container_died(&e.change.container_id);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "container event stream broke");
                            break;
                        }
                        None => break,
                    }
                }
                missed = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "container events unavailable");
                missed = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Cluster mode: passes on the other nodes' container events (of the hosts this node does not serve itself:
/// those it hears from its own daemons) until `stop`. Resubscribes after Redis went away, then has the clients
/// refresh once.
pub async fn cluster_events(io: SocketIo, state: AppState, stop: CancellationToken) {
    let Some(cluster) = state.cluster().cloned() else { return };
    let mut missed = false;
    loop {
        match cluster.subscribe_events().await {
            Ok(events) => {
                if std::mem::take(&mut missed) {
                    let change = ContainersChanged { container_id: String::new(), action: "resync".into() };
                    send(&io, &state, &change, None);
                }
                let mut events = std::pin::pin!(events);
                loop {
                    let next = tokio::select! {
                        n = events.next() => n,
                        _ = stop.cancelled() => return,
                    };
                    let Some(e) = next else { break };
                    if cluster.hosts().contains(&e.host) {
                        continue;
                    }
                    let change = ContainersChanged { container_id: e.container_id, action: e.action };
                    let about = ContainerEvent { change: change.clone(), name: e.name, labels: e.labels };
                    send(&io, &state, &change, Some(&about));
                }
                missed = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the other nodes' container events are unavailable");
                missed = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Passes on the service layer's container notices (a sandbox that became someone's) until `stop`.
pub async fn container_notices(io: SocketIo, state: AppState, stop: CancellationToken) {
    let mut notices = state.container_notices();
    loop {
        let next = tokio::select! {
            n = notices.recv() => n,
            _ = stop.cancelled() => return,
        };
        match next {
            Ok(e) => send(&io, &state, &e.change, Some(&e)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "container notices missed");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Emits `change` to every socket whose user may see the container (`about`); to all for a resync.
fn send(io: &SocketIo, state: &AppState, change: &ContainersChanged, about: Option<&ContainerEvent>) {
    for socket in io.sockets() {
        let Some(caller) = socket.extensions.get::<Caller>() else { continue };
        if about.is_some_and(|e| !state.may_see_container(&caller, &e.change.container_id, &e.name, &e.labels)) {
            continue;
        }
        if let Err(e) = socket.emit(<event::ContainersChanged as app::protocol::ServerEvent>::NAME, change) {
            tracing::debug!(error = ?e, "could not send a container event");
        }
    }
}
