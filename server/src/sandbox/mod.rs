//! Sandboxes: containers Porthole creates on demand from a [`profile::Profile`], keeps warm in a pool, hands to
//! exactly one user, and removes when they are done (or idle, or too old). Authorization and audit are not
//! here; they happen in [`crate::state`].
//!
//! - [`profile`]: the profiles file;
//! - [`store`]: Porthole's own record of the containers it made (the owner of a claimed pool container lives
//!   only there, since Docker cannot relabel a container);
//! - this file: creating (a warm claim, else a cold create), removing, the pool's refill, and the maintenance
//!   loop (expiry, idle timeouts, pool health, clean-up after a crash).
//!
//! Every container made here carries [`LABEL_PROFILE`], [`LABEL_POOL`] and [`LABEL_INSTANCE`]. Clean-up only
//! touches a container that carries this instance's label *and* has a row in the store: nobody's own
//! container is ever removed, whatever labels it carries.

pub mod profile;
pub mod store;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use app::protocol::{ErrorCode, ExitReason, LABEL_INSTANCE, LABEL_POOL, LABEL_PROFILE, Sandbox};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use self::profile::{Profile, Profiles};
use self::store::{Kind, Row, Store};
use crate::docker::{ContainerRuntime, RuntimeError};
use crate::error::ServiceError;
use crate::session::{Prelaunched, Sessions};

/// Cold creates (Docker create + start) in flight at once, across all users; more wait their turn.
pub const MAX_CONCURRENT_CREATES: usize = 8;
/// Pool containers being made at once in the background, so refills never crowd out users' creates.
pub const MAX_CONCURRENT_REFILLS: usize = 2;
/// A user's burst of creates, in multiples of their per-second rate (`--max-sandbox-creates-per-sec`).
pub const CREATE_BURST_FACTOR: u32 = 4;
/// Users whose create rate is tracked; beyond it the oldest buckets are forgotten.
const MAX_TRACKED_USERS: usize = 10_000;
/// How often expiry and idle timeouts are checked.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the pool and the store are compared with what the daemon has (dead pool containers replaced,
/// vanished sandboxes forgotten).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// How long Docker gives a stopping container before it kills it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// A pool container's refill that failed is retried after this long.
const REFILL_BACKOFF: Duration = Duration::from_secs(5);
/// Idle timeout for a sandbox whose profile was removed from the file.
const FALLBACK_IDLE: Duration = Duration::from_secs(600);

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What Porthole knows of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// A user's sandbox.
    Sandbox(Row),
    /// Pooled or being made: nobody may see or use it.
    Hidden,
}

#[derive(Debug, Default)]
struct Inner {
    /// Name -> row, mirroring the store.
    rows: HashMap<String, Row>,
    /// Profile -> names of started, unclaimed pool containers, oldest first.
    ready: HashMap<String, VecDeque<String>>,
    /// Profile -> pool containers being made.
    filling: HashMap<String, usize>,
    /// Profile -> when a failed refill may be retried.
    backoff: HashMap<String, Instant>,
    /// User -> creates in flight (they count against the quota until they end).
    reserved: HashMap<String, usize>,
    /// Sandbox name -> since when it has had no running terminal.
    idle_since: HashMap<String, Instant>,
    /// Sandboxes being removed (so two removals, or a removal and the expiry, do not race).
    removing: std::collections::HashSet<String>,
    /// Rows found in the store at start, not yet reconciled: left by an earlier run of this instance.
    inherited: std::collections::HashSet<String>,
    /// Pool container name -> its login shell, started ahead of time so a claim's terminal starts at once.
    warm: HashMap<String, Prelaunched>,
    /// Containers being made or claimed right now: the reconcile leaves them alone.
    in_flight: std::collections::HashSet<String>,
}

/// Marks a container as being made or claimed until dropped.
struct InFlight<'a> {
    sandboxes: &'a Sandboxes,
    name: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sandboxes.lock().in_flight.remove(&self.name);
    }
}

/// A user's create slot, counted against their quota until the sandbox is theirs (it then counts as a row)
/// or the create failed.
struct Reservation<'a> {
    sandboxes: &'a Sandboxes,
    user: String,
    live: std::sync::atomic::AtomicBool,
}

