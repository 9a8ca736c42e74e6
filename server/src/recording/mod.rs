//! Recording terminals to asciicast v2 files, the index of recordings, transcripts, retention and recovery.
//!
//! - [`cast`]: the file format, byte-faithful;
//! - [`recorder`]: one terminal's recorder, a tap on its event log (never a viewer: not counted, never
//!   waited for);
//! - [`transcript`]: the plain text a person saw, through a terminal emulator;
//! - [`index`]: the SQLite index with FTS5 over the transcripts.
//!
//! A recording's id is its terminal's id. Files live in `--recordings-dir` (mode 0700, files 0600); the index
//! lives in the state directory, so a full recordings disk cannot stop the index from saying so.

pub mod cast;
pub mod index;
pub mod recorder;
pub mod transcript;

use std::collections::HashMap;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::protocol::{ErrorCode, RecordLevel, Recording, RecordingState};
use tokio::sync::watch;

use crate::audit::{Audit, Record};
use crate::error::ServiceError;
use crate::session::Terminal;
use index::{Ending, Filter, Index};

/// How often retention runs (also after every recording ends).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(5);
/// How long shutdown waits for the recorders to write what they have and close their files.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// The marker that closes a recording whose server died while writing it.
pub const CLOSED_AFTER_RESTART: &str = "closed after restart";

/// Where recordings go and how long they stay.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    /// What is recorded where no policy rule says (`--record`).
    pub default_level: RecordLevel,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

/// How far a live recording has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes in the file (whole lines).
    pub file_len: u64,
    /// Output bytes recorded.
    pub bytes: u64,
    /// Time of the last event, µs from the start.
    pub last_us: u64,
    /// Output bytes missed (reported in `gap` markers).
    pub missed: u64,
    /// The recording is over (finished or failed): nothing more is written.
    pub done: bool,
}

/// The recordings of this server.
pub struct Recordings {
    settings: Settings,
    index: Arc<Index>,
    audit: Arc<Audit>,
    live: Mutex<HashMap<String, watch::Sender<Progress>>>,
    /// Audit ids to link, for the writer thread (at most [`LINK_QUEUE`] waiting).
    links: std::sync::mpsc::SyncSender<(String, String)>,
    /// Held by a retention pass (one at a time).
    retention: Mutex<()>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::new(ErrorCode::Internal, e.to_string())
}

/// What reading a `.cast` file back found.
#[derive(Debug, Default)]
struct ReadBack {
    bytes: u64,
    last_us: u64,
    missed: u64,
    /// The exit code of the `exit CODE REASON` marker, when the file has one (`Some(None)`: `exit -`).
    exit: Option<Option<i64>>,
    lines: Vec<transcript::Line>,
}

/// Reads a recording: its output's size, its last time and its transcript.
fn read_back(path: &Path) -> std::io::Result<ReadBack> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut lines = file.split(b'\n');
    let header: Option<cast::Header> =
        lines.next().transpose()?.and_then(|l| serde_json::from_slice::<cast::Header>(&l).ok());
    let (cols, rows) = header.map_or((80, 24), |h| (h.width, h.height));
    let mut t = transcript::Transcript::new(cols, rows);
    let mut out = ReadBack::default();
    for line in lines {
        let line = line?;
        let Some(ev) = std::str::from_utf8(&line).ok().and_then(cast::parse_event) else { continue };
        out.last_us = out.last_us.max(ev.at_us);
        let ms = ev.at_us / 1000;
        match ev.code.as_str() {
            "o" => {
                out.bytes += ev.data.len() as u64;
                t.output(ms, &ev.data);
            }
            "r" => {
                let size = String::from_utf8_lossy(&ev.data).to_string();
                if let Some((c, r)) = size.split_once('x')
                    && let (Ok(c), Ok(r)) = (c.parse(), r.parse())
                {
                    t.resize(ms, c, r);
                }
            }
            "m" => {
                if let Some(n) = ev.data.strip_prefix(b"gap ") {
                    out.missed += String::from_utf8_lossy(n).parse::<u64>().unwrap_or(0);
                }
                if let Some(rest) = ev.data.strip_prefix(b"exit ") {
                    let code = String::from_utf8_lossy(rest).split(' ').next().unwrap_or("-").to_string();
                    out.exit = Some(code.parse().ok());
                }
            }
            _ => {}
        }
    }
    out.lines = t.finish();
    Ok(out)
}

