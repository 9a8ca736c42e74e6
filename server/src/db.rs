//! Opening Porthole's SQLite databases (bundled SQLite, WAL mode) under the state directory.

use std::path::Path;

use rusqlite::Connection;

/// How long a statement waits for a lock held by another connection (another Porthole on the same directory).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (creating them when missing) `dir` (mode 0700) and `dir/file`, and brings its schema to `version` with
/// `schema` (statements that must be idempotent, ending with `PRAGMA user_version = version`).
pub fn open(dir: &Path, file: &str, version: i64, schema: &str) -> Result<Connection, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let path = dir.join(file);
    let conn = Connection::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let init = || -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let have: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if have < version {
            conn.execute_batch(schema)?;
        }
        Ok(())
    };
    init().map_err(|e| format!("cannot set up {}: {e}", path.display()))?;
    Ok(conn)
}
