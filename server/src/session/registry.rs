//! The directory of terminals: which exist, and the quotas on them (per client, per user, in total).
//!
//! [`Directory`] is the seam: [`LocalDirectory`] keeps everything in this process; a cluster-wide directory
//! (terminals owned by other nodes, quotas across nodes) can take its place without the rest changing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use app::protocol::{ErrorCode, TerminalId};

use super::{Limits, OwnerId, Terminal};
use crate::error::ServiceError;

/// Ended terminals kept (for clients returning to read how they ended), at most.
pub const MAX_ENDED_KEPT: usize = 256;
/// Ended terminals are kept at least this long, or the grace period if longer.
const MIN_ENDED_RETENTION: Duration = Duration::from_secs(60);

/// Where terminals are found and counted.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug + 'static {
    /// Counts a terminal about to start against `owner`'s limits (`user_quota` overrides the per-user one).
    /// Errors: `too_many_terminals` (per client or in total), `quota_exceeded` (per user), and in a cluster
    /// `cluster_unavailable`.
    async fn reserve(&self, owner: &OwnerId, user_quota: Option<usize>) -> Result<(), ServiceError>;
    /// Gives back a slot taken by [`Directory::reserve`] for a start that failed.
    fn release(&self, owner: &OwnerId);
    /// Lists a started terminal (it holds the slot it reserved until it ends).
    fn insert(&self, terminal: Arc<Terminal>);
    /// A terminal ended: its slot is free. It stays listed for a while, unless `forget`.
    fn ended(&self, terminal: &Terminal, forget: bool);
    /// A listed terminal, running or ended.
    fn find(&self, id: &TerminalId) -> Option<Arc<Terminal>>;
    /// Takes an ended terminal off the list.
    fn forget(&self, id: &TerminalId);
    /// Every listed terminal.
    fn all(&self) -> Vec<Arc<Terminal>>;
    /// The cluster node these terminals are on (empty when running alone).
    fn node(&self) -> &str {
        ""
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Running terminals and, for a while, ended ones.
    terminals: HashMap<TerminalId, Arc<Terminal>>,
    /// Ids of the running ones (each holds a slot in the counts below).
    running: HashSet<TerminalId>,
    /// Ended terminals still listed, oldest first.
    ended: VecDeque<TerminalId>,
    /// Open plus starting terminals per client, per user, and in all.
    per_client: HashMap<OwnerId, usize>,
    per_user: HashMap<String, usize>,
    total: usize,
}

impl Inner {
    fn release(&mut self, owner: &OwnerId) {
        count_down(&mut self.per_client, owner);
        count_down(&mut self.per_user, &owner.user);
        self.total = self.total.saturating_sub(1);
    }
}

/// Takes one from `key`'s count, forgetting the key at zero (the maps stay as small as what is open).
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The in-process directory.
#[derive(Debug)]
pub struct LocalDirectory {
    limits: Limits,
    inner: Arc<Mutex<Inner>>,
}

impl LocalDirectory {
    pub fn new(limits: Limits) -> LocalDirectory {
        LocalDirectory { limits, inner: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The terminals `user` has open or opening here.
    pub fn user_count(&self, user: &str) -> usize {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }

    /// Open or opening terminals per user.
    pub fn user_counts(&self) -> Vec<(String, usize)> {
        self.lock().per_user.iter().map(|(u, n)| (u.clone(), *n)).collect()
    }

    /// The running terminals.
    pub fn running(&self) -> Vec<Arc<Terminal>> {
        let reg = self.lock();
        reg.running.iter().filter_map(|id| reg.terminals.get(id).cloned()).collect()
    }

    /// Counts a terminal about to start (see [`Directory::reserve`]).
    pub fn reserve_here(&self, owner: &OwnerId, user_quota: Option<usize>) -> Result<(), ServiceError> {
        let mut reg = self.lock();
        let mine = reg.per_client.get(owner).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(ServiceError::new(
                ErrorCode::TooManyTerminals,
                format!("this connection already has {mine} terminals open (limit {})", self.limits.per_client),
            ));
        }
        let quota = user_quota.unwrap_or(self.limits.per_user);
        let theirs = reg.per_user.get(&owner.user).copied().unwrap_or(0);
        if theirs >= quota {
            return Err(ServiceError::new(
                ErrorCode::QuotaExceeded,
                format!("user {} already has {theirs} terminals open (quota {quota})", owner.user),
            ));
        }
        if reg.total >= self.limits.total {
            return Err(ServiceError::new(
                ErrorCode::TooManyTerminals,
                format!("the server has {} terminals open (limit {})", reg.total, self.limits.total),
            ));
        }
        *reg.per_client.entry(owner.clone()).or_default() += 1;
        *reg.per_user.entry(owner.user.clone()).or_default() += 1;
        reg.total += 1;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Directory for LocalDirectory {
    async fn reserve(&self, owner: &OwnerId, user_quota: Option<usize>) -> Result<(), ServiceError> {
        self.reserve_here(owner, user_quota)
    }

    fn release(&self, owner: &OwnerId) {
        self.lock().release(owner);
    }

    fn insert(&self, terminal: Arc<Terminal>) {
        let mut reg = self.lock();
        reg.running.insert(terminal.id().clone());
        reg.terminals.insert(terminal.id().clone(), terminal);
    }

    fn ended(&self, terminal: &Terminal, forget: bool) {
        let id = terminal.id().clone();
        let mut reg = self.lock();
        if reg.running.remove(&id) {
            reg.release(terminal.owner());
        }
        if forget {
            reg.terminals.remove(&id);
            return;
        }
        reg.ended.push_back(id.clone());
        // Bounded history: forget the oldest ended terminals first.
        while reg.ended.len() > MAX_ENDED_KEPT {
            if let Some(old) = reg.ended.pop_front() {
                reg.terminals.remove(&old);
            }
        }
        drop(reg);
        let retention = self.limits.grace.max(MIN_ENDED_RETENTION);
        let weak: Weak<Mutex<Inner>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(retention).await;
            if let Some(inner) = weak.upgrade() {
                let mut reg = inner.lock().unwrap_or_else(|e| e.into_inner());
                reg.ended.retain(|t| *t != id);
                reg.terminals.remove(&id);
            }
        });
    }

    fn find(&self, id: &TerminalId) -> Option<Arc<Terminal>> {
        self.lock().terminals.get(id).cloned()
    }

    fn forget(&self, id: &TerminalId) {
        let mut reg = self.lock();
        reg.ended.retain(|t| t != id);
        reg.terminals.remove(id);
    }

    fn all(&self) -> Vec<Arc<Terminal>> {
        self.lock().terminals.values().cloned().collect()
    }
}
