//! The adversarial suite: a real server and engine attacked the ways a stranger, a careless client or a
//! colleague with the wrong rights would. Every refusal has its documented code, and other users' sessions
//! keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use app::protocol::{AttachTerminal, ErrorReply, StartTerminal, TerminalInfo, event};
use common::jwt::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rust_socketio::TransportType;
use serde_json::{Value, json};

/// The policy the JWT tests run under.
const POLICY: &str = r#"
# Developers use their own containers, two terminals at most.
[[rule]]
groups = ["dev"]
labels = { "porthole.owner" = "{sub}" }
max_terminals = 2

# Auditors watch the security team's terminals, read-only.
[[rule]]
groups = ["audit"]
labels = { "porthole.team" = "sec" }
access = "view"
shared = true

# Dave may run one exact command, no shell.
[[rule]]
subjects = ["dave"]
labels = { "porthole.team" = "sec" }
login_shell = false
commands = [["sh", "-c", "echo allowed-$((6*7))"]]
"#;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn ack_code(ack: &Value) -> String {
    ack["error"]["code"].as_str().unwrap_or_else(|| panic!("expected an error ack, got {ack}")).to_string()
}

fn cmd_request(container: &str, argv: &[&str]) -> StartTerminal {
    StartTerminal { command: Some(argv.iter().map(|a| a.to_string()).collect()), ..shell_request(container) }
}

#[tokio::test]
async fn no_or_wrong_token_is_refused_everywhere_but_health_and_assets() {
    let mut config = test_config();
    // This test makes many failed attempts on purpose; the lockout has its own test.
    config.max_auth_failures = 1000;
    let server = start_server(config).await;
    let base = base_url(&server);
    let anon = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/api/v1/containers"),
        ("GET", "/api/v1/terminals"),
        ("GET", "/api/v1/terminals/t-1"),
        ("DELETE", "/api/v1/terminals/t-1"),
        ("GET", "/api/v1/whoami"),
        ("POST", "/api/v1/logout"),
        ("POST", "/api/fn/list_containers"),
        ("POST", "/api/fn/list_terminals"),
    ] {
        let req = anon.request(method.parse().unwrap(), format!("{base}{path}"));
        let res = req.try_clone().unwrap().send().await.unwrap();
        assert!(res.headers().contains_key("www-authenticate"), "{method} {path}");
        assert_eq!(outcome(res).await, (401, "unauthenticated".into()), "{method} {path} without a token");
        let wrong = req.bearer_auth("not-the-token-0123456789").send().await.unwrap();
        assert_eq!(outcome(wrong).await, (401, "unauthenticated".into()), "{method} {path} with a wrong token");
    }
    assert_eq!(anon.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    let page = anon.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));

    for polling in [false, true] {
        let transport = || if polling { TransportType::Polling } else { TransportType::Websocket };
        let none = TestClient::try_connect(&base, transport(), json!({}), &[]).await.err().expect("refused");
        assert!(none.contains("unauthenticated"), "{none}");
        let wrong = TestClient::try_connect(&base, transport(), json!({"token": "nope-nope-nope-nope"}), &[]).await;
        let wrong = wrong.err().expect("refused");
        assert!(wrong.contains("unauthenticated") && wrong.contains("wrong access token"), "{wrong}");
    }
    let who: Value = get(format!("{base}/api/v1/whoami")).await.json().await.unwrap();
    assert_eq!(who["subject"], "local");
    TestClient::connect(&server).await;
}

