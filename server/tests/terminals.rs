//! Terminals end to end: the real server, a real Socket.IO client, the real Docker daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use app::protocol::{ExitReason, StartTerminal};
use common::*;
use rust_socketio::TransportType;

fn start(container: &str, command: Option<&[&str]>, size: Option<(u16, u16)>) -> StartTerminal {
    StartTerminal {
        container_id: container.to_string(),
        cols: size.map(|s| s.0),
        rows: size.map(|s| s.1),
        command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
        flow_control: false,
        tty: true,
    }
}

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

#[tokio::test]
async fn default_shell_is_bash_when_the_container_has_it() {
    let c = TestContainer::start("bash", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    assert_eq!(t.command, ["bash", "-l"]);
    assert_eq!(t.container_name, c.name);
    assert_eq!(t.container_id, c.id);
    assert_eq!((t.cols, t.rows), (80, 24));
    client.run(&t.terminal_id, "echo bash-${BASH_VERSINFO[0]}-ok", "bash-5-ok").await;
}

#[tokio::test]
async fn default_shell_falls_back_to_sh_without_bash() {
    let c = TestContainer::start("sh", &sh_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    assert_eq!(t.command, ["sh", "-l"]);
    client.run(&t.terminal_id, "echo sh-$((1+1))-ok", "sh-2-ok").await;
    // And asking for bash there is a clear error, not a dead terminal.
    let err = client.start(start(&c.name, Some(&["bash"]), None)).await.unwrap_err();
    assert_eq!(err.code.as_str(), "command_not_found");
    assert!(err.message.contains("bash"), "{}", err.message);
}

#[tokio::test]
async fn container_is_found_by_id_prefix_and_by_name() {
    let c = TestContainer::start("refs", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    for r in [c.id.clone(), c.id[..12].to_string(), c.name.clone(), format!("/{}", c.name)] {
        let t = client.start(start(&r, Some(&["echo", "found-it"]), None)).await.unwrap();
        assert_eq!(t.container_id, c.id);
        client.wait_for(&t.terminal_id, "found-it").await;
    }
}

#[tokio::test]
async fn explicit_command_runs_and_its_exit_code_is_reported() {
    let c = TestContainer::start("cmd", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.start(start(&c.name, Some(&["sh", "-c", "echo ran-$((2+3)); exit 3"]), None)).await.unwrap();
    assert_eq!(t.command, ["sh", "-c", "echo ran-$((2+3)); exit 3"]);
    client.wait_for(&t.terminal_id, "ran-5").await;
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!((exit.exit_code, exit.reason), (Some(3), ExitReason::Exited));
}

#[tokio::test]
async fn shell_exit_gives_its_code_and_the_server_keeps_serving() {
    let c = TestContainer::start("exit", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    client.run(&t.terminal_id, "echo ready-$((1))", "ready-1").await;
    client.input(&t.terminal_id, "exit 7\n").await;
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!((exit.exit_code, exit.reason), (Some(7), ExitReason::Exited));
    // The ended terminal is gone; a new one on the same socket works.
    assert_eq!(client.close(&t.terminal_id).await.unwrap_err().code.as_str(), "unknown_terminal");
    let t2 = client.shell(&c.name).await;
    client.run(&t2.terminal_id, "echo again-$((2))", "again-2").await;
}

#[tokio::test]
async fn resize_is_visible_through_stty_size() {
    let c = TestContainer::start("resize", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.start(start(&c.name, None, Some((100, 30)))).await.unwrap();
    assert_eq!((t.cols, t.rows), (100, 30));
    client.run(&t.terminal_id, "echo size=$(stty size)", "size=30 100").await;
    client.resize(&t.terminal_id, 132, 43).await;
    client.run(&t.terminal_id, "echo size=$(stty size)", "size=43 132").await;
    client.resize(&t.terminal_id, 1000, 1000).await;
    client.run(&t.terminal_id, "echo size=$(stty size)", "size=1000 1000").await;
    // The REST view follows too.
    let info: app::protocol::TerminalInfo =
        get(format!("{}/api/v1/terminals/{}", base_url(&server), t.terminal_id)).await.json().await.unwrap();
    assert_eq!((info.cols, info.rows), (1000, 1000));
}

#[tokio::test]
async fn an_explicit_command_sees_the_requested_size() {
    let c = TestContainer::start("cmdsize", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    // A command that reads the size once it starts; the size is applied before its first read.
    let t = client
        .start(start(&c.name, Some(&["sh", "-c", "sleep 0.3; echo size=$(stty size)"]), Some((91, 17))))
        .await
        .unwrap();
    client.wait_for(&t.terminal_id, "size=17 91").await;
}

#[tokio::test]
async fn multibyte_utf8_split_across_chunks_arrives_intact() {
    let c = TestContainer::start("utf8", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    // 20,000 x 9 bytes (2+3+4-byte characters): far more than one read, so chunk boundaries fall inside
    // characters. No newline, so the tty does not rewrite anything.
    let script = "i=0; while [ $i -lt 20000 ]; do printf 'é€😀'; i=$((i+1)); done";
    let t = client.start(start(&c.name, Some(&["sh", "-c", script]), None)).await.unwrap();
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.exit_code, Some(0));
    let bytes = client.bytes(&t.terminal_id);
    let expected = "é€😀".repeat(20_000);
    assert_eq!(bytes.len(), expected.len());
    assert!(bytes == expected.as_bytes(), "output differs from what the container printed");
}

#[tokio::test]
async fn raw_bytes_including_nul_and_low_control_bytes_pass_unchanged() {
    let c = TestContainer::start("rawbytes", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    // Output that starts with 0x01/0x02/0x00 looks like a Docker stream header to a naive reader.
    let t = client
        .start(start(&c.name, Some(&["sh", "-c", "sleep 0.2; printf '\\001\\002\\000\\377abc'; sleep 0.2; printf '\\002\\000\\000\\000\\000\\000\\000\\011tail'"]), None))
        .await
        .unwrap();
    client.wait_exit(&t.terminal_id).await;
    assert_eq!(client.bytes(&t.terminal_id), b"\x01\x02\x00\xffabc\x02\x00\x00\x00\x00\x00\x00\x09tail");
}

#[tokio::test]
async fn two_terminals_on_one_socket_are_independent() {
    let c = TestContainer::start("two", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let a = client.shell(&c.name).await;
    let b = client.shell(&c.name).await;
    assert_ne!(a.terminal_id, b.terminal_id);
    client.input(&a.terminal_id, "V=alpha; cd /tmp\n").await;
    client.input(&b.terminal_id, "V=beta; cd /\n").await;
    client.run(&a.terminal_id, "echo a:$V:$(pwd):$((1+1))", "a:alpha:/tmp:2").await;
    client.run(&b.terminal_id, "echo b:$V:$(pwd):$((1+1))", "b:beta:/:2").await;
    assert!(!client.screen(&a.terminal_id).contains("beta"));
    assert!(!client.screen(&b.terminal_id).contains("alpha"));
    // Closing one leaves the other working.
    client.close(&a.terminal_id).await.unwrap();
    assert_eq!(client.wait_exit(&a.terminal_id).await.reason, ExitReason::Closed);
    client.run(&b.terminal_id, "echo still-$((3*3))", "still-9").await;
    // Different containers on one socket too.
    let other = TestContainer::start("two-b", &sh_image()).await;
    let o = client.shell(&other.name).await;
    client.run(&o.terminal_id, "echo other-$((4*4))", "other-16").await;
}

#[tokio::test]
async fn input_arrives_in_order_under_a_burst() {
    let c = TestContainer::start("order", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client
        .start(start(&c.name, Some(&["sh", "-c", "stty raw -echo; head -c 3000 | sha256sum; sleep 1"]), None))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // 1,000 separate events of 3 characters each: any reordering changes the digest.
    let mut sent = String::new();
    for i in 0..1000 {
        let chunk = format!("{:03}", i % 1000);
        sent.push_str(&chunk);
        client.input(&t.terminal_id, &chunk).await;
    }
    let digest = sha256_hex(sent.as_bytes());
    client.wait_for(&t.terminal_id, &digest).await;
}

fn sha256_hex(data: &[u8]) -> String {
    // Small local SHA-256 through the container would be circular; use the host's sha256sum.
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[tokio::test]
async fn container_stop_ends_the_terminal_promptly_and_the_server_keeps_running() {
    let c = TestContainer::start("stop", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    client.run(&t.terminal_id, "echo up-$((5+5))", "up-10").await;
    c.stop().await;
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::ContainerStopped);
    let health = get(format!("{}/healthz", base_url(&server))).await;
    assert_eq!(health.status(), 200);
    // Opening it now says why it cannot.
    let err = client.shell_err(&c.name).await;
    assert_eq!(err.code.as_str(), "container_not_running");
    assert!(err.message.contains("exited"), "{}", err.message);
}

#[tokio::test]
async fn flow_control_pauses_the_writer_until_output_is_acknowledged() {
    use app::protocol::{FLOW_HIGH_WATERMARK, TerminalInfo, event};
    let c = TestContainer::start("flow", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    // 4 MiB of output, then a marker file once the writer got through all of it.
    let total: usize = 4 * 1024 * 1024;
    let script = format!("head -c {total} /dev/zero | tr '\\0' 'x'; touch /tmp/done");
    let mut req = start(&c.name, Some(&["sh", "-c", &script]), None);
    req.flow_control = true;
    let t = client.start(req).await.unwrap();
    assert!(t.flow_control);
    let id = t.terminal_id.clone();

    // Without acks the server stops after the high watermark (plus at most one read), and the writer blocks.
    client.wait_for_bytes(&id, FLOW_HIGH_WATERMARK as usize).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let info: TerminalInfo = get(format!("{}/api/v1/terminals/{id}", base_url(&server))).await.json().await.unwrap();
    let limit = FLOW_HIGH_WATERMARK + porthole_server::session::READ_CHUNK_BYTES as u64;
    assert!(info.bytes_out <= limit, "server read {} bytes without acks (limit {limit})", info.bytes_out);
    assert!(client.bytes(&id).len() as u64 <= limit);
    let (code, _) = c.exec(&["test", "-e", "/tmp/done"]).await;
    assert_ne!(code, 0, "the writer finished although nobody read its output");
    assert!(client.exit_of(&id).is_none());

    // Acknowledging what arrived lets the rest through: every byte, once, in order.
    let mut acked = 0;
    while client.exit_of(&id).is_none() {
        let have = client.bytes(&id).len() as u64;
        if have > acked {
            acked = have;
            client.emit_raw(event::OUTPUT_ACK, serde_json::json!({"terminalId": id, "processed": acked})).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let bytes = client.bytes(&id);
    assert_eq!(bytes.len(), total);
    assert!(bytes.iter().all(|b| *b == b'x'));
    assert_eq!(client.wait_exit(&id).await.exit_code, Some(0));
}

#[tokio::test]
async fn output_acks_are_checked() {
    use app::protocol::event;
    let c = TestContainer::start("flowerr", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let plain = client.shell(&c.name).await;
    let ack = client
        .request_raw(event::OUTPUT_ACK, serde_json::json!({"terminalId": plain.terminal_id, "processed": 1}))
        .await;
    assert_eq!(ack["error"]["code"], "invalid_payload", "{ack}");
    let mut req = start(&c.name, None, None);
    req.flow_control = true;
    let t = client.start(req).await.unwrap();
    let ack = client
        .request_raw(event::OUTPUT_ACK, serde_json::json!({"terminalId": t.terminal_id, "processed": u64::MAX}))
        .await;
    assert_eq!(ack["error"]["code"], "invalid_payload", "{ack}");
    let ack = client.request_raw(event::OUTPUT_ACK, serde_json::json!({"terminalId": "t-nope", "processed": 0})).await;
    assert_eq!(ack["error"]["code"], "unknown_terminal", "{ack}");
}

#[tokio::test]
async fn flow_control_pause_and_resume_cycles_lose_and_repeat_nothing() {
    use app::protocol::{FLOW_HIGH_WATERMARK, TerminalInfo, event};
    let c = TestContainer::start("flowcycles", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    // About 6.9 MB of numbered lines: a dozen pause/resume cycles of the 512 KiB window.
    let last = 1_000_000;
    let total: u64 = (1..=last).map(|i: u64| i.to_string().len() as u64 + 2).sum();
    // Between the tty and the server sit the shim's pipe, the daemon's own stream buffer (about 1 MB) and the
    // socket buffer, about 2 MiB in all (measured): near the end, the writer may finish into those while the
    // client still holds back its acks.
    let slack = 3 * 1024 * 1024;
    let mut req = start(&c.name, Some(&["seq", "1", &last.to_string()]), None);
    req.flow_control = true;
    let t = client.start(req).await.unwrap();
    let id = t.terminal_id.clone();
    let limit = FLOW_HIGH_WATERMARK + porthole_server::session::READ_CHUNK_BYTES as u64;
    let info = || async {
        let i: TerminalInfo = get(format!("{}/api/v1/terminals/{id}", base_url(&server))).await.json().await.unwrap();
        i
    };
    let mut acked = 0u64;
    let mut pauses = 0;
    while client.exit_of(&id).is_none() {
        // Wait until nothing more arrives: the window is used up, or the process ended.
        let mut seen = client.bytes(&id).len();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let now = client.bytes(&id).len();
            if now == seen {
                break;
            }
            seen = now;
        }
        if client.exit_of(&id).is_some() {
            break;
        }
        // Paused: the server holds at most the window past what was acknowledged, and seq is still there,
        // blocked on its tty rather than finished into a buffer.
        let out = info().await.bytes_out;
        assert!(out - acked <= limit, "server read {} bytes past the last ack (limit {limit})", out - acked);
        if total - acked > limit + slack {
            let (_, ps) = c.exec(&["ps", "-o", "args"]).await;
            assert!(ps.lines().any(|l| l.starts_with("seq ")), "the writer finished while paused:\n{ps}");
        }
        pauses += 1;
        acked = seen as u64;
        client.emit_raw(event::OUTPUT_ACK, serde_json::json!({"terminalId": id, "processed": acked})).await;
    }
    assert!(pauses >= 8, "only {pauses} pauses");
    assert_eq!(client.wait_exit(&id).await.exit_code, Some(0));
    // Every line once, in order, across all the pauses.
    let text = String::from_utf8(client.bytes(&id)).unwrap().replace("\r\n", "\n");
    let expected: String = (1..=last).map(|i| format!("{i}\n")).collect();
    assert!(text == expected, "output differs: {} bytes, expected {}", text.len(), expected.len());
    assert!(client.discontinuities().is_empty(), "{:?}", client.discontinuities());
}
