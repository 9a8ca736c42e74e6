//! Sandboxes for the tests: a profiles file, REST calls, and a guard that removes whatever a test's server made.

use std::path::PathBuf;

use app::protocol::{LABEL_INSTANCE, Sandbox};
use serde_json::{Value, json};

use super::{bash_image, tempdir};

/// A profiles file with `body`, where `IMAGE` stands for the bash test image.
pub fn profiles_file(body: &str) -> PathBuf {
    let path = tempdir("profiles").join("profiles.toml");
    std::fs::write(&path, body.replace("IMAGE", &bash_image())).unwrap();
    path
}

/// Removes every container of one Porthole instance when dropped, even when the test failed.
pub struct InstanceGuard(pub String);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let ids = containers_of(&self.0);
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker").arg("rm").arg("-f").args(&ids).output();
        }
    }
}

/// Ids of every container (running or not) labelled with `instance`.
pub fn containers_of(instance: &str) -> Vec<String> {
    containers_where(&format!("{LABEL_INSTANCE}={instance}"))
}

/// Ids of every container matching a `docker ps` label filter.
pub fn containers_where(label: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label={label}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// `docker inspect` of a container as JSON; `None` when it does not exist.
pub fn inspect(id: &str) -> Option<Value> {
    let out = std::process::Command::new("docker").args(["inspect", id]).output().unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()?.into_iter().next()
}

/// REST calls as one user.
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
}

impl Rest {
    /// `POST /api/v1/sandboxes`: the status and the body.
    pub async fn create(&self, profile: &str) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/api/v1/sandboxes", self.base))
            .json(&json!({"profile": profile}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
    }

    /// A sandbox that must be created.
    pub async fn sandbox(&self, profile: &str) -> Sandbox {
        let (status, body) = self.create(profile).await;
        assert_eq!(status, 201, "create {profile}: {body}");
        serde_json::from_value(body).unwrap()
    }

    pub async fn list(&self) -> Vec<Sandbox> {
        let res = self.http.get(format!("{}/api/v1/sandboxes", self.base)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// `DELETE /api/v1/sandboxes/{id}`: the status and the error code (empty on success).
    pub async fn remove(&self, id: &str) -> (u16, String) {
        let res = self.http.delete(format!("{}/api/v1/sandboxes/{id}", self.base)).send().await.unwrap();
        status_and_code(res).await
    }

    /// `POST /api/v1/containers/{id}/{action}`: the status and the error code.
    pub async fn act(&self, id: &str, action: &str) -> (u16, String) {
        let res = self.http.post(format!("{}/api/v1/containers/{id}/{action}", self.base)).send().await.unwrap();
        status_and_code(res).await
    }

    /// The container list as the picker gets it.
    pub async fn containers(&self) -> Vec<app::protocol::ContainerSummary> {
        self.http.get(format!("{}/api/v1/containers", self.base)).send().await.unwrap().json().await.unwrap()
    }
}

async fn status_and_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

/// The error code of a JSON error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}