#[tokio::test]
async fn the_token_link_sets_a_strict_cookie_for_rest_and_sockets_until_logout() {
    let c = TestContainer::start("cookie", &bash_image()).await;
    let server = start_server(test_config()).await;
    let base = base_url(&server);
    let res = no_redirects().get(format!("{base}/some/page?token={TEST_TOKEN}")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/some/page");
    let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["porthole_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{part} missing in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(TEST_TOKEN), "the cookie is a session, not the access token: {set}");
    let cookie = set.split(';').next().unwrap().to_string();

    // The cookie signs in REST and a socket (no token in the handshake).
    let who = reqwest::Client::new().get(format!("{base}/api/v1/whoami")).header("cookie", &cookie).send().await;
    assert_eq!(who.unwrap().status(), 200);
    let auth = json!({"protocolVersion": 2, "clientId": "cookie-client"});
    let by_cookie =
        TestClient::try_connect(&base, TransportType::Websocket, auth, &[("cookie", &cookie)]).await.unwrap();
    let t = by_cookie.shell(&c.name).await;
    by_cookie.run(&t.terminal_id, "echo cookie-$((3*3))", "cookie-9").await;
    let by_token = TestClient::connect(&server).await;

    // POST login: the same exchange for scripts; a wrong token gets no cookie.
    let ok = reqwest::Client::new().post(format!("{base}/api/v1/login")).json(&json!({"token": TEST_TOKEN})).send();
    let ok = ok.await.unwrap();
    assert_eq!(ok.status(), 204);
    assert!(ok.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    let bad = reqwest::Client::new().post(format!("{base}/api/v1/login")).json(&json!({"token": "x"})).send();
    let bad = bad.await.unwrap();
    assert!(!bad.headers().contains_key("set-cookie"));
    assert_eq!(outcome(bad).await, (401, "unauthenticated".into()));
    let malformed = reqwest::Client::new().post(format!("{base}/api/v1/login")).body("{").send().await.unwrap();
    assert_eq!(outcome(malformed).await.1, "invalid_payload");

    // Logout ends that session everywhere: its socket is told and dropped; the token's socket is not.
    let out = reqwest::Client::new().post(format!("{base}/api/v1/logout")).header("cookie", &cookie).send();
    let out = out.await.unwrap();
    assert_eq!(out.status(), 204);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let told = by_cookie.wait_auth_error().await;
    assert_eq!(told.code.as_str(), "token_revoked");
    by_cookie.wait_closed().await;
    let after = reqwest::Client::new().get(format!("{base}/api/v1/whoami")).header("cookie", &cookie).send().await;
    assert_eq!(outcome(after.unwrap()).await, (401, "token_revoked".into()));
    let t2 = by_token.shell(&c.name).await;
    by_token.run(&t2.terminal_id, "echo still-$((5*5))", "still-25").await;
    assert!(by_token.auth_errors().is_empty());
}

/// `claims` with `key` set to `value` (`null` removes it).
fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Asserts `token` is refused with `code` by REST and by the socket handshake.
async fn refused(server: &porthole_server::RunningServer, token: &str, code: &str, what: &str) -> String {
    let res = http_as(token).get(format!("{}/api/v1/containers", base_url(server))).send().await.unwrap();
    let status = res.status().as_u16();
    let reply: ErrorReply = res.json().await.unwrap();
    assert_eq!((status, reply.error.code.as_str()), (401, code), "{what}: {}", reply.error.message);
    let socket = connect_as(server, token).await.err().unwrap_or_else(|| panic!("{what}: the socket connected"));
    assert!(socket.contains(code), "{what}: socket refusal {socket}");
    reply.error.message
}

#[tokio::test]
async fn jwt_signatures_algorithms_and_claims_are_checked() {
    let (config, _) = jwt_config(POLICY);
    let server = start_server(config).await;
    let base = base_url(&server);
    let good = token("alice", &["dev"]);
    let who: Value = http_as(&good).get(format!("{base}/api/v1/whoami")).send().await.unwrap().json().await.unwrap();
    assert_eq!((who["subject"].clone(), who["groups"].clone()), (json!("alice"), json!(["dev"])));
    connect_as(&server, &good).await.expect("a valid token connects");

    let base_claims = claims("alice", &["dev"]);
    let msg = refused(
        &server,
        &sign_hs(&base_claims, b"another-secret-another-secret-another"),
        "unauthenticated",
        "bad signature",
    )
    .await;
    assert!(msg.contains("signature"), "{msg}");
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&base_claims));
    refused(&server, &unsigned, "unauthenticated", "alg none").await;
    let unsigned_sig = format!("{}.{}.AAAA", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&base_claims));
    refused(&server, &unsigned_sig, "unauthenticated", "alg none with a signature").await;
    let expired = sign_hs(&with(base_claims.clone(), "exp", json!(now() - 120)), SECRET.as_bytes());
    refused(&server, &expired, "token_expired", "expired").await;
    let early = sign_hs(&with(base_claims.clone(), "nbf", json!(now() + 600)), SECRET.as_bytes());
    refused(&server, &early, "unauthenticated", "not yet valid").await;
    let aud = sign_hs(&with(base_claims.clone(), "aud", json!("someone-else")), SECRET.as_bytes());
    assert!(refused(&server, &aud, "unauthenticated", "wrong audience").await.contains("audience"));
    let iss = sign_hs(&with(base_claims.clone(), "iss", json!("https://evil.test")), SECRET.as_bytes());
    assert!(refused(&server, &iss, "unauthenticated", "wrong issuer").await.contains("issuer"));
    let no_exp = sign_hs(&with(base_claims.clone(), "exp", Value::Null), SECRET.as_bytes());
    refused(&server, &no_exp, "unauthenticated", "no exp").await;
    let no_sub = sign_hs(&with(base_claims.clone(), "sub", Value::Null), SECRET.as_bytes());
    refused(&server, &no_sub, "unauthenticated", "no subject").await;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let rs256 = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &base_claims, &rsa).unwrap();
    refused(&server, &rs256, "unauthenticated", "an algorithm this server has no key for").await;
    refused(&server, "abc.def.ghi", "unauthenticated", "garbage").await;
    refused(&server, &"x".repeat(20_000), "unauthenticated", "oversized").await;
    // The good token still works after all that.
    assert_eq!(http_as(&good).get(format!("{base}/api/v1/containers")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn rs256_es256_and_jwks_keys_verify_and_key_confusion_is_refused() {
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    let c = claims("alice", &["dev"]);
    let rs256 = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &c, &rsa).unwrap();
    let es256 = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &ec).unwrap();
    let mut kid = Header::new(Algorithm::RS256);
    kid.kid = Some("test-rsa".into());
    let rs256_kid = jsonwebtoken::encode(&kid, &c, &rsa).unwrap();
    kid.kid = Some("another-key".into());
    let rs256_other_kid = jsonwebtoken::encode(&kid, &c, &rsa).unwrap();
    // HS256 "signed" with the RSA public key as the secret: the classic key-confusion attack.
    let confused = sign_hs(&c, &std::fs::read(fixture("rsa-public.pem")).unwrap());

    for (key, accepted, rejected) in [
        ("rsa-public.pem", vec![&rs256], vec![&es256, &confused]),
        ("ec-public.pem", vec![&es256], vec![&rs256, &confused]),
        ("jwks.json", vec![&rs256_kid, &rs256], vec![&rs256_other_kid, &es256, &confused]),
    ] {
        let (mut config, _) = jwt_config(POLICY);
        config.jwt_secret_file = None;
        if key.ends_with(".json") {
            config.jwt_jwks = Some(fixture(key));
        } else {
            config.jwt_public_key = Some(fixture(key));
        }
        let server = start_server(config).await;
        for t in accepted {
            let res = http_as(t).get(format!("{}/api/v1/whoami", base_url(&server))).send().await.unwrap();
            assert_eq!(res.status(), 200, "{key}: a token it should accept");
            connect_as(&server, t).await.expect("socket with an accepted token");
        }
        for t in rejected {
            refused(&server, t, "unauthenticated", &format!("{key}: a token it must refuse")).await;
        }
    }
}

