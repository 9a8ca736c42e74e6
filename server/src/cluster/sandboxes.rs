//! Sandboxes across nodes. A sandbox belongs to the node that made it (its store row, its pool, its idle and
//! lifetime clocks, the profile's user for its terminals). Each node publishes its sandbox containers in the
//! directory every heartbeat, so that every node knows whose another node's sandbox is: its owner sees it and
//! works in it from any node, nobody else sees it there unless a shared rule covers it, and a warm pool
//! container is seen by nobody. Terminals in it are opened by the node that made it (relayed from the others),
//! and it is removed by that node, for a user another node admitted.

use app::protocol::ErrorCode;
use axum::http::Method;

use super::peer::{PREFIX, answered, peer_unreachable, signed};
use super::{Cluster, NodeRecord};
use crate::error::ServiceError;

/// The most sandbox containers read from one node's entry.
pub const MAX_PER_NODE: usize = 10_000;

/// Docker's id in `id` (`HOST/ID` or `ID`).
pub fn bare_id(id: &str) -> &str {
    id.rsplit_once('/').map_or(id, |(_, id)| id)
}

/// Asks `node`, which made it, to remove its sandbox `id` (its terminals end with `sandbox_removed`).
pub async fn remove_on(cluster: &Cluster, node: &NodeRecord, id: &str) -> Result<(), ServiceError> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_' || b == b'.') {
        return Err(ServiceError::new(ErrorCode::ContainerNotFound, "no such sandbox"));
    }
    let path = format!("{PREFIX}sandboxes/{}", bare_id(id));
    let res = signed(cluster, node, Method::DELETE, &path).send().await.map_err(|e| peer_unreachable(node, &e))?;
    answered(node, res).await.map(drop)
}
