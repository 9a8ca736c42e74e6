//! The REST API and the raw Socket.IO wire format, checked byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use app::protocol::{ContainerSummary, ErrorReply, Health, StartTerminal, TerminalInfo};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn healthz_and_container_list() {
    let running = TestContainer::start("rest-list", &bash_image()).await;
    let stopped = TestContainer::stopped("rest-list-stopped", &sh_image()).await;
    let server = start_server(test_config()).await;
    let base = base_url(&server);

    let res = get(format!("{base}/healthz")).await;
    assert_eq!(res.status(), 200);
    let health: Health = res.json().await.unwrap();
    assert_eq!((health.status.as_str(), health.protocol_version), ("ok", app::protocol::PROTOCOL_VERSION));
    assert!(health.docker_api_version.starts_with("1."), "{}", health.docker_api_version);

    let res = get(format!("{base}/api/v1/containers")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let list: Vec<ContainerSummary> = res.json().await.unwrap();
    let r = list.iter().find(|c| c.name == running.name).expect("running container listed");
    assert_eq!(
        (r.id.as_str(), r.image.as_str(), r.state.as_str()),
        (running.id.as_str(), bash_image().as_str(), "running")
    );
    assert!(r.status.starts_with("Up"), "{}", r.status);
    assert!(r.created > 1_700_000_000, "{}", r.created);
    let s = list.iter().find(|c| c.name == stopped.name).expect("stopped container listed");
    assert_eq!(s.state, "exited");
    assert!(s.status.starts_with("Exited"), "{}", s.status);
    // Running containers come first.
    let first_stopped = list.iter().position(|c| c.state != "running").unwrap();
    assert!(list[first_stopped..].iter().all(|c| c.state != "running"));
}

#[tokio::test]
async fn terminal_status_and_unknown_ids() {
    let c = TestContainer::start("rest-terms", &bash_image()).await;
    let server = start_server(test_config()).await;
    let base = base_url(&server);
    let client = TestClient::connect(&server).await;
    let t = client
        .start(StartTerminal {
            container_id: c.name.clone(),
            cols: Some(90),
            rows: Some(20),
            command: None,
            flow_control: false,
            tty: true,
        })
        .await
        .unwrap();
    client.run(&t.terminal_id, "echo listed-$((10+1))", "listed-11").await;

    let list: Vec<TerminalInfo> = get(format!("{base}/api/v1/terminals")).await.json().await.unwrap();
    assert_eq!(list.len(), 1);
    let info = &list[0];
    assert_eq!(info.terminal_id, t.terminal_id);
    assert_eq!((info.container_id.as_str(), info.container_name.as_str()), (c.id.as_str(), c.name.as_str()));
    assert_eq!(info.command, ["bash", "-l"]);
    assert_eq!((info.cols, info.rows), (90, 20));
    assert!(info.bytes_out >= "listed-11".len() as u64);
    assert!(info.started_at_ms > 1_700_000_000_000);

    let one: TerminalInfo = get(format!("{base}/api/v1/terminals/{}", t.terminal_id)).await.json().await.unwrap();
    assert_eq!(one.terminal_id, t.terminal_id);

    let res = get(format!("{base}/api/v1/terminals/t-unknown")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code.as_str(), "unknown_terminal");
    let res = get(format!("{base}/api/v1/nothing-here")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code.as_str(), "not_found");
}

