//! Terminals that survive their socket: resume from an offset without losing or repeating a byte, bounded
//! logs, grace periods, and several viewers on one terminal. Real server, real Docker, real transports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use app::protocol::{AttachTerminal, ExitReason, StartTerminal, TerminalInfo, TerminalState};
use common::proxy::TcpCutter;
use common::*;

fn command(script: &str) -> StartTerminal {
    StartTerminal {
        container_id: String::new(),
        cols: None,
        rows: None,
        command: Some(vec!["bash".into(), "-c".into(), script.into()]),
        flow_control: false,
        tty: true,
    }
}

fn client_id() -> String {
    format!("it-{}", uuid::Uuid::new_v4().simple())
}

async fn info(server: &porthole_server::RunningServer, id: &app::protocol::TerminalId) -> TerminalInfo {
    get(format!("{}/api/v1/terminals/{id}", base_url(server))).await.json().await.unwrap()
}

/// The container writes a stream (with `-opost`, so tty bytes equal written bytes) to the terminal and to a
/// file; the transport is killed mid-stream; the client resumes from what it had. The bytes it ends up with
/// must equal the container's file exactly.
#[tokio::test]
async fn resume_after_the_transport_dies_loses_and_repeats_nothing() {
    let c = TestContainer::start("resume", &bash_image()).await;
    let server = start_server(test_config()).await;
    let cutter = TcpCutter::to(server.addr()).await;
    let me = client_id();
    let first = TestClient::connect_v2(&cutter.url(), &me).await;
    assert_eq!(first.hello().negotiated_version, 2);
    let script = "stty -opost -echo; for i in $(seq 1 4000); do echo \"line $i $RANDOM$RANDOM\"; \
                  if (( i % 200 == 0 )); then sleep 0.1; fi; done | tee /tmp/out; sleep 0.3";
    let mut req = command(script);
    req.container_id = c.name.clone();
    let t = first.start(req).await.unwrap();
    let id = t.terminal_id.clone();
    first.wait_for(&id, "line 300 ").await;
    cutter.cut();
    let had = first.bytes(&id);
    assert!(first.discontinuities().is_empty(), "{:?}", first.discontinuities());

    // While nobody is attached the process keeps running and its output is kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = info(&server, &id).await;
    assert!(matches!(listed.state, TerminalState::Detached | TerminalState::Exited), "{listed:?}");

    let second = TestClient::connect_v2(&base_url(&server), &me).await;
    let since = had.len() as u64;
    let attached = second
        .attach(&AttachTerminal { terminal_id: id.clone(), since: Some(since), flow_control: false })
        .await
        .unwrap();
    assert_eq!((attached.offset, attached.truncated), (since, false));
    let exit = second.wait_exit(&id).await;
    assert_eq!((exit.exit_code, exit.reason), (Some(0), ExitReason::Exited));
    assert_eq!(second.first_offset(&id), Some(since));
    assert!(second.discontinuities().is_empty(), "{:?}", second.discontinuities());

    let mut all = had.clone();
    all.extend_from_slice(&second.bytes(&id));
    let (code, expected) = c.exec(&["cat", "/tmp/out"]).await;
    assert_eq!(code, 0);
    assert_eq!(all.len(), expected.len(), "byte count differs from the container's stream");
    assert!(all == expected.as_bytes(), "bytes differ from the container's stream");
    let (_, sum) = c.exec(&["sha256sum", "/tmp/out"]).await;
    let mine = sha256(&all);
    assert!(sum.starts_with(&mine), "container {sum}, client {mine}");
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap().split_whitespace().next().unwrap().into()
}

#[tokio::test]
async fn attaching_older_than_the_log_says_truncated_and_gets_the_newest_bytes() {
    let c = TestContainer::start("truncate", &bash_image()).await;
    let mut config = test_config();
    config.output_log_bytes = 4096;
    let server = start_server(config).await;
    let me = client_id();
    let first = TestClient::connect_v2(&base_url(&server), &me).await;
    let mut req = command("stty -opost -echo; read go; seq 1 20000; sleep 30");
    req.container_id = c.name.clone();
    let t = first.start(req).await.unwrap();
    let id = t.terminal_id.clone();
    first.disconnect().await;
    // Nobody attached: the output runs past the 4 KiB log.
    let second = TestClient::connect_v2(&base_url(&server), &me).await;
    let probe =
        second.attach(&AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false }).await.unwrap();
    assert_eq!((probe.offset, probe.truncated), (0, false));
    second.input(&id, "go\n").await;
    second.wait_for(&id, "\n20000\n").await;
    second.disconnect().await;

    let third = TestClient::connect_v2(&base_url(&server), &me).await;
    let a =
        third.attach(&AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false }).await.unwrap();
    assert!(a.truncated, "{a:?}");
    assert!(a.offset > 0 && a.end - a.offset <= 4096 + 65536, "{a:?}");
    third.wait_for(&id, "\n20000\n").await;
    let got = third.bytes(&id);
    assert_eq!(got.len() as u64, a.end - a.offset);
    assert_eq!(third.first_offset(&id), Some(a.offset));
    // What it got is the tail of `seq 1 20000` exactly.
    let all: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    assert!(all.as_bytes().ends_with(&got), "not the tail of the stream");
    // A `since` beyond the end is an error.
    let err =
        third.attach(&AttachTerminal { terminal_id: id.clone(), since: Some(a.end + 10), flow_control: false }).await;
    assert_eq!(err.unwrap_err().code.as_str(), "invalid_payload");
}

