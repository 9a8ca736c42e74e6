//! Porthole's own persistent state about sandboxes, in SQLite under `--state-dir`: this instance's id, and one
//! row per container it made. Docker cannot change a container's labels after it is created, so the owner of a
//! claimed pool container lives here; so does every container between the create request and its first start,
//! so that a crash in between leaves a row saying what to clean up.
//!
//! A container is removed by clean-up only when it has a row here *and* carries this instance's labels: a user's
//! own containers, whatever labels they carry, are never touched.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// The schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Being created (for a user, or for the pool); not usable yet.
    Creating,
    /// Warm in the pool, owned by nobody.
    Pooled,
    /// A user's sandbox.
    Owned,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Creating => "creating",
            Kind::Pooled => "pooled",
            Kind::Owned => "owned",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "pooled" => Kind::Pooled,
            "owned" => Kind::Owned,
            _ => Kind::Creating,
        }
    }
}

/// One container Porthole made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The container's name (known before Docker gives an id).
    pub name: String,
    /// The container's id; empty until Docker answered the create.
    pub id: String,
    pub profile: String,
    pub kind: Kind,
    /// The owner's subject; empty unless [`Kind::Owned`] (or being created for someone).
    pub owner: String,
    pub image: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// Why the store failed (a full disk, a broken file): callers refuse the operation with it.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox state store failed: {0}")]
pub struct StoreError(#[from] rusqlite::Error);

/// The store, one connection behind a mutex (statements take microseconds; a commit, with
/// `synchronous=NORMAL` in WAL mode, does not wait for the disk).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating it when missing) `dir/porthole.db`; `dir` is created with mode 0700.
    pub fn open(dir: &Path) -> Result<Store, String> {
        let conn = crate::db::open(
            dir,
            "porthole.db",
            SCHEMA_VERSION,
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS containers (
                name TEXT PRIMARY KEY,
                id TEXT NOT NULL DEFAULT '',
                profile TEXT NOT NULL,
                kind TEXT NOT NULL,
                owner TEXT NOT NULL DEFAULT '',
                image TEXT NOT NULL,
                created_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL
             );
             PRAGMA user_version = 1;",
        )?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This instance's id: made once, kept for good (its containers carry it in `porthole.sandbox.instance`).
    pub fn instance_id(&self) -> Result<String, StoreError> {
        self.instance_id_or(None)
    }

    /// [`Store::instance_id`], made from `wanted` (cluster mode: the node id) when the store has none yet. A
    /// store that has one keeps it, so the sandboxes it already made stay this instance's.
    pub fn instance_id_or(&self, wanted: Option<&str>) -> Result<String, StoreError> {
        let conn = self.conn();
        let have: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0)).optional()?;
        if let Some(id) = have {
            return Ok(id);
        }
        let id =
            wanted.map_or_else(|| format!("p-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]), str::to_string);
        conn.execute("INSERT INTO meta (key, value) VALUES ('instance', ?1)", params![id])?;
        Ok(id)
    }

    pub fn put(&self, row: &Row) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO containers (name, id, profile, kind, owner, image, created_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(name) DO UPDATE SET id = ?2, profile = ?3, kind = ?4, owner = ?5, image = ?6,
                created_at_ms = ?7, expires_at_ms = ?8",
            params![
                row.name,
                row.id,
                row.profile,
                row.kind.as_str(),
                row.owner,
                row.image,
                row.created_at_ms as i64,
                row.expires_at_ms as i64
            ],
        )?;
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute("DELETE FROM containers WHERE name = ?1", params![name])?;
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, id, profile, kind, owner, image, created_at_ms, expires_at_ms FROM containers ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Row {
                name: r.get(0)?,
                id: r.get(1)?,
                profile: r.get(2)?,
                kind: Kind::parse(&r.get::<_, String>(3)?),
                owner: r.get(4)?,
                image: r.get(5)?,
                created_at_ms: r.get::<_, i64>(6)?.max(0) as u64,
                expires_at_ms: r.get::<_, i64>(7)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_the_instance_id_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("porthole-store-{}", uuid::Uuid::new_v4().simple()));
        let row = Row {
            name: "sandbox-scratch-1".into(),
            id: String::new(),
            profile: "scratch".into(),
            kind: Kind::Creating,
            owner: "alice".into(),
            image: "img".into(),
            created_at_ms: 1,
            expires_at_ms: 2,
        };
        let id = {
            let s = Store::open(&dir).unwrap();
            s.put(&row).unwrap();
            s.put(&Row { id: "abc".into(), kind: Kind::Owned, ..row.clone() }).unwrap();
            s.instance_id().unwrap()
        };
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.instance_id().unwrap(), id);
        assert_eq!(s.all().unwrap(), vec![Row { id: "abc".into(), kind: Kind::Owned, ..row.clone() }]);
        s.delete(&row.name).unwrap();
        assert!(s.all().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