/// The next text frame that is not an Engine.IO ping (answered) or a container broadcast.
async fn next_text<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
{
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.expect("frame in time").unwrap().unwrap() {
            Message::Text(t) if t.as_str() == "2" => {
                let _ = ws.send(Message::text("3")).await;
            }
            // Other tests' containers come and go: their broadcasts are not what this test waits for.
            Message::Text(t) if t.starts_with("42[\"containers-changed\"") => {}
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => panic!("unexpected binary frame {b:?}"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn wire_format_binary_input_and_output_as_documented() {
    let c = TestContainer::start("wire", &bash_image()).await;
    let server = start_server(test_config()).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    // Engine.IO open, Socket.IO connect to "/" with the token as auth, then the hello event.
    assert!(next_text(&mut ws).await.starts_with("0{"));
    ws.send(Message::text(format!("40{}", json!({"token": TEST_TOKEN})))).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{\"sid\""));
    let hello = next_text(&mut ws).await;
    let hello: Value = serde_json::from_str(hello.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(hello[0], "hello");
    assert_eq!(hello[1]["protocolVersion"], app::protocol::PROTOCOL_VERSION);
    // No version in the handshake: the connection speaks version 1.
    assert_eq!(hello[1]["negotiatedVersion"], 1);

    // start-terminal with ack id 7.
    let start = json!(["start-terminal", {"containerId": c.name, "command": ["sh", "-c", "stty raw -echo; echo go; head -c 6 | od -An -tx1; sleep 0.3"]}]);
    ws.send(Message::text(format!("427{start}"))).await.unwrap();
    let ack = next_text(&mut ws).await;
    let ack: Value = serde_json::from_str(ack.strip_prefix("437").expect(&ack)).unwrap();
    let id = ack[0]["terminalId"].as_str().unwrap().to_string();
    assert_eq!(ack[0]["command"], json!(["sh", "-c", "stty raw -echo; echo go; head -c 6 | od -An -tx1; sleep 0.3"]));

    // Output: a binary event whose data is a placeholder, followed by the raw bytes as a binary frame.
    let mut output = Vec::new();
    let mut exit = None;
    let mut sent_input = false;
    while exit.is_none() {
        let frame = tokio::time::timeout(PATIENCE, ws.next()).await.expect("frame").unwrap().unwrap();
        let Message::Text(text) = frame else { continue };
        if let Some(rest) = text.strip_prefix("451-") {
            let v: Value = serde_json::from_str(rest).unwrap();
            // Each event says where its bytes start; events follow each other without gaps.
            assert_eq!(
                v,
                json!(["output", {"terminalId": id, "offset": output.len(), "data": {"_placeholder": true, "num": 0}}])
            );
            match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap() {
                Message::Binary(b) => output.extend_from_slice(&b),
                other => panic!("expected the attachment, got {other:?}"),
            }
            if !sent_input && String::from_utf8_lossy(&output).contains("go") {
                // Binary input: bytes that are not UTF-8, as an attachment.
                sent_input = true;
                let header = json!(["input", {"terminalId": id, "data": {"_placeholder": true, "num": 0}}]);
                ws.send(Message::text(format!("451-{header}"))).await.unwrap();
                ws.send(Message::binary(vec![0x00, 0xff, 0xfe, 0x01, 0x41, 0x7f])).await.unwrap();
            }
        } else if let Some(rest) = text.strip_prefix("42") {
            let v: Value = serde_json::from_str(rest).unwrap();
            if v[0] == "exit" {
                exit = Some(v[1].clone());
            }
        } else if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
        }
    }
    let shown = String::from_utf8_lossy(&output);
    assert!(shown.contains("00 ff fe 01 41 7f"), "container read other bytes: {shown:?}");
    assert_eq!(exit.unwrap(), json!({"terminalId": id, "exitCode": 0, "reason": "exited"}));
    let _ = ws.close(None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn container_start_and_stop_are_pushed_to_every_client() {
    let server = start_server(test_config()).await;
    let a = TestClient::connect(&server).await;
    let b = TestClient::connect(&server).await;
    // The server subscribes to Docker events as it starts; wait until that subscription delivers.
    'flowing: for _ in 0..10 {
        let probe = TestContainer::start("events-probe", &sh_image()).await;
        for _ in 0..20 {
            if a.changes().iter().any(|ch| ch.container_id == probe.id) {
                break 'flowing;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let c = TestContainer::start("events", &sh_image()).await;
    for client in [&a, &b] {
        client.wait_change(&c.id, "create").await;
        client.wait_change(&c.id, "start").await;
    }
    // Exec'ing into a container (as terminals do) is not a list change and is not pushed.
    let t = a.shell(&c.name).await;
    a.run(&t.terminal_id, "echo quiet-$((2*21))", "quiet-42").await;
    a.close(&t.terminal_id).await.unwrap();
    c.stop().await;
    a.wait_change(&c.id, "die").await;
    let actions: Vec<String> =
        a.changes().into_iter().filter(|ch| ch.container_id == c.id).map(|ch| ch.action).collect();
    assert!(actions.iter().all(|a| !a.starts_with("exec")), "{actions:?}");
}
