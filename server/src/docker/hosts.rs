//! Several Docker hosts behind one [`ContainerRuntime`]: `--docker-host NAME=URL`, repeated.
//!
//! - With one host, ids are Docker's own and everything passes straight through; `HOST/REF` naming that host
//!   works too.
//! - With more than one, every container id and exec id is qualified by its host, `HOST/ID` (a Docker id or
//!   name never holds a `/`), in the container list, in terminals and on the wire, so whatever names an object
//!   also says where it is. A bare id, id prefix or name is looked up on every host: found once, it is used;
//!   found on several, it is refused as ambiguous ([`RuntimeError::Ambiguous`], `ambiguous_container`).
//! - Containers Porthole creates (sandboxes) go to the first host named.
//! - Container events of all hosts are merged; when one host's stream ends, the merged one ends too (the
//!   watcher then subscribes again to all and has the clients refresh), and a host that could not be subscribed
//!   to ends it after [`RETRY_UNAVAILABLE`], so its events come back once it does.

use std::sync::Arc;
use std::time::Duration;

use app::protocol::ContainerSummary;
use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    ContainerEvent, ContainerRuntime, ContainerSpec, ContainerTarget, ExecSpec, ExecStatus, ExecStream, RuntimeError,
};

/// The name of a host given as a bare URL.
pub const DEFAULT_HOST: &str = "local";
/// Most Docker hosts one node serves.
pub const MAX_HOSTS: usize = 16;
/// How long the merged event stream runs without a host it could not subscribe to before trying again.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);

/// Whether `name` may name a host: 1 to 32 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// One named host.
struct Host {
    name: String,
    runtime: Arc<dyn ContainerRuntime>,
}

/// See the module comment.
pub struct Hosts {
    hosts: Vec<Host>,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts").field("names", &self.names()).finish()
    }
}

impl Hosts {
    /// `hosts` in order (the first takes new containers); names must be unique and valid (the caller checked).
    pub fn new(hosts: Vec<(String, Arc<dyn ContainerRuntime>)>) -> Hosts {
        assert!(!hosts.is_empty(), "at least one Docker host");
        Hosts { hosts: hosts.into_iter().map(|(name, runtime)| Host { name, runtime }).collect() }
    }

    /// The hosts' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    fn several(&self) -> bool {
        self.hosts.len() > 1
    }

    /// `id` as the rest of Porthole sees it.
    fn qualify(&self, host: &Host, id: String) -> String {
        if self.several() { format!("{}/{id}", host.name) } else { id }
    }

    /// The host a `HOST/REF` names, and the `REF`.
    fn named<'a>(&self, reference: &'a str) -> Option<(&Host, &'a str)> {
        let (name, rest) = reference.split_once('/')?;
        self.hosts.iter().find(|h| h.name == name).map(|h| (h, rest))
    }

    /// The host and Docker's id for an id this runtime handed out (or, with one host, any reference).
    fn route<'a>(&self, id: &'a str) -> Result<(&Host, &'a str), RuntimeError> {
        if let Some(found) = self.named(id) {
            return Ok(found);
        }
        if self.several() {
            return Err(RuntimeError::NotFound(format!("no Docker host is named in {id:?} (HOST/ID expected)")));
        }
        Ok((&self.hosts[0], id))
    }

    fn target(&self, host: &Host, mut t: ContainerTarget) -> ContainerTarget {
        t.id = self.qualify(host, t.id);
        t.host = host.name.clone();
        t
    }
}

