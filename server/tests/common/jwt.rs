//! JWT users for the tests: HS256 tokens with groups, and a server configured to verify them under a policy.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use app::protocol::ErrorReply;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use porthole_server::Config;
use rust_socketio::TransportType;
use serde_json::{Value, json};

use super::{TestClient, base_url, test_config};

pub const SECRET: &str = "a-test-secret-that-is-longer-than-32-bytes";
pub const ISSUER: &str = "https://id.example.test";
pub const AUDIENCE: &str = "porthole";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A file with `contents` in the temp dir, unique to this test run.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("porthole-sec-{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, contents).unwrap();
    path
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn claims(sub: &str, groups: &[&str]) -> Value {
    json!({
        "sub": sub, "groups": groups, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now(), "exp": now() + 3600, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

pub fn sign_hs(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

pub fn token(sub: &str, groups: &[&str]) -> String {
    sign_hs(&claims(sub, groups), SECRET.as_bytes())
}

/// A JWT (HS256, issuer and audience checked) server with `policy`; the audit log goes to the returned file.
/// alice and bob work in any container, recorded (output); carol only views, and sees everyone's recordings
/// (and only she may remove them).
pub const RECORDING_POLICY: &str = r#"
[[rule]]
subjects = ["alice", "bob"]
commands = "any"
record = "output"

[[rule]]
subjects = ["carol"]
access = "view"
recordings = "all"
"#;

pub fn jwt_config(policy: &str) -> (Config, PathBuf) {
    let mut c = test_config();
    c.token = None;
    c.jwt_secret_file = Some(temp_file("secret", &format!("{SECRET}\n")));
    c.jwt_issuer = Some(ISSUER.into());
    c.jwt_audience = Some(AUDIENCE.into());
    c.jwt_leeway_secs = 0;
    c.policy = Some(temp_file("policy.toml", policy));
    let audit = std::env::temp_dir().join(format!("porthole-sec-{}-audit.log", uuid::Uuid::new_v4().simple()));
    c.audit_log = audit.display().to_string();
    c.max_auth_failures = 1000;
    (c, audit)
}

pub async fn connect_as(server: &porthole_server::RunningServer, token: &str) -> Result<TestClient, String> {
    let auth = json!({"token": token, "protocolVersion": 2, "clientId": uuid::Uuid::new_v4().simple().to_string()});
    TestClient::try_connect(&base_url(server), TransportType::Websocket, auth, &[]).await
}

/// `(status, error code)` of a JSON error response (code empty for a success).
pub async fn outcome(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let code = res.json::<ErrorReply>().await.map(|r| r.error.code.as_str().to_string()).unwrap_or_default();
    (status, code)
}
