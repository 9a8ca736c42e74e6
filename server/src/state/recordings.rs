//! The recordings operations of the service door: list and search, one recording, its file and transcript,
//! removal. Visibility is one rule: a user sees their own recordings, and everyone's with `recordings = "all"`;
//! others' answer exactly like missing ones.
//!
//! In cluster mode a recording stays on the node that owned its terminal. The node a user asks makes the
//! decision and writes the audit record; it finds a recording it does not have on its live peers, and fans lists
//! and searches out to all of them (see [`crate::cluster::recordings`]).

use std::sync::Arc;

use app::protocol::{
    DEFAULT_RECORDINGS_PAGE, ErrorCode, MAX_QUERY_LEN, MAX_QUERY_WORDS, MAX_RECORDINGS_PAGE, Recording, RecordingQuery,
};

use super::{AppState, Caller, denied};
use crate::audit::Record;
use crate::auth::policy::RecordingScope;
use crate::cluster::NodeRecord;
use crate::cluster::recordings as remote;
use crate::error::ServiceError;
use crate::recording::index::{Filter, fts_query};

/// The longest recording id looked for (ids are terminal ids); longer ones, or ones with other characters than
/// letters, digits, `-` and `_`, are unknown without asking anyone.
const MAX_ID_LEN: usize = 128;

fn unknown(id: &str) -> ServiceError {
    ServiceError::new(ErrorCode::UnknownRecording, format!("no recording {} exists for you", crate::refusals::clip(id)))
}

