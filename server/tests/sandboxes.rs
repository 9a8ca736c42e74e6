//! Sandboxes on the real engine: created on demand (cold and from the warm pool), listed, removed, expired,
//! limited by the policy and by rate, and nothing left behind after a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use app::protocol::{
    ContainerAction, CreateSandbox, ExitReason, LABEL_INSTANCE, LABEL_POOL, LABEL_PROFILE, RemoveSandbox,
    SandboxCreated, event,
};
use common::jwt::*;
use common::sandbox::*;
use common::*;
use porthole_server::RunningServer;

/// Profiles without a pool.
const COLD: &str = r#"
[profile.scratch]
image = "IMAGE"
memory = "64m"
cpus = 0.5
pids = 64
tmpfs = { "/tmp" = "4m", "/home/sandbox" = "4m" }

[profile.missing]
image = "porthole-test/not-here:0"
"#;

/// [`COLD`] and a profile with a warm pool of two.
const PROFILES: &str = concat!(
    r#"
[profile.warm]
image = "IMAGE"
pids = 64
pool = 2
"#,
    r#"
[profile.scratch]
image = "IMAGE"
pids = 64
"#
);

/// A local-token server with `profiles`, and the guard that removes its containers.
async fn server_with(
    profiles: &str,
    tweak: impl FnOnce(&mut porthole_server::Config),
) -> (RunningServer, InstanceGuard) {
    let mut c = test_config();
    c.sandboxes = Some(profiles_file(profiles));
    tweak(&mut c);
    let server = start_server(c).await;
    let guard = InstanceGuard(server.state().sandbox_manager().instance().to_string());
    (server, guard)
}