impl Reservation<'_> {
    /// Gives the slot back; called with the lock held where the owned row goes in, so the user is never
    /// counted twice.
    fn release(&self, inner: &mut Inner) {
        if self.live.swap(false, std::sync::atomic::Ordering::SeqCst)
            && let Some(n) = inner.reserved.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.reserved.remove(&self.user);
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let sandboxes = self.sandboxes;
        self.release(&mut sandboxes.lock());
    }
}

/// How many sandboxes a user may hold and start.
#[derive(Debug, Clone, Copy)]
pub struct CreateLimits {
    /// Sandboxes one user may hold without a policy saying otherwise (`--max-sandboxes-per-user`).
    pub per_user: usize,
    /// Creates one user may start per second (`--max-sandbox-creates-per-sec`), bursts of
    /// [`CREATE_BURST_FACTOR`] times that.
    pub per_sec: u32,
}

/// The sandbox manager.
pub struct Sandboxes {
    runtime: Arc<dyn ContainerRuntime>,
    store: Store,
    instance: String,
    profiles: RwLock<Arc<Profiles>>,
    inner: Mutex<Inner>,
    creates: Semaphore,
    refills: Arc<Semaphore>,
    rate: governor::DefaultKeyedRateLimiter<String>,
    per_sec: u32,
    /// Most sandboxes per user without a policy saying otherwise (`--max-sandboxes-per-user`).
    pub default_quota: usize,
    /// Whether the store was reconciled with the daemon since start (a crash's leftovers cleaned up).
    adopted: std::sync::atomic::AtomicBool,
    /// The terminals, to start pool containers' shells ahead of time (set once by the service layer).
    sessions: std::sync::OnceLock<std::sync::Weak<Sessions>>,
}

impl std::fmt::Debug for Sandboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandboxes").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// Sorts a runtime failure during a create.
fn create_error(profile: &Profile, e: RuntimeError) -> ServiceError {
    match e {
        RuntimeError::NotFound(m) => {
            tracing::info!(profile = %profile.name, image = %profile.image, error = %m, "sandbox image missing");
            ServiceError::new(
                ErrorCode::ImageNotFound,
                format!(
                    "the image {} of profile {} is not on the Docker host (images are never pulled)",
                    profile.image, profile.name
                ),
            )
        }
        other => ServiceError::from_runtime(other),
    }
}

fn store_error(e: store::StoreError) -> ServiceError {
    tracing::error!(error = %e, "sandbox state store");
    ServiceError::new(ErrorCode::Internal, format!("Porthole could not record the sandbox: {e}"))
}

