//! A closed terminal leaves no process behind, however it is closed; daemon outages are survived.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use app::protocol::{ErrorReply, ExitReason, TerminalId};
use common::proxy::DaemonProxy;
use common::*;

/// Starts work in the terminal that would outlive a naive close: a background job, a foreground child, and
/// a process in its own session. Waits until all of them run.
async fn leave_work_running(client: &TestClient, id: &TerminalId, c: &TestContainer) {
    client.input(id, "sleep 4242 & setsid sleep 4343 & echo bg-$((1+1))\n").await;
    client.wait_for(id, "bg-2").await;
    client.input(id, "sh -c 'sleep 4444'\n").await;
    eventually("the terminal's processes to run", || async {
        let strays = c.stray_processes().await.join("\n");
        ["sleep 4242", "sleep 4343", "sleep 4444"].iter().all(|p| strays.contains(p))
    })
    .await;
}

async fn assert_no_strays(c: &TestContainer) {
    let strays = c.wait_no_strays(Duration::from_secs(5)).await;
    assert!(strays.is_empty(), "processes left in the container: {strays:#?}");
}

#[tokio::test]
async fn close_terminal_leaves_no_process() {
    let c = TestContainer::start("close", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    leave_work_running(&client, &t.terminal_id, &c).await;
    let ack = client.close(&t.terminal_id).await.unwrap();
    assert_eq!(ack.terminal_id, t.terminal_id);
    // The ack is only sent once the processes are gone: check immediately, without waiting.
    let strays = c.stray_processes().await;
    assert!(strays.is_empty(), "processes left right after the close ack: {strays:#?}");
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::Closed);
    // Closing again is an error, not a crash.
    assert_eq!(client.close(&t.terminal_id).await.unwrap_err().code.as_str(), "unknown_terminal");
}