fn rest(server: &RunningServer) -> Rest {
    Rest { base: base_url(server), http: http() }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn create_with_terminal(client: &TestClient, profile: &str) -> Result<SandboxCreated, app::protocol::ErrorBody> {
    let req = CreateSandbox { profile: profile.into(), cols: Some(100), rows: Some(30), flow_control: false };
    client.request(event::CREATE_SANDBOX, &req).await
}

#[tokio::test]
async fn rest_creates_lists_and_removes_sandboxes_with_their_limits() {
    init_tracing();
    let (server, guard) = server_with(COLD, |c| c.max_sandboxes_per_user = 2).await;
    let api = rest(&server);
    let before = now_ms();
    let s = api.sandbox("scratch").await;
    assert_eq!(s.id.len(), 64, "the full container id: {s:?}");
    assert!(s.name.starts_with("sandbox-scratch-"), "{s:?}");
    assert_eq!((s.profile.as_str(), s.owner.as_str(), s.state.as_str()), ("scratch", "local", "running"));
    assert_eq!(s.image, bash_image());
    assert!(s.created_at >= before && s.created_at <= now_ms(), "{s:?}");
    assert_eq!(s.expires_at - s.created_at, 8 * 3600 * 1000, "the default max_lifetime is 8h");

    // What Docker was asked for.
    let c = inspect(&s.id).expect("the sandbox exists");
    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20);
    assert_eq!(host["MemorySwap"], host["Memory"], "no swap: MemorySwap equals Memory");
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["PidsLimit"], 64);
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(host["SecurityOpt"], serde_json::json!(["no-new-privileges:true"]));
    assert_eq!((host["ReadonlyRootfs"].as_bool(), host["NetworkMode"].as_str()), (Some(true), Some("none")));
    assert_eq!(c["Config"]["User"], "65534:65534");
    let labels = &c["Config"]["Labels"];
    assert_eq!((labels[LABEL_PROFILE].as_str(), labels[LABEL_POOL].as_str()), (Some("scratch"), Some("0")));
    assert_eq!(labels[LABEL_INSTANCE].as_str(), Some(guard.0.as_str()));

    // Listed, in the picker with its sandbox details, and an ordinary container for terminals.
    assert_eq!(api.list().await, vec![s.clone()]);
    let listed = api.containers().await.into_iter().find(|c| c.id == s.id).expect("in the picker");
    assert_eq!(listed.sandbox.as_ref().map(|x| x.profile.as_str()), Some("scratch"));
    assert!(listed.rights.remove && listed.rights.manage);
    let client = TestClient::connect(&server).await;
    let t = client.shell(&s.name).await;
    client.run(&t.terminal_id, "echo uid=$(id -u) home=$HOME", "uid=65534 home=/home/sandbox").await;
    // A socket that was already connected hears of a new sandbox (Docker's own events came while it was hidden).
    let announced = api.sandbox("scratch").await;
    client.wait_change(&announced.id, "create").await;
    assert_eq!(api.remove(&announced.id).await, (204, String::new()));

    // Quota: two at most.
    let second = api.sandbox("scratch").await;
    let (status, body) = api.create("scratch").await;
    assert_eq!((status, code(&body)), (429, "quota_exceeded"), "{body}");

    // Removal ends its terminals with `sandbox_removed` and leaves no container.
    assert_eq!(api.remove(&s.id).await, (204, String::new()));
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::SandboxRemoved);
    assert!(inspect(&s.id).is_none(), "the container is gone");
    assert_eq!(api.remove(&s.id).await, (404, "container_not_found".into()));
    assert_eq!(api.list().await, vec![second.clone()]);
    assert_eq!(api.remove(&second.name).await, (204, String::new()), "by name too");

    // Bad input, each with its code, and nothing left behind.
    let (status, body) = api.create("nope").await;
    assert_eq!((status, code(&body)), (404, "unknown_profile"), "{body}");
    let (status, body) = api.create("missing").await;
    assert_eq!((status, code(&body)), (409, "image_not_found"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not-here"), "{body}");
    let res = api
        .http
        .post(format!("{}/api/v1/sandboxes", api.base))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let ordinary = TestContainer::start("sbx-ordinary", &bash_image()).await;
    assert_eq!(
        api.remove(&ordinary.name).await,
        (404, "container_not_found".into()),
        "only sandboxes are removed here"
    );
    assert!(inspect(&ordinary.id).is_some());
    assert_eq!(api.remove("x%20y").await.0, 400, "a malformed id is refused before any Docker call");
    eventually("no container of this server left", || async { containers_of(&guard.0).is_empty() }).await;
    client.disconnect().await;
}

#[tokio::test]
async fn create_sandbox_opens_a_terminal_and_remove_sandbox_ends_it() {
    init_tracing();
    let (server, guard) = server_with(COLD, |_| {}).await;
    let client = TestClient::connect(&server).await;
    let created = create_with_terminal(&client, "scratch").await.expect("create-sandbox");
    assert_eq!((created.terminal.cols, created.terminal.rows), (100, 30));
    assert_eq!(created.terminal.container_id, created.sandbox.id);
    assert_eq!(created.sandbox.profile, "scratch");
    let t = created.terminal.terminal_id.clone();
    client.run(&t, "echo me=$(id -u):$(id -g) in=$PWD", "me=65534:65534 in=/home/sandbox").await;
    // A second terminal, as in any container.
    let second = client.shell(&created.sandbox.name).await;

    let removed: RemoveSandbox = client
        .request(event::REMOVE_SANDBOX, &RemoveSandbox { id: created.sandbox.id.clone() })
        .await
        .expect("remove-sandbox");
    assert_eq!(removed.id, created.sandbox.id);
    for id in [&t, &second.terminal_id] {
        assert_eq!(client.wait_exit(id).await.reason, ExitReason::SandboxRemoved);
    }
    assert!(inspect(&created.sandbox.id).is_none());

    // Refusals answer the ack.
    let e = create_with_terminal(&client, "nope").await.unwrap_err();
    assert_eq!(e.code.as_str(), "unknown_profile");
    let v = client.request_raw(event::CREATE_SANDBOX, serde_json::json!({"profile": 5})).await;
    assert_eq!(v["error"]["code"], "invalid_payload", "{v}");
    let v = client.request_raw(event::CREATE_SANDBOX, serde_json::json!({"profile": "scratch", "cols": 0})).await;
    assert_eq!(v["error"]["code"], "invalid_payload", "{v}");
    let e = client
        .request::<_, RemoveSandbox>(event::REMOVE_SANDBOX, &RemoveSandbox { id: "sandbox-nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "container_not_found");
    eventually("no container of this server left", || async { containers_of(&guard.0).is_empty() }).await;
    client.disconnect().await;
}

#[tokio::test]
async fn the_warm_pool_hands_each_container_to_one_user_and_refills() {
    init_tracing();
    let (server, guard) = server_with(PROFILES, |_| {}).await;
    let manager = server.state().sandbox_manager().clone();
    let ready = |n: usize| {
        let m = manager.clone();
        move || {
            let m = m.clone();
            async move { m.ready().get("warm").copied() == Some(n) }
        }
    };
    eventually("two warm containers", ready(2)).await;
    let pooled: HashSet<String> = containers_where(&format!("{LABEL_INSTANCE}={}", guard.0)).into_iter().collect();
    assert_eq!(pooled.len(), 2);
    let api = rest(&server);
    let client = TestClient::connect(&server).await;

    // Pooled containers are nobody's: not listed, not openable, not manageable.
    let listed: HashSet<String> = api.containers().await.into_iter().map(|c| c.id).collect();
    assert!(listed.is_disjoint(&pooled), "pool containers are hidden from the picker");
    for id in &pooled {
        assert_eq!(client.shell_err(id).await.code.as_str(), "container_not_found");
        assert_eq!(api.act(id, "stop").await, (404, "container_not_found".into()));
        assert_eq!(api.remove(id).await.0, 404);
    }

    // Two claims at once get two different warm containers.
    let (a, b) = tokio::join!(api.create("warm"), api.create("warm"));
    assert_eq!((a.0, b.0), (201, 201), "{a:?} {b:?}");
    let (a, b) = (a.1["id"].as_str().unwrap().to_string(), b.1["id"].as_str().unwrap().to_string());
    assert_ne!(a, b);
    assert!(pooled.contains(&a) && pooled.contains(&b), "both came from the pool");
    eventually("the pool refilled", ready(2)).await;
    let t = client.shell(&a).await;
    client.run(&t.terminal_id, "echo claimed-$((6*7))", "claimed-42").await;

    // A pool container that died (as after a daemon restart) is never handed out; it is replaced.
    let now_pooled: Vec<String> = containers_where(&format!("{LABEL_POOL}=1"))
        .into_iter()
        .filter(|id| {
            *id != a
                && *id != b
                && inspect(id).is_some_and(|c| c["Config"]["Labels"][LABEL_INSTANCE] == guard.0.as_str())
        })
        .collect();
    assert_eq!(now_pooled.len(), 2);
    for id in &now_pooled {
        std::process::Command::new("docker").args(["kill", id]).output().unwrap();
    }
    let c = api.sandbox("warm").await;
    assert!(!now_pooled.contains(&c.id), "a dead pool container was handed out");
    eventually("dead pool containers removed", || {
        let gone = now_pooled.clone();
        async move { gone.iter().all(|id| inspect(id).is_none()) }
    })
    .await;
    eventually("the pool refilled after the deaths", ready(2)).await;
    client.disconnect().await;
}

/// The policy of the multi-user tests. `TARGET` stands for a test container's name.
const POLICY: &str = r#"
[[rule]]
groups = ["dev"]
containers = ["nothing-*"]
sandboxes = ["scratch"]
max_sandboxes = 1

[[rule]]
groups = ["lead"]
containers = ["sandbox-*"]
access = "view"
shared = true

[[rule]]
groups = ["ops"]
containers = ["sandbox-*", "TARGET"]
shared = true
manage = true
sandboxes = "any"

[[rule]]
groups = ["viewer"]
containers = ["TARGET"]
access = "view"
"#;

#[tokio::test]
async fn the_policy_decides_profiles_quotas_visibility_and_management() {
    init_tracing();
    let target = TestContainer::start("sbx-manage", &bash_image()).await;
    let (mut config, audit) = jwt_config(&POLICY.replace("TARGET", &target.name));
    config.sandboxes = Some(profiles_file(PROFILES));
    let server = start_server(config).await;
    let _guard = InstanceGuard(server.state().sandbox_manager().instance().to_string());
    let as_user = |sub: &str, groups: &[&str]| Rest { base: base_url(&server), http: http_as(&token(sub, groups)) };
    let (alice, bob, carol, olga, victor) = (
        as_user("alice", &["dev"]),
        as_user("bob", &["lead"]),
        as_user("carol", &[]),
        as_user("olga", &["ops"]),
        as_user("victor", &["viewer"]),
    );

    let profiles: Vec<String> = alice
        .http
        .get(format!("{}/api/v1/sandbox-profiles", alice.base))
        .send()
        .await
        .unwrap()
        .json::<Vec<app::protocol::SandboxProfile>>()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(profiles, ["scratch"]);
    let (status, body) = alice.create("warm").await;
    assert_eq!((status, code(&body)), (404, "unknown_profile"), "a profile she may not use answers like a missing one");
    let mine = alice.sandbox("scratch").await;
    assert_eq!(mine.owner, "alice");
    let (status, body) = alice.create("scratch").await;
    assert_eq!((status, code(&body)), (429, "quota_exceeded"), "max_sandboxes = 1: {body}");
    // Her own sandbox is hers to see and use, though no rule names it.
    assert_eq!(alice.list().await, vec![mine.clone()]);
    let alice_socket = connect_as(&server, &token("alice", &["dev"])).await.unwrap();
    let t = alice_socket.shell(&mine.name).await;
    alice_socket.run(&t.terminal_id, "echo hers", "hers").await;

    // A shared rule shows it to others; removing needs manage.
    assert_eq!(bob.list().await, vec![mine.clone()]);
    assert_eq!(bob.remove(&mine.id).await, (403, "forbidden".into()));
    assert!(carol.list().await.is_empty(), "without a shared rule, others' sandboxes are hidden");
    assert_eq!(carol.remove(&mine.id).await, (404, "container_not_found".into()));
    assert!(!carol.containers().await.iter().any(|c| c.id == mine.id));

    // Managing existing containers.
    assert_eq!(victor.act(&target.name, "stop").await, (403, "forbidden".into()), "seen but not managed");
    assert_eq!(carol.act(&target.name, "stop").await, (404, "container_not_found".into()), "hidden");
    assert_eq!(olga.act(&target.name, "stop").await, (204, String::new()));
    assert_eq!(inspect(&target.id).unwrap()["State"]["Running"], false);
    assert_eq!(olga.act(&target.name, "start").await, (204, String::new()));
    assert_eq!(inspect(&target.id).unwrap()["State"]["Running"], true);
    let started_at = inspect(&target.id).unwrap()["State"]["StartedAt"].clone();
    let olga_socket = connect_as(&server, &token("olga", &["ops"])).await.unwrap();
    let ack: ContainerAction = olga_socket
        .request(event::RESTART_CONTAINER, &ContainerAction { container_id: target.name.clone() })
        .await
        .expect("restart-container");
    assert_eq!(ack.container_id, target.name);
    assert_ne!(inspect(&target.id).unwrap()["State"]["StartedAt"], started_at, "it restarted");
    let e = olga_socket
        .request::<_, ContainerAction>(event::STOP_CONTAINER, &ContainerAction { container_id: "no-such-thing".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "container_not_found");
    let victor_socket = connect_as(&server, &token("victor", &["viewer"])).await.unwrap();
    let e = victor_socket
        .request::<_, ContainerAction>(event::START_CONTAINER, &ContainerAction { container_id: target.name.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "forbidden");

    // Someone who may manage others' sandboxes removes hers: her terminal learns why.
    assert_eq!(olga.remove(&mine.id).await, (204, String::new()));
    assert_eq!(alice_socket.wait_exit(&t.terminal_id).await.reason, ExitReason::SandboxRemoved);

    let text = std::fs::read_to_string(&audit).unwrap();
    for needle in [
        r#""action":"sandbox.create","outcome":"allowed","user":"alice""#,
        r#""action":"sandbox.remove","outcome":"denied","user":"bob""#,
        r#""action":"container.stop","outcome":"allowed","user":"olga""#,
        r#""action":"container.restart","outcome":"allowed","user":"olga""#,
        r#""action":"container.start","outcome":"denied","user":"victor""#,
        r#""action":"sandbox.remove","outcome":"allowed","user":"olga""#,
    ] {
        assert!(text.contains(needle), "audit log lacks {needle}:\n{text}");
    }
    for c in [alice_socket, olga_socket, victor_socket] {
        c.disconnect().await;
    }
}

const SHORT_LIVED: &str = r#"
[profile.idle]
image = "IMAGE"
idle_timeout = "2s"

[profile.brief]
image = "IMAGE"
max_lifetime = "3s"
"#;

#[tokio::test]
async fn idle_timeouts_and_max_lifetimes_end_sandboxes() {
    init_tracing();
    let (server, _guard) = server_with(SHORT_LIVED, |_| {}).await;
    let api = rest(&server);
    let client = TestClient::connect(&server).await;

    // No terminal: gone after its idle timeout.
    let lonely = api.sandbox("idle").await;
    eventually("the idle sandbox removed", || async { inspect(&lonely.id).is_none() }).await;

    // An open terminal holds the idle timeout off; closing it starts the clock.
    let held = create_with_terminal(&client, "idle").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(inspect(&held.sandbox.id).is_some(), "a sandbox with a running terminal is not idle");
    client.close(&held.terminal.terminal_id).await.unwrap();
    eventually("removed once idle", || async { inspect(&held.sandbox.id).is_none() }).await;

    // The max lifetime ends it, terminals and all.
    let brief = create_with_terminal(&client, "brief").await.unwrap();
    let exit = client.wait_exit(&brief.terminal.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::SandboxExpired);
    eventually("the brief sandbox removed", || async { inspect(&brief.sandbox.id).is_none() }).await;
    assert!(api.list().await.is_empty());
    client.disconnect().await;
}

#[tokio::test]
async fn a_create_storm_from_one_user_is_limited_and_others_are_unaffected() {
    init_tracing();
    let victim_box = TestContainer::start("sbx-storm-victim", &bash_image()).await;
    let policy = format!(
        "[[rule]]\nsubjects = [\"mallory\", \"vic\"]\nsandboxes = \"any\"\nmax_sandboxes = 3\n\n\
         [[rule]]\nsubjects = [\"vic\"]\ncontainers = [\"{}\"]\n",
        victim_box.name
    );
    let (mut config, _) = jwt_config(&policy);
    config.sandboxes = Some(profiles_file(COLD));
    let server = start_server(config).await;
    let _guard = InstanceGuard(server.state().sandbox_manager().instance().to_string());
    let mallory = Rest { base: base_url(&server), http: http_as(&token("mallory", &[])) };
    let vic = Rest { base: base_url(&server), http: http_as(&token("vic", &[])) };
    let vic_socket = connect_as(&server, &token("vic", &[])).await.unwrap();
    let t = vic_socket.shell(&victim_box.name).await;

    let storm = futures_util::future::join_all((0..30).map(|_| mallory.create("scratch")));
    let during = async {
        vic_socket.run(&t.terminal_id, "echo still-$((40+2))", "still-42").await;
        vic.create("scratch").await
    };
    let (results, vic_created) = tokio::join!(storm, during);
    assert_eq!(vic_created.0, 201, "another user creates during the storm: {:?}", vic_created.1);
    let codes: Vec<(u16, String)> = results.iter().map(|(s, b)| (*s, code(b).to_string())).collect();
    let made = codes.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(made, 3, "exactly the quota is created: {codes:?}");
    assert!(codes.iter().any(|c| c == &(429, "rate_limited".to_string())), "{codes:?}");
    assert!(
        codes.iter().all(|(s, c)| *s == 201 || (*s == 429 && (c == "rate_limited" || c == "quota_exceeded"))),
        "{codes:?}"
    );
    assert_eq!(mallory.list().await.len(), 3);
    vic_socket.disconnect().await;
}

/// The real engine, except that starting a container fails once as if the daemon went away, and removing one
/// fails while `down` is set: a daemon outage in the middle of a create.
struct OutageMidCreate {
    engine: porthole_server::docker::engine::Engine,
    fail_next_start: std::sync::atomic::AtomicBool,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl porthole_server::docker::ContainerRuntime for OutageMidCreate {
    async fn ping(&self) -> Result<String, porthole_server::docker::RuntimeError> {
        self.engine.ping().await
    }
    async fn list_containers(
        &self,
    ) -> Result<Vec<app::protocol::ContainerSummary>, porthole_server::docker::RuntimeError> {
        self.engine.list_containers().await
    }
    async fn resolve(
        &self,
        r: &str,
    ) -> Result<porthole_server::docker::ContainerTarget, porthole_server::docker::RuntimeError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(porthole_server::docker::RuntimeError::Unavailable("test outage".into()));
        }
        self.engine.resolve(r).await
    }
    async fn start_exec(
        &self,
        c: &str,
        spec: &porthole_server::docker::ExecSpec,
    ) -> Result<porthole_server::docker::ExecStream, porthole_server::docker::RuntimeError> {
        self.engine.start_exec(c, spec).await
    }
    async fn inspect_exec(
        &self,
        id: &str,
    ) -> Result<porthole_server::docker::ExecStatus, porthole_server::docker::RuntimeError> {
        self.engine.inspect_exec(id).await
    }
    async fn resize_exec(&self, id: &str, cols: u16, rows: u16) -> Result<(), porthole_server::docker::RuntimeError> {
        self.engine.resize_exec(id, cols, rows).await
    }
    async fn container_events(
        &self,
    ) -> Result<
        futures_util::stream::BoxStream<
            'static,
            Result<porthole_server::docker::ContainerEvent, porthole_server::docker::RuntimeError>,
        >,
        porthole_server::docker::RuntimeError,
    > {
        self.engine.container_events().await
    }
    async fn create_container(
        &self,
        spec: &porthole_server::docker::ContainerSpec,
    ) -> Result<String, porthole_server::docker::RuntimeError> {
        self.engine.create_container(spec).await
    }
    async fn start_container(&self, id: &str) -> Result<(), porthole_server::docker::RuntimeError> {
        if self.fail_next_start.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.down.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(porthole_server::docker::RuntimeError::Unavailable("test outage".into()));
        }
        self.engine.start_container(id).await
    }
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), porthole_server::docker::RuntimeError> {
        self.engine.stop_container(id, grace).await
    }
    async fn remove_container(&self, id: &str) -> Result<(), porthole_server::docker::RuntimeError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(porthole_server::docker::RuntimeError::Unavailable("test outage".into()));
        }
        self.engine.remove_container(id).await
    }
    async fn runtimes(&self) -> Result<Vec<String>, porthole_server::docker::RuntimeError> {
        self.engine.runtimes().await
    }
}

