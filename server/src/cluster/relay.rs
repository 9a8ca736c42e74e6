//! Relays: how a socket on one node follows a terminal another node owns.
//!
//! The socket's node (the *relaying* node) opens a Socket.IO connection of its own to the owner, one per socket
//! and owner, with Porthole's native client. Its handshake `auth` carries no credential but
//! `{"peer": {"node", "ts", "sig", "claims"}}`: `claims` is the JSON text of [`Claims`] (who the user is, as the
//! relaying node authenticated them), and `sig` signs it like a peer request ([`super::peer`]) with the method
//! `RELAY` and `claims` as the path. The owner takes the socket as that user's, from that client; it re-checks
//! the same policy file, and writes no audit record: the relaying node decided and audited, naming both nodes.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Cluster, NodeRecord, peer};
use crate::auth::Principal;
use crate::error::ServiceError;

/// The longest `claims` text accepted.
pub const MAX_CLAIMS_BYTES: usize = 16 * 1024;
/// The pseudo-method relay handshakes are signed with.
const METHOD: &str = "RELAY";

/// What a relaying node vouches for about the user whose socket it relays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub token_id: Option<String>,
    /// The user's address, as the relaying node saw it.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// The user's `clientId`, so the owner files the terminal under the same client.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The protocol version the user's socket negotiated.
    pub protocol_version: u32,
}

impl Claims {
    pub fn principal(&self) -> Principal {
        Principal {
            subject: self.user.clone(),
            groups: self.groups.clone(),
            expires_at: self.expires_at,
            token_id: self.token_id.clone(),
        }
    }
}

/// The handshake `auth` of a relay from this node, vouching for `claims`.
pub fn handshake(cluster: &Cluster, claims: &Claims) -> Value {
    let text = serde_json::to_string(claims).unwrap_or_default();
    let ts = peer::unix_now();
    let sig = peer::signature(&cluster.settings().secret, cluster.node(), ts, METHOD, &text);
    json!({ "peer": { "node": cluster.node(), "ts": ts, "sig": sig, "claims": text } })
}

/// Checks a relay handshake's `peer` object; returns the relaying node and its claims.
pub fn verify(cluster: &Cluster, peer_auth: &Value) -> Result<(String, Claims), String> {
    let field = |name: &str| peer_auth.get(name).ok_or_else(|| format!("auth.peer.{name} is missing"));
    let text = |name: &str| field(name)?.as_str().ok_or_else(|| format!("auth.peer.{name} must be a string"));
    let (node, sig, claims) = (text("node")?, text("sig")?, text("claims")?);
    let ts = field("ts")?.as_u64().ok_or("auth.peer.ts must be a non-negative integer")?;
    if claims.len() > MAX_CLAIMS_BYTES {
        return Err(format!("auth.peer.claims is longer than {MAX_CLAIMS_BYTES} bytes"));
    }
    peer::check(&cluster.settings().secret, cluster.node(), node, ts, sig, METHOD, claims)?;
    let claims: Claims = serde_json::from_str(claims).map_err(|e| format!("auth.peer.claims: {e}"))?;
    Ok((node.to_string(), claims))
}

/// Opens a relay to `owner` for `claims` (binary `data`, the native client, the peer timeouts).
pub async fn connect(
    cluster: &Cluster,
    owner: &NodeRecord,
    claims: &Claims,
) -> Result<(porthole_client::Connection, tokio::sync::mpsc::UnboundedReceiver<porthole_client::Incoming>), ServiceError>
{
    let mut options = porthole_client::Options::new(owner.base_url(), "");
    options.token = None;
    options.auth = Some(handshake(cluster, claims));
    options.transport = porthole_client::Transport::Native;
    // Each step of opening the relay waits up to OPEN_TIMEOUT; answers, as long as a close under load takes.
    options.timeout = OPEN_TIMEOUT;
    let opened = porthole_client::Connection::connect(&options).await.map(|(mut connection, rx)| {
        connection.set_request_timeout(peer::REQUEST_TIMEOUT);
        (connection, rx)
    });
    opened.map_err(|e| {
        tracing::warn!(peer = %owner.node, error = %e, "cannot open a relay to a peer node");
        ServiceError::new(
            app::protocol::ErrorCode::ClusterUnavailable,
            format!("node {} (which holds this terminal) does not answer; retry in a moment", owner.node),
        )
    })
}

/// Each step of opening a relay (the WebSocket, Engine.IO's open packet, the signed CONNECT) gives up after this.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_name_the_principal() {
        let c = Claims {
            user: "ana".into(),
            groups: vec!["ops".into()],
            expires_at: Some(9),
            token_id: None,
            ip: "10.0.0.7".parse().ok(),
            client_id: Some("tab-1".into()),
            protocol_version: 2,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Claims>(&text).unwrap(), c);
        let p = c.principal();
        assert_eq!((p.subject.as_str(), p.groups.len(), p.expires_at), ("ana", 1, Some(9)));
    }
}
