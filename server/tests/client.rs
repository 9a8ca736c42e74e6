//! The shared Rust client (`porthole-client`) against the real server: byte-exact resume across a dropped
//! transport, and the workarounds for the `rust_socketio` defects it runs into (each test here fails without
//! its workaround).

mod common;

use std::time::Duration;

use app::protocol::{CloseTerminal, ErrorCode, StartTerminal, TerminalId, event};
use common::proxy::TcpCutter;
use common::*;
use porthole_client::{Connection, Follower, Incoming, Options, Received};

fn options(url: &str, client_id: &str) -> Options {
    Options { client_id: Some(client_id.into()), timeout: PATIENCE, ..Options::new(url, TEST_TOKEN) }
}

/// Connections the server signed in, from its audit log.
fn sign_ins(audit: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    text.lines().filter(|l| l.contains(r#""action":"connect""#) && l.contains(r#""outcome":"allowed""#)).count()
}

#[tokio::test]
async fn concurrent_requests_on_one_connection_each_get_their_own_answer() {
    // rust_socketio draws ack ids at random from 0..999 and resolves every request sharing one with the first
    // answer; 200 requests at once collide with near certainty unless the client sends them one at a time.
    let server = start_server(test_config()).await;
    let (conn, _rx) = Connection::connect(&options(&base_url(&server), "acks")).await.unwrap();
    let asks = (0..200).map(|i| {
        let conn = &conn;
        async move {
            let id = TerminalId(format!("t-nonexistent{i}"));
            let answer = conn.request::<event::CloseTerminal>(&CloseTerminal { terminal_id: id.clone() }).await;
            (id, answer)
        }
    });
    for (id, answer) in futures_util::future::join_all(asks).await {
        let refusal = answer.expect("an answer in time").expect_err("no such terminal");
        assert_eq!(refusal.code, ErrorCode::UnknownTerminal);
        assert!(refusal.message.contains(&format!("{id} ")), "{id} got the answer for another: {}", refusal.message);
    }
    conn.disconnect().await;
}

#[tokio::test]
async fn a_dropped_transport_is_not_reconnected_behind_the_clients_back() {
    // rust_socketio's own reconnect loop ignores disconnect() (upstream #374) and would retry refused sign-ins;
    // the client turns it off, so a drop is the caller's to handle (and resume).
    let dir = tempdir("client-reconnect");
    let audit = dir.join("audit.log");
    let mut config = test_config();
    config.audit_log = audit.display().to_string();
    let server = start_server(config).await;
    let cutter = TcpCutter::to(server.addr()).await;
    let (conn, mut rx) = Connection::connect(&options(&cutter.url(), "drop")).await.unwrap();
    assert_eq!(sign_ins(&audit), 1);
    cutter.cut();
    // The caller learns of it: `rust_socketio` says nothing, the client does.
    let closed = tokio::time::timeout(PATIENCE, async {
        while let Some(incoming) = rx.recv().await {
            if incoming == Incoming::Closed {
                return true;
            }
        }
        false
    });
    assert_eq!(closed.await, Ok(true), "the client told of the dead transport");
    // Long enough for rust_socketio's default reconnect (1 to 5 s apart) to have come back twice.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(sign_ins(&audit), 1, "the client reconnected by itself");
    assert!(
        conn.request::<event::CloseTerminal>(&CloseTerminal { terminal_id: TerminalId("t-x".into()) }).await.is_err()
    );
    drop(rx.try_recv());
    conn.disconnect().await;
}

#[tokio::test]
async fn a_follower_resumes_across_a_dropped_transport_without_losing_or_repeating_a_byte() {
    let c = TestContainer::start("client-resume", &bash_image()).await;
    let server = start_server(test_config()).await;
    let cutter = TcpCutter::to(server.addr()).await;
    let (conn, mut rx) = Connection::connect(&options(&cutter.url(), "resumer")).await.unwrap();
    // 3000 numbered lines, slowly enough that the cut lands in the middle.
    let script = "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); [ $((i % 100)) = 0 ] && sleep 0.05; done";
    let req = StartTerminal {
        container_id: c.name.clone(),
        cols: None,
        rows: None,
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        flow_control: true,
        tty: true,
    };
    let started = conn.request::<event::StartTerminal>(&req).await.unwrap().unwrap();
    let id = started.terminal_id.clone();
    let mut follower = Follower::default();
    follower.follow(id.clone(), 0, true);
    let mut screen = Vec::new();
    let take = |follower: &mut Follower, incoming: Incoming, screen: &mut Vec<u8>| -> Option<bool> {
        match incoming {
            Incoming::Output(o) => match follower.receive(&o)? {
                Received::New { data, .. } => screen.extend_from_slice(&data),
                Received::Repeat => {}
                Received::Gap { expected, offset, .. } => panic!("lost bytes {expected}..{offset}"),
            },
            Incoming::Exit(e) if e.terminal_id == id => return Some(true),
            _ => {}
        }
        Some(false)
    };
    while screen.len() < 4000 {
        let incoming = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        take(&mut follower, incoming, &mut screen);
        let have = follower.offset(&id).unwrap();
        conn.ack_output(&id, have).await.unwrap();
    }
    cutter.cut();
    drop(conn);
    // A new connection of the same client picks up exactly where the follower is.
    let (conn, mut rx) = Connection::connect(&options(&cutter.url(), "resumer")).await.unwrap();
    for req in follower.resume_requests() {
        let attached = conn.request::<event::AttachTerminal>(&req).await.unwrap().unwrap();
        assert!(!attached.truncated);
        assert_eq!(Some(attached.offset), req.since);
    }
    loop {
        let incoming = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        if take(&mut follower, incoming, &mut screen) == Some(true) {
            break;
        }
        conn.ack_output(&id, follower.offset(&id).unwrap()).await.unwrap();
    }
    let text = String::from_utf8(screen).unwrap();
    let expected: String = (0..3000).map(|i| format!("line-{i}\r\n")).collect();
    assert!(text == expected, "the resumed output differs ({} bytes, {} expected)", text.len(), expected.len());
    conn.disconnect().await;
}