#[tokio::test]
async fn a_daemon_outage_mid_create_leaves_no_container_behind() {
    init_tracing();
    let runtime = std::sync::Arc::new(OutageMidCreate {
        engine: porthole_server::docker::engine::Engine::new(
            porthole_server::docker::engine::Endpoint::from_env().unwrap(),
        ),
        fail_next_start: std::sync::atomic::AtomicBool::new(true),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let mut c = test_config();
    c.sandboxes = Some(profiles_file(COLD));
    let server = porthole_server::start_with_runtime(&c, runtime.clone()).await.unwrap();
    let guard = InstanceGuard(server.state().sandbox_manager().instance().to_string());
    let api = rest(&server);
    let (status, body) = api.create("scratch").await;
    assert_eq!((status, code(&body)), (503, "docker_unavailable"), "{body}");
    // Docker made the container before the outage; while the daemon is away it cannot be removed.
    let half = containers_of(&guard.0);
    assert_eq!(half.len(), 1, "the half-made container exists during the outage");
    assert!(api.list().await.is_empty(), "and is nobody's sandbox");
    runtime.down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the half-made container removed once the daemon is back", || async {
        containers_of(&guard.0).is_empty()
    })
    .await;
    let s = api.sandbox("scratch").await;
    assert_eq!(api.list().await, vec![s]);
}

