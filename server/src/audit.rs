//! Audit log: one JSON object per line for every sign-in, terminal opened, attached or closed, and every
//! refusal with its reason. Written to a file (appended) or stderr. Credentials are never written.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One audit record. Empty fields are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// The record's own id (`a-` and 32 hex digits), set when it is written.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// What was attempted: `login`, `logout`, `connect`, `terminal.open`, `terminal.attach`, `terminal.close`,
    /// `terminal.input`, `terminal.resize`, `containers.list`, `policy.reload`, `auth`, `http`; `refusals` for a
    /// summary of repeated refusals ([`crate::refusals`]).
    pub action: &'static str,
    /// `allowed` or `denied`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// For refusals: the error code sent, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For summaries of repeated refusals (`action: "refusals"`): how many were summarised; for
    /// `recording.gap`: how many output bytes the recorder missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The recording of the terminal concerned, when it is recorded.
    #[serde(rename = "recordingId", skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<String>,
    /// About a caller another node relays: that node writes the record, not this one.
    #[serde(skip)]
    pub relayed: bool,
    /// Cluster mode: the node that decided (the one the user is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Cluster mode, for a terminal on another node: the node that owns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_node: Option<String>,
}

/// Where audit records go.
pub struct Audit {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    /// `-` is stderr; anything else a file opened for appending (created if missing, mode 0600).
    pub fn open(target: &str) -> Result<Audit, String> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stderr())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(Path::new(target))
                .map_err(|e| format!("cannot open the audit log {target}: {e}"))?;
            Box::new(f)
        };
        Ok(Audit { out: Mutex::new(out) })
    }

    /// Writes one record as one line; returns its id.
    pub fn record(&self, mut rec: Record) -> String {
        rec.id = format!("a-{}", uuid::Uuid::new_v4().simple());
        rec.ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let Ok(mut line) = serde_json::to_vec(&rec) else { return rec.id };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            tracing::error!(error = %e, "could not write the audit log");
        }
        rec.id
    }
}
