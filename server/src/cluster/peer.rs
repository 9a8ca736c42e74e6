//! Requests between nodes, signed with the cluster secret: no node acts on an unsigned one.
//!
//! A request carries `Porthole-Peer: node=ID, ts=UNIX_SECONDS, sig=BASE64URL` where `sig` is
//! HMAC-SHA256(secret, `porthole-peer-v1\nID\nTS\nMETHOD\nPATH`), where PATH includes the query string, if
//! any. The receiver checks the signature, that `ID`
//! is a valid node id other than its own, and that `TS` is within [`MAX_CLOCK_SKEW`] of its clock. The caller's
//! node has already made the policy decision and written the audit record; the owner only carries it out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::protocol::{ErrorCode, ErrorReply, TerminalId};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Cluster, NodeRecord};
use crate::error::ServiceError;
use crate::state::AppState;

/// The header that carries a peer's signature.
pub const HEADER: &str = "porthole-peer";
/// Peer routes start with this.
pub const PREFIX: &str = "/api/v1/peer/";
/// How far a peer's clock may be from ours.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Connecting to a peer gives up after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A request to a peer, or over a relay, gives up after this. A close waits for the terminal's processes to end,
/// and in a burst of closes in one container the reaps queue behind each other (128 terminals per reap).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `Porthole-Peer` header read.
const MAX_HEADER_BYTES: usize = 256;

type HmacSha256 = Hmac<Sha256>;

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac(secret: &[u8], node: &str, ts: u64, method: &str, path: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut m = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(format!("porthole-peer-v1\n{node}\n{ts}\n{method}\n{path}").as_bytes());
    m
}

/// The signature (base64url) of `method path` by `node` at `ts`.
pub fn signature(secret: &[u8], node: &str, ts: u64, method: &str, path: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(secret, node, ts, method, path).finalize().into_bytes())
}

/// The header value signing `method path` as `node` at `ts`.
pub fn sign(secret: &[u8], node: &str, ts: u64, method: &Method, path: &str) -> String {
    format!("node={node}, ts={ts}, sig={}", signature(secret, node, ts, method.as_str(), path))
}

/// Checks one signature: by another valid node, recent, and made with the secret over `method path`.
pub fn check(secret: &[u8], me: &str, node: &str, ts: u64, sig: &str, method: &str, path: &str) -> Result<(), String> {
    if !super::valid_node_id(node) || node == me {
        return Err(format!("{:?} is not another node's id", crate::refusals::clip(node)));
    }
    if unix_now().abs_diff(ts) > MAX_CLOCK_SKEW.as_secs() {
        return Err(format!("the signature's time is more than {}s from this node's clock", MAX_CLOCK_SKEW.as_secs()));
    }
    let sig =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).map_err(|_| "the signature is not base64url")?;
    mac(secret, node, ts, method, path).verify_slice(&sig).map_err(|_| "the signature does not verify".to_string())
}

/// Checks a request's signature; returns the signing node's id.
pub fn verify(secret: &[u8], me: &str, headers: &HeaderMap, method: &Method, path: &str) -> Result<String, String> {
    let value = headers.get(HEADER).ok_or("no Porthole-Peer signature")?;
    if value.len() > MAX_HEADER_BYTES {
        return Err("the Porthole-Peer header is too long".into());
    }
    let value = value.to_str().map_err(|_| "the Porthole-Peer header is not text")?;
    let (mut node, mut ts, mut sig) = (None, None, None);
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("node", v)) => node = Some(v),
            Some(("ts", v)) => ts = v.parse::<u64>().ok(),
            Some(("sig", v)) => sig = Some(v),
            _ => return Err("the Porthole-Peer header is malformed".into()),
        }
    }
    let (Some(node), Some(ts), Some(sig)) = (node, ts, sig) else {
        return Err("the Porthole-Peer header needs node, ts and sig".into());
    };
    check(secret, me, node, ts, sig, method.as_str(), path)?;
    Ok(node.to_string())
}

fn unauthenticated(message: String) -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(ErrorReply::new(ErrorCode::Unauthenticated, message))).into_response()
}

/// Lets through only requests a peer signed (and none when not in cluster mode).
pub async fn require_peer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster() else {
        return ServiceError::new(ErrorCode::NotFound, "not in cluster mode: no peer routes").into_response();
    };
    let (method, path) = (req.method().clone(), req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string());
    match verify(&cluster.settings().secret, cluster.node(), req.headers(), &method, &path) {
        Ok(_) => next.run(req).await,
        Err(why) => {
            tracing::warn!(path = %path, why = %why, "refused an unsigned or badly signed peer request");
            unauthenticated(format!("peer request refused: {why}"))
        }
    }
}

