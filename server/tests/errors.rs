//! Every error code, malformed payloads, limits, and other clients' terminals: a clear answer, never a
//! panic, and the connection and its other terminals keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use app::protocol::{ErrorCode, StartTerminal, event};
use common::*;
use serde_json::{Value, json};

fn code_of(ack: &Value) -> String {
    ack["error"]["code"].as_str().unwrap_or_else(|| panic!("expected an error ack, got {ack}")).to_string()
}

#[tokio::test]
async fn malformed_start_terminal_payloads_get_invalid_payload_and_the_socket_survives() {
    let c = TestContainer::start("malformed", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    client.run(&t.terminal_id, "echo before-$((1+2))", "before-3").await;

    let huge = "x".repeat(512 * 1024);
    let cases = [
        json!({}),
        json!({"containerId": 42}),
        json!({"containerId": null}),
        json!({"containerId": ""}),
        json!({"containerId": "../../info"}),
        json!({"containerId": "a/b/c"}),
        json!({"containerId": "Host/b"}),
        json!({"containerId": "a/"}),
        json!({"containerId": huge}),
        json!({"containerId": c.name, "cols": 0}),
        json!({"containerId": c.name, "rows": 1001}),
        json!({"containerId": c.name, "cols": -5}),
        json!({"containerId": c.name, "cols": "80"}),
        json!({"containerId": c.name, "cols": 70000}),
        json!({"containerId": c.name, "command": []}),
        json!({"containerId": c.name, "command": [""]}),
        json!({"containerId": c.name, "command": "ls"}),
        json!({"containerId": c.name, "command": [1, 2]}),
        json!({"containerId": c.name, "command": ["x".repeat(5000)]}),
        json!("just a string"),
        json!([1, 2, 3]),
    ];
    for case in cases {
        let ack = client.request_raw(event::START_TERMINAL, case.clone()).await;
        let shown = case.to_string().chars().take(80).collect::<String>();
        assert_eq!(code_of(&ack), "invalid_payload", "for {shown}: {ack}");
        assert!(!ack["error"]["message"].as_str().unwrap().is_empty());
    }
    // Nothing was opened by any of that, and the existing terminal still works.
    assert_eq!(server.state().all_terminals().len(), 1);
    client.run(&t.terminal_id, "echo after-$((2+2))", "after-4").await;
}

#[tokio::test]
async fn container_errors_say_why() {
    let running = TestContainer::start("cerr", &bash_image()).await;
    let stopped = TestContainer::stopped("cerr-stopped", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;

    let err = client.shell_err("porthole-no-such-container-xyz").await;
    assert_eq!(err.code, ErrorCode::ContainerNotFound);
    assert!(err.message.contains("porthole-no-such-container-xyz"), "{}", err.message);

    let err = client.shell_err(&stopped.name).await;
    assert_eq!(err.code, ErrorCode::ContainerNotRunning);
    assert!(err.message.contains(&stopped.name) && err.message.contains("exited"), "{}", err.message);

    let err = client
        .start(StartTerminal {
            container_id: running.name.clone(),
            cols: None,
            rows: None,
            command: Some(vec!["definitely-not-installed".into(), "--flag".into()]),
            flow_control: false,
            tty: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CommandNotFound);
    assert!(err.message.contains("definitely-not-installed"), "{}", err.message);
    // A path that is there but not executable is refused with its own code (`docker exec` exits 126 for it).
    let err = client
        .start(StartTerminal {
            container_id: running.name.clone(),
            cols: None,
            rows: None,
            command: Some(vec!["/etc/passwd".into()]),
            flow_control: false,
            tty: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CommandNotExecutable);
    assert!(err.message.contains("/etc/passwd"), "{}", err.message);
    // None of the failed starts left a process behind.
    assert!(running.stray_processes().await.is_empty());
}

#[tokio::test]
async fn unknown_and_foreign_terminals_are_refused_without_harm() {
    let c = TestContainer::start("foreign", &bash_image()).await;
    let server = start_server(test_config()).await;
    let owner = TestClient::connect(&server).await;
    let intruder = TestClient::connect(&server).await;
    let t = owner.shell(&c.name).await;
    owner.run(&t.terminal_id, "echo mine-$((1+1))", "mine-2").await;
    let id = t.terminal_id.0.clone();

    // Another socket's terminal id is as unknown as a made-up one.
    for target in [id.as_str(), "t-00000000000000000000000000000000", "nonsense"] {
        let ack = intruder.request_raw(event::CLOSE_TERMINAL, json!({"terminalId": target})).await;
        assert_eq!(code_of(&ack), "unknown_terminal");
        let ack = intruder.request_raw(event::INPUT, json!({"terminalId": target, "data": "echo pwned\n"})).await;
        assert_eq!(code_of(&ack), "unknown_terminal");
        let ack = intruder.request_raw(event::RESIZE, json!({"terminalId": target, "cols": 10, "rows": 10})).await;
        assert_eq!(code_of(&ack), "unknown_terminal");
    }
    // Without an ack, the refusal comes as a request-error event (and only then).
    assert!(intruder.errors().is_empty());
    intruder.emit_raw(event::INPUT, json!({"terminalId": id, "data": "echo pwned\n"})).await;
    let errors = intruder.wait_error(1).await;
    assert_eq!(errors.len(), 1);
    let last = errors.last().unwrap();
    assert_eq!((last.event.as_str(), last.error.code), ("input", ErrorCode::UnknownTerminal));
    assert_eq!(last.terminal_id.as_ref().map(|t| t.0.as_str()), Some(id.as_str()));

    // The owner's terminal never saw the intruder's input and still works.
    owner.run(&t.terminal_id, "echo still-mine-$((3+3))", "still-mine-6").await;
    assert!(!owner.screen(&t.terminal_id).contains("pwned"));
    assert!(owner.exit_of(&t.terminal_id).is_none());
}

#[tokio::test]
async fn malformed_input_and_resize_get_request_errors() {
    let c = TestContainer::start("badinput", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    let id = t.terminal_id.0.clone();
    let too_big = "y".repeat(app::protocol::MAX_INPUT_BYTES + 1);
    let cases = [
        (event::INPUT, json!({"terminalId": id, "data": 5})),
        // The end of input is for pipe terminals only.
        (event::INPUT, json!({"terminalId": id, "eof": true})),
        (event::INPUT, json!({"terminalId": id, "data": "x", "offset": "first"})),
        (event::INPUT, json!({"data": "ls\n"})),
        (event::INPUT, json!({"terminalId": id, "data": too_big})),
        (event::RESIZE, json!({"terminalId": id, "cols": 0, "rows": 10})),
        (event::RESIZE, json!({"terminalId": id, "cols": 10, "rows": 1001})),
        (event::RESIZE, json!({"terminalId": id, "cols": "wide", "rows": 10})),
        (event::CLOSE_TERMINAL, json!({"terminal": id})),
    ];
    for (name, payload) in &cases {
        let ack = client.request_raw(name, payload.clone()).await;
        assert_eq!(code_of(&ack), "invalid_payload", "{name} {payload}");
    }
    // Fire-and-forget versions produce request-error events naming the event.
    client.emit_raw(event::RESIZE, json!({"terminalId": id, "cols": 0, "rows": 10})).await;
    client.emit_raw(event::INPUT, json!({"terminalId": id, "data": [1, 2]})).await;
    let errors = client.wait_error(2).await;
    let tail: Vec<_> = errors.iter().rev().map(|e| (e.event.as_str(), e.error.code)).collect();
    assert_eq!(tail, [("input", ErrorCode::InvalidPayload), ("resize", ErrorCode::InvalidPayload)]);
    // A valid input with an ack is acknowledged with its terminal id.
    let ack = client.request_raw(event::INPUT, json!({"terminalId": id, "data": "echo ok-$((4+4))\n"})).await;
    assert_eq!(ack, json!({"terminalId": id}));
    client.wait_for(&t.terminal_id, "ok-8").await;
    // The terminal was not resized by the rejected requests.
    client.run(&t.terminal_id, "echo size=$(stty size)", "size=24 80").await;
}

#[tokio::test]
async fn terminal_limits_per_socket_and_in_total() {
    let c = TestContainer::start("limits", &sh_image()).await;
    let mut config = test_config();
    config.max_terminals_per_client = 2;
    config.max_terminals = 3;
    let server = start_server(config).await;
    let a = TestClient::connect(&server).await;
    let b = TestClient::connect(&server).await;
    assert_eq!(a.hello().max_terminals_per_socket, 2);

    let a1 = a.shell(&c.name).await;
    let _a2 = a.shell(&c.name).await;
    let err = a.shell_err(&c.name).await;
    assert_eq!(err.code, ErrorCode::TooManyTerminals);
    assert!(err.message.contains("limit 2"), "{}", err.message);

    let _b1 = b.shell(&c.name).await;
    let err = b.shell_err(&c.name).await;
    assert_eq!(err.code, ErrorCode::TooManyTerminals, "server-wide limit of 3");
    assert!(err.message.contains("limit 3"), "{}", err.message);

    // Closing one frees a slot; refused starts did not leak slots.
    a.close(&a1.terminal_id).await.unwrap();
    let b2 = b.shell(&c.name).await;
    b.run(&b2.terminal_id, "echo slot-$((5*5))", "slot-25").await;
}

#[tokio::test]
async fn hello_announces_the_protocol() {
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let hello = client.hello();
    assert_eq!(hello.protocol_version, app::protocol::PROTOCOL_VERSION);
    assert_eq!(hello.max_input_bytes, app::protocol::MAX_INPUT_BYTES);
    assert_eq!(hello.server_version, env!("CARGO_PKG_VERSION"));
}