#[tokio::test]
async fn sandboxes_survive_crashes_and_restarts_and_pools_are_replaced() {
    use common::process::ServerProcess;
    init_tracing();
    let state = tempdir("restart-state");
    let profiles = profiles_file(PROFILES);
    let args = ["--state-dir", state.to_str().unwrap(), "--sandboxes", profiles.to_str().unwrap()];
    let mut first = ServerProcess::start(&args);
    let api = Rest { base: first.base_url(), http: http() };
    let mine = api.sandbox("scratch").await;
    let instance = inspect(&mine.id).unwrap()["Config"]["Labels"][LABEL_INSTANCE].as_str().unwrap().to_string();
    let _guard = InstanceGuard(instance.clone());
    let pool_of = || {
        containers_where(&format!("{LABEL_INSTANCE}={instance}"))
            .into_iter()
            .filter(|id| *id != mine.id && inspect(id).is_some_and(|c| c["State"]["Running"] == true))
            .collect::<HashSet<String>>()
    };
    eventually("two warm containers", || async { pool_of().len() == 2 }).await;
    let pool_before = pool_of();
    // A user's own container that carries this instance's labels: never Porthole's to remove.
    let lookalike = TestContainer::start_labeled(
        "sbx-lookalike",
        &bash_image(),
        &[(LABEL_INSTANCE, &instance), (LABEL_POOL, "1"), (LABEL_PROFILE, "warm")],
    )
    .await;

    // A crash: the sandbox is adopted again, the pool removed and replaced.
    first.stop_with("KILL");
    let mut second = ServerProcess::start(&args);
    let api = Rest { base: second.base_url(), http: http() };
    eventually("the old pool removed and a new one made", || {
        let old = pool_before.clone();
        let lookalike = lookalike.id.clone();
        async move {
            let now = pool_of();
            now.len() == 3 && now.contains(&lookalike) && now.is_disjoint(&old)
        }
    })
    .await;
    assert_eq!(api.list().await.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![mine.id.clone()]);
    let client = TestClient::connect_url(&second.base_url(), rust_socketio::TransportType::Websocket).await;
    let t = client.shell(&mine.id).await;
    client.run(&t.terminal_id, "echo still-mine", "still-mine").await;
    client.disconnect().await;

    // A clean shutdown removes the pool, keeps the sandbox.
    assert!(second.stop_with("TERM").success());
    let left = pool_of();
    assert_eq!(left, HashSet::from([lookalike.id.clone()]), "only the look-alike is left running besides the sandbox");
    assert!(inspect(&mine.id).is_some());
    let third = ServerProcess::start(&args);
    let api = Rest { base: third.base_url(), http: http() };
    assert_eq!(api.list().await.len(), 1, "adopted after a clean restart too");
    assert_eq!(api.remove(&mine.id).await, (204, String::new()));
    assert!(inspect(&lookalike.id).is_some(), "the look-alike was never touched");
}