/// `DELETE /api/v1/peer/terminals/{id}`: ends one of this node's terminals for a user another node admitted.
pub async fn close_terminal(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.close_for_peer(&TerminalId(id)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/peer/sandboxes/{id}`: removes one of this node's sandboxes for a user another node admitted.
pub async fn remove_sandbox(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.remove_sandbox_for_peer(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/peer/containers`: every container on this node's Docker hosts, unfiltered (the asking node
/// applies the policy for its user), ids as this node names them.
pub async fn containers(State(state): State<AppState>) -> Response {
    match state.containers_here().await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The peer routes.
pub fn routes(state: AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route(&format!("{PREFIX}containers"), axum::routing::get(containers))
        .route(&format!("{PREFIX}terminals/{{id}}"), axum::routing::delete(close_terminal))
        .route(&format!("{PREFIX}sandboxes/{{id}}"), axum::routing::delete(remove_sandbox))
        .merge(crate::http::recordings::peer_routes())
        .route_layer(axum::middleware::from_fn_with_state(state, require_peer))
}

/// Why a request to a peer failed, for the user.
pub fn peer_unreachable(node: &NodeRecord, e: &reqwest::Error) -> ServiceError {
    tracing::warn!(peer = %node.node, error = %e, "a peer node does not answer");
    ServiceError::new(ErrorCode::ClusterUnavailable, format!("node {} does not answer; retry in a moment", node.node))
}

/// A request to `node`, signed by this node: `path` is the path and query string.
pub fn signed(cluster: &Cluster, node: &NodeRecord, method: Method, path: &str) -> reqwest::RequestBuilder {
    let header = sign(&cluster.settings().secret, cluster.node(), unix_now(), &method, path);
    cluster.http().request(method, format!("{}{path}", node.base_url())).header(HEADER, header)
}

/// A peer's answer: `res` when it succeeded, else the error it gave (its code and message, for the user).
pub async fn answered(node: &NodeRecord, res: reqwest::Response) -> Result<reqwest::Response, ServiceError> {
    if res.status().is_success() || res.status().is_redirection() || res.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        return Ok(res);
    }
    let status = res.status();
    match res.json::<ErrorReply>().await {
        Ok(reply) => Err(ServiceError::new(reply.error.code, reply.error.message)),
        Err(_) => Err(ServiceError::new(ErrorCode::Internal, format!("node {} answered {status}", node.node))),
    }
}

/// Asks `node` to end its terminal `id`.
pub async fn close(cluster: &Cluster, node: &NodeRecord, id: &TerminalId) -> Result<(), ServiceError> {
    let path = format!("{PREFIX}terminals/{}", id.0);
    let res = signed(cluster, node, Method::DELETE, &path).send().await.map_err(|e| peer_unreachable(node, &e))?;
    answered(node, res).await.map(drop)
}

/// How long a node waits for a peer's container list.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// `node`'s containers, ids qualified `HOST/ID`.
pub async fn containers_of(
    cluster: &Cluster,
    node: &NodeRecord,
) -> Result<Vec<app::protocol::ContainerSummary>, ServiceError> {
    let res = signed(cluster, node, Method::GET, &format!("{PREFIX}containers"))
        .timeout(LIST_TIMEOUT)
        .send()
        .await
        .map_err(|e| peer_unreachable(node, &e))?;
    if !res.status().is_success() {
        return Err(ServiceError::new(
            ErrorCode::DockerUnavailable,
            format!("node {} answered {}", node.node, res.status()),
        ));
    }
    let mut list: Vec<app::protocol::ContainerSummary> = res.json().await.map_err(|e| peer_unreachable(node, &e))?;
    for c in &mut list {
        if !c.id.contains('/') {
            c.id = format!("{}/{}", c.host, c.id);
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_for_the_same_request_and_time() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = unix_now();
        let headers = |v: String| {
            let mut h = HeaderMap::new();
            h.insert(HEADER, v.parse().unwrap());
            h
        };
        let good = headers(sign(secret, "a", now, &Method::DELETE, "/api/v1/peer/terminals/t-1"));
        assert_eq!(verify(secret, "b", &good, &Method::DELETE, "/api/v1/peer/terminals/t-1").unwrap(), "a");
        // Another path, method, secret, or this node's own id: refused.
        assert!(verify(secret, "b", &good, &Method::DELETE, "/api/v1/peer/terminals/t-2").is_err());
        assert!(verify(secret, "b", &good, &Method::GET, "/api/v1/peer/terminals/t-1").is_err());
        assert!(
            verify(b"another secret of at least 32 bytes!", "b", &good, &Method::DELETE, "/api/v1/peer/terminals/t-1")
                .is_err()
        );
        assert!(verify(secret, "a", &good, &Method::DELETE, "/api/v1/peer/terminals/t-1").is_err());
        // Too old or too far ahead.
        for ts in [now - 31, now + 31] {
            let h = headers(sign(secret, "a", ts, &Method::DELETE, "/p"));
            assert!(verify(secret, "b", &h, &Method::DELETE, "/p").unwrap_err().contains("clock"));
        }
        // Missing, malformed, or with a node id that is not one.
        assert!(verify(secret, "b", &HeaderMap::new(), &Method::DELETE, "/p").is_err());
        for bad in ["node=a", "node=a, ts=x, sig=y", "junk", "node=A B, ts=1, sig=AA", "node=a, ts=1, sig=AA, extra"] {
            assert!(verify(secret, "b", &headers(bad.into()), &Method::DELETE, "/p").is_err(), "{bad}");
        }
    }
}
