//! The recordings operations of the service door: list and search, one recording, its file and transcript,
//! removal. Visibility is one rule: a user sees their own recordings, and everyone's with `recordings = "all"`;
//! others' answer exactly like missing ones.

use std::sync::Arc;

use app::protocol::{
    DEFAULT_RECORDINGS_PAGE, ErrorCode, MAX_QUERY_LEN, MAX_QUERY_WORDS, MAX_RECORDINGS_PAGE, Recording, RecordingQuery,
};

use super::{AppState, Caller, denied};
use crate::audit::Record;
use crate::auth::policy::RecordingScope;
use crate::error::ServiceError;
use crate::recording::index::{Filter, fts_query};

fn unknown(id: &str) -> ServiceError {
    ServiceError::new(ErrorCode::UnknownRecording, format!("no recording {id} exists for you"))
}

impl AppState {
    /// Whose recordings `caller` may see, under the current policy (also checking revocation).
    fn recording_scope(&self, caller: &Caller) -> Result<RecordingScope, ServiceError> {
        let policy = self.policy();
        AppState::revoked_under(&policy, caller)?;
        Ok(policy.recording_scope(&caller.principal))
    }

    /// The recordings `caller` may see that match `q`, newest first.
    pub async fn recordings(&self, caller: &Caller, q: &RecordingQuery) -> Result<Vec<Recording>, ServiceError> {
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
            (RecordingScope::Own, Some(u)) if u != me => return Ok(Vec::new()),
            (RecordingScope::Own, _) => vec![me.clone()],
        };
        let before = match &q.before {
            None => None,
            Some(id) => {
                let visible = self.visible_recording(caller, scope, id).is_ok();
                let at = self.recordings.position(id)?.filter(|_| visible);
                Some((
                    at.ok_or_else(|| ServiceError::invalid(format!("before: no recording {id} exists for you")))?,
                    id.clone(),
                ))
            }
        };
        let filter =
            Filter { users, container: q.container.clone(), since: q.since, until: q.until, matching, limit, before };
        // A search can take a while on a big index: off the async workers.
        let recordings = Arc::clone(&self.recordings);
        tokio::task::spawn_blocking(move || recordings.list(&filter))
            .await
            .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?
    }

    fn visible_recording(&self, caller: &Caller, scope: RecordingScope, id: &str) -> Result<Recording, ServiceError> {
        match self.recordings.get(id)? {
            Some(r) if scope == RecordingScope::All || r.user == caller.principal.subject => Ok(r),
            _ => Err(unknown(id)),
        }
    }

    /// One recording `caller` may see.
    pub fn recording(&self, caller: &Caller, id: &str) -> Result<Recording, ServiceError> {
        let scope = self.recording_scope(caller)?;
        self.visible_recording(caller, scope, id)
    }

    /// A recording's file and, while it is written, how far it has got; audited as `recording.read`.
    pub fn recording_file(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<
        (Recording, std::path::PathBuf, Option<tokio::sync::watch::Receiver<crate::recording::Progress>>),
        ServiceError,
    > {
        let r = self.read_recording(caller, id, "cast")?;
        let follow = self.recordings.follow(id);
        Ok((r, self.recordings.file(id), follow))
    }

    fn read_recording(&self, caller: &Caller, id: &str, what: &str) -> Result<Recording, ServiceError> {
        let r = self.recording(caller, id)?;
        self.audit(Record {
            terminal_id: Some(r.terminal_id.clone()),
            container: Some(r.container.clone()),
            recording_id: Some(r.id.clone()),
            reason: Some(what.to_string()),
            ..caller.record("recording.read", "allowed")
        });
        Ok(r)
    }

    /// A recording's transcript as text.
    pub async fn recording_transcript(&self, caller: &Caller, id: &str) -> Result<String, ServiceError> {
        let r = self.read_recording(caller, id, "transcript")?;
        Arc::clone(&self.recordings).transcript(&r).await
    }

    /// Removes a recording: only with `recordings = "all"` (recordings serve audit, so the recorded user alone
    /// may not), and only once it is closed.
    pub fn remove_recording(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let result = self.recording_scope(caller).and_then(|scope| {
            let r = self.visible_recording(caller, scope, id)?;
            if scope != RecordingScope::All {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    "only users whose policy grants recordings = \"all\" may remove recordings (they serve audit)",
                ));
            }
            self.recordings.remove_one(&r.id)
        });
        let record = match &result {
            Ok(()) => caller.record("recording.remove", "allowed"),
            Err(e) => denied(caller, "recording.remove", e),
        };
        // The recording is gone from the index, so its id is only named, not linked.
        self.security.audit.record(Record { recording_id: Some(id.to_string()), ..record });
        result.map_err(|e| e.audited())
    }
}