#[tokio::test]
async fn profiles_are_reread_on_sighup_and_bad_ones_refused() {
    use common::process::ServerProcess;
    init_tracing();
    let profiles = profiles_file("[profile.first]\nimage = \"IMAGE\"\n");
    let mut server = ServerProcess::start(&["--sandboxes", profiles.to_str().unwrap()]);
    let names = || async {
        let list: Vec<app::protocol::SandboxProfile> = http()
            .get(format!("{}/api/v1/sandbox-profiles", server.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.into_iter().map(|p| p.name).collect::<Vec<_>>()
    };
    assert_eq!(names().await, ["first"]);
    let hup = |pid: u32| std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    std::fs::write(&profiles, format!("[profile.second]\nimage = {:?}\n", bash_image())).unwrap();
    hup(server.pid());
    eventually("the new profiles in force", || async { names().await == ["second"] }).await;
    // A broken file keeps the profiles in force, and says why.
    std::fs::write(&profiles, "[profile.third]\nimage = 5\n").unwrap();
    hup(server.pid());
    assert!(server.audit_eventually_contains(r#""action":"sandboxes.reload","outcome":"denied""#, PATIENCE).await);
    assert_eq!(names().await, ["second"]);
    // So does a runtime the daemon lacks.
    std::fs::write(&profiles, format!("[profile.third]\nimage = {:?}\nruntime = \"no-such-runtime\"\n", bash_image()))
        .unwrap();
    hup(server.pid());
    assert!(server.log_eventually_contains("no-such-runtime", PATIENCE).await, "{}", server.log_text());
    assert_eq!(names().await, ["second"]);
    assert!(server.stop_with("TERM").success());

    // At start, a profile naming a runtime the daemon lacks stops the server with a clear message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porthole"))
        .args(["--listen", "127.0.0.1:0", "--token", TEST_TOKEN, "--audit-log", "/dev/null", "--sandboxes"])
        .arg(&profiles)
        .arg("--state-dir")
        .arg(tempdir("refused-state"))
        .env_remove("PORTHOLE_SANDBOXES")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("profile third") && err.contains("no-such-runtime") && err.contains("runc"), "{err}");
}