#[async_trait]
impl ContainerRuntime for Hosts {
    /// The first host's API version; fails when any host does not answer (naming it).
    async fn ping(&self) -> Result<String, RuntimeError> {
        let answers = futures_util::future::join_all(self.hosts.iter().map(|h| h.runtime.ping())).await;
        let mut first = None;
        for (h, a) in self.hosts.iter().zip(answers) {
            match a {
                Ok(v) => {
                    first.get_or_insert(v);
                }
                Err(e) if self.several() => {
                    return Err(RuntimeError::Unavailable(format!("Docker host {}: {e}", h.name)));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(first.unwrap_or_default())
    }

    /// Every host's containers; a host that does not answer is left out (and logged) while another answers.
    async fn list_containers(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let lists = futures_util::future::join_all(self.hosts.iter().map(|h| h.runtime.list_containers())).await;
        let mut all = Vec::new();
        let mut failure = None;
        let mut answered = false;
        for (h, list) in self.hosts.iter().zip(lists) {
            match list {
                Ok(list) => {
                    answered = true;
                    all.extend(list.into_iter().map(|mut c| {
                        c.id = self.qualify(h, std::mem::take(&mut c.id));
                        c.host = h.name.clone();
                        c
                    }));
                }
                Err(e) => {
                    tracing::warn!(host = %h.name, error = %e, "Docker host did not list its containers");
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) if !answered => Err(e),
            _ => Ok(all),
        }
    }

    async fn resolve(&self, container_ref: &str) -> Result<ContainerTarget, RuntimeError> {
        if let Some((h, rest)) = self.named(container_ref) {
            return h.runtime.resolve(rest).await.map(|t| self.target(h, t));
        }
        if !self.several() {
            let h = &self.hosts[0];
            return h.runtime.resolve(container_ref).await.map(|t| self.target(h, t));
        }
        let answers = futures_util::future::join_all(self.hosts.iter().map(|h| h.runtime.resolve(container_ref))).await;
        let mut found = Vec::new();
        let mut unavailable = None;
        for (h, a) in self.hosts.iter().zip(answers) {
            match a {
                Ok(t) => found.push(self.target(h, t)),
                Err(RuntimeError::NotFound(_)) => {}
                Err(RuntimeError::Unavailable(m)) => unavailable = Some(format!("Docker host {}: {m}", h.name)),
                Err(e) => return Err(e),
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(match unavailable {
                // It may be on the host that does not answer.
                Some(m) => RuntimeError::Unavailable(m),
                None => RuntimeError::NotFound(format!("no such container: {container_ref}")),
            }),
            _ => Err(RuntimeError::Ambiguous(format!(
                "{container_ref:?} names containers on {} Docker hosts ({}): name one as HOST/{container_ref}",
                found.len(),
                found.iter().map(|t| t.host.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    async fn start_exec(&self, container_id: &str, spec: &ExecSpec) -> Result<ExecStream, RuntimeError> {
        let (h, id) = self.route(container_id)?;
        let mut stream = h.runtime.start_exec(id, spec).await?;
        stream.exec_id = self.qualify(h, std::mem::take(&mut stream.exec_id));
        Ok(stream)
    }

    async fn inspect_exec(&self, exec_id: &str) -> Result<ExecStatus, RuntimeError> {
        let (h, id) = self.route(exec_id)?;
        h.runtime.inspect_exec(id).await
    }

    async fn resize_exec(&self, exec_id: &str, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        let (h, id) = self.route(exec_id)?;
        h.runtime.resize_exec(id, cols, rows).await
    }

    async fn container_events(&self) -> Result<BoxStream<'static, Result<ContainerEvent, RuntimeError>>, RuntimeError> {
        if !self.several() {
            return self.hosts[0].runtime.container_events().await;
        }
        let subscribed = futures_util::future::join_all(self.hosts.iter().map(|h| h.runtime.container_events())).await;
        let mut streams = Vec::new();
        for (h, s) in self.hosts.iter().zip(subscribed) {
            let (name, qualify) = (h.name.clone(), format!("{}/", h.name));
            match s {
                Ok(events) => {
                    let ended = RuntimeError::Unavailable(format!("the event stream of Docker host {name} ended"));
                    let events = events
                        .map(move |e| {
                            e.map(|mut e| {
                                e.change.container_id = format!("{qualify}{}", e.change.container_id);
                                e
                            })
                        })
                        .chain(stream::once(async move { Err(ended) }));
                    streams.push(events.boxed());
                }
                Err(e) => {
                    tracing::debug!(host = %name, error = %e, "no container events from this Docker host for now");
                    let retry = async move {
                        tokio::time::sleep(RETRY_UNAVAILABLE).await;
                        Err(RuntimeError::Unavailable(format!("Docker host {name} did not answer")))
                    };
                    streams.push(stream::once(retry).boxed());
                }
            }
        }
        Ok(stream::select_all(streams).boxed())
    }

    /// On the first host.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let h = &self.hosts[0];
        h.runtime.create_container(spec).await.map(|id| self.qualify(h, id))
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (h, id) = self.route(id)?;
        h.runtime.start_container(id).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (h, id) = self.route(id)?;
        h.runtime.stop_container(id, grace).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (h, id) = self.route(id)?;
        h.runtime.remove_container(id).await
    }

    /// The first host's (where sandboxes are made).
    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        self.hosts[0].runtime.runtimes().await
    }
}