#[tokio::test]
async fn users_see_and_open_only_what_the_policy_allows() {
    let a = TestContainer::start_labeled("pol-a", &bash_image(), &[("porthole.owner", "alice")]).await;
    let b = TestContainer::start_labeled("pol-b", &bash_image(), &[("porthole.owner", "bob")]).await;
    let other = TestContainer::start("pol-none", &bash_image()).await;
    let (config, _) = jwt_config(POLICY);
    let server = start_server(config).await;
    let base = base_url(&server);
    let (alice_token, bob_token) = (token("alice", &["dev"]), token("bob", &["dev"]));

    // Listing: REST and the server function agree, and show only alice's container.
    let names = |list: Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    let rest = http_as(&alice_token).get(format!("{base}/api/v1/containers")).send().await.unwrap();
    let rest = names(rest.json().await.unwrap());
    let fun = http_as(&alice_token)
        .post(format!("{base}/api/fn/list_containers"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    let fun = names(fun.json().await.unwrap());
    for list in [&rest, &fun] {
        assert!(list.contains(&a.name) && !list.contains(&b.name) && !list.contains(&other.name), "{list:?}");
    }

    let alice = connect_as(&server, &alice_token).await.unwrap();
    let bob = connect_as(&server, &bob_token).await.unwrap();
    // Bob's container and an unlabeled one do not exist for alice: the same answer as a missing name.
    let missing = alice.shell_err("no-such-container-here").await;
    for name in [&b.name, &other.name, &b.id] {
        let e = alice.shell_err(name).await;
        assert_eq!(e.code.as_str(), "container_not_found");
        assert_eq!(e.message, missing.message.replace("no-such-container-here", name));
    }

    // Bob's terminal: alice can neither attach, type, resize, close nor see it, by socket or REST.
    let tb = bob.shell(&b.name).await;
    bob.run(&tb.terminal_id, "echo bob-$((2*2))", "bob-4").await;
    let attach = AttachTerminal { terminal_id: tb.terminal_id.clone(), since: None, flow_control: false };
    assert_eq!(alice.attach(&attach).await.unwrap_err().code.as_str(), "unknown_terminal");
    let typed = alice.request_raw(event::INPUT, json!({"terminalId": tb.terminal_id, "data": "touch /tmp/pwned\n"}));
    assert_eq!(ack_code(&typed.await), "unknown_terminal");
    let closed = alice.request_raw(event::CLOSE_TERMINAL, json!({"terminalId": tb.terminal_id})).await;
    assert_eq!(ack_code(&closed), "unknown_terminal");
    let path = format!("{base}/api/v1/terminals/{}", tb.terminal_id);
    assert_eq!(outcome(http_as(&alice_token).get(&path).send().await.unwrap()).await, (404, "unknown_terminal".into()));
    assert_eq!(
        outcome(http_as(&alice_token).delete(&path).send().await.unwrap()).await,
        (404, "unknown_terminal".into())
    );
    let listed: Vec<TerminalInfo> =
        http_as(&alice_token).get(format!("{base}/api/v1/terminals")).send().await.unwrap().json().await.unwrap();
    assert!(listed.iter().all(|t| t.terminal_id != tb.terminal_id));
    bob.run(&tb.terminal_id, "echo bob-still-$((3*3)); ls /tmp/pwned 2>&1", "bob-still-9").await;
    bob.wait_for(&tb.terminal_id, "No such file").await;
    let mine: Vec<TerminalInfo> =
        http_as(&bob_token).get(format!("{base}/api/v1/terminals")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        mine.iter().map(|t| (t.terminal_id.clone(), t.user.clone())).collect::<Vec<_>>(),
        [(tb.terminal_id.clone(), "bob".to_string())]
    );

    // Quota: two terminals at once for developers; a third is refused until one closes.
    let t1 = alice.shell(&a.name).await;
    let _t2 = alice.shell(&a.name).await;
    let third = alice.shell_err(&a.name).await;
    assert_eq!(third.code.as_str(), "quota_exceeded", "{}", third.message);
    // Bob is not affected by alice's quota.
    bob.shell(&b.name).await;
    alice.close(&t1.terminal_id).await.unwrap();
    alice.shell(&a.name).await;

    // Container events reach only those who may see the container.
    b.stop().await;
    other.stop().await;
    bob.wait_change(&b.id, "die").await;
    a.stop().await;
    alice.wait_change(&a.id, "die").await;
    let heard: Vec<String> = alice.changes().into_iter().map(|c| c.container_id).collect();
    assert!(!heard.contains(&b.id) && !heard.contains(&other.id), "alice heard of hidden containers: {heard:?}");
}

#[tokio::test]
async fn view_only_users_watch_but_cannot_type_resize_close_or_open() {
    let team =
        TestContainer::start_labeled("view", &bash_image(), &[("porthole.team", "sec"), ("porthole.owner", "bob")])
            .await;
    let (config, _) = jwt_config(POLICY);
    let server = start_server(config).await;
    let base = base_url(&server);
    let carol_token = token("carol", &["audit"]);
    let bob = connect_as(&server, &token("bob", &["dev"])).await.unwrap();
    let carol = connect_as(&server, &carol_token).await.unwrap();
    let t = bob.shell(&team.name).await;
    bob.run(&t.terminal_id, "echo before-$((1+1))", "before-2").await;

    // Carol sees the container and bob's terminal in it, but may not open her own.
    let opened = carol.shell_err(&team.name).await;
    assert_eq!(opened.code.as_str(), "forbidden", "{}", opened.message);
    let listed: Vec<TerminalInfo> =
        http_as(&carol_token).get(format!("{base}/api/v1/terminals")).send().await.unwrap().json().await.unwrap();
    assert!(listed.iter().any(|i| i.terminal_id == t.terminal_id && i.user == "bob"));

    let attached = carol
        .attach(&AttachTerminal { terminal_id: t.terminal_id.clone(), since: None, flow_control: false })
        .await
        .unwrap();
    assert!(attached.read_only);
    carol.wait_for(&t.terminal_id, "before-2").await;
    bob.run(&t.terminal_id, "echo live-$((4+4))", "live-8").await;
    carol.wait_for(&t.terminal_id, "live-8").await;

    let typed = carol.request_raw(event::INPUT, json!({"terminalId": t.terminal_id, "data": "echo carol-$((9*9))\n"}));
    assert_eq!(ack_code(&typed.await), "view_only");
    carol.input(&t.terminal_id, "echo carol-$((9*9))\n").await; // without an ack: a request-error event
    let errors = carol.wait_error(1).await;
    assert_eq!(errors[0].error.code.as_str(), "view_only");
    let resized = carol.request_raw(event::RESIZE, json!({"terminalId": t.terminal_id, "cols": 20, "rows": 5})).await;
    assert_eq!(ack_code(&resized), "view_only");
    let closed = carol.request_raw(event::CLOSE_TERMINAL, json!({"terminalId": t.terminal_id})).await;
    assert_eq!(ack_code(&closed), "view_only");
    let path = format!("{base}/api/v1/terminals/{}", t.terminal_id);
    assert_eq!(outcome(http_as(&carol_token).delete(&path).send().await.unwrap()).await, (403, "view_only".into()));

    // Nothing carol sent reached the shell; bob's terminal is as it was.
    bob.run(&t.terminal_id, "stty size; echo after-$((5+5))", "after-10").await;
    let screen = bob.screen(&t.terminal_id);
    assert!(!screen.contains("carol-81"), "{screen}");
    assert!(screen.contains(&format!("{} {}", app::protocol::DEFAULT_ROWS, app::protocol::DEFAULT_COLS)), "{screen}");
}

#[tokio::test]
async fn the_command_allowlist_is_exact() {
    let team = TestContainer::start_labeled("allow", &bash_image(), &[("porthole.team", "sec")]).await;
    let (config, _) = jwt_config(POLICY);
    let server = start_server(config).await;
    let dave = connect_as(&server, &token("dave", &[])).await.unwrap();
    let shell = dave.shell_err(&team.name).await;
    assert_eq!(shell.code.as_str(), "command_not_allowed", "{}", shell.message);
    for argv in [
        &["sh"][..],
        &["sh", "-c", "echo allowed-$((6*7)); id"],
        &["sh", "-c", "echo allowed-$((6*7))", "extra"],
        &["/bin/sh", "-c", "echo allowed-$((6*7))"],
    ] {
        let e = dave.start(cmd_request(&team.name, argv)).await.unwrap_err();
        assert_eq!(e.code.as_str(), "command_not_allowed", "{argv:?}");
    }
    let t = dave.start(cmd_request(&team.name, &["sh", "-c", "echo allowed-$((6*7))"])).await.unwrap();
    dave.wait_for(&t.terminal_id, "allowed-42").await;
    assert_eq!(dave.wait_exit(&t.terminal_id).await.exit_code, Some(0));
}

#[tokio::test]
async fn expiry_and_revocation_on_sighup_end_sockets_mid_session() {
    let own = TestContainer::start_labeled("revoke", &bash_image(), &[("porthole.owner", "alice")]).await;
    let bobs = TestContainer::start_labeled("revoke-b", &bash_image(), &[("porthole.owner", "bob")]).await;

    // Expiry: a token that lapses while its socket is open.
    let (config, _) = jwt_config(POLICY);
    let server = start_server(config).await;
    let short = sign_hs(&with(claims("alice", &["dev"]), "exp", json!(now() + 2)), SECRET.as_bytes());
    let alice = connect_as(&server, &short).await.unwrap();
    let t = alice.shell(&own.name).await;
    alice.run(&t.terminal_id, "echo alive", "alive").await;
    assert_eq!(alice.wait_auth_error().await.code.as_str(), "token_expired");
    alice.wait_closed().await;

    // Revocation: the real binary, its policy file edited, then SIGHUP.
    let (config, _) = jwt_config(POLICY);
    let policy = config.policy.clone().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_porthole"))
        .args(["--listen", "127.0.0.1:0", "--audit-log", "/dev/null"])
        .arg("--jwt-secret-file")
        .arg(config.jwt_secret_file.unwrap())
        .args(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE])
        .arg("--policy")
        .arg(&policy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let url = line.trim().strip_prefix("Porthole is listening on ").expect(&line).trim_end_matches('/').to_string();
    let connect = |tok: String| {
        let url = url.clone();
        async move {
            let auth = json!({"token": tok, "protocolVersion": 2});
            TestClient::try_connect(&url, TransportType::Websocket, auth, &[]).await.unwrap()
        }
    };
    let (alice_token, bob_token) = (token("alice", &["dev"]), token("bob", &["dev"]));
    let alice = connect(alice_token.clone()).await;
    let bob = connect(bob_token).await;
    let tb = bob.shell(&bobs.name).await;

    // A broken policy is refused and the old one stays.
    std::fs::write(&policy, "[[rule]]\nthis is not toml").unwrap();
    std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.shell(&own.name).await;

    std::fs::write(&policy, format!("{POLICY}\n[revoked]\nsubjects = [\"alice\"]\n")).unwrap();
    std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    let told = alice.wait_auth_error().await;
    assert_eq!(told.code.as_str(), "token_revoked", "{}", told.message);
    alice.wait_closed().await;
    let again = TestClient::try_connect(&url, TransportType::Websocket, json!({"token": alice_token}), &[]).await;
    assert!(again.err().unwrap().contains("token_revoked"));
    bob.run(&tb.terminal_id, "echo bob-unaffected", "bob-unaffected").await;
    assert!(bob.auth_errors().is_empty());
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn cross_origin_handshakes_and_api_posts_are_refused() {
    let mut config = test_config();
    config.allowed_origin = vec!["https://porthole.example.com".into()];
    let server = start_server(config).await;
    let base = base_url(&server);
    let handshake = |origin: &'static str| {
        http().get(format!("{base}/socket.io/?EIO=4&transport=polling")).header("origin", origin).send()
    };
    let evil = handshake("http://evil.example").await.unwrap();
    assert_eq!(outcome(evil).await, (403, "origin_not_allowed".into()));
    assert_eq!(handshake("null").await.unwrap().status(), 403);
    let own = format!("http://{}", server.addr());
    let same = http().get(format!("{base}/socket.io/?EIO=4&transport=polling")).header("origin", &own).send();
    assert_eq!(same.await.unwrap().status(), 200);
    assert_eq!(handshake("https://porthole.example.com").await.unwrap().status(), 200);

    // A WebSocket upgrade from another site, and a socket.io client claiming that origin.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        server.addr()
    ))
    .unwrap();
    req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("cross-site upgrade was not refused: {:?}", other.map(|_| ())),
    }
    let hijack = TestClient::try_connect(
        &base,
        TransportType::Websocket,
        json!({"token": TEST_TOKEN}),
        &[("origin", "http://evil.example")],
    )
    .await;
    assert!(hijack.is_err());
    let post =
        http().post(format!("{base}/api/v1/logout")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(outcome(post).await, (403, "origin_not_allowed".into()));
    TestClient::connect(&server).await;
}

