//! The index of recordings, in SQLite under `--state-dir` (`recordings.db`): one row per recording, the ids of
//! its audit records, and its transcript lines with an FTS5 index over them.

use std::path::Path;

use parking_lot::{Mutex, MutexGuard};

use app::protocol::{RecordLevel, Recording, RecordingHit, RecordingState};
use rusqlite::{Connection, OptionalExtension, params};

use super::transcript::Line;

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS recordings (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        container TEXT NOT NULL,
        container_id TEXT NOT NULL,
        command TEXT NOT NULL,
        level TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        file_bytes INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        state TEXT NOT NULL,
        error TEXT,
        missed_bytes INTEGER NOT NULL DEFAULT 0,
        transcribed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS recordings_by_start ON recordings (started_at, id);
    CREATE TABLE IF NOT EXISTS audit_ids (recording TEXT NOT NULL, audit_id TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS audit_ids_by_recording ON audit_ids (recording);
    CREATE TABLE IF NOT EXISTS lines (
        rowid INTEGER PRIMARY KEY,
        recording TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        line TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS lines_by_recording ON lines (recording);
    CREATE VIRTUAL TABLE IF NOT EXISTS transcript USING fts5 (line, content = 'lines', content_rowid = 'rowid');
    CREATE TRIGGER IF NOT EXISTS lines_added AFTER INSERT ON lines BEGIN
        INSERT INTO transcript (rowid, line) VALUES (new.rowid, new.line);
    END;
    CREATE TRIGGER IF NOT EXISTS lines_removed AFTER DELETE ON lines BEGIN
        INSERT INTO transcript (transcript, rowid, line) VALUES ('delete', old.rowid, old.line);
    END;
    PRAGMA user_version = 1;
";

/// A recording's transcript lines have the rowids `recording's rowid << LINE_BITS` and up: each recording's lines
/// are one rowid range, which FTS5 searches without touching the others'.
const LINE_BITS: u32 = 25;
/// Rows a search reads to find which recordings match before it switches to testing recordings one by one,
/// newest first (a word on most lines of most recordings).
const MATCH_SCAN_ROWS: usize = 20_000;

/// Transcript lines inserted or deleted per transaction. The writer's lock is handed over fairly between
/// batches, so a write that arrives while a long transcript is indexed or removed waits at most one batch.
const LINES_PER_BATCH: usize = 2000;

/// Why the index failed (a full disk, a broken file).
#[derive(Debug, thiserror::Error)]
#[error("the recordings index failed: {0}")]
pub struct IndexError(#[from] rusqlite::Error);

/// What a list asks for (already checked). In cluster mode the user's node sends it to its peers as it is.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// Only this user's (the caller's own, when they may see only theirs; or the `user` filter).
    pub users: Vec<String>,
    pub container: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    /// An FTS5 query (already quoted).
    pub matching: Option<String>,
    pub limit: usize,
    /// Start after this recording's place in the order.
    pub before: Option<(u64, String)>,
}

/// A closed recording, for retention.
#[derive(Debug, Clone)]
pub struct Closed {
    pub id: String,
    /// ms since the epoch.
    pub ended_at: u64,
    pub file_bytes: u64,
}

/// The index: one connection for writes and one for reads, each behind its own mutex. In WAL mode a read
/// never waits for a write, so lists and searches stay quick while a long transcript is being indexed.
#[derive(Debug)]
pub struct Index {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

const COLUMNS: &str = "id, user, container, container_id, command, level, started_at, ended_at, duration_ms, bytes,
    file_bytes, exit_code, state, error, missed_bytes";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Recording> {
    let level: String = r.get(5)?;
    let state: String = r.get(12)?;
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Recording {
        id: r.get(0)?,
        terminal_id: r.get(0)?,
        user: r.get(1)?,
        container: r.get(2)?,
        container_id: r.get(3)?,
        command: r.get(4)?,
        level: if level == "all" { RecordLevel::All } else { RecordLevel::Output },
        started_at: u(6)?,
        ended_at: r.get::<_, Option<i64>>(7)?.map(|v| v.max(0) as u64),
        duration_ms: u(8)?,
        bytes: u(9)?,
        file_bytes: u(10)?,
        exit_code: r.get(11)?,
        state: RecordingState::parse(&state).unwrap_or(RecordingState::Failed),
        error: r.get(13)?,
        missed_bytes: u(14)?,
        audit_ids: Vec::new(),
        hits: None,
        node: None,
    })
}

/// How a recording ended, for [`Index::finish`].
#[derive(Debug, Clone)]
pub struct Ending {
    pub state: RecordingState,
    pub ended_at: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub file_bytes: u64,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub missed_bytes: u64,
}

impl Index {
    pub fn open(dir: &Path) -> Result<Index, String> {
        let write = crate::db::open(dir, "recordings.db", SCHEMA_VERSION, SCHEMA)?;
        let read = crate::db::open(dir, "recordings.db", SCHEMA_VERSION, SCHEMA)?;
        Ok(Index { write: Mutex::new(write), read: Mutex::new(read) })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.write.lock()
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.read.lock()
    }

    /// Adds a recording that has just started.
    pub fn add(&self, r: &Recording) -> Result<(), IndexError> {
        self.writer().execute(
            "INSERT OR REPLACE INTO recordings (id, user, container, container_id, command, level, started_at, state,
                error, file_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.id,
                r.user,
                r.container,
                r.container_id,
                r.command,
                r.level.as_str(),
                r.started_at as i64,
                r.state.as_str(),
                r.error,
                r.file_bytes as i64
            ],
        )?;
        Ok(())
    }

    /// Records how a recording ended (its transcript comes after, with [`Index::set_transcript`]).
    pub fn end(&self, id: &str, e: &Ending) -> Result<(), IndexError> {
        self.writer().execute(
            "UPDATE recordings SET state = ?2, ended_at = ?3, duration_ms = ?4, bytes = ?5, file_bytes = ?6,
                exit_code = ?7, error = ?8, missed_bytes = ?9 WHERE id = ?1",
            params![
                id,
                e.state.as_str(),
                e.ended_at as i64,
                e.duration_ms as i64,
                e.bytes as i64,
                e.file_bytes as i64,
                e.exit_code,
                e.error,
                e.missed_bytes as i64
            ],
        )?;
        Ok(())
    }

    /// Replaces a recording's transcript, in batches, and marks it transcribed.
    pub fn set_transcript(&self, id: &str, transcript: &[Line]) -> Result<(), IndexError> {
        self.remove_lines(id)?;
        let base: i64 =
            self.writer().query_row("SELECT rowid FROM recordings WHERE id = ?1", params![id], |r| r.get(0))?;
        let first = base << LINE_BITS;
        let most = (1usize << LINE_BITS) - 1;
        for (n, batch) in transcript[..transcript.len().min(most)].chunks(LINES_PER_BATCH).enumerate() {
            let mut conn = self.writer();
            let tx = conn.transaction()?;
            {
                let mut add =
                    tx.prepare_cached("INSERT INTO lines (rowid, recording, time_ms, line) VALUES (?1, ?2, ?3, ?4)")?;
                for (i, l) in batch.iter().enumerate() {
                    let rowid = first + (n * LINES_PER_BATCH + i) as i64;
                    add.execute(params![rowid, id, l.time_ms as i64, l.text])?;
                }
            }
            tx.commit()?;
            MutexGuard::unlock_fair(conn);
        }
        self.writer().execute("UPDATE recordings SET transcribed = 1 WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Closed recordings whose transcript is not indexed yet (the server stopped while making it).
    pub fn untranscribed(&self) -> Result<Vec<String>, IndexError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT id FROM recordings WHERE state != 'recording' AND transcribed = 0")?;
        Ok(stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?)
    }

    /// Marks a recording failed (its file stays as far as it was written).
    pub fn fail(&self, id: &str, error: &str) -> Result<(), IndexError> {
        self.writer()
            .execute("UPDATE recordings SET state = 'failed', error = ?2 WHERE id = ?1", params![id, error])?;
        Ok(())
    }

    pub fn link_audit(&self, id: &str, audit_id: &str) -> Result<(), IndexError> {
        self.writer().execute("INSERT INTO audit_ids (recording, audit_id) VALUES (?1, ?2)", params![id, audit_id])?;
        Ok(())
    }

    fn with_audit_ids(conn: &Connection, mut r: Recording) -> rusqlite::Result<Recording> {
        let mut stmt = conn.prepare_cached("SELECT audit_id FROM audit_ids WHERE recording = ?1 ORDER BY rowid")?;
        r.audit_ids = stmt.query_map(params![r.id], |row| row.get(0))?.collect::<Result<_, _>>()?;
        Ok(r)
    }

    pub fn get(&self, id: &str) -> Result<Option<Recording>, IndexError> {
        let conn = self.reader();
        let r =
            conn.query_row(&format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"), params![id], row).optional()?;
        Ok(match r {
            Some(r) => Some(Index::with_audit_ids(&conn, r)?),
            None => None,
        })
    }

    /// Recordings in a given state.
    pub fn in_state(&self, state: RecordingState) -> Result<Vec<Recording>, IndexError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM recordings WHERE state = ?1"))?;
        Ok(stmt.query_map(params![state.as_str()], row)?.collect::<Result<_, _>>()?)
    }

    /// Recordings matching `f`, newest first, with their hits when `f.matching` is set.
    pub fn list(&self, f: &Filter) -> Result<Vec<Recording>, IndexError> {
        self.list_scanning(f, MATCH_SCAN_ROWS)
    }

    fn list_scanning(&self, f: &Filter, scan_rows: usize) -> Result<Vec<Recording>, IndexError> {
        let conn = self.reader();
        let mut sql = format!("SELECT {COLUMNS} FROM recordings WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let arg = |v: rusqlite::types::Value, args: &mut Vec<rusqlite::types::Value>| {
            args.push(v);
            format!("?{}", args.len())
        };
        if !f.users.is_empty() {
            let marks: Vec<String> = f.users.iter().map(|u| arg(u.clone().into(), &mut args)).collect();
            sql += &format!(" AND user IN ({})", marks.join(", "));
        }
        if let Some(c) = &f.container {
            let (a, b) = (arg(c.clone().into(), &mut args), arg(c.clone().into(), &mut args));
            sql += &format!(" AND (container = {a} OR container_id = {b})");
        }
        if let Some(s) = f.since {
            sql += &format!(" AND started_at >= {}", arg((s as i64).into(), &mut args));
        }
        if let Some(u) = f.until {
            sql += &format!(" AND started_at <= {}", arg((u as i64).into(), &mut args));
        }
        if let Some((at, id)) = &f.before {
            let (a1, a2, b) = (
                arg((*at as i64).into(), &mut args),
                arg((*at as i64).into(), &mut args),
                arg(id.clone().into(), &mut args),
            );
            sql += &format!(" AND (started_at < {a1} OR (started_at = {a2} AND id < {b}))");
        }
        if let Some(q) = &f.matching {
            // A rare match: the recordings it is in, from one pass over its rows. A common one: each candidate,
            // newest first, tested for one match in its own rowid range, until the page is full.
            let mut stmt = conn.prepare_cached("SELECT rowid FROM transcript WHERE transcript MATCH ?1 LIMIT ?2")?;
            let rows: Vec<i64> =
                stmt.query_map(params![q, scan_rows as i64 + 1], |r| r.get(0))?.collect::<Result<_, _>>()?;
            if rows.len() <= scan_rows {
                let mut recs: Vec<i64> = rows.iter().map(|r| r >> LINE_BITS).collect();
                recs.sort_unstable();
                recs.dedup();
                let list = recs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
                sql += &format!(" AND rowid IN ({list})");
            } else {
                let m = arg(q.clone().into(), &mut args);
                sql += &format!(
                    " AND EXISTS (SELECT 1 FROM transcript WHERE transcript MATCH {m}
                        AND transcript.rowid BETWEEN (recordings.rowid << {LINE_BITS})
                        AND (recordings.rowid << {LINE_BITS}) + {})",
                    (1i64 << LINE_BITS) - 1
                );
            }
        }
        sql += &format!(" ORDER BY started_at DESC, id DESC LIMIT {}", arg((f.limit as i64).into(), &mut args));
        let found: Vec<Recording> = {
            let mut stmt = conn.prepare(&sql)?;
            stmt.query_map(rusqlite::params_from_iter(args), row)?.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(found.len());
        for r in found {
            let mut r = Index::with_audit_ids(&conn, r)?;
            if let Some(q) = &f.matching {
                let mut stmt = conn.prepare_cached(
                    "SELECT l.time_ms, l.line FROM transcript JOIN lines l ON l.rowid = transcript.rowid
                     WHERE transcript MATCH ?1 AND transcript.rowid BETWEEN ?2 AND ?3 ORDER BY transcript.rowid
                     LIMIT ?4",
                )?;
                let base: i64 =
                    conn.query_row("SELECT rowid FROM recordings WHERE id = ?1", params![r.id], |x| x.get(0))?;
                let (lo, hi) = (base << LINE_BITS, (base << LINE_BITS) + (1i64 << LINE_BITS) - 1);
                let hits = stmt.query_map(params![q, lo, hi, app::protocol::MAX_HITS_PER_RECORDING as i64], |row| {
                    Ok(RecordingHit { time_ms: row.get::<_, i64>(0)?.max(0) as u64, line: row.get(1)? })
                })?;
                r.hits = Some(hits.collect::<Result<_, _>>()?);
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Where recording `id` stands in the newest-first order (for `before`).
    pub fn position(&self, id: &str) -> Result<Option<u64>, IndexError> {
        let at: Option<i64> = self
            .reader()
            .query_row("SELECT started_at FROM recordings WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?;
        Ok(at.map(|v| v.max(0) as u64))
    }

    /// The transcript of a finished recording.
    pub fn transcript(&self, id: &str) -> Result<Vec<Line>, IndexError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT time_ms, line FROM lines WHERE recording = ?1 ORDER BY rowid")?;
        let lines =
            stmt.query_map(params![id], |r| Ok(Line { time_ms: r.get::<_, i64>(0)?.max(0) as u64, text: r.get(1)? }))?;
        Ok(lines.collect::<Result<_, _>>()?)
    }

    /// Finished and failed recordings, oldest first.
    pub fn closed_oldest_first(&self) -> Result<Vec<Closed>, IndexError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT id, COALESCE(ended_at, started_at), file_bytes FROM recordings WHERE state != 'recording'
             ORDER BY started_at, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Closed {
                    id: r.get(0)?,
                    ended_at: r.get::<_, i64>(1)?.max(0) as u64,
                    file_bytes: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Updates the size a live recording's file has reached (for the size budget).
    pub fn set_file_bytes(&self, id: &str, bytes: u64) -> Result<(), IndexError> {
        self.writer().execute("UPDATE recordings SET file_bytes = ?2 WHERE id = ?1", params![id, bytes as i64])?;
        Ok(())
    }

    /// Forgets a recording: its row, transcript and audit ids; whether it was there.
    pub fn remove(&self, id: &str) -> Result<bool, IndexError> {
        self.remove_lines(id)?;
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM lines WHERE recording = ?1", params![id])?;
        tx.execute("DELETE FROM audit_ids WHERE recording = ?1", params![id])?;
        let rows = tx.execute("DELETE FROM recordings WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(rows > 0)
    }
}

impl Index {
    /// Deletes a recording's transcript lines, one batch per transaction, handing the lock over between them.
    fn remove_lines(&self, id: &str) -> Result<(), IndexError> {
        loop {
            let conn = self.writer();
            let gone = conn.execute(
                "DELETE FROM lines WHERE rowid IN (SELECT rowid FROM lines WHERE recording = ?1 LIMIT ?2)",
                params![id, LINES_PER_BATCH as i64],
            )?;
            MutexGuard::unlock_fair(conn);
            if gone < LINES_PER_BATCH {
                return Ok(());
            }
        }
    }
}

/// Turns plain words into an FTS5 query in which each is a quoted phrase (all must match): `rm -rf` becomes
/// `"rm" "-rf"`. Words with nothing FTS5 indexes (only punctuation) are left out; `None` if none is left.
pub fn fts_query(words: &str) -> Option<String> {
    let quoted: Vec<String> = words
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!quoted.is_empty()).then(|| quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, user: &str, at: u64) -> Recording {
        Recording {
            id: id.into(),
            terminal_id: id.into(),
            user: user.into(),
            container: "web".into(),
            container_id: "c0ffee".into(),
            command: "bash -l".into(),
            started_at: at,
            ended_at: None,
            duration_ms: 0,
            bytes: 0,
            file_bytes: 10,
            exit_code: None,
            state: RecordingState::Recording,
            level: RecordLevel::Output,
            error: None,
            missed_bytes: 0,
            audit_ids: Vec::new(),
            hits: None,
            node: None,
        }
    }

    #[test]
    fn search_paging_and_removal() {
        let dir = std::env::temp_dir().join(format!("porthole-index-{}", uuid::Uuid::new_v4().simple()));
        let ix = Index::open(&dir).unwrap();
        for (i, user) in ["alice", "bob", "alice"].iter().enumerate() {
            let id = format!("t-{i}");
            ix.add(&rec(&id, user, 100 + i as u64)).unwrap();
            let lines = vec![
                Line { time_ms: 5, text: "$ rm -rf /tmp/build".into() },
                Line { time_ms: 9, text: format!("done {i}") },
            ];
            let end = Ending {
                state: RecordingState::Finished,
                ended_at: 200,
                duration_ms: 9,
                bytes: 30,
                file_bytes: 99,
                exit_code: Some(0),
                error: None,
                missed_bytes: 0,
            };
            ix.end(&id, &end).unwrap();
            ix.set_transcript(&id, &lines).unwrap();
        }
        ix.link_audit("t-1", "a-1").unwrap();
        let q = fts_query("rm -rf").unwrap();
        assert_eq!(q, "\"rm\" \"-rf\"");
        let all = ix.list(&Filter { matching: Some(q.clone()), limit: 50, ..Filter::default() }).unwrap();
        assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["t-2", "t-1", "t-0"]);
        let hits = all[0].hits.as_ref().unwrap();
        assert_eq!((hits.len(), hits[0].time_ms, hits[0].line.as_str()), (1, 5, "$ rm -rf /tmp/build"));
        assert_eq!(all[1].audit_ids, ["a-1"]);
        let mine = Filter { users: vec!["alice".into()], limit: 1, ..Filter::default() };
        let page = ix.list(&mine).unwrap();
        assert_eq!(page[0].id, "t-2");
        let next = ix.list(&Filter { before: Some((102, "t-2".into())), ..mine.clone() }).unwrap();
        assert_eq!(next[0].id, "t-0");
        let one = ix.list(&Filter { matching: fts_query("done 1"), limit: 50, ..Filter::default() }).unwrap();
        assert_eq!(one.len(), 1);
        // The same answers when the match is too common to collect (each recording tested in its own range).
        let f = Filter { matching: Some(q.clone()), limit: 2, ..Filter::default() };
        let common = ix.list_scanning(&f, 1).unwrap();
        assert_eq!(common.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["t-2", "t-1"]);
        assert_eq!(common[0].hits.as_ref().unwrap().len(), 1);
        let f = Filter { matching: fts_query("done 1"), limit: 50, ..Filter::default() };
        assert_eq!(ix.list_scanning(&f, 0).unwrap().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["t-1"]);
        // Quoting makes FTS5 syntax plain words.
        assert!(ix.list(&Filter { matching: fts_query("AND OR NOT ( * \"x"), limit: 5, ..Filter::default() }).is_ok());
        assert_eq!(fts_query("- -- ;"), None);
        assert!(ix.untranscribed().unwrap().is_empty());
        assert!(ix.remove("t-0").unwrap());
        assert!(!ix.remove("t-0").unwrap());
        assert!(ix.get("t-0").unwrap().is_none());
        assert_eq!(ix.transcript("t-0").unwrap().len(), 0);
        assert_eq!(ix.list(&Filter { matching: Some(q), limit: 50, ..Filter::default() }).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A transcript of many lines (a `yes` flood) is indexed and removed in batches: meanwhile a new recording
    /// is added (the write waits for one batch, not the whole) and lists answer (reads do not wait at all).
    #[test]
    fn a_long_transcript_neither_blocks_reads_nor_starves_writes() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = std::env::temp_dir().join(format!("porthole-index-{}", uuid::Uuid::new_v4().simple()));
        let ix = Arc::new(Index::open(&dir).unwrap());
        ix.add(&rec("t-flood", "alice", 100)).unwrap();
        let lines: Vec<Line> =
            (0..300_000).map(|i| Line { time_ms: i, text: format!("porthole-flood-line {i}") }).collect();
        for removing in [false, true] {
            let busy = Arc::new(AtomicBool::new(true));
            let long = {
                let (ix, busy, lines) = (ix.clone(), busy.clone(), lines.clone());
                std::thread::spawn(move || {
                    if removing {
                        ix.remove("t-flood").unwrap()
                    } else {
                        ix.set_transcript("t-flood", &lines).map(|_| true).unwrap()
                    };
                    busy.store(false, Ordering::SeqCst);
                })
            };
            // Wait until the long write is under way (its first batches are visible, or gone).
            let under_way = |ix: &Index| {
                let n = ix.transcript("t-flood").unwrap().len();
                if removing { n < lines.len() } else { n > 0 }
            };
            while !under_way(&ix) {
                assert!(busy.load(Ordering::SeqCst), "the long write ended before it was seen under way");
                std::thread::yield_now();
            }
            let id = format!("t-new-{removing}");
            ix.add(&rec(&id, "bob", 200)).unwrap();
            let listed = ix.list(&Filter { users: vec!["bob".into()], limit: 5, ..Filter::default() }).unwrap();
            let still_busy = busy.load(Ordering::SeqCst);
            assert!(listed.iter().any(|r| r.id == id), "a recording added during the long write is listed");
            assert!(still_busy, "the add and the list waited for the whole long write (removing: {removing})");
            long.join().unwrap();
        }
        assert!(ix.get("t-flood").unwrap().is_none());
        assert!(ix.transcript("t-flood").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