impl Sandboxes {
    /// The manager, over `store` (its instance id is made on first use and kept: `instance` when given).
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        profiles: Profiles,
        limits: CreateLimits,
        instance: Option<&str>,
    ) -> Result<Arc<Sandboxes>, String> {
        let instance = store.instance_id_or(instance).map_err(|e| e.to_string())?;
        let rows = store.all().map_err(|e| e.to_string())?;
        let inner = Inner {
            inherited: rows.iter().map(|r| r.name.clone()).collect(),
            rows: rows.into_iter().map(|r| (r.name.clone(), r)).collect(),
            ..Inner::default()
        };
        let per_sec = std::num::NonZeroU32::new(limits.per_sec).unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            per_sec.saturating_mul(std::num::NonZeroU32::new(CREATE_BURST_FACTOR).unwrap_or(std::num::NonZeroU32::MIN));
        let quota = governor::Quota::per_second(per_sec).allow_burst(burst);
        Ok(Arc::new(Sandboxes {
            runtime,
            store,
            instance,
            profiles: RwLock::new(Arc::new(profiles)),
            inner: Mutex::new(inner),
            creates: Semaphore::new(MAX_CONCURRENT_CREATES),
            refills: Arc::new(Semaphore::new(MAX_CONCURRENT_REFILLS)),
            rate: governor::RateLimiter::keyed(quota),
            per_sec: per_sec.get(),
            default_quota: limits.per_user,
            adopted: std::sync::atomic::AtomicBool::new(false),
            sessions: std::sync::OnceLock::new(),
        }))
    }

    /// Lets pool containers have their login shells started ahead of time.
    pub fn use_sessions(&self, sessions: &Arc<Sessions>) {
        let _ = self.sessions.set(Arc::downgrade(sessions));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `name` in flight (call with it already recorded where the reconcile looks).
    fn in_flight(&self, name: &str) -> InFlight<'_> {
        self.lock().in_flight.insert(name.to_string());
        InFlight { sandboxes: self, name: name.to_string() }
    }

    /// This instance's id (the value of [`LABEL_INSTANCE`] on its containers).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn profiles(&self) -> Arc<Profiles> {
        self.profiles.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the profiles (after checking their runtimes with the daemon, when it answers). Pool containers
    /// of profiles that changed or went away are removed and, where the profile remains, made anew.
    pub async fn reload(self: &Arc<Self>, fresh: Profiles) -> Result<(), String> {
        match self.runtime.runtimes().await {
            Ok(have) => fresh.check_runtimes(&have)?,
            Err(e) => tracing::warn!(error = %e, "cannot check the profiles' runtimes: the daemon does not answer"),
        }
        let old = {
            let mut p = self.profiles.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *p, Arc::new(fresh))
        };
        let now = self.profiles();
        let stale: Vec<String> = {
            let mut inner = self.lock();
            let changed: Vec<String> = old
                .profiles
                .iter()
                .filter(|(name, p)| now.get(name).is_none_or(|n| n != *p))
                .map(|(name, _)| name.clone())
                .collect();
            changed.iter().flat_map(|p| inner.ready.remove(p).unwrap_or_default()).collect()
        };
        for name in stale {
            self.discard(&name).await;
        }
        self.refill();
        Ok(())
    }

    /// Whether `container_id` is one of this instance's containers, and which kind.
    pub fn known(&self, container_id: &str) -> Option<Known> {
        if container_id.is_empty() {
            return None;
        }
        let inner = self.lock();
        let row = inner.rows.values().find(|r| r.id == container_id)?;
        Some(if row.kind == Kind::Owned { Known::Sandbox(row.clone()) } else { Known::Hidden })
    }

    /// Every container in the store: users' sandboxes, pool containers, and ones being made.
    pub fn rows(&self) -> Vec<Row> {
        self.lock().rows.values().cloned().collect()
    }

    /// Every user's sandbox.
    pub fn owned(&self) -> Vec<Row> {
        let mut v: Vec<Row> = self.lock().rows.values().filter(|r| r.kind == Kind::Owned).cloned().collect();
        v.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.name.cmp(&b.name)));
        v
    }

    /// How many sandboxes `user` holds or is being given.
    fn held(inner: &Inner, user: &str) -> usize {
        inner.rows.values().filter(|r| r.kind == Kind::Owned && r.owner == user).count()
            + inner.reserved.get(user).copied().unwrap_or(0)
    }

    /// A sandbox for `user` from `profile`: a warm pool container when one is ready, else a new one. The
    /// caller has checked that the user may use the profile; `quota` is how many they may hold. A warm claim comes
    /// with the pool container's login shell, already running.
    pub async fn create(
        self: &Arc<Self>,
        user: &str,
        profile: &Arc<Profile>,
        quota: usize,
    ) -> Result<(Row, Option<Prelaunched>), ServiceError> {
        if self.rate.check_key(&user.to_string()).is_err() {
            return Err(ServiceError::new(
                ErrorCode::RateLimited,
                format!("too many sandboxes requested; at most {} per second", self.per_sec),
            ));
        }
        if self.rate.len() > MAX_TRACKED_USERS {
            self.rate.retain_recent();
        }
        let reservation = {
            let mut inner = self.lock();
            let held = Sandboxes::held(&inner, user);
            if held >= quota {
                return Err(ServiceError::new(
                    ErrorCode::QuotaExceeded,
                    format!("you hold {held} sandboxes, the most you may; remove one first"),
                ));
            }
            *inner.reserved.entry(user.to_string()).or_default() += 1;
            Reservation { sandboxes: self, user: user.to_string(), live: true.into() }
        };
        let claimed = self.claim(&reservation, profile).await?;
        let made = match claimed {
            Some(claimed) => claimed,
            None => (self.cold(&reservation, profile).await?, None),
        };
        self.refill();
        Ok(made)
    }

    /// Takes a ready pool container for the reservation's user, if one is running.
    async fn claim(
        &self,
        reservation: &Reservation<'_>,
        profile: &Arc<Profile>,
    ) -> Result<Option<(Row, Option<Prelaunched>)>, ServiceError> {
        let user = reservation.user.as_str();
        loop {
            let (name, _claiming) = {
                let mut inner = self.lock();
                match inner.ready.get_mut(&profile.name).and_then(VecDeque::pop_front) {
                    Some(n) => {
                        inner.in_flight.insert(n.clone());
                        (n.clone(), InFlight { sandboxes: self, name: n })
                    }
                    None => return Ok(None),
                }
            };
            let Some(mut row) = self.lock().rows.get(&name).cloned() else { continue };
            // A pool container may have died (the daemon restarted): never hand out a dead one.
            match self.runtime.resolve(&row.id).await {
                Ok(t) if t.accepts_exec => {}
                Ok(_) | Err(RuntimeError::NotFound(_)) => {
                    tracing::info!(container = %name, "pool container is not running; replacing it");
                    self.discard(&name).await;
                    continue;
                }
                Err(e) => {
                    // Back in the pool; the daemon is away, so a cold create would fail too.
                    self.lock().ready.entry(profile.name.clone()).or_default().push_front(name);
                    return Err(ServiceError::from_runtime(e));
                }
            }
            let now = now_ms();
            row.kind = Kind::Owned;
            row.owner = user.to_string();
            row.created_at_ms = now;
            row.expires_at_ms = now.saturating_add(profile.max_lifetime.as_millis() as u64);
            if let Err(e) = self.store.put(&row) {
                // Never back to the pool once handed out, even when the hand-over failed.
                self.discard(&name).await;
                return Err(store_error(e));
            }
            let shell = {
                let mut inner = self.lock();
                inner.idle_since.insert(name.clone(), Instant::now());
                let shell = inner.warm.remove(&name);
                inner.rows.insert(name, row.clone());
                reservation.release(&mut inner);
                shell
            };
            // A shell that ended meanwhile is no use: the terminal starts a fresh one.
            let shell = match shell {
                Some(s) => {
                    let exec_id = s.exec_id().to_string();
                    self.runtime.inspect_exec(&exec_id).await.is_ok_and(|x| x.running).then_some(s)
                }
                None => None,
            };
            tracing::info!(container = %row.name, profile = %profile.name, user, "pool container claimed");
            return Ok(Some((row, shell)));
        }
    }

    /// A fresh container name for `profile`.
    fn fresh_name(profile: &str) -> String {
        format!("sandbox-{profile}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
    }

    fn labels(&self, profile: &str, pooled: bool) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_PROFILE.to_string(), profile.to_string()),
            (LABEL_POOL.to_string(), if pooled { "1" } else { "0" }.to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ])
    }

    /// Creates and starts a container for `profile` (`for_user` `None`: for the pool). A failure leaves nothing:
    /// the container is removed, or, when the daemon went away meanwhile, left to the next reconcile (its row
    /// stays `Creating`, which the reconcile removes).
    /// The caller holds `name` in flight (see [`Sandboxes::in_flight`]) from before this call until the container
    /// is where it belongs (the user's, or the pool's ready list).
    async fn make(
        &self,
        for_user: Option<&Reservation<'_>>,
        profile: &Arc<Profile>,
        name: String,
    ) -> Result<Row, ServiceError> {
        let owner = for_user.map_or("", |r| r.user.as_str());
        let pooled = for_user.is_none();
        let now = now_ms();
        let mut row = Row {
            name,
            id: String::new(),
            profile: profile.name.clone(),
            kind: Kind::Creating,
            owner: owner.to_string(),
            image: profile.image.clone(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(profile.max_lifetime.as_millis() as u64),
        };
        self.store.put(&row).map_err(store_error)?;
        self.lock().rows.insert(row.name.clone(), row.clone());
        let spec = profile.spec(row.name.clone(), self.labels(&profile.name, pooled));
        let t0 = Instant::now();
        let made = async {
            let id = self.runtime.create_container(&spec).await.map_err(|e| create_error(profile, e))?;
            let created = t0.elapsed();
            row.id = id.clone();
            self.lock().rows.insert(row.name.clone(), row.clone());
            self.runtime.start_container(&id).await.map_err(|e| match e {
                RuntimeError::Api { message, .. } => {
                    ServiceError::new(ErrorCode::Internal, format!("the sandbox could not start: {message}"))
                }
                other => create_error(profile, other),
            })?;
            tracing::debug!(container = %row.name, create_ms = created.as_millis() as u64, start_ms = (t0.elapsed() - created).as_millis() as u64, "container made");
            Ok::<_, ServiceError>(())
        }
        .await;
        if let Err(e) = made {
            self.discard(&row.name).await;
            return Err(e);
        }
        row.kind = if pooled { Kind::Pooled } else { Kind::Owned };
        if let Err(e) = self.store.put(&row) {
            self.discard(&row.name).await;
            return Err(store_error(e));
        }
        let mut inner = self.lock();
        if !pooled {
            inner.idle_since.insert(row.name.clone(), Instant::now());
        }
        inner.rows.insert(row.name.clone(), row.clone());
        if let Some(r) = for_user {
            r.release(&mut inner);
        }
        Ok(row)
    }

    /// A cold create for the reservation's user, bounded by [`MAX_CONCURRENT_CREATES`].
    async fn cold(&self, reservation: &Reservation<'_>, profile: &Arc<Profile>) -> Result<Row, ServiceError> {
        let user = reservation.user.as_str();
        let _turn = self
            .creates
            .acquire()
            .await
            .map_err(|_| ServiceError::new(ErrorCode::Internal, "the server is shutting down"))?;
        let name = Sandboxes::fresh_name(&profile.name);
        let _making = self.in_flight(&name);
        let row = self.make(Some(reservation), profile, name.clone()).await?;
        tracing::info!(container = %row.name, profile = %profile.name, user, "sandbox created");
        Ok(row)
    }

    /// Removes one of this instance's containers and forgets it. When the daemon is away the row stays (marked
    /// for removal on the next reconcile, unless it is a user's sandbox, which stays theirs).
    async fn discard(&self, name: &str) {
        {
            // Its shell, if any, goes with the container; and it is nobody's to claim any more.
            let mut inner = self.lock();
            drop(inner.warm.remove(name));
            inner.ready.values_mut().for_each(|q| q.retain(|n| n != name));
        }
        let Some(row) = self.lock().rows.get(name).cloned() else { return };
        let target = if row.id.is_empty() { row.name.clone() } else { row.id.clone() };
        match self.remove_labelled(&target).await {
            Ok(()) => {
                if let Err(e) = self.store.delete(name) {
                    tracing::error!(error = %e, container = %name, "could not forget a removed container");
                }
                let mut inner = self.lock();
                inner.rows.remove(name);
                inner.idle_since.remove(name);
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "could not remove a container; will retry");
                if row.kind == Kind::Pooled {
                    let row = Row { kind: Kind::Creating, ..row };
                    let _ = self.store.put(&row);
                    self.lock().rows.insert(name.to_string(), row);
                }
            }
        }
    }

    /// Removes `target` if it carries this instance's label (a container of that name may be someone else's).
    async fn remove_labelled(&self, target: &str) -> Result<(), RuntimeError> {
        match self.runtime.resolve(target).await {
            Ok(t) if t.labels.get(LABEL_INSTANCE) == Some(&self.instance) => {}
            Ok(_) => {
                tracing::warn!(container = %target, "not removing a container without this instance's label");
                return Ok(());
            }
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        match self.runtime.remove_container(target).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            // Already being removed by the daemon.
            Err(RuntimeError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a user's sandbox: its terminals end with `reason`, then the container goes (with its anonymous
    /// volumes), then the record. Fails only when the daemon cannot be reached; the sandbox then stays. The work
    /// runs on its own task, so a caller that goes away (a client hanging up) does not leave it half done.
    /// Returns whether this call removed it (`false`: another removal of it was under way and has finished).
    pub async fn remove(
        self: &Arc<Self>,
        sessions: &Arc<Sessions>,
        row: &Row,
        reason: ExitReason,
    ) -> Result<bool, ServiceError> {
        if !self.lock().removing.insert(row.name.clone()) {
            return Ok(false);
        }
        let (me, sessions, row) = (self.clone(), sessions.clone(), row.clone());
        let work = tokio::spawn(async move {
            let result = async {
                let terminals: Vec<_> =
                    sessions.all().into_iter().filter(|t| t.container_id() == row.id && !t.has_ended()).collect();
                futures_util::future::join_all(terminals.iter().map(|t| sessions.close(t, reason))).await;
                me.remove_labelled(&row.id).await.map_err(ServiceError::from_runtime)?;
                me.store.delete(&row.name).map_err(store_error)?;
                let mut inner = me.lock();
                inner.rows.remove(&row.name);
                inner.idle_since.remove(&row.name);
                Ok(())
            }
            .await;
            me.lock().removing.remove(&row.name);
            if result.is_ok() {
                tracing::info!(container = %row.name, owner = %row.owner, %reason, "sandbox removed");
            }
            result
        });
        match work.await {
            Ok(result) => result.map(|()| true),
            Err(_) => Err(ServiceError::new(ErrorCode::Internal, "the removal was interrupted")),
        }
    }

    /// Starts pool containers where a profile has fewer ready or coming than it asks for.
    pub fn refill(self: &Arc<Self>) {
        let profiles = self.profiles();
        let mut wanted = Vec::new();
        {
            let mut inner = self.lock();
            let now = Instant::now();
            for p in profiles.profiles.values().filter(|p| p.pool > 0) {
                if inner.backoff.get(&p.name).is_some_and(|until| *until > now) {
                    continue;
                }
                let have = inner.ready.get(&p.name).map_or(0, VecDeque::len)
                    + inner.filling.get(&p.name).copied().unwrap_or(0);
                for _ in have..p.pool {
                    *inner.filling.entry(p.name.clone()).or_default() += 1;
                    wanted.push(p.clone());
                }
            }
        }
        for profile in wanted {
            let me = self.clone();
            tokio::spawn(async move {
                let name = Sandboxes::fresh_name(&profile.name);
                let _making = me.in_flight(&name);
                let made = match me.refills.clone().acquire_owned().await {
                    Ok(_turn) => match me.make(None, &profile, name.clone()).await {
                        Ok(row) => {
                            let shell = me.prelaunch(&row).await;
                            Ok((row, shell))
                        }
                        Err(e) => Err(e),
                    },
                    Err(_) => return,
                };
                // Made from a profile that changed or went away meanwhile (a reload): not for anyone.
                let current = me.profiles().get(&profile.name).is_some_and(|p| **p == *profile);
                if let (Ok((row, _)), false) = (&made, current) {
                    me.discard(&row.name).await;
                }
                let mut inner = me.lock();
                if let Some(n) = inner.filling.get_mut(&profile.name) {
                    *n = n.saturating_sub(1);
                }
                match made {
                    Ok(_) if !current => {}
                    Ok((row, shell)) => {
                        if let Some(shell) = shell {
                            inner.warm.insert(row.name.clone(), shell);
                        }
                        inner.ready.entry(profile.name.clone()).or_default().push_back(row.name);
                    }
                    Err(e) => {
                        tracing::warn!(profile = %profile.name, error = %e.message, "could not fill the warm pool");
                        inner.backoff.insert(profile.name.clone(), Instant::now() + REFILL_BACKOFF);
                    }
                }
            });
        }
    }

    /// Starts the login shell of a new pool container ahead of time; without one, a claim starts it then.
    async fn prelaunch(&self, row: &Row) -> Option<Prelaunched> {
        let sessions = self.sessions.get()?.upgrade()?;
        let target = self.runtime.resolve(&row.id).await.ok()?;
        match sessions.prelaunch(target).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::info!(container = %row.name, error = %e.message, "no shell started ahead in a pool container");
                None
            }
        }
    }

    /// Pool containers ready now, per profile.
    pub fn ready(&self) -> BTreeMap<String, usize> {
        self.lock().ready.iter().map(|(p, q)| (p.clone(), q.len())).collect()
    }

    /// Compares the store with the daemon. Rows left `Creating` (a crash, a daemon outage mid-create) and pool
    /// containers not running or left from before a restart are removed; sandboxes whose container is gone
    /// are forgotten; the pools are refilled.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), RuntimeError> {
        let names: Vec<String> = self.lock().rows.keys().cloned().collect();
        let containers = self.runtime.list_containers().await?;
        let ours: HashMap<&str, &app::protocol::ContainerSummary> = containers
            .iter()
            .filter(|c| c.labels.get(LABEL_INSTANCE) == Some(&self.instance))
            .map(|c| (c.name.as_str(), c))
            .collect();
        self.adopted.store(true, std::sync::atomic::Ordering::SeqCst);
        for name in names {
            // Decided on the row as it is now, not as it was when the list was taken; a container being made,
            // claimed or removed right now is left to whoever is doing that.
            let (row, first, ready) = {
                let mut inner = self.lock();
                let Some(row) = inner.rows.get(&name).cloned() else { continue };
                if inner.in_flight.contains(&name) || inner.removing.contains(&name) {
                    continue;
                }
                // Left by an earlier run: its pool and half-made containers go; its users' sandboxes are adopted.
                let first = inner.inherited.remove(&name);
                let ready = inner.ready.values().any(|q| q.contains(&name));
                (row, first, ready)
            };
            let container = ours.get(name.as_str());
            match row.kind {
                Kind::Owned => {
                    if container.is_none() {
                        // Listed before this row was made, or really gone: only the daemon's "no such container"
                        // forgets it.
                        let target = if row.id.is_empty() { row.name.clone() } else { row.id.clone() };
                        if let Err(RuntimeError::NotFound(_)) = self.runtime.resolve(&target).await {
                            tracing::info!(container = %row.name, owner = %row.owner, "sandbox is gone from the daemon; forgetting it");
                            let _ = self.store.delete(&row.name);
                            let mut inner = self.lock();
                            inner.rows.remove(&row.name);
                            inner.idle_since.remove(&row.name);
                        }
                    } else if first {
                        tracing::info!(container = %row.name, owner = %row.owner, "sandbox adopted");
                        self.lock().idle_since.insert(row.name.clone(), Instant::now());
                    }
                }
                Kind::Pooled => {
                    let healthy = container.is_some_and(|c| c.state == "running");
                    if first || !healthy || !ready {
                        self.discard(&row.name).await;
                    }
                }
                // Not being made (that would be in flight): left by a create that failed while the daemon was away,
                // or by an earlier run.
                Kind::Creating => self.discard(&row.name).await,
            }
        }
        self.refill();
        Ok(())
    }

    /// Sandboxes due to go: past their max lifetime, or idle (no running terminal) for their idle timeout.
    fn due(&self, sessions: &Sessions) -> Vec<Row> {
        let profiles = self.profiles();
        let busy: std::collections::HashSet<String> =
            sessions.all().iter().filter(|t| !t.has_ended()).map(|t| t.container_id().to_string()).collect();
        let (now_ms, now) = (now_ms(), Instant::now());
        let mut inner = self.lock();
        let owned: Vec<Row> = inner.rows.values().filter(|r| r.kind == Kind::Owned).cloned().collect();
        let mut due = Vec::new();
        for row in owned {
            if busy.contains(&row.id) {
                inner.idle_since.remove(&row.name);
                if now_ms >= row.expires_at_ms {
                    due.push(row);
                }
                continue;
            }
            let since = *inner.idle_since.entry(row.name.clone()).or_insert(now);
            let idle = profiles.get(&row.profile).map_or(FALLBACK_IDLE, |p| p.idle_timeout);
            if now_ms >= row.expires_at_ms || now.duration_since(since) >= idle {
                due.push(row);
            }
        }
        due
    }

    /// The maintenance loop: expiry and idle timeouts every [`TICK`], a reconcile every
    /// [`RECONCILE_INTERVAL`] (the first at once: a crash's leftovers are cleaned up at start).
    pub async fn maintain(
        self: Arc<Self>,
        sessions: Arc<Sessions>,
        expired: impl Fn(&Row) + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut last_reconcile: Option<Instant> = None;
        loop {
            if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_INTERVAL) {
                match self.reconcile().await {
                    Ok(()) => last_reconcile = Some(Instant::now()),
                    Err(e) => {
                        tracing::debug!(error = %e, "sandbox reconcile: the daemon does not answer");
                        last_reconcile = Some(Instant::now());
                        if !self.adopted.load(std::sync::atomic::Ordering::SeqCst) {
                            // Try again soon: nothing may be handed out from a pool not yet checked.
                            last_reconcile = None;
                        }
                    }
                }
            }
            for row in self.due(&sessions) {
                match self.remove(&sessions, &row, ExitReason::SandboxExpired).await {
                    Ok(true) => expired(&row),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(container = %row.name, error = %e.message, "could not remove an expired sandbox")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Removes every pool container (at shutdown: a pool is rebuilt at start; users' sandboxes stay).
    pub async fn drain_pools(&self) {
        let names: Vec<String> = {
            let mut inner = self.lock();
            inner.warm.clear();
            inner.ready.drain().flat_map(|(_, q)| q).collect()
        };
        futures_util::future::join_all(names.iter().map(|n| self.discard(n))).await;
    }

    /// The protocol's view of a row, with the container's state.
    pub fn describe(row: &Row, state: &str) -> Sandbox {
        Sandbox {
            id: row.id.clone(),
            name: row.name.clone(),
            profile: row.profile.clone(),
            owner: row.owner.clone(),
            image: row.image.clone(),
            state: state.to_string(),
            created_at: row.created_at_ms,
            expires_at: row.expires_at_ms,
            node: None,
        }
    }
}
