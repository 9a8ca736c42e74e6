//! Three cluster nodes behind nginx (Debian's), configured exactly as `docs/deploy.md` says (its two `nginx`
//! blocks, with this test's addresses and ports): WebSocket clients need no stickiness; polling sessions keep
//! their node by cookie and by address (and break without either, which the test checks too); clients resume
//! every byte after nginx restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use app::protocol::{AttachTerminal, StartTerminal, TerminalId, TerminalInfo};
use common::cluster::*;
use common::nginx::Nginx;
use common::*;
use porthole_server::RunningServer;
use serde_json::{Value, json};

/// Three nodes on `redis` (and their audit logs) and nginx in front of them.
async fn cluster(redis: &Redis) -> ([RunningServer; 3], [PathBuf; 3], Nginx) {
    let (a, audit_a) = node("n1", redis, |_| {}).await;
    let (b, audit_b) = node("n2", redis, |_| {}).await;
    let (c, audit_c) = node("n3", redis, |_| {}).await;
    let nginx = Nginx::start(&[a.addr(), b.addr(), c.addr()]);
    ([a, b, c], [audit_a, audit_b, audit_c], nginx)
}

async fn shutdown(nodes: [RunningServer; 3]) {
    shutdown_all(nodes).await;
}

async fn shutdown_all<const N: usize>(nodes: [RunningServer; N]) {
    for n in nodes {
        n.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

/// A Socket.IO session over HTTP long-polling only, from a chosen source address, keeping the
/// `porthole_node` cookie nginx sets when `cookies` (as a browser would).
struct Polling {
    http: reqwest::Client,
    url: String,
    sid: String,
    cookie: Option<String>,
    cookies: bool,
    next_ack: u64,
}

/// Why a polling request failed: the HTTP status and body.
#[derive(Debug)]
struct Refused(u16, String);

impl Polling {
    async fn open(base: &str, from: IpAddr, cookies: bool) -> Result<Polling, Refused> {
        Polling::start(base, from, cookies, None).await
    }

    /// A session whose first request carries `porthole_node=<node>`, as a browser pinned to it would.
    async fn pinned(base: &str, node: &str) -> Result<Polling, Refused> {
        Polling::start(base, "127.0.0.1".parse().unwrap(), true, Some(node.to_string())).await
    }

    async fn start(base: &str, from: IpAddr, cookies: bool, cookie: Option<String>) -> Result<Polling, Refused> {
        let http = reqwest::Client::builder().local_address(from).timeout(Duration::from_secs(20)).build().unwrap();
        let url = format!("{base}/socket.io/?EIO=4&transport=polling");
        let mut p = Polling { http, url, sid: String::new(), cookie, cookies, next_ack: 0 };
        let open = p.get().await?;
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("an Engine.IO open packet")).unwrap();
        p.sid = handshake["sid"].as_str().unwrap().to_string();
        p.post(&format!("40{}", json!({ "token": TEST_TOKEN, "protocolVersion": 2 }))).await?;
        // The CONNECT's answer, then `hello`.
        let mut packets = Vec::new();
        while !packets.iter().any(|p: &String| p.starts_with("42[\"hello\"")) {
            packets.extend(p.poll().await?);
        }
        assert!(packets.iter().any(|p| p.starts_with("40")), "{packets:?}");
        Ok(p)
    }

    fn with_sid(&self) -> String {
        if self.sid.is_empty() { self.url.clone() } else { format!("{}&sid={}", self.url, self.sid) }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Result<String, Refused> {
        let req = match (&self.cookie, self.cookies) {
            (Some(c), true) => req.header("cookie", format!("porthole_node={c}")),
            _ => req,
        };
        let res = req.send().await.map_err(|e| Refused(0, e.to_string()))?;
        for v in res.headers().get_all("set-cookie") {
            if let Some(c) = v.to_str().ok().and_then(|v| v.strip_prefix("porthole_node=")) {
                self.cookie = Some(c.split(';').next().unwrap_or_default().to_string());
            }
        }
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        if status == 200 { Ok(body) } else { Err(Refused(status, body)) }
    }

    async fn get(&mut self) -> Result<String, Refused> {
        let req = self.http.get(self.with_sid());
        self.send(req).await
    }

    async fn post(&mut self, packet: &str) -> Result<String, Refused> {
        let req = self.http.post(self.with_sid()).body(packet.to_string());
        self.send(req).await
    }

    /// One long poll's packets, answering the server's pings.
    async fn poll(&mut self) -> Result<Vec<String>, Refused> {
        let body = self.get().await?;
        let packets: Vec<String> = body.split('\u{1e}').map(str::to_string).collect();
        if packets.iter().any(|p| p == "2") {
            self.post("3").await?;
        }
        Ok(packets)
    }

    /// Sends event `name` asking for an ack and polls until it comes; returns the ack's value.
    async fn request(&mut self, name: &str, payload: Value) -> Result<Value, Refused> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.post(&format!("42{id}{}", json!([name, payload]))).await?;
        let prefix = format!("43{id}");
        loop {
            for packet in self.poll().await? {
                if let Some(rest) = packet.strip_prefix(&prefix) {
                    let v: Value = serde_json::from_str(rest).unwrap();
                    return Ok(v[0].clone());
                }
            }
        }
    }
}

/// Which node owns terminal `id` (REST through any node, once the directory has it).
async fn owner_of(node: &RunningServer, id: &TerminalId) -> String {
    for _ in 0..100 {
        let res = get(format!("{}/api/v1/terminals/{id}", base_url(node))).await;
        if res.status() == 200 {
            return res.json::<TerminalInfo>().await.unwrap().node;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} is not listed on {}", node.addr());
}

#[tokio::test]
async fn websocket_clients_need_no_stickiness_any_node_serves_any_terminal() {
    let c = TestContainer::start("balancer-ws", &bash_image()).await;
    let redis = Redis::start().await;
    let (nodes, audits, nginx) = cluster(&redis).await;
    // Round robin spreads the three sockets over the three nodes.
    let url = Nginx::url(nginx.cookie);
    let first = TestClient::connect_url(&url, rust_socketio::TransportType::Websocket).await;
    let t = first.shell(&c.id).await;
    let id = &t.terminal_id;
    first.run(id, "echo lb-$((20+1))", "lb-21").await;
    let owner = owner_of(&nodes[0], id).await;
    let others = [
        TestClient::connect_url(&url, rust_socketio::TransportType::Websocket).await,
        TestClient::connect_url(&url, rust_socketio::TransportType::Websocket).await,
    ];
    eventually("every node lists the terminal", || async {
        let mut all = true;
        for n in &nodes {
            all &= get(format!("{}/api/v1/terminals/{id}", base_url(n))).await.status() == 200;
        }
        all
    })
    .await;
    for (i, o) in others.iter().enumerate() {
        let req = AttachTerminal { terminal_id: id.clone(), since: Some(0), flow_control: false };
        o.attach(&req).await.unwrap();
        o.wait_for(id, "lb-21").await;
        o.run(id, &format!("echo other-{i}-$((1+1))"), &format!("other-{i}-2")).await;
    }
    first.wait_viewers(id, 3).await;
    first.wait_for(id, "other-1-2").await;
    // Every socket saw the same bytes at the same offsets.
    others[1].run(id, "echo end-$((9*9))", "end-81").await;
    first.wait_for(id, "end-81").await;
    others[0].wait_for(id, "end-81").await;
    // The prompt after it may still be on its way to some of them: wait until each has as many bytes.
    eventually("every socket has all the output", || async {
        others.iter().all(|o| o.bytes(id).len() == first.bytes(id).len())
    })
    .await;
    for o in &others {
        assert_eq!(o.bytes(id), first.bytes(id));
    }
    // The three sockets were not all on the owner: nginx spread them (each node audits its own sockets'
    // connects, not relays), and relays served them.
    let connected = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(r#""action":"connect""#))
            .count()
    };
    let spread: Vec<usize> = audits.iter().map(connected).collect();
    assert_eq!(spread.iter().sum::<usize>(), 3, "{spread:?}");
    assert!(spread.iter().filter(|n| **n > 0).count() >= 2, "all on one node: {spread:?}");
    assert!(!owner.is_empty());
    shutdown(nodes).await;
}

#[tokio::test]
async fn polling_sessions_keep_their_node_by_cookie_or_by_address_and_break_without() {
    let c = TestContainer::start("balancer-polling", &bash_image()).await;
    let redis = Redis::start().await;
    let (nodes, _, nginx) = cluster(&redis).await;
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    let unknown = json!({ "terminalId": "t-0000" });
    // Sticky by cookie: each session's every request reaches its node.
    for _ in 0..4 {
        let mut p = Polling::open(&Nginx::url(nginx.cookie), localhost, true).await.unwrap();
        for _ in 0..5 {
            let v = p.request("attach-terminal", unknown.clone()).await.unwrap();
            assert_eq!(v["error"]["code"], "unknown_terminal", "{v}");
        }
    }
    // Sticky by address: sessions from ten addresses, each kept on one node, more than one node used.
    let mut owners = std::collections::BTreeSet::new();
    for last in 2..12 {
        let from: IpAddr = format!("127.0.0.{last}").parse().unwrap();
        let mut p = Polling::open(&Nginx::url(nginx.address), from, false).await.unwrap();
        for _ in 0..3 {
            let v = p.request("attach-terminal", unknown.clone()).await.unwrap();
            assert_eq!(v["error"]["code"], "unknown_terminal", "{v}");
        }
        let start = StartTerminal { command: Some(vec!["sleep".into(), "60".into()]), ..shell_request(&c.id) };
        let started = p.request("start-terminal", serde_json::to_value(start).unwrap()).await.unwrap();
        let id: TerminalId = serde_json::from_value(started["terminalId"].clone()).expect("started");
        owners.insert(owner_of(&nodes[0], &id).await);
    }
    assert!(owners.len() >= 2, "all ten addresses went to {owners:?}");
    // No stickiness: a polling session's requests land on other nodes, which do not know it.
    let mut broke = false;
    for _ in 0..3 {
        match Polling::open(&Nginx::url(nginx.plain), localhost, false).await {
            Err(Refused(400, body)) => {
                assert!(body.contains("Session ID unknown") || body.contains("\"code\":1"), "{body}");
                broke = true;
                break;
            }
            Err(other) => panic!("{other:?}"),
            Ok(mut p) => {
                if let Err(Refused(status, _)) = p.request("attach-terminal", unknown.clone()).await {
                    assert_eq!(status, 400);
                    broke = true;
                    break;
                }
            }
        }
    }
    assert!(broke, "round robin without stickiness should break polling sessions");

    // A cookie naming a node that is gone: nginx falls back to another, and the cookie then names that one.
    let [n1, n2, n3] = nodes;
    let gone = n1.addr().to_string();
    n1.shutdown(Duration::from_secs(10)).await.unwrap();
    let mut p = Polling::pinned(&Nginx::url(nginx.cookie), &gone).await.unwrap();
    assert!(p.cookie.as_deref().is_some_and(|c| c != gone && !c.is_empty()), "{:?}", p.cookie);
    for _ in 0..3 {
        let v = p.request("attach-terminal", unknown.clone()).await.unwrap();
        assert_eq!(v["error"]["code"], "unknown_terminal", "{v}");
    }
    shutdown_all([n2, n3]).await;
}

#[tokio::test]
async fn every_client_resumes_every_byte_after_nginx_restarts_under_load() {
    let c = TestContainer::start("balancer-restart", &bash_image()).await;
    let redis = Redis::start().await;
    let (nodes, _, mut nginx) = cluster(&redis).await;
    let url = Nginx::url(nginx.cookie);
    const LINES: u32 = 3000;
    const CLIENTS: usize = 4;
    let script = format!(
        "sleep 1; i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; [ $((i % 100)) -eq 0 ] && sleep 0.1; done"
    );
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let client = TestClient::connect_v2(&url, &format!("restart-{n}")).await;
        let start =
            StartTerminal { command: Some(vec!["sh".into(), "-c".into(), script.clone()]), ..shell_request(&c.id) };
        let id = client.start(start).await.unwrap().terminal_id;
        clients.push((client, id));
    }
    for (client, id) in &clients {
        client.wait_for(id, "line-300\r\n").await;
    }
    nginx.stop();
    let mut had = Vec::new();
    for (client, id) in clients {
        client.wait_closed().await;
        had.push((client.bytes(&id), id));
    }
    nginx.restart();
    let expected: String = (1..=LINES).map(|i| format!("line-{i}\r\n")).collect();
    for (n, (mut bytes, id)) in had.into_iter().enumerate() {
        let again = TestClient::connect_v2(&url, &format!("restart-{n}")).await;
        let since = bytes.len() as u64;
        let req = AttachTerminal { terminal_id: id.clone(), since: Some(since), flow_control: false };
        let attached = again.attach(&req).await.unwrap();
        assert_eq!((attached.offset, attached.truncated), (since, false));
        let exit = again.wait_exit(&id).await;
        assert_eq!(exit.exit_code, Some(0), "{exit:?}");
        assert!(again.discontinuities().is_empty(), "{:?}", again.discontinuities());
        bytes.extend(again.bytes(&id));
        assert_eq!(String::from_utf8_lossy(&bytes), expected, "client {n} lost or repeated bytes");
    }
    shutdown(nodes).await;
}