#[tokio::test]
async fn a_detached_terminal_ends_when_the_grace_period_runs_out_leaving_no_process() {
    let c = TestContainer::start("grace", &bash_image()).await;
    let mut config = test_config();
    config.grace_period_secs = 3;
    let server = start_server(config).await;
    let client = TestClient::connect_v2(&base_url(&server), &client_id()).await;
    assert_eq!(client.hello().grace_period_secs, 3);
    let t = client.shell(&c.name).await;
    client.run(&t.terminal_id, "sleep 4848 & echo bg-$((6+6))", "bg-12").await;
    client.disconnect().await;

    eventually("the terminal to be listed as detached", || async {
        let i = info(&server, &t.terminal_id).await;
        i.state == TerminalState::Detached && i.attached == 0 && i.grace_left_ms.is_some_and(|ms| ms <= 3000)
    })
    .await;
    // Still running meanwhile.
    assert!(c.stray_processes().await.iter().any(|p| p.contains("sleep 4848")));
    eventually("the grace period to end the terminal", || async {
        let i = info(&server, &t.terminal_id).await;
        i.state == TerminalState::Exited && i.exit.as_ref().is_some_and(|e| e.reason == ExitReason::Abandoned)
    })
    .await;
    assert!(c.wait_no_strays(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test]
async fn reattaching_within_the_grace_period_keeps_the_shell() {
    let c = TestContainer::start("regrace", &bash_image()).await;
    let mut config = test_config();
    config.grace_period_secs = 2;
    let server = start_server(config).await;
    let me = client_id();
    let first = TestClient::connect_v2(&base_url(&server), &me).await;
    let t = first.shell(&c.name).await;
    first.run(&t.terminal_id, "KEEP=kept-$((7*7)); echo set-$((1+1))", "set-2").await;
    first.disconnect().await;
    let second = TestClient::connect_v2(&base_url(&server), &me).await;
    let a = second
        .attach(&AttachTerminal { terminal_id: t.terminal_id.clone(), since: None, flow_control: false })
        .await
        .unwrap();
    assert!(!a.ended);
    // Past the grace period: re-attaching cancelled the timer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.run(&t.terminal_id, "echo $KEEP", "kept-49").await;
    assert_eq!(info(&server, &t.terminal_id).await.state, TerminalState::Running);
}

#[tokio::test]
async fn two_sockets_on_one_terminal_see_the_same_bytes_and_both_may_type() {
    let c = TestContainer::start("shared", &bash_image()).await;
    let server = start_server(test_config()).await;
    let alice = TestClient::connect_v2(&base_url(&server), &client_id()).await;
    let bob = TestClient::connect_v2(&base_url(&server), &client_id()).await;
    let t = alice.shell(&c.name).await;
    let id = t.terminal_id.clone();
    alice.run(&id, "echo first-$((1+1))", "first-2").await;
    let a = bob.attach(&AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false }).await.unwrap();
    assert_eq!(a.offset, 0);
    assert_eq!(info(&server, &id).await.attached, 2);
    bob.run(&id, "echo from-bob-$((2+3))", "from-bob-5").await;
    alice.wait_for(&id, "from-bob-5").await;
    // The tty size follows whoever resized last.
    bob.resize(&id, 101, 31).await;
    alice.run(&id, "echo size=$(stty size)", "size=31 101").await;
    alice.resize(&id, 93, 27).await;
    bob.run(&id, "echo size=$(stty size)", "size=27 93").await;
    alice.run(&id, "seq 1 3000 | tail -1; exit 4", "3000").await;
    let (ea, eb) = (alice.wait_exit(&id).await, bob.wait_exit(&id).await);
    assert_eq!((ea.exit_code, eb.exit_code), (Some(4), Some(4)));
    assert_eq!(alice.bytes(&id), bob.bytes(&id), "the two viewers saw different bytes");
    assert!(alice.discontinuities().is_empty() && bob.discontinuities().is_empty());
}

#[tokio::test]
async fn a_terminal_that_ended_while_detached_replays_its_output_and_exit() {
    let c = TestContainer::start("ended", &bash_image()).await;
    let server = start_server(test_config()).await;
    let me = client_id();
    let first = TestClient::connect_v2(&base_url(&server), &me).await;
    let mut req = command("sleep 1; echo finished-$((8*8)); exit 9");
    req.container_id = c.name.clone();
    let t = first.start(req).await.unwrap();
    first.disconnect().await;
    // It ends while nobody watches, and is listed as exited with how.
    eventually("the terminal to end", || async {
        info(&server, &t.terminal_id).await.exit.is_some_and(|e| e.exit_code == Some(9))
    })
    .await;
    let second = TestClient::connect_v2(&base_url(&server), &me).await;
    let a = second
        .attach(&AttachTerminal { terminal_id: t.terminal_id.clone(), since: Some(0), flow_control: false })
        .await
        .unwrap();
    assert!(a.ended);
    second.wait_for(&t.terminal_id, "finished-64").await;
    let exit = second.wait_exit(&t.terminal_id).await;
    assert_eq!((exit.exit_code, exit.reason), (Some(9), ExitReason::Exited));
    // An ended terminal takes no input.
    let ack = second
        .request_raw(app::protocol::event::INPUT, serde_json::json!({"terminalId": t.terminal_id, "data": "x"}))
        .await;
    assert_eq!(ack["error"]["code"], "unknown_terminal");
}

#[tokio::test]
async fn heartbeat_settings_fit_behind_common_proxies() {
    // nginx closes idle proxied connections after 60 s, Cloudflare after 100 s: the server must ping more often.
    assert!(porthole_server::PING_INTERVAL < Duration::from_secs(60));
    assert!(porthole_server::PING_INTERVAL + porthole_server::PING_TIMEOUT <= Duration::from_secs(60));
    // And the ping interval is what the server announces in the Engine.IO handshake.
    let server = start_server(test_config()).await;
    let body = get(format!("{}/socket.io/?EIO=4&transport=polling", base_url(&server))).await.text().await.unwrap();
    let open: serde_json::Value = serde_json::from_str(body.trim_start_matches('0')).unwrap();
    assert_eq!(open["pingInterval"], porthole_server::PING_INTERVAL.as_millis() as u64);
    assert_eq!(open["pingTimeout"], porthole_server::PING_TIMEOUT.as_millis() as u64);
}

#[tokio::test]
async fn a_zero_grace_period_ends_terminals_when_their_socket_leaves() {
    let c = TestContainer::start("nograce", &bash_image()).await;
    let mut config = test_config();
    config.grace_period_secs = 0;
    let server = start_server(config).await;
    let client = TestClient::connect_v2(&base_url(&server), &client_id()).await;
    assert_eq!(client.hello().grace_period_secs, 0);
    let t = client.shell(&c.name).await;
    client.run(&t.terminal_id, "sleep 4949 & echo bg-$((4+4))", "bg-8").await;
    client.disconnect().await;
    assert!(c.wait_no_strays(Duration::from_secs(10)).await.is_empty());
    let i = info(&server, &t.terminal_id).await;
    assert_eq!(i.exit.map(|e| e.reason), Some(ExitReason::Disconnected));
}

#[tokio::test]
async fn a_flow_controlled_viewer_drains_an_ended_terminal_with_acks() {
    use app::protocol::{FLOW_HIGH_WATERMARK, event};
    let c = TestContainer::start("drain", &bash_image()).await;
    let server = start_server(test_config()).await;
    let me = client_id();
    let first = TestClient::connect_v2(&base_url(&server), &me).await;
    // 900 KB, more than the flow window, written while nobody is attached; then the process ends.
    let mut req = command("stty -opost; sleep 0.5; head -c 900000 /dev/zero | tr '\\0' 'z'; exit 5");
    req.container_id = c.name.clone();
    let t = first.start(req).await.unwrap();
    let id = t.terminal_id.clone();
    first.disconnect().await;
    eventually("the terminal to end", || async { info(&server, &id).await.exit.is_some() }).await;

    let second = TestClient::connect_v2(&base_url(&server), &me).await;
    let a =
        second.attach(&AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: true }).await.unwrap();
    assert!(a.ended && a.end >= 900_000 && a.end - a.offset > FLOW_HIGH_WATERMARK, "{a:?}");
    // Acks after the process ended are accepted, so the whole log and then the exit arrive.
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while second.exit_of(&id).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "stalled at {acked} of {}", a.end);
        let have = a.offset + second.bytes(&id).len() as u64;
        if have > acked {
            acked = have;
            second.emit_raw(event::OUTPUT_ACK, serde_json::json!({"terminalId": id, "processed": acked})).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.offset + second.bytes(&id).len() as u64, a.end);
    assert_eq!(second.exit_of(&id).unwrap().exit_code, Some(5));
    assert!(second.errors().is_empty(), "{:?}", second.errors());
}
