//! Recordings: asciicast v2 files of terminals, their index and transcript search (REST only).

use serde::{Deserialize, Serialize};

/// Most recordings one list request returns (`limit`).
pub const MAX_RECORDINGS_PAGE: usize = 500;
/// Recordings a list request returns without `limit`.
pub const DEFAULT_RECORDINGS_PAGE: usize = 50;
/// Most transcript hits listed per recording in a search.
pub const MAX_HITS_PER_RECORDING: usize = 20;
/// Longest accepted search query (`q`), in bytes.
pub const MAX_QUERY_LEN: usize = 256;
/// Most words in a search query.
pub const MAX_QUERY_WORDS: usize = 16;
/// Media type of a `.cast` download.
pub const ASCIICAST_MEDIA_TYPE: &str = "application/x-asciicast";

/// Where a recording is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// The terminal runs and the file is being written.
    Recording,
    /// The terminal ended (or the server restarted) and the file was closed with its final marker.
    Finished,
    /// Writing stopped early (the directory is unusable or the disk is full): the file holds what was written
    /// before, and `error` says why. The terminal was not affected.
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Finished => "finished",
            RecordingState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RecordingState> {
        match s {
            "recording" => Some(RecordingState::Recording),
            "finished" => Some(RecordingState::Finished),
            "failed" => Some(RecordingState::Failed),
            _ => None,
        }
    }
}

/// What a policy rule (or `--record`) records of a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordLevel {
    Off,
    /// Output, resizes and markers.
    Output,
    /// Also input.
    All,
}

impl RecordLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordLevel::Off => "off",
            RecordLevel::Output => "output",
            RecordLevel::All => "all",
        }
    }
}

/// A transcript line that matched a search, and when it appeared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingHit {
    /// Milliseconds from the start of the recording to the output event that completed the line.
    pub time_ms: u64,
    pub line: String,
}

/// One recording, as `GET /api/v1/recordings` and `GET /api/v1/recordings/{id}` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    /// The recording's id: the terminal's id.
    pub id: String,
    pub terminal_id: String,
    /// The subject who opened the terminal.
    pub user: String,
    /// The container's name.
    pub container: String,
    pub container_id: String,
    /// The terminal's argv joined with spaces, shell-quoted where needed (as in the file's header).
    pub command: String,
    /// ms since the Unix epoch.
    pub started_at: u64,
    /// ms since the Unix epoch; absent while recording.
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// Length of the recording so far (to its last event), ms.
    pub duration_ms: u64,
    /// Output bytes recorded (the terminal's output, not the file's size).
    pub bytes: u64,
    /// Size of the `.cast` file.
    pub file_bytes: u64,
    /// The process's exit code, once known (absent while recording, or when the terminal ended without one).
    #[serde(default)]
    pub exit_code: Option<i64>,
    pub state: RecordingState,
    /// `output` or `all` (with input).
    pub level: RecordLevel,
    /// Why writing stopped, when `state` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Output bytes the recorder missed because the disk could not keep up (each gap is a `gap N` marker).
    pub missed_bytes: u64,
    /// The ids of the audit records about this terminal (open, attach, close, gaps, failure).
    pub audit_ids: Vec<String>,
    /// With `q`: the matching transcript lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<Vec<RecordingHit>>,
    /// In cluster mode: the node that wrote it and keeps its file (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `GET /api/v1/recordings` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingQuery {
    /// Only this user's recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only recordings of this container (its name or full id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Only recordings started at or after this time, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only recordings started at or before this time, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Words that must all appear on one transcript line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Page size (default [`DEFAULT_RECORDINGS_PAGE`], at most [`MAX_RECORDINGS_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The last recording id of the previous page: this page starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// The concrete REST paths of one recording.
pub fn recording_path(id: &str) -> String {
    format!("{}/{id}", super::rest::RECORDINGS)
}