#[tokio::test]
async fn rest_delete_leaves_no_process_and_tells_the_socket() {
    let c = TestContainer::start("delete", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    leave_work_running(&client, &t.terminal_id, &c).await;
    let http = http();
    let url = format!("{}/api/v1/terminals/{}", base_url(&server), t.terminal_id);
    let res = http.delete(&url).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert!(c.stray_processes().await.is_empty());
    assert_eq!(client.wait_exit(&t.terminal_id).await.reason, ExitReason::Closed);
    let res = http.delete(&url).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let body: ErrorReply = res.json().await.unwrap();
    assert_eq!(body.error.code.as_str(), "unknown_terminal");
}

#[tokio::test]
async fn socket_disconnect_leaves_no_process() {
    let c = TestContainer::start("disconnect", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let a = client.shell(&c.name).await;
    let b = client.shell(&c.name).await;
    leave_work_running(&client, &a.terminal_id, &c).await;
    client.run(&b.terminal_id, "echo b-$((3+3))", "b-6").await;
    client.disconnect().await;
    assert_no_strays(&c).await;
    // They stay listed for a while as exited, so a returning client can see how they ended.
    eventually("the terminals to be listed as exited", || async {
        server.state().all_terminals().iter().all(|t| {
            t.state == app::protocol::TerminalState::Exited
                && t.exit.as_ref().is_some_and(|e| e.reason == ExitReason::Disconnected)
        })
    })
    .await;
}

#[tokio::test]
async fn a_shell_that_exits_leaves_no_background_job() {
    let c = TestContainer::start("exitbg", &bash_image()).await;
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    client.input(&t.terminal_id, "nohup sleep 4545 >/dev/null 2>&1 & echo started-$((9))\n").await;
    client.wait_for(&t.terminal_id, "started-9").await;
    client.input(&t.terminal_id, "exit 0\n").await;
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::Exited);
    assert_no_strays(&c).await;
}

#[tokio::test]
async fn server_shutdown_on_sigterm_and_sigint_leaves_no_process() {
    for signal in ["TERM", "INT"] {
        let c = TestContainer::start(&format!("sig{}", signal.to_lowercase()), &bash_image()).await;
        let mut child = Command::new(env!("CARGO_BIN_EXE_porthole"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // The printed URL carries the generated access token; it is what signs this client in.
        let printed = line.trim().strip_prefix("Porthole is listening on ").expect(&line);
        let (url, token) = printed.split_once("/?token=").expect(printed);
        let auth = serde_json::json!({ "token": token });
        let client = TestClient::connect_auth(url, rust_socketio::TransportType::Websocket, Some(auth)).await;
        let t = client.shell(&c.name).await;
        leave_work_running(&client, &t.terminal_id, &c).await;

        Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        let exit = client.wait_exit(&t.terminal_id).await;
        assert_eq!(exit.reason, ExitReason::ServerShutdown);
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        assert!(status.success(), "porthole exited with {status}");
        let strays = c.stray_processes().await;
        assert!(strays.is_empty(), "processes left after SIG{signal}: {strays:#?}");
    }
}

#[tokio::test]
async fn daemon_down_at_start_then_up_then_gone_mid_session_then_back() {
    let c = TestContainer::start("outage", &bash_image()).await;
    let proxy = DaemonProxy::new();
    let mut config = test_config();
    config.docker_hosts = vec![proxy.docker_host()];
    let server = start_server(config).await;
    let base = base_url(&server);

    // Down at start-up: a clear error everywhere, no crash.
    let res = get(format!("{base}/healthz")).await;
    assert_eq!(res.status(), 503);
    let body: ErrorReply = res.json().await.unwrap();
    assert_eq!(body.error.code.as_str(), "docker_unavailable");
    let res = get(format!("{base}/api/v1/containers")).await;
    assert_eq!(res.status(), 503);
    let client = TestClient::connect(&server).await;
    let err = client.shell_err(&c.name).await;
    assert_eq!(err.code.as_str(), "docker_unavailable");

    // The daemon appears: everything works without restarting Porthole.
    proxy.up();
    assert_eq!(get(format!("{base}/healthz")).await.status(), 200);
    let t = client.shell(&c.name).await;
    client.run(&t.terminal_id, "echo alive-$((8*8))", "alive-64").await;
    client.input(&t.terminal_id, "sleep 4646 & echo bg-$((2+5))\n").await;
    client.wait_for(&t.terminal_id, "bg-7").await;

    // It goes away mid-session: the terminal ends with a reason, the server keeps serving.
    proxy.down();
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!((exit.exit_code, exit.reason), (None, ExitReason::DockerUnavailable));
    assert_eq!(get(format!("{base}/healthz")).await.status(), 503);
    assert_eq!(client.shell_err(&c.name).await.code.as_str(), "docker_unavailable");
    // The shell is still running in the container (the real daemon never went away).
    assert!(c.stray_processes().await.iter().any(|p| p.contains("bash")));

    // Back again: the orphaned shell and its job are ended, and new terminals work.
    proxy.up();
    let strays = c.wait_no_strays(Duration::from_secs(20)).await;
    assert!(strays.is_empty(), "processes left after the daemon returned: {strays:#?}");
    assert_eq!(get(format!("{base}/healthz")).await.status(), 200);
    let t2 = client.shell(&c.name).await;
    client.run(&t2.terminal_id, "echo back-$((7*7))", "back-49").await;
}

#[tokio::test]
async fn close_works_in_a_container_without_sh() {
    let c = TestContainer::start("nosh", &bash_image()).await;
    let (code, out) = c.exec(&["rm", "/bin/sh"]).await;
    assert_eq!(code, 0, "{out}");
    let server = start_server(test_config()).await;
    let client = TestClient::connect(&server).await;
    let t = client.shell(&c.name).await;
    assert_eq!(t.command, ["bash", "-l"]);
    client.input(&t.terminal_id, "sleep 4747 & echo bg-$((3+4))\n").await;
    client.wait_for(&t.terminal_id, "bg-7").await;
    client.close(&t.terminal_id).await.unwrap();
    let strays = c.stray_processes().await;
    assert!(strays.is_empty(), "processes left: {strays:#?}");
}
