//! Watches the daemon's container events and tells every connected client, so container lists refresh by
//! themselves. Reconnects (with a short pause) whenever the daemon goes away, and then tells clients to
//! refresh once, since events may have been missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use app::protocol::{ContainersChanged, event};
use futures_util::StreamExt;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use crate::docker::ContainerRuntime;

/// Pause before reconnecting to the event stream after it broke.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled.
pub async fn container_events(runtime: Arc<dyn ContainerRuntime>, io: SocketIo, stop: CancellationToken) {
    let mut missed = false;
    loop {
        let stream = tokio::select! {
            s = runtime.container_events() => s,
            _ = stop.cancelled() => return,
        };
        match stream {
            Ok(mut events) => {
                if std::mem::take(&mut missed) {
                    broadcast(&io, ContainersChanged { container_id: String::new(), action: "resync".into() }).await;
                }
                loop {
                    let next = tokio::select! {
                        n = events.next() => n,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Some(Ok(change)) => {
                            tracing::debug!(container = %change.container_id, action = %change.action, "container event");
                            broadcast(&io, change).await;
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

async fn broadcast(io: &SocketIo, change: ContainersChanged) {
    if let Err(e) = io.emit(event::CONTAINERS_CHANGED, &change).await {
        tracing::debug!(error = ?e, "could not broadcast a container event");
    }
}