fn plausible(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a recording is kept.
#[derive(Debug, Clone)]
pub enum Holder {
    /// On this node.
    Here,
    /// On another node of the cluster.
    Peer(NodeRecord),
}

/// A page of recordings, and the nodes whose recordings are missing from it because they did not answer.
#[derive(Debug)]
pub struct Page {
    pub recordings: Vec<Recording>,
    /// Node ids; `*` when the cluster directory could not be read (so only this node's are in the page).
    pub unanswered: Vec<String>,
}

/// What a `.cast` download reads from.
#[derive(Debug)]
pub enum CastSource {
    Here(std::path::PathBuf, Option<tokio::sync::watch::Receiver<crate::recording::Progress>>),
    Peer(NodeRecord),
}

impl AppState {
    /// Whose recordings `caller` may see, under the current policy (also checking revocation).
    fn recording_scope(&self, caller: &Caller) -> Result<RecordingScope, ServiceError> {
        let policy = self.policy();
        AppState::revoked_under(&policy, caller)?;
        Ok(policy.recording_scope(&caller.principal))
    }

    /// The recordings `caller` may see that match `q`, newest first: in cluster mode, every live node's.
    pub async fn recordings(&self, caller: &Caller, q: &RecordingQuery) -> Result<Page, ServiceError> {
        let scope = self.recording_scope(caller)?;
        let me = &caller.principal.subject;
        let limit = q.limit.unwrap_or(DEFAULT_RECORDINGS_PAGE);
        if !(1..=MAX_RECORDINGS_PAGE).contains(&limit) {
            return Err(ServiceError::invalid(format!("limit must be between 1 and {MAX_RECORDINGS_PAGE}")));
        }
        if let (Some(s), Some(u)) = (q.since, q.until)
            && s > u
        {
            return Err(ServiceError::invalid("since is later than until"));
        }
        let matching = match &q.q {
            None => None,
            Some(words) => {
                if words.len() > MAX_QUERY_LEN {
                    return Err(ServiceError::invalid(format!("q is longer than {MAX_QUERY_LEN} bytes")));
                }
                if words.chars().any(char::is_control) {
                    return Err(ServiceError::invalid("q has control characters; search for words"));
                }
                if words.split_whitespace().count() > MAX_QUERY_WORDS {
                    return Err(ServiceError::invalid(format!("q has more than {MAX_QUERY_WORDS} words")));
                }
                Some(
                    fts_query(words)
                        .ok_or_else(|| ServiceError::invalid("q has no words to search for (letters or digits)"))?,
                )
            }
        };
        let users = match (scope, &q.user) {
            (RecordingScope::All, Some(u)) => vec![u.clone()],
            (RecordingScope::All, None) => Vec::new(),
            (RecordingScope::Own, Some(u)) if u != me => {
                return Ok(Page { recordings: Vec::new(), unanswered: Vec::new() });
            }
            (RecordingScope::Own, _) => vec![me.clone()],
        };
        let before = match &q.before {
            None => None,
            Some(id) => {
                let at = match self.visible_recording(caller, scope, id).await {
                    Ok((r, _)) => r.started_at,
                    Err(e) if e.code == ErrorCode::UnknownRecording => {
                        return Err(ServiceError::invalid(format!(
                            "before: no recording {} exists for you",
                            crate::refusals::clip(id)
                        )));
                    }
                    Err(e) => return Err(e),
                };
                Some((at, id.clone()))
            }
        };
        let filter =
            Filter { users, container: q.container.clone(), since: q.since, until: q.until, matching, limit, before };
        let Some(cluster) = self.cluster() else {
            return Ok(Page { recordings: self.recordings_here(filter).await?, unanswered: Vec::new() });
        };
        let peers = match cluster.peers().await {
            Ok(peers) => Some(peers),
            Err(e) => {
                tracing::warn!(error = %e.message, "listing only this node's recordings: the directory does not answer");
                None
            }
        };
        let filter_ref = &filter;
        let theirs = futures_util::future::join_all(
            peers.iter().flatten().map(|node| async move { (node, remote::page_on(cluster, node, filter_ref).await) }),
        );
        let (mine, theirs) = tokio::join!(self.recordings_here(filter.clone()), theirs);
        let mut all = mine?;
        let mut unanswered = if peers.is_none() { vec!["*".to_string()] } else { Vec::new() };
        for (node, page) in theirs {
            match page {
                Ok(page) => all.extend(page.into_iter().take(limit)),
                Err(e) => {
                    tracing::warn!(peer = %node.node, error = %e.message, "a node's recordings are left out of a list");
                    unanswered.push(node.node.clone());
                }
            }
        }
        // Each node's page is newest first from the same cursor: the merged page is the newest `limit` of all.
        all.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        all.truncate(limit);
        Ok(Page { recordings: all, unanswered })
    }

    /// This node's recordings matching `filter`, newest first (in cluster mode, each naming this node).
    pub async fn recordings_here(&self, filter: Filter) -> Result<Vec<Recording>, ServiceError> {
        // A search can take a while on a big index: off the async workers.
        let recordings = Arc::clone(&self.recordings);
        let mut list = tokio::task::spawn_blocking(move || recordings.list(&filter))
            .await
            .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))??;
        for r in &mut list {
            self.stamp(r);
        }
        Ok(list)
    }

    /// This node's recording `id`, unfiltered (in cluster mode, naming this node).
    pub fn recording_here(&self, id: &str) -> Result<Option<Recording>, ServiceError> {
        let mut r = self.recordings.get(id)?;
        if let Some(r) = &mut r {
            self.stamp(r);
        }
        Ok(r)
    }

    /// This node's id, for the audit record of a recording another node keeps (which names both).
    fn node_if(&self, at: &Holder) -> Option<String> {
        holder_node(at).and(self.node_id())
    }

    fn stamp(&self, r: &mut Recording) {
        r.node = self.node_id();
    }

    /// Recording `id` and where it is kept: this node first, then every live peer.
    async fn locate(&self, id: &str) -> Result<Option<(Recording, Holder)>, ServiceError> {
        if !plausible(id) {
            return Ok(None);
        }
        if let Some(r) = self.recording_here(id)? {
            return Ok(Some((r, Holder::Here)));
        }
        let Some(cluster) = self.cluster() else { return Ok(None) };
        let peers = cluster.peers().await?;
        let answers = futures_util::future::join_all(peers.iter().map(|node| remote::get_on(cluster, node, id))).await;
        let mut silent = Vec::new();
        for (node, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(Some(r)) => return Ok(Some((r, Holder::Peer(node.clone())))),
                Ok(None) => {}
                Err(_) => silent.push(node.node.as_str()),
            }
        }
        if !silent.is_empty() {
            return Err(ServiceError::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "recording {} is not on this node, and node {} (which may have it) does not answer; retry in a \
                     moment",
                    crate::refusals::clip(id),
                    silent.join(", ")
                ),
            ));
        }
        Ok(None)
    }

    async fn visible_recording(
        &self,
        caller: &Caller,
        scope: RecordingScope,
        id: &str,
    ) -> Result<(Recording, Holder), ServiceError> {
        match self.locate(id).await? {
            Some((r, at)) if scope == RecordingScope::All || r.user == caller.principal.subject => Ok((r, at)),
            _ => Err(unknown(id)),
        }
    }

    /// One recording `caller` may see.
    pub async fn recording(&self, caller: &Caller, id: &str) -> Result<Recording, ServiceError> {
        let scope = self.recording_scope(caller)?;
        self.visible_recording(caller, scope, id).await.map(|(r, _)| r)
    }

    /// Where to read a recording's file, and while it is written here, how far it has got; audited as
    /// `recording.read`.
    pub async fn recording_file(&self, caller: &Caller, id: &str) -> Result<(Recording, CastSource), ServiceError> {
        let (r, at) = self.read_recording(caller, id, "cast").await?;
        let source = match at {
            Holder::Here => CastSource::Here(self.recordings.file(&r.id), self.recordings.follow(&r.id)),
            Holder::Peer(node) => CastSource::Peer(node),
        };
        Ok((r, source))
    }

    async fn read_recording(&self, caller: &Caller, id: &str, what: &str) -> Result<(Recording, Holder), ServiceError> {
        let scope = self.recording_scope(caller)?;
        let (r, at) = self.visible_recording(caller, scope, id).await?;
        self.audit(Record {
            terminal_id: Some(r.terminal_id.clone()),
            container: Some(r.container.clone()),
            recording_id: Some(r.id.clone()),
            reason: Some(what.to_string()),
            node: self.node_if(&at),
            owner_node: holder_node(&at),
            ..caller.record("recording.read", "allowed")
        });
        Ok((r, at))
    }

    /// A recording's transcript as text.
    pub async fn recording_transcript(&self, caller: &Caller, id: &str) -> Result<String, ServiceError> {
        match self.read_recording(caller, id, "transcript").await? {
            (r, Holder::Here) => Arc::clone(&self.recordings).transcript(&r).await,
            (r, Holder::Peer(node)) => match self.cluster() {
                Some(cluster) => remote::transcript_on(cluster, &node, &r.id).await,
                None => Err(unknown(id)),
            },
        }
    }

    /// Removes a recording: only with `recordings = "all"` (recordings serve audit, so the recorded user alone
    /// may not), and only once it is closed.
    pub async fn remove_recording(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let (mut node, mut owner_node) = (None, None);
        let result = async {
            let scope = self.recording_scope(caller)?;
            let (r, at) = self.visible_recording(caller, scope, id).await?;
            if scope != RecordingScope::All {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    "only users whose policy grants recordings = \"all\" may remove recordings (they serve audit)",
                ));
            }
            (node, owner_node) = (self.node_if(&at), holder_node(&at));
            match (at, self.cluster()) {
                (Holder::Peer(node), Some(cluster)) => remote::remove_on(cluster, &node, &r.id).await,
                _ => self.recordings.remove_one(&r.id),
            }
        }
        .await;
        let record = match &result {
            Ok(()) => caller.record("recording.remove", "allowed"),
            Err(e) => denied(caller, "recording.remove", e),
        };
        // The recording is gone from the index, so its id is only named, not linked.
        self.security.audit.record(Record { recording_id: Some(id.to_string()), node, owner_node, ..record });
        result.map_err(|e| e.audited())
    }
}

fn holder_node(at: &Holder) -> Option<String> {
    match at {
        Holder::Here => None,
        Holder::Peer(node) => Some(node.node.clone()),
    }
}