/// Bytes read at a time from the end of a file, looking for its last line.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Cuts a file after its last newline (a line torn by a crash or a full disk), reading only its tail; returns
/// its last event.
fn cut_to_last_line(path: &Path) -> std::io::Result<Option<cast::Event>> {
    use std::io::Read;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.seek(std::io::SeekFrom::End(0))?;
    let mut end = len;
    let mut tail: Vec<u8> = Vec::new();
    // The last newline, then the line before it.
    let keep = loop {
        let from = end.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0u8; (end - from) as usize];
        f.seek(std::io::SeekFrom::Start(from))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if let Some(i) = tail.iter().rposition(|&b| b == b'\n') {
            break from + i as u64 + 1;
        }
        if from == 0 {
            break 0;
        }
        end = from;
    };
    if keep != len {
        f.set_len(keep)?;
    }
    let whole = &tail[..tail.len().saturating_sub((len - keep) as usize)];
    Ok(whole.split(|&b| b == b'\n').rev().find_map(|l| std::str::from_utf8(l).ok().and_then(cast::parse_event)))
}

/// Index writes that must never make a caller wait (audit links): queued for one writer thread.
const LINK_QUEUE: usize = 4096;

impl Recordings {
    /// Opens the index under `state_dir`, checks the recordings directory, and closes the recordings an earlier
    /// run left open (killed while writing).
    pub fn open(settings: Settings, state_dir: &Path, audit: Arc<Audit>) -> Result<Arc<Recordings>, String> {
        let index = Arc::new(Index::open(state_dir)?);
        let (links, queued) = std::sync::mpsc::sync_channel::<(String, String)>(LINK_QUEUE);
        let writer = index.clone();
        std::thread::Builder::new()
            .name("recordings-index".into())
            .spawn(move || {
                while let Ok((id, audit_id)) = queued.recv() {
                    if let Err(e) = writer.link_audit(&id, &audit_id) {
                        tracing::warn!(error = %e, "could not keep an audit id in the recordings index");
                    }
                }
            })
            .map_err(|e| format!("cannot start the recordings index writer: {e}"))?;
        let me = Arc::new(Recordings {
            settings,
            index,
            audit,
            live: Mutex::new(HashMap::new()),
            links,
            retention: Mutex::new(()),
        });
        if let Err(e) = me.check_dir() {
            tracing::error!(
                "{e}; terminals will still open, and their recordings will be marked failed until it is fixed"
            );
        }
        // In the background: reading long recordings back must not hold up the start.
        let recovering = me.clone();
        std::thread::spawn(move || recovering.recover());
        Ok(me)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Creates the directory when missing, makes it mode 0700, and checks that a file can be made in it.
    fn check_dir(&self) -> Result<(), String> {
        let dir = &self.settings.dir;
        let problem = |e: std::io::Error| format!("the recordings directory {} is not usable: {e}", dir.display());
        std::fs::DirBuilder::new().recursive(true).create(dir).map_err(problem)?;
        // Recordings hold whatever was typed and shown: the directory is the server user's alone.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let probe = dir.join(format!(".probe-{}", uuid::Uuid::new_v4().simple()));
        std::fs::File::create(&probe).map_err(problem)?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }

    fn path(&self, id: &str) -> PathBuf {
        self.settings.dir.join(format!("{id}.cast"))
    }

    /// Writes an audit record about recording `id` and keeps its id in the index.
    fn audit_about(&self, id: &str, mut record: Record) {
        record.recording_id = Some(id.to_string());
        let audit_id = self.audit.record(record);
        self.link_audit(id, &audit_id);
    }

    /// Keeps `audit_id` among recording `id`'s audit records (queued: never waits).
    pub fn link_audit(&self, id: &str, audit_id: &str) {
        if self.links.try_send((id.to_string(), audit_id.to_string())).is_err() {
            tracing::warn!(recording = id, "the recordings index is behind; an audit id was not linked");
        }
    }

    pub(crate) fn audit_gap(&self, id: &str, missed: u64) {
        tracing::warn!(recording = id, missed, "the recording missed output (the disk did not keep up)");
        self.audit_about(
            id,
            Record {
                action: "recording.gap",
                outcome: "allowed",
                terminal_id: Some(id.to_string()),
                count: Some(missed),
                reason: Some(format!("the recorder missed {missed} bytes of output")),
                ..Record::default()
            },
        );
    }

    fn audit_failed(&self, id: &str, error: &str) {
        tracing::error!(recording = id, error, "recording failed; the terminal goes on unrecorded");
        self.audit_about(
            id,
            Record {
                action: "recording.failed",
                outcome: "denied",
                terminal_id: Some(id.to_string()),
                reason: Some(error.to_string()),
                ..Record::default()
            },
        );
    }

    /// Creates the file with its header (mode 0600).
    fn create_file(&self, id: &str, header: &cast::Header) -> Result<(std::fs::File, u64), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(id);
        let what = |e: std::io::Error| format!("cannot create the recording {}: {e}", path.display());
        if !self.settings.dir.exists() {
            self.check_dir()?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(what)?;
        let mut head = Vec::new();
        cast::write_header(header, &mut head);
        if let Err(e) = f.write_all(&head) {
            let _ = std::fs::remove_file(&path);
            return Err(what(e));
        }
        Ok((f, head.len() as u64))
    }

    /// Starts recording `terminal` at `level` (not `off`). A recording that cannot start is indexed as failed;
    /// the terminal is not affected either way.
    pub fn start(self: &Arc<Self>, terminal: &Arc<Terminal>, level: RecordLevel) {
        if level == RecordLevel::Off {
            return;
        }
        // First, so that nothing the terminal publishes is missed.
        let tap = terminal.log().tap(level == RecordLevel::All);
        let id = terminal.id().0.clone();
        let (cols, rows) = terminal.size();
        let command = terminal.command();
        let header = cast::Header {
            version: 2,
            width: cols,
            height: rows,
            timestamp: terminal.started_at_ms() / 1000,
            command: cast::command_line(command),
            title: format!("{}@{}", terminal.user(), terminal.container_name()),
            env: cast::Env {
                term: crate::session::launch::TERM.to_string(),
                shell: command.first().cloned().unwrap_or_default(),
            },
        };
        let mut meta = Recording {
            id: id.clone(),
            terminal_id: id.clone(),
            user: terminal.user().to_string(),
            container: terminal.container_name().to_string(),
            container_id: terminal.container_id().to_string(),
            command: header.command.clone(),
            started_at: terminal.started_at_ms(),
            ended_at: None,
            duration_ms: 0,
            bytes: 0,
            file_bytes: 0,
            exit_code: None,
            state: RecordingState::Recording,
            level,
            error: None,
            missed_bytes: 0,
            audit_ids: Vec::new(),
            hits: None,
            node: None,
        };
        let created = self.create_file(&id, &header);
        let live = watch::channel(Progress::default()).0;
        match &created {
            Ok((_, written)) => {
                meta.file_bytes = *written;
                live.send_modify(|p| p.file_len = *written);
                // Live before it is listed: a download or removal never sees it listed but not live.
                self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), live.clone());
            }
            Err(e) => {
                meta.state = RecordingState::Failed;
                meta.error = Some(e.clone());
            }
        }
        if let Err(e) = self.index.add(&meta) {
            tracing::error!(error = %e, "could not index a recording; the terminal goes on unrecorded");
            self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            let _ = std::fs::remove_file(self.path(&id));
            return;
        }
        terminal.set_recorded();
        let (file, written) = match created {
            Ok(f) => f,
            Err(e) => return self.audit_failed(&id, &e),
        };
        let job = recorder::Job { id: id.clone(), tap, file, written, live: live.clone(), recordings: self.clone() };
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = recorder::run(job).await;
            me.close(&id, outcome, &live).await;
        });
    }

    /// Closes a recording that stopped: its end goes into the index at once (so a shutdown right after loses
    /// nothing), then, in the background, its transcript and a retention pass.
    async fn close(self: &Arc<Self>, id: &str, outcome: recorder::Outcome, live: &watch::Sender<Progress>) {
        let progress = *live.borrow();
        let started = self.index.get(id).ok().flatten().map_or_else(now_ms, |r| r.started_at);
        let duration_ms = progress.last_us / 1000;
        let mut ending = Ending {
            state: RecordingState::Finished,
            ended_at: started + duration_ms,
            duration_ms,
            bytes: progress.bytes,
            file_bytes: progress.file_len,
            exit_code: None,
            error: None,
            missed_bytes: progress.missed,
        };
        match outcome {
            recorder::Outcome::Failed(e) => {
                ending.state = RecordingState::Failed;
                ending.error = Some(e.clone());
                self.audit_failed(id, &e);
            }
            recorder::Outcome::Ended { file, exit } => {
                ending.exit_code = exit.and_then(|e| e.exit_code);
                let _ = tokio::task::spawn_blocking(move || file.sync_data()).await;
            }
        }
        if let Err(e) = self.index.end(id, &ending) {
            tracing::error!(recording = id, error = %e, "could not record the end of a recording in the index");
        }
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        live.send_modify(|p| p.done = true);
        let (me, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            me.transcribe(&id);
            me.enforce_retention();
        });
    }

    /// Reads a closed file back and indexes its transcript (blocking). A recording that cannot be read back
    /// keeps its end, without a transcript.
    fn transcribe(&self, id: &str) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let back = read_back(&self.path(id)).map_err(|e| format!("cannot read the recording back: {e}"))?;
            self.index.set_transcript(id, &back.lines).map_err(|e| e.to_string())
        }));
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(recording = id, error = %e, "no transcript for a recording"),
            Err(_) => tracing::error!(recording = id, "making a transcript panicked; the recording has none"),
        }
    }

    /// Closes what an earlier run left open: the file is cut to its last whole line and, unless it already
    /// ends with its `exit` marker (the server stopped between writing it and indexing it), gets a final
    /// `closed after restart` marker; then its end and transcript are indexed. Also makes the transcripts an
    /// earlier run did not finish.
    fn recover(&self) {
        let open = match self.index.in_state(RecordingState::Recording) {
            Ok(list) => list,
            Err(e) => return tracing::error!(error = %e, "cannot read the recordings index"),
        };
        for r in open {
            let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.close_after_restart(&r)));
            match closed {
                Ok(Ok(())) => tracing::info!(recording = %r.id, "closed a recording left open by an earlier run"),
                Ok(Err(e)) => {
                    let _ = self.index.fail(&r.id, &e);
                    self.audit_failed(&r.id, &e);
                }
                Err(_) => {
                    let _ = self.index.fail(&r.id, "closing it after a restart panicked");
                    tracing::error!(recording = %r.id, "closing a recording after a restart panicked");
                }
            }
        }
        for id in self.index.untranscribed().unwrap_or_default() {
            self.transcribe(&id);
        }
    }

    fn close_after_restart(&self, r: &Recording) -> Result<(), String> {
        let path = self.path(&r.id);
        let why = |e: std::io::Error| format!("cannot close the recording after a restart: {e}");
        let last = cut_to_last_line(&path).map_err(why)?;
        let ended = last.as_ref().is_some_and(|e| e.code == "m" && e.data.starts_with(b"exit "));
        if !ended {
            let mut line = Vec::new();
            let at = Duration::from_micros(last.map_or(0, |e| e.at_us));
            cast::write_text_event(at, "m", CLOSED_AFTER_RESTART, &mut line);
            std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| f.write_all(&line)).map_err(why)?;
        }
        let back = read_back(&path).map_err(|e| format!("cannot read the recording back: {e}"))?;
        let duration_ms = back.last_us / 1000;
        let ending = Ending {
            state: RecordingState::Finished,
            ended_at: r.started_at + duration_ms,
            duration_ms,
            bytes: back.bytes,
            file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            exit_code: back.exit.flatten(),
            error: None,
            missed_bytes: back.missed,
        };
        self.index.end(&r.id, &ending).map_err(|e| e.to_string())?;
        self.index.set_transcript(&r.id, &back.lines).map_err(|e| e.to_string())
    }

    /// Lists recordings with `filter`; live ones show how far they have got.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Recording>, ServiceError> {
        let mut list = self.index.list(filter).map_err(internal)?;
        for r in &mut list {
            self.overlay(r);
        }
        Ok(list)
    }

    fn overlay(&self, r: &mut Recording) {
        if r.state != RecordingState::Recording {
            return;
        }
        if let Some(live) = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(&r.id) {
            let p = *live.borrow();
            r.bytes = p.bytes;
            r.file_bytes = p.file_len;
            r.duration_ms = p.last_us / 1000;
            r.missed_bytes = p.missed;
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<Recording>, ServiceError> {
        let mut r = self.index.get(id).map_err(internal)?;
        if let Some(r) = &mut r {
            self.overlay(r);
        }
        Ok(r)
    }

    /// The start time of recording `id` (for paging with `before`).
    pub fn position(&self, id: &str) -> Result<Option<u64>, ServiceError> {
        self.index.position(id).map_err(internal)
    }

    /// The `.cast` file of recording `id`.
    pub fn file(&self, id: &str) -> PathBuf {
        self.path(id)
    }

    /// How far a live recording has got (`None`: not live).
    pub fn follow(&self, id: &str) -> Option<watch::Receiver<Progress>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).get(id).map(|l| l.subscribe())
    }

    /// The transcript as text: from the index when finished, read from the file while recording.
    pub async fn transcript(self: &Arc<Self>, r: &Recording) -> Result<String, ServiceError> {
        let lines = if r.state == RecordingState::Recording {
            let path = self.path(&r.id);
            tokio::task::spawn_blocking(move || read_back(&path))
                .await
                .map_err(internal)?
                .map_err(|e| internal(format!("cannot read the recording: {e}")))?
                .lines
        } else {
            self.index.transcript(&r.id).map_err(internal)?
        };
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.text);
            text.push('\n');
        }
        Ok(text)
    }

    /// Removes a closed recording: its file and its index entries.
    pub fn remove(&self, id: &str) -> Result<bool, ServiceError> {
        let open = self.index.get(id).map_err(internal)?.is_some_and(|r| r.state == RecordingState::Recording);
        if open || self.live.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id) {
            return Err(ServiceError::new(
                ErrorCode::RecordingInProgress,
                format!("recording {id} is still being written; it can be removed once its terminal ends"),
            ));
        }
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("cannot remove the recording's file: {e}"))),
        }
        self.index.remove(id).map_err(internal)
    }

    /// [`Recordings::remove`] for a request: a recording already gone is `unknown_recording`.
    pub fn remove_one(&self, id: &str) -> Result<(), ServiceError> {
        match self.remove(id)? {
            true => Ok(()),
            false => Err(ServiceError::new(ErrorCode::UnknownRecording, format!("no recording {id} exists for you"))),
        }
    }

    /// Removes closed recordings past `--recordings-max-age`, then the oldest closed ones while all files
    /// together exceed `--recordings-max-bytes`. Recordings being written are never removed.
    pub fn enforce_retention(&self) {
        let (max_age, max_bytes) = (self.settings.max_age, self.settings.max_bytes);
        if max_age.is_none() && max_bytes.is_none() {
            return;
        }
        let _one_at_a_time = self.retention.lock().unwrap_or_else(|e| e.into_inner());
        let closed = match self.index.closed_oldest_first() {
            Ok(x) => x,
            Err(e) => return tracing::warn!(error = %e, "retention: cannot read the index"),
        };
        let live: u64 = self.live.lock().unwrap_or_else(|e| e.into_inner()).values().map(|l| l.borrow().file_len).sum();
        let mut total = live + closed.iter().map(|c| c.file_bytes).sum::<u64>();
        let cutoff = max_age.map(|a| now_ms().saturating_sub(a.as_millis() as u64));
        for index::Closed { id, ended_at, file_bytes: bytes } in closed {
            let too_old = cutoff.is_some_and(|c| ended_at < c);
            let too_big = max_bytes.is_some_and(|m| total > m);
            if !too_old && !too_big {
                continue;
            }
            match self.remove(&id) {
                Ok(false) => {}
                Ok(true) => {
                    total = total.saturating_sub(bytes);
                    let reason =
                        if too_old { "older than --recordings-max-age" } else { "over --recordings-max-bytes" };
                    tracing::info!(recording = %id, reason, "retention removed a recording");
                    self.audit.record(Record {
                        action: "recording.remove",
                        outcome: "allowed",
                        terminal_id: Some(id.clone()),
                        recording_id: Some(id),
                        reason: Some(format!("retention: {reason}")),
                        ..Record::default()
                    });
                }
                Err(e) => tracing::warn!(recording = %id, error = %e, "retention could not remove a recording"),
            }
        }
    }

    /// Waits until every live recording is closed, or `timeout` passed (server shutdown, after the terminals
    /// ended).
    pub async fn drain(&self, timeout: Duration) {
        let live: Vec<watch::Receiver<Progress>> =
            self.live.lock().unwrap_or_else(|e| e.into_inner()).values().map(|l| l.subscribe()).collect();
        let all = futures_util::future::join_all(live.into_iter().map(|mut rx| async move {
            let _ = rx.wait_for(|p| p.done).await;
        }));
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("some recordings were still being written at shutdown; the next start closes them");
        }
    }

    /// Runs retention every [`RETENTION_INTERVAL`] until `stop`.
    pub async fn maintain(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.enforce_retention()).await;
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}
