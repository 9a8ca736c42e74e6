//! Cluster mode (`--cluster-redis`): nodes sharing a directory in a real Redis (Debian's `redis-server`, one
//! instance per test on a free port). The per-user quota holds across nodes; REST on any node lists, shows and
//! closes every node's terminals, the decision and audit record made by the node asked; peers act only on
//! requests signed with the cluster secret; with Redis gone a node keeps its terminals, refuses new ones with
//! `cluster_unavailable`, and recovers by itself when Redis is back (empty).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use app::protocol::{ErrorCode, ErrorReply, ExitReason, TerminalInfo, TerminalStarted};
use common::cluster::*;
use common::*;
use porthole_server::RunningServer;

async fn terminals(server: &RunningServer) -> Vec<TerminalInfo> {
    let res = get(format!("{}/api/v1/terminals", base_url(server))).await;
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

/// Waits until `server` lists `id` (the directory is written in the background).
async fn until_listed(server: &RunningServer, id: &app::protocol::TerminalId) -> TerminalInfo {
    let mut found = None;
    for _ in 0..200 {
        if let Some(t) = terminals(server).await.into_iter().find(|t| &t.terminal_id == id) {
            found = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    found.unwrap_or_else(|| panic!("{id} listed on {}", server.addr()))
}

/// Opens a shell in `container`, retrying (for up to 10 s) while it is refused with `meanwhile`, the refusal
/// expected until the directory has caught up; any other refusal fails the test.
async fn open_once_allowed(client: &TestClient, container: &str, meanwhile: ErrorCode) -> TerminalStarted {
    for _ in 0..100 {
        match client.start(shell_request(container)).await {
            Ok(t) => return t,
            Err(e) => assert_eq!(e.code, meanwhile, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still refused with {meanwhile} after 10 s");
}

/// Opens a tty terminal in `container` running `sh -c script`.
async fn start_script(client: &TestClient, container: &str, script: String) -> TerminalStarted {
    let req = app::protocol::StartTerminal {
        command: Some(vec!["sh".into(), "-c".into(), script]),
        ..shell_request(container)
    };
    client.start(req).await.unwrap()
}

fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test]
async fn a_users_quota_holds_across_nodes_and_a_slot_freed_on_one_is_free_on_all() {
    let c = TestContainer::start("cluster-quota", &bash_image()).await;
    let redis = Redis::start().await;
    let quota = |c: &mut porthole_server::config::Config| c.max_terminals_per_user = 2;
    let (a, _) = node("a", &redis, quota).await;
    let (b, _) = node("b", &redis, quota).await;
    let (on_a, on_b) = (TestClient::connect(&a).await, TestClient::connect(&b).await);

    let first = on_a.shell(&c.id).await;
    let second = on_b.shell(&c.id).await;
    for (client, on) in [(&on_a, "a"), (&on_b, "b")] {
        let err = client.shell_err(&c.id).await;
        assert_eq!(err.code, ErrorCode::QuotaExceeded, "on {on}: {err:?}");
        assert!(err.message.contains("already has 2 terminals open in the cluster (quota 2)"), "{}", err.message);
    }
    // One ends on b: a may open one again (the count is b's, in Redis, not a's guess).
    on_b.close(&second.terminal_id).await.unwrap();
    let third = open_once_allowed(&on_a, &c.id, ErrorCode::QuotaExceeded).await;
    on_a.run(&third.terminal_id, "echo q-$((6*7))", "q-42").await;
    assert_eq!(on_b.shell_err(&c.id).await.code, ErrorCode::QuotaExceeded);
    on_a.close(&first.terminal_id).await.unwrap();
    on_a.close(&third.terminal_id).await.unwrap();
    assert!(c.wait_no_strays(Duration::from_secs(10)).await.is_empty());
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn rest_on_any_node_lists_shows_and_closes_every_nodes_terminals() {
    let c = TestContainer::start("cluster-rest", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, audit_a) = node("a", &redis, |_| {}).await;
    let (b, audit_b) = node("b", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    let t = on_a.shell(&c.id).await;
    on_a.run(&t.terminal_id, "echo rest-$((2+3))", "rest-5").await;

    // Listed on b, owned by a, with its host; a lists it as its own.
    let there = until_listed(&b, &t.terminal_id).await;
    assert_eq!((there.node.as_str(), there.host.as_str(), there.user.as_str()), ("a", "local", "local"));
    assert_eq!(there.container_id, c.id);
    let here = until_listed(&a, &t.terminal_id).await;
    assert_eq!(here.node, "a");
    let one = get(format!("{}/api/v1/terminals/{}", base_url(&b), t.terminal_id)).await;
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<TerminalInfo>().await.unwrap().terminal_id, t.terminal_id);
    let unknown = get(format!("{}/api/v1/terminals/t-0000", base_url(&b))).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::UnknownTerminal);

    // Closed through b: a's viewer sees it end as closed, and no process is left.
    let res = http().delete(format!("{}/api/v1/terminals/{}", base_url(&b), t.terminal_id)).send().await.unwrap();
    assert_eq!(res.status(), 204, "{:?}", res.text().await);
    assert_eq!(on_a.wait_exit(&t.terminal_id).await.reason, ExitReason::Closed);
    assert!(c.wait_no_strays(Duration::from_secs(10)).await.is_empty());
    let mut gone = false;
    for _ in 0..100 {
        if !terminals(&b).await.iter().any(|x| x.terminal_id == t.terminal_id) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "b stops listing the closed terminal");

    // The decision was b's, and its record names both nodes; a wrote none for the close.
    let id = t.terminal_id.0.as_str();
    let closes = |path| {
        audit_lines(path)
            .into_iter()
            .filter(|r| r["action"] == "terminal.close" && r["terminal_id"] == id)
            .collect::<Vec<_>>()
    };
    let on_b_records = closes(&audit_b);
    assert_eq!(on_b_records.len(), 1, "{on_b_records:?}");
    assert_eq!(on_b_records[0]["outcome"], "allowed");
    assert_eq!((on_b_records[0]["node"].as_str(), on_b_records[0]["owner_node"].as_str()), (Some("b"), Some("a")));
    assert!(closes(&audit_a).is_empty());
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn peers_act_only_on_requests_signed_with_the_cluster_secret() {
    let c = TestContainer::start("cluster-peer", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, _) = node("a", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    let t = on_a.shell(&c.id).await;
    let path = format!("/api/v1/peer/terminals/{}", t.terminal_id);
    let url = format!("{}{path}", base_url(&a));
    let raw = reqwest::Client::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sign = |secret: &[u8], node: &str, ts: u64, path: &str| {
        porthole_server::cluster::peer::sign(secret, node, ts, &axum::http::Method::DELETE, path)
    };
    let refused = [
        None,
        Some(sign(b"not-the-cluster-secret-0123456789abcdef", "b", now, &path)),
        Some(sign(SECRET.as_bytes(), "b", now - 120, &path)),
        Some(sign(SECRET.as_bytes(), "a", now, &path)),
        Some(sign(SECRET.as_bytes(), "b", now, "/api/v1/peer/terminals/t-other")),
        Some("node=b, ts=1, sig=!!".into()),
    ];
    for header in refused {
        let mut req = raw.delete(&url);
        if let Some(h) = &header {
            req = req.header("porthole-peer", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{header:?}");
        assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::Unauthenticated);
    }
    // A user's own credential does not open the peer routes either.
    assert_eq!(http().delete(&url).send().await.unwrap().status(), 401);
    on_a.run(&t.terminal_id, "echo still-$((1+1))", "still-2").await;

    // Signed: done. An unknown id: unknown_terminal.
    let ok = raw.delete(&url).header("porthole-peer", sign(SECRET.as_bytes(), "b", now, &path)).send().await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(on_a.wait_exit(&t.terminal_id).await.reason, ExitReason::Closed);
    let other = "/api/v1/peer/terminals/t-nope";
    let res = raw
        .delete(format!("{}{other}", base_url(&a)))
        .header("porthole-peer", sign(SECRET.as_bytes(), "b", now, other))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::UnknownTerminal);

    // The signature covers the query string: one made for one recordings filter does not pass another.
    let get_sign =
        |path: &str| porthole_server::cluster::peer::sign(SECRET.as_bytes(), "b", now, &axum::http::Method::GET, path);
    let filter = |user: &str| format!(r#"{{"users":["{user}"],"limit":5}}"#).replace('"', "%22");
    let (mine, theirs) = (
        format!("/api/v1/peer/recordings?filter={}", filter("alice")),
        format!("/api/v1/peer/recordings?filter={}", filter("bob")),
    );
    let res = raw.get(format!("{}{mine}", base_url(&a))).header("porthole-peer", get_sign(&mine)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.json::<Vec<app::protocol::Recording>>().await.unwrap().is_empty());
    let res =
        raw.get(format!("{}{theirs}", base_url(&a))).header("porthole-peer", get_sign(&mine)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let bad = "/api/v1/peer/recordings?filter=nope";
    let res = raw.get(format!("{}{bad}", base_url(&a))).header("porthole-peer", get_sign(bad)).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::InvalidPayload);

    // A server alone has no peer routes.
    let alone = start_server(test_config()).await;
    let res = raw
        .delete(format!("{}{other}", base_url(&alone)))
        .header("porthole-peer", sign(SECRET.as_bytes(), "b", now, other))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::NotFound);
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    alone.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn with_redis_gone_a_node_keeps_its_terminals_refuses_new_ones_and_recovers_when_it_is_back() {
    let c = TestContainer::start("cluster-redis-down", &bash_image()).await;
    let mut redis = Redis::start().await;
    let (a, _) = node("a", &redis, |_| {}).await;
    let (b, _) = node("b", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    let t = on_a.shell(&c.id).await;
    until_listed(&b, &t.terminal_id).await;

    redis.stop();
    // The open terminal goes on; a new one is refused, saying why; lists show the node's own.
    on_a.run(&t.terminal_id, "echo alive-$((3*3))", "alive-9").await;
    let err = on_a.shell_err(&c.id).await;
    assert_eq!(err.code, ErrorCode::ClusterUnavailable, "{err:?}");
    assert!(err.message.contains("Redis"), "{}", err.message);
    assert!(terminals(&a).await.iter().any(|x| x.terminal_id == t.terminal_id));
    let res = http().delete(format!("{}/api/v1/terminals/t-elsewhere", base_url(&b))).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::ClusterUnavailable);

    // Back, empty: within a heartbeat the directory is whole again and new terminals open.
    redis.restart().await;
    let again = until_listed(&b, &t.terminal_id).await;
    assert_eq!(again.node, "a");
    let second = open_once_allowed(&on_a, &c.id, ErrorCode::ClusterUnavailable).await;
    on_a.run(&second.terminal_id, "echo back", "back").await;
    on_a.run(&t.terminal_id, "echo first-still", "first-still").await;
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(c.wait_no_strays(Duration::from_secs(10)).await.is_empty());
}

#[tokio::test]
async fn a_socket_on_another_node_attaches_types_resizes_and_closes_through_a_relay() {
    let c = TestContainer::start("cluster-relay", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, audit_a) = node("a", &redis, |_| {}).await;
    let (b, audit_b) = node("b", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    let t = on_a.shell(&c.id).await;
    let id = &t.terminal_id;
    on_a.run(id, "echo before-$((40+2))", "before-42").await;
    until_listed(&b, id).await;

    // b relays: the replay from 0, then live output, both ways; the viewer on b counts on a.
    let on_b = TestClient::connect(&b).await;
    let req = app::protocol::AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false };
    let attached = on_b.attach(&req).await.unwrap();
    assert_eq!((attached.offset, attached.container_id.as_str()), (0, c.id.as_str()));
    assert!(!attached.flow_control);
    on_b.wait_for(id, "before-42").await;
    on_a.wait_viewers(id, 2).await;
    on_b.wait_viewers(id, 2).await;
    on_b.run(id, "echo relayed-$((6*7))", "relayed-42").await;
    on_a.wait_for(id, "relayed-42").await;
    on_b.resize(id, 111, 33).await;
    on_b.run(id, "stty size", "33 111").await;
    on_a.run(id, "echo done-$((1+1))", "done-2").await;
    on_b.wait_for(id, "done-2").await;
    // The same bytes at the same offsets on both nodes (once the prompt after done-2 reached both).
    eventually("both sockets have all the output", || async { on_b.bytes(id).len() == on_a.bytes(id).len() }).await;
    assert_eq!(on_b.first_offset(id), Some(0));
    assert!(on_b.discontinuities().is_empty(), "{:?}", on_b.discontinuities());
    assert_eq!(on_b.bytes(id), on_a.bytes(id));

    // Unknown terminals are refused as on one node.
    let unknown =
        app::protocol::AttachTerminal { terminal_id: app::protocol::TerminalId("t-0000".into()), ..req.clone() };
    assert_eq!(on_b.attach(&unknown).await.unwrap_err().code, ErrorCode::UnknownTerminal);

    // Closed through b: it ends for both, and no process is left.
    on_b.close(id).await.unwrap();
    assert_eq!(on_b.wait_exit(id).await.reason, ExitReason::Closed);
    assert_eq!(on_a.wait_exit(id).await.reason, ExitReason::Closed);
    assert!(c.wait_no_strays(Duration::from_secs(10)).await.is_empty());

    // b decided and audited the attach and the close, naming both nodes; a wrote nothing for the relay.
    let of = |path, action: &str| {
        audit_lines(path)
            .into_iter()
            .filter(|r| r["action"] == action && r["terminal_id"] == id.0.as_str())
            .collect::<Vec<_>>()
    };
    for action in ["terminal.attach", "terminal.close"] {
        let on_b_records = of(&audit_b, action);
        assert_eq!(on_b_records.len(), 1, "{action}: {on_b_records:?}");
        assert_eq!(on_b_records[0]["outcome"], "allowed");
        assert_eq!((on_b_records[0]["node"].as_str(), on_b_records[0]["owner_node"].as_str()), (Some("b"), Some("a")));
        assert!(of(&audit_a, action).is_empty(), "{action} on a: {:?}", of(&audit_a, action));
    }
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_client_that_was_on_one_node_resumes_through_another_byte_exact() {
    let c = TestContainer::start("cluster-resume", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, _) = node("a", &redis, |_| {}).await;
    let (b, _) = node("b", &redis, |_| {}).await;
    const LINES: u32 = 3000;
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; [ $((i % 100)) -eq 0 ] && sleep 0.1; done; true"
    );
    let first = TestClient::connect_v2(&base_url(&a), "resumer").await;
    let started = start_script(&first, &c.id, script).await;
    let id = started.terminal_id.clone();
    first.wait_for(&id, "line-500\r\n").await;
    until_listed(&b, &id).await;
    let had = first.bytes(&id);
    first.disconnect().await;

    // The same client comes back through b, from the offset it had.
    let again = TestClient::connect_v2(&base_url(&b), "resumer").await;
    let since = had.len() as u64;
    let req = app::protocol::AttachTerminal { terminal_id: id.clone(), since: Some(since), flow_control: false };
    let attached = again.attach(&req).await.unwrap();
    assert_eq!((attached.offset, attached.truncated), (since, false));
    let exit = again.wait_exit(&id).await;
    assert_eq!((exit.reason, exit.exit_code), (ExitReason::Exited, Some(0)));
    assert_eq!(again.first_offset(&id), Some(since));
    assert!(again.discontinuities().is_empty(), "{:?}", again.discontinuities());
    let mut all = had;
    all.extend(again.bytes(&id));
    let expected: String = (1..=LINES).map(|i| format!("line-{i}\r\n")).collect();
    assert_eq!(String::from_utf8_lossy(&all), expected, "nothing lost or repeated");
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_node_killed_ends_its_relayed_terminals_with_node_lost_its_processes_reaped_and_the_others_do_not_notice() {
    const TTL: u64 = 3;
    let c = TestContainer::start("cluster-lost", &bash_image()).await;
    let redis = Redis::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let secret = secret_file();
    let ttl = TTL.to_string();
    let mut a = common::process::ServerProcess::start(&[
        "--listen",
        &listen,
        "--cluster-redis",
        &redis.url(),
        "--node-id",
        "a",
        "--advertise",
        &listen,
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--cluster-lease-ttl",
        &ttl,
    ]);
    let (b, _) = node("b", &redis, |c| c.cluster_lease_ttl = TTL).await;
    let on_a = TestClient::connect_url(&a.base_url(), rust_socketio::TransportType::Websocket).await;
    let theirs = on_a.shell(&c.id).await;
    let id = &theirs.terminal_id;
    // A job that outlives its shell: only the reaper ends it.
    on_a.run(id, "sleep 600 & echo on-a-$((1+1))", "on-a-2").await;
    until_listed(&b, id).await;
    let on_b = TestClient::connect(&b).await;
    let req = app::protocol::AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false };
    on_b.attach(&req).await.unwrap();
    on_b.wait_for(id, "on-a-2").await;
    let mine = on_b.shell(&c.id).await;
    on_b.run(&mine.terminal_id, "echo mine-$((3+4))", "mine-7").await;

    // Killed: no goodbye, its lease runs out by itself. Its shell is still in the container.
    let marked = |id: &app::protocol::TerminalId| {
        let script = format!("grep -l 'PORTHOLE_TERMINAL={id}' /proc/[0-9]*/environ 2>/dev/null | wc -l");
        let c = &c;
        async move { c.exec(&["sh", "-c", &script]).await.1.trim().parse::<usize>().unwrap_or(0) }
    };
    let killed = std::time::Instant::now();
    a.stop_with("KILL");
    assert!(marked(id).await > 0, "the killed node's shell is left in the container");
    let exit = on_b.wait_exit(id).await;
    assert_eq!((exit.reason, exit.exit_code), (ExitReason::NodeLost, None));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(TTL + 10), "node_lost after {took:?}");
    // Its last renewal was at most a third of the lease before the kill.
    assert!(took >= Duration::from_secs(TTL * 2 / 3), "declared lost before its lease expired ({took:?})");

    // b's own terminal goes on; a's is no longer listed anywhere.
    on_b.run(&mine.terminal_id, "echo still-$((4+4))", "still-8").await;
    assert!(on_b.exit_of(&mine.terminal_id).is_none());
    let listed: Vec<_> = terminals(&b).await.into_iter().map(|t| t.terminal_id).collect();
    assert_eq!(listed, vec![mine.terminal_id.clone()]);
    // b serves the same Docker host, so it reaps the lost node's shell, and only that.
    eventually("the lost node's shell is reaped", || async { marked(id).await == 0 }).await;
    assert!(marked(&mine.terminal_id).await > 0);
    on_b.run(&mine.terminal_id, "echo after-$((5+5))", "after-10").await;
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn relays_are_accepted_only_when_signed_with_the_cluster_secret_for_their_claims() {
    let c = TestContainer::start("cluster-relay-auth", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, audit_a) = node("a", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    let t = on_a.shell(&c.id).await;
    on_a.run(&t.terminal_id, "echo signed-$((5+5))", "signed-10").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = r#"{"user":"local","groups":[],"clientId":"relayed-client","protocolVersion":2}"#;
    let sig = |secret: &[u8], node: &str, ts: u64, text: &str| {
        porthole_server::cluster::peer::signature(secret, node, ts, "RELAY", text)
    };
    let auth = |node: &str, ts: u64, sig: String, claims: &str| serde_json::json!({"peer": {"node": node, "ts": ts, "sig": sig, "claims": claims}});
    let ws = || rust_socketio::TransportType::Websocket;
    let refused = [
        auth("b", now, sig(b"not-the-cluster-secret-0123456789abcdef", "b", now, claims), claims),
        auth("b", now, sig(SECRET.as_bytes(), "b", now, claims), &claims.replace("local", "root")),
        auth("b", now - 120, sig(SECRET.as_bytes(), "b", now - 120, claims), claims),
        auth("a", now, sig(SECRET.as_bytes(), "a", now, claims), claims),
        serde_json::json!({"peer": {"node": "b"}}),
        serde_json::json!({"peer": "b"}),
    ];
    for bad in refused {
        let e = TestClient::try_connect(&base_url(&a), ws(), bad.clone(), &[]).await.err().expect("refused");
        assert!(e.contains("unauthenticated: relay refused"), "{bad}: {e}");
    }
    on_a.run(&t.terminal_id, "echo still-$((5+6))", "still-11").await;

    // Signed: the socket is the claimed user's, and works the terminal like theirs; a writes no record of it.
    let good = auth("b", now, sig(SECRET.as_bytes(), "b", now, claims), claims);
    let relay = TestClient::try_connect(&base_url(&a), ws(), good.clone(), &[]).await.unwrap();
    assert_eq!(relay.hello().user, "local");
    let req = app::protocol::AttachTerminal { terminal_id: t.terminal_id.clone(), since: Some(0), flow_control: false };
    relay.attach(&req).await.unwrap();
    relay.run(&t.terminal_id, "echo via-relay-$((7+7))", "via-relay-14").await;
    let attaches = audit_lines(&audit_a)
        .into_iter()
        .filter(|r| r["action"] == "terminal.attach" || (r["action"] == "connect" && r["outcome"] == "allowed"))
        .count();
    assert_eq!(attaches, 1, "only on_a's own connect is audited on a");

    // A server alone takes no relay, signed or not.
    let alone = start_server(test_config()).await;
    let e = TestClient::try_connect(&base_url(&alone), ws(), good, &[]).await.err().expect("refused");
    assert!(e.contains("unauthenticated: relays from other nodes are accepted only in cluster mode"), "{e}");
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    alone.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_relayed_terminal_goes_on_while_redis_is_down() {
    const TTL: u64 = 3;
    let c = TestContainer::start("cluster-relay-redis", &bash_image()).await;
    let mut redis = Redis::start().await;
    let (a, _) = node("a", &redis, |c| c.cluster_lease_ttl = TTL).await;
    let (b, _) = node("b", &redis, |c| c.cluster_lease_ttl = TTL).await;
    let on_a = TestClient::connect(&a).await;
    let t = on_a.shell(&c.id).await;
    let id = &t.terminal_id;
    until_listed(&b, id).await;
    let on_b = TestClient::connect(&b).await;
    let req = app::protocol::AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false };
    on_b.attach(&req).await.unwrap();
    on_b.run(id, "echo up-$((2*3))", "up-6").await;

    // Every lease expires while Redis is away; nothing is declared lost for it.
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2 * TTL)).await;
    on_b.run(id, "echo down-$((2*4))", "down-8").await;
    assert!(on_b.exit_of(id).is_none() && on_a.exit_of(id).is_none());
    redis.restart().await;
    tokio::time::sleep(Duration::from_secs(TTL)).await;
    on_b.run(id, "echo back-$((2*5))", "back-10").await;
    assert!(on_b.exit_of(id).is_none());
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_relay_cut_under_load_reopens_and_its_viewer_loses_and_repeats_nothing() {
    let c = TestContainer::start("cluster-relay-cut", &bash_image()).await;
    let redis = Redis::start().await;
    // b reaches a through a relay that the test cuts; clients reach a directly.
    let port = free_port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cutter = common::proxy::TcpCutter::to(listen).await;
    let advertise = cutter.url().trim_start_matches("http://").to_string();
    let (a, _) = node("a", &redis, |c| {
        c.listen = listen;
        c.advertise = Some(advertise);
    })
    .await;
    let (b, _) = node("b", &redis, |_| {}).await;
    const LINES: u32 = 4000;
    let script = format!(
        "sleep 1; i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; [ $((i % 100)) -eq 0 ] && sleep 0.1; done"
    );
    let on_a = TestClient::connect(&a).await;
    let started = start_script(&on_a, &c.id, script).await;
    let id = &started.terminal_id;
    until_listed(&b, id).await;
    let on_b = TestClient::connect(&b).await;
    let req = app::protocol::AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false };
    on_b.attach(&req).await.unwrap();
    on_b.wait_for(id, "line-1000\r\n").await;
    cutter.cut();
    on_b.wait_for(id, "line-2000\r\n").await;
    cutter.cut();
    let exit = on_b.wait_exit(id).await;
    assert_eq!((exit.reason, exit.exit_code), (ExitReason::Exited, Some(0)));
    assert!(on_b.discontinuities().is_empty(), "{:?}", on_b.discontinuities());
    let expected: String = (1..=LINES).map(|i| format!("line-{i}\r\n")).collect();
    assert_eq!(String::from_utf8_lossy(&on_b.bytes(id)), expected);
    on_a.wait_exit(id).await;
    assert_eq!(on_b.bytes(id), on_a.bytes(id));
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_killed_node_reaps_the_processes_it_left_when_it_comes_back() {
    let c = TestContainer::start("cluster-back", &bash_image()).await;
    let redis = Redis::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let secret = secret_file();
    let secret = secret.to_str().unwrap();
    let flags = [
        "--listen",
        &listen,
        "--cluster-redis",
        &redis.url(),
        "--node-id",
        "alone",
        "--advertise",
        &listen,
        "--cluster-secret-file",
        secret,
    ];
    let mut a = common::process::ServerProcess::start(&flags);
    let client = TestClient::connect_url(&a.base_url(), rust_socketio::TransportType::Websocket).await;
    let t = client.shell(&c.id).await;
    client.run(&t.terminal_id, "sleep 600 & echo left-$((3*3))", "left-9").await;
    // Listed in the directory before the kill.
    let key = "porthole:node:alone:terminals";
    let redis_client = redis::Client::open(redis.url()).unwrap();
    let conn = redis_client.get_multiplexed_async_connection().await.unwrap();
    eventually("the terminal is in the directory", || {
        let mut conn = conn.clone();
        async move { redis::cmd("HLEN").arg(key).query_async::<usize>(&mut conn).await.unwrap_or(0) == 1 }
    })
    .await;
    a.stop_with("KILL");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let script = format!("grep -l 'PORTHOLE_TERMINAL={}' /proc/[0-9]*/environ 2>/dev/null | wc -l", t.terminal_id);
    let marked = || async { c.exec(&["sh", "-c", &script]).await.1.trim().parse::<usize>().unwrap_or(0) };
    assert!(marked().await > 0, "the job outlives its node");

    // Back under the same id: it reaps what it left, and lists nothing of it.
    let _back = common::process::ServerProcess::start(&flags);
    eventually("the job the node left is reaped", || async { marked().await == 0 }).await;
    eventually("the node lists none of it", || {
        let mut conn = conn.clone();
        async move { redis::cmd("HLEN").arg(key).query_async::<usize>(&mut conn).await.unwrap_or(1) == 0 }
    })
    .await;
}

#[tokio::test]
async fn a_sign_out_on_one_node_ends_the_session_on_every_node_and_cookie_sign_ins_need_redis() {
    const TTL: u64 = 3;
    let c = TestContainer::start("cluster-signout", &bash_image()).await;
    let mut redis = Redis::start().await;
    let (a, _) = node("a", &redis, |c| c.cluster_lease_ttl = TTL).await;
    let (b, _) = node("b", &redis, |c| c.cluster_lease_ttl = TTL).await;
    let login = |server: &RunningServer| {
        reqwest::Client::new()
            .post(format!("{}/api/v1/login", base_url(server)))
            .json(&serde_json::json!({ "token": TEST_TOKEN }))
            .send()
    };
    let res = login(&a).await.unwrap();
    assert_eq!(res.status(), 204);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let whoami = |server: &RunningServer| {
        reqwest::Client::new().get(format!("{}/api/v1/whoami", base_url(server))).header("cookie", &cookie).send()
    };

    // The session signed in on a works on b, for REST and for a socket.
    assert_eq!(whoami(&b).await.unwrap().status(), 200);
    let ws = rust_socketio::TransportType::Websocket;
    let on_b = TestClient::try_connect(&base_url(&b), ws, serde_json::json!({}), &[("cookie", &cookie)]).await.unwrap();
    let t = on_b.shell(&c.id).await;
    on_b.run(&t.terminal_id, "echo cookie-$((4*4))", "cookie-16").await;
    let by_token = TestClient::connect(&b).await;

    // Signed out on a: b drops that session's socket within a heartbeat, not the token's.
    let out = reqwest::Client::new()
        .post(format!("{}/api/v1/logout", base_url(&a)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(on_b.wait_auth_error().await.code, ErrorCode::TokenRevoked);
    on_b.wait_closed().await;
    let after = whoami(&b).await.unwrap();
    assert_eq!(after.status(), 401);
    assert_eq!(after.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::TokenRevoked);
    let t2 = by_token.shell(&c.id).await;
    by_token.run(&t2.terminal_id, "echo token-$((5*5))", "token-25").await;

    // Redis down: a cookie sign-in is refused with cluster_unavailable; the token itself still serves.
    redis.stop();
    let refused = login(&a).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(!refused.headers().contains_key("set-cookie"));
    assert_eq!(refused.json::<ErrorReply>().await.unwrap().error.code, ErrorCode::ClusterUnavailable);
    assert_eq!(get(format!("{}/api/v1/whoami", base_url(&a))).await.status(), 200);
    by_token.run(&t2.terminal_id, "echo still-$((6*6))", "still-36").await;
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_container_on_a_host_another_node_serves_is_listed_and_opened_through_that_node() {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (here_name, there_name, same) = (
        format!("porthole-it-ch-a-{suffix}"),
        format!("porthole-it-ch-b-{suffix}"),
        format!("porthole-it-ch-s-{suffix}"),
    );
    let here = TestContainer::start_named(docker().await, &here_name, "cluster-hosts", &bash_image(), &[]).await;
    let there =
        TestContainer::start_named(second_docker().await, &there_name, "cluster-hosts", &bash_image(), &[]).await;
    let _same_here = TestContainer::start_named(docker().await, &same, "cluster-hosts", &bash_image(), &[]).await;
    let _same_there =
        TestContainer::start_named(second_docker().await, &same, "cluster-hosts", &bash_image(), &[]).await;
    let redis = Redis::start().await;
    // a serves the usual daemon as `local`, b the second one as `edge`.
    let (a, audit_a) = node("a", &redis, |_| {}).await;
    let (b, _) = node("b", &redis, |c| c.docker_hosts = vec![format!("edge=unix://{SECOND_DOCKER_SOCKET}")]).await;

    // a's list has both hosts' containers, b's with their host and ids `edge/ID`; only a's can be managed.
    let mut list = Vec::new();
    for _ in 0..100 {
        let res = get(format!("{}/api/v1/containers", base_url(&a))).await;
        list = res.json::<Vec<app::protocol::ContainerSummary>>().await.unwrap();
        if list.iter().any(|c| c.name == there_name) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on = |name: &str, host: &str| list.iter().find(|c| c.name == name && c.host == host).cloned();
    let remote = on(&there_name, "edge").unwrap_or_else(|| panic!("{there_name} on edge in {list:?}"));
    assert_eq!(remote.id, format!("edge/{}", there.id));
    assert!(!remote.rights.manage);
    assert!(on(&here_name, "local").is_some() && on(&same, "local").is_some() && on(&same, "edge").is_some());

    // Opened from a socket on a, by bare name (unique in the cluster) and as HOST/NAME: b owns it, a relays.
    let client = TestClient::connect(&a).await;
    for reference in [there_name.clone(), format!("edge/{there_name}")] {
        let t = client.shell(&reference).await;
        assert_eq!(t.container_id, format!("edge/{}", there.id));
        client.run(&t.terminal_id, "hostname; echo edge-$((8*8))", "edge-64").await;
        assert!(client.screen(&t.terminal_id).contains(&there.id[..12]), "{}", client.screen(&t.terminal_id));
        client.resize(&t.terminal_id, 101, 31).await;
        client.run(&t.terminal_id, "stty size", "31 101").await;
        let info = get(format!("{}/api/v1/terminals/{}", base_url(&b), t.terminal_id)).await;
        assert_eq!(info.json::<TerminalInfo>().await.unwrap().node, "b");
        client.close(&t.terminal_id).await.unwrap();
        assert_eq!(client.wait_exit(&t.terminal_id).await.reason, ExitReason::Closed);
    }
    assert!(there.wait_no_strays(Duration::from_secs(10)).await.is_empty());
    // The open was decided and audited on a, naming both nodes.
    let opens: Vec<_> = audit_lines(&audit_a)
        .into_iter()
        .filter(|r| r["action"] == "terminal.open" && r["container"] == there_name.as_str())
        .collect();
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert!(opens.iter().all(|r| r["outcome"] == "allowed" && r["node"] == "a" && r["owner_node"] == "b"));

    // A pipe exec relays too: stdin to EOF, stdout and stderr apart.
    let pipe = app::protocol::StartTerminal {
        command: Some(vec!["sh".into(), "-c".into(), "cat; echo to-stderr >&2".into()]),
        tty: false,
        ..shell_request(&format!("edge/{there_name}"))
    };
    let p = client.start(pipe).await.unwrap();
    let payload = serde_json::json!({ "terminalId": p.terminal_id, "data": "piped-through-a\n", "eof": true });
    client.emit_raw("input", payload).await;
    let exit = client.wait_exit(&p.terminal_id).await;
    assert_eq!((exit.reason, exit.exit_code), (ExitReason::Exited, Some(0)));
    assert_eq!(client.stdout(&p.terminal_id), b"piped-through-a\n");
    assert_eq!(client.stderr(&p.terminal_id), b"to-stderr\n");

    // A name on both hosts is ambiguous in the cluster; a container on a's own host still opens here.
    let e = client.shell_err(&same).await;
    assert_eq!(e.code, ErrorCode::AmbiguousContainer, "{e:?}");
    assert!(e.message.contains("HOST/"), "{}", e.message);
    let mine = client.shell(&here_name).await;
    client.run(&mine.terminal_id, "echo local-$((2*2))", "local-4").await;
    drop(here);
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn each_nodes_sandboxes_and_warm_pool_carry_its_node_id_as_their_instance() {
    use common::sandbox::*;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (id_a, id_b) = (format!("sb-a-{suffix}"), format!("sb-b-{suffix}"));
    let _guards = (InstanceGuard(id_a.clone()), InstanceGuard(id_b.clone()));
    let redis = Redis::start().await;
    let profiles = profiles_file("[profile.warm]\nimage = \"IMAGE\"\npids = 64\npool = 1\n");
    let with_pool = |c: &mut porthole_server::config::Config| c.sandboxes = Some(profiles.clone());
    let (a, _) = node(&id_a, &redis, with_pool).await;
    let (b, _) = node(&id_b, &redis, with_pool).await;
    assert_eq!(a.state().sandbox_manager().instance(), id_a);
    assert_eq!(b.state().sandbox_manager().instance(), id_b);
    // Each node fills its own pool on the shared daemon.
    eventually("each node's warm container", || async {
        containers_of(&id_a).len() == 1 && containers_of(&id_b).len() == 1
    })
    .await;
    let pooled_b = containers_of(&id_b);
    // A sandbox made on a comes from a's pool (its one container, then a's refill), never from b's.
    let made = Rest { base: base_url(&a), http: http() }.sandbox("warm").await;
    assert!(containers_of(&id_a).contains(&made.id), "{made:?}");
    assert_eq!(containers_of(&id_b), pooled_b, "b's pool is untouched");
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn container_events_of_another_nodes_host_reach_this_nodes_sockets_once() {
    let redis = Redis::start().await;
    let edge_hosts =
        |c: &mut porthole_server::config::Config| c.docker_hosts = vec![format!("edge=unix://{SECOND_DOCKER_SOCKET}")];
    // a and c both serve the usual daemon (as `local`); b serves the second one (as `edge`).
    let (a, _) = node("a", &redis, |_| {}).await;
    let (b, _) = node("b", &redis, edge_hosts).await;
    let (c, _) = node("c", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    // The nodes subscribe as they start; give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let there = TestContainer::start_named(
        second_docker().await,
        &format!("porthole-it-ev-{suffix}"),
        "cluster-events",
        &bash_image(),
        &[],
    )
    .await;
    let seen = on_a.wait_change(&format!("edge/{}", there.id), "start").await;
    assert_eq!(seen.action, "start");
    there.stop().await;
    on_a.wait_change(&format!("edge/{}", there.id), "die").await;

    // An event of a's own daemon comes once: from a's own watcher, not again from c, which serves it too.
    let here = TestContainer::start("cluster-events-here", &bash_image()).await;
    on_a.wait_change(&here.id, "start").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts =
        on_a.changes().into_iter().filter(|e| e.action == "start" && e.container_id.ends_with(&here.id)).count();
    assert_eq!(starts, 1);
    for n in [a, b, c] {
        n.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

/// A node with JWT sign-in under `policy`, and its audit log.
async fn jwt_node(
    id: &str,
    redis: &Redis,
    policy: &str,
    tweak: impl FnOnce(&mut porthole_server::config::Config),
) -> (RunningServer, std::path::PathBuf) {
    let (jwt, _) = common::jwt::jwt_config(policy);
    node(id, redis, move |c| {
        c.token = None;
        c.jwt_secret_file = jwt.jwt_secret_file;
        c.jwt_issuer = jwt.jwt_issuer;
        c.jwt_audience = jwt.jwt_audience;
        c.jwt_leeway_secs = 0;
        c.policy = jwt.policy;
        c.max_auth_failures = 1000;
        tweak(c);
    })
    .await
}

/// A node with JWT sign-in under [`common::jwt::RECORDING_POLICY`], recording into its own directory.
async fn recording_node(id: &str, redis: &Redis) -> (RunningServer, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempdir("cluster-recordings");
    let recordings = dir.clone();
    let (server, audit) =
        jwt_node(id, redis, common::jwt::RECORDING_POLICY, move |c| c.recordings_dir = Some(recordings)).await;
    (server, dir, audit)
}

fn recording_command(container: &str, script: &str) -> app::protocol::StartTerminal {
    app::protocol::StartTerminal {
        command: Some(vec!["bash".into(), "-c".into(), script.into()]),
        ..shell_request(container)
    }
}

/// `GET url` as `token`: the status, the `Porthole-Unanswered` header, and the body.
async fn get_as(token: &str, url: String) -> (u16, Option<String>, bytes::Bytes) {
    let res = http_as(token).get(url).send().await.unwrap();
    let unanswered = res.headers().get("porthole-unanswered").map(|v| v.to_str().unwrap().to_string());
    (res.status().as_u16(), unanswered, res.bytes().await.unwrap())
}

async fn listed(token: &str, server: &RunningServer, query: &str) -> Vec<app::protocol::Recording> {
    let (status, unanswered, body) = get_as(token, format!("{}/api/v1/recordings?{query}", base_url(server))).await;
    assert_eq!((status, unanswered), (200, None), "{query}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Waits until `server` shows recording `id` closed, and returns it.
async fn closed_on(token: &str, server: &RunningServer, id: &app::protocol::TerminalId) -> app::protocol::Recording {
    let url = format!("{}/api/v1/recordings/{}", base_url(server), id.0);
    for _ in 0..200 {
        let (status, _, body) = get_as(token, url.clone()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let r: app::protocol::Recording = serde_json::from_slice(&body).unwrap();
        if r.state != app::protocol::RecordingState::Recording {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("recording {id} never closed on {}", server.addr());
}

#[tokio::test]
async fn recordings_are_listed_searched_played_and_removed_from_any_node() {
    use common::jwt::{connect_as, outcome, token};
    let c = TestContainer::start("cluster-recordings", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, dir_a, _) = recording_node("a", &redis).await;
    let (b, _, audit_b) = recording_node("b", &redis).await;
    let (alice, bob, carol) = (token("alice", &[]), token("bob", &[]), token("carol", &[]));
    let (alice_a, alice_b) = (connect_as(&a, &alice).await.unwrap(), connect_as(&b, &alice).await.unwrap());

    // Two recordings on a, one on b, started in that order.
    let first = alice_a.start(recording_command(&c.id, "echo first-on-a-$((6*7))")).await.unwrap();
    alice_a.wait_exit(&first.terminal_id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = alice_b.start(recording_command(&c.id, "echo second-on-b-$((6*7))")).await.unwrap();
    alice_b.wait_exit(&second.terminal_id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let third = alice_a.start(recording_command(&c.id, "echo third-on-a-$((6*7))")).await.unwrap();
    alice_a.wait_exit(&third.terminal_id).await;
    for id in [&first.terminal_id, &third.terminal_id] {
        assert_eq!(closed_on(&alice, &b, id).await.node.as_deref(), Some("a"));
    }
    assert_eq!(closed_on(&alice, &a, &second.terminal_id).await.node.as_deref(), Some("b"));

    // Either node lists all three, newest first, each naming its node.
    let order = [&third.terminal_id.0, &second.terminal_id.0, &first.terminal_id.0];
    for server in [&a, &b] {
        let all = listed(&alice, server, "").await;
        let got: Vec<(&str, Option<&str>)> = all.iter().map(|r| (r.id.as_str(), r.node.as_deref())).collect();
        assert_eq!(
            got,
            vec![(order[0].as_str(), Some("a")), (order[1].as_str(), Some("b")), (order[2].as_str(), Some("a"))]
        );
        // Paged one by one, with the cursor in one node and the next recording in another.
        let mut paged = Vec::new();
        let mut query = "limit=1".to_string();
        loop {
            let page = listed(&alice, server, &query).await;
            let Some(r) = page.first() else { break };
            assert_eq!(page.len(), 1);
            paged.push(r.id.clone());
            query = format!("limit=1&before={}", r.id);
        }
        assert_eq!(paged, order.map(String::clone).to_vec());
        // A search finds what was on the screen, on whichever node holds it.
        let found = listed(&alice, server, "q=first-on-a-42").await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].id.as_str(), found[0].node.as_deref()), (order[2].as_str(), Some("a")));
        assert!(found[0].hits.as_ref().unwrap().iter().any(|h| h.line.contains("first-on-a-42")));
        let found = listed(&alice, server, "q=second-on-b-42").await;
        assert_eq!(found.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![order[1].as_str()]);
        assert_eq!(listed(&alice, server, &format!("container={}&limit=2", c.name)).await.len(), 2);
    }

    // The file, played through b, is the bytes a wrote; in ranges too; and its transcript.
    let on_b = |suffix: &str| format!("{}/api/v1/recordings/{}{suffix}", base_url(&b), first.terminal_id.0);
    let file = std::fs::read(dir_a.join(format!("{}.cast", first.terminal_id.0))).unwrap();
    let (status, _, body) = get_as(&alice, on_b(".cast")).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), file.as_slice());
    let part = http_as(&alice).get(on_b(".cast")).header("Range", "bytes=0-11").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-type"], "application/x-asciicast");
    assert_eq!(part.headers()["content-range"], format!("bytes 0-11/{}", file.len()).as_str());
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"{\"version\":2");
    let (status, _, txt) = get_as(&alice, on_b(".txt")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&txt).contains("first-on-a-42"), "{}", String::from_utf8_lossy(&txt));
    // The read is audited once, by b, naming a as the node that keeps it.
    let reads: Vec<_> = audit_lines(&audit_b)
        .into_iter()
        .filter(|r| r["action"] == "recording.read" && r["recordingId"] == first.terminal_id.0.as_str())
        .collect();
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert!(reads.iter().all(|r| r["owner_node"] == "a" && r["node"] == "b"), "{reads:?}");

    // A live recording on a, followed through b until its terminal ends.
    let live = alice_a.shell(&c.id).await;
    let live_id = live.terminal_id.clone();
    alice_a.run(&live_id, "echo before-$((1+1))", "before-2").await;
    let follow = tokio::spawn({
        let (alice, url) =
            (alice.clone(), format!("{}/api/v1/recordings/{}.cast?follow=true", base_url(&b), live_id.0));
        async move {
            let res = http_as(&alice).get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        }
    });
    alice_a.run(&live_id, "echo followed-$((1+1))", "followed-2").await;
    // Still being written: only a user with recordings = "all" may remove it, and not yet.
    let del = |tok: &str, id: &str| http_as(tok).delete(format!("{}/api/v1/recordings/{id}", base_url(&b))).send();
    assert_eq!(outcome(del(&carol, &live_id.0).await.unwrap()).await, (409, "recording_in_progress".into()));
    alice_a.input(&live_id, "exit\n").await;
    alice_a.wait_exit(&live_id).await;
    let followed = tokio::time::timeout(Duration::from_secs(20), follow).await.unwrap().unwrap();
    assert!(followed.contains("before-2") && followed.contains("followed-2"), "{followed}");
    assert!(followed.contains("exit 0 exited"), "{followed}");

    // Others' recordings answer like missing ones, on every node; only "all" may remove, from any node.
    assert!(listed(&bob, &b, "").await.is_empty());
    assert!(listed(&bob, &b, "q=first-on-a-42").await.is_empty());
    for suffix in ["", ".cast", ".txt"] {
        let res = http_as(&bob).get(on_b(suffix)).send().await.unwrap();
        assert_eq!(outcome(res).await, (404, "unknown_recording".into()), "{suffix}");
    }
    assert_eq!(listed(&carol, &b, "user=alice").await.len(), 4);
    assert_eq!(outcome(del(&alice, &first.terminal_id.0).await.unwrap()).await, (403, "forbidden".into()));
    assert_eq!(outcome(del(&bob, &first.terminal_id.0).await.unwrap()).await, (404, "unknown_recording".into()));
    assert_eq!(del(&carol, &first.terminal_id.0).await.unwrap().status(), 204);
    assert!(!dir_a.join(format!("{}.cast", first.terminal_id.0)).exists());
    let removes: Vec<_> = audit_lines(&audit_b).into_iter().filter(|r| r["action"] == "recording.remove").collect();
    assert!(removes.iter().any(|r| r["outcome"] == "allowed" && r["owner_node"] == "a"), "{removes:?}");
    for server in [&a, &b] {
        let url = format!("{}/api/v1/recordings/{}", base_url(server), first.terminal_id.0);
        let res = http_as(&alice).get(url).send().await.unwrap();
        assert_eq!(outcome(res).await, (404, "unknown_recording".into()));
    }
    for bad in ["t-nope", "..%2F..%2Fetc", &"x".repeat(300)] {
        let res = http_as(&alice).get(format!("{}/api/v1/recordings/{bad}", base_url(&b))).send().await.unwrap();
        assert_eq!(outcome(res).await, (404, "unknown_recording".into()), "{bad}");
    }
    let res = http_as(&alice).get(format!("{}/api/v1/recordings?before=t-nope", base_url(&b))).send().await.unwrap();
    assert_eq!(outcome(res).await, (400, "invalid_payload".into()));

    // A node whose lease is current but which does not answer: lists say whose recordings they lack, and a
    // recording that may be there is refused with cluster_unavailable rather than called unknown.
    let (z, _) = node("z", &redis, |c| c.advertise = Some(format!("127.0.0.1:{}", free_port()))).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, unanswered, body) = loop {
        let got = get_as(&alice, format!("{}/api/v1/recordings", base_url(&b))).await;
        if got.1.is_some() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, unanswered.as_deref()), (200, Some("z")));
    assert_eq!(serde_json::from_slice::<Vec<app::protocol::Recording>>(&body).unwrap().len(), 3);
    let res = http_as(&alice).get(format!("{}/api/v1/recordings/t-nope", base_url(&b))).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let reply: ErrorReply = res.json().await.unwrap();
    assert_eq!(reply.error.code, ErrorCode::ClusterUnavailable);
    assert!(reply.error.message.contains("node z"), "{}", reply.error.message);
    // Its own recordings are still served where they are.
    let (status, _, _) = get_as(&alice, on_b("").replace(&first.terminal_id.0, &second.terminal_id.0)).await;
    assert_eq!(status, 200);
    z.shutdown(Duration::from_secs(10)).await.unwrap();
    // With Redis gone, a node lists what it has itself, and says so.
    drop(redis);
    let (status, unanswered, body) = get_as(&alice, format!("{}/api/v1/recordings", base_url(&b))).await;
    assert_eq!((status, unanswered.as_deref()), (200, Some("*")));
    let mine: Vec<app::protocol::Recording> = serde_json::from_slice(&body).unwrap();
    assert_eq!(mine.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![second.terminal_id.0.as_str()]);
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn another_nodes_sandbox_is_its_owners_on_every_node_opened_and_removed_by_the_node_that_made_it() {
    use common::jwt::{connect_as, token};
    use common::sandbox::*;
    // Rules that cover every container: only the sandbox rules keep alice's sandbox from bob, and the warm
    // pool from both, on the node that did not make them.
    const POLICY: &str = r#"
[[rule]]
subjects = ["alice", "bob"]
containers = ["*"]
commands = "any"
sandboxes = "any"
"#;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (id_a, id_b) = (format!("sbx-a-{suffix}"), format!("sbx-b-{suffix}"));
    let _guards = (InstanceGuard(id_a.clone()), InstanceGuard(id_b.clone()));
    let redis = Redis::start().await;
    let profiles = profiles_file("[profile.warm]\nimage = \"IMAGE\"\npids = 64\npool = 1\n");
    let tweak = |c: &mut porthole_server::config::Config| {
        c.sandboxes = Some(profiles.clone());
        c.cluster_lease_ttl = 3;
    };
    let (a, _) = jwt_node(&id_a, &redis, POLICY, tweak).await;
    let (b, audit_b) = jwt_node(&id_b, &redis, POLICY, tweak).await;
    let (alice, bob) = (token("alice", &[]), token("bob", &[]));
    let rest = |server: &RunningServer, tok: &str| Rest { base: base_url(server), http: http_as(tok) };
    eventually("a's warm container", || async { containers_of(&id_a).len() == 1 }).await;
    let made = rest(&a, &alice).sandbox("warm").await;
    assert_eq!(made.node.as_deref(), Some(id_a.as_str()));
    eventually("a's pool refilled", || async { containers_of(&id_a).len() == 2 }).await;
    let pooled_a: Vec<String> = containers_of(&id_a).into_iter().filter(|id| id != &made.id).collect();

    // b lists it to alice, as a's, within a heartbeat (1 s here).
    eventually("b lists alice's sandbox", || async {
        rest(&b, &alice).list().await.iter().any(|s| s.id == made.id && s.node.as_deref() == Some(id_a.as_str()))
    })
    .await;
    assert!(rest(&b, &bob).list().await.is_empty());
    let on_b_alice = rest(&b, &alice).containers().await;
    let mine = on_b_alice.iter().find(|c| c.id == made.id).expect("alice's sandbox in b's picker");
    assert_eq!(mine.sandbox.as_ref().and_then(|s| s.node.as_deref()), Some(id_a.as_str()));
    assert!(mine.rights.remove);
    let on_b_bob = rest(&b, &bob).containers().await;
    assert!(!on_b_bob.iter().any(|c| c.id == made.id), "bob sees alice's sandbox on b");
    for list in [&on_b_alice, &on_b_bob] {
        assert!(!list.iter().any(|c| pooled_a.contains(&c.id)), "a's warm pool is listed on b");
    }

    // A terminal in it, asked for on b, runs on a (which made it), as the profile's user.
    let alice_b = connect_as(&b, &alice).await.unwrap();
    let t = alice_b.start(shell_request(&made.id)).await.unwrap();
    alice_b.run(&t.terminal_id, "echo uid-$(id -u)", "uid-65534").await;
    let res = http_as(&alice).get(format!("{}/api/v1/terminals/{}", base_url(&b), t.terminal_id)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<TerminalInfo>().await.unwrap().node, id_a);
    let bob_b = connect_as(&b, &bob).await.unwrap();
    assert_eq!(bob_b.start(shell_request(&made.id)).await.unwrap_err().code, ErrorCode::ContainerNotFound);
    assert_eq!(bob_b.start(shell_request(&pooled_a[0])).await.unwrap_err().code, ErrorCode::ContainerNotFound);

    // Removed through b: bob may not (it is hidden from him); alice may, and a removes it.
    assert_eq!(rest(&b, &bob).remove(&made.id).await, (404, "container_not_found".into()));
    assert_eq!(rest(&b, &bob).remove(&pooled_a[0]).await, (404, "container_not_found".into()));
    assert_eq!(rest(&b, &alice).remove(&made.id).await, (204, String::new()));
    let exit = alice_b.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::SandboxRemoved);
    eventually("the sandbox is gone", || async { inspect(&made.id).is_none() }).await;
    let removes: Vec<_> = audit_lines(&audit_b).into_iter().filter(|r| r["action"] == "sandbox.remove").collect();
    assert!(
        removes
            .iter()
            .any(|r| r["outcome"] == "allowed" && r["owner_node"] == id_a.as_str() && r["node"] == id_b.as_str()),
        "{removes:?}"
    );
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_burst_of_keys_through_a_relay_arrives_whole_and_in_order() {
    let c = TestContainer::start("cluster-burst", &bash_image()).await;
    let redis = Redis::start().await;
    let (a, _) = node("a", &redis, |_| {}).await;
    let (b, _) = node("b", &redis, |_| {}).await;
    let on_a = TestClient::connect(&a).await;
    // Raw mode, so every byte reaches the process as it comes; it prints them back once it has all of them.
    const KEYS: usize = 1500;
    let script = format!("stty raw -echo; echo ready; head -c {KEYS} > /tmp/keys; echo; echo got-$(wc -c < /tmp/keys)");
    let started = start_script(&on_a, &c.id, script).await;
    let id = &started.terminal_id;
    on_a.wait_for(id, "ready").await;
    until_listed(&b, id).await;
    let on_b = TestClient::connect(&b).await;
    let req = app::protocol::AttachTerminal { terminal_id: id.clone(), since: None, flow_control: false };
    on_b.attach(&req).await.unwrap();
    // One event per key, as fast as the socket takes them: more than one scheduling slice's worth reaches b
    // before its relay writes any of them.
    let keys: Vec<char> = (0..KEYS).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for k in &keys {
        on_b.input(id, &k.to_string()).await;
    }
    on_b.wait_for(id, &format!("got-{KEYS}")).await;
    assert!(on_b.errors().is_empty(), "{:?}", on_b.errors());
    let (code, out) = c.exec(&["cat", "/tmp/keys"]).await;
    assert_eq!((code, out), (0, keys.iter().collect::<String>()));
    assert_eq!(on_a.wait_exit(id).await.exit_code, Some(0));
    a.shutdown(Duration::from_secs(10)).await.unwrap();
    b.shutdown(Duration::from_secs(10)).await.unwrap();
}