#[tokio::test]
async fn event_floods_and_oversized_messages_hurt_only_the_sender() {
    use futures_util::{SinkExt, StreamExt};
    let c = TestContainer::start("flood", &bash_image()).await;
    let mut config = test_config();
    config.max_events_per_sec = 20;
    let server = start_server(config).await;
    let victim = TestClient::connect(&server).await;
    let tv = victim.shell(&c.name).await;
    let flooder = TestClient::connect(&server).await;
    let tf = flooder.shell(&c.name).await;

    for _ in 0..300 {
        flooder.emit_raw(event::RESIZE, json!({"terminalId": tf.terminal_id, "cols": 80, "rows": 24})).await;
    }
    let errors = flooder.wait_error(1).await;
    assert_eq!(errors[0].error.code.as_str(), "rate_limited", "{}", errors[0].error.message);
    victim.run(&tv.terminal_id, "echo victim-$((7*7))", "victim-49").await;
    // The limit is a rate: after a pause the flooder is served again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    flooder.run(&tf.terminal_id, "echo recovered-$((8*8))", "recovered-64").await;

    // One message over the 1 MiB packet limit: that connection is closed, nobody else's.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(format!("40{}", json!({"token": TEST_TOKEN}))))
        .await
        .unwrap();
    let huge = format!("42{}", json!(["input", {"terminalId": tv.terminal_id, "data": "y".repeat(2 << 20)}]));
    let _ = ws.send(tokio_tungstenite::tungstenite::Message::text(huge)).await;
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the oversized sender was not disconnected");
    victim.run(&tv.terminal_id, "echo victim-again-$((6*6))", "victim-again-36").await;
    assert!(!victim.screen(&tv.terminal_id).contains("yyyy"));
}

