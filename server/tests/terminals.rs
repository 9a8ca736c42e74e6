//! Terminals end to end: the real server, a real Socket.IO client, the real Docker daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use app::protocol::{ExitReason, StartTerminal};
use common::*;
use rust_socketio::TransportType;

#[tokio::test]
async fn echo_round_trip_over_websocket_and_polling() {
    let c = TestContainer::start("echo", &bash_image()).await;
    let server = start_server(test_config()).await;
    for transport in [TransportType::Websocket, TransportType::Polling] {
        let client = TestClient::connect_with(&server, transport).await;
        let t = client.shell(&c.name).await;
        // The typed line shows `$((6*7))`; only the shell's evaluation prints `porthole-42`.
        client.run(&t.terminal_id, "echo porthole-$((6*7))", "porthole-42").await;
        client.disconnect().await;
    }
}
