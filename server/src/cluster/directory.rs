//! The cluster-wide [`Directory`]: this node's terminals are kept as alone (a [`LocalDirectory`]), and Redis is
//! told about them, so that the per-user quota holds across nodes and other nodes find them.
//!
//! Per client and in total, the limits stay this node's own: a client's sockets are on one node, and the total
//! protects this node's capacity. Writes to Redis that follow a change (a terminal listed, ended, a slot given
//! back) are sent in the background; if one is lost, the next heartbeat rewrites this node's part whole.

use std::sync::Arc;

use app::protocol::TerminalId;
use tokio_util::sync::CancellationToken;

use super::{Cluster, RemoteTerminal, Snapshot};

/// Directory changes waiting to be written to Redis, at most (beyond, they are dropped: the next heartbeat
/// writes this node's part whole).
pub const UPDATE_QUEUE: usize = 4096;

/// A change to this node's part of the directory.
#[derive(Debug)]
enum Update {
    Put(Box<RemoteTerminal>),
    Remove(String),
    Users(String, usize),
}
use crate::error::ServiceError;
use crate::session::registry::{Directory, LocalDirectory};
use crate::session::{OwnerId, Terminal};

#[derive(Debug)]
pub struct ClusterDirectory {
    local: LocalDirectory,
    cluster: Arc<Cluster>,
    /// Changes, written in order by one task.
    updates: tokio::sync::mpsc::Sender<Update>,
}

impl ClusterDirectory {
    pub fn new(local: LocalDirectory, cluster: Arc<Cluster>) -> Arc<ClusterDirectory> {
        let (updates, mut queued) = tokio::sync::mpsc::channel(UPDATE_QUEUE);
        let writer = cluster.clone();
        tokio::spawn(async move {
            while let Some(u) = queued.recv().await {
                match u {
                    Update::Put(t) => writer.put_terminal(&t).await,
                    Update::Remove(id) => writer.remove_terminal(&id).await,
                    Update::Users(user, n) => writer.set_user_count(&user, n).await,
                }
            }
        });
        Arc::new(ClusterDirectory { local, cluster, updates })
    }

    fn send(&self, u: Update) {
        if self.updates.try_send(u).is_err() {
            tracing::debug!("directory update queue full; the next heartbeat rewrites this node's part");
        }
    }

    fn remote(&self, t: &Terminal) -> RemoteTerminal {
        let mut info = t.info(self.local.limits().grace);
        info.node = self.cluster.node().to_string();
        RemoteTerminal { info, labels: t.labels().clone() }
    }

    /// This node's part of the directory now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            terminals: self.local.running().iter().filter(|t| !t.has_ended()).map(|t| self.remote(t)).collect(),
            users: self.local.user_counts().into_iter().collect(),
        }
    }

    /// Renews this node's lease every [`Cluster::heartbeat`] until `stop`, then leaves the directory.
    pub async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cluster.heartbeat());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = self.cluster.publish(&self.snapshot()).await;
                }
                _ = stop.cancelled() => break,
            }
        }
        self.cluster.leave().await;
    }

    /// Tells Redis how many terminals `user` has here now, in the background.
    fn count_user(&self, user: &str) {
        self.send(Update::Users(user.to_string(), self.local.user_count(user)));
    }
}

#[async_trait::async_trait]
impl Directory for ClusterDirectory {
    async fn reserve(&self, owner: &OwnerId, user_quota: Option<usize>) -> Result<(), ServiceError> {
        self.local.reserve_here(owner, user_quota)?;
        let quota = user_quota.unwrap_or(self.local.limits().per_user);
        let mine = self.local.user_count(&owner.user);
        if let Err(e) = self.cluster.reserve(&owner.user, mine, quota).await {
            self.local.release(owner);
            return Err(e);
        }
        Ok(())
    }

    fn release(&self, owner: &OwnerId) {
        self.local.release(owner);
        self.count_user(&owner.user);
    }

    fn insert(&self, terminal: Arc<Terminal>) {
        let remote = self.remote(&terminal);
        self.local.insert(terminal);
        self.send(Update::Put(Box::new(remote)));
    }

    fn ended(&self, terminal: &Terminal, forget: bool) {
        self.local.ended(terminal, forget);
        self.send(Update::Remove(terminal.id().0.clone()));
        self.count_user(terminal.user());
    }

    fn find(&self, id: &TerminalId) -> Option<Arc<Terminal>> {
        self.local.find(id)
    }

    fn forget(&self, id: &TerminalId) {
        self.local.forget(id);
    }

    fn all(&self) -> Vec<Arc<Terminal>> {
        self.local.all()
    }

    fn node(&self) -> &str {
        self.cluster.node()
    }
}