#[tokio::test]
async fn brute_force_from_one_address_locks_it_out_and_nobody_else() {
    let c = TestContainer::start("brute", &bash_image()).await;
    let mut config = test_config();
    config.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    config.max_auth_failures = 3;
    let server = start_server(config).await;
    let base = base_url(&server);
    let from = |ip: &'static str, token: &str| {
        reqwest::Client::new().get(format!("{base}/api/v1/whoami")).header("x-forwarded-for", ip).bearer_auth(token)
    };
    // A session from the attacker's address that was already open keeps working.
    let auth = json!({"token": TEST_TOKEN});
    let earlier =
        TestClient::try_connect(&base, TransportType::Websocket, auth.clone(), &[("x-forwarded-for", "203.0.113.9")])
            .await
            .unwrap();
    let te = earlier.shell(&c.name).await;

    for guess in ["guess-0000000001", "guess-0000000002", "guess-0000000003"] {
        assert_eq!(outcome(from("203.0.113.9", guess).send().await.unwrap()).await, (401, "unauthenticated".into()));
    }
    // Now even the right token is refused from there, by REST, socket and sign-in link.
    let locked = from("203.0.113.9", TEST_TOKEN).send().await.unwrap();
    assert_eq!(outcome(locked).await, (429, "too_many_auth_failures".into()));
    let socket =
        TestClient::try_connect(&base, TransportType::Websocket, auth.clone(), &[("x-forwarded-for", "203.0.113.9")])
            .await;
    assert!(socket.err().unwrap().contains("too_many_auth_failures"));
    let link = no_redirects()
        .get(format!("{base}/?token={TEST_TOKEN}"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(link.status(), 429);
    // Other addresses, and the session opened before, are unaffected.
    assert_eq!(from("203.0.113.10", TEST_TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(get(format!("{base}/api/v1/whoami")).await.status(), 200);
    earlier.run(&te.terminal_id, "echo earlier-$((4*5))", "earlier-20").await;
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    for (trusted, expect_https) in [(true, true), (false, false)] {
        let mut config = test_config();
        if trusted {
            config.trusted_proxy = vec!["127.0.0.0/8".parse().unwrap()];
        }
        let server = start_server(config).await;
        let res = no_redirects()
            .get(format!("{}/?token={TEST_TOKEN}", base_url(&server)))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "porthole.example.com")
            .send()
            .await
            .unwrap();
        let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
        assert_eq!(res.headers().contains_key("strict-transport-security"), expect_https, "trusted {trusted}");
        assert_eq!(cookie.contains("Secure"), expect_https, "trusted {trusted}: {cookie}");
        // The origin check follows the forwarded host only when the proxy is trusted.
        let handshake = http()
            .get(format!("{}/socket.io/?EIO=4&transport=polling", base_url(&server)))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "porthole.example.com")
            .header("origin", "https://porthole.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(handshake.status() == 200, trusted, "trusted {trusted}");
    }
}

#[tokio::test]
async fn tls_serves_https_with_hsts_and_secure_cookies() {
    let c = TestContainer::start("tls", &bash_image()).await;
    let mut config = test_config();
    config.tls_cert = Some(fixture("tls-cert.pem"));
    config.tls_key = Some(fixture("tls-key.pem"));
    let server = start_server(config).await;
    assert!(server.open_url().starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("tls-cert.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", server.addr().port());
    let health = https.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["strict-transport-security"], "max-age=31536000");
    let login = https.get(format!("{base}/?token={TEST_TOKEN}")).send().await.unwrap();
    assert!(login.headers()["set-cookie"].to_str().unwrap().contains("Secure"));
    let who = https.get(format!("{base}/api/v1/whoami")).bearer_auth(TEST_TOKEN).send().await.unwrap();
    assert_eq!(who.status(), 200);
    // Over HTTP/2, as browsers speak it here, there is no Host header: a same-origin POST (the UI's server
    // functions, the login) must still pass the origin check.
    let h2 = tokio::process::Command::new("curl")
        .args(["-s", "--http2", "--cacert"])
        .arg(fixture("tls-cert.pem"))
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}", "-X", "POST"])
        .args(["-H", &format!("origin: {base}"), "-H", "content-type: application/json"])
        .args(["-d", &format!("{{\"token\":\"{TEST_TOKEN}\"}}"), &format!("{base}/api/v1/login")])
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2 204", "{}", String::from_utf8_lossy(&h2.stderr));
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/healthz", server.addr().port())).send().await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    drop(c);
}

#[tokio::test]
async fn the_audit_log_says_who_did_what_and_never_holds_a_credential() {
    let a = TestContainer::start_labeled(
        "audit-a",
        &bash_image(),
        &[("porthole.owner", "alice"), ("porthole.team", "sec")],
    )
    .await;
    let b = TestContainer::start_labeled("audit-b", &bash_image(), &[("porthole.owner", "bob")]).await;
    let (config, audit) = jwt_config(POLICY);
    let server = start_server(config).await;
    let (alice_token, carol_token) = (token("alice", &["dev"]), token("carol", &["audit"]));
    let alice = connect_as(&server, &alice_token).await.unwrap();
    let carol = connect_as(&server, &carol_token).await.unwrap();
    let t = alice.shell(&a.name).await;
    alice.wait_for(&t.terminal_id, "#").await;
    alice.shell_err(&b.name).await;
    carol
        .attach(&AttachTerminal { terminal_id: t.terminal_id.clone(), since: None, flow_control: false })
        .await
        .unwrap();
    let typed = carol.request_raw(event::INPUT, json!({"terminalId": t.terminal_id, "data": "x"})).await;
    assert_eq!(ack_code(&typed), "view_only");
    alice.close(&t.terminal_id).await.unwrap();
    let bad = sign_hs(&claims("mallory", &[]), b"wrong-secret-wrong-secret-wrong-secret");
    let _ = connect_as(&server, &bad).await;

    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let find = |action: &str, outcome: &str, user: Option<&str>| {
        records
            .iter()
            .find(|r| r["action"] == action && r["outcome"] == outcome && user.is_none_or(|u| r["user"] == u))
            .unwrap_or_else(|| panic!("no {action}/{outcome} record for {user:?} in:\n{text}"))
            .clone()
    };
    let opened = find("terminal.open", "allowed", Some("alice"));
    assert_eq!(
        (opened["container"].as_str(), opened["terminal_id"].as_str()),
        (Some(a.name.as_str()), Some(t.terminal_id.0.as_str()))
    );
    let denied = find("terminal.open", "denied", Some("alice"));
    assert_eq!(
        (denied["code"].as_str(), denied["container"].as_str()),
        (Some("container_not_found"), Some(b.name.as_str()))
    );
    assert_eq!(find("terminal.attach", "allowed", Some("carol"))["reason"], "read-only");
    assert_eq!(find("terminal.input", "denied", Some("carol"))["code"], "view_only");
    assert_eq!(find("terminal.close", "allowed", Some("alice"))["terminal_id"], t.terminal_id.0);
    assert_eq!(find("auth", "denied", None)["code"], "unauthenticated");
    for secret in [alice_token.as_str(), carol_token.as_str(), bad.as_str(), SECRET] {
        assert!(!text.contains(secret), "a credential leaked into the audit log");
    }
    // Signatures are the part most likely to leak on their own.
    assert!(!text.contains(alice_token.rsplit('.').next().unwrap()));
}

/// Issue 9, point 5: with `--jwt-issuer` and `--jwt-audience` set, a correctly signed token that leaves either
/// claim out is refused like one that names another, on every way in.
#[tokio::test]
async fn tokens_without_the_configured_issuer_or_audience_are_refused_five_ways() {
    let (config, _) = jwt_config(POLICY);
    let server = start_server(config).await;
    let base = base_url(&server);
    let good = token("alice", &["dev"]);
    connect_as(&server, &good).await.expect("a token with both claims connects");
    for (what, drop) in [("no iss", &["iss"][..]), ("no aud", &["aud"]), ("neither", &["iss", "aud"])] {
        let mut c = claims("alice", &["dev"]);
        for claim in drop {
            c = with(c, claim, Value::Null);
        }
        let tok = sign_hs(&c, SECRET.as_bytes());
        let named = |msg: &str| drop.iter().any(|claim| msg.contains(&format!("\"{claim}\"")));
        // REST.
        let res = http_as(&tok).get(format!("{base}/api/v1/containers")).send().await.unwrap();
        let status = res.status().as_u16();
        let reply: ErrorReply = res.json().await.unwrap();
        assert_eq!((status, reply.error.code.as_str()), (401, "unauthenticated"), "{what}: REST");
        assert!(named(&reply.error.message), "{what}: REST says which claim is missing: {}", reply.error.message);
        // The cookie login.
        let login = reqwest::Client::new().post(format!("{base}/api/v1/login")).json(&json!({"token": tok})).send();
        let login = login.await.unwrap();
        assert!(!login.headers().contains_key("set-cookie"), "{what}: login set a cookie");
        assert_eq!(outcome(login).await, (401, "unauthenticated".into()), "{what}: login");
        // The `?token=` link.
        let link = no_redirects().get(format!("{base}/?token={tok}")).send().await.unwrap();
        assert_eq!(link.status(), 401, "{what}: link");
        assert!(!link.headers().contains_key("set-cookie"), "{what}: the link set a cookie");
        // Both handshake transports.
        for (name, transport) in [("websocket", TransportType::Websocket), ("polling", TransportType::Polling)] {
            let auth = json!({"token": tok, "protocolVersion": 2});
            let refused = TestClient::try_connect(&base, transport, auth, &[]).await.err();
            let refused = refused.unwrap_or_else(|| panic!("{what}: {name} handshake connected"));
            assert!(refused.contains("unauthenticated"), "{what} over {name}: {refused}");
        }
    }
    // The good token still works after all that.
    assert_eq!(http_as(&good).get(format!("{base}/api/v1/containers")).send().await.unwrap().status(), 200);
}

/// Issue 9, point 6: grants from different rules do not add up into shared write access.
#[tokio::test]
async fn writing_to_others_terminals_needs_one_rule_granting_interact_and_shared() {
    let web = TestContainer::start_labeled("hw-web", &bash_image(), &[("env", "prod")]).await;
    let policy = format!(
        r#"
[[rule]]
groups = ["ops"]
labels = {{ env = "prod" }}
access = "view"
shared = true

[[rule]]
groups = ["ops"]
containers = ["{name}"]

[[rule]]
subjects = ["lee"]
containers = ["{name}"]
shared = true
"#,
        name = web.name
    );
    let (config, _) = jwt_config(&policy);
    let server = start_server(config).await;
    let owner = connect_as(&server, &token("omar", &["ops"])).await.unwrap();
    let olga = connect_as(&server, &token("olga", &["ops"])).await.unwrap();
    let lee = connect_as(&server, &token("lee", &["ops"])).await.unwrap();
    let t = owner.shell(&web.name).await;
    owner.run(&t.terminal_id, "echo owner-$((2+3))", "owner-5").await;

    // Olga is in both rules: she opens her own shell there and watches omar's, but may not type into it.
    let hers = olga.shell(&web.name).await;
    olga.run(&hers.terminal_id, "echo olga-$((3+4))", "olga-7").await;
    let how = AttachTerminal { terminal_id: t.terminal_id.clone(), since: Some(0), flow_control: false };
    assert!(olga.attach(&how).await.unwrap().read_only, "two rules gave write access to someone else's terminal");
    olga.wait_for(&t.terminal_id, "owner-5").await;
    let typed = olga.request_raw(event::INPUT, json!({"terminalId": t.terminal_id, "data": "echo olga-typed\n"}));
    assert_eq!(ack_code(&typed.await), "view_only");
    let resized = olga.request_raw(event::RESIZE, json!({"terminalId": t.terminal_id, "cols": 30, "rows": 9})).await;
    assert_eq!(ack_code(&resized), "view_only");
    let closed = olga.request_raw(event::CLOSE_TERMINAL, json!({"terminalId": t.terminal_id})).await;
    assert_eq!(ack_code(&closed), "view_only");

    // Lee has one rule granting interact and shared: he may type into omar's terminal.
    assert!(!lee.attach(&how).await.unwrap().read_only);
    lee.input(&t.terminal_id, "echo lee-$((6+6))\n").await;
    owner.wait_for(&t.terminal_id, "lee-12").await;
    let screen = owner.screen(&t.terminal_id);
    assert!(!screen.contains("olga-typed"), "{screen}");
}

/// Issue 9, point 7: the audit record of a refusal for a revoked subject names the subject.
#[tokio::test]
async fn a_revoked_users_refusal_is_audited_with_their_name() {
    let (config, audit) = jwt_config(&format!("{POLICY}\n[revoked]\nsubjects = [\"mallory\"]\n"));
    let server = start_server(config).await;
    let tok = token("mallory", &["dev"]);
    let res = http_as(&tok).get(format!("{}/api/v1/containers", base_url(&server))).send().await.unwrap();
    assert_eq!(outcome(res).await, (401, "token_revoked".into()));
    let refused = connect_as(&server, &tok).await.err().expect("a revoked user's socket is refused");
    assert!(refused.contains("token_revoked"), "{refused}");
    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let revoked: Vec<&Value> = records.iter().filter(|r| r["code"] == "token_revoked").collect();
    assert!(revoked.len() >= 2, "REST and socket refusals audited:\n{text}");
    for r in revoked {
        assert_eq!((r["user"].as_str(), r["outcome"].as_str()), (Some("mallory"), Some("denied")), "{r}");
    }
}

/// Issue 9, point 8: `--trusted-proxy 127.0.0.1` (a bare address) starts, and forwarded headers from it count.
#[tokio::test]
async fn a_bare_address_is_a_trusted_proxy() {
    let server = common::process::ServerProcess::start(&["--trusted-proxy", "127.0.0.1"]);
    // As if nginx on 127.0.0.1 passed on a request from 203.0.113.9 over HTTPS.
    let res = no_redirects()
        .get(format!("http://{}/?token=wrong-token-wrong-token", server.addr))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("strict-transport-security"), "the forwarded proto counted");
    let text = std::fs::read_to_string(&server.audit).unwrap();
    assert!(text.contains("\"ip\":\"203.0.113.9\""), "the forwarded address is the client's:\n{text}");
}
