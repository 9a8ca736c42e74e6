//! Recordings across nodes, asked for by the user's node. A recording stays on the node that owned its terminal
//! (its file and its index entry); that node answers for it on signed peer routes, unfiltered. The user's node
//! makes every decision (what the user may see, the audit record) and fans lists and searches out to every live
//! node, merging their pages.

use std::time::Duration;

use app::protocol::{ErrorCode, Recording};
use axum::http::Method;

use super::peer::{PREFIX, answered, peer_unreachable, signed};
use super::{Cluster, NodeRecord};
use crate::error::ServiceError;
use crate::recording::index::Filter;

/// How long a node waits for a peer's page of a list or search.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node waits for a peer's metadata of one recording.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a download through another node may take, a followed recording of a live terminal included (a
/// follow cut off by it ends there; following it again starts from the beginning, as a follow does).
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The peer path of recording `file` (`ID`, `ID.cast` or `ID.txt`).
pub fn path(file: &str) -> String {
    format!("{PREFIX}recordings/{file}")
}

/// The page `node` has for `filter`.
pub async fn page_on(cluster: &Cluster, node: &NodeRecord, filter: &Filter) -> Result<Vec<Recording>, ServiceError> {
    let json = serde_json::to_string(filter).map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
    let query = serde_urlencoded::to_string([("filter", json)])
        .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
    let res = signed(cluster, node, Method::GET, &format!("{PREFIX}recordings?{query}"))
        .timeout(PAGE_TIMEOUT)
        .send()
        .await
        .map_err(|e| peer_unreachable(node, &e))?;
    answered(node, res).await?.json().await.map_err(|e| peer_unreachable(node, &e))
}

/// Recording `id`'s metadata on `node`, if it has it.
pub async fn get_on(cluster: &Cluster, node: &NodeRecord, id: &str) -> Result<Option<Recording>, ServiceError> {
    let res = signed(cluster, node, Method::GET, &path(id))
        .timeout(LOOKUP_TIMEOUT)
        .send()
        .await
        .map_err(|e| peer_unreachable(node, &e))?;
    match answered(node, res).await {
        Ok(res) => res.json().await.map(Some).map_err(|e| peer_unreachable(node, &e)),
        Err(e) if e.code == ErrorCode::UnknownRecording => Ok(None),
        Err(e) => Err(e),
    }
}

/// Asks `node` to remove its recording `id`.
pub async fn remove_on(cluster: &Cluster, node: &NodeRecord, id: &str) -> Result<(), ServiceError> {
    let res = signed(cluster, node, Method::DELETE, &path(id)).send().await.map_err(|e| peer_unreachable(node, &e))?;
    answered(node, res).await.map(drop)
}

/// Recording `id`'s transcript on `node`.
pub async fn transcript_on(cluster: &Cluster, node: &NodeRecord, id: &str) -> Result<String, ServiceError> {
    let res = signed(cluster, node, Method::GET, &path(&format!("{id}.txt")))
        .send()
        .await
        .map_err(|e| peer_unreachable(node, &e))?;
    answered(node, res).await?.text().await.map_err(|e| peer_unreachable(node, &e))
}

/// The request headers a download passes on to the node that has the file (ranges and conditional requests).
pub const FORWARDED_REQUEST_HEADERS: [&str; 6] =
    ["range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"];
/// The response headers a download passes back.
pub const FORWARDED_RESPONSE_HEADERS: [&str; 8] = [
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "cache-control",
    "vary",
];

/// Recording `id`'s `.cast` file on `node`, as it answers (`method` is GET or HEAD; `headers` are the user's
/// request headers, of which [`FORWARDED_REQUEST_HEADERS`] go on).
pub async fn cast_on(
    cluster: &Cluster,
    node: &NodeRecord,
    id: &str,
    follow: bool,
    method: Method,
    headers: &axum::http::HeaderMap,
) -> Result<reqwest::Response, ServiceError> {
    let mut p = path(&format!("{id}.cast"));
    if follow {
        p.push_str("?follow=true");
    }
    let mut req = signed(cluster, node, method, &p).timeout(DOWNLOAD_TIMEOUT);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v);
        }
    }
    let res = req.send().await.map_err(|e| peer_unreachable(node, &e))?;
    answered(node, res).await
}
